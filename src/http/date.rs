//! The `Date` header value (RFC 9110 IMF-fixdate), formatted at most once a second per thread.

use std::cell::RefCell;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const LEN: usize = 29; // "Sun, 06 Nov 1994 08:49:37 GMT"

/// A date, and the monotonic times between which it is the wall clock's, as far as the callers'
/// `now` tell: while `now` is within, the wall clock need not be read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DateCache {
    /// The whole header line: `Date: ` + the date + CRLF.
    line: [u8; LINE],
    valid: Option<(Instant, Instant)>,
}

const LINE: usize = 6 + LEN + 2;
/// Where the date is in [`DateCache::line`].
const TEXT: std::ops::Range<usize> = 6..6 + LEN;

/// The `Date` header line of `unix_seconds`.
fn date_line(unix_seconds: u64) -> [u8; LINE] {
    let mut line = *b"Date: Thu, 01 Jan 1970 00:00:00 GMT\r\n";
    line[TEXT].copy_from_slice(&format_imf_fixdate(unix_seconds));
    line
}

impl Default for DateCache {
    fn default() -> DateCache {
        DateCache { line: date_line(0), valid: None }
    }
}

impl DateCache {
    #[inline]
    fn holds_at(&self, now: Instant) -> bool {
        self.valid.is_some_and(|(from, until)| from <= now && now < until)
    }

    /// Appends the `Date` header line (CRLF included) at `now`, a recent reading of the
    /// monotonic clock: from this cache while it holds, else from the thread's, which reads the
    /// wall clock once a second at most.
    #[inline]
    pub(crate) fn extend_line(&mut self, out: &mut Vec<u8>, now: Instant) {
        if !self.holds_at(now) {
            *self = thread_date(now);
        }
        out.extend_from_slice(&self.line);
    }
}

struct Cached {
    second: u64,
    date: DateCache,
}

thread_local! {
    static CACHE: RefCell<Cached> = const {
        RefCell::new(Cached { second: u64::MAX, date: DateCache { line: [0; LINE], valid: None } })
    };
}

/// Appends the current date in IMF-fixdate form.
pub(crate) fn extend_with_now(out: &mut Vec<u8>) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.second != now {
            cache.date = DateCache { line: date_line(now), valid: None };
            cache.second = now;
        }
        out.extend_from_slice(&cache.date.line[TEXT]);
    });
}

/// The date at `now`, and for how long it holds.
fn thread_date(now: Instant) -> DateCache {
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if !cache.date.holds_at(now) {
            let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            let second = wall.as_secs();
            if cache.second != second {
                cache.date.line = date_line(second);
                cache.second = second;
            }
            // `now` came no later than the wall clock's reading: the second ends no sooner than this.
            let left = Duration::from_nanos(u64::from(1_000_000_000 - wall.subsec_nanos()));
            cache.date.valid = now.checked_add(left).map(|until| (now, until));
        }
        cache.date
    })
}

const MONTHS: [&[u8; 3]; 12] =
    [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"];

fn format_imf_fixdate(unix_seconds: u64) -> [u8; LEN] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    let days = unix_seconds / 86_400;
    let secs = unix_seconds % 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    let mut t = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    t[..3].copy_from_slice(DAYS[(days % 7) as usize]);
    put2(&mut t[5..7], day as u64);
    t[8..11].copy_from_slice(MONTHS[month as usize - 1]);
    let y = year as u64;
    put2(&mut t[12..14], y / 100 % 100);
    put2(&mut t[14..16], y % 100);
    put_time(&mut t[17..25], secs);
    t
}

/// `unix_seconds` as an HTTP-date in IMF-fixdate form (`Sun, 06 Nov 1994 08:49:37 GMT`), for
/// `Last-Modified` and the like.
pub(crate) fn http_date(unix_seconds: u64) -> String {
    // IMF-fixdate is ASCII.
    format_imf_fixdate(unix_seconds).iter().map(|&b| char::from(b)).collect()
}

