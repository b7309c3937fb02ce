//! A Parquet data lake: events and profile/audience changes as Parquet files
//! (snappy) in hive-style partitions, published atomically under a manifest,
//! with deletions that rewrite the affected files.
//!
//! ```text
//! ROOT/_weft_manifest.json                       published files + committed frontier
//! ROOT/type=track/day=2026-01-01/hour=00/part-000000000000.parquet
//! ROOT/type=track/day=2026-01-01/hour=00/.part-000000000007.parquet.tmp   (unpublished)
//! ROOT/type=audiences/day=2026-01-01/hour=00/part-000000000001.parquet
//! ```
//!
//! ## Rows and partitions
//!
//! [`ParquetLakeSink`] stores any [`LakeRecord`]. Events (`type=` their
//! Segment call type, `day=`/`hour=` from their `timestamp`, UTC) are
//! insert-only: one row per event; a retraction of an event (negative diff,
//! as a privacy deletion produces) removes its row. Derived records
//! (audience memberships, computed traits, identities, profile traits and
//! changes; `type=` the output's name, `day=`/`hour=` from the logical time)
//! are a change log: one row per change, `weft_diff` `+1` or `-1`. Every row
//! carries `weft_time` (the logical time) and `weft_diff`. See
//! [`record`] for the columns.
//!
//! ## Files and publication
//!
//! Each partition being written has one open file, written as
//! `.part-<seq>.parquet.tmp` in its directory, in row groups of at most
//! `max_row_group_rows` rows. A file is closed (*sealed*) when it reaches
//! `target_file_bytes`, when more than `max_open_partitions` partitions are
//! open (the least recently written one), and at every commit. Open files
//! hold at most `max_buffered_bytes` of encoded data in memory in total;
//! beyond that the largest one's row group goes to disk early.
//!
//! [`Sink::commit`] is the only point where anything becomes visible:
//!
//! 1. every open file is sealed (footer written, fsynced);
//! 2. the directories of unpublished files are fsynced;
//! 3. the manifest, listing every published file by its *final* name and the
//!    new frontier, replaces the old one atomically: **this is the commit
//!    point**;
//! 4. unpublished files are renamed to their final names (directories
//!    fsynced);
//! 5. files replaced by deletions since the last commit are removed.
//!
//! A crash before step 3 leaves the previous manifest; one after it is
//! rolled forward when the sink reopens (step 4 and 5 are redone). So the
//! files named by the manifest always hold exactly the changes of the times
//! below its frontier, and a final name is never given to an uncommitted
//! file. Readers should list files from the manifest; a reader that globs
//! `**/*.parquet` sees only committed data, but for a moment during step
//! 4–5 (or, after a crash, until the sink reopens) both a rewritten file
//! and its replacement.
//!
//! **Small files.** A Parquet file cannot be appended to once its footer is
//! written, so every commit closes every open file: with frequent commits
//! and few rows per partition between commits, files are smaller than
//! `target_file_bytes` (many small files make reads slower). The engine's
//! commit interval is therefore the knob: a longer interval makes fewer,
//! larger files and a later visibility. Compacting small files into larger
//! ones later is left to readers' tools (or a future compaction pass).
//!
//! ## Exactly once across restarts
//!
//! On open, the sink reads the manifest, rolls a committed publication
//! forward, and removes every file of ours that the manifest does not list
//! (temporary files, and parts of a crashed run). [`Sink::write`] and
//! [`Sink::erase`] at times below the committed frontier are skipped: a
//! restarted job re-emits the same changes at the same times, and those were
//! committed. The committed files then equal an uninterrupted run's (up to
//! how rows are split into files).
//!
//! ## Deletions
//!
//! * A retraction of an event (at time `t`) removes one unit of `weft_diff`
//!   of the rows with its `message_id` in its partition (the partition of its
//!   `timestamp`), from rows written before `t`: the files of that partition
//!   whose time range holds the event's `timestamp` and whose bloom filter on
//!   `message_id` may hold it are rewritten without it.
//! * [`Sink::erase`]`(t, identifiers)` removes every row written before `t`
//!   that names one of the identifiers ([`LakeRecord::mentions`]: an event's
//!   `user_id`, `anonymous_id`, `email`, `device_id`, `previous_id`; a derived
//!   record's `kind:value` profile and identifier columns), and the rows
//!   written at `t` that name them (the retractions of the person's derived
//!   records), so the person is in no file. Every file is a candidate; the
//!   Parquet bloom filters the sink writes on those columns rule out most
//!   files without reading their data.
//!
//! A rewrite writes the kept rows to a new unpublished file and retires the
//! old one; both take effect at the next commit, like any write. Rewrites
//! run on the calling thread and cost a read and a write of each affected
//! file: a person whose events are spread over many files makes an erase
//! slow (see `bench-lake`).
//!
//! ## Errors
//!
//! An I/O or Parquet error is returned as an `io::Error` naming the file.
//! The lake on disk is then still the last commit's (plus files the next
//! open removes): drop the sink and restart the job, which resumes exactly.
//!
//! ## Limits
//!
//! One sink per root (the manifest names its sink; another name is refused).
//! Identifiers that exist only inside JSON columns (external ids, custom
//! identity kinds) are not matched by erase; every event has a `userId` or
//! `anonymousId`, through which a person's events are found.

