//! Windowed deduplication by key: the first record with a key passes, later
//! records with the same key within an event-time window are dropped.
//!
//! Callers give two closures: `key(d) -> u128`, a 128-bit fingerprint of the
//! record's key (hash the key, e.g. `messageId`, with a 128-bit hash such as
//! xxh3-128: two keys with equal fingerprints are the same key), and
//! `event_time(d) -> i64`, the record's event time in milliseconds. Logical
//! times (`u64`) order the input; event times decide windows and lateness.
//!
//! # The rule
//!
//! Let `bucket_ms = ceil(window_ms / buckets_per_window)`,
//! `window_buckets = ceil(window_ms / bucket_ms)` and
//! `bucket(e) = floor(e / bucket_ms)`. Records are taken in *processing order*:
//! by logical time, and within one logical time by
//! `(event_time, fingerprint, record)` (hence `D: Ord`). For each record `d`
//! with diff `r`, key `k` and event time `e`:
//!
//! 1. `r < 0` (a retraction): passed through unchanged, state untouched;
//!    `r == 0`: ignored. The input is meant to be insert-only.
//! 2. The **watermark** `M(t)` is the largest event time of any record with
//!    `r > 0` at a logical time `<= t`, over *all* workers. The record is
//!    **late** if `e < M(t) - lateness_ms`. A late record neither consults nor
//!    changes the state: with [`LatePolicy::Pass`] (default) it passes (we
//!    cannot prove it is a duplicate, so we keep it: at-least-once), with
//!    [`LatePolicy::Drop`] it is dropped (at-most-once). Either way it is
//!    counted in [`DedupeStatsSnapshot::late`].
//! 3. Otherwise the record is a **duplicate** if an earlier (in processing
//!    order) non-late record with the same key *passed* with event time `f`
//!    such that `|bucket(e) - bucket(f)| <= window_buckets`. A duplicate is
//!    dropped and counted; else the record passes (with diff 1; a diff `r > 1`
//!    counts as `r` copies, of which `r - 1` are duplicates) and its key is
//!    remembered in `bucket(e)`.
//!
//! So "first-seen time" is kept at bucket precision: a non-late record within
//! `window_ms` of a remembered one with the same key (`|e - f| <= window_ms`)
//! is always dropped; one
//! at `|e - f| >= (window_buckets + 1) * bucket_ms` (less than
//! `window_ms + 2 * bucket_ms`; exactly `window_ms + bucket_ms` when
//! `bucket_ms` divides `window_ms`) is never dropped; in between it depends on
//! bucket alignment. With the default 16 buckets per window, a 24 h window
//! dedupes exactly over 24 h and never beyond 25.5 h. After that a key is
//! forgotten: its next record passes and is remembered anew. Retries usually
//! carry the event time of the original, so the rule is symmetric in `e - f`.
//!
//! # Determinism
//!
//! Records are exchanged by fingerprint, so each key lives on exactly one
//! worker; only records with the same key interact, and they are processed in
//! the same total order whichever worker holds them and however the input is
//! batched. The watermark is global: each worker reports the largest event time
//! it saw at each logical time, the reports are broadcast, and a logical time
//! is processed only when both the data and the reports are complete for it.
//! Hence **the output (the multiset of `(record, time, diff)`) and the counters
//! `passed`, `dropped_duplicates`, `late`, `dropped_late` and `retractions` are
//! identical for any number of workers and any batching**, and equal to the
//! naive model "map key → event-time buckets where it passed, never pruned"
//! that `operators/tests/dedupe_oracle.rs` checks at 1 and 4 workers.
//!
//! # State and its invariant
//!
//! Each worker keeps, for every event-time bucket
//! `c >= bucket(M - lateness_ms) - window_buckets`, exactly the fingerprints of
//! the non-late records that passed with `bucket(e) == c`. Older buckets are
//! dropped whole: no non-late record can reach them (it has
//! `bucket(e) >= bucket(M - lateness_ms)` and looks back `window_buckets`), so
//! pruning is unobservable. Memory therefore covers `window_ms + lateness_ms`
//! of event time (plus up to two buckets); `lateness_ms` defaults to `window_ms`.
//!
//! A bucket is a hash set of recent inserts (at most 16 Ki keys, about 35
//! bytes each) plus immutable sorted *runs*, merged LSM-style (a run is merged
//! into the previous one when it is at least half its size; a bucket is
//! compacted into one run once the watermark has moved past it). A run of `n`
//! keys has a directory of `2^floor(log2(n) - 3)` slots indexed by the top bits
//! of the fingerprint (at most 0.5 byte per key) and stores each key's low 14
//! bytes (`n >= 2^19`), 15 bytes (`n >= 2^11`) or 16 bytes: the top bytes are
//! implied by the slot, so all 128 bits are compared. Runs therefore cost at
//! most 14.5 bytes per key in buckets of half a million keys or more, and
//! 15.5 from two thousand; `bench-dedupe` measures 14.4 bytes per key for
//! the whole operator at 10 million keys. A lookup reads one directory slot
//! (8 to 16 keys) of every run within the window, touching all runs first so
//! that their cache misses overlap.
//!
//! # Spilling
//!
//! With [`DedupeConfig::spill`] set, after each batch of completed logical
//! times a worker whose state exceeds `max_memory_bytes` (per worker) writes
//! its oldest buckets' in-memory keys, oldest first, to files of sorted
//! little-endian `u128`s in a private directory under `spill.dir`, keeping in
//! memory only the first key of every 4 KiB block (16 bytes per 256 keys).
//! A lookup reads one block with a positioned read (`pread`). Later inserts
//! into a spilled bucket go to memory again and may be spilled as further
//! files; more than four files in one bucket are merged. Files are deleted
//! with their bucket, and the directory when the operator is dropped. Memory
//! can exceed the limit while one logical time is being processed. If a spill
//! file cannot be written, the keys stay in memory and `spill_failures` is
//! counted; if a spill file cannot be read back, the worker panics (the
//! answer would otherwise be wrong).
//!
//! # Restarts
//!
//! State is not persisted (spill files are scratch). Because the output is a
//! deterministic function of the input, a restarted job that replays its
//! source from at least `window_ms + lateness_ms` of event time before its
//! resume point rebuilds the same state and reproduces the same decisions.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, BufWriter, Write};
use std::iter::Peekable;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use differential_dataflow::{AsCollection, VecCollection};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::Capability;
use timely::ExchangeData;

