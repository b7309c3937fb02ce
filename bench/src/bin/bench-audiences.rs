//! `bench-audiences`: audiences over identity, incrementally (Weft) and by a
//! full recomputation (DuckDB), in one run.
//!
//! ```text
//! cargo build --release -p weft-bench --bin bench-audiences
//! target/release/bench-audiences          # 10 audiences over 5M events; 10 and 100 over 500k
//! target/release/bench-audiences --quick  # 10 and 100 audiences over 50k events, seconds
//! ```
//!
//! **Input.** `weft-gen` events (`bench/src/gen.rs`, seed 42) without retries
//! or malformed lines (dedupe and rejection have their own benchmarks): a
//! history of `--events` events and a delta of `--delta` (1,000) more, written
//! to one JSON-lines file that both systems read (one file per history size).
//! Logical times are the replayed receive clock, as `weft run` uses for
//! files: a batch of events is inserted at the running maximum of their
//! `receivedAt` (ms).
//!
//! **Definitions.** Two computed traits and `--audiences` audiences
//! generated from ten templates (counts with property and
//! context filters and windows, sums, averages, maxima, distinct counts,
//! trait tests, `in`, `contains`, `and`/`or`/`not`, computed-trait and
//! audience references); see [`audience_definitions`].
//!
//! **Weft**, per audience count, `--workers` workers, one dataflow built as
//! `engine/src/job.rs` `build_profiles` does (identity, events by profile,
//! computed traits, audiences, membership and computed-trait outputs joined
//! with identifiers):
//!
//! 1. **load**: the history but its last `--latency-events`, `--batch` events
//!    per logical time, each batch waited for: events/s;
//! 2. **unloaded latency**: `--single-events` events, each alone at its
//!    logical time, timed from insertion until the probe on the outputs passes
//!    that time (every change it causes is out): p50/p99;
//! 3. **latency under load**: events arrive at a steady half of the load
//!    rate (open loop: arrival times are fixed in advance); a round of every
//!    event arrived so far is cut when the previous round is complete (at most
//!    every `--tick-ms`), stamped with the wall-clock time, and inserted at its
//!    logical time; an event's latency runs from its arrival to the moment the
//!    probe passes its round's time (every change it causes is out):
//!    p50/p99 over events. The phase ends after `--latency-secs`; the rest of
//!    the history follows as one batch;
//! 4. **delta**: the `--delta` events at one logical time on top of the whole
//!    history, timed until the outputs are complete;
//! 5. **memory**: live heap (a counting allocator) with the dataflow alive,
//!    minus live heap before the events were parsed, per profile.
//!
//! 100 audiences over 5M events do not fit in 24 GiB, so by default they run
//! over a separate 500k-event history (with 10 audiences beside them, for the
//! 10-vs-100 comparison); `--audiences` takes `N` or `N@EVENTS` items.
//!
//! **DuckDB** (`bench/duckdb_audiences.py`, run by this program with the
//! packages of `scripts/python-deps.sh`): loads the same file into a table
//! (timed apart) and recomputes every membership from scratch at the delta's
//! logical time: identity links, traits (last write wins), every aggregate and
//! audience, as SQL generated from the same parsed definitions (module
//! [`sql`]). Best of `--reps`. This favours DuckDB: the recompute reads a
//! table whose property paths are already flattened into columns (the load,
//! JSON parsing included, is reported apart), and identical aggregates of
//! different audiences are computed once.
//!
//! **Identity in DuckDB** is simplified: an event's profile is its `userId`,
//! else the `userId` its `anonymousId` was seen with (or aliased to), else its
//! `anonymousId`. In the generated data every person's identifiers (user id,
//! 1–2 anonymous ids, devices, email, external ids) are their own and
//! no limit binds, so Weft's identity graph (which runs in full) gives the
//! same profiles; the run verifies it (profile counts, and the check below).
//! Weft names a profile by its oldest identifier; both sides are compared on
//! a canonical key (the profile's `user_id`, else its `anonymous_id`).
//!
//! **Check.** The membership sets of both systems at the delta's time are
//! compared exactly, for every audience count, and the result printed.

use std::alloc::System;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use differential_dataflow::input::{Input, InputSession};
use differential_dataflow::VecCollection;
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use timely::dataflow::ProbeHandle;
use timely::worker::Worker;
use weft_bench::gen::{parse_iso8601_ms, GenConfig, Generator};
use weft_dataflows::audience::{
    compile_aggregate, compile_audience, Members, ProfileInputs, TraitValues,
};
use weft_dataflows::event::{parse_event, Event, Field, ParseContext};
use weft_dataflows::identity::{id_hash, identity, IdHash, ProfileId};
use weft_dataflows::query::{parse_audience, parse_computed_trait};
use weft_dataflows::spec::IdentitySpec;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Benchmark audiences: incremental (Weft) against full recomputation (DuckDB).
#[derive(Debug, Parser)]
#[command(name = "bench-audiences")]
struct Args {
    /// History events of audience counts without `@` (default 5,000,000; 50,000 with --quick).
    #[arg(long)]
    events: Option<u64>,
    /// Events of the delta applied on top of the history.
    #[arg(long, default_value_t = 1_000)]
    delta: u64,
    /// Audience counts to run, comma-separated: `N` (over `--events`) or
    /// `N@EVENTS` (over a history of EVENTS events, generated apart).
    /// Default `10,10@500000,100@500000` (`10,100` with --quick): 100
    /// audiences over 5M events need more than 24 GiB.
    #[arg(long)]
    audiences: Option<String>,
    /// Timely worker threads (and DuckDB threads).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Events per logical time during the load.
    #[arg(long, default_value_t = 50_000)]
    batch: u64,
    /// History events kept for the latency phases (at most a tenth of the history).
    #[arg(long)]
    latency_events: Option<u64>,
    /// Longest latency phase, seconds.
    #[arg(long)]
    latency_secs: Option<f64>,
    /// Shortest interval between input rounds in the latency phase under
    /// load, ms (a round is cut when the previous one is complete).
    #[arg(long, default_value_t = 10)]
    tick_ms: u64,
    /// Single events fed one at a time after the load, each alone at its
    /// logical time and waited for (the unloaded latency).
    #[arg(long, default_value_t = 20)]
    single_events: u64,
    /// DuckDB repetitions (the best is reported).
    #[arg(long)]
    reps: Option<usize>,
    /// A small run: 50k events, a 3 s latency phase, one DuckDB repetition.
    #[arg(long)]
    quick: bool,
    /// Working directory for the event file, SQL and outputs (default: a temp dir, removed).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Python interpreter for the DuckDB baseline.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Skip the DuckDB baseline (and the check).
    #[arg(long)]
    no_duckdb: bool,
}

/// The resolved settings of one history size.
#[derive(Debug, Clone)]
struct Settings {
    history: u64,
    delta: u64,
    /// Audience counts run over this history.
    audiences: Vec<usize>,
    workers: usize,
    batch: u64,
    /// Events after the load: single events, then the open-loop phase.
    latency_events: u64,
    latency_secs: f64,
    min_tick: Duration,
    singles: u64,
    reps: usize,
}

/// `N` or `N@EVENTS`: N audiences over the default history or over `EVENTS` events.
fn parse_configs(a: &Args, default_history: u64) -> anyhow::Result<Vec<(usize, u64)>> {
    let default = if a.quick {
        "10,100"
    } else {
        "10,10@500000,100@500000"
    };
    let text = a.audiences.clone().unwrap_or_else(|| default.into());
    text.split(',')
        .map(|item| {
            let (n, h) = match item.trim().split_once('@') {
                Some((n, h)) => (n, h.parse::<u64>().context("history after @")?),
                None => (item.trim(), default_history),
            };
            let n = n.parse::<usize>().context("audience count")?;
            Ok((n, h))
        })
        .collect()
}

