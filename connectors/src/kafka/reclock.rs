//! Reclocking: the durable binding of Kafka offsets to Weft's logical times.
//!
//! Kafka orders records per partition by offset; Weft orders changes by a
//! `u64` logical time (milliseconds of ingestion time, see
//! [`super::source`]). The source *reclocks* each partition: it decides which
//! offsets belong to which time and writes that decision down before any of
//! those records leaves the source, so that a restarted job reproduces it.
//!
//! ## The binding
//!
//! For one `(source, topic, partition)` the bindings are a list of entries
//! `time ⇒ [lo, hi)`: every record with offset `o`, `lo <= o < hi`
//! (**inclusive start, exclusive end**), is emitted at logical time `time`.
//! Invariants, checked when a log is read and when it is appended to:
//!
//! * **Contiguity**: each entry starts where the previous one ended
//!   (`lo_{k+1} == hi_k`), so the entries cover one gap-free offset range
//!   starting at the first entry's `lo`. Offsets that hold no deliverable
//!   record (transaction markers, aborted records) may sit inside a range.
//! * **Non-empty**: `lo < hi`; `hi - 1` is the offset of a record the source
//!   actually read, so a replay knows an entry is complete when it has seen
//!   a record at offset `>= hi - 1`.
//! * **Monotonicity**: times never decrease from one entry to the next
//!   (`time_{k+1} >= time_k`). Consecutive entries may share a time (the
//!   source appends once per poll); readers merge them.
//!
//! Together these make `offset ↦ time` a non-decreasing function on
//! `[first lo, last hi)`: replaying the partition from the first `lo` yields
//! the same records at the same times, in the same order.
//!
//! ## When an entry is recorded
//!
//! The source appends `time ⇒ [lo, hi)` and `fdatasync`s the file **before**
//! it hands any record of that range to the engine. A crash therefore loses
//! at most records that were never emitted (and so never reached a sink);
//! they are read again and bound to a new time. A torn last line (a crash
//! during the write) is discarded when the log is opened.
//!
//! ## Restart
//!
//! Weft keeps no snapshots of dataflow state, so a restarted job rebuilds its
//! state from its input: the source re-reads every partition from the first
//! entry's `lo` and re-emits each record at exactly its recorded time.
//! Records past the last entry's `hi` are new; they get times no smaller
//! than the largest recorded time plus one tick. Sinks skip the times they
//! committed before the crash, so the output is exactly once.
//!
//! ## Compaction
//!
//! Entries are never removed: with no persisted state, the whole history is
//! needed to rebuild it. A log grows by about 30 bytes per partition per
//! poll that read something from that partition. Compacting it (merging
//! equal-time runs, or dropping entries older than a state snapshot) is
//! future work; it needs snapshots of the arrangements first.
//!
//! ## Layout
//!
//! One append-only text file per partition,
//! `STATE_DIR/kafka-reclock/SOURCE/TOPIC/PARTITION`, one entry per line:
//! `time lo hi\n` in decimal. The state directory must be the same for every
//! process of a cluster (or the number of workers must not change across a
//! restart, so that each partition stays with the same process).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// One binding: records at offsets `[lo, hi)` are emitted at `time`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    /// Logical time of the records.
    pub time: u64,
    /// First offset (inclusive).
    pub lo: u64,
    /// End offset (exclusive).
    pub hi: u64,
}

/// The binding log of one `(source, topic, partition)`, open for appending.
#[derive(Debug)]
pub struct BindingLog {
    path: PathBuf,
    file: File,
    /// Bytes of whole entries in the file.
    len: u64,
    /// Entries merged: no two neighbours share a time.
    bindings: Vec<Binding>,
}

/// Directory of one source's binding logs.
pub fn source_dir(state_dir: &Path, source: &str) -> PathBuf {
    state_dir.join("kafka-reclock").join(escape(source))
}

/// Path of the binding log of one partition.
pub fn log_path(state_dir: &Path, source: &str, topic: &str, partition: i32) -> PathBuf {
    source_dir(state_dir, source)
        .join(escape(topic))
        .join(partition.to_string())
}

