//! The collect log: an append-only JSON-lines file of accepted events, with
//! group commit, read back by the job's source.
//!
//! ## Writing
//!
//! One thread per log owns the file. [`LogWriter::append`] hands it a block
//! of complete lines (one request's events) and waits for its answer. The
//! thread takes every block that is waiting, writes them in arrival order,
//! `fdatasync`s **once** for all of them (group commit: the requests that
//! arrive during a sync share the next one), and only then answers each
//! `Ok`. So an `Ok` means the block's lines are on disk. A failed write or
//! sync cuts the file back to its last synced length and answers each
//! waiting block with the error: a block is stored whole or not at all. If
//! even that cut fails, the log refuses every later block.
//!
//! ## Reading
//!
//! The writer publishes the length it has synced; a [`LogReader`] never reads
//! past it, so the job never sees an event that a crash could still take back
//! (and whose client was not told `200`). Lines are numbered from 0 in file
//! order; the source binds line numbers to times (see [`super::source`]).
//!
//! ## Opening
//!
//! [`open`] cuts a torn last line (a crash during a write: that block was
//! never acknowledged) and syncs, then counts the lines, which all count as
//! synced.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use tokio::sync::oneshot;

/// File name of the log in its directory.
pub const LOG_FILE: &str = "events.jsonl";

/// Most bytes the writer thread writes between two syncs (a group).
const GROUP_BYTES: usize = 8 << 20;

/// Bytes read from the file at a time.
const READ_CHUNK: usize = 1 << 20;

/// One block of lines waiting to be written, and who waits for it.
struct Block {
    lines: Vec<u8>,
    done: oneshot::Sender<io::Result<()>>,
}

/// Appends blocks of lines to a collect log (cheap to clone; the writer
/// thread stops when the last clone is dropped).
#[derive(Clone, Debug)]
pub struct LogWriter {
    blocks: mpsc::Sender<Block>,
    path: Arc<PathBuf>,
}

impl LogWriter {
    /// Appends `lines` (complete lines, each ending in `\n`) and resolves once
    /// they are synced to disk, or with the error that kept them out.
    pub async fn append(&self, lines: Vec<u8>) -> io::Result<()> {
        self.submit(lines)?
            .await
            .unwrap_or_else(|_| Err(self.stopped()))
    }

    /// [`LogWriter::append`] for a thread that is not in an async runtime.
    pub fn append_blocking(&self, lines: Vec<u8>) -> io::Result<()> {
        self.submit(lines)?
            .blocking_recv()
            .unwrap_or_else(|_| Err(self.stopped()))
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn submit(&self, lines: Vec<u8>) -> io::Result<oneshot::Receiver<io::Result<()>>> {
        debug_assert!(lines.is_empty() || lines.ends_with(b"\n"));
        let (done, wait) = oneshot::channel();
        self.blocks
            .send(Block { lines, done })
            .map_err(|_| self.stopped())?;
        Ok(wait)
    }

    fn stopped(&self) -> io::Error {
        io::Error::other(format!(
            "the writer of collect log {} has stopped",
            self.path.display()
        ))
    }
}

/// Reads the synced lines of a collect log, in order.
#[derive(Debug)]
pub struct LogReader {
    path: PathBuf,
    file: File,
    /// Length the writer has synced.
    synced: Arc<AtomicU64>,
    /// Bytes of the file read into `buf` so far.
    read_to: u64,
    /// Unconsumed bytes, starting at file offset `read_to - buf.len() + pos`.
    buf: Vec<u8>,
    pos: usize,
    /// Number of the next line.
    next_line: u64,
    /// Lines in the file when it was opened.
    lines_at_open: u64,
}

impl LogReader {
    /// Lines the file held when it was opened (all synced).
    pub fn lines_at_open(&self) -> u64 {
        self.lines_at_open
    }

    /// Number of the next line to be read.
    pub fn next_line(&self) -> u64 {
        self.next_line
    }

