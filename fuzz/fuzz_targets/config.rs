//! The configuration file: the text before the first NUL is the TOML, each line after it a
//! `NAME=value` environment override.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (toml, env) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let (Ok(toml), Ok(env)) = (std::str::from_utf8(toml), std::str::from_utf8(env)) else { return };
    let env = env.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string()));
    if let Ok(config) = terrarium::Config::from_toml_str(toml, env.collect::<Vec<_>>()) {
        // Whatever validates must build an engine.
        terrarium_engine::Engine::builder(terrarium_engine::EngineConfig { threads: 1, ..config.engine })
            .build()
            .expect("a validated engine config builds");
    }
});
