//! The control API: submit, list, inspect and drop jobs, apply regulations,
//! shut the cluster down. See `docs/operations.md` and `docs/openapi.yaml`.
//!
//! | method and path                     | does                                         | answers |
//! |-------------------------------------|----------------------------------------------|---------|
//! | `POST /v1/jobs[?dir=D]`             | validate a TOML spec and install it          | 201 `{"id","name","warnings"}` |
//! | `GET /v1/jobs`                      | every job with status and counters           | 200 `{"jobs":[…]}` |
//! | `GET /v1/jobs/{id}`                 | one job, with its final counts once finished | 200 |
//! | `DELETE /v1/jobs/{id}`              | stop its sources; it drains and finishes     | 202 `{"id","status"}` |
//! | `POST /v1/jobs/{id}/regulations`    | append a regulation to the job's log         | 202 `{"id","job"}` |
//! | `GET /v1/cluster`                   | processes, workers, uptime                   | 200 |
//! | `POST /v1/shutdown`                 | drain every job and stop every process       | 202 |
//!
//! A submission is accepted once it is validated and sequenced to the
//! workers: `201` means every worker will build it, not that it has
//! started reading; poll `GET /v1/jobs/{id}` for `running`. A regulation's
//! `202` means its line is durable in the regulation log (fsync'd); the
//! job applies it when its worker 0 next polls the log (every 10 ms), and
//! the audit log records when it was applied and when each sink committed.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::ApiError;
use crate::run::validate_toml;
use crate::runtime::{Cluster, JobId, JobReport, JobStatus};

/// The control API's routes (without auth: [`super::router`] adds it).
pub fn routes(cluster: Arc<Cluster>) -> Router {
    Router::new()
        .route("/v1/jobs", get(list_jobs).post(submit_job))
        .route("/v1/jobs/{id}", get(get_job).delete(drop_job))
        .route("/v1/jobs/{id}/regulations", post(regulate))
        .route("/v1/cluster", get(cluster_info))
        .route("/v1/shutdown", post(shutdown))
        .with_state(cluster)
}

/// The query of `POST /v1/jobs`.
#[derive(Debug, Deserialize)]
struct SubmitQuery {
    /// Directory that relative paths in the spec are resolved against
    /// (itself relative to the server's working directory); default: the
    /// server's working directory.
    dir: Option<String>,
}

async fn submit_job(
    State(cluster): State<Arc<Cluster>>,
    query: Result<Query<SubmitQuery>, QueryRejection>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let text = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::bad_request("the job spec is not UTF-8 text"))?;
    let cwd = std::env::current_dir().map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the server has no working directory: {e}"),
        )
    })?;
    let base = match query.dir {
        Some(d) => cwd.join(PathBuf::from(d)),
        None => cwd,
    };
    // Validation looks at the file system (input files): off the async threads.
    let (spec, warnings) = tokio::task::spawn_blocking(move || validate_toml(&text, &base))
        .await
        .map_err(internal)?
        .map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
    let id = cluster.submit(&spec)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": id, "name": spec.job.name, "warnings": warnings })),
    ))
}

async fn list_jobs(State(cluster): State<Arc<Cluster>>) -> Json<Value> {
    let jobs: Vec<Value> = cluster
        .reports()
        .iter()
        .map(|r| job_json(r, cluster.shared().peers, false))
        .collect();
    Json(json!({ "jobs": jobs }))
}

async fn get_job(
    State(cluster): State<Arc<Cluster>>,
    id: Result<Path<JobId>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = job_id(id)?;
    let report = cluster
        .report(id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no job {id}")))?;
    Ok(Json(job_json(&report, cluster.shared().peers, true)))
}

async fn drop_job(
    State(cluster): State<Arc<Cluster>>,
    id: Result<Path<JobId>, PathRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = job_id(id)?;
    cluster.drop_job(id)?;
    let status = cluster
        .report(id)
        .map(|r| match r.status {
            JobStatus::Finished => "finished",
            _ => "draining",
        })
        .unwrap_or("draining");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "id": id, "status": status })),
    ))
}

async fn regulate(
    State(cluster): State<Arc<Cluster>>,
    id: Result<Path<JobId>, PathRejection>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = job_id(id)?;
    let text = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::bad_request("the regulation is not UTF-8 text"))?;
    // The append is fsync'd: off the async threads.
    let c = cluster.clone();
    let regulation = tokio::task::spawn_blocking(move || c.append_regulation(id, &text))
        .await
        .map_err(internal)??;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "id": regulation, "job": id })),
    ))
}

async fn cluster_info(State(cluster): State<Arc<Cluster>>) -> Json<Value> {
    let s = cluster.shared();
    let jobs = s.jobs.lock().expect("job registry lock").len();
    Json(json!({
        "process": s.process,
        "processes": s.processes,
        "workers_per_process": s.workers,
        "workers": s.peers,
        "uptime_seconds": s.started.elapsed().as_secs_f64(),
        "jobs": jobs,
    }))
}

