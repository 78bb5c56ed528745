//! The on-disk record frame shared by both stores: a CRC32 (Castagnoli-free IEEE, via
//! `crc32fast`) of the payload followed by the payload. Verified on every read: a torn or
//! bit-flipped record is an error, never data.

use serde::{de::DeserializeOwned, Serialize};
use settle_cluster::codec::{self, CodecError};

/// The layout of the stores' own records (log metadata, checkpoint records); the ledger and log
/// entries inside them carry their own versions.
pub const STORE_FORMAT_VERSION: u8 = 2;

/// Bytes of the checksum in front of every record.
const CHECKSUM_BYTES: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record shorter than its checksum ({0} bytes)")]
    Short(usize),
    #[error("record checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
}

/// Frames a payload with its checksum.
pub fn seal(payload: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(payload.len() + CHECKSUM_BYTES);
    record.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    record.extend_from_slice(payload);
    record
}

/// `seal(&encode(value))` without the intermediate copy: the value is encoded (behind
/// `STORE_FORMAT_VERSION`) in place behind its checksum.
pub fn seal_encoded<T: Serialize>(value: &T) -> Vec<u8> {
    let mut record = vec![0u8; CHECKSUM_BYTES];
    codec::encode_into(&mut record, STORE_FORMAT_VERSION, value);
    let checksum = crc32fast::hash(&record[CHECKSUM_BYTES..]);
    record[..CHECKSUM_BYTES].copy_from_slice(&checksum.to_le_bytes());
    record
}

/// Checks a record's checksum and returns its payload.
pub fn open(record: &[u8]) -> Result<&[u8], RecordError> {
    if record.len() < CHECKSUM_BYTES {
        return Err(RecordError::Short(record.len()));
    }
    let (checksum, payload) = record.split_at(CHECKSUM_BYTES);
    let stored = u32::from_le_bytes(checksum.try_into().expect("four bytes"));
    let computed = crc32fast::hash(payload);
    if stored != computed {
        return Err(RecordError::Checksum { stored, computed });
    }
    Ok(payload)
}

/// Decodes the payload of a record written by `seal_encoded`.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, CodecError> {
    codec::decode(STORE_FORMAT_VERSION, payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sealed record opens to its payload; any flipped bit or truncation is refused.
    #[test]
    fn seal_open_round_trip_and_every_bit_flip_is_detected() {
        let payload = b"entry payload 123";
        let record = seal(payload);
        assert_eq!(open(&record).unwrap(), payload);
        for byte in 0..record.len() {
            for bit in 0..8 {
                let mut damaged = record.clone();
                damaged[byte] ^= 1 << bit;
                assert!(open(&damaged).is_err(), "flip at byte {byte} bit {bit} went unnoticed");
            }
        }
        assert!(open(&record[..3]).is_err());
    }

    /// `seal_encoded` writes exactly the bytes of `seal(&encode(value))`.
    #[test]
    fn seal_encoded_equals_seal_of_encode() {
        let value = (7u64, vec![1u8, 2, 3], "ledger".to_string());
        let record = seal_encoded(&value);
        assert_eq!(record, seal(&codec::encode(STORE_FORMAT_VERSION, &value)));
        assert_eq!(decode_payload::<(u64, Vec<u8>, String)>(open(&record).unwrap()).unwrap(), value);
    }

    mod properties {
        //! Records read back from disk are untrusted: any bytes open and decode to a value or
        //! an error, never a panic.
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Arbitrary bytes as a stored record: refused or decoded, never a panic.
            #[test]
            fn arbitrary_records_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                if let Ok(payload) = open(&bytes) {
                    let _ = decode_payload::<(u64, u64)>(payload);
                    let _ = decode_payload::<(u64, Vec<u8>, u64, Vec<u8>, Vec<u8>)>(payload);
                }
            }

            /// A sealed payload with arbitrary content opens to itself.
            #[test]
            fn sealed_payloads_open(payload in proptest::collection::vec(any::<u8>(), 0..256)) {
                let record = seal(&payload);
                prop_assert_eq!(open(&record).unwrap(), &payload[..]);
            }
        }
    }
}
