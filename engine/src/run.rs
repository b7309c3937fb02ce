//! `weft run` and `weft validate`.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_connectors::kafka::validate_options;
use weft_dataflows::record::CountKey;
use weft_dataflows::spec::{JobSpec, SinkSpec, SourceSpec};

use crate::job::{lake_config, warehouse_config, webhook_config};
use crate::runtime::{Cluster, ClusterConfig, JobReport, JobStatus};

/// Loads and validates a spec; returns it with a list of warnings.
pub fn validate(path: &Path) -> anyhow::Result<(JobSpec, Vec<String>)> {
    check_environment(JobSpec::load(path)?)
}

/// Validates a spec given as TOML text (a submission to the control API),
/// resolving relative paths against `base`, as [`validate`] does a file's.
pub fn validate_toml(text: &str, base: &Path) -> anyhow::Result<(JobSpec, Vec<String>)> {
    let mut spec = JobSpec::from_toml(text)?;
    spec.validate()?;
    spec.resolve_paths(base);
    check_environment(spec)
}

/// Checks what a spec needs from its environment (input files, brokers,
/// client options); returns it with a list of warnings.
pub fn check_environment(spec: JobSpec) -> anyhow::Result<(JobSpec, Vec<String>)> {
    let warnings = Vec::new();
    for s in &spec.sources {
        match s {
            SourceSpec::File { name, path, .. } => {
                if !path.is_file() {
                    anyhow::bail!("source {name}: file {} does not exist", path.display());
                }
            }
            SourceSpec::Kafka {
                name,
                brokers,
                options,
                ..
            } => {
                if brokers.as_deref().is_none_or(|b| b.trim().is_empty()) {
                    anyhow::bail!("source {name}: no brokers; set `brokers` or the KAFKA_BROKERS environment variable");
                }
                validate_options(options).map_err(|e| anyhow::anyhow!("source {name}: {e}"))?;
            }
            SourceSpec::Http {
                name,
                topic: Some(_),
                brokers,
                options,
                ..
            } => {
                if brokers.as_deref().is_none_or(|b| b.trim().is_empty()) {
                    anyhow::bail!("source {name}: a topic but no brokers; set `brokers` or the KAFKA_BROKERS environment variable");
                }
                validate_options(options).map_err(|e| anyhow::anyhow!("source {name}: {e}"))?;
            }
            SourceSpec::Http { topic: None, .. } => {}
        }
    }
    for s in &spec.sinks {
        match s {
            SinkSpec::Kafka {
                name,
                brokers,
                options,
                ..
            } => {
                if brokers.as_deref().is_none_or(|b| b.trim().is_empty()) {
                    anyhow::bail!("sink {name}: no brokers; set `brokers` or the KAFKA_BROKERS environment variable");
                }
                validate_options(options).map_err(|e| anyhow::anyhow!("sink {name}: {e}"))?;
            }
            // The same settings the job opens the sink with (without connecting).
            SinkSpec::Webhook(w) => {
                let state = spec.job.state_dir.clone().unwrap_or_default();
                webhook_config(w, &state).validate()?;
            }
            SinkSpec::Postgres(p) => {
                warehouse_config(p)
                    .map_err(|e| anyhow::anyhow!("sink {}: {e}", p.name))?
                    .validate()?;
            }
            SinkSpec::Lake(l) => {
                lake_config(l)
                    .validate()
                    .map_err(|e| anyhow::anyhow!("sink {}: {e}", l.name))?;
            }
            SinkSpec::File { .. } | SinkSpec::Stdout { .. } => {}
        }
    }
    Ok((spec, warnings))
}

/// Options of `weft run`.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Worker threads.
    pub workers: usize,
    /// Show progress on stderr.
    pub progress: bool,
}

