//! Cluster queries, the link's side (see [`crate::transport::members`] for the wire): the
//! `PeerView`s this gateway sends and reads, the answers to peers' queries (consensus's member
//! table, fetched with `PeerRegistrar.members` for each query), and `PeerGateway.askMembers`,
//! which consensus calls once at a start from an empty data dir.

use std::rc::Rc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use schema::member_capnp::{member, peer_gateway, peer_view};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::State;
use crate::error::{Error, Result};
use crate::transport::MembersQuery;

/// An encoded `PeerView` of member `member_id` with `members` (a `List(Member)` as consensus
/// handed it out), flat: what goes in an answer frame.
pub(super) fn encode_view(
    member_id: u64,
    members: capnp::struct_list::Reader<'_, member::Owned>,
) -> Result<Vec<u8>> {
    let mut message = capnp::message::Builder::new_default();
    let mut view = message.init_root::<peer_view::Builder>();
    view.set_member_id(member_id);
    view.set_members(members)?;
    Ok(capnp::serialize::write_message_to_words(&message))
}

/// Reads a `PeerView` a peer sent, within [`schema::limits::members_answer_reader_options`]: a
/// malformed one is an error.
pub(super) fn decode_view(
    bytes: &[u8],
) -> Result<capnp::message::Reader<capnp::serialize::OwnedSegments>> {
    let mut slice = bytes;
    let message =
        capnp::serialize::read_message(&mut slice, schema::limits::members_answer_reader_options())
            .map_err(|e| Error::MalformedMembers(e.to_string()))?;
    if !slice.is_empty() {
        return Err(Error::MalformedMembers(
            "bytes follow the Cap'n Proto message".into(),
        ));
    }
    // Walk it once now, so that a malformed member fails here and not half-way into a reply.
    let view = message
        .get_root::<peer_view::Reader>()
        .map_err(|e| Error::MalformedMembers(e.to_string()))?;
    for m in view
        .get_members()
        .map_err(|e| Error::MalformedMembers(e.to_string()))?
    {
        let texts = |t: capnp::Result<capnp::text_list::Reader<'_>>| -> capnp::Result<()> {
            for u in t? {
                u?;
            }
            Ok(())
        };
        m.get_name()
            .map(|_| ())
            .and_then(|()| texts(m.get_peer_urls()))
            .and_then(|()| texts(m.get_client_urls()))
            .map_err(|e| Error::MalformedMembers(e.to_string()))?;
    }
    Ok(message)
}

/// Whether `view` knows member `id` as published: with client URLs (etcd's test in
/// `isMemberBootstrapped`).
pub(super) fn knows_published(view: peer_view::Reader<'_>, id: u64) -> bool {
    view.get_members().is_ok_and(|members| {
        members
            .iter()
            .any(|m| m.get_id() == id && m.get_client_urls().is_ok_and(|u| !u.is_empty()))
    })
}

/// Answers peers' cluster queries, each with the member table consensus has now. A query while
/// consensus is unreachable goes unanswered (the asker treats it as no answer).
pub(super) async fn answer_queries(state: Rc<State>, mut queries: mpsc::Receiver<MembersQuery>) {
    while let Some(query) = queries.recv().await {
        let state = state.clone();
        tokio::task::spawn_local(async move {
            let from = query.from;
            match state.view().await {
                Ok(view) => {
                    let _ = query.reply.send(view);
                }
                Err(e) => debug!("not answering a cluster query from member {from:x}: {e}"),
            }
        });
    }
}

impl State {
    /// This member's `PeerView`, encoded, from consensus's member table.
    async fn view(&self) -> Result<Vec<u8>> {
        let registrar = self
            .registrar
            .borrow()
            .clone()
            .ok_or_else(|| Error::MalformedMembers("consensus is not connected".into()))?;
        let member_id = self
            .transport
            .get()
            .map(|(_, r)| r.member_id)
            .ok_or_else(|| Error::MalformedMembers("not registered yet".into()))?;
        let reply = registrar.members_request().send().promise.await?;
        encode_view(member_id, reply.get()?.get_members()?)
    }
}

