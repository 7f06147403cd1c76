//! Key cooldowns and disables shared by every replica through the cluster's Redis.
//!
//! Each change a pool makes (see [`KeyEvents`]) is written as a record `{prefix}:k:HID`
//! expiring with the change (the cooldown, or the recheck interval of a disable), indexed by
//! expiry in `{prefix}:k:index`, and published on `{prefix}:k:events`; a recovery deletes the
//! record. One task per process follows the channel and applies other replicas' changes to
//! the pools attached here; at each (re)subscription it reads the records first, so a replica
//! started later, or back from an outage, still sees a key resting elsewhere.
//!
//! Redis never holds a key, nor the key's own hash: HID is a hash of the prefix and the key's
//! hash, and the record carries the fingerprint (`sk-…abcd`) for people. A replica ignores
//! its own messages and applies others' without telling its observer, so nothing echoes.
//! Disables travel like cooldowns, but a pool built because the configuration changed its
//! keys takes only cooldowns from the records (as [`KeyPool::carry_over`] gives disabled keys
//! another chance); its next success or failure is shared again.
//!
//! With Redis unreachable each replica keeps its own key state, and the status says so.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, Weak,
    },
    time::Duration,
};

use futures::StreamExt;
use imagegen_providers::{
    keys::{KeyChange, KeyEvents, KeyId, KeyPool},
    ErrorKind,
};
use redis::Script;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Cluster, COMMAND_TIMEOUT};

/// The longest rest a record may carry (as the pools bound a hinted cooldown).
const MAX_REST: Duration = Duration::from_secs(24 * 60 * 60);

/// The most records read at a (re)subscription, and kept in the index.
const MAX_RECORDS: usize = 1024;

/// The longest message or record taken from Redis; longer ones are not ours.
const MAX_MESSAGE: usize = 4096;

/// The longest reason of a disable carried between replicas.
const MAX_REASON: usize = 300;

/// Changes waiting to be written; past it, new ones stay on this replica (and say so).
const QUEUE: usize = 1024;

/// How often a quiet subscription is checked with a PING (a dead peer can be silent).
const PING_EVERY: Duration = Duration::from_secs(5);

/// KEYS: the record, the index. ARGV: the channel, HID, the record, its lifetime (ms, 0:
/// delete it), the most entries the index keeps.
const WRITE: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ms = tonumber(ARGV[4])
if ms > 0 then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ms)
  redis.call('ZADD', KEYS[2], now + ms, ARGV[2])
else
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[2])
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local max = tonumber(ARGV[5])
if redis.call('ZCARD', KEYS[2]) > max then
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(max + 1))
end
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if last[2] then redis.call('PEXPIREAT', KEYS[2], last[2]) end
redis.call('PUBLISH', ARGV[1], ARGV[3])
return 1
"#;

/// KEYS: the index. ARGV: what record keys start with, the most to read. Returns each live
/// record with its remaining lifetime (ms).
const READ: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  local key = ARGV[1] .. id
  local value = redis.call('GET', key)
  local ttl = redis.call('PTTL', key)
  if value and ttl > 0 then table.insert(out, {value, ttl}) end
end
return out
"#;

/// One change as Redis holds it (short names: every replica reads it on every change).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    /// The replica that made the change.
    o: String,
    /// The key: a hash of the prefix and the key's own hash.
    h: String,
    /// `cool`, `off` or `ok`.
    s: String,
    /// The rest from when it was written (ms); a read record gets its remaining lifetime.
    #[serde(default)]
    ms: u64,
    /// Consecutive rate limits (`cool`).
    #[serde(default)]
    n: u32,
    /// The error kind of a disable (`off`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    k: Option<String>,
    /// Why the key was disabled (`off`), for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    r: Option<String>,
    /// The key's fingerprint, for people reading Redis.
    #[serde(default)]
    f: String,
}

/// The key state one process shares through one cluster: the pools it applies other
/// replicas' changes to, and the queue of its own changes to write.
pub struct KeySync {
    prefix: String,
    origin: String,
    /// Every pool attached so far; dropped pools are pruned as they are found.
    pools: Mutex<Vec<Weak<KeyPool>>>,
    outgoing: mpsc::Sender<Record>,
    /// The receiving end, until the writer task takes it.
    queued: Mutex<Option<mpsc::Receiver<Record>>>,
    /// Whether the subscription is up now.
    following: AtomicBool,
    /// Whether the tasks were started.
    started: AtomicBool,
    /// Set once a full queue was reported, so the log says it once per episode.
    overflowed: AtomicBool,
}

