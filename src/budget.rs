//! Budgets (`[budget]`): how much the server may spend a UTC day and a UTC month, in all, per
//! provider and per caller, checked before anything is sent.
//!
//! A call reserves its estimated cost on every budget that applies to it at once, all or
//! nothing ([`Budgets::reserve`]), so calls running together cannot pass a budget between
//! them; when it ends its [`Hold`] is settled with what it cost. A call that may have been
//! billed without saying so (sent, then timed out, cancelled or lost) keeps its estimate as
//! "possibly billed" spend, conservatively. Amounts are integer micro-dollars throughout.
//!
//! The counts live in this process ([`Local`]), or with `[cluster] redis_url` in Redis,
//! shared by every replica (`budget/remote.rs`: Lua scripts, keys that expire with their
//! period, a sweep that counts the reservations of a replica that died as possibly billed).
//! Redis unreachable: paid calls are refused (`cluster_unavailable`) unless
//! `cluster.fail_open`, when they go ahead on this replica's own counts with a note.
//!
//! A refusal is `budget_exceeded`: the caller's or operator's limit, not the provider's, so
//! no key cools down, no provider's health suffers and no fallback is tried.

mod remote;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use imagegen_providers::ErrorKind;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{
    cluster::{Cluster, ClusterStatus},
    error::{BudgetDetails, ToolError, ToolErrorKind},
};

/// An amount of money in millionths of a US dollar.
pub type Micros = u64;

/// The longest a reservation stays open past its provider's deadline before a sweep counts
/// it as possibly billed: the call's saving and settling happen after the deadline.
pub const HOLD_MARGIN: Duration = Duration::from_secs(120);

/// How long Redis keeps a period's counts after the period ends, for calls that settle late.
const EXPIRY_MARGIN: Duration = Duration::from_secs(24 * 3600);

/// `usd` in micro-dollars, rounded up (an estimate never comes out lower); negative or not a
/// number: 0.
pub fn micros_up(usd: f64) -> Micros {
    if usd.is_finite() && usd > 0.0 {
        (usd * 1e6).ceil().min(u64::MAX as f64) as Micros
    } else {
        0
    }
}

/// `usd` in micro-dollars, to the nearest (a limit or a billed cost).
pub fn micros(usd: f64) -> Micros {
    if usd.is_finite() && usd > 0.0 {
        (usd * 1e6).round().min(u64::MAX as f64) as Micros
    } else {
        0
    }
}

/// `m` micro-dollars in USD, for messages and results.
pub fn usd(m: Micros) -> f64 {
    m as f64 / 1e6
}

/// `[budget]`: spending limits in USD, per UTC day and UTC month. Unset: no limit.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetConfig {
    /// All calls together, per UTC day.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daily_usd: Option<f64>,
    /// All calls together, per UTC month.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monthly_usd: Option<f64>,
    /// With a budget in force, a call for a model without a known price is refused unless
    /// this is set; then it reserves nothing and counts what the provider reports.
    pub allow_unpriced: bool,
    /// A call estimated above this (USD; a batch's items together) goes ahead only once the
    /// user confirms: through the client's elicitation, or by the call's `confirm_cost: true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirm_above_usd: Option<f64>,
    /// `[budget.providers.NAME]`: one provider's calls.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub providers: BTreeMap<String, BudgetLimits>,
    /// `[budget.callers.NAME]`: one caller's calls (a token name or OAuth subject over HTTP,
    /// the local user over stdio); each limit set here wins over `per_caller`'s.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub callers: BTreeMap<String, BudgetLimits>,
    /// `[budget.per_caller]`: what every caller gets unless `[budget.callers.NAME]` says.
    pub per_caller: BudgetLimits,
}

/// A daily and a monthly limit, USD.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetLimits {
    /// Per UTC day.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daily_usd: Option<f64>,
    /// Per UTC month.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monthly_usd: Option<f64>,
}

impl BudgetLimits {
    fn get(&self, period: Period) -> Option<f64> {
        match period {
            Period::Day => self.daily_usd,
            Period::Month => self.monthly_usd,
        }
    }

    fn is_empty(&self) -> bool {
        self.daily_usd.is_none() && self.monthly_usd.is_none()
    }
}

