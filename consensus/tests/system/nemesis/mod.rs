//! The fault harness: a randomized nemesis against a three-member cluster under a mixed
//! workload, and the checks that must hold afterwards.
//!
//! Every cycle injects one fault, holds it a few seconds, heals it and waits until every member
//! answers `endpoint health` again (a cluster that does not recover fails the test). The fault
//! classes take turns, each on a random member (half the time the leader) and, where it applies,
//! a random one of its three processes:
//! - `kill -9` of a process (start-node.sh starts it again);
//! - SIGSTOP, then SIGCONT seconds later (a paused leader wakes up to a new term);
//! - a partition of one member from the others, both ways, or only what it sends, or only what
//!   it receives;
//! - lost, delayed and reordered packets between all members;
//! - every member killed at once and started again;
//! - a power loss: one member, or every member at once, killed with -9 and its disk rolled back
//!   to what it had fsynced (all of it, or a random torn prefix of each file's unsynced writes);
//! - a full disk: every free block of a member's disk taken and, half the time, its consensus
//!   killed so that it restarts on the full disk (else it runs on until it needs a block), then
//!   the blocks given back;
//! - a follower behind: its consensus paused while the others compact their raft logs past it
//!   several times over, so that it catches up by raft snapshot (the members compact every
//!   [`SNAPSHOT_COUNT`] entries, so the other faults need snapshots too).
//!
//! Every member's data dir is on its own disk (`support::disk::Disk`): a small ext4 loop filesystem under
//! a FUSE layer that loses unsynced writes (`support::lossy_fs`). Root and /dev/fuse are needed.
//!
//! Meanwhile clients on every member put, swap (txn on the value), delete, and read (linearizable,
//! serializable, and at past revisions). Afterwards the store's own history of each key is read
//! back revision by revision (`workload::store_history`), and: every acknowledged change is in it
//! at its revision; each key's client history is linearizable as a register with
//! compare-and-swap, in the order of the store's revisions (`support::history::linearizable`);
//! the MVCC revision rules
//! hold over every acknowledged change and every version read (`support::history::revisions_hold`);
//! every acknowledged change is found at its revision on every member; the members' HashKV
//! agree; and no process logged a panic.
//!
//! `NEMESIS_CYCLES=n` runs n cycles (default: each class once, for CI); `NEMESIS_SEED=s` replays
//! the choices of a run (its seed is printed first; timing still differs); `NEMESIS_DISK_MIB=n`
//! sizes each member's disk (default [`disk::DEFAULT_MIB`]); `NEMESIS_SNAPSHOT_COUNT=n` the
//! members' `--snapshot-count` (default [`SNAPSHOT_COUNT`]).
//!
//! Its members: `support::addresses::NEMESIS` (ports 2379 and 2380), behind the proxies on
//! `support::addresses::NEMESIS_PROXIES`.

mod proxy;
mod workload;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::addresses::{NEMESIS as HOSTS, NEMESIS_PROXIES as PROXIES};
use crate::support::disk::{self, Disk};
use crate::support::history::{self, Change, Observation, Op, xorshift};
use crate::support::lossy_fs::Keep;
use crate::support::*;
use proxy::{Link, Network};
use workload::{KEYS, Outcome, key_name};

const CLIENTS_PER_MEMBER: usize = 2;
const PROCESSES: [&str; 3] = ["consensus", "peer-gateway", "client-gateway"];
/// How long a healed cluster may take to answer on every member again.
const RECOVERY: Duration = Duration::from_secs(60);
/// At most this many acknowledged changes are read back at their revision on every member.
const READ_BACK: usize = 20_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Class {
    Kill,
    Pause,
    Partition,
    Flaky,
    RestartAll,
    PowerLoss,
    DiskFull,
    Behind,
}

const CLASSES: [Class; 8] = [
    Class::Kill,
    Class::Pause,
    Class::Partition,
    Class::Flaky,
    Class::RestartAll,
    Class::PowerLoss,
    Class::DiskFull,
    Class::Behind,
];

