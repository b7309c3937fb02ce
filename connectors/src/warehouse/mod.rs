//! A PostgreSQL warehouse sink: Segment-style tables, schema inferred and
//! evolved, each commit one transaction with the sink's progress (exactly
//! once across restarts), retractions applied as deletes.
//!
//! ```text
//!  write(t, changes)          commit(frontier)                     PostgreSQL, schema S
//! ┌─────────────────┐       ┌───────────────────────────┐      ┌──────────────────────────────┐
//! │ deletions, then │ net   │ BEGIN                     │      │ tracks, <event>, identifies, │
//! │ insertions ─► Batch ──► │ lock S.weft_progress row  │ ───► │ pages, screens, groups,      │
//! │ (per row: last  │       │ DDL (CREATE/ALTER), DML   │      │ aliases, users,              │
//! │  change wins)   │       │ (DELETE + COPY, UPDATE)   │      │ audience_memberships,        │
//! └─────────────────┘       │ progress := frontier      │      │ computed_traits              │
//!                           │ COMMIT                    │      │ weft_progress(sink,frontier) │
//!                           └───────────────────────────┘      └──────────────────────────────┘
//! ```
//!
//! ## Tables
//!
//! [`records`] lists the tables each record type fills; [`naming`] how
//! names are made (Segment's snake_case, `_` flattening of nested objects,
//! reserved names); [`value`] how column types are inferred and widened
//! (`boolean`, `bigint`, `numeric`, `timestamptz`, `text`; a conflict
//! widens `bigint` to `numeric` and anything else to `text`, keeping the
//! stored values). New properties add columns (`ALTER TABLE … ADD COLUMN`)
//! in the transaction that first writes them; a table holds at most
//! [`MAX_COLUMNS`] columns (values of further columns are not stored).
//! Every table has the fixed columns of its kind, a primary key, and
//! `uuid_ts` (the load time). Each table is written by one sink.
//!
//! Tables are keyed sets: a row exists while its record does. The change
//! `(record, +n)` writes the record's rows (replacing the rows with the same
//! key), `(record, -n)` deletes them, whatever `n`. For `users`, a trait's
//! insertion sets its columns, its retraction clears them (NULL), and a row
//! left without any non-NULL trait column is deleted. Rows are written by
//! `DELETE` of the changed keys and `COPY` of the new rows, so a new version
//! of a row has no leftover columns of the old one.
//!
//! The rows do not depend on how changes were grouped into commits (values
//! are written in the text form their column's type prints, see [`value`]).
//! The columns can: a column is created by the first commit that stores a
//! non-NULL value in it, so a value inserted and retracted within one commit
//! creates (or widens) no column, while the same changes split over two
//! commits leave the column behind.
//!
//! ## Progress and exactly once
//!
//! `S.weft_progress(sink text primary key, frontier bigint)` holds each
//! sink's committed frontier (`NULL`: the output is complete; `0`: nothing
//! committed yet). The engine calls [`Sink::write`] for each completed time
//! in increasing order and [`Sink::commit`] when the frontier advances:
//!
//! * `write` only stages: within a time, deletions before insertions, netted
//!   per row (see [`Batch`]). Past [`WarehouseConfig::max_buffered_bytes`]
//!   (default [`MAX_BUFFERED_BYTES`]) the staged changes are applied early
//!   inside the transaction the next commit closes (so memory stays
//!   bounded; the transaction then stays open until that commit, and tables
//!   it altered stay locked for readers until then).
//! * `commit(frontier)` opens the transaction if needed, locks the sink's
//!   progress row and checks that it still holds the frontier this sink last
//!   saw (else another writer with the same sink name committed: the sink
//!   fails rather than write twice), applies the staged changes (DDL first,
//!   then DML), sets the progress row to `frontier` and commits. So the data
//!   of every time below the frontier becomes visible in the same
//!   transaction as the progress that says so. A commit without staged
//!   changes writes nothing, except the final one (`frontier: []`).
//! * On open the sink reads its frontier; writes at times below it were
//!   committed by an earlier run and are skipped. A restarted job re-emits
//!   the same changes at the same times, so the tables end as an
//!   uninterrupted run's would. A crash before a commit loses only the open
//!   transaction, which PostgreSQL rolls back.
//!
//! ## Errors
//!
//! Any database error (a lost connection, a refused statement, a lock wait
//! past `lock_timeout`) fails `write` or `commit` with an `io::Error` that
//! says what the sink was doing; the open transaction is rolled back and the
//! sink refuses further calls. The engine records a job error and drops the
//! sink; restarting the job resumes from the last commit, exactly. Objects
//! that are not readable JSON (`properties`, `traits`, `context`) leave
//! their columns empty and are counted ([`WarehouseStats::unreadable`]).
//!
//! `write` and `commit` run on the worker thread: a commit takes one
//! transaction (a few milliseconds plus the rows' COPY), and a DDL statement
//! waits at most `lock_timeout` for readers holding the table.

