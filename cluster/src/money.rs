//! Currencies and amounts. Inside the cluster an amount is an `i128` count of minor units at the
//! currency's ISO 4217 exponent; decimal strings exist only at the HTTP edge.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Minor units of a currency (cents for USD, yen for JPY, fils for KWD).
pub type Minor = i128;

/// The largest amount one transfer may move, in minor units. Keeps every balance far from
/// `i128` overflow: 10^24 minor units is a trillion trillion cents.
pub const AMOUNT_MINOR_MAX: Minor = 1_000_000_000_000_000_000_000_000;

/// ISO 4217 codes this cluster accepts, with their exponents (digits after the decimal point).
/// Sorted by code so lookups can binary-search.
const CURRENCIES: &[(&str, u32)] = &[
    ("AED", 2),
    ("AUD", 2),
    ("BHD", 3),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("IQD", 3),
    ("ISK", 0),
    ("JOD", 3),
    ("JPY", 0),
    ("KRW", 0),
    ("KWD", 3),
    ("LYD", 3),
    ("MXN", 2),
    ("MYR", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PHP", 2),
    ("PLN", 2),
    ("SAR", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("THB", 2),
    ("TND", 3),
    ("TRY", 2),
    ("TWD", 2),
    ("UGX", 0),
    ("USD", 2),
    ("VND", 0),
    ("XAF", 0),
    ("XOF", 0),
    ("ZAR", 2),
];

/// An ISO 4217 currency known to the built-in table.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency {
    code: [u8; 3],
    exponent: u8,
}

impl Currency {
    /// Looks a code up in the built-in table; codes are upper case ("usd" is unknown).
    pub fn from_code(code: &str) -> Option<Currency> {
        let index = CURRENCIES.binary_search_by(|(c, _)| (*c).cmp(code)).ok()?;
        let (known, exponent) = CURRENCIES[index];
        let bytes = known.as_bytes();
        Some(Currency { code: [bytes[0], bytes[1], bytes[2]], exponent: u8::try_from(exponent).expect("exponents are single digits") })
    }

    pub fn code(&self) -> &str {
        std::str::from_utf8(&self.code).expect("codes come from the ASCII table")
    }

    /// Digits after the decimal point (2 for USD, 0 for JPY, 3 for KWD).
    pub fn exponent(&self) -> u32 {
        u32::from(self.exponent)
    }

    /// Every currency in the table, for documentation and tests.
    pub fn all() -> impl Iterator<Item = Currency> {
        CURRENCIES.iter().map(|(code, _)| Currency::from_code(code).expect("table entry"))
    }

    /// Formats minor units as a decimal string at this currency's exponent ("-12.30", "5").
    pub fn format(&self, minor: Minor) -> String {
        let exponent = self.exponent();
        if exponent == 0 {
            return minor.to_string();
        }
        let scale = 10i128.pow(exponent);
        let sign = if minor < 0 { "-" } else { "" };
        let magnitude = minor.unsigned_abs();
        let scale_unsigned = scale.unsigned_abs();
        let whole = magnitude / scale_unsigned;
        let fraction = magnitude % scale_unsigned;
        let width = usize::try_from(exponent).expect("small exponent");
        format!("{sign}{whole}.{fraction:0width$}")
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl TryFrom<String> for Currency {
    type Error = String;
    fn try_from(code: String) -> Result<Self, Self::Error> {
        Currency::from_code(&code).ok_or_else(|| format!("unknown currency {code}"))
    }
}

impl From<Currency> for String {
    fn from(currency: Currency) -> String {
        currency.code().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table is sorted, so binary search finds every code.
    #[test]
    fn table_is_sorted_and_every_code_resolves() {
        for pair in CURRENCIES.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{} before {}", pair[0].0, pair[1].0);
        }
        for (code, exponent) in CURRENCIES {
            let currency = Currency::from_code(code).unwrap();
            assert_eq!(currency.exponent(), *exponent);
        }
        assert!(Currency::from_code("XXX").is_none());
        assert!(Currency::from_code("usd").is_none());
    }

    /// Formatting pads the fraction and keeps the sign, at each exponent.
    #[test]
    fn format_uses_the_currency_exponent() {
        let usd = Currency::from_code("USD").unwrap();
        assert_eq!(usd.format(1234), "12.34");
        assert_eq!(usd.format(5), "0.05");
        assert_eq!(usd.format(-1230), "-12.30");
        assert_eq!(usd.format(0), "0.00");
        assert_eq!(Currency::from_code("JPY").unwrap().format(500), "500");
        assert_eq!(Currency::from_code("KWD").unwrap().format(1), "0.001");
    }
}
