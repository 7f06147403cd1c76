//! The budget arithmetic on both backends: reservations, settlements, periods, scopes, the
//! unpriced rule, refusals, and (against a real `redis-server`) concurrency, sweeps of dead
//! holders and an unreachable Redis.

use super::*;
use crate::cluster::ClusterConfig;
use imagegen_testkit::RedisServer;
use time::macros::datetime;

fn daily(usd: f64) -> BudgetConfig {
    BudgetConfig {
        daily_usd: Some(usd),
        ..BudgetConfig::default()
    }
}

fn charge(estimate: f64) -> Charge<'static> {
    Charge {
        provider: "openai",
        caller: Some("alice"),
        estimate_usd: Some(estimate),
    }
}

fn at_noon() -> Clock {
    Clock::fixed(datetime!(2026-12-01 12:00 UTC))
}

#[tokio::test]
async fn reservations_fill_the_budget_and_settling_frees_what_was_not_billed() {
    let budgets = Budgets::new(daily(1.0), false, None).with_clock(at_noon());
    let holds = [
        budgets.reserve(&charge(0.3)).await.unwrap(),
        budgets.reserve(&charge(0.3)).await.unwrap(),
        budgets.reserve(&charge(0.3)).await.unwrap(),
    ];
    assert_eq!(holds[0].amount(), 300_000);
    let refused = budgets.reserve(&charge(0.3)).await.unwrap_err();
    assert_eq!(refused.kind, ToolErrorKind::BudgetExceeded);
    let details = refused.budget.clone().unwrap();
    assert_eq!(details.reserved_usd, 0.9);
    assert_eq!(details.spent_usd, 0.0);

    let [a, b, c] = holds;
    a.settle(Settlement::Billed(0.1)).await;
    b.settle(Settlement::NotBilled).await;
    // 0.1 billed + 0.3 held: 0.6 left, exactly two more.
    let d = budgets.reserve(&charge(0.3)).await.unwrap();
    let e = budgets.reserve(&charge(0.3)).await.unwrap();
    assert!(budgets.reserve(&charge(0.01)).await.is_err());
    for hold in [c, d, e] {
        hold.settle(Settlement::Billed(0.25)).await;
    }
    let tally = budgets.local_tally(&Scope::Global, Period::Day);
    assert_eq!(
        tally,
        Tally {
            spent: 850_000,
            possibly: 0,
            reserved: 0
        }
    );
    // Every scope the call touched counts the same.
    assert_eq!(
        budgets.local_tally(&Scope::Caller("alice".into()), Period::Month),
        tally
    );
    assert_eq!(
        budgets.local_tally(&Scope::Provider("openai".into()), Period::Day),
        tally
    );
}

#[tokio::test]
async fn a_refusal_names_the_budget_its_spend_the_estimate_and_the_reset() {
    let clock = at_noon();
    let budgets = Budgets::new(daily(0.5), false, None).with_clock(clock.clone());
    let billed = budgets.reserve(&charge(0.2)).await.unwrap();
    billed.settle(Settlement::Billed(0.2)).await;
    let lost = budgets.reserve(&charge(0.1)).await.unwrap();
    lost.settle(Settlement::PossiblyBilled).await;
    let running = budgets.reserve(&charge(0.15)).await.unwrap();
    let error = budgets.reserve(&charge(0.08)).await.unwrap_err();
    assert_eq!(error.kind.as_str(), "budget_exceeded");
    assert!(!error.retryable);
    assert_eq!(error.retry_after_s, Some(12 * 3600));
    assert_eq!(error.provider.as_deref(), Some("openai"));
    assert_eq!(
        error.budget,
        Some(BudgetDetails {
            budget: "budget.daily_usd".into(),
            limit_usd: 0.5,
            spent_usd: 0.3,
            reserved_usd: 0.15,
            estimate_usd: 0.08,
            resets_at: "2026-12-02T00:00:00Z".into(),
        })
    );
    for says in [
        "budget.daily_usd",
        "$0.10",
        "possibly billed",
        "$0.0800",
        "2026-12-02T00:00:00Z",
        "Nothing was sent",
    ] {
        assert!(error.message.contains(says), "{says}: {}", error.message);
    }
    // The fields travel flat beside the kind, as clients read them.
    let json = serde_json::to_value(&error).unwrap();
    assert_eq!(json["kind"], "budget_exceeded");
    assert_eq!(json["budget"], "budget.daily_usd");
    assert_eq!(json["resets_at"], "2026-12-02T00:00:00Z");
    assert_eq!(json["estimate_usd"], 0.08);
    let back: ToolError = serde_json::from_value(json).unwrap();
    assert_eq!(back, error);
    // Other errors carry none of it.
    let plain = serde_json::to_value(ToolError::internal("x")).unwrap();
    assert!(plain.get("budget").is_none() && plain.get("resets_at").is_none());
    drop(running);
}

