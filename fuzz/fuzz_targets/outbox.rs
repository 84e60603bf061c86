//! The write-behind's outbox file, opened and replayed as after a restart: the input as a
//! whole file, and the input as the payload of a frame whose checksums hold (so the fuzzer
//! reaches the batch decoder).
#![no_main]

use libfuzzer_sys::fuzz_target;
use terrarium_persistence::testing::{outbox_frame, replay_outbox};

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile_dir() else { return };
    let path = dir.join("outbox");
    for bytes in [data.to_vec(), outbox_frame(data, 1)] {
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(dir.join("outbox.corrupt"));
        if std::fs::write(&path, &bytes).is_ok() {
            let _ = replay_outbox(&path, 1 << 20);
        }
    }
});

/// One directory per process, in memory when /dev/shm exists (the fuzzer runs thousands of
/// inputs a second).
fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let base =
        if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm".into() } else { std::env::temp_dir() };
    let dir = base.join(format!("terrarium-fuzz-outbox-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