mod apply;
mod batch;
pub mod naming;
pub mod records;
mod schema;
mod tables;
pub mod value;

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::time::Duration;

use postgres::{Client, NoTls};

pub use batch::Batch;
pub use records::WarehouseRecord;
pub use schema::MAX_COLUMNS;

use crate::sink::Sink;
use naming::quote;
use schema::Schema;

/// The default of [`WarehouseConfig::max_buffered_bytes`].
pub const MAX_BUFFERED_BYTES: usize = 64 << 20;

/// How long a connection attempt may take unless the URL says otherwise.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of one warehouse sink.
#[derive(Clone)]
pub struct WarehouseConfig {
    /// The sink's name: its key in `weft_progress`. Stable across restarts
    /// of the same job, unique among the sinks writing to the schema.
    pub name: String,
    /// `postgres://user:password@host:port/database[?options]` (or the
    /// `key=value` form).
    pub url: String,
    /// The schema the tables live in (created if missing).
    pub schema: String,
    /// How long a statement may wait for a lock (e.g. DDL behind a long
    /// reader) before the commit fails.
    pub lock_timeout: Duration,
    /// Staged changes past this many bytes are applied early, inside the
    /// transaction the next commit closes.
    pub max_buffered_bytes: usize,
}

impl fmt::Debug for WarehouseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold a password.
        f.debug_struct("WarehouseConfig")
            .field("name", &self.name)
            .field("schema", &self.schema)
            .field("lock_timeout", &self.lock_timeout)
            .field("max_buffered_bytes", &self.max_buffered_bytes)
            .finish_non_exhaustive()
    }
}

impl WarehouseConfig {
    /// A configuration with a 30 s lock timeout and [`MAX_BUFFERED_BYTES`].
    pub fn new(name: impl Into<String>, url: impl Into<String>, schema: impl Into<String>) -> Self {
        WarehouseConfig {
            name: name.into(),
            url: url.into(),
            schema: schema.into(),
            lock_timeout: Duration::from_secs(30),
            max_buffered_bytes: MAX_BUFFERED_BYTES,
        }
    }

    /// Checks the settings without connecting.
    pub fn validate(&self) -> Result<(), WarehouseError> {
        let WarehouseConfig {
            name,
            url,
            schema,
            lock_timeout: _,
            max_buffered_bytes: _,
        } = self;
        if name.is_empty() {
            return Err(WarehouseError::Config(
                "a warehouse sink needs a name (its key in weft_progress)".into(),
            ));
        }
        if schema.is_empty() || schema.len() > naming::MAX_IDENT_BYTES || schema.contains('\0') {
            return Err(WarehouseError::Config(format!(
                "warehouse sink {name:?}: schema {schema:?} is not a usable PostgreSQL name; use 1 to 63 bytes without NUL"
            )));
        }
        url.parse::<postgres::Config>().map_err(|e| {
            WarehouseError::Config(format!(
                "warehouse sink {name:?}: the url is not a PostgreSQL connection string ({e}); use postgres://user:password@host:port/database"
            ))
        })?;
        Ok(())
    }
}