/// What happens to a record older than the watermark minus the lateness.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LatePolicy {
    /// Late records pass without being checked or remembered (at-least-once).
    #[default]
    Pass,
    /// Late records are dropped (at-most-once).
    Drop,
}

/// Where and when dedupe state spills to disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpillConfig {
    /// Directory under which each operator instance makes its own subdirectory.
    pub dir: PathBuf,
    /// In-memory state, per worker, above which the oldest buckets are spilled.
    pub max_memory_bytes: usize,
}

/// Configuration of [`DedupeByKey::dedupe_by_key`]; see the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DedupeConfig {
    /// Records with one key within this many event-time milliseconds are duplicates (>= 1).
    pub window_ms: u64,
    /// Event-time buckets per window (>= 1): the precision of the window (default 16).
    pub buckets_per_window: u32,
    /// How far behind the watermark a record may be and still be checked (default `window_ms`).
    pub lateness_ms: u64,
    /// What happens to late records (default [`LatePolicy::Pass`]).
    pub late: LatePolicy,
    /// Spill to disk, or `None` (default) to keep all state in memory.
    pub spill: Option<SpillConfig>,
}

/// Largest window or lateness accepted, so that event-time arithmetic cannot overflow.
const MAX_SPAN_MS: u64 = 1 << 60;

impl DedupeConfig {
    /// A window of `window_ms` with the defaults: 16 buckets per window, lateness
    /// equal to the window, late records passed, no spilling.
    pub fn new(window_ms: u64) -> Self {
        DedupeConfig {
            window_ms,
            buckets_per_window: 16,
            lateness_ms: window_ms,
            late: LatePolicy::Pass,
            spill: None,
        }
    }
    /// Sets the number of event-time buckets per window.
    pub fn with_buckets_per_window(mut self, buckets: u32) -> Self {
        self.buckets_per_window = buckets;
        self
    }
    /// Sets how far behind the watermark a record may be and still be checked.
    pub fn with_lateness_ms(mut self, lateness_ms: u64) -> Self {
        self.lateness_ms = lateness_ms;
        self
    }
    /// Sets what happens to late records.
    pub fn with_late_policy(mut self, late: LatePolicy) -> Self {
        self.late = late;
        self
    }
    /// Spills the oldest buckets to files under `dir` when a worker's state exceeds `max_memory_bytes`.
    pub fn with_spill(mut self, dir: impl Into<PathBuf>, max_memory_bytes: usize) -> Self {
        self.spill = Some(SpillConfig {
            dir: dir.into(),
            max_memory_bytes,
        });
        self
    }
    /// The width of one event-time bucket: `ceil(window_ms / buckets_per_window)`.
    pub fn bucket_ms(&self) -> u64 {
        self.window_ms
            .div_ceil(u64::from(self.buckets_per_window.max(1)))
            .max(1)
    }
    /// The window in buckets: `ceil(window_ms / bucket_ms)`.
    pub fn window_buckets(&self) -> u64 {
        self.window_ms.div_ceil(self.bucket_ms())
    }
    /// Checks the configuration, saying what is wrong.
    pub fn validate(&self) -> Result<(), DedupeConfigError> {
        let DedupeConfig {
            window_ms,
            buckets_per_window,
            lateness_ms,
            late: _,
            spill,
        } = self;
        if *window_ms == 0 || *window_ms > MAX_SPAN_MS {
            return Err(DedupeConfigError(format!(
                "window_ms is {window_ms}; it must be between 1 and 2^60"
            )));
        }
        if *buckets_per_window == 0 {
            return Err(DedupeConfigError(
                "buckets_per_window is 0; it must be at least 1 (16 is a good default)".into(),
            ));
        }
        if *lateness_ms > MAX_SPAN_MS {
            return Err(DedupeConfigError(format!(
                "lateness_ms is {lateness_ms}; it must be at most 2^60"
            )));
        }
        if let Some(SpillConfig {
            dir,
            max_memory_bytes: _,
        }) = spill
        {
            if dir.as_os_str().is_empty() {
                return Err(DedupeConfigError(
                    "spill.dir is empty; name a directory for spill files".into(),
                ));
            }
        }
        Ok(())
    }
}

/// An invalid [`DedupeConfig`]; the message says what to change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DedupeConfigError(pub String);

impl fmt::Display for DedupeConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid dedupe configuration: {}", self.0)
    }
}

impl std::error::Error for DedupeConfigError {}

/// Counters of a dedupe operator, shared by all its workers (clone one handle
/// into each worker); the engine exports them as metrics.
#[derive(Clone, Debug, Default)]
pub struct DedupeStats {
    inner: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    passed: AtomicU64,
    dropped_duplicates: AtomicU64,
    late: AtomicU64,
    dropped_late: AtomicU64,
    retractions: AtomicU64,
    keys_held: AtomicU64,
    bytes_held: AtomicU64,
    bytes_spilled: AtomicU64,
    spilled_runs: AtomicU64,
    spill_failures: AtomicU64,
}

/// A point-in-time copy of [`DedupeStats`]; serializable, so processes of a
/// cluster can send theirs to process 0, and summable (`+=`) across workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DedupeStatsSnapshot {
    /// Records passed with a positive diff (counted once each), late ones included.
    pub passed: u64,
    /// Records dropped as duplicates.
    pub dropped_duplicates: u64,
    /// Late records seen (passed or dropped according to the [`LatePolicy`]).
    pub late: u64,
    /// Late records dropped (only with [`LatePolicy::Drop`]).
    pub dropped_late: u64,
    /// Retractions passed through.
    pub retractions: u64,
    /// Gauge: fingerprints currently remembered, in memory or spilled.
    pub keys_held: u64,
    /// Gauge: bytes of state in memory (tables, runs, spill indexes).
    pub bytes_held: u64,
    /// Gauge: bytes of state in spill files.
    pub bytes_spilled: u64,
    /// Spill files written so far.
    pub spilled_runs: u64,
    /// Spill attempts that failed (the keys stayed in memory).
    pub spill_failures: u64,
}

