//! Webhook (HTTP) destinations: changes POSTed as JSON batches, with
//! retries, a durable queue per destination and at-least-once delivery.
//!
//! ## Requests
//!
//! Each change `(data, time, diff)` becomes one *message*:
//!
//! ```json
//! {"messageId":"<32 hex>","op":"insert","diff":1,"time":1767225600000,"data":{…}}
//! ```
//!
//! `op` is `insert` for positive diffs and `delete` for negative ones (a
//! retraction: the record left the output). `messageId` is
//! [`message_id`]: the xxh3-128 (hex) of the sink's name, the time, the diff
//! and the record's JSON, so the same change always carries the same id
//! (destinations dedupe on it; renaming a sink changes its ids).
//!
//! Messages are sent in order, in batches of up to `batch_size` messages and
//! `max_batch_bytes` bytes (a larger single message goes alone), as
//! `POST <url>` with body `{"batch":[message, …]}`, headers
//! `Content-Type: application/json`, the configured extra headers (e.g.
//! `Authorization`), and `Idempotency-Key`: the xxh3-128 (hex) of the
//! batch's `messageId`s in order. A batch leaves once it is full, `linger`
//! after its first message became deliverable, or at once when the output is
//! complete. One batch is in flight at a time per destination.
//!
//! ## Responses and retries
//!
//! * 2xx: delivered.
//! * 408, 429, 5xx other than 501/505, connection errors and timeouts
//!   (`request_timeout` covers the whole exchange): retried after a random
//!   wait in `[0, min(max_backoff, initial_backoff × 2^(n-1))]` (*full
//!   jitter*), or exactly the `Retry-After` the response asks for (seconds or
//!   an HTTP-date). Retries go on until `retry_horizon` after the batch's
//!   first attempt (the last attempt is made at the horizon; a
//!   `Retry-After` beyond it ends the retries at once); then the batch is
//!   appended to the **dead-letter file** `STATE_DIR/dead-letter.jsonl`, one
//!   line `{"sink","url","at","firstAttemptAt","attempts","lastError",
//!   "idempotencyKey","batch":[…]}`.
//! * Any other status (other 4xx, 501, 505, 3xx: redirects are not
//!   followed) is permanent: the batch is appended, never retried, to the
//!   **discard file** `STATE_DIR/discarded.jsonl`, one line `{"sink","url",
//!   "at","status","response","idempotencyKey","batch":[…]}` (`response`: the
//!   first 4 KiB of the body).
//!
//! Batches stay in order: a batch that keeps failing holds back the later
//! ones of its destination (they wait in the queue) until it is delivered,
//! discarded or dead-lettered. Other destinations are not affected: each
//! sink has its own queue and its own delivery thread (with a
//! single-threaded tokio runtime), and [`Sink::write`] / [`Sink::commit`]
//! never wait on the network.
//!
//! ## The queue, memory and disk
//!
//! `write` encodes each change and appends it to the sink's on-disk log
//! (segment files under `STATE_DIR/queue/`, see `log.rs`); the newest
//! messages are also kept in memory, up to `max_memory_bytes`, so a delivery
//! thread that keeps up never reads the disk. Beyond that budget messages
//! exist only on disk (*spilled*) and the delivery thread reads them back.
//! Segment files are deleted once every message in them is resolved
//! (delivered, discarded or dead-lettered). Disk use is not bounded: a
//! destination that is down keeps its queue on disk until it recovers or the
//! horizon passes.
//!
//! ## Durability and restarts: at-least-once
//!
//! * `commit(frontier)` fsyncs the log and then records, in
//!   `STATE_DIR/commit` (fsynced), the frontier and where the log ends. Only
//!   committed messages are delivered. A commit without new messages since
//!   the last one records nothing (the times it covers hold no changes for
//!   this sink), except the final `commit(&[])`.
//! * Delivery progress is the cursor file `STATE_DIR/cursor`: the position
//!   below which every message is resolved, and the batch in flight
//!   (`[position, end)`, its first attempt time and attempt count). It is
//!   written before each attempt and after each resolved batch, and fsynced
//!   at most once a second. Dead-letter and discard lines are fsynced before
//!   the batch counts as resolved.
//! * A reopened sink (same `state_dir`) cuts the log back to the last commit
//!   (messages enqueued after it are dropped), skips every `write` at a time
//!   below the recorded frontier (a restarted job re-emits the same changes
//!   at the same times, see [`crate::kafka::reclock`]), and resumes
//!   delivery at the cursor: the batch that was in flight is sent first, with
//!   exactly the same messages (so the same `Idempotency-Key`) and its retry
//!   horizon still counted from its first attempt.
//!
//! So every committed change is delivered, discarded or dead-lettered at
//! least once. A destination sees a batch twice only if it was in flight
//! when the process stopped (the request may have been processed, its
//! response lost); the copy carries the same `messageId`s and the same
//! `Idempotency-Key`. After a machine crash (not just a process crash) the
//! cursor may be up to a second stale: batches resolved in that second are
//! sent again, with the same keys. Changes written but not committed before
//! a crash are never delivered by that run; the restarted job writes them
//! again.
//!
//! ## Completion
//!
//! `commit(&[])` (the output is complete) also waits, at most
//! `drain_timeout`, for the queue to empty. What is still queued then stays
//! on disk (a warning says how much) and is delivered by the next run on the
//! same state directory. Dropping the sink stops its delivery thread at once
//! (an in-flight request is abandoned and sent again next run).
//!
//! ## Layout of `STATE_DIR`
//!
//! ```text
//! LOCK                 held while a sink is open (one sink per directory)
//! commit, cursor       two-slot records (see slots.rs)
//! queue/<seq>.seg      the message log
//! dead-letter.jsonl    batches given up on at the horizon
//! discarded.jsonl      batches rejected permanently
//! ```