/// One `Settings` per history size, in order of first appearance.
fn settings(a: &Args) -> anyhow::Result<Vec<Settings>> {
    let default_history = a.events.unwrap_or(if a.quick { 50_000 } else { 5_000_000 });
    let mut out: Vec<Settings> = Vec::new();
    for (n, history) in parse_configs(a, default_history)? {
        if history < 20 {
            bail!("a history needs at least 20 events, got {history}");
        }
        if let Some(s) = out.iter_mut().find(|s| s.history == history) {
            s.audiences.push(n);
            continue;
        }
        let latency_events = a
            .latency_events
            .unwrap_or(if a.quick { 10_000 } else { 200_000 })
            .min(history / 10);
        out.push(Settings {
            history,
            delta: a.delta,
            audiences: vec![n],
            workers: a.workers.max(1),
            batch: a.batch.max(1),
            latency_events,
            latency_secs: a.latency_secs.unwrap_or(if a.quick { 3.0 } else { 15.0 }),
            min_tick: Duration::from_millis(a.tick_ms.max(1)),
            singles: a.single_events.min(latency_events / 2),
            reps: a.reps.unwrap_or(if a.quick { 1 } else { 3 }),
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Definitions.

const CATEGORIES: [&str; 10] = [
    "shoes",
    "shirts",
    "bags",
    "hats",
    "jackets",
    "pants",
    "socks",
    "accessories",
    "watches",
    "sunglasses",
];
const WINDOWS: [&str; 5] = ["1d", "7d", "14d", "30d", "90d"];
const PLANS: [&str; 3] = ["free", "pro", "enterprise"];
const SIGNUP_DATES: [&str; 3] = ["2024-07-01", "2025-01-01", "2025-07-01"];

/// The computed traits every configuration defines (audiences refer to them).
fn computed_traits() -> Vec<(String, String)> {
    [
        (
            "revenue_90d",
            r#"sum(properties.revenue from track "Order Completed" within 90d)"#,
        ),
        ("orders_ever", r#"count(track "Order Completed")"#),
    ]
    .into_iter()
    .map(|(n, q)| (n.to_string(), q.to_string()))
    .collect()
}

/// `n` audiences from ten templates; audience `i` uses template `i % 10` with
/// parameters (category, window, thresholds, plan) varied by `i`.
fn audience_definitions(n: usize) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(n);
    for i in 0..n {
        let round = i / 10;
        let cat = CATEGORIES[(i * 3 + round) % CATEGORIES.len()];
        let w = WINDOWS[(i + round) % WINDOWS.len()];
        let k = 1 + (i + round) % 3;
        let (label, query) = match i % 10 {
            0 => (
                "category_viewers",
                format!(
                    r#"count(track "Product Viewed" where properties.category = "{cat}" within {w}) >= {}"#,
                    k + 1
                ),
            ),
            1 => (
                "cart_abandoners",
                format!(
                    r#"count(track "Product Added" where properties.category = "{cat}" within {w}) >= 1 and count(track "Order Completed" within {w}) = 0"#
                ),
            ),
            2 => (
                "high_value",
                format!(
                    r#"computed.revenue_90d > {} or count(track "Order Completed" where properties.revenue >= {} within {w}) >= {k}"#,
                    150.005 + 100.0 * (round % 4) as f64,
                    75.5 + 50.0 * (i % 3) as f64
                ),
            ),
            3 => (
                "active_on_plan",
                format!(
                    r#"trait.plan = "{}" and count(any within {w}) >= {}"#,
                    PLANS[(i + round) % PLANS.len()],
                    3 * k
                ),
            ),
            4 => (
                "anonymous_readers",
                format!(
                    r#"(count(page where properties.path contains "/blog" within {w}) >= {k} or count(screen "Product Detail" where context.network.wifi = false within {w}) >= {}) and not trait.email exists"#,
                    k + 1
                ),
            ),
            5 => (
                "explorers",
                format!(
                    r#"unique_count(properties.category from track "Product Viewed" within {w}) >= {} and trait.createdAt < "{}""#,
                    k + 1,
                    SIGNUP_DATES[(i + round) % SIGNUP_DATES.len()]
                ),
            ),
            6 => (
                "segment",
                format!(
                    r#"audience("{}") and not audience("{}")"#,
                    out[i - 1].0,
                    out[i - 3].0
                ),
            ),
            7 => (
                "promo_responders",
                format!(
                    r#"(count(track "Coupon Applied" within {w}) >= 1 or count(track "Promotion Viewed" where properties.position = "home_banner" within {w}) >= 2) and trait.plan in ["pro", "enterprise"]"#
                ),
            ),
            8 => (
                "premium_browsers",
                format!(
                    r#"max(properties.price from track "Product Viewed" where properties.currency != "USD" within {w}) >= {} or avg(properties.price from track "Product Added" within {w}) > {}"#,
                    100 + 50 * (i % 3),
                    60.0005 + 20.0 * (round % 3) as f64
                ),
            ),
            _ => (
                "lapsed_customers",
                format!(
                    r#"computed.orders_ever >= 1 and count(any within {w}) = 0 and not (count(track "Email Opened" within 30d) >= 1 or trait.plan = "enterprise")"#
                ),
            ),
        };
        out.push((format!("a{i:03}_{label}"), query));
    }
    out
}

// ---------------------------------------------------------------------------
// The SQL baseline: the same definitions, compiled to DuckDB SQL.

/// Compiles parsed definitions into DuckDB SQL with the semantics of
/// `dataflows/src/audience.rs`: every test is a definite boolean (a missing or
/// null value fails every test but `!=` and `= null`; values of another JSON
/// type than the literal fail too), windows are `time > now - window`, empty
/// aggregates take their defaults (`count`/`sum`/`unique_count` 0, others
/// null) except through `computed.` references (null, as in Weft).
mod sql {
    use std::collections::{BTreeMap, BTreeSet, HashMap};

    use weft_dataflows::event::EventType;
    use weft_dataflows::query::{
        AggFunc, Aggregate, CmpOp, Condition, EventPath, EventSelector, Filter, Literal, Test,
        ValueRef,
    };

    /// The SQL type a value is read as (decided by the literal it is tested against).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
    pub enum Ty {
        /// Strings only.
        Str,
        /// Numbers only, as DOUBLE.
        Num,
        /// Booleans only.
        Bool,
        /// Any non-null JSON value, as its JSON text.
        Any,
    }

    impl Ty {
        fn of(l: &Literal) -> Ty {
            match l {
                Literal::Str(_) => Ty::Str,
                Literal::Num(_) => Ty::Num,
                Literal::Bool(_) => Ty::Bool,
                Literal::Null => Ty::Any,
            }
        }
        fn null(self) -> &'static str {
            match self {
                Ty::Num => "CAST(NULL AS DOUBLE)",
                Ty::Bool => "CAST(NULL AS BOOLEAN)",
                _ => "CAST(NULL AS VARCHAR)",
            }
        }
        fn suffix(self) -> &'static str {
            match self {
                Ty::Str => "s",
                Ty::Num => "n",
                Ty::Bool => "b",
                Ty::Any => "j",
            }
        }
    }

    /// A value a test reads.
    enum Val {
        /// A path into the event (inside an aggregate's `where`).
        Event(EventPath),
        /// `trait.<key>.<path>`: the profile's last-written value of `key`.
        Trait(Vec<String>),
        /// A numeric per-profile expression (an aggregate).
        Num(String),
    }

    /// Quotes a string literal.
    pub fn quote(s: &str) -> String {
        format!("'{}'", s.replace('\'', "''"))
    }

    fn json_path(keys: &[String]) -> String {
        let mut p = String::from("$");
        for k in keys {
            p.push_str(&format!(".\"{}\"", k.replace('"', "\\\"")));
        }
        quote(&p)
    }

    fn ident(parts: &[String]) -> String {
        parts
            .join("_")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect()
    }

    /// Reads a JSON value (`src` a JSON expression, `path` a JSON path literal) as `ty`.
    fn typed_json(src: &str, path: &str, ty: Ty) -> String {
        let t = format!("json_type({src}, {path})");
        match ty {
            Ty::Str => format!("CASE WHEN {t} = 'VARCHAR' THEN json_extract_string({src}, {path}) END"),
            Ty::Num => format!(
                "CASE WHEN {t} IN ('BIGINT', 'UBIGINT', 'HUGEINT', 'DOUBLE') THEN CAST(json_extract_string({src}, {path}) AS DOUBLE) END"
            ),
            Ty::Bool => format!(
                "CASE WHEN {t} = 'BOOLEAN' THEN CAST(json_extract_string({src}, {path}) AS BOOLEAN) END"
            ),
            Ty::Any => format!(
                "CASE WHEN {t} IS NOT NULL AND {t} <> 'NULL' THEN CAST(json_extract({src}, {path}) AS VARCHAR) END"
            ),
        }
    }

    fn num_literal(x: f64) -> String {
        format!("CAST({x:?} AS DOUBLE)")
    }

    fn literal(l: &Literal) -> String {
        match l {
            Literal::Str(s) => quote(s),
            Literal::Num(x) => num_literal(*x),
            Literal::Bool(b) => b.to_string(),
            Literal::Null => "NULL".into(),
        }
    }

    /// Columns the load step extracts, shared by every query.
    #[derive(Default)]
    pub struct Columns {
        /// Event-level columns: name → expression over the raw JSON columns.
        event: BTreeMap<String, String>,
        /// Top-level trait keys read by `trait.` tests (`tk_<key>`: JSON text, identify only).
        trait_keys: BTreeSet<String>,
        /// Raw JSON columns the expressions read.
        sources: BTreeSet<&'static str>,
    }

    impl Columns {
        fn event_value(&mut self, path: &EventPath, ty: Ty) -> String {
            let (src, keys, section) = match path {
                EventPath::Event | EventPath::Name => {
                    let col = if matches!(path, EventPath::Event) {
                        "\"event\""
                    } else {
                        "\"name\""
                    };
                    return match ty {
                        Ty::Str | Ty::Any => col.to_string(),
                        _ => ty.null().to_string(),
                    };
                }
                EventPath::Properties(k) => ("properties", k, "p"),
                EventPath::Context(k) => ("context", k, "c"),
                EventPath::Traits(k) => ("traits", k, "t"),
            };
            self.sources.insert(src);
            let name = format!("{section}_{}_{}", ident(keys), ty.suffix());
            let expr = typed_json(src, &json_path(keys), ty);
            self.event.entry(name.clone()).or_insert(expr);
            name
        }

        fn trait_key(&mut self, key: &str) -> String {
            self.trait_keys.insert(key.to_string());
            self.sources.insert("traits");
            format!("tk_{}", ident(&[key.to_string()]))
        }

        /// The load statements: the JSON-lines file into `events`, with the extracted columns.
        pub fn load(&self, events_path: &str) -> Vec<String> {
            let mut cols = vec![
                "\"type\"".to_string(),
                "messageId".into(),
                "userId".into(),
                "anonymousId".into(),
                "previousId".into(),
                "\"event\"".into(),
                "\"name\"".into(),
                "epoch_ms(CAST(\"timestamp\" AS TIMESTAMPTZ)) AS ts_ms".into(),
            ];
            for (name, expr) in &self.event {
                cols.push(format!("{expr} AS {name}"));
            }
            for key in &self.trait_keys {
                cols.push(format!(
                    "CASE WHEN \"type\" = 'identify' THEN CAST(json_extract(traits, {}) AS VARCHAR) END AS tk_{}",
                    json_path(std::slice::from_ref(key)),
                    ident(std::slice::from_ref(key))
                ));
            }
            let mut schema = vec![
                "'type': 'VARCHAR'",
                "'messageId': 'VARCHAR'",
                "'userId': 'VARCHAR'",
                "'anonymousId': 'VARCHAR'",
                "'previousId': 'VARCHAR'",
                "'event': 'VARCHAR'",
                "'name': 'VARCHAR'",
                "'timestamp': 'VARCHAR'",
            ];
            for s in &self.sources {
                schema.push(match *s {
                    "properties" => "'properties': 'JSON'",
                    "context" => "'context': 'JSON'",
                    _ => "'traits': 'JSON'",
                });
            }
            vec![format!(
                "CREATE OR REPLACE TABLE events AS SELECT {} FROM read_json({}, format = 'newline_delimited', columns = {{{}}}, maximum_object_size = 67108864)",
                cols.join(",\n  "),
                quote(events_path),
                schema.join(", ")
            )]
        }
    }

    /// One configuration's query under construction.
    pub struct Query<'c> {
        cols: &'c mut Columns,
        now_ms: u64,
        /// Aggregate expressions over `ev` grouped by profile, deduplicated.
        aggs: Vec<String>,
        agg_index: HashMap<String, usize>,
        /// Trait keys this query reads.
        traits: BTreeSet<String>,
        computed: BTreeMap<String, Aggregate>,
        audiences: BTreeMap<String, String>,
        members: Vec<(String, String)>,
    }

    impl<'c> Query<'c> {
        /// A query evaluating at logical time `now_ms`.
        pub fn new(cols: &'c mut Columns, now_ms: u64) -> Self {
            Query {
                cols,
                now_ms,
                aggs: Vec::new(),
                agg_index: HashMap::new(),
                traits: BTreeSet::new(),
                computed: BTreeMap::new(),
                audiences: BTreeMap::new(),
                members: Vec::new(),
            }
        }

        /// Defines a computed trait (referable as `computed.<name>`).
        pub fn computed_trait(&mut self, name: &str, agg: Aggregate) {
            self.computed.insert(name.to_string(), agg);
        }

        /// Defines an audience; returns an error for constructs the baseline does not cover.
        pub fn audience(&mut self, name: &str, c: &Condition) -> Result<(), String> {
            let cond = self.condition(c)?;
            self.audiences.insert(name.to_string(), cond.clone());
            self.members.push((name.to_string(), cond));
            Ok(())
        }

        fn agg_column(&mut self, expr: String) -> String {
            let n = self.aggs.len();
            let i = *self.agg_index.entry(expr.clone()).or_insert(n);
            if i == n {
                self.aggs.push(expr);
            }
            format!("g{i}")
        }

        fn selector(&mut self, sel: &EventSelector) -> Result<String, String> {
            let mut parts = Vec::new();
            if let Some(k) = sel.kind {
                parts.push(format!("\"type\" = {}", quote(EventType::as_str(k))));
            }
            if let Some(n) = &sel.name {
                parts.push(format!("coalesce(\"event\", \"name\") = {}", quote(n)));
            }
            if let Some(f) = &sel.filter {
                parts.push(self.filter(f)?);
            }
            if let Some(w) = sel.window {
                parts.push(format!("ts_ms > {}", self.now_ms as i128 - i128::from(w.0)));
            }
            Ok(if parts.is_empty() {
                "true".into()
            } else {
                parts.join(" AND ")
            })
        }

        fn filter(&mut self, f: &Filter) -> Result<String, String> {
            Ok(match f {
                Filter::And(v) => self.join(v, " AND ", Self::filter)?,
                Filter::Or(v) => self.join(v, " OR ", Self::filter)?,
                Filter::Not(f) => format!("(NOT {})", self.filter(f)?),
                Filter::Test(p, t) => self.test(&Val::Event(p.clone()), t)?,
            })
        }

        fn join<T>(
            &mut self,
            items: &[T],
            sep: &str,
            mut f: impl FnMut(&mut Self, &T) -> Result<String, String>,
        ) -> Result<String, String> {
            let parts: Result<Vec<String>, String> = items.iter().map(|x| f(self, x)).collect();
            Ok(format!("({})", parts?.join(sep)))
        }

        /// The aggregate's value (numeric aggregates only), with Weft's defaults.
        fn aggregate(&mut self, a: &Aggregate, via_computed: bool) -> Result<String, String> {
            let sel = self.selector(&a.events)?;
            let field = |q: &mut Self, ty: Ty| -> Result<String, String> {
                let p = a.field.as_ref().ok_or("aggregate without a path")?;
                Ok(q.cols.event_value(p, ty))
            };
            let (expr, default_zero) = match a.func {
                AggFunc::Count => (format!("count(*) FILTER (WHERE {sel})"), true),
                AggFunc::Sum => (
                    format!("sum({}) FILTER (WHERE {sel})", field(self, Ty::Num)?),
                    true,
                ),
                AggFunc::Avg => (
                    format!("avg({}) FILTER (WHERE {sel})", field(self, Ty::Num)?),
                    false,
                ),
                AggFunc::Min => (
                    format!("min({}) FILTER (WHERE {sel})", field(self, Ty::Num)?),
                    false,
                ),
                AggFunc::Max => (
                    format!("max({}) FILTER (WHERE {sel})", field(self, Ty::Num)?),
                    false,
                ),
                AggFunc::UniqueCount => (
                    format!(
                        "count(DISTINCT {}) FILTER (WHERE {sel})",
                        field(self, Ty::Any)?
                    ),
                    true,
                ),
                f => {
                    return Err(format!(
                        "{}(...) is not covered by the SQL baseline",
                        f.as_str()
                    ))
                }
            };
            let col = self.agg_column(expr);
            if via_computed {
                // A computed trait has no value for a profile without contributions.
                let present = match &a.field {
                    None => format!("count(*) FILTER (WHERE {sel})"),
                    Some(_) => format!("count({}) FILTER (WHERE {sel})", field(self, Ty::Any)?),
                };
                let present = self.agg_column(present);
                Ok(format!("(CASE WHEN {present} > 0 THEN {col} END)"))
            } else if default_zero {
                Ok(format!("coalesce({col}, 0)"))
            } else {
                Ok(col)
            }
        }

        fn typed(&mut self, v: &Val, ty: Ty) -> String {
            match v {
                Val::Event(p) => self.cols.event_value(p, ty),
                Val::Trait(path) => {
                    let key = self.cols.trait_key(&path[0]);
                    self.traits.insert(path[0].clone());
                    let col = format!("tr.{key}");
                    typed_json(&col, &json_path(&path[1..]), ty)
                }
                Val::Num(e) => match ty {
                    Ty::Num | Ty::Any => e.clone(),
                    _ => ty.null().into(),
                },
            }
        }

        fn test(&mut self, v: &Val, t: &Test) -> Result<String, String> {
            Ok(match t {
                Test::Exists => format!("({} IS NOT NULL)", self.typed(v, Ty::Any)),
                Test::Cmp(CmpOp::Eq, Literal::Null) => {
                    format!("({} IS NULL)", self.typed(v, Ty::Any))
                }
                Test::Cmp(CmpOp::Ne, Literal::Null) => {
                    format!("({} IS NOT NULL)", self.typed(v, Ty::Any))
                }
                Test::Cmp(_, Literal::Null) => "false".into(),
                Test::Cmp(op, lit) => {
                    let x = self.typed(v, Ty::of(lit));
                    let (sym, missing) = match op {
                        CmpOp::Eq => ("=", false),
                        CmpOp::Ne => ("<>", true),
                        CmpOp::Lt => ("<", false),
                        CmpOp::Le => ("<=", false),
                        CmpOp::Gt => (">", false),
                        CmpOp::Ge => (">=", false),
                    };
                    format!("coalesce({x} {sym} {}, {missing})", literal(lit))
                }
                Test::Contains(s) => format!(
                    "coalesce(contains({}, {}), false)",
                    self.typed(v, Ty::Str),
                    quote(s)
                ),
                Test::In(items) => {
                    let tests: Vec<Test> = items
                        .iter()
                        .map(|l| Test::Cmp(CmpOp::Eq, l.clone()))
                        .collect();
                    self.join(&tests, " OR ", |q, t| q.test(v, t))?
                }
            })
        }

        fn condition(&mut self, c: &Condition) -> Result<String, String> {
            Ok(match c {
                Condition::And(v) => self.join(v, " AND ", Self::condition)?,
                Condition::Or(v) => self.join(v, " OR ", Self::condition)?,
                Condition::Not(c) => format!("(NOT {})", self.condition(c)?),
                Condition::Audience(a) => self
                    .audiences
                    .get(a)
                    .cloned()
                    .ok_or_else(|| format!("audience {a:?} is not defined"))?,
                Condition::Test(ValueRef::Agg(a), t) => {
                    let e = self.aggregate(a, false)?;
                    self.test(&Val::Num(e), t)?
                }
                Condition::Test(ValueRef::Computed(n), t) => {
                    let a = self
                        .computed
                        .get(n)
                        .cloned()
                        .ok_or_else(|| format!("computed trait {n:?} is not defined"))?;
                    let e = self.aggregate(&a, true)?;
                    self.test(&Val::Num(e), t)?
                }
                Condition::Test(ValueRef::Trait(path), t) => {
                    self.test(&Val::Trait(path.clone()), t)?
                }
            })
        }

        /// `CREATE OR REPLACE TEMP TABLE <table> (audience, profile)` with every membership.
        pub fn finish(self, table: &str) -> String {
            let mut ctes: Vec<String> = IDENTITY_CTES.iter().map(|c| c.to_string()).collect();
            let mut select_aggs = String::from("profile");
            for (i, a) in self.aggs.iter().enumerate() {
                select_aggs.push_str(&format!(",\n    {a} AS g{i}"));
            }
            ctes.push(format!(
                "ag AS (\n  SELECT {select_aggs}\n  FROM ev GROUP BY profile\n)"
            ));
            let from = if self.traits.is_empty() {
                "ag".to_string()
            } else {
                // Last write wins per key: (event time, messageId, value text), largest.
                let cols: Vec<String> = self
                    .traits
                    .iter()
                    .map(|k| {
                        let c = format!("tk_{}", ident(std::slice::from_ref(k)));
                        format!("(max({{'t': ts_ms, 'm': messageId, 'v': {c}}}) FILTER (WHERE {c} IS NOT NULL)).v AS {c}")
                    })
                    .collect();
                ctes.push(format!(
                    "tr AS (\n  SELECT profile, {}\n  FROM ev WHERE \"type\" = 'identify' GROUP BY profile\n)",
                    cols.join(",\n    ")
                ));
                "ag LEFT JOIN tr USING (profile)".to_string()
            };
            let selects: Vec<String> = self
                .members
                .iter()
                .map(|(name, cond)| {
                    format!(
                        "SELECT {} AS audience, profile FROM {from} WHERE {cond}",
                        quote(name)
                    )
                })
                .collect();
            format!(
                "CREATE OR REPLACE TEMP TABLE {table} AS\nWITH {}\n{}",
                ctes.join(",\n"),
                selects.join("\nUNION ALL\n")
            )
        }
    }

    /// Simplified identity (see the program docs): `links` maps an anonymous
    /// id to the user id it was seen with or aliased to; `ev` is the events
    /// with their profile key.
    const IDENTITY_CTES: [&str; 2] = [
        "links AS (\n  SELECT anon, min(uid) AS uid FROM (\n    SELECT anonymousId AS anon, userId AS uid FROM events WHERE userId IS NOT NULL AND anonymousId IS NOT NULL\n    UNION ALL\n    SELECT previousId, userId FROM events WHERE \"type\" = 'alias' AND previousId IS NOT NULL AND userId IS NOT NULL\n  ) GROUP BY anon\n)",
        "ev AS (\n  SELECT e.*, coalesce('user_id:' || e.userId, 'user_id:' || l.uid, 'anonymous_id:' || e.anonymousId) AS profile\n  FROM events e LEFT JOIN links l ON l.anon = e.anonymousId\n)",
    ];

    /// Counts the profiles of the simplified identity.
    pub fn profiles() -> String {
        format!(
            "WITH {} SELECT count(DISTINCT profile) FROM ev",
            IDENTITY_CTES.join(",\n")
        )
    }
}

// ---------------------------------------------------------------------------
// Input.

/// What both systems read, and the logical clock of the replay.
struct Plan {
    settings: Settings,
    path: PathBuf,
    /// Prefix maximum of `receivedAt` (ms) over the events in file order.
    watermark: Vec<u64>,
    /// Phase 1 events: `history - latency_events`.
    load_events: u64,
    bytes: u64,
    users: u64,
}

impl Plan {
    fn total(&self) -> u64 {
        self.settings.history + self.settings.delta
    }
    /// The logical time of a batch ending (exclusively) at event `end`, after `prev`.
    fn time_after(&self, prev: u64, end: u64) -> u64 {
        (prev + 1).max(self.watermark[end as usize - 1])
    }
    /// The delta's logical time (when nothing pushes it further): the last event's watermark.
    fn delta_time(&self) -> u64 {
        self.watermark[self.total() as usize - 1]
    }
}

/// Writes the events and records each one's `receivedAt`.
fn generate(settings: &Settings, dir: &Path) -> anyhow::Result<Plan> {
    let total = settings.history + settings.delta;
    let mut cfg = GenConfig::with_events(total);
    cfg.users = weft_bench::gen::default_users(settings.history);
    cfg.duplicate_rate = 0.0;
    cfg.malformed_rate = 0.0;
    let path = dir.join("events.jsonl");
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path)?);
    let mut gen = Generator::new(&cfg)?;
    let mut line = Vec::with_capacity(64 * 1024);
    let mut watermark = Vec::with_capacity(total as usize);
    let mut high = 0u64;
    const KEY: &[u8] = b"\"receivedAt\":\"";
    while gen.next_into(&mut line).is_some() {
        // Generated lines end with `"receivedAt":"<24 chars>"}`.
        let n = line.len();
        let at = n.checked_sub(KEY.len() + 24 + 3).context("short line")?;
        if &line[at..at + KEY.len()] != KEY {
            bail!("a generated line does not end with receivedAt");
        }
        let ts = std::str::from_utf8(&line[at + KEY.len()..at + KEY.len() + 24])?;
        let ms = parse_iso8601_ms(ts).context("receivedAt")?;
        high = high.max(ms.max(0) as u64);
        watermark.push(high);
        out.write_all(&line)?;
        line.clear();
    }
    out.flush()?;
    Ok(Plan {
        settings: settings.clone(),
        load_events: settings.history - settings.latency_events,
        bytes: gen.stats().bytes,
        users: cfg.users,
        path,
        watermark,
    })
}

