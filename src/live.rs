//! The live configuration of a running server: one immutable [`Snapshot`] that every call
//! reads, replaced whole and atomically when the configuration changes, and the watcher that
//! notices changes (file events, SIGHUP, a slow poll).
//!
//! A reload reads and checks everything and builds the new engine off to the side; only a
//! complete, valid state is published, with one pointer swap. A call takes the snapshot once
//! at its start and keeps it to the end, so it finishes with the key it started with, while
//! the next call sees the new state at once. Nothing waits on a reload.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use arc_swap::ArcSwap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{
    clock::rfc3339,
    config::{ConfigError, LoadedConfig},
    engine::{ClientCache, Engine},
};

/// How long to wait before reading a file again that was empty, half-written or invalid.
pub const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// The longest a reload may spend reading the configuration.
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(20);

/// Loads the configuration as it is now (the files, the environment, the flags).
pub type Loader = Arc<dyn Fn() -> Result<LoadedConfig, ConfigError> + Send + Sync>;

/// One published state: what calls started now will use.
#[derive(Debug)]
pub struct Snapshot {
    /// Providers, key pools, catalog, output settings.
    pub engine: Arc<Engine>,
    /// 1 at start, one more for each published change.
    pub generation: u64,
    /// When this state was loaded.
    pub loaded_at: OffsetDateTime,
    /// The configuration it was built from.
    pub loaded: LoadedConfig,
}

/// What one reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The inputs are the same as the running state's: nothing was rebuilt.
    Unchanged,
    /// A new state was published with this generation number.
    Published(u64),
    /// The configuration could not be loaded twice in a row; the running state stays.
    Failed(String),
}

/// A reload that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReloadError {
    /// Why, without any secret.
    pub message: String,
    /// When (RFC 3339, UTC).
    pub at: String,
}

#[derive(Debug, Default)]
struct Counters {
    published: u64,
    failed: u64,
    last_error: Option<ReloadError>,
}

/// Installs a log filter; the error says why it was refused.
type SetFilter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Applies the log filter from the configuration, unless the environment decides it.
pub struct LogControl {
    set: Option<SetFilter>,
    default: String,
    env_var: Option<String>,
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogControl")
            .field("default", &self.default)
            .field("env_var", &self.env_var)
            .finish_non_exhaustive()
    }
}

impl LogControl {
    /// Installs filters with `set`; `default` applies when the configuration sets none;
    /// `env_var` names the variable (`RUST_LOG`) that wins over the configuration, when set.
    pub fn new(
        set: impl Fn(&str) -> Result<(), String> + Send + Sync + 'static,
        default: impl Into<String>,
        env_var: Option<String>,
    ) -> Self {
        Self {
            set: Some(Box::new(set)),
            default: default.into(),
            env_var,
        }
    }

    /// No control over logging (tests, library use): `log_level` is ignored.
    pub fn none() -> Self {
        Self {
            set: None,
            default: String::new(),
            env_var: None,
        }
    }

    /// Installs `level`, or the default when `None`; does nothing when the environment decides.
    pub fn apply(&self, level: Option<&str>) {
        if self.env_var.is_some() {
            return;
        }
        if let Some(set) = &self.set {
            let level = level.unwrap_or(&self.default);
            if let Err(e) = set(level) {
                tracing::warn!("cannot apply log_level: {e}");
            }
        }
    }
}

/// The live state and its reload machinery.
pub struct Live {
    current: ArcSwap<Snapshot>,
    load: Loader,
    clients: ClientCache,
    log: LogControl,
    /// One reload at a time; calls never take it.
    reloading: tokio::sync::Mutex<()>,
    counters: Mutex<Counters>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("current", &self.current.load())
            .finish_non_exhaustive()
    }
}

