//! Snapshot loading: the input as a whole file (magic, header, checksum), and the input as a
//! payload inside a frame whose checksum holds, so the fuzzer reaches the decoder and the
//! checks behind it. A world that loads must tick and save again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use terrarium_engine::{Engine, EngineConfig, snapshot};

fn config() -> EngineConfig {
    let mut config = EngineConfig { threads: 1, ..EngineConfig::default() };
    // 16 MiB: libFuzzer's malloc limit (see scripts/fuzz.sh) catches anything that allocates
    // far past what the decoder was allowed.
    config.snapshot.max_bytes = 16 << 20;
    config
}

fuzz_target!(|data: &[u8]| {
    let _ = Engine::builder(config()).build_from_snapshot(&mut &data[..]);
    let mut framed = Vec::with_capacity(data.len() + terrarium_codec::FRAME_HEADER_LEN);
    if terrarium_codec::write_frame(&mut framed, snapshot::MAGIC, snapshot::FORMAT_VERSION, data).is_err() {
        return;
    }
    let builder = Engine::builder(config()).add_plugin(terrarium_systems::core_plugin);
    if let Ok(mut engine) = builder.build_from_snapshot(&mut framed.as_slice()) {
        engine.run_ticks(2);
        let mut again = Vec::new();
        engine.save_snapshot(&mut again).expect("a loaded world saves");
        Engine::builder(config()).build_from_snapshot(&mut again.as_slice()).expect("a saved world loads");
    }
});
