//! USD amounts as the API writes them: decimal strings with exactly two places ("12.34").

use rust_decimal::Decimal;
use std::str::FromStr;

/// Cents in a dollar: USD's ISO 4217 exponent is 2.
const CENTS_PER_DOLLAR: u128 = 100;

/// Cents as a USD amount string ("12.34", "-0.05"), formatted like the server's
/// `Currency::format`: integer arithmetic, no rounding. Kept here so that a client does not pull
/// in the cluster's currency table for its one currency.
pub fn cents(minor: i128) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let magnitude = minor.unsigned_abs();
    let dollars = magnitude / CENTS_PER_DOLLAR;
    let remainder = magnitude % CENTS_PER_DOLLAR;
    format!("{sign}{dollars}.{remainder:02}")
}

/// A USD amount string back to cents; `None` unless it has exactly two decimals.
pub fn parse_cents(text: &str) -> Option<i128> {
    let decimal = Decimal::from_str(text).ok()?;
    (decimal.scale() == 2).then(|| decimal.mantissa())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Amount text round-trips, signs and padding included.
    #[test]
    fn cents_round_trip() {
        for minor in [0, 5, -5, 1234, -1230, 1_000_000_000, -99_999_999_999] {
            assert_eq!(parse_cents(&cents(minor)), Some(minor), "{minor}");
        }
        assert_eq!(cents(5), "0.05");
        assert_eq!(cents(-5), "-0.05");
        assert_eq!(cents(-1230), "-12.30");
        assert_eq!(cents(0), "0.00");
        assert_eq!(parse_cents("12"), None);
        assert_eq!(parse_cents("12.345"), None);
    }
}
