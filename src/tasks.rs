//! Long calls as MCP tasks: the tasks extension (`io.modelcontextprotocol/tasks`, SEP-2663)
//! of protocol 2026-07-28, also for older clients that declare it at `initialize`.
//!
//! When the client declares the extension (and `tasks.enabled`), a generation or an edit is
//! answered at once with a task and runs on in the background, whatever becomes of the
//! request that started it. The task's record lives in the image store, so `tasks/get`
//! answers from any connection and any replica sharing the store, and after a restart, until
//! `tasks.ttl_s` has passed. A running task rewrites its record as it reports progress; one
//! whose record has not moved for [`stale_after`] is reported failed, since the server
//! running it is gone. Batches store each item's images as soon as they are ready, so a crash
//! loses only the unfinished items.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use rmcp::model::{CallToolResult, DetailedTask, JsonObject, Task, TaskPayload, TaskStatus};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{clock::now_rfc3339, progress::ProgressSink, storage::ImageStore};
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

/// The most bytes a stored task record may have when read back (results inline previews,
/// bounded by `output.preview_budget_bytes`, so a few hundred kB at most).
pub const MAX_RECORD_BYTES: u64 = 8 << 20;

/// `[tasks]`: answering long calls with MCP tasks.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TasksConfig {
    /// Answer `generate_image`, `generate_images`, `edit_image` and `create_variation` with a
    /// task when the client declares the tasks extension; `false`: always synchronously.
    pub enabled: bool,
    /// How long a task and its result stay readable after it was created, seconds.
    pub ttl_s: u64,
    /// How often clients are asked to poll, milliseconds.
    pub poll_interval_ms: u64,
}

impl Default for TasksConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl_s: 3600,
            poll_interval_ms: 1000,
        }
    }
}

/// What the store keeps of a task.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    /// Who started it (the HTTP caller, or the local user): nobody else may see it.
    owner: String,
    /// When it stops being readable (Unix seconds).
    expires_at: i64,
    /// The task as `tasks/get` answers it.
    task: DetailedTask,
}

/// A task running in this process.
#[derive(Debug)]
struct Running {
    owner: String,
    task: Task,
    cancel: CancellationToken,
    store: ImageStore,
    expires_at: i64,
    /// When its record was last written.
    saved: Instant,
}

/// Why a task cannot be read or cancelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskError {
    /// No such task for this caller (or it expired).
    Unknown(String),
    /// The store could not be read.
    Store(String),
}

/// The tasks of this process, and the way to the others' records.
#[derive(Debug, Default)]
pub struct Tasks {
    running: Mutex<HashMap<String, Running>>,
}

/// How long a running task's record may go unchanged before the task counts as lost: ten
/// progress heartbeats (it rewrites its record at least every other one).
pub fn stale_after(heartbeat: Duration) -> Duration {
    heartbeat * 10
}

impl Tasks {
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new task of `owner`, stored in `store`, and writes its first record before
    /// returning: a `tasks/get` for it never misses. The token ends the work on `tasks/cancel`.
    pub async fn create(
        &self,
        owner: &str,
        store: &ImageStore,
        config: &TasksConfig,
        message: &str,
    ) -> Result<(Task, CancellationToken), TaskError> {
        let id = uuid::Uuid::new_v4().to_string();
        let now = now_rfc3339();
        let mut task = Task::new(id.clone(), TaskStatus::Working, now.clone(), now)
            .with_ttl_ms(config.ttl_s.saturating_mul(1000))
            .with_poll_interval_ms(config.poll_interval_ms.max(100));
        task.status_message = Some(message.to_string());
        let expires_at = OffsetDateTime::now_utc()
            .unix_timestamp()
            .saturating_add(i64::try_from(config.ttl_s).unwrap_or(i64::MAX));
        let record = Record {
            owner: owner.to_string(),
            expires_at,
            task: DetailedTask::new(task.clone(), TaskPayload::Working),
        };
        put(store, &record).await?;
        let cancel = CancellationToken::new();
        self.table().insert(
            id,
            Running {
                owner: owner.to_string(),
                task: task.clone(),
                cancel: cancel.clone(),
                store: store.clone(),
                expires_at,
                saved: Instant::now(),
            },
        );
        Ok((task, cancel))
    }

    /// Updates a running task's message; the record is rewritten when `persist_every` has
    /// passed since the last write, so other connections and replicas see it move.
    async fn progress(&self, id: &str, message: String, persist_every: Duration) {
        let record = {
            let mut table = self.table();
            let Some(running) = table.get_mut(id) else {
                return;
            };
            running.task.status_message = Some(message);
            running.task.last_updated_at = now_rfc3339();
            if running.saved.elapsed() < persist_every {
                return;
            }
            running.saved = Instant::now();
            (
                running.store.clone(),
                Record {
                    owner: running.owner.clone(),
                    expires_at: running.expires_at,
                    task: DetailedTask::new(running.task.clone(), TaskPayload::Working),
                },
            )
        };
        if let Err(e) = put(&record.0, &record.1).await {
            tracing::warn!(task = %id, "cannot update the task's record: {e:?}");
        }
    }