/// What can go wrong while opening a warehouse sink.
#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    /// The configuration is unusable; the message says what to change.
    #[error("{0}")]
    Config(String),
    /// The database refused or could not be reached.
    #[error("{0}")]
    Database(io::Error),
}

/// Counts of what a sink did, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WarehouseStats {
    /// Changes staged by this run.
    pub staged: u64,
    /// Changes skipped because an earlier run had committed their time.
    pub skipped: u64,
    /// Rows copied in.
    pub rows: u64,
    /// Keys deleted (a replaced row counts here and in `rows`).
    pub deletes: u64,
    /// `users` rows changed.
    pub users: u64,
    /// Transactions committed.
    pub commits: u64,
    /// Objects (`properties`, `traits`, `context`) left out as unreadable.
    pub unreadable: u64,
}

/// Formats a client error with the server's message, detail and hint.
fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.to_string(),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// Maps a client error to an `io::Error` saying what the sink was doing.
pub(crate) fn pg_error(context: impl fmt::Display) -> impl FnOnce(postgres::Error) -> io::Error {
    let context = context.to_string();
    move |e| io::Error::other(format!("{context}: {}", describe(&e)))
}

/// A frontier of `u64` times: `Some(t)` = `[t]`, `None` = `[]` (complete).
type Frontier = Option<u64>;

fn frontier_of(f: &[u64]) -> Frontier {
    f.iter().copied().min()
}

/// `a` is strictly beyond `b`.
fn beyond(a: Frontier, b: Frontier) -> bool {
    match (a, b) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(x), Some(y)) => x > y,
    }
}

/// The stored form of a frontier (`NULL` = complete).
fn stored(f: Frontier) -> io::Result<Option<i64>> {
    f.map(|t| {
        i64::try_from(t).map_err(|_| io::Error::other(format!("time {t} does not fit a bigint")))
    })
    .transpose()
}

/// The record-independent part of a warehouse sink.
struct Warehouse {
    config: WarehouseConfig,
    client: Client,
    schema: Schema,
    batch: Batch,
    /// `"schema"."weft_progress"`.
    progress_table: String,
    /// The frontier found at open: writes before it are skipped.
    restored: Frontier,
    /// The last frontier committed (by this run or an earlier one).
    committed: Frontier,
    in_txn: bool,
    /// Set by the first failure: the sink refuses further calls.
    failed: Option<String>,
    stats: WarehouseStats,
}

