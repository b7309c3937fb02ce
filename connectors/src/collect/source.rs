//! The source of an HTTP collection endpoint without a Kafka topic: it tails
//! the collect log and binds its lines to logical times that survive
//! restarts.
//!
//! ## Time
//!
//! Ingestion time, as for Kafka sources: a line read at wall-clock `now` is
//! bound to `now` rounded down to `tick_ms` (never less than a time already
//! used). An idle source reports the current tick as its lower bound, so it
//! never holds back the frontier.
//!
//! ## Bindings
//!
//! Line numbers are bound to times exactly like Kafka offsets, with the same
//! [`BindingLog`] (`time ⇒ [lo, hi)` of line numbers, inclusive start,
//! exclusive end; contiguous, non-empty, non-decreasing times), in
//! `<dir>/bindings`. A poll reads up to its budget of synced lines, appends
//! one binding for the new ones and `fdatasync`s it **before** any of them
//! leaves the source. A restart therefore re-reads the log from line 0 and
//! emits every bound line at its recorded time; lines past the last binding
//! are new and get times `>=` the largest recorded time plus one tick. Sinks
//! skip the times they committed before, so the output is exactly once.
//!
//! A log with fewer lines than its bindings cover was truncated or replaced:
//! opening the source fails and says so (nothing is silently re-timed).

use std::io;
use std::path::{Path, PathBuf};

use weft_dataflows::event::{parse_event, ParseContext};
use weft_dataflows::record::ErrorRecord;

use super::log::{self, LogReader, LogWriter};
use crate::kafka::reclock::{BindingLog, ReplayCursor};
use crate::source::{Decoded, PartProgress, Poll, SourcePart};

/// File name of the bindings in the source's directory.
pub const BINDINGS_FILE: &str = "bindings";

/// Settings of one HTTP source that writes to its own log.
#[derive(Clone, Debug)]
pub struct CollectSourceConfig {
    /// The source's name (error records, thread names, the directory).
    pub name: String,
    /// The job's state directory; the log lives in `collect/<name>/` under it.
    pub state_dir: PathBuf,
    /// Granularity of the ingestion-time clock, in milliseconds.
    pub tick_ms: u64,
}

impl CollectSourceConfig {
    /// The directory of the source's log and bindings.
    pub fn dir(&self) -> PathBuf {
        source_dir(&self.state_dir, &self.name)
    }

    /// Opens the log and its bindings: the writer for the API, and the part
    /// that reads it (one per source; it runs on one worker).
    pub fn open(&self) -> io::Result<(LogWriter, CollectPart)> {
        if self.tick_ms == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "HTTP source {:?} has tick_ms = 0; use a positive tick",
                    self.name
                ),
            ));
        }
        let dir = self.dir();
        let bindings = BindingLog::open(dir.join(BINDINGS_FILE))?;
        let (writer, reader) = log::open(&dir, &self.name)?;
        if let Some(upper) = bindings.upper() {
            if upper > reader.lines_at_open() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "collect log {} has {} lines but its bindings cover {upper}: the log was truncated or replaced; restore it, or remove {} to start the source over",
                        reader.path().display(),
                        reader.lines_at_open(),
                        dir.display()
                    ),
                ));
            }
        }
        if let Some(lo) = bindings.lower() {
            tracing::info!(source = %self.name, lines = upper_or_zero(&bindings), "replaying from line {lo} at the recorded times");
        }
        let floor = bindings.max_time().map_or(0, |t| t + self.tick_ms);
        let part = CollectPart {
            name: self.name.clone(),
            replay: ReplayCursor::new(bindings.bindings()),
            bindings,
            reader,
            tick_ms: self.tick_ms,
            live_time: 0,
            floor,
            last_lower: 0,
            pending: None,
            held: Vec::new(),
            records: 0,
        };
        Ok((writer, part))
    }
}

fn upper_or_zero(b: &BindingLog) -> u64 {
    b.upper().unwrap_or(0)
}

/// Directory of a source's log under a job's state directory: the name
/// with every byte but `[A-Za-z0-9._-]` percent-encoded.
pub fn source_dir(state_dir: &Path, source: &str) -> PathBuf {
    let mut escaped = String::with_capacity(source.len());
    for b in source.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && !escaped.is_empty())
        {
            escaped.push(b as char);
        } else {
            escaped.push_str(&format!("%{b:02X}"));
        }
    }
    state_dir.join("collect").join(escaped)
}

