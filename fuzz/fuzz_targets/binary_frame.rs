//! A binary position frame (`terrarium.binary.v1`/`v2`), as a Rust client decodes what a
//! server sends: `BinaryFrame::decode` must refuse or read it without panicking, allocate in
//! proportion to the message only, and a frame it reads must encode back to bytes it reads
//! the same (never longer than the input).
#![no_main]

use libfuzzer_sys::fuzz_target;
use terrarium_server::protocol::BinaryFrame;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = BinaryFrame::decode(data) {
        let bytes = BinaryFrame::encode_v2(f.tick, f.reset, &f.moved, &f.gone, &f.kinds);
        assert!(bytes.len() <= data.len(), "{} bytes re-encoded as {}", data.len(), bytes.len());
        let again = BinaryFrame::decode(&bytes).expect("a frame's own encoding decodes");
        // Compared as bytes: positions may be NaN.
        let twice = BinaryFrame::encode_v2(again.tick, again.reset, &again.moved, &again.gone, &again.kinds);
        assert_eq!(twice, bytes);
    }
});
