//! HTTP sources: building them on the workers, and the routing of the
//! collection API's write keys to them.
//!
//! ```text
//!  build_job (worker 0, process 0)                 collection API (process 0)
//!    open the log / the topic's producer             write key ─► Inboxes ─► Route
//!    register write keys ──────────────► Inboxes        │ Log:   append, group commit, 200
//!    part (+ Registration, dropped with                 │ Topic: produce, acks=all,   200
//!          the dataflow: keys unregistered)             ▼
//!  every worker (topic only): KafkaPart           job's source reads the log / the topic
//! ```
//!
//! A write key routes to one source of one running job. Keys are registered
//! when worker 0 builds the job's dataflow and unregistered when that
//! dataflow is dropped; a job whose key another running job already holds
//! gets a job error and its source receives nothing. Requests for a job that
//! is draining or finished get 503 (the client retries, and a restarted
//! job with the same key takes them).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use weft_connectors::collect::{CollectPart, CollectSourceConfig, LogWriter, TopicWriter};
use weft_connectors::kafka::admin::{create_topic, partition_count};
use weft_connectors::kafka::{KafkaPart, KafkaSourceConfig};
use weft_connectors::source::{Decoded, PartProgress, Poll, SourcePart};
use weft_dataflows::spec::SourceSpec;

use crate::runtime::{JobId, Shared};

/// How long a worker waits for a topic it created to appear in the metadata.
const TOPIC_WAIT: Duration = Duration::from_secs(10);

/// Where a source's accepted events go.
#[derive(Clone, Debug)]
pub enum Inbox {
    /// The source's durable log in the job's state directory.
    Log(LogWriter),
    /// The source's Kafka topic.
    Topic(TopicWriter),
}

/// Counters of one route (relaxed atomics), for metrics.
#[derive(Debug, Default)]
pub struct RouteCounters {
    /// Requests answered 200.
    pub requests: AtomicU64,
    /// Events stored (in the log, or acknowledged by the topic).
    pub events: AtomicU64,
    /// Requests refused with a 4xx after their write key was known.
    pub refused: AtomicU64,
    /// Requests answered 503 because the log or topic failed, or the job was stopping.
    pub failed: AtomicU64,
}

/// One HTTP source of a running job, as the collection API sees it.
#[derive(Debug)]
pub struct Route {
    /// The job.
    pub job: JobId,
    /// The job's name.
    pub job_name: String,
    /// The source's name.
    pub source: String,
    /// Where its events go.
    pub inbox: Inbox,
    /// What it has received.
    pub counters: RouteCounters,
}

/// Write key → route, for this process (only process 0 serves the API).
#[derive(Debug, Default)]
pub struct Inboxes {
    routes: RwLock<BTreeMap<String, Arc<Route>>>,
}

impl Inboxes {
    /// The route of `write_key`, if a running job holds it.
    pub fn route(&self, write_key: &str) -> Option<Arc<Route>> {
        self.routes
            .read()
            .expect("collect routes lock")
            .get(write_key)
            .cloned()
    }

    /// Every route with its write keys (for metrics and listings).
    pub fn routes(&self) -> Vec<(String, Arc<Route>)> {
        self.routes
            .read()
            .expect("collect routes lock")
            .iter()
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect()
    }

    fn register(&self, keys: &[String], route: &Arc<Route>) -> Result<(), String> {
        let mut routes = self.routes.write().expect("collect routes lock");
        if let Some((key, other)) = keys
            .iter()
            .find_map(|k| routes.get(k).map(|r| (k, r.clone())))
        {
            return Err(format!(
                "write key {key:?} already routes to source {} of job {} ({}); this source receives nothing until that job is dropped",
                other.source, other.job_name, other.job
            ));
        }
        for k in keys {
            routes.insert(k.clone(), route.clone());
        }
        Ok(())
    }

    fn unregister(&self, keys: &[String], route: &Arc<Route>) {
        let mut routes = self.routes.write().expect("collect routes lock");
        for k in keys {
            if routes.get(k).is_some_and(|r| Arc::ptr_eq(r, route)) {
                routes.remove(k);
            }
        }
    }
}

/// Holds a source's write keys in [`Inboxes`]; dropping it (with the
/// dataflow that owns the source) releases them.
pub struct Registration {
    shared: Arc<Shared>,
    keys: Vec<String>,
    route: Arc<Route>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared.collect.unregister(&self.keys, &self.route);
    }
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("keys", &self.keys.len())
            .field("source", &self.route.source)
            .finish()
    }
}

/// One worker's part of an HTTP source, holding the write keys on worker 0.
#[derive(Debug)]
pub struct HttpPart {
    reader: Reader,
    _registration: Option<Registration>,
}

#[derive(Debug)]
enum Reader {
    Log(CollectPart),
    Topic(KafkaPart),
}

impl SourcePart for HttpPart {
    fn poll(&mut self, out: &mut Vec<(Decoded, u64)>, budget: usize) -> Poll {
        match &mut self.reader {
            Reader::Log(p) => p.poll(out, budget),
            Reader::Topic(p) => p.poll(out, budget),
        }
    }