/// Reads the collect log of one source (see the module docs).
#[derive(Debug)]
pub struct CollectPart {
    name: String,
    reader: LogReader,
    bindings: BindingLog,
    replay: ReplayCursor,
    tick_ms: u64,
    /// The time of new lines (monotone).
    live_time: u64,
    /// New lines get at least this time: the largest recorded time plus a tick.
    floor: u64,
    /// The last lower bound returned.
    last_lower: u64,
    /// New lines read but not bound yet: `time ⇒ [lo, hi)`.
    pending: Option<(u64, u64, u64)>,
    /// Records held back until their binding is durable.
    held: Vec<(Decoded, u64)>,
    records: u64,
}

impl CollectPart {
    /// Appends and syncs the pending binding; `false` (records held) on failure.
    fn bind(&mut self) -> bool {
        let Some((time, lo, hi)) = self.pending else {
            return true;
        };
        match self.bindings.append(time, lo, hi) {
            Ok(()) => {
                self.pending = None;
                true
            }
            Err(e) => {
                tracing::error!(source = %self.name, "cannot record collect-log bindings, holding {} records back: {e}", self.held.len());
                false
            }
        }
    }

    /// Reads up to `budget` lines into `held`, binding new ones to `live`.
    fn read(&mut self, budget: usize, live: u64) -> io::Result<usize> {
        let CollectPart {
            name,
            reader,
            replay,
            pending,
            held,
            last_lower,
            ..
        } = self;
        reader.read_lines(budget, |line, offset, bytes| {
            let time = match replay.time_of(line) {
                Some(t) => {
                    replay.advance_past(line);
                    t.max(*last_lower)
                }
                None => {
                    let lo = pending.map_or(line, |(_, lo, _)| lo);
                    *pending = Some((live, lo, line + 1));
                    live
                }
            };
            let decoded = parse_event(
                bytes,
                &ParseContext {
                    default_received_at_ms: Some(time as i64),
                },
            )
            .map_err(|rej| ErrorRecord::new(name, 0, offset, rej, bytes));
            held.push((decoded, time));
        })
    }

    fn lower(&self) -> u64 {
        let replay = self.replay.pending_time().unwrap_or(u64::MAX);
        let held = self.held.iter().map(|(_, t)| *t).min().unwrap_or(u64::MAX);
        self.live_time.min(replay).min(held).max(self.last_lower)
    }
}