async fn shutdown(State(cluster): State<Arc<Cluster>>) -> (StatusCode, Json<Value>) {
    tracing::info!("shutdown requested over the control API");
    cluster.request_shutdown();
    (
        StatusCode::ACCEPTED,
        Json(json!({ "status": "shutting down" })),
    )
}

fn job_id(id: Result<Path<JobId>, PathRejection>) -> Result<JobId, ApiError> {
    id.map(|Path(id)| id)
        .map_err(|e| ApiError::bad_request(format!("bad job id: {}", e.body_text())))
}

fn internal(e: tokio::task::JoinError) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("the request failed: {e}"),
    )
}

/// A job as the API shows it; `detail` adds the final counts.
pub fn job_json(r: &JobReport, peers: usize, detail: bool) -> Value {
    let secs = r.elapsed.as_secs_f64();
    let sources: serde_json::Map<String, Value> = r
        .sources
        .iter()
        .map(|(name, s)| {
            (
                name.clone(),
                json!({
                    "records": s.records,
                    "rejected": s.rejected,
                    "consumed": s.consumed,
                    "lag": s.lag(),
                }),
            )
        })
        .collect();
    let sinks: serde_json::Map<String, Value> = r
        .sinks
        .iter()
        .map(|(name, s)| {
            (
                name.clone(),
                json!({
                    "changes": s.changes,
                    "commits": s.commits,
                    "frontier": s.frontier,
                    "failed": s.failed,
                }),
            )
        })
        .collect();
    let d = &r.dedupe;
    let mut job = json!({
        "id": r.id,
        "name": r.name,
        "status": r.status.as_str(),
        "records": r.records,
        "rejected": r.rejected,
        "deduplicated": d.dropped_duplicates,
        "events_per_second": if r.status == JobStatus::Finished {
            r.records as f64 / secs.max(1e-9)
        } else {
            r.rate
        },
        "sink_changes": r.sink_lines,
        "elapsed_seconds": secs,
        "workers": { "built": r.workers.0, "completed": r.workers.1, "total": peers },
        "sources": sources,
        "sinks": sinks,
        "errors": r.errors,
    });
    if detail {
        let counts: Vec<Value> = r
            .counts
            .iter()
            .map(|(k, n)| {
                let (metric, key) = k.parts();
                json!({ "metric": metric, "key": key, "count": n })
            })
            .collect();
        job["counts"] = Value::from(counts);
        job["dedupe"] = json!({
            "passed": d.passed,
            "dropped_duplicates": d.dropped_duplicates,
            "late": d.late,
            "dropped_late": d.dropped_late,
            "keys_held": d.keys_held,
            "bytes_held": d.bytes_held,
        });
    }
    job
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use reqwest::blocking::Client as Http;
    use reqwest::Method;

    use super::*;
    use crate::api::{serve, ApiConfig, ApiServer};
    use crate::runtime::ClusterConfig;

    const TOKEN: &str = "router-test-token";

    fn start() -> (Arc<Cluster>, ApiServer, String) {
        let cluster = Arc::new(Cluster::start(ClusterConfig::single(2)).unwrap());
        let server = serve(
            ApiConfig {
                listen: "127.0.0.1:0".into(),
                token: Some(TOKEN.into()),
            },
            cluster.clone(),
        )
        .unwrap();
        let base = format!("http://{}", server.local_addr());
        (cluster, server, base)
    }

    fn call(method: Method, url: &str, token: Option<&str>, body: &[u8]) -> (u16, Value) {
        let mut r = Http::new().request(method, url).body(body.to_vec());
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let resp = r.send().unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, json)
    }

    const EVENT: &str =
        r#"{"type":"track","event":"Viewed","userId":"u1","timestamp":"2026-01-01T00:00:00Z"}"#;

    fn job(name: &str, extra: &str) -> String {
        format!(
            "[job]\nname = \"{name}\"\n[[sources]]\ntype = \"file\"\nname = \"events\"\npath = \"events.jsonl\"\n\
             [[sinks]]\ntype = \"file\"\nname = \"counts\"\noutput = \"counts\"\npath = \"out/{name}.jsonl\"\n{extra}"
        )
    }

    fn wait_finished(base: &str, id: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (status, job) = call(
                Method::GET,
                &format!("{base}/v1/jobs/{id}"),
                Some(TOKEN),
                b"",
            );
            assert_eq!(status, 200, "{job}");
            if job["status"] == "finished" {
                return job;
            }
            assert!(Instant::now() < deadline, "job {id} did not finish: {job}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn the_router_authenticates_validates_and_runs_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let mut events = String::new();
        for i in 0..50 {
            let event = EVENT.replace("u1", &format!("u{}", i % 7));
            events.push_str(&event.replace("{", &format!("{{\"messageId\":\"m{i}\",")));
            events.push('\n');
        }
        events.push_str("not json\n");
        std::fs::write(dir.path().join("events.jsonl"), events).unwrap();
        let (cluster, server, base) = start();
        let jobs = format!("{base}/v1/jobs");
        let submit = format!("{jobs}?dir={}", dir.path().display());

        // Auth: the control API needs the token, metrics and health do not.
        for token in [None, Some("wrong")] {
            let (status, body) = call(Method::GET, &jobs, token, b"");
            assert_eq!(status, 401, "{body}");
            assert!(body["error"].is_string(), "{body}");
            let (status, _) = call(Method::POST, &submit, token, job("a", "").as_bytes());
            assert_eq!(status, 401);
        }
        assert_eq!(
            call(Method::GET, &format!("{base}/healthz"), None, b"").0,
            200
        );
        assert_eq!(
            call(Method::GET, &format!("{base}/metrics"), None, b"").0,
            200
        );
        let (status, body) = call(Method::GET, &format!("{base}/nope"), Some(TOKEN), b"");
        assert_eq!(
            (status, body["error"].as_str()),
            (404, Some("no such endpoint"))
        );

        // Malformed input: 400 with a reason.
        let missing = job("a", "").replace("events.jsonl", "missing.jsonl");
        let bad: [(&[u8], &str); 4] = [
            (b"[job", "TOML"),
            (b"\xff\xfe", "UTF-8"),
            (b"[job]\nname = \"x\"\n", "source"),
            (missing.as_bytes(), "does not exist"),
        ];
        for (body, reason) in bad {
            let (status, answer) = call(Method::POST, &submit, Some(TOKEN), body);
            assert_eq!(status, 400, "{answer}");
            let message = answer["error"].as_str().unwrap().to_lowercase();
            assert!(
                message.contains(&reason.to_lowercase()),
                "{reason}: {answer}"
            );
        }
        let (status, body) = call(Method::GET, &format!("{jobs}/abc"), Some(TOKEN), b"");
        assert_eq!(status, 400, "{body}");
        let (status, body) = call(Method::DELETE, &format!("{jobs}/77"), Some(TOKEN), b"");
        assert_eq!(status, 404, "{body}");

        // A job runs to completion; its detail has the final counts.
        let (status, answer) = call(Method::POST, &submit, Some(TOKEN), job("a", "").as_bytes());
        assert_eq!(status, 201, "{answer}");
        assert_eq!(answer["name"], "a");
        let id = answer["id"].as_u64().unwrap();
        let done = wait_finished(&base, id);
        assert_eq!(done["records"], 51);
        assert_eq!(done["rejected"], 1);
        assert_eq!(done["sources"]["events"]["records"], 51);
        assert_eq!(done["sources"]["events"]["lag"], 0);
        assert_eq!(
            done["workers"],
            json!({"built": 2, "completed": 2, "total": 2})
        );
        assert!(
            done["sinks"]["counts"]["commits"].as_u64().unwrap() >= 1,
            "{done}"
        );
        assert_eq!(done["sinks"]["counts"]["frontier"], Value::Null);
        let counts = done["counts"].as_array().unwrap();
        assert!(
            counts.contains(&json!({"metric": "type", "key": "track", "count": 50})),
            "{done}"
        );
        let (_, list) = call(Method::GET, &jobs, Some(TOKEN), b"");
        assert_eq!(list["jobs"].as_array().unwrap().len(), 1);
        assert_eq!(list["jobs"][0]["status"], "finished");
        assert!(list["jobs"][0].get("counts").is_none());
        let (status, dropped) = call(Method::DELETE, &format!("{jobs}/{id}"), Some(TOKEN), b"");
        assert_eq!(
            (status, dropped["status"].as_str()),
            (202, Some("finished"))
        );
        let metrics = reqwest::blocking::get(format!("{base}/metrics"))
            .unwrap()
            .text()
            .unwrap();
        for series in [
            format!("weft_job_records_total{{job=\"a\",id=\"{id}\"}} 51\n"),
            format!("weft_source_rejected_total{{job=\"a\",id=\"{id}\",source=\"events\"}} 1\n"),
            format!("weft_job_info{{job=\"a\",id=\"{id}\",status=\"finished\"}} 1\n"),
            "weft_jobs{status=\"finished\"} 1\n".to_string(),
            format!("weft_sink_commit_seconds_bucket{{job=\"a\",id=\"{id}\",sink=\"counts\",le=\"+Inf\"}}"),
        ] {
            assert!(metrics.contains(&series), "{series} missing from:\n{metrics}");
        }

        // Regulations: 409 without [regulations] or for a bounded job, 404 for no job.
        let regulate = |id: u64, body: &str| {
            call(
                Method::POST,
                &format!("{jobs}/{id}/regulations"),
                Some(TOKEN),
                body.as_bytes(),
            )
        };
        let delete = r#"{"type":"delete","identifier":"user_id:u1"}"#;
        assert_eq!(regulate(id, delete).0, 409);
        assert_eq!(regulate(99, delete).0, 404);
        let with_regs = job("b", "[regulations]\npath = \"regs.jsonl\"\n");
        let (status, answer) = call(Method::POST, &submit, Some(TOKEN), with_regs.as_bytes());
        assert_eq!(status, 201, "{answer}");
        let b = answer["id"].as_u64().unwrap();
        let (status, answer) = regulate(b, delete);
        assert_eq!(status, 409, "{answer}");
        assert!(!dir.path().join("regs.jsonl").exists(), "nothing appended");
        wait_finished(&base, b);

        // The cluster endpoint, and a shutdown request reaching the owner.
        let (_, info) = call(Method::GET, &format!("{base}/v1/cluster"), Some(TOKEN), b"");
        assert_eq!(info["workers"], 2);
        assert_eq!(info["jobs"], 2);
        assert!(!cluster.shutdown_requested(Duration::ZERO));
        let (status, _) = call(
            Method::POST,
            &format!("{base}/v1/shutdown"),
            Some(TOKEN),
            b"",
        );
        assert_eq!(status, 202);
        assert!(cluster.shutdown_requested(Duration::ZERO));
        server.stop();
        cluster.shutdown().unwrap();
    }

    #[test]
    fn regulations_are_validated_and_appended_with_an_id() {
        // A live job (an unbounded source) tails its log; the source's
        // brokers are never reached before the regulation is appended.
        let dir = tempfile::tempdir().unwrap();
        let cluster = Cluster::start(ClusterConfig::single(1)).unwrap();
        let spec = format!(
            "[job]\nname = \"live\"\n[[sources]]\ntype = \"kafka\"\nname = \"k\"\nbrokers = \"127.0.0.1:1\"\ntopics = [\"t\"]\n\
             [regulations]\npath = \"{}\"\n[[sinks]]\ntype = \"file\"\nname = \"events\"\noutput = \"events\"\npath = \"{}\"\n",
            dir.path().join("regs.jsonl").display(),
            dir.path().join("events.jsonl").display(),
        );
        let (spec, _) = crate::run::validate_toml(&spec, dir.path()).unwrap();
        let id = cluster.submit(&spec).unwrap();
        assert!(matches!(
            cluster.submit(&spec),
            Err(crate::runtime::ControlError::NameInUse(_))
        ));
        let bad = cluster.append_regulation(id, r#"{"type":"forget","identifier":"user_id:u1"}"#);
        assert!(
            matches!(bad, Err(crate::runtime::ControlError::Invalid(_))),
            "{bad:?}"
        );
        let bad = cluster.append_regulation(id, "[1]");
        assert!(
            matches!(bad, Err(crate::runtime::ControlError::Invalid(_))),
            "{bad:?}"
        );
        let given = cluster
            .append_regulation(
                id,
                r#"{"type":"delete","identifier":"user_id:u1","id":"r-1"}"#,
            )
            .unwrap();
        assert_eq!(given, "r-1");
        let generated = cluster
            .append_regulation(
                id,
                "{\"type\": \"suppress\",\n \"identifier\": \"email:a@b.c\"}",
            )
            .unwrap();
        assert!(generated.starts_with("api-live-"), "{generated}");
        let log = std::fs::read_to_string(dir.path().join("regs.jsonl")).unwrap();
        let lines: Vec<Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{log}");
        assert_eq!(lines[0]["id"], "r-1");
        assert_eq!(lines[1]["id"], generated.as_str());
        assert_eq!(lines[1]["identifier"], "email:a@b.c");
        cluster.drop_job(id).unwrap();
        cluster.shutdown().unwrap();
    }

    #[test]
    fn an_open_api_listens_on_loopback_only() {
        let cluster = Arc::new(Cluster::start(ClusterConfig::single(1)).unwrap());
        let refused = serve(
            ApiConfig {
                listen: "0.0.0.0:0".into(),
                token: None,
            },
            cluster.clone(),
        );
        assert!(refused.is_err());
        let open = serve(
            ApiConfig {
                listen: "127.0.0.1:0".into(),
                token: None,
            },
            cluster.clone(),
        )
        .unwrap();
        let (status, _) = call(
            Method::GET,
            &format!("http://{}/v1/jobs", open.local_addr()),
            None,
            b"",
        );
        assert_eq!(status, 200);
        open.stop();
        cluster.shutdown().unwrap();
    }
}
