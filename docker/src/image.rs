//! Images the CLI builds itself: a `FROM scratch` image holding one statically linked
//! executable (our own binary, or the test app), streamed to the engine as an in-memory tar
//! build context through bollard (legacy builder; nothing is ever pulled).
//!
//! The tag is `<repo>:<version>-<first 12 hex digits of sha256(binary)>`, so a rebuilt binary
//! never runs a stale image, and an image that already exists is reused at once.
//! Every image carries `telepresence.io/managed-by=telepresence` and
//! `telepresence.io/binary-digest=<sha256>`.

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use bollard::errors::Error as BollardError;
use bollard::query_parameters::{
    BuildImageOptionsBuilder, ListImagesOptionsBuilder, RemoveImageOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;
use sha2::{Digest, Sha256};

/// Label carried by every resource the project creates.
pub const MANAGED_BY_LABEL: &str = "telepresence.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY_VALUE: &str = "telepresence";
/// Label holding the full sha256 (hex) of the binary an image was built from.
pub const DIGEST_LABEL: &str = "telepresence.io/binary-digest";

/// How many hex digits of the digest go into the tag.
const TAG_DIGEST_LEN: usize = 12;
/// Fixed mtime for the tar entries, so equal binaries give equal contexts.
const CONTEXT_MTIME: u64 = 1_700_000_000;

/// Why an image could not be made available.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The executable to put into the image could not be read.
    #[error("cannot read the executable {path}: {source}")]
    Binary {
        /// The executable.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// The executable's file name cannot be used inside an image.
    #[error("the executable {0} has no usable file name")]
    BadFileName(PathBuf),
    /// The engine could not be reached at all.
    #[error("cannot reach the Docker engine ({0}); is the Docker engine running? (docker info)")]
    EngineUnreachable(String),
    /// The engine ran the build and reported an error.
    #[error("building image {tag} failed: {message}")]
    Build {
        /// The tag being built.
        tag: String,
        /// The engine's message.
        message: String,
    },
    /// Any other answer of the engine.
    #[error("Docker engine error: {0}")]
    Docker(BollardError),
}

impl From<BollardError> for ImageError {
    fn from(err: BollardError) -> Self {
        if is_unreachable(&err) {
            ImageError::EngineUnreachable(err.to_string())
        } else {
            ImageError::Docker(err)
        }
    }
}

/// True when a bollard error means the engine could not be talked to at all (socket missing,
/// connection refused, timeout), as opposed to an error answer from a running engine.
pub fn is_unreachable(err: &BollardError) -> bool {
    matches!(
        err,
        BollardError::IOError { .. }
            | BollardError::HyperLegacyError { .. }
            | BollardError::SocketNotFoundError(_)
            | BollardError::RequestTimeoutError
            | BollardError::HttpClientError { .. }
    )
}

/// Cache of binary digests for this process: path → (length, mtime, sha256 hex).
type DigestCache = Mutex<HashMap<PathBuf, (u64, Option<SystemTime>, String)>>;

fn digest_cache() -> &'static DigestCache {
    static CACHE: OnceLock<DigestCache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The sha256 (lower-case hex) of a file, computed once per process and path (recomputed only
/// when the file's length or mtime changed).
pub fn binary_digest(binary: &Path) -> io::Result<String> {
    let meta = std::fs::metadata(binary)?;
    let key = binary.to_path_buf();
    let stamp = (meta.len(), meta.modified().ok());
    if let Some((len, mtime, digest)) = digest_cache().lock().expect("digest cache").get(&key) {
        if (*len, *mtime) == stamp {
            return Ok(digest.clone());
        }
    }
    let mut file = std::fs::File::open(binary)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let digest = hex::encode(hasher.finalize());
    remember_digest(key, stamp, &digest);
    Ok(digest)
}

fn remember_digest(key: PathBuf, stamp: (u64, Option<SystemTime>), digest: &str) {
    digest_cache()
        .lock()
        .expect("digest cache")
        .insert(key, (stamp.0, stamp.1, digest.to_string()));
}

/// The tag for `binary` in `repo`: `<repo>:<CARGO_PKG_VERSION>-<first 12 hex of sha256>`.
pub fn image_tag(repo: &str, binary: &Path) -> io::Result<String> {
    Ok(tag_for_digest(repo, &binary_digest(binary)?))
}

fn tag_for_digest(repo: &str, digest: &str) -> String {
    format!(
        "{repo}:{}-{}",
        env!("CARGO_PKG_VERSION"),
        &digest[..TAG_DIGEST_LEN.min(digest.len())]
    )
}

/// The name the executable gets inside the image (`/<name>`): its file name, which must be
/// a plain portable name.
fn file_name_in_image(binary: &Path) -> Result<String, ImageError> {
    let name = binary
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| {
            !n.is_empty()
                && !n.starts_with('.')
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        })
        .ok_or_else(|| ImageError::BadFileName(binary.to_path_buf()))?;
    Ok(name.to_string())
}

/// The Dockerfile of an image holding `/<file>` and a world-writable `/tmp`.
pub fn dockerfile(file: &str, digest: &str) -> String {
    format!(
        "FROM scratch\n\
         COPY rootfs/ /\n\
         LABEL \"{MANAGED_BY_LABEL}\"=\"{MANAGED_BY_VALUE}\" \"{DIGEST_LABEL}\"=\"{digest}\"\n\
         ENTRYPOINT [\"/{file}\"]\n"
    )
}

/// The build context as an in-memory tar: `Dockerfile`, `rootfs/<file>` (mode 0755) and
/// `rootfs/tmp/` (mode 1777).
pub fn build_context(file: &str, contents: &[u8], digest: &str) -> io::Result<Vec<u8>> {
    let dockerfile = dockerfile(file, digest);
    let mut builder = tar::Builder::new(Vec::with_capacity(contents.len() + 8192));

    let add_dir = |builder: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(mode);
        header.set_size(0);
        header.set_mtime(CONTEXT_MTIME);
        header.set_uid(0);
        header.set_gid(0);
        builder.append_data(&mut header, path, io::empty())
    };
    let add_file = |builder: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(mode);
        header.set_size(data.len() as u64);
        header.set_mtime(CONTEXT_MTIME);
        header.set_uid(0);
        header.set_gid(0);
        builder.append_data(&mut header, path, data)
    };

    add_file(&mut builder, "Dockerfile", 0o644, dockerfile.as_bytes())?;
    add_dir(&mut builder, "rootfs/", 0o755)?;
    add_dir(&mut builder, "rootfs/tmp/", 0o1777)?;
    add_file(&mut builder, &format!("rootfs/{file}"), 0o755, contents)?;
    builder.into_inner()
}

