//! The delivery thread of one destination: batches committed messages,
//! POSTs them one batch at a time, retries, and resolves each batch as
//! delivered, discarded or dead-lettered.
//!
//! It runs on its own OS thread with a single-threaded tokio runtime, so a
//! destination that is slow, failing or unreachable holds back only its own
//! queue. Its progress is the *cursor* file (`[delivered, in-flight end,
//! first attempt (Unix ms), attempts]`), rewritten before every attempt and
//! after every resolved batch, and fsynced at most every
//! [`CURSOR_SYNC_INTERVAL`] (and when the thread stops): a stale cursor after
//! a machine crash only means more duplicates, never a loss, because queue
//! segments are deleted only after the cursor has moved past them and a
//! reopened sink resumes at the first message still on disk.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::Url;
use xxhash_rust::xxh3::Xxh3Default;

use super::log::{segment_path, LogReader, Seq};
use super::metrics::{add, sub};
use super::queue::Shared;
use super::retry::{classify, parse_retry_after, Backoff, StatusClass};
use super::MESSAGE_ID_PREFIX;

/// How often the cursor is fsynced at most.
pub const CURSOR_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// The most response bytes kept for the discard file and error messages.
const RESPONSE_PREFIX_BYTES: usize = 4096;

/// How long to wait before retrying a failed disk operation.
const DISK_RETRY: Duration = Duration::from_secs(1);

/// Where and how a destination is called.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) name: String,
    pub(crate) url: Url,
    pub(crate) headers: HeaderMap,
}

/// Batching and retry settings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Policy {
    pub(crate) batch_size: usize,
    pub(crate) max_batch_bytes: usize,
    pub(crate) linger: Duration,
    pub(crate) retry_horizon: Duration,
}

/// The batch in flight, as the cursor records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct InFlight {
    /// The batch is `[delivered, end)`.
    pub(crate) end: Seq,
    /// When it was first attempted (Unix ms): the retry horizon starts there.
    pub(crate) first_attempt_ms: u64,
    /// Attempts so far, across runs.
    pub(crate) attempts: u64,
}

/// The cursor file's record: `[delivered, in-flight end, first attempt, attempts]`.
pub(crate) type CursorFile = super::slots::SlotFile<4>;

/// Reads a cursor record: the delivery position and the batch in flight.
pub(crate) fn parse_cursor(values: [u64; 4]) -> (Seq, Option<InFlight>) {
    let [delivered, end, first_attempt_ms, attempts] = values;
    let flight = (end > delivered).then_some(InFlight {
        end,
        first_attempt_ms,
        attempts,
    });
    (delivered, flight)
}

/// Files recording batches that were given up on.
#[derive(Debug)]
pub(crate) struct Records {
    pub(crate) dead_letter: PathBuf,
    pub(crate) discarded: PathBuf,
}

/// Consecutive messages `[start, start + messages.len())`.
#[derive(Debug)]
struct Batch {
    start: Seq,
    messages: Vec<Vec<u8>>,
    bytes: usize,
}

impl Batch {
    fn end(&self) -> Seq {
        self.start + self.messages.len() as u64
    }

    fn push(&mut self, message: Vec<u8>) {
        self.bytes += message.len();
        self.messages.push(message);
    }

    /// The batch's `Idempotency-Key`: the xxh3-128 (hex) of its messages'
    /// `messageId`s in order.
    fn key(&self) -> String {
        let mut h = Xxh3Default::new();
        for m in &self.messages {
            let id = m
                .strip_prefix(MESSAGE_ID_PREFIX)
                .and_then(|rest| rest.get(..32))
                .unwrap_or(m);
            h.update(id);
            h.update(b"\n");
        }
        format!("{:032x}", h.digest128())
    }

    /// `[m1,m2,…]`.
    fn array(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes + self.messages.len() + 2);
        out.push(b'[');
        for (i, m) in self.messages.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(m);
        }
        out.push(b']');
        out
    }
}

/// How one request went.
#[derive(Debug)]
enum Verdict {
    Delivered,
    Retry {
        error: String,
        retry_after: Option<Duration>,
    },
    Discard {
        status: u16,
        response: String,
    },
}