impl std::ops::AddAssign<&DedupeStatsSnapshot> for DedupeStatsSnapshot {
    fn add_assign(&mut self, o: &DedupeStatsSnapshot) {
        let DedupeStatsSnapshot {
            passed,
            dropped_duplicates,
            late,
            dropped_late,
            retractions,
            keys_held,
            bytes_held,
            bytes_spilled,
            spilled_runs,
            spill_failures,
        } = o;
        self.passed += passed;
        self.dropped_duplicates += dropped_duplicates;
        self.late += late;
        self.dropped_late += dropped_late;
        self.retractions += retractions;
        self.keys_held += keys_held;
        self.bytes_held += bytes_held;
        self.bytes_spilled += bytes_spilled;
        self.spilled_runs += spilled_runs;
        self.spill_failures += spill_failures;
    }
}

impl DedupeStats {
    /// New counters, all zero.
    pub fn new() -> Self {
        Self::default()
    }
    /// Reads all counters.
    pub fn snapshot(&self) -> DedupeStatsSnapshot {
        let c = &*self.inner;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DedupeStatsSnapshot {
            passed: get(&c.passed),
            dropped_duplicates: get(&c.dropped_duplicates),
            late: get(&c.late),
            dropped_late: get(&c.dropped_late),
            retractions: get(&c.retractions),
            keys_held: get(&c.keys_held),
            bytes_held: get(&c.bytes_held),
            bytes_spilled: get(&c.bytes_spilled),
            spilled_runs: get(&c.spilled_runs),
            spill_failures: get(&c.spill_failures),
        }
    }
}

/// Adds [`DedupeByKey::dedupe_by_key`] to insert-only collections at `u64` logical times.
pub trait DedupeByKey<'scope, D> {
    /// Drops records whose key was seen within `config.window_ms` of event time;
    /// the exact rule, lateness, memory and determinism are in the [module docs](self).
    ///
    /// `key(d)` is the record's 128-bit key fingerprint, `event_time(d)` its event
    /// time in milliseconds. Passed records keep their logical time and have diff 1;
    /// retractions pass through unchanged. `stats` accumulates counters from every
    /// worker that runs the operator.
    ///
    /// ```
    /// use std::cell::RefCell;
    /// use std::rc::Rc;
    /// use differential_dataflow::input::Input;
    /// use weft_operators::dedupe::{DedupeByKey, DedupeConfig, DedupeStats};
    ///
    /// let stats = DedupeStats::new();
    /// let handle = stats.clone();
    /// let passed = timely::execute_directly(move |worker| {
    ///     let passed = Rc::new(RefCell::new(Vec::new()));
    ///     let log = passed.clone();
    ///     let mut input = worker.dataflow::<u64, _, _>(|scope| {
    ///         // (message id, event time in ms); real callers hash the id with a 128-bit hash.
    ///         let (input, events) = scope.new_collection::<(u32, i64), isize>();
    ///         events
    ///             .dedupe_by_key("Dedupe", &DedupeConfig::new(1_000), |e| u128::from(e.0), |e| e.1, handle.clone())
    ///             .inspect(move |(e, time, diff)| log.borrow_mut().push((*e, *time, *diff)));
    ///         input
    ///     });
    ///     input.insert((1, 100));
    ///     input.insert((2, 100));
    ///     input.insert((1, 900)); // a retry within the window: dropped
    ///     input.advance_to(1);
    ///     input.insert((1, 5_000)); // long after the window: passes again
    ///     input.close();
    ///     while worker.step() {}
    ///     let mut v = passed.borrow().clone();
    ///     v.sort();
    ///     v
    /// });
    /// assert_eq!(passed, vec![((1, 100), 0, 1), ((1, 5_000), 1, 1), ((2, 100), 0, 1)]);
    /// assert_eq!(stats.snapshot().dropped_duplicates, 1);
    /// ```
    ///
    /// # Panics
    ///
    /// When building the dataflow, if `config` is invalid ([`DedupeConfig::validate`]);
    /// while running, if a spill file cannot be read back.
    fn dedupe_by_key<K, E>(
        self,
        name: &str,
        config: &DedupeConfig,
        key: K,
        event_time: E,
        stats: DedupeStats,
    ) -> VecCollection<'scope, u64, D, isize>
    where
        K: Fn(&D) -> u128 + 'static,
        E: Fn(&D) -> i64 + 'static;
}