pub mod manifest;
pub mod record;
pub mod rewrite;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use tracing::{debug, info, warn};

use crate::sink::Sink;
use manifest::{
    abs, annotate, hour_of, is_part_file, part_name, partition_dir, sync_dir, temp_of, Manifest,
    ManifestFile, MANIFEST,
};
pub use record::{
    DerivedColumns, DerivedRecord, EventColumns, IdColumn, Identifiers, LakeColumns, LakeRecord,
};
use rewrite::{may_contain_keys, may_mention, rewrite, Removal, RowStats};

/// Default [`LakeConfig::target_file_bytes`]: 128 MiB.
pub const DEFAULT_TARGET_FILE_BYTES: u64 = 128 << 20;
/// Default [`LakeConfig::max_row_group_rows`].
pub const DEFAULT_MAX_ROW_GROUP_ROWS: usize = 128 * 1024;
/// Default [`LakeConfig::max_open_partitions`].
pub const DEFAULT_MAX_OPEN_PARTITIONS: usize = 64;
/// Default [`LakeConfig::max_buffered_bytes`]: 256 MiB.
pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 256 << 20;
/// Rows gathered per partition before they are handed to its Parquet writer.
const BATCH_ROWS: usize = 8192;
/// False-positive rate of the bloom filters on identifier and key columns.
const BLOOM_FPP: f64 = 0.01;

/// Settings of a Parquet lake sink.
#[derive(Clone, Debug)]
pub struct LakeConfig {
    /// The output's name: the `type=` partition of derived records, and the
    /// owner recorded in the manifest. Letters, digits, `_`, `-`, `.`.
    pub name: String,
    /// The lake's root directory (created if missing).
    pub root: PathBuf,
    /// A file is sealed once its encoded size reaches this many bytes.
    pub target_file_bytes: u64,
    /// Rows per Parquet row group, at most.
    pub max_row_group_rows: usize,
    /// Partitions with an open file, at most (the least recently written is sealed).
    pub max_open_partitions: usize,
    /// Encoded bytes held in memory by open files, at most (roughly).
    pub max_buffered_bytes: usize,
}

