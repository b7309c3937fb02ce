//! The on-disk message log of one destination.
//!
//! Every message gets a sequence number (`Seq`, from 0, never reused) and
//! is appended to a *segment* file `queue/<first seq, 20 digits>.seg`. A
//! segment holds records `[len: u32 LE][check: u32 LE][payload]` (`check` is
//! the low half of the payload's xxh3-64) for consecutive sequence numbers
//! starting at its first one. Once the active segment holds at least
//! `segment_bytes`, the next append starts a new one (the old one is
//! fsynced then). Segments are deleted by the delivery side once every
//! message in them is resolved; the newest segment is never deleted.
//!
//! [`LogWriter::sync`] makes everything appended durable and returns the
//! [`LogEnd`] to record in the commit file; [`LogWriter::recover`] cuts the
//! log back to such an end (messages appended after the last commit are
//! dropped: the restarted job writes them again).

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_64;

use super::slots::sync_parent;

/// A message's position in the log.
pub(crate) type Seq = u64;

/// Bytes before each payload.
const HEADER_BYTES: u64 = 8;

/// Where the log ended at a commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LogEnd {
    /// The first sequence number not committed.
    pub(crate) seq: Seq,
    /// The first sequence number of the active segment.
    pub(crate) segment: Seq,
    /// The active segment's length.
    pub(crate) offset: u64,
}

/// The path of the segment starting at `first`.
pub(crate) fn segment_path(dir: &Path, first: Seq) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

/// The segments present in `dir`, by first sequence number.
fn list_segments(dir: &Path) -> io::Result<BTreeSet<Seq>> {
    let mut found = BTreeSet::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(".seg") {
            if stem.len() == 20 {
                if let Ok(first) = stem.parse() {
                    found.insert(first);
                }
            }
        }
    }
    Ok(found)
}

/// Appends messages to the active segment.
#[derive(Debug)]
pub(crate) struct LogWriter {
    dir: PathBuf,
    segment: Seq,
    out: BufWriter<File>,
    offset: u64,
    next: Seq,
    segment_bytes: u64,
    dir_dirty: bool,
}

impl LogWriter {
    /// Cuts the log in `dir` back to `end` (`None`: nothing was ever
    /// committed, so the log starts empty) and opens it for appending.
    /// Returns the writer and the segments left.
    pub(crate) fn recover(
        dir: &Path,
        end: Option<LogEnd>,
        segment_bytes: u64,
    ) -> io::Result<(Self, BTreeSet<Seq>)> {
        fs::create_dir_all(dir)?;
        let end = end.unwrap_or(LogEnd {
            seq: 0,
            segment: 0,
            offset: 0,
        });
        let mut segments = list_segments(dir)?;
        // Segments created after the commit hold only uncommitted messages.
        for &first in segments.range(end.segment + 1..) {
            fs::remove_file(segment_path(dir, first))?;
        }
        segments.retain(|&first| first <= end.segment);
        // The committed segment, cut to its committed length; if every
        // message in it was delivered and it was deleted, a fresh one.
        let (segment, offset) = if segments.contains(&end.segment) {
            (end.segment, end.offset)
        } else {
            (end.seq, 0)
        };
        let path = segment_path(dir, segment);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        file.set_len(offset)?;
        file.sync_all()?;
        sync_parent(&path)?;
        segments.insert(segment);
        let writer = LogWriter {
            dir: dir.to_path_buf(),
            segment,
            out: BufWriter::with_capacity(1 << 20, file),
            offset,
            next: end.seq,
            segment_bytes: segment_bytes.max(1),
            dir_dirty: false,
        };
        Ok((writer, segments))
    }

    /// The sequence number the next append gets.
    pub(crate) fn next_seq(&self) -> Seq {
        self.next
    }

