//! Starts a member's consensus process: locks the data dir, opens storage, settles the identity,
//! starts the IPC thread, and, when this start bootstrapped an empty data dir of a cluster with
//! other members, asks them through the peer gateway whether they know this member already
//! ([`crate::ipc::boot_check`], etcd's `isMemberBootstrapped`): if one does, the member lost its
//! data and refuses to start. Only then does the raft thread start, so a wiped member never
//! votes. Both run until SIGTERM or SIGINT.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{SigSet, Signal};
use tracing::{error, info};

use crate::cluster::MemberInfo;
use crate::cluster::{self, ids};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::ipc::boot_check::{BootCheck, Outcome};
use crate::ipc::{self, Context, GatewayConfig, Sockets, TlsFiles};
use crate::mvcc;
use crate::raft::apply::Machine;
use crate::raft::core::{Core, LogCompaction};
use crate::raft::{RaftLoop, Settings, Shared};
use crate::storage::Db;
use crate::streams::write::Limits;

fn path_text(p: &Option<std::path::PathBuf>) -> String {
    p.as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn gateway_config(config: &Config) -> GatewayConfig {
    let urls = |v: &[crate::config::Url]| v.iter().map(|u| u.to_string()).collect();
    GatewayConfig {
        listen_peer_urls: urls(&config.listen_peer_urls),
        peer_tls: TlsFiles {
            cert_file: path_text(&config.peer_cert_file),
            key_file: path_text(&config.peer_key_file),
            trusted_ca_file: path_text(&config.peer_trusted_ca_file),
            client_cert_auth: config.peer_client_cert_auth,
            allowed_cns: config.peer_cert_allowed_cn.clone(),
            allowed_hostnames: config.peer_cert_allowed_hostname.clone(),
        },
        listen_client_urls: urls(&config.listen_client_urls),
        client_tls: TlsFiles {
            cert_file: path_text(&config.cert_file),
            key_file: path_text(&config.key_file),
            trusted_ca_file: path_text(&config.trusted_ca_file),
            client_cert_auth: config.client_cert_auth,
            ..TlsFiles::default()
        },
        max_request_bytes: config.max_request_bytes,
        max_txn_ops: config.max_txn_ops.min(u32::MAX as u64) as u32,
    }
}

/// Takes the data dir for this process alone (flock); held until the process exits.
fn lock_data_dir(dir: &std::path::Path) -> Result<Flock<fs::File>> {
    let path = dir.join("consensus.lock");
    let mut file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    // A killed predecessor holds the lock until the kernel has finished its last system call (a
    // sync can take a while): a supervisor's restart waits for it rather than failing at once.
    let deadline = std::time::Instant::now() + DATA_DIR_LOCK_WAIT;
    let mut waited = false;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((f, e))
                if e == nix::errno::Errno::EWOULDBLOCK && std::time::Instant::now() < deadline =>
            {
                if !waited {
                    info!(
                        dir = %dir.display(),
                        "data dir is locked by another consensus process; waiting up to \
                         {DATA_DIR_LOCK_WAIT:?} for it to exit"
                    );
                    waited = true;
                }
                file = f;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err((_, e)) => {
                return Err(Error::Startup(format!(
                    "data dir {} is in use by another consensus process ({e})",
                    dir.display()
                )));
            }
        }
    }
}

/// The file in the data dir that keeps a member that has already been bootstrapped from taking
/// part again (see [`Error::AlreadyBootstrapped`]): it holds the one-line reason.
const ALREADY_BOOTSTRAPPED: &str = "already-bootstrapped";

/// How long a starting consensus waits for the data dir's lock.
const DATA_DIR_LOCK_WAIT: Duration = Duration::from_secs(10);

/// How long a start from an empty data dir waits for the other members to say whether they know
/// it (and as long for its peer gateway to register first): etcd's peer dial timeout, a second
/// plus one election timeout.
fn bootstrap_check_timeout(config: &Config) -> Duration {
    Duration::from_millis(1000 + config.election_timeout)
}

/// Refuses to go on as a member that has already been bootstrapped, as etcd does: one line in the
/// log and on stderr, kept in the data dir so that no restart takes part either, and exit 1.
fn refuse_as_bootstrapped(marker: &std::path::Path, why: &str) -> ! {
    if let Err(e) = fs::write(marker, why) {
        error!("cannot write {}: {e}", marker.display());
    }
    error!("{why}");
    eprintln!("consensus: {why}");
    std::process::exit(1);
}