#[tokio::test]
async fn a_new_day_and_a_new_month_start_afresh() {
    let clock = Clock::fixed(datetime!(2026-12-31 23:59:59 UTC));
    let config = BudgetConfig {
        daily_usd: Some(1.0),
        monthly_usd: Some(1.5),
        ..BudgetConfig::default()
    };
    let budgets = Budgets::new(config, false, None).with_clock(clock.clone());
    let hold = budgets.reserve(&charge(1.0)).await.unwrap();
    hold.settle(Settlement::Billed(1.0)).await;
    let error = budgets.reserve(&charge(0.01)).await.unwrap_err();
    assert_eq!(error.budget.unwrap().resets_at, "2027-01-01T00:00:00Z");

    // The next day of a new month and year: both start afresh.
    clock.set(datetime!(2027-01-01 00:00 UTC));
    budgets
        .reserve(&charge(1.0))
        .await
        .unwrap()
        .settle(Settlement::Billed(1.0))
        .await;
    // The day after: the day is fresh, the month still holds 1.0 of 1.5.
    clock.set(datetime!(2027-01-02 08:00 UTC));
    let error = budgets.reserve(&charge(0.6)).await.unwrap_err();
    let details = error.budget.unwrap();
    assert_eq!(
        (details.budget.as_str(), details.resets_at.as_str()),
        ("budget.monthly_usd", "2027-02-01T00:00:00Z")
    );
    budgets
        .reserve(&charge(0.5))
        .await
        .unwrap()
        .settle(Settlement::NotBilled)
        .await;

    assert_eq!(
        Period::Month.resets_at(datetime!(2026-02-28 10:00 UTC)),
        datetime!(2026-03-01 0:00 UTC)
    );
    assert_eq!(
        Period::Day.instance(datetime!(2026-02-28 23:00 -02:00)),
        "d2026-03-01"
    );
}

#[tokio::test]
async fn every_scope_is_checked_and_a_refusal_takes_nothing_from_any() {
    let mut config = daily(10.0);
    config.providers.insert(
        "openai".into(),
        BudgetLimits {
            daily_usd: Some(1.0),
            monthly_usd: None,
        },
    );
    config.per_caller.monthly_usd = Some(0.5);
    config.callers.insert(
        "bot".into(),
        BudgetLimits {
            daily_usd: None,
            monthly_usd: Some(5.0),
        },
    );
    let budgets = Budgets::new(config, false, None).with_clock(at_noon());
    let alice = budgets.reserve(&charge(0.4)).await.unwrap();
    let error = budgets.reserve(&charge(0.2)).await.unwrap_err();
    assert_eq!(
        error.budget.unwrap().budget,
        "budget.per_caller.monthly_usd (caller `alice`)"
    );
    // Nothing of the refused call was taken anywhere.
    assert_eq!(
        budgets.local_tally(&Scope::Global, Period::Day).reserved,
        400_000
    );
    // The bot's own monthly limit wins over per_caller's; the provider's day still binds.
    let bot = |usd| Charge {
        caller: Some("bot"),
        ..charge(usd)
    };
    let held = budgets.reserve(&bot(0.6)).await.unwrap();
    let error = budgets.reserve(&bot(0.1)).await.unwrap_err();
    assert_eq!(
        error.budget.unwrap().budget,
        "budget.providers.openai.daily_usd"
    );
    // Another provider has its own day.
    let other = Charge {
        provider: "gemini",
        ..bot(0.1)
    };
    budgets
        .reserve(&other)
        .await
        .unwrap()
        .settle(Settlement::Billed(0.1))
        .await;
    // No caller: no per-caller budget applies.
    let anonymous = Charge {
        caller: None,
        provider: "gemini",
        estimate_usd: Some(3.0),
    };
    budgets
        .reserve(&anonymous)
        .await
        .unwrap()
        .settle(Settlement::NotBilled)
        .await;
    drop((alice, held));
}

