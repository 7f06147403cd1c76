//! Progress for long calls: each phase as it happens, a heartbeat at least every few seconds
//! so clients and proxies with idle timeouts keep the call alive, strictly increasing values,
//! and nothing after the result.
//!
//! One task owns the sink and a counter; phases reach it through a channel, so notifications
//! leave in order and `finish` can wait until the last one is out.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
    time::{sleep_until, Instant},
};

/// Where progress notifications go (an MCP peer, the CLI's status line, a test recorder).
#[async_trait]
pub trait ProgressSink: Send + Sync + 'static {
    /// Delivers one notification; `progress` strictly increases across calls.
    async fn send(&self, progress: f64, message: String);
}

/// A cheap handle to report phases; reporting never blocks and never fails the call.
#[derive(Debug, Clone, Default)]
pub struct Progress(Option<mpsc::UnboundedSender<String>>);

impl Progress {
    /// A handle that reports nothing.
    pub fn none() -> Self {
        Self(None)
    }

    /// Reports the call's current phase.
    pub fn phase(&self, message: impl Into<String>) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(message.into());
        }
    }
}

/// Runs the notification task for one call.
#[derive(Debug)]
pub struct ProgressReporter {
    handle: Progress,
    task: Option<(JoinHandle<()>, oneshot::Sender<()>)>,
}

impl ProgressReporter {
    /// Starts reporting to `sink` (if any), with a heartbeat after `heartbeat` of silence.
    pub fn start(sink: Option<Arc<dyn ProgressSink>>, heartbeat: Duration) -> Self {
        let Some(sink) = sink else {
            return Self {
                handle: Progress::none(),
                task: None,
            };
        };
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        // Handles may outlive the call (cloned into tasks): the end is signalled, not inferred.
        let (stop_tx, mut stop) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut count = 0.0;
            let mut last = String::from("working");
            let mut deadline = Instant::now() + heartbeat;
            loop {
                let message = tokio::select! {
                    biased;
                    next = rx.recv() => match next {
                        Some(message) => {
                            last.clone_from(&message);
                            message
                        }
                        None => break,
                    },
                    _ = &mut stop => {
                        while let Ok(message) = rx.try_recv() {
                            count += 1.0;
                            sink.send(count, message).await;
                        }
                        break;
                    }
                    _ = sleep_until(deadline) => {
                        format!("{last} ({} s elapsed)", started.elapsed().as_secs())
                    }
                };
                count += 1.0;
                sink.send(count, message).await;
                deadline = Instant::now() + heartbeat;
            }
        });
        Self {
            handle: Progress(Some(tx)),
            task: Some((task, stop_tx)),
        }
    }

    /// The handle to report phases with.
    pub fn handle(&self) -> Progress {
        self.handle.clone()
    }

    /// Stops reporting and waits until every queued notification is out, so none follows the result.
    pub async fn finish(mut self) {
        self.handle = Progress::none();
        if let Some((task, stop)) = self.task.take() {
            let _ = stop.send(());
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(f64, String, Instant)>>);

    #[async_trait]
    impl ProgressSink for Recorder {
        async fn send(&self, progress: f64, message: String) {
            self.0
                .lock()
                .unwrap()
                .push((progress, message, Instant::now()));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn phases_arrive_in_order_with_heartbeats_between_and_nothing_after_finish() {
        let recorder = Arc::new(Recorder::default());
        let start = Instant::now();
        let reporter = ProgressReporter::start(Some(recorder.clone()), Duration::from_secs(2));
        let progress = reporter.handle();
        progress.phase("requesting");
        tokio::time::sleep(Duration::from_secs(7)).await;
        progress.phase("saving");
        reporter.finish().await;
        progress.phase("too late");
        tokio::time::sleep(Duration::from_secs(10)).await;

        let seen = recorder.0.lock().unwrap().clone();
        let messages: Vec<_> = seen.iter().map(|(_, m, _)| m.as_str()).collect();
        assert_eq!(messages.first(), Some(&"requesting"));
        assert_eq!(messages.last(), Some(&"saving"));
        assert!(
            messages[1].starts_with("requesting (2 s elapsed)"),
            "{messages:?}"
        );
        assert_eq!(
            seen.len(),
            5,
            "requesting, 3 heartbeats, saving: {messages:?}"
        );
        assert!(
            seen.windows(2).all(|w| w[0].0 < w[1].0),
            "strictly increasing"
        );
        let mut at = start;
        for (_, _, t) in &seen {
            assert!(
                *t - at <= Duration::from_secs(2),
                "a gap over the heartbeat"
            );
            at = *t;
        }
    }

    #[tokio::test]
    async fn without_a_sink_nothing_runs() {
        let reporter = ProgressReporter::start(None, Duration::from_secs(1));
        reporter.handle().phase("ignored");
        reporter.finish().await;
    }
}