impl LakeConfig {
    /// The default settings for the output `name` at `root`.
    pub fn new(name: impl Into<String>, root: impl Into<PathBuf>) -> Self {
        LakeConfig {
            name: name.into(),
            root: root.into(),
            target_file_bytes: DEFAULT_TARGET_FILE_BYTES,
            max_row_group_rows: DEFAULT_MAX_ROW_GROUP_ROWS,
            max_open_partitions: DEFAULT_MAX_OPEN_PARTITIONS,
            max_buffered_bytes: DEFAULT_MAX_BUFFERED_BYTES,
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> io::Result<()> {
        let LakeConfig {
            name,
            root,
            target_file_bytes,
            max_row_group_rows,
            max_open_partitions,
            max_buffered_bytes,
        } = self;
        let bad = |msg: String| Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
        let name_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
        if name.is_empty() || name.starts_with('.') || !name.chars().all(name_ok) {
            return bad(format!(
                "lake sink name {name:?} must be letters, digits, `_`, `-` or `.` (it names a partition directory)"
            ));
        }
        if root.as_os_str().is_empty() {
            return bad(format!(
                "lake sink {name:?} has no root directory; set `root`"
            ));
        }
        if *target_file_bytes == 0
            || *max_row_group_rows == 0
            || *max_open_partitions == 0
            || *max_buffered_bytes == 0
        {
            return bad(format!(
                "lake sink {name:?}: target_file_bytes, max_row_group_rows, max_open_partitions and max_buffered_bytes must be positive"
            ));
        }
        Ok(())
    }
}

/// What a lake sink did since it opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LakeStats {
    /// Rows appended (not counting rows copied by rewrites).
    pub rows_written: u64,
    /// Files published by commits.
    pub files_published: u64,
    /// Bytes of the files published by commits.
    pub bytes_published: u64,
    /// Files rewritten by deletions.
    pub files_rewritten: u64,
    /// Files a deletion looked into (their bloom filters did not rule them out).
    pub files_read: u64,
    /// Rows removed by deletions.
    pub rows_removed: u64,
    /// Files removed at open: unpublished or not in the manifest.
    pub orphans_removed: u64,
}

/// A file of the lake: published (at its final name) or not yet (at its temporary name).
#[derive(Clone, Debug)]
struct Entry {
    stats: RowStats,
    bytes: u64,
    published: bool,
}

/// The open file of one partition.
struct OpenPart<D: LakeRecord> {
    /// Final path, relative to the root.
    rel: String,
    writer: ArrowWriter<File>,
    columns: D::Columns,
    stats: RowStats,
    last_write: u64,
}

/// Writes a [`LakeRecord`] output as a Parquet data lake (see the module docs).
pub struct ParquetLakeSink<D: LakeRecord> {
    config: LakeConfig,
    props: WriterProperties,
    /// The committed frontier; `None` once the output is complete.
    committed: Option<u64>,
    next_part: u64,
    /// Every file by final path: published, or sealed and waiting for the next commit.
    files: BTreeMap<String, Entry>,
    /// Published files replaced or emptied by deletions, removed after the next commit.
    retired: Vec<String>,
    /// Directories with unpublished files whose entries are not yet durable.
    unsynced_dirs: BTreeSet<String>,
    /// Open files by partition type and hour.
    open: HashMap<String, HashMap<i64, OpenPart<D>>>,
    writes: u64,
    /// The identifiers erased at a time, for the writes at that same time.
    erased: Option<(u64, Identifiers)>,
    /// Something changed since the last commit.
    dirty: bool,
    stats: LakeStats,
}

fn parquet_err(e: parquet::errors::ParquetError, path: &Path) -> io::Error {
    io::Error::other(format!("cannot write Parquet file {}: {e}", path.display()))
}

fn dir_of(rel: &str) -> &str {
    rel.rsplit_once('/').map_or("", |(dir, _)| dir)
}

/// Writer settings: snappy, row groups of `max_row_group_rows`, bloom
/// filters on the identifier and key columns, no dictionary for columns
/// whose values rarely repeat.
fn writer_properties<D: LakeRecord>(config: &LakeConfig) -> WriterProperties {
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(config.max_row_group_rows));
    let bloom_columns = D::ID_COLUMNS
        .iter()
        .map(|c| c.column())
        .chain(D::KEY_COLUMN);
    for column in bloom_columns {
        builder = builder
            .set_column_bloom_filter_enabled(ColumnPath::from(column), true)
            .set_column_bloom_filter_fpp(ColumnPath::from(column), BLOOM_FPP);
    }
    for column in D::UNIQUE_COLUMNS {
        builder = builder.set_column_dictionary_enabled(ColumnPath::from(*column), false);
    }
    builder.build()
}