impl<'scope, D> DedupeByKey<'scope, D> for VecCollection<'scope, u64, D, isize>
where
    D: ExchangeData + Ord + Clone,
{
    fn dedupe_by_key<K, E>(
        self,
        name: &str,
        config: &DedupeConfig,
        key: K,
        event_time: E,
        stats: DedupeStats,
    ) -> VecCollection<'scope, u64, D, isize>
    where
        K: Fn(&D) -> u128 + 'static,
        E: Fn(&D) -> i64 + 'static,
    {
        if let Err(e) = config.validate() {
            panic!("dedupe `{name}`: {e}");
        }
        let DedupeConfig {
            window_ms: _,
            buckets_per_window: _,
            lateness_ms,
            late,
            spill,
        } = config.clone();
        let bucket_ms = config.bucket_ms() as i64;
        let window_buckets = config.window_buckets() as i64;
        let key = Rc::new(key);
        let event_time = Rc::new(event_time);
        let worker = self.inner.scope().index();

        // STEP 1. Each worker's largest event time per logical time, broadcast to all.
        let watermark_time = Rc::clone(&event_time);
        let maxima = self
            .inner
            .clone()
            .unary_frontier::<CapacityContainerBuilder<Vec<(u64, i64)>>, _, _, _>(
                Pipeline,
                &format!("{name}Watermark"),
                move |_cap, _info| {
                    let mut pending: BTreeMap<u64, (Capability<u64>, i64)> = BTreeMap::new();
                    move |(input, frontier), output| {
                        let port = output.output_index();
                        input.for_each(|cap, data| {
                            for (d, t, r) in data.iter() {
                                if *r <= 0 {
                                    continue;
                                }
                                let e = watermark_time(d);
                                pending
                                    .entry(*t)
                                    .and_modify(|(_, m)| *m = (*m).max(e))
                                    .or_insert_with(|| (cap.delayed(t, port), e));
                            }
                        });
                        while let Some(entry) = pending.first_entry() {
                            if frontier.less_equal(entry.key()) {
                                break;
                            }
                            let (t, (cap, m)) = entry.remove_entry();
                            output.session(&cap).give((t, m));
                        }
                    }
                },
            )
            .broadcast();

        // STEP 2. Route records to the worker owning their key; process completed times in order.
        let route = Rc::clone(&key);
        let exchange = Exchange::new(move |(d, _t, _r): &(D, u64, isize)| route(d) as u64);
        let name = name.to_owned();
        self.inner
            .binary_frontier::<_, CapacityContainerBuilder<Vec<(D, u64, isize)>>, _, _, _, _>(
                maxima,
                exchange,
                Pipeline,
                &name.clone(),
                move |_cap, _info| {
                    let store = Store::new(
                        bucket_ms,
                        window_buckets,
                        BUFFER_CAP,
                        spill.map(|s| (s, format!("{name}-w{worker}"))),
                    );
                    let mut core = Core::new(store, lateness_ms, late, stats, name);
                    let mut stash: BTreeMap<u64, Pending<D>> = BTreeMap::new();
                    let mut maxima: BTreeMap<u64, i64> = BTreeMap::new();
                    move |(data, data_frontier), (reports, report_frontier), output| {
                        let port = output.output_index();
                        // STEP 2a. Stash records by logical time, holding a capability for each time.
                        data.for_each(|cap, batch| {
                            for (d, t, r) in batch.drain(..) {
                                stash
                                    .entry(t)
                                    .or_insert_with(|| (cap.delayed(&t, port), Vec::new()))
                                    .1
                                    .push((d, r));
                            }
                        });
                        reports.for_each(|_cap, batch| {
                            for (t, m) in batch.drain(..) {
                                maxima
                                    .entry(t)
                                    .and_modify(|x| *x = (*x).max(m))
                                    .or_insert(m);
                            }
                        });
                        // STEP 2b. Process each time both inputs have completed, in time order.
                        let mut worked = false;
                        loop {
                            let next = match (stash.keys().next(), maxima.keys().next()) {
                                (Some(a), Some(b)) => *a.min(b),
                                (Some(a), None) => *a,
                                (None, Some(b)) => *b,
                                (None, None) => break,
                            };
                            if data_frontier.less_equal(&next) || report_frontier.less_equal(&next)
                            {
                                break;
                            }
                            if let Some(m) = maxima.remove(&next) {
                                core.watermark = core.watermark.max(m);
                            }
                            if let Some((cap, records)) = stash.remove(&next) {
                                let mut session = output.session(&cap);
                                core.process(records, &*key, &*event_time, |d, r| {
                                    session.give((d, next, r))
                                });
                            }
                            worked = true;
                        }
                        // STEP 2c. Prune, compact and spill; publish the counters.
                        if worked {
                            core.end_batch();
                        }
                    }
                },
            )
            .as_collection()
    }
}

/// Records of one logical time waiting for it to complete, with a capability to send at it.
type Pending<D> = (Capability<u64>, Vec<(D, isize)>);

/// Keys buffered in a bucket's hash set before they become a sorted run.
const BUFFER_CAP: usize = 16 * 1024;
/// Keys per spill-file block (4 KiB); one index entry per block.
const BLOCK_KEYS: usize = 256;
/// Spill files per bucket above which they are merged into one.
const MAX_SPILL_FILES: usize = 4;

/// One worker's decision logic: watermark, lateness, counters.
struct Core {
    store: Store,
    watermark: i64,
    lateness_ms: u64,
    late: LatePolicy,
    stats: DedupeStats,
    name: String,
    local: DedupeStatsSnapshot,
    /// Gauges as last added to the shared counters.
    reported: DedupeStatsSnapshot,
}

impl Core {
    fn new(
        store: Store,
        lateness_ms: u64,
        late: LatePolicy,
        stats: DedupeStats,
        name: String,
    ) -> Self {
        Core {
            store,
            watermark: i64::MIN,
            lateness_ms,
            late,
            stats,
            name,
            local: DedupeStatsSnapshot::default(),
            reported: DedupeStatsSnapshot::default(),
        }
    }

    /// Event times below this are late.
    fn horizon(&self) -> i128 {
        i128::from(self.watermark) - i128::from(self.lateness_ms)
    }

    /// Decides the records of one logical time (the watermark already includes it).
    fn process<D: Ord>(
        &mut self,
        records: Vec<(D, isize)>,
        key: &dyn Fn(&D) -> u128,
        event_time: &dyn Fn(&D) -> i64,
        mut give: impl FnMut(D, isize),
    ) {
        let mut inserts = Vec::with_capacity(records.len());
        for (d, r) in records {
            if r < 0 {
                self.local.retractions += 1;
                give(d, r);
            } else if r > 0 {
                inserts.push((event_time(&d), key(&d), d, r));
            }
        }
        inserts.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then(a.1.cmp(&b.1))
                .then_with(|| a.2.cmp(&b.2))
        });
        let horizon = self.horizon();
        for (e, fp, d, r) in inserts {
            let copies = r.unsigned_abs() as u64;
            if i128::from(e) < horizon {
                self.local.late += copies;
                match self.late {
                    LatePolicy::Pass => {
                        self.local.passed += copies;
                        give(d, r);
                    }
                    LatePolicy::Drop => self.local.dropped_late += copies,
                }
                continue;
            }
            let duplicate = self.store.check_insert(fp, e).unwrap_or_else(|err| {
                panic!("dedupe `{}`: reading a spill file failed: {err}; spill files must stay readable while the dataflow runs", self.name)
            });
            if duplicate {
                self.local.dropped_duplicates += copies;
            } else {
                self.local.passed += 1;
                self.local.dropped_duplicates += copies - 1;
                give(d, 1);
            }
        }
    }

    /// After a batch of completed times: prune, compact, spill, publish counters.
    fn end_batch(&mut self) {
        let horizon = self
            .horizon()
            .clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
        self.store.maintain(horizon, self.watermark);
        self.publish();
    }

    fn publish(&mut self) {
        let c = &*self.stats.inner;
        let add = |a: &AtomicU64, v: &mut u64| {
            if *v > 0 {
                a.fetch_add(std::mem::take(v), Ordering::Relaxed);
            }
        };
        add(&c.passed, &mut self.local.passed);
        add(&c.dropped_duplicates, &mut self.local.dropped_duplicates);
        add(&c.late, &mut self.local.late);
        add(&c.dropped_late, &mut self.local.dropped_late);
        add(&c.retractions, &mut self.local.retractions);
        let mut spilled_runs = std::mem::take(&mut self.store.spilled_runs);
        let mut spill_failures = std::mem::take(&mut self.store.spill_failures);
        add(&c.spilled_runs, &mut spilled_runs);
        add(&c.spill_failures, &mut spill_failures);
        let (keys, mem, disk) = self.store.sizes();
        gauge(&c.keys_held, &mut self.reported.keys_held, keys);
        gauge(&c.bytes_held, &mut self.reported.bytes_held, mem);
        gauge(&c.bytes_spilled, &mut self.reported.bytes_spilled, disk);
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        // The state goes away with the operator: withdraw this worker's share of the gauges.
        let c = &*self.stats.inner;
        gauge(&c.keys_held, &mut self.reported.keys_held, 0);
        gauge(&c.bytes_held, &mut self.reported.bytes_held, 0);
        gauge(&c.bytes_spilled, &mut self.reported.bytes_spilled, 0);
    }
}

