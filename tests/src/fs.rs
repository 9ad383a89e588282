//! File-tree helpers for tests: building trees of files to sync or serve.

use anyhow::Result;
use std::path::Path;

/// Writes a tree of `files` small files (in 100 directories) plus one file of `big` bytes into
/// `dir`; returns (regular files, total bytes).
pub fn make_tree(dir: &Path, files: usize, big: u64) -> Result<(u64, u64)> {
    use std::io::Write;
    let mut bytes = 0u64;
    for i in 0..files {
        let sub = dir.join(format!("d{:02}", i % 100));
        std::fs::create_dir_all(&sub)?;
        let body = format!("file number {i}\n");
        std::fs::write(sub.join(format!("f{i}.txt")), &body)?;
        bytes += body.len() as u64;
    }
    let mut n = 0;
    if big > 0 {
        let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join("big.bin"))?);
        let chunk: Vec<u8> = (0..1024 * 1024u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect();
        let mut left = big;
        while left > 0 {
            let take = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..take])?;
            left -= take as u64;
        }
        f.flush()?;
        n = 1;
        bytes += big;
    }
    Ok((files as u64 + n, bytes))
}
