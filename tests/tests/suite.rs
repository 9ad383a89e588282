//! Every process- and container-level test, one module per file of this folder, in one test
//! binary: one link instead of one per file, and one process, so the images are built once.
//! `cargo test -p tests --test suite <module>::` runs one file's tests.

mod auth;
mod cli_commands;
mod compose;
mod e2e;
mod engage;
mod env_volumes;
mod faults;
mod fuzz_corpus;
mod helm_chart;
mod helm_template;
mod kube_admission;
mod kube_api;
mod kube_auth;
mod kube_cluster;
mod kube_engage;
mod kube_intercept;
mod kube_manager;
mod kube_pod;
mod kube_provider;
mod kubernetes;
mod outbound;
mod personal;
mod webhook;
mod wiretap;

/// A file of this folder that is not a module above would never run: each must be one.
#[test]
fn every_file_of_this_folder_is_a_module_of_the_suite() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let suite = std::fs::read_to_string(dir.join("suite.rs")).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(module) = name.strip_suffix(".rs").filter(|m| *m != "suite") {
            assert!(
                suite.contains(&format!("\nmod {module};\n")),
                "tests/tests/{name} is not a module of tests/tests/suite.rs: add `mod {module};`"
            );
        }
    }
}
