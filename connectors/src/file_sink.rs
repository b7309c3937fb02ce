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
        let file = File::create(path)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display())))?;
        let sync = file.try_clone()?;
        Ok(JsonLinesSink { out: BufWriter::with_capacity(1 << 20, file), buf: Vec::new(), file: Some(sync), lines: 0 })
    }
}

impl JsonLinesSink<io::Stdout> {
    /// Writes to standard output.
    pub fn stdout() -> Self {
        JsonLinesSink { out: io::stdout(), buf: Vec::new(), file: None, lines: 0 }
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
