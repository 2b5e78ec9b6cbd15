//! Every loopback address a system test binds, and who owns it. All system tests share one
//! binary and run in parallel, and every member (ours or etcd) takes ports 2379 and 2380 on its
//! host, so each host below belongs to one test; tests take their hosts from here, and
//! `no_address_is_claimed_twice` checks the list. A new test adds its hosts here first.
//!
//! Not listed: the URLs in `bad_input`, whose consensus processes either refuse their
//! configuration or run alone with their Unix sockets and bind no port.

use std::sync::Mutex;

/// One test's hosts (or the benchmark scripts', which tests must leave alone).
pub struct Claim {
    pub owner: &'static str,
    pub hosts: &'static [&'static str],
}

/// 127.0.0.1, where etcdctl and a member without configuration meet by default. Two tests bind
/// it, and take turns on `LOCALHOST_TURN`.
pub const LOCALHOST: &str = "127.0.0.1";
pub static LOCALHOST_TURN: Mutex<()> = Mutex::new(());

// member::formation
/// The seed's three hosts (https on 2379 and 2380).
pub const SEED_CLUSTER: [&str; 3] = [LOCALHOST, "127.0.0.2", "127.0.0.3"];
/// Each seed host's plain-http client listener, as the seed's `http://127.0.0.1:2379`.
pub const SEED_PLAIN_HTTP: [&str; 3] = ["127.0.1.1", "127.0.1.2", "127.0.1.3"];

// etcdctl_vs_etcd
pub const ETCDCTL_OURS: &str = "127.0.0.4";
pub const ETCDCTL_ETCD: &str = "127.0.0.5";

// differential
pub const DIFF_ETCD: &str = "127.0.0.6";
pub const DIFF_OURS: &str = "127.0.0.7";
pub const DIFF_CLUSTER: [&str; 3] = ["127.0.0.11", "127.0.0.12", "127.0.0.13"];

// member::maintenance
pub const AUTO_COMPACTION: &str = "127.0.0.14";
pub const SNAPSHOT_SAVE: &str = "127.0.0.117";
pub const SNAPSHOT_RESTORE_SOURCE: &str = "127.0.0.118";
pub const SNAPSHOT_RESTORE: [&str; 3] = ["127.0.0.124", "127.0.0.125", "127.0.0.126"];
pub const MOVE_LEADER: [&str; 3] = ["127.0.0.66", "127.0.0.67", "127.0.0.68"];
pub const HASH_KV: [&str; 3] = ["127.0.0.73", "127.0.0.74", "127.0.0.75"];
pub const LARGE_KEYSPACE: [&str; 3] = ["127.0.0.85", "127.0.0.86", "127.0.0.87"];
/// A real etcd's snapshot restored into three members of ours.
pub const ETCD_RESTORE_SOURCE: &str = "127.0.0.134";
pub const ETCD_RESTORE: [&str; 3] = ["127.0.0.131", "127.0.0.132", "127.0.0.133"];

// member::apply_and_reads
pub const BIG_RANGE: &str = "127.0.0.15";
pub const ANSWER_BEFORE_ROCKSDB: &str = "127.0.0.18";
pub const APPLY_BATCHES: [&str; 3] = ["127.0.0.24", "127.0.0.25", "127.0.0.26"];
pub const COMMIT_AHEAD: [&str; 3] = ["127.0.0.51", "127.0.0.52", "127.0.0.53"];
pub const SLOW_NETWORK: [&str; 3] = ["127.0.0.54", "127.0.0.55", "127.0.0.56"];

// member::recovery
pub const REPLAY: &str = "127.0.0.16";
pub const NO_QUORUM: [&str; 3] = ["127.0.0.21", "127.0.0.22", "127.0.0.23"];
pub const APPLY_FAILURE: [&str; 3] = ["127.0.0.76", "127.0.0.77", "127.0.0.78"];
pub const ALONE_AFTER_KILL: [&str; 3] = ["127.0.0.79", "127.0.0.80", "127.0.0.81"];
pub const WIPED_MEMBER: [&str; 3] = ["127.0.0.82", "127.0.0.83", "127.0.0.84"];
pub const WIPED_ASKS_FIRST: [&str; 3] = ["127.0.0.101", "127.0.0.102", "127.0.0.103"];

// linearizable
pub const LINEARIZABLE: [&str; 3] = ["127.0.0.57", "127.0.0.58", "127.0.0.59"];

// nemesis
pub const NEMESIS: [&str; 3] = ["127.0.0.91", "127.0.0.92", "127.0.0.93"];
/// The UDP proxies in front of the nemesis members' peer ports; their advertised peer URLs.
pub const NEMESIS_PROXIES: [&str; 3] = ["127.0.0.94", "127.0.0.95", "127.0.0.96"];