/// One worker's events: phase-1 batches, then the rest with their file index.
struct Share {
    batches: Vec<Vec<Event>>,
    rest: VecDeque<(u64, Event)>,
}

fn read_share(plan: &Plan, index: usize, peers: usize) -> anyhow::Result<Share> {
    let cx = ParseContext::default();
    let mut reader = BufReader::with_capacity(1 << 20, std::fs::File::open(&plan.path)?);
    let batch = plan.settings.batch;
    let mut batches: Vec<Vec<Event>> = vec![Vec::new(); plan.load_events.div_ceil(batch) as usize];
    let mut rest = VecDeque::new();
    let mut line = Vec::new();
    let mut i = 0u64;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if i as usize % peers == index {
            let body = line.strip_suffix(b"\n").unwrap_or(&line);
            let e = parse_event(body, &cx).map_err(|r| anyhow::anyhow!("event {i}: {r:?}"))?;
            if i < plan.load_events {
                batches[(i / batch) as usize].push(e);
            } else {
                rest.push_back((i, e));
            }
        }
        i += 1;
    }
    if i != plan.total() {
        bail!(
            "{} has {i} lines, expected {}",
            plan.path.display(),
            plan.total()
        );
    }
    Ok(Share { batches, rest })
}

// ---------------------------------------------------------------------------
// Weft.

