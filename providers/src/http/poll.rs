//! Waiting on submit-then-poll APIs: check a job's status until it is done, backing off
//! between checks, within the call's deadline and until the caller cancels.

use std::{future::Future, time::Duration};

use tokio::time::Instant;

use crate::{CallOptions, ErrorKind, ProviderError, ProviderEvent};

use super::error::describe_wait;

/// What one status check found.
#[derive(Debug, Clone, PartialEq)]
pub enum PollStatus<T> {
    /// Not done yet; `status` is the provider's word for where it is (`queued`, `running`, a
    /// percentage), for progress reports.
    Pending {
        /// Where the job is, as the provider says it.
        status: Option<String>,
    },
    /// Done: the job's result (a failed job is an `Err` of the check instead).
    Done(T),
}

/// How often to check: `interval` first, growing by `factor` after each pending check up to
/// `max_interval`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Poller {
    /// The wait before the second check (the first is made at once).
    pub interval: Duration,
    /// The longest wait between two checks.
    pub max_interval: Duration,
    /// How much longer each wait is than the one before (1.0: a fixed interval).
    pub factor: f64,
}

impl Default for Poller {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(500),
            max_interval: Duration::from_secs(5),
            factor: 1.5,
        }
    }
}

impl Poller {
    /// Checks every `interval`, growing by `factor` up to `max_interval`.
    pub fn new(interval: Duration, max_interval: Duration, factor: f64) -> Self {
        Self {
            interval,
            max_interval: max_interval.max(interval),
            factor: if factor.is_finite() {
                factor.max(1.0)
            } else {
                1.0
            },
        }
    }

    /// The wait after pending check number `checks` (1-based).
    pub fn wait_after(&self, checks: u32) -> Duration {
        let grown = self
            .interval
            .mul_f64(self.factor.powi(checks.saturating_sub(1).min(64) as i32));
        grown.min(self.max_interval)
    }

