//! `dedupe_by_key` against a naive model: a map of key → event-time buckets
//! where the key passed, never pruned, applying the rule of the module docs.
//!
//! Streams are random (seeded; the seed is printed on failure and
//! `DEDUPE_SEED=n` reruns one seed) with duplicates, out-of-order, late and
//! far-future records, exact repeats and retractions, over several logical
//! times. Each is run at 1 and 4 workers, fed from every worker or from one,
//! with and without forced spilling, and the consolidated output and the
//! counters must equal the model's.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use differential_dataflow::input::Input;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use weft_operators::dedupe::{
    DedupeByKey, DedupeConfig, DedupeStats, DedupeStatsSnapshot, LatePolicy,
};

/// (record id, key, event time ms).
type Rec = (u64, u32, i64);

/// A 128-bit fingerprint of a key (splitmix64 on both halves).
fn fingerprint(key: u32) -> u128 {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    (u128::from(mix(u64::from(key))) << 64) | u128::from(mix(u64::from(key) ^ 0xDEAD_BEEF))
}

#[derive(Clone, Debug)]
struct Case {
    config: DedupeConfig,
    /// Updates per logical time, in increasing time order.
    times: Vec<(u64, Vec<(Rec, isize)>)>,
}

fn generate(seed: u64) -> Case {
    let mut rng = SmallRng::seed_from_u64(seed);
    let window_ms = [1u64, 7, 100, 1000, 5000][rng.gen_range(0..5)];
    let buckets = [1u32, 3, 16][rng.gen_range(0..3)];
    let lateness_ms = [0, window_ms / 2, window_ms, 3 * window_ms][rng.gen_range(0..4)];
    let late = if rng.gen_bool(0.5) {
        LatePolicy::Pass
    } else {
        LatePolicy::Drop
    };
    let config = DedupeConfig::new(window_ms)
        .with_buckets_per_window(buckets)
        .with_lateness_ms(lateness_ms)
        .with_late_policy(late);

    let keys = rng.gen_range(1..60u32);
    let step = rng.gen_range(0..=2 * window_ms as i64);
    let jitter = rng.gen_range(0..=2 * window_ms as i64);
    let mut base = rng.gen_range(-10_000..10_000i64);
    let mut time = rng.gen_range(0..3u64);
    let mut id = 0u64;
    let mut inserted: Vec<Rec> = Vec::new();
    let mut times: Vec<(u64, Vec<(Rec, isize)>)> = Vec::new();
    for _ in 0..rng.gen_range(1..8) {
        let mut updates: Vec<(Rec, isize)> = Vec::new();
        for _ in 0..rng.gen_range(0..120) {
            let roll = rng.gen_range(0..100);
            let rec = if roll < 5 && !inserted.is_empty() {
                // An exact repeat of an earlier record.
                inserted[rng.gen_range(0..inserted.len())]
            } else {
                id += 1;
                let e = match roll {
                    5..=11 => base - rng.gen_range(0..=5 * window_ms as i64), // late, maybe very
                    12..=13 => base + rng.gen_range(0..=4 * window_ms as i64), // ahead
                    _ => base + rng.gen_range(-jitter..=jitter),
                };
                (id, rng.gen_range(0..keys), e)
            };
            updates.push((rec, 1));
            inserted.push(rec);
        }
        // Retractions of records from earlier times that are not inserted at this one.
        for _ in 0..rng.gen_range(0..3) {
            if let Some((_, earlier)) = times.last().cloned() {
                if let Some((rec, _)) = earlier.first() {
                    if !updates.iter().any(|(r, _)| r == rec) {
                        updates.push((*rec, -1));
                    }
                }
            }
        }
        times.push((time, updates));
        time += rng.gen_range(1..4);
        base += step + rng.gen_range(-(window_ms as i64)..=window_ms as i64);
    }
    Case { config, times }
}

