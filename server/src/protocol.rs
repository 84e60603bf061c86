//! What clients send, parsed apart from the server: WebSocket client messages, the
//! `GET /api/npcs` query string and the WebSocket sub-protocol offer (where a browser puts its
//! API key). Each parser is a plain function from bytes or text to a typed result, so it can be
//! tested and fuzzed alone; the handlers call exactly these. Also the compact binary position
//! frames of [`WS_PROTOCOL_BINARY`]: their layout, the server's encoder and a checked decoder
//! for Rust clients.

use serde::Deserialize;
use terrarium::engine::{Role, Status};
use terrarium::persistence::Page;

/// The WebSocket sub-protocol this server speaks; the server selects it (echoes it in
/// `Sec-WebSocket-Protocol`) whenever the client offered it.
pub const WS_PROTOCOL: &str = "terrarium.v1";

/// The sub-protocol for compact position frames: a client that offers it (before
/// [`WS_PROTOCOL`], so an older server that does not know it selects that) gets it selected,
/// unless it also offered [`WS_PROTOCOL_BINARY_V2`], and then receives `reset` and `delta`
/// frames as binary messages (see [`BinaryFrame`], v1: no role/status entries ever); every
/// other message stays JSON text.
pub const WS_PROTOCOL_BINARY: &str = "terrarium.binary.v1";

/// The compact frames with each NPC's role and status ([`BinaryFrame`], v2): a client that
/// offers it gets it selected before [`WS_PROTOCOL_BINARY`] (the viewer offers v2, then v1,
/// then [`WS_PROTOCOL`], so older servers select what they know). A client that offers v1
/// only keeps getting v1 frames.
pub const WS_PROTOCOL_BINARY_V2: &str = "terrarium.binary.v2";

/// Prefix of the sub-protocol that carries the API key: a client offers
/// `terrarium.key.<KEY>` beside [`WS_PROTOCOL`]. The server never selects (echoes) it.
pub const WS_KEY_PREFIX: &str = "terrarium.key.";

/// Most sub-protocols one offer may list (a longer offer is refused, not scanned).
pub const MAX_WS_PROTOCOLS: usize = 16;

/// What a client offered in `Sec-WebSocket-Protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WsOffer<'a> {
    /// It offered [`WS_PROTOCOL`] (the server then selects it, unless `binary`).
    pub v1: bool,
    /// It offered [`WS_PROTOCOL_BINARY`] (the server then selects it, unless `binary_v2`).
    pub binary: bool,
    /// It offered [`WS_PROTOCOL_BINARY_V2`] (the server then selects it).
    pub binary_v2: bool,
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
        } else if entry == WS_PROTOCOL_BINARY {
            offer.binary = true;
        } else if entry == WS_PROTOCOL_BINARY_V2 {
            offer.binary_v2 = true;
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

/// An NPC's role and status as the binary frames of [`WS_PROTOCOL_BINARY_V2`] carry them: one
/// little-endian u32, bits 0–16 [`Role::code`] (0 miner, 1 builder, 2 guard, 3 trader, 4 scout,
/// `0x1_0000 | n` for `other:n`), bits 17–23 zero, bits 24–31 the status's number (0 idle,
/// 1 moving, 2 mining, 3 returning, 4 depositing, 5 fleeing, 6 dead: [`Status::ALL`]'s order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NpcKind {
    /// Its role.
    pub role: Role,
    /// Its status.
    pub status: Status,
}

impl NpcKind {
    /// Its u32 word (layout in the type's doc).
    #[must_use]
    pub fn word(self) -> u32 {
        self.role.code() | (self.status as u32) << 24
    }

    /// The kind a word names; `None` for a role code or status number that names none.
    #[must_use]
    pub fn from_word(word: u32) -> Option<Self> {
        let status = *Status::ALL.get((word >> 24) as usize)?;
        let code = word & 0x00FF_FFFF;
        let role = match code {
            0..=4 => Role::BUILT_IN[code as usize],
            _ if code & !0xFFFF == 0x1_0000 => Role::Other((code & 0xFFFF) as u16),
            _ => return None,
        };
        Some(Self { role, status })
    }
}