mod delivery;
mod log;
mod metrics;
mod queue;
mod retry;
mod slots;

use std::fs::{self, File, TryLockError};
use std::io;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::Url;
use weft_dataflows::record::WriteJson;
use xxhash_rust::xxh3::Xxh3Default;

pub use delivery::CURSOR_SYNC_INTERVAL;
pub use metrics::{WebhookMetrics, WebhookStats};

use delivery::{parse_cursor, CursorFile, Delivery, InFlight, Policy, Records, Target};
use log::{LogEnd, LogReader, LogWriter, Seq};
use metrics::add;
use queue::{QueueState, Shared};
use retry::Backoff;
use slots::SlotFile;

use crate::sink::Sink;

/// Every message starts with these bytes, then its 32-hex-digit id.
pub(crate) const MESSAGE_ID_PREFIX: &[u8] = b"{\"messageId\":\"";

/// Headers the sink sets itself; configuring them is an error.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "host",
    "idempotency-key",
];

/// Changes are encoded and handed to the shared queue this many at a time.
const WRITE_CHUNK: usize = 1024;

/// Settings of one webhook destination.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// The sink's name: in logs, records and every `messageId`.
    pub name: String,
    /// The `http://` or `https://` URL batches are POSTed to.
    pub url: String,
    /// Extra request headers, e.g. `("Authorization", "Bearer …")`.
    pub headers: Vec<(String, String)>,
    /// Most messages in one request (default 100).
    pub batch_size: usize,
    /// Most bytes of messages in one request (default 512 KiB); a larger
    /// single message is sent alone.
    pub max_batch_bytes: usize,
    /// How long a batch that is not full waits for more messages (default 200 ms).
    pub linger: Duration,
    /// Timeout of one request, connecting to reading the response (default 10 s).
    pub request_timeout: Duration,
    /// How long a batch is retried, from its first attempt, before it is
    /// dead-lettered (default 4 h).
    pub retry_horizon: Duration,
    /// Ceiling of the first retry's random wait (default 500 ms); doubles per attempt.
    pub initial_backoff: Duration,
    /// Largest ceiling of a retry's random wait (default 5 min).
    pub max_backoff: Duration,
    /// Most bytes of queued messages kept in memory; the rest is read back
    /// from disk (default 64 MiB).
    pub max_memory_bytes: usize,
    /// Size at which a queue segment file is closed and a new one started
    /// (default 16 MiB).
    pub segment_bytes: u64,
    /// How long the final `commit(&[])` waits for the queue to drain (default 30 s).
    pub drain_timeout: Duration,
    /// The sink's own directory: queue, progress, dead-letter and discard
    /// files. Keep it across restarts; never share it between sinks.
    pub state_dir: PathBuf,
}