/// An HTTP-date (RFC 9110 §5.6.7) as seconds since the epoch: IMF-fixdate, or either obsolete
/// form a recipient must accept (RFC 850 with a two-digit year, ANSI C's `asctime`). `None` for
/// anything else, an impossible date included.
pub(crate) fn parse_http_date(value: &[u8]) -> Option<i64> {
    let v = value.trim_ascii();
    let (day_name, rest) = v.split_at(v.iter().position(|&b| b == b' ' || b == b',')?);
    if let Some(rest) = rest.strip_prefix(b", ") {
        if DAY_NAMES.contains(&day_name) {
            // IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
            let [d1, d2, b' ', m1, m2, m3, b' ', y1, y2, y3, y4, b' ', time @ .., b' ', b'G', b'M', b'T'] = rest else {
                return None;
            };
            let year = digits(&[*y1, *y2, *y3, *y4])?;
            return civil_to_unix(year, month(&[*m1, *m2, *m3])?, digits(&[*d1, *d2])?, time);
        }
        if LONG_DAY_NAMES.contains(&day_name) {
            // rfc850-date: `Sunday, 06-Nov-94 08:49:37 GMT`.
            let [d1, d2, b'-', m1, m2, m3, b'-', y1, y2, b' ', time @ .., b' ', b'G', b'M', b'T'] = rest else {
                return None;
            };
            return civil_to_unix(
                two_digit_year(digits(&[*y1, *y2])?),
                month(&[*m1, *m2, *m3])?,
                digits(&[*d1, *d2])?,
                time,
            );
        }
        return None;
    }
    // asctime-date: `Sun Nov  6 08:49:37 1994`.
    let [b' ', m1, m2, m3, b' ', d1, d2, b' ', time @ .., b' ', y1, y2, y3, y4] = rest else { return None };
    if !DAY_NAMES.contains(&day_name) {
        return None;
    }
    let day = if *d1 == b' ' { digits(&[*d2])? } else { digits(&[*d1, *d2])? };
    civil_to_unix(digits(&[*y1, *y2, *y3, *y4])?, month(&[*m1, *m2, *m3])?, day, time)
}

const DAY_NAMES: [&[u8]; 7] = [b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"];
const LONG_DAY_NAMES: [&[u8]; 7] =
    [b"Monday", b"Tuesday", b"Wednesday", b"Thursday", b"Friday", b"Saturday", b"Sunday"];

/// A string of ASCII digits as a number.
fn digits(s: &[u8]) -> Option<i64> {
    s.iter().try_fold(0, |n, &b| b.is_ascii_digit().then(|| n * 10 + i64::from(b - b'0')))
}

fn month(name: &[u8; 3]) -> Option<i64> {
    MONTHS.iter().position(|m| *m == name).map(|i| i as i64 + 1)
}

/// RFC 9110 §5.6.7: a two-digit year more than 50 years in the future is the most recent past
/// year with those digits.
fn two_digit_year(yy: i64) -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (this_year, _, _) = civil_from_days((now / 86_400) as i64);
    let year = this_year - this_year.rem_euclid(100) + yy;
    if year > this_year + 50 {
        year - 100
    } else {
        year
    }
}

/// Seconds since the epoch of a date and an `HH:MM:SS` time, UTC; `None` if impossible.
fn civil_to_unix(year: i64, month: i64, day: i64, time: &[u8]) -> Option<i64> {
    let [h1, h2, b':', m1, m2, b':', s1, s2] = time else { return None };
    let (h, m, s) = (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?, digits(&[*s1, *s2])?);
    // A leap second (`:60`) is allowed by the grammar; it is the next second's start.
    if h > 23 || m > 59 || s > 60 {
        return None;
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&month) || day < 1 || day > month_days[month as usize - 1] {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s)
}

/// (year, month 1..=12, day 1..=31) to days since 1970-01-01, Howard Hinnant's algorithm.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Now as a log line's timestamp, in UTC: `2026-12-01 14:00:00 +0000` (gunicorn's layout).
pub(crate) fn log_timestamp() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (year, month, day) = civil_from_days((now / 86_400) as i64);
    let secs = now % 86_400;
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} +0000", secs / 3600, secs / 60 % 60, secs % 60)
}

