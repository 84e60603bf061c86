//! Token buckets per client, in a bounded map: who a client is (an IPv4 address, an IPv6
//! prefix, or behind a trusted proxy the address it forwarded), and how fast it may go.
//!
//! Buckets outlive connections, so reconnecting does not refill one. A bucket idle long enough
//! to be full again is the same as a new one and is forgotten first; past the map's bound,
//! clients it has no room for share one overflow bucket (so a flood from many addresses slows
//! down together instead of each address getting a fresh burst).

use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use rustc_hash::FxHashMap;

use crate::keys::Access;

/// A sustained rate with a burst.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateLimit {
    pub(crate) per_s: f64,
    pub(crate) burst: f64,
}

impl RateLimit {
    /// How long an idle bucket takes to fill from empty: after that it equals a new one.
    fn refill_time(self) -> Duration {
        Duration::from_secs_f64(self.burst / self.per_s)
    }
}

/// One token bucket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub(crate) fn full(rate: RateLimit, now: Instant) -> Self {
        Self { tokens: rate.burst, at: now }
    }

    /// Takes `n` tokens: `Ok`, or how long until there are enough (nothing taken).
    pub(crate) fn take(&mut self, rate: RateLimit, n: f64, now: Instant) -> Result<(), Duration> {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * rate.per_s;
        self.tokens = (self.tokens + refill).min(rate.burst);
        self.at = now;
        if self.tokens >= n {
            self.tokens -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((n - self.tokens) / rate.per_s))
        }
    }

    /// Full again by `now` (forgetting it loses nothing).
    fn refilled(&self, rate: RateLimit, now: Instant) -> bool {
        now.saturating_duration_since(self.at) >= rate.refill_time()
    }
}

const SHARDS: usize = 16;

/// Buckets per client, at most `capacity` of them.
#[derive(Debug)]
pub(crate) struct ClientBuckets {
    rate: RateLimit,
    per_shard: usize,
    shards: Vec<Mutex<Shard>>,
    overflow: Mutex<Bucket>,
}

#[derive(Debug)]
struct Shard {
    buckets: FxHashMap<IpAddr, Bucket>,
    /// The last sweep of refilled buckets (at most one a second: bounded work).
    swept: Instant,
}

impl ClientBuckets {
    pub(crate) fn new(rate: RateLimit, capacity: usize) -> Self {
        let now = Instant::now();
        let shard = || Mutex::new(Shard { buckets: FxHashMap::default(), swept: now });
        Self {
            rate,
            per_shard: capacity.div_ceil(SHARDS).max(1),
            shards: (0..SHARDS).map(|_| shard()).collect(),
            overflow: Mutex::new(Bucket::full(rate, now)),
        }
    }

    fn shard(&self, client: &IpAddr) -> MutexGuard<'_, Shard> {
        let h = match client {
            IpAddr::V4(a) => u32::from(*a) as usize,
            IpAddr::V6(a) => (u128::from(*a) >> 64) as usize ^ (u128::from(*a) as usize),
        };
        // Plain data, consistent at every unlock.
        self.shards[(h ^ (h >> 7) ^ (h >> 17)) % SHARDS].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One token from `client`'s bucket: `Ok`, or how long until one is available.
    pub(crate) fn take(&self, client: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let rate = self.rate;
        let mut shard = self.shard(&client);
        if let Some(b) = shard.buckets.get_mut(&client) {
            return b.take(rate, 1.0, now);
        }
        if shard.buckets.len() >= self.per_shard && now.duration_since(shard.swept) >= Duration::from_secs(1)
        {
            shard.swept = now;
            shard.buckets.retain(|_, b| !b.refilled(rate, now));
        }
        if shard.buckets.len() < self.per_shard {
            let mut b = Bucket::full(rate, now);
            let taken = b.take(rate, 1.0, now);
            shard.buckets.insert(client, b);
            return taken;
        }
        drop(shard);
        self.overflow.lock().unwrap_or_else(PoisonError::into_inner).take(rate, 1.0, now)
    }

    /// Clients with a bucket now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().buckets.len()).sum()
    }
}

/// One bucket per API key ([`Access`]: the read-write key and the read-only one; a map
/// bounded by the keys configured), for requests made with it from any client.
#[derive(Debug)]
pub(crate) struct KeyBuckets {
    rate: RateLimit,
    buckets: [Mutex<Bucket>; 2],
}

impl KeyBuckets {
    pub(crate) fn new(rate: RateLimit) -> Self {
        let now = Instant::now();
        Self { rate, buckets: [Mutex::new(Bucket::full(rate, now)), Mutex::new(Bucket::full(rate, now))] }
    }

    /// One token from the bucket of the key that grants `access`: `Ok`, or how long until one
    /// is available.
    pub(crate) fn take(&self, access: Access) -> Result<(), Duration> {
        let i = match access {
            Access::Read => 0,
            Access::Write => 1,
        };
        // Plain data, consistent at every unlock.
        let mut b = self.buckets[i].lock().unwrap_or_else(PoisonError::into_inner);
        b.take(self.rate, 1.0, Instant::now())
    }
}

