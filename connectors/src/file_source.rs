//! JSON-lines file source (plain or gzip), bounded.
//!
//! ## Reclocking: which bytes are bound to which time
//!
//! A file is cut into chunks of `chunk_bytes` bytes of (decompressed) text.
//! A line belongs to the chunk that contains its **first byte**; every line of
//! chunk `k` (bytes `[k·C, (k+1)·C)`, inclusive start, exclusive end) is bound
//! to logical time `k`. The binding depends only on the file and `chunk_bytes`,
//! never on the number of workers, so a replay is deterministic and a job's
//! output is identical for 1 and N workers.
//!
//! ## Who reads what
//!
//! ```text
//!  plain file:  chunk 0 ─► worker 0   chunk 1 ─► worker 1   chunk 2 ─► worker 0 ...
//!               (each worker seeks to its chunks; lines that start before a
//!                chunk's first byte are finished by the previous chunk's reader)
//!  gzip file:   one worker (file index mod peers) decompresses the whole file;
//!               chunk k of the decompressed text is still time k.
//! ```
//!
//! Lines longer than [`MAX_LINE_BYTES`] are not buffered whole: their first
//! [`MAX_LINE_BYTES`] bytes travel in the error record (reason `oversize`).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use weft_dataflows::event::{parse_event, ParseContext, RejectReason, Rejection, MAX_EVENT_BYTES};
use weft_dataflows::record::ErrorRecord;
use weft_dataflows::spec::Compression;

use crate::source::{Decoded, PartProgress, Poll, SourcePart};

/// The longest line kept whole in memory; longer lines are rejected with
/// their first `MAX_LINE_BYTES` bytes.
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// Settings of one file source.
#[derive(Clone, Debug)]
pub struct FileSourceConfig {
    /// The source's name (used in error records).
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// Compression (auto: by `.gz` suffix).
    pub compression: Compression,
    /// Bytes bound to one logical time.
    pub chunk_bytes: u64,
    /// Index of this file among the job's file sources (for worker assignment).
    pub file_index: usize,
}

impl FileSourceConfig {
    /// Whether the file is read as gzip.
    pub fn is_gzip(&self) -> bool {
        match self.compression {
            Compression::Gzip => true,
            Compression::None => false,
            Compression::Auto => self.path.extension().is_some_and(|e| e == "gz"),
        }
    }

    /// The part that worker `index` of `peers` reads.
    pub fn part(&self, index: usize, peers: usize) -> io::Result<FilePart> {
        let file = File::open(&self.path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open {}: {e}", self.path.display()),
            )
        })?;
        let size = file.metadata()?.len();
        let mode = if self.is_gzip() {
            if self.file_index % peers == index {
                let counted = CountingReader {
                    inner: file,
                    count: 0,
                };
                Mode::Gzip {
                    reader: BufReader::with_capacity(1 << 20, MultiGzDecoder::new(counted)),
                    offset: 0,
                }
            } else {
                Mode::Finished
            }
        } else {
            let chunks = size.div_ceil(self.chunk_bytes);
            Mode::Plain {
                file: Some(file),
                next_chunk: index as u64,
                stride: peers as u64,
                chunks,
                current: None,
            }
        };
        Ok(FilePart {
            config: self.clone(),
            mode,
            size,
            consumed: 0,
            records: 0,
            line: Vec::with_capacity(64 << 10),
            cx: ParseContext::default(),
        })
    }
}

/// Counts bytes read through it (compressed bytes, for progress).
struct CountingReader<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

struct Chunk {
    reader: BufReader<File>,
    /// Offset of the next line's first byte.
    pos: u64,
    /// Exclusive end of the chunk: lines starting at or after it belong to the next chunk.
    end: u64,
    time: u64,
}

enum Mode {
    Plain {
        file: Option<File>,
        next_chunk: u64,
        stride: u64,
        chunks: u64,
        current: Option<Chunk>,
    },
    Gzip {
        reader: BufReader<MultiGzDecoder<CountingReader<File>>>,
        offset: u64,
    },
    Finished,
}

/// One worker's share of a file source.
pub struct FilePart {
    config: FileSourceConfig,
    mode: Mode,
    size: u64,
    consumed: u64,
    records: u64,
    line: Vec<u8>,
    cx: ParseContext,
}

