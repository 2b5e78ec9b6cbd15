//! The member's identity and the member table: computed from `--initial-cluster` on the very first
//! start, stored, and from then on read from disk (like etcd, a member with data ignores the
//! initial-cluster flags). No other process ever derives an ID.

use std::sync::Arc;

use capnp::message::ReaderOptions;
use schema::member_capnp::identity;
use tracing::{info, warn};

pub mod ids;
mod member;

pub(crate) use member::{
    MemberInfo, decode_member, encode_member, publish, read_member, write_member,
};

use crate::config::{ClusterState, Config};
use crate::error::{Error, Result};
use crate::etcd_error::{self as ee, EtcdError};
use crate::storage::{Db, RaftLog};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub member_id: u64,
    pub cluster_id: u64,
    pub name: String,
}

/// The initial member table: one entry per name of `--initial-cluster`, with its hashed ID.
pub fn initial_members(config: &Config) -> Vec<MemberInfo> {
    config
        .member_peer_urls()
        .into_iter()
        .map(|(name, peer_urls)| MemberInfo {
            id: ids::member_id(&peer_urls, &config.initial_cluster_token),
            name,
            peer_urls,
            client_urls: Vec::new(),
            is_learner: false,
        })
        .collect()
}

/// What a member starts from.
pub(crate) struct Loaded {
    pub identity: Identity,
    pub members: Vec<MemberInfo>,
    pub log: RaftLog,
    /// The data dir was empty: this start bootstrapped it.
    pub bootstrapped: bool,
}

/// The members of the new cluster `--initial-cluster` describes, and this member's identity in
/// it (IDs from the peer URLs and the token).
pub(crate) fn new_cluster(config: &Config) -> Result<(Vec<MemberInfo>, Identity)> {
    let members = initial_members(config);
    let me = members
        .iter()
        .find(|m| m.name == config.name)
        .ok_or_else(|| {
            Error::Config(format!(
                "member {:?} is not in --initial-cluster {:?}",
                config.name,
                config.initial_cluster_string()
            ))
        })?;
    let identity = Identity {
        member_id: me.id,
        cluster_id: ids::cluster_id(&members.iter().map(|m| m.id).collect::<Vec<_>>()),
        name: config.name.clone(),
    };
    Ok((members, identity))
}

/// Loads identity, members and raft log, or creates them on first start (with one fsync).
pub(crate) fn load_or_bootstrap(db: &Arc<Db>, config: &Config) -> Result<Loaded> {
    let mut log = RaftLog::load(db, &config.data_dir.join("wal"))?;
    if let Some(bytes) = db.identity()? {
        let identity = decode_identity(&bytes)?;
        if identity.name != config.name {
            warn!(
                "the data dir belongs to member {:?}; ignoring --name {:?}",
                identity.name, config.name
            );
        }
        let members = load_members(db)?;
        info!(
            member = ids::format_id(identity.member_id),
            cluster = ids::format_id(identity.cluster_id),
            "restarting member from its data dir"
        );
        return Ok(Loaded {
            identity,
            members,
            log,
            bootstrapped: false,
        });
    }
    if config.initial_cluster_state == ClusterState::Existing {
        return Err(Error::Config(format!(
            "--initial-cluster-state=existing with an empty data dir {} needs a member added by \
             MemberAdd, which this version does not support yet; use --initial-cluster-state=new",
            config.data_dir.display()
        )));
    }
    let (members, identity) = new_cluster(config)?;
    let mut batch = db.batch();
    for m in &members {
        batch.put_member(m.id, &encode_member(m));
    }
    batch.put_identity(&encode_identity(&identity));
    log.bootstrap(members.iter().map(|m| m.id).collect(), &mut batch);
    db.write(batch, true)?;
    info!(
        member = ids::format_id(identity.member_id),
        cluster = ids::format_id(identity.cluster_id),
        members = members.len(),
        "bootstrapped a new cluster member"
    );
    Ok(Loaded {
        identity,
        members,
        log,
        bootstrapped: true,
    })
}

