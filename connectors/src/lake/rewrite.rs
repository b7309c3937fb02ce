//! Rewriting a file without some rows: the rows of erased people, or the
//! retracted rows of insert-only records. Parquet files are immutable; a
//! deletion writes a new file with the remaining rows (the caller publishes
//! it in place of the old one).
//!
//! Before reading a file, [`may_mention`] and [`may_contain_keys`] consult
//! the Parquet bloom filters the sink writes on the identifier and key
//! columns: a file whose filters rule out every probe is not read at all.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Int64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::{ReaderProperties, WriterProperties};
use parquet::file::reader::FileReader;
use parquet::file::serialized_reader::{ReadOptionsBuilder, SerializedFileReader};

use super::manifest::annotate;
use super::record::{IdColumn, Identifiers, LakeRecord, WEFT_DIFF, WEFT_TIME};

/// What a rewrite removes.
pub enum Removal<'a> {
    /// Every row that names one of these identifiers.
    Erase(&'a Identifiers),
    /// Up to `n` units of `weft_diff` of the rows whose key is a key of the
    /// map (`n` its value), taken in file order; the map keeps what is left.
    Retract(&'a mut HashMap<String, i64>),
}

/// Rows and time ranges of a file's rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowStats {
    /// Rows.
    pub rows: u64,
    /// Smallest partition time, ms.
    pub min_time_ms: i64,
    /// Largest partition time, ms.
    pub max_time_ms: i64,
    /// Smallest `weft_time`.
    pub min_weft_time: i64,
    /// Largest `weft_time`.
    pub max_weft_time: i64,
}

impl Default for RowStats {
    fn default() -> Self {
        RowStats {
            rows: 0,
            min_time_ms: i64::MAX,
            max_time_ms: i64::MIN,
            min_weft_time: i64::MAX,
            max_weft_time: i64::MIN,
        }
    }
}

impl RowStats {
    /// Counts one row.
    pub fn add(&mut self, time_ms: i64, weft_time: i64) {
        self.rows += 1;
        self.min_time_ms = self.min_time_ms.min(time_ms);
        self.max_time_ms = self.max_time_ms.max(time_ms);
        self.min_weft_time = self.min_weft_time.min(weft_time);
        self.max_weft_time = self.max_weft_time.max(weft_time);
    }
}

/// What a rewrite did.
#[derive(Debug)]
pub struct Rewritten {
    /// Rows removed (a retraction that only lowers a row's `weft_diff` removes none).
    pub removed: u64,
    /// Whether anything changed; if not, no file was left at the destination.
    pub changed: bool,
    /// The rows of the new file; `None` if nothing changed or no row is left
    /// (no file was left at the destination).
    pub kept: Option<RowStats>,
}

fn parquet_err(e: parquet::errors::ParquetError, path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("cannot read or write Parquet file {}: {e}", path.display()),
    )
}

fn arrow_err(e: arrow::error::ArrowError, path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("cannot filter rows of {}: {e}", path.display()),
    )
}

/// Whether any bloom filter of `path` (for the named columns) may contain
/// one of the probes. Columns or row groups without a filter answer "maybe".
fn blooms_may_contain(path: &Path, probes: &[(&str, Vec<&str>)]) -> io::Result<bool> {
    if probes.iter().all(|(_, values)| values.is_empty()) {
        return Ok(false);
    }
    let file = File::open(path).map_err(|e| annotate(e, path, "cannot open"))?;
    let options = ReadOptionsBuilder::new()
        .with_reader_properties(
            ReaderProperties::builder()
                .set_read_bloom_filter(true)
                .build(),
        )
        .build();
    let reader =
        SerializedFileReader::new_with_options(file, options).map_err(|e| parquet_err(e, path))?;
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    for g in 0..reader.num_row_groups() {
        let group = reader.get_row_group(g).map_err(|e| parquet_err(e, path))?;
        for (column, values) in probes.iter().filter(|(_, v)| !v.is_empty()) {
            let Some(index) =
                (0..schema.num_columns()).find(|&i| schema.column(i).name() == *column)
            else {
                continue;
            };
            match group.get_column_bloom_filter(index) {
                None => return Ok(true),
                Some(bloom) => {
                    if values.iter().any(|v| bloom.check(*v)) {
                        return Ok(true);
                    }
                }
            }
        }
    }
    Ok(false)
}

/// Whether the file may hold a row naming one of `ids` (false: it holds none).
pub fn may_mention<D: LakeRecord>(path: &Path, ids: &Identifiers) -> io::Result<bool> {
    let probes: Vec<(&str, Vec<&str>)> = D::ID_COLUMNS
        .iter()
        .map(|c| (c.column(), ids.probes(c)))
        .collect();
    blooms_may_contain(path, &probes)
}

/// Whether the file may hold a row with one of `keys` (false: it holds none).
pub fn may_contain_keys<D: LakeRecord>(
    path: &Path,
    keys: &HashMap<String, i64>,
) -> io::Result<bool> {
    let Some(column) = D::KEY_COLUMN else {
        return Ok(false);
    };
    let values: Vec<&str> = keys
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, _)| k.as_str())
        .collect();
    blooms_may_contain(path, &[(column, values)])
}

