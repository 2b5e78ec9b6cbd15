//! Compaction: [`Applier::compact`] drops every version a read at or above the compacted
//! revision can no longer see.

use super::apply::Applier;
use super::types::CompactionRequest;
use crate::etcd_error::{self as ee, EtcdError};
use crate::storage::parse_row;

impl Applier<'_> {
    /// Compaction: forget every version older than `revision` except the one still visible there.
    /// Writes what is pending first, so the scan sees every version.
    pub fn compact(&mut self, req: &CompactionRequest) -> Result<i64, EtcdError> {
        if req.revision <= self.compact_revision {
            return Err(ee::compacted());
        }
        if req.revision > self.revision {
            return Err(ee::future_rev());
        }
        // The latest-version cache stays valid: compaction keeps every key's newest version,
        // and drops a tombstone only where the key already has no live version.
        self.flush().map_err(ee::internal)?;
        self.compact_revision = req.revision;
        let live = self.db.live();
        let mut it = live.versions();
        it.seek_to_first();
        let mut current_key: Option<Vec<u8>> = None;
        let mut kept = false;
        while let Some(row) = it.row() {
            let (key, rev) = parse_row(row).map_err(ee::internal)?;
            if current_key.as_deref() != Some(&key) {
                current_key = Some(key.clone());
                kept = false;
            }
            if rev <= req.revision {
                let tombstone = it.value().is_some_and(|v| v.first() == Some(&1));
                if kept || tombstone {
                    self.batch.delete_version_row(row);
                }
                kept = true;
            }
            it.next();
        }
        it.status("compacting").map_err(ee::internal)?;
        self.batch.delete_changes_through(req.revision);
        Ok(self.revision)
    }
}
