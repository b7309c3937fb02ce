//! Column values and column types: inference from JSON, widening on
//! conflict, and the text form PostgreSQL parses (COPY text format and
//! `text` parameters cast to the column's type).
//!
//! Inference (per value): `true`/`false` → `boolean`; an integer that fits
//! in 64 bits → `bigint`; any other number → `numeric`; a string of the form
//! `YYYY-MM-DDTHH:MM:SS[.f]` + `Z` or `±HH:MM` (at most 6 fractional digits)
//! that is a valid date-time in years 0001..9999 → `timestamptz`; any other
//! string → `text`; an array → `text` (its JSON); `null` → no type (the
//! column is not created for it; an existing column gets NULL). Objects
//! never reach here: they are flattened into one column per leaf (see
//! [`super::naming`]).
//!
//! Widening (a column's type versus a value's type): the same type stays;
//! `bigint` and `numeric` make `numeric`; anything else makes `text`.
//! Widening is an `ALTER COLUMN … TYPE … USING col::type`, so the values
//! already stored are kept, converted to their PostgreSQL text form.
//!
//! Values are always written in PostgreSQL's own text form of their type:
//! timestamps as UTC `YYYY-MM-DD HH:MM:SS[.ffffff]+00` (trailing zeros of
//! the fraction dropped), numbers as plain decimals (`1e-7` →
//! `0.0000001`), booleans as `true`/`false`. So a value reads the same in a
//! column that was `text` from the start and in one widened later: the
//! tables do not depend on which values happened to share a commit.

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde_json::Value as Json;
use weft_dataflows::event::parse_iso8601_ms;

/// `0001-01-01T00:00:00Z` in ms: the earliest time stored as a timestamp.
const MIN_MS: i64 = -62_135_596_800_000;
/// `9999-12-31T23:59:59.999Z` in ms: the latest time stored as a timestamp.
const MAX_MS: i64 = 253_402_300_799_999;

/// The type of a warehouse column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ColType {
    Boolean,
    Bigint,
    Numeric,
    Timestamptz,
    Text,
    Jsonb,
    /// A type Weft does not create (a column made by someone else).
    Other,
}

impl ColType {
    /// The type's name in DDL and casts.
    pub(crate) fn sql(self) -> &'static str {
        match self {
            ColType::Boolean => "boolean",
            ColType::Bigint => "bigint",
            ColType::Numeric => "numeric",
            ColType::Timestamptz => "timestamptz",
            ColType::Text | ColType::Other => "text",
            ColType::Jsonb => "jsonb",
        }
    }

    /// Reads `information_schema.columns.data_type`.
    pub(crate) fn from_information_schema(data_type: &str) -> ColType {
        match data_type {
            "boolean" => ColType::Boolean,
            "bigint" => ColType::Bigint,
            "numeric" => ColType::Numeric,
            "timestamp with time zone" => ColType::Timestamptz,
            "text" => ColType::Text,
            "jsonb" => ColType::Jsonb,
            _ => ColType::Other,
        }
    }

    /// The type a column of type `self` must have to also hold values of type `value`.
    pub(crate) fn merge(self, value: ColType) -> ColType {
        match (self, value) {
            (a, b) if a == b && a != ColType::Other => a,
            (ColType::Bigint, ColType::Numeric) | (ColType::Numeric, ColType::Bigint) => {
                ColType::Numeric
            }
            _ => ColType::Text,
        }
    }
}

/// A column name: a static name of a fixed column, or a shared inferred one.
#[derive(Clone, Debug)]
pub(crate) enum ColName {
    Static(&'static str),
    Shared(Arc<str>),
}

impl Deref for ColName {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            ColName::Static(s) => s,
            ColName::Shared(s) => s,
        }
    }
}

impl PartialEq for ColName {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}
impl Eq for ColName {}
impl PartialOrd for ColName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ColName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (**self).cmp(&**other)
    }
}
impl std::hash::Hash for ColName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (**self).hash(state)
    }
}
impl std::borrow::Borrow<str> for ColName {
    fn borrow(&self) -> &str {
        self
    }
}
impl fmt::Display for ColName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