impl Live {
    /// Loads the configuration with `load` and builds the first state; an invalid
    /// configuration fails here, at start-up, with the reason.
    pub fn start(load: Loader, log: LogControl) -> anyhow::Result<Self> {
        let loaded = load()
            .and_then(|l| l.check_output_dir().map(|()| l))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let clients = ClientCache::default();
        let engine = Engine::build(&loaded, None, &clients)?;
        log_notices(&loaded, true);
        log_lifecycle(&engine);
        log.apply(loaded.config.log_level.as_deref());
        if let (Some(var), Some(_)) = (&log.env_var, &loaded.config.log_level) {
            tracing::info!("log_level in the configuration is not used: {var} is set and wins");
        }
        Ok(Self {
            current: ArcSwap::from_pointee(Snapshot {
                engine: Arc::new(engine),
                generation: 1,
                loaded_at: OffsetDateTime::now_utc(),
                loaded,
            }),
            load,
            clients,
            log,
            reloading: tokio::sync::Mutex::new(()),
            counters: Mutex::new(Counters::default()),
        })
    }

    /// The state in force now; hold the `Arc` for the whole call.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The engine in force now; hold the `Arc` for the whole call.
    pub fn engine(&self) -> Arc<Engine> {
        self.current.load().engine.clone()
    }

    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn load_now(&self) -> Result<LoadedConfig, ConfigError> {
        let load = self.load.clone();
        // File reads may stall (network filesystems): keep them off the async workers.
        let task = tokio::task::spawn_blocking(move || {
            load().and_then(|l| l.check_output_dir().map(|()| l))
        });
        // Reads that block anyway (a hung network mount) fail the reload rather than stall
        // every later one behind `reloading`.
        match tokio::time::timeout(LOAD_TIMEOUT, task).await {
            Ok(done) => {
                done.unwrap_or_else(|e| Err(ConfigError::new(format!("loading panicked: {e}"))))
            }
            Err(_) => Err(ConfigError::new(format!(
                "reading the configuration took longer than {} s; is a file on a stalled mount?",
                LOAD_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Reads the configuration again and publishes it if it changed and is valid.
    ///
    /// A configuration that fails to load is read once more after [`RETRY_PAUSE`] (it may
    /// have been caught mid-write); if it still fails, the running state stays and the
    /// reason is logged and kept for the status.
    pub async fn reload(&self) -> Outcome {
        let _one_at_a_time = self.reloading.lock().await;
        let loaded = match self.load_now().await {
            Ok(loaded) => Ok(loaded),
            Err(first) => {
                tracing::debug!("configuration not loadable, reading again shortly: {first}");
                tokio::time::sleep(RETRY_PAUSE).await;
                self.load_now().await
            }
        };
        let current = self.snapshot();
        let built = loaded.map_err(|e| e.to_string()).and_then(|loaded| {
            if loaded.content_hash() == current.loaded.content_hash() {
                return Ok(None);
            }
            let engine = Engine::build(&loaded, Some(&current.engine), &self.clients)
                .map_err(|e| format!("{e:#}"))?;
            Ok(Some((loaded, engine)))
        });
        let (loaded, engine) = match built {
            Ok(Some(new)) => new,
            Ok(None) => {
                // A broken file put back as it was also ends the error.
                self.counters().last_error = None;
                return Outcome::Unchanged;
            }
            Err(message) => {
                tracing::warn!(
                    generation = current.generation,
                    "configuration reload failed; keeping the running configuration: {message}"
                );
                metrics::counter!(crate::telemetry::RELOADS, "outcome" => "failed").increment(1);
                let mut counters = self.counters();
                counters.failed += 1;
                counters.last_error = Some(ReloadError {
                    message: message.clone(),
                    at: rfc3339(OffsetDateTime::now_utc()),
                });
                return Outcome::Failed(message);
            }
        };

        for warning in self.not_live(&current.loaded, &loaded) {
            tracing::warn!("{warning}");
        }
        log_notices(&loaded, false);
        log_lifecycle(&engine);
        if loaded.config.log_level != current.loaded.config.log_level {
            self.log.apply(loaded.config.log_level.as_deref());
        }
        let generation = current.generation + 1;
        self.current.store(Arc::new(Snapshot {
            engine: Arc::new(engine),
            generation,
            loaded_at: OffsetDateTime::now_utc(),
            loaded,
        }));
        metrics::counter!(crate::telemetry::RELOADS, "outcome" => "published").increment(1);
        let mut counters = self.counters();
        counters.published += 1;
        counters.last_error = None;
        drop(counters);
        tracing::info!(generation, "configuration reloaded");
        Outcome::Published(generation)
    }

    /// Settings that changed but cannot take effect while the server runs, each saying why.
    ///
    /// Everything the configuration holds reloads live except `server.http` (the listener),
    /// `log_format`, and a `log_level` that an environment variable overrides.
    fn not_live(&self, old: &LoadedConfig, new: &LoadedConfig) -> Vec<String> {
        let mut out = Vec::new();
        // The listener is built once, at start-up; tokens and allow_unauthenticated are read
        // on every request, so they need no restart.
        if old.config.server.http != new.config.server.http {
            out.push(
                "server.http changed but is not applied: the HTTP listener keeps its address, \
                 body cap, allowed origins and hosts until the server restarts"
                    .to_string(),
            );
        }
        if old.config.log_format != new.config.log_format {
            out.push(
                "log_format changed but is not applied: the log format is chosen at start-up; \
                 restart the server to use it"
                    .to_string(),
            );
        }
        if let Some(var) = &self.log.env_var {
            if old.config.log_level != new.config.log_level {
                out.push(format!(
                    "log_level changed but is not applied: {var} is set and wins; unset it and \
                     restart the server to use log_level"
                ));
            }
        }
        out
    }

    /// The reload history and the state in force.
    pub fn status(&self) -> ConfigStatus {
        let snapshot = self.snapshot();
        let counters = self.counters();
        ConfigStatus {
            generation: snapshot.generation,
            loaded_at: rfc3339(snapshot.loaded_at),
            config_file: snapshot
                .loaded
                .file
                .as_ref()
                .map(|f| f.display().to_string()),
            reloads: counters.published,
            reload_errors: counters.failed,
            last_reload_error: counters.last_error.clone(),
        }
    }
}

/// Logs the configuration's notices: at start-up as information, on a reload only for
/// debugging, except that a key shadowing the file's is a warning every time, since it is why a
/// key rotated in the file did nothing.
fn log_notices(loaded: &LoadedConfig, at_start: bool) {
    for notice in loaded.notices() {
        if loaded.shadowed_keys().contains(&notice) {
            tracing::warn!("{notice}");
        } else if at_start {
            tracing::info!("{notice}");
        } else {
            tracing::debug!("{notice}");
        }
    }
}

/// Warns about defaults and aliases pointing at deprecated or shut-down models, at start-up and
/// on every reload: the date moves closer each time, and the person must act before it.
fn log_lifecycle(engine: &Engine) {
    for warning in engine.lifecycle_warnings() {
        tracing::warn!("{warning}");
    }
}

/// The reload state, as `imagegen://status` and `list_providers` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ConfigStatus {
    /// 1 at start, one more for each published configuration change.
    pub generation: u64,
    /// When the configuration in force was loaded (RFC 3339, UTC).
    pub loaded_at: String,
    /// The config file in force, if any.
    pub config_file: Option<String>,
    /// Reloads that published a changed configuration.
    pub reloads: u64,
    /// Reloads that failed (the running configuration stayed).
    pub reload_errors: u64,
    /// The latest failed reload; cleared by the next successful one.
    pub last_reload_error: Option<ReloadError>,
}

/// The directories to watch for `loaded`: those of the config file (or of the places a config
/// file is looked for, when there is none) and of every key file, and, for files that are
/// symbolic links, those of their targets.
pub fn watch_dirs(loaded: &LoadedConfig) -> BTreeSet<PathBuf> {
    let mut files: Vec<&Path> = loaded.inputs().iter().map(|i| i.path.as_path()).collect();
    if loaded.file.is_none() {
        files.extend(loaded.searched().iter().map(PathBuf::as_path));
    }
    let mut dirs = BTreeSet::new();
    for file in files {
        // Watching a directory rather than the file sees writes in place, renames over it,
        // delete-and-recreate, and Kubernetes' `..data` symlink swaps alike.
        dirs.extend(file.parent().filter(|d| d.is_dir()).map(Path::to_path_buf));
        if let Ok(target) = std::fs::canonicalize(file) {
            dirs.extend(target.parent().map(Path::to_path_buf));
        }
    }
    dirs
}

/// The paths whose change may change `loaded`: the files read (or looked for), every
/// symbolic link on the way to them and its target (Kubernetes' `key -> ..data/key`,
/// `..data -> ..2026_…`), so a swap of `..data` counts while a log file written next to the
/// config file does not.
pub fn watch_paths(loaded: &LoadedConfig) -> BTreeSet<PathBuf> {
    let mut files: Vec<&Path> = loaded.inputs().iter().map(|i| i.path.as_path()).collect();
    if loaded.file.is_none() {
        files.extend(loaded.searched().iter().map(PathBuf::as_path));
    }
    let mut out = BTreeSet::new();
    for file in files {
        let mut todo = vec![file.to_path_buf()];
        // A bound, since links may form a loop.
        let mut budget = 64;
        while let Some(path) = todo.pop() {
            budget -= 1;
            if budget == 0 {
                break;
            }
            if !out.insert(path.clone()) {
                continue;
            }
            for link in path.ancestors() {
                let Some(parent) = link.parent() else { break };
                let is_link = std::fs::symlink_metadata(link).is_ok_and(|m| m.is_symlink());
                if let (true, Ok(target)) = (is_link, std::fs::read_link(link)) {
                    out.insert(link.to_path_buf());
                    let rest = path.strip_prefix(link).unwrap_or(Path::new(""));
                    todo.push(parent.join(target).join(rest));
                }
            }
        }
        out.extend(std::fs::canonicalize(file).ok());
    }
    // Events may name a path through its directory's real path (macOS reports those).
    let real: Vec<PathBuf> = out
        .iter()
        .filter_map(|p| {
            Some(
                std::fs::canonicalize(p.parent()?)
                    .ok()?
                    .join(p.file_name()?),
            )
        })
        .collect();
    out.extend(real);
    out
}

/// Whether an event on `paths` may concern one of `wanted` ([`watch_paths`]): it names one
/// of them or a directory on the way to one. An event naming no path may hide anything.
fn concerns(paths: &[PathBuf], wanted: &BTreeSet<PathBuf>) -> bool {
    paths.is_empty()
        || paths
            .iter()
            .any(|p| wanted.iter().any(|w| w.starts_with(p)))
}

/// Whether a file event may mean a changed file; opening and reading (ours included) do not.
fn may_change(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Keeps a watcher on exactly the directories `wanted`, non-recursively.
struct Watches {
    watcher: Option<notify::RecommendedWatcher>,
    watched: BTreeSet<PathBuf>,
    failed: BTreeSet<PathBuf>,
}

impl Watches {
    fn sync(&mut self, wanted: BTreeSet<PathBuf>) {
        use notify::Watcher as _;
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        for gone in self.watched.difference(&wanted) {
            // It may have been deleted already (an old Kubernetes `..2026_…` directory).
            let _ = watcher.unwatch(gone);
        }
        self.watched.retain(|d| wanted.contains(d));
        self.failed.retain(|d| wanted.contains(d));
        for dir in wanted {
            if self.watched.contains(&dir) {
                continue;
            }
            match watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
                Ok(()) => {
                    tracing::debug!(dir = %dir.display(), "watching for configuration changes");
                    self.failed.remove(&dir);
                    self.watched.insert(dir);
                }
                Err(e) => {
                    if self.failed.insert(dir.clone()) {
                        tracing::warn!(
                            dir = %dir.display(),
                            "cannot watch for changes ({e}); the periodic check still sees them"
                        );
                    }
                }
            }
        }
    }
}

/// Reloads whenever a watched file may have changed (after the debounce), on SIGHUP, and
/// every `reload.poll_s`; runs until the task is dropped.
pub async fn watch(live: Arc<Live>) {
    // Capacity 1: events that arrive while one is pending add nothing.
    let (tx, mut events) = tokio::sync::mpsc::channel::<()>(1);
    let wanted = Arc::new(std::sync::RwLock::new(watch_paths(&live.snapshot().loaded)));
    let filter = wanted.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Only the files the configuration comes from: reacting to anything else in their
        // directories turns a log file kept there into a reload loop.
        let relevant = match &event {
            // An error (such as a lost event queue) may hide a change too.
            Err(_) => true,
            Ok(e) => {
                may_change(&e.kind)
                    && concerns(&e.paths, &filter.read().unwrap_or_else(|p| p.into_inner()))
            }
        };
        if relevant {
            let _ = tx.try_send(());
        }
    });
    let watcher = watcher
        .map_err(|e| {
            tracing::warn!("cannot watch files ({e}); reloading on SIGHUP and periodically only")
        })
        .ok();
    let mut watches = Watches {
        watcher,
        watched: BTreeSet::new(),
        failed: BTreeSet::new(),
    };
    watches.sync(watch_dirs(&live.snapshot().loaded));
    let mut hangup = hangup_signal();
    loop {
        // Read each time: the debounce and the poll interval reload too.
        let settings = live.snapshot().loaded.config.reload;
        let poll = async {
            match settings.poll_s {
                0 => std::future::pending().await,
                s => tokio::time::sleep(Duration::from_secs(s)).await,
            }
        };
        let why = tokio::select! {
            Some(()) = events.recv() => {
                tokio::time::sleep(Duration::from_millis(settings.debounce_ms)).await;
                while events.try_recv().is_ok() {}
                "a watched file changed"
            }
            () = hangup_recv(&mut hangup) => "SIGHUP",
            () = poll => "periodic check",
        };
        tracing::debug!(why, "checking the configuration");
        if why == "SIGHUP" {
            tracing::info!("SIGHUP: reloading the configuration");
        }
        live.reload().await;
        // The key files may have moved: watch where the configuration in force points.
        let snapshot = live.snapshot();
        let loaded = &snapshot.loaded;
        *wanted.write().unwrap_or_else(|p| p.into_inner()) = watch_paths(loaded);
        watches.sync(watch_dirs(loaded));
    }
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

#[cfg(unix)]
fn hangup_signal() -> Hangup {
    use tokio::signal::unix::{signal, SignalKind};
    signal(SignalKind::hangup())
        .map_err(|e| tracing::warn!("cannot listen for SIGHUP: {e}"))
        .ok()
}

#[cfg(not(unix))]
fn hangup_signal() -> Hangup {}

#[cfg(unix)]
async fn hangup_recv(signal: &mut Hangup) {
    if let Some(s) = signal {
        if s.recv().await.is_some() {
            return;
        }
    }
    std::future::pending().await
}

#[cfg(not(unix))]
async fn hangup_recv(_: &mut Hangup) {
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CliOverrides;

    const A: &str = "sk-SENTINEL-live-aaaaaaaaaaaa1111";
    const B: &str = "sk-SENTINEL-live-bbbbbbbbbbbb2222";
    const C: &str = "sk-SENTINEL-live-cccccccccccc3333";

    struct Fixture {
        dir: tempfile::TempDir,
        file: PathBuf,
    }

    impl Fixture {
        fn new(toml: &str) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("imagegen.toml");
            std::fs::write(&file, toml).unwrap();
            Self { dir, file }
        }

        fn write(&self, toml: &str) {
            std::fs::write(&self.file, toml).unwrap();
        }

        fn loader(&self) -> Loader {
            let cli = CliOverrides {
                config: Some(self.file.clone()),
                ..CliOverrides::default()
            };
            let home = self.dir.path().display().to_string();
            let env = vec![("HOME", home.clone()), ("XDG_DATA_HOME", home)];
            let cwd = self.dir.path().to_path_buf();
            Arc::new(move || LoadedConfig::load_from(&cli, env.clone(), &cwd))
        }

        fn live(&self) -> Live {
            Live::start(self.loader(), LogControl::none()).unwrap()
        }
    }

    /// A config with one OpenAI provider holding `keys`; `top` goes before the tables.
    fn config(top: &str, keys: &[&str]) -> String {
        let keys: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
        format!(
            "default_provider = \"openai\"\n{top}\n[providers.openai]\n\
             base_url = \"http://127.0.0.1:9/v1\"\napi_keys = [{}]\n",
            keys.join(", ")
        )
    }

    fn states(live: &Live) -> Vec<(String, &'static str)> {
        let engine = live.engine();
        let pool = engine.providers()["openai"].keys.clone().unwrap();
        pool.status()
            .into_iter()
            .map(|k| (k.fingerprint, k.state))
            .collect()
    }

    #[tokio::test]
    async fn unchanged_content_publishes_nothing() {
        let fx = Fixture::new(&config("", &[A]));
        let live = fx.live();
        let before = live.engine();
        assert_eq!(live.reload().await, Outcome::Unchanged);
        // Rewritten with the same bytes (a touch, an editor's save without changes).
        fx.write(&config("", &[A]));
        assert_eq!(live.reload().await, Outcome::Unchanged);
        assert!(Arc::ptr_eq(&before, &live.engine()));
        let status = live.status();
        assert_eq!((status.generation, status.reloads), (1, 0));
    }

    #[tokio::test]
    async fn a_change_is_published_while_a_call_in_flight_keeps_its_snapshot() {
        let fx = Fixture::new(&config("", &[A]));
        let live = fx.live();
        let in_flight = live.engine();
        fx.write(&config("", &[B]));
        assert_eq!(live.reload().await, Outcome::Published(2));
        let fingerprints = |e: &Engine| -> Vec<String> {
            let pool = e.providers()["openai"].keys.clone().unwrap();
            pool.status().into_iter().map(|k| k.fingerprint).collect()
        };
        assert_eq!(fingerprints(&in_flight), ["sk-…1111"]);
        assert_eq!(fingerprints(&live.engine()), ["sk-…2222"]);
        let status = live.status();
        assert_eq!((status.generation, status.reloads), (2, 1));
        assert_eq!(status.config_file, Some(fx.file.display().to_string()));
    }

    #[tokio::test]
    async fn an_invalid_file_keeps_the_last_good_state_until_it_is_fixed() {
        let good = config("", &[A]);
        let fx = Fixture::new(&good);
        let live = fx.live();
        let before = live.engine();

        // A syntax error on the key's line: the reason must not quote it.
        fx.write(&format!("[providers.openai]\napi_key = \"{B}\n"));
        let Outcome::Failed(message) = live.reload().await else {
            panic!("an invalid file must not be published");
        };
        assert!(message.contains("invalid TOML"), "{message}");
        assert!(!message.contains("SENTINEL"), "{message}");
        assert!(Arc::ptr_eq(&before, &live.engine()));
        let status = live.status();
        assert_eq!((status.generation, status.reload_errors), (1, 1));
        let error = status.last_reload_error.expect("the error is shown");
        assert_eq!(error.message, message);
        assert!(
            OffsetDateTime::parse(&error.at, &time::format_description::well_known::Rfc3339)
                .is_ok(),
            "{}",
            error.at
        );

        // An empty file (a truncated write) is refused as well.
        fx.write("");
        let Outcome::Failed(message) = live.reload().await else {
            panic!("an empty file must not be published");
        };
        assert!(message.contains("empty"), "{message}");
        assert_eq!(live.status().reload_errors, 2);

        // Put back as it was: nothing to publish, and the error is over.
        fx.write(&good);
        assert_eq!(live.reload().await, Outcome::Unchanged);
        let status = live.status();
        assert_eq!((status.last_reload_error, status.reload_errors), (None, 2));
        assert!(Arc::ptr_eq(&before, &live.engine()));
    }

    #[tokio::test]
    async fn a_half_written_file_is_read_again_after_a_pause() {
        let fx = Fixture::new(&config("", &[A]));
        let live = fx.live();
        let full = config("", &[B]);
        fx.write(&full[..full.len() - 20]);
        let file = fx.file.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(RETRY_PAUSE / 3);
            std::fs::write(file, full).unwrap();
        });
        assert_eq!(live.reload().await, Outcome::Published(2));
        writer.join().unwrap();
        let status = live.status();
        assert_eq!((status.reload_errors, status.last_reload_error), (0, None));
        assert_eq!(states(&live), [("sk-…2222".to_string(), "active")]);
    }

