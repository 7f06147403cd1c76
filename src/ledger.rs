//! The usage ledger: one JSON line per provider call (and per cache hit), in daily files.
//!
//! Each line is written with one `write` on a file opened with `O_APPEND`, so concurrent
//! writers (calls of this process, other processes on the machine) never interleave, and a
//! crash leaves every line written before it whole. The files live beside the store: in
//! `output.dir/usage/` for the local store; with an object store, in a local directory of
//! this replica, uploaded (whole, every [`UPLOAD_EVERY`] and at shutdown) as
//! `PREFIX/usage/YYYY-MM-DD/REPLICA.jsonl`, so a replica that dies between uploads loses
//! nothing of what its local file holds.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};

use crate::cost::Billing;
use crate::storage::Store;
use imagegen_providers::cost::CostBasis;

/// How often a replica uploads its ledger files to the object store.
pub const UPLOAD_EVERY: Duration = Duration::from_secs(30);

/// The longest ledger object read back (a day of one replica: ~400 bytes a call).
const MAX_OBJECT_BYTES: u64 = 256 * 1024 * 1024;

/// The most days one read covers (about three years): a range is walked a day at a time.
const MAX_DAYS: usize = 1100;

/// One call as the ledger records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    /// When the call ended, RFC 3339 UTC.
    pub time: String,
    /// The provider (configured name).
    pub provider: String,
    /// The model that served (or was asked for, on failure).
    pub model: String,
    /// The fingerprint of the API key the last attempt used; never the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Who called: the token name or OAuth subject over HTTP, the MCP client over stdio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    /// The tool (or CLI command).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// Images delivered.
    pub images: u32,
    /// Tokens as the provider reported them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Tokens>,
    /// The cost, USD; `null`: unknown (an unpriced model).
    pub cost_usd: Option<f64>,
    /// How the cost was reached.
    pub basis: CostBasis,
    /// The estimate made before the call, USD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate_usd: Option<f64>,
    /// Whether the provider billed the call.
    pub billing: Billing,
    /// `ok`, or the error kind.
    pub outcome: String,
    /// The provider's request id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Served from the cache: no provider call, nothing billed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
}

/// Token counts of one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    /// Input (prompt and images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<u64>,
    /// Output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<u64>,
    /// Both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
}

impl Tokens {
    /// The counts of a provider's usage, when it reported any.
    pub fn of(usage: &imagegen_providers::Usage) -> Option<Self> {
        let tokens = Self {
            input: usage.input_tokens,
            output: usage.output_tokens,
            total: usage.total_tokens,
        };
        (tokens != Self::default()).then_some(tokens)
    }
}

/// The ledger directory `loaded` names (`storage.ledger_dir`, resolved at load).
pub fn dir_of(loaded: &crate::config::LoadedConfig) -> PathBuf {
    loaded
        .config
        .storage
        .ledger_dir
        .clone()
        .unwrap_or_else(|| loaded.output_dir().join("usage"))
}

/// Where this replica's ledger goes and what it has uploaded.
#[derive(Debug)]
pub struct Ledger {
    dir: PathBuf,
    /// This replica's name in the object store.
    replica: String,
    /// The object store the files are uploaded to; `None` for the local store.
    store: Option<Store>,
    /// Bytes of each day's file last uploaded, so an unchanged file is not uploaded again.
    uploaded: Mutex<BTreeMap<Date, u64>>,
}

/// The UTC day of `t` as `YYYY-MM-DD`.
pub fn day_name(day: Date) -> String {
    format!(
        "{:04}-{:02}-{:02}",
        day.year(),
        u8::from(day.month()),
        day.day()
    )
}

/// `YYYY-MM-DD` as a date.
pub fn parse_day(text: &str) -> Option<Date> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(text.trim(), &format).ok()
}

/// A name safe in a file name and an object key: letters, digits, `-`, `_`, `.`.
fn clean(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '.' => c,
            _ => '-',
        })
        .take(64)
        .collect();
    cleaned.trim_matches(['-', '.']).to_string()
}

/// This machine's host name, for the replica's name.
fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|n| clean(&n))
        .unwrap_or_default();
    if name.is_empty() {
        "host".to_string()
    } else {
        name
    }
}

/// The replica's name: the host name and a random suffix, kept in `dir/replica` so that a
/// restarted replica goes on with the same daily objects.
fn replica_name(dir: &Path) -> String {
    let file = dir.join("replica");
    if let Some(name) = std::fs::read_to_string(&file)
        .ok()
        .map(|n| clean(&n))
        .filter(|n| !n.is_empty())
    {
        return name;
    }
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let name = format!("{}-{}", host_name(), &suffix[..8]);
    let _ = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&file, &name));
    name
}

