//! The regulation log: a JSON-lines file of regulation requests, read (and,
//! for live jobs, tailed) with each line bound durably to the logical time it
//! applies at.
//!
//! ## Times
//!
//! Line `n` (counting from 0) is bound once, the first time it is read, to
//!
//! * its recorded binding, when an earlier run recorded one;
//! * else its `at` (ISO-8601 or epoch ms), raised to `lower` when `lower` is
//!   later (a live job cannot apply a regulation in its past);
//! * else `max(now, lower)`: the wall clock in ms when it was read.
//!
//! A new binding is appended to `<state_dir>/regulations.bindings` (`n time`
//! per line) and fsync'd **before** the regulation is handed out, so a
//! restarted job applies every regulation at the same time as before: its
//! suppressions cover the same replayed events, and its outputs are those
//! of an uninterrupted run. A line that does not parse is reported (with its
//! line number) and skipped; it is bound too, so later lines keep their
//! numbers. Only complete lines (ending in `\n`) are read.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use weft_dataflows::privacy::{parse_regulation, Regulation};

/// Bindings file name under the job's state directory.
pub const BINDINGS_FILE: &str = "regulations.bindings";

/// One line read from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogEntry {
    /// A regulation, with its `at` set to the logical time it applies at.
    Regulation(Regulation),
    /// A line that is not a regulation: its number (from 1) and what is wrong.
    Invalid {
        /// 1-based line number.
        line: u64,
        /// The parse error.
        message: String,
    },
}

/// A regulation log being read.
pub struct RegulationLog {
    path: PathBuf,
    name: String,
    /// Bytes of the log consumed (complete lines only).
    offset: u64,
    /// Lines consumed.
    lines: u64,
    /// Times recorded by earlier runs, by line number.
    recorded: Vec<u64>,
    bindings: File,
}