impl WebhookConfig {
    /// A configuration with the defaults.
    pub fn new(
        name: impl Into<String>,
        url: impl Into<String>,
        state_dir: impl Into<PathBuf>,
    ) -> Self {
        WebhookConfig {
            name: name.into(),
            url: url.into(),
            headers: Vec::new(),
            batch_size: 100,
            max_batch_bytes: 512 << 10,
            linger: Duration::from_millis(200),
            request_timeout: Duration::from_secs(10),
            retry_horizon: Duration::from_secs(4 * 3600),
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(300),
            max_memory_bytes: 64 << 20,
            segment_bytes: 16 << 20,
            drain_timeout: Duration::from_secs(30),
            state_dir: state_dir.into(),
        }
    }

    /// Checks the settings; returns the parsed URL and the request headers.
    pub fn validate(&self) -> Result<(Url, HeaderMap), WebhookError> {
        let WebhookConfig {
            name,
            url,
            headers,
            batch_size,
            max_batch_bytes,
            linger: _,
            request_timeout,
            retry_horizon: _,
            initial_backoff,
            max_backoff,
            max_memory_bytes: _,
            segment_bytes,
            drain_timeout: _,
            state_dir,
        } = self;
        let bad = |what: String| {
            Err(WebhookError::Config(format!(
                "webhook sink {name:?}: {what}"
            )))
        };
        if name.is_empty() {
            return Err(WebhookError::Config("a webhook sink needs a name".into()));
        }
        let parsed = match Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => u,
            Ok(_) => return bad(format!("url {url:?} is not an http:// or https:// URL")),
            Err(e) => return bad(format!("url {url:?} is not a URL ({e})")),
        };
        if *batch_size == 0 || *max_batch_bytes == 0 {
            return bad("batch_size and max_batch_bytes must be at least 1".into());
        }
        if request_timeout.is_zero() || initial_backoff.is_zero() {
            return bad("request_timeout and initial_backoff must be positive".into());
        }
        if max_backoff < initial_backoff {
            return bad(format!(
                "max_backoff ({max_backoff:?}) is below initial_backoff ({initial_backoff:?})"
            ));
        }
        if *segment_bytes == 0 {
            return bad("segment_bytes must be at least 1".into());
        }
        if state_dir.as_os_str().is_empty() {
            return bad("set state_dir to a directory of its own".into());
        }
        let mut map = HeaderMap::new();
        map.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (key, value) in headers {
            if RESERVED_HEADERS.contains(&key.to_ascii_lowercase().as_str()) {
                return bad(format!("header {key:?} is set by the sink; remove it"));
            }
            let (Ok(k), Ok(v)) = (
                HeaderName::try_from(key.as_str()),
                HeaderValue::try_from(value.as_str()),
            ) else {
                return bad(format!(
                    "header {key:?} is not a valid HTTP header name and value"
                ));
            };
            map.append(k, v);
        }
        Ok((parsed, map))
    }
}

/// Why a webhook sink could not open.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The settings are wrong; the message says which and how to fix it.
    #[error("{0}")]
    Config(String),
    /// The state directory could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// The `messageId` of a change: xxh3-128 (32 lowercase hex digits) of the
/// sink's name, a zero byte, the time and the diff (both 8 bytes little
/// endian) and the record's JSON.
pub fn message_id(sink: &str, time: u64, diff: isize, data_json: &[u8]) -> String {
    let mut h = Xxh3Default::new();
    h.update(sink.as_bytes());
    h.update(&[0]);
    h.update(&time.to_le_bytes());
    h.update(&(diff as i64).to_le_bytes());
    h.update(data_json);
    format!("{:032x}", h.digest128())
}

