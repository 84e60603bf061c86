//! What the example tests share: building an example up to date and reading its output.

#![allow(dead_code, reason = "each test file uses its own subset of these helpers")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The path of example `name`, built (or brought up to date) for this test's profile and
/// features: a filtered `cargo test --test examples` does not build examples, and a stale
/// binary would test old code.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<this test> → target/<profile>/examples/<name>
    let profile_dir = exe.parent().and_then(Path::parent).expect("test binary sits in target/<profile>/deps");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let features: Vec<&str> = [
        ("parallel", cfg!(feature = "parallel")),
        ("file-store", cfg!(feature = "file-store")),
        ("postgres", cfg!(feature = "postgres")),
        ("redis", cfg!(feature = "redis")),
        ("prometheus", cfg!(feature = "prometheus")),
        ("server", cfg!(feature = "server")),
    ]
    .into_iter()
    .filter_map(|(f, on)| on.then_some(f))
    .collect();
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--profile", profile, "--example", name, "--no-default-features"])
        .args(["--features", &features.join(",")])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building example {name} failed");
    profile_dir.join("examples").join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// Runs an example and returns its stdout; fails the test on a non-zero exit.
pub fn run(name: &str, args: &[&str]) -> String {
    let out = Command::new(example(name)).args(args).output().expect("example starts");
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

pub fn last_json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.lines().last().expect("some output")).expect("last line is JSON")
}

/// Runs an example and returns its whole output, whatever the exit status.
pub fn output(name: &str, args: &[&str]) -> Output {
    Command::new(example(name)).args(args).output().expect("example starts")
}