/// The members' `--snapshot-count` and `--snapshot-catchup-entries`: small, so that the raft log
/// is compacted every few seconds of the workload and a member down, paused or cut off for a few
/// seconds catches up by raft snapshot (`NEMESIS_SNAPSHOT_COUNT` sets the first; the second is a
/// fifth of it).
const SNAPSHOT_COUNT: u64 = 100;

/// A member whose peer URL is its proxy's: it listens on `host:2380` and advertises
/// `proxy:2380`.
fn member(dir: &std::path::Path, i: usize, cluster: &str, snapshot_count: u64) -> Member {
    unstarted_http_member_advertising(
        dir,
        &format!("nemesis{i}"),
        HOSTS[i],
        PROXIES[i],
        cluster,
        &format!(
            "ETCD_INITIAL_CLUSTER_TOKEN=\"nemesis\"\nETCD_SNAPSHOT_COUNT=\"{snapshot_count}\"\n\
             ETCD_SNAPSHOT_CATCHUP_ENTRIES=\"{}\"\n",
            (snapshot_count / 5).max(1)
        ),
    )
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
        })
        .unwrap_or(default)
}

/// The leader's index, if the members that answer agree on one within a few seconds.
fn try_leader(members: &[Member]) -> Option<usize> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let leader = members
            .iter()
            .find_map(|m| m.leader_and_term().map(|(l, _)| l))
            .filter(|l| *l != 0);
        if let Some(l) = leader
            && let Some(i) = members.iter().position(|m| m.member_id() == Some(l))
        {
            return Some(i);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

struct Nemesis<'a> {
    members: &'a mut [Member],
    snapshot_count: u64,
    disks: &'a [Disk],
    network: &'a Network,
    rng: u64,
    log: Vec<String>,
}

