//! A seeded, realistic generator of [Segment-spec] events as JSON lines.
//!
//! The generator simulates a web shop ("Acme Outfitters") with a web site, an
//! iOS and an Android app and a server-side integration:
//!
//! * a population of `users` people whose activity follows a Zipf-like
//!   distribution; each person has 1–3 devices (web browsers and/or mobile
//!   apps), 1–2 `anonymousId`s, one email address, a locale and an account;
//! * browsing *sessions* (bursts of events of one person on one device):
//!   `page` events on the web, `screen` events in the apps, and `track` events
//!   with a Zipf-like distribution of event names and spec-conformant
//!   properties (`Product Viewed`, `Product Added`, `Checkout Started`,
//!   `Order Completed`, `Signed Up`, `Email Opened`, `Subscription Started`…),
//!   including a coherent cart/checkout funnel within a session;
//! * anonymous visitors of which a share later `identify` (with `traits`
//!   `email`, `name`, `plan`, `createdAt`, `company`); after that their events
//!   carry `userId` and usually still the `anonymousId`. Logging in on another
//!   device triggers another `identify`, linking more anonymous ids;
//! * occasional `alias` (`previousId` = an anonymous id) and `group` calls;
//! * timestamps spread over `[start, start + span)`, roughly increasing through
//!   the file with out-of-order jitter of seconds to minutes; `originalTimestamp`
//!   (client clock, sometimes skewed), `sentAt` (after client-side batching),
//!   `receivedAt` (server clock) and `timestamp` (skew-corrected as Segment does:
//!   `receivedAt - (sentAt - originalTimestamp)`);
//! * client retries: exact duplicates of earlier good events (same `messageId`,
//!   same body) with a later `receivedAt`;
//! * malformed lines, cycling deterministically through [`malformed_kinds`].
//!
//! Output is byte-for-byte deterministic for a given [`GenConfig`]: all
//! randomness comes from one seeded [`SmallRng`] plus stateless hashing, no
//! hash-map iteration order and no wall clock is involved. Lines are
//! hand-formatted into a reused buffer (no `serde_json::Value` trees), so
//! generation runs at well over a million events per second on one core.
//!
//! Every line is a single record terminated by `\n`, valid UTF-8, without an
//! embedded newline. Good events are at most [`MAX_EVENT_BYTES`] long and have
//! `messageId`s of at most [`MAX_MESSAGE_ID_LEN`] characters.
//!
//! [Segment-spec]: https://segment.com/docs/connections/spec/

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Events larger than this many bytes (excluding the newline) are considered
/// oversize; the generator only exceeds it for the `oversize_event` kind.
pub const MAX_EVENT_BYTES: usize = 32 * 1024;

/// Longest `messageId` a good event carries; the `message_id_too_long`
/// malformed kind exceeds it.
pub const MAX_MESSAGE_ID_LEN: usize = 100;

/// `2026-01-01T00:00:00Z` in milliseconds since the Unix epoch, the default start.
pub const DEFAULT_START_MS: i64 = 1_767_225_600_000;

/// Milliseconds in one day.
pub const DAY_MS: i64 = 86_400_000;

/// The Segment call types a good event can have.
pub const EVENT_TYPES: &[&str] = &["track", "identify", "page", "screen", "group", "alias"];

/// Kinds of malformed lines, in the order the generator cycles through them.
const MALFORMED_KINDS: &[&str] = &[
    "truncated_json",
    "wrong_type",
    "missing_ids",
    "track_without_event",
    "invalid_timestamp",
    "message_id_too_long",
    "unknown_type",
    "json_array",
    "oversize_event",
    "empty_line",
];

/// Names of the malformed-line kinds, in the deterministic order in which the
/// generator cycles through them (the n-th malformed line of a file has kind
/// `malformed_kinds()[n % malformed_kinds().len()]`).
///
/// * `truncated_json`: a JSON object cut off in the middle;
/// * `wrong_type`: a field with the wrong JSON type (`"userId": {"a":1}`,
///   `"properties": 5`, a numeric `anonymousId` or `event`), rotating;
/// * `missing_ids`: neither `userId` nor `anonymousId`;
/// * `track_without_event`: a `track` call without `event`;
/// * `invalid_timestamp`: `timestamp`/`originalTimestamp` that are not valid
///   ISO-8601 date-times (`2026-13-45T25:61:99.000Z`, `not a timestamp`, …);
/// * `message_id_too_long`: a `messageId` longer than [`MAX_MESSAGE_ID_LEN`];
/// * `unknown_type`: a `type` that is not a Segment call type;
/// * `json_array`: a JSON array (holding an event) instead of an object;
/// * `oversize_event`: valid JSON longer than [`MAX_EVENT_BYTES`];
/// * `empty_line`: an empty line.
pub fn malformed_kinds() -> &'static [&'static str] {
    MALFORMED_KINDS
}

/// Default number of distinct people for a file of `events` lines:
/// `events / 20`, at least 10.
pub fn default_users(events: u64) -> u64 {
    (events / 20).max(10)
}

/// Configuration of a generated event file.
#[derive(Debug, Clone, PartialEq)]
pub struct GenConfig {
    /// Total number of lines to write (good events + duplicates + malformed).
    pub events: u64,
    /// Seed of the random number generator; equal configs give equal bytes.
    pub seed: u64,
    /// Probability that a line is a re-emitted earlier good event (a retry).
    pub duplicate_rate: f64,
    /// Probability that a line is malformed.
    pub malformed_rate: f64,
    /// Number of distinct people; `0` means [`default_users`]`(events)`.
    pub users: u64,
    /// Start of the event-time window, milliseconds since the Unix epoch.
    pub start_ms: i64,
    /// Length of the event-time window in milliseconds (must be positive).
    pub span_ms: i64,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig::with_events(1_000_000)
    }
}

impl GenConfig {
    /// The default configuration for `events` lines: seed 42, 2 % duplicates,
    /// 0.1 % malformed, [`default_users`]`(events)` people, 30 days starting at
    /// `2026-01-01T00:00:00Z`.
    pub fn with_events(events: u64) -> Self {
        GenConfig {
            events,
            seed: 42,
            duplicate_rate: 0.02,
            malformed_rate: 0.001,
            users: default_users(events),
            start_ms: DEFAULT_START_MS,
            span_ms: 30 * DAY_MS,
        }
    }

    fn validate(&self) -> io::Result<()> {
        let bad = |msg: String| Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
        let rate_ok = |r: f64| r.is_finite() && (0.0..=1.0).contains(&r);
        if !rate_ok(self.duplicate_rate) || !rate_ok(self.malformed_rate) {
            return bad(format!(
                "duplicate_rate ({}) and malformed_rate ({}) must be within [0, 1]",
                self.duplicate_rate, self.malformed_rate
            ));
        }
        if self.duplicate_rate + self.malformed_rate > 1.0 {
            return bad("duplicate_rate + malformed_rate must not exceed 1".into());
        }
        if self.span_ms <= 0 {
            return bad(format!("span_ms must be positive, got {}", self.span_ms));
        }
        // Keep every rendered timestamp (including createdAt, up to two years
        // earlier, and retries, hours later) within years 1972..=9998.
        const MIN: i64 = 2 * 366 * DAY_MS + 2 * DAY_MS;
        const MAX: i64 = 253_370_764_800_000; // 9998-12-31T00:00:00Z
        if self.start_ms < MIN
            || self
                .start_ms
                .checked_add(self.span_ms)
                .is_none_or(|e| e > MAX)
        {
            return bad("start_ms/span_ms must keep timestamps within 1972..9998".into());
        }
        Ok(())
    }

    fn effective_users(&self) -> u64 {
        if self.users == 0 {
            default_users(self.events)
        } else {
            self.users
        }
    }
}

/// Counts of what a generation run wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GenStats {
    /// Lines written in total (good events + duplicates + malformed).
    pub events: u64,
    /// Lines that re-emit an earlier good event.
    pub duplicates: u64,
    /// Malformed lines.
    pub malformed: u64,
    /// Uncompressed bytes written, newlines included.
    pub bytes: u64,
}

/// What kind of line [`Generator::next_into`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// A good, first-time event.
    Event,
    /// A re-emission (client retry) of an earlier good event: same
    /// `messageId` and body, later `receivedAt`.
    Duplicate,
    /// A malformed line of the named kind (one of [`malformed_kinds`]).
    Malformed(&'static str),
}

/// Writes `cfg.events` JSON lines to `out` (buffered internally) and returns
/// what was written. Fails with `InvalidInput` on an invalid configuration.
pub fn generate<W: Write>(cfg: &GenConfig, out: W) -> io::Result<GenStats> {
    let mut gen = Generator::new(cfg)?;
    let mut w = BufWriter::with_capacity(1 << 20, out);
    let mut line = Vec::with_capacity(64 * 1024);
    loop {
        line.clear();
        if gen.next_into(&mut line).is_none() {
            break;
        }
        w.write_all(&line)?;
    }
    w.flush()?;
    Ok(gen.stats())
}

/// Like [`generate`], writing to a file at `path`, gzip-compressed when the
/// path ends with `.gz`. [`GenStats::bytes`] counts uncompressed bytes.
pub fn generate_to_path(cfg: &GenConfig, path: &Path) -> io::Result<GenStats> {
    cfg.validate()?;
    let file = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let gz = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"));
    if gz {
        let mut enc = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        let stats = generate(cfg, &mut enc)?;
        let mut file = enc.finish()?;
        file.flush()?;
        Ok(stats)
    } else {
        let mut file = file;
        let stats = generate(cfg, &mut file)?;
        file.flush()?;
        Ok(stats)
    }
}

// ---------------------------------------------------------------------------
// Timestamps
// ---------------------------------------------------------------------------

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = (z - era * 146_097) as u64;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe as i64 + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = (y - era * 400) as u64;
    let mp = if m > 2 { m - 3 } else { m + 9 } as u64;
    let doy = (153 * mp + 2) / 5 + d as u64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe as i64 - 719_468
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

#[inline]
fn push2(buf: &mut Vec<u8>, v: u32) {
    buf.push(b'0' + (v / 10) as u8);
    buf.push(b'0' + (v % 10) as u8);
}

/// Appends `ms` (milliseconds since the Unix epoch, years 0–9999) as
/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, without quotes.
pub fn write_iso8601_ms(buf: &mut Vec<u8>, ms: i64) {
    let days = ms.div_euclid(DAY_MS);
    let rem = ms.rem_euclid(DAY_MS) as u32;
    let (y, m, d) = civil_from_days(days);
    let y = y.clamp(0, 9999) as u32;
    push2(buf, y / 100);
    push2(buf, y % 100);
    buf.push(b'-');
    push2(buf, m);
    buf.push(b'-');
    push2(buf, d);
    buf.push(b'T');
    let secs = rem / 1000;
    push2(buf, secs / 3600);
    buf.push(b':');
    push2(buf, secs / 60 % 60);
    buf.push(b':');
    push2(buf, secs % 60);
    buf.push(b'.');
    let milli = rem % 1000;
    buf.push(b'0' + (milli / 100) as u8);
    push2(buf, milli % 100);
    buf.push(b'Z');
}

/// Formats `ms` (milliseconds since the Unix epoch) as
/// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_iso8601_ms(ms: i64) -> String {
    let mut buf = Vec::with_capacity(24);
    write_iso8601_ms(&mut buf, ms);
    String::from_utf8(buf).expect("timestamps are ASCII")
}