impl<D: LakeRecord> ParquetLakeSink<D> {
    /// Opens (or creates) the lake at `config.root`: reads the manifest,
    /// finishes a committed publication a crash interrupted, and removes the
    /// files the manifest does not list.
    pub fn open(config: LakeConfig) -> io::Result<Self> {
        config.validate()?;
        debug_assert!(rewrite::schema_has_declared_columns::<D>());
        let root = config.root.clone();
        fs::create_dir_all(&root).map_err(|e| annotate(e, &root, "cannot create"))?;
        let manifest = Manifest::read(&root)?.unwrap_or_else(|| Manifest::empty(&config.name));
        if manifest.sink != config.name {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the lake at {} belongs to sink {:?}, not {:?}; give each sink its own root",
                    root.display(),
                    manifest.sink,
                    config.name
                ),
            ));
        }
        let mut sink = ParquetLakeSink {
            props: writer_properties::<D>(&config),
            committed: manifest.frontier.first().copied(),
            next_part: manifest.next_part,
            files: BTreeMap::new(),
            retired: Vec::new(),
            unsynced_dirs: BTreeSet::new(),
            open: HashMap::new(),
            writes: 0,
            erased: None,
            dirty: false,
            stats: LakeStats::default(),
            config,
        };
        sink.roll_forward(&manifest)?;
        sink.stats.orphans_removed = sink.remove_orphans()?;
        info!(
            sink = %sink.config.name,
            root = %root.display(),
            files = sink.files.len(),
            frontier = ?manifest.frontier,
            orphans = sink.stats.orphans_removed,
            "opened lake"
        );
        Ok(sink)
    }

    /// What the sink did since it opened.
    pub fn stats(&self) -> LakeStats {
        self.stats
    }

    /// The committed frontier (`[]`: complete).
    pub fn committed_frontier(&self) -> Vec<u64> {
        self.committed.into_iter().collect()
    }

    /// STEP 4 of a commit, redone at open: gives every listed file its final name.
    fn roll_forward(&mut self, manifest: &Manifest) -> io::Result<()> {
        let root = self.config.root.clone();
        let mut renamed_dirs = BTreeSet::new();
        for f in &manifest.files {
            let path = abs(&root, &f.path);
            if !path.exists() {
                let temp = abs(&root, &temp_of(&f.path));
                if !temp.exists() {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!(
                            "{} is listed in the lake manifest but missing; restore it, or remove it from {}",
                            path.display(),
                            root.join(MANIFEST).display()
                        ),
                    ));
                }
                fs::rename(&temp, &path).map_err(|e| annotate(e, &path, "cannot publish"))?;
                renamed_dirs.insert(dir_of(&f.path).to_string());
            }
            self.files.insert(
                f.path.clone(),
                Entry {
                    stats: RowStats {
                        rows: f.rows,
                        min_time_ms: f.min_time_ms,
                        max_time_ms: f.max_time_ms,
                        min_weft_time: f.min_weft_time,
                        max_weft_time: f.max_weft_time,
                    },
                    bytes: f.bytes,
                    published: true,
                },
            );
        }
        for dir in renamed_dirs {
            sync_dir(&abs(&root, &dir))?;
        }
        Ok(())
    }

    /// Removes our files that the manifest does not list (and a manifest's temp file).
    fn remove_orphans(&self) -> io::Result<u64> {
        let root = &self.config.root;
        let _ = fs::remove_file(root.join(format!(".{MANIFEST}.tmp")));
        let mut removed = 0;
        let mut stack = vec![(root.clone(), String::new())];
        while let Some((dir, rel_dir)) = stack.pop() {
            let entries = fs::read_dir(&dir).map_err(|e| annotate(e, &dir, "cannot list"))?;
            let mut removed_here = false;
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let rel = if rel_dir.is_empty() {
                    name.clone()
                } else {
                    format!("{rel_dir}/{name}")
                };
                if entry.file_type()?.is_dir() {
                    stack.push((entry.path(), rel));
                } else if is_part_file(&name)
                    && (name.starts_with('.') || !self.files.contains_key(&rel))
                {
                    debug!(sink = %self.config.name, file = %rel, "removing unpublished file");
                    fs::remove_file(entry.path())
                        .map_err(|e| annotate(e, &entry.path(), "cannot remove"))?;
                    removed += 1;
                    removed_here = true;
                }
            }
            if removed_here {
                sync_dir(&dir)?;
                remove_empty_dirs(root, &rel_dir);
            }
        }
        Ok(removed)
    }

    /// Whether changes at `time` are still to be written (not committed before).
    fn accepts(&self, time: u64) -> bool {
        self.committed.is_some_and(|f| time >= f)
    }

    /// The on-disk path of a file: its final name if published, else its temporary one.
    fn path_of(&self, rel: &str, entry: &Entry) -> PathBuf {
        if entry.published {
            abs(&self.config.root, rel)
        } else {
            abs(&self.config.root, &temp_of(rel))
        }
    }

    /// A new final path in the partition directory `dir`.
    fn new_part(&mut self, dir: &str) -> String {
        let rel = format!("{dir}/{}", part_name(self.next_part));
        self.next_part += 1;
        rel
    }

    /// The open file of a partition, opened if needed.
    fn part(&mut self, kind: &str, hour: i64) -> io::Result<&mut OpenPart<D>> {
        self.writes += 1;
        let exists = self.open.get(kind).is_some_and(|m| m.contains_key(&hour));
        if !exists {
            if self.open_count() >= self.config.max_open_partitions {
                self.seal_least_recent()?;
            }
            let part = self.open_part(kind, hour)?;
            self.open
                .entry(kind.to_string())
                .or_default()
                .insert(hour, part);
        }
        let writes = self.writes;
        let part = self
            .open
            .get_mut(kind)
            .and_then(|m| m.get_mut(&hour))
            .expect("the partition was just opened");
        part.last_write = writes;
        Ok(part)
    }

    fn open_count(&self) -> usize {
        self.open.values().map(HashMap::len).sum()
    }

    fn open_part(&mut self, kind: &str, hour: i64) -> io::Result<OpenPart<D>> {
        let dir = partition_dir(kind, hour * 3_600_000);
        let rel = self.new_part(&dir);
        let dir_path = abs(&self.config.root, &dir);
        fs::create_dir_all(&dir_path).map_err(|e| annotate(e, &dir_path, "cannot create"))?;
        let temp = abs(&self.config.root, &temp_of(&rel));
        let file = File::create(&temp).map_err(|e| annotate(e, &temp, "cannot create"))?;
        let writer = ArrowWriter::try_new(file, D::schema(), Some(self.props.clone()))
            .map_err(|e| parquet_err(e, &temp))?;
        Ok(OpenPart {
            rel,
            writer,
            columns: D::Columns::default(),
            stats: RowStats::default(),
            last_write: 0,
        })
    }

    /// Hands a part's gathered rows to its writer; true if the file reached its target size.
    fn feed(&self, part: &mut OpenPart<D>) -> io::Result<bool> {
        if !part.columns.is_empty() {
            let path = || abs(&self.config.root, &temp_of(&part.rel));
            let batch = RecordBatch::try_new(D::schema(), part.columns.finish()).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("cannot build rows for {}: {e}", path().display()),
                )
            })?;
            part.writer
                .write(&batch)
                .map_err(|e| parquet_err(e, &path()))?;
        }
        let size = part.writer.bytes_written() + part.writer.in_progress_size();
        Ok(size as u64 >= self.config.target_file_bytes)
    }

    /// Closes a part's file (footer, fsync); it waits for the next commit to be published.
    fn seal(&mut self, mut part: OpenPart<D>) -> io::Result<()> {
        self.feed(&mut part)?;
        let temp = abs(&self.config.root, &temp_of(&part.rel));
        if part.stats.rows == 0 {
            drop(part.writer);
            return fs::remove_file(&temp).map_err(|e| annotate(e, &temp, "cannot remove"));
        }
        let file = part
            .writer
            .into_inner()
            .map_err(|e| parquet_err(e, &temp))?;
        file.sync_all()
            .map_err(|e| annotate(e, &temp, "cannot sync"))?;
        let bytes = file.metadata()?.len();
        self.unsynced_dirs.insert(dir_of(&part.rel).to_string());
        self.files.insert(
            part.rel,
            Entry {
                stats: part.stats,
                bytes,
                published: false,
            },
        );
        self.dirty = true;
        Ok(())
    }

    fn take_part(&mut self, kind: &str, hour: i64) -> Option<OpenPart<D>> {
        let parts = self.open.get_mut(kind)?;
        let part = parts.remove(&hour);
        if parts.is_empty() {
            self.open.remove(kind);
        }
        part
    }

    fn seal_part(&mut self, kind: &str, hour: i64) -> io::Result<()> {
        match self.take_part(kind, hour) {
            Some(part) => self.seal(part),
            None => Ok(()),
        }
    }

    fn seal_all(&mut self) -> io::Result<()> {
        let parts: Vec<OpenPart<D>> = self
            .open
            .drain()
            .flat_map(|(_, m)| m.into_values())
            .collect();
        for part in parts {
            self.seal(part)?;
        }
        Ok(())
    }

    fn seal_least_recent(&mut self) -> io::Result<()> {
        let oldest = self
            .open
            .iter()
            .flat_map(|(k, m)| m.iter().map(move |(h, p)| (p.last_write, k.clone(), *h)))
            .min();
        match oldest {
            Some((_, kind, hour)) => self.seal_part(&kind, hour),
            None => Ok(()),
        }
    }

    /// Feeds every part's rows to its writer, seals full files, and flushes
    /// row groups early while open files hold more than `max_buffered_bytes`.
    fn feed_all(&mut self) -> io::Result<()> {
        let mut full = Vec::new();
        let mut open = std::mem::take(&mut self.open);
        let result = open.iter_mut().try_for_each(|(kind, parts)| {
            parts.iter_mut().try_for_each(|(hour, part)| {
                if self.feed(part)? {
                    full.push((kind.clone(), *hour));
                }
                Ok::<_, io::Error>(())
            })
        });
        self.open = open;
        result?;
        for (kind, hour) in full {
            self.seal_part(&kind, hour)?;
        }
        self.bound_memory()
    }

    fn bound_memory(&mut self) -> io::Result<()> {
        let mut total: usize = self
            .open
            .values()
            .flat_map(HashMap::values)
            .map(|p| p.writer.memory_size())
            .sum();
        while total > self.config.max_buffered_bytes {
            let largest = self
                .open
                .values_mut()
                .flat_map(HashMap::values_mut)
                .max_by_key(|p| p.writer.in_progress_size());
            let Some(part) = largest else { break };
            let before = part.writer.memory_size();
            if part.writer.in_progress_size() == 0 {
                break;
            }
            let temp = abs(&self.config.root, &temp_of(&part.rel));
            part.writer.flush().map_err(|e| parquet_err(e, &temp))?;
            total = total + part.writer.memory_size() - before;
        }
        Ok(())
    }

    /// Rewrites the file `rel` without the rows `removal` selects; the new
    /// file (if any rows are left) is unpublished, the old one retired.
    fn replace(&mut self, rel: &str, removal: Removal<'_>) -> io::Result<()> {
        let Some(entry) = self.files.get(rel).cloned() else {
            return Ok(());
        };
        let src = self.path_of(rel, &entry);
        let dir = dir_of(rel).to_string();
        let new_rel = self.new_part(&dir);
        let dst = abs(&self.config.root, &temp_of(&new_rel));
        self.stats.files_read += 1;
        let result = rewrite::<D>(&src, &dst, &self.props, removal)?;
        if !result.changed {
            return Ok(());
        }
        debug!(sink = %self.config.name, file = %rel, removed = result.removed, "rewrote file");
        self.stats.files_rewritten += 1;
        self.stats.rows_removed += result.removed;
        self.files.remove(rel);
        if entry.published {
            self.retired.push(rel.to_string());
        } else {
            fs::remove_file(&src).map_err(|e| annotate(e, &src, "cannot remove"))?;
        }
        if let Some(stats) = result.kept {
            let bytes = fs::metadata(&dst)?.len();
            self.unsynced_dirs.insert(dir);
            self.files.insert(
                new_rel,
                Entry {
                    stats,
                    bytes,
                    published: false,
                },
            );
        }
        self.dirty = true;
        Ok(())
    }

    /// Applies the retractions of insert-only records in `updates`: their
    /// rows, written before `time`, lose the retracted multiplicity.
    fn retract(&mut self, time: u64, updates: &[(D, isize)], weft_time: i64) -> io::Result<()> {
        struct Partition {
            kind: String,
            hour: i64,
            times: Vec<i64>,
            keys: HashMap<String, i64>,
        }
        let output = self.config.name.clone();
        let erased = self.erased_at(time);
        let mut partitions: BTreeMap<String, Partition> = BTreeMap::new();
        for (record, diff) in updates.iter().filter(|(_, d)| *d < 0) {
            let Some(key) = record.key() else { continue };
            if erased.is_some_and(|ids| record.mentions(ids)) {
                continue; // erase removed it already
            }
            let kind = record.partition_type(&output);
            let time_ms = record.partition_time_ms(weft_time);
            let p = partitions
                .entry(partition_dir(kind, time_ms))
                .or_insert_with(|| Partition {
                    kind: kind.to_string(),
                    hour: hour_of(time_ms),
                    times: Vec::new(),
                    keys: HashMap::new(),
                });
            p.times.push(time_ms);
            *p.keys.entry(key.to_string()).or_default() += diff.unsigned_abs() as i64;
        }
        for (dir, mut p) in partitions {
            // Rows still in the open file are among the candidates.
            self.seal_part(&p.kind, p.hour)?;
            let prefix = format!("{dir}/");
            let candidates: Vec<String> = self
                .files
                .range(prefix.clone()..)
                .take_while(|(rel, _)| rel.starts_with(&prefix))
                .filter(|(_, e)| {
                    p.times
                        .iter()
                        .any(|t| (e.stats.min_time_ms..=e.stats.max_time_ms).contains(t))
                })
                .map(|(rel, _)| rel.clone())
                .collect();
            for rel in candidates {
                if p.keys.values().all(|n| *n <= 0) {
                    break;
                }
                let Some(entry) = self.files.get(&rel) else {
                    continue;
                };
                if !may_contain_keys::<D>(&self.path_of(&rel, entry), &p.keys)? {
                    continue;
                }
                self.replace(&rel, Removal::Retract(&mut p.keys))?;
            }
            let missing: i64 = p.keys.values().filter(|n| **n > 0).sum();
            if missing > 0 {
                debug!(sink = %self.config.name, partition = %dir, missing, "retracted rows not found in the lake");
            }
        }
        Ok(())
    }

    fn erased_at(&self, time: u64) -> Option<&Identifiers> {
        self.erased
            .as_ref()
            .filter(|(t, _)| *t == time)
            .map(|(_, ids)| ids)
    }

    /// Appends the rows of one time.
    fn append(&mut self, time: u64, updates: &[(D, isize)], weft_time: i64) -> io::Result<()> {
        let output = self.config.name.clone();
        let erased = self.erased.take().filter(|(t, _)| *t == time);
        let mut appended = 0;
        let mut result = Ok(());
        for (record, diff) in updates {
            if *diff == 0 || (*diff < 0 && D::KEY_COLUMN.is_some()) {
                continue;
            }
            if erased.as_ref().is_some_and(|(_, ids)| record.mentions(ids)) {
                continue;
            }
            let kind = record.partition_type(&output);
            let time_ms = record.partition_time_ms(weft_time);
            let hour = hour_of(time_ms);
            let part = match self.part(kind, hour) {
                Ok(p) => p,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            part.columns.push(record, weft_time, *diff as i64);
            part.stats.add(time_ms, weft_time);
            appended += 1;
            if part.columns.len() >= BATCH_ROWS {
                if let Err(e) = self.feed_all() {
                    result = Err(e);
                    break;
                }
            }
        }
        self.erased = erased;
        result?;
        self.stats.rows_written += appended;
        self.dirty |= appended > 0;
        self.feed_all()
    }

    /// Publishes everything sealed (see the module docs, steps 2–5).
    fn publish(&mut self, frontier: &[u64]) -> io::Result<()> {
        let root = self.config.root.clone();
        // STEP 2. Unpublished files' directory entries become durable.
        for dir in std::mem::take(&mut self.unsynced_dirs) {
            sync_dir(&abs(&root, &dir))?;
        }
        // STEP 3. The manifest: the commit point.
        let manifest = Manifest {
            version: manifest::MANIFEST_VERSION,
            sink: self.config.name.clone(),
            frontier: frontier.to_vec(),
            next_part: self.next_part,
            files: self
                .files
                .iter()
                .map(|(rel, e)| ManifestFile {
                    path: rel.clone(),
                    rows: e.stats.rows,
                    bytes: e.bytes,
                    min_time_ms: e.stats.min_time_ms,
                    max_time_ms: e.stats.max_time_ms,
                    min_weft_time: e.stats.min_weft_time,
                    max_weft_time: e.stats.max_weft_time,
                })
                .collect(),
        };
        manifest.write_atomic(&root)?;
        // STEP 4. Final names.
        let mut dirs = BTreeSet::new();
        for (rel, entry) in self.files.iter_mut().filter(|(_, e)| !e.published) {
            let path = abs(&root, rel);
            fs::rename(abs(&root, &temp_of(rel)), &path)
                .map_err(|e| annotate(e, &path, "cannot publish"))?;
            entry.published = true;
            dirs.insert(dir_of(rel).to_string());
            self.stats.files_published += 1;
            self.stats.bytes_published += entry.bytes;
        }
        // STEP 5. Replaced files go.
        for rel in std::mem::take(&mut self.retired) {
            let path = abs(&root, &rel);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "cannot remove a replaced lake file; it is no longer in the manifest")
                }
            }
            dirs.insert(dir_of(&rel).to_string());
        }
        for dir in &dirs {
            let path = abs(&root, dir);
            if path.exists() {
                sync_dir(&path)?;
            }
            remove_empty_dirs(&root, dir);
        }
        Ok(())
    }
}

