//! `weft topology up|report`: local fabrics in the shapes of MPREG's federation guide.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use weft::topology::{self, Built, Options, Pattern, Plan};

use super::progress::Step;

#[derive(clap::Subcommand)]
pub enum TopologyCommand {
    /// Start local node processes in a pattern's shape, measure it, print the report and keep
    /// the nodes running until interrupted.
    Up(UpArgs),
    /// Print the report of the running topology (links and propagation measured again).
    Report(ReportArgs),
}

#[derive(clap::Args)]
pub struct UpArgs {
    /// mesh, regions, hierarchy, datacenters or self-healing.
    #[arg(long)]
    pattern: Pattern,
    /// Nodes in all [default: the reference's size: 10, 9, 7, 8, 10].
    #[arg(long)]
    nodes: Option<usize>,
    /// Where the nodes keep their plugins, data and logs, and `topology.json`.
    #[arg(long, default_value_os_t = default_dir())]
    dir: PathBuf,
    /// A component the serving nodes start with; repeatable [default: build/plugins/math.wasm].
    #[arg(long = "plugin")]
    plugins: Vec<PathBuf>,
    /// The component dropped on the far node to measure propagation [default:
    /// build/plugins/text.wasm].
    #[arg(long)]
    probe: Option<PathBuf>,
    /// The call made to the probe from the node farthest from it.
    #[arg(long, default_value = "text.word_count")]
    probe_call: String,
    /// Its arguments, a JSON list.
    #[arg(long, default_value = r#"["the fabric and the fabric"]"#)]
    probe_args: String,
    /// Compile cache shared by the nodes [default: the user's weft cache].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct ReportArgs {
    #[arg(long, default_value_os_t = default_dir())]
    dir: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn default_dir() -> PathBuf {
    std::env::temp_dir().join("weft-topology")
}

fn example(path: &str) -> anyhow::Result<PathBuf> {
    let path = PathBuf::from(path);
    if path.is_file() {
        return Ok(path);
    }
    anyhow::bail!(
        "{} is not built: run scripts/build-plugins from the repository, or name components with --plugin/--probe",
        path.display()
    )
}

/// Empties `dir` for a new topology, refusing a directory that is not one.
fn fresh_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)?.next().is_none();
        if !empty && !dir.join("topology.json").exists() && !dir.join(".weft-topology").exists() {
            anyhow::bail!(
                "{} holds something else than a topology; pick another --dir",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join(".weft-topology"), b"").context("marking the topology directory")?;
    Ok(())
}

pub async fn run(command: TopologyCommand) -> anyhow::Result<ExitCode> {
    match command {
        TopologyCommand::Up(args) => up(args).await,
        TopologyCommand::Report(args) => report(args).await,
    }
}

async fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    let plan = Plan::new(args.pattern, args.nodes)?;
    let stop = super::stop_signal()?;
    let plugins = if args.plugins.is_empty() {
        vec![example("build/plugins/math.wasm")?]
    } else {
        args.plugins
    };
    let probe = match args.probe {
        Some(probe) => probe,
        None => example("build/plugins/text.wasm")?,
    };
    let probe_args: Vec<serde_json::Value> =
        serde_json::from_str(&args.probe_args).context("--probe-args must be a JSON list")?;
    let dir = std::path::absolute(&args.dir).context("resolving --dir")?;
    fresh_dir(&dir)?;
    let options = Options {
        dir: dir.clone(),
        exe: std::env::current_exe().context("finding the weft binary")?,
        plugins,
        probe,
        probe_call: args.probe_call,
        probe_args,
        cache_dir: args.cache_dir.or_else(super::default_cache_dir),
    };
    let step = std::sync::Mutex::new(None::<Step>);
    let progress = |label: &str| {
        if let Ok(mut step) = step.lock() {
            if let Some(previous) = step.take() {
                previous.done();
            }
            *step = Some(Step::start(label.to_string()));
        }
    };
    let running = topology::up(plan, &options, &progress).await;
    if let Ok(mut step) = step.lock() {
        if let Some(last) = step.take() {
            if running.is_ok() {
                last.done();
            } else {
                last.failed();
            }
        }
    }
    let running = running?;
    let file = dir.join("topology.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&running.built)?).context("writing topology.json")?;
    print!("{}", topology::report(&running.built));
    println!("WEFT_TOPOLOGY={}", file.display());
    eprintln!("the topology runs until interrupted (Ctrl-C); `weft topology report` measures it again");
    stop.await;
    drop(running);
    Ok(ExitCode::SUCCESS)
}

async fn report(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let file = args.dir.join("topology.json");
    let text = std::fs::read(&file).with_context(|| format!("reading {} (is a topology up?)", file.display()))?;
    let built: Built = serde_json::from_slice(&text).with_context(|| format!("parsing {}", file.display()))?;
    let built = topology::remeasure(built).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&built)?);
    } else {
        print!("{}", topology::report(&built));
    }
    Ok(ExitCode::SUCCESS)
}