impl Warehouse {
    fn open(config: &WarehouseConfig) -> Result<Self, WarehouseError> {
        config.validate()?;
        let db = |context: &str| {
            let context = format!("warehouse sink {:?}: {context}", config.name);
            move |e: postgres::Error| WarehouseError::Database(pg_error(context)(e))
        };
        // STEP 1. Connect, with bounded waits.
        let mut pg: postgres::Config = config.url.parse().expect("validated");
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(CONNECT_TIMEOUT);
        }
        if pg.get_application_name().is_none() {
            pg.application_name(&format!("weft-sink-{}", config.name));
        }
        pg.keepalives(true).keepalives_idle(Duration::from_secs(30));
        let mut client = pg.connect(NoTls).map_err(db("cannot connect"))?;
        client
            .batch_execute(&format!(
                "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; SET lock_timeout = {};",
                config.lock_timeout.as_millis().max(1)
            ))
            .map_err(db("cannot set up the session"))?;
        // STEP 2. The schema, the progress table and this sink's row.
        let progress_table = format!("{}.{}", quote(&config.schema), quote(tables::PROGRESS));
        let mut txn = client.transaction().map_err(db("cannot begin"))?;
        txn.batch_execute(&format!(
            "SELECT pg_advisory_xact_lock(hashtext({lock}));
             CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {progress_table} (
                 sink text PRIMARY KEY, frontier bigint, committed_at timestamptz NOT NULL DEFAULT now());",
            lock = schema::sql_literal(&format!("weft-ddl:{}.{}", config.schema, tables::PROGRESS)),
            schema = quote(&config.schema),
        ))
        .map_err(db(&format!("cannot create schema {:?} and its progress table", config.schema)))?;
        txn.execute(
            format!("INSERT INTO {progress_table} (sink, frontier) VALUES ($1, 0) ON CONFLICT (sink) DO NOTHING").as_str(),
            &[&config.name],
        )
        .map_err(db("cannot register in weft_progress"))?;
        let row = txn
            .query_one(
                format!("SELECT frontier FROM {progress_table} WHERE sink = $1").as_str(),
                &[&config.name],
            )
            .map_err(db("cannot read its progress"))?;
        txn.commit().map_err(db("cannot commit its registration"))?;
        let restored: Frontier = row.get::<_, Option<i64>>(0).map(|f| f.max(0) as u64);
        match restored {
            Some(0) => {}
            Some(f) => {
                tracing::info!(sink = %config.name, schema = %config.schema, "resuming: times before {f} were committed")
            }
            None => {
                tracing::info!(sink = %config.name, schema = %config.schema, "output was already complete")
            }
        }
        // STEP 3. What the schema holds.
        let schema = Schema::load(&mut client, &config.schema)
            .map_err(db("cannot read the schema's columns"))?;
        Ok(Warehouse {
            config: config.clone(),
            client,
            schema,
            batch: Batch::default(),
            progress_table,
            restored,
            committed: restored,
            in_txn: false,
            failed: None,
            stats: WarehouseStats::default(),
        })
    }

    /// Whether changes at `time` were committed by an earlier run.
    fn skips(&self, time: u64) -> bool {
        match self.restored {
            Some(f) => time < f,
            None => true,
        }
    }

    fn check(&self) -> io::Result<()> {
        match &self.failed {
            Some(why) => Err(io::Error::other(format!(
                "warehouse sink {:?} failed earlier ({why}); restart the job to resume from the last commit",
                self.config.name
            ))),
            None => Ok(()),
        }
    }

    /// Runs `f`; a failure rolls back, marks the sink failed and names the sink.
    fn guarded<T>(&mut self, f: impl FnOnce(&mut Self) -> io::Result<T>) -> io::Result<T> {
        self.check()?;
        match f(self) {
            Ok(v) => Ok(v),
            Err(e) => {
                if self.in_txn {
                    // Best effort: on a lost connection the server rolls back anyway.
                    let _ = self.client.batch_execute("ROLLBACK");
                    self.in_txn = false;
                }
                self.batch.take();
                self.failed = Some(e.to_string());
                Err(io::Error::new(
                    e.kind(),
                    format!(
                        "warehouse sink {:?}: {e}; restart the job to resume from the last commit",
                        self.config.name
                    ),
                ))
            }
        }
    }

    /// Opens the transaction, and checks that no other writer committed for this sink.
    fn begin(&mut self) -> io::Result<()> {
        if self.in_txn {
            return Ok(());
        }
        self.client
            .batch_execute("BEGIN")
            .map_err(pg_error("cannot begin a transaction"))?;
        self.in_txn = true;
        let row = self
            .client
            .query_one(
                format!(
                    "SELECT frontier FROM {} WHERE sink = $1 FOR UPDATE",
                    self.progress_table
                )
                .as_str(),
                &[&self.config.name],
            )
            .map_err(pg_error("cannot lock its progress row"))?;
        let found = row.get::<_, Option<i64>>(0);
        if found != stored(self.committed)? {
            return Err(io::Error::other(format!(
                "its progress in {} is {found:?}, not {:?} as it committed: another writer with the same sink name is running",
                self.progress_table, self.committed
            )));
        }
        Ok(())
    }

    /// Applies the staged changes in the open transaction.
    fn flush(&mut self) -> io::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.begin()?;
        let pending = self.batch.take();
        let applied = apply::apply(&mut self.client, &mut self.schema, pending)?;
        self.stats.rows += applied.rows;
        self.stats.deletes += applied.deletes;
        self.stats.users += applied.users;
        Ok(())
    }

    fn stage<D: WarehouseRecord>(&mut self, time: u64, updates: &[(D, isize)]) -> io::Result<()> {
        self.check()?;
        if self.skips(time) {
            self.stats.skipped += updates.len() as u64;
            return Ok(());
        }
        for insert in [false, true] {
            for (record, diff) in updates {
                if (*diff > 0) == insert && *diff != 0 {
                    record.stage(time, insert, &mut self.batch);
                }
            }
        }
        self.stats.staged += updates.len() as u64;
        if self.batch.bytes > self.config.max_buffered_bytes {
            self.guarded(Self::flush)?;
        }
        Ok(())
    }

    fn commit(&mut self, frontier: &[u64]) -> io::Result<()> {
        self.check()?;
        let new = frontier_of(frontier);
        if !beyond(new, self.committed) {
            return Ok(());
        }
        if self.batch.is_empty() && !self.in_txn && new.is_some() {
            // Nothing written since the last commit: nothing to make visible.
            return Ok(());
        }
        self.guarded(|w| {
            w.flush()?;
            w.begin()?;
            w.client
                .execute(
                    format!(
                        "UPDATE {} SET frontier = $2, committed_at = now() WHERE sink = $1",
                        w.progress_table
                    )
                    .as_str(),
                    &[&w.config.name, &stored(new)?],
                )
                .map_err(pg_error("cannot write its progress"))?;
            w.client
                .batch_execute("COMMIT")
                .map_err(pg_error("cannot commit"))?;
            w.in_txn = false;
            w.committed = new;
            w.stats.commits += 1;
            Ok(())
        })
    }
}

