//! `bench-dedupe`: throughput of `dedupe_by_key` (one worker) and the bytes
//! it holds per remembered key, against a plain `HashSet<u128>` on the same
//! keys.
//!
//! ```text
//! cargo run --release -p weft-bench --bin bench-dedupe -- --keys 10000000
//! ```
//!
//! The stream has `--keys` distinct 128-bit fingerprints in increasing event
//! time spread over 90% of the window (so every key is still remembered at the
//! end), plus `--duplicates` retries that repeat a recent event exactly. Memory
//! is measured by a counting global allocator (`stats_alloc`, which keeps the
//! `unsafe` out of this crate): live heap bytes with the dataflow still alive,
//! minus live bytes before it was built, divided by the keys held. The
//! operator's own `bytes_held` gauge and the process RSS are printed too.

use std::alloc::System;
use std::time::Instant;

use clap::Parser;
use differential_dataflow::input::Input;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use timely::dataflow::operators::probe::Probe;
use weft_operators::dedupe::{DedupeByKey, DedupeConfig, DedupeStats};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// Benchmark windowed dedupe against a HashSet<u128> baseline.
#[derive(Debug, Parser)]
#[command(name = "bench-dedupe")]
struct Args {
    /// Distinct keys (all remembered at the end).
    #[arg(long, default_value_t = 10_000_000)]
    keys: u64,
    /// Probability that an event is a retry of a recent one.
    #[arg(long, default_value_t = 0.1)]
    duplicates: f64,
    /// Events per logical time.
    #[arg(long, default_value_t = 100_000)]
    batch: usize,
    /// Dedupe window in ms.
    #[arg(long, default_value_t = DAY_MS)]
    window_ms: u64,
    /// Random seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// The event stream: (fingerprint, event time ms), deterministic for a seed.
struct Events {
    rng: SmallRng,
    next_key: u64,
    keys: u64,
    duplicates: f64,
    ms_per_key: f64,
}

impl Events {
    fn new(args: &Args) -> Self {
        Events {
            rng: SmallRng::seed_from_u64(args.seed),
            next_key: 0,
            keys: args.keys,
            duplicates: args.duplicates,
            ms_per_key: args.window_ms as f64 * 0.9 / args.keys.max(1) as f64,
        }
    }