impl BudgetConfig {
    /// Whether any limit is set: without one, calls are neither checked nor counted.
    pub fn any(&self) -> bool {
        let top = BudgetLimits {
            daily_usd: self.daily_usd,
            monthly_usd: self.monthly_usd,
        };
        !top.is_empty()
            || !self.per_caller.is_empty()
            || self.providers.values().any(|l| !l.is_empty())
            || self.callers.values().any(|l| !l.is_empty())
    }

    /// The first limit that is not a non-negative number, as its key path and the problem.
    pub fn problem(&self) -> Option<(Vec<String>, String)> {
        let mut all: Vec<(Vec<String>, Option<f64>)> = vec![
            (vec!["budget".into(), "daily_usd".into()], self.daily_usd),
            (
                vec!["budget".into(), "monthly_usd".into()],
                self.monthly_usd,
            ),
            (
                vec!["budget".into(), "confirm_above_usd".into()],
                self.confirm_above_usd,
            ),
        ];
        let mut table = |path: Vec<String>, limits: &BudgetLimits| {
            for (key, value) in [
                ("daily_usd", limits.daily_usd),
                ("monthly_usd", limits.monthly_usd),
            ] {
                let mut path = path.clone();
                path.push(key.into());
                all.push((path, value));
            }
        };
        table(vec!["budget".into(), "per_caller".into()], &self.per_caller);
        for (name, limits) in &self.providers {
            table(
                vec!["budget".into(), "providers".into(), name.clone()],
                limits,
            );
        }
        for (name, limits) in &self.callers {
            table(
                vec!["budget".into(), "callers".into(), name.clone()],
                limits,
            );
        }
        all.into_iter().find_map(|(path, value)| {
            let bad = value.is_some_and(|v| !(0.0..=1e9).contains(&v));
            bad.then(|| {
                (
                    path,
                    "must be a number of US dollars between 0 and 1e9".into(),
                )
            })
        })
    }

    /// The limit on `scope` for `period`, with the setting that made it.
    fn limit(&self, scope: &Scope, period: Period) -> Option<(f64, String)> {
        let key = period.setting();
        match scope {
            Scope::Global => match period {
                Period::Day => self.daily_usd,
                Period::Month => self.monthly_usd,
            }
            .map(|v| (v, format!("budget.{key}"))),
            Scope::Provider(name) => self
                .providers
                .get(name)
                .and_then(|l| l.get(period))
                .map(|v| (v, format!("budget.providers.{name}.{key}"))),
            Scope::Caller(name) => {
                let own = self.callers.get(name).and_then(|l| l.get(period));
                own.map(|v| (v, format!("budget.callers.{name}.{key}")))
                    .or_else(|| {
                        self.per_caller
                            .get(period)
                            .map(|v| (v, format!("budget.per_caller.{key} (caller `{name}`)")))
                    })
            }
        }
    }
}

/// A budget period: a UTC day or a UTC month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Period {
    /// From one UTC midnight to the next.
    Day,
    /// From the first of a month, 00:00 UTC, to the first of the next.
    Month,
}

impl Period {
    /// Both periods.
    pub const ALL: [Period; 2] = [Period::Day, Period::Month];

    /// The setting's name: `daily_usd` or `monthly_usd`.
    pub fn setting(self) -> &'static str {
        match self {
            Self::Day => "daily_usd",
            Self::Month => "monthly_usd",
        }
    }

    /// The period `now` lies in, as written in keys: `d2026-12-01` or `m2026-12`.
    pub fn instance(self, now: OffsetDateTime) -> String {
        let date = now.to_offset(time::UtcOffset::UTC).date();
        match self {
            Self::Day => format!(
                "d{:04}-{:02}-{:02}",
                date.year(),
                u8::from(date.month()),
                date.day()
            ),
            Self::Month => format!("m{:04}-{:02}", date.year(), u8::from(date.month())),
        }
    }

    /// When the period `now` lies in ends: the next UTC midnight, or the first of next month.
    pub fn resets_at(self, now: OffsetDateTime) -> OffsetDateTime {
        let date = now.to_offset(time::UtcOffset::UTC).date();
        let next = match self {
            Self::Day => date.next_day(),
            Self::Month => {
                let (year, month) = match date.month() {
                    time::Month::December => (date.year() + 1, time::Month::January),
                    m => (date.year(), m.next()),
                };
                time::Date::from_calendar_date(year, month, 1).ok()
            }
        };
        next.unwrap_or(date).midnight().assume_utc()
    }
}