/// Appends now as the Common Log Format's time, `[01/Dec/2026:14:00:00 +0000]` (UTC), formatted at
/// most once a second per thread.
pub(crate) fn extend_with_clf_now(out: &mut Vec<u8>) {
    thread_local! {
        static CLF: std::cell::Cell<(u64, [u8; 28])> = const { std::cell::Cell::new((u64::MAX, [0; 28])) };
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (second, mut text) = CLF.get();
    if second != now {
        text = clf_time(now);
        CLF.set((now, text));
    }
    out.extend_from_slice(&text);
}

fn clf_time(unix_seconds: u64) -> [u8; 28] {
    let (year, month, day) = civil_from_days((unix_seconds / 86_400) as i64);
    let secs = unix_seconds % 86_400;
    let mut t = *b"[01/Jan/1970:00:00:00 +0000]";
    put2(&mut t[1..3], u64::from(day));
    t[4..7].copy_from_slice(MONTHS[month as usize - 1]);
    let y = year as u64;
    put2(&mut t[8..10], y / 100 % 100);
    put2(&mut t[10..12], y % 100);
    put_time(&mut t[13..21], secs);
    t
}

/// `HH:MM:SS` of `secs` into the 8 bytes of `dst` (its colons already there).
fn put_time(dst: &mut [u8], secs: u64) {
    put2(&mut dst[0..2], secs / 3600);
    put2(&mut dst[3..5], secs / 60 % 60);
    put2(&mut dst[6..8], secs % 60);
}

fn put2(dst: &mut [u8], n: u64) {
    dst[0] = b'0' + (n / 10) as u8;
    dst[1] = b'0' + (n % 10) as u8;
}

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_date_at_a_time_is_the_wall_clocks() {
        let wall = || SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let t0 = Instant::now();
        let mut cache = DateCache::default();
        for now in [t0, t0, t0 + Duration::from_secs(5), t0, Instant::now()] {
            let before = wall();
            let mut out = Vec::new();
            cache.extend_line(&mut out, now);
            let after = wall();
            assert!(out == date_line(before) || out == date_line(after), "{now:?}");
            assert_eq!(&out[..6], b"Date: ");
            assert_eq!(&out[out.len() - 2..], b"\r\n");
        }
    }

    #[test]
    fn parses_the_three_forms_of_an_http_date() {
        let t = Some(784_111_777);
        assert_eq!(parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT"), t);
        assert_eq!(parse_http_date(b" Sun, 06 Nov 1994 08:49:37 GMT\t"), t);
        assert_eq!(parse_http_date(b"Sunday, 06-Nov-94 08:49:37 GMT"), t);
        assert_eq!(parse_http_date(b"Sun Nov  6 08:49:37 1994"), t);
        assert_eq!(parse_http_date(b"Sun Nov 06 08:49:37 1994"), t);
        assert_eq!(parse_http_date(b"Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse_http_date(b"Wed, 31 Dec 1969 23:59:59 GMT"), Some(-1));
        assert_eq!(parse_http_date(b"Tue, 29 Feb 2000 00:00:00 GMT"), Some(951_782_400));
        assert_eq!(parse_http_date(b"Wed, 30 Jun 2027 23:59:60 GMT"), Some(1_814_400_000));
        // A two-digit year is at most 50 years ahead.
        let this_year =
            civil_from_days((SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() / 86_400) as i64).0;
        let ahead = parse_http_date(format!("Monday, 01-Jan-{:02} 00:00:00 GMT", (this_year + 49) % 100).as_bytes());
        let behind = parse_http_date(format!("Monday, 01-Jan-{:02} 00:00:00 GMT", (this_year + 51) % 100).as_bytes());
        assert_eq!(ahead.map(|t| civil_from_days(t / 86_400).0), Some(this_year + 49));
        assert_eq!(behind.map(|t| civil_from_days(t / 86_400).0), Some(this_year - 49));
        for bad in [
            &b""[..],
            b"yesterday",
            b"Sun, 06 Nov 1994 08:49:37 UTC",
            b"Sun, 6 Nov 1994 08:49:37 GMT",
            b"Sun, 06 Nov 94 08:49:37 GMT",
            b"Sun, 06 Foo 1994 08:49:37 GMT",
            b"Sun, 31 Nov 1994 08:49:37 GMT",
            b"Sun, 29 Feb 1900 08:49:37 GMT",
            b"Sun, 06 Nov 1994 24:00:00 GMT",
            b"Sun, 06 Nov 1994 08:60:00 GMT",
            b"Sun, 06 Nov 1994 08:49 GMT",
            b"Sun 06 Nov 1994 08:49:37 GMT",
            b"Sunday, 06 Nov 1994 08:49:37 GMT",
            b"Sun, 06-Nov-94 08:49:37 GMT",
            b"Xyz, 06 Nov 1994 08:49:37 GMT",
            b"Sun Nov  6 08:49:37 94",
            b"Sun, 06 Nov 1994 08:49:37 GMT, Mon, 07 Nov 1994 08:49:37 GMT",
            b"Sun, 0x Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        for t in [0, 1, 784_111_777, 951_782_400, 1_795_737_599, 4_102_444_800] {
            assert_eq!(parse_http_date(http_date(t).as_bytes()), Some(t as i64));
        }
    }

    #[test]
    fn formats_known_dates() {
        assert_eq!(&format_imf_fixdate(784_111_777), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(&format_imf_fixdate(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(&format_imf_fixdate(951_782_400), b"Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(&format_imf_fixdate(1_795_737_599), b"Thu, 26 Nov 2026 23:59:59 GMT");
    }

    #[test]
    fn formats_common_log_format_times() {
        assert_eq!(&clf_time(784_111_777), b"[06/Nov/1994:08:49:37 +0000]");
        assert_eq!(&clf_time(1_795_737_599), b"[26/Nov/2026:23:59:59 +0000]");
        let mut out = Vec::new();
        extend_with_clf_now(&mut out);
        extend_with_clf_now(&mut out);
        assert_eq!(out.len(), 56);
    }
}