/// What one configuration's run measured.
#[derive(Debug, Default, Clone)]
struct WeftReport {
    load: Duration,
    load_events: u64,
    rate: f64,
    /// Per event of the open-loop phase, ms.
    latencies: Vec<f64>,
    latency_events: u64,
    rounds: u64,
    singles: Vec<Duration>,
    delta: Duration,
    delta_time: u64,
    heap_bytes: i64,
    /// Consolidated `(profile, audience index)` memberships at the delta's time.
    members: Vec<(ProfileId, u32)>,
    /// Consolidated identifier → profile at the delta's time.
    profiles: Vec<(IdHash, ProfileId)>,
    aggregates: usize,
}

/// Changes at times up to a cutoff, consolidated as they grow.
struct Capture<D: Ord> {
    cutoff: u64,
    updates: Vec<(D, isize)>,
    consolidated: usize,
}

impl<D: Ord + Clone> Capture<D> {
    fn new(cutoff: u64) -> Self {
        Capture {
            cutoff,
            updates: Vec::new(),
            consolidated: 0,
        }
    }
    fn push(&mut self, d: &D, t: u64, r: isize) {
        if t <= self.cutoff {
            self.updates.push((d.clone(), r));
            if self.updates.len() > 2 * self.consolidated + (1 << 16) {
                self.consolidate();
            }
        }
    }
    fn consolidate(&mut self) {
        differential_dataflow::consolidation::consolidate(&mut self.updates);
        self.consolidated = self.updates.len();
    }
    fn bytes(&self) -> usize {
        self.updates.capacity() * std::mem::size_of::<(D, isize)>()
    }
}

