//! The binary codec behind every format the core defines: bincode behind a version byte. Each
//! boundary has its own version constant (log entries in `log.rs`, peer frames in `message.rs`,
//! ledger checkpoints in `ledger/`), so the wire, the log and the checkpoints can evolve apart:
//! a reader knows which layout it holds and refuses (or upgrades) one it does not know.

use serde::{de::DeserializeOwned, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty payload")]
    Empty,
    #[error("unknown format version {found} (this build reads {expected})")]
    Version { found: u8, expected: u8 },
    #[error("undecodable payload: {0}")]
    Decode(#[from] bincode::Error),
}

/// Encodes a value behind its format's version byte.
pub fn encode<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    let mut bytes = Vec::new();
    encode_into(&mut bytes, version, value);
    bytes
}

/// Appends what `encode` returns to `buffer`, so a caller can reuse one buffer and frame the
/// payload in place (a header before it) without copying it.
pub fn encode_into<T: Serialize>(buffer: &mut Vec<u8>, version: u8, value: &T) {
    buffer.push(version);
    bincode::serialize_into(&mut *buffer, value).expect("in-memory serialisation cannot fail");
}

/// The version byte of an encoded payload and the bytes after it.
pub fn split_version(bytes: &[u8]) -> Result<(u8, &[u8]), CodecError> {
    let (version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    Ok((*version, body))
}

/// Decodes a value written by `encode` with exactly `version`.
pub fn decode<T: DeserializeOwned>(version: u8, bytes: &[u8]) -> Result<T, CodecError> {
    let (found, body) = split_version(bytes)?;
    if found != version {
        return Err(CodecError::Version { found, expected: version });
    }
    Ok(bincode::deserialize(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value survives encode → decode; a wrong version, an empty or a cut payload is refused.
    #[test]
    fn round_trips_and_checks_the_version() {
        let value = (7u64, "seven".to_string(), vec![1u8, 2, 3]);
        let bytes = encode(3, &value);
        assert_eq!(bytes[0], 3);
        assert_eq!(decode::<(u64, String, Vec<u8>)>(3, &bytes).unwrap(), value);
        assert!(matches!(decode::<(u64, String, Vec<u8>)>(4, &bytes), Err(CodecError::Version { found: 3, expected: 4 })));
        assert!(matches!(decode::<(u64, String, Vec<u8>)>(3, &[]), Err(CodecError::Empty)));
        assert!(decode::<(u64, String, Vec<u8>)>(3, &bytes[..bytes.len() - 2]).is_err());
    }

    /// `encode_into` appends the version byte and the bincode bytes after what the buffer holds.
    #[test]
    fn encode_into_appends_after_the_buffer() {
        let mut buffer = vec![0xAA; 4];
        encode_into(&mut buffer, 9, &42u32);
        assert_eq!(&buffer[..4], &[0xAA; 4]);
        assert_eq!(&buffer[4..], &encode(9, &42u32)[..]);
    }
}