/// Reads one line (without its `\n`) into `buf`, keeping at most `max` bytes.
/// Returns the bytes consumed from the reader (including the newline, 0 at EOF)
/// and the length of the line without its newline.
fn read_line_bounded<R: BufRead>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<(u64, u64)> {
    buf.clear();
    let mut consumed = 0u64;
    loop {
        let available = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok((consumed, consumed));
        }
        let (take, done) = match memchr::memchr(b'\n', available) {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        let keep = take - usize::from(done);
        let room = max.saturating_sub(buf.len());
        buf.extend_from_slice(&available[..keep.min(room)]);
        reader.consume(take);
        consumed += take as u64;
        if done {
            return Ok((consumed, consumed - 1));
        }
    }
}

impl FilePart {
    fn decode(&mut self, offset: u64, content_len: u64) -> Decoded {
        let mut line: &[u8] = &self.line;
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        if content_len as usize > MAX_LINE_BYTES {
            return Err(ErrorRecord::new(
                &self.config.name,
                self.config.file_index as u32,
                offset,
                Rejection {
                    reason: RejectReason::Oversize,
                    message: format!("line is {content_len} bytes; the limit is {MAX_EVENT_BYTES} bytes (first {MAX_LINE_BYTES} bytes kept)"),
                },
                line,
            ));
        }
        parse_event(line, &self.cx).map_err(|rej| {
            ErrorRecord::new(
                &self.config.name,
                self.config.file_index as u32,
                offset,
                rej,
                line,
            )
        })
    }

    fn poll_plain(&mut self, out: &mut Vec<(Decoded, u64)>, budget: usize) -> io::Result<Poll> {
        let chunk_bytes = self.config.chunk_bytes;
        let mut produced = 0;
        loop {
            let Mode::Plain {
                file,
                next_chunk,
                stride,
                chunks,
                current,
            } = &mut self.mode
            else {
                unreachable!()
            };
            // STEP 1. Open the next chunk assigned to this worker.
            if current.is_none() {
                if *next_chunk >= *chunks {
                    self.mode = Mode::Finished;
                    return Ok(Poll::Done);
                }
                let k = *next_chunk;
                *next_chunk += *stride;
                let f = match file.take() {
                    Some(f) => f,
                    None => File::open(&self.config.path)?,
                };
                let mut reader = BufReader::with_capacity(1 << 20, f);
                let start = k * chunk_bytes;
                let mut pos = start;
                if start > 0 {
                    reader.seek(SeekFrom::Start(start - 1))?;
                    let mut prev = [0u8; 1];
                    reader.read_exact(&mut prev)?;
                    if prev[0] != b'\n' {
                        // The line in progress belongs to the previous chunk.
                        let mut skip = Vec::new();
                        pos += read_line_bounded(&mut reader, &mut skip, 0)?.0;
                    }
                }
                self.consumed += pos - start;
                *current = Some(Chunk {
                    reader,
                    pos,
                    end: start + chunk_bytes,
                    time: k,
                });
            }
            let chunk = current.as_mut().expect("chunk is open");
            // STEP 2. Read lines that start inside the chunk.
            if chunk.pos >= chunk.end {
                let reader = current.take().expect("chunk is open").reader;
                let Mode::Plain {
                    file, next_chunk, ..
                } = &mut self.mode
                else {
                    unreachable!()
                };
                *file = Some(reader.into_inner());
                if produced >= budget {
                    return Ok(Poll::Pending {
                        lower: *next_chunk,
                        idle: false,
                    });
                }
                continue;
            }
            if produced >= budget {
                return Ok(Poll::Pending {
                    lower: chunk.time,
                    idle: false,
                });
            }
            let offset = chunk.pos;
            let time = chunk.time;
            let (n, len) = read_line_bounded(&mut chunk.reader, &mut self.line, MAX_LINE_BYTES)?;
            if n == 0 {
                // End of file inside this chunk.
                chunk.pos = chunk.end;
                continue;
            }
            chunk.pos += n;
            self.consumed += n;
            self.records += 1;
            let decoded = self.decode(offset, len);
            out.push((decoded, time));
            produced += 1;
        }
    }