/// Encodes one message (see the module docs); `scratch` is reused.
fn encode_message<D: WriteJson>(
    sink: &str,
    time: u64,
    diff: isize,
    data: &D,
    scratch: &mut Vec<u8>,
) -> Vec<u8> {
    scratch.clear();
    data.write_json(scratch);
    let id = message_id(sink, time, diff, scratch);
    let mut out = Vec::with_capacity(scratch.len() + 96);
    out.extend_from_slice(MESSAGE_ID_PREFIX);
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(if diff > 0 {
        b"\",\"op\":\"insert\",\"diff\":"
    } else {
        b"\",\"op\":\"delete\",\"diff\":"
    });
    out.extend_from_slice(diff.to_string().as_bytes());
    out.extend_from_slice(b",\"time\":");
    out.extend_from_slice(time.to_string().as_bytes());
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(scratch);
    out.push(b'}');
    out
}

/// A frontier of `u64` times: `Some(t)` = `[t]`, `None` = `[]` (complete).
type Frontier = Option<u64>;

fn frontier_of(f: &[u64]) -> Frontier {
    f.iter().copied().min()
}

/// `a` is strictly beyond `b`.
fn beyond(a: Frontier, b: Frontier) -> bool {
    match (a, b) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(x), Some(y)) => x > y,
    }
}

/// The commit record: `[tag, frontier, log end seq, segment, offset]`;
/// tag 1 = frontier `[frontier]`, 2 = complete.
type CommitFile = SlotFile<5>;

fn parse_commit(values: [u64; 5]) -> (Frontier, LogEnd) {
    let [tag, frontier, seq, segment, offset] = values;
    let frontier = (tag != 2).then_some(frontier);
    (
        frontier,
        LogEnd {
            seq,
            segment,
            offset,
        },
    )
}

/// A webhook destination for changes of records that encode to JSON.
pub struct WebhookSink<D> {
    name: String,
    state_dir: PathBuf,
    drain_timeout: Duration,
    shared: Arc<Shared>,
    log: LogWriter,
    commits: CommitFile,
    /// The frontier found at open: writes before it are skipped.
    restored: Frontier,
    /// The last frontier committed (by this run or an earlier one).
    committed: Frontier,
    /// Messages appended since the last durable commit.
    uncommitted: u64,
    scratch: Vec<u8>,
    delivery: Option<JoinHandle<()>>,
    _lock: File,
    _records: PhantomData<fn(&D)>,
}

impl<D> std::fmt::Debug for WebhookSink<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSink")
            .field("name", &self.name)
            .field("state_dir", &self.state_dir)
            .field("committed", &self.committed)
            .finish()
    }
}

fn io_error(context: String) -> impl FnOnce(io::Error) -> WebhookError {
    move |source| WebhookError::Io { context, source }
}

