//! Showing keys and values, which are arbitrary bytes, to people.
//!
//! Bytes that are valid UTF-8 without control characters print as they are;
//! anything else prints as `0x` followed by lowercase hex, so a binary value
//! never garbles a terminal and never looks like text it is not.

use std::borrow::Cow;

/// `bytes` as text if it is printable UTF-8, else `0x`-prefixed hex.
pub fn printable(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) if !text.chars().any(char::is_control) && !looks_like_hex(text) => Cow::Borrowed(text),
        _ => Cow::Owned(hex(bytes)),
    }
}

/// `0x`-prefixed lowercase hex of `bytes` (`0x` alone for no bytes).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(2 + 2 * bytes.len());
    out.push_str("0x");
    for byte in bytes {
        write!(out, "{byte:02x}").expect("writing to a String cannot fail");
    }
    out
}

/// Parses what [`printable`] prints for non-text: `0x` and an even number of
/// hex digits. `None` for anything else.
pub fn parse_hex(text: &str) -> Option<Vec<u8>> {
    let digits = text.strip_prefix("0x")?;
    if digits.len() % 2 != 0 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..digits.len()).step_by(2).map(|at| u8::from_str_radix(digits.get(at..at + 2)?, 16).ok()).collect()
}

/// Milliseconds since the Unix epoch as an RFC 3339 UTC time with
/// milliseconds, e.g. `2024-11-22T03:20:00.123Z`.
pub fn utc_millis(ms: u64) -> String {
    let (days, ms_of_day) = (ms / 86_400_000, ms % 86_400_000);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = i64::try_from(days).unwrap_or(i64::MAX / 2) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (hours, minutes) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60);
    let (seconds, millis) = (ms_of_day / 1_000 % 60, ms_of_day % 1_000);
    format!("{year:04}-{month:02}-{day:02}T{hours:02}:{minutes:02}:{seconds:02}.{millis:03}Z")
}

/// Text that would read back as hex is itself shown as hex, so the display
/// stays unambiguous.
fn looks_like_hex(text: &str) -> bool {
    parse_hex(text).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_prints_as_text() {
        assert_eq!(printable(b"hello world"), "hello world");
        assert_eq!(printable("grüße".as_bytes()), "grüße");
        assert_eq!(printable(b""), "");
    }

    #[test]
    fn binary_and_control_characters_print_as_hex() {
        assert_eq!(printable(&[0xff, 0x00, 0x10]), "0xff0010");
        assert_eq!(printable(b"line\nbreak"), "0x6c696e650a627265616b");
        assert_eq!(printable(b"\x1b[31mred"), "0x1b5b33316d726564");
    }

    #[test]
    fn text_that_looks_like_hex_is_shown_as_hex() {
        assert_eq!(printable(b"0xff"), "0x30786666");
        assert_eq!(printable(b"0xnope"), "0xnope");
    }

    #[test]
    fn utc_times() {
        assert_eq!(utc_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc_millis(1_732_245_600_123), "2024-11-22T03:20:00.123Z");
        assert_eq!(utc_millis(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(utc_millis(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn hex_round_trips() {
        let bytes = [0u8, 1, 0x7f, 0x80, 0xff];
        assert_eq!(parse_hex(&hex(&bytes)), Some(bytes.to_vec()));
        assert_eq!(parse_hex("0x"), Some(vec![]));
        assert_eq!(parse_hex("0xabc"), None);
        assert_eq!(parse_hex("0xzz"), None);
        assert_eq!(parse_hex("0x+f"), None);
        assert_eq!(parse_hex("ff"), None);
    }
}
