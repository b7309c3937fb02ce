//! The lake's manifest and file layout.
//!
//! `ROOT/_weft_manifest.json` lists every published file and the sink's
//! committed frontier. It is replaced atomically (written to
//! `ROOT/._weft_manifest.json.tmp`, fsynced, renamed, directory fsynced), so
//! a reader sees either the old or the new list, never a mix.
//!
//! Files live at `ROOT/type=<type>/day=YYYY-MM-DD/hour=HH/part-<seq>.parquet`
//! (UTC). A file is first written as `.part-<seq>.parquet.tmp` beside its
//! final name; it gets its final name only after a manifest listing it is
//! durable. The leading `.` and the suffix keep unpublished files out of
//! readers' globs (`**/*.parquet`) and of pyarrow datasets (which skip
//! names starting with `.` or `_`).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The manifest's file name, in the lake's root.
pub const MANIFEST: &str = "_weft_manifest.json";

/// The manifest format this code writes and reads.
pub const MANIFEST_VERSION: u32 = 1;

/// One published file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Path relative to the root, `/`-separated.
    pub path: String,
    /// Rows in the file.
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// Smallest partition time of its rows (event `timestamp`, or logical time), ms.
    pub min_time_ms: i64,
    /// Largest partition time of its rows, ms.
    pub max_time_ms: i64,
    /// Smallest `weft_time` of its rows.
    pub min_weft_time: i64,
    /// Largest `weft_time` of its rows.
    pub max_weft_time: i64,
}

/// The lake's manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_VERSION`].
    pub version: u32,
    /// The sink that owns the lake.
    pub sink: String,
    /// The committed frontier: changes at times below it are in the files.
    /// `[]`: the output is complete.
    pub frontier: Vec<u64>,
    /// The sequence number of the next file name.
    pub next_part: u64,
    /// The published files.
    pub files: Vec<ManifestFile>,
}

impl Manifest {
    /// The manifest of a lake with nothing committed yet.
    pub fn empty(sink: &str) -> Manifest {
        Manifest {
            version: MANIFEST_VERSION,
            sink: sink.to_string(),
            frontier: vec![0],
            next_part: 0,
            files: Vec::new(),
        }
    }

    /// Reads `root`'s manifest; `None` if there is none.
    pub fn read(root: &Path) -> io::Result<Option<Manifest>> {
        let path = root.join(MANIFEST);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(annotate(e, &path, "cannot read")),
        };
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is not a valid lake manifest ({e}); restore it, or remove the lake directory to start over",
                    path.display()
                ),
            )
        })?;
        if manifest.version != MANIFEST_VERSION {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} has manifest version {}; this Weft reads version {MANIFEST_VERSION}",
                    path.display(),
                    manifest.version
                ),
            ));
        }
        Ok(Some(manifest))
    }

    /// Replaces `root`'s manifest atomically and durably.
    pub fn write_atomic(&self, root: &Path) -> io::Result<()> {
        let tmp = root.join(format!(".{MANIFEST}.tmp"));
        let json = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        let mut f = File::create(&tmp).map_err(|e| annotate(e, &tmp, "cannot create"))?;
        f.write_all(&json)?;
        f.sync_all()?;
        drop(f);
        let path = root.join(MANIFEST);
        fs::rename(&tmp, &path).map_err(|e| annotate(e, &path, "cannot replace"))?;
        sync_dir(root)
    }
}

/// Adds what was being done and to which path to an I/O error.
pub fn annotate(e: io::Error, path: &Path, doing: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{doing} {}: {e}", path.display()))
}

/// Makes a directory's entries (creations, renames, removals) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| annotate(e, dir, "cannot sync directory"))
}

/// The partition directory (relative to the root) of `type` at `time_ms` (UTC).
pub fn partition_dir(kind: &str, time_ms: i64) -> String {
    let hours = time_ms.div_euclid(3_600_000);
    let (y, m, d) = civil_from_days(hours.div_euclid(24));
    format!(
        "type={kind}/day={y:04}-{m:02}-{d:02}/hour={:02}",
        hours.rem_euclid(24)
    )
}

/// The hour (since the epoch) of a time: the key of its partition.
pub fn hour_of(time_ms: i64) -> i64 {
    time_ms.div_euclid(3_600_000)
}

/// The `(year, month, day)` of a day number since 1970-01-01 (proleptic
/// Gregorian; Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The final file name of sequence number `seq`.
pub fn part_name(seq: u64) -> String {
    format!("part-{seq:012}.parquet")
}

/// Whether a file name is one of ours: a part or a temporary part.
pub fn is_part_file(name: &str) -> bool {
    let stem = name.strip_prefix('.').unwrap_or(name);
    let stem = stem.strip_suffix(".tmp").unwrap_or(stem);
    stem.starts_with("part-") && stem.ends_with(".parquet")
}

/// The temporary path of a file whose final path is `rel` (both relative to the root).
pub fn temp_of(rel: &str) -> String {
    match rel.rsplit_once('/') {
        Some((dir, name)) => format!("{dir}/.{name}.tmp"),
        None => format!(".{rel}.tmp"),
    }
}

/// `root` joined with a `/`-separated relative path.
pub fn abs(root: &Path, rel: &str) -> PathBuf {
    rel.split('/')
        .fold(root.to_path_buf(), |p, part| p.join(part))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_utc_hours() {
        assert_eq!(
            partition_dir("track", 1_767_225_600_000),
            "type=track/day=2026-01-01/hour=00"
        );
        assert_eq!(
            partition_dir("track", 1_767_225_600_000 - 1),
            "type=track/day=2025-12-31/hour=23"
        );
        assert_eq!(partition_dir("x", 0), "type=x/day=1970-01-01/hour=00");
        // 2024-02-29T13:30:00Z.
        assert_eq!(
            partition_dir("x", 1_709_213_400_000),
            "type=x/day=2024-02-29/hour=13"
        );
        assert_eq!(partition_dir("x", -1), "type=x/day=1969-12-31/hour=23");
    }

    #[test]
    fn part_names() {
        assert!(is_part_file(&part_name(7)));
        assert!(is_part_file(".part-000000000007.parquet.tmp"));
        assert!(!is_part_file("notes.parquet"));
        assert_eq!(temp_of("a/b/part-1.parquet"), "a/b/.part-1.parquet.tmp");
    }
}
