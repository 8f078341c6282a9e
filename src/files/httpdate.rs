//! HTTP dates (RFC 9110 §5.6.7): written as IMF-fixdate, read in all three formats a
//! recipient must accept (IMF-fixdate, the obsolete RFC 850 form and C's asctime form).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"]; // 1970-01-01 was a Thursday
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `time` as an IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT` (whole seconds; times before
/// 1970 are written as the epoch).
pub(crate) fn format(time: SystemTime) -> String {
    let secs = unix_seconds(time);
    let days = secs / 86_400;
    let of_day = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// Whole seconds since the epoch (0 for earlier times).
pub(crate) fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Parses any of the three HTTP date formats; `None` for anything else, including dates
/// before 1970. The weekday name is not checked against the date (RFC 9110 lets a
/// recipient ignore it).
pub(crate) fn parse(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    let (year, month, day, time) = if let Some((_, rest)) = text.split_once(',') {
        let fields: Vec<&str> = rest.split_whitespace().collect();
        match fields.as_slice() {
            // IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT"
            [day, month, year, time, "GMT"] if year.len() == 4 => {
                (number(year)?, month_number(month)?, number(day)?, *time)
            }
            // RFC 850: "Sunday, 06-Nov-94 08:49:37 GMT"
            [date, time, "GMT"] => {
                let mut parts = date.split('-');
                let (day, month, year) = (parts.next()?, parts.next()?, parts.next()?);
                if parts.next().is_some() || year.len() != 2 {
                    return None;
                }
                let yy = number(year)?;
                // Two-digit years: 70-99 are 19xx, 00-69 are 20xx.
                let year = if yy >= 70 { 1900 + yy } else { 2000 + yy };
                (year, month_number(month)?, number(day)?, *time)
            }
            _ => return None,
        }
    } else {
        // asctime: "Sun Nov  6 08:49:37 1994"
        let fields: Vec<&str> = text.split_whitespace().collect();
        match fields.as_slice() {
            [_weekday, month, day, time, year] if year.len() == 4 => {
                (number(year)?, month_number(month)?, number(day)?, *time)
            }
            _ => return None,
        }
    };
    let mut clock = time.split(':');
    let (hour, minute, second) = (
        number(clock.next()?)?,
        number(clock.next()?)?,
        number(clock.next()?)?,
    );
    if clock.next().is_some() || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    if year < 1970 || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second.min(59);
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// A short run of ASCII digits as a number.
fn number(digits: &str) -> Option<u64> {
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn month_number(name: &str) -> Option<u64> {
    MONTHS.iter().position(|m| *m == name).map(|i| i as u64 + 1)
}

fn is_leap(year: u64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a date in the proleptic Gregorian calendar, for years from
/// 1970 on (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `days` after 1970-01-01 as (year, month, day) (Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn formats_imf_fixdate() {
        assert_eq!(format(at(0)), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(format(at(784_111_777)), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(format(at(951_782_400)), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(format(at(4_102_444_799)), "Thu, 31 Dec 2099 23:59:59 GMT");
        // Sub-second parts are dropped.
        let t = at(784_111_777) + Duration::from_millis(999);
        assert_eq!(format(t), "Sun, 06 Nov 1994 08:49:37 GMT");
    }

    #[test]
    fn parses_all_three_formats() {
        let want = Some(at(784_111_777));
        assert_eq!(parse("Sun, 06 Nov 1994 08:49:37 GMT"), want);
        assert_eq!(parse("Sunday, 06-Nov-94 08:49:37 GMT"), want);
        assert_eq!(parse("Sun Nov  6 08:49:37 1994"), want);
        assert_eq!(parse("  Sun, 06 Nov 1994 08:49:37 GMT "), want);
        assert_eq!(
            parse("Thursday, 01-Jan-15 00:00:00 GMT"),
            Some(at(1_420_070_400))
        );
    }

    #[test]
    fn round_trips_every_day_for_centuries() {
        let mut secs = 0;
        while secs < 4_102_444_800 {
            let t = at(secs + 45_296); // 12:34:56
            assert_eq!(parse(&format(t)), Some(t), "{}", format(t));
            secs += 86_400 * 7 + 3_600;
        }
    }

    #[test]
    fn rejects_malformed_dates() {
        for bad in [
            "",
            "yesterday",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Nov 1994 08:49 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 31 Nov 1994 08:49:37 GMT",
            "Sun, 29 Feb 1900 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 1969 08:49:37 GMT",
            "Sun, 06 Nov 94 08:49:37 GMT",
            "Sun, +6 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37:00 GMT",
            "Sunday, 06-Nov-1994 08:49:37 GMT",
            "Sun Nov  6 08:49:37 94",
            "Sun, 99999999999999999999 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