    fn event(&self, key: u64) -> (u128, i64) {
        (
            fingerprint(key),
            1_700_000_000_000 + (key as f64 * self.ms_per_key) as i64,
        )
    }
}

impl Iterator for Events {
    type Item = (u128, i64);
    fn next(&mut self) -> Option<(u128, i64)> {
        if self.next_key == self.keys {
            return None;
        }
        if self.next_key > 0 && self.rng.gen_bool(self.duplicates) {
            // A retry of one of the last 100k events, with its original event time.
            let back = self.rng.gen_range(1..=self.next_key.min(100_000));
            return Some(self.event(self.next_key - back));
        }
        self.next_key += 1;
        Some(self.event(self.next_key - 1))
    }
}

/// A 128-bit fingerprint of key `i` (splitmix64 on both halves), standing in for xxh3-128 of a messageId.
fn fingerprint(i: u64) -> u128 {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    (u128::from(mix(i)) << 64) | u128::from(mix(i ^ 0x5555_5555_5555_5555))
}

fn live_bytes() -> i64 {
    let s = GLOBAL.stats();
    s.bytes_allocated as i64 - s.bytes_deallocated as i64
}

fn rss_bytes() -> i64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: i64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

struct Measured {
    events: u64,
    seconds: f64,
    keys: u64,
    heap_bytes: i64,
    rss_bytes: i64,
}

/// Events through `dedupe_by_key` (or, with `dedupe == false`, through the same dataflow without it).
fn run_dataflow(args: &Args, dedupe: bool) -> (Measured, Option<(u64, u64, u64)>) {
    let stats = DedupeStats::new();
    let handle = stats.clone();
    let config = DedupeConfig::new(args.window_ms);
    let (events, batch) = (Events::new(args), args.batch);
    let (heap0, rss0) = (live_bytes(), rss_bytes());
    let result = timely::execute_directly(move |worker| {
        let probe = timely::dataflow::ProbeHandle::new();
        let mut input = worker.dataflow::<u64, _, _>(|scope| {
            let (input, records) = scope.new_collection::<(u128, i64), isize>();
            let out = if dedupe {
                records.dedupe_by_key("Dedupe", &config, |r| r.0, |r| r.1, handle)
            } else {
                records
            };
            out.inner.probe_with(&probe);
            input
        });
        let start = Instant::now();
        let mut time = 0u64;
        let mut count = 0u64;
        let mut events = events;
        loop {
            let mut any = false;
            for event in events.by_ref().take(batch) {
                input.insert(event);
                any = true;
                count += 1;
            }
            time += 1;
            input.advance_to(time);
            input.flush();
            while probe.less_than(input.time()) {
                worker.step();
            }
            if !any {
                break;
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        // Measure with the dataflow (and its state) still alive.
        let (heap, rss, snapshot) = (live_bytes(), rss_bytes(), stats.snapshot());
        drop(input);
        while worker.step() {}
        (count, seconds, heap, rss, snapshot)
    });
    let (events, seconds, heap, rss, s) = result;
    let keys = if dedupe { s.keys_held } else { 0 };
    let measured = Measured {
        events,
        seconds,
        keys,
        heap_bytes: heap - heap0,
        rss_bytes: rss - rss0,
    };
    (
        measured,
        dedupe.then_some((s.passed, s.dropped_duplicates, s.bytes_held)),
    )
}

/// The same events into a plain `HashSet<u128>`.
fn run_hashset(args: &Args) -> Measured {
    let (heap0, rss0) = (live_bytes(), rss_bytes());
    let start = Instant::now();
    let mut set = std::collections::HashSet::<u128>::new();
    let mut events = 0u64;
    for (fp, _) in Events::new(args) {
        set.insert(fp);
        events += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    let m = Measured {
        events,
        seconds,
        keys: set.len() as u64,
        heap_bytes: live_bytes() - heap0,
        rss_bytes: rss_bytes() - rss0,
    };
    drop(set);
    m
}

fn main() {
    let args = Args::parse();
    println!(
        "bench-dedupe: {} keys, {:.0}% retries, {} events per logical time, window {} ms, 1 worker",
        args.keys,
        args.duplicates * 100.0,
        args.batch,
        args.window_ms
    );
    let rate = |m: &Measured| m.events as f64 / m.seconds;

    let (feed, _) = run_dataflow(&args, false);
    println!(
        "feed only (input + probe, no dedupe): {} events in {:.2} s = {:.2} M events/s",
        feed.events,
        feed.seconds,
        rate(&feed) / 1e6
    );

    let (dedupe, counters) = run_dataflow(&args, true);
    let (passed, dropped, bytes_held) = counters.expect("dedupe counters");
    let per_key = |bytes: i64, keys: u64| bytes as f64 / keys.max(1) as f64;
    println!(
        "dedupe_by_key: {} events in {:.2} s = {:.2} M events/s; passed {passed}, dropped {dropped}, keys held {}",
        dedupe.events,
        dedupe.seconds,
        rate(&dedupe) / 1e6,
        dedupe.keys
    );
    println!(
        "dedupe_by_key memory: {:.2} B/key live heap (counting allocator), {:.2} B/key operator bytes_held, {:.2} B/key RSS growth",
        per_key(dedupe.heap_bytes, dedupe.keys),
        per_key(bytes_held as i64, dedupe.keys),
        per_key(dedupe.rss_bytes, dedupe.keys)
    );

    let set = run_hashset(&args);
    println!(
        "HashSet<u128> baseline: {} events in {:.2} s = {:.2} M events/s; {} keys, {:.2} B/key live heap, {:.2} B/key RSS growth",
        set.events,
        set.seconds,
        rate(&set) / 1e6,
        set.keys,
        per_key(set.heap_bytes, set.keys),
        per_key(set.rss_bytes, set.keys)
    );
    println!(
        "ratios dedupe / HashSet: throughput {:.2}x, bytes per key {:.2}x",
        rate(&dedupe) / rate(&set),
        per_key(dedupe.heap_bytes, dedupe.keys) / per_key(set.heap_bytes, set.keys)
    );
}