/// Whose spending a count is: all calls, one provider's or one caller's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Every call.
    Global,
    /// The calls served by one provider (by its configured name).
    Provider(String),
    /// The calls of one caller.
    Caller(String),
}

impl Scope {
    /// The scope as written in keys: `global`, `provider/NAME`, `caller/NAME`, with control
    /// characters and `%` escaped (keys are joined by newlines in Redis).
    pub fn key(&self) -> String {
        let escape = |name: &str| {
            name.chars()
                .map(|c| match c {
                    '%' => "%25".to_string(),
                    c if c.is_control() => format!("%{:02X}", c as u32 & 0xff),
                    c => c.to_string(),
                })
                .collect::<String>()
        };
        match self {
            Self::Global => "global".into(),
            Self::Provider(name) => format!("provider/{}", escape(name)),
            Self::Caller(name) => format!("caller/{}", escape(name)),
        }
    }
}

/// What a call is about to spend, and on whose budgets.
#[derive(Debug, Clone, Copy)]
pub struct Charge<'a> {
    /// The provider (its configured name) that will serve the call.
    pub provider: &'a str,
    /// Who makes the call; `None`: no per-caller budget applies.
    pub caller: Option<&'a str>,
    /// The estimated cost, USD; `None`: the model has no known price.
    pub estimate_usd: Option<f64>,
}

/// How a call ended, for its budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Settlement {
    /// The provider billed this much, USD.
    Billed(f64),
    /// Nothing was billed (refused before it was sent, or the provider said no).
    NotBilled,
    /// It may have been billed and nobody knows how much (sent, then timed out or was
    /// cancelled): the estimate stays as spend.
    PossiblyBilled,
}

/// One count a call touches: a scope in a period, with its limit when one is set.
#[derive(Debug, Clone)]
struct Line {
    scope: Scope,
    period: Period,
    /// The period instance (`d2026-12-01`).
    instance: String,
    /// The limit and the setting that made it.
    limit: Option<(Micros, String)>,
    resets_at: OffsetDateTime,
}

impl Line {
    fn local_key(&self) -> (String, String) {
        (self.instance.clone(), self.scope.key())
    }
}

/// A period's counts for one scope, micro-dollars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Billed.
    pub spent: Micros,
    /// Possibly billed (the estimates of calls that may have been billed).
    pub possibly: Micros,
    /// Reserved by calls running.
    pub reserved: Micros,
}

impl Tally {
    /// Whether `amount` more fits under `limit`; a zero amount (an unpriced call) fits only
    /// while something is left.
    fn fits(&self, amount: Micros, limit: Micros) -> bool {
        let used = self
            .spent
            .saturating_add(self.possibly)
            .saturating_add(self.reserved);
        match amount {
            0 => used < limit,
            _ => used.saturating_add(amount) <= limit,
        }
    }
}

/// The counts of this process: every scope's tally for the current day and month.
#[derive(Debug, Default)]
pub struct Local {
    tallies: Mutex<BTreeMap<(String, String), Tally>>,
}

impl Local {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Tally>> {
        self.tallies.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves `amount` on every line at once, or returns the first line it does not fit
    /// (by index) with that line's tally.
    fn reserve(&self, lines: &[Line], amount: Micros) -> Result<(), (usize, Tally)> {
        let mut tallies = self.lock();
        // Counts of periods that are over serve nobody: keep the current ones only.
        let current: Vec<&str> = lines.iter().map(|l| l.instance.as_str()).collect();
        tallies.retain(|(instance, _), _| current.contains(&instance.as_str()));
        for (i, line) in lines.iter().enumerate() {
            if let Some((limit, _)) = &line.limit {
                let tally = tallies.get(&line.local_key()).copied().unwrap_or_default();
                if !tally.fits(amount, *limit) {
                    return Err((i, tally));
                }
            }
        }
        for line in lines {
            let tally = tallies.entry(line.local_key()).or_default();
            tally.reserved = tally.reserved.saturating_add(amount);
        }
        Ok(())
    }

    /// Ends a reservation of `reserved` on `keys`: `billed` and `possibly` become spend.
    fn settle(
        &self,
        keys: &[(String, String)],
        reserved: Micros,
        billed: Micros,
        possibly: Micros,
    ) {
        let mut tallies = self.lock();
        for key in keys {
            // A period that ended meanwhile was dropped: its counts no longer matter.
            if let Some(tally) = tallies.get_mut(key) {
                tally.reserved = tally.reserved.saturating_sub(reserved);
                tally.spent = tally.spent.saturating_add(billed);
                tally.possibly = tally.possibly.saturating_add(possibly);
            }
        }
    }