pub fn run(config: Config) -> Result<()> {
    // Block the stop signals before any thread exists, so that only the wait below receives them.
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    stop.thread_block()
        .map_err(|e| Error::io("blocking signals", e.into()))?;

    let dir = &config.data_dir;
    fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io(format!("chmod 0700 {}", dir.display()), e))?;
    let _lock = lock_data_dir(dir)?;

    let refused = dir.join(ALREADY_BOOTSTRAPPED);
    if let Ok(why) = fs::read_to_string(&refused) {
        return Err(Error::Startup(why.trim().to_string()));
    }
    // A raft snapshot's install that a crash (or its own restart) interrupted is finished or
    // dropped before anything opens the database or the WAL.
    crate::storage::snap::recover(dir)?;
    let db = Db::open(&dir.join("db"))?;
    crate::storage::image::remove_leftovers(dir)?;
    let cluster::Loaded {
        identity,
        members,
        mut log,
        bootstrapped: started_empty,
    } = cluster::load_or_bootstrap(&db, &config)?;
    let snapshots = crate::storage::snap::Snapshots::new(db.clone(), dir);
    log.serve_snapshots(snapshots.clone());
    let applied = db.applied_index()?;
    // Applied entries were committed; raft-rs refuses an applied index above the commit, which
    // the WAL may hold from before the last apply (it is only written with new entries).
    log.set_commit(applied);
    let log_commit = log.commit();
    let last_index = log.last_index_cached();
    if last_index > applied {
        info!(
            applied,
            last_index, "entries above the applied index are applied again once known committed"
        );
    }
    let revision = mvcc::View::snapshot(&db).current_revision()?;
    let others = members.iter().any(|m| m.id != identity.member_id);
    let own_peer_urls = members
        .iter()
        .find(|m| m.id == identity.member_id)
        .map(|m| m.peer_urls.clone())
        .unwrap_or_default();
    let shared = Arc::new(Shared {
        members: Mutex::new(members),
        ..Default::default()
    });
    shared.applied.store(applied, Ordering::Relaxed);
    // What the log says was committed may have been answered before a crash, and RocksDB may
    // not hold it yet: reads wait (`Shared::settled`) until the raft thread applied it again,
    // which it now starts only after the IPC thread serves.
    shared.answered.store(log_commit, Ordering::Release);
    shared.revision.store(revision, Ordering::Relaxed);
    let carried = std::env::var(CARRIED_SNAPSHOTS_RECEIVED).ok();
    shared.snapshots_received.store(
        carried.and_then(|n| n.parse().ok()).unwrap_or(0),
        Ordering::Relaxed,
    );
    let clock_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    shared.next_request.store(clock_ms << 8, Ordering::Relaxed);

    let raft_config = crate::raft::config(
        identity.member_id,
        applied,
        config.election_ticks() as usize,
    );
    raft_config.validate()?;
    let node = crate::raft::raw_node(&raft_config, log)?;

    let (commands_tx, inbox) = crate::raft::inbox::channel()?;
    let me = MemberInfo {
        id: identity.member_id,
        name: identity.name.clone(),
        peer_urls: own_peer_urls,
        client_urls: config
            .advertise_client_urls
            .iter()
            .map(|u| u.to_string())
            .collect(),
        is_learner: false,
    };
    let tick = Duration::from_millis(config.heartbeat_interval);
    let gateways = gateway_config(&config);
    // etcd's request timeout: 5s plus two election timeouts.
    let request_timeout = Duration::from_millis(5000 + 2 * config.election_timeout);
    let settings = Settings {
        tick,
        data_dir: dir.clone(),
        cluster_id: identity.cluster_id,
        member_id: identity.member_id,
        limits: Limits {
            max_request_bytes: gateways.max_request_bytes,
            max_txn_ops: gateways.max_txn_ops,
        },
    };
    let published = shared
        .members()
        .iter()
        .any(|m| m.id == me.id && m.name == me.name && m.client_urls == me.client_urls);
    let publish = crate::codec::encode_proposal(0, 0, |rr| {
        crate::cluster::write_member(rr.init_publish(), &me);
        Ok(())
    })
    .map_err(|e| Error::Startup(format!("encoding this member's attributes: {e}")))?;
    // Read-index contexts of this run start above any an earlier run used (see `Reads::starting_at`).
    let first_read = clock_ms << 20;
    let mut core = Core::new(
        node,
        shared.clone(),
        applied,
        (publish, published),
        first_read,
        request_timeout,
    );
    let compacted = shared.clone();
    let compactor = mvcc::Compactor::start(db.clone(), move |revision| {
        compacted.compacted_physically(revision)
    })?;
    let machine = Machine::new(db.clone(), shared.clone(), compactor);
    core.set_started_empty(started_empty);
    core.set_log_compaction(LogCompaction {
        snapshot_count: config.snapshot_count,
        catchup_entries: config.snapshot_catchup_entries,
    });
    let raft_loop = RaftLoop::new(core, machine, inbox, shared.clone(), settings);
    let name = identity.name.clone();
    let member = ids::format_id(identity.member_id);
    // Only a start that bootstrapped the data dir asks, and only when there is anyone to ask.
    let ask =
        started_empty && others && !schema::failpoint::set(schema::failpoint::SKIP_BOOTSTRAP_CHECK);
    let (boot_check, check_events) = if ask {
        let (check, events) = BootCheck::new(identity.member_id, bootstrap_check_timeout(&config));
        (Some(check), Some(events))
    } else {
        (None, None)
    };

    let sockets = Sockets {
        peer: schema::peer_socket(dir),
        raft: schema::raft_socket(dir),
        write: schema::write_socket(dir),
        client: schema::client_socket(dir),
    };
    let socket_paths = [
        sockets.peer.clone(),
        sockets.client.clone(),
        sockets.raft.clone(),
        sockets.write.clone(),
    ];
    let compactor = config.compaction_retention().map(|retention| {
        info!(
            mode = config.auto_compaction_mode.as_str(),
            retention = config.auto_compaction_retention,
            "auto compaction is on"
        );
        crate::ipc::compaction::Compactor::new(retention, std::time::Instant::now(), revision)
    });
    let db_at_stop = db.clone();
    let ctx = Context {
        compactor,
        identity: identity.clone(),
        gateways,
        db,
        shared,
        commands: commands_tx,
        request_timeout,
        data_dir: dir.clone(),
        boot_check: boot_check.clone(),
        snapshots,
    };
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("ipc".into())
        .spawn(move || ipc::run(ctx, sockets, ready_tx))
        .map_err(|e| Error::io("starting the IPC thread", e))?;
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(Error::Startup(
                "the IPC thread stopped while starting".into(),
            ));
        }
    }
    if let (Some(check), Some(events)) = (boot_check, check_events) {
        info!(
            "this start bootstrapped an empty data dir: asking the other members whether they \
             know this member already"
        );
        match check.wait(&events) {
            Outcome::Published { by, member: known } => {
                let why = format!(
                    "member {name} ({member}) has already been bootstrapped: member {by:x} knows \
                     it as published (client URLs {}), but its data dir {} was empty at this \
                     start; restore the data dir, or remove the member (etcdctl member remove \
                     {member}) and add it again with an empty one",
                    known.client_urls.join(","),
                    dir.display()
                );
                refuse_as_bootstrapped(&refused, &why);
            }
            Outcome::Proceed(why) => info!("starting raft as a new member: {why}"),
        }
    }
    let refused_dir = dir.clone();
    std::thread::Builder::new()
        .name("raft".into())
        .spawn(move || {
            match raft_loop.run() {
                Ok(()) => {}
                // The second line of defence, should no member have answered at start.
                Err(Error::AlreadyBootstrapped { leader }) => {
                    let why = format!(
                        "member {name} ({member}) has already been bootstrapped: leader \
                         {leader:x} holds entries it acknowledged before its data dir {} was \
                         emptied; restore the data dir, or remove the member (etcdctl member \
                         remove {member}) and add it again with an empty one",
                        refused_dir.display()
                    );
                    refuse_as_bootstrapped(&refused, &why);
                }
                Err(e) => {
                    error!("raft loop stopped: {e}");
                    std::process::exit(1);
                }
            }
        })
        .map_err(|e| Error::io("starting the raft thread", e))?;
    info!(
        name = identity.name,
        member = ids::format_id(identity.member_id),
        cluster = ids::format_id(identity.cluster_id),
        peer_socket = %socket_paths[0].display(),
        client_socket = %socket_paths[1].display(),
        "consensus is ready"
    );

    let signal = stop
        .wait()
        .map_err(|e| Error::io("waiting for signals", e.into()))?;
    info!("received {signal:?}; stopping");
    for p in &socket_paths {
        let _ = fs::remove_file(p);
    }
    db_at_stop.flush_for_stop();
    info!("applied state flushed to disk; stopped");
    Ok(())
}