/// A PostgreSQL warehouse sink for records of type `D` (see the module docs).
pub struct WarehouseSink<D> {
    inner: Warehouse,
    _records: PhantomData<fn(&D)>,
}

impl<D> fmt::Debug for WarehouseSink<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WarehouseSink")
            .field("config", &self.inner.config)
            .field("committed", &self.inner.committed)
            .field("stats", &self.inner.stats)
            .finish_non_exhaustive()
    }
}

impl<D: WarehouseRecord> WarehouseSink<D> {
    /// Connects, creates the schema and `weft_progress` if missing, and reads
    /// the sink's committed frontier.
    pub fn open(config: &WarehouseConfig) -> Result<Self, WarehouseError> {
        Ok(WarehouseSink {
            inner: Warehouse::open(config)?,
            _records: PhantomData,
        })
    }

    /// The frontier committed so far (by this run or an earlier one): `[]`
    /// if the output is complete, `[0]` if nothing was committed.
    pub fn committed_frontier(&self) -> Vec<u64> {
        self.inner.committed.into_iter().collect()
    }

    /// What this sink did so far.
    pub fn stats(&self) -> WarehouseStats {
        WarehouseStats {
            unreadable: self.inner.batch.unreadable,
            ..self.inner.stats
        }
    }
}

impl<D: WarehouseRecord> Sink<D> for WarehouseSink<D> {
    fn write(&mut self, time: u64, updates: &[(D, isize)]) -> io::Result<()> {
        self.inner.stage(time, updates)
    }

    fn commit(&mut self, frontier: &[u64]) -> io::Result<()> {
        self.inner.commit(frontier)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frontiers_compare() {
        assert!(beyond(Some(3), Some(2)) && beyond(None, Some(9)));
        assert!(!beyond(Some(2), Some(2)) && !beyond(Some(1), None));
        assert_eq!(stored(None).unwrap(), None);
        assert_eq!(stored(Some(7)).unwrap(), Some(7));
        assert!(stored(Some(u64::MAX)).is_err());
    }

    #[test]
    fn config_is_checked() {
        let ok = WarehouseConfig::new("s", "postgres://u:p@127.0.0.1:5432/db", "weft");
        assert!(ok.validate().is_ok());
        assert!(!format!("{ok:?}").contains("u:p"));
        let mut bad = ok.clone();
        bad.schema = String::new();
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.url = "postgres://host:notaport".into();
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("connection string"));
        let mut bad = ok;
        bad.name.clear();
        assert!(bad.validate().is_err());
    }
}