/// Counters the model predicts (the gauges are left at zero).
fn counts(s: &DedupeStatsSnapshot) -> [u64; 5] {
    [
        s.passed,
        s.dropped_duplicates,
        s.late,
        s.dropped_late,
        s.retractions,
    ]
}

/// The naive model: consolidated output and counters.
fn oracle(case: &Case) -> (Vec<(Rec, u64, isize)>, DedupeStatsSnapshot) {
    let c = &case.config;
    let bucket_ms = c.window_ms.div_ceil(u64::from(c.buckets_per_window)) as i64;
    let window_buckets = c.window_ms.div_ceil(bucket_ms as u64) as i64;
    let mut seen: BTreeMap<u128, Vec<i64>> = BTreeMap::new();
    let mut watermark = i64::MIN;
    let mut out = Vec::new();
    let mut stats = DedupeStatsSnapshot::default();
    for (time, updates) in &case.times {
        for (rec, r) in updates {
            if *r > 0 {
                watermark = watermark.max(rec.2);
            }
        }
        let mut inserts = Vec::new();
        for (rec, r) in updates {
            if *r < 0 {
                stats.retractions += 1;
                out.push((*rec, *time, *r));
            } else {
                for _ in 0..*r {
                    inserts.push((rec.2, fingerprint(rec.1), *rec));
                }
            }
        }
        inserts.sort();
        for (e, fp, rec) in inserts {
            if i128::from(e) < i128::from(watermark) - i128::from(c.lateness_ms) {
                stats.late += 1;
                match c.late {
                    LatePolicy::Pass => {
                        stats.passed += 1;
                        out.push((rec, *time, 1));
                    }
                    LatePolicy::Drop => stats.dropped_late += 1,
                }
                continue;
            }
            let b = e.div_euclid(bucket_ms);
            let buckets = seen.entry(fp).or_default();
            if buckets.iter().any(|c| (b - c).abs() <= window_buckets) {
                stats.dropped_duplicates += 1;
            } else {
                buckets.push(b);
                stats.passed += 1;
                out.push((rec, *time, 1));
            }
        }
    }
    (consolidate(out), stats)
}

fn consolidate(mut v: Vec<(Rec, u64, isize)>) -> Vec<(Rec, u64, isize)> {
    v.sort();
    let mut out: Vec<(Rec, u64, isize)> = Vec::new();
    for (d, t, r) in v {
        match out.last_mut() {
            Some(last) if last.0 == d && last.1 == t => last.2 += r,
            _ => out.push((d, t, r)),
        }
    }
    out.retain(|x| x.2 != 0);
    out
}

/// How the input is fed.
#[derive(Clone, Copy, Debug)]
enum Feed {
    /// Record `i` from worker `i % peers`.
    RoundRobin,
    /// Everything from worker 0, flushed after every record (many small batches).
    OneWorkerSmallBatches,
}

fn run(
    case: &Case,
    workers: usize,
    feed: Feed,
    config: DedupeConfig,
) -> (Vec<(Rec, u64, isize)>, DedupeStatsSnapshot) {
    let case = Arc::new(case.clone());
    let output = Arc::new(Mutex::new(Vec::new()));
    let stats = DedupeStats::new();
    let (out, handle) = (output.clone(), stats.clone());
    timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let (out, handle, config) = (out.clone(), handle.clone(), config.clone());
        let mut input = worker.dataflow::<u64, _, _>(move |scope| {
            let (input, records) = scope.new_collection::<Rec, isize>();
            records
                .dedupe_by_key(
                    "Dedupe",
                    &config,
                    |r: &Rec| fingerprint(r.1),
                    |r: &Rec| r.2,
                    handle,
                )
                .inspect(move |(d, t, r)| out.lock().unwrap().push((*d, *t, *r)));
            input
        });
        for (time, updates) in &case.times {
            input.advance_to(*time);
            for (i, (rec, r)) in updates.iter().enumerate() {
                match feed {
                    Feed::RoundRobin if i % peers == index => input.update(*rec, *r),
                    Feed::OneWorkerSmallBatches if index == 0 => {
                        input.update(*rec, *r);
                        input.flush();
                        worker.step();
                    }
                    _ => {}
                }
            }
            input.flush();
            worker.step();
        }
        input.close();
        while worker.step() {}
    })
    .expect("timely runs");
    let got = std::mem::take(&mut *output.lock().unwrap());
    (consolidate(got), stats.snapshot())
}

