//! The write pipeline: cache maintenance after a write (invalidation, hot positions, events),
//! explicit invalidation and `put_value`, sent as pipelines spread over the pool.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use fred::clients::Pipeline;
use fred::prelude::{ClientLike, Expiration, KeysInterface, PubsubInterface, Value};
use fred::types::{ClusterHash, CustomCommand};
use futures_util::StreamExt;
use serde::Serialize;

use super::RedisCache;
use super::keys::Tier;
use super::scripts::{INVALIDATE_TAG, POSITIONS_PER_CALL, SET_POSITIONS, TAG_ADD};
use crate::{PositionRow, WriteBatch};

/// Keys per pipeline: bounds the memory of one round trip, and makes enough pipelines to keep
/// every pooled connection busy.
const PIPELINE_LEN: usize = 1_000;

impl<S> RedisCache<S> {
    /// Drops one NPC's cached record (by key). Returns false when Redis could not be reached
    /// (the next use of Redis then starts a new epoch).
    pub async fn invalidate_npc(&self, id: u64) -> bool {
        self.fresh_epoch().await;
        let key = self.key("npc", id);
        self.invalidate_keys(vec![key]).await
    }

    /// Drops every cached record and listing page of a swarm (by tag).
    pub async fn invalidate_swarm(&self, swarm: u32) -> bool {
        self.invalidate_tag(&format!("swarm:{swarm}")).await
    }

    /// Drops every cached listing page (by tag).
    pub async fn invalidate_lists(&self) -> bool {
        self.invalidate_tag("lists").await
    }

    /// Caches `value` under `name` in `tier` (for example a learning profile in [`Tier::Cold`]).
    /// Returns false when it was not cached.
    pub async fn put_value<T: Serialize + ?Sized>(&self, tier: Tier, name: &str, value: &T) -> bool {
        let Ok(bytes) = terrarium_codec::encode(value) else { return false };
        self.fresh_epoch().await;
        let key = self.key("val", name);
        let ttl = self.ttl(tier);
        self.redis("put_value", self.pool.set::<Value, _, _>(key, bytes, Some(ttl), None, false))
            .await
            .is_some()
    }

    /// Runs `commands` as pipelines of at most [`PIPELINE_LEN`], spread over the pool. False if
    /// any failed (or Redis is being skipped).
    pub(super) async fn pipelined(&self, what: &str, commands: Vec<Command>) -> bool {
        if commands.is_empty() {
            return true;
        }
        if !self.usable() {
            self.counters.bypassed.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if !self.ensure_epoch().await {
            return false;
        }
        // Writes are not on a game call's path: they get the longer pipeline timeout.
        let options = self.long_options();
        let mut chunks: Vec<&[Command]> = Vec::new();
        let (mut start, mut weight) = (0, 0);
        for (i, c) in commands.iter().enumerate() {
            weight += c.weight();
            if weight >= PIPELINE_LEN || i + 1 == commands.len() {
                chunks.push(&commands[start..=i]);
                (start, weight) = (i + 1, 0);
            }
        }
        let mut pipelines = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            let pipeline = Pipeline::from(self.pool.next().with_options(&options));
            for c in chunk {
                // Queuing into a pipeline only fails on argument conversion, which these
                // types never fail; the real result comes from `all` below.
                let queued: Result<(), _> = match c {
                    Command::Set(k, v, ttl) => {
                        pipeline.set(k.as_str(), v.clone(), Some(ttl.clone()), None, false).await
                    }
                    Command::SetPositions(args) => {
                        // EVAL by hand: fred's pipelines have no `eval`.
                        let eval = CustomCommand::new_static("EVAL", ClusterHash::FirstKey, false);
                        pipeline.custom(eval, args.clone()).await
                    }
                    Command::Del(k) => pipeline.del(k.as_str()).await,
                    Command::Tag(tag, k, ttl_s) => {
                        let eval = CustomCommand::new_static("EVAL", ClusterHash::FirstKey, false);
                        let args = vec![
                            Value::from_static_str(TAG_ADD),
                            Value::from(1),
                            Value::from(tag.as_str()),
                            Value::from(k.as_str()),
                            Value::from(*ttl_s),
                        ];
                        pipeline.custom(eval, args).await
                    }
                    Command::Publish(channel, v) => pipeline.publish(channel.as_str(), v.clone()).await,
                };
                drop(queued);
            }
            pipelines.push(pipeline);
        }
        let runs = pipelines.into_iter().map(|p| async move { p.all::<Value>().await });
        // One pipeline in flight per connection: more only queue up behind each other and run
        // into the command timeout.
        let results: Vec<_> =
            futures_util::stream::iter(runs).buffer_unordered(self.cfg.pool_size.max(1)).collect().await;
        match results.into_iter().find_map(Result::err) {
            None => true,
            Some(e) => {
                self.note_failure(what, &e);
                false
            }
        }
    }

