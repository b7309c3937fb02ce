//! Shared helpers of the Profile API and runtime audience tests: the Profile
//! API served on 127.0.0.1 over real HTTP, a blocking client, bounded waits,
//! and net sink output.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_engine::runtime::{Cluster, JobId, JobReport, JobStatus};
use weft_tests::Change;

/// The Profile API of `cluster`, served on 127.0.0.1 until dropped.
pub struct Server {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn start(cluster: Arc<Cluster>) -> Server {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = weft_engine::api::profiles::routes(cluster);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = rx.await;
                    })
                    .await
                    .unwrap();
            });
        });
        Server {
            addr,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    fn url(&self, segments: &[&str]) -> reqwest::Url {
        let mut url = reqwest::Url::parse(&format!("http://{}/", self.addr)).unwrap();
        url.path_segments_mut()
            .unwrap()
            .pop_if_empty()
            .extend(segments);
        url
    }

    fn client() -> reqwest::blocking::Client {
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    }

    fn answer(r: reqwest::blocking::Response) -> (u16, Value) {
        let status = r.status().as_u16();
        let text = r.text().unwrap();
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        (status, v)
    }

    /// `GET /v1/jobs/{job}/profiles/{identifier}` with a query string.
    pub fn profile(&self, job: JobId, identifier: &str, query: &[(&str, &str)]) -> (u16, Value) {
        let job = job.to_string();
        let mut url = self.url(&["v1", "jobs", &job, "profiles", identifier]);
        url.query_pairs_mut().extend_pairs(query);
        Self::answer(Self::client().get(url).send().unwrap())
    }

    /// Every event of a profile, following `events_next` (pages of `limit`).
    pub fn all_events(&self, job: JobId, identifier: &str, limit: usize) -> Vec<Value> {
        let mut out = Vec::new();
        let mut before: Option<String> = None;
        loop {
            let limit = limit.to_string();
            let mut q = vec![("events_limit", limit.as_str())];
            if let Some(b) = &before {
                q.push(("events_before", b.as_str()));
            }
            let (status, v) = self.profile(job, identifier, &q);
            assert_eq!(status, 200, "{v}");
            out.extend(v["events"].as_array().unwrap().iter().cloned());
            match v["events_next"].as_str() {
                Some(n) => before = Some(n.to_string()),
                None => return out,
            }
        }
    }

    /// `POST /v1/jobs/{job}/audiences`.
    pub fn set(&self, job: JobId, body: Value) -> (u16, Value) {
        let job = job.to_string();
        let url = self.url(&["v1", "jobs", &job, "audiences"]);
        Self::answer(Self::client().post(url).json(&body).send().unwrap())
    }

    /// `DELETE /v1/jobs/{job}/audiences/{name}`.
    pub fn drop_definition(&self, job: JobId, name: &str) -> (u16, Value) {
        let job = job.to_string();
        let url = self.url(&["v1", "jobs", &job, "audiences", name]);
        Self::answer(Self::client().delete(url).send().unwrap())
    }

    /// `GET /v1/jobs/{job}/audiences`.
    pub fn definitions(&self, job: JobId) -> (u16, Value) {
        let job = job.to_string();
        let url = self.url(&["v1", "jobs", &job, "audiences"]);
        Self::answer(Self::client().get(url).send().unwrap())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Polls `f` every 20 ms until it returns `Some`, for at most `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(start.elapsed() < limit, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until a job has finished; returns its report.
pub fn wait_finished(cluster: &Cluster, id: JobId) -> JobReport {
    wait_for("the job to finish", Duration::from_secs(300), || {
        cluster
            .report(id)
            .filter(|r| r.status == JobStatus::Finished)
    })
}

/// The net content of a changes file: record → multiplicity (nonzero only),
/// checking that times never go back and nothing goes negative.
pub fn net(changes: &[Change]) -> BTreeMap<String, i64> {
    let mut out: BTreeMap<String, i64> = BTreeMap::new();
    let mut last = 0;
    for c in changes {
        assert!(
            c.time >= last,
            "times go backwards: {} after {last}",
            c.time
        );
        last = c.time;
        let key = c.data.to_string();
        let n = out.entry(key.clone()).or_default();
        *n += c.diff;
        assert!(*n >= 0, "retraction without insertion: {key}");
        if *n == 0 {
            out.remove(&key);
        }
    }
    out
}

/// The net memberships of the audience with `key`: its profiles.
pub fn members(changes: &[Change], key: &str) -> BTreeSet<String> {
    let only: Vec<Change> = changes
        .iter()
        .filter(|c| c.data["audience"] == key)
        .cloned()
        .collect();
    net(&only)
        .into_iter()
        .map(|(k, n)| {
            assert_eq!(n, 1, "{k} is in {key} {n} times");
            let v: Value = serde_json::from_str(&k).unwrap();
            v["profile"].as_str().unwrap().to_string()
        })
        .collect()
}

/// The net values of the computed trait `name`: profile → value.
pub fn values(changes: &[Change], name: &str) -> BTreeMap<String, Value> {
    let only: Vec<Change> = changes
        .iter()
        .filter(|c| c.data["trait"] == name)
        .cloned()
        .collect();
    let mut out = BTreeMap::new();
    for (k, n) in net(&only) {
        assert_eq!(n, 1, "{k} has {n} live copies");
        let v: Value = serde_json::from_str(&k).unwrap();
        let profile = v["profile"].as_str().unwrap().to_string();
        assert!(
            out.insert(profile.clone(), v["value"].clone()).is_none(),
            "{profile} has two values of {name}"
        );
    }
    out
}