/// Runs a job on an embedded cluster until its bounded sources are exhausted,
/// or until `interrupt` is set (then the job drains and stops cleanly).
pub fn run(
    spec: &JobSpec,
    options: &RunOptions,
    interrupt: Arc<AtomicBool>,
) -> anyhow::Result<JobReport> {
    let cluster = Cluster::start(ClusterConfig::single(options.workers))?;
    let id = cluster.submit(spec)?;
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut last_print = Instant::now();
    let mut last_records = 0u64;
    let mut dropped = false;
    let mut progress_shown = false;
    let report = loop {
        std::thread::sleep(Duration::from_millis(50));
        let report = cluster.report(id).expect("the job is registered");
        if report.status == JobStatus::Finished {
            break report;
        }
        if interrupt.load(Ordering::Relaxed) && !dropped {
            eprintln!(
                "\ninterrupted: stopping sources and draining {}",
                spec.job.name
            );
            cluster.drop_job(id)?;
            dropped = true;
        }
        let every = if tty {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(10)
        };
        if options.progress
            && last_print.elapsed() >= every
            && started.elapsed() >= Duration::from_secs(1)
        {
            let rate = (report.records - last_records) as f64 / last_print.elapsed().as_secs_f64();
            let lag = report.total.saturating_sub(report.consumed);
            let pct = if report.total > 0 {
                100.0 * report.consumed as f64 / report.total as f64
            } else {
                0.0
            };
            let line = format!(
                "{}: {} records, {}/s, {:.0}% read, lag {}",
                report.name,
                human(report.records as f64),
                human(rate),
                pct,
                human_bytes(lag)
            );
            if tty {
                eprint!("\r{line}\x1b[K");
            } else {
                eprintln!("{line}");
            }
            let _ = std::io::stderr().flush();
            progress_shown = true;
            last_print = Instant::now();
            last_records = report.records;
        }
    };
    if progress_shown && tty {
        eprintln!();
    }
    cluster.shutdown()?;
    Ok(report)
}

/// Formats a report as the end-of-run summary.
pub fn summary(report: &JobReport) -> String {
    let secs = report.elapsed.as_secs_f64().max(1e-9);
    let mut s = format!(
        "job {} finished in {:.2}s: {} records ({:.0} records/s, {}/s), {} valid, {} rejected, {} changes written\n",
        report.name,
        secs,
        report.records,
        report.records as f64 / secs,
        human_bytes((report.consumed as f64 / secs) as u64),
        report.records - report.rejected,
        report.rejected,
        report.sink_lines,
    );
    let d = &report.dedupe;
    if d.passed + d.dropped_duplicates + d.late > 0 {
        s.push_str(&format!(
            "  dedupe: {} passed, {} duplicates dropped, {} late ({} dropped), {} keys held ({})\n",
            d.passed,
            d.dropped_duplicates,
            d.late,
            d.dropped_late,
            d.keys_held,
            human_bytes(d.bytes_held)
        ));
    }
    let section = |s: &mut String, title: &str, rows: Vec<(String, isize)>| {
        if !rows.is_empty() {
            s.push_str(&format!("  {title}:\n"));
            for (k, v) in rows {
                s.push_str(&format!("    {k:<32} {v:>12}\n"));
            }
        }
    };
    let mut types = Vec::new();
    let mut events = Vec::new();
    let mut rejected = Vec::new();
    for (k, v) in &report.counts {
        match k {
            CountKey::Type(t) => types.push((t.to_string(), *v)),
            CountKey::TrackEvent(e) => events.push((e.to_string(), *v)),
            CountKey::Rejected(r) => rejected.push((r.to_string(), *v)),
            CountKey::Duplicate => rejected.push(("duplicate (dropped)".to_string(), *v)),
        }
    }
    events.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    events.truncate(15);
    section(&mut s, "events by type", types);
    section(&mut s, "top track events", events);
    section(&mut s, "rejected or dropped", rejected);
    for e in &report.errors {
        s.push_str(&format!("  error: {e}\n"));
    }
    s
}

fn human(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn human_bytes(x: u64) -> String {
    let x = x as f64;
    if x >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", x / (1u64 << 30) as f64)
    } else if x >= (1 << 20) as f64 {
        format!("{:.1} MiB", x / (1 << 20) as f64)
    } else if x >= 1024.0 {
        format!("{:.1} KiB", x / 1024.0)
    } else {
        format!("{x:.0} B")
    }
}