    /// `spent` as the least spend of `scope` in the period `instance`.
    fn seed(&self, instance: String, scope: &Scope, spent: Micros) {
        let mut tallies = self.lock();
        let tally = tallies.entry((instance, scope.key())).or_default();
        tally.spent = tally.spent.max(spent);
    }

    /// The tally of `scope` in `instance`.
    fn tally(&self, instance: &str, scope: &Scope) -> Tally {
        self.lock()
            .get(&(instance.to_string(), scope.key()))
            .copied()
            .unwrap_or_default()
    }
}

/// Where the budgets read the time: the system clock, or one that tests set.
#[derive(Debug, Clone, Default)]
pub struct Clock(Option<Arc<Mutex<OffsetDateTime>>>);

impl Clock {
    /// A clock that stays at `at` until [`Clock::set`] moves it.
    pub fn fixed(at: OffsetDateTime) -> Self {
        Self(Some(Arc::new(Mutex::new(at))))
    }

    /// Moves a fixed clock to `at` (a system clock ignores it).
    pub fn set(&self, at: OffsetDateTime) {
        if let Some(t) = &self.0 {
            *t.lock().unwrap_or_else(|e| e.into_inner()) = at;
        }
    }

    /// Now.
    pub fn now(&self) -> OffsetDateTime {
        match &self.0 {
            Some(t) => *t.lock().unwrap_or_else(|e| e.into_inner()),
            None => OffsetDateTime::now_utc(),
        }
    }
}

/// The budgets in force, and the counts behind them; cloned into each engine, the counts (and
/// the cluster's connection) carry over reloads while the limits are the new ones.
#[derive(Debug, Clone)]
pub struct Budgets {
    config: Arc<BudgetConfig>,
    fail_open: bool,
    /// Each provider's call deadline: how long its reservations stay open at most.
    deadlines: Arc<BTreeMap<String, Duration>>,
    local: Arc<Local>,
    cluster: Option<Arc<Cluster>>,
    clock: Clock,
}

impl Default for Budgets {
    fn default() -> Self {
        Self::new(BudgetConfig::default(), false, None)
    }
}

/// A call's reservation on its budgets; settle it with what the call cost. Dropped unsettled
/// (a panic, a cancelled call), it settles as possibly billed, so nothing stays reserved.
#[derive(Debug)]
#[must_use = "settle the hold with what the call cost"]
pub struct Hold {
    open: Option<Open>,
    note: Option<String>,
}

/// An unsettled reservation and where it lives.
#[derive(Debug)]
struct Open {
    store: Store,
    amount: Micros,
}

/// Where a reservation lives.
#[derive(Debug)]
enum Store {
    Local {
        local: Arc<Local>,
        keys: Vec<(String, String)>,
    },
    Redis {
        cluster: Arc<Cluster>,
        hold: remote::RemoteHold,
    },
}

impl Hold {
    /// A hold on nothing (no budget applies, or the call costs nothing).
    pub fn free() -> Self {
        Self {
            open: None,
            note: None,
        }
    }

    /// What the result should say about budgets (counted on this replica alone because the
    /// cluster was down and `fail_open` is set).
    pub fn note(&self) -> Option<&str> {
        self.note.as_deref()
    }

    /// Micro-dollars held.
    pub fn amount(&self) -> Micros {
        self.open.as_ref().map_or(0, |o| o.amount)
    }

    /// Ends the reservation: what was billed becomes spend, the rest is freed.
    pub async fn settle(mut self, settlement: Settlement) {
        let Some(open) = self.open.take() else {
            return;
        };
        let (billed, possibly) = split(settlement, open.amount);
        match open.store {
            Store::Local { local, keys } => local.settle(&keys, open.amount, billed, possibly),
            Store::Redis { cluster, hold } => {
                remote::settle(&cluster, &hold, billed, possibly).await
            }
        }
    }
}

/// What a settlement adds to spend: (billed, possibly billed).
fn split(settlement: Settlement, amount: Micros) -> (Micros, Micros) {
    match settlement {
        Settlement::Billed(cost) => (micros(cost), 0),
        Settlement::NotBilled => (0, 0),
        Settlement::PossiblyBilled => (0, amount),
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let Some(open) = self.open.take() else {
            return;
        };
        tracing::debug!(
            amount_usd = usd(open.amount),
            "a budget hold was dropped unsettled; its estimate counts as possibly billed"
        );
        let (billed, possibly) = split(Settlement::PossiblyBilled, open.amount);
        match open.store {
            Store::Local { local, keys } => local.settle(&keys, open.amount, billed, possibly),
            // Without a runtime to settle on, the sweep counts it once its holder's time is up.
            Store::Redis { cluster, hold } => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move {
                        remote::settle(&cluster, &hold, billed, possibly).await;
                    });
                }
            }
        }
    }
}