/// Which client an address is: IPv4 as is (an IPv4-mapped IPv6 address as its IPv4 address),
/// IPv6 by its first `v6_bits` bits.
#[must_use]
pub(crate) fn client_of(ip: IpAddr, v6_bits: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(v6_bits))),
        },
    }
}

fn mask128(bits: u8) -> u128 {
    match bits {
        0 => 0,
        b if b >= 128 => u128::MAX,
        b => !(u128::MAX >> b),
    }
}

/// Networks whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub(crate) struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    pub(crate) fn new(nets: Vec<(IpAddr, u8)>) -> Self {
        Self(nets)
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let ip = client_of(ip, 128);
        self.0.iter().any(|&(net, bits)| match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let m = if bits == 0 { 0 } else { u32::MAX << (32 - u32::from(bits.min(32))) };
                u32::from(n) & m == u32::from(a) & m
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => u128::from(n) & mask128(bits) == u128::from(a) & mask128(bits),
            _ => false,
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The address a request is from: the peer, or when the peer is a trusted proxy, the
    /// rightmost `X-Forwarded-For` entry that is not one (entries left of it could be forged
    /// by the client). A header that does not parse counts as absent.
    pub(crate) fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if self.is_empty() || !self.contains(peer) {
            return peer;
        }
        let mut found = peer;
        // Each header line is a list; later lines were appended by nearer proxies.
        let lines: Vec<&str> =
            headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect();
        for entry in lines.iter().rev().flat_map(|l| l.rsplit(',')) {
            match entry.trim().parse::<IpAddr>() {
                Ok(ip) if self.contains(ip) => found = ip,
                Ok(ip) => return ip,
                Err(_) => return found,
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_has_its_own_bucket() {
        let keys = KeyBuckets::new(RateLimit { per_s: 0.001, burst: 2.0 });
        assert!(keys.take(Access::Write).is_ok() && keys.take(Access::Write).is_ok());
        let wait = keys.take(Access::Write).unwrap_err();
        assert!(wait > Duration::from_secs(100), "{wait:?}");
        assert!(keys.take(Access::Read).is_ok(), "the read-only key's bucket is its own");
    }

    const RATE: RateLimit = RateLimit { per_s: 10.0, burst: 3.0 };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::full(RATE, t0);
        assert!((0..3).all(|_| b.take(RATE, 1.0, t0).is_ok()));
        let wait = b.take(RATE, 1.0, t0).unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        assert!(b.take(RATE, 1.0, t0 + Duration::from_millis(100)).is_ok());
    }

    #[test]
    fn clients_are_addresses_and_ipv6_prefixes() {
        assert_eq!(client_of(ip("2001:db8:1:2:aaaa::1"), 64), ip("2001:db8:1:2::"));
        assert_eq!(client_of(ip("2001:db8:1:2:bbbb::9"), 64), client_of(ip("2001:db8:1:2::7"), 64));
        assert_ne!(client_of(ip("2001:db8:1:3::1"), 64), client_of(ip("2001:db8:1:2::1"), 64));
        assert_eq!(client_of(ip("::ffff:10.1.2.3"), 64), ip("10.1.2.3"));
        assert_eq!(client_of(ip("10.1.2.3"), 64), ip("10.1.2.3"));
        assert_eq!(client_of(ip("::1"), 128), ip("::1"));
    }

    #[test]
    fn buckets_are_per_client_and_bounded() {
        let buckets = ClientBuckets::new(RATE, 16);
        assert!((0..3).all(|_| buckets.take(ip("10.0.0.1")).is_ok()));
        assert!(buckets.take(ip("10.0.0.1")).is_err(), "a client's burst is spent");
        assert!(buckets.take(ip("10.0.0.2")).is_ok(), "another client has its own");
        // Many more clients than room: the map stays bounded, the rest share one bucket.
        let refused =
            (0..1000u32).filter(|i| buckets.take(IpAddr::V4((0x0b00_0000 + i).into())).is_err()).count();
        assert!(buckets.len() <= 16 + SHARDS, "{}", buckets.len());
        assert!(refused > 900, "the overflow bucket is shared: {refused} refused");
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxies = TrustedProxies::new(vec![(ip("10.0.0.0"), 8), (ip("fd00::"), 8)]);
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "6.6.6.6, 1.2.3.4".parse().unwrap());
        h.append("x-forwarded-for", "10.9.9.9".parse().unwrap());
        assert_eq!(proxies.client_ip(ip("10.0.0.5"), &h), ip("1.2.3.4"), "rightmost untrusted");
        assert_eq!(proxies.client_ip(ip("5.5.5.5"), &h), ip("5.5.5.5"), "not from a proxy");
        assert_eq!(TrustedProxies::default().client_ip(ip("10.0.0.5"), &h), ip("10.0.0.5"), "off");
        let mut bad = HeaderMap::new();
        bad.append("x-forwarded-for", "nonsense".parse().unwrap());
        assert_eq!(proxies.client_ip(ip("10.0.0.5"), &bad), ip("10.0.0.5"));
        assert!(proxies.contains(ip("fd12::1")) && !proxies.contains(ip("fe80::1")));
        assert!(proxies.contains(ip("::ffff:10.1.1.1")));
    }
}