/// A position frame as a binary message ([`WS_PROTOCOL_BINARY`] and [`WS_PROTOCOL_BINARY_V2`]):
/// the same content as the JSON `reset` and `delta` messages, in little-endian typed arrays a
/// browser reads without parsing (`Uint32Array`/`Float32Array` views of the message's buffer:
/// every array starts at a multiple of its element size). Version 2 adds NPCs' role and
/// status at the end; a v2 frame with no role/status entries is byte for byte a v1 frame.
///
/// | offset | type | what |
/// |---|---|---|
/// | 0 | u8 | kind: 1 `reset`, 2 `delta` |
/// | 1 | u8 | flags: bit 0 set when ids are u64 (else u32: every id of the frame fits) |
/// | 2 | u16 | 0 |
/// | 4 | u32 | `n`: NPCs in `moved` (a reset: every NPC in the area) |
/// | 8 | u32 | `g`: ids in `gone` (0 in a reset) |
/// | 12 | u32 | `c`: role/status entries (v2); always 0 in v1 |
/// | 16 | u64 | tick |
/// | 24 | `n` × u32 or u64 | ids of `moved` |
/// | 24 + `n`·w | `n` × 3 × f32 | their `x, y, z`, interleaved |
/// | next multiple of w | `g` × u32 or u64 | ids of `gone` |
/// | then (v2) | `c` × u32 or u64 | ids whose role/status follow |
/// | then (v2) | `c` × u32 | their role and status ([`NpcKind`]'s word) |
///
/// (`w`: 4 or 8, the id width.) The message is exactly that long; a decoder refuses anything
/// else. In v2 the server lists an NPC's role and status when the client can't know them: for
/// every NPC of a reset, and in a delta for NPCs that entered the area or whose role or status
/// changed (such an NPC may have no row in `moved` when it did not move). Apply `moved`, then
/// `gone`, then the role/status entries.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct BinaryFrame {
    /// The tick the frame is of.
    pub tick: u64,
    /// A `reset` (every NPC in the area) rather than a `delta`.
    pub reset: bool,
    /// NPCs that moved or entered (all of them, for a reset): id and `[x, y, z]`.
    pub moved: Vec<(u64, [f32; 3])>,
    /// NPCs that left the area or were removed.
    pub gone: Vec<u64>,
    /// NPCs' role and status (v2 only; empty in a v1 frame).
    pub kinds: Vec<(u64, NpcKind)>,
}

/// Bytes before the arrays of a [`BinaryFrame`].
pub const BINARY_FRAME_HEADER: usize = 24;

/// Why a binary frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BinaryFrameError {
    /// Shorter than its header.
    #[error("binary frame: {0} bytes, shorter than the {BINARY_FRAME_HEADER}-byte header")]
    Short(usize),
    /// A kind other than 1 (reset) or 2 (delta), or unknown flags.
    #[error("binary frame: unknown kind {kind} or flags {flags:#x}")]
    Unknown {
        /// Byte 0.
        kind: u8,
        /// Byte 1.
        flags: u8,
    },
    /// The counts say another length than the message has (or a reset names gone ids).
    #[error("binary frame: {len} bytes, its counts need {needed}")]
    Length {
        /// The message's length.
        len: usize,
        /// What its header's counts need (saturated).
        needed: u64,
    },
    /// A role/status word that names no role or status.
    #[error("binary frame: role/status word {0:#010x} names none")]
    Kind(u32),
}

impl BinaryFrame {
    /// Its bytes in v1 (the layout in the type's doc, `c` = 0). Counts above `u32::MAX` can't
    /// be encoded: the hub never cuts frames that large (they would be tens of gigabytes).
    #[must_use]
    pub fn encode(tick: u64, reset: bool, moved: &[(u64, [f32; 3])], gone: &[u64]) -> Vec<u8> {
        Self::encode_v2(tick, reset, moved, gone, &[])
    }

