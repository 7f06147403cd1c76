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
    config::{CliOverrides, LoadedConfig},
    delivery::GenerateOutput,
    engine::{CallContext, Engine, GenerateParams},
    live::{watch, Live, LogControl},
    progress::{ProgressReporter, ProgressSink},
    server::ImagegenServer,
};
use rmcp::ServiceExt;
use tokio_util::sync::CancellationToken;

/// Image generation for any MCP client, with OpenAI and an offline mock provider.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (default: $IMAGEGEN_CONFIG, ./imagegen.toml, then ~/.config/imagegen-mcp/config.toml).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve MCP over stdio (what MCP clients run).
    Serve {
        /// The default provider, overriding the configuration.
        #[arg(long)]
        provider: Option<String>,
        /// Where to save images, overriding the configuration.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Generate images from a prompt and print the saved paths.
    Generate(GenerateArgs),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Args)]
struct GenerateArgs {
    /// What to draw.
    prompt: String,
    /// Provider name (see `config show`).
    #[arg(long)]
    provider: Option<String>,
    /// Model name.
    #[arg(long)]
    model: Option<String>,
    /// WIDTHxHEIGHT or auto.
    #[arg(long)]
    size: Option<String>,
    /// low, medium, high, auto (GPT image models); standard, hd (dall-e-3).
    #[arg(long)]
    quality: Option<String>,
    /// Number of images.
    #[arg(long)]
    n: Option<u32>,
    /// png, jpeg or webp.
    #[arg(long = "format", value_name = "FORMAT")]
    output_format: Option<String>,
    /// transparent, opaque or auto.
    #[arg(long)]
    background: Option<String>,
    /// Seed, where the provider supports it.
    #[arg(long)]
    seed: Option<u64>,
    /// Stream 0-3 partial images before the final one (GPT image models); each is saved and
    /// shown in the progress line as it arrives.
    #[arg(long, value_name = "N")]
    partial_images: Option<u8>,
    /// Where to save images.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Print the structured result as JSON (the same as the MCP tool's structuredContent).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check the configuration: exit 0 if it loads, else 1 with the reason.
    Check,
    /// Show the effective configuration with each value's source (keys as fingerprints).
    Show,
}

/// Logs to stderr with `RUST_LOG` if set, else `default`; the returned control lets the
/// configuration's `log_level` replace the filter (unless `RUST_LOG` is set, which wins).
fn init_logging(default: &str) -> LogControl {
    use tracing_subscriber::{layer::SubscriberExt as _, util::SubscriberInitExt as _, EnvFilter};
    let from_env = std::env::var("RUST_LOG").is_ok_and(|v| !v.trim().is_empty());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    // stdout belongs to the MCP protocol (and to `generate`'s output): logs go to stderr only.
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .init();
    LogControl::new(
        move |level| {
            handle
                .reload(EnvFilter::new(level))
                .map_err(|e| e.to_string())
        },
        default,
        from_env.then(|| "RUST_LOG".to_string()),
    )
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

async fn generate(
    args: GenerateArgs,
    config: Option<PathBuf>,
    log: LogControl,
) -> anyhow::Result<ExitCode> {
    let overrides = CliOverrides {
        config,
        output_dir: absolute(args.out)?,
        ..CliOverrides::default()
    };
    let loaded = load(&overrides)?;
    log.apply(loaded.config.log_level.as_deref());
    let engine = Engine::from_config(&loaded)?;
    let params = GenerateParams {
        prompt: args.prompt,
        provider: args.provider,
        model: args.model,
        size: args.size,
        quality: args.quality,
        n: args.n,
        output_format: args.output_format,
        background: args.background,
        seed: args.seed,
        partial_images: args.partial_images,
        ..GenerateParams::default()
    };
    let provider = params
        .provider
        .clone()
        .unwrap_or_else(|| engine.default_provider().to_string());
    let terminal = std::io::stderr().is_terminal();
    let reporter = ProgressReporter::start(
        terminal.then(|| Arc::new(StatusLine) as Arc<dyn ProgressSink>),
        Duration::from_secs(1),
    );
    let progress = reporter.handle();
    progress.phase(format!("generating with {provider}"));
    let call = CallContext {
        progress,
        cancel: CancellationToken::new(),
    };
    // Ctrl-C ends the call cleanly: the upstream request is dropped and nothing is saved.
    let cancel = call.cancel.clone();
    let interrupt = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            cancel.cancel();
        }
    });
    let outcome = engine.generate(&params, &call).await;
    interrupt.abort();
    reporter.finish().await;
    if terminal {
        eprint!("\r\x1b[2K");
    }
    let output = match &outcome {
        Ok(g) => GenerateOutput::success(g),
        Err(e) => GenerateOutput::failure(e.clone()),
    };
    let mut stdout = std::io::stdout().lock();
    if args.json {
        writeln!(stdout, "{}", serde_json::to_string_pretty(&output)?)?;
    } else {
        for image in &output.images {
            writeln!(stdout, "{}", image.path.display())?;
        }
    }
    match &output.error {
        None => Ok(ExitCode::SUCCESS),
        Some(e) => {
            if !args.json {
                eprintln!("{}", e.human());
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { provider, out } => {
            let log = init_logging("info");
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
                output_dir = %engine.store().dir().display(),
                "serving MCP over stdio"
            );
            drop(engine);
            // The watcher lives as long as the runtime: until the client disconnects.
            tokio::spawn(watch(live.clone()));
            let service = ImagegenServer::new(live)
                .serve(rmcp::transport::stdio())
                .await?;
            service.waiting().await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Generate(args) => {
            let log = init_logging("warn");
            generate(args, cli.config, log).await
        }
        Command::Config(cmd) => {
            init_logging("warn");
            let overrides = CliOverrides {
                config: cli.config,
                ..CliOverrides::default()
            };
            let loaded = LoadedConfig::load(&overrides).map_err(|e| anyhow::anyhow!("{e}"));
            match (cmd, loaded) {
                (ConfigCommand::Check, Ok(loaded)) => {
                    Engine::from_config(&loaded)?;
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

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("imagegen-mcp: {e:#}");
            ExitCode::FAILURE
        }
    }
}
