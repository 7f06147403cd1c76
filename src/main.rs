//! The `imagegen-mcp` command: the MCP server over stdio, a `generate` command, and config tools.

use std::{
    io::{IsTerminal, Write},
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use clap::{Args, Parser, Subcommand};
use imagegen_mcp::{
    batch::{self, BatchParams},
    config::{CliOverrides, LoadedConfig, LogFormat},
    delivery::GenerateOutput,
    engine::{CallContext, EditInputs, EditParams, Engine, GenerateParams, Generation},
    error::ToolError,
    ledger, lifecycle,
    live::{watch, Live, LogControl},
    progress::{ProgressReporter, ProgressSink},
    server::{FindImagesOutput, ImagegenServer},
    storage::index::{self, FindParams},
};
use imagegen_providers::{ErrorKind, ImageOptions, InputImage, SvgOptions, SvgReasoning};
use rmcp::ServiceExt;
use tokio_util::sync::CancellationToken;

/// Image generation for any MCP client, with OpenAI and an offline mock provider.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (default: $IMAGEGEN_CONFIG, ./imagegen.toml, then ~/.config/imagegen-mcp/config.toml).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// How log lines on stderr are written: text, or json (one object per line); default:
    /// $IMAGEGEN_LOG_FORMAT, else the config file's log_format, else text.
    #[arg(long, global = true, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve MCP over stdio (what MCP clients run), or over streamable HTTP with `--http`.
    Serve {
        /// The default provider, overriding the configuration.
        #[arg(long)]
        provider: Option<String>,
        /// Where to save images, overriding the configuration.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Serve over streamable HTTP at /mcp instead of stdio, on ADDR (IP:PORT; default:
        /// server.http.bind, else 127.0.0.1:8787).
        #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "")]
        http: Option<String>,
    },
    /// Generate images from one prompt or several (a batch) and print the saved paths.
    Generate(GenerateArgs),
    /// Edit images with a prompt (and an optional mask) and print the saved paths.
    Edit(EditArgs),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// List the model catalog: each model's state, shutdown date, replacement and aliases;
    /// `--check` compares it with the models the provider serves now.
    Models(ModelsArgs),
    /// The stored images: search their history, rebuild its index, delete them.
    #[command(subcommand)]
    Images(ImagesCommand),
    /// Summarise the usage ledger: calls, images and cost by provider, model, key, caller,
    /// day or tool (default: this month so far, by provider).
    Usage(UsageArgs),
}