    /// Its bytes in v2: v1's, then the role/status entries (none: exactly v1's bytes).
    #[must_use]
    pub fn encode_v2(
        tick: u64,
        reset: bool,
        moved: &[(u64, [f32; 3])],
        gone: &[u64],
        kinds: &[(u64, NpcKind)],
    ) -> Vec<u8> {
        let wide = moved
            .iter()
            .map(|m| m.0)
            .chain(gone.iter().copied())
            .chain(kinds.iter().map(|k| k.0))
            .any(|id| id > u64::from(u32::MAX));
        let w = if wide { 8 } else { 4 };
        let (n, g, c) = (moved.len(), gone.len(), kinds.len());
        let pos_end = BINARY_FRAME_HEADER + n * w + n * 12;
        let gone_at = pos_end.next_multiple_of(w);
        let mut out = Vec::with_capacity(gone_at + g * w + c * (w + 4));
        let count = |len: usize| u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes();
        out.push(if reset { 1 } else { 2 });
        out.push(u8::from(wide));
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&count(n));
        out.extend_from_slice(&count(g));
        out.extend_from_slice(&count(c));
        out.extend_from_slice(&tick.to_le_bytes());
        let id = |out: &mut Vec<u8>, id: u64| {
            if wide {
                out.extend_from_slice(&id.to_le_bytes());
            } else {
                out.extend_from_slice(&(id as u32).to_le_bytes());
            }
        };
        for &(i, _) in moved {
            id(&mut out, i);
        }
        for (_, p) in moved {
            for v in p {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out.resize(gone_at, 0);
        for &i in gone {
            id(&mut out, i);
        }
        for &(i, _) in kinds {
            id(&mut out, i);
        }
        for (_, k) in kinds {
            out.extend_from_slice(&k.word().to_le_bytes());
        }
        out
    }

    /// Reads a binary frame of either version (a v1 frame is a v2 frame with no role/status
    /// entries), checking that its counts match its length exactly (so what it allocates is
    /// bounded by the message's size, which the WebSocket's limit bounds).
    ///
    /// # Errors
    /// [`BinaryFrameError`] for anything but exactly one frame.
    pub fn decode(bytes: &[u8]) -> Result<Self, BinaryFrameError> {
        let header = bytes.get(..BINARY_FRAME_HEADER).ok_or(BinaryFrameError::Short(bytes.len()))?;
        let (kind, flags) = (header[0], header[1]);
        if !(1..=2).contains(&kind) || flags > 1 || header[2..4] != [0, 0] {
            return Err(BinaryFrameError::Unknown { kind, flags });
        }
        let u32_at =
            |at: usize| u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
        let (n, g, c) = (u64::from(u32_at(4)), u64::from(u32_at(8)), u64::from(u32_at(12)));
        let mut tick = [0; 8];
        tick.copy_from_slice(&header[16..24]);
        let w: u64 = if flags == 1 { 8 } else { 4 };
        // At most about 2^32 × 28 each: no overflow in u64.
        let pos_end = BINARY_FRAME_HEADER as u64 + n * w + n * 12;
        let gone_at = pos_end.next_multiple_of(w);
        let kinds_at = gone_at + g * w;
        let needed = kinds_at + c * (w + 4);
        if needed != bytes.len() as u64 || (kind == 1 && g > 0) {
            return Err(BinaryFrameError::Length { len: bytes.len(), needed });
        }
        // Within `bytes` from here: the length was checked.
        let (n, g, c, w) = (n as usize, g as usize, c as usize, w as usize);
        let id = |at: usize| -> u64 {
            let b = &bytes[at..at + w];
            if w == 8 {
                let mut a = [0; 8];
                a.copy_from_slice(b);
                u64::from_le_bytes(a)
            } else {
                u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
        };
        let u32_of = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let pos = BINARY_FRAME_HEADER + n * w;
        let moved = (0..n)
            .map(|k| {
                let p = pos + k * 12;
                let f = |at: usize| f32::from_bits(u32_of(at));
                (id(BINARY_FRAME_HEADER + k * w), [f(p), f(p + 4), f(p + 8)])
            })
            .collect();
        let gone_at = gone_at as usize;
        let gone = (0..g).map(|k| id(gone_at + k * w)).collect();
        let kinds_at = kinds_at as usize;
        let words_at = kinds_at + c * w;
        let kinds = (0..c)
            .map(|k| {
                let word = u32_of(words_at + k * 4);
                NpcKind::from_word(word)
                    .map(|kind| (id(kinds_at + k * w), kind))
                    .ok_or(BinaryFrameError::Kind(word))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { tick: u64::from_le_bytes(tick), reset: kind == 1, moved, gone, kinds })
    }
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
        assert_eq!(
            offer,
            WsOffer { v1: true, binary: false, binary_v2: false, key: Some("abc-DEF_123"), any: true }
        );
        let offer = parse_ws_protocols(["terrarium.binary.v1, terrarium.v1, terrarium.key.k"]).unwrap();
        assert_eq!((offer.v1, offer.binary, offer.binary_v2, offer.key), (true, true, false, Some("k")));
        let offer = parse_ws_protocols(["terrarium.binary.v2, terrarium.binary.v1, terrarium.v1"]).unwrap();
        assert_eq!((offer.v1, offer.binary, offer.binary_v2), (true, true, true));
        // Over two header lines, with other protocols beside.
        let offer = parse_ws_protocols(["chat", "terrarium.key.k ,terrarium.v1"]).unwrap();
        assert_eq!((offer.v1, offer.key), (true, Some("k")));
        assert_eq!(
            parse_ws_protocols(["chat"]).unwrap(),
            WsOffer { v1: false, binary: false, binary_v2: false, key: None, any: true }
        );
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
    fn binary_frames_round_trip_and_refuse_every_other_length() {
        let moved = vec![(3, [1.5, 0.0, -2.25]), (7, [f32::MAX, 1e-3, 9.0]), (9, [0.0; 3])];
        for (gone, wide) in [(vec![4, 5], false), (vec![1 << 40], true), (vec![], false)] {
            let bytes = BinaryFrame::encode(42, false, &moved, &gone);
            let w = if wide { 8 } else { 4 };
            assert_eq!(bytes[1], u8::from(wide));
            assert_eq!(bytes.len(), (24 + 3 * w + 36usize).next_multiple_of(w) + gone.len() * w);
            let f = BinaryFrame::decode(&bytes).unwrap();
            assert_eq!((f.tick, f.reset, &f.moved, &f.gone), (42, false, &moved, &gone));
            // One byte more or less, or a count off by one: refused, whatever the bytes.
            assert!(matches!(
                BinaryFrame::decode(&bytes[..bytes.len() - 1]),
                Err(BinaryFrameError::Length { .. })
            ));
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(BinaryFrame::decode(&longer).is_err());
            let mut lie = bytes.clone();
            lie[4] = 200;
            assert!(matches!(BinaryFrame::decode(&lie), Err(BinaryFrameError::Length { .. })));
        }
        // The largest counts claim far more than the message holds: refused before allocating.
        let mut huge = BinaryFrame::encode(1, false, &[], &[]);
        huge[4..12].copy_from_slice(&[0xFF; 8]);
        assert!(matches!(BinaryFrame::decode(&huge), Err(BinaryFrameError::Length { .. })));
        let reset = BinaryFrame::encode(2, true, &moved[..1], &[]);
        assert_eq!(reset.len(), 24 + 4 + 12);
        let f = BinaryFrame::decode(&reset).unwrap();
        assert!(f.reset && f.gone.is_empty() && f.moved == moved[..1]);
        assert_eq!(BinaryFrame::decode(&reset[..10]), Err(BinaryFrameError::Short(10)));
        let mut odd = reset.clone();
        odd[0] = 3;
        assert!(matches!(BinaryFrame::decode(&odd), Err(BinaryFrameError::Unknown { kind: 3, .. })));
        odd[0] = 1;
        odd[1] = 2;
        assert!(matches!(BinaryFrame::decode(&odd), Err(BinaryFrameError::Unknown { flags: 2, .. })));
        // A reset never names gone ids.
        let bad = BinaryFrame::encode(2, true, &[], &[1]);
        assert!(matches!(BinaryFrame::decode(&bad), Err(BinaryFrameError::Length { .. })));
    }

    #[test]
    fn v1_frames_keep_their_bytes() {
        // The v1 layout is a contract other tools read: pinned byte for byte.
        let bytes = BinaryFrame::encode(0x0102, false, &[(5, [1.0, -2.0, 0.5])], &[9]);
        let mut want =
            vec![2, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0];
        for v in [1.0f32, -2.0, 0.5] {
            want.extend_from_slice(&v.to_le_bytes());
        }
        want.extend_from_slice(&[9, 0, 0, 0]);
        assert_eq!(bytes, want);
        // v2 without role/status entries is exactly v1.
        assert_eq!(BinaryFrame::encode_v2(0x0102, false, &[(5, [1.0, -2.0, 0.5])], &[9], &[]), want);
    }

    #[test]
    fn v2_frames_carry_role_and_status_after_the_v1_arrays() {
        let miner = NpcKind { role: Role::Miner, status: Status::Mining };
        let other = NpcKind { role: Role::Other(0xFFFF), status: Status::Dead };
        assert_eq!(miner.word(), 2 << 24);
        assert_eq!(other.word(), 0x0601_FFFF);
        for k in [miner, other, NpcKind { role: Role::Scout, status: Status::Idle }] {
            assert_eq!(NpcKind::from_word(k.word()), Some(k));
        }
        for bad in [5, 0x0002_0000, 0x0700_0000, 0x0011_0000, u32::MAX] {
            assert_eq!(NpcKind::from_word(bad), None, "{bad:#x}");
        }
        let moved = [(3, [1.0, 2.0, 3.0])];
        for (kinds, w) in [(vec![(3, miner), (8, other)], 4), (vec![(1 << 33, other)], 8)] {
            let bytes = BinaryFrame::encode_v2(7, false, &moved, &[4], &kinds);
            assert_eq!(bytes.len(), (24 + w + 12usize).next_multiple_of(w) + w + kinds.len() * (w + 4));
            assert_eq!(bytes[12] as usize, kinds.len());
            let f = BinaryFrame::decode(&bytes).unwrap();
            assert_eq!((f.moved.as_slice(), f.gone.as_slice(), &f.kinds), (&moved[..], &[4][..], &kinds));
            assert!(matches!(
                BinaryFrame::decode(&bytes[..bytes.len() - 4]),
                Err(BinaryFrameError::Length { .. })
            ));
            // A word that names no status: refused, not guessed.
            let mut bad = bytes.clone();
            let at = bad.len() - 1;
            bad[at] = 9;
            assert!(matches!(BinaryFrame::decode(&bad), Err(BinaryFrameError::Kind(_))));
        }
    }

    /// The fuzz target's checked-in seeds stay valid frames (fuzz/seeds/binary_frame).
    #[test]
    fn the_fuzz_seeds_are_frames() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/binary_frame");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let bytes = std::fs::read(e.unwrap().path()).unwrap();
            BinaryFrame::decode(&bytes).unwrap();
            n += 1;
        }
        assert!(n >= 3, "{n} seeds in {}", dir.display());
    }

    /// Writes the fuzz target's seeds: `cargo test -p terrarium-server --lib write_fuzz_seeds -- --ignored`.
    #[test]
    #[ignore = "writes fuzz/seeds/binary_frame"]
    fn write_fuzz_seeds() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/binary_frame");
        std::fs::create_dir_all(&dir).unwrap();
        let kind = |role, status| NpcKind { role, status };
        let moved = [(1, [0.5, 1.0, 2.0]), (2, [3.0, 0.0, -1.0])];
        let seeds = [
            ("v1_delta", BinaryFrame::encode(10, false, &moved, &[7])),
            ("v1_reset_wide", BinaryFrame::encode(11, true, &[(1 << 40, [1.0; 3])], &[])),
            (
                "v2_reset",
                BinaryFrame::encode_v2(
                    12,
                    true,
                    &moved,
                    &[],
                    &[(1, kind(Role::Miner, Status::Mining)), (2, kind(Role::Other(7), Status::Idle))],
                ),
            ),
            (
                "v2_delta_status_only",
                BinaryFrame::encode_v2(13, false, &[], &[3], &[(2, kind(Role::Guard, Status::Fleeing))]),
            ),
        ];
        for (name, bytes) in seeds {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
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