// member::formation::peer_cert_allowed_cn
pub const ALLOWED_CN: [&str; 2] = ["127.0.0.88", "127.0.0.89"];

// http_endpoints
pub const HTTP_OURS: &str = "127.0.0.61";
pub const HTTP_ETCD: &str = "127.0.0.62";
pub const HTTP_CLUSTER: [&str; 3] = ["127.0.0.63", "127.0.0.64", "127.0.0.65"];
pub const JSON_OURS: &str = "127.0.0.71";
pub const JSON_ETCD: &str = "127.0.0.72";

// support::lossy_fs
pub const LOSSY_MEMBER: &str = "127.0.0.106";

// member::log_compaction
pub const LOG_COMPACTION: [&str; 3] = ["127.0.0.111", "127.0.0.112", "127.0.0.113"];
/// A follower catching up by raft snapshot.
pub const RAFT_SNAPSHOT: [&str; 3] = ["127.0.0.121", "127.0.0.122", "127.0.0.123"];
/// Raft snapshots with kill -9 of either end.
pub const RAFT_SNAPSHOT_KILLS: [&str; 3] = ["127.0.0.127", "127.0.0.128", "127.0.0.129"];
/// Raft snapshots onto a disk that fills.
pub const RAFT_SNAPSHOT_DISK: [&str; 3] = ["127.0.0.146", "127.0.0.147", "127.0.0.148"];

