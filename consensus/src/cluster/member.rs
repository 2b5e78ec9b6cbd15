//! The member table: who is in the cluster, as raft and the gateways see it.

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