impl Ledger {
    /// The ledger in `dir`, uploaded to `store` when that is an object store.
    pub fn new(dir: PathBuf, store: &Store) -> Self {
        let replica = if store.is_local() {
            "local".to_string()
        } else {
            replica_name(&dir)
        };
        Self {
            dir,
            replica,
            store: (!store.is_local()).then(|| store.clone()),
            uploaded: Mutex::new(BTreeMap::new()),
        }
    }

    /// The directory of the daily files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file_of(&self, day: Date) -> PathBuf {
        self.dir.join(format!("{}.jsonl", day_name(day)))
    }

    /// Appends `line` to today's file. A ledger that cannot be written is logged, never
    /// fails the call: the images are made and paid for.
    pub async fn append(&self, line: &Line) {
        let mut bytes = match serde_json::to_vec(line) {
            Ok(bytes) => bytes,
            Err(e) => return tracing::warn!("cannot record the call in the ledger: {e}"),
        };
        bytes.push(b'\n');
        let file = self.file_of(OffsetDateTime::now_utc().date());
        let dir = self.dir.clone();
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&file)?;
            // One write of the whole line: with O_APPEND, lines of concurrent writers never
            // interleave, and a short write is reported rather than retried as a second,
            // separately placed write.
            let n = f.write(&bytes)?;
            if n != bytes.len() {
                return Err(std::io::Error::other(format!(
                    "short write to the ledger ({n} of {} bytes)",
                    bytes.len()
                )));
            }
            Ok(())
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("cannot record the call in the ledger: {e}"),
            Err(e) => tracing::warn!("cannot record the call in the ledger: {e}"),
        }
    }

    /// Uploads the daily files that changed since their last upload (today's and
    /// yesterday's: a file stops changing after its day). No-op for the local store.
    pub async fn upload(&self) {
        let Some(store) = &self.store else { return };
        let today = OffsetDateTime::now_utc().date();
        for day in [today.previous_day(), Some(today)].into_iter().flatten() {
            let Ok(bytes) = tokio::fs::read(self.file_of(day)).await else {
                continue;
            };
            let len = bytes.len() as u64;
            let done = self
                .uploaded
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&day)
                .copied();
            if done == Some(len) {
                continue;
            }
            match store.put_usage(&day_name(day), &self.replica, bytes).await {
                Ok(()) => {
                    self.uploaded
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(day, len);
                }
                Err(e) => tracing::warn!("cannot upload the usage ledger: {e}"),
            }
        }
    }

    /// Uploads every [`UPLOAD_EVERY`] until the process ends (and the serving process once
    /// more as it stops). Outside a runtime (a one-shot command) there is nothing to run it on.
    pub fn spawn_uploads(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.store.is_none() {
            return;
        }
        let ledger = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(UPLOAD_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(ledger) = ledger.upgrade() else {
                    return;
                };
                ledger.upload().await;
            }
        });
    }

    /// Every line of the days `since..=until`: this replica's files, and with an object store
    /// the other replicas' uploads. Lines that do not parse are counted, not returned.
    pub async fn read(&self, since: Date, until: Date) -> Result<Read, String> {
        let mut read = Read::default();
        let mut days = Vec::new();
        let mut day = since;
        while day <= until && days.len() < MAX_DAYS {
            if let Ok(bytes) = tokio::fs::read(self.file_of(day)).await {
                read.add(&bytes);
            }
            days.push(day_name(day));
            match day.next_day() {
                Some(next) => day = next,
                None => break,
            }
        }
        if let Some(store) = &self.store {
            let objects = store
                .usage_objects(&days, MAX_OBJECT_BYTES)
                .await
                .map_err(|e| e.to_string())?;
            for (replica, bytes) in objects {
                // This replica's own upload is an older copy of its local file.
                if replica != self.replica {
                    read.add(&bytes);
                }
            }
        }
        Ok(read)
    }
}

/// Lines read from the ledger.
#[derive(Debug, Default)]
pub struct Read {
    /// The lines that parsed.
    pub lines: Vec<Line>,
    /// Lines that did not (a file written by hand, a disk that filled up).
    pub skipped: usize,
}

impl Read {
    fn add(&mut self, bytes: &[u8]) {
        for raw in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice(raw) {
                Ok(line) => self.lines.push(line),
                Err(_) => self.skipped += 1,
            }
        }
    }
}

/// How `usage` groups its summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// The configured provider.
    Provider,
    /// The model that served.
    Model,
    /// The API key's fingerprint.
    Key,
    /// Who called.
    Caller,
    /// The UTC day.
    Day,
    /// The tool.
    Tool,
}