    fn poll_gzip(&mut self, out: &mut Vec<(Decoded, u64)>, budget: usize) -> io::Result<Poll> {
        let chunk_bytes = self.config.chunk_bytes;
        for _ in 0..budget {
            let Mode::Gzip { reader, offset } = &mut self.mode else {
                unreachable!()
            };
            let start = *offset;
            let (n, len) = read_line_bounded(reader, &mut self.line, MAX_LINE_BYTES)?;
            self.consumed = reader.get_ref().get_ref().count;
            if n == 0 {
                self.mode = Mode::Finished;
                return Ok(Poll::Done);
            }
            *offset += n;
            self.records += 1;
            let decoded = self.decode(start, len);
            out.push((decoded, start / chunk_bytes));
        }
        let Mode::Gzip { offset, .. } = &self.mode else {
            unreachable!()
        };
        Ok(Poll::Pending {
            lower: *offset / chunk_bytes,
            idle: false,
        })
    }
}

impl SourcePart for FilePart {
    fn poll(&mut self, out: &mut Vec<(Decoded, u64)>, budget: usize) -> Poll {
        let result = match self.mode {
            Mode::Finished => return Poll::Done,
            Mode::Plain { .. } => self.poll_plain(out, budget),
            Mode::Gzip { .. } => self.poll_gzip(out, budget),
        };
        match result {
            Ok(p) => p,
            Err(e) => {
                // A read error ends this part; what was read stays valid.
                tracing::error!(source = %self.config.name, path = %self.config.path.display(), "read failed, ending this part of the source: {e}");
                self.mode = Mode::Finished;
                Poll::Done
            }
        }
    }

    fn progress(&self) -> PartProgress {
        PartProgress {
            consumed: self.consumed,
            total: Some(self.size),
            records: self.records,
        }
    }
}

/// Total bytes of a set of file sources, for progress display.
pub fn total_bytes(paths: &[&Path]) -> u64 {
    paths
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn line(i: usize) -> String {
        format!(
            r#"{{"type":"track","event":"E{}","userId":"u{}","messageId":"m{}","timestamp":"2026-01-01T00:00:00Z"}}"#,
            i % 3,
            i,
            i
        )
    }

    fn read_all(cfg: &FileSourceConfig, peers: usize) -> Vec<(String, u64)> {
        let mut all = Vec::new();
        for w in 0..peers {
            let mut part = cfg.part(w, peers).unwrap();
            let mut out = Vec::new();
            let mut last_lower = 0;
            loop {
                let before = out.len();
                let p = part.poll(&mut out, 7);
                for (_, t) in &out[before..] {
                    assert!(
                        *t >= last_lower,
                        "time {t} below promised lower bound {last_lower}"
                    );
                }
                match p {
                    Poll::Done => break,
                    Poll::Pending { lower, .. } => last_lower = lower,
                }
            }
            for (d, t) in out {
                let id = match d {
                    Ok(e) => e.message_id().to_string(),
                    Err(r) => format!("err@{}:{}", r.offset, r.reason),
                };
                all.push((id, t));
            }
        }
        all.sort();
        all
    }

    #[test]
    fn every_line_once_at_the_same_time_for_any_worker_count() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("e.jsonl");
        let gz = dir.path().join("e.jsonl.gz");
        let mut text = String::new();
        for i in 0..500 {
            text.push_str(&line(i));
            text.push('\n');
            if i % 97 == 0 {
                text.push_str("{broken\n\n");
            }
        }
        text.push_str(&line(9999)); // no trailing newline
        std::fs::write(&plain, &text).unwrap();
        let mut enc =
            flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::fast());
        enc.write_all(text.as_bytes()).unwrap();
        enc.finish().unwrap();

        let cfg = |path: &Path| FileSourceConfig {
            name: "s".into(),
            path: path.to_path_buf(),
            compression: Compression::Auto,
            chunk_bytes: 4096,
            file_index: 0,
        };
        let one = read_all(&cfg(&plain), 1);
        assert_eq!(one.len(), 500 + 1 + 2 * 6);
        assert_eq!(
            one.iter().filter(|(id, _)| id.starts_with("err")).count(),
            12
        );
        for peers in [2, 3, 4] {
            assert_eq!(read_all(&cfg(&plain), peers), one, "plain, {peers} workers");
        }
        for peers in [1, 4] {
            assert_eq!(read_all(&cfg(&gz), peers), one, "gzip, {peers} workers");
        }
        // Times follow byte offsets.
        assert!(one.iter().any(|(_, t)| *t > 5));
    }
}
