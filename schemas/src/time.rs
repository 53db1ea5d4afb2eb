//! Times on the wire: RFC 3339 strings in UTC.

use chrono::{DateTime, SecondsFormat, Utc};

/// Formats a time the way every record and alert carries it
/// (`2026-11-22T10:00:00.123Z`).
pub fn format(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses an RFC 3339 time into UTC; `None` when it is not one.
pub fn parse(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_utc() {
        let t = parse("2026-11-22T11:00:00.250+01:00").expect("valid time");
        assert_eq!(format(t), "2026-11-22T10:00:00.250Z");
        assert_eq!(parse(&format(t)), Some(t));
        assert_eq!(parse("yesterday"), None);
    }
}