/// Make sure the image for `binary` exists in the engine and return its tag
/// (`<repo>:<version>-<digest12>`). When it is missing it is built from a `FROM scratch`
/// context; `progress` receives human-readable lines while that happens.
pub async fn ensure_image(
    docker: &Docker,
    repo: &str,
    binary: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<String, ImageError> {
    let binary_err = |source| ImageError::Binary {
        path: binary.to_path_buf(),
        source,
    };
    let digest = binary_digest(binary).map_err(binary_err)?;
    let tag = tag_for_digest(repo, &digest);
    if image_exists(docker, &tag).await? {
        return Ok(tag);
    }

    let file = file_name_in_image(binary)?;
    progress(&format!("Building image {tag}"));
    let contents = std::fs::read(binary).map_err(binary_err)?;
    // The bytes we ship must be the bytes the tag names; the file may have been replaced
    // since it was hashed.
    let shipped = hex::encode(Sha256::digest(&contents));
    if shipped != digest {
        return Err(ImageError::Build {
            tag,
            message: format!(
                "{} changed while the image was being built",
                binary.display()
            ),
        });
    }
    let context = build_context(&file, &contents, &digest).map_err(binary_err)?;
    drop(contents);

    let options = BuildImageOptionsBuilder::default()
        .dockerfile("Dockerfile")
        .t(&tag)
        .rm(true)
        .forcerm(true)
        .build();
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(context.into())));
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(line) = info.stream.as_deref() {
                    let line = line.trim();
                    if !line.is_empty() {
                        tracing::debug!(target: "image_build", "{line}");
                    }
                    if let Some(step) = step_of(line) {
                        progress(&format!("Building image {tag} (step {step})"));
                    }
                }
            }
            Err(BollardError::DockerStreamError { error }) => {
                return Err(ImageError::Build {
                    tag,
                    message: error.trim().to_string(),
                })
            }
            Err(err) => return Err(err.into()),
        }
    }
    if !image_exists(docker, &tag).await? {
        return Err(ImageError::Build {
            tag,
            message: "the engine finished without producing the image".into(),
        });
    }
    progress(&format!("Built image {tag}"));
    Ok(tag)
}

