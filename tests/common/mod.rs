//! What the example tests share: building an example up to date and reading its output.

#![allow(dead_code, reason = "each test file uses its own subset of these helpers")]

mod build;

use std::path::PathBuf;
use std::process::{Command, Output};

/// The path of example `name`, built up to date with this test's features.
pub fn example(name: &str) -> PathBuf {
    let features = [
        ("parallel", cfg!(feature = "parallel")),
        ("file-store", cfg!(feature = "file-store")),
        ("postgres", cfg!(feature = "postgres")),
        ("redis", cfg!(feature = "redis")),
        ("prometheus", cfg!(feature = "prometheus")),
    ];
    build::build_example(env!("CARGO_MANIFEST_DIR"), name, &features)
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