#[tokio::test]
async fn unpriced_models_are_refused_under_a_budget_unless_allowed() {
    let unpriced = Charge {
        estimate_usd: None,
        ..charge(0.0)
    };
    // No budget at all: nothing is checked.
    let none = Budgets::new(BudgetConfig::default(), false, None);
    assert_eq!(none.reserve(&unpriced).await.unwrap().amount(), 0);

    let budgets = Budgets::new(daily(1.0), false, None).with_clock(at_noon());
    let error = budgets.reserve(&unpriced).await.unwrap_err();
    assert_eq!(
        (error.kind.as_str(), error.param.as_deref()),
        ("invalid_request", Some("model"))
    );
    assert!(
        error.message.contains("budget.allow_unpriced = true")
            && error.message.contains("budget.daily_usd"),
        "{}",
        error.message
    );

    let mut allowed = daily(1.0);
    allowed.allow_unpriced = true;
    let budgets = Budgets::new(allowed, false, None).with_clock(at_noon());
    let hold = budgets.reserve(&unpriced).await.unwrap();
    // It reserves nothing, and counts what the provider reported.
    hold.settle(Settlement::Billed(1.0)).await;
    let error = budgets.reserve(&unpriced).await.unwrap_err();
    assert_eq!(error.kind, ToolErrorKind::BudgetExceeded);
    assert!(
        error.message.contains("without a known price"),
        "{}",
        error.message
    );
    // A free call (priced at 0) is never refused.
    assert_eq!(budgets.reserve(&charge(0.0)).await.unwrap().amount(), 0);
}

#[tokio::test]
async fn a_dropped_hold_counts_as_possibly_billed_and_spend_survives_a_reload() {
    let budgets = Budgets::new(daily(1.0), false, None).with_clock(at_noon());
    let hold = budgets.reserve(&charge(0.4)).await.unwrap();
    // A cancelled call's future is dropped with its hold.
    drop(hold);
    let tally = budgets.local_tally(&Scope::Global, Period::Day);
    assert_eq!((tally.possibly, tally.reserved), (400_000, 0));

    let reloaded = budgets.reconfigured(daily(0.5), false, None);
    let error = reloaded.reserve(&charge(0.2)).await.unwrap_err();
    assert_eq!(error.budget.unwrap().limit_usd, 0.5);

    // Seeding raises counts to what the ledger says, never lowers them.
    reloaded
        .seed([
            (Scope::Provider("gemini".into()), Period::Month, 2.5),
            (Scope::Global, Period::Day, 0.1),
        ])
        .await;
    assert_eq!(
        reloaded
            .local_tally(&Scope::Provider("gemini".into()), Period::Month)
            .spent,
        2_500_000
    );
    assert_eq!(
        reloaded.local_tally(&Scope::Global, Period::Day).spent,
        100_000
    );
    let status = reloaded.status().unwrap();
    assert_eq!(status.backend, "local");
    assert_eq!(status.usage[0].budget, "budget.daily_usd");
    assert_eq!(status.usage[0].spent_usd, 0.5);
}

#[test]
fn limits_must_be_sane_and_amounts_round_the_safe_way() {
    assert!(daily(1.0).problem().is_none());
    let mut bad = daily(1.0);
    bad.providers.insert(
        "x".into(),
        BudgetLimits {
            daily_usd: Some(-1.0),
            monthly_usd: None,
        },
    );
    let (path, message) = bad.problem().unwrap();
    assert_eq!(path.join("."), "budget.providers.x.daily_usd");
    assert!(message.contains("between 0"));
    assert!(daily(f64::NAN).problem().is_some());
    assert_eq!(micros_up(0.0000001), 1);
    assert_eq!(micros(0.0000004), 0);
    assert_eq!(micros_up(f64::NAN), 0);
    assert_eq!(Scope::Caller("a\nb%".into()).key(), "caller/a%0Ab%25");
}

/// Budgets on `server` under a fresh prefix (so tests sharing a server never meet).
fn redis_budgets(server: &RedisServer, config: BudgetConfig, fail_open: bool) -> Budgets {
    let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
    replica(server, config, fail_open, &prefix)
}