    /// Ends a running task with `result` (or as cancelled, when its token fired) and stores
    /// its final record; from then on it is read from the store.
    pub async fn finish(&self, id: &str, result: CallToolResult) {
        let Some(running) = self.table().remove(id) else {
            return;
        };
        let mut task = running.task;
        task.last_updated_at = now_rfc3339();
        let payload = if running.cancel.is_cancelled() {
            task.status_message = Some("cancelled".into());
            TaskPayload::Cancelled
        } else {
            task.status_message = Some(
                if result.is_error == Some(true) {
                    "finished with an error"
                } else {
                    "completed"
                }
                .into(),
            );
            match serde_json::to_value(&result) {
                Ok(serde_json::Value::Object(result)) => TaskPayload::Completed { result },
                _ => TaskPayload::Failed {
                    error: error_object("the result could not be encoded"),
                },
            }
        };
        let record = Record {
            owner: running.owner,
            expires_at: running.expires_at,
            task: DetailedTask::new(task, payload),
        };
        if let Err(e) = put(&running.store, &record).await {
            tracing::error!(task = %id, "cannot store the task's result: {e:?}");
        }
    }

    /// The task `id` as `owner` may see it: live from this process, else from `store`.
    pub async fn get(
        &self,
        id: &str,
        owner: &str,
        store: &ImageStore,
        stale: Duration,
    ) -> Result<DetailedTask, TaskError> {
        if let Some(running) = self.table().get(id) {
            if running.owner != owner {
                return Err(unknown(id));
            }
            return Ok(DetailedTask::new(
                running.task.clone(),
                TaskPayload::Working,
            ));
        }
        let record = read(store, id).await?;
        if record.owner != owner {
            return Err(unknown(id));
        }
        let mut task = record.task;
        if !task.status().is_terminal() && is_stale(&task.task, stale) {
            task.task.status_message =
                Some("the server running this task stopped before it finished".into());
            task = DetailedTask::new(
                task.task,
                TaskPayload::Failed {
                    error: error_object(
                        "the server running this task stopped before it finished; images of batch items finished before are stored (find_images)",
                    ),
                },
            );
        }
        Ok(task)
    }

    /// Asks a task of `owner` running here to stop: the upstream call ends at once and
    /// nothing more is saved. A task that already ended is left as it is.
    pub async fn cancel(&self, id: &str, owner: &str, store: &ImageStore) -> Result<(), TaskError> {
        if let Some(running) = self.table().get(id) {
            if running.owner != owner {
                return Err(unknown(id));
            }
            running.cancel.cancel();
            return Ok(());
        }
        // Not here: finished (cancelling it changes nothing), or on another replica, which
        // cannot be reached from here.
        let record = read(store, id).await?;
        if record.owner != owner {
            return Err(unknown(id));
        }
        if record.task.status().is_terminal() {
            Ok(())
        } else {
            Err(TaskError::Store(
                "this task runs on another replica of the server; cancel it through the connection that started it".into(),
            ))
        }
    }

    /// Tasks running in this process now.
    #[cfg(test)]
    fn running(&self) -> usize {
        self.table().len()
    }
}

fn unknown(id: &str) -> TaskError {
    TaskError::Unknown(format!(
        "no task `{id}` (of yours): it never existed, or it expired"
    ))
}

fn error_object(message: &str) -> JsonObject {
    let mut error = JsonObject::new();
    error.insert("code".into(), (-32603).into());
    error.insert("message".into(), message.into());
    error
}

fn is_stale(task: &Task, stale: Duration) -> bool {
    OffsetDateTime::parse(&task.last_updated_at, &Rfc3339).map_or(true, |at| {
        let age = OffsetDateTime::now_utc() - at;
        age > stale
    })
}

/// Task ids are ours (UUIDs); anything else is refused before it reaches the store's paths.
fn valid_id(id: &str) -> bool {
    uuid::Uuid::parse_str(id).is_ok() && id.len() == 36
}

async fn put(store: &ImageStore, record: &Record) -> Result<(), TaskError> {
    let json = serde_json::to_vec(record).map_err(|e| TaskError::Store(e.to_string()))?;
    store
        .put_task(&record.task.task.task_id, json)
        .await
        .map_err(|e| TaskError::Store(e.message))
}

async fn read(store: &ImageStore, id: &str) -> Result<Record, TaskError> {
    if !valid_id(id) {
        return Err(unknown(id));
    }
    let bytes = store
        .task_record(id, MAX_RECORD_BYTES)
        .await
        .map_err(|e| TaskError::Store(e.message))?
        .ok_or_else(|| unknown(id))?;
    let record: Record = serde_json::from_slice(&bytes)
        .map_err(|e| TaskError::Store(format!("the task's record is broken: {e}")))?;
    if record.expires_at < OffsetDateTime::now_utc().unix_timestamp() {
        if let Err(e) = store.remove_task(id).await {
            tracing::debug!(task = %id, "cannot remove an expired task: {}", e.message);
        }
        return Err(unknown(id));
    }
    Ok(record)
}