    pub(super) async fn invalidate_keys(&self, keys: Vec<String>) -> bool {
        let n = keys.len() as u64;
        let ok = self.pipelined("invalidate", keys.into_iter().map(Command::Del).collect()).await;
        if ok {
            self.counters.invalidated.fetch_add(n, Ordering::Relaxed);
        } else {
            self.dirty.store(true, Ordering::Release);
        }
        ok
    }

    pub(super) async fn invalidate_tag(&self, tag: &str) -> bool {
        let key = self.tag_key(tag);
        match self.redis("invalidate_tag", self.eval(INVALIDATE_TAG, vec![key], vec![])).await {
            Some(n) => {
                self.counters.invalidated.fetch_add(n, Ordering::Relaxed);
                true
            }
            None => {
                self.dirty.store(true, Ordering::Release);
                false
            }
        }
    }

    /// After a write: invalidation always; positions and events only when it succeeded.
    pub(super) async fn after_write(&self, batches: &[WriteBatch], stored: bool) {
        let started = Instant::now();
        let mut stale: Vec<u64> = Vec::new();
        let mut latest: HashMap<u64, PositionRow> = HashMap::new();
        for b in batches {
            stale.extend(b.npcs.iter().map(|r| r.id).chain(b.removed.iter().copied()));
            for p in &b.positions {
                latest
                    .entry(p.npc_id)
                    .and_modify(|q| {
                        if p.tick >= q.tick {
                            *q = *p;
                        }
                    })
                    .or_insert(*p);
            }
            for id in &b.removed {
                latest.remove(id);
            }
        }
        let changed_npcs = !stale.is_empty();
        // Keys are built from the epoch in use after any pending bump (see `fresh_epoch`).
        self.fresh_epoch().await;
        let mut commands = Vec::with_capacity(stale.len() + latest.len());
        if !stored {
            // It may or may not have been stored: forget everything it touched.
            stale.extend(latest.drain().map(|(id, _)| id));
        }
        for &id in &stale {
            commands.push(Command::Del(self.key("npc", id)));
            commands.push(Command::Del(self.key("pos", id)));
        }
        let hot_s = i64::try_from(self.cfg.hot_ttl_s).unwrap_or(i64::MAX);
        let latest: Vec<PositionRow> = latest.into_values().collect();
        for chunk in latest.chunks(POSITIONS_PER_CALL) {
            let mut args = Vec::with_capacity(3 + chunk.len() * 3);
            args.push(Value::from_static_str(SET_POSITIONS));
            args.push(Value::from(chunk.len() as i64 * 2));
            for p in chunk {
                args.push(Value::from(self.key("pos", p.npc_id)));
                args.push(Value::from(self.key("npc", p.npc_id)));
            }
            args.push(Value::from(hot_s));
            for p in chunk {
                // A position always encodes; an empty value would only be a miss later.
                args.push(Value::Bytes(terrarium_codec::encode(p).unwrap_or_default().into()));
            }
            commands.push(Command::SetPositions(args));
        }
        let mut published = 0;
        if stored && self.cfg.publish_events {
            for e in batches.iter().flat_map(|b| &b.events) {
                if let Ok(bytes) = terrarium_codec::encode(e) {
                    commands.push(Command::Publish(self.event_channel(&e.event_type), bytes));
                    published += 1;
                }
            }
        }
        let n_stale = stale.len() as u64 * 2;
        tracing::debug!(elapsed = ?started.elapsed(), "cache commands built");
        let (n_commands, started) = (commands.len(), Instant::now());
        let ok = self.pipelined("after_write", commands).await;
        tracing::debug!(n_commands, elapsed = ?started.elapsed(), ok, "cache updated after a write");
        if ok {
            self.counters.invalidated.fetch_add(n_stale, Ordering::Relaxed);
            self.counters.published.fetch_add(published, Ordering::Relaxed);
        }
        let lists_ok = !changed_npcs || self.invalidate_tag("lists").await;
        if !(ok && lists_ok) {
            self.dirty.store(true, Ordering::Release);
        }
    }
}

/// One command of a pipeline.
pub(super) enum Command {
    Set(String, Vec<u8>, Expiration),
    /// [`SET_POSITIONS`] with its arguments (script, key count, keys, TTL, values): SET positions
    /// (hot tier) and cut the TTL of each NPC's cached record to at most the same, so a record
    /// never outlives the position that supersedes it.
    SetPositions(Vec<Value>),
    Del(String),
    /// Add a key, which lives this many seconds, to a tag ([`TAG_ADD`]).
    Tag(String, String, i64),
    Publish(String, Vec<u8>),
}

impl Command {
    /// Keys it touches, for sizing pipelines.
    fn weight(&self) -> usize {
        match self {
            Self::SetPositions(args) => args.len() / 3,
            _ => 1,
        }
    }
}
