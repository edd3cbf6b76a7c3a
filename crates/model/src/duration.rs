//! Durations as scenario files spell them: `250ms`, `1s`, `1.5s`, `2m`.

use std::time::Duration;

/// Parses `250ms`, `1s`, `1.5s`, `2m`; the error says what was expected.
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit_ms) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        return Err(format!("expected a duration such as `500ms`, `2s` or `1m`, found `{t}`"));
    };
    let value: f64 =
        number.trim().parse().ok().filter(|v: &f64| v.is_finite() && *v >= 0.0).ok_or_else(
            || format!("expected a duration such as `500ms`, `2s` or `1m`, found `{t}`"),
        )?;
    Ok(Duration::from_micros((value * unit_ms * 1000.0).round() as u64))
}

/// Formats a duration the way [`parse`] reads it, in the largest exact unit.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else if ms > 1000 && ms.is_multiple_of(100) {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse(" 3s ").unwrap(), Duration::from_secs(3));
    }

    #[test]
    fn rejects_with_a_reason() {
        assert_eq!(
            parse("3 hours").unwrap_err(),
            "expected a duration such as `500ms`, `2s` or `1m`, found `3 hours`"
        );
        assert!(parse("-1s").is_err());
        assert!(parse("s").is_err());
    }

    #[test]
    fn formats_round_trip() {
        for ms in [50, 1000, 1500, 60_000, 1234] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse(&format(d)).unwrap(), d);
        }
    }
}