#[derive(Debug, Args)]
struct UsageArgs {
    /// The first day (YYYY-MM-DD, UTC); default: the first of this month.
    #[arg(long, value_name = "DATE")]
    since: Option<String>,
    /// The last day (YYYY-MM-DD, UTC); default: today.
    #[arg(long, value_name = "DATE")]
    until: Option<String>,
    /// How to group the calls.
    #[arg(long, value_enum, default_value = "provider")]
    by: ledger::GroupBy,
    /// The store's directory (default: output.dir).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum ImagesCommand {
    /// Search the stored images by prompt words, provider, model and date, newest first.
    Find(FindArgs),
    /// Rebuild the history index from the sidecars (and from the image files that have none).
    Reindex(ReindexArgs),
    /// Apply the retention settings (storage.max_age_days, storage.max_total_mb) to the
    /// server's own images: print each that goes and a summary.
    Prune(PruneArgs),
    /// Delete stored images (names or imagegen://images/... URIs) and their metadata.
    Rm {
        /// The images to delete.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
        /// The output directory, when the store is the local one.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct FindArgs {
    /// Words that must all be in the prompt (any order; "foxes" also finds "fox").
    #[arg(value_name = "WORDS")]
    words: Vec<String>,
    /// Only images made with this configured provider.
    #[arg(long)]
    provider: Option<String>,
    /// Only images made with this model.
    #[arg(long)]
    model: Option<String>,
    /// Only images made on or after this day (YYYY-MM-DD, UTC) or time (RFC 3339).
    #[arg(long, value_name = "DATE")]
    since: Option<String>,
    /// Only images made on or before this day (the whole day) or time.
    #[arg(long, value_name = "DATE")]
    until: Option<String>,
    /// Results per page (at most 100).
    #[arg(long, default_value_t = index::DEFAULT_LIMIT)]
    limit: u32,
    /// The next page: the cursor the previous page printed.
    #[arg(long)]
    cursor: Option<String>,
    /// The store's directory (default: output.dir).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Print JSON (the same as the find_images tool's structuredContent).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct PruneArgs {
    /// Delete nothing: print what would go.
    #[arg(long)]
    dry_run: bool,
    /// Delete own images older than this many days (instead of storage.max_age_days).
    #[arg(long, value_name = "DAYS")]
    max_age_days: Option<u64>,
    /// Delete the oldest own images until the rest take at most this many megabytes
    /// (instead of storage.max_total_mb).
    #[arg(long, value_name = "MB")]
    max_total_mb: Option<u64>,
    /// The store's directory (default: output.dir).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ReindexArgs {
    /// The store's directory (default: output.dir).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Print the counts as JSON.
    #[arg(long)]
    json: bool,
}

/// `images rm`: deletes each image named, whoever made it; exits 1 if any was not deleted.
async fn images_rm(
    names: Vec<String>,
    out: Option<PathBuf>,
    config: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let overrides = CliOverrides {
        config,
        output_dir: absolute(out)?,
        ..CliOverrides::default()
    };
    let loaded = load(&overrides)?;
    let store = open_store(&loaded)?;
    let mut code = ExitCode::SUCCESS;
    for spec in &names {
        let name = imagegen_mcp::storage::Store::name_from_uri(spec).unwrap_or(spec);
        match store.remove(name).await {
            Ok(()) => println!("deleted {name}"),
            Err(e) => {
                eprintln!("{name}: {e}");
                code = ExitCode::FAILURE;
            }
        }
    }
    Ok(code)
}

#[derive(Debug, Args)]
struct ModelsArgs {
    /// Only this provider's models (its default, aliases and listed models).
    #[arg(long)]
    provider: Option<String>,
    /// Ask each provider that can list its models (OpenAI: GET /v1/models) and report what
    /// the catalog lacks: retired models, announced shutdown dates, unknown models.
    #[arg(long)]
    check: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct GenerateArgs {
    /// What to draw; several prompts make a batch, run concurrently (`--n` stays images per prompt).
    #[arg(required = true, value_name = "PROMPT")]
    prompts: Vec<String>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Args)]
struct EditArgs {
    /// The images to edit (PNG, JPEG or WebP; several for models that take several).
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
    /// What the result should show, or what to change.
    #[arg(long)]
    prompt: String,
    /// A PNG with alpha, the size of the first image: transparent pixels mark what to change.
    #[arg(long, value_name = "FILE")]
    mask: Option<PathBuf>,
    /// A transparent PNG the size of the first image holding annotations the prompt explains
    /// (GPT Image 2.6 markup edits).
    #[arg(long, value_name = "FILE")]
    markup: Option<PathBuf>,
    #[command(flatten)]
    common: CommonArgs,
}

/// Options shared by `generate` and `edit`.
#[derive(Debug, Args)]
struct CommonArgs {
    /// Provider or route name (see `config show`).
    #[arg(long)]
    provider: Option<String>,
    /// Providers to move to when the first fails, comma-separated (default: the provider's
    /// configured `fallback`).
    #[arg(long, value_delimiter = ',')]
    fallback: Option<Vec<String>>,
    /// Model name or alias.
    #[arg(long)]
    model: Option<String>,
    /// A prompt preset of the configuration (`[presets.NAME]`): its template and options.
    #[arg(long, value_name = "NAME")]
    preset: Option<String>,
    #[command(flatten)]
    options: ImageOptions,
    /// The text model that writes an SVG (--format svg); default: the provider's svg_model.
    #[arg(long, value_name = "MODEL")]
    svg_model: Option<String>,
    /// The SVG writer's reasoning effort (--format svg).
    #[arg(long, value_name = "EFFORT")]
    svg_effort: Option<String>,
    /// Where to save images.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// The file name to save under (sanitised, the image's real extension, `-2`, `-3`, ...
    /// when taken).
    #[arg(long, value_name = "NAME")]
    filename: Option<String>,
    /// Print the structured result as JSON (the same as the MCP tool's structuredContent).
    #[arg(long)]
    json: bool,
    /// Answer from the store when an identical request was made before (`--cache=false`:
    /// always generate); default: the config's `[cache] enabled`.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    cache: Option<bool>,
}

impl CommonArgs {
    fn params(&self, prompt: String) -> GenerateParams {
        let mut options = self.options.clone();
        if self.svg_model.is_some() || self.svg_effort.is_some() {
            options.svg = Some(SvgOptions {
                model: self.svg_model.clone(),
                reasoning: self.svg_effort.clone().map(|effort| SvgReasoning {
                    effort: Some(effort),
                }),
            });
        }
        GenerateParams {
            prompt,
            provider: self.provider.clone(),
            fallback: self.fallback.clone(),
            model: self.model.clone(),
            preset: self.preset.clone(),
            options,
            delivery: None,
            cache: self.cache,
            filename: self.filename.clone(),
            // Whoever runs the command has decided; the confirmation is for calls a model makes.
            confirm_cost: None,
        }
    }
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check the configuration: exit 0 if it loads, else 1 with the reason.
    Check,
    /// Show the effective configuration with each value's source (keys as fingerprints).
    Show,
}

/// Logs to stderr in `format` with `RUST_LOG` if set, else `default`; the returned control
/// lets the configuration's `log_level` replace the filter (unless `RUST_LOG` is set, which
/// wins).
fn init_logging(default: &str, format: LogFormat) -> LogControl {
    use tracing_subscriber::{layer::SubscriberExt as _, util::SubscriberInitExt as _, EnvFilter};
    let from_env = std::env::var("RUST_LOG").is_ok_and(|v| !v.trim().is_empty());
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(quiet_watcher(default)));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    // stdout belongs to the MCP protocol (and to `generate`'s output): logs go to stderr only.
    let text = (format == LogFormat::Text).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
    });
    // Each line carries the fields of every span it is in (the request's id, the caller).
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_ansi(false)
            .with_writer(std::io::stderr)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .init();
    LogControl::new(
        move |level| {
            handle
                .reload(EnvFilter::new(quiet_watcher(level)))
                .map_err(|e| e.to_string())
        },
        default,
        from_env.then(|| "RUST_LOG".to_string()),
    )
}