/// `"Step 2/4 : COPY …"` → `Some("2/4")`.
fn step_of(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("Step ")?;
    let step = rest.split_whitespace().next()?;
    let (done, total) = step.split_once('/')?;
    (done.parse::<u32>().is_ok() && total.parse::<u32>().is_ok()).then_some(step)
}

async fn image_exists(docker: &Docker, tag: &str) -> Result<bool, ImageError> {
    match docker.inspect_image(tag).await {
        Ok(_) => Ok(true),
        Err(BollardError::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(false),
        Err(err) => Err(err.into()),
    }
}

/// Remove every tag of `repo` on images carrying our managed-by label, except `keep`.
/// Tags still used by a container are left alone. Returns the tags removed.
pub async fn remove_images(
    docker: &Docker,
    repo: &str,
    keep: Option<&str>,
) -> Result<Vec<String>, ImageError> {
    let mut filters = HashMap::new();
    filters.insert("reference", vec![repo.to_string()]);
    filters.insert(
        "label",
        vec![format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}")],
    );
    let images = docker
        .list_images(Some(
            ListImagesOptionsBuilder::default()
                .filters(&filters)
                .build(),
        ))
        .await?;
    let prefix = format!("{repo}:");
    let mut removed = Vec::new();
    for image in images {
        for tag in image.repo_tags {
            if !tag.starts_with(&prefix) || Some(tag.as_str()) == keep {
                continue;
            }
            match docker
                .remove_image(
                    &tag,
                    Some(RemoveImageOptionsBuilder::default().build()),
                    None,
                )
                .await
            {
                Ok(_) => removed.push(tag),
                Err(BollardError::DockerResponseServerError {
                    status_code: 404 | 409,
                    message,
                }) => tracing::debug!("not removing image {tag}: {message}"),
                Err(err) => return Err(err.into()),
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_temp(name: &str, data: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tp-image-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(data).unwrap();
        path
    }

    #[test]
    fn tag_is_version_and_digest_prefix() {
        let path = write_temp("tagged-bin", b"hello");
        // sha256("hello")
        let full = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        assert_eq!(binary_digest(&path).unwrap(), full);
        assert_eq!(
            image_tag("telepresence", &path).unwrap(),
            format!("telepresence:{}-2cf24dba5fb0", env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn digest_follows_a_changed_file() {
        let path = write_temp("changing-bin", b"one");
        let first = binary_digest(&path).unwrap();
        assert_eq!(binary_digest(&path).unwrap(), first);
        std::fs::write(&path, b"two, longer").unwrap();
        let second = binary_digest(&path).unwrap();
        assert_ne!(first, second);
        assert_eq!(second, hex::encode(Sha256::digest(b"two, longer")));
    }

    #[test]
    fn missing_binary_is_an_error() {
        assert!(image_tag("x", Path::new("/nonexistent/tp-binary")).is_err());
    }

    #[test]
    fn file_names() {
        assert_eq!(
            file_name_in_image(Path::new("/a/b/telepresence")).unwrap(),
            "telepresence"
        );
        assert_eq!(
            file_name_in_image(Path::new("tp-testapp")).unwrap(),
            "tp-testapp"
        );
        assert!(file_name_in_image(Path::new("/a/has space")).is_err());
        assert!(file_name_in_image(Path::new("/a/quo\"te")).is_err());
        assert!(file_name_in_image(Path::new("/")).is_err());
    }

    #[test]
    fn dockerfile_shape() {
        let df = dockerfile("telepresence", "abc");
        let lines: Vec<&str> = df.lines().collect();
        assert_eq!(lines[0], "FROM scratch");
        assert_eq!(lines[1], "COPY rootfs/ /");
        assert!(lines[2].starts_with("LABEL "));
        assert!(lines[2].contains("\"telepresence.io/managed-by\"=\"telepresence\""));
        assert!(lines[2].contains("\"telepresence.io/binary-digest\"=\"abc\""));
        assert_eq!(lines[3], "ENTRYPOINT [\"/telepresence\"]");
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn context_contents() {
        let payload = b"\x7fELF pretend binary".to_vec();
        let tar_bytes = build_context("tp-testapp", &payload, "deadbeef").unwrap();
        let mut archive = tar::Archive::new(tar_bytes.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mode = entry.header().mode().unwrap();
            let kind = entry.header().entry_type();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            seen.push((path, mode, kind, data));
        }
        let names: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(
            names,
            ["Dockerfile", "rootfs/", "rootfs/tmp/", "rootfs/tp-testapp"]
        );
        assert_eq!(seen[0].3, dockerfile("tp-testapp", "deadbeef").into_bytes());
        assert_eq!(seen[1].2, tar::EntryType::Directory);
        assert_eq!(seen[2].2, tar::EntryType::Directory);
        assert_eq!(seen[2].1, 0o1777);
        assert_eq!(seen[3].2, tar::EntryType::Regular);
        assert_eq!(seen[3].1, 0o755);
        assert_eq!(seen[3].3, payload);
    }

    #[test]
    fn step_lines() {
        assert_eq!(step_of("Step 2/4 : COPY rootfs/ /"), Some("2/4"));
        assert_eq!(step_of(" ---> Running in abc"), None);
        assert_eq!(step_of("Step x/4"), None);
    }

    #[test]
    fn unreachable_engine_error_says_what_to_do() {
        let err = ImageError::from(BollardError::SocketNotFoundError("/nope.sock".into()));
        assert!(matches!(err, ImageError::EngineUnreachable(_)));
        assert!(err
            .to_string()
            .contains("is the Docker engine running? (docker info)"));
        let err = ImageError::from(BollardError::DockerResponseServerError {
            status_code: 500,
            message: "boom".into(),
        });
        assert!(matches!(err, ImageError::Docker(_)));
    }

    #[tokio::test]
    async fn engine_down_is_reported() {
        // A socket file nobody listens on: connection refused, like a stopped engine.
        let sock = std::env::temp_dir().join(format!("tp-dead-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&sock);
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        let docker = Docker::connect_with_unix(
            &format!("unix://{}", sock.display()),
            5,
            bollard::API_DEFAULT_VERSION,
        )
        .unwrap();
        let exe = std::env::current_exe().unwrap();
        let err = ensure_image(&docker, "tp-unreachable", &exe, &mut |_| {})
            .await
            .unwrap_err();
        let _ = std::fs::remove_file(&sock);
        assert!(
            matches!(err, ImageError::EngineUnreachable(_)),
            "unexpected error: {err:?}"
        );
        assert!(err.to_string().contains("(docker info)"));
    }

    /// Connect to the engine, or explain why this test is skipped (fails under CI=true).
    async fn engine() -> Option<Docker> {
        let attempt = async {
            let docker = Docker::connect_with_local_defaults()?;
            let docker = docker.negotiate_version().await?;
            docker.ping().await?;
            Ok::<_, BollardError>(docker)
        };
        match attempt.await {
            Ok(docker) => Some(docker),
            Err(err) => {
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!("the Docker engine is required under CI=true: {err}");
                }
                eprintln!("skipping: Docker engine not reachable: {err}");
                None
            }
        }
    }

    /// (mode, type, size, uid) of one path in an image.
    type Header = (u32, tar::EntryType, u64, u64);

    /// The headers of `paths` in image `tag`, read from a created-but-never-started container.
    async fn headers_in_image<const N: usize>(
        docker: &Docker,
        tag: &str,
        paths: [&str; N],
    ) -> [Header; N] {
        use bollard::models::ContainerCreateBody;
        use bollard::query_parameters::{
            CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder,
            RemoveContainerOptionsBuilder,
        };
        let created = docker
            .create_container(
                Some(CreateContainerOptionsBuilder::default().build()),
                ContainerCreateBody {
                    image: Some(tag.to_string()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let mut out = Vec::new();
        for path in paths {
            let stream = docker.download_from_container(
                &created.id,
                Some(
                    DownloadFromContainerOptionsBuilder::new()
                        .path(path)
                        .build(),
                ),
            );
            let chunks: Vec<_> = stream.collect().await;
            let mut bytes = Vec::new();
            for c in chunks {
                bytes.extend_from_slice(&c.unwrap());
            }
            let mut archive = tar::Archive::new(bytes.as_slice());
            let entry = archive.entries().unwrap().next().unwrap().unwrap();
            let h = entry.header();
            out.push((
                h.mode().unwrap(),
                h.entry_type(),
                h.size().unwrap(),
                h.uid().unwrap(),
            ));
        }
        docker
            .remove_container(
                &created.id,
                Some(RemoveContainerOptionsBuilder::default().force(true).build()),
            )
            .await
            .unwrap();
        out.try_into()
            .unwrap_or_else(|_| unreachable!("one header per path"))
    }

    /// Builds a real image from this (statically linked) test executable, checks its
    /// contents through a created-but-never-started container, reuses it on a second call,
    /// and removes extra tags with `remove_images`.
    #[tokio::test]
    async fn builds_a_scratch_image_on_the_engine() {
        use bollard::query_parameters::TagImageOptionsBuilder;

        let Some(docker) = engine().await else { return };
        let exe = std::env::current_exe().unwrap();
        let repo = format!("tp-image-test-{}", std::process::id());

        let mut lines = Vec::new();
        let tag = ensure_image(&docker, &repo, &exe, &mut |l| lines.push(l.to_string()))
            .await
            .unwrap();
        assert_eq!(tag, image_tag(&repo, &exe).unwrap());
        assert!(
            lines.iter().any(|l| l.contains("(step 2/4)")),
            "progress: {lines:?}"
        );

        let result = async {
            let inspect = docker.inspect_image(&tag).await.unwrap();
            let config = inspect.config.unwrap();
            let labels = config.labels.unwrap();
            assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY_VALUE);
            assert_eq!(labels[DIGEST_LABEL], binary_digest(&exe).unwrap());
            let file = file_name_in_image(&exe).unwrap();
            assert_eq!(config.entrypoint.unwrap(), vec![format!("/{file}")]);

            // Second call: fast path, no build.
            let mut again = Vec::new();
            let tag2 = ensure_image(&docker, &repo, &exe, &mut |l| again.push(l.to_string()))
                .await
                .unwrap();
            assert_eq!(tag2, tag);
            assert!(again.is_empty(), "rebuilt: {again:?}");

            // Look inside without running anything.
            let [(tmp_mode, tmp_kind, _, tmp_uid), (bin_mode, bin_kind, bin_size, _)] =
                headers_in_image(&docker, &tag, ["/tmp", &format!("/{file}")]).await;
            assert_eq!(tmp_kind, tar::EntryType::Directory);
            assert_eq!(tmp_mode & 0o7777, 0o1777);
            assert_eq!(tmp_uid, 0);
            assert_eq!(bin_kind, tar::EntryType::Regular);
            assert_eq!(bin_mode & 0o777, 0o755);
            assert_eq!(bin_size, std::fs::metadata(&exe).unwrap().len());

            // remove_images drops other tags of the repo but keeps the current one.
            docker
                .tag_image(
                    &tag,
                    Some(
                        TagImageOptionsBuilder::default()
                            .repo(&repo)
                            .tag("old")
                            .build(),
                    ),
                )
                .await
                .unwrap();
            let removed = remove_images(&docker, &repo, Some(&tag)).await.unwrap();
            assert_eq!(removed, vec![format!("{repo}:old")]);
            assert!(image_exists(&docker, &tag).await.unwrap());
            assert!(!image_exists(&docker, &format!("{repo}:old")).await.unwrap());
        };
        let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(result)).await;
        let _ = docker
            .remove_image(
                &tag,
                Some(RemoveImageOptionsBuilder::default().force(true).build()),
                None,
            )
            .await;
        let _ = docker
            .remove_image(
                &format!("{repo}:old"),
                Some(RemoveImageOptionsBuilder::default().force(true).build()),
                None,
            )
            .await;
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }
}
