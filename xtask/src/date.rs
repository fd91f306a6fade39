//! Calendar dates for release notes, through humantime's RFC 3339 formatting.

use std::time::{SystemTime, UNIX_EPOCH};

/// Today's date in UTC as `YYYY-MM-DD`.
pub(crate) fn today_utc() -> String {
    date_utc(SystemTime::now())
}

/// The UTC date of `t` as `YYYY-MM-DD`; a clock before 1970 reads as 1970-01-01.
pub(crate) fn date_utc(t: SystemTime) -> String {
    let mut stamp = rfc3339_utc(t);
    stamp.truncate("YYYY-MM-DD".len());
    stamp
}

/// `t` as `2026-11-21T21:40:00Z` (whole seconds); a clock before 1970 reads as the epoch,
/// which humantime can format (it refuses earlier times).
pub(crate) fn rfc3339_utc(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t.max(UNIX_EPOCH)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn day(days: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(days * 86_400)
    }

    #[test]
    fn known_dates() {
        assert_eq!(date_utc(day(0)), "1970-01-01");
        assert_eq!(date_utc(UNIX_EPOCH - Duration::from_secs(1)), "1970-01-01");
        assert_eq!(date_utc(day(11_016)), "2000-02-29");
        assert_eq!(date_utc(day(20_778)), "2026-11-21");
        assert_eq!(date_utc(day(20_513)), "2026-03-01");
        assert_eq!(rfc3339_utc(day(20_778) + Duration::from_millis(78_000_500)), "2026-11-21T21:40:00Z");
    }

    #[test]
    fn today_is_an_iso_date() {
        let today = today_utc();
        assert_eq!(today.len(), 10, "{today}");
        assert!(today.as_bytes()[4] == b'-' && today.as_bytes()[7] == b'-', "{today}");
    }
}