/// Deletes expired task records from the store now and then, for as long as the server runs;
/// `current` gives the store and settings in force at each pass.
pub async fn sweep_periodically<F>(current: F)
where
    F: Fn() -> (ImageStore, TasksConfig) + Send + Sync,
{
    loop {
        let (store, config) = current();
        let ttl = Duration::from_secs(config.ttl_s);
        match store.prune_tasks(ttl).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(count = n, "deleted expired task records"),
            Err(e) => tracing::warn!("cannot sweep expired tasks: {}", e.message),
        }
        // Often enough that a record outlives its TTL by a quarter of it at most.
        tokio::time::sleep((ttl / 4).clamp(Duration::from_secs(60), Duration::from_secs(3600)))
            .await;
    }
}

/// Progress of a task: its phases become the task's status message.
pub struct TaskProgress {
    /// The registry the task is in.
    pub tasks: Arc<Tasks>,
    /// The task's id.
    pub id: String,
    /// How often the record is rewritten at most.
    pub persist_every: Duration,
}

#[async_trait::async_trait]
impl ProgressSink for TaskProgress {
    async fn send(&self, _progress: f64, message: String) {
        self.tasks
            .progress(&self.id, message, self.persist_every)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> TasksConfig {
        TasksConfig {
            ttl_s: 60,
            ..TasksConfig::default()
        }
    }

    #[tokio::test]
    async fn a_task_is_readable_by_its_owner_only_and_keeps_its_result() {
        let store = ImageStore::memory();
        let tasks = Tasks::default();
        let (task, _cancel) = tasks
            .create("alice", &store, &config(), "starting")
            .await
            .unwrap();
        let id = task.task_id.clone();
        let stale = Duration::from_secs(60);
        let seen = tasks.get(&id, "alice", &store, stale).await.unwrap();
        assert_eq!(seen.status(), TaskStatus::Working);
        assert!(matches!(
            tasks.get(&id, "bob", &store, stale).await,
            Err(TaskError::Unknown(_))
        ));

        tasks.finish(&id, CallToolResult::success(vec![])).await;
        assert_eq!(tasks.running(), 0);
        // A fresh registry (a restart, another replica) reads the same result from the store.
        let other = Tasks::default();
        let done = other.get(&id, "alice", &store, stale).await.unwrap();
        assert_eq!(done.status(), TaskStatus::Completed);
        assert!(matches!(done.payload, TaskPayload::Completed { .. }));
        assert!(matches!(
            other.get(&id, "bob", &store, stale).await,
            Err(TaskError::Unknown(_))
        ));
    }

    #[tokio::test]
    async fn a_cancelled_task_ends_cancelled_and_a_lost_one_failed() {
        let store = ImageStore::memory();
        let tasks = Tasks::default();
        let (task, cancel) = tasks
            .create("alice", &store, &config(), "starting")
            .await
            .unwrap();
        tasks.cancel(&task.task_id, "alice", &store).await.unwrap();
        assert!(cancel.is_cancelled());
        tasks
            .finish(&task.task_id, CallToolResult::success(vec![]))
            .await;
        let ended = tasks
            .get(&task.task_id, "alice", &store, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(ended.status(), TaskStatus::Cancelled);

        // Started by a process that is gone: its record stops moving.
        let (lost, _) = Tasks::default()
            .create("alice", &store, &config(), "starting")
            .await
            .unwrap();
        let fresh = tasks
            .get(&lost.task_id, "alice", &store, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(fresh.status(), TaskStatus::Working);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let stale = tasks
            .get(&lost.task_id, "alice", &store, Duration::from_millis(1))
            .await
            .unwrap();
        assert_eq!(stale.status(), TaskStatus::Failed);
    }

    #[tokio::test]
    async fn expired_records_are_swept_and_fresh_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::new(dir.path());
        let tasks = Tasks::default();
        let (task, _) = tasks
            .create("alice", &store, &config(), "starting")
            .await
            .unwrap();
        assert_eq!(store.prune_tasks(Duration::from_secs(60)).await.unwrap(), 0);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(
            store.prune_tasks(Duration::from_millis(10)).await.unwrap(),
            1
        );
        assert!(store
            .task_record(&task.task_id, MAX_RECORD_BYTES)
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn ids_that_are_not_ours_never_reach_the_store() {
        let store = ImageStore::memory();
        let tasks = Tasks::default();
        for id in [
            "../../etc/passwd",
            "",
            "x",
            "00000000-0000-0000-0000-000000000000",
        ] {
            assert!(matches!(
                tasks.get(id, "alice", &store, Duration::from_secs(1)).await,
                Err(TaskError::Unknown(_))
            ));
        }
    }
}