impl std::fmt::Debug for KeySync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySync")
            .field("prefix", &self.prefix)
            .field("following", &self.following.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The hash that stands for key `id` in Redis under `prefix`.
fn hid(prefix: &str, id: &KeyId) -> String {
    let mut hash = Sha256::new();
    hash.update(prefix.as_bytes());
    hash.update([0]);
    hash.update(id);
    hash.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn millis(d: Duration) -> u64 {
    d.min(MAX_REST).as_millis() as u64
}

/// `text` cut to at most `max` characters.
fn bounded(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

impl KeyEvents for KeySync {
    fn key_changed(&self, id: &KeyId, fingerprint: &str, change: &KeyChange) {
        let mut record = Record {
            o: self.origin.clone(),
            h: hid(&self.prefix, id),
            s: String::new(),
            ms: 0,
            n: 0,
            k: None,
            r: None,
            f: bounded(fingerprint, 40),
        };
        match change {
            KeyChange::CooledDown { rest, strikes } => {
                record.s = "cool".into();
                record.ms = millis(*rest);
                record.n = *strikes;
            }
            KeyChange::Disabled { kind, reason, rest } => {
                record.s = "off".into();
                record.ms = millis(*rest);
                record.k = Some(kind.as_str().into());
                record.r = Some(bounded(reason, MAX_REASON));
            }
            KeyChange::Recovered => record.s = "ok".into(),
            // A change this version does not know stays on this replica.
            _ => return,
        }
        // A rest of nothing is no news (a recheck interval of zero, say).
        if record.s != "ok" && record.ms == 0 {
            return;
        }
        match self.outgoing.try_send(record) {
            Ok(()) => self.overflowed.store(false, Ordering::Relaxed),
            Err(_) => {
                if !self.overflowed.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        key = %fingerprint,
                        "a key's change stays on this replica: the cluster's queue is full"
                    );
                }
            }
        }
    }
}

impl KeySync {
    fn new(cluster: &Cluster) -> Self {
        let (outgoing, queued) = mpsc::channel(QUEUE);
        Self {
            prefix: cluster.prefix.clone(),
            origin: cluster.origin.clone(),
            pools: Mutex::default(),
            outgoing,
            queued: Mutex::new(Some(queued)),
            following: AtomicBool::new(false),
            started: AtomicBool::new(false),
            overflowed: AtomicBool::new(false),
        }
    }

    /// Whether other replicas' changes are being followed now.
    pub fn following(&self) -> bool {
        self.following.load(Ordering::Relaxed)
    }

    fn live_pools(&self) -> Vec<Arc<KeyPool>> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|p| p.strong_count() > 0);
        pools.iter().filter_map(Weak::upgrade).collect()
    }

    /// Registers the pools not yet attached and returns them.
    fn attach(&self, pools: &[Arc<KeyPool>]) -> Vec<Arc<KeyPool>> {
        let mut known = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        known.retain(|p| p.strong_count() > 0);
        let mut fresh = Vec::new();
        for pool in pools {
            if !known
                .iter()
                .any(|k| std::ptr::eq(k.as_ptr(), Arc::as_ptr(pool)))
            {
                known.push(Arc::downgrade(pool));
                fresh.push(pool.clone());
            }
        }
        fresh
    }

    /// Applies `record` (from another replica) to `pools`; disables only with `disables`.
    fn apply(&self, record: &Record, pools: &[Arc<KeyPool>], disables: bool) {
        if record.o == self.origin {
            return;
        }
        let rest = Duration::from_millis(record.ms).min(MAX_REST);
        let change = match record.s.as_str() {
            "cool" => KeyChange::CooledDown {
                rest,
                strikes: record.n.clamp(1, 64),
            },
            "off" if disables => KeyChange::Disabled {
                kind: record
                    .k
                    .as_deref()
                    .and_then(|k| k.parse().ok())
                    .unwrap_or(ErrorKind::Auth),
                reason: format!(
                    "{}, seen by another replica",
                    bounded(record.r.as_deref().unwrap_or("disabled"), MAX_REASON)
                ),
                rest,
            },
            "ok" => KeyChange::Recovered,
            _ => return,
        };
        for pool in pools {
            let ids: Vec<KeyId> = pool.ids().copied().collect();
            for id in ids.iter().filter(|id| hid(&self.prefix, id) == record.h) {
                if pool.apply(id, &change) {
                    tracing::debug!(key = %record.h, state = %record.s, "applied another replica's key change");
                }
            }
        }
    }

    /// Applies a message from the channel to every pool.
    fn receive(&self, payload: &[u8]) {
        if payload.len() > MAX_MESSAGE {
            return;
        }
        match serde_json::from_slice::<Record>(payload) {
            Ok(record) => self.apply(&record, &self.live_pools(), true),
            Err(_) => tracing::debug!("ignored a message on the cluster's key channel"),
        }
    }
}