/// `filter` with the file watcher's own logs held to warnings, unless it names the watcher:
/// at debug and trace `notify` logs every event, so a log file in a watched directory would
/// feed itself.
fn quiet_watcher(filter: &str) -> String {
    if filter.contains("notify") {
        return filter.to_string();
    }
    format!("{},notify=warn", filter.trim_end_matches(','))
}

fn absolute(path: Option<PathBuf>) -> anyhow::Result<Option<PathBuf>> {
    path.map(std::path::absolute)
        .transpose()
        .map_err(Into::into)
}

fn load(overrides: &CliOverrides) -> anyhow::Result<LoadedConfig> {
    let loaded = LoadedConfig::load(overrides).map_err(|e| anyhow::anyhow!("{e}"))?;
    for notice in loaded.notices() {
        tracing::info!("{notice}");
    }
    Ok(loaded)
}

/// The `generate` command's status line on stderr: each phase (partial images included) as
/// it happens, and the time elapsed.
struct StatusLine;

#[async_trait::async_trait]
impl ProgressSink for StatusLine {
    async fn send(&self, _progress: f64, message: String) {
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{message}");
        let _ = err.flush();
    }
}

/// Loads the configuration for a one-shot command and builds its engine.
fn one_shot_engine(
    config: Option<PathBuf>,
    common: &CommonArgs,
    log: &LogControl,
) -> anyhow::Result<Arc<Engine>> {
    let overrides = CliOverrides {
        config,
        output_dir: absolute(common.out.clone())?,
        ..CliOverrides::default()
    };
    let loaded = load(&overrides)?;
    loaded
        .check_output_dir()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    log.apply(loaded.config.log_level.as_deref());
    Ok(Arc::new(Engine::from_config(&loaded)?))
}

