//! The Lua scripts the cache runs, and how it runs them (EVAL with the pipeline timeout).

use std::time::Duration;

use fred::prelude::{ClientLike, Options, Value};
use fred::types::{ClusterHash, CustomCommand};

use super::keys::escape_glob;
use super::{RedisCache, unavailable};
use crate::StorageError;

/// Deletes every key in the tag `KEYS[1]` (a sorted set, see [`TAG_ADD`]), then the tag.
/// Atomic, so no key cached under the tag while it runs escapes.
pub(super) const INVALIDATE_TAG: &str = r"
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
for i = 1, #members, 1000 do
  redis.call('DEL', unpack(members, i, math.min(i + 999, #members)))
end
redis.call('DEL', KEYS[1])
return #members
";

/// Adds key `ARGV[1]`, which lives `ARGV[2]` seconds, to the tag `KEYS[1]`: a sorted set scored
/// by when each member expires. Members already expired are trimmed first, so a tag holds
/// only keys that still live (it never grows without bound, whatever keys clients make us
/// cache), and the tag itself lives as long as its longest-lived member, so no live member is
/// ever orphaned from invalidation.
pub(super) const TAG_ADD: &str = r"
local now = tonumber(redis.call('TIME')[1])
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
if redis.call('TTL', KEYS[1]) < ttl then
  redis.call('EXPIRE', KEYS[1], ttl)
end
return redis.call('ZCARD', KEYS[1])
";

/// Writes positions: for each pair of keys, SETs `KEYS[i]` (the position, `ARGV[k + 1]`) with a
/// TTL of `ARGV[1]` seconds and cuts the TTL of `KEYS[i + 1]` (the NPC's record) to at most that.
/// One command per chunk instead of two per NPC: Redis itself takes millions of SETs a second,
/// the client's cost per command is what bounds the rate (measured: ≈ 3.6 µs per pipelined
/// command with fred on the development machine).
pub(super) const SET_POSITIONS: &str = r"
local ttl = ARGV[1]
for i = 1, #KEYS, 2 do
  redis.call('SET', KEYS[i], ARGV[(i + 1) / 2 + 1], 'EX', ttl)
  redis.call('EXPIRE', KEYS[i + 1], ttl, 'LT')
end
return #KEYS / 2
";

/// Positions per [`SET_POSITIONS`] call.
pub(super) const POSITIONS_PER_CALL: usize = 256;

/// Deletes every key matching `ARGV[1]` (tests and tools; it blocks Redis while it runs).
pub(super) const CLEAR_PATTERN: &str = r"
local cursor, n = '0', 0
repeat
  local r = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
  cursor = r[1]
  for _, k in ipairs(r[2]) do redis.call('DEL', k); n = n + 1 end
until cursor == '0'
return n
";
impl<S> RedisCache<S> {
    /// Deletes every key under this cache's prefix, all epochs (tests and tools: it blocks Redis
    /// while it scans).
    ///
    /// # Errors
    /// When Redis can't be reached.
    pub async fn clear_prefix(&self) -> Result<u64, StorageError> {
        let pattern = format!("{}*", escape_glob(&self.cfg.key_prefix));
        self.eval(CLEAR_PATTERN, vec![], vec![Value::from(pattern)]).await.map_err(unavailable)
    }

    /// EVAL with the pipeline timeout (fred's `eval` would use the short command timeout).
    pub(super) async fn eval(
        &self,
        script: &'static str,
        keys: Vec<String>,
        argv: Vec<Value>,
    ) -> Result<u64, fred::error::Error> {
        let client = self.pool.next().with_options(&self.long_options());
        let mut args = Vec::with_capacity(keys.len() + argv.len() + 2);
        args.push(Value::from_static_str(script));
        args.push(Value::from(keys.len() as i64));
        args.extend(keys.into_iter().map(Value::from));
        args.extend(argv);
        client.custom(CustomCommand::new_static("EVAL", ClusterHash::FirstKey, false), args).await
    }

    pub(super) fn long_options(&self) -> Options {
        Options { timeout: Some(Duration::from_millis(self.cfg.pipeline_timeout_ms)), ..Default::default() }
    }
}
