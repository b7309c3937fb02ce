//! `GET /metrics`: the cluster's metrics in the Prometheus text format
//! (version 0.0.4), no auth.
//!
//! Served by process 0, cluster-wide: counters of other processes arrive
//! through the runtime's telemetry (at most [`crate::runtime::TELEMETRY_INTERVAL`]
//! old). Every job series carries `job` (its name) and `id` labels; source
//! series add `source`, sink series `sink`. Counters count from the job's
//! submission (a resubmitted job starts again from 0 under a new `id`).
//! The list of series, with units, is in `docs/operations.md`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::runtime::{Cluster, JobReport, JobStatus, HISTOGRAM_BOUNDS};

/// `/metrics` and `/healthz` (open: no token).
pub fn routes(cluster: Arc<Cluster>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(
                |axum::extract::State(c): axum::extract::State<Arc<Cluster>>| async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        render(&c),
                    )
                        .into_response()
                },
            ),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(cluster)
}

/// The kind of a metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Samples grouped by family (HELP and TYPE once each), in first-seen order.
#[derive(Default)]
struct Exposition {
    families: Vec<(String, Kind, String, String)>,
    index: HashMap<String, usize>,
}

impl Exposition {
    /// Adds one sample of family `name` (`suffix` for histogram parts).
    fn sample(
        &mut self,
        (name, kind, help): (&str, Kind, &str),
        suffix: &str,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        let i = *self.index.entry(name.to_string()).or_insert_with(|| {
            self.families
                .push((name.to_string(), kind, help.to_string(), String::new()));
            self.families.len() - 1
        });
        let out = &mut self.families[i].3;
        out.push_str(name);
        out.push_str(suffix);
        if !labels.is_empty() {
            out.push('{');
            for (n, (k, v)) in labels.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{k}=\"{}\"", escape_label(v));
            }
            out.push('}');
        }
        let _ = writeln!(out, " {}", format_value(value));
    }

    fn render(self) -> String {
        let mut out = String::new();
        for (name, kind, help, samples) in self.families {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {}", kind.as_str());
            out.push_str(&samples);
        }
        out
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn format_value(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{v}")
    }
}

/// A metric family: name, kind, help.
type Family = (&'static str, Kind, &'static str);

const UPTIME: Family = (
    "weft_process_uptime_seconds",
    Kind::Gauge,
    "Seconds since this process started its workers.",
);
const PROCESSES: Family = (
    "weft_cluster_processes",
    Kind::Gauge,
    "Processes in the cluster.",
);
const WORKERS: Family = (
    "weft_cluster_workers",
    Kind::Gauge,
    "Worker threads in the cluster (all processes).",
);
const JOBS: Family = ("weft_jobs", Kind::Gauge, "Jobs by status.");
const JOB_INFO: Family = (
    "weft_job_info",
    Kind::Gauge,
    "1 for every job, with its status as a label.",
);
const JOB_RECORDS: Family = (
    "weft_job_records_total",
    Kind::Counter,
    "Records read by the job's sources (valid or not).",
);
const JOB_REJECTED: Family = (
    "weft_job_rejected_total",
    Kind::Counter,
    "Records that failed validation (to the errors output).",
);
const JOB_DEDUPLICATED: Family = (
    "weft_job_deduplicated_total",
    Kind::Counter,
    "Valid events dropped as retried duplicates (same messageId within the window).",
);
const JOB_LATE: Family = (
    "weft_job_dedupe_late_total",
    Kind::Counter,
    "Events that arrived after their dedupe window had closed.",
);
const JOB_DEDUPE_KEYS: Family = (
    "weft_job_dedupe_keys",
    Kind::Gauge,
    "messageId fingerprints the dedupe state holds.",
);
const JOB_DEDUPE_BYTES: Family = (
    "weft_job_dedupe_bytes",
    Kind::Gauge,
    "Bytes of dedupe state in memory.",
);
const JOB_CHANGES: Family = (
    "weft_job_sink_changes_total",
    Kind::Counter,
    "Changes handed to all of the job's sinks.",
);
const JOB_RATE: Family = (
    "weft_job_events_per_second",
    Kind::Gauge,
    "Records read per second over the last second.",
);
const JOB_ERRORS: Family = (
    "weft_job_errors",
    Kind::Gauge,
    "Problems the job met (failed sinks, unreadable inputs); see GET /v1/jobs/{id}.",
);
const JOB_FRONTIER: Family = (
    "weft_job_frontier_ms",
    Kind::Gauge,
    "The job's output frontier: the least logical time (ms) its sinks may still receive changes at; absent once complete.",
);
const SOURCE_RECORDS: Family = (
    "weft_source_records_total",
    Kind::Counter,
    "Records read by a source (valid or not).",
);
const SOURCE_REJECTED: Family = (
    "weft_source_rejected_total",
    Kind::Counter,
    "Records of a source that failed validation.",
);
const SOURCE_CONSUMED: Family = (
    "weft_source_consumed_total",
    Kind::Counter,
    "Units a source consumed: bytes for files, offsets for Kafka.",
);
const SOURCE_LAG: Family = (
    "weft_source_lag",
    Kind::Gauge,
    "Units of a source not consumed yet: bytes of files; for Kafka, the consumer lag (high watermarks minus the next offsets to read, refreshed every 5 s).",
);
const SINK_CHANGES: Family = (
    "weft_sink_changes_total",
    Kind::Counter,
    "Changes handed to a sink.",
);
const SINK_COMMITS: Family = ("weft_sink_commits_total", Kind::Counter, "Sink commits.");
const SINK_FRONTIER: Family = (
    "weft_sink_frontier_ms",
    Kind::Gauge,
    "The frontier a sink last committed (logical ms): everything before it is durable; absent once complete.",
);
const SINK_FAILED: Family = (
    "weft_sink_failed",
    Kind::Gauge,
    "1 when the sink failed and its further output is discarded.",
);
const SINK_COMMIT_SECONDS: Family = (
    "weft_sink_commit_seconds",
    Kind::Histogram,
    "How long a sink's commit took (it runs on worker 0: long commits stall the job).",
);

