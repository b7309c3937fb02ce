//! JSON-lines sinks: a file or standard output.
//!
//! Each change is one line `{"time":T,"diff":D,"data":{...}}`; lines of one
//! time are written together, times in increasing order. `commit` flushes to
//! the operating system; the file sink `fsync`s when the output is complete.
//!
//! A file is a change log, so it keeps history: a privacy deletion's
//! retractions alone would leave the person's earlier lines in it.
//! [`Sink::erase`] therefore rewrites the file (temp file, fsync, rename)
//! without every line that mentions one of the person's identifiers: a JSON
//! string equal to the identifier's value or to `kind:value`. The match is
//! textual, so another record holding exactly such a string goes too (an
//! erasure errs on the side of forgetting). The retractions the deletion
//! causes at the same time are not written either (they would write the
//! person's data again); the file's net content is then that of a run that
//! never saw the person. Standard output cannot recall what it printed: its
//! erase does nothing.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use weft_dataflows::record::{write_change_line, WriteJson};

use crate::sink::Sink;

/// Writes changes as JSON lines to any writer.
pub struct JsonLinesSink<W: Write> {
    out: W,
    buf: Vec<u8>,
    file: Option<File>,
    path: Option<PathBuf>,
    /// The time of the last erasure and what it looked for: the changes
    /// written at that time that mention the person (their retractions)
    /// are not written, or the file would hold their data again.
    erasing: Option<(u64, Vec<Vec<u8>>)>,
    /// Changes written so far.
    pub lines: u64,
}

impl JsonLinesSink<BufWriter<File>> {
    /// Creates (truncates) `path`, creating parent directories.
    pub fn create(path: &Path) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = File::create(path).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display()))
        })?;
        let sync = file.try_clone()?;
        Ok(JsonLinesSink {
            out: BufWriter::with_capacity(1 << 20, file),
            buf: Vec::new(),
            file: Some(sync),
            path: Some(path.to_path_buf()),
            erasing: None,
            lines: 0,
        })
    }
}

impl JsonLinesSink<io::Stdout> {
    /// Writes to standard output.
    pub fn stdout() -> Self {
        JsonLinesSink {
            out: io::stdout(),
            buf: Vec::new(),
            file: None,
            path: None,
            erasing: None,
            lines: 0,
        }
    }
}

/// Writers a [`JsonLinesSink`] can take lines back from.
pub trait Rewritable: Write + Sized {
    /// Rewrites the output at `path` keeping only the lines `keep` accepts;
    /// returns the lines removed.
    fn rewrite(sink: &mut JsonLinesSink<Self>, keep: &dyn Fn(&[u8]) -> bool) -> io::Result<u64>;
}

impl Rewritable for io::Stdout {
    fn rewrite(_: &mut JsonLinesSink<Self>, _: &dyn Fn(&[u8]) -> bool) -> io::Result<u64> {
        Ok(0)
    }
}

impl Rewritable for BufWriter<File> {
    fn rewrite(sink: &mut JsonLinesSink<Self>, keep: &dyn Fn(&[u8]) -> bool) -> io::Result<u64> {
        let Some(path) = sink.path.clone() else {
            return Ok(0);
        };
        sink.out.flush()?;
        let tmp = path.with_extension("weft-erase.tmp");
        let mut removed = 0;
        {
            let mut reader = BufReader::new(File::open(&path)?);
            let mut out = BufWriter::new(File::create(&tmp)?);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line)? > 0 {
                if keep(&line) {
                    out.write_all(&line)?;
                } else {
                    removed += 1;
                }
                line.clear();
            }
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        let file = OpenOptions::new().append(true).open(&path)?;
        sink.file = Some(file.try_clone()?);
        sink.out = BufWriter::with_capacity(1 << 20, file);
        Ok(removed)
    }
}

/// Whether a JSON line mentions one of `identifiers` (`kind:value`): it holds
/// a JSON string equal to the value or to the whole `kind:value`.
pub fn mentions(line: &[u8], needles: &[Vec<u8>]) -> bool {
    needles
        .iter()
        .any(|n| memchr::memmem::find(line, n).is_some())
}

/// The quoted JSON strings [`mentions`] looks for.
pub fn erasure_needles(identifiers: &[String]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for id in identifiers {
        let mut whole = Vec::new();
        weft_dataflows::event::write_json_string(&mut whole, id);
        out.push(whole);
        if let Some((_, value)) = id.split_once(':') {
            let mut v = Vec::new();
            weft_dataflows::event::write_json_string(&mut v, value);
            out.push(v);
        }
    }
    out
}

impl<W: Rewritable, D: WriteJson> Sink<D> for JsonLinesSink<W> {
    fn erase(&mut self, time: u64, identifiers: &[String]) -> io::Result<()> {
        let needles = erasure_needles(identifiers);
        let removed = W::rewrite(self, &|line| !mentions(line, &needles))?;
        self.lines -= removed.min(self.lines);
        match &mut self.erasing {
            Some((t, n)) if *t == time => n.extend(needles),
            _ => self.erasing = Some((time, needles)),
        }
        Ok(())
    }

