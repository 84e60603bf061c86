//! The API keys: a read-write key (`server.api_key`) and an optional read-only one
//! (`server.read_api_key`), checked at start-up, and where a request may carry one.
//!
//! A request carries its key in the `x-api-key` header. A WebSocket upgrade (`GET /ws`), which a
//! browser can't give headers, may instead offer it as a sub-protocol:
//! `Sec-WebSocket-Protocol: terrarium.v1, terrarium.key.<KEY>` (the server selects
//! `terrarium.v1` and never echoes the key), or, kept for old clients, in the `api_key` query
//! parameter (which ends up in proxy logs and browser history: prefer the sub-protocol).

use axum::http::request::Parts;
use terrarium::config::ServerConfig;
use terrarium::engine::ConfigError;

use crate::protocol::{WsOfferError, is_token, parse_ws_protocols};

/// Header that carries the API key.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Shortest API key the server starts with, bytes (256 bits as 32 random printable
/// characters is more than any guessing over the network reaches).
pub const MIN_KEY_BYTES: usize = 32;

/// What a key allows (ordered: `Read < Write`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// `GET` routes and the WebSocket stream.
    Read,
    /// Everything.
    Write,
}

/// The configured keys. No `Debug` of their bytes: secrets never reach a log line.
pub(crate) struct Keys {
    write: Vec<u8>,
    read: Option<Vec<u8>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").field("read_only_key", &self.read.is_some()).finish_non_exhaustive()
    }
}

impl Keys {
    /// The keys of `sc`, checked: at least [`MIN_KEY_BYTES`] printable ASCII bytes without
    /// spaces (a key must fit a header), and two different keys.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the setting (never the key itself).
    pub(crate) fn new(sc: &ServerConfig) -> Result<Self, ConfigError> {
        check("server.api_key", &sc.api_key)?;
        let read = if sc.read_api_key.is_empty() {
            None
        } else {
            check("server.read_api_key", &sc.read_api_key)?;
            if sc.read_api_key == sc.api_key {
                return Err(ConfigError::Invalid {
                    key: "server.read_api_key".into(),
                    reason: "must differ from server.api_key".into(),
                });
            }
            Some(sc.read_api_key.as_bytes().to_vec())
        };
        for (name, key) in [("server.api_key", &sc.api_key), ("server.read_api_key", &sc.read_api_key)] {
            if !key.is_empty() && !is_token(key) {
                tracing::warn!(
                    setting = name,
                    "the key holds characters a browser can't offer as a WebSocket sub-protocol \
                     (terrarium.key.<KEY>); browsers will have to use the api_key query parameter"
                );
            }
        }
        Ok(Self { write: sc.api_key.as_bytes().to_vec(), read })
    }

    /// What `given` allows, if it is a key.
    pub(crate) fn access(&self, given: &[u8]) -> Option<Access> {
        // Both compared, whatever the first says, so timing does not tell which key matched.
        let write = same_key(given, &self.write);
        let read = self.read.as_deref().is_some_and(|r| same_key(given, r));
        if write {
            Some(Access::Write)
        } else if read {
            Some(Access::Read)
        } else {
            None
        }
    }

    /// The best access among the keys a request carries (header; for `/ws`, the sub-protocol
    /// offer and the query parameter).
    ///
    /// # Errors
    /// A malformed sub-protocol offer on `/ws`.
    pub(crate) fn of_request(&self, parts: &Parts) -> Result<Option<Access>, WsOfferError> {
        let mut best = parts.headers.get(API_KEY_HEADER).and_then(|v| self.access(v.as_bytes()));
        if parts.uri.path() == "/ws" {
            let lines =
                parts.headers.get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL).iter().map(|v| v.to_str());
            // A line that is not text can't hold a token: refuse it as one.
            let lines: Vec<&str> =
                lines.collect::<Result<_, _>>().map_err(|_| WsOfferError::NotAToken { index: 0 })?;
            if let Some(k) = parse_ws_protocols(lines)?.key {
                best = best.max(self.access(k.as_bytes()));
            }
            if let Some(query) = parts.uri.query() {
                // A query that does not parse carries no key (the route answers for the rest).
                let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
                if let Some((_, k)) = pairs.iter().find(|(k, _)| k == "api_key") {
                    best = best.max(self.access(k.as_bytes()));
                }
            }
        }
        Ok(best)
    }
}

