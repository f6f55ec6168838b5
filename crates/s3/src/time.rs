//! The two date forms S3 answers with: HTTP's `Last-Modified` (RFC 7231's IMF-fixdate) and
//! ListObjectsV2's ISO 8601 `LastModified`.

use std::time::SystemTime;

use zocalo_proto::listing::from_civil;

/// `Sun, 29 Nov 2026 16:12:14 GMT`.
pub(crate) fn parse_http_date(text: &str) -> Option<SystemTime> {
    let mut parts = text.split_whitespace().skip(1);
    let day = parts.next()?.parse().ok()?;
    let month_name = parts.next()?;
    let month = MONTHS.iter().position(|m| *m == month_name)? as u32 + 1;
    let year = parts.next()?.parse().ok()?;
    let (h, m, s) = clock(parts.next()?)?;
    from_civil(year, month, day, h, m, s)
}

/// `2026-11-29T16:12:14.000Z`.
pub(crate) fn parse_iso8601(text: &str) -> Option<SystemTime> {
    let (date, clock_text) = text.split_once('T')?;
    let mut date = date.split('-');
    let year = date.next()?.parse().ok()?;
    let month = date.next()?.parse().ok()?;
    let day = date.next()?.parse().ok()?;
    let (h, m, s) = clock(clock_text.get(..8)?)?;
    from_civil(year, month, day, h, m, s)
}

fn clock(text: &str) -> Option<(u32, u32, u32)> {
    let mut parts = text.split(':').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

const MONTHS: [&str; 12] =
    ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_parse() {
        let expected = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_968_734);
        assert_eq!(parse_http_date("Sun, 29 Nov 2026 16:12:14 GMT"), Some(expected));
        assert_eq!(parse_iso8601("2026-11-29T16:12:14.000Z"), Some(expected));
        assert_eq!(parse_iso8601("2026-11-29T16:12:14Z"), Some(expected));
        for bad in ["", "yesterday", "2026-13-01T00:00:00Z", "Sun, 29 Foo 2026 16:12:14 GMT"] {
            assert_eq!(parse_iso8601(bad).or(parse_http_date(bad)), None, "{bad}");
        }
    }
}