/// Budgets on `server` under `prefix`: another replica of the same deployment.
fn replica(server: &RedisServer, config: BudgetConfig, fail_open: bool, prefix: &str) -> Budgets {
    let cluster = Cluster::open(&ClusterConfig {
        redis_url: Some(server.url()),
        key_prefix: prefix.into(),
        fail_open,
    })
    .unwrap();
    Budgets::new(config, fail_open, cluster)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reservations_on_redis_never_pass_the_budget() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    // Two replicas: their own connections and local state, one Redis and prefix.
    let budgets = replica(&server, daily(1.0), false, "shared").with_clock(at_noon());
    let other = replica(&server, daily(1.0), false, "shared").with_clock(at_noon());
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let budgets = if i % 2 == 0 {
                budgets.clone()
            } else {
                other.clone()
            };
            tokio::spawn(async move {
                match budgets.reserve(&charge(0.1)).await {
                    Ok(hold) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        hold.settle(Settlement::Billed(0.1)).await;
                        true
                    }
                    Err(e) => {
                        assert_eq!(e.kind, ToolErrorKind::BudgetExceeded, "{e:?}");
                        false
                    }
                }
            })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        admitted += usize::from(task.await.unwrap());
    }
    assert_eq!(admitted, 10);
    let tally = budgets.tally(&Scope::Global, Period::Day).await.unwrap();
    assert_eq!(
        tally,
        Tally {
            spent: 1_000_000,
            possibly: 0,
            reserved: 0
        }
    );
    let status = budgets.status().unwrap();
    assert_eq!(status.backend, "redis");
    assert_eq!(status.cluster.unwrap().state, "connected");
}

#[tokio::test]
async fn a_dead_holder_is_swept_into_possibly_billed_and_a_late_settle_corrects_it() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let clock = at_noon();
    let budgets = redis_budgets(&server, daily(1.0), false).with_clock(clock.clone());
    // A replica that died mid-call: its hold is never settled nor dropped.
    let dead = budgets.reserve(&charge(0.6)).await.unwrap();
    std::mem::forget(dead);
    // A slow one that settles after its time was up.
    let slow = budgets.reserve(&charge(0.3)).await.unwrap();
    assert!(budgets.reserve(&charge(0.2)).await.is_err());
    // Past the provider's deadline (300 s by default) and the margin.
    clock.set(datetime!(2026-12-01 12:10 UTC));
    // The sweep runs with this reservation: the dead 0.6 and slow 0.3 become possibly billed.
    let error = budgets.reserve(&charge(0.2)).await.unwrap_err();
    let details = error.budget.unwrap();
    assert_eq!((details.spent_usd, details.reserved_usd), (0.9, 0.0));
    slow.settle(Settlement::Billed(0.05)).await;
    let tally = budgets.tally(&Scope::Global, Period::Day).await.unwrap();
    assert_eq!(
        tally,
        Tally {
            spent: 50_000,
            possibly: 600_000,
            reserved: 0
        }
    );
    budgets
        .reserve(&charge(0.35))
        .await
        .unwrap()
        .settle(Settlement::NotBilled)
        .await;
    // A hold dropped unsettled settles itself as possibly billed.
    let dropped = budgets.reserve(&charge(0.1)).await.unwrap();
    drop(dropped);
    for _ in 0..100 {
        if budgets
            .tally(&Scope::Global, Period::Day)
            .await
            .unwrap()
            .possibly
            == 700_000
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the dropped hold was not settled");
}

#[tokio::test]
async fn a_killed_redis_fails_closed_or_open_as_configured_and_recovers() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let closed = redis_budgets(&server, daily(1.0), false).with_clock(at_noon());
    let open = closed.reconfigured(daily(1.0), true, closed.cluster().cloned());
    closed
        .reserve(&charge(0.1))
        .await
        .unwrap()
        .settle(Settlement::Billed(0.1))
        .await;
    server.kill();
    let started = std::time::Instant::now();
    let error = closed.reserve(&charge(0.1)).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(error.kind, ToolErrorKind::ClusterUnavailable);
    assert!(error.retryable);
    assert!(
        error.message.contains("cluster.fail_open = false"),
        "{}",
        error.message
    );
    assert!(!error.message.contains("redis://"), "{}", error.message);
    let status = closed.status().unwrap().cluster.unwrap();
    assert_eq!(
        (status.state.as_str(), status.fail_mode.as_str()),
        ("down", "closed")
    );
    assert!(status.down_since.is_some());

    let hold = open.reserve(&charge(0.1)).await.unwrap();
    assert!(
        hold.note().unwrap().contains("this replica alone"),
        "{:?}",
        hold.note()
    );
    hold.settle(Settlement::Billed(0.1)).await;
    // Free calls and calls no budget applies to go ahead either way.
    assert_eq!(closed.reserve(&charge(0.0)).await.unwrap().amount(), 0);

    server.restart();
    let hold = closed.reserve(&charge(0.1)).await.unwrap();
    assert!(hold.note().is_none());
    hold.settle(Settlement::NotBilled).await;
    assert_eq!(closed.status().unwrap().cluster.unwrap().state, "connected");
}
