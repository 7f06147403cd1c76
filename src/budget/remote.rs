//! The budget counts in Redis, shared by every replica: one hash per scope and period
//! (`{prefix}:b:d2026-12-01:provider/openai` with fields `s` spent, `p` possibly billed, `r`
//! reserved), expiring a day after its period ends; each open reservation is a hash (`a` the
//! amount, `k` the counts it holds on) and an entry in a sorted set by the time its holder's
//! call must have ended. Every change is one Lua script, so a reservation checks and takes
//! every count at once and no other replica's call slips between.
//!
//! A replica that dies leaves its reservations open; the next reservation by any replica
//! sweeps those whose time is up into possibly billed spend (the holder may have been billed),
//! and a late settle by a holder that was only slow moves them back to what was billed.

use std::time::Duration;

use redis::Script;
use time::OffsetDateTime;

use super::{Line, Micros, Period, Scope, Tally, EXPIRY_MARGIN};
use crate::cluster::{Cluster, ClusterDown};

/// At most this many dead reservations are swept per reservation, so one is never slow.
const SWEEP_BATCH: usize = 64;

/// KEYS: the holds' sorted set, this hold's hash, then each count. ARGV: the amount, now (ms),
/// the hold's sweep time (ms), the hold hash's lifetime (ms), the prefix of hold hashes, the
/// hold's id, then per count its limit (-1: none) and its expiry (ms).
/// Returns {0} when reserved, else {index of the count it does not fit, spent, possibly, reserved}.
const RESERVE: &str = r#"
local now = tonumber(ARGV[2])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[7 + 2 * (#KEYS - 2)]))
for _, id in ipairs(dead) do
  local hold = ARGV[5] .. id
  local amount = redis.call('HGET', hold, 'a')
  local counts = redis.call('HGET', hold, 'k')
  if amount and counts and amount ~= '0' then
    for count in string.gmatch(counts, '[^\n]+') do
      if redis.call('EXISTS', count) == 1 then
        redis.call('HINCRBY', count, 'r', '-' .. amount)
        redis.call('HINCRBY', count, 'p', amount)
      end
    end
    redis.call('HSET', hold, 'x', '1')
  end
  redis.call('ZREM', KEYS[1], id)
end
local amount = tonumber(ARGV[1])
local n = #KEYS - 2
for i = 1, n do
  local limit = tonumber(ARGV[5 + 2 * i])
  if limit >= 0 then
    local v = redis.call('HMGET', KEYS[2 + i], 's', 'p', 'r')
    local s = tonumber(v[1] or '0')
    local p = tonumber(v[2] or '0')
    local r = tonumber(v[3] or '0')
    local used = s + p + r
    if (amount == 0 and used >= limit) or (amount > 0 and used + amount > limit) then
      return {i, s, p, r}
    end
  end
end
local counts = {}
for i = 1, n do
  local count = KEYS[2 + i]
  if amount > 0 then
    redis.call('HINCRBY', count, 'r', ARGV[1])
  end
  redis.call('PEXPIREAT', count, ARGV[6 + 2 * i])
  counts[i] = count
end
if amount > 0 then
  redis.call('HSET', KEYS[2], 'a', ARGV[1], 'k', table.concat(counts, '\n'))
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[6])
end
return {0}
"#;

/// KEYS: the holds' sorted set, the hold's hash, then each count. ARGV: the hold's id, the
/// amount reserved, billed, possibly billed, then each count's expiry (ms).
const SETTLE: &str = r#"
local field = 'r'
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
  if redis.call('HGET', KEYS[2], 'x') then field = 'p' else field = false end
end
if ARGV[2] == '0' then field = false end
for i = 3, #KEYS do
  local count = KEYS[i]
  if field then redis.call('HINCRBY', count, field, '-' .. ARGV[2]) end
  if ARGV[3] ~= '0' then redis.call('HINCRBY', count, 's', ARGV[3]) end
  if ARGV[4] ~= '0' then redis.call('HINCRBY', count, 'p', ARGV[4]) end
  redis.call('PEXPIREAT', count, ARGV[i + 2])
end
redis.call('DEL', KEYS[2])
return 1
"#;

/// KEYS: counts. ARGV: per count the least spend and the expiry (ms).
const SEED: &str = r#"
for i = 1, #KEYS do
  local current = tonumber(redis.call('HGET', KEYS[i], 's') or '0')
  if tonumber(ARGV[2 * i - 1]) > current then
    redis.call('HSET', KEYS[i], 's', ARGV[2 * i - 1])
  end
  redis.call('PEXPIREAT', KEYS[i], ARGV[2 * i])
end
return 1
"#;

/// An open reservation in Redis.
#[derive(Debug)]
pub(super) struct RemoteHold {
    id: String,
    /// Each count's key and expiry (ms).
    counts: Vec<(String, i64)>,
    amount: Micros,
}

fn millis(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// The key of `scope`'s count in the period `instance`.
fn count_key(cluster: &Cluster, instance: &str, scope: &Scope) -> String {
    cluster.key(&format!("b:{instance}:{}", scope.key()))
}

fn expiry(resets_at: OffsetDateTime) -> i64 {
    millis(resets_at) + EXPIRY_MARGIN.as_millis() as i64
}

/// Reserves `amount` on every line, or says which line it does not fit and that line's tally.
pub(super) async fn reserve(
    cluster: &Cluster,
    lines: &[Line],
    amount: Micros,
    now: OffsetDateTime,
    hold_for: Duration,
) -> Result<Result<RemoteHold, (usize, Tally)>, ClusterDown> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let counts: Vec<(String, i64)> = lines
        .iter()
        .map(|l| {
            (
                count_key(cluster, &l.instance, &l.scope),
                expiry(l.resets_at),
            )
        })
        .collect();
    let mut keys = vec![cluster.key("b:holds"), cluster.key(&format!("b:hold:{id}"))];
    keys.extend(counts.iter().map(|(k, _)| k.clone()));
    let hold_ms = hold_for.as_millis() as i64;
    let mut args = vec![
        amount.to_string(),
        millis(now).to_string(),
        (millis(now) + hold_ms).to_string(),
        (hold_ms + EXPIRY_MARGIN.as_millis() as i64).to_string(),
        cluster.key("b:hold:"),
        id.clone(),
    ];
    for (line, (_, expires)) in lines.iter().zip(&counts) {
        let limit = line.limit.as_ref().map_or(-1, |(l, _)| *l as i64);
        args.push(limit.to_string());
        args.push(expires.to_string());
    }
    args.push(SWEEP_BATCH.to_string());
    let script = Script::new(RESERVE);
    let answer: Vec<i64> = cluster.run(&script, &keys, &args).await?;
    match answer.as_slice() {
        [0] => Ok(Ok(RemoteHold { id, counts, amount })),
        [i, s, p, r] if *i >= 1 && (*i as usize) <= lines.len() => {
            let tally = Tally {
                spent: *s as Micros,
                possibly: *p as Micros,
                reserved: *r as Micros,
            };
            Ok(Err((*i as usize - 1, tally)))
        }
        other => Err(ClusterDown {
            since: crate::clock::now_rfc3339(),
            reason: format!("unexpected answer from the reserve script: {other:?}"),
        }),
    }
}

/// Ends `hold`: `billed` and `possibly` become spend. A failure leaves the reservation to the
/// sweep, which counts it as possibly billed: never less than was spent.
pub(super) async fn settle(cluster: &Cluster, hold: &RemoteHold, billed: Micros, possibly: Micros) {
    let mut keys = vec![
        cluster.key("b:holds"),
        cluster.key(&format!("b:hold:{}", hold.id)),
    ];
    keys.extend(hold.counts.iter().map(|(k, _)| k.clone()));
    let mut args = vec![
        hold.id.clone(),
        hold.amount.to_string(),
        billed.to_string(),
        possibly.to_string(),
    ];
    args.extend(hold.counts.iter().map(|(_, e)| e.to_string()));
    let script = Script::new(SETTLE);
    if let Err(down) = cluster.run::<i64>(&script, &keys, &args).await {
        tracing::warn!(
            error = %down.reason,
            "cannot settle a budget reservation in Redis; it counts as possibly billed once its time is up"
        );
    }
}

/// Raises each count to at least its seeded spend.
pub(super) async fn seed(
    cluster: &Cluster,
    spent: &[(Scope, Period, Micros)],
    now: OffsetDateTime,
) -> Result<(), ClusterDown> {
    if spent.is_empty() {
        return Ok(());
    }
    let mut keys = Vec::new();
    let mut args = Vec::new();
    for (scope, period, amount) in spent {
        keys.push(count_key(cluster, &period.instance(now), scope));
        args.push(amount.to_string());
        args.push(expiry(period.resets_at(now)).to_string());
    }
    cluster
        .run::<i64>(&Script::new(SEED), &keys, &args)
        .await
        .map(drop)
}

/// The shared tally of `scope` in the current `period`.
pub(super) async fn tally(
    cluster: &Cluster,
    scope: &Scope,
    period: Period,
    now: OffsetDateTime,
) -> Result<Tally, ClusterDown> {
    let script = Script::new(
        "local v = redis.call('HMGET', KEYS[1], 's', 'p', 'r') \
         return {tonumber(v[1] or '0'), tonumber(v[2] or '0'), tonumber(v[3] or '0')}",
    );
    let key = count_key(cluster, &period.instance(now), scope);
    let v: Vec<i64> = cluster.run(&script, &[key], &[]).await?;
    let at = |i: usize| v.get(i).copied().unwrap_or(0).max(0) as Micros;
    Ok(Tally {
        spent: at(0),
        possibly: at(1),
        reserved: at(2),
    })
}