/// Moves a shared gauge by this worker's change from `reported` to `now`.
fn gauge(shared: &AtomicU64, reported: &mut u64, now: u64) {
    if now > *reported {
        shared.fetch_add(now - *reported, Ordering::Relaxed);
    } else if now < *reported {
        shared.fetch_sub(*reported - now, Ordering::Relaxed);
    }
    *reported = now;
}

/// Fingerprints are already uniform hashes: fold the two halves, no rehashing.
#[derive(Default)]
struct FingerprintHasher(u64);

impl Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn write_u128(&mut self, i: u128) {
        self.0 ^= (i as u64) ^ ((i >> 64) as u64);
    }
}

type FingerprintSet = HashSet<u128, BuildHasherDefault<FingerprintHasher>>;

/// Heap bytes of a std `HashSet<u128>` of this capacity (hashbrown layout: 16 bytes + 1 control byte per slot).
fn set_heap_bytes(set: &FingerprintSet) -> usize {
    match set.capacity() {
        0 => 0,
        cap => {
            let slots = if cap < 8 {
                (cap + 1).next_power_of_two()
            } else {
                (cap * 8 / 7).next_power_of_two()
            };
            slots * 17 + 16
        }
    }
}

/// An immutable sorted set of fingerprints, packed.
///
/// `2^bits` directory slots index the keys by their top `bits` bits:
/// `dir[s]..dir[s + 1]` are the keys of slot `s`, sorted. Each key stores only
/// its low `width = 16 - bits / 8` bytes; the dropped top bytes are implied by
/// the slot. `bits = floor(log2(n)) - 3` puts 8 to 16 keys in a slot, so the
/// directory costs at most half a byte per key.
struct Run {
    bits: u32,
    width: usize,
    /// Selects the stored low `width` bytes.
    mask: u128,
    dir: Vec<u32>,
    bytes: Vec<u8>,
}

impl Run {
    fn slot_bits(n: usize) -> u32 {
        if n < 16 {
            0
        } else {
            (usize::BITS - 1 - n.leading_zeros()) - 3
        }
    }

    /// Builds a run from `n` strictly increasing fingerprints.
    fn from_sorted(n: usize, keys: impl Iterator<Item = u128>) -> Run {
        assert!(
            n < u32::MAX as usize,
            "a dedupe bucket holds at most 2^32 - 1 keys"
        );
        let bits = Self::slot_bits(n);
        let width = 16 - (bits / 8) as usize;
        let slots = 1usize << bits;
        let mut dir = Vec::with_capacity(slots + 1);
        let mut bytes = Vec::with_capacity(n * width + 16 - width);
        let mut count = 0u32;
        let mut last = None;
        for fp in keys {
            debug_assert!(
                last.is_none_or(|l| l < fp),
                "run keys must be strictly increasing"
            );
            last = Some(fp);
            let s = Self::slot_of(bits, fp);
            while dir.len() <= s {
                dir.push(count);
            }
            bytes.extend_from_slice(&fp.to_le_bytes()[..width]);
            count += 1;
        }
        debug_assert_eq!(count as usize, n);
        bytes.resize(bytes.len() + 16 - width, 0);
        while dir.len() <= slots {
            dir.push(count);
        }
        let mask = if width == 16 {
            u128::MAX
        } else {
            (1u128 << (width * 8)) - 1
        };
        Run {
            bits,
            width,
            mask,
            dir,
            bytes,
        }
    }

    fn slot_of(bits: u32, fp: u128) -> usize {
        if bits == 0 {
            0
        } else {
            (fp >> (128 - bits)) as usize
        }
    }

    fn len(&self) -> usize {
        *self
            .dir
            .last()
            .expect("a directory has at least two entries") as usize
    }

    /// The stored low bytes of key `i`: one unaligned 16-byte load, masked
    /// (`bytes` has `16 - width` bytes of padding at the end for the last key).
    fn low(&self, i: usize) -> u128 {
        let start = i * self.width;
        let word: [u8; 16] = self.bytes[start..start + 16].try_into().expect("16 bytes");
        u128::from_le_bytes(word) & self.mask
    }

    fn contains(&self, fp: u128) -> bool {
        self.slot_contains(self.slot_range(fp), fp)
    }

    /// The positions of the keys in `fp`'s directory slot.
    #[inline]
    fn slot_range(&self, fp: u128) -> (u32, u32) {
        let s = Self::slot_of(self.bits, fp);
        (self.dir[s], self.dir[s + 1])
    }

    /// Whether `fp` is among the keys at `range` (from [`Run::slot_range`]).
    #[inline]
    fn slot_contains(&self, range: (u32, u32), fp: u128) -> bool {
        let want = fp & self.mask;
        // Keys in a slot share their top `bits` bits, which the stored bytes cover,
        // so the stored values are in key order.
        for i in range.0 as usize..range.1 as usize {
            let have = self.low(i);
            if have >= want {
                return have == want;
            }
        }
        false
    }

