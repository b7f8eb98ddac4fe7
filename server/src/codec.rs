//! How every record is encoded: on disk (Raft log entries, votes, user
//! records, sessions, shard maps, eventual-mode state) and in messages
//! between nodes.
//!
//! # Disk format 2
//!
//! A record is one format byte ([`RECORD_FORMAT`], 2) followed by the value
//! in postcard (serde's data model, varint integers, a specified and stable
//! wire format: <https://postcard.jamesmunns.com/wire-format>). The byte
//! says which layout wrote the record, so a later format that changes a
//! type decodes the records of this one by their byte (and one from a newer
//! format is refused by name instead of misread). The data directory as a
//! whole carries its format too (see [`crate::storage::DISK_FORMAT`]); a
//! directory of format 1 (bincode 1, no format byte, no format key) is
//! upgraded in place once, at open ([`crate::upgrade`]).
//!
//! Postcard, like bincode, is positional: a type gains a field by a new
//! format byte whose decoder reads the old layout and fills the field in,
//! never by editing a type that stored records decode into.

use std::io;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The first byte of every record this build writes.
pub const RECORD_FORMAT: u8 = 2;

/// Encodes a value stored on disk or sent between nodes.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(RECORD_FORMAT);
    postcard::to_extend(value, out).expect("encoding an in-memory value into a Vec cannot fail")
}

/// Decodes a value read from disk or received from a peer; corruption (or
/// a record of another format) is an I/O error (`InvalidData`), never a
/// panic.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, io::Error> {
    let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    match bytes.split_first() {
        Some((&RECORD_FORMAT, body)) => postcard::from_bytes(body).map_err(|e| invalid(e.to_string())),
        Some((other, _)) => Err(invalid(format!(
            "a record of format {other}: this build reads format {RECORD_FORMAT} (a newer geokv's record, or \
             corrupt data)"
        ))),
        None => Err(invalid("an empty record".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The format byte leads, and values come back as they went in; a
    /// record of another format or an empty one is refused by name.
    #[test]
    fn records_carry_their_format_and_refuse_others() {
        let value = (7u64, Some(b"key".to_vec()), vec![1u32, 2, 3]);
        let bytes = encode(&value);
        assert_eq!(bytes[0], RECORD_FORMAT);
        assert_eq!(decode::<(u64, Option<Vec<u8>>, Vec<u32>)>(&bytes).unwrap(), value);
        let mut newer = bytes.clone();
        newer[0] = RECORD_FORMAT + 1;
        let err = decode::<(u64, Option<Vec<u8>>, Vec<u32>)>(&newer).unwrap_err();
        assert!(err.to_string().contains("a record of format 3"), "{err}");
        assert!(decode::<u64>(&[]).unwrap_err().to_string().contains("empty"));
        // Varints: a small number is one byte after the format byte.
        assert_eq!(encode(&5u64), vec![RECORD_FORMAT, 5]);
    }

    /// Keys and values marked as byte strings (serde_bytes) encode exactly
    /// as the plain sequences of u8 they were, in this format and in
    /// format 1's bincode: the marking changed no stored byte.
    #[test]
    fn byte_strings_encode_as_sequences_did() {
        use crate::raft::command::Record;
        let record = Record { value: b"value".to_vec(), version: 300 };
        let as_sequence = (b"value".to_vec(), 300u64);
        assert_eq!(encode(&record), encode(&as_sequence));
        assert_eq!(bincode::serialize(&record).unwrap(), bincode::serialize(&as_sequence).unwrap());
    }
}