/// The raft snapshots this process received, carried across [`restart_in_place`] so that
/// `etcd_network_snapshot_receive_success` counts the installs that caused one.
const CARRIED_SNAPSHOTS_RECEIVED: &str = "ETCDRS_CARRIED_SNAPSHOTS_RECEIVED";

/// Starts this consensus again, in this process (same PID, arguments and environment, and the
/// count of snapshots received): after a raft snapshot was installed, the cheapest way to a
/// state that is the new data dir's alone. Every other thread ends with the exec, and the
/// gateways register again.
pub(crate) fn restart_in_place(snapshots_received: u64) -> ! {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let args: Vec<CString> = std::env::args_os()
        .filter_map(|a| CString::new(a.as_bytes()).ok())
        .collect();
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != CARRIED_SNAPSHOTS_RECEIVED)
        .filter_map(|(k, v)| CString::new([k.as_bytes(), b"=", v.as_bytes()].concat()).ok())
        .collect();
    env.extend(CString::new(format!("{CARRIED_SNAPSHOTS_RECEIVED}={snapshots_received}")).ok());
    let exe = c"/proc/self/exe";
    let e = nix::unistd::execve(exe, &args, &env).unwrap_err();
    // Not restarted: stop, and the supervisor starts consensus again.
    tracing::error!("cannot restart in place: {e}; exiting");
    std::process::exit(1)
}