    /// The keys in increasing order.
    fn iter(&self) -> impl Iterator<Item = u128> + '_ {
        let bits = self.bits;
        (0..self.dir.len() - 1).flat_map(move |s| {
            let high = if bits == 0 {
                0
            } else {
                (s as u128) << (128 - bits)
            };
            (self.dir[s] as usize..self.dir[s + 1] as usize).map(move |i| high | self.low(i))
        })
    }

    fn heap_bytes(&self) -> usize {
        self.dir.capacity() * 4 + self.bytes.capacity()
    }
}

/// Merges two increasing iterators.
struct Merge<A: Iterator<Item = u128>, B: Iterator<Item = u128>> {
    a: Peekable<A>,
    b: Peekable<B>,
}

impl<A: Iterator<Item = u128>, B: Iterator<Item = u128>> Merge<A, B> {
    fn new(a: A, b: B) -> Self {
        Merge {
            a: a.peekable(),
            b: b.peekable(),
        }
    }
}

impl<A: Iterator<Item = u128>, B: Iterator<Item = u128>> Iterator for Merge<A, B> {
    type Item = u128;
    fn next(&mut self) -> Option<u128> {
        match (self.a.peek(), self.b.peek()) {
            (Some(x), Some(y)) if x <= y => self.a.next(),
            (Some(_), Some(_)) => self.b.next(),
            (Some(_), None) => self.a.next(),
            (None, _) => self.b.next(),
        }
    }
}

/// A spilled sorted run: a file of little-endian `u128`s and the first key of each block.
struct SpillRun {
    path: PathBuf,
    file: File,
    len: usize,
    index: Vec<u128>,
}

impl SpillRun {
    fn write(path: PathBuf, keys: impl Iterator<Item = u128>) -> io::Result<SpillRun> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let mut run = SpillRun {
            path,
            file,
            len: 0,
            index: Vec::new(),
        };
        let mut out = BufWriter::with_capacity(64 * 1024, &run.file);
        for fp in keys {
            #[allow(clippy::manual_is_multiple_of)]
            // `is_multiple_of` needs Rust 1.87; the workspace supports 1.85
            if run.len % BLOCK_KEYS == 0 {
                run.index.push(fp);
            }
            out.write_all(&fp.to_le_bytes())?;
            run.len += 1;
        }
        out.flush()?;
        drop(out);
        run.index.shrink_to_fit();
        Ok(run)
    }

    /// Reads block `b` into `buf`, returning its number of keys.
    fn read_block(&self, b: usize, buf: &mut Vec<u8>) -> io::Result<usize> {
        let start = b * BLOCK_KEYS;
        let n = BLOCK_KEYS.min(self.len - start);
        buf.resize(n * 16, 0);
        self.file
            .read_exact_at(&mut buf[..n * 16], (start * 16) as u64)?;
        Ok(n)
    }

    fn contains(&self, fp: u128, buf: &mut Vec<u8>) -> io::Result<bool> {
        let b = self.index.partition_point(|&first| first <= fp);
        if b == 0 {
            return Ok(false);
        }
        let n = self.read_block(b - 1, buf)?;
        let key =
            |i: usize| u128::from_le_bytes(buf[i * 16..i * 16 + 16].try_into().expect("16 bytes"));
        let (mut lo, mut hi) = (0, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if key(mid) < fp {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo < n && key(lo) == fp)
    }

    /// The keys in increasing order; panics if the file cannot be read.
    fn iter(&self) -> impl Iterator<Item = u128> + '_ {
        let mut buf = Vec::new();
        (0..self.index.len()).flat_map(move |b| {
            let n = self.read_block(b, &mut buf).unwrap_or_else(|err| {
                panic!("dedupe: reading spill file {} failed: {err}; spill files must stay readable while the dataflow runs", self.path.display())
            });
            let keys: Vec<u128> = (0..n).map(|i| u128::from_le_bytes(buf[i * 16..i * 16 + 16].try_into().expect("16 bytes"))).collect();
            keys
        })
    }

    fn heap_bytes(&self) -> usize {
        self.index.capacity() * 16
    }

    fn file_bytes(&self) -> usize {
        self.len * 16
    }
}

impl Drop for SpillRun {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// The keys first seen in one event-time bucket.
#[derive(Default)]
struct Bucket {
    buffer: FingerprintSet,
    runs: Vec<Run>,
    spilled: Vec<SpillRun>,
    keys: usize,
    /// Compacted after the watermark moved past this bucket.
    sealed: bool,
}

impl Bucket {
    fn insert(&mut self, fp: u128, buffer_cap: usize) {
        self.buffer.insert(fp);
        self.keys += 1;
        if self.buffer.len() >= buffer_cap {
            self.flush_buffer();
            // Keep run sizes geometric: merge while the newest is at least half the one before.
            while self.runs.len() >= 2
                && self.runs[self.runs.len() - 2].len() <= 2 * self.runs[self.runs.len() - 1].len()
            {
                let newer = self.runs.pop().expect("two runs");
                let older = self.runs.pop().expect("two runs");
                self.runs.push(Run::from_sorted(
                    older.len() + newer.len(),
                    Merge::new(older.iter(), newer.iter()),
                ));
            }
        }
    }

    fn flush_buffer(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        let mut keys: Vec<u128> = std::mem::take(&mut self.buffer).into_iter().collect();
        keys.sort_unstable();
        self.runs
            .push(Run::from_sorted(keys.len(), keys.into_iter()));
    }

    /// The in-memory keys (buffer and runs), in increasing order.
    fn memory_keys(&self) -> (usize, Box<dyn Iterator<Item = u128> + '_>) {
        let mut buffered: Vec<u128> = self.buffer.iter().copied().collect();
        buffered.sort_unstable();
        let mut n = buffered.len();
        let mut keys: Box<dyn Iterator<Item = u128> + '_> = Box::new(buffered.into_iter());
        for run in &self.runs {
            n += run.len();
            keys = Box::new(Merge::new(keys, run.iter()));
        }
        (n, keys)
    }

