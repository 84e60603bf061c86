//! What clients send, parsed apart from the server: WebSocket client messages, the
//! `GET /api/npcs` query string and the WebSocket sub-protocol offer (where a browser puts its
//! API key). Each parser is a plain function from bytes or text to a typed result, so it can be
//! tested and fuzzed alone; the handlers call exactly these.

use serde::Deserialize;
use terrarium::engine::{Role, Status};
use terrarium::persistence::Page;

/// The WebSocket sub-protocol this server speaks; the server selects it (echoes it in
/// `Sec-WebSocket-Protocol`) whenever the client offered it.
pub const WS_PROTOCOL: &str = "terrarium.v1";

/// Prefix of the sub-protocol that carries the API key: a client offers
/// `terrarium.key.<KEY>` beside [`WS_PROTOCOL`]. The server never selects (echoes) it.
pub const WS_KEY_PREFIX: &str = "terrarium.key.";

/// Most sub-protocols one offer may list (a longer offer is refused, not scanned).
pub const MAX_WS_PROTOCOLS: usize = 16;

/// What a client offered in `Sec-WebSocket-Protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WsOffer<'a> {
    /// It offered [`WS_PROTOCOL`] (the server then selects it).
    pub v1: bool,
    /// The key it offered as `terrarium.key.<KEY>`, without the prefix.
    pub key: Option<&'a str>,
    /// It offered some protocol at all (then it expects one selected, or fails the handshake).
    pub any: bool,
}

/// Why a `Sec-WebSocket-Protocol` offer was refused (the upgrade is answered 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WsOfferError {
    /// More entries than [`MAX_WS_PROTOCOLS`].
    #[error("sec-websocket-protocol: more than {MAX_WS_PROTOCOLS} protocols offered")]
    TooMany,
    /// Two `terrarium.key.` entries.
    #[error("sec-websocket-protocol: more than one {WS_KEY_PREFIX}<key> offered")]
    TwoKeys,
    /// A key was offered without [`WS_PROTOCOL`], which the server must select in its answer
    /// (it never echoes the key).
    #[error("sec-websocket-protocol: {WS_KEY_PREFIX}<key> must be offered together with {WS_PROTOCOL}")]
    KeyWithoutProtocol,
    /// An entry that is not an HTTP token (empty, spaces, separators, non-ASCII).
    #[error("sec-websocket-protocol: entry {index} is not a token")]
    NotAToken {
        /// Its position in the list, from 0 (the entry itself may be a key: never echoed).
        index: usize,
    },
}

/// Parses the values of `Sec-WebSocket-Protocol` (each header line a comma-separated list;
/// pass every line). Protocols other than this server's are allowed and ignored.
///
/// # Errors
/// [`WsOfferError`] for an offer the server can't answer unambiguously.
pub fn parse_ws_protocols<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<WsOffer<'a>, WsOfferError> {
    let mut offer = WsOffer::default();
    for (n, entry) in lines.into_iter().flat_map(|line| line.split(',')).enumerate() {
        let entry = entry.trim_matches([' ', '\t']);
        if n == MAX_WS_PROTOCOLS {
            return Err(WsOfferError::TooMany);
        }
        if !is_token(entry) {
            return Err(WsOfferError::NotAToken { index: n });
        }
        offer.any = true;
        if entry == WS_PROTOCOL {
            offer.v1 = true;
        } else if let Some(key) = entry.strip_prefix(WS_KEY_PREFIX)
            && offer.key.replace(key).is_some()
        {
            return Err(WsOfferError::TwoKeys);
        }
    }
    if offer.key.is_some() && !offer.v1 {
        return Err(WsOfferError::KeyWithoutProtocol);
    }
    Ok(offer)
}