    /// Bytes consumed so far (the byte offset of the next line).
    pub fn offset(&self) -> u64 {
        self.read_to - (self.buf.len() - self.pos) as u64
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Calls `f(line number, byte offset, line without its newline)` for up to
    /// `max` synced lines not read yet; returns how many.
    pub fn read_lines(
        &mut self,
        max: usize,
        mut f: impl FnMut(u64, u64, &[u8]),
    ) -> io::Result<usize> {
        let mut n = 0;
        while n < max {
            let rest = &self.buf[self.pos..];
            match memchr::memchr(b'\n', rest) {
                Some(end) => {
                    let offset = self.offset();
                    f(self.next_line, offset, &rest[..end]);
                    self.pos += end + 1;
                    self.next_line += 1;
                    n += 1;
                }
                None => {
                    if !self.fill()? {
                        break;
                    }
                }
            }
        }
        Ok(n)
    }

    /// Reads more synced bytes into the buffer; `false` when there are none.
    fn fill(&mut self) -> io::Result<bool> {
        let synced = self.synced.load(Ordering::Acquire);
        if synced <= self.read_to {
            return Ok(false);
        }
        self.buf.drain(..self.pos);
        self.pos = 0;
        let want = ((synced - self.read_to) as usize).min(READ_CHUNK);
        let start = self.buf.len();
        self.buf.resize(start + want, 0);
        let mut got = 0;
        while got < want {
            match self.file.read(&mut self.buf[start + got..]) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.buf.truncate(start);
                    return Err(e);
                }
            }
        }
        self.buf.truncate(start + got);
        self.read_to += got as u64;
        if got == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "collect log {} ends at byte {} but {} bytes were synced; was it truncated?",
                    self.path.display(),
                    self.read_to,
                    synced
                ),
            ));
        }
        Ok(true)
    }
}

/// Opens (creating if needed) the collect log in `dir`: a writer, whose
/// thread is named after `name`, and a reader from the first line.
pub fn open(dir: &Path, name: &str) -> io::Result<(LogWriter, LogReader)> {
    fs::create_dir_all(dir)?;
    let path = dir.join(LOG_FILE);
    let created = !path.exists();
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(&path)?;
    if created {
        file.sync_all()?;
        File::open(dir)?.sync_all()?;
    }
    // STEP 1. Cut a torn last line; count the lines.
    let mut text = Vec::new();
    file.read_to_end(&mut text)?;
    let good = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    if good < text.len() {
        tracing::warn!(path = %path.display(), bytes = text.len() - good, "discarding a torn last line (never acknowledged)");
        file.set_len(good as u64)?;
        file.sync_all()?;
    }
    let lines_at_open = memchr::memchr_iter(b'\n', &text[..good]).count() as u64;
    drop(text);
    // STEP 2. The writer thread and the reader share the synced length.
    let synced = Arc::new(AtomicU64::new(good as u64));
    let (blocks, queue) = mpsc::channel();
    let writer_synced = synced.clone();
    let writer_path = path.clone();
    std::thread::Builder::new()
        .name(format!("weft-collect-{name}"))
        .spawn(move || write_loop(file, good as u64, writer_synced, queue, &writer_path))?;
    let reader = LogReader {
        file: File::open(&path)?,
        path: path.clone(),
        synced,
        read_to: 0,
        buf: Vec::new(),
        pos: 0,
        next_line: 0,
        lines_at_open,
    };
    let writer = LogWriter {
        blocks,
        path: Arc::new(path),
    };
    Ok((writer, reader))
}

/// The writer thread: group commit until every [`LogWriter`] is dropped.
fn write_loop(
    mut file: File,
    mut len: u64,
    synced: Arc<AtomicU64>,
    queue: mpsc::Receiver<Block>,
    path: &Path,
) {
    let mut broken: Option<String> = None;
    while let Ok(first) = queue.recv() {
        // STEP 1. Everything waiting joins the group (up to GROUP_BYTES).
        let mut group = vec![first];
        let mut bytes = group[0].lines.len();
        while bytes < GROUP_BYTES {
            match queue.try_recv() {
                Ok(b) => {
                    bytes += b.lines.len();
                    group.push(b);
                }
                Err(_) => break,
            }
        }
        if let Some(why) = &broken {
            for b in group {
                let _ = b.done.send(Err(io::Error::other(why.clone())));
            }
            continue;
        }
        // STEP 2. Write, sync once, answer everyone.
        let result = write_group(&mut file, &group).and_then(|_| file.sync_data());
        match result {
            Ok(()) => {
                len += bytes as u64;
                synced.store(len, Ordering::Release);
                for b in group {
                    let _ = b.done.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(path = %path.display(), "cannot write the collect log, refusing {} requests: {e}", group.len());
                if let Err(cut) = file.set_len(len).and_then(|_| file.sync_all()) {
                    let why = format!(
                        "collect log {} could not be cut back after a failed write ({cut}); restart the job",
                        path.display()
                    );
                    tracing::error!("{why}");
                    broken = Some(why);
                }
                let kind = e.kind();
                let message = format!("cannot write collect log {}: {e}", path.display());
                for b in group {
                    let _ = b.done.send(Err(io::Error::new(kind, message.clone())));
                }
            }
        }
    }
}

fn write_group(file: &mut File, group: &[Block]) -> io::Result<()> {
    for b in group {
        file.write_all(&b.lines)?;
    }
    Ok(())
}
