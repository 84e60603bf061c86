//! What a WebSocket client sends: a message (JSON text) and the sub-protocol offer of the
//! upgrade request (one header line per input line).
#![no_main]

use libfuzzer_sys::fuzz_target;
use terrarium_server::protocol::{parse_client_message, parse_ws_protocols};

fuzz_target!(|data: &[u8]| {
    let _ = parse_client_message(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_ws_protocols(text.lines());
    }
});