/// `PeerGateway.askMembers`: asks every other member at once, and answers with the views that
/// came back before the deadline, or as soon as every member answered or one knows
/// `published_id` as published.
pub(super) async fn ask_members(
    state: Rc<State>,
    params: peer_gateway::AskMembersParams,
    mut results: peer_gateway::AskMembersResults,
) -> Result<()> {
    let p = params.get()?;
    let timeout = Duration::from_millis(u64::from(p.get_timeout_ms()));
    let published_id = p.get_published_id();
    let deadline = tokio::time::Instant::now() + timeout;
    // The transport starts right after the registration this call follows.
    let transport = loop {
        if let Some((transport, _)) = state.transport.get() {
            break transport;
        }
        if tokio::time::Instant::now() >= deadline {
            warn!("asked for the members' views before the transport started; none to give");
            results.get().init_views(0);
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let peers = transport.peer_ids();
    info!(
        "asking {} members for their member tables (at most {timeout:?})",
        peers.len()
    );
    let mut asking: FuturesUnordered<_> = peers
        .iter()
        .map(|&id| async move { (id, transport.ask_members(id).await) })
        .collect();
    let mut views = Vec::new();
    let mut published = false;
    while !published {
        let (id, answer) = match tokio::time::timeout_at(deadline, asking.next()).await {
            Ok(Some(answered)) => answered,
            Ok(None) => break,
            Err(_) => {
                info!(
                    "{} of {} members answered within {timeout:?}",
                    views.len(),
                    peers.len()
                );
                break;
            }
        };
        match answer.and_then(|bytes| decode_view(&bytes)) {
            Ok(view) => {
                published = view
                    .get_root::<peer_view::Reader>()
                    .is_ok_and(|v| knows_published(v, published_id));
                info!("member {id:x} answered with its member table");
                views.push((id, view));
            }
            Err(e) => warn!("member {id:x} gave no usable member table: {e}"),
        }
    }
    let mut list = results.get().init_views(views.len() as u32);
    for (i, (id, view)) in views.iter().enumerate() {
        let members = view.get_root::<peer_view::Reader>()?.get_members()?;
        let mut out = list.reborrow().get(i as u32);
        // Who answered is the peer the connection authenticated, whatever the view says.
        out.set_member_id(*id);
        out.set_members(members)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members_message(
        entries: &[(u64, &str, &[&str], &[&str])],
    ) -> capnp::message::Builder<capnp::message::HeapAllocator> {
        let mut message = capnp::message::Builder::new_default();
        let mut list = message
            .init_root::<peer_view::Builder>()
            .init_members(entries.len() as u32);
        for (i, (id, name, peers, clients)) in entries.iter().enumerate() {
            let mut m = list.reborrow().get(i as u32);
            m.set_id(*id);
            m.set_name(*name);
            let mut p = m.reborrow().init_peer_urls(peers.len() as u32);
            for (j, u) in peers.iter().enumerate() {
                p.set(j as u32, *u);
            }
            let mut c = m.init_client_urls(clients.len() as u32);
            for (j, u) in clients.iter().enumerate() {
                c.set(j as u32, *u);
            }
        }
        message
    }

    #[test]
    fn views_round_trip_and_say_who_is_published() {
        let source = members_message(&[
            (1, "a", &["http://10.0.0.1:2380"], &["http://10.0.0.1:2379"]),
            (2, "", &["http://10.0.0.2:2380"], &[]),
        ]);
        let members = source
            .get_root_as_reader::<peer_view::Reader>()
            .unwrap()
            .get_members()
            .unwrap();
        let bytes = encode_view(9, members).unwrap();
        assert!(bytes.len() <= schema::limits::MEMBERS_ANSWER_BYTES);
        let message = decode_view(&bytes).unwrap();
        let view = message.get_root::<peer_view::Reader>().unwrap();
        assert_eq!(view.get_member_id(), 9);
        let got: Vec<(u64, String, usize, usize)> = view
            .get_members()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m.get_id(),
                    m.get_name().unwrap().to_string().unwrap(),
                    m.get_peer_urls().unwrap().len() as usize,
                    m.get_client_urls().unwrap().len() as usize,
                )
            })
            .collect();
        assert_eq!(got, vec![(1, "a".into(), 1, 1), (2, String::new(), 1, 0)]);
        assert!(knows_published(view, 1));
        // Known, but never published (no client URLs); and unknown.
        assert!(!knows_published(view, 2));
        assert!(!knows_published(view, 3));
    }

    #[test]
    fn malformed_views_are_errors() {
        let source = members_message(&[(1, "a", &["http://h:2380"], &["http://h:2379"])]);
        let members = source
            .get_root_as_reader::<peer_view::Reader>()
            .unwrap()
            .get_members()
            .unwrap();
        let good = encode_view(9, members).unwrap();
        let mut bad: Vec<Vec<u8>> = vec![
            Vec::new(),
            vec![0xff; 16],
            good[..good.len() - 8].to_vec(),
            [good.clone(), vec![0; 8]].concat(),
        ];
        // A segment table announcing more than the answer limit allows.
        let mut huge = good.clone();
        huge[4..8].copy_from_slice(&(1u32 << 30).to_le_bytes());
        bad.push(huge);
        for (i, bytes) in bad.iter().enumerate() {
            assert!(
                matches!(decode_view(bytes), Err(Error::MalformedMembers(_))),
                "case {i} decoded"
            );
        }
        // A name that is not valid text (no NUL terminator): caught by the walk.
        let mut message = capnp::message::Builder::new_default();
        {
            let mut list = message.init_root::<peer_view::Builder>().init_members(1);
            list.reborrow().get(0).set_name("x");
        }
        let mut words = capnp::serialize::write_message_to_words(&message);
        let last = words.iter().rposition(|b| *b == b'x').unwrap();
        words[last + 1] = b'y';
        assert!(matches!(
            decode_view(&words),
            Err(Error::MalformedMembers(_))
        ));
    }
}
