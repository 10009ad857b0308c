//! `cargo xtask`: saelab's one binary. It owns the command line, the config
//! file, the stage graph built from it, progress output and the
//! status/explain/gc views of the artifact store. It holds no stage logic: each
//! stage's `run` calls into that stage's crate.
//!
//! Over 600 lines because each command's glue (status, explain, query, gc,
//! verify...) is a short function over the one `Session`; what grows beyond
//! glue goes to its own module (`preflight`, `on_demand`, `circuit`, `runs`, `bench`).

mod bench;
mod circuit;
mod config;
#[cfg(test)]
mod fingerprint;
mod on_demand;
mod out_of_memory;
mod preflight;
mod progress;
mod runs;
mod stages;
mod sweep;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use artifacts::{Event, Graph, Outcome, RunOptions, State, Store};
use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigSources};
use crate::stages::Context;

/// The repository root, where `saelab.toml` and `artifacts/` live by default.
fn repo_root() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask
        .parent()
        .and_then(Path::parent)
        .unwrap_or(xtask)
        .to_path_buf()
}

#[derive(Parser, Debug)]
#[command(
    name = "cargo xtask",
    about = "Train SAEs on an MNIST MLP's activations and find out what their features mean."
)]
struct Cli {
    /// Config file [default: saelab.toml at the repository root].
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override one key, e.g. --set mlp.lr=0.01 (repeatable).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Apply a [presets.NAME] table of the config file.
    #[arg(long, global = true, value_name = "NAME")]
    preset: Option<String>,
    /// Folder holding the four MNIST files (raw or .gz) [env: SAELAB_MNIST_DIR].
    #[arg(long, global = true, value_name = "DIR")]
    mnist_dir: Option<PathBuf>,
    /// Artifact store [env: SAELAB_ARTIFACTS; default: artifacts/ at the repository root].
    #[arg(long, global = true, value_name = "DIR")]
    artifacts: Option<PathBuf>,
    /// Threads to train and encode on [env: SAELAB_THREADS; default: every core].
    /// Any count gives the same bits.
    #[arg(long, global = true, value_name = "N")]
    threads: Option<String>,
    /// Keep each training SAE point's whole state at the end of an epoch at
    /// most this often, so an interrupted run resumes it (to the same bits).
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 30.0)]
    checkpoint_every: f64,
    #[command(subcommand)]
    command: Command,
}

/// Names a stage as `cargo xtask stages` lists them: mnist, mlp, extract,
/// sae/<layer>/<architecture label>/d<d_sae>/s<seed>, analysis; or a kind (sae: every SAE).
const STAGE_HELP: &str = "A stage as `cargo xtask stages` lists it (mnist, mlp, extract, sae/..., analysis), or the kind sae for every SAE point";