/// A value bound for a column, before the column's type is settled.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Val {
    Null,
    Bool(bool),
    Int(i64),
    /// A number that is not an `i64`, as a plain decimal.
    Num(String),
    /// A date-time, in PostgreSQL's UTC text form.
    Time(String),
    Text(String),
    /// JSON text stored in a `text` column (arrays).
    JsonText(String),
    /// JSON text for a `jsonb` column.
    Jsonb(String),
    /// Milliseconds since the epoch, for a `timestamptz` column.
    Millis(i64),
}

impl Val {
    /// Infers a value from JSON (objects are flattened before this; given one, its JSON text).
    pub(crate) fn from_json(v: &Json) -> Val {
        match v {
            Json::Null => Val::Null,
            Json::Bool(b) => Val::Bool(*b),
            Json::Number(n) => match n.as_i64() {
                Some(i) => Val::Int(i),
                None => Val::Num(plain_decimal(&n.to_string())),
            },
            Json::String(s) => match timestamp_text(s) {
                Some(t) => Val::Time(t),
                None => Val::Text(s.clone()),
            },
            Json::Array(_) | Json::Object(_) => Val::JsonText(v.to_string()),
        }
    }

    /// A timestamp from ms since the epoch; NULL outside years 0001..9999
    /// (PostgreSQL and the ISO format cannot hold all of `i64`).
    pub(crate) fn millis(ms: i64) -> Val {
        if (MIN_MS..=MAX_MS).contains(&ms) {
            Val::Millis(ms)
        } else {
            Val::Null
        }
    }

    /// The column type this value asks for; `None` for NULL.
    pub(crate) fn col_type(&self) -> Option<ColType> {
        Some(match self {
            Val::Null => return None,
            Val::Bool(_) => ColType::Boolean,
            Val::Int(_) => ColType::Bigint,
            Val::Num(_) => ColType::Numeric,
            Val::Time(_) | Val::Millis(_) => ColType::Timestamptz,
            Val::Text(_) | Val::JsonText(_) => ColType::Text,
            Val::Jsonb(_) => ColType::Jsonb,
        })
    }

    /// The text PostgreSQL parses as this value (in a column of a type
    /// [`ColType::merge`] allows for it); `None` for NULL.
    pub(crate) fn text(&self) -> Option<Cow<'_, str>> {
        Some(match self {
            Val::Null => return None,
            Val::Bool(true) => Cow::Borrowed("true"),
            Val::Bool(false) => Cow::Borrowed("false"),
            Val::Int(i) => Cow::Owned(i.to_string()),
            Val::Num(s) | Val::Time(s) | Val::Text(s) | Val::JsonText(s) | Val::Jsonb(s) => {
                Cow::Borrowed(s)
            }
            Val::Millis(ms) => Cow::Owned(millis_text(*ms)),
        })
    }

    /// Approximate bytes held, for the buffer limit.
    pub(crate) fn size(&self) -> usize {
        16 + match self {
            Val::Num(s) | Val::Time(s) | Val::Text(s) | Val::JsonText(s) | Val::Jsonb(s) => s.len(),
            _ => 0,
        }
    }
}

