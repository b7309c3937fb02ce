//! JSON-lines sinks: a file or standard output.
//!
//! Each change is one line `{"time":T,"diff":D,"data":{...}}`; lines of one
//! time are written together, times in increasing order. `commit` flushes to
//! the operating system; the file sink `fsync`s when the output is complete.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use weft_dataflows::record::{write_change_line, WriteJson};

use crate::sink::Sink;

/// Writes changes as JSON lines to any writer.
pub struct JsonLinesSink<W: Write> {
    out: W,
    buf: Vec<u8>,
    file: Option<File>,
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
            lines: 0,
        }
    }
}

impl<W: Write, D: WriteJson> Sink<D> for JsonLinesSink<W> {
    fn write(&mut self, time: u64, updates: &[(D, isize)]) -> io::Result<()> {
        self.buf.clear();
        for (data, diff) in updates {
            write_change_line(&mut self.buf, time, *diff, data);
            if self.buf.len() > 1 << 20 {
                self.out.write_all(&self.buf)?;
                self.buf.clear();
            }
        }
        self.out.write_all(&self.buf)?;
        self.lines += updates.len() as u64;
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

impl<W: Write> Sink<weft_dataflows::audience::Membership> for SegmentAudienceSink<W> {
    fn write(
        &mut self,
        time: u64,
        updates: &[(weft_dataflows::audience::Membership, isize)],
    ) -> io::Result<()> {
        for (m, diff) in updates {
            let call = segment_audience_call(m, time, *diff > 0, self.track);
            for _ in 0..diff.unsigned_abs() {
                serde_json::to_writer(&mut self.inner.out, &call)?;
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