    /// Appends one message; returns its sequence number and, if the append
    /// started a new segment, that segment's first sequence number.
    pub(crate) fn append(&mut self, payload: &[u8]) -> io::Result<(Seq, Option<Seq>)> {
        let len = u32::try_from(payload.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a message of {} bytes does not fit the queue's 4 GiB record limit",
                    payload.len()
                ),
            )
        })?;
        let rotated = if self.offset >= self.segment_bytes {
            self.rotate()?;
            Some(self.segment)
        } else {
            None
        };
        let check = xxh3_64(payload) as u32;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(&check.to_le_bytes())?;
        self.out.write_all(payload)?;
        self.offset += HEADER_BYTES + payload.len() as u64;
        let seq = self.next;
        self.next += 1;
        Ok((seq, rotated))
    }

    /// Seals the active segment (durably) and starts a new one at `next`.
    fn rotate(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_data()?;
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(segment_path(&self.dir, self.next))?;
        self.out = BufWriter::with_capacity(1 << 20, file);
        self.segment = self.next;
        self.offset = 0;
        self.dir_dirty = true;
        Ok(())
    }

    /// Makes every appended message durable; returns the end to record.
    pub(crate) fn sync(&mut self) -> io::Result<LogEnd> {
        self.out.flush()?;
        self.out.get_ref().sync_data()?;
        if self.dir_dirty {
            File::open(&self.dir)?.sync_all()?;
            self.dir_dirty = false;
        }
        Ok(LogEnd {
            seq: self.next,
            segment: self.segment,
            offset: self.offset,
        })
    }
}

/// Reads messages back, sequentially where it can.
#[derive(Debug)]
pub(crate) struct LogReader {
    dir: PathBuf,
    open: Option<OpenSegment>,
}

#[derive(Debug)]
struct OpenSegment {
    first: Seq,
    next: Seq,
    input: BufReader<File>,
}

impl LogReader {
    /// A reader of the log in `dir`.
    pub(crate) fn new(dir: &Path) -> Self {
        LogReader {
            dir: dir.to_path_buf(),
            open: None,
        }
    }

    /// Reads message `seq` of the segment starting at `segment`.
    pub(crate) fn read(&mut self, segment: Seq, seq: Seq) -> io::Result<Vec<u8>> {
        let result = self.read_at(segment, seq);
        if result.is_err() {
            // The position within the file is unknown now: reopen next time.
            self.open = None;
        }
        result
    }

    fn read_at(&mut self, segment: Seq, seq: Seq) -> io::Result<Vec<u8>> {
        let open = self.position(segment, seq)?;
        let len = read_header(&mut open.input, segment, seq)?;
        let mut payload = vec![0u8; len.0 as usize];
        open.input
            .read_exact(&mut payload)
            .map_err(|e| corrupt(segment, seq, &format!("the message is cut short ({e})")))?;
        if xxh3_64(&payload) as u32 != len.1 {
            return Err(corrupt(segment, seq, "the message fails its checksum"));
        }
        open.next += 1;
        Ok(payload)
    }

    /// The payload bytes of messages `from..to` of the segment starting at
    /// `segment` (stopping early at the segment's end).
    pub(crate) fn measure(&mut self, segment: Seq, from: Seq, to: Seq) -> io::Result<u64> {
        let result = self.measure_at(segment, from, to);
        if result.is_err() {
            self.open = None;
        }
        result
    }

    fn measure_at(&mut self, segment: Seq, from: Seq, to: Seq) -> io::Result<u64> {
        let open = self.position(segment, from)?;
        let mut bytes = 0;
        while open.next < to {
            match read_header(&mut open.input, segment, open.next) {
                Ok((len, _)) => {
                    open.input.seek_relative(len as i64)?;
                    bytes += len as u64;
                    open.next += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            }
        }
        Ok(bytes)
    }

    /// Closes the segment starting at `segment` if it is open (it is deleted).
    pub(crate) fn forget(&mut self, segment: Seq) {
        if self.open.as_ref().is_some_and(|o| o.first == segment) {
            self.open = None;
        }
    }

    /// Positions the reader at `seq`, opening the segment if needed.
    fn position(&mut self, segment: Seq, seq: Seq) -> io::Result<&mut OpenSegment> {
        let reusable = self
            .open
            .as_ref()
            .is_some_and(|o| o.first == segment && o.next <= seq);
        if !reusable {
            let path = segment_path(&self.dir, segment);
            let file = File::open(&path).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot open queue segment {}: {e}", path.display()),
                )
            })?;
            self.open = Some(OpenSegment {
                first: segment,
                next: segment,
                input: BufReader::with_capacity(1 << 16, file),
            });
        }
        let open = self.open.as_mut().expect("opened above");
        while open.next < seq {
            let (len, _) = read_header(&mut open.input, segment, open.next)?;
            open.input.seek_relative(len as i64)?;
            open.next += 1;
        }
        Ok(open)
    }
}