impl Nemesis<'_> {
    fn below(&mut self, n: usize) -> usize {
        (xorshift(&mut self.rng) % n as u64) as usize
    }

    fn hold(&mut self) -> Duration {
        Duration::from_millis(2_000 + self.below(3_000) as u64)
    }

    /// Half the time the leader, else any member.
    fn target(&mut self) -> (usize, &'static str) {
        let coin = self.below(2);
        let any = self.below(self.members.len());
        match coin {
            0 => match try_leader(self.members) {
                Some(l) => (l, "leader"),
                None => (any, "member"),
            },
            _ => (any, "member"),
        }
    }

    /// Injects one fault of `class`, holds it, heals it.
    fn cycle(&mut self, class: Class) {
        match class {
            Class::Kill => {
                let (m, role) = self.target();
                let process = PROCESSES[self.below(3)];
                let pid = self.members[m].kill9(process);
                self.log.push(format!(
                    "kill -9 {process} {pid} of {role} {}",
                    self.members[m].name
                ));
            }
            Class::Pause => {
                let (m, role) = self.target();
                let process = PROCESSES[self.below(3)];
                let hold = self.hold();
                let pid = self.members[m].pid(process);
                let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
                std::thread::sleep(hold);
                let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
                self.log.push(format!(
                    "SIGSTOP {process} {pid} of {role} {} for {hold:?}",
                    self.members[m].name
                ));
            }
            Class::Partition => {
                let (m, role) = self.target();
                let (inbound, outbound, how) = match self.below(3) {
                    0 => (true, true, "both ways"),
                    1 => (false, true, "what it sends"),
                    _ => (true, false, "what it receives"),
                };
                let hold = self.hold();
                self.network.isolate(m, inbound, outbound);
                std::thread::sleep(hold);
                self.network.heal();
                self.log.push(format!(
                    "cut {role} {} off ({how}) for {hold:?}",
                    self.members[m].name
                ));
            }
            Class::Flaky => {
                let loss = [0.05, 0.15, 0.3][self.below(3)];
                let high = Duration::from_millis(20 + self.below(80) as u64);
                let hold = self.hold();
                self.network.set_all(Link {
                    cut: false,
                    loss,
                    delay: Some((Duration::from_millis(1), high)),
                });
                std::thread::sleep(hold);
                self.network.heal();
                self.log.push(format!(
                    "{:.0}% loss and 1-{}ms delay between all for {hold:?}",
                    loss * 100.0,
                    high.as_millis()
                ));
            }
            Class::RestartAll => {
                for m in self.members.iter_mut() {
                    m.kill9_all();
                }
                for m in self.members.iter_mut() {
                    m.start();
                }
                self.log
                    .push("kill -9 of every process of every member".into());
            }
            Class::PowerLoss => {
                let targets: Vec<usize> = if self.below(4) == 0 {
                    (0..self.members.len()).collect()
                } else {
                    vec![self.target().0]
                };
                let keep = match self.below(2) {
                    0 => Keep::Nothing,
                    _ => Keep::Prefix(xorshift(&mut self.rng)),
                };
                // Half the time in the middle of fsyncs that never finish: the WAL's unsynced
                // tail is then more than a page, and nobody was answered for it.
                let mid_sync = self.below(2) == 0;
                let mut held = 0;
                if mid_sync {
                    for &t in &targets {
                        self.disks[t].hold_syncs();
                    }
                    let deadline = Instant::now() + Duration::from_secs(2);
                    while Instant::now() < deadline {
                        held = targets.iter().map(|&t| self.disks[t].held_syncs()).sum();
                        if held > 0 {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                let mut pids = Vec::new();
                for &t in &targets {
                    pids.extend(self.members[t].pids().into_values());
                    self.members[t].kill9_all();
                }
                for &t in &targets {
                    self.disks[t].release_syncs();
                }
                wait_gone(&pids);
                let mut what = Vec::new();
                for &t in &targets {
                    let report = self.disks[t]
                        .power_loss(keep)
                        .unwrap_or_else(|e| panic!("power loss of {}: {e}", self.members[t].name));
                    what.push(format!("{}: {report}", self.members[t].name));
                }
                for &t in &targets {
                    self.members[t].start();
                }
                let during = if mid_sync {
                    format!(", {held} fsyncs held")
                } else {
                    String::new()
                };
                self.log.push(format!(
                    "power loss ({keep:?}{during}) of {}",
                    what.join("; ")
                ));
            }
            Class::Behind => {
                // A follower's consensus paused while the others compact their logs past it
                // (several times over), so that it must catch up by raft snapshot.
                let Some(leader) = try_leader(self.members) else {
                    self.log.push("no leader to fall behind".into());
                    return;
                };
                let m = (leader + 1 + self.below(self.members.len() - 1)) % self.members.len();
                let revision =
                    |m: &Member| m.status().and_then(|s| s["header"]["revision"].as_i64());
                let from = revision(&self.members[leader]).unwrap_or(0);
                let installs = self.members[m].logged_times("installed a raft snapshot");
                let pid = self.members[m].pid("consensus");
                let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
                let want = 3 * self.snapshot_count as i64;
                let deadline = Instant::now() + Duration::from_secs(20);
                let mut passed = 0;
                while Instant::now() < deadline && passed < want {
                    std::thread::sleep(Duration::from_millis(200));
                    passed = revision(&self.members[leader]).unwrap_or(from) - from;
                }
                let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
                let deadline = Instant::now() + Duration::from_secs(30);
                let mut installed = 0;
                while Instant::now() < deadline && installed == 0 {
                    std::thread::sleep(Duration::from_millis(200));
                    installed =
                        self.members[m].logged_times("installed a raft snapshot") - installs;
                }
                self.log.push(format!(
                    "consensus {pid} of follower {} paused while {passed} revisions went by; \
                     {installed} raft snapshot(s) installed",
                    self.members[m].name
                ));
            }
            Class::DiskFull => {
                let (m, role) = self.target();
                let hold = self.hold();
                let taken = self.disks[m].fill().unwrap_or_else(|e| {
                    panic!("filling the disk of {}: {e}", self.members[m].name)
                });
                // A running member may not need a new block for a while (the WAL preallocates):
                // half the time its consensus is killed, and a restart on the full disk must fail
                // safely or come up without losing data; else it runs on until it needs a block
                // (RocksDB's flush, the WAL's next segment) and must stop there.
                let refused = self.members[m].logged_times("No space left on device");
                let killed = match self.below(2) {
                    0 => format!(
                        ", its consensus {} killed",
                        self.members[m].kill9("consensus")
                    ),
                    _ => String::new(),
                };
                std::thread::sleep(hold * 2);
                let refused = self.members[m].logged_times("No space left on device") - refused;
                self.disks[m].free().unwrap_or_else(|e| {
                    panic!("freeing the disk of {}: {e}", self.members[m].name)
                });
                self.log.push(format!(
                    "disk of {role} {} full ({} MiB taken){killed}, for {:?} ({refused} log lines \
                     of ENOSPC meanwhile)",
                    self.members[m].name,
                    taken >> 20,
                    hold * 2
                ));
            }
        }
    }

    /// Waits until every member answers; a member whose script has exited (it gave up, as a
    /// consensus that cannot start does) is started again, as systemd would.
    fn recover(&mut self) {
        let deadline = Instant::now() + RECOVERY;
        for i in 0..self.members.len() {
            loop {
                if self.members[i].script_exited() {
                    self.log
                        .push(format!("{} restarted by the harness", self.members[i].name));
                    self.members[i].start();
                }
                if self.members[i]
                    .etcdctl(&["endpoint", "health"])
                    .status
                    .success()
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} did not recover within {RECOVERY:?} after: {}\n--- its log ---\n{}",
                    self.members[i].name,
                    self.log.last().map_or("", |s| s.as_str()),
                    self.members[i].log_tail()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

#[test]
fn a_nemesis_loses_no_acknowledged_write_and_histories_stay_linearizable() {
    let cycles = env_or("NEMESIS_CYCLES", CLASSES.len() as u64) as usize;
    let seed = env_or(
        "NEMESIS_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    );
    eprintln!("nemesis: {cycles} cycles, NEMESIS_SEED={seed}");
    let tmp = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let addr = |h: &str| -> SocketAddr { format!("{h}:2380").parse().unwrap() };
    let real: Vec<SocketAddr> = HOSTS.iter().map(|h| addr(h)).collect();
    let fronts: Vec<SocketAddr> = PROXIES.iter().map(|h| addr(h)).collect();
    let network = runtime.block_on(Network::start(&real, &fronts, seed));

    let cluster = (0..HOSTS.len())
        .map(|i| format!("nemesis{i}=http://{}:2380", PROXIES[i]))
        .collect::<Vec<_>>()
        .join(",");
    let disk_mib = env_or("NEMESIS_DISK_MIB", disk::DEFAULT_MIB);
    // Made before the members, so that they are stopped (dropped) before the disks go.
    let disks: Vec<Disk> = (0..HOSTS.len())
        .map(|i| {
            let data_dir = tmp.path().join(format!("nemesis{i}-data"));
            Disk::new(&data_dir, disk_mib)
                .unwrap_or_else(|e| panic!("a disk for nemesis{i} on {}: {e}", data_dir.display()))
        })
        .collect();
    let snapshot_count = env_or("NEMESIS_SNAPSHOT_COUNT", SNAPSHOT_COUNT);
    let mut members: Vec<Member> = (0..HOSTS.len())
        .map(|i| member(tmp.path(), i, &cluster, snapshot_count))
        .collect();
    for (i, m) in members.iter().enumerate() {
        assert_eq!(m.data_dir, tmp.path().join(format!("nemesis{i}-data")));
    }
    for m in &mut members {
        m.start();
    }
    for m in &members {
        wait_healthy(m, RECOVERY);
    }
    let endpoints: Vec<String> = members.iter().map(|m| m.endpoint.clone()).collect();

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..HOSTS.len() * CLIENTS_PER_MEMBER)
        .map(|id| {
            let endpoint = endpoints[id % HOSTS.len()].clone();
            runtime.spawn(workload::client(id, endpoint, start, stop.clone()))
        })
        .collect();

    let mut done: HashMap<Class, usize> = HashMap::new();
    let log = {
        let mut nemesis = Nemesis {
            members: &mut members,
            snapshot_count,
            disks: &disks,
            network: &network,
            rng: seed | 1,
            log: Vec::new(),
        };
        std::thread::sleep(Duration::from_secs(1));
        for cycle in 0..cycles {
            let class = CLASSES[cycle % CLASSES.len()];
            let logged = nemesis.log.len();
            nemesis.cycle(class);
            nemesis.recover();
            *done.entry(class).or_default() += 1;
            eprintln!(
                "nemesis cycle {cycle} at {:?}: {}",
                start.elapsed(),
                nemesis.log[logged..].join("; ")
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        nemesis.log
    };
    stop.store(true, Ordering::Relaxed);
    let outcomes: Vec<Outcome> = runtime.block_on(async {
        let mut all = Vec::new();
        for c in clients {
            all.push(c.await.expect("client task"));
        }
        all
    });
    let mut ops: Vec<Op> = Vec::new();
    let mut changes: Vec<Change> = Vec::new();
    let mut observations: Vec<Observation> = Vec::new();
    let mut failed = 0;
    let mut unanswered_deletes = Vec::new();
    for o in outcomes {
        unanswered_deletes.extend(o.unanswered_deletes);
        ops.extend(o.ops);
        changes.extend(o.changes);
        observations.extend(o.observations);
        failed += o.failed;
    }

    // Everyone converged: each member at the newest acknowledged revision.
    for m in &members {
        wait_healthy(m, RECOVERY);
    }
    let newest = changes.iter().map(|c| c.revision).max().unwrap_or(0);
    for m in &members {
        eventually(
            RECOVERY,
            &format!("{} to apply revision {newest}", m.name),
            || {
                let rev = m.status()?["header"]["revision"].as_i64()?;
                (rev >= newest).then_some(())
            },
        );
    }
    let (last_reads, read_back, hashes) =
        runtime.block_on(final_reads(&endpoints, start, &changes, newest, seed));
    ops.extend(last_reads);
    observations.extend(read_back);

    // No process may have panicked (a panic is a bug even when fail-stop contains it).
    let panicked: Vec<&str> = members
        .iter()
        .filter(|m| m.logged("panicked"))
        .map(|m| m.name.as_str())
        .collect();

    let installs: usize = members
        .iter()
        .map(|m| m.logged_times("installed a raft snapshot"))
        .sum();
    let answered = ops.iter().filter(|o| o.answer.is_some()).count();
    let per_class: Vec<String> = CLASSES
        .iter()
        .map(|c| format!("{c:?} {}", done.get(c).copied().unwrap_or(0)))
        .collect();
    eprintln!(
        "nemesis: cycles {}; {} operations ({answered} answered, {failed} failed or unanswered), \
         {} acknowledged changes, {} versions read; packets forwarded {}, dropped {}, delayed {}; \
         {installs} raft snapshots installed",
        per_class.join(", "),
        ops.len(),
        changes.len(),
        observations.len(),
        network.counts.forwarded.load(Ordering::Relaxed),
        network.counts.dropped.load(Ordering::Relaxed),
        network.counts.delayed.load(Ordering::Relaxed),
    );
    assert!(changes.len() > 50, "too few acknowledged changes to judge");

    let mut verdicts_before = Vec::new();
    let store = runtime.block_on(workload::store_history(&endpoints[0]));
    eprintln!(
        "nemesis: the store's history has {} changes to the keys",
        store.iter().map(Vec::len).sum::<usize>()
    );
    if let Err(e) = history::acknowledged_in_store(&changes, &store) {
        verdicts_before.push(e);
    }
    let checker = std::thread::spawn(move || {
        let mut verdicts = verdicts_before;
        for (key, effects) in store.iter().enumerate() {
            let history: Vec<Op> = ops.iter().filter(|o| o.key == key).cloned().collect();
            if let Err(e) = history::linearizable(&history, Some(effects)) {
                verdicts.push(format!("key {} is not linearizable: {e}", key_name(key)));
            }
        }
        if let Err(e) = history::revisions_hold(&changes, &observations, &unanswered_deletes) {
            verdicts.push(e);
        }
        (verdicts, ops)
    });
    let (mut verdicts, ops) = checker.join().expect("checker");
    let distinct: std::collections::HashSet<u32> = hashes.iter().map(|(_, h)| *h).collect();
    if distinct.len() > 1 {
        verdicts.push(format!("HashKV at revision {newest} differs: {hashes:?}"));
    }
    if !panicked.is_empty() {
        verdicts.push(format!("a process panicked in {panicked:?}"));
    }
    for m in &mut members {
        m.stop();
    }
    if !verdicts.is_empty() {
        let file = std::env::temp_dir().join(format!("nemesis-{}.txt", std::process::id()));
        let text: String = ops.iter().map(|o| format!("{o:?}\n")).collect();
        let _ = std::fs::write(&file, text);
        panic!(
            "nemesis (NEMESIS_SEED={seed}) found {} violation(s):\n{}\nfaults: {}\n(the history is in {})",
            verdicts.len(),
            verdicts.join("\n"),
            log.join("; "),
            file.display()
        );
    }
}

/// One linearizable read of every key through every member, every acknowledged change (at
/// most `READ_BACK` of them) read at its revision on every member (serializable: each member's
/// own copy), and each member's HashKV at `newest`.
async fn final_reads(
    endpoints: &[String],
    start: Instant,
    changes: &[Change],
    newest: i64,
    seed: u64,
) -> (Vec<Op>, Vec<Observation>, Vec<(String, u32)>) {
    let mut last = Vec::new();
    let mut read_back = Vec::new();
    let mut hashes = Vec::new();
    let mut sample: Vec<&Change> = changes.iter().collect();
    let mut rng = seed | 1;
    while sample.len() > READ_BACK {
        let i = (xorshift(&mut rng) % sample.len() as u64) as usize;
        sample.swap_remove(i);
    }
    for (id, endpoint) in endpoints.iter().enumerate() {
        let mut c = etcd_client::Client::connect([endpoint.as_str()], None)
            .await
            .expect("connect");
        for key in 0..KEYS {
            let call = start.elapsed();
            let got = c.get(key_name(key), None).await.expect("final read");
            let value = got.kvs().first().map(|kv| {
                kv.value_str()
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .expect("a value this test wrote")
            });
            last.push(Op {
                key,
                client: 1000 + id,
                call,
                answer: Some(start.elapsed()),
                kind: history::Kind::Read(value),
            });
        }
        for change in &sample {
            let options = etcd_client::GetOptions::new()
                .with_revision(change.revision)
                .with_serializable();
            let got = c
                .get(key_name(change.key), Some(options))
                .await
                .unwrap_or_else(|e| panic!("reading {change:?} back from {endpoint}: {e}"));
            let found = got.kvs().first().map(|kv| {
                let v = kv
                    .value_str()
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .expect("a value this test wrote");
                (v, kv.mod_revision())
            });
            read_back.push(Observation {
                key: change.key,
                at: change.revision,
                found,
                historical: true,
            });
        }
        let hash = c.hash_kv(newest).await.expect("HashKV").hash();
        hashes.push((endpoint.clone(), hash));
    }
    (last, read_back, hashes)
}
