//! The query string of `GET /api/npcs`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use terrarium_server::protocol::parse_npc_query;

fuzz_target!(|data: &[u8]| {
    if let Ok(query) = std::str::from_utf8(data) {
        if let Ok(q) = parse_npc_query(query) {
            assert!((1..=100).contains(&q.limit), "limit {} passed the check", q.limit);
        }
    }
});