/// The budgets as `imagegen://status` shows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BudgetStatus {
    /// Where the counts live: `local` (this process) or `redis` (shared by the replicas).
    pub backend: String,
    /// Whether calls for models without a known price may run.
    pub allow_unpriced: bool,
    /// The shared Redis, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
    /// The limits counted in this process now, with their spend (the local backend; with
    /// Redis the counts are shared and not read for the status).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usage: Vec<BudgetUsage>,
}

/// One budget's spend in its current period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BudgetUsage {
    /// The budget, as its setting.
    pub budget: String,
    /// Its limit, USD.
    pub limit_usd: f64,
    /// Billed and possibly billed so far, USD.
    pub spent_usd: f64,
    /// Of which possibly billed, USD.
    pub possibly_billed_usd: f64,
    /// Held by calls running now, USD.
    pub reserved_usd: f64,
    /// When it starts afresh (RFC 3339, UTC).
    pub resets_at: String,
}

impl Budgets {
    /// Budgets under `config`, counted in this process or, with `cluster`, in its Redis.
    pub fn new(config: BudgetConfig, fail_open: bool, cluster: Option<Arc<Cluster>>) -> Self {
        Self {
            config: Arc::new(config),
            fail_open,
            deadlines: Arc::default(),
            local: Arc::default(),
            cluster,
            clock: Clock::default(),
        }
    }

    /// These budgets under a new configuration: the counts of this process carry over (and so
    /// does the cluster, when `cluster` is the same one).
    pub fn reconfigured(
        &self,
        config: BudgetConfig,
        fail_open: bool,
        cluster: Option<Arc<Cluster>>,
    ) -> Self {
        Self {
            config: Arc::new(config),
            fail_open,
            deadlines: self.deadlines.clone(),
            local: self.local.clone(),
            cluster,
            clock: self.clock.clone(),
        }
    }

    /// With each provider's call deadline, after which its reservations are swept.
    pub fn with_deadlines(mut self, deadlines: BTreeMap<String, Duration>) -> Self {
        self.deadlines = Arc::new(deadlines);
        self
    }

    /// With `clock` instead of the system's (tests of period rollover).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The limits in force.
    pub fn config(&self) -> &BudgetConfig {
        &self.config
    }

    /// The shared Redis, when configured.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// Every count `charge` touches: all calls, its provider, its caller; each for the day
    /// and the month.
    fn lines(&self, charge: &Charge<'_>, now: OffsetDateTime) -> Vec<Line> {
        let mut scopes = vec![Scope::Global, Scope::Provider(charge.provider.to_string())];
        scopes.extend(charge.caller.map(|c| Scope::Caller(c.to_string())));
        let mut lines = Vec::with_capacity(scopes.len() * 2);
        for scope in scopes {
            for period in Period::ALL {
                let limit = self
                    .config
                    .limit(&scope, period)
                    .map(|(usd, setting)| (micros(usd), setting));
                lines.push(Line {
                    instance: period.instance(now),
                    resets_at: period.resets_at(now),
                    scope: scope.clone(),
                    period,
                    limit,
                });
            }
        }
        lines
    }