/// Compares one run with the model; returns a short description of the first difference.
fn check(
    case: &Case,
    workers: usize,
    feed: Feed,
    config: DedupeConfig,
) -> Result<DedupeStatsSnapshot, String> {
    let (want, want_stats) = oracle(case);
    let (got, got_stats) = run(case, workers, feed, config);
    if got != want {
        let first = got
            .iter()
            .zip(&want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        return Err(format!(
            "output differs at {first}: got {:?}, model {:?} (lengths {} / {})",
            got.get(first),
            want.get(first),
            got.len(),
            want.len()
        ));
    }
    if counts(&got_stats) != counts(&want_stats) {
        return Err(format!(
            "counters differ: got {got_stats:?}, model {want_stats:?}"
        ));
    }
    Ok(got_stats)
}

fn spill_dir(tag: &str, seed: u64) -> PathBuf {
    std::env::temp_dir().join(format!(
        "weft-dedupe-oracle-{}-{tag}-{seed}",
        std::process::id()
    ))
}

#[test]
fn matches_model_at_1_and_4_workers() {
    for seed in common::seeds("DEDUPE_SEED", 0..80) {
        let case = generate(seed);
        for (workers, feed) in [
            (1, Feed::RoundRobin),
            (4, Feed::RoundRobin),
            (4, Feed::OneWorkerSmallBatches),
        ] {
            if let Err(e) = check(&case, workers, feed, case.config.clone()) {
                panic!(
                    "seed {seed}, {workers} workers, {feed:?}, {:?}: {e}",
                    case.config
                );
            }
        }
    }
}

#[test]
fn matches_model_when_forced_to_spill() {
    for seed in common::seeds("DEDUPE_SEED", 0..40) {
        let case = generate(seed);
        for (workers, limit) in [(1, 0), (4, 0), (4, 600)] {
            let dir = spill_dir("spill", seed);
            let config = case.config.clone().with_spill(&dir, limit);
            match check(&case, workers, Feed::RoundRobin, config) {
                Ok(stats) => {
                    let records: usize = case.times.iter().map(|(_, u)| u.len()).sum();
                    if limit == 0 && records > 0 && stats.passed > stats.late {
                        assert!(
                            stats.spilled_runs > 0,
                            "seed {seed}: a zero memory limit must spill"
                        );
                    }
                    assert_eq!(stats.spill_failures, 0, "seed {seed}");
                    assert_eq!(
                        (stats.keys_held, stats.bytes_held, stats.bytes_spilled),
                        (0, 0, 0),
                        "gauges return to zero"
                    );
                }
                Err(e) => panic!(
                    "seed {seed}, {workers} workers, spill limit {limit} in {}, {:?}: {e}",
                    dir.display(),
                    case.config
                ),
            }
            let leftover = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
            assert_eq!(
                leftover, 0,
                "seed {seed}: spill directories are removed with the dataflow"
            );
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// Enough keys in one bucket that hash-set buffers become runs and runs merge.
#[test]
fn matches_model_with_large_buckets() {
    let mut rng = SmallRng::seed_from_u64(99);
    let mut times = Vec::new();
    let mut id = 0;
    for t in 0..3u64 {
        let updates = (0..40_000)
            .map(|_| {
                id += 1;
                (
                    (
                        id,
                        rng.gen_range(0..60_000u32),
                        1_000 * t as i64 + rng.gen_range(0..500),
                    ),
                    1,
                )
            })
            .collect();
        times.push((t, updates));
    }
    let case = Case {
        config: DedupeConfig::new(10_000),
        times,
    };
    for workers in [1, 2] {
        if let Err(e) = check(&case, workers, Feed::RoundRobin, case.config.clone()) {
            panic!("{workers} workers: {e}");
        }
        let dir = spill_dir("large", workers as u64);
        if let Err(e) = check(
            &case,
            workers,
            Feed::RoundRobin,
            case.config.clone().with_spill(&dir, 256 * 1024),
        ) {
            panic!("{workers} workers, spilling: {e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A few hand-made cases that pin the documented rule.
#[test]
fn documented_rule_examples() {
    let case = |config: DedupeConfig, times: Vec<(u64, Vec<(Rec, isize)>)>| Case { config, times };
    // Window 1000, 16 buckets: bucket_ms 63, window_buckets 16; lateness 1000.
    let c = DedupeConfig::new(1000);
    let cases = [
        // Within the window (even at exactly window_ms): dropped.
        case(
            c.clone(),
            vec![(0, vec![((1, 7, 0), 1), ((2, 7, 1000), 1)])],
        ),
        // Beyond window + 2 buckets: passes, and is remembered anew.
        case(
            c.clone(),
            vec![
                (0, vec![((1, 7, 0), 1)]),
                (1, vec![((2, 7, 1200), 1), ((3, 7, 1300), 1)]),
            ],
        ),
        // Late: older than the watermark minus the lateness; passes unchecked.
        case(
            c.clone(),
            vec![
                (0, vec![((1, 7, 5000), 1)]),
                (1, vec![((2, 7, 3000), 1), ((3, 7, 3000), 1)]),
            ],
        ),
        // The same, dropped.
        case(
            c.clone().with_late_policy(LatePolicy::Drop),
            vec![(0, vec![((1, 7, 5000), 1)]), (1, vec![((2, 7, 3000), 1)])],
        ),
        // Out of order within one time: the earlier event time wins.
        case(
            c.clone(),
            vec![(0, vec![((1, 7, 500), 1), ((2, 7, 100), 1)])],
        ),
        // A diff of 2 is two copies.
        case(c.clone(), vec![(0, vec![((1, 7, 500), 2)])]),
        // Retractions pass through.
        case(
            c,
            vec![(0, vec![((1, 7, 500), 1)]), (1, vec![((1, 7, 500), -1)])],
        ),
    ];
    type Expected<'a> = (&'a [(Rec, u64, isize)], [u64; 5]);
    let expected: [Expected<'_>; 7] = [
        (&[((1, 7, 0), 0, 1)], [1, 1, 0, 0, 0]),
        (&[((1, 7, 0), 0, 1), ((2, 7, 1200), 1, 1)], [2, 1, 0, 0, 0]),
        (
            &[
                ((1, 7, 5000), 0, 1),
                ((2, 7, 3000), 1, 1),
                ((3, 7, 3000), 1, 1),
            ],
            [3, 0, 2, 0, 0],
        ),
        (&[((1, 7, 5000), 0, 1)], [1, 0, 1, 1, 0]),
        (&[((2, 7, 100), 0, 1)], [1, 1, 0, 0, 0]),
        (&[((1, 7, 500), 0, 1)], [1, 1, 0, 0, 0]),
        (
            &[((1, 7, 500), 0, 1), ((1, 7, 500), 1, -1)],
            [1, 0, 0, 0, 1],
        ),
    ];
    for (i, (case, (want, want_counts))) in cases.iter().zip(expected).enumerate() {
        let (model, model_stats) = oracle(case);
        assert_eq!(model, want, "case {i}: the model");
        assert_eq!(
            counts(&model_stats),
            want_counts,
            "case {i}: the model's counters"
        );
        for workers in [1, 4] {
            if let Err(e) = check(case, workers, Feed::RoundRobin, case.config.clone()) {
                panic!("case {i}, {workers} workers: {e}");
            }
        }
    }
}
