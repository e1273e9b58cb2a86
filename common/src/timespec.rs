//! duplicity's time syntax (`-t`, `--time`, `remove-older-than`, `--full-if-older-than`;
//! duplicity-format.md §7.4).
//!
//! Accepted: `now`; epoch seconds; intervals before now such as `90s`, `3D2h`, `2W1D`
//! (units `s m h D W M Y`: seconds, minutes, hours, days, weeks, 30-day months, 365-day
//! years); `YYYYMMDDTHHMMSSZ` (the form in object names); `2002-04-26T04:22:01-07:00`,
//! `…Z`, or without offset in local time; dates `YYYY-MM-DD`, `YYYY/MM/DD`, `MM/DD/YYYY`
//! meaning local midnight.

use chrono::{DateTime, Local, NaiveDate, NaiveDateTime, TimeZone};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad time string {input:?}: {reason}. Use e.g. now, 3D, 2W1D, 1700000000, 2026-11-20, \
     2026-11-20T04:17:41 or 20261120T041741Z"
)]
pub struct TimeError {
    pub input: String,
    pub reason: String,
}

fn err(input: &str, reason: impl Into<String>) -> TimeError {
    TimeError {
        input: input.to_string(),
        reason: reason.into(),
    }
}

fn unit_seconds(u: char) -> Option<i64> {
    Some(match u {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'D' => 86_400,
        'W' => 7 * 86_400,
        'M' => 30 * 86_400,
        'Y' => 365 * 86_400,
        _ => return None,
    })
}

/// Parses an interval like `3D2h` into seconds.
pub fn parse_interval(s: &str) -> Result<i64, TimeError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(err(s, "empty interval"));
    }
    let mut total: i64 = 0;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = unit_seconds(c)
            .ok_or_else(|| err(s, format!("unknown unit {c:?} (use s m h D W M Y)")))?;
        if num.is_empty() {
            return Err(err(s, format!("unit {c:?} without a number")));
        }
        let n: i64 = num.parse().map_err(|_| err(s, "number too large"))?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| err(s, "interval too large"))?;
        num.clear();
    }
    if !num.is_empty() {
        return Err(err(s, "a number needs a unit (s m h D W M Y)"));
    }
    Ok(total)
}

fn local_midnight(input: &str, d: NaiveDate) -> Result<i64, TimeError> {
    local_ts(input, d.and_hms_opt(0, 0, 0).expect("midnight exists"))
}

fn local_ts(input: &str, dt: NaiveDateTime) -> Result<i64, TimeError> {
    Local
        .from_local_datetime(&dt)
        .earliest()
        .map(|t| t.timestamp())
        .ok_or_else(|| {
            err(
                input,
                "that local time does not exist (daylight saving change)",
            )
        })
}

/// Parses a time string relative to `now` (epoch seconds) into epoch seconds.
pub fn parse_time(input: &str, now: i64) -> Result<i64, TimeError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(err(input, "empty"));
    }
    if s == "now" {
        return Ok(now);
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map_err(|_| err(input, "number too large"));
    }
    if s.chars().next().is_some_and(|c| c.is_ascii_digit())
        && s.chars().last().is_some_and(|c| unit_seconds(c).is_some())
        && s.chars()
            .all(|c| c.is_ascii_digit() || unit_seconds(c).is_some())
    {
        return Ok(now - parse_interval(s)?);
    }
    if let Ok(dt) = NaiveDateTime::parse_from_str(&s.to_ascii_uppercase(), "%Y%m%dT%H%M%SZ") {
        return Ok(dt.and_utc().timestamp());
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Ok(dt.timestamp());
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M"] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(s, fmt) {
            return local_ts(input, dt);
        }
    }
    for fmt in ["%Y-%m-%d", "%Y/%m/%d", "%m/%d/%Y"] {
        if let Ok(d) = NaiveDate::parse_from_str(s, fmt) {
            return local_midnight(input, d);
        }
    }
    Err(err(input, "not a time, date or interval"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_763_600_000;

    #[test]
    fn intervals() {
        assert_eq!(parse_time("3D", NOW).unwrap(), NOW - 3 * 86_400);
        assert_eq!(parse_time("2W1D", NOW).unwrap(), NOW - 15 * 86_400);
        assert_eq!(parse_time("90s", NOW).unwrap(), NOW - 90);
        assert_eq!(parse_time("1h30m", NOW).unwrap(), NOW - 5400);
        assert_eq!(parse_time("1M", NOW).unwrap(), NOW - 30 * 86_400);
        assert_eq!(parse_time("1Y", NOW).unwrap(), NOW - 365 * 86_400);
        assert_eq!(parse_interval("7D").unwrap(), 604_800);
        assert!(parse_interval("7").is_err());
        assert!(parse_interval("D").is_err());
        assert!(parse_interval("3x").is_err());
    }

    #[test]
    fn absolute_forms() {
        assert_eq!(parse_time("now", NOW).unwrap(), NOW);
        assert_eq!(parse_time("1700000000", NOW).unwrap(), 1_700_000_000);
        assert_eq!(parse_time("20231114T221320Z", NOW).unwrap(), 1_700_000_000);
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z", NOW).unwrap(),
            1_700_000_000
        );
        assert_eq!(
            parse_time("2023-11-14T23:13:20+01:00", NOW).unwrap(),
            1_700_000_000
        );
        let local = parse_time("2026-11-20T04:17:41", NOW).unwrap();
        let date = parse_time("2026-11-20", NOW).unwrap();
        assert_eq!(local - date, 4 * 3600 + 17 * 60 + 41);
        assert_eq!(parse_time("2026/11/20", NOW).unwrap(), date);
        assert_eq!(parse_time("11/20/2026", NOW).unwrap(), date);
    }

    #[test]
    fn errors_name_the_input() {
        let e = parse_time("yesterday", NOW).unwrap_err();
        assert!(e.to_string().contains("yesterday"));
        assert!(parse_time("2026-13-01", NOW).is_err());
        assert!(parse_time("", NOW).is_err());
    }
}