    #[tokio::test]
    async fn key_state_survives_reloads_and_disabled_keys_get_a_chance_when_keys_change() {
        let fx = Fixture::new(&config("", &[A, B]));
        let live = fx.live();
        let pool = live.engine().providers()["openai"].keys.clone().unwrap();
        let a = pool.pick(&[]).unwrap();
        pool.cool_down(&a, Some(Duration::from_secs(60)));
        let b = pool.pick(&[]).unwrap();
        pool.disable(
            &b,
            imagegen_providers::ErrorKind::Auth,
            "rejected (HTTP 401)",
        );
        let expected = [
            ("sk-…1111".to_string(), "cooling_down"),
            ("sk-…2222".to_string(), "disabled"),
        ];
        assert_eq!(states(&live), expected);

        // An edit elsewhere keeps the very same pool, so nothing is lost.
        fx.write(&config("log_level = \"debug\"", &[A, B]));
        assert_eq!(live.reload().await, Outcome::Published(2));
        let kept = live.engine().providers()["openai"].keys.clone().unwrap();
        assert!(Arc::ptr_eq(&pool, &kept));
        assert_eq!(states(&live), expected);

        // A shorter recheck interval alone: a new pool, every state carried over.
        fx.write(
            &config("log_level = \"debug\"", &[A, B])
                .replace("api_keys", "key_recheck_s = 300\napi_keys"),
        );
        assert_eq!(live.reload().await, Outcome::Published(3));
        assert_eq!(states(&live), expected);

        // A key added: cooldowns carry over, the disabled key is tried again.
        fx.write(&config("log_level = \"debug\"", &[A, B, C]));
        assert_eq!(live.reload().await, Outcome::Published(4));
        assert_eq!(
            states(&live),
            [
                ("sk-…1111".to_string(), "cooling_down"),
                ("sk-…2222".to_string(), "active"),
                ("sk-…3333".to_string(), "active"),
            ]
        );
    }