/// Partitions of `topic` that have a binding log for `source`.
pub fn recorded_partitions(state_dir: &Path, source: &str, topic: &str) -> io::Result<Vec<i32>> {
    let dir = source_dir(state_dir, source).join(escape(topic));
    let mut out = Vec::new();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let name = entry?.file_name();
        if let Some(p) = name.to_str().and_then(|s| s.parse::<i32>().ok()) {
            out.push(p);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Keeps `[A-Za-z0-9._-]`, percent-encodes every other byte (Kafka topic
/// names need no escaping; source names might).
fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out == "." || out == ".." {
        out = out.replace('.', "%2E");
    }
    out
}

impl BindingLog {
    /// Opens (creating if needed) the log at `path`, reading its entries.
    ///
    /// A torn last line is cut off; an entry that breaks an invariant is an
    /// `InvalidData` error (the log is never silently rewritten).
    pub fn open(path: PathBuf) -> io::Result<Self> {
        let created = !path.exists();
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        if created {
            // Make the new directory entry durable too.
            file.sync_all()?;
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
        }
        let text = fs::read(&path)?;
        let mut bindings: Vec<Binding> = Vec::new();
        let mut good = 0usize;
        let mut rest = &text[..];
        let mut line_no = 0;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            line_no += 1;
            let line = &rest[..nl];
            let b = parse_line(line).ok_or_else(|| {
                invalid(
                    &path,
                    format!(
                        "line {line_no} is not `time lo hi`: {:?}",
                        String::from_utf8_lossy(line)
                    ),
                )
            })?;
            push_checked(&mut bindings, b)
                .map_err(|m| invalid(&path, format!("line {line_no}: {m}")))?;
            good += nl + 1;
            rest = &rest[nl + 1..];
        }
        if good < text.len() {
            tracing::warn!(path = %path.display(), bytes = text.len() - good, "discarding a torn last binding");
            file.set_len(good as u64)?;
            file.sync_all()?;
        }
        Ok(BindingLog {
            path,
            file,
            len: good as u64,
            bindings,
        })
    }

    /// The entries, merged (neighbours have different times).
    pub fn bindings(&self) -> &[Binding] {
        &self.bindings
    }

    /// End (exclusive) of the bound range, if anything is bound.
    pub fn upper(&self) -> Option<u64> {
        self.bindings.last().map(|b| b.hi)
    }

    /// Start (inclusive) of the bound range, if anything is bound.
    pub fn lower(&self) -> Option<u64> {
        self.bindings.first().map(|b| b.lo)
    }

    /// The largest recorded time.
    pub fn max_time(&self) -> Option<u64> {
        self.bindings.last().map(|b| b.time)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `time ⇒ [lo, hi)` and syncs it to disk before returning.
    ///
    /// Fails with `InvalidInput` if the entry would break contiguity,
    /// non-emptiness or monotonicity.
    pub fn append(&mut self, time: u64, lo: u64, hi: u64) -> io::Result<()> {
        self.append_unsynced(time, lo, hi)?;
        self.sync()
    }

    /// Appends `time ⇒ [lo, hi)` without syncing: the entry is durable only
    /// after [`BindingLog::sync`] (or [`sync_all`]) returns. A failed write is
    /// cut off again, so the file never keeps half an entry.
    pub fn append_unsynced(&mut self, time: u64, lo: u64, hi: u64) -> io::Result<()> {
        let b = Binding { time, lo, hi };
        let mut check = self
            .bindings
            .last()
            .copied()
            .into_iter()
            .collect::<Vec<_>>();
        push_checked(&mut check, b).map_err(|m| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: refusing binding: {m}", self.path.display()),
            )
        })?;
        let line = format!("{time} {lo} {hi}\n");
        if let Err(e) = self.file.write_all(line.as_bytes()) {
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += line.len() as u64;
        push_checked(&mut self.bindings, b).expect("checked above");
        Ok(())
    }

    /// Makes the appended entries durable (`fdatasync`).
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// Syncs several logs at once: one thread per log, so that the file system
/// can fold them into one journal commit (on ext4, four logs take about as
/// long as one). Returns the first error.
pub fn sync_all(logs: &[&BindingLog]) -> io::Result<()> {
    match logs {
        [] => Ok(()),
        [one] => one.sync(),
        _ => std::thread::scope(|s| {
            let handles: Vec<_> = logs.iter().map(|log| s.spawn(move || log.sync())).collect();
            let mut result = Ok(());
            for h in handles {
                let r = h
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("sync thread panicked")));
                if result.is_ok() {
                    result = r;
                }
            }
            result
        }),
    }
}

fn invalid(path: &Path, message: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {message}", path.display()),
    )
}

fn parse_line(line: &[u8]) -> Option<Binding> {
    let s = std::str::from_utf8(line).ok()?;
    let mut it = s.split(' ');
    let b = Binding {
        time: it.next()?.parse().ok()?,
        lo: it.next()?.parse().ok()?,
        hi: it.next()?.parse().ok()?,
    };
    it.next().is_none().then_some(b)
}

