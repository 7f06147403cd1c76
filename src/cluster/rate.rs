//! Per-caller `requests_per_minute` counted in the cluster's Redis, so the limit holds for a
//! caller's calls across every replica.
//!
//! A sliding window: `{prefix}:rl:HASH` (HASH a hash of the caller's name) is a sorted set of
//! the caller's admissions by time, on Redis's clock (replicas' clocks may differ); one script
//! drops those older than a minute, refuses when as many as the limit remain (saying when the
//! oldest that matters leaves the window), else records this one. The set expires a minute
//! after its last admission and never holds more entries than the limit.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use redis::Script;
use sha2::{Digest, Sha256};

use super::{Cluster, ClusterDown};

/// The window `requests_per_minute` counts over.
pub const WINDOW: Duration = Duration::from_secs(60);

/// KEYS: the caller's set. ARGV: the limit, the window (ms), this admission's unique member.
/// Returns {1, 0} when admitted, else {0, ms until one would be}.
const TAKE: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
if limit <= 0 then return {0, window} end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local n = redis.call('ZCARD', KEYS[1])
if n >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], n - limit, n - limit, 'WITHSCORES')
  local wait = window
  if oldest[2] then wait = tonumber(oldest[2]) + window - now end
  if wait < 1 then wait = 1 end
  return {0, wait}
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], window)
return {1, 0}
"#;

/// Makes each admission's member unique within this process (the origin makes it unique
/// among replicas).
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// The Redis key of `caller`'s window: the name is hashed (it may be long or odd).
fn key(cluster: &Cluster, caller: &str) -> String {
    let hash: String = Sha256::digest(caller.as_bytes())[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    cluster.key(&format!("rl:{hash}"))
}

/// Takes one of `caller`'s `limit` requests per minute: `Ok(None)` when admitted,
/// `Ok(Some(wait))` when refused (with when one would be admitted), `Err` with Redis down.
pub async fn take(
    cluster: &Cluster,
    caller: &str,
    limit: u32,
) -> Result<Option<Duration>, ClusterDown> {
    let script = Script::new(TAKE);
    let member = format!(
        "{}:{}",
        cluster.origin,
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    );
    let (admitted, wait): (i64, i64) = cluster
        .run(
            &script,
            &[key(cluster, caller)],
            &[limit.to_string(), WINDOW.as_millis().to_string(), member],
        )
        .await?;
    Ok((admitted == 0).then(|| Duration::from_millis(wait.clamp(1, 60_000) as u64)))
}