    /// Merges the buffer and all runs into one run.
    fn compact(&mut self) {
        if self.runs.len() + usize::from(!self.buffer.is_empty()) <= 1 {
            self.flush_buffer();
            return;
        }
        let (n, keys) = self.memory_keys();
        let run = Run::from_sorted(n, keys);
        self.buffer = FingerprintSet::default();
        self.runs = vec![run];
    }

    fn memory_bytes(&self) -> usize {
        set_heap_bytes(&self.buffer)
            + self.runs.iter().map(Run::heap_bytes).sum::<usize>()
            + self.spilled.iter().map(SpillRun::heap_bytes).sum::<usize>()
    }

    fn has_memory_keys(&self) -> bool {
        !self.buffer.is_empty() || !self.runs.is_empty()
    }
}

/// Spilling state: the configuration and the lazily created private directory.
struct Spill {
    config: SpillConfig,
    label: String,
    dir: Option<SpillDir>,
    next_file: u64,
}

/// A private spill directory, removed on drop.
struct SpillDir(PathBuf);

impl Drop for SpillDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

static SPILL_DIRS: AtomicU64 = AtomicU64::new(0);

impl Spill {
    fn dir(&mut self) -> io::Result<&Path> {
        if self.dir.is_none() {
            let label: String = self
                .label
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            let nonce = SPILL_DIRS.fetch_add(1, Ordering::Relaxed);
            let path = self
                .config
                .dir
                .join(format!("dedupe-{label}-{}-{nonce}", std::process::id()));
            fs::create_dir_all(&path)?;
            self.dir = Some(SpillDir(path));
        }
        Ok(&self.dir.as_ref().expect("created above").0)
    }

    fn next_path(&mut self, bucket: i64) -> io::Result<PathBuf> {
        let file = format!("bucket{bucket}-{}.keys", self.next_file);
        self.next_file += 1;
        Ok(self.dir()?.join(file))
    }
}

/// One worker's remembered fingerprints, by event-time bucket.
struct Store {
    bucket_ms: i64,
    window_buckets: i64,
    buffer_cap: usize,
    buckets: BTreeMap<i64, Bucket>,
    scratch: Vec<u8>,
    spilled_runs: u64,
    spill_failures: u64,
    // Last, so that spill files are dropped before their directory.
    spill: Option<Spill>,
}

impl Store {
    fn new(
        bucket_ms: i64,
        window_buckets: i64,
        buffer_cap: usize,
        spill: Option<(SpillConfig, String)>,
    ) -> Self {
        Store {
            bucket_ms,
            window_buckets,
            buffer_cap,
            buckets: BTreeMap::new(),
            scratch: Vec::new(),
            spilled_runs: 0,
            spill_failures: 0,
            spill: spill.map(|(config, label)| Spill {
                config,
                label,
                dir: None,
                next_file: 0,
            }),
        }
    }

    fn bucket_of(&self, e: i64) -> i64 {
        e.div_euclid(self.bucket_ms)
    }

    /// Whether `fp` was remembered within the window of `e`; if not, remembers it. Returns true for duplicates.
    fn check_insert(&mut self, fp: u128, e: i64) -> io::Result<bool> {
        let b = self.bucket_of(e);
        let range = b.saturating_sub(self.window_buckets)..=b.saturating_add(self.window_buckets);
        // Look up the in-memory runs in two passes. The first reads each run's
        // directory slot and touches the slot's first key, with no data-dependent
        // branches, so the cache misses of all runs overlap; the second scans the
        // slots, now in cache. Order does not matter: any hit is a duplicate.
        const MAX_RUNS: usize = 64;
        let mut runs: [Option<(&Run, (u32, u32))>; MAX_RUNS] = [None; MAX_RUNS];
        let mut n = 0;
        let mut touched = 0u8;
        for (_, bucket) in self.buckets.range(range.clone()) {
            for run in &bucket.runs {
                if n < MAX_RUNS {
                    let span = run.slot_range(fp);
                    touched ^= run
                        .bytes
                        .get(span.0 as usize * run.width)
                        .copied()
                        .unwrap_or(0);
                    runs[n] = Some((run, span));
                    n += 1;
                }
            }
        }
        std::hint::black_box(touched);
        for (run, span) in runs[..n].iter().flatten() {
            if run.slot_contains(*span, fp) {
                return Ok(true);
            }
        }
        let mut seen = 0;
        for (_, bucket) in self.buckets.range(range) {
            if !bucket.buffer.is_empty() && bucket.buffer.contains(&fp) {
                return Ok(true);
            }
            // Runs beyond the first MAX_RUNS (only with many small runs), then spilled runs.
            for run in &bucket.runs {
                seen += 1;
                if seen > MAX_RUNS && run.contains(fp) {
                    return Ok(true);
                }
            }
            for spilled in &bucket.spilled {
                if spilled.contains(fp, &mut self.scratch)? {
                    return Ok(true);
                }
            }
        }
        self.buckets
            .entry(b)
            .or_default()
            .insert(fp, self.buffer_cap);
        Ok(false)
    }

    /// Drops buckets no non-late record can reach, seals buckets the watermark
    /// has passed, and spills if over the memory limit.
    fn maintain(&mut self, horizon: i64, watermark: i64) {
        let lowest = self.bucket_of(horizon).saturating_sub(self.window_buckets);
        self.buckets = self.buckets.split_off(&lowest);
        let newest = self.bucket_of(watermark);
        for (_, bucket) in self.buckets.range_mut(..newest) {
            if !bucket.sealed {
                bucket.compact();
                bucket.sealed = true;
            }
        }
        self.spill_if_needed();
    }

    fn spill_if_needed(&mut self) {
        let Some(limit) = self.spill.as_ref().map(|s| s.config.max_memory_bytes) else {
            return;
        };
        let mut memory: usize = self.buckets.values().map(Bucket::memory_bytes).sum();
        let ids: Vec<i64> = self.buckets.keys().copied().collect();
        for id in ids {
            if memory <= limit {
                break;
            }
            let bucket = self.buckets.get_mut(&id).expect("listed above");
            if !bucket.has_memory_keys() {
                continue;
            }
            let before = bucket.memory_bytes();
            let spill = self.spill.as_mut().expect("checked above");
            match Self::spill_bucket(spill, id, bucket) {
                Ok(files) => self.spilled_runs += files,
                Err(_) => {
                    self.spill_failures += 1;
                    return;
                }
            }
            memory = memory + bucket.memory_bytes() - before;
        }
    }