/// Makes `pools` share their key state through `cluster` (written to and followed from its
/// Redis), or keep it to themselves without one.
pub fn share_keys<'a>(
    cluster: Option<&Arc<Cluster>>,
    pools: impl IntoIterator<Item = &'a Arc<KeyPool>>,
) {
    let pools: Vec<Arc<KeyPool>> = pools.into_iter().cloned().collect();
    let handle = tokio::runtime::Handle::try_current().ok();
    let (Some(cluster), Some(handle)) = (cluster, handle) else {
        for pool in &pools {
            pool.set_events(None);
        }
        return;
    };
    let sync = cluster
        .key_sync
        .get_or_init(|| Arc::new(KeySync::new(cluster)))
        .clone();
    for pool in &pools {
        pool.set_events(Some(sync.clone()));
    }
    let fresh = sync.attach(&pools);
    if !sync.started.swap(true, Ordering::SeqCst) {
        // The follower reads every record (disables too) before following the channel.
        let queued = sync.queued.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(queued) = queued {
            handle.spawn(write(
                Arc::downgrade(cluster),
                queued,
                cluster.stop.child_token(),
            ));
        }
        handle.spawn(follow(
            Arc::downgrade(cluster),
            sync,
            cluster.stop.child_token(),
        ));
    } else if !fresh.is_empty() {
        // A pool built by a reload: the cooldowns other replicas hold on its keys.
        let cluster = Arc::downgrade(cluster);
        handle.spawn(async move {
            let Some(cluster) = cluster.upgrade() else {
                return;
            };
            if let Ok(records) = read(&cluster).await {
                for record in &records {
                    sync.apply(record, &fresh, false);
                }
            }
        });
    }
}

/// Writes this replica's changes as they come, until the cluster is dropped.
async fn write(
    cluster: Weak<Cluster>,
    mut queued: mpsc::Receiver<Record>,
    stop: CancellationToken,
) {
    let script = Script::new(WRITE);
    loop {
        let record = tokio::select! {
            _ = stop.cancelled() => return,
            record = queued.recv() => match record {
                Some(record) => record,
                None => return,
            },
        };
        let Some(cluster) = cluster.upgrade() else {
            return;
        };
        let Ok(value) = serde_json::to_string(&record) else {
            continue;
        };
        let keys = [
            cluster.key(&format!("k:{}", record.h)),
            cluster.key("k:index"),
        ];
        let lifetime = if record.s == "ok" { 0 } else { record.ms };
        let args = [
            cluster.key("k:events"),
            record.h.clone(),
            value,
            lifetime.to_string(),
            MAX_RECORDS.to_string(),
        ];
        if let Err(down) = cluster.run::<i64>(&script, &keys, &args).await {
            tracing::debug!(key = %record.f, reason = %down.reason, "a key's change stays on this replica: the cluster's Redis is unreachable");
        }
    }
}

/// Every live record, with its remaining lifetime as its rest.
async fn read(cluster: &Cluster) -> Result<Vec<Record>, super::ClusterDown> {
    let script = Script::new(READ);
    let rows: Vec<(Vec<u8>, i64)> = cluster
        .run(
            &script,
            &[cluster.key("k:index")],
            &[cluster.key("k:"), MAX_RECORDS.to_string()],
        )
        .await?;
    Ok(rows
        .into_iter()
        .filter(|(value, _)| value.len() <= MAX_MESSAGE)
        .filter_map(|(value, ttl)| {
            let mut record: Record = serde_json::from_slice(&value).ok()?;
            record.ms = u64::try_from(ttl).ok()?;
            Some(record)
        })
        .collect())
}