/// etcd's checks of a MoveLeader: only the leader (`leader`, as this member `me` knows it)
/// hands over, and only to a voting member.
pub(crate) fn check_transferee(
    members: &[MemberInfo],
    leader: u64,
    me: u64,
    target: u64,
) -> std::result::Result<(), EtcdError> {
    if leader != me {
        return Err(ee::not_leader());
    }
    if !members.iter().any(|m| m.id == target && !m.is_learner) {
        return Err(ee::bad_leader_transferee());
    }
    Ok(())
}

pub fn load_members(db: &Db) -> Result<Vec<MemberInfo>> {
    let mut out = Vec::new();
    db.for_each_member(|v| {
        out.push(decode_member(v).map_err(|e| Error::Corrupt(format!("member: {e}")))?);
        Ok(())
    })?;
    Ok(out)
}

pub(crate) fn encode_identity(id: &Identity) -> Vec<u8> {
    let mut msg = capnp::message::Builder::new_default();
    let mut b = msg.init_root::<identity::Builder>();
    b.set_member_id(id.member_id);
    b.set_cluster_id(id.cluster_id);
    b.set_name(id.name.as_str());
    capnp::serialize::write_message_to_words(&msg)
}

fn decode_identity(bytes: &[u8]) -> Result<Identity> {
    let corrupt = |e: capnp::Error| Error::Corrupt(format!("identity: {e}"));
    let msg = capnp::serialize::read_message_from_flat_slice(&mut &bytes[..], ReaderOptions::new())
        .map_err(corrupt)?;
    let r = msg.get_root::<identity::Reader>().map_err(corrupt)?;
    Ok(Identity {
        member_id: r.get_member_id(),
        cluster_id: r.get_cluster_id(),
        name: r
            .get_name()
            .map_err(corrupt)?
            .to_str()
            .map_err(|e| Error::Corrupt(format!("identity name: {e}")))?
            .to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Config {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        Config::load(&args, &[], None).unwrap()
    }

    #[test]
    fn only_the_leader_moves_leadership_and_only_to_a_voter() {
        let member = |id, is_learner| MemberInfo {
            id,
            is_learner,
            ..MemberInfo::default()
        };
        let members = [member(1, false), member(2, false), member(3, true)];
        assert_eq!(check_transferee(&members, 1, 1, 2), Ok(()));
        assert_eq!(check_transferee(&members, 2, 1, 2), Err(ee::not_leader()));
        assert_eq!(
            check_transferee(&members, 1, 1, 3),
            Err(ee::bad_leader_transferee())
        );
        assert_eq!(
            check_transferee(&members, 1, 1, 9),
            Err(ee::bad_leader_transferee())
        );
    }

    #[test]
    fn ids_are_computed_once_and_survive_restart() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = "--initial-cluster=a=http://127.0.0.1:2380,b=http://127.0.0.2:2380";
        let first = {
            let db = Db::open(dir.path()).unwrap();
            let c = config(&[
                "--name=a",
                "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                cluster,
            ]);
            let Loaded {
                identity,
                members,
                log,
                ..
            } = load_or_bootstrap(&db, &c).unwrap();
            assert_eq!(
                identity.member_id,
                ids::member_id(&["http://127.0.0.1:2380".into()], "etcd-cluster")
            );
            assert_eq!(members.len(), 2);
            assert_eq!(
                identity.cluster_id,
                ids::cluster_id(&[members[0].id, members[1].id])
            );
            let state = raft::Storage::initial_state(&log).unwrap();
            assert_eq!(state.conf_state.voters.len(), 2);
            identity
        };
        // A restart with another token must not change the stored IDs.
        let db = Db::open(dir.path()).unwrap();
        let c = config(&[
            "--name=a",
            "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            cluster,
            "--initial-cluster-token=other",
        ]);
        let Loaded {
            identity: again,
            members,
            ..
        } = load_or_bootstrap(&db, &c).unwrap();
        assert_eq!(again, first);
        assert_eq!(members.len(), 2);
    }
}