/// If `s` is an RFC 3339 date-time (`YYYY-MM-DDTHH:MM:SS[.f](Z|±HH:MM)`,
/// at most 6 fractional digits, years 0001..9999), its PostgreSQL text form
/// in UTC (`YYYY-MM-DD HH:MM:SS[.ffffff]+00`, what `timestamptz::text`
/// prints with `TimeZone = 'UTC'`).
pub(crate) fn timestamp_text(s: &str) -> Option<String> {
    let b = s.as_bytes();
    if !(20..=32).contains(&b.len()) {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let shape = digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    if !shape {
        return None;
    }
    let mut i = 19;
    let mut micros = 0u32;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let n = i - start;
        if n == 0 || n > 6 {
            return None;
        }
        micros = s[start..i].parse::<u32>().ok()? * 10u32.pow((6 - n) as u32);
    }
    let zone = &b[i..];
    let zone_ok = zone == b"Z"
        || (zone.len() == 6
            && (zone[0] == b'+' || zone[0] == b'-')
            && zone[1..3].iter().all(u8::is_ascii_digit)
            && zone[3] == b':'
            && zone[4..6].iter().all(u8::is_ascii_digit));
    if !zone_ok {
        return None;
    }
    let ms = parse_iso8601_ms(s)?;
    if !(MIN_MS..=MAX_MS).contains(&ms) {
        return None;
    }
    // The whole seconds (UTC), then the fraction as written.
    let mut out = millis_text(ms.div_euclid(1000) * 1000);
    out.truncate(19);
    if micros > 0 {
        let frac = format!("{micros:06}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push_str("+00");
    Some(out)
}

/// A JSON number's text as a plain decimal, as PostgreSQL's `numeric`
/// prints it (`1.5e-7` → `0.00000015`, `1e3` → `1000`).
pub(crate) fn plain_decimal(s: &str) -> String {
    let (sign, rest) = match s.strip_prefix('-') {
        Some(r) => ("-", r),
        None => ("", s),
    };
    let (mantissa, exp) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().unwrap_or(0)),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits: String = format!("{int}{frac}");
    let point = int.len() as i64 + exp;
    let mut out = if point <= 0 {
        format!("0.{}{digits}", "0".repeat((-point) as usize))
    } else if point as usize >= digits.len() {
        format!("{digits}{}", "0".repeat(point as usize - digits.len()))
    } else {
        let (a, b) = digits.split_at(point as usize);
        format!("{a}.{b}")
    };
    // Leading zeros of the integer part, keeping one.
    let int_len = out.find('.').unwrap_or(out.len());
    let zeros = out[..int_len.saturating_sub(1)]
        .bytes()
        .take_while(|&c| c == b'0')
        .count();
    out.drain(..zeros);
    format!("{sign}{out}")
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS.mmm+00` (for
/// years 0001..9999: see [`Val::millis`]). Hand-rolled: it runs for four
/// columns of every event row.
pub(crate) fn millis_text(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, sec, milli) = (
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000,
    );
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{sec:02}.{milli:03}+00")
}

/// PostgreSQL text cannot hold NUL: it becomes U+FFFD.
pub(crate) fn pg_text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// Appends `s` in COPY text format (backslash escapes; NUL as U+FFFD).
pub(crate) fn copy_escape(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    if !bytes
        .iter()
        .any(|&c| matches!(c, b'\\' | b'\n' | b'\r' | b'\t' | 0))
    {
        out.extend_from_slice(bytes);
        return;
    }
    for &c in bytes {
        match c {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0 => out.extend_from_slice("\u{FFFD}".as_bytes()),
            c => out.push(c),
        }
    }
}

/// Replaces NUL in every string of a JSON value (jsonb rejects `\u0000`).
pub(crate) fn strip_nul(v: &mut Json) {
    match v {
        Json::String(s) if s.contains('\0') => *s = s.replace('\0', "\u{FFFD}"),
        Json::Array(a) => a.iter_mut().for_each(strip_nul),
        Json::Object(o) => {
            if o.keys().any(|k| k.contains('\0')) {
                let old = std::mem::take(o);
                for (k, mut x) in old {
                    strip_nul(&mut x);
                    o.insert(k.replace('\0', "\u{FFFD}"), x);
                }
            } else {
                o.values_mut().for_each(strip_nul);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_dataflows::event::format_iso8601;

    #[test]
    fn inference_follows_the_documented_rules() {
        let v = |s: &str| Val::from_json(&serde_json::from_str(s).unwrap());
        assert_eq!(v("true"), Val::Bool(true));
        assert_eq!(v("12"), Val::Int(12));
        assert_eq!(v("-12"), Val::Int(-12));
        assert_eq!(v("12.5"), Val::Num("12.5".into()));
        assert_eq!(
            v("18446744073709551615"),
            Val::Num("18446744073709551615".into())
        );
        assert_eq!(
            v(r#""2026-01-02T03:04:05.678Z""#),
            Val::Time("2026-01-02 03:04:05.678+00".into())
        );
        assert_eq!(
            v(r#""2026-01-02T03:04:05+02:00""#),
            Val::Time("2026-01-02 01:04:05+00".into())
        );
        assert_eq!(
            v(r#""1969-12-31T23:59:59.000001-00:30""#),
            Val::Time("1970-01-01 00:29:59.000001+00".into())
        );
        for not_time in [
            r#""2026-01-02""#,
            r#""2026-01-02 03:04:05Z""#,
            r#""2026-02-30T03:04:05Z""#,
            r#""0000-01-02T03:04:05Z""#,
            r#""2026-01-02T03:04:05+0200""#,
            r#""2026-01-02T03:04:05.Z""#,
            r#""2026-01-02T03:04:05.1234567Z""#,
            r#""order 2026-01-02T03:04:05Z""#,
        ] {
            assert_eq!(v(not_time).col_type(), Some(ColType::Text), "{not_time}");
        }
        for (json, plain) in [
            ("12.5", "12.5"),
            ("-0.5", "-0.5"),
            ("1e-7", "0.0000001"),
            ("-1.5e-7", "-0.00000015"),
            ("1e22", "10000000000000000000000"),
            ("1.5e3", "1500.0"),
        ] {
            assert_eq!(v(json), Val::Num(plain.into()), "{json}");
        }
        assert_eq!(plain_decimal("0.5e1"), "5");
        assert_eq!(plain_decimal("1.50e1"), "15.0");
        assert_eq!(plain_decimal("00012"), "12");
        assert_eq!(v("[1,2]"), Val::JsonText("[1,2]".into()));
        assert_eq!(v("null").col_type(), None);
        assert_eq!(Val::millis(i64::MAX), Val::Null);
        assert_eq!(
            Val::millis(0).text().as_deref(),
            Some("1970-01-01 00:00:00.000+00")
        );
        // The hand-rolled formatter agrees with chrono over the whole range.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ms = match i {
                0 => MIN_MS,
                1 => MAX_MS,
                2 => -1,
                _ => MIN_MS + (x % (MAX_MS - MIN_MS) as u64) as i64,
            };
            let iso = format_iso8601(ms);
            let want = format!("{} {}+00", &iso[..10], &iso[11..23]);
            assert_eq!(millis_text(ms), want, "{ms}");
        }
    }

    #[test]
    fn merging_widens() {
        use ColType::*;
        assert_eq!(Bigint.merge(Bigint), Bigint);
        assert_eq!(Bigint.merge(Numeric), Numeric);
        assert_eq!(Numeric.merge(Bigint), Numeric);
        assert_eq!(Bigint.merge(Boolean), Text);
        assert_eq!(Timestamptz.merge(Text), Text);
        assert_eq!(Text.merge(Bigint), Text);
        assert_eq!(Other.merge(Other), Text);
        assert_eq!(ColType::from_information_schema("integer"), Other);
    }

    #[test]
    fn copy_text_is_escaped() {
        let mut out = Vec::new();
        copy_escape(&mut out, "a\tb\nc\\d\re\0f");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a\\tb\\nc\\\\d\\re\u{FFFD}f"
        );
        let mut j: Json = serde_json::json!({"a\0": ["x\0", {"b": "y\0"}]});
        strip_nul(&mut j);
        assert_eq!(
            j,
            serde_json::json!({"a\u{FFFD}": ["x\u{FFFD}", {"b": "y\u{FFFD}"}]})
        );
    }
}