    #[tokio::test]
    async fn http_clients_are_kept_across_reloads() {
        let fx = Fixture::new(&config("", &[A]));
        let live = fx.live();
        for key in [B, A, B] {
            fx.write(&config("", &[key]));
            assert!(matches!(live.reload().await, Outcome::Published(_)));
        }
        assert_eq!(live.clients.len(), 1, "one client for one set of settings");
        fx.write(&config("", &[A]).replace("api_keys", "connect_timeout_s = 3\napi_keys"));
        assert!(matches!(live.reload().await, Outcome::Published(_)));
        assert_eq!(live.clients.len(), 2);
    }

    #[tokio::test]
    async fn log_level_is_applied_live_unless_the_environment_decides() {
        let applied = Arc::new(Mutex::new(Vec::new()));
        let control = |env_var: Option<String>| {
            let applied = applied.clone();
            LogControl::new(
                move |level| {
                    applied.lock().unwrap().push(level.to_string());
                    Ok(())
                },
                "info",
                env_var,
            )
        };
        let fx = Fixture::new(&config("log_level = \"debug\"", &[A]));
        let live = Live::start(fx.loader(), control(None)).unwrap();
        fx.write(&config("", &[A]));
        live.reload().await;
        assert_eq!(*applied.lock().unwrap(), ["debug", "info"]);

        applied.lock().unwrap().clear();
        let live = Live::start(fx.loader(), control(Some("RUST_LOG".into()))).unwrap();
        fx.write(&config("log_level = \"trace\"", &[A]));
        live.reload().await;
        assert!(applied.lock().unwrap().is_empty());
        let old = fx.loader()().unwrap();
        fx.write(&config("log_level = \"warn\"", &[A]));
        let warnings = live.not_live(&old, &fx.loader()().unwrap());
        assert!(
            warnings.len() == 1 && warnings[0].contains("RUST_LOG"),
            "{warnings:?}"
        );
    }