#[derive(Subcommand, Debug)]
enum Command {
    /// Run every stage that is not up to date, then print a summary.
    All {
        /// Rebuild STAGE even if it is fresh (repeatable); with no STAGE, rebuild every stage.
        #[arg(long, value_name = "STAGE", num_args = 0..=1, default_missing_value = ALL_STAGES)]
        force: Vec<String>,
    },
    /// Run one stage and the stages it needs.
    Run {
        #[arg(help = STAGE_HELP)]
        stage: String,
        /// Rebuild STAGE even if it is fresh (repeatable); with no STAGE, the stage being run.
        #[arg(long, value_name = "STAGE", num_args = 0..=1, default_missing_value = THIS_STAGE)]
        force: Vec<String>,
    },
    /// List the stages this config has, upstream first, with what each reads.
    Stages,
    /// One table of every stage: key, changed params, state, headline metric, wall time.
    Status,
    /// Why a stage would run or not, with every reason and its full params.
    Explain {
        #[arg(help = STAGE_HELP)]
        stage: String,
    },
    /// Print the path of this config's report.html (after `cargo xtask all`).
    Report {
        /// Also open it in the desktop's browser (xdg-open or open), where there is one.
        #[arg(long)]
        open: bool,
    },
    /// Remove artifacts that no protected config reaches and that are older
    /// than --older-than days. Protected: this config (with its --set and
    /// --preset), the config file without them, and each of its presets.
    /// Artifacts a running saelab holds are never removed.
    Gc {
        /// List what would be removed, and remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Keep unreached artifacts built in the last DAYS days.
        #[arg(long, value_name = "DAYS", default_value_t = 7)]
        older_than: u64,
        /// Remove unreached artifacts whatever their age (as --older-than 0).
        #[arg(long)]
        all: bool,
    },
    /// Re-hash every file of every artifact this config reaches against its
    /// manifest (with --all, every artifact in the store), list the corrupt
    /// ones and mark them stale, so the next run rebuilds them.
    Verify {
        /// Every artifact in the store, not only those this config reaches.
        #[arg(long)]
        all: bool,
    },
    /// Every SAE in the store, whatever config built it: its [sae] params and
    /// its test/train metrics, newest first (also the table `runs` in `query`).
    Runs {
        /// How to print it.
        #[arg(long, value_enum, default_value = "table")]
        format: QueryFormat,
        /// Every column (CSV always has every column). By default the table
        /// shows when, which, layer, architecture, d_sae, the params that
        /// differ between runs, L0, EV, dead latents and training time.
        #[arg(long)]
        all: bool,
    },
    /// Render dashboards for chosen features of one SAE of this config, on
    /// demand, into the store's .dashboards/ folder; prints the page's path.
    Dashboard {
        /// A feature id (repeatable).
        #[arg(long = "feature", value_name = "N")]
        features: Vec<usize>,
        /// Or the features a query returns (its first column), e.g.
        /// "SELECT feature FROM features WHERE detector_class = 7 ORDER BY detector_f1 DESC LIMIT 5".
        #[arg(long, value_name = "SQL")]
        query: Option<String>,
        /// The SAE point, as `cargo xtask stages` lists it [default: the sweep's first].
        #[arg(long, value_name = "STAGE")]
        sae: Option<String>,
    },
    /// Draw one attribution graph: a test image's (--image N) or a digit's,
    /// the mean over its test images (--digit D), through the transcoders of
    /// a circuit (or, with --neurons, the MLP's own neurons). Writes
    /// circuit-tracer's graph JSON and an offline HTML page into the store's
    /// .circuits/ folder and prints their paths.
    Circuit {
        /// A test image, 0 to 9999.
        #[arg(long, required_unless_present = "digit", conflicts_with = "digit")]
        image: Option<usize>,
        /// A digit, 0 to 9: the mean graph of its test images.
        #[arg(long)]
        digit: Option<u8>,
        /// The MLP's graph with its ReLU gates frozen, neurons as nodes.
        #[arg(long)]
        neurons: bool,
        /// The circuits stage, as `cargo xtask stages` lists it [default: the first].
        #[arg(long)]
        circuit: Option<String>,
    },
    /// Measure a stage's speed: mlp, sae or circuits.
    Bench {
        /// What to time: mlp (the MLP trainer) or sae (the SAE trainers).
        target: bench::Target,
    },
    /// SQL (polars) over the analysis tables (sweep, features, feature_labels,
    /// feature_acts, neurons, probes) and the cached activations (act_<split>_<layer>).
    Query {
        /// The query, e.g. "SELECT * FROM sweep".
        sql: String,
        /// How to print the result; parquet needs --output.
        #[arg(long, value_enum, default_value = "table")]
        format: QueryFormat,
        /// Write the result to FILE instead of printing it.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

/// `--force` with no value on `all`: every stage.
const ALL_STAGES: &str = "*";
/// `--force` with no value on `run`: the stage being run.
const THIS_STAGE: &str = ".";

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum QueryFormat {
    Table,
    Csv,
    Parquet,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut cli = Cli::parse_from(&args);
    // clap keeps one side's occurrences of a global list (those after the
    // subcommand win): every `--set` counts, in the order given.
    cli.overrides = every_set(&args);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// The values of every `--set VALUE` and `--set=VALUE` in `args`, in order,
/// up to a `--`.
fn every_set(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut args = args.iter().take_while(|a| a.as_str() != "--");
    while let Some(arg) = args.next() {
        if arg == "--set" {
            out.extend(args.next().cloned());
        } else if let Some(value) = arg.strip_prefix("--set=") {
            out.push(value.to_string());
        }
    }
    out
}

/// Sizes the rayon pool, which the trainers and encoders share, from
/// `--threads` or `SAELAB_THREADS` (neither: rayon's own default, every core,
/// or `RAYON_NUM_THREADS`).
fn use_threads(flag: Option<&str>) -> Result<()> {
    let (source, value) = match (flag, std::env::var("SAELAB_THREADS")) {
        (Some(value), _) => ("--threads", value.to_string()),
        (None, Ok(value)) => ("SAELAB_THREADS", value),
        (None, Err(_)) => return Ok(()),
    };
    let threads = match value.trim().parse::<usize>() {
        Ok(n) if n >= 1 => n,
        _ => bail!(
            "{source} = {value:?} is not a thread count: it must be a whole number of at least 1"
        ),
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .with_context(|| format!("{source} = {threads}: could not start the thread pool"))
}

/// An error and its causes in one line, each cause once: many errors already
/// print their source (`path: Read-only file system`), and `{:#}` would repeat it.
fn describe(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    text
}

struct Session {
    config: Config,
    file_default: Config,
    presets: std::collections::BTreeMap<String, Config>,
    ctx: Context,
    store: Store,
    /// What read-only commands read, held against `gc` until the process ends.
    holds: std::sync::Mutex<Vec<artifacts::UseLock>>,
}

fn open(cli: &Cli) -> Result<Session> {
    let config_path = cli
        .config
        .clone()
        .unwrap_or_else(|| repo_root().join("saelab.toml"));
    if cli.config.is_some() && !config_path.exists() {
        bail!("{}: no such config file", config_path.display());
    }
    let sources = ConfigSources {
        preset: cli.preset.clone(),
        overrides: cli.overrides.clone(),
    };
    let loaded = config::load(&config_path, &sources)?;
    let store_root = cli
        .artifacts
        .clone()
        .or_else(|| std::env::var_os("SAELAB_ARTIFACTS").map(PathBuf::from))
        .unwrap_or_else(|| repo_root().join("artifacts"));
    let mnist_dir = cli
        .mnist_dir
        .clone()
        .or_else(|| std::env::var_os(mnist::MNIST_DIR_ENV).map(PathBuf::from))
        .or_else(|| {
            (!loaded.config.mnist.dir.is_empty()).then(|| {
                config_path
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join(&loaded.config.mnist.dir)
            })
        });
    let store = Store::open(&store_root)?;
    if !(cli.checkpoint_every >= 0.0 && cli.checkpoint_every.is_finite()) {
        bail!(
            "--checkpoint-every is {}: it must be a number of seconds, 0 or more",
            cli.checkpoint_every
        );
    }
    let _ = STORE_ROOT.set(store_root.clone());
    Ok(Session {
        config: loaded.config,
        file_default: loaded.file_default,
        presets: loaded.presets,
        ctx: Context {
            mnist_dir,
            store_root,
            flags: global_flags(cli),
            checkpoint_every: std::time::Duration::from_secs_f64(cli.checkpoint_every),
        },
        store,
        holds: std::sync::Mutex::new(Vec::new()),
    })
}

/// The config, preset and overrides this command used, as flags that
/// follow a subcommand (` --preset zoo --set 'sae.k=[8]'`; empty for none).
fn global_flags(cli: &Cli) -> String {
    use crate::progress::shell_word;
    let mut parts = Vec::new();
    if let Some(config) = &cli.config {
        parts.push(format!(
            " --config {}",
            shell_word(&config.display().to_string())
        ));
    }
    if let Some(preset) = &cli.preset {
        parts.push(format!(" --preset {}", shell_word(preset)));
    }
    for set in &cli.overrides {
        parts.push(format!(" --set {}", shell_word(set)));
    }
    parts.concat()
}

fn run(cli: Cli) -> Result<ExitCode> {
    use_threads(cli.threads.as_deref())?;
    let session = open(&cli)?;
    let pipeline = stages::build(&session.config, &session.ctx);
    let graph = pipeline.graph()?;
    match cli.command {
        Command::All { force } => {
            let force = forced(&graph, force, None)?;
            execute(
                &session,
                &pipeline,
                RunOptions {
                    force,
                    ..Default::default()
                },
            )
        }
        Command::Run { stage, force } => {
            check_stage_names(&graph, std::slice::from_ref(&stage))?;
            let force = forced(&graph, force, Some(&stage))?;
            execute(
                &session,
                &pipeline,
                RunOptions {
                    force,
                    targets: [stage].into(),
                    ..Default::default()
                },
            )
        }
        Command::Stages => {
            stages_list(&graph);
            // On stderr: stdout stays the table, for scripts.
            for line in preflight::memory_estimates(&session, &graph) {
                eprintln!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Report { open } => report(&session, &graph, open),
        Command::Status => {
            status(&session, &graph);
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain { stage } => {
            check_stage_names(&graph, std::slice::from_ref(&stage))?;
            explain(&session, &graph, &stage);
            Ok(ExitCode::SUCCESS)
        }
        Command::Gc {
            dry_run,
            older_than,
            all,
        } => {
            let options = artifacts::GcOptions {
                keep_newer_than_s: (!all).then_some(older_than * 86_400),
                dry_run,
            };
            gc(&session, &graph, options)
        }
        Command::Verify { all } => verify(&session, &graph, all),
        Command::Dashboard {
            features,
            query,
            sae,
        } => {
            let mut features = features;
            if let Some(sql) = query {
                let tables = query_tables(&session, &graph)?;
                let csv = analysis::query(&sql, &tables, &analysis::OutputFormat::Csv)?;
                for line in csv.lines().skip(1) {
                    let first = line.split(',').next().unwrap_or_default();
                    features.push(first.parse().with_context(|| {
                        format!("--query: its first column must hold feature ids, got {first:?}")
                    })?);
                }
            }
            if features.is_empty() {
                bail!("name the features: --feature N (repeatable) or --query \"SELECT feature FROM features ...\"");
            }
            let (page, point) = on_demand::dashboards(&session, &graph, sae.as_deref(), &features)?;
            println!("{}", page.display());
            let ids: Vec<String> = features.iter().map(|f| format!("--feature {f}")).collect();
            eprintln!(
                "rebuild: cargo xtask dashboard --sae {point} {}{}",
                ids.join(" "),
                session.ctx.flags
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Runs { format, all } => {
            let (runs, columns, skipped) = runs::table(&session.store)?;
            let (format, columns) = match format {
                QueryFormat::Table if !all => (analysis::OutputFormat::Table, columns),
                QueryFormat::Table => (analysis::OutputFormat::Table, "*".into()),
                QueryFormat::Csv => (analysis::OutputFormat::Csv, "*".into()),
                QueryFormat::Parquet => bail!("runs prints a table or CSV; for parquet use `query \"SELECT * FROM runs\" --format parquet --output FILE`"),
            };
            let sql = format!("SELECT {columns} FROM runs");
            let text = analysis::query(&sql, &[("runs".to_string(), runs)], &format)?;
            println!("{}", text.trim_end());
            for why in skipped {
                eprintln!("not listed: {why}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Query {
            sql,
            format,
            output,
        } => query(&session, &graph, &sql, format, output),
        Command::Circuit {
            image,
            digit,
            neurons,
            circuit,
        } => {
            let subject = match (image, digit) {
                (Some(i), _) => circuit::Subject::Image(i),
                (None, Some(d)) => circuit::Subject::Digit(d),
                (None, None) => bail!("name what to draw: --image N or --digit D"),
            };
            let kind = if neurons {
                circuits::GraphKind::Neurons
            } else {
                circuits::GraphKind::Transcoders
            };
            let drawn = circuit::draw(&session, &graph, circuit.as_deref(), subject, kind)?;
            println!("{}", drawn.html.display());
            println!("{}", drawn.json.display());
            eprintln!("{} ({})", drawn.summary, drawn.stage);
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { target } => {
            preflight::check_named_mnist_dir(&session)?;
            bench::run(target, &session.config, &session.ctx, &session.store)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The stage names `--force` stands for: `*` every stage, `.` the stage being run.
fn forced(graph: &Graph<'_>, force: Vec<String>, this: Option<&str>) -> Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for name in force {
        match (name.as_str(), this) {
            (ALL_STAGES, _) => names.extend(graph.stages().map(|s| s.name().to_string())),
            (THIS_STAGE, Some(stage)) => {
                names.insert(stage.to_string());
            }
            _ => {
                check_stage_names(graph, std::slice::from_ref(&name))?;
                names.insert(name);
            }
        }
    }
    Ok(names)
}

fn stages_list(graph: &Graph<'_>) {
    let mut rows = vec![["stage", "kind", "reads"].map(String::from).to_vec()];
    for stage in graph.stages() {
        let reads: Vec<String> = stage.inputs().into_iter().map(|(_, from)| from).collect();
        rows.push(vec![
            stage.name().to_string(),
            stage.kind().to_string(),
            reads.join(", "),
        ]);
    }
    print_table(&rows);
}

/// The current config's report(s); `open` hands the first to the desktop's browser.
fn report(session: &Session, graph: &Graph<'_>, open: bool) -> Result<ExitCode> {
    let (dir, manifest) = fresh(session, graph, "analysis")?;
    let reports = stages::analysis::report_paths(&dir, &manifest).map_err(anyhow::Error::msg)?;
    for path in &reports {
        println!("{}", path.display());
    }
    if open {
        let Some(first) = reports.first() else {
            bail!("the analysis artifact {} lists no report", dir.display());
        };
        let opener = if cfg!(target_os = "macos") {
            "open"
        } else {
            "xdg-open"
        };
        match std::process::Command::new(opener).arg(first).status() {
            Ok(status) if status.success() => {}
            Ok(status) => bail!("{opener} {} failed ({status}); open the path above in a browser", first.display()),
            Err(e) => bail!("cannot run {opener} ({e}): no desktop browser here; open the path above in a browser"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn check_stage_names(graph: &Graph<'_>, names: &[String]) -> Result<()> {
    for name in names {
        if !graph.stages().any(|s| s.name() == name || s.kind() == name) {
            let known: Vec<&str> = graph.stages().map(|s| s.name()).collect();
            bail!(
                "there is no stage named {name}; the stages are {}",
                known.join(", ")
            );
        }
    }
    Ok(())
}

/// The stage this process is building, for the line an interrupt prints.
static BUILDING: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

#[global_allocator]
static ALLOCATOR: out_of_memory::Watched = out_of_memory::Watched;

/// The stage being built now, if any; never waits (an allocation failure
/// may strike while the lock is held).
fn building_now() -> Option<String> {
    BUILDING.try_lock().ok().and_then(|b| b.clone())
}
/// The store this command uses, for the interrupt's account of what it kept.
static STORE_ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Ctrl-C and SIGTERM: remove this run's staging folders, say what was cut
/// short, and exit at once (130). Finished artifacts are committed atomically,
/// so stopping between two writes loses nothing already stored.
fn stop_cleanly_on_interrupt() {
    let installed = ctrlc::set_handler(|| {
        let removed = artifacts::remove_own_staging();
        let building = BUILDING.lock().map(|b| b.clone()).unwrap_or(None);
        let what = match building {
            Some(stage) => format!("while building {stage}"),
            None => "between stages".to_string(),
        };
        let states = STORE_ROOT
            .get()
            .map(|root| stages::kept::describe_checkpoints(root))
            .unwrap_or_default();
        let resumed = if states.is_empty() {
            "No SAE point in training had a state kept yet: what they trained is lost.".to_string()
        } else {
            format!(
                "SAE points in training resume from their last kept state (in .checkpoints/): {}; the epochs since are lost, and a point with no kept state starts over.",
                states.join("; ")
            )
        };
        eprintln!(
            "\ninterrupted {what}: removed {} staging folder(s). Kept: every artifact already built, and every SAE point that finished training (the next run uses it, in .finished/). {resumed}",
            removed.len()
        );
        std::process::exit(130);
    });
    if let Err(e) = installed {
        eprintln!("warning: Ctrl-C will not clean up this run: {e}");
    }
}

fn execute(
    session: &Session,
    pipeline: &stages::Pipeline,
    options: RunOptions,
) -> Result<ExitCode> {
    stop_cleanly_on_interrupt();
    preflight::check_named_mnist_dir(session)?;
    preflight::check_memory(session)?;
    let outcomes = pipeline.run(&session.store, &options, &|event| match event {
        Event::Running(p) => {
            let why = match &p.state {
                State::Fresh(_) => "forced".to_string(),
                other => first_reason(other),
            };
            if let Ok(mut building) = BUILDING.lock() {
                *building = Some(p.name.clone());
            }
            eprintln!("{:<10} running ({why})", p.name);
        }
        Event::Waiting(p) => eprintln!("{:<10} waiting: another saelab run is building it", p.name),
        Event::Finished(outcome) => {
            if let Ok(mut building) = BUILDING.lock() {
                *building = None;
            }
            println!("{}", outcome_line(outcome));
        }
    })?;
    let failed = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Failed { .. }))
        .count();
    summary(session, &outcomes);
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn outcome_line(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Ran { name, manifest } => format!(
            "{name:<10} ran      {:>7.2} s  {}",
            manifest.wall_time_s,
            manifest.headline()
        ),
        Outcome::Cached { name, manifest } => {
            format!("{name:<10} cached   {:>9}  {}", "", manifest.headline())
        }
        Outcome::Failed { name, error } => format!("{name:<10} FAILED   {error}"),
        Outcome::Skipped { name, because } => format!("{name:<10} skipped  {because}"),
    }
}

fn summary(session: &Session, outcomes: &[Outcome]) {
    let find = |name: &str| {
        outcomes
            .iter()
            .find(|o| o.name() == name)
            .and_then(|o| o.manifest())
    };
    if let Some(m) = find("mlp") {
        let dir = session.store.artifact_dir("mlp", &m.key);
        match serde_json::from_value::<stages::mlp::MlpSummary>(m.metrics.clone()) {
            Ok(mlp) => println!(
                "MLP test accuracy: {:.2}% ({})",
                100.0 * mlp.test_accuracy,
                dir.display()
            ),
            Err(e) => eprintln!(
                "error: {}: its manifest's metrics are not an MLP's: {e}",
                dir.display()
            ),
        }
    }
    if let Some(m) = find("extract") {
        println!(
            "activations: {}",
            session.store.artifact_dir("activations", &m.key).display()
        );
    }
    if let Some(m) = find("analysis") {
        match stages::analysis::report_paths(&session.store.artifact_dir("analysis", &m.key), m) {
            Ok(reports) => reports
                .iter()
                .for_each(|report| println!("report: {}", report.display())),
            Err(e) => eprintln!("error: {e}"),
        }
    }
    println!("artifacts: {}", session.store.root().display());
}

/// The fresh artifact of a stage, or a sentence saying how to get one.
fn fresh(
    session: &Session,
    graph: &Graph<'_>,
    name: &str,
) -> Result<(PathBuf, artifacts::Manifest)> {
    let planned = graph
        .plan(&session.store)
        .into_iter()
        .find(|p| p.name == name)
        .with_context(|| format!("no stage named {name}"))?;
    let State::Fresh(_) = planned.state else {
        bail!("the {name} stage for this config is {}; run `cargo xtask all` (with the same --config/--set/--preset) first", planned.state.label());
    };
    // Held first, then checked again: a gc that removed it in between is
    // seen here, and one that comes later waits for this process.
    let hold = session.store.hold(&planned.kind, &planned.key);
    session
        .holds
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(hold);
    match session.store.check(&planned.kind, &planned.key) {
        artifacts::Check::Fresh(m) => Ok((session.store.artifact_dir(&planned.kind, &planned.key), *m)),
        artifacts::Check::Missing => bail!("the {name} stage for this config was removed while being read (by gc?); run `cargo xtask all` to rebuild it"),
        artifacts::Check::Invalid(why) => bail!("the {name} stage for this config is stale: {why}; run `cargo xtask all` (with the same --config/--set/--preset) first"),
    }
}

fn query(
    session: &Session,
    graph: &Graph<'_>,
    sql: &str,
    format: QueryFormat,
    output: Option<PathBuf>,
) -> Result<ExitCode> {
    let tables = query_tables(session, graph)?;
    let text_format = match format {
        QueryFormat::Table => analysis::OutputFormat::Table,
        QueryFormat::Csv => analysis::OutputFormat::Csv,
        QueryFormat::Parquet => {
            let Some(path) = output else {
                bail!("--format parquet needs --output FILE");
            };
            let said = analysis::query(sql, &tables, &analysis::OutputFormat::Parquet(path))?;
            println!("{}", said.trim_end());
            return Ok(ExitCode::SUCCESS);
        }
    };
    let text = analysis::query(sql, &tables, &text_format)?;
    match output {
        Some(path) => {
            std::fs::write(&path, &text)
                .with_context(|| format!("cannot write the query result to {}", path.display()))?;
            println!("wrote {}", path.display());
        }
        None => println!("{}", text.trim_end()),
    }
    Ok(ExitCode::SUCCESS)
}

/// Every table `query` can read for this config: the analysis tables, each
/// circuit's, the cached activations and `runs`.
fn query_tables(
    session: &Session,
    graph: &Graph<'_>,
) -> Result<Vec<(String, analysis::TableSource)>> {
    let (analysis_dir, manifest) = fresh(session, graph, "analysis")?;
    let reports =
        stages::analysis::report_paths(&analysis_dir, &manifest).map_err(anyhow::Error::msg)?;
    let mut tables = Vec::new();
    for report in &reports {
        let folder = report.parent().unwrap_or(&analysis_dir);
        let suffix = if reports.len() > 1 {
            format!(
                "_{}",
                folder.file_name().unwrap_or_default().to_string_lossy()
            )
        } else {
            String::new()
        };
        for (name, source) in analysis::report_tables(folder)? {
            tables.push((format!("{name}{suffix}"), source));
        }
    }
    // Each circuit's tables (`circuit_images`, ...), suffixed when there are several.
    let circuits = stages::circuits::stages(&session.config.sae.points(), &session.config.circuits);
    for (i, circuit) in circuits.iter().enumerate() {
        let (dir, _) = fresh(session, graph, &circuit.name)?;
        let suffix = if circuits.len() > 1 {
            format!("_{i}")
        } else {
            String::new()
        };
        for (name, source) in analysis::folder_tables(&dir)? {
            tables.push((format!("{name}{suffix}"), source));
        }
    }
    let (extract_dir, _) = fresh(session, graph, "extract")?;
    let store =
        activations::ActivationStore::open_dir(&extract_dir, activations::VerifyMode::Sizes)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    tables.extend(analysis::activation_tables(&store)?);
    tables.push(("runs".to_string(), runs::table(&session.store)?.0));
    Ok(tables)
}

fn status(session: &Session, graph: &Graph<'_>) {
    let defaults = stages::build(&Config::default(), &session.ctx);
    let default_stages = &defaults.stages;
    let mut rows = vec![[
        "stage",
        "key",
        "params (non-default)",
        "state",
        "headline",
        "wall",
    ]
    .map(String::from)
    .to_vec()];
    for (stage, planned) in graph.stages().zip(graph.plan(&session.store)) {
        let default = default_stages
            .iter()
            .find(|d| d.name() == stage.name() || d.kind() == stage.kind());
        let mut changed = Vec::new();
        if let Some(default) = default {
            config::differences(&default.params(), &stage.params(), "", &mut changed);
        }
        let (headline, wall) = match &planned.state {
            State::Fresh(m) => (m.headline(), format!("{:.2} s", m.wall_time_s)),
            _ => (String::new(), String::new()),
        };
        rows.push(vec![
            planned.name.clone(),
            planned.key.to_string(),
            clip(&changed.join(" ")),
            first_reason(&planned.state),
            headline,
            wall,
        ]);
    }
    print_table(&rows);
    if rows.iter().flatten().any(|cell| cell.ends_with(CLIPPED)) {
        println!("(cells ending in {CLIPPED} are cut short: `cargo xtask explain STAGE` shows them whole)");
    }
}

/// Where a table cell was cut to keep `status` one screen wide.
const CLIPPED: &str = "…";
const MAX_CELL_CHARS: usize = 72;

fn clip(cell: &str) -> String {
    if cell.chars().count() <= MAX_CELL_CHARS {
        return cell.to_string();
    }
    let kept: String = cell.chars().take(MAX_CELL_CHARS - 1).collect();
    format!("{kept}{CLIPPED}")
}

/// The state with only its first reason to be stale, and how many more there are.
fn first_reason(state: &State) -> String {
    let State::Stale(reasons) = state else {
        return state.label();
    };
    match reasons.as_slice() {
        [one] => format!("stale: {}", clip(one)),
        [first, rest @ ..] => format!("stale: {} (+{} more)", clip(first), rest.len()),
        [] => state.label(),
    }
}

fn print_table(rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
}

fn explain(session: &Session, graph: &Graph<'_>, name: &str) {
    for planned in graph
        .plan(&session.store)
        .iter()
        .filter(|p| p.name == name || p.kind == name)
    {
        let dir = session.store.artifact_dir(&planned.kind, &planned.key);
        println!("{} (key {}, {})", planned.name, planned.key, dir.display());
        match &planned.state {
            State::Fresh(m) => println!(
                "  fresh: its manifest matches every file; it would not run (built in {:.2} s)",
                m.wall_time_s
            ),
            State::Missing => {
                println!("  missing: no artifact was ever built for this stage; it would run")
            }
            State::Stale(why) => {
                println!("  stale; it would run because:");
                for reason in why {
                    println!("    - {reason}");
                }
            }
        }
        println!("  fingerprint {}", planned.spec.fingerprint);
        for (role, key) in &planned.spec.inputs {
            println!("  input {role}: {key}");
        }
        println!("  params {}", planned.spec.params);
    }
}

fn gc(session: &Session, graph: &Graph<'_>, options: artifacts::GcOptions) -> Result<ExitCode> {
    let mut keep: BTreeSet<(String, artifacts::Key)> = graph
        .plan(&session.store)
        .into_iter()
        .map(|p| (p.kind, p.key))
        .collect();
    for protected in std::iter::once(&session.file_default).chain(session.presets.values()) {
        let pipeline = stages::build(protected, &session.ctx);
        keep.extend(
            pipeline
                .graph()?
                .plan(&session.store)
                .into_iter()
                .map(|p| (p.kind, p.key)),
        );
    }
    let mut report = session.store.gc(&keep, options).context("gc")?;
    on_demand::collect_drawn(&session.store, &mut report, options.dry_run)?;
    let finished = stages::kept::collect_kept(session.store.root(), &keep, options)
        .context("gc: kept SAE points and training states")?;
    report.removed.extend(finished);
    let verb = if options.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for path in &report.removed {
        println!("{verb} {}", path.display());
    }
    for path in &report.kept_in_use {
        println!("kept {} (a running saelab holds it)", path.display());
    }
    let recent = match options.keep_newer_than_s {
        Some(s) => format!(
            "{} built in the last {} day(s) (--older-than, --all)",
            report.kept_recent,
            s / 86_400
        ),
        None => "0 for their age (--all)".to_string(),
    };
    println!(
        "{verb} {} folder(s), {:.1} MB, and {} stale lock file(s); kept {} folder(s): {} reached by this config, the config file or a preset; {recent}; {} in use",
        report.removed.len(),
        report.removed_bytes as f64 / 1e6,
        report.removed_locks,
        report.kept_reached + report.kept_recent + report.kept_in_use.len(),
        report.kept_reached,
        report.kept_in_use.len()
    );
    Ok(ExitCode::SUCCESS)
}

fn verify(session: &Session, graph: &Graph<'_>, all: bool) -> Result<ExitCode> {
    let started = std::time::Instant::now();
    let targets: Vec<(String, artifacts::Key)> = if all {
        let listed = session.store.list().context("verify")?;
        listed
            .into_iter()
            .map(|(kind, key, _)| (kind, key))
            .collect()
    } else {
        let plan = graph.plan(&session.store);
        plan.into_iter().map(|p| (p.kind, p.key)).collect()
    };
    let (mut artifacts, mut files, mut bytes, mut corrupt) = (0, 0, 0u64, 0);
    for (kind, key) in targets {
        match session
            .store
            .check_with(&kind, &key, artifacts::Verify::Digests)
        {
            artifacts::Check::Missing => {}
            artifacts::Check::Fresh(m) => {
                artifacts += 1;
                files += m.files.len();
                bytes += m.files.iter().map(|f| f.size).sum::<u64>();
            }
            artifacts::Check::Invalid(why) => {
                artifacts += 1;
                corrupt += 1;
                println!("CORRUPT {kind}/{key}: {why}");
                if let Err(e) = session.store.invalidate(&kind, &key, &why) {
                    println!("  (cannot mark it stale, the next run may not rebuild it: {e})");
                }
            }
        }
    }
    println!(
        "verified {artifacts} artifact(s), {files} file(s), {:.1} MB in {:.2} s: {corrupt} corrupt",
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(if corrupt > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_set_counts_before_and_after_the_subcommand() {
        let args: Vec<String> = [
            "xtask",
            "--set",
            "a=1",
            "run",
            "x",
            "--set=b=2",
            "--set",
            "c=3",
            "--",
            "--set",
            "d=4",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(super::every_set(&args), ["a=1", "b=2", "c=3"]);
    }

    #[test]
    fn an_error_prints_each_cause_once() {
        // As artifacts' Io error does: the message already holds its source.
        #[derive(Debug)]
        struct WithPath(std::io::Error);
        impl std::fmt::Display for WithPath {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "/store/.locks/mlp.lock: {}", self.0)
            }
        }
        impl std::error::Error for WithPath {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let read_only = std::io::Error::from_raw_os_error(30);
        let error = anyhow::Error::new(WithPath(read_only)).context("cannot build mlp");
        let text = super::describe(&error);
        assert_eq!(
            text,
            format!(
                "cannot build mlp: /store/.locks/mlp.lock: {}",
                std::io::Error::from_raw_os_error(30)
            )
        );
        assert_eq!(text.matches("os error 30").count(), 1, "{text}");
    }
}
