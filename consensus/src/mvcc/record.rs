//! [`Record`]: one version of a key as stored in its `kv_key` row's value.

use super::types::KeyValue;
use crate::error::{Error, Result};
use crate::storage::be_u64;

/// One version of a key as stored: a put or a tombstone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Record {
    pub(super) tombstone: bool,
    pub(super) create_revision: i64,
    pub(super) mod_revision: i64,
    pub(super) version: i64,
    pub(super) lease: i64,
    pub(super) value: Vec<u8>,
}

impl Record {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(33 + self.value.len());
        out.push(self.tombstone as u8);
        for n in [
            self.create_revision,
            self.mod_revision,
            self.version,
            self.lease,
        ] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        out.extend_from_slice(&self.value);
        out
    }

    pub(super) fn decode(v: &[u8]) -> Result<Record> {
        if v.len() < 33 {
            return Err(Error::Corrupt(format!("MVCC record of {} bytes", v.len())));
        }
        let n = |i: usize| be_u64(&v[1 + i * 8..9 + i * 8]) as i64;
        Ok(Record {
            tombstone: v[0] == 1,
            create_revision: n(0),
            mod_revision: n(1),
            version: n(2),
            lease: n(3),
            value: v[33..].to_vec(),
        })
    }

    pub(super) fn to_kv(&self, key: &[u8]) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            value: self.value.clone(),
            lease: self.lease,
        }
    }
}
