//! Per-key token buckets, in memory. Buckets outlive bundle reloads (they are keyed by the key's hash), and pick
//! up a changed rate at the next request.

use std::collections::HashMap;
use std::time::Instant;

use lifeguard_policy::RateLimit;
use parking_lot::Mutex;

const SHARDS: usize = 16;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets sharded by key hash so concurrent Checks rarely contend.
#[derive(Debug)]
pub struct RateLimiter {
    shards: [Mutex<HashMap<[u8; 32], Bucket>>; SHARDS],
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }
}

impl RateLimiter {
    /// Takes one token for `key`. `Err(seconds)` says how long until one is available.
    pub fn take(&self, key: &[u8; 32], limit: RateLimit, now: Instant) -> Result<(), u64> {
        let rate = f64::from(limit.per_minute) / 60.0;
        let burst = f64::from(limit.burst);
        let mut shard = self.shards[usize::from(key[0]) % SHARDS].lock();
        let bucket = shard.entry(*key).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / rate).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let rl = RateLimiter::default();
        let k = [7u8; 32];
        let lim = RateLimit {
            per_minute: 60,
            burst: 3,
        };
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(rl.take(&k, lim, t0), Ok(()));
        }
        assert_eq!(rl.take(&k, lim, t0), Err(1));
        // One token per second at 60/min.
        assert_eq!(rl.take(&k, lim, t0 + Duration::from_millis(1001)), Ok(()));
        assert!(rl.take(&k, lim, t0 + Duration::from_millis(1002)).is_err());
    }

    #[test]
    fn keys_are_independent() {
        let rl = RateLimiter::default();
        let lim = RateLimit {
            per_minute: 1,
            burst: 1,
        };
        let t0 = Instant::now();
        assert!(rl.take(&[1; 32], lim, t0).is_ok());
        assert!(rl.take(&[2; 32], lim, t0).is_ok());
        assert_eq!(rl.take(&[1; 32], lim, t0), Err(60));
    }
}
