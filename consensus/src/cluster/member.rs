//! The member table: who is in the cluster, as raft and the gateways see it, and how a member is
//! written in Cap'n Proto (in raft entries, in RocksDB, to the gateways).

use capnp::message::ReaderOptions;
use schema::member_capnp::member;

/// A member as the cluster knows it (etcd's `membership.Member`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct MemberInfo {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// Records member `m`'s published name and client URLs in `members`; the updated member when
/// that changed it (to be stored), `None` when it did not or the member is unknown.
pub(crate) fn publish(members: &mut [MemberInfo], m: &MemberInfo) -> Option<MemberInfo> {
    let Some(known) = members.iter_mut().find(|k| k.id == m.id) else {
        tracing::warn!(
            id = format!("{:x}", m.id),
            "ignoring attributes of an unknown member"
        );
        return None;
    };
    let updated = MemberInfo {
        name: m.name.clone(),
        client_urls: m.client_urls.clone(),
        ..known.clone()
    };
    if &updated == known {
        return None;
    }
    *known = updated.clone();
    Some(updated)
}

// --------------------------------------------------------------------------------- encoding

fn text_list(list: capnp::text_list::Reader) -> capnp::Result<Vec<String>> {
    list.iter().map(|t| Ok(t?.to_str()?.to_string())).collect()
}

pub(crate) fn read_member(m: member::Reader) -> capnp::Result<MemberInfo> {
    Ok(MemberInfo {
        id: m.get_id(),
        name: m.get_name()?.to_str()?.to_string(),
        peer_urls: text_list(m.get_peer_urls()?)?,
        client_urls: text_list(m.get_client_urls()?)?,
        is_learner: m.get_is_learner(),
    })
}

pub(crate) fn encode_member(m: &MemberInfo) -> Vec<u8> {
    let mut msg = capnp::message::Builder::new_default();
    write_member(msg.init_root(), m);
    capnp::serialize::write_message_to_words(&msg)
}

pub(crate) fn decode_member(data: &[u8]) -> capnp::Result<MemberInfo> {
    let msg = capnp::serialize::read_message_from_flat_slice(&mut &data[..], ReaderOptions::new())?;
    read_member(msg.get_root()?)
}

pub(crate) fn write_member(mut b: member::Builder, m: &MemberInfo) {
    b.set_id(m.id);
    b.set_name(m.name.as_str());
    b.set_is_learner(m.is_learner);
    let mut urls = b.reborrow().init_peer_urls(m.peer_urls.len() as u32);
    for (i, u) in m.peer_urls.iter().enumerate() {
        urls.set(i as u32, u.as_str());
    }
    let mut urls = b.init_client_urls(m.client_urls.len() as u32);
    for (i, u) in m.client_urls.iter().enumerate() {
        urls.set(i as u32, u.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, name: &str) -> MemberInfo {
        MemberInfo {
            id,
            name: name.into(),
            peer_urls: vec![format!("http://127.0.0.{id}:2380")],
            ..Default::default()
        }
    }

    #[test]
    fn publishing_changes_only_name_and_client_urls_of_a_known_member() {
        let mut members = vec![member(1, ""), member(2, "")];
        let mut p = member(2, "etcd02");
        p.peer_urls = vec!["http://elsewhere:2380".into()];
        p.client_urls = vec!["http://127.0.0.2:2379".into()];
        let updated = publish(&mut members, &p).unwrap();
        assert_eq!(updated.name, "etcd02");
        assert_eq!(updated.peer_urls, vec!["http://127.0.0.2:2380".to_string()]);
        assert_eq!(members[1], updated);
        assert!(publish(&mut members, &p).is_none(), "nothing new");
        assert!(publish(&mut members, &member(9, "x")).is_none(), "unknown");
    }
}