/// Follows the channel, applying other replicas' changes, and resubscribes (reading the
/// records again) after each loss of the connection, until the cluster is dropped.
async fn follow(cluster: Weak<Cluster>, sync: Arc<KeySync>, stop: CancellationToken) {
    let mut pause = Duration::from_millis(200);
    let mut was_following = false;
    loop {
        let Some(strong) = cluster.upgrade() else {
            return;
        };
        let channel = strong.key("k:events");
        let client = strong.client.clone();
        let subscribed = tokio::time::timeout(COMMAND_TIMEOUT, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            redis::RedisResult::Ok(pubsub)
        })
        .await;
        // Subscribed first, then read: no change falls between the two.
        let ready = match subscribed {
            Ok(Ok(pubsub)) => match read(&strong).await {
                Ok(records) => Some((pubsub, records)),
                Err(_) => None,
            },
            _ => None,
        };
        drop(strong);
        let Some((pubsub, records)) = ready else {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(2));
            continue;
        };
        let pools = sync.live_pools();
        for record in &records {
            sync.apply(record, &pools, true);
        }
        sync.following.store(true, Ordering::Relaxed);
        if was_following {
            tracing::info!(
                "key cooldowns and disables are shared through the cluster's Redis again"
            );
        }
        was_following = true;
        pause = Duration::from_millis(200);
        let (mut sink, mut messages) = pubsub.split();
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                message = messages.next() => match message {
                    Some(message) => sync.receive(message.get_payload_bytes()),
                    None => break,
                },
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(COMMAND_TIMEOUT, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        sync.following.store(false, Ordering::Relaxed);
        tracing::warn!(
            "key cooldowns and disables are this replica's own until the cluster's Redis is back"
        );
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_name_keys_by_a_prefixed_hash_and_carry_no_secret() {
        let key = "sk-SENTINEL-sync-0123456789abcd";
        let pool = Arc::new(KeyPool::new(
            [(secrecy::SecretString::from(key.to_string()), "t".into())],
            Duration::from_secs(600),
        ));
        let config = super::super::ClusterConfig {
            redis_url: Some("redis://127.0.0.1:1".into()),
            ..Default::default()
        };
        let cluster = Cluster::open(&config).unwrap().unwrap();
        let sync = Arc::new(KeySync::new(&cluster));
        pool.set_events(Some(sync.clone()));
        let picked = pool.pick(&[]).unwrap();
        pool.disable(&picked, ErrorKind::Auth, "rejected (HTTP 401)");
        let mut queued = sync.queued.lock().unwrap().take().unwrap();
        let record = queued.try_recv().unwrap();
        let text = serde_json::to_string(&record).unwrap();
        let own_hash: String = Sha256::digest(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(
            !text.contains("SENTINEL") && !text.contains(&own_hash[..32]),
            "{text}"
        );
        assert_eq!(record.h, hid("imagegen", picked.id()));
        assert_ne!(record.h, hid("other", picked.id()));
        assert_eq!((record.s.as_str(), record.ms), ("off", 600_000));

        // Its own record is ignored; another replica's is applied, and told to nobody.
        let other = Arc::new(KeyPool::new(
            [(secrecy::SecretString::from(key.to_string()), "t".into())],
            Duration::from_secs(600),
        ));
        other.set_events(Some(sync.clone()));
        sync.apply(&record, std::slice::from_ref(&other), true);
        assert_eq!(other.status()[0].state, "active");
        let foreign = Record {
            o: "another".into(),
            ..record.clone()
        };
        sync.apply(&foreign, std::slice::from_ref(&other), false);
        assert_eq!(
            other.status()[0].state,
            "active",
            "disables only when asked"
        );
        sync.apply(&foreign, std::slice::from_ref(&other), true);
        let status = &other.status()[0];
        assert_eq!(status.state, "disabled");
        assert!(status
            .reason
            .as_deref()
            .unwrap()
            .contains("another replica"));
        assert!(
            queued.try_recv().is_err(),
            "an applied change is not written again"
        );
        // Hostile input: oversized or malformed messages are dropped.
        sync.receive(&vec![b'x'; MAX_MESSAGE + 1]);
        sync.receive(b"{not json");
    }
}
