//! Cache-aside reads: records, listing pages and values, with positions overlaid from the hot
//! tier, and warming at start-up.

use std::sync::atomic::Ordering;

use fred::prelude::{KeysInterface, Value};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::keys::Tier;
use super::pipeline::Command;
use super::{RedisCache, VALUE_LIMIT};
use crate::{NpcFilter, NpcPage, NpcRecord, Page, PositionRow, Storage, StorageError};

/// A listing page as cached: the request is kept with the answer, so a hash collision of two
/// requests is a miss, not a wrong answer.
#[derive(Serialize, serde::Deserialize)]
struct CachedPage {
    filter: NpcFilter,
    page: Page,
    result: NpcPage,
}

impl<S: Storage> RedisCache<S> {
    /// Caches up to `max` NPCs (by ascending id) from the store, so the first reads after a
    /// start hit. The store's current state holds the NPCs in the world (removed ones are
    /// deleted), so these are active NPCs. Returns how many were cached.
    ///
    /// # Errors
    /// When the store fails; Redis trouble only stops the warming early.
    pub async fn warm(&self, max: usize) -> Result<usize, StorageError> {
        let mut page = Page::first(Page::MAX_LIMIT);
        let mut cached = 0;
        while cached < max {
            let got = self.inner.list_npcs(&NpcFilter::default(), page).await?;
            let take = got.npcs.len().min(max - cached);
            let generation = self.generation.load(Ordering::Acquire);
            if !self.fill_npcs(&got.npcs[..take], generation).await {
                break;
            }
            cached += take;
            match got.next {
                Some(after) => page = Page { after: Some(after), limit: Page::MAX_LIMIT },
                None => break,
            }
        }
        Ok(cached)
    }

    /// `Storage::get_npc` through the cache.
    pub(super) async fn get_npc_cached(&self, id: u64) -> Result<Option<NpcRecord>, StorageError> {
        let epoch = self.fresh_epoch().await;
        let (npc_key, pos_key) = (self.key("npc", id), self.key("pos", id));
        if let Some(Value::Array(v)) =
            self.redis("get_npc", self.pool.mget::<Value, _>(vec![npc_key.clone(), pos_key.clone()])).await
            && v.len() == 2
            && self.same_epoch(epoch)
        {
            let record: Option<NpcRecord> =
                if v[0].is_null() { None } else { self.decode(&npc_key, &v[0]).await };
            if let Some(mut record) = record {
                self.count(Tier::Warm, true);
                let pos: Option<PositionRow> =
                    if v[1].is_null() { None } else { self.decode(&pos_key, &v[1]).await };
                self.count(Tier::Hot, pos.is_some());
                if let Some(p) = pos
                    && p.tick >= record.updated_tick
                {
                    (record.x, record.y, record.z, record.updated_tick) = (p.x, p.y, p.z, p.tick);
                }
                return Ok(Some(record));
            }
        }
        self.count(Tier::Warm, false);
        let generation = self.generation.load(Ordering::Acquire);
        let found = self.inner.get_npc(id).await?;
        if let Some(record) = &found {
            self.fill_npcs(std::slice::from_ref(record), generation).await;
        }
        Ok(found)
    }