impl<D> WebhookSink<D> {
    /// Opens the sink: checks the settings, recovers the queue in
    /// `state_dir` and starts the delivery thread.
    pub fn open(config: &WebhookConfig) -> Result<Self, WebhookError> {
        // STEP 1. Settings, HTTP client, runtime.
        let (url, headers) = config.validate()?;
        let name = config.name.clone();
        let dir = config.state_dir.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io_error(format!(
                "webhook sink {name:?}: cannot start a runtime"
            )))?;
        let client = {
            let _context = runtime.enter();
            reqwest::Client::builder()
                .timeout(config.request_timeout)
                .connect_timeout(config.request_timeout)
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("weft/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| {
                    WebhookError::Config(format!(
                        "webhook sink {name:?}: cannot build an HTTP client: {e}"
                    ))
                })?
        };
        // STEP 2. Own the state directory.
        fs::create_dir_all(&dir).map_err(io_error(format!("cannot create {}", dir.display())))?;
        let lock = lock_dir(&name, &dir)?;
        // STEP 3. The last commit; the log cut back to it.
        let context =
            |what: &str| format!("webhook sink {name:?}: cannot {what} in {}", dir.display());
        let (commits, commit) = CommitFile::open(&dir.join("commit"))
            .map_err(io_error(context("read the commit record")))?;
        let (restored, end) = match commit.map(parse_commit) {
            Some((frontier, end)) => (frontier, Some(end)),
            None => (Some(0), None),
        };
        let queue_dir = dir.join("queue");
        let (log, segments) = LogWriter::recover(&queue_dir, end, config.segment_bytes)
            .map_err(io_error(context("recover the queue")))?;
        let committed_end = log.next_seq();
        // STEP 4. Where delivery stopped, and what is still queued.
        let (cursor, position) = CursorFile::open(&dir.join("cursor"))
            .map_err(io_error(context("read the delivery cursor")))?;
        let oldest = segments.first().copied().unwrap_or(committed_end);
        let (delivered, resume) = match (end, position.map(parse_cursor)) {
            (Some(_), Some((delivered, flight))) => {
                clamp_cursor(delivered, flight, oldest, committed_end)
            }
            _ => (oldest.min(committed_end), None),
        };
        let metrics = Arc::new(WebhookMetrics::default());
        let state = QueueState::new(delivered, committed_end, segments, config.max_memory_bytes);
        let mut reader = LogReader::new(&queue_dir);
        let spilled = measure_queued(&mut reader, &state, delivered, committed_end)
            .map_err(io_error(context("read the queue")))?;
        metrics
            .queued_messages
            .store(committed_end - delivered, Ordering::Relaxed);
        metrics.spilled_bytes.store(spilled, Ordering::Relaxed);
        log_resume(&name, restored, committed_end - delivered, resume);
        // STEP 5. The delivery thread.
        let shared = Arc::new(Shared::new(state, metrics));
        let delivery = Delivery {
            shared: shared.clone(),
            target: Target {
                name: name.clone(),
                url,
                headers,
            },
            policy: Policy {
                batch_size: config.batch_size,
                max_batch_bytes: config.max_batch_bytes,
                linger: config.linger,
                retry_horizon: config.retry_horizon,
            },
            client,
            reader,
            queue_dir,
            cursor,
            cursor_synced: Instant::now(),
            backoff: Backoff::new(config.initial_backoff, config.max_backoff, &name),
            records: Records {
                dead_letter: dir.join("dead-letter.jsonl"),
                discarded: dir.join("discarded.jsonl"),
            },
            resume,
        };
        let thread = std::thread::Builder::new()
            .name(format!("webhook-{name}"))
            .spawn(move || runtime.block_on(delivery.run()))
            .map_err(io_error(format!(
                "webhook sink {name:?}: cannot start its delivery thread"
            )))?;
        Ok(WebhookSink {
            name,
            state_dir: dir,
            drain_timeout: config.drain_timeout,
            shared,
            log,
            commits,
            restored,
            committed: restored,
            uncommitted: 0,
            scratch: Vec::new(),
            delivery: Some(thread),
            _lock: lock,
            _records: PhantomData,
        })
    }

    /// The delivery metrics (shared with the delivery thread).
    pub fn metrics(&self) -> Arc<WebhookMetrics> {
        self.shared.metrics.clone()
    }

    /// The frontier committed so far (by this run or an earlier one):
    /// `[]` if the output is complete.
    pub fn committed_frontier(&self) -> Vec<u64> {
        self.committed.into_iter().collect()
    }

    /// The file batches go to when they still fail at the retry horizon.
    pub fn dead_letter_path(&self) -> PathBuf {
        self.state_dir.join("dead-letter.jsonl")
    }

    /// The file permanently rejected batches go to.
    pub fn discard_path(&self) -> PathBuf {
        self.state_dir.join("discarded.jsonl")
    }

    /// Whether changes at `time` were committed by an earlier run.
    fn skips(&self, time: u64) -> bool {
        self.restored.is_none_or(|f| time < f)
    }

    /// Appends a chunk of encoded messages to the log and offers them to
    /// the in-memory queue.
    fn enqueue(&mut self, messages: Vec<Vec<u8>>) -> io::Result<()> {
        let mut appended = Vec::with_capacity(messages.len());
        let mut new_segments = Vec::new();
        for message in messages {
            let (seq, rotated) = self.log.append(&message)?;
            new_segments.extend(rotated);
            appended.push((seq, message));
        }
        let count = appended.len() as u64;
        let mut spilled = 0u64;
        let mut st = self.shared.lock();
        st.segments.extend(new_segments);
        for (seq, message) in appended {
            if let Err(message) = st.offer(seq, message) {
                spilled += message.len() as u64;
            }
        }
        let memory = st.memory_bytes() as u64;
        drop(st);
        let m = &self.shared.metrics;
        m.memory_bytes.store(memory, Ordering::Relaxed);
        add(&m.spilled_bytes, spilled);
        add(&m.queued_messages, count);
        self.uncommitted += count;
        Ok(())
    }

    /// Waits (at most the drain timeout) until every committed message is resolved.
    fn drain(&self) {
        let deadline = Instant::now() + self.drain_timeout;
        let mut st = self.shared.lock();
        while st.delivered < st.committed_end {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st = self
                .shared
                .resolved
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let left = st.committed_end - st.delivered;
        drop(st);
        if left > 0 {
            tracing::warn!(
                sink = %self.name,
                "output complete, but {left} messages are still undelivered after {:?}; they stay queued in {} for the next run",
                self.drain_timeout,
                self.state_dir.display()
            );
        } else {
            tracing::info!(sink = %self.name, "output complete and delivered");
        }
    }
}