/// Renders every metric of the cluster.
pub fn render(cluster: &Cluster) -> String {
    let shared = cluster.shared();
    let mut x = Exposition::default();
    x.sample(UPTIME, "", &[], shared.started.elapsed().as_secs_f64());
    x.sample(PROCESSES, "", &[], shared.processes as f64);
    x.sample(WORKERS, "", &[], shared.peers as f64);
    let reports = cluster.reports();
    for status in [
        JobStatus::Starting,
        JobStatus::Running,
        JobStatus::Draining,
        JobStatus::Finished,
    ] {
        let n = reports.iter().filter(|r| r.status == status).count();
        x.sample(JOBS, "", &[("status", status.as_str())], n as f64);
    }
    for r in &reports {
        job_samples(&mut x, r);
    }
    x.render()
}

fn job_samples(x: &mut Exposition, r: &JobReport) {
    let id = r.id.to_string();
    let job = [("job", r.name.as_str()), ("id", id.as_str())];
    let with_status = [
        ("job", r.name.as_str()),
        ("id", id.as_str()),
        ("status", r.status.as_str()),
    ];
    x.sample(JOB_INFO, "", &with_status, 1.0);
    x.sample(JOB_RECORDS, "", &job, r.records as f64);
    x.sample(JOB_REJECTED, "", &job, r.rejected as f64);
    x.sample(
        JOB_DEDUPLICATED,
        "",
        &job,
        r.dedupe.dropped_duplicates as f64,
    );
    x.sample(JOB_LATE, "", &job, r.dedupe.late as f64);
    x.sample(JOB_DEDUPE_KEYS, "", &job, r.dedupe.keys_held as f64);
    x.sample(JOB_DEDUPE_BYTES, "", &job, r.dedupe.bytes_held as f64);
    x.sample(JOB_CHANGES, "", &job, r.sink_lines as f64);
    x.sample(JOB_RATE, "", &job, r.rate);
    x.sample(JOB_ERRORS, "", &job, r.errors.len() as f64);
    if let Some(f) = r.sinks.values().filter_map(|s| s.frontier).min() {
        x.sample(JOB_FRONTIER, "", &job, f as f64);
    }
    for (name, s) in &r.sources {
        let labels = [
            ("job", job[0].1),
            ("id", job[1].1),
            ("source", name.as_str()),
        ];
        x.sample(SOURCE_RECORDS, "", &labels, s.records as f64);
        x.sample(SOURCE_REJECTED, "", &labels, s.rejected as f64);
        x.sample(SOURCE_CONSUMED, "", &labels, s.consumed as f64);
        if let Some(lag) = s.lag() {
            x.sample(SOURCE_LAG, "", &labels, lag as f64);
        }
    }
    for (name, s) in &r.sinks {
        let labels = [("job", job[0].1), ("id", job[1].1), ("sink", name.as_str())];
        x.sample(SINK_CHANGES, "", &labels, s.changes as f64);
        x.sample(SINK_COMMITS, "", &labels, s.commits as f64);
        if let Some(f) = s.frontier {
            x.sample(SINK_FRONTIER, "", &labels, f as f64);
        }
        x.sample(SINK_FAILED, "", &labels, f64::from(u8::from(s.failed)));
        let h = &s.commit_seconds;
        for (i, n) in h.cumulative.iter().enumerate() {
            let le = HISTOGRAM_BOUNDS
                .get(i)
                .map(|b| format!("{b}"))
                .unwrap_or_else(|| "+Inf".to_string());
            let with_le = [
                ("job", job[0].1),
                ("id", job[1].1),
                ("sink", name.as_str()),
                ("le", le.as_str()),
            ];
            x.sample(SINK_COMMIT_SECONDS, "_bucket", &with_le, *n as f64);
        }
        x.sample(SINK_COMMIT_SECONDS, "_sum", &labels, h.sum_seconds);
        x.sample(SINK_COMMIT_SECONDS, "_count", &labels, h.count as f64);
        for (metric, value) in &s.delivery {
            let family = format!("weft_sink_{}", metric_name(metric));
            let help = format!("The sink's own delivery metric `{metric}`.");
            x.sample(
                (family.as_str(), Kind::Gauge, help.as_str()),
                "",
                &labels,
                *value,
            );
        }
    }
}

/// `metric` with every character Prometheus does not allow in a name replaced by `_`.
fn metric_name(metric: &str) -> String {
    metric
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_declared_once_and_labels_escaped() {
        let mut x = Exposition::default();
        x.sample(JOB_RECORDS, "", &[("job", "a\"b\\c\nd")], 3.0);
        x.sample(JOB_RECORDS, "", &[("job", "e")], 0.5);
        x.sample(UPTIME, "", &[], f64::INFINITY);
        let text = x.render();
        assert_eq!(
            text,
            "# HELP weft_job_records_total Records read by the job's sources (valid or not).\n\
             # TYPE weft_job_records_total counter\n\
             weft_job_records_total{job=\"a\\\"b\\\\c\\nd\"} 3\n\
             weft_job_records_total{job=\"e\"} 0.5\n\
             # HELP weft_process_uptime_seconds Seconds since this process started its workers.\n\
             # TYPE weft_process_uptime_seconds gauge\n\
             weft_process_uptime_seconds +Inf\n"
        );
    }
}