impl RegulationLog {
    /// Opens the log at `path` (which need not exist yet) with its bindings
    /// under `state_dir`.
    pub fn open(path: &Path, state_dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(state_dir)?;
        let bindings_path = state_dir.join(BINDINGS_FILE);
        let mut recorded = Vec::new();
        if let Ok(f) = File::open(&bindings_path) {
            for (i, line) in BufReader::new(f).lines().enumerate() {
                let line = line?;
                let parsed = line
                    .split_once(' ')
                    .and_then(|(n, t)| Some((n.parse::<u64>().ok()?, t.parse::<u64>().ok()?)));
                match parsed {
                    Some((n, t)) if n as usize == i => recorded.push(t),
                    // A torn last line (crash while appending): the line was not handed out.
                    _ => break,
                }
            }
        }
        // Rewrite the valid prefix, so appends continue from a clean end.
        let mut text = String::new();
        for (n, t) in recorded.iter().enumerate() {
            text.push_str(&format!("{n} {t}\n"));
        }
        let tmp = state_dir.join(format!("{BINDINGS_FILE}.tmp"));
        std::fs::write(&tmp, text)?;
        File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &bindings_path)?;
        let bindings = OpenOptions::new().append(true).open(&bindings_path)?;
        Ok(RegulationLog {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "regulations".into()),
            path: path.to_path_buf(),
            offset: 0,
            lines: 0,
            recorded,
            bindings,
        })
    }

    /// Reads the complete lines appended since the last poll and binds each to
    /// a time (see the module docs); `now` is the wall clock in ms and `lower`
    /// the earliest time the caller can still emit at.
    pub fn poll(&mut self, now: u64, lower: u64) -> io::Result<Vec<(LogEntry, u64)>> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot read {}: {e}", self.path.display()),
                ))
            }
        };
        file.seek(SeekFrom::Start(self.offset))?;
        let mut text = Vec::new();
        file.read_to_end(&mut text)?;
        let complete = match text.iter().rposition(|b| *b == b'\n') {
            Some(i) => i + 1,
            None => return Ok(Vec::new()),
        };
        let mut out = Vec::new();
        let mut new_bindings = String::new();
        // `text[..complete]` ends with `\n`: without it, the pieces are exactly the lines.
        for raw in text[..complete - 1].split(|b| *b == b'\n') {
            let n = self.lines;
            self.lines += 1;
            let line = String::from_utf8_lossy(raw);
            let parsed = if line.trim().is_empty() {
                None
            } else {
                Some(parse_regulation(line.trim()))
            };
            let time = match self.recorded.get(n as usize) {
                Some(t) => *t,
                None => {
                    let at = parsed
                        .as_ref()
                        .and_then(|p| p.as_ref().ok())
                        .and_then(|r| r.at);
                    let t = at.unwrap_or(now).max(lower);
                    new_bindings.push_str(&format!("{n} {t}\n"));
                    t
                }
            };
            match parsed {
                None => {}
                Some(Ok(r)) => out.push((
                    LogEntry::Regulation(Regulation {
                        id: r
                            .id
                            .unwrap_or_else(|| format!("{}:{}", self.name, n + 1))
                            .into(),
                        kind: r.kind,
                        identifier: r.identifier,
                        at: time,
                    }),
                    time,
                )),
                Some(Err(message)) => out.push((
                    LogEntry::Invalid {
                        line: n + 1,
                        message,
                    },
                    time,
                )),
            }
        }
        self.offset += complete as u64;
        if !new_bindings.is_empty() {
            self.bindings.write_all(new_bindings.as_bytes())?;
            self.bindings.sync_data()?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_dataflows::privacy::RegulationKind;

    fn regs(entries: &[(LogEntry, u64)]) -> Vec<(String, RegulationKind, u64)> {
        entries
            .iter()
            .filter_map(|(e, t)| match e {
                LogEntry::Regulation(r) => {
                    assert_eq!(r.at, *t);
                    Some((r.id.to_string(), r.kind, *t))
                }
                LogEntry::Invalid { .. } => None,
            })
            .collect()
    }

    #[test]
    fn bindings_survive_a_restart_and_new_lines_are_tailed() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("regs.jsonl");
        let state = dir.path().join("state");
        std::fs::write(
            &log,
            concat!(
                r#"{"type":"delete","identifier":"user_id:u1","at":5}"#,
                "\n",
                r#"{"type":"suppress","identifier":"email:a@b.c","id":"r-2"}"#,
                "\n",
                "not json\n",
                r#"{"type":"unsuppress","identifier":"email:a@b.c"}"#,
            ),
        )
        .unwrap();
        let mut first = RegulationLog::open(&log, &state).unwrap();
        let got = first.poll(1_000, 0).unwrap();
        assert_eq!(
            regs(&got),
            vec![
                ("regs.jsonl:1".into(), RegulationKind::Delete, 5),
                ("r-2".into(), RegulationKind::Suppress, 1_000),
            ]
        );
        assert!(matches!(got[2].0, LogEntry::Invalid { line: 3, .. }));
        // The incomplete last line is not read until it ends.
        let mut f = OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"\n").unwrap();
        let later = first.poll(2_000, 1_500).unwrap();
        assert_eq!(
            regs(&later),
            vec![("regs.jsonl:4".into(), RegulationKind::Unsuppress, 2_000)]
        );
        drop(first);
        // A restart replays every line at its recorded time, whatever the clock says now.
        let mut again = RegulationLog::open(&log, &state).unwrap();
        let replay = again.poll(9_000, 0).unwrap();
        assert_eq!(
            regs(&replay),
            vec![
                ("regs.jsonl:1".into(), RegulationKind::Delete, 5),
                ("r-2".into(), RegulationKind::Suppress, 1_000),
                ("regs.jsonl:4".into(), RegulationKind::Unsuppress, 2_000),
            ]
        );
    }

    #[test]
    fn a_missing_log_is_empty_and_at_is_raised_to_lower() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("later.jsonl");
        let mut r = RegulationLog::open(&log, dir.path()).unwrap();
        assert!(r.poll(10, 0).unwrap().is_empty());
        std::fs::write(
            &log,
            "{\"type\":\"delete\",\"identifier\":\"user_id:u\",\"at\":3}\n",
        )
        .unwrap();
        assert_eq!(
            regs(&r.poll(10, 7).unwrap()),
            vec![("later.jsonl:1".into(), RegulationKind::Delete, 7)]
        );
    }
}
