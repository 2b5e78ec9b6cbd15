//! Auto-compaction (`--auto-compaction-mode` / `--auto-compaction-retention`), with etcd's rules, as
//! a state machine without I/O: the IPC thread calls `poll` every `interval()` and proposes the
//! compaction it returns. Only the leader compacts; a follower's compactor is paused.
//!
//! - periodic, retention P: samples the revision every P/10 (P capped at 1 h for the sampling and
//!   for the pace after the first compaction) and compacts to the revision seen P ago, first once P
//!   has passed.
//! - revision, retention N: every 5 minutes, compacts to `current - N` when that moved.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use std::rc::Rc;
use std::sync::atomic::Ordering;

use tracing::{info, warn};

use super::State;
use crate::config::CompactionRetention;
use crate::etcd_error as ee;

const HOUR: Duration = Duration::from_secs(3600);
const REVISION_INTERVAL: Duration = Duration::from_secs(300);

pub enum Compactor {
    Periodic {
        period: Duration,
        retry: Duration,
        retentions: usize,
        revisions: VecDeque<i64>,
        /// Time that must pass since `last_success` before the next compaction: the whole period
        /// at first, then at most an hour.
        base_interval: Duration,
        last_success: Instant,
        last_revision: i64,
    },
    Revision {
        retention: i64,
        last_revision: i64,
    },
}

impl Compactor {
    pub fn new(retention: CompactionRetention, now: Instant, current_revision: i64) -> Compactor {
        match retention {
            CompactionRetention::Periodic(period) => {
                let retry = period.min(HOUR) / 10;
                let retentions = (period.as_nanos() / retry.as_nanos().max(1)) as usize + 1;
                Compactor::Periodic {
                    period,
                    retry,
                    retentions,
                    revisions: VecDeque::from([current_revision]),
                    base_interval: period,
                    last_success: now,
                    last_revision: 0,
                }
            }
            CompactionRetention::Revision(n) => Compactor::Revision {
                retention: n.min(i64::MAX as u64) as i64,
                last_revision: 0,
            },
        }
    }

    /// How long to wait between polls.
    pub fn interval(&self) -> Duration {
        match self {
            Compactor::Periodic { retry, .. } => (*retry).max(Duration::from_millis(1)),
            Compactor::Revision { .. } => REVISION_INTERVAL,
        }
    }

    /// The revision to compact to now, if any.
    pub fn poll(&mut self, now: Instant, current_revision: i64, is_leader: bool) -> Option<i64> {
        match self {
            Compactor::Periodic {
                period,
                retentions,
                revisions,
                base_interval,
                last_success,
                last_revision,
                ..
            } => {
                let due = is_leader
                    && now.duration_since(*last_success) >= *base_interval
                    && revisions.front().is_some_and(|r| r != last_revision);
                let target = if due {
                    if *base_interval == *period {
                        *base_interval = (*period).min(HOUR);
                    }
                    revisions.front().copied()
                } else {
                    None
                };
                // The oldest sample is always the revision one period ago.
                revisions.push_back(current_revision);
                while revisions.len() > *retentions {
                    revisions.pop_front();
                }
                target
            }
            Compactor::Revision {
                retention,
                last_revision,
            } => {
                let target = current_revision - *retention;
                (is_leader && target > 0 && target != *last_revision).then_some(target)
            }
        }
    }

    /// The outcome of compacting to `revision`; "already compacted" counts as done, as in etcd.
    pub fn done(&mut self, revision: i64, succeeded: bool, now: Instant) {
        if !succeeded {
            return;
        }
        match self {
            Compactor::Periodic {
                last_success,
                last_revision,
                ..
            } => {
                *last_revision = revision;
                *last_success = now;
            }
            Compactor::Revision { last_revision, .. } => *last_revision = revision,
        }
    }
}

/// Proposes the compactions the compactor asks for, while this member leads.
pub(super) async fn auto_compact(state: Rc<State>, mut compactor: Compactor) {
    let shared = &state.ctx.shared;
    loop {
        tokio::time::sleep(compactor.interval()).await;
        let is_leader = shared.leader.load(Ordering::Relaxed) == state.ctx.identity.member_id;
        let revision = shared.revision.load(Ordering::Acquire);
        let Some(target) = compactor.poll(std::time::Instant::now(), revision, is_leader) else {
            continue;
        };
        info!(revision = target, "starting auto compaction");
        let result = state
            .propose(0, |rr| {
                rr.init_compaction().set_revision(target);
                Ok(())
            })
            .await;
        let ok = match &result {
            Ok(_) => true,
            Err(e) => *e == ee::compacted(),
        };
        if ok {
            info!(revision = target, "completed auto compaction");
        } else if let Err(e) = result {
            warn!(revision = target, "auto compaction failed, will retry: {e}");
        }
        compactor.done(target, ok, std::time::Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_waits_a_period_then_compacts_to_the_revision_a_period_ago() {
        let t0 = Instant::now();
        let period = Duration::from_secs(10);
        let mut c = Compactor::new(CompactionRetention::Periodic(period), t0, 1);
        assert_eq!(c.interval(), Duration::from_secs(1));
        let mut compacted = Vec::new();
        // The revision grows by 10 every second.
        for s in 1..=25u64 {
            let now = t0 + Duration::from_secs(s);
            if let Some(rev) = c.poll(now, 1 + 10 * s as i64, true) {
                compacted.push((s, rev));
                c.done(rev, true, now);
            }
        }
        // First at 10 s to what was current at 0 s; then once per period (at most an hour), to
        // the oldest of the samples kept over the last period.
        assert_eq!(compacted, vec![(10, 1), (20, 91)]);
    }

    #[test]
    fn a_follower_does_not_compact_and_a_failure_is_retried() {
        let t0 = Instant::now();
        let mut c = Compactor::new(CompactionRetention::Revision(100), t0, 1);
        assert_eq!(c.poll(t0, 50, true), None); // nothing old enough
        assert_eq!(c.poll(t0, 500, false), None); // not the leader
        assert_eq!(c.poll(t0, 500, true), Some(400));
        c.done(400, false, t0);
        assert_eq!(c.poll(t0, 500, true), Some(400));
        c.done(400, true, t0);
        assert_eq!(c.poll(t0, 500, true), None);
        assert_eq!(c.poll(t0, 501, true), Some(401));
    }
}
