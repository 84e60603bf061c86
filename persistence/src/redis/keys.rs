//! Key names, TTL tiers and SCAN patterns: every key lives under the prefix and an epoch.

use std::sync::atomic::Ordering;

use fred::prelude::Expiration;

use super::RedisCache;

/// How long a cached value lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Latest positions ([`crate::RedisConfig::hot_ttl_s`], 60 s by default).
    Hot,
    /// The NPC registry, status and listings ([`crate::RedisConfig::warm_ttl_s`], 300 s).
    Warm,
    /// Slow-changing values such as learning profiles ([`crate::RedisConfig::cold_ttl_s`], 600 s).
    Cold,
}

impl<S> RedisCache<S> {
    pub(super) fn key(&self, kind: &str, id: impl std::fmt::Display) -> String {
        format!("{}{}:{kind}:{id}", self.cfg.key_prefix, self.epoch.load(Ordering::Acquire))
    }

    pub(super) fn tag_key(&self, tag: &str) -> String {
        self.key("tag", tag)
    }

    pub(super) fn ttl(&self, tier: Tier) -> Expiration {
        Expiration::EX(self.ttl_s(tier))
    }

    /// A tier's TTL in seconds.
    pub(super) fn ttl_s(&self, tier: Tier) -> i64 {
        let s = match tier {
            Tier::Hot => self.cfg.hot_ttl_s,
            Tier::Warm => self.cfg.warm_ttl_s,
            Tier::Cold => self.cfg.cold_ttl_s,
        };
        i64::try_from(s).unwrap_or(i64::MAX)
    }
}

/// Escapes `*?[]\` so a prefix matches only itself in a SCAN pattern.
pub(super) fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