    /// Reserves `charge`'s estimate on every budget that applies to it, all or nothing; a call
    /// that would pass one is refused with `budget_exceeded` before anything is sent.
    pub async fn reserve(&self, charge: &Charge<'_>) -> Result<Hold, ToolError> {
        if !self.config.any() {
            return Ok(Hold::free());
        }
        let now = self.clock.now();
        let lines = self.lines(charge, now);
        let limited = lines.iter().any(|l| l.limit.is_some());
        let amount = match charge.estimate_usd {
            // Free: nothing to reserve, nothing to refuse.
            Some(estimate) if micros_up(estimate) == 0 => return Ok(Hold::free()),
            Some(estimate) => micros_up(estimate),
            None if !limited || self.config.allow_unpriced => 0,
            None => return Err(self.unpriced(charge, &lines)),
        };
        let Some(cluster) = &self.cluster else {
            return self.reserve_locally(charge, &lines, amount, None);
        };
        let deadline = self
            .deadlines
            .get(charge.provider)
            .copied()
            .unwrap_or(Duration::from_secs(300))
            + HOLD_MARGIN;
        match remote::reserve(cluster, &lines, amount, now, deadline).await {
            Ok(Ok(hold)) => Ok(Hold {
                open: Some(Open {
                    store: Store::Redis {
                        cluster: cluster.clone(),
                        hold,
                    },
                    amount,
                }),
                note: None,
            }),
            Ok(Err((i, tally))) => Err(self.exceeded(charge, &lines[i], tally, amount)),
            // No budget applies to this call: nothing to enforce, only to count.
            Err(_) if !limited => self.reserve_locally(charge, &lines, amount, None),
            Err(down) if self.fail_open => {
                let note = format!(
                    "budgets are counted on this replica alone: the cluster's Redis is \
                     unreachable (since {}) and cluster.fail_open = true",
                    down.since
                );
                self.reserve_locally(charge, &lines, amount, Some(note))
            }
            Err(down) => {
                let mut error = ToolError::new(
                    ErrorKind::UpstreamUnavailable,
                    format!(
                        "the budgets cannot be checked: the cluster's Redis is unreachable \
                         (since {}: {}); paid calls are refused while it is down \
                         (cluster.fail_open = false). Nothing was sent to provider `{}`.",
                        down.since, down.reason, charge.provider
                    ),
                );
                error.kind = ToolErrorKind::ClusterUnavailable;
                error.retryable = true;
                error.retry_after_s = Some(5);
                error.provider = Some(charge.provider.to_string());
                Err(error)
            }
        }
    }

    fn reserve_locally(
        &self,
        charge: &Charge<'_>,
        lines: &[Line],
        amount: Micros,
        note: Option<String>,
    ) -> Result<Hold, ToolError> {
        match self.local.reserve(lines, amount) {
            Ok(()) => Ok(Hold {
                open: Some(Open {
                    store: Store::Local {
                        local: self.local.clone(),
                        keys: lines.iter().map(Line::local_key).collect(),
                    },
                    amount,
                }),
                note,
            }),
            Err((i, tally)) => Err(self.exceeded(charge, &lines[i], tally, amount)),
        }
    }

    /// The refusal of a call whose `amount` does not fit under `line`'s limit.
    fn exceeded(
        &self,
        charge: &Charge<'_>,
        line: &Line,
        tally: Tally,
        amount: Micros,
    ) -> ToolError {
        let (limit, setting) = line.limit.clone().unwrap_or_default();
        let spent = tally.spent.saturating_add(tally.possibly);
        let resets_at = crate::clock::rfc3339(line.resets_at);
        let per = match line.period {
            Period::Day => "UTC day",
            Period::Month => "UTC month",
        };
        let running = match tally.reserved {
            0 => String::new(),
            r => format!(", ${:.4} held by calls running", usd(r)),
        };
        let possibly = match tally.possibly {
            0 => String::new(),
            p => format!(" (${:.4} of it possibly billed)", usd(p)),
        };
        let estimate = match amount {
            0 => "a model without a known price (budget.allow_unpriced)".to_string(),
            a => format!("an estimated ${:.4}", usd(a)),
        };
        let mut error = ToolError::new(
            ErrorKind::InvalidRequest,
            format!(
                "the budget {setting} = ${:.2} per {per} would be passed: ${:.4} spent{possibly}{running}, \
                 and this call costs {estimate}; it resets at {resets_at}. Nothing was sent to \
                 provider `{}`.",
                usd(limit),
                usd(spent),
                charge.provider
            ),
        );
        error.kind = ToolErrorKind::BudgetExceeded;
        error.retryable = false;
        let wait = (line.resets_at - self.clock.now()).whole_seconds().max(1);
        error.retry_after_s = Some(wait as u64);
        error.provider = Some(charge.provider.to_string());
        error.budget = Some(BudgetDetails {
            budget: setting,
            limit_usd: usd(limit),
            spent_usd: usd(spent),
            reserved_usd: usd(tally.reserved),
            estimate_usd: usd(amount),
            resets_at,
        });
        error
    }