impl<D: WriteJson> Sink<D> for WebhookSink<D> {
    /// Encodes and enqueues; never waits on the network.
    fn write(&mut self, time: u64, updates: &[(D, isize)]) -> io::Result<()> {
        if self.skips(time) {
            add(&self.shared.metrics.skipped_messages, updates.len() as u64);
            return Ok(());
        }
        for chunk in updates.chunks(WRITE_CHUNK) {
            let messages = chunk
                .iter()
                .map(|(data, diff)| {
                    encode_message(&self.name, time, *diff, data, &mut self.scratch)
                })
                .collect();
            self.enqueue(messages)?;
        }
        Ok(())
    }

    /// Makes the enqueued messages durable and deliverable; on `[]`, also
    /// waits up to the drain timeout for delivery.
    fn commit(&mut self, frontier: &[u64]) -> io::Result<()> {
        let new = frontier_of(frontier);
        let complete = new.is_none();
        if !complete && (self.uncommitted == 0 || !beyond(new, self.committed)) {
            if beyond(new, self.committed) {
                self.committed = new;
            }
            return Ok(());
        }
        let end = self.log.sync()?;
        let (tag, f) = match new {
            Some(f) => (1, f),
            None => (2, 0),
        };
        self.commits
            .write(&[tag, f, end.seq, end.segment, end.offset], true)?;
        {
            let mut st = self.shared.lock();
            st.committed_end = end.seq;
            st.draining |= complete;
        }
        self.shared.wake.notify_one();
        self.uncommitted = 0;
        self.committed = new;
        if complete {
            self.drain();
        }
        Ok(())
    }

    /// Does nothing: a webhook cannot recall what it delivered. The
    /// person's retractions reach the destination as `delete` messages
    /// through [`Sink::write`], after (in queue order) anything still queued
    /// about them, so a destination that applies messages in order ends up
    /// without the person.
    fn erase(&mut self, _time: u64, _identifiers: &[String]) -> io::Result<()> {
        Ok(())
    }
}

impl<D> Drop for WebhookSink<D> {
    /// Stops the delivery thread (abandoning a request in flight).
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.stop.notify_one();
        self.shared.wake.notify_one();
        if let Some(thread) = self.delivery.take() {
            if thread.join().is_err() {
                tracing::error!(sink = %self.name, "the delivery thread panicked");
            }
        }
    }
}

/// Takes the directory's lock file, failing if another sink holds it.
fn lock_dir(name: &str, dir: &Path) -> Result<File, WebhookError> {
    let path = dir.join("LOCK");
    let file =
        File::create(&path).map_err(io_error(format!("cannot create {}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(WebhookError::Config(format!(
            "webhook sink {name:?}: {} is in use by another open sink; give every sink its own state_dir",
            dir.display()
        ))),
        Err(TryLockError::Error(e)) => Err(WebhookError::Io {
            context: format!("cannot lock {}", path.display()),
            source: e,
        }),
    }
}