/// Copies `src` to `dst` without the rows `removal` selects, with `props`.
///
/// If nothing would change, nothing is left at `dst`; neither if no row
/// remains. `dst` is fsynced when kept.
pub fn rewrite<D: LakeRecord>(
    src: &Path,
    dst: &Path,
    props: &WriterProperties,
    mut removal: Removal<'_>,
) -> io::Result<Rewritten> {
    let file = File::open(src).map_err(|e| annotate(e, src, "cannot open"))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.with_batch_size(8192).build())
        .map_err(|e| parquet_err(e, src))?;
    let out = File::create(dst).map_err(|e| annotate(e, dst, "cannot create"))?;
    let mut writer = ArrowWriter::try_new(out, D::schema(), Some(props.clone()))
        .map_err(|e| parquet_err(e, dst))?;
    let mut stats = RowStats::default();
    let (mut removed, mut changed) = (0u64, false);
    for batch in reader {
        let batch = batch.map_err(|e| arrow_err(e, src))?;
        let (kept, batch_removed, batch_changed) = match &mut removal {
            Removal::Erase(ids) => erase_rows::<D>(&batch, ids),
            Removal::Retract(keys) => retract_rows::<D>(&batch, keys),
        }
        .map_err(|e| arrow_err(e, src))?;
        removed += batch_removed;
        changed |= batch_changed;
        if kept.num_rows() > 0 {
            add_stats::<D>(&kept, &mut stats).map_err(|e| arrow_err(e, src))?;
            writer.write(&kept).map_err(|e| parquet_err(e, dst))?;
        }
    }
    if !changed || stats.rows == 0 {
        drop(writer);
        std::fs::remove_file(dst).map_err(|e| annotate(e, dst, "cannot remove"))?;
        return Ok(Rewritten {
            removed,
            changed,
            kept: None,
        });
    }
    let file = writer.into_inner().map_err(|e| parquet_err(e, dst))?;
    file.sync_all()
        .map_err(|e| annotate(e, dst, "cannot sync"))?;
    Ok(Rewritten {
        removed,
        changed,
        kept: Some(stats),
    })
}

fn string_column<'b>(
    batch: &'b RecordBatch,
    name: &str,
) -> Result<&'b arrow::array::StringArray, arrow::error::ArrowError> {
    let column = batch
        .column_by_name(name)
        .ok_or_else(|| arrow::error::ArrowError::SchemaError(format!("no column {name:?}")))?;
    column.as_string_opt::<i32>().ok_or_else(|| {
        arrow::error::ArrowError::SchemaError(format!("column {name:?} is not text"))
    })
}

fn int64_column(batch: &RecordBatch, name: &str) -> Result<Int64Array, arrow::error::ArrowError> {
    let column = batch
        .column_by_name(name)
        .ok_or_else(|| arrow::error::ArrowError::SchemaError(format!("no column {name:?}")))?;
    let as_i64 = cast(column, &DataType::Int64)?;
    Ok(as_i64.as_primitive::<Int64Type>().clone())
}

type Filtered = Result<(RecordBatch, u64, bool), arrow::error::ArrowError>;

/// Drops the rows of `batch` that name one of `ids`.
fn erase_rows<D: LakeRecord>(batch: &RecordBatch, ids: &Identifiers) -> Filtered {
    let mut keep = vec![true; batch.num_rows()];
    for id_column in D::ID_COLUMNS {
        let values = string_column(batch, id_column.column())?;
        for (row, value) in values.iter().enumerate() {
            if let Some(v) = value {
                if keep[row] && ids.matches(id_column, v) {
                    keep[row] = false;
                }
            }
        }
    }
    let removed = keep.iter().filter(|k| !**k).count() as u64;
    if removed == 0 {
        return Ok((batch.clone(), 0, false));
    }
    let kept = filter_record_batch(batch, &BooleanArray::from(keep))?;
    Ok((kept, removed, true))
}

/// Lowers the `weft_diff` of rows whose key is retracted; drops rows left at 0.
fn retract_rows<D: LakeRecord>(batch: &RecordBatch, keys: &mut HashMap<String, i64>) -> Filtered {
    let Some(key_column) = D::KEY_COLUMN else {
        return Ok((batch.clone(), 0, false));
    };
    let key_values = string_column(batch, key_column)?;
    let diffs = int64_column(batch, WEFT_DIFF)?;
    let mut new_diffs: Vec<i64> = diffs.values().to_vec();
    let mut changed = false;
    for (row, key) in key_values.iter().enumerate() {
        let Some(remaining) = key.and_then(|k| keys.get_mut(k)) else {
            continue;
        };
        let take = (*remaining).min(new_diffs[row]).max(0);
        if take > 0 {
            *remaining -= take;
            new_diffs[row] -= take;
            changed = true;
        }
    }
    if !changed {
        return Ok((batch.clone(), 0, false));
    }
    let keep: Vec<bool> = new_diffs.iter().map(|d| *d != 0).collect();
    let removed = keep.iter().filter(|k| !**k).count() as u64;
    let diff_index = batch.schema().index_of(WEFT_DIFF)?;
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    columns[diff_index] = Arc::new(Int64Array::from(new_diffs));
    let updated = RecordBatch::try_new(batch.schema(), columns)?;
    let kept = filter_record_batch(&updated, &BooleanArray::from(keep))?;
    Ok((kept, removed, true))
}

fn add_stats<D: LakeRecord>(
    batch: &RecordBatch,
    stats: &mut RowStats,
) -> Result<(), arrow::error::ArrowError> {
    let times = int64_column(batch, D::TIME_COLUMN)?;
    let weft = int64_column(batch, WEFT_TIME)?;
    for (t, w) in times.values().iter().zip(weft.values()) {
        stats.add(*t, *w);
    }
    Ok(())
}

/// Whether `D`'s schema has its declared identifier columns (as text) and key column.
pub fn schema_has_declared_columns<D: LakeRecord>() -> bool {
    let schema = D::schema();
    D::ID_COLUMNS.iter().all(|c: &IdColumn| {
        schema
            .field_with_name(c.column())
            .is_ok_and(|f| f.data_type() == &DataType::Utf8)
    }) && D::KEY_COLUMN.is_none_or(|k| schema.field_with_name(k).is_ok())
}