type Shared<T> = std::rc::Rc<std::cell::RefCell<T>>;

/// Every worker's consolidated memberships and identifier → profile pairs.
type Captured = (Vec<(ProfileId, u32)>, Vec<(IdHash, ProfileId)>);

/// Probed outputs and captures of the dataflow `build_profiles` builds.
struct Outputs {
    members: Shared<Capture<(ProfileId, u32)>>,
    profiles: Shared<Capture<(IdHash, ProfileId)>>,
    aggregates: usize,
}

/// Identity, computed traits and audiences as `engine/src/job.rs`
/// `build_profiles` builds them; every output is probed.
fn build_profiles<'s>(
    events: VecCollection<'s, u64, Event, isize>,
    traits: &[(String, String)],
    audiences: &[(String, String)],
    probe: &ProbeHandle<u64>,
    cutoff: u64,
) -> Outputs {
    let ids = identity(events, &IdentitySpec::default()).expect("default rules compile");
    let profile_events = ids
        .anchored
        .clone()
        .arrange_by_key_named("EventsByAnchor")
        .join_core(ids.profile_of.clone(), |_h, e, p| Some((*p, e.clone())));
    let inputs = ProfileInputs {
        profiles: ids.profiles.clone().map(|(_, p)| p).distinct(),
        events: profile_events,
        traits: ids
            .traits
            .clone()
            .map(|((p, k), v)| (p, (k.to_string(), v.to_string()))),
        shared: None,
    };
    let mut aggregates = 0;
    let mut computed: BTreeMap<String, TraitValues<'s, ProfileId>> = BTreeMap::new();
    let mut computed_out = Vec::new();
    for (name, query) in traits {
        let agg = parse_computed_trait(query).expect("generated traits parse");
        aggregates += 1;
        let values = compile_aggregate(&inputs, &agg);
        let n = name.clone();
        computed_out.push(values.clone().map(move |(p, v)| (p, (n.clone(), v))));
        computed.insert(name.clone(), values);
    }
    let members_capture = Shared::new(Capture::new(cutoff).into());
    let mut compiled: BTreeMap<String, Members<'s, ProfileId>> = BTreeMap::new();
    let mut members_out = Vec::new();
    for (i, (name, query)) in audiences.iter().enumerate() {
        let cond = parse_audience(query).expect("generated audiences parse");
        aggregates += count_aggregates(&cond);
        let members = compile_audience(&inputs, &cond, &computed, &compiled).expect("compiles");
        let capture = members_capture.clone();
        let members = members.inspect(move |(p, t, r)| {
            capture.borrow_mut().push(&(*p, i as u32), *t, *r);
        });
        let key = name.clone();
        members_out.push(members.clone().map(move |p| (p, key.clone())));
        compiled.insert(name.clone(), members);
    }
    let scope = inputs.profiles.scope();
    ids.membership_records(differential_dataflow::collection::concatenate(
        scope,
        members_out,
    ))
    .probe_with(probe);
    ids.computed_records(differential_dataflow::collection::concatenate(
        scope,
        computed_out,
    ))
    .probe_with(probe);
    let profiles_capture = Shared::new(Capture::new(cutoff).into());
    let capture = profiles_capture.clone();
    ids.profiles.inspect(move |(d, t, r)| {
        capture.borrow_mut().push(d, *t, *r);
    });
    Outputs {
        members: members_capture,
        profiles: profiles_capture,
        aggregates,
    }
}

fn count_aggregates(c: &weft_dataflows::query::Condition) -> usize {
    use weft_dataflows::query::{Condition, ValueRef};
    match c {
        Condition::And(v) | Condition::Or(v) => v.iter().map(count_aggregates).sum(),
        Condition::Not(c) => count_aggregates(c),
        Condition::Test(ValueRef::Agg(_), _) => 1,
        _ => 0,
    }
}