fn check(setting: &str, key: &str) -> Result<(), ConfigError> {
    let reason = if key.len() < MIN_KEY_BYTES {
        format!("must be at least {MIN_KEY_BYTES} bytes, got {} (e.g. `openssl rand -hex 32`)", key.len())
    } else if !key.bytes().all(|b| b.is_ascii_graphic()) {
        "must be printable ASCII without spaces (it travels in a header)".into()
    } else {
        return Ok(());
    };
    Err(ConfigError::Invalid { key: setting.into(), reason })
}

/// Compares two keys in time that depends only on their length (which an attacker learns
/// anyway from any key format), not on where they first differ.
fn same_key(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len() && given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: &str = "write-key-0123456789abcdefghijklmnop";
    const R: &str = "read-key-0123456789abcdefghijklmnopq";

    fn config(write: &str, read: &str) -> ServerConfig {
        ServerConfig { api_key: write.into(), read_api_key: read.into(), ..ServerConfig::default() }
    }

    #[test]
    fn keys_compare_whole() {
        assert!(same_key(b"secret-key", b"secret-key"));
        assert!(!same_key(b"secret-kex", b"secret-key"));
        assert!(!same_key(b"secret", b"secret-key"));
        assert!(!same_key(b"", b"k"));
    }

    #[test]
    fn short_or_unprintable_keys_are_refused_without_being_echoed() {
        let e = Keys::new(&config("short-secret", "")).unwrap_err();
        assert!(e.to_string().contains("server.api_key") && e.to_string().contains("32"), "{e}");
        assert!(!e.to_string().contains("short-secret"), "{e}");
        let spaced = format!("{W} x");
        assert!(Keys::new(&config(&spaced, "")).unwrap_err().to_string().contains("printable"));
        let e = Keys::new(&config(W, "tiny")).unwrap_err();
        assert!(e.to_string().contains("server.read_api_key"), "{e}");
        assert!(Keys::new(&config(W, W)).unwrap_err().to_string().contains("differ"));
        let keys = Keys::new(&config(W, R)).unwrap();
        assert_eq!(keys.access(W.as_bytes()), Some(Access::Write));
        assert_eq!(keys.access(R.as_bytes()), Some(Access::Read));
        assert_eq!(keys.access(b"nope"), None);
        assert!(!format!("{keys:?}").contains("key-0123"), "{keys:?}");
        assert!(Access::Write > Access::Read);
    }

    #[test]
    fn a_websocket_key_comes_from_the_protocol_offer_or_the_query() {
        let keys = Keys::new(&config(W, R)).unwrap();
        let parts = |uri: &str, protocols: Option<&str>| {
            let mut b = axum::http::Request::get(uri);
            if let Some(p) = protocols {
                b = b.header("sec-websocket-protocol", p);
            }
            b.body(()).unwrap().into_parts().0
        };
        let offer = format!("terrarium.v1, terrarium.key.{R}");
        assert_eq!(keys.of_request(&parts("/ws", Some(&offer))), Ok(Some(Access::Read)));
        assert_eq!(keys.of_request(&parts(&format!("/ws?api_key={W}"), None)), Ok(Some(Access::Write)));
        // Only on /ws.
        assert_eq!(keys.of_request(&parts("/api/npcs", Some(&offer))), Ok(None));
        assert_eq!(keys.of_request(&parts(&format!("/api/npcs?api_key={W}"), None)), Ok(None));
        let bad = format!("terrarium.key.{W}");
        assert_eq!(keys.of_request(&parts("/ws", Some(&bad))), Err(WsOfferError::KeyWithoutProtocol));
    }
}
