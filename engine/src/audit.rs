//! The regulation audit log: for every regulation, when it was applied and
//! when each sink committed its effects.
//!
//! One JSON object per line, appended and fsync'd as it happens (one fsync
//! per batch: the `applied` lines of one logical time, the `committed` lines
//! of one sink commit):
//!
//! ```text
//! {"event":"applied","regulation":"r-1","type":"delete","identifier":"email:a@b.c","requested_time":T,"effect_time":T+1,"identifiers":3,"wall":"…"}
//! {"event":"committed","regulation":"r-1","sink":"events-out","effect_time":T+1,"wall":"…"}
//! {"event":"rejected","line":7,"message":"…","wall":"…"}
//! ```
//!
//! `applied` is written once the regulation's time has completed (its
//! resolution is final); `committed` once a sink has committed a frontier
//! beyond the effect time, i.e. the sink made every change the regulation
//! caused durable (for a Kafka sink: the transaction holding the tombstones
//! committed). `wall` is UTC wall-clock time with ms. A restarted job replays
//! its regulations, so their entries appear again with the new run's wall
//! times; the log is append-only.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use weft_dataflows::event::write_json_string;
use weft_dataflows::privacy::Regulation;

/// A regulation waiting for sinks to commit its effects.
struct Pending {
    id: Box<str>,
    effect_time: u64,
    /// Sinks that have not committed it yet.
    sinks: BTreeSet<String>,
}

/// The audit log of one job (on worker 0).
pub struct AuditLog {
    file: File,
    /// Every sink of the job, and the last frontier each committed (`None`: complete).
    sinks: Vec<(String, Option<u64>)>,
    pending: Vec<Pending>,
    /// Lines not yet written (see [`AuditLog::flush`]).
    buffer: Vec<u8>,
}

impl AuditLog {
    /// Opens (appends to) the log at `path`; `sinks` are the job's sink names.
    pub fn open(path: &Path, sinks: Vec<String>) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| {
                io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))
            })?;
        Ok(AuditLog {
            file,
            sinks: sinks.into_iter().map(|s| (s, Some(0))).collect(),
            pending: Vec::new(),
            buffer: Vec::new(),
        })
    }

    /// Records that `regulation` was applied (resolved to `identifiers`
    /// identifiers); its effects are at `regulation.at + 1`. Buffered: call
    /// [`AuditLog::flush`] after a batch.
    pub fn applied(&mut self, regulation: &Regulation, identifiers: usize) -> io::Result<()> {
        let effect_time = regulation.at + 1;
        let mut line = Vec::with_capacity(256);
        line.extend_from_slice(b"{\"event\":\"applied\",\"regulation\":");
        write_json_string(&mut line, &regulation.id);
        line.extend_from_slice(b",\"type\":");
        write_json_string(&mut line, regulation.kind.as_str());
        line.extend_from_slice(b",\"identifier\":");
        write_json_string(
            &mut line,
            &format!(
                "{}:{}",
                regulation.identifier.kind, regulation.identifier.value
            ),
        );
        line.extend_from_slice(
            format!(
                ",\"requested_time\":{},\"effect_time\":{effect_time},\"identifiers\":{identifiers}",
                regulation.at
            )
            .as_bytes(),
        );
        self.finish(line)?;
        let mut pending = Pending {
            id: regulation.id.clone(),
            effect_time,
            sinks: self.sinks.iter().map(|(s, _)| s.clone()).collect(),
        };
        // Sinks may already have committed past it (operators run in any order).
        let done: Vec<String> = self
            .sinks
            .iter()
            .filter(|(_, f)| f.is_none_or(|f| f > effect_time))
            .map(|(s, _)| s.clone())
            .collect();
        for sink in done {
            pending.sinks.remove(&sink);
            self.committed_line(&pending.id, &sink, effect_time)?;
        }
        if !pending.sinks.is_empty() {
            self.pending.push(pending);
        }
        Ok(())
    }

    /// Records that `sink` committed everything before `frontier` (empty: complete).
    pub fn sink_committed(&mut self, sink: &str, frontier: &[u64]) -> io::Result<()> {
        let now = frontier.iter().min().copied();
        if let Some((_, f)) = self.sinks.iter_mut().find(|(s, _)| s == sink) {
            *f = now;
        }
        let mut lines = Vec::new();
        for p in &mut self.pending {
            if now.is_none_or(|f| f > p.effect_time) && p.sinks.remove(sink) {
                lines.push((p.id.clone(), p.effect_time));
            }
        }
        self.pending.retain(|p| !p.sinks.is_empty());
        for (id, t) in lines {
            self.committed_line(&id, sink, t)?;
        }
        self.flush()
    }

    /// Records a line of the regulation log that is not a regulation.
    pub fn rejected(&mut self, line_no: u64, message: &str) -> io::Result<()> {
        let mut line =
            format!("{{\"event\":\"rejected\",\"line\":{line_no},\"message\":").into_bytes();
        write_json_string(&mut line, message);
        self.finish(line)?;
        self.flush()
    }

    fn committed_line(&mut self, id: &str, sink: &str, effect_time: u64) -> io::Result<()> {
        let mut line = b"{\"event\":\"committed\",\"regulation\":".to_vec();
        write_json_string(&mut line, id);
        line.extend_from_slice(b",\"sink\":");
        write_json_string(&mut line, sink);
        line.extend_from_slice(format!(",\"effect_time\":{effect_time}").as_bytes());
        self.finish(line)
    }

    /// Writes the buffered lines and syncs the file (one fsync per batch of
    /// lines: a burst of a thousand deletions is not a thousand fsyncs).
    pub fn flush(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.file.write_all(&self.buffer)?;
        self.buffer.clear();
        self.file.sync_data()
    }

    /// Adds the wall time and ends the line, in the buffer.
    fn finish(&mut self, mut line: Vec<u8>) -> io::Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        line.extend_from_slice(b",\"wall\":");
        write_json_string(&mut line, &weft_dataflows::event::format_iso8601(now));
        line.extend_from_slice(b"}\n");
        self.buffer.extend_from_slice(&line);
        Ok(())
    }
}

/// The audit log of a job, shared by its worker-0 operators and its sinks'
/// threads (which record commits).
pub type SharedAudit = std::sync::Arc<std::sync::Mutex<Option<AuditLog>>>;

/// Locks a [`SharedAudit`] (a panic elsewhere does not lose the log).
pub fn lock_audit(audit: &SharedAudit) -> std::sync::MutexGuard<'_, Option<AuditLog>> {
    audit.lock().unwrap_or_else(|p| p.into_inner())
}