/// Cross-worker rendezvous for one run (workers keep stepping while they wait).
#[derive(Default)]
struct Sync {
    parsed: AtomicUsize,
    rate_bits: AtomicU64,
    rounds: Mutex<Vec<(u64, u64)>>,
    phase_done: AtomicBool,
    before_delta: AtomicUsize,
    after_delta: AtomicUsize,
    capture_bytes: AtomicUsize,
    measured: AtomicBool,
}

fn live_heap() -> i64 {
    let s = GLOBAL.stats();
    // stats_alloc already counts reallocations' growth and shrinkage in these two.
    s.bytes_allocated as i64 - s.bytes_deallocated as i64
}

fn spin_until(worker: &mut Worker, mut done: impl FnMut() -> bool) {
    while !done() {
        if !worker.step() {
            std::thread::yield_now();
        }
    }
}

/// Inserts this worker's events with index below `end` at `time`, and closes `time`.
fn insert_round(
    input: &mut InputSession<u64, Event, isize>,
    rest: &mut VecDeque<(u64, Event)>,
    end: u64,
    time: u64,
) {
    input.advance_to(time);
    while rest.front().is_some_and(|(i, _)| *i < end) {
        input.insert(rest.pop_front().expect("checked").1);
    }
    input.advance_to(time + 1);
    input.flush();
}

/// Inserts `events` at `time`, closes `time`, and waits until the outputs pass it.
fn settle(
    input: &mut InputSession<u64, Event, isize>,
    worker: &mut Worker,
    probe: &ProbeHandle<u64>,
    events: impl IntoIterator<Item = Event>,
    time: u64,
) {
    input.advance_to(time);
    for e in events {
        input.insert(e);
    }
    input.advance_to(time + 1);
    input.flush();
    spin_until(worker, || !probe.less_than(&(time + 1)));
}

/// One configuration: load, latency, delta, memory.
fn run_weft(plan: &Arc<Plan>, audiences: usize) -> anyhow::Result<WeftReport> {
    let traits = Arc::new(computed_traits());
    let defs = Arc::new(audience_definitions(audiences));
    let sync = Arc::new(Sync::default());
    let result: Arc<Mutex<WeftReport>> = Arc::default();
    let captured: Arc<Mutex<Captured>> = Arc::default();
    let heap0 = live_heap();
    let (plan2, result2, captured2) = (plan.clone(), result.clone(), captured.clone());
    let guards = timely::execute(
        timely::Config::process(plan.settings.workers),
        move |worker| {
            let (plan, sync) = (&plan2, &sync);
            let (index, peers) = (worker.index(), worker.peers());
            let share = read_share(plan, index, peers).expect("the event file reads back");
            sync.parsed.fetch_add(1, Ordering::SeqCst);
            while sync.parsed.load(Ordering::SeqCst) < peers {
                std::thread::yield_now();
            }
            let cutoff = plan.delta_time();
            let probe = ProbeHandle::new();
            let dataflow = worker.next_dataflow_index();
            let (mut input, outputs) = worker.dataflow::<u64, _, _>(|scope| {
                let (input, events) = scope.new_collection::<Event, isize>();
                let outputs = build_profiles(events, &traits, &defs, &probe, cutoff);
                (input, outputs)
            });
            let mut report = WeftReport {
                aggregates: outputs.aggregates,
                ..WeftReport::default()
            };
            let Share { batches, mut rest } = share;

            // PHASE 1. Load, one batch per logical time, each waited for.
            let start = Instant::now();
            let mut time = 0u64;
            for (b, events) in batches.into_iter().enumerate() {
                let end = ((b as u64 + 1) * plan.settings.batch).min(plan.load_events);
                time = plan.time_after(time, end);
                settle(&mut input, worker, &probe, events, time);
            }
            report.load = start.elapsed();
            report.load_events = plan.load_events;
            if index == 0 {
                let rate = plan.load_events as f64 / report.load.as_secs_f64();
                sync.rate_bits.store(rate.to_bits(), Ordering::SeqCst);
            }
            spin_until(worker, || sync.rate_bits.load(Ordering::SeqCst) != 0);
            report.rate = f64::from_bits(sync.rate_bits.load(Ordering::SeqCst));

            // PHASE 2. Latency of single events, each alone at its logical time
            // and waited for (the unloaded latency).
            let mut next = plan.load_events;
            for _ in 0..plan.settings.singles {
                next += 1;
                time = plan.time_after(time, next);
                let event = rest
                    .front()
                    .is_some_and(|(i, _)| *i < next)
                    .then(|| rest.pop_front().expect("checked").1);
                let start = Instant::now();
                settle(&mut input, worker, &probe, event, time);
                report.singles.push(start.elapsed());
            }

            // PHASE 3. Latency under load: events arrive at half the load rate;
            // worker 0 cuts a round of everything arrived when the previous round
            // is complete (at most every --tick-ms) and logs it; the others
            // follow the log with their share. An event's latency runs from its
            // arrival to the completion of its round.
            let history = plan.settings.history;
            let rate = report.rate / 2.0;
            let first_index = next;
            let mut followed = 0usize;
            let mut in_flight: Option<(u64, u64, u64)> = None;
            let mut last_cut: Option<Instant> = None;
            let mut stopped = false;
            let t0 = Instant::now();
            loop {
                if index == 0 {
                    let now = Instant::now();
                    let elapsed = (now - t0).as_secs_f64();
                    stopped |= elapsed >= plan.settings.latency_secs || next >= history;
                    let arrived = (first_index + (elapsed * rate) as u64).min(history);
                    let tick_passed = last_cut.is_none_or(|c| now - c >= plan.settings.min_tick);
                    if !stopped && in_flight.is_none() && arrived > next && tick_passed {
                        time = plan.time_after(time, arrived);
                        insert_round(&mut input, &mut rest, arrived, time);
                        sync.rounds
                            .lock()
                            .expect("not poisoned")
                            .push((arrived, time));
                        in_flight = Some((time, next, arrived));
                        next = arrived;
                        last_cut = Some(now);
                    }
                    if stopped && in_flight.is_none() {
                        sync.phase_done.store(true, Ordering::SeqCst);
                        break;
                    }
                } else {
                    let done = sync.phase_done.load(Ordering::SeqCst);
                    let log = sync.rounds.lock().expect("not poisoned")[followed..].to_vec();
                    for (end, t) in log {
                        time = t;
                        insert_round(&mut input, &mut rest, end, time);
                        next = end;
                        followed += 1;
                    }
                    if done {
                        break;
                    }
                }
                worker.step();
                if let Some((t, first, end)) = in_flight {
                    if !probe.less_than(&(t + 1)) {
                        let complete = t0.elapsed().as_secs_f64();
                        for i in first..end {
                            let arrival = (i - first_index) as f64 / rate;
                            report.latencies.push((complete - arrival) * 1e3);
                        }
                        report.rounds += 1;
                        in_flight = None;
                    }
                }
            }
            report.latency_events = next - first_index;
            // The rest of the history, if the phase ended by time.
            if next < history {
                time = plan.time_after(time, history);
                let mut batch = Vec::new();
                while rest.front().is_some_and(|(i, _)| *i < history) {
                    batch.push(rest.pop_front().expect("checked").1);
                }
                settle(&mut input, worker, &probe, batch, time);
            }

            // PHASE 4. The delta, at one logical time, on the whole history.
            sync.before_delta.fetch_add(1, Ordering::SeqCst);
            spin_until(worker, || sync.before_delta.load(Ordering::SeqCst) == peers);
            time = plan.time_after(time, plan.total());
            report.delta_time = time;
            let delta: Vec<Event> = rest.drain(..).map(|(_, e)| e).collect();
            drop(rest);
            let start = Instant::now();
            settle(&mut input, worker, &probe, delta, time);
            report.delta = start.elapsed();

            // PHASE 5. Memory, with every worker's dataflow alive and its input consumed.
            let capture_bytes =
                outputs.members.borrow().bytes() + outputs.profiles.borrow().bytes();
            sync.capture_bytes
                .fetch_add(capture_bytes, Ordering::SeqCst);
            sync.after_delta.fetch_add(1, Ordering::SeqCst);
            if index == 0 {
                spin_until(worker, || sync.after_delta.load(Ordering::SeqCst) == peers);
                report.heap_bytes =
                    live_heap() - heap0 - sync.capture_bytes.load(Ordering::SeqCst) as i64;
                sync.measured.store(true, Ordering::SeqCst);
            } else {
                spin_until(worker, || sync.measured.load(Ordering::SeqCst));
            }

            // Hand over the captures, then drop the dataflow (its windows would
            // otherwise all expire as the input closes).
            {
                let mut members = outputs.members.borrow_mut();
                let mut profiles = outputs.profiles.borrow_mut();
                members.consolidate();
                profiles.consolidate();
                let mut all = captured2.lock().expect("not poisoned");
                all.0.extend(
                    members
                        .updates
                        .drain(..)
                        .filter(|(_, r)| *r > 0)
                        .map(|(d, _)| d),
                );
                all.1.extend(
                    profiles
                        .updates
                        .drain(..)
                        .filter(|(_, r)| *r > 0)
                        .map(|(d, _)| d),
                );
            }
            drop(input);
            worker.drop_dataflow(dataflow);
            if index == 0 {
                *result2.lock().expect("not poisoned") = report;
            }
        },
    )
    .map_err(|e| anyhow::anyhow!("timely: {e}"))?;
    for r in guards.join() {
        r.map_err(|e| anyhow::anyhow!("a worker failed: {e}"))?;
    }
    let mut report = std::mem::take(&mut *result.lock().expect("not poisoned"));
    let (mut members, mut profiles) = std::mem::take(&mut *captured.lock().expect("not poisoned"));
    members.sort_unstable();
    profiles.sort_unstable();
    report.members = members;
    report.profiles = profiles;
    Ok(report)
}

