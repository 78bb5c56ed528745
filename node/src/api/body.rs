//! Request bodies as untrusted input: read with a size cap and a deadline (a client that stalls
//! mid-body is cut off, it cannot hold a connection for ever), only in encodings the node
//! decodes, and parsed strictly — a JSON object whose keys repeat is refused rather than
//! silently resolved to one of them.

use super::errors::ApiError;
use actix_web::error::PayloadError;
use actix_web::http::header::{HeaderMap, CONTENT_ENCODING};
use actix_web::http::StatusCode;
use actix_web::web;
use futures_util::StreamExt;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;
use std::time::Duration;

/// Encodings a request body may come in (actix decodes gzip; anything else would reach the
/// parser as compressed bytes, or worse, be taken as plain text).
const ENCODINGS_ACCEPTED: [&str; 2] = ["identity", "gzip"];

/// Reads the whole body: at most `bytes_max` bytes (after decoding), within `timeout`.
pub async fn read<S>(headers: &HeaderMap, mut payload: S, bytes_max: usize, timeout: Duration) -> Result<web::Bytes, ApiError>
where
    S: futures_util::Stream<Item = Result<web::Bytes, PayloadError>> + Unpin,
{
    if let Some(encoding) = headers.get(CONTENT_ENCODING) {
        let text = encoding.to_str().unwrap_or("").trim().to_ascii_lowercase();
        if !ENCODINGS_ACCEPTED.contains(&text.as_str()) {
            let message = format!("Content-Encoding {text:?} is not supported; send identity or gzip");
            return Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_encoding", message));
        }
    }
    let reading = async {
        let mut body = web::BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|error| ApiError::invalid_body(format!("the body could not be read or decoded: {error}")))?;
            if body.len() + chunk.len() > bytes_max {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("request bodies are at most {bytes_max} bytes"),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    match tokio::time::timeout(timeout, reading).await {
        Ok(result) => result,
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("the request body did not arrive within {} ms", timeout.as_millis()),
        )),
    }
}

/// Parses a JSON object, refusing repeated keys at any depth.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = StrictValue.deserialize(&mut deserializer).map_err(|error| ApiError::invalid_body(format!("body is not JSON: {error}")))?;
    deserializer.end().map_err(|error| ApiError::invalid_body(format!("body is not JSON: {error}")))?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::invalid_body("body must be a JSON object")),
    }
}

/// Refuses members of `object` other than `allowed` (a typo or a field the API does not take,
/// such as a balance on account creation, is an error, not silently ignored).
pub fn only_fields(object: &Map<String, Value>, allowed: &[&'static str]) -> Result<(), ApiError> {
    for key in object.keys() {
        if !allowed.contains(&key.as_str()) {
            let message = format!("unknown field {key:?}; this request takes {}", allowed.join(", "));
            return Err(ApiError::invalid_body(message));
        }
    }
    Ok(())
}

/// A `serde_json::Value` that errors on a repeated object key.
struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_string()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut sequence: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = sequence.next_element_seed(StrictValue)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("the key {key:?} appears twice")));
            }
            let value = map.next_value_seed(StrictValue)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Repeated keys are refused at any depth; the rest parses like serde_json does.
    #[test]
    fn repeated_keys_are_refused() {
        assert!(parse_object(br#"{"id":"a","id":"b"}"#).is_err());
        assert!(parse_object(br#"{"transfers":[{"amount":"1.00","amount":"2.00"}]}"#).is_err());
        let parsed = parse_object(br#"{"id":"a","n":[1,2.5,null,true],"o":{"x":"y"}}"#).unwrap();
        let expected: Value = serde_json::from_slice(br#"{"id":"a","n":[1,2.5,null,true],"o":{"x":"y"}}"#).unwrap();
        assert_eq!(Value::Object(parsed), expected);
        assert!(parse_object(b"[1]").is_err());
        assert!(parse_object(br#"{"a":1} trailing"#).is_err());
    }

    /// Unknown members are named in the error.
    #[test]
    fn only_known_fields_pass() {
        let object = parse_object(br#"{"id":"a","currency":"USD","balance":"100.00"}"#).unwrap();
        assert!(only_fields(&object, &["id", "currency", "kind"]).unwrap_err().message.contains("balance"));
        assert!(only_fields(&object, &["id", "currency", "balance"]).is_ok());
    }

    mod properties {
        //! Request parsing against arbitrary input: an answer or an error, never a panic.
        use super::super::super::types;
        use super::*;
        use proptest::prelude::*;

        /// JSON-ish text: objects with the API's field names (and others), odd values.
        fn body() -> impl Strategy<Value = String> {
            let key = prop_oneof![
                Just("id"),
                Just("from"),
                Just("to"),
                Just("amount"),
                Just("currency"),
                Just("kind"),
                Just("transfers"),
                Just("x")
            ];
            let value = prop_oneof![
                "\\PC{0,12}".prop_map(|text| serde_json::to_string(&text).unwrap()),
                "[0-9]{0,8}(\\.[0-9]{0,4})?".prop_map(|text| format!("\"{text}\"")),
                Just("null".to_string()),
                Just("1.5".to_string()),
                Just("[]".to_string()),
                Just("{}".to_string()),
                Just("-0".to_string()),
            ];
            let members = proptest::collection::vec((key, value), 0..8)
                .prop_map(|members| members.into_iter().map(|(key, value)| format!("\"{key}\":{value}")).collect::<Vec<_>>().join(","));
            prop_oneof![members.prop_map(|members| format!("{{{members}}}")), "\\PC{0,40}"]
        }

        proptest! {
            /// Any body: parsed and validated as an account or a transfer, or refused with an
            /// error in the API's shape, never a panic; what passes is valid by construction.
            #[test]
            fn any_body_is_parsed_or_refused(text in body()) {
                if let Ok(object) = parse_object(text.as_bytes()) {
                    let _ = types::create_account(&object);
                    if let Ok(transfer) = types::transfer(&object) {
                        prop_assert!(transfer.amount > 0);
                        prop_assert!(transfer.from != transfer.to);
                    }
                }
            }
        }
    }
}
