//! When to retry a request, and how long to wait first.
//!
//! * [`classify`] sorts HTTP statuses: 2xx succeed; 408, 429 and 5xx other
//!   than 501 (Not Implemented) and 505 (HTTP Version Not Supported) are
//!   transient; everything else (other 4xx, 501, 505, 1xx and 3xx, since
//!   redirects are not followed) is permanent.
//! * [`Backoff`] draws waits with *full jitter*: attempt `n` (1-based) waits
//!   a uniformly random duration in `[0, min(max, initial × 2^(n-1))]`, so
//!   many failing senders spread out instead of retrying in lockstep.
//! * [`parse_retry_after`] reads a `Retry-After` header in either form the
//!   HTTP spec allows: delay-seconds (`120`) or an HTTP-date
//!   (`Sun, 06 Nov 1994 08:49:37 GMT`, also the obsolete RFC 850 and asctime
//!   forms).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use xxhash_rust::xxh3::xxh3_64;

/// What a response status means for the batch that got it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StatusClass {
    /// Delivered.
    Success,
    /// Worth retrying later.
    Transient,
    /// Will never succeed as it is: discard and record.
    Permanent,
}

/// Sorts an HTTP status (see the module docs).
pub(crate) fn classify(status: u16) -> StatusClass {
    match status {
        200..=299 => StatusClass::Success,
        408 | 429 => StatusClass::Transient,
        501 | 505 => StatusClass::Permanent,
        500..=599 => StatusClass::Transient,
        _ => StatusClass::Permanent,
    }
}

/// Randomized exponential backoff with full jitter.
#[derive(Debug)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    rng: u64,
}

impl Backoff {
    /// A backoff seeded from `seed` and the clock (jitter differs per process).
    pub(crate) fn new(initial: Duration, max: Duration, seed: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mixed = xxh3_64(format!("{seed}|{}|{nanos}", std::process::id()).as_bytes());
        Backoff {
            initial,
            max,
            rng: mixed | 1,
        }
    }

    /// The upper bound of the wait before attempt `attempt + 1`, after
    /// `attempt` (≥ 1) failures.
    pub(crate) fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(32);
        self.initial
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.max)
    }

    /// A random wait in `[0, ceiling(attempt)]`.
    pub(crate) fn wait(&mut self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt).as_nanos() as u64;
        let r = self.next_u64();
        Duration::from_nanos(if ceiling == u64::MAX {
            r
        } else {
            r % (ceiling + 1)
        })
    }

    /// xorshift64*: plenty for jitter.
    fn next_u64(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The wait a `Retry-After` value asks for, from `now`; `None` if the value
/// is neither delay-seconds nor an HTTP-date. A date in the past means no wait.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = parse_http_date(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

/// Parses an HTTP-date: IMF-fixdate, RFC 850 or asctime.
///
/// The three forms differ in order and separators, but each has one month
/// name, one `hh:mm:ss` and two numbers, day before year.
pub(crate) fn parse_http_date(s: &str) -> Option<SystemTime> {
    let (mut month, mut clock, mut numbers) = (None, None, Vec::new());
    for token in s.split([' ', ',', '-']).filter(|t| !t.is_empty()) {
        if token.contains(':') {
            clock = Some(parse_clock(token)?);
        } else if token.bytes().all(|b| b.is_ascii_digit()) {
            numbers.push(token.parse::<i64>().ok()?);
        } else if let Some(m) = MONTHS.iter().position(|m| token.eq_ignore_ascii_case(m)) {
            month = Some(m as u32 + 1);
        } else if !token.eq_ignore_ascii_case("GMT") && !is_weekday(token) {
            return None;
        }
    }
    let [day, year] = numbers[..] else {
        return None;
    };
    let year = match year {
        0..=69 => 2000 + year,
        70..=99 => 1900 + year,
        _ => year,
    };
    let (month, (h, m, sec)) = (month?, clock?);
    if !(1..=31).contains(&day) {
        return None;
    }
    let days = days_from_civil(year, month, day as u32);
    let secs = days * 86_400 + (h * 3600 + m * 60 + sec) as i64;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

fn is_weekday(token: &str) -> bool {
    let t = token.to_ascii_lowercase();
    ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        .iter()
        .any(|d| t.starts_with(d))
}

fn parse_clock(token: &str) -> Option<(u32, u32, u32)> {
    let mut parts = token.split(':').map(|p| p.parse::<u32>().ok());
    let (h, m, s) = (parts.next()??, parts.next()??, parts.next()??);
    (parts.next().is_none() && h < 24 && m < 60 && s < 61).then_some((h, m, s))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        use StatusClass::*;
        for (status, class) in [
            (200, Success),
            (204, Success),
            (301, Permanent),
            (400, Permanent),
            (401, Permanent),
            (404, Permanent),
            (408, Transient),
            (413, Permanent),
            (429, Transient),
            (500, Transient),
            (501, Permanent),
            (502, Transient),
            (503, Transient),
            (504, Transient),
            (505, Permanent),
            (599, Transient),
        ] {
            assert_eq!(classify(status), class, "status {status}");
        }
    }

    #[test]
    fn http_dates() {
        // 1994-11-06T08:49:37Z.
        let expected = UNIX_EPOCH + Duration::from_secs(784_111_777);
        for s in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(parse_http_date(s), Some(expected), "{s}");
        }
        assert_eq!(
            parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(UNIX_EPOCH)
        );
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2028 23:59:59 GMT"),
            Some(UNIX_EPOCH + Duration::from_secs(1_835_481_599))
        );
        for bad in [
            "",
            "soon",
            "Sun, 06 Nov 1994",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 25:49:37 GMT",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 PST",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_both_forms() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_770);
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(7))
        );
        // A date in the past: retry now.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("1.5", now), None);
    }

    #[test]
    fn full_jitter_stays_under_the_ceiling() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5), "t");
        assert_eq!(b.ceiling(1), Duration::from_millis(100));
        assert_eq!(b.ceiling(3), Duration::from_millis(400));
        assert_eq!(b.ceiling(10), Duration::from_secs(5));
        assert_eq!(b.ceiling(1000), Duration::from_secs(5));
        let mut distinct = std::collections::BTreeSet::new();
        for attempt in 1..200 {
            let w = b.wait(attempt);
            assert!(w <= b.ceiling(attempt));
            distinct.insert(w);
        }
        assert!(distinct.len() > 100, "jitter is random: {}", distinct.len());
    }
}