// ---------------------------------------------------------------------------
// The comparison.

/// `user_id` and `anonymous_id` values by identifier hash, from the event file.
fn identifier_names(path: &Path) -> anyhow::Result<HashMap<IdHash, String>> {
    let cx = ParseContext::default();
    let mut names = HashMap::new();
    let reader = BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    for line in reader.split(b'\n') {
        let e = parse_event(&line?, &cx).map_err(|r| anyhow::anyhow!("{r:?}"))?;
        for (field, kind) in [
            (Field::UserId, "user_id"),
            (Field::AnonymousId, "anonymous_id"),
        ] {
            if let Some(v) = e.get(field) {
                names
                    .entry(id_hash(kind, v))
                    .or_insert_with(|| format!("{kind}:{v}"));
            }
        }
    }
    Ok(names)
}

/// Weft's memberships as `(audience, canonical profile key)`: the profile's
/// `user_id`, else its smallest `anonymous_id`.
fn canonical_members(
    report: &WeftReport,
    names: &HashMap<IdHash, String>,
    defs: &[(String, String)],
) -> Vec<(String, String)> {
    let mut key: HashMap<ProfileId, &str> = HashMap::new();
    for (id, profile) in &report.profiles {
        if let Some(name) = names.get(id) {
            let slot = key.entry(*profile).or_insert(name);
            let better = |a: &str, b: &str| {
                let user = |s: &str| s.starts_with("user_id:");
                (user(a), std::cmp::Reverse(a)) > (user(b), std::cmp::Reverse(b))
            };
            if better(name, slot) {
                *slot = name;
            }
        }
    }
    let mut out: Vec<(String, String)> = report
        .members
        .iter()
        .map(|(p, a)| {
            let k = key
                .get(p)
                .map_or_else(|| format!("profile:{p:032x}"), |s| s.to_string());
            (defs[*a as usize].0.clone(), k)
        })
        .collect();
    out.sort();
    out
}

fn read_members(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let mut out: Vec<(String, String)> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (a, p) = l.split_once('\t').unwrap_or((l, ""));
            (a.to_string(), p.to_string())
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Differences between two sorted sets: (only in a, only in b).
fn diff<'a, T: Ord>(a: &'a [T], b: &'a [T]) -> (Vec<&'a T>, Vec<&'a T>) {
    let (mut i, mut j) = (0, 0);
    let (mut only_a, mut only_b) = (Vec::new(), Vec::new());
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x == y => {
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x < y => {
                only_a.push(x);
                i += 1;
            }
            (Some(_), Some(y)) => {
                only_b.push(y);
                j += 1;
            }
            (Some(x), None) => {
                only_a.push(x);
                i += 1;
            }
            (None, Some(y)) => {
                only_b.push(y);
                j += 1;
            }
            (None, None) => break,
        }
    }
    (only_a, only_b)
}

// ---------------------------------------------------------------------------
// DuckDB.

#[derive(Debug, serde::Deserialize)]
struct DuckQuery {
    best_s: f64,
    members: u64,
}

#[derive(Debug, serde::Deserialize)]
struct DuckReport {
    duckdb: String,
    threads: usize,
    load_s: f64,
    rows: u64,
    profiles: Option<u64>,
    queries: BTreeMap<String, DuckQuery>,
}

/// The PYTHONPATH `scripts/python-deps.sh` prints (installing the packages if needed).
fn python_path() -> anyhow::Result<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/python-deps.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout)?;
    text.lines()
        .find_map(|l| l.strip_prefix("PYTHONPATH="))
        .map(str::to_string)
        .context("python-deps.sh printed no PYTHONPATH")
}

fn run_duckdb(args: &Args, plan: &Plan, dir: &Path) -> anyhow::Result<DuckReport> {
    let mut cols = sql::Columns::default();
    let mut queries = Vec::new();
    let now = plan.delta_time();
    for &n in &plan.settings.audiences {
        let mut q = sql::Query::new(&mut cols, now);
        for (name, query) in computed_traits() {
            q.computed_trait(&name, parse_computed_trait(&query).expect("parses"));
        }
        for (name, query) in audience_definitions(n) {
            let cond = parse_audience(&query).expect("parses");
            q.audience(&name, &cond)
                .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        }
        let table = format!("members_{n}");
        let text = q.finish(&table);
        std::fs::write(dir.join(format!("audiences_{n}.sql")), &text)?;
        queries.push(serde_json::json!({"name": n.to_string(), "table": table, "sql": text}));
    }
    let load = cols.load(&plan.path.display().to_string());
    std::fs::write(dir.join("load.sql"), load.join(";\n"))?;
    let plan_path = dir.join("duckdb_plan.json");
    std::fs::write(
        &plan_path,
        serde_json::to_vec_pretty(&serde_json::json!({
            "threads": plan.settings.workers,
            "reps": plan.settings.reps,
            "out_dir": dir,
            "load": load,
            "profiles_sql": sql::profiles(),
            "queries": queries,
        }))?,
    )?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("duckdb_audiences.py");
    let out = std::process::Command::new(&args.python)
        .arg(&script)
        .arg(&plan_path)
        .env("PYTHONPATH", python_path()?)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {} {}", args.python, script.display()))?;
    if !out.status.success() {
        bail!("{} failed ({})", script.display(), out.status);
    }
    let text = String::from_utf8(out.stdout)?;
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last).with_context(|| format!("DuckDB report: {last}"))
}