/// Totals of a set of calls.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    /// Calls recorded (cache hits included).
    pub calls: u64,
    /// Calls that failed.
    pub failed: u64,
    /// Cache hits.
    pub cached: u64,
    /// Images delivered.
    pub images: u64,
    /// Known cost, USD (usage-based and estimated together).
    pub cost_usd: f64,
    /// The part of `cost_usd` that is estimated.
    pub estimated_usd: f64,
    /// Calls on models without a known price (not in `cost_usd`).
    pub unpriced: u64,
    /// Calls possibly billed (sent, never answered), counted at their estimate.
    pub possibly_billed: u64,
}

impl Totals {
    /// Adds one line.
    pub fn add(&mut self, line: &Line) {
        self.calls += 1;
        self.failed += u64::from(line.outcome != "ok");
        self.cached += u64::from(line.cached);
        self.images += u64::from(line.images);
        self.possibly_billed += u64::from(line.billing == Billing::PossiblyBilled);
        match line.cost_usd {
            Some(usd) => {
                self.cost_usd += usd;
                if line.basis == CostBasis::Estimate {
                    self.estimated_usd += usd;
                }
            }
            None => self.unpriced += u64::from(line.billing != Billing::NotBilled),
        }
    }
}

/// A summary of the ledger over some days, as `usage --json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The first day, `YYYY-MM-DD` (UTC).
    pub since: String,
    /// The last day.
    pub until: String,
    /// How `groups` are keyed.
    pub by: GroupBy,
    /// The totals of each group.
    pub groups: BTreeMap<String, Totals>,
    /// The totals of all.
    pub total: Totals,
    /// Ledger lines that could not be read.
    pub skipped: usize,
}

impl Report {
    /// The report of `lines` (read for `since..=until`), keeping only `caller`'s when given.
    pub fn of(read: &Read, since: Date, until: Date, by: GroupBy, caller: Option<&str>) -> Self {
        let (first, last) = (day_name(since), day_name(until));
        let lines: Vec<&Line> = read
            .lines
            .iter()
            .filter(|l| (first.as_str()..=last.as_str()).contains(&line_day(l)))
            .filter(|l| caller.is_none() || l.caller.as_deref() == caller)
            .collect();
        let mut total = Totals::default();
        for line in &lines {
            total.add(line);
        }
        Self {
            since: first,
            until: last,
            by,
            groups: group(lines, by),
            total,
            skipped: read.skipped,
        }
    }
}

/// The first day of `day`'s month.
pub fn month_start(day: Date) -> Date {
    day.replace_day(1).unwrap_or(day)
}

/// `imagegen://usage`: today's and this month's totals, by provider and by caller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Overview {
    /// Today (UTC), by provider.
    pub today: Report,
    /// This month (UTC), by provider.
    pub month: Report,
    /// This month, by caller.
    pub month_by_caller: BTreeMap<String, Totals>,
}

impl Overview {
    /// The overview of `ledger` now, of `caller`'s calls only when given.
    pub async fn now(ledger: &Ledger, caller: Option<&str>) -> Result<Self, String> {
        let today = OffsetDateTime::now_utc().date();
        let start = month_start(today);
        let read = ledger.read(start, today).await?;
        let month = Report::of(&read, start, today, GroupBy::Provider, caller);
        let by_caller = Report::of(&read, start, today, GroupBy::Caller, caller);
        Ok(Self {
            today: Report::of(&read, today, today, GroupBy::Provider, caller),
            month,
            month_by_caller: by_caller.groups,
        })
    }
}

/// The day of a line (its `time`'s date part).
fn line_day(line: &Line) -> &str {
    line.time.get(..10).unwrap_or(&line.time)
}

/// The totals of `lines` grouped by `by`, groups in name order.
pub fn group<'a>(
    lines: impl IntoIterator<Item = &'a Line>,
    by: GroupBy,
) -> BTreeMap<String, Totals> {
    let mut groups: BTreeMap<String, Totals> = BTreeMap::new();
    for line in lines {
        let key = match by {
            GroupBy::Provider => Some(line.provider.as_str()),
            GroupBy::Model => Some(line.model.as_str()),
            GroupBy::Key => line.key.as_deref(),
            GroupBy::Caller => line.caller.as_deref(),
            GroupBy::Day => Some(line_day(line)),
            GroupBy::Tool => line.tool.as_deref(),
        };
        groups
            .entry(key.unwrap_or("(none)").to_string())
            .or_default()
            .add(line);
    }
    groups
}

