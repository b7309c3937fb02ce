//! The `weft` command.
//!
//! * `weft run` / `weft validate`: a job on an embedded single-process cluster;
//! * `weft serve`: one process of a cluster (process 0 serves the HTTP APIs);
//! * `weft submit`, `jobs`, `cancel`, `regulate`, `audience`, `shutdown`:
//!   clients of a running cluster's control API.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::Value;
use weft_engine::api::client::Client;
use weft_engine::api::{serve, ApiConfig};
use weft_engine::run::{run, summary, validate, RunOptions};
use weft_engine::runtime::{Cluster, ClusterConfig};

/// jemalloc: timely moves buffers between worker threads, and glibc's malloc
/// pays for every cross-thread free (about 15% of the end-to-end benchmark's
/// CPU, see docs/benchmarks.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The control API address `weft serve` listens on, and clients call, by default.
const DEFAULT_HTTP: &str = "127.0.0.1:7070";

/// Weft: an incremental customer-data engine.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a job on an embedded single-process cluster.
    Run {
        /// The job spec (TOML).
        job: PathBuf,
        /// Worker threads.
        #[arg(long, short = 'w', default_value_t = 1)]
        workers: usize,
        /// Do not show progress on stderr.
        #[arg(long)]
        quiet: bool,
    },
    /// Check a job spec without running it.
    Validate {
        /// The job spec (TOML).
        job: PathBuf,
    },
    /// Start one process of a cluster; process 0 serves the HTTP APIs.
    Serve(ServeArgs),
    /// Submit a job to a running cluster.
    Submit {
        /// The job spec (TOML); its relative paths resolve against its directory.
        job: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
    /// List the jobs of a running cluster, or show one in full.
    Jobs {
        /// Show this job only (all of its fields, as JSON).
        id: Option<u64>,
        /// Print the server's JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Drop a job: its sources stop, it drains to its sinks and finishes.
    Cancel {
        /// The job's id.
        id: u64,
        #[command(flatten)]
        remote: Remote,
    },
    /// Apply a regulation (suppress, unsuppress, delete) to a running job.
    Regulate {
        /// The job's id.
        id: u64,
        /// The regulation, e.g. `{"type":"delete","identifier":"email:a@b.c"}`.
        #[arg(long)]
        json: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Add, replace or drop an audience of a running job.
    #[command(subcommand)]
    Audience(AudienceCommand),
    /// Shut a cluster down: every job drains, then every process exits.
    Shutdown {
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// This process's index in --hosts.
    #[arg(long, default_value_t = 0)]
    process: usize,
    /// `host:port` of every process, comma-separated, in process order: where
    /// each listens for the others. Omit for a single process.
    #[arg(long, value_delimiter = ',')]
    hosts: Vec<String>,
    /// Worker threads in this process (every process must use the same number).
    #[arg(long, short = 'w', default_value_t = 1)]
    workers: usize,
    /// Where process 0 serves the HTTP APIs (port 0: any free port).
    #[arg(long, default_value = DEFAULT_HTTP)]
    http: String,
    /// The bearer token of the control API [env: WEFT_TOKEN].
    #[arg(long)]
    token: Option<String>,
}

/// Where the cluster's control API is.
#[derive(Args)]
struct Remote {
    /// The control API of process 0 [env: WEFT_SERVER; default http://127.0.0.1:7070].
    #[arg(long)]
    server: Option<String>,
    /// The bearer token [env: WEFT_TOKEN].
    #[arg(long)]
    token: Option<String>,
}

impl Remote {
    fn client(self) -> anyhow::Result<Client> {
        let server = self
            .server
            .or_else(|| std::env::var("WEFT_SERVER").ok())
            .unwrap_or_else(|| format!("http://{DEFAULT_HTTP}"));
        Client::new(&server, self.token.or_else(env_token))
    }
}

#[derive(Subcommand)]
enum AudienceCommand {
    /// Add an audience (or computed trait) to a running job, or replace the one of that name.
    Add {
        /// The job's id.
        id: u64,
        /// The audience's name.
        #[arg(long)]
        name: String,
        /// Its condition, in the audience query language (docs/audiences.md).
        #[arg(long)]
        query: String,
        /// The name its memberships carry in outputs (default: the name).
        #[arg(long)]
        key: Option<String>,
        /// A computed trait (the query is an aggregate) rather than an audience.
        #[arg(long = "trait")]
        computed_trait: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Drop an audience (or computed trait) of a running job.
    Drop {
        /// The job's id.
        id: u64,
        /// The audience's name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
}

fn env_token() -> Option<String> {
    std::env::var("WEFT_TOKEN").ok().filter(|t| !t.is_empty())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { job } => validate_command(&job),
        Command::Run {
            job,
            workers,
            quiet,
        } => run_command(&job, workers, quiet),
        Command::Serve(args) => match serve_command(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
        other => match client_command(other) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}

fn validate_command(job: &Path) -> ExitCode {
    match validate(job) {
        Ok((spec, warnings)) => {
            for w in warnings {
                eprintln!("warning: {w}");
            }
            println!(
                "{}: ok (job {}, {} source(s), {} sink(s))",
                job.display(),
                spec.job.name,
                spec.sources.len(),
                spec.sinks.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run_command(job: &Path, workers: usize, quiet: bool) -> ExitCode {
    let (spec, warnings) = match validate(job) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    for w in warnings {
        eprintln!("warning: {w}");
    }
    let interrupt = Arc::new(AtomicBool::new(false));
    let flag = interrupt.clone();
    if let Err(e) = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::Relaxed) {
            // A second Ctrl-C stops at once.
            std::process::exit(130);
        }
    }) {
        eprintln!("warning: cannot install the Ctrl-C handler: {e}");
    }
    match run(
        &spec,
        &RunOptions {
            workers,
            progress: !quiet,
        },
        interrupt,
    ) {
        Ok(report) => {
            eprint!("{}", summary(&report));
            if report.errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `weft serve`: start this process; process 0 serves the APIs until a
/// shutdown is requested (signal or `POST /v1/shutdown`), then drains every
/// job; the other processes run until process 0 shuts the cluster down.
fn serve_command(args: ServeArgs) -> anyhow::Result<()> {
    let ServeArgs {
        process,
        hosts,
        workers,
        http,
        token,
    } = args;
    let config = ClusterConfig {
        workers,
        process,
        addresses: hosts,
    };
    let processes = config.processes();
    if processes > 1 {
        eprintln!(
            "weft: process {process} of {processes} ({workers} worker(s)) connecting to {}",
            config.addresses.join(", ")
        );
    }
    let cluster = Arc::new(Cluster::start(config)?);
    eprintln!("weft: process {process} of {processes} running ({workers} worker(s))");
    watch_signals(cluster.clone());
    if process != 0 {
        // Runs until process 0 shuts the cluster down.
        return cluster.wait();
    }
    let token = token.or_else(env_token);
    if token.is_none() {
        eprintln!("warning: no --token or WEFT_TOKEN: the control API is open to local users");
    }
    let server = serve(
        ApiConfig {
            listen: http,
            token,
        },
        cluster.clone(),
    )?;
    eprintln!(
        "weft: control API listening on http://{}",
        server.local_addr()
    );
    while !cluster.shutdown_requested(Duration::from_secs(1)) {}
    eprintln!("weft: shutting down: draining every job");
    // The API stays up while jobs drain (status can be polled), then stops.
    let result = cluster.shutdown();
    server.stop();
    eprintln!("weft: stopped");
    result
}

/// SIGINT / SIGTERM: the first asks for a shutdown (process 0) or explains
/// (other processes); the second exits at once.
fn watch_signals(cluster: Arc<Cluster>) {
    let spawned = std::thread::Builder::new()
        .name("weft-signals".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("warning: cannot watch for signals: {e}");
                    return;
                }
            };
            runtime.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let mut term = match signal(SignalKind::terminate()) {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!("warning: cannot watch for SIGTERM: {e}");
                        return;
                    }
                };
                let mut received = 0;
                loop {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                    received += 1;
                    if received > 1 {
                        std::process::exit(130);
                    }
                    if cluster.process() == 0 {
                        cluster.request_shutdown();
                    } else {
                        eprintln!(
                            "weft: process {} stops when process 0 shuts the cluster down \
                             (`weft shutdown`, or a signal to process 0); signal again to exit now \
                             (the cluster then fails)",
                            cluster.process()
                        );
                    }
                }
            });
        });
    if let Err(e) = spawned {
        eprintln!("warning: cannot watch for signals: {e}");
    }
}

/// The commands that talk to a running cluster.
fn client_command(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Submit { job, remote } => {
            let text = std::fs::read_to_string(&job)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", job.display()))?;
            let parent = job.parent().filter(|p| !p.as_os_str().is_empty());
            let dir = std::path::absolute(parent.unwrap_or(Path::new(".")))?;
            let answer = remote.client()?.submit(&text, Some(&dir))?;
            for w in answer["warnings"].as_array().into_iter().flatten() {
                eprintln!("warning: {}", w.as_str().unwrap_or_default());
            }
            println!(
                "submitted job {} as {}",
                answer["name"].as_str().unwrap_or("?"),
                answer["id"]
            );
        }
        Command::Jobs { id, json, remote } => {
            let client = remote.client()?;
            match id {
                Some(id) => println!("{}", serde_json::to_string_pretty(&client.job(id)?)?),
                None if json => println!("{}", serde_json::to_string_pretty(&client.jobs()?)?),
                None => print!("{}", jobs_table(&client.jobs()?)),
            }
        }
        Command::Cancel { id, remote } => {
            let answer = remote.client()?.cancel(id)?;
            println!("job {id}: {}", answer["status"].as_str().unwrap_or("?"));
        }
        Command::Regulate { id, json, remote } => {
            let answer = remote.client()?.regulate(id, &json)?;
            println!(
                "regulation {} appended to job {id}'s log",
                answer["id"].as_str().unwrap_or("?")
            );
        }
        Command::Audience(AudienceCommand::Add {
            id,
            name,
            query,
            key,
            computed_trait,
            remote,
        }) => {
            let kind = if computed_trait { "trait" } else { "audience" };
            let mut definition = serde_json::json!({ "name": name, "query": query, "kind": kind });
            if let Some(k) = key {
                definition["key"] = Value::from(k);
            }
            let answer = remote.client()?.audience_add(id, &definition)?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
        }
        Command::Audience(AudienceCommand::Drop { id, name, remote }) => {
            let answer = remote.client()?.audience_drop(id, &name)?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
        }
        Command::Shutdown { remote } => {
            remote.client()?.shutdown()?;
            println!("the cluster is shutting down (every job drains first)");
        }
        Command::Run { .. } | Command::Validate { .. } | Command::Serve(_) => {
            unreachable!("handled in main")
        }
    }
    Ok(())
}

/// `weft jobs`: one line per job.
fn jobs_table(answer: &Value) -> String {
    let mut out = format!(
        "{:>4}  {:<24} {:<9} {:>12} {:>10} {:>10} {:>12} {:>6}\n",
        "ID", "NAME", "STATUS", "RECORDS", "REJECTED", "EVENTS/S", "CHANGES", "ERRORS"
    );
    for j in answer["jobs"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:>4}  {:<24} {:<9} {:>12} {:>10} {:>10.0} {:>12} {:>6}\n",
            j["id"].as_u64().unwrap_or(0),
            j["name"].as_str().unwrap_or("?"),
            j["status"].as_str().unwrap_or("?"),
            j["records"].as_u64().unwrap_or(0),
            j["rejected"].as_u64().unwrap_or(0),
            j["events_per_second"].as_f64().unwrap_or(0.0),
            j["sink_changes"].as_u64().unwrap_or(0),
            j["errors"].as_array().map_or(0, Vec::len),
        ));
    }
    out
}