/// The registry: every host above once, with its owner.
pub const CLAIMS: &[Claim] = &[
    Claim {
        owner: "member::formation::peer_cert_allowed_cn_keeps_other_certificates_out",
        hosts: &ALLOWED_CN,
    },
    Claim {
        owner: "member::formation::{three_member_cluster_from_seed_configs, \
                no_configuration_starts_one_member_on_2379}, one at a time",
        hosts: &[LOCALHOST],
    },
    Claim {
        owner: "member::formation::three_member_cluster_from_seed_configs",
        hosts: &[SEED_CLUSTER[1], SEED_CLUSTER[2]],
    },
    Claim {
        owner: "member::formation::three_member_cluster_from_seed_configs (plain http)",
        hosts: &SEED_PLAIN_HTTP,
    },
    Claim {
        owner: "etcdctl_vs_etcd::etcdctl_outputs_match_real_etcd",
        hosts: &[ETCDCTL_OURS, ETCDCTL_ETCD],
    },
    Claim {
        owner: "differential::same_answers_as_etcd",
        hosts: &[DIFF_ETCD, DIFF_OURS],
    },
    Claim {
        owner: "differential::same_answers_as_etcd (cluster)",
        hosts: &DIFF_CLUSTER,
    },
    Claim {
        owner: "member::maintenance::auto_compaction_forgets_old_revisions",
        hosts: &[AUTO_COMPACTION],
    },
    Claim {
        owner: "member::maintenance::snapshot_save_fetches_an_image_that_status_reads",
        hosts: &[SNAPSHOT_SAVE],
    },
    Claim {
        owner: "member::apply_and_reads::a_range_answer_larger_than_64_mib_comes_through",
        hosts: &[BIG_RANGE],
    },
    Claim {
        owner: "member::recovery::a_killed_member_applies_again_what_its_database_lost",
        hosts: &[REPLAY],
    },
    Claim {
        owner: "member::apply_and_reads::reads_wait_for_writes_answered_before_rocksdb_has_them",
        hosts: &[ANSWER_BEFORE_ROCKSDB],
    },
    Claim {
        owner: "member::recovery::a_write_without_quorum_gets_etcds_timeout",
        hosts: &NO_QUORUM,
    },
    Claim {
        owner: "member::recovery::a_failed_apply_read_stops_the_member_until_it_applies_the_entry",
        hosts: &APPLY_FAILURE,
    },
    Claim {
        owner: "member::recovery::a_member_killed_and_restarted_alone_serves_what_it_had_applied",
        hosts: &ALONE_AFTER_KILL,
    },
    Claim {
        owner: "member::recovery::a_member_whose_data_dir_was_wiped_cannot_rejoin_as_itself",
        hosts: &WIPED_MEMBER,
    },
    Claim {
        owner: "member::recovery::a_wiped_member_asks_the_others_and_refuses_before_it_votes",
        hosts: &WIPED_ASKS_FIRST,
    },
    Claim {
        owner: "member::apply_and_reads::followers_apply_in_batches_without_reads_seeing_it",
        hosts: &APPLY_BATCHES,
    },
    Claim {
        owner: "scripts/bench-vs-etcd.sh (ours, and etcd in the sequential rounds)",
        hosts: &["127.0.0.31", "127.0.0.32", "127.0.0.33"],
    },
    Claim {
        owner: "scripts/bench-smoke.sh",
        hosts: &["127.0.0.35"],
    },
    Claim {
        owner: "scripts/bench-log-growth.sh",
        hosts: &["127.0.0.114"],
    },
    Claim {
        owner: "scripts/bench-vs-etcd.sh (etcd during the bursts)",
        hosts: &["127.0.0.36", "127.0.0.37", "127.0.0.38"],
    },
    Claim {
        owner: "member::apply_and_reads::reads_after_a_write_committed_ahead_of_the_leader_see_it",
        hosts: &COMMIT_AHEAD,
    },
    Claim {
        owner: "member::apply_and_reads::linearizable_reads_work_over_a_slow_network",
        hosts: &SLOW_NETWORK,
    },
    Claim {
        owner: "linearizable::histories_under_process_kills_are_linearizable",
        hosts: &LINEARIZABLE,
    },
    Claim {
        owner: "nemesis::a_nemesis_loses_no_acknowledged_write_and_histories_stay_linearizable",
        hosts: &NEMESIS,
    },
    Claim {
        owner: "nemesis (its proxies)",
        hosts: &NEMESIS_PROXIES,
    },
    Claim {
        owner: "http_endpoints::health_version_and_metrics_answer_as_real_etcd",
        hosts: &[HTTP_OURS, HTTP_ETCD],
    },
    Claim {
        owner: "http_endpoints::health_is_503_without_a_quorum",
        hosts: &HTTP_CLUSTER,
    },
    Claim {
        owner: "member::maintenance::move_leader_hands_the_leadership_over",
        hosts: &MOVE_LEADER,
    },
    Claim {
        owner: "http_endpoints::the_json_gateway_answers_as_etcds",
        hosts: &[JSON_OURS, JSON_ETCD],
    },
    Claim {
        owner: "member::maintenance::hash_kv_agrees_across_members",
        hosts: &HASH_KV,
    },
    Claim {
        owner: "support::lossy_fs::tests::a_member_keeps_every_acknowledged_put_through_power_losses",
        hosts: &[LOSSY_MEMBER],
    },
    Claim {
        owner: "member::maintenance::compaction_and_a_count_over_many_keys_leave_raft_and_health_alone",
        hosts: &LARGE_KEYSPACE,
    },
    Claim {
        owner: "member::log_compaction::the_raft_log_stays_bounded_and_a_restart_reads_only_what_is_left",
        hosts: &LOG_COMPACTION,
    },
    Claim {
        owner: "member::maintenance::a_saved_snapshot_restores_into_a_new_three_member_cluster",
        hosts: &[
            SNAPSHOT_RESTORE_SOURCE,
            SNAPSHOT_RESTORE[0],
            SNAPSHOT_RESTORE[1],
            SNAPSHOT_RESTORE[2],
        ],
    },
    Claim {
        owner: "member::raft_snapshot::a_full_disk_during_a_snapshot_refuses_it_until_there_is_room",
        hosts: &RAFT_SNAPSHOT_DISK,
    },
    Claim {
        owner: "member::raft_snapshot::kill_9_of_either_end_of_a_snapshot_loses_nothing",
        hosts: &RAFT_SNAPSHOT_KILLS,
    },
    Claim {
        owner: "member::maintenance::an_etcd_snapshot_restores_with_its_whole_retained_history",
        hosts: &[
            ETCD_RESTORE_SOURCE,
            ETCD_RESTORE[0],
            ETCD_RESTORE[1],
            ETCD_RESTORE[2],
        ],
    },
    Claim {
        owner: "member::raft_snapshot::a_follower_behind_the_compacted_log_catches_up_by_snapshot",
        hosts: &RAFT_SNAPSHOT,
    },
];

#[test]
fn no_address_is_claimed_twice() {
    let mut owners = std::collections::HashMap::new();
    for claim in CLAIMS {
        for host in claim.hosts {
            let ip: std::net::Ipv4Addr = host
                .parse()
                .unwrap_or_else(|e| panic!("{host} of {}: {e}", claim.owner));
            assert!(
                ip.is_loopback(),
                "{host} of {} is not loopback",
                claim.owner
            );
            if let Some(other) = owners.insert(ip, claim.owner) {
                panic!("{host} is claimed by {other} and by {}", claim.owner);
            }
        }
    }
}