    /// `Storage::list_npcs` through the cache.
    pub(super) async fn list_npcs_cached(
        &self,
        filter: &NpcFilter,
        page: Page,
    ) -> Result<NpcPage, StorageError> {
        let request = terrarium_codec::encode(&(filter, page)).unwrap_or_default();
        let epoch = self.fresh_epoch().await;
        let key = self.key("list", format_args!("{:016x}", terrarium_codec::checksum(&request)));
        if let Some(v) = self.redis("list_npcs", self.pool.get::<Value, _>(key.clone())).await
            && self.same_epoch(epoch)
            && !v.is_null()
            && let Some(cached) = self.decode::<CachedPage>(&key, &v).await
            && cached.filter == *filter
            && cached.page == page
        {
            self.count(Tier::Warm, true);
            let mut result = cached.result;
            let ids: Vec<u64> = result.npcs.iter().map(|r| r.id).collect();
            for (r, p) in result.npcs.iter_mut().zip(self.positions(&ids).await) {
                if let Some(p) = p
                    && p.tick >= r.updated_tick
                {
                    (r.x, r.y, r.z, r.updated_tick) = (p.x, p.y, p.z, p.tick);
                }
            }
            return Ok(result);
        }
        self.count(Tier::Warm, false);
        let generation = self.generation.load(Ordering::Acquire);
        let result = self.inner.list_npcs(filter, page).await?;
        let cached = CachedPage { filter: filter.clone(), page, result };
        if let Ok(bytes) = terrarium_codec::encode(&cached) {
            // Hot tier: the page's positions are refreshed from the hot tier, so it must not
            // outlive them.
            let mut commands = vec![
                Command::Set(key.clone(), bytes, self.ttl(Tier::Hot)),
                Command::Tag(self.tag_key("lists"), key.clone(), self.ttl_s(Tier::Hot)),
            ];
            if let Some(swarm) = filter.swarm {
                commands.push(Command::Tag(
                    self.tag_key(&format!("swarm:{swarm}")),
                    key.clone(),
                    self.ttl_s(Tier::Hot),
                ));
            }
            if self.pipelined("fill_list", commands).await
                && self.generation.load(Ordering::Acquire) != generation
            {
                self.invalidate_keys(vec![key]).await;
            }
        }
        Ok(cached.result)
    }
}

impl<S> RedisCache<S> {
    /// A value cached with [`RedisCache::put_value`], counted as a hit or miss of `tier`.
    pub async fn get_value<T: DeserializeOwned>(&self, tier: Tier, name: &str) -> Option<T> {
        self.fresh_epoch().await;
        let key = self.key("val", name);
        let found = self.redis("get_value", self.pool.get::<Value, _>(key.clone())).await;
        let value = match found {
            Some(v) => self.decode(&key, &v).await,
            None => None,
        };
        self.count(tier, value.is_some());
        value
    }

    /// Decodes a cached value; a value that does not decode is deleted and counted.
    async fn decode<T: DeserializeOwned>(&self, key: &str, v: &Value) -> Option<T> {
        let bytes = v.as_bytes()?;
        match terrarium_codec::decode(bytes, VALUE_LIMIT) {
            Ok(t) => Some(t),
            Err(e) => {
                self.counters.decode_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(key, error = %e, "undecodable cached value; deleting it");
                let _ = self.redis("delete", self.pool.del::<Value, _>(key)).await;
                None
            }
        }
    }

    /// Caches NPC records (warm) tagged by swarm, unless a write finished since `generation`
    /// was read. False when Redis failed.
    async fn fill_npcs(&self, records: &[NpcRecord], generation: u64) -> bool {
        let mut commands = Vec::with_capacity(records.len() * 2);
        let ttl = self.ttl(Tier::Warm);
        self.fresh_epoch().await;
        for r in records {
            let Ok(bytes) = terrarium_codec::encode(r) else { continue };
            let key = self.key("npc", r.id);
            commands.push(Command::Set(key.clone(), bytes, ttl.clone()));
            commands.push(Command::Tag(
                self.tag_key(&format!("swarm:{}", r.swarm)),
                key,
                self.ttl_s(Tier::Warm),
            ));
        }
        let ok = self.pipelined("fill", commands).await;
        if ok && self.generation.load(Ordering::Acquire) != generation {
            let keys = records.iter().map(|r| self.key("npc", r.id)).collect();
            self.invalidate_keys(keys).await;
        }
        ok
    }

    /// Positions from the hot tier for `ids`, in order (`None` where missing or on error).
    async fn positions(&self, ids: &[u64]) -> Vec<Option<PositionRow>> {
        if ids.is_empty() {
            return Vec::new();
        }
        let epoch = self.fresh_epoch().await;
        let keys: Vec<String> = ids.iter().map(|&id| self.key("pos", id)).collect();
        let Some(Value::Array(values)) = self.redis("mget", self.pool.mget::<Value, _>(keys.clone())).await
        else {
            return vec![None; ids.len()];
        };
        if !self.same_epoch(epoch) {
            return vec![None; ids.len()];
        }
        let mut out = Vec::with_capacity(ids.len());
        for (key, v) in keys.iter().zip(values.iter()) {
            out.push(if v.is_null() { None } else { self.decode(key, v).await });
        }
        out.resize(ids.len(), None);
        for p in &out {
            self.count(Tier::Hot, p.is_some());
        }
        out
    }
}