    /// Writes a bucket's in-memory keys to a new spill file; merges its files if there are too many.
    fn spill_bucket(spill: &mut Spill, id: i64, bucket: &mut Bucket) -> io::Result<u64> {
        let path = spill.next_path(id)?;
        let (_, keys) = bucket.memory_keys();
        let run = SpillRun::write(path, keys)?;
        bucket.buffer = FingerprintSet::default();
        bucket.runs.clear();
        bucket.spilled.push(run);
        let mut files = 1;
        if bucket.spilled.len() > MAX_SPILL_FILES {
            let path = spill.next_path(id)?;
            let mut keys: Box<dyn Iterator<Item = u128> + '_> = Box::new(std::iter::empty());
            for s in &bucket.spilled {
                keys = Box::new(Merge::new(keys, s.iter()));
            }
            let merged = SpillRun::write(path, keys)?;
            bucket.spilled = vec![merged];
            files += 1;
        }
        Ok(files)
    }

    /// (keys held, bytes in memory, bytes spilled).
    fn sizes(&self) -> (u64, u64, u64) {
        let mut keys = 0;
        let mut memory = 0;
        let mut disk = 0;
        for bucket in self.buckets.values() {
            keys += bucket.keys;
            memory += bucket.memory_bytes();
            disk += bucket
                .spilled
                .iter()
                .map(SpillRun::file_bytes)
                .sum::<usize>();
        }
        (keys as u64, memory as u64, disk as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    fn random_keys(rng: &mut SmallRng, n: usize) -> Vec<u128> {
        let mut keys: Vec<u128> = (0..n).map(|_| rng.gen()).collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    #[test]
    fn runs_round_trip_and_answer_membership() {
        let mut rng = SmallRng::seed_from_u64(7);
        for n in [0, 1, 15, 16, 17, 255, 256, 1000, 70_000] {
            let mut keys = random_keys(&mut rng, n);
            // Keys sharing top bits and edge values.
            if n > 2 {
                keys[0] = 0;
                let last = keys.len() - 1;
                keys[last] = u128::MAX;
                keys.sort_unstable();
                keys.dedup();
            }
            let run = Run::from_sorted(keys.len(), keys.iter().copied());
            assert_eq!(run.len(), keys.len());
            assert_eq!(run.iter().collect::<Vec<_>>(), keys, "n = {n}");
            for k in &keys {
                assert!(run.contains(*k), "n = {n}");
            }
            for _ in 0..1000 {
                let probe: u128 = rng.gen();
                assert_eq!(run.contains(probe), keys.binary_search(&probe).is_ok());
                if let Some(k) = keys.first() {
                    assert!(!run.contains(k ^ 1) || keys.binary_search(&(k ^ 1)).is_ok());
                }
            }
            if n >= 70_000 {
                assert!(
                    run.heap_bytes() as f64 / n as f64 <= 15.5,
                    "{} bytes for {n} keys",
                    run.heap_bytes()
                );
            }
        }
    }

    #[test]
    fn spill_runs_round_trip_and_answer_membership() {
        let dir = std::env::temp_dir().join(format!("weft-dedupe-unit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let mut rng = SmallRng::seed_from_u64(8);
        let mut buf = Vec::new();
        for (i, n) in [0usize, 1, 255, 256, 257, 3000].into_iter().enumerate() {
            let keys = random_keys(&mut rng, n);
            let path = dir.join(format!("run{i}"));
            let run = SpillRun::write(path.clone(), keys.iter().copied()).unwrap();
            assert_eq!(run.iter().collect::<Vec<_>>(), keys);
            for k in &keys {
                assert!(run.contains(*k, &mut buf).unwrap());
            }
            for _ in 0..500 {
                let probe: u128 = rng.gen();
                assert_eq!(
                    run.contains(probe, &mut buf).unwrap(),
                    keys.binary_search(&probe).is_ok()
                );
            }
            drop(run);
            assert!(!path.exists(), "spill files are removed with their run");
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    /// The store against a map of key -> buckets, with tiny buffers so runs merge and spill.
    #[test]
    fn store_matches_model_with_small_buffers_and_spilling() {
        for seed in 0..20u64 {
            let mut rng = SmallRng::seed_from_u64(seed);
            let dir = std::env::temp_dir()
                .join(format!("weft-dedupe-store-{}-{seed}", std::process::id()));
            let spill = (seed % 2 == 0).then(|| {
                (
                    SpillConfig {
                        dir: dir.clone(),
                        max_memory_bytes: rng.gen_range(0..300),
                    },
                    "t".to_string(),
                )
            });
            let window_buckets = rng.gen_range(0..4);
            let mut store = Store::new(10, window_buckets, rng.gen_range(1..40), spill);
            let mut model: BTreeMap<u128, Vec<i64>> = BTreeMap::new();
            let keys: Vec<u128> = (0..rng.gen_range(1..300)).map(|_| rng.gen()).collect();
            let mut watermark = 0i64;
            for _step in 0..30 {
                for _ in 0..rng.gen_range(0..200) {
                    let fp = keys[rng.gen_range(0..keys.len())];
                    let e = watermark - rng.gen_range(0..40);
                    let b = e.div_euclid(10);
                    let seen = model.entry(fp).or_default();
                    let expect = seen.iter().any(|c| (b - c).abs() <= window_buckets);
                    if !expect {
                        seen.push(b);
                    }
                    assert_eq!(store.check_insert(fp, e).unwrap(), expect, "seed {seed}");
                }
                watermark += rng.gen_range(0..20);
                // Lateness 40: nothing checked is ever older than the watermark - 40.
                store.maintain(watermark - 40, watermark);
            }
            if seed % 2 == 0 {
                assert!(store.spilled_runs > 0, "seed {seed}: nothing spilled");
            }
            drop(store);
            assert!(
                !dir.exists() || fs::read_dir(&dir).unwrap().next().is_none(),
                "spill directory removed"
            );
            let _ = fs::remove_dir_all(&dir);
        }
    }
}