/// Parses a strict ISO-8601 / RFC 3339 UTC date-time into milliseconds since
/// the Unix epoch.
///
/// Accepts `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM:SS`, optional fractional seconds
/// (truncated to milliseconds) and a `Z` or `±HH:MM` offset (a missing offset
/// means UTC). Out-of-range fields (month 13, February 30, hour 24, …) are
/// rejected.
pub fn parse_iso8601_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = b.get(r)?;
        part.iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + (c - b'0') as u32)
        })
    };
    let y = digits(0..4)? as i64;
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    let (m, d) = (digits(5..7)?, digits(8..10)?);
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return None;
    }
    let day_ms = days_from_civil(y, m, d) * DAY_MS;
    if b.len() == 10 {
        return Some(day_ms);
    }
    if b.get(10) != Some(&b'T') || b.get(13) != Some(&b':') || b.get(16) != Some(&b':') {
        return None;
    }
    let (hh, mm, ss) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if hh > 23 || mm > 59 || ss > 59 {
        return None;
    }
    let mut ms = day_ms + ((hh * 3600 + mm * 60 + ss) as i64) * 1000;
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        let mut frac = 0i64;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 3 {
                frac = frac * 10 + (b[i] - b'0') as i64;
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 || n > 9 {
            return None;
        }
        for _ in n..3 {
            frac *= 10;
        }
        ms += frac;
    }
    match b.get(i) {
        None => Some(ms),
        Some(b'Z') if i + 1 == b.len() => Some(ms),
        Some(&sign @ (b'+' | b'-')) if b.len() == i + 6 && b[i + 3] == b':' => {
            let (oh, om) = (digits(i + 1..i + 3)?, digits(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let off = ((oh * 60 + om) as i64) * 60_000;
            Some(if sign == b'+' { ms - off } else { ms + off })
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Formatting helpers
// ---------------------------------------------------------------------------

/// Appends `s` JSON-escaped, without quotes.
#[inline]
fn esc(buf: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    if !bytes.iter().any(|&c| c == b'"' || c == b'\\' || c < 0x20) {
        buf.extend_from_slice(bytes);
        return;
    }
    for &c in bytes {
        match c {
            b'"' => buf.extend_from_slice(b"\\\""),
            b'\\' => buf.extend_from_slice(b"\\\\"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            b'\t' => buf.extend_from_slice(b"\\t"),
            c if c < 0x20 => {
                buf.extend_from_slice(b"\\u00");
                hex(buf, c as u64, 2, false);
            }
            c => buf.push(c),
        }
    }
}

/// Appends `s` as a quoted, escaped JSON string.
#[inline]
fn jstr(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
    esc(buf, s);
    buf.push(b'"');
}

#[inline]
fn raw(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(s.as_bytes());
}

#[inline]
fn num(buf: &mut Vec<u8>, mut v: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.extend_from_slice(&tmp[i..]);
}

/// Appends an amount of cents as a JSON number with two decimals.
#[inline]
fn money(buf: &mut Vec<u8>, cents: u64) {
    num(buf, cents / 100);
    buf.push(b'.');
    push2(buf, (cents % 100) as u32);
}

#[inline]
fn hex(buf: &mut Vec<u8>, v: u64, digits: u32, upper: bool) {
    let table: &[u8; 16] = if upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    for i in (0..digits).rev() {
        buf.push(table[((v >> (i * 4)) & 0xF) as usize]);
    }
}

/// Appends a version-4 UUID built from 128 random bits.
fn uuid(buf: &mut Vec<u8>, a: u64, b: u64, upper: bool) {
    let a = (a & !(0xF << 12)) | (0x4 << 12);
    let b = (b & !(0x3 << 62)) | (0x2 << 62);
    hex(buf, a >> 32, 8, upper);
    buf.push(b'-');
    hex(buf, (a >> 16) & 0xFFFF, 4, upper);
    buf.push(b'-');
    hex(buf, a & 0xFFFF, 4, upper);
    buf.push(b'-');
    hex(buf, b >> 48, 4, upper);
    buf.push(b'-');
    hex(buf, b & 0xFFFF_FFFF_FFFF, 12, upper);
}

/// Appends `s` URL-encoded for a query string (space as `+`).
fn url_encode(buf: &mut Vec<u8>, s: &str) {
    for &c in s.as_bytes() {
        match c {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => buf.push(c),
            b' ' => buf.push(b'+'),
            c => {
                buf.push(b'%');
                hex(buf, c as u64, 2, true);
            }
        }
    }
}

/// Appends `s` lower-cased with spaces as hyphens (ASCII input).
fn slugify(buf: &mut Vec<u8>, s: &str) {
    for &c in s.as_bytes() {
        match c {
            b' ' => buf.push(b'-'),
            c => buf.push(c.to_ascii_lowercase()),
        }
    }
}

// ---------------------------------------------------------------------------
// Hashing and sampling
// ---------------------------------------------------------------------------

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64 finalizer: a bijection on `u64` with good avalanche.
#[inline]
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[inline]
fn h2(a: u64, b: u64) -> u64 {
    mix64(a ^ mix64(b.wrapping_add(GOLDEN)))
}

/// Picks an index from integer weights using a uniform `u64`.
#[inline]
fn wpick(r: u64, weights: &[u32]) -> usize {
    let total: u64 = weights.iter().map(|&w| w as u64).sum();
    let mut x = r % total;
    for (i, &w) in weights.iter().enumerate() {
        if x < w as u64 {
            return i;
        }
        x -= w as u64;
    }
    weights.len() - 1
}

/// Continuous approximation of a Zipf distribution over ranks `0..n`
/// (rank 0 most frequent), sampled by inverting the CDF in O(1).
#[derive(Debug, Clone, Copy)]
struct Zipf {
    n: f64,
    s: f64,
    a: f64,
}

impl Zipf {
    fn new(n: u64, s: f64) -> Self {
        let n = n.max(1) as f64;
        let a = if s == 1.0 {
            (n + 1.0).ln()
        } else {
            (n + 1.0).powf(1.0 - s) - 1.0
        };
        Zipf { n, s, a }
    }

    #[inline]
    fn sample(&self, u: f64) -> u64 {
        let x = if self.s == 1.0 {
            (self.a * u).exp()
        } else {
            (self.a * u + 1.0).powf(1.0 / (1.0 - self.s))
        };
        (x.max(1.0).min(self.n) as u64).max(1) - 1
    }
}

// ---------------------------------------------------------------------------
// Static vocabulary
// ---------------------------------------------------------------------------

const ORIGIN: &str = "https://www.acme-outfitters.com";
const SHOP: &str = "Acme Outfitters";

/// (display name, ASCII form for email addresses)
const FIRST_NAMES: &[(&str, &str)] = &[
    ("James", "james"),
    ("Mary", "mary"),
    ("Robert", "robert"),
    ("Patricia", "patricia"),
    ("John", "john"),
    ("Jennifer", "jennifer"),
    ("Michael", "michael"),
    ("Linda", "linda"),
    ("David", "david"),
    ("Elizabeth", "elizabeth"),
    ("William", "william"),
    ("Sarah", "sarah"),
    ("Emma", "emma"),
    ("Olivia", "olivia"),
    ("Noah", "noah"),
    ("Liam", "liam"),
    ("Sofía", "sofia"),
    ("José", "jose"),
    ("Zoë", "zoe"),
    ("Chloé", "chloe"),
    ("Søren", "soren"),
    ("Björn", "bjorn"),
    ("Łukasz", "lukasz"),
    ("Amélie", "amelie"),
    ("Mei", "mei"),
    ("Hiroshi", "hiroshi"),
    ("Yuki", "yuki"),
    ("Aarav", "aarav"),
    ("Priya", "priya"),
    ("Ngozi", "ngozi"),
    ("Chidi", "chidi"),
    ("Fatima", "fatima"),
    ("Omar", "omar"),
    ("Lucas", "lucas"),
    ("Gabriel", "gabriel"),
    ("Ana", "ana"),
    ("Mateo", "mateo"),
    ("Lena", "lena"),
    ("Felix", "felix"),
    ("Ingrid", "ingrid"),
];

const LAST_NAMES: &[(&str, &str)] = &[
    ("Smith", "smith"),
    ("Johnson", "johnson"),
    ("Williams", "williams"),
    ("Brown", "brown"),
    ("Jones", "jones"),
    ("Miller", "miller"),
    ("Davis", "davis"),
    ("Wilson", "wilson"),
    ("Anderson", "anderson"),
    ("Taylor", "taylor"),
    ("Thomas", "thomas"),
    ("Moore", "moore"),
    ("García", "garcia"),
    ("Martínez", "martinez"),
    ("Rodríguez", "rodriguez"),
    ("López", "lopez"),
    ("Müller", "mueller"),
    ("Schmidt", "schmidt"),
    ("Schäfer", "schaefer"),
    ("Dubois", "dubois"),
    ("Lefèvre", "lefevre"),
    ("O'Brien", "obrien"),
    ("Kowalski", "kowalski"),
    ("Nowak", "nowak"),
    ("Nguyen", "nguyen"),
    ("Tanaka", "tanaka"),
    ("Sato", "sato"),
    ("Kim", "kim"),
    ("Chen", "chen"),
    ("Wang", "wang"),
    ("Patel", "patel"),
    ("Sharma", "sharma"),
    ("Okafor", "okafor"),
    ("Adeyemi", "adeyemi"),
    ("Silva", "silva"),
    ("Santos", "santos"),
    ("Jensen", "jensen"),
    ("Lindqvist", "lindqvist"),
    ("Rossi", "rossi"),
    ("Novák", "novak"),
];

const EMAIL_DOMAINS: &[&str] = &[
    "gmail.com",
    "yahoo.com",
    "outlook.com",
    "hotmail.com",
    "icloud.com",
    "proton.me",
    "gmx.de",
];
/// Weights of [`EMAIL_DOMAINS`] plus a final weight for the company domain.
const EMAIL_DOMAIN_WEIGHTS: &[u32] = &[40, 8, 8, 5, 7, 3, 2, 27];

/// (locale, timezone, currency, weight)
const LOCALES: &[(&str, &str, &str, u32)] = &[
    ("en-US", "America/New_York", "USD", 22),
    ("en-US", "America/Chicago", "USD", 10),
    ("en-US", "America/Los_Angeles", "USD", 14),
    ("en-GB", "Europe/London", "GBP", 10),
    ("de-DE", "Europe/Berlin", "EUR", 9),
    ("fr-FR", "Europe/Paris", "EUR", 7),
    ("es-ES", "Europe/Madrid", "EUR", 5),
    ("nl-NL", "Europe/Amsterdam", "EUR", 3),
    ("pt-BR", "America/Sao_Paulo", "USD", 6),
    ("ja-JP", "Asia/Tokyo", "USD", 4),
    ("en-IN", "Asia/Kolkata", "USD", 5),
    ("en-AU", "Australia/Sydney", "USD", 5),
];

const PLANS: &[&str] = &["free", "pro", "enterprise"];
const PLAN_WEIGHTS: &[u32] = &[60, 30, 10];

const COMPANY_A: &[&str] = &[
    "Acme",
    "Globex",
    "Initech",
    "Umbrella",
    "Hooli",
    "Stark",
    "Wayne",
    "Wonka",
    "Soylent",
    "Cyberdyne",
    "Tyrell",
    "Vandelay",
    "Pied Piper",
    "Aperture",
    "Black Mesa",
    "Oscorp",
    "Gringotts",
    "Monarch",
    "Nakatomi",
    "Dunder Mifflin",
];
const COMPANY_B: &[&str] = &[
    "Labs",
    "Logistics",
    "Analytics",
    "Foods",
    "Systems",
    "Health",
    "Capital",
    "Media",
    "Robotics",
    "Studios",
    "Energy",
    "Outdoors",
];
const COMPANY_C: &[&str] = &["", " Inc.", " LLC", " GmbH", " Ltd", " Group"];
const INDUSTRIES: &[&str] = &[
    "Retail",
    "Software",
    "Logistics",
    "Healthcare",
    "Financial Services",
    "Manufacturing",
    "Media",
    "Education",
    "Hospitality",
    "Non-profit",
];

/// (slug, display name, SKU code, nouns, min price cents, max price cents)
type Category = (
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
    u32,
    u32,
);
const CATEGORIES: &[Category] = &[
    (
        "shoes",
        "Shoes",
        "SHO",
        &[
            "Sneakers",
            "Trail Runners",
            "Loafers",
            "Chelsea Boots",
            "Sandals",
            "High-Tops",
        ],
        4900,
        18900,
    ),
    (
        "shirts",
        "Shirts",
        "SHR",
        &[
            "Oxford Shirt",
            "Linen Shirt",
            "Graphic Tee",
            "Flannel Shirt",
            "Polo",
            "Henley",
        ],
        1900,
        8900,
    ),
    (
        "bags",
        "Bags",
        "BAG",
        &[
            "Weekender",
            "Backpack",
            "Tote",
            "Messenger Bag",
            "Duffel",
            "Crossbody Bag",
        ],
        3900,
        24900,
    ),
    (
        "hats",
        "Hats",
        "HAT",
        &[
            "Beanie",
            "Baseball Cap",
            "Bucket Hat",
            "Sun Hat",
            "Trucker Cap",
        ],
        1500,
        4900,
    ),
    (
        "jackets",
        "Jackets",
        "JKT",
        &[
            "Rain Shell",
            "Puffer Jacket",
            "Denim Jacket",
            "Fleece",
            "Parka",
            "Bomber",
        ],
        6900,
        29900,
    ),
    (
        "pants",
        "Pants",
        "PNT",
        &["Chinos", "Jeans", "Joggers", "Cargo Pants", "Shorts"],
        3900,
        12900,
    ),
    (
        "socks",
        "Socks",
        "SCK",
        &["Crew Socks", "Ankle Socks", "Wool Socks", "Running Socks"],
        900,
        2900,
    ),
    (
        "accessories",
        "Accessories",
        "ACC",
        &["Belt", "Wallet", "Scarf", "Gloves", "Keychain"],
        1200,
        7900,
    ),
    (
        "watches",
        "Watches",
        "WCH",
        &["Field Watch", "Dive Watch", "Chronograph", "Watch Strap"],
        4900,
        39900,
    ),
    (
        "sunglasses",
        "Sunglasses",
        "SUN",
        &["Aviators", "Wayfarers", "Round Sunglasses", "Sport Shades"],
        2900,
        18900,
    ),
];
const ADJECTIVES: &[&str] = &[
    "Classic",
    "Urban",
    "Alpine",
    "Vintage",
    "Everyday",
    "Lightweight",
    "Premium",
    "Coastal",
    "Midnight",
    "Organic",
    "Heritage",
    "Nomad",
    "Summit",
    "Harbor",
    "Canyon",
    "Metro",
];
const COLORS: &[&str] = &[
    "Black",
    "White",
    "Navy",
    "Olive",
    "Sand",
    "Rust",
    "Heather Grey",
    "Forest",
];
const BRANDS: &[&str] = &[
    "Acme",
    "Northwind",
    "Trailhead",
    "Bluebird",
    "Ironwood",
    "Saltwater",
];
const N_PRODUCTS: usize = 480;

const BLOG_POSTS: &[(&str, &str)] = &[
    (
        "how-to-choose-trail-runners",
        "How to Choose Trail Runners: A Field Guide",
    ),
    ("spring-2026-lookbook", "Spring 2026 Lookbook"),
    (
        "caring-for-leather-bags",
        "Caring for Leather Bags (The Right Way)",
    ),
    (
        "zero-waste-wardrobe",
        "The \"Zero-Waste\" Wardrobe, Explained",
    ),
    ("weekend-packing-list", "The Ultimate Weekend Packing List"),
    ("behind-the-seams", "Behind the Seams: Our Factory in Porto"),
    (
        "layering-101",
        "Layering 101 — Staying Warm Without the Bulk",
    ),
    ("sock-science", "Sock Science: Wool vs. Cotton"),
    (
        "customer-stories-mei",
        "Customer Stories: Mei's 3,000 km Walk",
    ),
    ("sustainability-report-2025", "Sustainability Report 2025"),
    ("sunglasses-uv-guide", "UV400, Polarized & Why It Matters"),
    ("gift-guide-under-50", "Gift Guide: Under $50"),
];
const HELP_PAGES: &[(&str, &str)] = &[
    ("returns", "Returns & Exchanges"),
    ("shipping", "Shipping Information"),
    ("size-guide", "Size Guide"),
    ("order-status", "Where's My Order?"),
];
const SEARCH_QUERIES: &[&str] = &[
    "running shoes",
    "rain jacket",
    "leather bag",
    "wool socks",
    "backpack",
    "beanie",
    "gift card",
    "\"waterproof\" boots",
    "chinos slim fit",
    "polarized sunglasses",
    "crossbody",
    "jacke größe m",
    "sale",
    "zapatillas",
    "tote bag 👜",
    "field watch",
];
const REVIEWS: &[&str] = &[
    "Great fit, true to size.",
    "Comfy but runs a little small — order half a size up.",
    "Fell apart after 2 months 😞",
    "Perfect for travel! 👍",
    "Colour is more \"olive\" than in the photos.",
    "Très bonne qualité, je recommande.",
    "Sehr bequem. Würde wieder kaufen.",
    "Good value for the price.",
    "Shipping took forever\\but the product is great.",
];
/// (id, subject, campaign name)
const EMAIL_CAMPAIGNS: &[(&str, &str, &str)] = &[
    (
        "cmp_spring_sale",
        "Spring Sale: 25% off everything 🌱",
        "spring_sale",
    ),
    (
        "cmp_welcome",
        "Welcome to Acme Outfitters",
        "welcome_series",
    ),
    (
        "cmp_cart_reminder",
        "You left something in your cart",
        "abandoned_cart",
    ),
    ("cmp_new_arrivals", "New arrivals are here", "new_arrivals"),
    ("cmp_review_request", "How did we do?", "review_request"),
];
/// (id, name, creative)
const PROMOTIONS: &[(&str, &str, &str)] = &[
    (
        "promo_free_shipping",
        "Free Shipping Over $75",
        "banner_top",
    ),
    ("promo_spring25", "Spring Sale 25%", "hero_carousel"),
    ("promo_members", "Members get 10% back", "sidebar"),
];
const COUPONS: &[(&str, &str, u64)] = &[
    ("SPRING25", "Spring Sale", 25),
    ("WELCOME10", "Welcome Offer", 10),
    ("FREESHIP", "Free Shipping", 0),
    ("VIP15", "VIP Customers", 15),
];
const SIGNUP_METHODS: &[&str] = &["email", "google", "apple", "facebook"];
const CANCEL_REASONS: &[&str] = &[
    "too_expensive",
    "not_using",
    "switched_competitor",
    "missing_features",
    "other",
];

/// External referrers of landing pages ("" = direct traffic).
const REFERRERS: &[&str] = &[
    "",
    "https://www.google.com/",
    "https://www.bing.com/",
    "https://duckduckgo.com/",
    "https://t.co/",
    "https://l.facebook.com/",
    "https://l.instagram.com/",
    "https://news.ycombinator.com/",
    "https://www.reddit.com/",
    "https://mail.google.com/",
    "https://www.pinterest.com/",
];
const REFERRER_WEIGHTS: &[u32] = &[35, 30, 4, 3, 4, 5, 5, 2, 4, 5, 3];
/// (utm_campaign, utm_source, utm_medium)
const CAMPAIGNS: &[(&str, &str, &str)] = &[
    ("spring_sale", "newsletter", "email"),
    ("brand_search", "google", "cpc"),
    ("summer_drop", "instagram", "social"),
    ("retargeting_q1", "facebook", "paid_social"),
    ("launch_week", "twitter", "social"),
];

const WEB_USER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.80",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.82 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
];
const WEB_UA_WEIGHTS: &[u32] = &[30, 14, 12, 6, 8, 16, 10, 4];
const WEB_LIBRARIES: &[(&str, &str)] = &[
    ("analytics.js", "next-1.64.0"),
    ("analytics.js", "next-1.62.1"),
    ("analytics.js", "4.1.0"),
];
/// (machine model, marketing name, screen width, screen height)
const IOS_MODELS: &[(&str, &str, u32, u32)] = &[
    ("iPhone15,2", "iPhone 14 Pro", 393, 852),
    ("iPhone16,1", "iPhone 15 Pro", 393, 852),
    ("iPhone14,5", "iPhone 13", 390, 844),
    ("iPhone12,1", "iPhone 11", 414, 896),
    ("iPad13,4", "iPad Pro", 834, 1194),
];
const IOS_VERSIONS: &[&str] = &["17.4.1", "17.2", "16.7.5", "18.1"];
const IOS_LIBRARIES: &[(&str, &str)] = &[("analytics-ios", "4.1.8"), ("analytics-swift", "1.5.11")];
/// (manufacturer, model, screen width, screen height)
const ANDROID_MODELS: &[(&str, &str, u32, u32)] = &[
    ("samsung", "SM-S918B", 384, 854),
    ("Google", "Pixel 8", 412, 915),
    ("Google", "Pixel 7a", 412, 915),
    ("OnePlus", "CPH2449", 412, 919),
    ("Xiaomi", "2201116SG", 393, 873),
    ("samsung", "SM-A546B", 384, 854),
];
const ANDROID_VERSIONS: &[&str] = &["14", "13", "12"];
const ANDROID_LIBRARIES: &[(&str, &str)] = &[
    ("analytics-kotlin", "1.15.0"),
    ("analytics-android", "4.11.3"),
];
/// (version, build)
const APP_VERSIONS: &[(&str, &str)] = &[("5.2.1", "5210"), ("5.2.0", "5200"), ("5.1.3", "5130")];
const CARRIERS: &[&str] = &[
    "T-Mobile",
    "Verizon",
    "AT&T",
    "Vodafone",
    "O2",
    "Orange",
    "Telefónica",
];
const SERVER_LIBRARY: (&str, &str) = ("analytics-node-next", "1.6.0");

/// (Segment event name, Zipf-like weight ≈ 1000 / rank^1.1)
const TRACK_EVENTS: &[(&str, u32)] = &[
    ("Product Viewed", 1000),
    ("Product List Viewed", 466),
    ("Product Added", 299),
    ("Products Searched", 218),
    ("Cart Viewed", 170),
    ("Product Clicked", 139),
    ("Email Opened", 118),
    ("Checkout Started", 101),
    ("Product Removed", 89),
    ("Application Opened", 79),
    ("Order Completed", 71),
    ("Signed Up", 65),
    ("Email Link Clicked", 59),
    ("Coupon Applied", 55),
    ("Subscription Started", 51),
    ("Promotion Viewed", 47),
    ("Product Reviewed", 44),
    ("Subscription Cancelled", 41),
    ("Application Backgrounded", 39),
    ("Wishlist Product Added", 37),
];
const EV_PRODUCT_VIEWED: usize = 0;
const EV_PRODUCT_LIST_VIEWED: usize = 1;
const EV_PRODUCT_ADDED: usize = 2;
const EV_PRODUCTS_SEARCHED: usize = 3;
const EV_CART_VIEWED: usize = 4;
const EV_PRODUCT_CLICKED: usize = 5;
const EV_EMAIL_OPENED: usize = 6;
const EV_CHECKOUT_STARTED: usize = 7;
const EV_PRODUCT_REMOVED: usize = 8;
const EV_APP_OPENED: usize = 9;
const EV_ORDER_COMPLETED: usize = 10;
const EV_SIGNED_UP: usize = 11;
const EV_EMAIL_CLICKED: usize = 12;
const EV_COUPON_APPLIED: usize = 13;
const EV_SUB_STARTED: usize = 14;
const EV_PROMOTION_VIEWED: usize = 15;
const EV_PRODUCT_REVIEWED: usize = 16;
const EV_SUB_CANCELLED: usize = 17;
const EV_APP_BACKGROUNDED: usize = 18;
const EV_WISHLIST_ADDED: usize = 19;

const PK_HOME: u8 = 0;
const PK_PRICING: u8 = 1;
const PK_PRODUCT: u8 = 2;
const PK_COLLECTION: u8 = 3;
const PK_BLOG: u8 = 4;
const PK_CART: u8 = 5;
const PK_CHECKOUT: u8 = 6;
const PK_SEARCH: u8 = 7;
const PK_ACCOUNT: u8 = 8;
const PK_SIGNUP: u8 = 9;
const PK_ABOUT: u8 = 10;
const PK_HELP: u8 = 11;
/// Weights of the page kinds above, in order.
const PAGE_WEIGHTS: &[u32] = &[14, 6, 30, 12, 8, 7, 4, 7, 4, 3, 2, 3];
const PAGE_NAMES: &[&str] = &[
    "Home",
    "Pricing",
    "Product",
    "Collection",
    "Blog Post",
    "Cart",
    "Checkout",
    "Search Results",
    "Account",
    "Sign Up",
    "About",
    "Help",
];
/// (screen name, weight)
const SCREENS: &[(&str, u32)] = &[
    ("Home", 20),
    ("Product Detail", 30),
    ("Category", 12),
    ("Search", 8),
    ("Cart", 8),
    ("Checkout", 4),
    ("Account", 4),
    ("Order History", 3),
    ("Settings", 2),
];

const BAD_TYPES: &[&str] = &["purchase", "Track", "pageview", "event", "trak"];
const BAD_TIMESTAMPS: &[&str] = &[
    "2026-13-45T25:61:99.000Z",
    "not a timestamp",
    "",
    "2026-02-30T10:00:00.000Z",
    "1767225600000",
    "2026-01-03 10:04:05",
];

// ---------------------------------------------------------------------------
// Model
// ---------------------------------------------------------------------------

struct Product {
    id: String,
    sku: String,
    category: usize,
    name: String,
    slug: String,
    brand: &'static str,
    variant: &'static str,
    price: u64,
}

fn build_catalog() -> Vec<Product> {
    (0..N_PRODUCTS)
        .map(|i| {
            let h = h2(0x0CA7_A10C, i as u64);
            let cat = i % CATEGORIES.len();
            let j = i / CATEGORIES.len();
            let (_, _, code, nouns, lo, hi) = CATEGORIES[cat];
            let adj = ADJECTIVES[j % ADJECTIVES.len()];
            let noun = nouns[(h % nouns.len() as u64) as usize];
            // (category, adjective, colour) is unique per product, so slugs are too.
            let variant = COLORS[(j / ADJECTIVES.len() * 3 + cat) % COLORS.len()];
            let name = format!("{adj} {noun}");
            let mut slug = Vec::new();
            slugify(&mut slug, &name);
            slug.push(b'-');
            slugify(&mut slug, variant);
            let mut id = Vec::new();
            hex(&mut id, mix64(h), 16, false);
            hex(&mut id, h >> 32, 8, false);
            let dollars = (lo / 100) as u64 + (h >> 20) % ((hi - lo) / 100) as u64;
            Product {
                id: String::from_utf8(id).expect("ascii"),
                sku: format!("{code}-{i:05}"),
                category: cat,
                name,
                slug: String::from_utf8(slug).expect("ascii"),
                brand: BRANDS[((h >> 40) % BRANDS.len() as u64) as usize],
                variant,
                price: dollars * 100 + 99,
            }
        })
        .collect()
}

const F_IDENTIFIED: u8 = 1;
const F_ALIASED: u8 = 2;
const F_GROUPED: u8 = 4;
const F_DEVICE_SEEN: u8 = 8; // three bits: 8, 16, 32

#[derive(Clone, Copy, Default)]
struct PersonState {
    events: u32,
    flags: u8,
}

/// Stateless attributes of a person, derived by hashing its index.
#[derive(Clone, Copy)]
struct Person {
    idx: u64,
    h: u64,
    user_id: u64,
    first: usize,
    last: usize,
    email_style: u64,
    email_domain: usize,
    locale: usize,
    n_dev: u8,
    n_anon: u8,
    will_identify: bool,
    threshold: u32,
    plan: usize,
    account: u64,
    created_days_ago: i64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum DevKind {
    Web,
    Ios,
    Android,
}

#[derive(Clone, Copy)]
struct Device {
    k: u8,
    kind: DevKind,
    h: u64,
    model: usize,
    os: usize,
    ua: usize,
    lib: usize,
    app: usize,
    ip: u64,
    skew_ms: i64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Channel {
    Client,
    Server,
}

#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct PageRef {
    kind: u8,
    arg: u16,
    /// 0 = no UTM campaign, else index + 1 into [`CAMPAIGNS`].
    campaign: u8,
}

#[derive(Clone, Copy, Default)]
struct Session {
    person: u64,
    device: u8,
    remaining: u32,
    events: u32,
    cur: Option<PageRef>,
    prev: Option<PageRef>,
    ext_ref: u8,
    last_product: Option<u16>,
    cart: [(u16, u8); 4],
    cart_len: u8,
    cart_id: u64,
    order_id: u64,
}

enum Action {
    Page,
    Screen,
    Track(usize),
    Identify,
    Alias,
    Group,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Bad {
    None,
    WrongType(u64),
    MissingIds,
    NoEvent,
    InvalidTimestamp(u64),
    LongId,
    UnknownType(u64),
    Oversize,
}

const RING: usize = 2048;

/// A slot of the retry ring: an emitted good event up to and including
/// `"receivedAt":"`, and its `receivedAt`.
#[derive(Default)]
struct RingSlot {
    prefix: Vec<u8>,
    received_ms: i64,
}

/// A streaming event generator; [`generate`] drives one to a writer, but
/// benchmarks can also pull lines directly into memory.
pub struct Generator {
    cfg: GenConfig,
    rng: SmallRng,
    salt: u64,
    users: u64,
    accounts: u64,
    person_zipf: Zipf,
    product_zipf: Zipf,
    catalog: Vec<Product>,
    persons: Vec<PersonState>,
    sessions: Vec<Session>,
    ring: Vec<RingSlot>,
    ring_next: usize,
    ring_len: usize,
    malformed_seq: u64,
    filler: String,
    locale_w: Vec<u32>,
    track_w: Vec<u32>,
    screen_w: Vec<u32>,
    index: u64,
    stats: GenStats,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("cfg", &self.cfg)
            .field("stats", &self.stats)
            .finish()
    }
}

impl Generator {
    /// Creates a generator for `cfg`; fails with `InvalidInput` on an invalid
    /// configuration (rates outside `[0, 1]`, non-positive span, …).
    pub fn new(cfg: &GenConfig) -> io::Result<Self> {
        cfg.validate()?;
        let users = cfg.effective_users();
        // Size the pool of concurrent sessions so that a session of ~7 events
        // spans roughly 20 minutes of event time.
        let concurrent = (1.2e6 * cfg.events as f64 / (7.0 * cfg.span_ms as f64)).round();
        let concurrent = (concurrent as usize).clamp(1, 4096);
        let mut filler = String::with_capacity(3 * MAX_EVENT_BYTES + 128);
        while filler.len() < 3 * MAX_EVENT_BYTES {
            filler.push_str(
                "Lorem ipsum dolor sit amet, consectetur adipiscing elit; sed do eiusmod tempor. ",
            );
        }
        Ok(Generator {
            cfg: cfg.clone(),
            rng: SmallRng::seed_from_u64(cfg.seed),
            salt: mix64(cfg.seed ^ 0x5745_4654), // "WEFT"
            users,
            accounts: (users / 8).max(1),
            person_zipf: Zipf::new(users, 0.6),
            product_zipf: Zipf::new(N_PRODUCTS as u64, 0.9),
            catalog: build_catalog(),
            persons: vec![
                PersonState::default();
                usize::try_from(users).expect("users fits in memory")
            ],
            sessions: vec![Session::default(); concurrent],
            ring: (0..RING).map(|_| RingSlot::default()).collect(),
            ring_next: 0,
            ring_len: 0,
            malformed_seq: 0,
            filler,
            locale_w: LOCALES.iter().map(|l| l.3).collect(),
            track_w: TRACK_EVENTS.iter().map(|e| e.1).collect(),
            screen_w: SCREENS.iter().map(|e| e.1).collect(),
            index: 0,
            stats: GenStats::default(),
        })
    }

    /// Counts of the lines produced so far.
    pub fn stats(&self) -> GenStats {
        self.stats
    }

    /// Appends the next line (terminated by `\n`) to `buf` and says what kind
    /// of line it is, or returns `None` once `events` lines were produced.
    pub fn next_into(&mut self, buf: &mut Vec<u8>) -> Option<LineKind> {
        if self.index >= self.cfg.events {
            return None;
        }
        let i = self.index;
        self.index += 1;
        let start = buf.len();
        let base = self.cfg.start_ms
            + (self.cfg.span_ms as i128 * i as i128 / self.cfg.events as i128) as i64;
        let u: f64 = self.rng.gen();
        let kind = if u < self.cfg.duplicate_rate && self.ring_len > 0 {
            self.emit_duplicate(buf);
            self.stats.duplicates += 1;
            LineKind::Duplicate
        } else if u >= self.cfg.duplicate_rate
            && u < self.cfg.duplicate_rate + self.cfg.malformed_rate
        {
            let t = self.event_time(base);
            let kind = self.emit_malformed(buf, t);
            self.stats.malformed += 1;
            LineKind::Malformed(kind)
        } else {
            let t = self.event_time(base);
            self.emit_good(buf, start, t);
            LineKind::Event
        };
        self.stats.events += 1;
        self.stats.bytes += (buf.len() - start) as u64;
        Some(kind)
    }

    // -- randomness ---------------------------------------------------------

    #[inline]
    fn chance(&mut self, p: f64) -> bool {
        self.rng.gen::<f64>() < p
    }

    #[inline]
    fn below(&mut self, n: usize) -> usize {
        self.rng.gen_range(0..n)
    }

    /// Event time: the file position's time plus out-of-order jitter.
    fn event_time(&mut self, base: i64) -> i64 {
        let r: f64 = self.rng.gen();
        let jitter = if r < 0.80 {
            self.rng.gen_range(-2_000..=2_000)
        } else if r < 0.97 {
            self.rng.gen_range(-90_000..=90_000)
        } else {
            -self.rng.gen_range(60_000..=900_000) // late arrival (offline client)
        };
        (base + jitter).clamp(self.cfg.start_ms, self.cfg.start_ms + self.cfg.span_ms - 1)
    }

    fn random_product(&mut self) -> usize {
        let u = self.rng.gen();
        // Scatter popularity across categories.
        let rank = self.product_zipf.sample(u) as usize;
        (rank * 7 + 3) % N_PRODUCTS
    }

    // -- people and devices -------------------------------------------------

    fn person(&self, idx: u64) -> Person {
        let h = h2(self.salt, idx);
        let f = |k: u64| h2(h, k);
        let will_identify = f(1) % 100 < 60;
        let n_dev = if will_identify {
            1 + wpick(f(2), &[50, 35, 15]) as u8
        } else {
            1
        };
        let n_anon = if n_dev > 1 && f(3) % 100 < 45 { 2 } else { 1 };
        Person {
            idx,
            h,
            user_id: mix64(idx.wrapping_add(self.salt)),
            first: (f(4) % FIRST_NAMES.len() as u64) as usize,
            last: (f(5) % LAST_NAMES.len() as u64) as usize,
            email_style: f(6),
            email_domain: wpick(f(7), EMAIL_DOMAIN_WEIGHTS),
            locale: wpick(f(8), &self.locale_w),
            n_dev,
            n_anon,
            will_identify,
            threshold: 1 + (f(9) % 8) as u32,
            plan: wpick(f(10), PLAN_WEIGHTS),
            account: f(11) % self.accounts,
            created_days_ago: (f(12) % 730) as i64,
        }
    }

    fn device(&self, p: &Person, k: u8) -> Device {
        let h = h2(p.h, 100 + k as u64);
        let f = |j: u64| h2(h, j);
        let web_share = if k == 0 { 75 } else { 40 };
        let kind = if f(1) % 100 < web_share {
            DevKind::Web
        } else if f(2) % 100 < 55 {
            DevKind::Ios
        } else {
            DevKind::Android
        };
        let (n_models, n_os, n_lib) = match kind {
            DevKind::Web => (1, 1, WEB_LIBRARIES.len()),
            DevKind::Ios => (IOS_MODELS.len(), IOS_VERSIONS.len(), IOS_LIBRARIES.len()),
            DevKind::Android => (
                ANDROID_MODELS.len(),
                ANDROID_VERSIONS.len(),
                ANDROID_LIBRARIES.len(),
            ),
        };
        let skew_ms = if f(3) % 100 < 15 {
            -((f(4) % 120_000) as i64) - 1
        } else {
            0
        };
        Device {
            k,
            kind,
            h,
            model: (f(5) % n_models as u64) as usize,
            os: (f(6) % n_os as u64) as usize,
            ua: wpick(f(7), WEB_UA_WEIGHTS),
            lib: wpick(f(8), &[70, 20, 10][..n_lib]),
            app: wpick(f(9), &[60, 30, 10]),
            ip: f(10),
            skew_ms,
        }
    }

    fn company_name(buf: &mut Vec<u8>, account: u64) {
        let a = account as usize;
        raw(buf, COMPANY_A[a % COMPANY_A.len()]);
        buf.push(b' ');
        raw(buf, COMPANY_B[(a / COMPANY_A.len()) % COMPANY_B.len()]);
        raw(
            buf,
            COMPANY_C[(a / (COMPANY_A.len() * COMPANY_B.len())) % COMPANY_C.len()],
        );
    }

    fn company_domain(buf: &mut Vec<u8>, account: u64) {
        let a = account as usize;
        for part in [
            COMPANY_A[a % COMPANY_A.len()],
            COMPANY_B[(a / COMPANY_A.len()) % COMPANY_B.len()],
        ] {
            for c in part.bytes().filter(|c| c.is_ascii_alphanumeric()) {
                buf.push(c.to_ascii_lowercase());
            }
        }
        raw(buf, ".com");
    }

    fn email(buf: &mut Vec<u8>, p: &Person) {
        let first = FIRST_NAMES[p.first].1;
        let last = LAST_NAMES[p.last].1;
        match p.email_style % 4 {
            0 => {
                raw(buf, first);
                buf.push(b'.');
                raw(buf, last);
            }
            1 => {
                raw(buf, first);
                raw(buf, last);
            }
            2 => {
                buf.push(first.as_bytes()[0]);
                raw(buf, last);
            }
            _ => {
                raw(buf, first);
                buf.push(b'_');
                raw(buf, last);
            }
        }
        // A person number keeps addresses unique across the population.
        num(buf, p.idx);
        buf.push(b'@');
        if p.email_domain < EMAIL_DOMAINS.len() {
            raw(buf, EMAIL_DOMAINS[p.email_domain]);
        } else {
            Self::company_domain(buf, p.account);
        }
    }

    fn anon_id(&self, buf: &mut Vec<u8>, p: &Person, j: u8) {
        let upper = self.device(p, j).kind == DevKind::Ios;
        uuid(buf, h2(p.h, 200 + j as u64), h2(p.h, 300 + j as u64), upper);
    }

    fn message_id(&mut self, buf: &mut Vec<u8>, kind: DevKind, ch: Channel, t: i64) {
        let (a, b): (u64, u64) = (self.rng.gen(), self.rng.gen());
        match (ch, kind) {
            (Channel::Server, _) => {
                raw(buf, "node-next-");
                num(buf, t as u64);
                buf.push(b'-');
                uuid(buf, a, b, false);
            }
            (_, DevKind::Web) => {
                raw(buf, "ajs-next-");
                hex(buf, a, 16, false);
                hex(buf, b, 16, false);
            }
            (_, DevKind::Ios) => uuid(buf, a, b, true),
            (_, DevKind::Android) => uuid(buf, a, b, false),
        }
    }

    // -- sessions -----------------------------------------------------------

    fn new_session(&mut self) -> Session {
        let rank = self.person_zipf.sample(self.rng.gen());
        // Scatter heavy users over the index space (2^61 - 1 is prime).
        let person =
            ((rank as u128 * 2_305_843_009_213_693_951u128 + 12_345) % self.users as u128) as u64;
        let st = self.persons[person as usize];
        let p = self.person(person);
        let device = if st.flags & F_IDENTIFIED != 0 && p.n_dev > 1 {
            self.below(p.n_dev as usize) as u8
        } else {
            0
        };
        let mut remaining = 1;
        while remaining < 60 && self.chance(0.86) {
            remaining += 1;
        }
        Session {
            person,
            device,
            remaining,
            ext_ref: wpick(self.rng.gen(), REFERRER_WEIGHTS) as u8,
            cart_id: self.rng.gen(),
            ..Session::default()
        }
    }

    fn new_page(&mut self, s: &Session) -> PageRef {
        let kind = wpick(self.rng.gen(), PAGE_WEIGHTS) as u8;
        let arg = match kind {
            PK_PRODUCT => self.random_product(),
            PK_COLLECTION => self.below(CATEGORIES.len()),
            PK_BLOG => self.below(BLOG_POSTS.len()),
            PK_SEARCH => self.below(SEARCH_QUERIES.len()),
            PK_HELP => self.below(HELP_PAGES.len()),
            _ => 0,
        } as u16;
        let campaign = if s.cur.is_none() && kind != PK_SEARCH && self.chance(0.15) {
            1 + self.below(CAMPAIGNS.len()) as u8
        } else {
            0
        };
        PageRef {
            kind,
            arg,
            campaign,
        }
    }

    // -- good events --------------------------------------------------------

    fn emit_good(&mut self, buf: &mut Vec<u8>, start: usize, t: i64) {
        let si = self.below(self.sessions.len());
        let mut s = self.sessions[si];
        if s.remaining == 0 {
            s = self.new_session();
        }
        let p = self.person(s.person);
        let mut st = self.persons[s.person as usize];
        let d = self.device(&p, s.device);
        let identified = st.flags & F_IDENTIFIED != 0;
        let dev_bit = F_DEVICE_SEEN << s.device;
        let web = d.kind == DevKind::Web;

        let action = if web && s.cur.is_none() {
            Action::Page
        } else if (!identified && p.will_identify && st.events >= p.threshold)
            // Logging in on another device, or again at the start of a session.
            || (identified && (st.flags & dev_bit == 0 || (s.events <= 1 && self.chance(0.08))))
        {
            Action::Identify
        } else if identified && st.flags & F_ALIASED == 0 && self.chance(0.03) {
            Action::Alias
        } else if identified
            && (st.flags & F_GROUPED == 0 && self.chance(0.05) || self.chance(0.002))
        {
            Action::Group
        } else if !web && s.events == 0 && self.chance(0.5) {
            Action::Track(EV_APP_OPENED)
        } else if self.chance(0.4) || (!web && s.events == 0) {
            if web {
                Action::Page
            } else {
                Action::Screen
            }
        } else {
            let mut e = wpick(self.rng.gen(), &self.track_w);
            if web && (e == EV_APP_OPENED || e == EV_APP_BACKGROUNDED) {
                e = EV_PRODUCT_VIEWED;
            }
            let needs_user = matches!(
                e,
                EV_EMAIL_OPENED | EV_EMAIL_CLICKED | EV_SUB_STARTED | EV_SUB_CANCELLED
            );
            if needs_user && !identified {
                e = EV_PRODUCT_LIST_VIEWED;
            }
            Action::Track(e)
        };

        let ch = match action {
            Action::Track(EV_EMAIL_OPENED | EV_EMAIL_CLICKED) => Channel::Server,
            Action::Track(EV_ORDER_COMPLETED) if identified && self.chance(0.5) => Channel::Server,
            Action::Track(EV_SUB_STARTED | EV_SUB_CANCELLED) if self.chance(0.7) => Channel::Server,
            _ => Channel::Client,
        };
        let identified_now = identified || matches!(action, Action::Identify);

        // Header: type, messageId, ids.
        let typ = match action {
            Action::Page => "page",
            Action::Screen => "screen",
            Action::Track(_) => "track",
            Action::Identify => "identify",
            Action::Alias => "alias",
            Action::Group => "group",
        };
        raw(buf, "{\"type\":\"");
        raw(buf, typ);
        raw(buf, "\",\"messageId\":\"");
        self.message_id(buf, d.kind, ch, t);
        buf.push(b'"');
        let anon_j = d.k % p.n_anon;
        let with_anon = match ch {
            Channel::Client => {
                !identified_now
                    || matches!(action, Action::Identify | Action::Alias)
                    || self.chance(0.9)
            }
            Channel::Server => self.chance(0.2),
        };
        if with_anon {
            raw(buf, ",\"anonymousId\":\"");
            self.anon_id(buf, &p, anon_j);
            buf.push(b'"');
        }
        if identified_now {
            raw(buf, ",\"userId\":\"usr_");
            hex(buf, p.user_id, 16, false);
            buf.push(b'"');
        }

        // Type-specific body.
        match action {
            Action::Page => {
                let page = self.new_page(&s);
                s.prev = s.cur;
                s.cur = Some(page);
                if page.kind == PK_PRODUCT {
                    s.last_product = Some(page.arg);
                }
                raw(buf, ",\"name\":\"");
                raw(buf, PAGE_NAMES[page.kind as usize]);
                raw(buf, "\",\"properties\":");
                self.page_obj(buf, &s);
            }
            Action::Screen => self.screen_body(buf, &mut s),
            Action::Track(e) => {
                raw(buf, ",\"event\":\"");
                raw(buf, TRACK_EVENTS[e].0);
                raw(buf, "\",\"properties\":");
                self.track_props(buf, e, &mut s, &p, &d);
            }
            Action::Identify => {
                raw(buf, ",\"traits\":{\"email\":\"");
                Self::email(buf, &p);
                raw(buf, "\",\"name\":\"");
                esc(buf, FIRST_NAMES[p.first].0);
                buf.push(b' ');
                esc(buf, LAST_NAMES[p.last].0);
                raw(buf, "\",\"firstName\":");
                jstr(buf, FIRST_NAMES[p.first].0);
                raw(buf, ",\"lastName\":");
                jstr(buf, LAST_NAMES[p.last].0);
                raw(buf, ",\"plan\":\"");
                raw(buf, PLANS[p.plan]);
                raw(buf, "\",\"createdAt\":\"");
                let created =
                    self.cfg.start_ms - p.created_days_ago * DAY_MS - (p.h % DAY_MS as u64) as i64;
                write_iso8601_ms(buf, created);
                raw(buf, "\",\"company\":{\"id\":\"");
                Self::account_id(buf, p.account);
                raw(buf, "\",\"name\":\"");
                Self::company_name(buf, p.account);
                raw(buf, "\"}}");
                st.flags |= F_IDENTIFIED | dev_bit;
            }
            Action::Alias => {
                raw(buf, ",\"previousId\":\"");
                self.anon_id(buf, &p, p.n_anon - 1);
                buf.push(b'"');
                st.flags |= F_ALIASED;
            }
            Action::Group => {
                raw(buf, ",\"groupId\":\"");
                Self::account_id(buf, p.account);
                raw(buf, "\",\"traits\":{\"name\":\"");
                Self::company_name(buf, p.account);
                let ah = h2(self.salt ^ 0xACC7, p.account);
                raw(buf, "\",\"industry\":\"");
                raw(buf, INDUSTRIES[(ah % INDUSTRIES.len() as u64) as usize]);
                raw(buf, "\",\"employees\":");
                num(
                    buf,
                    10f64
                        .powf((ah >> 16) as f64 / (1u64 << 48) as f64 * 4.3)
                        .round() as u64,
                );
                raw(buf, ",\"plan\":\"");
                raw(buf, PLANS[wpick(ah >> 8, &[20, 50, 30])]);
                raw(buf, "\",\"website\":\"https://www.");
                Self::company_domain(buf, p.account);
                raw(buf, "\"}");
                st.flags |= F_GROUPED;
            }
        }

        raw(buf, ",\"context\":");
        self.context(buf, &s, &p, &d, ch, identified_now);
        let r: f64 = self.rng.gen();
        if r < 0.2 {
            raw(buf, ",\"integrations\":{\"All\":true}");
        } else if r < 0.25 {
            raw(buf, ",\"integrations\":{\"All\":true,\"Mixpanel\":false}");
        }
        raw(
            buf,
            if ch == Channel::Server {
                ",\"channel\":\"server\""
            } else {
                ",\"channel\":\"client\""
            },
        );

        // Timestamps. `t` is the (corrected) `timestamp`; see the module docs.
        let net = self.rng.gen_range(15..250);
        let batch = match (ch, d.kind) {
            (Channel::Server, _) => self.rng.gen_range(1..200),
            (_, DevKind::Web) => self.rng.gen_range(5..400),
            _ => self.rng.gen_range(200..30_000),
        };
        let skew = if ch == Channel::Server { 0 } else { d.skew_ms };
        let original = t - net + skew;
        let received = t + batch;
        raw(buf, ",\"originalTimestamp\":\"");
        write_iso8601_ms(buf, original);
        raw(buf, "\",\"sentAt\":\"");
        write_iso8601_ms(buf, original + batch);
        raw(buf, "\",\"timestamp\":\"");
        write_iso8601_ms(buf, t);
        raw(buf, "\",\"receivedAt\":\"");
        let prefix_end = buf.len();
        write_iso8601_ms(buf, received);
        raw(buf, "\"}\n");

        // Remember for retries.
        let slot = &mut self.ring[self.ring_next];
        slot.prefix.clear();
        slot.prefix.extend_from_slice(&buf[start..prefix_end]);
        slot.received_ms = received;
        self.ring_next = (self.ring_next + 1) % RING;
        self.ring_len = (self.ring_len + 1).min(RING);

        st.events += 1;
        s.events += 1;
        s.remaining -= 1;
        self.persons[s.person as usize] = st;
        self.sessions[si] = s;
    }

    fn account_id(buf: &mut Vec<u8>, account: u64) {
        raw(buf, "acct_");
        let mut p = 1_000_000;
        while p > account.max(1) {
            buf.push(b'0');
            p /= 10;
        }
        num(buf, account);
    }

    /// Writes the page's URL (origin, path and query), unquoted.
    fn page_url(&self, buf: &mut Vec<u8>, page: PageRef) {
        raw(buf, ORIGIN);
        self.page_path(buf, page);
        self.page_search(buf, page);
    }

    fn page_path(&self, buf: &mut Vec<u8>, page: PageRef) {
        let arg = page.arg as usize;
        match page.kind {
            PK_HOME => raw(buf, "/"),
            PK_PRICING => raw(buf, "/pricing"),
            PK_PRODUCT => {
                raw(buf, "/products/");
                raw(buf, &self.catalog[arg].slug);
            }
            PK_COLLECTION => {
                raw(buf, "/collections/");
                raw(buf, CATEGORIES[arg].0);
            }
            PK_BLOG => {
                raw(buf, "/blog/");
                raw(buf, BLOG_POSTS[arg].0);
            }
            PK_CART => raw(buf, "/cart"),
            PK_CHECKOUT => raw(buf, "/checkout"),
            PK_SEARCH => raw(buf, "/search"),
            PK_ACCOUNT => raw(buf, "/account"),
            PK_SIGNUP => raw(buf, "/signup"),
            PK_ABOUT => raw(buf, "/about"),
            _ => {
                raw(buf, "/help/");
                raw(buf, HELP_PAGES[arg].0);
            }
        }
    }

    fn page_search(&self, buf: &mut Vec<u8>, page: PageRef) {
        if page.kind == PK_SEARCH {
            raw(buf, "?q=");
            url_encode(buf, SEARCH_QUERIES[page.arg as usize]);
        } else if page.campaign > 0 {
            let (name, source, medium) = CAMPAIGNS[page.campaign as usize - 1];
            raw(buf, "?utm_source=");
            raw(buf, source);
            raw(buf, "&utm_medium=");
            raw(buf, medium);
            raw(buf, "&utm_campaign=");
            raw(buf, name);
        }
    }

    fn page_title(&self, buf: &mut Vec<u8>, page: PageRef) {
        let arg = page.arg as usize;
        buf.push(b'"');
        match page.kind {
            PK_HOME => esc(buf, "Acme Outfitters — Everyday gear, built to last"),
            PK_PRICING => esc(buf, "Membership & Pricing | Acme Outfitters"),
            PK_PRODUCT => {
                esc(buf, &self.catalog[arg].name);
                esc(buf, " | Acme Outfitters");
            }
            PK_COLLECTION => {
                esc(buf, CATEGORIES[arg].1);
                esc(buf, " | Acme Outfitters");
            }
            PK_BLOG => {
                esc(buf, BLOG_POSTS[arg].1);
                esc(buf, " | The Acme Journal");
            }
            PK_CART => esc(buf, "Your Cart | Acme Outfitters"),
            PK_CHECKOUT => esc(buf, "Checkout | Acme Outfitters"),
            PK_SEARCH => {
                esc(buf, "Search results for “");
                esc(buf, SEARCH_QUERIES[arg]);
                esc(buf, "” | Acme Outfitters");
            }
            PK_ACCOUNT => esc(buf, "My Account | Acme Outfitters"),
            PK_SIGNUP => esc(buf, "Create an account | Acme Outfitters"),
            PK_ABOUT => esc(buf, "About us | Acme Outfitters"),
            _ => {
                esc(buf, HELP_PAGES[arg].1);
                esc(buf, " | Acme Help Center");
            }
        }
        buf.push(b'"');
    }

    /// Writes `{"path","referrer","search","title","url"}` of the session's
    /// current page.
    fn page_obj(&self, buf: &mut Vec<u8>, s: &Session) {
        let page = s.cur.unwrap_or_default();
        raw(buf, "{\"path\":\"");
        self.page_path(buf, page);
        raw(buf, "\",\"referrer\":\"");
        match s.prev {
            Some(prev) => self.page_url(buf, prev),
            None => raw(buf, REFERRERS[s.ext_ref as usize]),
        }
        raw(buf, "\",\"search\":\"");
        self.page_search(buf, page);
        raw(buf, "\",\"title\":");
        self.page_title(buf, page);
        raw(buf, ",\"url\":\"");
        self.page_url(buf, page);
        raw(buf, "\"}");
    }

    fn screen_body(&mut self, buf: &mut Vec<u8>, s: &mut Session) {
        let i = wpick(self.rng.gen(), &self.screen_w);
        let name = SCREENS[i].0;
        raw(buf, ",\"name\":\"");
        raw(buf, name);
        raw(buf, "\",\"properties\":{\"name\":\"");
        raw(buf, name);
        buf.push(b'"');
        match name {
            "Product Detail" => {
                let pi = self.random_product();
                s.last_product = Some(pi as u16);
                raw(buf, ",\"product_id\":\"");
                raw(buf, &self.catalog[pi].id);
                raw(buf, "\",\"product_name\":\"");
                raw(buf, &self.catalog[pi].name);
                buf.push(b'"');
            }
            "Category" => {
                raw(buf, ",\"category\":\"");
                raw(buf, CATEGORIES[self.below(CATEGORIES.len())].0);
                buf.push(b'"');
            }
            "Search" => {
                raw(buf, ",\"query\":");
                jstr(buf, SEARCH_QUERIES[self.below(SEARCH_QUERIES.len())]);
            }
            _ => {}
        }
        buf.push(b'}');
    }

    fn product_fields(&self, buf: &mut Vec<u8>, pi: usize) {
        let pr = &self.catalog[pi];
        raw(buf, "\"product_id\":\"");
        raw(buf, &pr.id);
        raw(buf, "\",\"sku\":\"");
        raw(buf, &pr.sku);
        raw(buf, "\",\"category\":\"");
        raw(buf, CATEGORIES[pr.category].0);
        raw(buf, "\",\"name\":\"");
        raw(buf, &pr.name);
        raw(buf, "\",\"brand\":\"");
        raw(buf, pr.brand);
        raw(buf, "\",\"variant\":\"");
        raw(buf, pr.variant);
        raw(buf, "\",\"price\":");
        money(buf, pr.price);
    }

    fn products_array(&self, buf: &mut Vec<u8>, items: &[(u16, u8)]) {
        buf.push(b'[');
        for (n, &(pi, qty)) in items.iter().enumerate() {
            if n > 0 {
                buf.push(b',');
            }
            buf.push(b'{');
            self.product_fields(buf, pi as usize);
            raw(buf, ",\"quantity\":");
            num(buf, qty as u64);
            raw(buf, ",\"position\":");
            num(buf, n as u64 + 1);
            buf.push(b'}');
        }
        buf.push(b']');
    }

    /// The session's cart, or a fresh one-to-three item basket if it is empty.
    fn basket(&mut self, s: &mut Session) -> ([(u16, u8); 4], usize) {
        if s.cart_len == 0 {
            let n = 1 + wpick(self.rng.gen(), &[60, 30, 10]);
            for k in 0..n {
                let pi = match (k, s.last_product) {
                    (0, Some(lp)) => lp as usize,
                    _ => self.random_product(),
                };
                s.cart[k] = (pi as u16, 1 + wpick(self.rng.gen(), &[85, 12, 3]) as u8);
            }
            s.cart_len = n as u8;
        }
        (s.cart, s.cart_len as usize)
    }

    fn order_id(&mut self, buf: &mut Vec<u8>, s: &mut Session) {
        if s.order_id == 0 {
            s.order_id = self.rng.gen_range(10_000_000..100_000_000);
        }
        raw(buf, "\"order_id\":\"ORD-");
        num(buf, s.order_id);
        buf.push(b'"');
    }

    fn track_props(
        &mut self,
        buf: &mut Vec<u8>,
        e: usize,
        s: &mut Session,
        p: &Person,
        d: &Device,
    ) {
        let currency = LOCALES[p.locale].2;
        buf.push(b'{');
        match e {
            EV_PRODUCT_VIEWED | EV_PRODUCT_CLICKED | EV_PRODUCT_ADDED | EV_PRODUCT_REMOVED
            | EV_WISHLIST_ADDED => {
                let pi = match (e, s.cur, s.last_product) {
                    (
                        EV_PRODUCT_VIEWED,
                        Some(PageRef {
                            kind: PK_PRODUCT,
                            arg,
                            ..
                        }),
                        _,
                    ) => arg as usize,
                    (EV_PRODUCT_ADDED | EV_PRODUCT_REMOVED | EV_WISHLIST_ADDED, _, Some(lp)) => {
                        lp as usize
                    }
                    _ => self.random_product(),
                };
                s.last_product = Some(pi as u16);
                if e == EV_PRODUCT_ADDED || e == EV_PRODUCT_REMOVED {
                    raw(buf, "\"cart_id\":\"");
                    hex(buf, s.cart_id, 16, false);
                    raw(buf, "\",");
                }
                self.product_fields(buf, pi);
                raw(buf, ",\"currency\":\"");
                raw(buf, currency);
                buf.push(b'"');
                match e {
                    EV_PRODUCT_ADDED | EV_PRODUCT_REMOVED => {
                        let qty = 1 + wpick(self.rng.gen(), &[85, 12, 3]) as u8;
                        raw(buf, ",\"quantity\":");
                        num(buf, qty as u64);
                        if e == EV_PRODUCT_ADDED && (s.cart_len as usize) < s.cart.len() {
                            s.cart[s.cart_len as usize] = (pi as u16, qty);
                            s.cart_len += 1;
                        } else if e == EV_PRODUCT_REMOVED && s.cart_len > 0 {
                            s.cart_len -= 1;
                        }
                    }
                    EV_PRODUCT_CLICKED => {
                        raw(buf, ",\"position\":");
                        num(buf, 1 + self.below(24) as u64);
                    }
                    _ => {}
                }
                if d.kind == DevKind::Web {
                    raw(buf, ",\"url\":\"");
                    raw(buf, ORIGIN);
                    raw(buf, "/products/");
                    raw(buf, &self.catalog[pi].slug);
                    buf.push(b'"');
                }
            }
            EV_PRODUCT_LIST_VIEWED => {
                let cat = self.below(CATEGORIES.len());
                raw(buf, "\"list_id\":\"");
                raw(buf, CATEGORIES[cat].0);
                raw(buf, "_grid\",\"category\":\"");
                raw(buf, CATEGORIES[cat].1);
                raw(buf, "\",\"products\":[");
                for k in 0..2 + self.below(3) {
                    if k > 0 {
                        buf.push(b',');
                    }
                    // Products of the same category: indices congruent to `cat`.
                    let pi = cat + CATEGORIES.len() * self.below(N_PRODUCTS / CATEGORIES.len());
                    let pr = &self.catalog[pi];
                    raw(buf, "{\"product_id\":\"");
                    raw(buf, &pr.id);
                    raw(buf, "\",\"sku\":\"");
                    raw(buf, &pr.sku);
                    raw(buf, "\",\"name\":\"");
                    raw(buf, &pr.name);
                    raw(buf, "\",\"price\":");
                    money(buf, pr.price);
                    raw(buf, ",\"position\":");
                    num(buf, k as u64 + 1);
                    buf.push(b'}');
                }
                buf.push(b']');
            }
            EV_PRODUCTS_SEARCHED => {
                raw(buf, "\"query\":");
                let q = match s.cur {
                    Some(PageRef {
                        kind: PK_SEARCH,
                        arg,
                        ..
                    }) => arg as usize,
                    _ => self.below(SEARCH_QUERIES.len()),
                };
                jstr(buf, SEARCH_QUERIES[q]);
            }
            EV_CART_VIEWED => {
                raw(buf, "\"cart_id\":\"");
                hex(buf, s.cart_id, 16, false);
                raw(buf, "\",\"products\":");
                let (cart, n) = self.basket(s);
                self.products_array(buf, &cart[..n]);
            }
            EV_CHECKOUT_STARTED | EV_ORDER_COMPLETED => {
                let (cart, n) = self.basket(s);
                let subtotal: u64 = cart[..n]
                    .iter()
                    .map(|&(pi, q)| self.catalog[pi as usize].price * q as u64)
                    .sum();
                let coupon = self.chance(0.2).then(|| COUPONS[self.below(COUPONS.len())]);
                let discount = coupon.map_or(0, |c| subtotal * c.2 / 100);
                let revenue = subtotal - discount;
                let shipping = if revenue >= 7_500 || coupon.is_some_and(|c| c.0 == "FREESHIP") {
                    0
                } else {
                    695
                };
                let tax = revenue * 8 / 100;
                if e == EV_ORDER_COMPLETED {
                    raw(buf, "\"checkout_id\":\"");
                    hex(buf, s.cart_id ^ 0xC4EC, 16, false);
                    raw(buf, "\",");
                }
                self.order_id(buf, s);
                raw(buf, ",\"affiliation\":\"");
                raw(
                    buf,
                    if d.kind == DevKind::Web {
                        "Acme Web Store"
                    } else {
                        "Acme App"
                    },
                );
                if e == EV_ORDER_COMPLETED {
                    raw(buf, "\",\"subtotal\":");
                    money(buf, subtotal);
                    raw(buf, ",\"total\":");
                    money(buf, revenue + shipping + tax);
                    raw(buf, ",\"revenue\":");
                } else {
                    raw(buf, "\",\"value\":");
                    money(buf, subtotal);
                    raw(buf, ",\"revenue\":");
                }
                money(buf, revenue);
                raw(buf, ",\"shipping\":");
                money(buf, shipping);
                raw(buf, ",\"tax\":");
                money(buf, tax);
                raw(buf, ",\"discount\":");
                money(buf, discount);
                if let Some(c) = coupon {
                    raw(buf, ",\"coupon\":\"");
                    raw(buf, c.0);
                    buf.push(b'"');
                }
                raw(buf, ",\"currency\":\"");
                raw(buf, currency);
                raw(buf, "\",\"products\":");
                self.products_array(buf, &cart[..n]);
                if e == EV_ORDER_COMPLETED {
                    s.cart_len = 0;
                    s.order_id = 0;
                    s.cart_id = self.rng.gen();
                }
            }
            EV_EMAIL_OPENED | EV_EMAIL_CLICKED => {
                let (id, subject, name) = EMAIL_CAMPAIGNS[self.below(EMAIL_CAMPAIGNS.len())];
                raw(buf, "\"email_id\":\"em_");
                hex(buf, self.rng.gen(), 12, false);
                raw(buf, "\",\"email_subject\":");
                jstr(buf, subject);
                raw(buf, ",\"campaign_id\":\"");
                raw(buf, id);
                raw(buf, "\",\"campaign_name\":\"");
                raw(buf, name);
                buf.push(b'"');
                if e == EV_EMAIL_CLICKED {
                    let pi = self.random_product();
                    raw(buf, ",\"link_url\":\"");
                    raw(buf, ORIGIN);
                    raw(buf, "/products/");
                    raw(buf, &self.catalog[pi].slug);
                    raw(buf, "?utm_source=newsletter&utm_medium=email&utm_campaign=");
                    raw(buf, name);
                    buf.push(b'"');
                }
            }
            EV_SIGNED_UP => {
                raw(buf, "\"method\":\"");
                raw(buf, SIGNUP_METHODS[wpick(self.rng.gen(), &[55, 25, 12, 8])]);
                raw(buf, "\",\"plan\":\"");
                raw(buf, PLANS[p.plan]);
                buf.push(b'"');
            }
            EV_COUPON_APPLIED => {
                let c = COUPONS[self.below(COUPONS.len())];
                raw(buf, "\"cart_id\":\"");
                hex(buf, s.cart_id, 16, false);
                raw(buf, "\",");
                self.order_id(buf, s);
                raw(buf, ",\"coupon_id\":\"");
                raw(buf, c.0);
                raw(buf, "\",\"coupon_name\":\"");
                raw(buf, c.1);
                raw(buf, "\",\"discount\":");
                money(buf, c.2 * 100);
            }
            EV_SUB_STARTED | EV_SUB_CANCELLED => {
                let plan = 1 + self.below(2);
                raw(buf, "\"plan\":\"");
                raw(buf, PLANS[plan]);
                buf.push(b'"');
                if e == EV_SUB_STARTED {
                    let annual = self.chance(0.3);
                    let monthly = if plan == 1 { 1_200 } else { 4_900 };
                    raw(buf, ",\"billing_period\":\"");
                    raw(buf, if annual { "annual" } else { "monthly" });
                    raw(buf, "\",\"amount\":");
                    money(buf, if annual { monthly * 10 } else { monthly });
                    raw(buf, ",\"currency\":\"");
                    raw(buf, currency);
                    raw(buf, "\",\"trial\":");
                    raw(buf, if self.chance(0.4) { "true" } else { "false" });
                } else {
                    raw(buf, ",\"reason\":\"");
                    raw(buf, CANCEL_REASONS[self.below(CANCEL_REASONS.len())]);
                    buf.push(b'"');
                }
            }
            EV_PROMOTION_VIEWED => {
                let (id, name, creative) = PROMOTIONS[self.below(PROMOTIONS.len())];
                raw(buf, "\"promotion_id\":\"");
                raw(buf, id);
                raw(buf, "\",\"name\":\"");
                raw(buf, name);
                raw(buf, "\",\"creative\":\"");
                raw(buf, creative);
                raw(buf, "\",\"position\":\"");
                raw(
                    buf,
                    if self.chance(0.5) {
                        "home_banner"
                    } else {
                        "sidebar"
                    },
                );
                buf.push(b'"');
            }
            EV_PRODUCT_REVIEWED => {
                let pi = s
                    .last_product
                    .map_or_else(|| self.random_product(), |x| x as usize);
                raw(buf, "\"product_id\":\"");
                raw(buf, &self.catalog[pi].id);
                raw(buf, "\",\"review_id\":\"rev_");
                hex(buf, self.rng.gen(), 12, false);
                raw(buf, "\",\"review_body\":");
                jstr(buf, REVIEWS[self.below(REVIEWS.len())]);
                raw(buf, ",\"rating\":");
                num(buf, 1 + wpick(self.rng.gen(), &[5, 5, 10, 30, 50]) as u64);
            }
            EV_APP_OPENED => {
                let (version, build) = APP_VERSIONS[d.app];
                raw(buf, "\"from_background\":");
                raw(buf, if self.chance(0.3) { "true" } else { "false" });
                raw(buf, ",\"version\":\"");
                raw(buf, version);
                raw(buf, "\",\"build\":\"");
                raw(buf, build);
                buf.push(b'"');
            }
            _ => {} // Application Backgrounded has no properties.
        }
        buf.push(b'}');
    }

    fn context(
        &mut self,
        buf: &mut Vec<u8>,
        s: &Session,
        p: &Person,
        d: &Device,
        ch: Channel,
        identified: bool,
    ) {
        let (locale, tz, _, _) = LOCALES[p.locale];
        buf.push(b'{');
        if ch == Channel::Server {
            raw(buf, "\"library\":{\"name\":\"");
            raw(buf, SERVER_LIBRARY.0);
            raw(buf, "\",\"version\":\"");
            raw(buf, SERVER_LIBRARY.1);
            raw(buf, "\"}");
        } else {
            if d.kind != DevKind::Web {
                let (version, build) = APP_VERSIONS[d.app];
                raw(buf, "\"app\":{\"name\":\"");
                raw(buf, SHOP);
                raw(buf, "\",\"version\":\"");
                raw(buf, version);
                raw(buf, "\",\"build\":\"");
                raw(buf, build);
                raw(
                    buf,
                    "\",\"namespace\":\"com.acme.outfitters\"},\"device\":{\"id\":\"",
                );
                let (manufacturer, model, _, _) = match d.kind {
                    DevKind::Ios => {
                        let m = IOS_MODELS[d.model];
                        uuid(buf, d.h, mix64(d.h), true);
                        ("Apple", m.0, m.2, m.3)
                    }
                    _ => {
                        let m = ANDROID_MODELS[d.model];
                        hex(buf, mix64(d.h ^ 0xA1D), 16, false);
                        m
                    }
                };
                raw(buf, "\",\"type\":\"");
                raw(
                    buf,
                    if d.kind == DevKind::Ios {
                        "ios"
                    } else {
                        "android"
                    },
                );
                raw(buf, "\",\"manufacturer\":\"");
                raw(buf, manufacturer);
                raw(buf, "\",\"model\":\"");
                raw(buf, model);
                raw(buf, "\"},");
            }
            raw(buf, "\"ip\":\"");
            let ip = d.ip;
            let mut a = 11 + (ip % 212) as u8;
            if matches!(a, 100 | 127 | 169 | 172 | 192) {
                a += 1;
            }
            for (n, octet) in [
                a as u64,
                (ip >> 8) & 0xFF,
                (ip >> 16) & 0xFF,
                1 + (ip >> 24) % 254,
            ]
            .into_iter()
            .enumerate()
            {
                if n > 0 {
                    buf.push(b'.');
                }
                num(buf, octet);
            }
            raw(buf, "\",\"library\":{\"name\":\"");
            let (lib, ver) = match d.kind {
                DevKind::Web => WEB_LIBRARIES[d.lib],
                DevKind::Ios => IOS_LIBRARIES[d.lib],
                DevKind::Android => ANDROID_LIBRARIES[d.lib],
            };
            raw(buf, lib);
            raw(buf, "\",\"version\":\"");
            raw(buf, ver);
            raw(buf, "\"},\"locale\":\"");
            raw(buf, locale);
            buf.push(b'"');
            match d.kind {
                DevKind::Web => {
                    raw(buf, ",\"page\":");
                    self.page_obj(buf, s);
                    if let Some(PageRef {
                        campaign: c @ 1.., ..
                    }) = s.cur
                    {
                        let (name, source, medium) = CAMPAIGNS[c as usize - 1];
                        raw(buf, ",\"campaign\":{\"name\":\"");
                        raw(buf, name);
                        raw(buf, "\",\"source\":\"");
                        raw(buf, source);
                        raw(buf, "\",\"medium\":\"");
                        raw(buf, medium);
                        raw(buf, "\"}");
                    }
                }
                kind => {
                    let wifi = self.chance(0.6);
                    raw(buf, ",\"network\":{\"wifi\":");
                    raw(buf, if wifi { "true" } else { "false" });
                    raw(buf, ",\"cellular\":");
                    raw(buf, if wifi { "false" } else { "true" });
                    raw(buf, ",\"carrier\":\"");
                    raw(buf, CARRIERS[(d.h >> 7) as usize % CARRIERS.len()]);
                    raw(buf, "\"},\"os\":{\"name\":\"");
                    let (os, os_version, (w, h)) = if kind == DevKind::Ios {
                        let m = IOS_MODELS[d.model];
                        (
                            if m.0.starts_with("iPad") {
                                "iPadOS"
                            } else {
                                "iOS"
                            },
                            IOS_VERSIONS[d.os],
                            (m.2, m.3),
                        )
                    } else {
                        let m = ANDROID_MODELS[d.model];
                        ("Android", ANDROID_VERSIONS[d.os], (m.2, m.3))
                    };
                    raw(buf, os);
                    raw(buf, "\",\"version\":\"");
                    raw(buf, os_version);
                    raw(buf, "\"},\"screen\":{\"width\":");
                    num(buf, w as u64);
                    raw(buf, ",\"height\":");
                    num(buf, h as u64);
                    buf.push(b'}');
                }
            }
            raw(buf, ",\"timezone\":\"");
            raw(buf, tz);
            raw(buf, "\",\"userAgent\":\"");
            match d.kind {
                DevKind::Web => raw(buf, WEB_USER_AGENTS[d.ua]),
                DevKind::Ios => {
                    let m = IOS_MODELS[d.model];
                    raw(buf, "AcmeOutfitters/");
                    raw(buf, APP_VERSIONS[d.app].0);
                    raw(
                        buf,
                        if m.0.starts_with("iPad") {
                            " (iPad; iOS "
                        } else {
                            " (iPhone; iOS "
                        },
                    );
                    raw(buf, IOS_VERSIONS[d.os]);
                    raw(buf, "; Scale/3.00)");
                }
                DevKind::Android => {
                    raw(buf, "Dalvik/2.1.0 (Linux; U; Android ");
                    raw(buf, ANDROID_VERSIONS[d.os]);
                    raw(buf, "; ");
                    raw(buf, ANDROID_MODELS[d.model].1);
                    raw(buf, " Build/UQ1A.240205.004)");
                }
            }
            buf.push(b'"');
        }
        if identified {
            let r: f64 = self.rng.gen();
            if r < 0.3 || ch == Channel::Server {
                raw(buf, ",\"traits\":{\"email\":\"");
                Self::email(buf, p);
                raw(buf, "\"}");
            }
            if r < 0.04 || (ch == Channel::Server && r < 0.3) {
                raw(buf, ",\"externalIds\":[{\"id\":\"");
                Self::email(buf, p);
                raw(
                    buf,
                    "\",\"type\":\"email\",\"collection\":\"users\",\"encoding\":\"none\"}",
                );
                if r < 0.015 || ch == Channel::Server {
                    raw(buf, ",{\"id\":\"cus_");
                    hex(buf, mix64(p.user_id ^ 0x57121FE), 14, false);
                    raw(buf, "\",\"type\":\"stripe_customer_id\",\"collection\":\"users\",\"encoding\":\"none\"}");
                }
                buf.push(b']');
            }
        }
        buf.push(b'}');
    }

    // -- duplicates ---------------------------------------------------------

    fn emit_duplicate(&mut self, buf: &mut Vec<u8>) {
        // Retries are mostly of recent events.
        let u: f64 = self.rng.gen();
        let age = 1 + ((u * u * u) * self.ring_len as f64) as usize;
        let age = age.min(self.ring_len);
        let slot = &self.ring[(self.ring_next + RING - age) % RING];
        let r: f64 = self.rng.gen();
        let delay = if r < 0.75 {
            self.rng.gen_range(500..30_000)
        } else if r < 0.97 {
            self.rng.gen_range(30_000..600_000)
        } else {
            self.rng.gen_range(600_000..7_200_000)
        };
        buf.extend_from_slice(&slot.prefix);
        write_iso8601_ms(buf, slot.received_ms + delay);
        raw(buf, "\"}\n");
    }

    // -- malformed ----------------------------------------------------------

    fn emit_malformed(&mut self, buf: &mut Vec<u8>, t: i64) -> &'static str {
        let seq = self.malformed_seq;
        self.malformed_seq += 1;
        let kind = MALFORMED_KINDS[(seq % MALFORMED_KINDS.len() as u64) as usize];
        let round = seq / MALFORMED_KINDS.len() as u64;
        let start = buf.len();
        match kind {
            "truncated_json" => {
                self.bad_event(buf, t, Bad::None);
                let len = buf.len() - start;
                let mut cut = start + len / 4 + self.below(len / 2);
                while buf[cut] & 0xC0 == 0x80 {
                    cut -= 1; // keep UTF-8 valid
                }
                buf.truncate(cut);
            }
            "wrong_type" => self.bad_event(buf, t, Bad::WrongType(round)),
            "missing_ids" => self.bad_event(buf, t, Bad::MissingIds),
            "track_without_event" => self.bad_event(buf, t, Bad::NoEvent),
            "invalid_timestamp" => self.bad_event(buf, t, Bad::InvalidTimestamp(round)),
            "message_id_too_long" => self.bad_event(buf, t, Bad::LongId),
            "unknown_type" => self.bad_event(buf, t, Bad::UnknownType(round)),
            "json_array" => {
                buf.push(b'[');
                self.bad_event(buf, t, Bad::None);
                buf.push(b']');
            }
            "oversize_event" => self.bad_event(buf, t, Bad::Oversize),
            _ => {} // empty_line
        }
        buf.push(b'\n');
        kind
    }

    /// Writes (without newline) a web `track` event with the defect `bad`.
    fn bad_event(&mut self, buf: &mut Vec<u8>, t: i64, bad: Bad) {
        let rank = self.person_zipf.sample(self.rng.gen());
        let p = self.person(rank % self.users);
        let d = self.device(&p, 0);
        raw(buf, "{\"type\":\"");
        raw(
            buf,
            if let Bad::UnknownType(r) = bad {
                BAD_TYPES[(r % BAD_TYPES.len() as u64) as usize]
            } else {
                "track"
            },
        );
        raw(buf, "\",\"messageId\":\"");
        self.message_id(buf, DevKind::Web, Channel::Client, t);
        if bad == Bad::LongId {
            for _ in 0..2 + self.below(6) {
                hex(buf, self.rng.gen(), 16, false);
                hex(buf, self.rng.gen(), 16, false);
            }
        }
        buf.push(b'"');
        let wrong = if let Bad::WrongType(r) = bad {
            Some(r % 4)
        } else {
            None
        };
        if bad != Bad::MissingIds {
            if wrong == Some(1) {
                raw(buf, ",\"anonymousId\":");
                num(buf, p.h >> 20);
            } else {
                raw(buf, ",\"anonymousId\":\"");
                self.anon_id(buf, &p, 0);
                buf.push(b'"');
            }
            if wrong == Some(0) {
                raw(buf, ",\"userId\":{\"a\":1}");
            }
        }
        if bad != Bad::NoEvent {
            raw(
                buf,
                if wrong == Some(2) {
                    ",\"event\":42"
                } else {
                    ",\"event\":\"Product Viewed\""
                },
            );
        }
        raw(buf, ",\"properties\":");
        if wrong == Some(3) {
            raw(buf, "5");
        } else {
            buf.push(b'{');
            let pi = self.random_product();
            self.product_fields(buf, pi);
            raw(buf, ",\"currency\":\"USD\"");
            if bad == Bad::Oversize {
                let n = MAX_EVENT_BYTES + 1_000 + self.below(MAX_EVENT_BYTES);
                raw(buf, ",\"description\":\"");
                raw(buf, &self.filler[..n]);
                buf.push(b'"');
            }
            buf.push(b'}');
        }
        raw(buf, ",\"context\":");
        let s = Session {
            cur: Some(PageRef {
                kind: PK_HOME,
                arg: 0,
                campaign: 0,
            }),
            ..Session::default()
        };
        self.context(buf, &s, &p, &d, Channel::Client, false);
        raw(buf, ",\"channel\":\"client\"");
        let (ts, orig) = match bad {
            Bad::InvalidTimestamp(r) => {
                let v = BAD_TIMESTAMPS[(r % BAD_TIMESTAMPS.len() as u64) as usize];
                (v.to_string(), v.to_string())
            }
            _ => (format_iso8601_ms(t), format_iso8601_ms(t - 40)),
        };
        raw(buf, ",\"originalTimestamp\":\"");
        raw(buf, &orig);
        raw(buf, "\",\"sentAt\":\"");
        write_iso8601_ms(buf, t - 20);
        raw(buf, "\",\"timestamp\":\"");
        raw(buf, &ts);
        raw(buf, "\",\"receivedAt\":\"");
        write_iso8601_ms(buf, t + 20);
        raw(buf, "\"}");
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::collections::{HashMap, HashSet};
    use std::io::Read;

    fn small(events: u64, seed: u64) -> GenConfig {
        GenConfig {
            seed,
            ..GenConfig::with_events(events)
        }
    }

    fn gen_bytes(cfg: &GenConfig) -> (Vec<u8>, GenStats) {
        let mut out = Vec::new();
        let stats = generate(cfg, &mut out).unwrap();
        (out, stats)
    }

    /// Splits newline-terminated output into lines (keeps empty lines).
    fn lines(out: &[u8]) -> Vec<&str> {
        let text = std::str::from_utf8(out).expect("output is UTF-8");
        assert!(text.ends_with('\n'));
        text[..text.len() - 1].split('\n').collect()
    }

    /// A strict validator of what a good event looks like.
    fn validate(line: &str) -> Result<Value, String> {
        if line.len() > MAX_EVENT_BYTES {
            return Err("oversize".into());
        }
        let v: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let o = v.as_object().ok_or("not an object")?;
        let typ = o.get("type").and_then(Value::as_str).ok_or("no type")?;
        if !EVENT_TYPES.contains(&typ) {
            return Err(format!("unknown type {typ}"));
        }
        let mid = o
            .get("messageId")
            .and_then(Value::as_str)
            .ok_or("no messageId")?;
        if mid.is_empty() || mid.len() > MAX_MESSAGE_ID_LEN {
            return Err("bad messageId length".into());
        }
        for k in ["userId", "anonymousId"] {
            if let Some(x) = o.get(k) {
                if x.as_str().is_none_or(str::is_empty) {
                    return Err(format!("{k} not a string"));
                }
            }
        }
        if !o.contains_key("userId") && !o.contains_key("anonymousId") {
            return Err("no ids".into());
        }
        for k in ["timestamp", "originalTimestamp", "sentAt", "receivedAt"] {
            let s = o.get(k).and_then(Value::as_str).ok_or(format!("no {k}"))?;
            parse_iso8601_ms(s).ok_or(format!("bad {k}: {s}"))?;
        }
        for k in ["properties", "traits", "context"] {
            if let Some(x) = o.get(k) {
                if !x.is_object() {
                    return Err(format!("{k} not an object"));
                }
            }
        }
        o.get("context").ok_or("no context")?;
        match typ {
            "track" => {
                o.get("event")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .ok_or("track without event")?;
            }
            "identify" => {
                o.get("traits").ok_or("identify without traits")?;
                o.get("userId").ok_or("identify without userId")?;
            }
            "group" => {
                o.get("groupId")
                    .and_then(Value::as_str)
                    .ok_or("group without groupId")?;
            }
            "alias" => {
                o.get("previousId")
                    .and_then(Value::as_str)
                    .ok_or("alias without previousId")?;
                o.get("userId").ok_or("alias without userId")?;
            }
            _ => {}
        }
        Ok(v)
    }

    fn ts(v: &Value, k: &str) -> i64 {
        parse_iso8601_ms(v[k].as_str().unwrap()).unwrap()
    }

    #[test]
    fn default_config() {
        let c = GenConfig::default();
        assert_eq!(c.events, 1_000_000);
        assert_eq!(c.seed, 42);
        assert_eq!(c.duplicate_rate, 0.02);
        assert_eq!(c.malformed_rate, 0.001);
        assert_eq!(c.users, 50_000);
        assert_eq!(
            c.start_ms,
            parse_iso8601_ms("2026-01-01T00:00:00Z").unwrap()
        );
        assert_eq!(c.span_ms, 30 * DAY_MS);
        assert_eq!(GenConfig::with_events(5).users, 10);
    }

    #[test]
    fn timestamps_round_trip() {
        assert_eq!(
            format_iso8601_ms(DEFAULT_START_MS),
            "2026-01-01T00:00:00.000Z"
        );
        assert_eq!(
            parse_iso8601_ms("2026-01-03T10:04:05.123Z"),
            Some(DEFAULT_START_MS + 2 * DAY_MS + 36_245_123)
        );
        assert_eq!(
            parse_iso8601_ms("2026-01-03T11:04:05.123+01:00"),
            parse_iso8601_ms("2026-01-03T10:04:05.123Z")
        );
        assert_eq!(parse_iso8601_ms("2026-01-01"), Some(DEFAULT_START_MS));
        let mut t = 0;
        while t < 300 * 365 * DAY_MS {
            assert_eq!(parse_iso8601_ms(&format_iso8601_ms(t)), Some(t), "{t}");
            t += 7_777_777_777;
        }
        for bad in BAD_TIMESTAMPS {
            assert_eq!(parse_iso8601_ms(bad), None, "{bad}");
        }
        assert!(parse_iso8601_ms("2024-02-29T00:00:00Z").is_some());
        assert_eq!(parse_iso8601_ms("2025-02-29T00:00:00Z"), None);
    }

    #[test]
    fn deterministic() {
        let cfg = small(20_000, 7);
        let (a, sa) = gen_bytes(&cfg);
        let (b, sb) = gen_bytes(&cfg);
        assert_eq!(sa, sb);
        assert!(a == b, "same seed must give identical bytes");
        let (c, _) = gen_bytes(&small(20_000, 8));
        assert!(a != c, "different seeds must differ");
    }

    #[test]
    fn lines_are_valid_except_malformed() {
        let cfg = GenConfig {
            malformed_rate: 0.01,
            ..small(100_000, 1)
        };
        let mut gen = Generator::new(&cfg).unwrap();
        let mut buf = Vec::new();
        let mut kinds = Vec::new();
        while let Some(k) = gen.next_into(&mut buf) {
            kinds.push(k);
        }
        let stats = gen.stats();
        let ls = lines(&buf);
        assert_eq!(ls.len() as u64, cfg.events);
        assert_eq!(ls.len(), kinds.len());
        assert_eq!(stats.events, cfg.events);
        assert_eq!(stats.bytes, buf.len() as u64);

        let mut invalid = 0;
        let mut seen_kinds: HashMap<&str, u64> = HashMap::new();
        let mut types: HashMap<String, u64> = HashMap::new();
        let mut events: HashMap<String, u64> = HashMap::new();
        for (line, kind) in ls.iter().zip(&kinds) {
            let res = validate(line);
            match kind {
                LineKind::Malformed(k) => {
                    invalid += 1;
                    *seen_kinds.entry(k).or_default() += 1;
                    assert!(res.is_err(), "malformed {k} passed validation: {line:.300}");
                    if *k == "oversize_event" || *k == "json_array" {
                        serde_json::from_str::<Value>(line).expect("still JSON");
                    }
                }
                _ => {
                    let v = res.unwrap_or_else(|e| panic!("{e}: {line}"));
                    *types
                        .entry(v["type"].as_str().unwrap().to_string())
                        .or_default() += 1;
                    if let Some(e) = v["event"].as_str() {
                        *events.entry(e.to_string()).or_default() += 1;
                    }
                    let (o, s, t, r) = (
                        ts(&v, "originalTimestamp"),
                        ts(&v, "sentAt"),
                        ts(&v, "timestamp"),
                        ts(&v, "receivedAt"),
                    );
                    assert!(o <= s && s <= r, "{line}");
                    assert!(t >= cfg.start_ms && t < cfg.start_ms + cfg.span_ms);
                    if *kind == LineKind::Event {
                        assert_eq!(t, r - (s - o), "timestamp is skew-corrected");
                    } else {
                        assert!(t < r - (s - o), "a retry is received later");
                    }
                }
            }
        }
        assert_eq!(invalid, stats.malformed);
        assert!(stats.malformed > 500, "{stats:?}");
        // Every kind occurs, in cycle order.
        for k in malformed_kinds() {
            assert!(
                seen_kinds.get(k).copied().unwrap_or(0) > 0,
                "kind {k} never emitted"
            );
        }
        let order: Vec<&str> = kinds
            .iter()
            .filter_map(|k| {
                if let LineKind::Malformed(k) = k {
                    Some(*k)
                } else {
                    None
                }
            })
            .collect();
        for (n, k) in order.iter().enumerate() {
            assert_eq!(*k, malformed_kinds()[n % malformed_kinds().len()]);
        }
        for t in EVENT_TYPES {
            assert!(
                types.get(*t).copied().unwrap_or(0) > 0,
                "type {t} never emitted: {types:?}"
            );
        }
        // Zipf-like: the most frequent event name dominates the tail.
        assert!(
            events["Product Viewed"] > 5 * events["Wishlist Product Added"],
            "{events:?}"
        );
        assert!(events.len() >= 18, "{events:?}");
    }

    #[test]
    fn duplicates_repeat_earlier_events() {
        let cfg = GenConfig {
            duplicate_rate: 0.05,
            ..small(50_000, 3)
        };
        let (out, stats) = gen_bytes(&cfg);
        let ls = lines(&out);
        assert_eq!(ls.len() as u64, stats.events);
        assert_eq!(out.len() as u64, stats.bytes);
        let mut first: HashMap<String, Value> = HashMap::new();
        let mut dups = 0;
        let mut malformed = 0;
        for line in ls {
            let Ok(mut v) = validate(line) else {
                malformed += 1;
                continue;
            };
            let id = v["messageId"].as_str().unwrap().to_string();
            match first.get(&id) {
                Some(orig) => {
                    dups += 1;
                    assert!(
                        ts(&v, "receivedAt") > ts(orig, "receivedAt"),
                        "retry received later"
                    );
                    let mut orig = orig.clone();
                    orig.as_object_mut().unwrap().remove("receivedAt");
                    v.as_object_mut().unwrap().remove("receivedAt");
                    assert_eq!(orig, v, "duplicate body differs");
                }
                None => {
                    first.insert(id, v);
                }
            }
        }
        assert_eq!(dups, stats.duplicates);
        assert_eq!(malformed, stats.malformed);
        assert!(dups as f64 > 0.04 * 50_000.0, "{dups}");
    }

    #[test]
    fn identity_model() {
        let (out, _) = gen_bytes(&small(60_000, 11));
        let mut anon_only = 0;
        let mut both = 0;
        let mut user_anons: HashMap<String, HashSet<String>> = HashMap::new();
        let mut user_emails: HashMap<String, HashSet<String>> = HashMap::new();
        let mut identified_anons = HashSet::new();
        let mut times = Vec::new();
        for line in lines(&out) {
            let Ok(v) = validate(line) else { continue };
            times.push(ts(&v, "timestamp"));
            let uid = v["userId"].as_str();
            let aid = v["anonymousId"].as_str();
            match (uid, aid) {
                (None, Some(_)) => anon_only += 1,
                (Some(u), Some(a)) => {
                    both += 1;
                    user_anons.entry(u.into()).or_default().insert(a.into());
                }
                _ => {}
            }
            if v["type"] == "identify" {
                identified_anons.insert(aid.unwrap().to_string());
                let email = v["traits"]["email"].as_str().unwrap().to_string();
                user_emails
                    .entry(uid.unwrap().into())
                    .or_default()
                    .insert(email);
            }
        }
        assert!(anon_only > 1000 && both > 1000, "{anon_only} {both}");
        assert!(user_anons.values().all(|s| s.len() <= 2));
        assert!(user_anons.values().any(|s| s.len() == 2));
        assert!(
            user_emails.values().all(|s| s.len() == 1),
            "one email per user"
        );
        assert!(!identified_anons.is_empty());
        // Roughly increasing, with some out-of-order jitter.
        let inversions = times.windows(2).filter(|w| w[1] < w[0]).count();
        assert!(
            inversions > 0 && inversions < times.len() / 2,
            "{inversions}"
        );
        let tenth = times.len() / 10;
        let head: i64 = times[..tenth].iter().sum::<i64>() / tenth as i64;
        let tail: i64 = times[times.len() - tenth..].iter().sum::<i64>() / tenth as i64;
        assert!(tail - head > 20 * DAY_MS);
    }

    #[test]
    fn gzip_round_trip() {
        let cfg = small(5_000, 5);
        let dir = std::env::temp_dir().join(format!("weft-gen-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let gz = dir.join("events.jsonl.gz");
        let plain = dir.join("events.jsonl");
        let stats = generate_to_path(&cfg, &gz).unwrap();
        let stats_plain = generate_to_path(&cfg, &plain).unwrap();
        assert_eq!(stats, stats_plain);
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(File::open(&gz).unwrap())
            .read_to_end(&mut decoded)
            .unwrap();
        let expected = gen_bytes(&cfg).0;
        assert_eq!(decoded, expected);
        assert_eq!(std::fs::read(&plain).unwrap(), expected);
        assert_eq!(stats.bytes, expected.len() as u64);
        assert!(std::fs::metadata(&gz).unwrap().len() < expected.len() as u64 / 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn edge_configs() {
        let (out, stats) = gen_bytes(&small(0, 1));
        assert!(out.is_empty());
        assert_eq!(stats, GenStats::default());
        let cfg = GenConfig {
            users: 1,
            span_ms: 1,
            ..small(300, 1)
        };
        let (out, stats) = gen_bytes(&cfg);
        assert_eq!(lines(&out).len(), 300);
        assert_eq!(stats.events, 300);
        let all_bad = GenConfig {
            duplicate_rate: 0.0,
            malformed_rate: 1.0,
            ..small(30, 1)
        };
        assert_eq!(gen_bytes(&all_bad).1.malformed, 30);
        assert!(generate(
            &GenConfig {
                duplicate_rate: 1.5,
                ..small(10, 1)
            },
            Vec::new()
        )
        .is_err());
        assert!(generate(
            &GenConfig {
                span_ms: 0,
                ..small(10, 1)
            },
            Vec::new()
        )
        .is_err());
    }
}