/// Appends `b` to merged entries, checking the invariants.
fn push_checked(bindings: &mut Vec<Binding>, b: Binding) -> Result<(), String> {
    if b.lo >= b.hi {
        return Err(format!("empty range [{}, {})", b.lo, b.hi));
    }
    if let Some(last) = bindings.last_mut() {
        if b.lo != last.hi {
            return Err(format!(
                "range [{}, {}) does not start where the previous one ended ({})",
                b.lo, b.hi, last.hi
            ));
        }
        if b.time < last.time {
            return Err(format!("time {} goes back from {}", b.time, last.time));
        }
        if b.time == last.time {
            last.hi = b.hi;
            return Ok(());
        }
    }
    bindings.push(b);
    Ok(())
}

/// Walks a partition's bindings while replaying it in offset order.
#[derive(Debug, Clone)]
pub struct ReplayCursor {
    bindings: Vec<Binding>,
    next: usize,
}

impl ReplayCursor {
    /// A cursor at the first binding.
    pub fn new(bindings: &[Binding]) -> Self {
        ReplayCursor {
            bindings: bindings.to_vec(),
            next: 0,
        }
    }

    /// The recorded time of `offset`, or `None` if it lies past the last
    /// binding. Offsets must be asked for in increasing order; an offset
    /// before the current binding (never expected) gets its time.
    pub fn time_of(&mut self, offset: u64) -> Option<u64> {
        while let Some(b) = self.bindings.get(self.next) {
            if offset < b.hi {
                return Some(b.time);
            }
            self.next += 1;
        }
        None
    }

    /// Time of the next record still to be replayed, if any.
    pub fn pending_time(&self) -> Option<u64> {
        self.bindings.get(self.next).map(|b| b.time)
    }

    /// Marks the replay finished after reading the record at `offset`.
    pub fn advance_past(&mut self, offset: u64) {
        while let Some(b) = self.bindings.get(self.next) {
            if offset + 1 >= b.hi {
                self.next += 1;
            } else {
                break;
            }
        }
    }

    /// Abandons the rest of the replay (the recorded offsets are gone).
    pub fn abandon(&mut self) {
        self.next = self.bindings.len();
    }

    /// Whether every binding has been replayed.
    pub fn done(&self) -> bool {
        self.next >= self.bindings.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_reopen_merge_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_path(dir.path(), "src/1", "events", 3);
        let mut log = BindingLog::open(path.clone()).unwrap();
        assert_eq!(log.upper(), None);
        log.append(100, 5, 10).unwrap();
        log.append(100, 10, 12).unwrap();
        log.append(200, 12, 20).unwrap();
        assert_eq!(log.bindings().len(), 2);
        // Invariants are enforced.
        assert!(log.append(300, 21, 22).is_err(), "gap");
        assert!(log.append(150, 20, 22).is_err(), "time goes back");
        assert!(log.append(300, 20, 20).is_err(), "empty");
        drop(log);
        // A torn line is cut off.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"300 20 2").unwrap();
        drop(f);
        let mut log = BindingLog::open(path.clone()).unwrap();
        assert_eq!(
            log.bindings(),
            &[
                Binding {
                    time: 100,
                    lo: 5,
                    hi: 12
                },
                Binding {
                    time: 200,
                    lo: 12,
                    hi: 20
                }
            ]
        );
        log.append(300, 20, 25).unwrap();
        assert_eq!(BindingLog::open(path).unwrap().max_time(), Some(300));
        assert_eq!(
            recorded_partitions(dir.path(), "src/1", "events").unwrap(),
            vec![3]
        );
        assert!(recorded_partitions(dir.path(), "other", "events")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn corrupt_log_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        fs::write(&path, "100 0 5\n90 5 6\n").unwrap();
        let err = BindingLog::open(path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn cursor_follows_offsets() {
        let bs = [
            Binding {
                time: 1,
                lo: 0,
                hi: 3,
            },
            Binding {
                time: 4,
                lo: 3,
                hi: 7,
            },
        ];
        let mut c = ReplayCursor::new(&bs);
        assert_eq!(c.pending_time(), Some(1));
        assert_eq!(c.time_of(0), Some(1));
        c.advance_past(0);
        assert_eq!(c.time_of(2), Some(1));
        c.advance_past(2);
        assert_eq!(c.pending_time(), Some(4));
        // Offsets 3..5 were transaction markers: 5 is the next record.
        assert_eq!(c.time_of(5), Some(4));
        c.advance_past(5);
        assert!(!c.done());
        assert_eq!(c.time_of(6), Some(4));
        c.advance_past(6);
        assert!(c.done());
        assert_eq!(c.time_of(7), None);
    }
}
