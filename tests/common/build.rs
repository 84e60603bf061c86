//! Building an example up to date for a test, shared by the facade's and the server's tests.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The path of example `name` of the package in `manifest_dir`, built (or brought up to date)
/// for this test's profile with exactly `features`: a filtered `cargo test --test X` does not
/// build examples, and a stale binary would test old code.
pub fn build_example(manifest_dir: &str, name: &str, features: &[&str]) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<this test> → target/<profile>/examples/<name>
    let profile_dir = exe.parent().and_then(Path::parent).expect("test binary sits in target/<profile>/deps");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--profile", profile, "--example", name, "--no-default-features"])
        .args(["--features", &features.join(",")])
        .current_dir(manifest_dir)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building example {name} failed");
    profile_dir.join("examples").join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}