/// Runs `work` with a status line on stderr (when it is a terminal) and Ctrl-C as cancellation.
async fn with_status<T, F, Fut>(label: String, work: F) -> T
where
    F: FnOnce(CallContext) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let terminal = std::io::stderr().is_terminal();
    let reporter = ProgressReporter::start(
        terminal.then(|| Arc::new(StatusLine) as Arc<dyn ProgressSink>),
        Duration::from_secs(1),
    );
    let call = CallContext {
        progress: reporter.handle(),
        cancel: CancellationToken::new(),
        origin: imagegen_mcp::engine::Origin {
            caller: None,
            tool: Some("cli".into()),
            viewer: Default::default(),
        },
    };
    call.progress.phase(label);
    // Ctrl-C ends the call cleanly: the upstream request is dropped and nothing is saved.
    let cancel = call.cancel.clone();
    let interrupt = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            cancel.cancel();
        }
    });
    let out = work(call).await;
    interrupt.abort();
    reporter.finish().await;
    if terminal {
        eprint!("\r\x1b[2K");
    }
    out
}

/// Says once on stderr that a stand-in (the offline mock) served the call, when the person
/// did not choose that provider: the wording is the provider's own.
fn stand_in_notice(engine: &Engine, served_by: Option<&str>, chosen: bool) {
    if chosen || !engine.default_is_fallback() {
        return;
    }
    let notice = served_by
        .and_then(|name| engine.providers().get(name))
        .and_then(|entry| entry.provider.stand_in_notice());
    if let Some(notice) = notice {
        eprintln!("note: {notice}");
    }
}