    /// The refusal of a call for a model without a known price while a budget applies.
    fn unpriced(&self, charge: &Charge<'_>, lines: &[Line]) -> ToolError {
        let settings: Vec<&str> = lines
            .iter()
            .filter_map(|l| l.limit.as_ref().map(|(_, s)| s.as_str()))
            .collect();
        let mut error = ToolError::invalid_param(
            "model",
            format!(
                "the model has no known price, so its cost cannot be checked against budget {}; \
                 set its price under [models] or budget.allow_unpriced = true. Nothing was sent \
                 to provider `{}`.",
                settings.join(", "),
                charge.provider
            ),
        );
        error.provider = Some(charge.provider.to_string());
        error
    }

    /// Sets the spend of the current periods from what was recorded before (the usage ledger
    /// at start-up): each `(scope, period, usd)` raises that count to at least `usd`, never
    /// lowers it. With Redis, the shared count is raised the same way.
    pub async fn seed(&self, spent: impl IntoIterator<Item = (Scope, Period, f64)>) {
        let now = self.clock.now();
        let spent: Vec<(Scope, Period, Micros)> = spent
            .into_iter()
            .map(|(scope, period, amount)| (scope, period, micros(amount)))
            .collect();
        for (scope, period, amount) in &spent {
            self.local.seed(period.instance(now), scope, *amount);
        }
        if let Some(cluster) = &self.cluster {
            if let Err(down) = remote::seed(cluster, &spent, now).await {
                tracing::warn!(error = %down.reason, "cannot seed the shared budget counts");
            }
        }
    }

    /// The spend of `scope` in the current `period` as this process counts it (the local
    /// backend, or the local fallback of a cluster that was down).
    pub fn local_tally(&self, scope: &Scope, period: Period) -> Tally {
        self.local.tally(&period.instance(self.clock.now()), scope)
    }

    /// The tally of `scope` in the current `period`, from Redis when configured.
    pub async fn tally(&self, scope: &Scope, period: Period) -> Result<Tally, ToolError> {
        let now = self.clock.now();
        match &self.cluster {
            None => Ok(self.local.tally(&period.instance(now), scope)),
            Some(cluster) => remote::tally(cluster, scope, period, now)
                .await
                .map_err(|down| ToolError::internal(format!("Redis: {}", down.reason))),
        }
    }

    /// The shared Redis's state for status views, `None` without `[cluster]`.
    pub fn cluster_status(&self) -> Option<ClusterStatus> {
        self.cluster.as_ref().map(|c| c.status(self.fail_open))
    }

    /// The budgets for status views, `None` when none is set.
    pub fn status(&self) -> Option<BudgetStatus> {
        if !self.config.any() && self.cluster.is_none() {
            return None;
        }
        let now = self.clock.now();
        let mut usage = Vec::new();
        if self.cluster.is_none() {
            let mut scopes = vec![Scope::Global];
            scopes.extend(self.config.providers.keys().cloned().map(Scope::Provider));
            let seen: Vec<Scope> = {
                let tallies = self.local.lock();
                let mut callers: Vec<String> = tallies
                    .keys()
                    .filter_map(|(_, key)| key.strip_prefix("caller/").map(str::to_string))
                    .collect();
                callers.extend(self.config.callers.keys().cloned());
                callers.sort();
                callers.dedup();
                callers.into_iter().map(Scope::Caller).collect()
            };
            scopes.extend(seen);
            for scope in scopes {
                for period in Period::ALL {
                    let Some((limit, setting)) = self.config.limit(&scope, period) else {
                        continue;
                    };
                    let tally = self.local.tally(&period.instance(now), &scope);
                    usage.push(BudgetUsage {
                        budget: setting,
                        limit_usd: limit,
                        spent_usd: usd(tally.spent.saturating_add(tally.possibly)),
                        possibly_billed_usd: usd(tally.possibly),
                        reserved_usd: usd(tally.reserved),
                        resets_at: crate::clock::rfc3339(period.resets_at(now)),
                    });
                }
            }
        }
        Some(BudgetStatus {
            backend: if self.cluster.is_some() {
                "redis"
            } else {
                "local"
            }
            .into(),
            allow_unpriced: self.config.allow_unpriced,
            cluster: self.cluster_status(),
            usage,
        })
    }
}

#[cfg(test)]
mod tests;