/// Removes `rel_dir` and its parents up to the root while they are empty.
fn remove_empty_dirs(root: &Path, rel_dir: &str) {
    let mut dir = rel_dir;
    while !dir.is_empty() && fs::remove_dir(abs(root, dir)).is_ok() {
        dir = dir_of(dir);
    }
}

fn logical_time(time: u64) -> io::Result<i64> {
    i64::try_from(time).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("logical time {time} does not fit the lake's Int64 weft_time"),
        )
    })
}

impl<D: LakeRecord> Sink<D> for ParquetLakeSink<D> {
    fn write(&mut self, time: u64, updates: &[(D, isize)]) -> io::Result<()> {
        if !self.accepts(time) {
            return Ok(());
        }
        let weft_time = logical_time(time)?;
        if D::KEY_COLUMN.is_some() && updates.iter().any(|(_, d)| *d < 0) {
            self.retract(time, updates, weft_time)?;
        }
        self.append(time, updates, weft_time)
    }

    fn commit(&mut self, frontier: &[u64]) -> io::Result<()> {
        if self.committed.is_none() || (!self.dirty && !frontier.is_empty()) {
            return Ok(());
        }
        // STEP 1. Seal every open file.
        self.seal_all()?;
        self.publish(frontier)?;
        self.committed = frontier.first().copied();
        self.dirty = false;
        debug!(sink = %self.config.name, ?frontier, files = self.files.len(), "committed lake");
        Ok(())
    }

    fn erase(&mut self, time: u64, identifiers: &[String]) -> io::Result<()> {
        if !self.accepts(time) {
            return Ok(());
        }
        let (ids, rejected) = Identifiers::parse(identifiers);
        if !rejected.is_empty() {
            warn!(sink = %self.config.name, ?rejected, "identifiers to erase must be `kind:value`; these are ignored");
        }
        if ids.is_empty() {
            return Ok(());
        }
        // STEP 1. Every earlier row goes to a file.
        self.seal_all()?;
        // STEP 2. Rewrite the files that may name the person.
        let files: Vec<(String, Entry)> = self
            .files
            .iter()
            .map(|(r, e)| (r.clone(), e.clone()))
            .collect();
        for (rel, entry) in files {
            if may_mention::<D>(&self.path_of(&rel, &entry), &ids)? {
                self.replace(&rel, Removal::Erase(&ids))?;
            }
        }
        // STEP 3. Rows written at `time` that name the person are dropped.
        match &mut self.erased {
            Some((t, earlier)) if *t == time => earlier.extend(ids),
            _ => self.erased = Some((time, ids)),
        }
        self.dirty = true;
        Ok(())
    }
}