/// Fits a cursor read from disk to the recovered log: the position lies
/// within `[oldest, committed_end]` (segments before it were deleted after
/// delivery), and a batch in flight must still be whole.
fn clamp_cursor(
    delivered: Seq,
    flight: Option<InFlight>,
    oldest: Seq,
    committed_end: Seq,
) -> (Seq, Option<InFlight>) {
    let position = delivered.clamp(oldest.min(committed_end), committed_end);
    let flight = flight.filter(|f| position == delivered && f.end <= committed_end);
    (position, flight)
}

/// Bytes of the queued messages `[from, to)` (all on disk after a restart).
fn measure_queued(
    reader: &mut LogReader,
    state: &QueueState,
    from: Seq,
    to: Seq,
) -> io::Result<u64> {
    let mut bytes = 0;
    let firsts: Vec<Seq> = state.segments.iter().copied().collect();
    for (i, &first) in firsts.iter().enumerate() {
        let next = firsts.get(i + 1).copied().unwrap_or(Seq::MAX);
        let (lo, hi) = (from.max(first), to.min(next));
        if lo < hi {
            bytes += reader.measure(first, lo, hi)?;
        }
    }
    Ok(bytes)
}

fn log_resume(name: &str, restored: Frontier, queued: u64, resume: Option<InFlight>) {
    match restored {
        Some(0) if queued == 0 => {}
        Some(f) => tracing::info!(
            sink = %name,
            "resuming: times before {f} were committed; {queued} messages still to deliver{}",
            if resume.is_some() { ", starting with the batch in flight" } else { "" }
        ),
        None => {
            tracing::info!(sink = %name, "output was already complete; {queued} messages still to deliver")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rec(&'static str);

    impl WriteJson for Rec {
        fn write_json(&self, out: &mut Vec<u8>) {
            out.extend_from_slice(format!("{{\"k\":\"{}\"}}", self.0).as_bytes());
        }
    }

    #[test]
    fn messages_are_json_with_deterministic_ids() {
        let mut scratch = Vec::new();
        let m = encode_message("s", 7, -2, &Rec("a"), &mut scratch);
        let j: serde_json::Value = serde_json::from_slice(&m).unwrap();
        assert_eq!(j["op"], "delete");
        assert_eq!(j["diff"], -2);
        assert_eq!(j["time"], 7);
        assert_eq!(j["data"]["k"], "a");
        assert_eq!(j["messageId"], message_id("s", 7, -2, br#"{"k":"a"}"#));
        assert!(m.starts_with(MESSAGE_ID_PREFIX));
        let again = encode_message("s", 7, -2, &Rec("a"), &mut scratch);
        assert_eq!(m, again);
        for other in [
            encode_message("t", 7, -2, &Rec("a"), &mut scratch),
            encode_message("s", 8, -2, &Rec("a"), &mut scratch),
            encode_message("s", 7, 2, &Rec("a"), &mut scratch),
            encode_message("s", 7, -2, &Rec("b"), &mut scratch),
        ] {
            assert_ne!(m[..46], other[..46]);
        }
    }

    #[test]
    fn config_errors_say_what_to_fix() {
        let ok = WebhookConfig::new("w", "http://127.0.0.1:1/x", "/tmp/w");
        assert!(ok.validate().is_ok());
        let mut c = ok.clone();
        c.url = "ftp://x".into();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("not an http"));
        let mut c = ok.clone();
        c.headers = vec![("Idempotency-Key".into(), "x".into())];
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("set by the sink"));
        let mut c = ok.clone();
        c.headers = vec![("Bad Header".into(), "x".into())];
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.batch_size = 0;
        assert!(c.validate().is_err());
        let mut c = ok;
        c.max_backoff = Duration::from_millis(1);
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max_backoff"));
    }

    #[test]
    fn cursors_are_clamped_to_the_log() {
        let flight = InFlight {
            end: 20,
            first_attempt_ms: 5,
            attempts: 2,
        };
        assert_eq!(clamp_cursor(10, Some(flight), 0, 30), (10, Some(flight)));
        assert_eq!(clamp_cursor(10, Some(flight), 0, 15), (10, None));
        assert_eq!(clamp_cursor(10, Some(flight), 12, 30), (12, None));
        assert_eq!(clamp_cursor(40, None, 0, 30), (30, None));
    }
}
