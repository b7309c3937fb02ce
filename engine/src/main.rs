//! The `weft` command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::{Parser, Subcommand};
use weft_engine::run::{run, summary, validate, RunOptions};

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
        Command::Validate { job } => match validate(&job) {
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
        },
        Command::Run {
            job,
            workers,
            quiet,
        } => {
            let (spec, warnings) = match validate(&job) {
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
    }
}