    #[test]
    fn watched_directories_include_key_files_and_symlink_targets() {
        let fx = Fixture::new("");
        let secrets = fx.dir.path().join("secrets");
        let real = fx.dir.path().join("real");
        std::fs::create_dir_all(&secrets).unwrap();
        std::fs::create_dir_all(&real).unwrap();
        std::fs::write(secrets.join("key"), A).unwrap();
        std::fs::write(
            real.join("imagegen.toml"),
            "[providers.openai]\napi_key_file = \"secrets/key\"\n",
        )
        .unwrap();
        std::fs::remove_file(&fx.file).unwrap();
        std::os::unix::fs::symlink(real.join("imagegen.toml"), &fx.file).unwrap();
        // The key file path is relative to the config file as named (the link), not its target.
        let loaded = fx.loader()().unwrap();
        let dirs = watch_dirs(&loaded);
        let canonical = |p: &Path| std::fs::canonicalize(p).unwrap();
        assert!(dirs.contains(fx.dir.path()), "{dirs:?}");
        assert!(dirs.contains(&canonical(&real)), "{dirs:?}");
        assert!(
            dirs.contains(&secrets) || dirs.contains(&canonical(&secrets)),
            "{dirs:?}"
        );
    }

    #[test]
    fn only_events_on_the_files_read_or_links_to_them_count() {
        let fx = Fixture::new("");
        let secret = fx.dir.path().join("secret");
        std::fs::create_dir_all(secret.join("..v1")).unwrap();
        std::fs::write(secret.join("..v1/key"), A).unwrap();
        std::os::unix::fs::symlink("..v1", secret.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/key", secret.join("key")).unwrap();
        fx.write(&format!(
            "[providers.openai]\napi_key_file = \"{}\"\n",
            secret.join("key").display()
        ));
        let wanted = watch_paths(&fx.loader()().unwrap());
        let at = |p: &Path| concerns(&[p.to_path_buf()], &wanted);
        assert!(at(&fx.file), "{wanted:?}");
        assert!(at(&secret.join("key")), "{wanted:?}");
        assert!(at(&secret.join("..data")), "the swap of ..data: {wanted:?}");
        assert!(at(&secret.join("..v1")), "{wanted:?}");
        assert!(at(&secret.join("..v1/key")), "{wanted:?}");
        assert!(!at(&fx.dir.path().join("server.log")), "{wanted:?}");
        assert!(!at(&secret.join("..data_tmp")), "{wanted:?}");
        assert!(!at(&secret.join("..v2")), "{wanted:?}");
        assert!(concerns(&[], &wanted), "an event naming nothing counts");
    }

    #[test]
    fn reading_a_file_is_not_a_change() {
        use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind};
        assert!(!may_change(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!may_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(may_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(may_change(&EventKind::Modify(ModifyKind::Any)));
        assert!(may_change(&EventKind::Create(CreateKind::File)));
    }
}