    fn write(&mut self, time: u64, updates: &[(D, isize)]) -> io::Result<()> {
        self.buf.clear();
        let erasing = self
            .erasing
            .as_ref()
            .filter(|(t, _)| *t == time)
            .map(|(_, n)| n);
        for (data, diff) in updates {
            let start = self.buf.len();
            write_change_line(&mut self.buf, time, *diff, data);
            if erasing.is_some_and(|n| mentions(&self.buf[start..], n)) {
                self.buf.truncate(start);
                continue;
            }
            self.lines += 1;
            if self.buf.len() > 1 << 20 {
                self.out.write_all(&self.buf)?;
                self.buf.clear();
            }
        }
        self.out.write_all(&self.buf)?;
        Ok(())
    }

    fn commit(&mut self, frontier: &[u64]) -> io::Result<()> {
        self.out.flush()?;
        if frontier.is_empty() {
            if let Some(f) = &self.file {
                f.sync_all()?;
            }
        }
        Ok(())
    }
}

/// Writes audience membership changes as Segment calls, one per line, for
/// destinations that take Segment events: `identify` with
/// `traits: {<audience key>: true|false}`, or `track` `Audience Entered` /
/// `Audience Exited` with `properties.audience_key`. The profile goes to
/// `userId` (a `user_id` profile), `anonymousId` (an `anonymous_id` profile) or
/// both `anonymousId` and `context.externalIds` (other kinds). `timestamp` is
/// the logical time of the change; `messageId` is derived from the change, so
/// a rewrite of the same change has the same id (destinations can dedupe).
pub struct SegmentAudienceSink<W: Write> {
    inner: JsonLinesSink<W>,
    track: bool,
}

impl SegmentAudienceSink<BufWriter<File>> {
    /// Creates (truncates) `path`; `track` selects the track form, else identify.
    pub fn create(path: &Path, track: bool) -> io::Result<Self> {
        Ok(SegmentAudienceSink {
            inner: JsonLinesSink::create(path)?,
            track,
        })
    }
}

/// One Segment call for one membership change.
pub fn segment_audience_call(
    m: &weft_dataflows::audience::Membership,
    time: u64,
    entered: bool,
    track: bool,
) -> serde_json::Value {
    use serde_json::json;
    let (kind, value) = m
        .profile
        .split_once(':')
        .unwrap_or(("anonymous_id", &m.profile));
    let id = xxhash_rust::xxh3::xxh3_64(
        format!(
            "{}|{}|{}|{}|{}",
            m.audience, m.profile, time, entered, track
        )
        .as_bytes(),
    );
    let mut call = if track {
        json!({
            "type": "track",
            "event": if entered { "Audience Entered" } else { "Audience Exited" },
            "properties": { "audience_key": m.audience },
        })
    } else {
        json!({ "type": "identify", "traits": { m.audience.clone(): entered } })
    };
    call["messageId"] = json!(format!("weft-audience-{id:016x}"));
    call["timestamp"] = json!(weft_dataflows::event::format_iso8601(time as i64));
    match kind {
        "user_id" => call["userId"] = json!(value),
        "anonymous_id" => call["anonymousId"] = json!(value),
        _ => {
            call["anonymousId"] = json!(m.profile);
            call["context"] = json!({ "externalIds": [{ "id": value, "type": kind, "collection": "users", "encoding": "none" }] });
        }
    }
    call
}

impl<W: Rewritable> Sink<weft_dataflows::audience::Membership> for SegmentAudienceSink<W> {
    fn erase(&mut self, time: u64, identifiers: &[String]) -> io::Result<()> {
        <JsonLinesSink<W> as Sink<weft_dataflows::audience::Membership>>::erase(
            &mut self.inner,
            time,
            identifiers,
        )
    }

    fn write(
        &mut self,
        time: u64,
        updates: &[(weft_dataflows::audience::Membership, isize)],
    ) -> io::Result<()> {
        let erasing = self
            .inner
            .erasing
            .as_ref()
            .filter(|(t, _)| *t == time)
            .map(|(_, n)| n.clone());
        for (m, diff) in updates {
            let call = segment_audience_call(m, time, *diff > 0, self.track);
            let line = serde_json::to_vec(&call)?;
            if erasing.as_ref().is_some_and(|n| mentions(&line, n)) {
                continue;
            }
            for _ in 0..diff.unsigned_abs() {
                self.inner.out.write_all(&line)?;
                self.inner.out.write_all(b"\n")?;
                self.inner.lines += 1;
            }
        }
        Ok(())
    }

    fn commit(&mut self, frontier: &[u64]) -> io::Result<()> {
        <JsonLinesSink<W> as Sink<weft_dataflows::audience::Membership>>::commit(
            &mut self.inner,
            frontier,
        )
    }
}
