//! `weft plugin new` and `weft plugin build`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use weft::config::Limits;
use weft::fabric::identity::NodeKey;
use weft::runtime::{Compilation, Runtime};
use weft::sdk::{self, Lang};

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Create a ready-to-build plugin in a new directory.
    New(NewArgs),
    /// Build a plugin's source into a component and check it against the contract.
    Build(BuildArgs),
    /// Create a publisher key for signing plugins; prints its public key for tenants files.
    Keygen(KeygenArgs),
    /// Sign a component with a publisher key: writes FILE.sig beside it.
    Sign(SignArgs),
}

#[derive(Args)]
pub struct KeygenArgs {
    /// Where to keep the key (its seed, mode 0600); it must not exist yet.
    #[arg(long)]
    key: PathBuf,
}

#[derive(Args)]
pub struct SignArgs {
    /// The component to sign.
    file: PathBuf,
    /// The publisher key (`weft plugin keygen`).
    #[arg(long)]
    key: PathBuf,
}

#[derive(Args)]
pub struct NewArgs {
    /// The plugin's name; its commands are named `NAME.COMMAND`.
    name: String,
    /// The language to write it in.
    #[arg(long, value_enum)]
    lang: Lang,
    /// The directory to create [default: ./NAME].
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Args)]
pub struct BuildArgs {
    /// The plugin's directory: a Cargo crate, or NAME.py or NAME.js in a directory called NAME.
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Where to write the component [default: ./NAME.wasm]. Written by rename, so it may be a
    /// node's plugin directory.
    #[arg(short, long)]
    out: Option<PathBuf>,
    /// The compile cache the check fills, so a node using the same cache loads the component
    /// without compiling it again [default: as `weft node`].
    #[arg(long, env = "WEFT_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
}

pub async fn run(command: PluginCommand) -> anyhow::Result<ExitCode> {
    match command {
        PluginCommand::New(args) => new(args),
        PluginCommand::Build(args) => build(args).await,
        PluginCommand::Keygen(args) => keygen(args),
        PluginCommand::Sign(args) => sign(args),
    }
}

fn keygen(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    if args.key.exists() {
        anyhow::bail!("{} exists already; keys are never overwritten", args.key.display());
    }
    let key = NodeKey::load_or_create_file(&args.key).context("creating the publisher key")?;
    println!("publisher key kept in {}", args.key.display());
    println!(
        "tenants file line:  publishers = [\"{}\"]",
        weft::plugins::signature::public_text(&key.public())
    );
    Ok(ExitCode::SUCCESS)
}

fn sign(args: SignArgs) -> anyhow::Result<ExitCode> {
    if !args.key.is_file() {
        anyhow::bail!(
            "no publisher key at {} (weft plugin keygen --key PATH)",
            args.key.display()
        );
    }
    let key = NodeKey::load_or_create_file(&args.key).context("reading the publisher key")?;
    let bytes = std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let text = weft::plugins::signature::sign(&key, &weft::runtime::digest(&bytes));
    let mut out = args.file.clone().into_os_string();
    out.push(weft::plugins::signature::SUFFIX);
    let out = PathBuf::from(out);
    sdk::place(text.as_bytes(), &out).with_context(|| format!("writing {}", out.display()))?;
    println!("signed {} → {}", args.file.display(), out.display());
    Ok(ExitCode::SUCCESS)
}

fn new(args: NewArgs) -> anyhow::Result<ExitCode> {
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.name));
    let files = sdk::scaffold(&dir, &args.name, args.lang).context("creating the plugin")?;
    println!("created the {} plugin {} in {}:", args.lang, args.name, dir.display());
    for file in files {
        println!("  {}", file.display());
    }
    println!(
        "build it with: weft plugin build {} -o PLUGIN_DIR/{}.wasm",
        dir.display(),
        args.name
    );
    Ok(ExitCode::SUCCESS)
}

/// Builds, checks the component against the contract (compiling it into the cache), and only
/// then writes it to its destination: a node watching that directory finds it compiled.
async fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let dir = args.dir.clone();
    let step = super::progress::Step::start(format!("building {}", args.dir.display()));
    let built = tokio::task::spawn_blocking(move || sdk::build(&dir))
        .await
        .context("the build task failed")?;
    let built = match built {
        Ok(built) => {
            step.done();
            built
        }
        Err(e) => {
            step.failed();
            return Err(e).with_context(|| format!("building {}", args.dir.display()));
        }
    };
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from(format!("{}.wasm", built.name)));
    let size = built.component.len();
    let limits = Limits {
        max_instances: 2,
        ..Limits::default()
    };
    let cache_dir = args.cache_dir.or_else(super::default_cache_dir);
    // Cranelift's code goes to the cache, so that nodes sharing it load the plugin at once.
    let runtime = Runtime::new(limits, cache_dir, Compilation::Optimized).context("starting the runtime")?;
    let step = super::progress::Step::start("checking the contract and compiling");
    let plugin = match runtime.load(&built.name, built.component.clone()).await {
        Ok(plugin) => {
            step.done();
            plugin
        }
        Err(e) => {
            step.failed();
            eprintln!(
                "error: the {} component does not fit the plugin contract ({} not written): {e}",
                built.name,
                out.display()
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    sdk::place(&built.component, &out).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "built {} ({}, {:.1} MB, compiled in {} ms):",
        out.display(),
        built.lang,
        size as f64 / 1e6,
        plugin.compile_time().as_millis()
    );
    for command in plugin.commands() {
        println!(
            "  {}({}) v{} [{}] {}",
            command.name,
            command.params.join(", "),
            command.version,
            command.resources.join(", "),
            command.description
        );
    }
    Ok(ExitCode::SUCCESS)
}