    /// Runs `check` (given the 1-based check number) until it says done or fails, reporting a
    /// [`ProviderEvent::Pending`] after each pending check; fails with `timeout` when the next
    /// check would come after `deadline`, and with `cancelled` when `options.cancel` fires.
    /// `what` names the job in messages.
    pub async fn run<T, C, CF>(
        &self,
        options: &CallOptions,
        deadline: Instant,
        what: &str,
        mut check: C,
    ) -> Result<T, ProviderError>
    where
        C: FnMut(u32) -> CF,
        CF: Future<Output = Result<PollStatus<T>, ProviderError>>,
    {
        let started = Instant::now();
        let mut checks = 0;
        let mut last: Option<String> = None;
        let timed_out = |checks: u32, last: &Option<String>| {
            let said = last
                .as_ref()
                .map(|s| format!(" (last status: {s})"))
                .unwrap_or_default();
            ProviderError::new(
                ErrorKind::Timeout,
                format!(
                    "{what} was not done after {} and {checks} status check{}{said}; \
                     the call's deadline came first",
                    describe_wait(started.elapsed()),
                    if checks == 1 { "" } else { "s" }
                ),
            )
            .with_request_sent(true)
            // The job was submitted: asking again would pay for it twice.
            .with_retryable(false)
        };
        loop {
            checks += 1;
            // A check still in flight at the deadline ends here, with what the job last said,
            // rather than in the caller's cruder deadline that shares this instant.
            let status = tokio::select! {
                biased;
                _ = options.cancel.cancelled() => return Err(cancelled(what, checks)),
                status = tokio::time::timeout_at(deadline, check(checks)) => match status {
                    Ok(status) => status?,
                    Err(_) => return Err(timed_out(checks, &last)),
                },
            };
            let status = match status {
                PollStatus::Done(value) => return Ok(value),
                PollStatus::Pending { status } => status,
            };
            options.events.send(ProviderEvent::Pending {
                checks,
                status: status.clone(),
            });
            last = status;
            let wait = self.wait_after(checks);
            if Instant::now() + wait > deadline {
                return Err(timed_out(checks, &last));
            }
            tokio::select! {
                biased;
                _ = options.cancel.cancelled() => return Err(cancelled(what, checks)),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

fn cancelled(what: &str, checks: u32) -> ProviderError {
    ProviderError::new(
        ErrorKind::Cancelled,
        format!("the call was cancelled while waiting for {what} ({checks} status checks)"),
    )
    .with_request_sent(true)
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    };

    use super::*;
    use crate::Events;

    fn poller() -> Poller {
        Poller::new(Duration::from_secs(1), Duration::from_secs(4), 2.0)
    }

    #[test]
    fn waits_grow_by_the_factor_up_to_the_max() {
        let p = poller();
        let waits: Vec<_> = (1..=5).map(|n| p.wait_after(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 4, 4]);
        assert_eq!(
            Poller::new(Duration::from_secs(1), Duration::ZERO, f64::NAN).wait_after(9),
            Duration::from_secs(1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pending_checks_report_progress_then_the_result_arrives() {
        let (events, mut rx) = Events::channel();
        let options = CallOptions::new().with_events(events);
        let started = Instant::now();
        let deadline = started + Duration::from_secs(60);
        let result = poller()
            .run(&options, deadline, "the job", |n| async move {
                Ok(match n {
                    1..=3 => PollStatus::Pending {
                        status: Some(format!("running {n}")),
                    },
                    _ => PollStatus::Done(n),
                })
            })
            .await;
        assert_eq!(result, Ok(4));
        // 1 s + 2 s + 4 s of paused time between the four checks.
        assert_eq!(started.elapsed(), Duration::from_secs(7));
        drop(options);
        let mut pending = Vec::new();
        while let Ok(event) = rx.try_recv() {
            if let ProviderEvent::Pending { checks, status } = event {
                pending.push((checks, status.unwrap_or_default()));
            }
        }
        assert_eq!(
            pending,
            [
                (1, "running 1".to_string()),
                (2, "running 2".to_string()),
                (3, "running 3".to_string())
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_in_flight_at_the_deadline_ends_with_the_job_s_last_status() {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(10);
        // The outer bound at the same instant, as the executor sets it: the poller's error wins.
        let outer = tokio::time::timeout_at(
            deadline,
            poller().run(&CallOptions::new(), deadline, "the job", |n| async move {
                if n > 1 {
                    std::future::pending::<()>().await;
                }
                Ok(PollStatus::<()>::Pending {
                    status: Some("queued".into()),
                })
            }),
        )
        .await;
        let err = outer.expect("the poller ends first").unwrap_err();
        assert_eq!(err.kind, ErrorKind::Timeout);
        assert!(!err.retryable && err.request_sent);
        assert!(err.message.contains("last status: queued"), "{err}");
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_never_done_fails_at_the_deadline_without_a_retry() {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(10);
        let err = poller()
            .run(&CallOptions::new(), deadline, "the job", |_| async {
                Ok(PollStatus::<()>::Pending {
                    status: Some("queued".into()),
                })
            })
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Timeout);
        assert!(!err.retryable && err.request_sent);
        assert!(err.message.contains("last status: queued"), "{err}");
        assert!(started.elapsed() <= Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_ends_the_wait_at_once() {
        let options = CallOptions::new();
        let cancel = options.cancel.clone();
        let checks = Arc::new(AtomicU32::new(0));
        let seen = Arc::clone(&checks);
        let started = Instant::now();
        let deadline = started + Duration::from_secs(600);
        let poller = poller();
        let poll = poller.run(&options, deadline, "the job", move |_| {
            seen.fetch_add(1, Ordering::Relaxed);
            async { Ok(PollStatus::<()>::Pending { status: None }) }
        });
        let (err, _) = tokio::join!(poll, async {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            cancel.cancel();
        });
        let err = err.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Cancelled);
        assert_eq!(started.elapsed(), Duration::from_millis(2500));
        assert_eq!(checks.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_failed_check_fails_the_poll() {
        let err = poller()
            .run(
                &CallOptions::new(),
                Instant::now() + Duration::from_secs(5),
                "the job",
                |_| async {
                    Err::<PollStatus<()>, _>(ProviderError::new(ErrorKind::ContentPolicy, "no"))
                },
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::ContentPolicy);
    }
}