// ---------------------------------------------------------------------------

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let all = settings(&args)?;
    let (dir, temporary) = match &args.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("weft-bench-audiences-{}", std::process::id())),
            true,
        ),
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    println!(
        "bench-audiences started {} on {} cores",
        weft_bench::gen::format_iso8601_ms(now_ms),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "definitions: {} computed traits; audiences from 10 templates, e.g. {}",
        computed_traits().len(),
        audience_definitions(1)[0].1
    );
    for settings in all {
        let dir = dir.join(format!("history-{}", settings.history));
        std::fs::create_dir_all(&dir)?;
        run_history(&args, settings, &dir.canonicalize()?)?;
    }
    println!(
        "peak RSS of this process: {:.2} GB",
        peak_rss_bytes() as f64 / 1e9
    );
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// Every audience count over one history: DuckDB, then Weft, then the check.
fn run_history(args: &Args, settings: Settings, dir: &Path) -> anyhow::Result<()> {
    let t = Instant::now();
    let plan = Arc::new(generate(&settings, dir)?);
    println!(
        "=== history of {} events + {} delta ({:.2} GB, {} bytes/event, {} people), {} workers, {} events per load batch; generated in {:.1}s",
        thousands(settings.history),
        thousands(settings.delta),
        plan.bytes as f64 / 1e9,
        plan.bytes / plan.total().max(1),
        thousands(plan.users),
        settings.workers,
        thousands(settings.batch),
        t.elapsed().as_secs_f64()
    );

    // DuckDB first: its process is gone (and its memory freed) before Weft runs.
    let duck = if args.no_duckdb {
        None
    } else {
        let d = run_duckdb(args, &plan, dir)?;
        println!(
            "duckdb {} ({} threads): load JSON lines -> table ({} rows, flattened columns) {:.2} s",
            d.duckdb,
            d.threads,
            thousands(d.rows),
            d.load_s
        );
        Some(d)
    };

    let mut names: Option<HashMap<IdHash, String>> = None;
    for &n in &settings.audiences {
        let r = run_weft(&plan, n)?;
        let secs = |d: Duration| d.as_secs_f64();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let profiles = {
            let mut p: Vec<ProfileId> = r.profiles.iter().map(|(_, p)| *p).collect();
            p.sort_unstable();
            p.dedup();
            p.len() as u64
        };
        println!(
            "--- {n} audiences over {} events ({} aggregates, 2 computed traits) ---",
            thousands(settings.history),
            r.aggregates
        );
        if let Some(p) = duck.as_ref().and_then(|d| d.profiles) {
            println!(
                "profiles: weft {} (full identity graph), duckdb {} (simplified identity): {}",
                thousands(profiles),
                thousands(p),
                if p == profiles { "equal" } else { "DIFFERENT" }
            );
        }
        println!(
            "weft load: {:.2} s = {:.0} events/s  ({} events, {} profiles)",
            secs(r.load),
            r.load_events as f64 / secs(r.load),
            thousands(r.load_events),
            thousands(profiles)
        );
        let mut single = r.singles.clone();
        single.sort();
        println!(
            "weft latency, single events (each alone, unloaded): p50 {:.2} ms  p99 {:.2} ms  ({} events)",
            ms(percentile(&single, 0.5)),
            ms(percentile(&single, 0.99)),
            single.len()
        );
        let mut lat = r.latencies.clone();
        lat.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            lat.get(((lat.len().max(1) - 1) as f64 * p).round() as usize)
                .copied()
                .unwrap_or_default()
        };
        println!(
            "weft latency at half the load rate ({:.0} events/s arriving): p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} events in {} rounds, {:.0} events/round)",
            r.rate / 2.0,
            pct(0.5),
            pct(0.99),
            lat.last().copied().unwrap_or_default(),
            thousands(r.latency_events),
            r.rounds,
            r.latency_events as f64 / r.rounds.max(1) as f64
        );
        println!(
            "weft memory: {:.2} GB live heap = {:.0} bytes/profile ({:.0} bytes/event)",
            r.heap_bytes as f64 / 1e9,
            r.heap_bytes as f64 / profiles.max(1) as f64,
            r.heap_bytes as f64 / settings.history.max(1) as f64
        );
        println!(
            "weft delta: {:.2} ms  ({} events at one logical time on {} history events)",
            ms(r.delta),
            thousands(settings.delta),
            thousands(settings.history)
        );
        if r.delta_time != plan.delta_time() {
            println!(
                "WARNING: the delta's logical time {} is not the time DuckDB evaluates at ({})",
                r.delta_time,
                plan.delta_time()
            );
        }
        let Some(d) = &duck else { continue };
        let q = &d.queries[&n.to_string()];
        println!(
            "duckdb full recompute: {:.2} ms  (best of {}; {} memberships)",
            q.best_s * 1e3,
            settings.reps,
            thousands(q.members)
        );
        println!(
            "ratio duckdb full recompute / weft delta: {:.2}x  (with duckdb's load: {:.2}x)",
            q.best_s / secs(r.delta),
            (q.best_s + d.load_s) / secs(r.delta)
        );
        if names.is_none() {
            names = Some(identifier_names(&plan.path)?);
        }
        let defs = audience_definitions(n);
        let weft = canonical_members(&r, names.as_ref().expect("set above"), &defs);
        let theirs = read_members(&dir.join(format!("duckdb_members_{n}.tsv")))?;
        let (only_weft, only_duck) = diff(&weft, &theirs);
        let non_empty = {
            let mut a: Vec<&str> = weft.iter().map(|(a, _)| a.as_str()).collect();
            a.dedup();
            a.len()
        };
        println!(
            "check: memberships {} ({} in weft, {} in duckdb; {non_empty} of {n} audiences non-empty; {} only in weft, {} only in duckdb)",
            if only_weft.is_empty() && only_duck.is_empty() {
                "MATCH"
            } else {
                "DIFFER"
            },
            thousands(weft.len() as u64),
            thousands(theirs.len() as u64),
            only_weft.len(),
            only_duck.len()
        );
        for (side, xs) in [("weft", &only_weft), ("duckdb", &only_duck)] {
            for x in xs.iter().take(5) {
                println!("  only in {side}: {} {}", x.0, x.1);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["bench-audiences"];
        argv.extend_from_slice(extra);
        Args::parse_from(argv)
    }

    #[test]
    fn configs_group_audience_counts_by_history() {
        let s = settings(&args(&[])).unwrap();
        let got: Vec<(u64, Vec<usize>)> =
            s.iter().map(|s| (s.history, s.audiences.clone())).collect();
        assert_eq!(got, vec![(5_000_000, vec![10]), (500_000, vec![10, 100])]);
        let s = settings(&args(&["--quick"])).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(
            (s[0].history, s[0].audiences.clone()),
            (50_000, vec![10, 100])
        );
        let s = settings(&args(&["--events", "1000", "--audiences", "3,4@2000,5"])).unwrap();
        let got: Vec<(u64, Vec<usize>)> =
            s.iter().map(|s| (s.history, s.audiences.clone())).collect();
        assert_eq!(got, vec![(1000, vec![3, 5]), (2000, vec![4])]);
        assert!(settings(&args(&["--audiences", "x"])).is_err());
    }

    #[test]
    fn diff_reports_both_sides() {
        let a = [1, 2, 4, 6];
        let b = [2, 3, 4, 7];
        let (only_a, only_b) = diff(&a, &b);
        assert_eq!(only_a, vec![&1, &6]);
        assert_eq!(only_b, vec![&3, &7]);
        assert_eq!(diff(&a, &a), (vec![], vec![]));
    }

    #[test]
    fn every_generated_definition_parses_and_compiles_to_sql() {
        let defs = audience_definitions(100);
        let mut cols = sql::Columns::default();
        let mut q = sql::Query::new(&mut cols, 1_000_000);
        for (name, query) in computed_traits() {
            q.computed_trait(&name, parse_computed_trait(&query).unwrap());
        }
        for (name, query) in &defs {
            let c = parse_audience(query).unwrap_or_else(|e| panic!("{name}: {e}"));
            q.audience(name, &c)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let text = q.finish("members");
        assert_eq!(text.matches("SELECT 'a0").count(), 100);
        let load = cols.load("events.jsonl").join("\n");
        assert!(load.contains("p_category_s"), "{load}");
        assert!(load.contains("c_network_wifi_b"), "{load}");
    }

    #[test]
    fn sql_tests_follow_weft_null_rules() {
        let mut cols = sql::Columns::default();
        let mut q = sql::Query::new(&mut cols, 10 * 86_400_000);
        let c = parse_audience(
            r#"trait.plan != "pro" and not trait.plan = "free" and count(track "X" within 1d) = 0"#,
        )
        .unwrap();
        q.audience("a", &c).unwrap();
        let text = q.finish("m");
        // A missing value differs from any literal, and fails `=`.
        assert!(text.contains("<> 'pro', true)"), "{text}");
        assert!(text.contains("= 'free', false)"), "{text}");
        // The window ends at now - 1d; an empty count is 0.
        assert!(
            text.contains(&format!("ts_ms > {}", 9 * 86_400_000)),
            "{text}"
        );
        assert!(text.contains("coalesce(g0, 0)"), "{text}");
    }
}