/// An HTTP token (RFC 9110 `tchar`s, at least one): what a sub-protocol name may be, and so
/// what a key sent as `terrarium.key.<KEY>` may hold (letters, digits, ``!#$%&'*+-.^_`|~``).
#[must_use]
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A message a WebSocket client may send (the crate doc's "WebSocket protocol").
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum ClientMessage {
    /// Stream this area of the ground plane, `[x, z]` pairs, `min` inclusive, `max` exclusive
    /// (checked against the server's limits when applied).
    Subscribe {
        /// Lower corner.
        min: [f32; 2],
        /// Upper corner.
        max: [f32; 2],
    },
    /// Stop streaming. (A struct variant: serde refuses unknown fields only in those.)
    Unsubscribe {},
}

/// A WebSocket client message that could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WsMessageError {
    /// Not JSON, or not one of the messages (unknown type or field, wrong shape).
    #[error("bad message: {0}")]
    Json(#[source] serde_json::Error),
}

/// Parses one client text message.
///
/// # Errors
/// [`WsMessageError::Json`] for anything that is not exactly one [`ClientMessage`].
pub fn parse_client_message(payload: &[u8]) -> Result<ClientMessage, WsMessageError> {
    serde_json::from_slice(payload).map_err(WsMessageError::Json)
}

/// The query of `GET /api/npcs`, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NpcQuery {
    /// Only NPCs with this status (its canonical name).
    pub status: Option<String>,
    /// Only NPCs with this role (its canonical name).
    pub role: Option<String>,
    /// Only NPCs in this swarm.
    pub swarm: Option<u32>,
    /// Page size, 1 ..= [`Page::MAX_LIMIT`] (50 when not given).
    pub limit: u32,
    /// Cursor: the `next` of the previous page.
    pub after: Option<u64>,
}

/// Why a `GET /api/npcs` query string was refused (400, with this text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// Not a query string (bad percent-encoding is decoded leniently; this is the rest).
    #[error("malformed query string")]
    Syntax,
    /// A parameter this route does not take.
    #[error("unknown field `{0}` (status, role, swarm, limit, after)")]
    Unknown(String),
    /// A parameter given twice.
    #[error("{0}: given twice")]
    Repeated(&'static str),
    /// A value that does not parse, or is out of range.
    #[error("{param}: {reason}")]
    Value {
        /// The parameter.
        param: &'static str,
        /// Why.
        reason: String,
    },
}