/// The delivery side of one destination.
pub(crate) struct Delivery {
    pub(crate) shared: Arc<Shared>,
    pub(crate) target: Target,
    pub(crate) policy: Policy,
    pub(crate) client: reqwest::Client,
    pub(crate) reader: LogReader,
    pub(crate) queue_dir: PathBuf,
    pub(crate) cursor: CursorFile,
    pub(crate) cursor_synced: Instant,
    pub(crate) backoff: Backoff,
    pub(crate) records: Records,
    /// The batch that was in flight when the previous run stopped: sent
    /// again first, with the same messages (so the same key).
    pub(crate) resume: Option<InFlight>,
}

impl Delivery {
    /// Delivers until the sink shuts down.
    pub(crate) async fn run(mut self) {
        loop {
            let batch = match self.next_batch().await {
                Ok(Some(batch)) => batch,
                Ok(None) => break,
                Err(e) => {
                    let error = format!("cannot read the queue: {e}");
                    tracing::error!(sink = %self.target.name, "{error}; retrying in {DISK_RETRY:?}");
                    self.shared.metrics.set_last_error(error);
                    if !self.pause(DISK_RETRY).await {
                        break;
                    }
                    continue;
                }
            };
            if !self.deliver(batch).await {
                break;
            }
        }
        if let Err(e) = self.cursor.sync() {
            tracing::warn!(sink = %self.target.name, "cannot sync the delivery cursor: {e}");
        }
    }

