//! Amounts at the HTTP edge: decimal strings at exactly the currency's exponent, parsed with
//! `rust_decimal` into integer minor units. Never floats, never rounded: "1.5" is not a CNY
//! amount and "1.005" is not a USD amount.

use rust_decimal::Decimal;
use settle_cluster::money::{Currency, Minor, AMOUNT_MINOR_MAX};
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("amount must be a decimal string like \"12.34\" (digits, optionally a point and decimals)")]
    Format,
    #[error("amount must not start with a zero before other digits (\"1.00\", not \"01.00\")")]
    LeadingZero,
    #[error("amount must have exactly {0} decimal places for this currency")]
    Scale(u32),
    #[error("amount must be greater than zero")]
    NotPositive,
    #[error("amount is too large")]
    TooLarge,
}

/// Parses a transfer amount into minor units of `currency`.
pub fn parse_amount(text: &str, currency: Currency) -> Result<Minor, AmountError> {
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (text, None),
    };
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || fraction.is_some_and(|part| !digits(part)) {
        return Err(AmountError::Format);
    }
    // One spelling per amount: "01.00" is refused rather than read as "1.00".
    if whole.len() > 1 && whole.starts_with('0') {
        return Err(AmountError::LeadingZero);
    }
    // 10^24 minor units at most: a whole part beyond 30 digits is too large at any exponent.
    if whole.len() > 30 {
        return Err(AmountError::TooLarge);
    }
    let exponent = currency.exponent();
    let scale = fraction.map_or(0, str::len);
    if u32::try_from(scale).ok() != Some(exponent) {
        return Err(AmountError::Scale(exponent));
    }
    let decimal = Decimal::from_str(text).map_err(|_| AmountError::TooLarge)?;
    if decimal.scale() != exponent {
        return Err(AmountError::Scale(exponent));
    }
    let minor = decimal.mantissa();
    if minor <= 0 {
        return Err(AmountError::NotPositive);
    }
    if minor > AMOUNT_MINOR_MAX {
        return Err(AmountError::TooLarge);
    }
    Ok(minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> Currency {
        Currency::from_code(text).unwrap()
    }

    /// Amounts must match the currency's exponent exactly; nothing is rounded.
    #[test]
    fn amounts_parse_at_the_exact_exponent() {
        assert_eq!(parse_amount("1.50", code("CNY")), Ok(150));
        assert_eq!(parse_amount("0.01", code("USD")), Ok(1));
        assert_eq!(parse_amount("500", code("JPY")), Ok(500));
        assert_eq!(parse_amount("1.005", code("KWD")), Ok(1005));
        assert_eq!(parse_amount("1.5", code("CNY")), Err(AmountError::Scale(2)));
        assert_eq!(parse_amount("1.005", code("USD")), Err(AmountError::Scale(2)));
        assert_eq!(parse_amount("1", code("USD")), Err(AmountError::Scale(2)));
        assert_eq!(parse_amount("500.0", code("JPY")), Err(AmountError::Scale(0)));
    }

    /// Signs, exponents, blanks, zero and huge values are refused.
    #[test]
    fn malformed_zero_and_huge_amounts_are_refused() {
        for bad in ["", "-1.00", "+1.00", "1e2", " 1.00", "1.00 ", "1,00", ".50", "1.", "abc", "0x10"] {
            assert_eq!(parse_amount(bad, code("USD")), Err(AmountError::Format), "{bad:?}");
        }
        assert_eq!(parse_amount("0.00", code("USD")), Err(AmountError::NotPositive));
        assert_eq!(parse_amount("10000000000000000000000.00", code("USD")), Ok(1_000_000_000_000_000_000_000_000));
        assert_eq!(parse_amount("10000000000000000000000.01", code("USD")), Err(AmountError::TooLarge));
        assert_eq!(parse_amount(&"9".repeat(40), code("JPY")), Err(AmountError::TooLarge));
    }

    /// An amount has one spelling: leading zeros are refused, a single zero whole part is not.
    #[test]
    fn leading_zeros_are_refused() {
        for bad in ["01.00", "00.50", "007"] {
            let currency = if bad.contains('.') { code("USD") } else { code("JPY") };
            assert_eq!(parse_amount(bad, currency), Err(AmountError::LeadingZero), "{bad:?}");
        }
        assert_eq!(parse_amount("0.50", code("USD")), Ok(50));
    }

    mod properties {
        //! Parsing never panics on any text, and what it accepts formats back to the same text.
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any string: an amount or an error, never a panic; an accepted amount is positive,
            /// within the cap, and `Currency::format` spells it exactly as it was written.
            #[test]
            fn any_text_parses_or_is_refused(text in "\\PC{0,40}|[0-9]{0,30}(\\.[0-9]{0,4})?") {
                for currency in ["USD", "JPY", "KWD"] {
                    let currency = code(currency);
                    if let Ok(minor) = parse_amount(&text, currency) {
                        prop_assert!(minor > 0 && minor <= AMOUNT_MINOR_MAX);
                        prop_assert_eq!(currency.format(minor), text.clone());
                    }
                }
            }
        }
    }
}
