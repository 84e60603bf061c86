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
    // Cargo gives a test process the variables it gives a build script (CARGO_MANIFEST_DIR,
    // CARGO_PKG_*, OUT_DIR...). A child cargo passes them on to the build scripts it runs, and a
    // build script that reads one (ring's reads CARGO_MANIFEST_DIR) is then seen as changed:
    // ring, rustls, fred, tokio-postgres-rustls and every workspace crate were compiled again,
    // minutes per example on 2 cores, and again when a test of another package built one.
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if is_set_by_cargo_for_a_test(key) {
            cargo.env_remove(key);
        }
    }
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

/// Whether cargo sets `key` for the test process itself (cargo's "environment variables Cargo
/// sets for crates"), as opposed to configuration the caller chose (CARGO_HOME,
/// CARGO_TARGET_DIR, CARGO_PROFILE_*...), which the child cargo must keep.
fn is_set_by_cargo_for_a_test(key: &str) -> bool {
    matches!(
        key,
        "CARGO_MANIFEST_DIR"
            | "CARGO_MANIFEST_PATH"
            | "CARGO_MANIFEST_LINKS"
            | "CARGO_CRATE_NAME"
            | "CARGO_BIN_NAME"
            | "CARGO_PRIMARY_PACKAGE"
            | "CARGO_TARGET_TMPDIR"
            | "CARGO_RUSTC_CURRENT_DIR"
            | "OUT_DIR"
    ) || key.starts_with("CARGO_PKG_")
        || key.starts_with("CARGO_BIN_EXE_")
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