/// Parses the query string of `GET /api/npcs` (without the `?`; empty for none).
///
/// # Errors
/// [`QueryError`] naming the parameter.
pub fn parse_npc_query(query: &str) -> Result<NpcQuery, QueryError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).map_err(|_| QueryError::Syntax)?;
    let mut q = NpcQuery { limit: 50, ..NpcQuery::default() };
    let mut seen = [false; 5];
    for (name, value) in pairs {
        let (i, param) = match name.as_str() {
            "status" => (0, "status"),
            "role" => (1, "role"),
            "swarm" => (2, "swarm"),
            "limit" => (3, "limit"),
            "after" => (4, "after"),
            _ => return Err(QueryError::Unknown(name.chars().take(64).collect())),
        };
        if std::mem::replace(&mut seen[i], true) {
            return Err(QueryError::Repeated(param));
        }
        let bad = |reason: String| QueryError::Value { param, reason };
        let number = |e: std::num::ParseIntError| bad(format!("{e} (a whole number)"));
        match i {
            0 => q.status = Some(value.parse::<Status>().map_err(bad)?.name().to_string()),
            1 => q.role = Some(value.parse::<Role>().map_err(bad)?.name()),
            2 => q.swarm = Some(value.parse().map_err(number)?),
            3 => {
                q.limit = value.parse().map_err(number)?;
                if !(1..=Page::MAX_LIMIT).contains(&q.limit) {
                    return Err(bad(format!("limit must be 1 ..= {}, got {}", Page::MAX_LIMIT, q.limit)));
                }
            }
            _ => q.after = Some(value.parse().map_err(number)?),
        }
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_travels_in_the_protocol_offer_and_is_never_selected() {
        let offer = parse_ws_protocols(["terrarium.v1, terrarium.key.abc-DEF_123"]).unwrap();
        assert_eq!(offer, WsOffer { v1: true, key: Some("abc-DEF_123"), any: true });
        // Over two header lines, with other protocols beside.
        let offer = parse_ws_protocols(["chat", "terrarium.key.k ,terrarium.v1"]).unwrap();
        assert_eq!((offer.v1, offer.key), (true, Some("k")));
        assert_eq!(parse_ws_protocols(["chat"]).unwrap(), WsOffer { v1: false, key: None, any: true });
        assert_eq!(parse_ws_protocols([]).unwrap(), WsOffer::default());
        assert_eq!(parse_ws_protocols(["terrarium.key.k"]), Err(WsOfferError::KeyWithoutProtocol));
        assert_eq!(
            parse_ws_protocols(["terrarium.v1, terrarium.key.a, terrarium.key.b"]),
            Err(WsOfferError::TwoKeys)
        );
        assert_eq!(parse_ws_protocols(["terrarium.v1, a b"]), Err(WsOfferError::NotAToken { index: 1 }));
        assert_eq!(parse_ws_protocols(["terrarium.v1,,x"]), Err(WsOfferError::NotAToken { index: 1 }));
        let many = vec!["p"; MAX_WS_PROTOCOLS + 1].join(",");
        assert_eq!(parse_ws_protocols([many.as_str()]), Err(WsOfferError::TooMany));
        // The error never repeats an entry (it may be a key).
        let e = parse_ws_protocols(["terrarium.v1, terrarium.key.hunter2 xyz"]).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn client_messages_parse_or_say_why() {
        let m = parse_client_message(br#"{"type":"subscribe","min":[0,0],"max":[10,5.5]}"#).unwrap();
        assert_eq!(m, ClientMessage::Subscribe { min: [0.0, 0.0], max: [10.0, 5.5] });
        assert_eq!(
            parse_client_message(br#"{"type":"unsubscribe"}"#).unwrap(),
            ClientMessage::Unsubscribe {}
        );
        for bad in [&b"{"[..], br#"{"type":"x"}"#, br#"{"type":"unsubscribe","x":1}"#, b"\xff", b""] {
            let e = parse_client_message(bad).unwrap_err();
            assert!(e.to_string().starts_with("bad message: "), "{e}");
        }
    }

    #[test]
    fn npc_queries_are_checked() {
        let q = parse_npc_query("status=moving&role=miner&swarm=3&limit=7&after=9").unwrap();
        assert_eq!(q.status.as_deref(), Some("moving"));
        assert_eq!((q.role.as_deref(), q.swarm, q.limit, q.after), (Some("miner"), Some(3), 7, Some(9)));
        assert_eq!(parse_npc_query("").unwrap().limit, 50);
        let e = parse_npc_query("limit=0").unwrap_err();
        assert_eq!(e.to_string(), "limit: limit must be 1 ..= 100, got 0");
        assert!(matches!(parse_npc_query("limit=101"), Err(QueryError::Value { param: "limit", .. })));
        assert!(parse_npc_query("limit=ten").unwrap_err().to_string().starts_with("limit: "));
        assert_eq!(parse_npc_query("limit=1&limit=2"), Err(QueryError::Repeated("limit")));
        assert!(parse_npc_query("colour=red").unwrap_err().to_string().contains("unknown field"));
        assert!(matches!(parse_npc_query("role=wizard"), Err(QueryError::Value { param: "role", .. })));
        assert!(matches!(parse_npc_query("status=x"), Err(QueryError::Value { param: "status", .. })));
        for bad in ["after=-1", "swarm=x", "bogus=1", "limit=99999999999", "%zz"] {
            assert!(parse_npc_query(bad).is_err(), "{bad}");
        }
    }
}
