//! Building an example up to date for a test, shared by the facade's and the server's tests.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The path of example `name` of the package in `manifest_dir`, built (or brought up to date)
/// for this test's profile with exactly the features of `features` that are on (each of the
/// package's features with whether this test was built with it): a filtered `cargo test --test
/// X` does not build examples, and a stale binary would test old code.
///
/// When every feature is on, or none is, the example is built from the workspace root with
/// `--workspace --all-features` (or `--no-default-features`), the flags `scripts/test.sh` builds
/// the tests with: cargo then unifies dependency features over the same packages as the test
/// build and reuses its artifacts, where a build of the one package would compile the workspace
/// crates and some dependencies again with other features (minutes of a clean CI run).
pub fn build_example(manifest_dir: &str, name: &str, features: &[(&str, bool)]) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<this test> → target/<profile>/examples/<name>
    let profile_dir = exe.parent().and_then(Path::parent).expect("test binary sits in target/<profile>/deps");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let on: Vec<&str> = features.iter().filter_map(|&(f, on)| on.then_some(f)).collect();
    let mut cargo = Command::new(env!("CARGO"));
    cargo.args(["build", "--quiet", "--profile", profile, "--example", name]);
    if on.len() == features.len() {
        cargo.args(["--workspace", "--all-features"]).current_dir(workspace_root(manifest_dir));
    } else if on.is_empty() {
        cargo.args(["--workspace", "--no-default-features"]).current_dir(workspace_root(manifest_dir));
    } else {
        cargo.args(["--no-default-features", "--features", &on.join(",")]).current_dir(manifest_dir);
    }
    let status = cargo.status().expect("cargo runs");
    assert!(status.success(), "building example {name} failed");
    profile_dir.join("examples").join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// The nearest directory at or above `manifest_dir` whose Cargo.toml has a `[workspace]` table.
fn workspace_root(manifest_dir: &str) -> PathBuf {
    Path::new(manifest_dir)
        .ancestors()
        .find(|dir| {
            std::fs::read_to_string(dir.join("Cargo.toml"))
                .is_ok_and(|toml| toml.lines().any(|l| l.trim() == "[workspace]"))
        })
        .expect("a workspace Cargo.toml above the package")
        .to_path_buf()
}