/// The summary table `usage` prints.
pub fn table(groups: &BTreeMap<String, Totals>, by: GroupBy, skipped: usize) -> String {
    let title = serde_json::to_value(by)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let width = groups
        .keys()
        .map(|k| k.chars().count())
        .chain([title.len(), 5])
        .max()
        .unwrap_or(5);
    let mut out = format!(
        "{title:<width$}  {:>7}  {:>6}  {:>6}  {:>7}  {:>12}  {:>12}  {:>8}\n",
        "calls", "failed", "cached", "images", "cost_usd", "estimated", "unpriced"
    );
    let mut all = Totals::default();
    let mut row = |name: &str, t: &Totals| {
        out.push_str(&format!(
            "{name:<width$}  {:>7}  {:>6}  {:>6}  {:>7}  {:>12.4}  {:>12.4}  {:>8}\n",
            t.calls, t.failed, t.cached, t.images, t.cost_usd, t.estimated_usd, t.unpriced
        ));
    };
    for (name, totals) in groups {
        row(name, totals);
        all.calls += totals.calls;
        all.failed += totals.failed;
        all.cached += totals.cached;
        all.images += totals.images;
        all.cost_usd += totals.cost_usd;
        all.estimated_usd += totals.estimated_usd;
        all.unpriced += totals.unpriced;
        all.possibly_billed += totals.possibly_billed;
    }
    row("total", &all);
    if all.possibly_billed > 0 {
        out.push_str(&format!(
            "{} call(s) were sent and never answered: counted at their estimate as possibly billed\n",
            all.possibly_billed
        ));
    }
    if skipped > 0 {
        out.push_str(&format!("{skipped} unreadable ledger line(s) skipped\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(provider: &str, caller: &str, cost: Option<f64>, outcome: &str) -> Line {
        Line {
            time: "2026-12-01T10:00:00Z".into(),
            provider: provider.into(),
            model: "gpt-image-2".into(),
            key: Some("sk-…abcd".into()),
            caller: Some(caller.into()),
            tool: Some("generate_image".into()),
            images: u32::from(outcome == "ok"),
            tokens: None,
            cost_usd: cost,
            basis: CostBasis::Usage,
            estimate_usd: Some(0.19),
            billing: if outcome == "ok" {
                Billing::Billed
            } else {
                Billing::NotBilled
            },
            outcome: outcome.into(),
            request_id: None,
            cached: false,
        }
    }

    #[tokio::test]
    async fn lines_append_and_read_back_under_concurrency() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("images"));
        let ledger = Arc::new(Ledger::new(dir.path().join("usage"), &store));
        let writers = (0..64).map(|i| {
            let ledger = ledger.clone();
            tokio::spawn(async move {
                ledger
                    .append(&line("openai", &format!("c{}", i % 4), Some(0.01), "ok"))
                    .await
            })
        });
        futures::future::join_all(writers).await;
        let today = OffsetDateTime::now_utc().date();
        let read = ledger.read(today, today).await.unwrap();
        assert_eq!((read.lines.len(), read.skipped), (64, 0));
        let by_caller = group(&read.lines, GroupBy::Caller);
        assert_eq!(by_caller.len(), 4);
        assert!(by_caller.values().all(|t| t.calls == 16));
    }

    #[test]
    fn totals_and_table() {
        let lines = [
            line("openai", "alice", Some(0.19), "ok"),
            line("openai", "bob", Some(0.0), "rate_limited"),
            line("gemini", "alice", None, "ok"),
        ];
        let groups = group(&lines, GroupBy::Caller);
        assert_eq!(groups["alice"].calls, 2);
        assert_eq!(groups["alice"].unpriced, 1);
        assert!((groups["alice"].cost_usd - 0.19).abs() < 1e-12);
        assert_eq!(groups["bob"].failed, 1);
        let text = table(&groups, GroupBy::Caller, 2);
        assert!(text.starts_with("caller"), "{text}");
        assert!(text.contains("total"));
        assert!(text.contains("2 unreadable"));
    }

    #[test]
    fn broken_lines_are_counted_not_returned() {
        let mut read = Read::default();
        let good = serde_json::to_vec(&line("openai", "a", Some(1.0), "ok")).unwrap();
        let mut bytes = good.clone();
        bytes.extend_from_slice(b"\n{\"time\": \"2026-\n");
        bytes.extend_from_slice(&good[..good.len() / 2]);
        read.add(&bytes);
        assert_eq!((read.lines.len(), read.skipped), (1, 2));
    }

    #[test]
    fn days_and_names() {
        let day = parse_day("2026-12-01").unwrap();
        assert_eq!(day_name(day), "2026-12-01");
        assert_eq!(parse_day("2026-13-01"), None);
        assert_eq!(clean("pod/abc 1"), "pod-abc-1");
    }
}
