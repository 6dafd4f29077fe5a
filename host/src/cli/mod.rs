//! Command-line interface: `weft node`, `weft call`, `weft request`, `weft plugins`, `weft plugin`,
//! `weft config`, `weft bench`, `weft topology`.

mod bench;
mod client;
mod config;
mod node;
mod plugin;
mod progress;
mod sim;
mod topology;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "weft",
    version,
    about = "A fabric of nodes whose commands are WebAssembly components"
)]
struct Cli {
    /// How log lines are written to standard error: `human` or `json` (one object per line).
    /// Which lines: `RUST_LOG` (default `info`).
    #[arg(long, global = true, value_enum, env = "WEFT_LOG_FORMAT", default_value = "human")]
    log_format: LogFormat,
    /// Export spans (each request's, with its trace id, on every node it crosses) to this
    /// OpenTelemetry collector over OTLP/HTTP JSON (`http://HOST:4318`).
    #[arg(long, global = true, env = "WEFT_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node serving the plugins of a directory.
    Node(Box<node::NodeArgs>),
    /// Call one command and print its JSON result.
    Call(client::CallArgs),
    /// Send a multi-command request from a JSON file (or `-` for standard input).
    Request(client::RequestArgs),
    /// The members a node knows: id, URL, state, round-trip time.
    Peers(client::PeersArgs),
    /// Every command of the fabric, with its tags and the nodes serving it.
    Catalog(client::FabricArgs),
    /// List a node's plugins: file, digest, state, commands, tags, last error.
    Plugins(client::PluginsArgs),
    /// Create and build plugins in Rust, Python or JavaScript.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Print a new random API token and the line that stores it in a tenants file.
    Token,
    /// Check a node configuration file and print the effective configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Measure call latency and throughput against the raw WebSocket limit.
    Bench(bench::BenchArgs),
    /// Serve the raw WebSocket JSON echo that `weft bench` compares against.
    #[command(hide = true)]
    RawEcho(bench::RawEchoArgs),
    /// Build local fabrics in the federation guide's shapes and measure them.
    #[command(subcommand)]
    Topology(topology::TopologyCommand),
    /// Run the fabric's state machine under the deterministic simulator: replay a scenario by
    /// its seed (`--trace`), or a sweep (`--scenarios N`).
    Sim(sim::SimArgs),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validates FILE (a TOML file of `weft node` options) and prints every option's effective
    /// value and where it comes from (flag, environment, file, default).
    Check { file: std::path::PathBuf },
}

pub fn main() -> ExitCode {
    let args = match config::with_config_file(std::env::args_os().collect()) {
        Ok((args, _)) => args,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse_from(args);
    let otlp = match cli.otlp_endpoint.as_deref().map(weft::otlp::OtlpLayer::new).transpose() {
        Ok(otlp) => otlp,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Simulated nodes log as real ones do, thousands of lines a run: `weft sim` prints its own
    // trace, and their logs only with RUST_LOG set.
    if !matches!(cli.command, Command::Sim(_)) || std::env::var_os("RUST_LOG").is_some() {
        init_tracing(cli.log_format, otlp);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Node(args) => node::run(*args).await,
            Command::Call(args) => client::call(args).await,
            Command::Request(args) => client::request(args).await,
            Command::Plugins(args) => client::plugins(args).await,
            Command::Peers(args) => client::peers(args).await,
            Command::Catalog(args) => client::catalog(args).await,
            Command::Plugin(command) => plugin::run(command).await,
            Command::Token => token(),
            Command::Config(ConfigCommand::Check { file }) => config::check(&file),
            Command::Bench(args) => bench::run(args).await,
            Command::RawEcho(args) => bench::raw_echo(args).await,
            Command::Topology(command) => topology::run(command).await,
            Command::Sim(args) => sim::run(args),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to standard error, filtered by `RUST_LOG` (default `info`).
fn init_tracing(format: LogFormat, otlp: Option<weft::otlp::OtlpLayer>) {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter).with(otlp);
    match format {
        LogFormat::Human => registry.with(logs).init(),
        LogFormat::Json => registry.with(logs.json().with_current_span(true)).init(),
    }
}

/// Where compiled components are kept between runs: `$XDG_CACHE_HOME/weft/compiled`, else `~/.cache/weft/compiled`.
fn default_cache_dir() -> Option<std::path::PathBuf> {
    Some(xdg_dir("XDG_CACHE_HOME", ".cache")?.join("weft").join("compiled"))
}

/// Where a node keeps its identity: `$XDG_DATA_HOME/weft`, else `~/.local/share/weft`.
fn default_data_dir() -> Option<std::path::PathBuf> {
    Some(xdg_dir("XDG_DATA_HOME", ".local/share")?.join("weft"))
}

/// The XDG base directory `variable` (when absolute), else `$HOME/fallback`.
fn xdg_dir(variable: &str, fallback: &str) -> Option<std::path::PathBuf> {
    std::env::var_os(variable)
        .map(std::path::PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|home| std::path::PathBuf::from(home).join(fallback)))
}

/// `weft token`: a new token for a client, and its hash for the node's tenants file.
fn token() -> anyhow::Result<ExitCode> {
    let token = weft::tenancy::new_token()?;
    println!("token (give it to the client; WEFT_TOKEN or --token): {token}");
    println!(
        "tenants file line:  tokens = [\"{}\"]",
        weft::tenancy::hash_token(&token)
    );
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, so call it
/// before announcing the node: a signal sent right after `WEFT_URL` must not kill it outright.
fn stop_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
