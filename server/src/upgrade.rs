//! Upgrading a data directory from an older disk format, record by record.
//!
//! [`crate::storage::Storage::open`] finds the directory's format and, for
//! an older one, walks every column family calling [`record`] on each
//! `(key, value)`; it owns the batching, the fsyncs and resuming a stopped
//! upgrade. This module owns what each record is: the type stored under
//! each column family, tag and key shape, in every format so far.
//!
//! Format 1 (releases before the format key): every record bincode 1
//! (fixed-width little-endian integers, u64 lengths), except eventual
//! tombstone index entries, which are empty. Format 2: [`crate::codec`].

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::eventual::hlc::Hlc;
use crate::eventual::{self, Conflict, EcRecord, EcWrite};
use crate::raft::command::{CommandResult, Record};
use crate::raft::state_machine::{FrozenRecord, RangeRecord, SessionHeader, SessionMarker};
use crate::raft::{Entry, LogId, StoredMembership, Vote};
use crate::shards::ShardMap;
use crate::storage::{Family, InstallMarker, apply_meta_tag, raft_meta_tag};

/// `value`, a record of disk format `from` stored under `key` in `family`,
/// in the current format (`None`: a record the current format drops).
pub fn record(from: u32, family: Family, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>, String> {
    match from {
        1 => from_format_1(family, key, value),
        other => Err(format!("no upgrade from disk format {other}")),
    }
}

/// Decodes a bincode-1 `T` and encodes it in the current format.
fn v1<T: Serialize + DeserializeOwned>(value: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let decoded: T = bincode::deserialize(value).map_err(|e| format!("not a format-1 {}: {e}", short_name::<T>()))?;
    Ok(Some(crate::codec::encode(&decoded)))
}

fn short_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

/// The tag byte of a `shard id ++ tag` key.
fn tag(key: &[u8]) -> Result<u8, String> {
    match key.len() {
        9 => Ok(key[8]),
        n => Err(format!("a {n}-byte key where a shard id and a tag (9 bytes) belong")),
    }
}

fn from_format_1(family: Family, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>, String> {
    match family {
        Family::RaftLog => v1::<Entry>(value),
        Family::RaftMeta => match tag(key)? {
            raft_meta_tag::VOTE => v1::<Vote>(value),
            raft_meta_tag::COMMITTED | raft_meta_tag::LAST_PURGED => v1::<LogId>(value),
            other => Err(format!("unknown Raft metadata tag {other}")),
        },
        Family::Data => v1::<Record>(value),
        Family::ApplyMeta => match tag(key)? {
            apply_meta_tag::APPLIED => v1::<LogId>(value),
            apply_meta_tag::MEMBERSHIP => v1::<StoredMembership>(value),
            apply_meta_tag::SHARD_MAP => v1::<ShardMap>(value),
            // Whole-shard snapshot blobs of still older releases: unused.
            apply_meta_tag::SNAPSHOT => Ok(None),
            apply_meta_tag::SESSION_GC_MS => v1::<u64>(value),
            apply_meta_tag::RANGE => v1::<RangeRecord>(value),
            apply_meta_tag::FROZEN => v1::<FrozenRecord>(value),
            apply_meta_tag::INSTALLING => v1::<InstallMarker>(value),
            other => Err(format!("unknown state machine metadata tag {other}")),
        },
        // Shard id, then the client id (a header), the client id and 0xff
        // (a collected session's marker), or the client id and a sequence
        // (a saved result).
        Family::Sessions => match key.len() {
            16 => v1::<SessionHeader>(value),
            17 => v1::<SessionMarker>(value),
            24 => v1::<CommandResult>(value),
            n => Err(format!("a {n}-byte session key")),
        },
        Family::EcData => v1::<EcRecord>(value),
        Family::EcOutbox => v1::<EcWrite>(value),
        Family::EcMeta => {
            let Some(&t) = key.get(8) else { return Err(format!("a {}-byte eventual metadata key", key.len())) };
            match t {
                eventual::tag::LAST_SEQ
                | eventual::tag::FIRST_KEPT
                | eventual::tag::ACKED
                | eventual::tag::INCARNATION => v1::<u64>(value),
                eventual::tag::RECEIVED => v1::<eventual::Received>(value),
                // An index entry: the key says it all, the value is empty.
                eventual::tag::TOMBSTONE => Ok(Some(value.to_vec())),
                eventual::tag::CLOCK => v1::<Hlc>(value),
                eventual::tag::CONFLICT => v1::<Conflict>(value),
                other => Err(format!("unknown eventual metadata tag {other}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legacy<T: Serialize>(value: &T) -> Vec<u8> {
        bincode::serialize(value).unwrap()
    }

    /// Records of format 1 come out as the same values in the current
    /// format; a record that is not what its key says is refused with
    /// where it was, never stored as something else.
    #[test]
    fn format_1_records_are_rewritten_as_the_same_values() {
        let stored = Record { value: b"v".to_vec(), version: 42 };
        let out = record_or_panic(Family::Data, b"user-key", &legacy(&stored));
        assert_eq!(crate::codec::decode::<Record>(&out).unwrap(), stored);

        let key = [&7u64.to_be_bytes()[..], &[apply_meta_tag::SESSION_GC_MS]].concat();
        let out = record_or_panic(Family::ApplyMeta, &key, &legacy(&1_234_567u64));
        assert_eq!(crate::codec::decode::<u64>(&out).unwrap(), 1_234_567);

        let header = SessionHeader { first_incomplete: 3, last_active_ms: 99, saved: vec![3, 4] };
        let key = [7u64.to_be_bytes(), 0xfeedu64.to_be_bytes()].concat();
        let out = record_or_panic(Family::Sessions, &key, &legacy(&header));
        let back: SessionHeader = crate::codec::decode(&out).unwrap();
        assert_eq!((back.first_incomplete, back.last_active_ms, back.saved), (3, 99, vec![3, 4]));

        let snapshot_key = [&7u64.to_be_bytes()[..], &[apply_meta_tag::SNAPSHOT]].concat();
        assert_eq!(record(1, Family::ApplyMeta, &snapshot_key, b"old blob"), Ok(None), "dropped");

        let bad_tag = [&7u64.to_be_bytes()[..], &[200]].concat();
        assert!(record(1, Family::ApplyMeta, &bad_tag, &[]).unwrap_err().contains("unknown"));
        let truncated = &legacy(&stored)[..5];
        assert!(record(1, Family::Data, b"k", truncated).unwrap_err().contains("not a format-1 Record"));
        assert!(record(7, Family::Data, b"k", &[]).unwrap_err().contains("no upgrade from disk format 7"));
    }

    fn record_or_panic(family: Family, key: &[u8], value: &[u8]) -> Vec<u8> {
        record(1, family, key, value).unwrap().expect("kept")
    }
}