/// Reads a record header: `(len, check)`.
fn read_header(input: &mut BufReader<File>, segment: Seq, seq: Seq) -> io::Result<(u32, u32)> {
    let mut header = [0u8; HEADER_BYTES as usize];
    input.read_exact(&mut header).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("queue segment {segment}: message {seq} is missing ({e})"),
        )
    })?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
    let check = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    Ok((len, check))
}

fn corrupt(segment: Seq, seq: Seq, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("queue segment {segment}: message {seq}: {what}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recover_cuts_back_to_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, segs) = LogWriter::recover(dir.path(), None, 40).unwrap();
        assert_eq!(segs.into_iter().collect::<Vec<_>>(), vec![0]);
        let mut rotations = Vec::new();
        for i in 0..10u8 {
            let (seq, rotated) = w.append(&[i; 12]).unwrap();
            assert_eq!(seq, i as u64);
            rotations.extend(rotated);
        }
        // 20 bytes a record, 40 per segment: segments at 0, 2, 4, 6, 8.
        assert_eq!(rotations, vec![2, 4, 6, 8]);
        let end = w.sync().unwrap();
        assert_eq!(
            end,
            LogEnd {
                seq: 10,
                segment: 8,
                offset: 40
            }
        );
        w.append(b"uncommitted").unwrap();
        w.append(b"uncommitted").unwrap();
        w.append(b"uncommitted").unwrap();
        drop(w);
        let (mut w, segs) = LogWriter::recover(dir.path(), Some(end), 40).unwrap();
        assert_eq!(segs.into_iter().collect::<Vec<_>>(), vec![0, 2, 4, 6, 8]);
        assert_eq!(w.next_seq(), 10);
        assert_eq!(w.append(b"next").unwrap(), (10, Some(10)));
        w.sync().unwrap();
        let mut r = LogReader::new(dir.path());
        assert_eq!(r.read(4, 5).unwrap(), vec![5u8; 12]);
        assert_eq!(r.read(4, 4).unwrap(), vec![4u8; 12]);
        assert_eq!(r.read(8, 9).unwrap(), vec![9u8; 12]);
        assert_eq!(r.read(10, 10).unwrap(), b"next");
        assert!(r.read(8, 10).is_err());
        assert_eq!(r.measure(0, 0, 5).unwrap(), 24);
        assert_eq!(r.measure(2, 3, 4).unwrap(), 12);
    }

    #[test]
    fn a_deleted_committed_segment_restarts_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _) = LogWriter::recover(dir.path(), None, 1 << 20).unwrap();
        w.append(b"a").unwrap();
        let end = w.sync().unwrap();
        drop(w);
        fs::remove_file(segment_path(dir.path(), 0)).unwrap();
        let (mut w, segs) = LogWriter::recover(dir.path(), Some(end), 1 << 20).unwrap();
        assert_eq!(segs.into_iter().collect::<Vec<_>>(), vec![1]);
        assert_eq!(w.append(b"b").unwrap(), (1, None));
    }

    #[test]
    fn corruption_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _) = LogWriter::recover(dir.path(), None, 1 << 20).unwrap();
        w.append(b"hello").unwrap();
        w.sync().unwrap();
        let path = segment_path(dir.path(), 0);
        let mut bytes = fs::read(&path).unwrap();
        bytes[9] ^= 1;
        fs::write(&path, bytes).unwrap();
        let err = LogReader::new(dir.path()).read(0, 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }
}