    /// Waits until a batch is due and reads it; `None` on shutdown.
    async fn next_batch(&mut self) -> io::Result<Option<Batch>> {
        let mut lingering_since: Option<Instant> = None;
        loop {
            let (start, available, draining) = {
                let st = self.shared.lock();
                if st.shutdown {
                    return Ok(None);
                }
                (st.delivered, st.committed_end - st.delivered, st.draining)
            };
            if let Some(resume) = self.resume {
                return self.read_batch(start, resume.end, usize::MAX).map(Some);
            }
            let deadline = if available == 0 {
                lingering_since = None;
                None
            } else {
                let since = *lingering_since.get_or_insert_with(Instant::now);
                if available >= self.policy.batch_size as u64
                    || draining
                    || since.elapsed() >= self.policy.linger
                {
                    let end = start + available.min(self.policy.batch_size as u64);
                    return self
                        .read_batch(start, end, self.policy.max_batch_bytes)
                        .map(Some);
                }
                Some(since + self.policy.linger)
            };
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.shared.wake.notified() => {}
                _ = sleep => {}
                _ = self.shared.stop.notified() => return Ok(None),
            }
        }
    }

    /// Reads messages `[start, end)`, fewer if they exceed `budget` bytes
    /// (but at least one): from disk before the in-memory run, then from
    /// memory.
    fn read_batch(&mut self, start: Seq, end: Seq, budget: usize) -> io::Result<Batch> {
        let (disk_end, segments) = {
            let st = self.shared.lock();
            let disk_end = st.memory_front().map_or(end, |f| f.clamp(start, end));
            let mut segments: Vec<Seq> = st.segment_of(start).into_iter().collect();
            segments.extend(st.segments.range(start + 1..disk_end.max(start + 1)));
            (disk_end, segments)
        };
        let mut batch = Batch {
            start,
            messages: Vec::new(),
            bytes: 0,
        };
        let mut full = false;
        for seq in start..disk_end {
            let segment = segments
                .iter()
                .rev()
                .find(|&&first| first <= seq)
                .copied()
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("no segment holds message {seq}"),
                    )
                })?;
            let message = self.reader.read(segment, seq)?;
            if !batch.messages.is_empty() && batch.bytes + message.len() > budget {
                full = true;
                break;
            }
            batch.push(message);
        }
        sub(&self.shared.metrics.spilled_bytes, batch.bytes as u64);
        if !full && disk_end < end {
            let mut st = self.shared.lock();
            let taken = st.take_memory(
                end,
                budget.saturating_sub(batch.bytes),
                batch.messages.is_empty(),
            );
            let memory = st.memory_bytes() as u64;
            drop(st);
            self.shared
                .metrics
                .memory_bytes
                .store(memory, Ordering::Relaxed);
            for m in taken {
                batch.push(m);
            }
        }
        Ok(batch)
    }

    /// Sends one batch until it is resolved; `false` on shutdown.
    async fn deliver(&mut self, batch: Batch) -> bool {
        let key = batch.key();
        let array = batch.array();
        let mut body = Vec::with_capacity(array.len() + 10);
        body.extend_from_slice(b"{\"batch\":");
        body.extend_from_slice(&array);
        body.push(b'}');
        let mut flight = match self.resume.take() {
            Some(r) if r.end == batch.end() => r,
            _ => InFlight {
                end: batch.end(),
                first_attempt_ms: unix_ms(),
                attempts: 0,
            },
        };
        loop {
            flight.attempts += 1;
            self.write_cursor(batch.start, Some(flight));
            let verdict = tokio::select! {
                v = self.post(&body, &key) => v,
                _ = self.shared.stop.notified() => return false,
            };
            match verdict {
                Verdict::Delivered => {
                    let m = &self.shared.metrics;
                    add(&m.delivered_messages, batch.messages.len() as u64);
                    add(&m.delivered_batches, 1);
                    self.resolve(&batch);
                    return true;
                }
                Verdict::Discard { status, response } => {
                    return self.discard(&batch, &key, &array, status, response).await;
                }
                Verdict::Retry { error, retry_after } => {
                    self.shared.metrics.set_last_error(error.clone());
                    let Some(wait) = self.retry_wait(&flight, retry_after) else {
                        return self.dead_letter(&batch, &key, &array, &flight, error).await;
                    };
                    add(&self.shared.metrics.retries, 1);
                    tracing::debug!(
                        sink = %self.target.name,
                        attempt = flight.attempts,
                        "batch of {} failed ({error}); retrying in {wait:?}",
                        batch.messages.len()
                    );
                    if !self.pause(wait).await {
                        return false;
                    }
                }
            }
        }
    }

    /// How long to wait before the next attempt, or `None` to give up: the
    /// horizon has passed, or `Retry-After` points beyond it.
    fn retry_wait(&mut self, flight: &InFlight, retry_after: Option<Duration>) -> Option<Duration> {
        let deadline = flight
            .first_attempt_ms
            .saturating_add(self.policy.retry_horizon.as_millis() as u64);
        let now = unix_ms();
        if now >= deadline {
            return None;
        }
        let left = Duration::from_millis(deadline - now);
        match retry_after {
            Some(wait) if wait > left => None,
            Some(wait) => Some(wait),
            None => {
                let attempt = u32::try_from(flight.attempts).unwrap_or(u32::MAX);
                Some(self.backoff.wait(attempt).min(left))
            }
        }
    }

    /// One POST of a batch.
    async fn post(&self, body: &[u8], key: &str) -> Verdict {
        let request = self
            .client
            .post(self.target.url.clone())
            .headers(self.target.headers.clone())
            .header("idempotency-key", key)
            .body(body.to_vec());
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                return Verdict::Retry {
                    error: describe(&e),
                    retry_after: None,
                }
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let text = read_prefix(response).await;
        match classify(status) {
            StatusClass::Success => Verdict::Delivered,
            StatusClass::Transient => Verdict::Retry {
                error: format!("HTTP {status}: {text}"),
                retry_after,
            },
            StatusClass::Permanent => Verdict::Discard {
                status,
                response: text,
            },
        }
    }

    /// Records a permanently rejected batch and resolves it.
    async fn discard(
        &mut self,
        batch: &Batch,
        key: &str,
        array: &[u8],
        status: u16,
        response: String,
    ) -> bool {
        let error = format!("HTTP {status}: {response}");
        tracing::warn!(
            sink = %self.target.name,
            "batch of {} rejected ({error}); recorded in {} and not retried",
            batch.messages.len(),
            self.records.discarded.display()
        );
        self.shared.metrics.set_last_error(error);
        let header = serde_json::json!({
            "sink": self.target.name,
            "url": self.target.url.as_str(),
            "at": unix_ms(),
            "status": status,
            "response": response,
            "idempotencyKey": key,
        });
        let path = self.records.discarded.clone();
        if !self.append_record(&path, &header, array).await {
            return false;
        }
        let m = &self.shared.metrics;
        add(&m.discarded_messages, batch.messages.len() as u64);
        add(&m.discarded_batches, 1);
        self.resolve(batch);
        true
    }

    /// Records a batch that failed until the horizon and resolves it.
    async fn dead_letter(
        &mut self,
        batch: &Batch,
        key: &str,
        array: &[u8],
        flight: &InFlight,
        error: String,
    ) -> bool {
        tracing::warn!(
            sink = %self.target.name,
            attempts = flight.attempts,
            "batch of {} still failing after {:?} ({error}); written to {}",
            batch.messages.len(),
            self.policy.retry_horizon,
            self.records.dead_letter.display()
        );
        let header = serde_json::json!({
            "sink": self.target.name,
            "url": self.target.url.as_str(),
            "at": unix_ms(),
            "firstAttemptAt": flight.first_attempt_ms,
            "attempts": flight.attempts,
            "lastError": error,
            "idempotencyKey": key,
        });
        let path = self.records.dead_letter.clone();
        if !self.append_record(&path, &header, array).await {
            return false;
        }
        let m = &self.shared.metrics;
        add(&m.dead_lettered_messages, batch.messages.len() as u64);
        add(&m.dead_lettered_batches, 1);
        self.resolve(batch);
        true
    }

    /// Appends `{…header, "batch": array}` as one line and fsyncs it,
    /// retrying until it succeeds (the batch must not be resolved before it
    /// is recorded); `false` on shutdown.
    async fn append_record(
        &self,
        path: &PathBuf,
        header: &serde_json::Value,
        array: &[u8],
    ) -> bool {
        let mut line = header.to_string().into_bytes();
        line.pop(); // the closing brace
        line.extend_from_slice(b",\"batch\":");
        line.extend_from_slice(array);
        line.extend_from_slice(b"}\n");
        loop {
            let written = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| {
                    f.write_all(&line)?;
                    f.sync_data()
                });
            match written {
                Ok(()) => return true,
                Err(e) => {
                    let error = format!("cannot append to {}: {e}", path.display());
                    tracing::error!(sink = %self.target.name, "{error}; retrying in {DISK_RETRY:?}");
                    self.shared.metrics.set_last_error(error);
                    if !self.pause(DISK_RETRY).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Marks a batch resolved: advances the cursor, deletes the segments
    /// nothing needs any more, then publishes the new position (waking a
    /// draining commit, which then sees the metrics and files up to date).
    fn resolve(&mut self, batch: &Batch) {
        let end = batch.end();
        self.write_cursor(end, None);
        sub(
            &self.shared.metrics.queued_messages,
            batch.messages.len() as u64,
        );
        let released = self.shared.lock().segments_before(end);
        for &first in &released {
            self.reader.forget(first);
            let path = segment_path(&self.queue_dir, first);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(sink = %self.target.name, "cannot delete {}: {e}", path.display());
            }
        }
        {
            let mut st = self.shared.lock();
            st.delivered = end;
            for first in &released {
                st.segments.remove(first);
            }
        }
        self.shared.resolved.notify_all();
    }

    /// Records the delivery position (and the batch in flight).
    fn write_cursor(&mut self, delivered: Seq, flight: Option<InFlight>) {
        let values = match flight {
            Some(f) => [delivered, f.end, f.first_attempt_ms, f.attempts],
            None => [delivered, delivered, 0, 0],
        };
        let sync = self.cursor_synced.elapsed() >= CURSOR_SYNC_INTERVAL;
        match self.cursor.write(&values, sync) {
            Ok(()) if sync => self.cursor_synced = Instant::now(),
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(sink = %self.target.name, "cannot record the delivery cursor: {e}")
            }
        }
    }

    /// Sleeps for `wait`; `false` if the sink shuts down meanwhile.
    async fn pause(&self, wait: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = self.shared.stop.notified() => false,
        }
    }
}

/// Up to [`RESPONSE_PREFIX_BYTES`] of a response body, as text.
async fn read_prefix(mut response: reqwest::Response) -> String {
    let mut out = Vec::new();
    while out.len() < RESPONSE_PREFIX_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => out.extend_from_slice(&chunk),
            _ => break,
        }
    }
    out.truncate(RESPONSE_PREFIX_BYTES);
    String::from_utf8_lossy(&out).into_owned()
}

/// A transport error with its causes, e.g. `timeout: error sending request …: operation timed out`.
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut text = format!("{kind}: {e}");
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