    fn progress(&self) -> PartProgress {
        match &self.reader {
            Reader::Log(p) => p.progress(),
            Reader::Topic(p) => p.progress(),
        }
    }
}

/// What building an HTTP source needs to know about its job and worker.
pub struct HttpSourceContext<'a> {
    /// The job.
    pub job: JobId,
    /// The job's name.
    pub job_name: &'a str,
    /// The job's state directory.
    pub state_dir: &'a Path,
    /// This worker's index and the number of workers.
    pub worker: usize,
    /// Workers in the cluster.
    pub peers: usize,
    /// Index of the source among the job's sources.
    pub source_index: usize,
    /// The process's shared state (its [`Inboxes`]).
    pub shared: &'a Arc<Shared>,
}

/// This worker's part of HTTP source `spec` (`None` when the worker reads
/// nothing, or when the source could not be set up: that is a job error).
///
/// Without a topic, worker 0 opens the log, registers the write keys and
/// reads; other workers read nothing. With a topic, every worker makes sure
/// the topic exists and reads its share of the partitions like a Kafka
/// source; worker 0 also opens the producer and registers the keys.
pub fn http_part(spec: &SourceSpec, cx: &HttpSourceContext<'_>) -> Option<HttpPart> {
    let SourceSpec::Http {
        name,
        write_keys,
        topic,
        brokers,
        partitions,
        tick,
        options,
    } = spec
    else {
        return None;
    };
    let fail = |what: String| {
        cx.shared.job_error(
            cx.job,
            cx.job_name,
            format!("source {name} (worker {}): {what}", cx.worker),
        );
        None
    };
    match topic {
        None => {
            if cx.worker != 0 {
                return None;
            }
            let config = CollectSourceConfig {
                name: name.clone(),
                state_dir: cx.state_dir.to_path_buf(),
                tick_ms: tick.0,
            };
            let (writer, part) = match config.open() {
                Ok(x) => x,
                Err(e) => return fail(format!("cannot open the collect log: {e}")),
            };
            let registration = match register(cx, name, write_keys, Inbox::Log(writer)) {
                Ok(r) => r,
                Err(e) => return fail(e),
            };
            Some(HttpPart {
                reader: Reader::Log(part),
                _registration: Some(registration),
            })
        }
        Some(topic) => {
            let brokers = brokers.clone().unwrap_or_default();
            if let Err(e) = ensure_topic(&brokers, topic, *partitions) {
                return fail(e);
            }
            let config = KafkaSourceConfig {
                name: name.clone(),
                brokers: brokers.clone(),
                topics: vec![topic.clone()],
                options: options.clone(),
                state_dir: cx.state_dir.to_path_buf(),
                tick_ms: tick.0,
                bounded: false,
                source_index: cx.source_index,
            };
            let part = match config.part(cx.worker, cx.peers) {
                Ok(p) => p,
                Err(e) => return fail(e.to_string()),
            };
            let registration = if cx.worker == 0 {
                let client_id = format!("weft-{}-{name}-collect", cx.job_name);
                let writer = match TopicWriter::open(&brokers, topic, options, &client_id) {
                    Ok(w) => w,
                    Err(e) => return fail(e.to_string()),
                };
                match register(cx, name, write_keys, Inbox::Topic(writer)) {
                    Ok(r) => Some(r),
                    Err(e) => return fail(e),
                }
            } else {
                None
            };
            Some(HttpPart {
                reader: Reader::Topic(part),
                _registration: registration,
            })
        }
    }
}

fn register(
    cx: &HttpSourceContext<'_>,
    source: &str,
    keys: &[String],
    inbox: Inbox,
) -> Result<Registration, String> {
    let route = Arc::new(Route {
        job: cx.job,
        job_name: cx.job_name.to_string(),
        source: source.to_string(),
        inbox,
        counters: RouteCounters::default(),
    });
    cx.shared.collect.register(keys, &route)?;
    tracing::info!(
        job = cx.job_name,
        source,
        keys = keys.len(),
        "collection API routes registered"
    );
    Ok(Registration {
        shared: cx.shared.clone(),
        keys: keys.to_vec(),
        route,
    })
}

/// Creates `topic` unless it exists, and waits until the brokers list it.
fn ensure_topic(brokers: &str, topic: &str, partitions: u32) -> Result<(), String> {
    if brokers.trim().is_empty() {
        return Err("a topic but no brokers; set `brokers` or KAFKA_BROKERS".into());
    }
    create_topic(brokers, topic, partitions.max(1) as i32, &[]).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + TOPIC_WAIT;
    loop {
        match partition_count(brokers, topic) {
            Ok(Some(_)) => return Ok(()),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) => {
                return Err(format!(
                    "topic {topic:?} was created but does not appear on {brokers}"
                ))
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

impl RouteCounters {
    /// A snapshot: (requests, events, refused, failed).
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.events.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}
