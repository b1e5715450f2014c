//! Per-peer rate limits: a token bucket per key, time passed in.
//!
//! Used where one peer must not be able to make us do unbounded work: inbound direct messages
//! (a burst, then a steady rate) and call invitations (one, then one per 10 s, refunded when a
//! person answered). Hand-written rather than `governor`: governor's keyed limiter reads its own
//! clock (a test cannot pass time in without a fake clock type threaded through the service),
//! takes integer quotas (kith's options are fractional, e.g. 0.1 per second, and the benchmark
//! turns the limit off with 1e9), and has no way to refund one key, which calls need. The rule is
//! thirty lines and its bound is property-tested below.

use std::{collections::HashMap, hash::Hash, time::Instant};

/// A bucket's size and refill rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Most requests accepted at once from a full bucket.
    pub burst: f64,
    /// Tokens added per second, up to `burst`.
    pub per_sec: f64,
}

/// One token bucket per key. Keys whose bucket has refilled are forgotten once the map grows
/// past [`RateLimiter::PRUNE_ABOVE`], so a flood of distinct keys costs bounded memory.
#[derive(Debug, Clone)]
pub struct RateLimiter<K> {
    rate: Rate,
    buckets: HashMap<K, (f64, Instant)>,
}

impl<K: Eq + Hash + Clone> RateLimiter<K> {
    /// Above this many keys, buckets that are full again are dropped (a full bucket and a missing
    /// one behave the same).
    pub const PRUNE_ABOVE: usize = 4096;

    /// An empty limiter (every key starts with a full bucket).
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            buckets: HashMap::new(),
        }
    }

    /// The rate it applies.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Whether one more request from `key` at `now` is allowed; if so it takes a token. Times
    /// earlier than the last seen for a key count as that time (no refill, no penalty).
    pub fn allow(&mut self, key: &K, now: Instant) -> bool {
        if self.buckets.len() > Self::PRUNE_ABOVE {
            self.prune(now);
        }
        let rate = self.rate;
        let (tokens, at) = self.buckets.entry(key.clone()).or_insert((rate.burst, now));
        let elapsed = now.saturating_duration_since(*at).as_secs_f64();
        *tokens = (*tokens + elapsed * rate.per_sec).min(rate.burst);
        *at = (*at).max(now);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Fills `key`'s bucket again (a request that turned out to be wanted).
    pub fn refund(&mut self, key: &K) {
        self.buckets.remove(key);
    }

    /// Forgets every bucket that has refilled by `now`.
    fn prune(&mut self, now: Instant) {
        let rate = self.rate;
        self.buckets.retain(|_, (tokens, at)| {
            *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate.per_sec < rate.burst
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_burst_then_the_steady_rate_and_keys_are_separate() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(Rate {
            burst: 3.0,
            per_sec: 2.0,
        });
        assert!((0..3).all(|_| limiter.allow(&"a", start)));
        assert!(!limiter.allow(&"a", start));
        assert!(limiter.allow(&"b", start), "another key has its own bucket");
        assert!(!limiter.allow(&"a", start + Duration::from_millis(400)));
        assert!(limiter.allow(&"a", start + Duration::from_millis(500)));
        // An earlier time than the last one refills nothing.
        assert!(!limiter.allow(&"a", start));
    }

    #[test]
    fn a_refund_fills_the_bucket_again() {
        let now = Instant::now();
        let mut limiter = RateLimiter::new(Rate {
            burst: 1.0,
            per_sec: 0.1,
        });
        assert!(limiter.allow(&7, now));
        assert!(!limiter.allow(&7, now + Duration::from_secs(9)));
        limiter.refund(&7);
        assert!(limiter.allow(&7, now + Duration::from_secs(9)));
    }

    #[test]
    fn many_keys_are_pruned_once_full_again() {
        let now = Instant::now();
        let mut limiter = RateLimiter::new(Rate {
            burst: 1.0,
            per_sec: 1.0,
        });
        for k in 0..=RateLimiter::<u32>::PRUNE_ABOVE as u32 {
            limiter.allow(&k, now);
        }
        let later = now + Duration::from_secs(2);
        assert!(limiter.allow(&u32::MAX, later));
        assert!(limiter.buckets.len() <= 2, "{}", limiter.buckets.len());
        assert!(limiter.allow(&0, later), "a pruned key starts full");
    }

    proptest! {
        /// In any window, a key gets at most `burst + per_sec × window` requests through.
        #[test]
        fn accepted_requests_stay_under_the_bound(
            burst in 1u32..20,
            per_sec in 0.0f64..50.0,
            gaps_ms in proptest::collection::vec(0u64..300, 1..200),
        ) {
            let start = Instant::now();
            let mut limiter = RateLimiter::new(Rate { burst: f64::from(burst), per_sec });
            let mut t = start;
            let mut accepted = Vec::new();
            for gap in gaps_ms {
                t += Duration::from_millis(gap);
                if limiter.allow(&(), t) {
                    accepted.push(t);
                }
            }
            for (i, from) in accepted.iter().enumerate() {
                for (j, to) in accepted.iter().enumerate().skip(i) {
                    let window = to.duration_since(*from).as_secs_f64();
                    let count = (j - i + 1) as f64;
                    prop_assert!(count <= f64::from(burst) + per_sec * window + 1e-9,
                        "{count} accepted in {window} s");
                }
            }
        }
    }
}