impl SourcePart for CollectPart {
    fn poll(&mut self, out: &mut Vec<(Decoded, u64)>, budget: usize) -> Poll {
        // STEP 1. Records whose binding failed earlier go first, once bound.
        if self.pending.is_some() && !self.bind() {
            return Poll::Pending {
                lower: self.last_lower,
                idle: true,
            };
        }
        // STEP 2. The time of lines read now.
        let tick = self.tick_ms;
        self.live_time = self
            .live_time
            .max(crate::kafka::now_ms() / tick * tick)
            .max(self.floor);
        // STEP 3. Read, bind durably, hand out.
        let read = if self.held.is_empty() {
            match self.read(budget, self.live_time) {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(source = %self.name, "cannot read the collect log (will retry): {e}");
                    0
                }
            }
        } else {
            0
        };
        self.records += read as u64;
        if !self.bind() {
            return Poll::Pending {
                lower: self.lower(),
                idle: true,
            };
        }
        out.append(&mut self.held);
        // STEP 4. Nothing earlier than a pending replay or the live time.
        self.last_lower = self.lower();
        Poll::Pending {
            lower: self.last_lower,
            idle: read == 0,
        }
    }

    fn progress(&self) -> PartProgress {
        PartProgress {
            consumed: self.reader.offset(),
            total: None,
            records: self.records,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn config(dir: &Path) -> CollectSourceConfig {
        CollectSourceConfig {
            name: "api".into(),
            state_dir: dir.to_path_buf(),
            tick_ms: 10,
        }
    }

    fn line(i: usize) -> String {
        format!(
            "{{\"type\":\"track\",\"event\":\"E\",\"userId\":\"u{i}\",\"messageId\":\"m{i}\",\"receivedAt\":\"2026-01-01T00:00:00Z\"}}\n"
        )
    }

    /// Polls until `n` records came out (bounded), returning `(messageId or error, time)`.
    fn drain(part: &mut CollectPart, n: usize) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut lower = 0;
        while got.len() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} records",
                got.len()
            );
            let Poll::Pending { lower: l, .. } = part.poll(&mut out, 3) else {
                panic!("an HTTP source never ends");
            };
            for (d, t) in out.drain(..) {
                assert!(
                    t >= lower,
                    "time {t} below the previous lower bound {lower}"
                );
                let id = match d {
                    Ok(e) => e.message_id().to_string(),
                    Err(r) => format!("error@{}:{}", r.offset, r.reason),
                };
                got.push((id, t));
            }
            assert!(l >= lower, "lower bounds never go back");
            lower = l;
            std::thread::sleep(Duration::from_millis(2));
        }
        got
    }

    #[test]
    fn synced_lines_are_read_bound_and_replayed_at_the_same_times() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, mut part) = config(dir.path()).open().unwrap();
        let mut out = Vec::new();
        assert!(matches!(
            part.poll(&mut out, 10),
            Poll::Pending { idle: true, .. }
        ));
        assert!(out.is_empty());
        writer
            .append_blocking((0..5).map(line).collect::<String>().into_bytes())
            .unwrap();
        writer
            .append_blocking(b"{\"type\":\"track\"}\n".to_vec())
            .unwrap();
        let first = drain(&mut part, 6);
        assert_eq!(first[0].0, "m0");
        assert_eq!(
            first[5].0, "error@480:missing_id",
            "rejected lines keep their byte offset"
        );
        std::thread::sleep(Duration::from_millis(25));
        writer
            .append_blocking((5..8).map(line).collect::<String>().into_bytes())
            .unwrap();
        let second = drain(&mut part, 3);
        assert!(second[0].1 > first[5].1, "a later tick");
        drop((writer, part));

        // A restart replays every line at its recorded time, then goes on.
        let (writer, mut again) = config(dir.path()).open().unwrap();
        let replay = drain(&mut again, 9);
        let mut before = first.clone();
        before.extend(second.clone());
        assert_eq!(replay, before);
        writer.append_blocking(line(8).into_bytes()).unwrap();
        let new = drain(&mut again, 1);
        assert_eq!(new[0].0, "m8");
        assert!(
            new[0].1 >= second[2].1 + 10,
            "new lines come after the recorded times"
        );
    }

    #[test]
    fn a_torn_tail_is_cut_and_a_truncated_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let (writer, mut part) = cfg.open().unwrap();
        writer
            .append_blocking((0..3).map(line).collect::<String>().into_bytes())
            .unwrap();
        assert_eq!(drain(&mut part, 3).len(), 3);
        drop((writer, part));
        let log_path = cfg.dir().join(log::LOG_FILE);
        let mut text = std::fs::read(&log_path).unwrap();
        text.extend_from_slice(b"{\"type\":\"tr");
        std::fs::write(&log_path, &text).unwrap();
        let (_w, mut part) = cfg.open().unwrap();
        assert_eq!(drain(&mut part, 3).len(), 3);
        assert!(
            std::fs::read(&log_path).unwrap().ends_with(b"}\n"),
            "torn line cut"
        );
        drop((_w, part));
        let keep = line(0).len();
        std::fs::write(&log_path, &text[..keep]).unwrap();
        let err = cfg.open().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(
            err.to_string()
                .contains("has 1 lines but its bindings cover 3"),
            "{err}"
        );
    }

    #[test]
    fn group_commit_serves_many_writers() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, mut part) = config(dir.path()).open().unwrap();
        std::thread::scope(|s| {
            for t in 0..8 {
                let w = writer.clone();
                s.spawn(move || {
                    for i in 0..50 {
                        w.append_blocking(line(t * 1000 + i).into_bytes()).unwrap();
                    }
                });
            }
        });
        let got = drain(&mut part, 400);
        let ids: std::collections::BTreeSet<_> = got.iter().map(|(m, _)| m.clone()).collect();
        assert_eq!(ids.len(), 400);
    }

    #[test]
    fn source_names_are_escaped_into_one_directory() {
        let d = source_dir(Path::new("/s"), "../a b");
        assert_eq!(d, Path::new("/s/collect/%2E.%2Fa%20b"));
        assert_eq!(
            source_dir(Path::new("/s"), "web.v1"),
            Path::new("/s/collect/web.v1")
        );
    }
}