/// Prints a single call's outcome: paths on stdout (or the JSON), notes and the error on stderr.
fn print_single(outcome: Result<Generation, ToolError>, json: bool) -> anyhow::Result<ExitCode> {
    let output = match &outcome {
        Ok(g) => GenerateOutput::success(g),
        Err(e) => GenerateOutput::failure(e.clone()),
    };
    if !json {
        for note in &output.notes {
            eprintln!("note: {note}");
        }
    }
    let mut stdout = std::io::stdout().lock();
    if json {
        writeln!(stdout, "{}", serde_json::to_string_pretty(&output)?)?;
    } else {
        for image in &output.images {
            // A path for the local store, else the URI: what the image can be found by.
            match &image.path {
                Some(path) => writeln!(stdout, "{}", path.display())?,
                None => writeln!(stdout, "{}", image.uri)?,
            }
        }
    }
    match &output.error {
        None => Ok(ExitCode::SUCCESS),
        Some(e) => {
            if !json {
                eprintln!("{}", e.human());
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn generate(
    args: GenerateArgs,
    config: Option<PathBuf>,
    log: LogControl,
) -> anyhow::Result<ExitCode> {
    let engine = one_shot_engine(config, &args.common, &log)?;
    let common = &args.common;
    let provider = common
        .provider
        .clone()
        .unwrap_or_else(|| engine.default_provider().to_string());
    if let [prompt] = args.prompts.as_slice() {
        let params = common.params(prompt.clone());
        let run = engine.clone();
        let outcome = with_status(format!("generating with {provider}"), |call| async move {
            run.generate(&params, &call).await
        })
        .await;
        let served_by = outcome.as_ref().ok().map(|g| g.provider.as_str());
        stand_in_notice(&engine, served_by, common.provider.is_some());
        return print_single(outcome, common.json);
    }

    let shared = common.params(String::new());
    let batch = BatchParams {
        prompts: Some(args.prompts.clone()),
        provider: shared.provider,
        model: shared.model,
        preset: shared.preset,
        options: shared.options,
        ..BatchParams::default()
    };
    let label = format!("generating {} images with {provider}", args.prompts.len());
    let run = engine.clone();
    let (output, _) = with_status(
        label,
        |call| async move { batch::run(run, &batch, &call).await },
    )
    .await;
    if output.summary.succeeded > 0 {
        stand_in_notice(&engine, Some(&provider), common.provider.is_some());
    }
    let mut stdout = std::io::stdout().lock();
    if common.json {
        writeln!(stdout, "{}", serde_json::to_string_pretty(&output)?)?;
    }
    if let Some(error) = &output.error {
        if !common.json {
            eprintln!("{}", error.human());
        }
        return Ok(ExitCode::FAILURE);
    }
    for item in &output.results {
        if common.json {
            continue;
        }
        for image in &item.images {
            // A path for the local store, else the URI: what the image can be found by.
            match &image.path {
                Some(path) => writeln!(stdout, "{}", path.display())?,
                None => writeln!(stdout, "{}", image.uri)?,
            }
        }
        if let Some(error) = &item.error {
            eprintln!(
                "prompt {} ({:?}): {}",
                item.index + 1,
                item.prompt,
                error.human()
            );
        }
    }
    Ok(if output.summary.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Reads an input file named on the command line: the person chose it, so any path is fine.
fn read_input(path: &PathBuf, name: String) -> Result<InputImage, ToolError> {
    let bytes = std::fs::read(path).map_err(|e| {
        ToolError::new(
            ErrorKind::NotFound,
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    InputImage::sniffed(bytes, name).map_err(|e| ToolError::from_provider(e, None, None))
}

async fn edit(
    args: EditArgs,
    config: Option<PathBuf>,
    log: LogControl,
) -> anyhow::Result<ExitCode> {
    let engine = one_shot_engine(config, &args.common, &log)?;
    let common = &args.common;
    let base = common.params(args.prompt.clone());
    let params = EditParams {
        prompt: args.prompt.clone(),
        images: args
            .images
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        mask: args.mask.as_ref().map(|p| p.display().to_string()),
        markup: args.markup.as_ref().map(|p| p.display().to_string()),
        provider: base.provider,
        fallback: base.fallback,
        model: base.model,
        preset: base.preset,
        options: base.options,
        delivery: None,
        cache: base.cache,
        filename: base.filename,
        confirm_cost: None,
    };
    let inputs = args
        .images
        .iter()
        .enumerate()
        .map(|(i, path)| read_input(path, format!("image-{}", i + 1)))
        .collect::<Result<Vec<_>, _>>()
        .and_then(|images| {
            let layer = |path: &Option<PathBuf>, name: &str| {
                path.as_ref()
                    .map(|path| read_input(path, name.into()))
                    .transpose()
            };
            Ok(EditInputs {
                images,
                mask: layer(&args.mask, "mask")?,
                markup: layer(&args.markup, "markup")?,
            })
        });
    let run = engine.clone();
    let outcome = match inputs {
        Ok(inputs) => {
            with_status("editing".into(), |call| async move {
                run.edit(&params, inputs, &call).await
            })
            .await
        }
        Err(e) => Err(e),
    };
    let served_by = outcome.as_ref().ok().map(|g| g.provider.as_str());
    stand_in_notice(&engine, served_by, common.provider.is_some());
    print_single(outcome, common.json)
}

/// `imagegen-mcp models`: the catalog as a table (or JSON), and with `--check` what each
/// provider's own listing says next to it. Exits 1 when a check could not be made.
async fn models(args: ModelsArgs, config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let overrides = CliOverrides {
        config,
        ..CliOverrides::default()
    };
    let engine = Engine::from_config(&load(&overrides)?)?;
    if let Some(name) = &args.provider {
        if !engine.providers().contains_key(name) {
            let names: Vec<&str> = engine.providers().keys().map(String::as_str).collect();
            anyhow::bail!(
                "unknown provider `{name}`; configured: {}",
                names.join(", ")
            );
        }
    }
    let (checks, failures) = match args.check {
        true => lifecycle::check_upstream(&engine, args.provider.as_deref(), false).await,
        false => Default::default(),
    };
    // After the check, so announced dates show in the table.
    let rows = lifecycle::model_rows(&engine, args.provider.as_deref());
    let failed: Vec<(String, String)> = failures
        .iter()
        .filter(|(_, e)| e.kind != ErrorKind::Unsupported || args.provider.is_some())
        .map(|(name, e)| (name.clone(), e.to_string()))
        .collect();
    let mut out = std::io::stdout().lock();
    if args.json {
        let json = serde_json::json!({ "models": rows, "checks": checks, "check_errors": failed
            .iter()
            .map(|(p, e)| serde_json::json!({"provider": p, "error": e}))
            .collect::<Vec<_>>() });
        writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
    } else {
        let width = rows.iter().map(|r| r.model.len()).max().unwrap_or(5).max(5);
        writeln!(
            out,
            "{:width$}  {:10}  {:10}  {:24}  ALIASES",
            "MODEL", "STATE", "SHUTDOWN", "REPLACEMENT"
        )?;
        for r in &rows {
            let s = &r.standing;
            writeln!(
                out,
                "{:width$}  {:10}  {:10}  {:24}  {}",
                r.model,
                s.state,
                s.shutdown_date.as_deref().unwrap_or("-"),
                s.replacement.as_deref().unwrap_or("-"),
                r.aliases.join(", ")
            )?;
        }
        for check in &checks {
            let findings = check.findings();
            if findings.is_empty() {
                writeln!(
                    out,
                    "\nprovider `{}`: its listing ({} image models) agrees with the catalog",
                    check.provider, check.listed
                )?;
            } else {
                writeln!(
                    out,
                    "\nprovider `{}` ({} image models listed):",
                    check.provider, check.listed
                )?;
                for finding in findings {
                    writeln!(out, "  - {finding}")?;
                }
            }
        }
        for (provider, e) in &failed {
            writeln!(out, "\nprovider `{provider}`: the check failed: {e}")?;
        }
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `imagegen-mcp images find`: the history as a table (or JSON); exits 1 on a bad argument.
async fn images_find(args: FindArgs, config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let loaded = load(&CliOverrides {
        config,
        output_dir: absolute(args.out.clone())?,
        ..CliOverrides::default()
    })?;
    let params = FindParams {
        query: (!args.words.is_empty()).then(|| args.words.join(" ")),
        provider: args.provider,
        model: args.model,
        since: args.since,
        until: args.until,
        limit: Some(args.limit),
        cursor: args.cursor,
    };
    // The command line is the store's own user: every image is theirs.
    let outcome = match params.to_query(None) {
        Ok(query) => {
            let path = loaded.config.storage.index_path.clone();
            index::search_store(path, open_store(&loaded)?, query).await
        }
        Err(e) => Err(e),
    };
    let mut out = std::io::stdout().lock();
    let output = match outcome {
        Ok(page) => FindImagesOutput::from(page),
        Err(error) => {
            if args.json {
                let output = FindImagesOutput {
                    error: Some(error),
                    ..FindImagesOutput::default()
                };
                writeln!(out, "{}", serde_json::to_string_pretty(&output)?)?;
            } else {
                eprintln!("{}", error.human());
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&output)?)?;
    } else {
        write!(out, "{}", index::table(&output.images))?;
        if let Some(cursor) = &output.next_cursor {
            eprintln!("more: add --cursor {cursor}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `imagegen-mcp images reindex`: rebuilds the index file from the store, printing counts.
/// The configured image store: the local `output.dir` or the object store of `storage.url`.
fn open_store(loaded: &LoadedConfig) -> anyhow::Result<imagegen_mcp::storage::Store> {
    imagegen_mcp::storage::Store::from_config(loaded.output_dir(), &loaded.config.storage)
        .map_err(|e| anyhow::anyhow!("{e}"))
}

async fn images_reindex(args: ReindexArgs, config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let loaded = load(&CliOverrides {
        config,
        output_dir: absolute(args.out.clone())?,
        ..CliOverrides::default()
    })?;
    let Some(path) = loaded.config.storage.index_path.clone() else {
        anyhow::bail!("no place for the index file: set storage.index_path (or XDG_DATA_HOME)");
    };
    let shown = path.clone();
    let report = index::reindex_store(path, open_store(&loaded)?).await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let json = serde_json::json!({ "index": shown, "report": report });
        writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
    } else {
        writeln!(
            out,
            "indexed {} images ({} from sidecars, {} from the image file alone) in {:.2} s; {} could not be read",
            report.from_sidecars + report.from_files,
            report.from_sidecars,
            report.from_files,
            report.elapsed_ms as f64 / 1000.0,
            report.skipped
        )?;
        writeln!(out, "index: {}", shown.display())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `imagegen-mcp images prune`: applies retention once; exits 1 if an image could not be
/// deleted.
async fn images_prune(args: PruneArgs, config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    use imagegen_mcp::storage::retention::{self, Policy};
    let loaded = load(&CliOverrides {
        config,
        output_dir: absolute(args.out.clone())?,
        ..CliOverrides::default()
    })?;
    let storage = &loaded.config.storage;
    let policy = Policy::of(
        args.max_age_days.or(storage.max_age_days),
        args.max_total_mb.or(storage.max_total_mb),
    );
    if policy.is_off() {
        eprintln!(
            "retention is off: set storage.max_age_days or storage.max_total_mb, or pass \
             --max-age-days or --max-total-mb; nothing deleted"
        );
        return Ok(ExitCode::SUCCESS);
    }
    let store = open_store(&loaded)?;
    let report = retention::apply(&store, storage.index_path.clone(), &policy, args.dry_run)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        let verb = if args.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        for image in &report.pruned {
            writeln!(
                out,
                "{verb} {} ({} bytes, created {}): {}",
                image.name, image.bytes, image.created, image.reason
            )?;
        }
        writeln!(
            out,
            "{verb} {} images ({} bytes); kept {} own images ({} bytes); {} other files left alone",
            report.pruned.len(),
            report.pruned_bytes,
            report.kept,
            report.kept_bytes,
            report.not_own
        )?;
    }
    for failure in &report.failed {
        eprintln!("cannot delete {failure}");
    }
    Ok(if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `imagegen-mcp usage`: the ledger's totals over a range of days.
async fn usage(args: UsageArgs, config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let loaded = load(&CliOverrides {
        config,
        output_dir: absolute(args.out.clone())?,
        ..CliOverrides::default()
    })?;
    let day = |flag: &str, text: &Option<String>| -> anyhow::Result<Option<time::Date>> {
        text.as_deref()
            .map(|t| {
                ledger::parse_day(t)
                    .ok_or_else(|| anyhow::anyhow!("--{flag} `{t}` is not a day (YYYY-MM-DD)"))
            })
            .transpose()
    };
    let today = time::OffsetDateTime::now_utc().date();
    let until = day("until", &args.until)?.unwrap_or(today);
    let since = day("since", &args.since)?.unwrap_or_else(|| ledger::month_start(until));
    anyhow::ensure!(since <= until, "--since is after --until");
    let store = open_store(&loaded)?;
    let ledger = ledger::Ledger::new(ledger::dir_of(&loaded), &store);
    let read = ledger
        .read(since, until)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let report = ledger::Report::of(&read, since, until, args.by, None);
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        writeln!(out, "usage {} to {}", report.since, report.until)?;
        write!(
            out,
            "{}",
            ledger::table(&report.groups, args.by, report.skipped)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Logging starts before the configuration loads (its errors are logged): the format is
    // peeked at cheaply, the flag first.
    let format = cli.log_format.unwrap_or_else(|| {
        let peek = CliOverrides {
            config: cli.config.clone(),
            ..CliOverrides::default()
        };
        LoadedConfig::peek_log_format(&peek).unwrap_or_default()
    });
    let logging = |default: &str| init_logging(default, format);
    match cli.command {
        Command::Images(command) => {
            logging("warn");
            match command {
                ImagesCommand::Find(args) => images_find(args, cli.config).await,
                ImagesCommand::Reindex(args) => images_reindex(args, cli.config).await,
                ImagesCommand::Prune(args) => images_prune(args, cli.config).await,
                ImagesCommand::Rm { names, out } => images_rm(names, out, cli.config).await,
            }
        }
        Command::Models(args) => {
            logging("warn");
            models(args, cli.config).await
        }
        Command::Usage(args) => {
            logging("warn");
            usage(args, cli.config).await
        }
        Command::Serve {
            provider,
            out,
            http,
        } => {
            let log = logging("info");
            let overrides = CliOverrides {
                config: cli.config,
                provider,
                output_dir: absolute(out)?,
            };
            let live = Arc::new(Live::start(
                Arc::new(move || LoadedConfig::load(&overrides)),
                log,
            )?);
            let engine = live.engine();
            tracing::info!(
                default_provider = engine.default_provider(),
                store = %engine.store(),
                transport = if http.is_some() { "streamable HTTP" } else { "stdio" },
                "serving MCP"
            );
            drop(engine);
            // The watchers live as long as the runtime: until the client disconnects (stdio)
            // or the server is stopped (HTTP).
            tokio::spawn(watch(live.clone()));
            tokio::spawn(lifecycle::watch_upstream(live.clone()));
            let pruned = live.clone();
            tokio::spawn(imagegen_mcp::storage::retention::run_periodically(
                move || {
                    let snapshot = pruned.snapshot();
                    let storage = snapshot.loaded.config.storage.clone();
                    (snapshot.engine.store().clone(), storage)
                },
            ));
            let swept = live.clone();
            tokio::spawn(imagegen_mcp::tasks::sweep_periodically(move || {
                let snapshot = swept.snapshot();
                let tasks = snapshot.loaded.config.tasks.clone();
                (snapshot.engine.store().clone(), tasks)
            }));
            let server = ImagegenServer::new(live.clone());
            if let Some(bind) = http {
                imagegen_mcp::http::serve(live.clone(), server, Some(bind)).await?;
            } else {
                let service = server.serve(imagegen_mcp::transport::stdio()).await?;
                service.waiting().await?;
            }
            // With an object store, the ledger's lines since the last upload go up before the end.
            live.engine().ledger().upload().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Generate(args) => {
            let log = logging("warn");
            generate(args, cli.config, log).await
        }
        Command::Edit(args) => {
            let log = logging("warn");
            edit(args, cli.config, log).await
        }
        Command::Config(cmd) => {
            logging("warn");
            let overrides = CliOverrides {
                config: cli.config,
                ..CliOverrides::default()
            };
            let loaded = LoadedConfig::load(&overrides).map_err(|e| anyhow::anyhow!("{e}"));
            match (cmd, loaded) {
                (ConfigCommand::Check, Ok(loaded)) => {
                    loaded
                        .check_output_dir()
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    let engine = Engine::from_config(&loaded)?;
                    for warning in engine.lifecycle_warnings() {
                        println!("warning: {warning}");
                    }
                    let refused = engine.refused_defaults();
                    for problem in &refused {
                        println!("error: {problem}");
                    }
                    if !refused.is_empty() {
                        return Ok(ExitCode::FAILURE);
                    }
                    println!(
                        "configuration OK ({})",
                        loaded
                            .file
                            .as_ref()
                            .map_or("no config file".into(), |f| f.display().to_string())
                    );
                    Ok(ExitCode::SUCCESS)
                }
                (ConfigCommand::Show, Ok(loaded)) => {
                    print!("{}", loaded.show());
                    Ok(ExitCode::SUCCESS)
                }
                (_, Err(e)) => Err(e),
            }
        }
    }
}

fn main() -> ExitCode {
    // Before any thread exists, so that every thread shares the capped arenas.
    limit_malloc_arenas();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("imagegen-mcp: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("imagegen-mcp: {e:#}");
            ExitCode::FAILURE
        }
    };
    // Saved images are flushed in the background; the last ones are on disk before we exit.
    imagegen_mcp::storage::flush_saved();
    code
}

/// Caps glibc's malloc arenas at one per core (it allows eight per core).
///
/// Each blocking thread that saves or previews an image would otherwise get an arena of its
/// own, and megabyte buffers freed into many arenas are not reused by the others: under 64
/// calls of 1.6 MB with previews, peak memory was 224 MiB with the default and 175 MiB with
/// this, at no cost in CPU (docs/benchmarks.md).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cores = imagegen_providers::http::available_cores();
        let arenas = libc::c_int::try_from(cores.max(2)).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets a tuning value; called before any other thread starts.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}
