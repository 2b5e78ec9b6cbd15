//! The link to consensus. It keeps the gateway registered, re-dialing with a short backoff
//! whenever consensus goes away, and runs each client request on the current registration's
//! [`Session`]: its `ClientPlane` and its write stream (`write.sock`, connected after each
//! registration; losing it counts as losing consensus).
//!
//! # Threads
//!
//! capnp-rpc is `!Send`, and tonic's handlers must be `Send`. So the handlers hold a [`Link`], a
//! `Send` handle with one method per RPC ([`Link::put`] and so on), which hands the request as a
//! job to the link's task; there the job calls the [`Session`] method of the same name. In the
//! gateway that task runs on the gRPC thread itself ([`start_local`]), so a request reaches
//! consensus without waking another thread. Only tests run it on a thread of its own (`spawn`).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tonic::Status;
use tracing::{debug, info, warn};

use crate::consensus::plane::{MemberMetrics, Session};
use crate::consensus::registration::{self, Registered, Registration};
use crate::consensus::writes;
#[cfg(test)]
use crate::error::Error;
use crate::proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, CompactionRequest, CompactionResponse, DefragmentResponse,
    DeleteRangeRequest, DeleteRangeResponse, HashKvResponse, MemberListResponse,
    MoveLeaderResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, StatusResponse,
    TxnRequest, TxnResponse,
};

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long a request waits for a registration when consensus is away: long enough to ride out a
/// consensus restart, short enough that a client fails over to another member.
pub const SESSION_WAIT: Duration = Duration::from_secs(2);
const JOB_QUEUE: usize = 1024;

type Sessions = watch::Receiver<Option<Session>>;
type Job = Box<dyn FnOnce(Sessions) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// The `Send` handle the gRPC services use to reach consensus.
#[derive(Clone)]
pub struct Link {
    jobs: mpsc::Sender<Job>,
}

fn not_registered() -> Status {
    Status::unavailable("client gateway: consensus is unreachable (not registered)")
}

/// One method per RPC, each running the [`Session`] method of the same name.
impl Link {
    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse, Status> {
        self.call(move |s| s.range(req)).await
    }

    /// `fits` is etcd's limit on the raft entry, checked once the member ID is known (see
    /// [`Session::put`]).
    pub async fn put<F>(&self, req: PutRequest, fits: F) -> Result<PutResponse, Status>
    where
        F: FnOnce(u64) -> Result<(), Status> + Send + 'static,
    {
        self.call(move |s| s.put(req, fits)).await
    }

    pub async fn delete_range<F>(
        &self,
        req: DeleteRangeRequest,
        fits: F,
    ) -> Result<DeleteRangeResponse, Status>
    where
        F: FnOnce(u64) -> Result<(), Status> + Send + 'static,
    {
        self.call(move |s| s.delete_range(req, fits)).await
    }

    pub async fn txn<F>(
        &self,
        req: TxnRequest,
        read_only: bool,
        fits: F,
    ) -> Result<TxnResponse, Status>
    where
        F: FnOnce(u64) -> Result<(), Status> + Send + 'static,
    {
        self.call(move |s| s.txn(req, read_only, fits)).await
    }

    pub async fn compact<F>(
        &self,
        req: CompactionRequest,
        fits: F,
    ) -> Result<CompactionResponse, Status>
    where
        F: FnOnce(u64) -> Result<(), Status> + Send + 'static,
    {
        self.call(move |s| s.compact(req, fits)).await
    }

    pub async fn member_list(&self) -> Result<MemberListResponse, Status> {
        self.call(Session::member_list).await
    }

    pub async fn alarm(&self, req: AlarmRequest) -> Result<AlarmResponse, Status> {
        self.call(move |s| s.alarm(req)).await
    }

    pub async fn status(&self) -> Result<StatusResponse, Status> {
        self.call(Session::status).await
    }

    pub async fn defragment(&self) -> Result<DefragmentResponse, Status> {
        self.call(Session::defragment).await
    }

    pub async fn hash_kv(&self, revision: i64) -> Result<HashKvResponse, Status> {
        self.call(move |s| s.hash_kv(revision)).await
    }

    /// Starts a snapshot whose chunks go into `sink` (see [`Session::snapshot`]).
    pub async fn snapshot(
        &self,
        sink: crate::consensus::plane::SnapshotSink,
    ) -> Result<(), Status> {
        self.call(move |s| s.snapshot(sink)).await
    }

    pub async fn move_leader(&self, target_id: u64) -> Result<MoveLeaderResponse, Status> {
        self.call(move |s| s.move_leader(target_id)).await
    }

    pub async fn metrics(&self) -> Result<MemberMetrics, Status> {
        self.call(Session::metrics).await
    }

    /// Runs `f` on the link's task with the current session and returns its answer. Waits up to
    /// [`SESSION_WAIT`] for a registration; a request is only sent once, never retried.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, Status>
    where
        F: FnOnce(Session) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, Status>> + 'static,
        T: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |sessions| Box::pin(run_job(sessions, f, reply)));
        self.jobs
            .send(job)
            .await
            .map_err(|_| Status::unavailable("client gateway: the consensus link has stopped"))?;
        answer.await.map_err(|_| not_registered())?
    }
}

async fn run_job<T, F, Fut>(
    mut sessions: Sessions,
    f: F,
    mut reply: oneshot::Sender<Result<T, Status>>,
) where
    F: FnOnce(Session) -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let work = async {
        let session =
            match tokio::time::timeout(SESSION_WAIT, sessions.wait_for(Option::is_some)).await {
                Ok(Ok(current)) => current.clone(),
                _ => None,
            };
        match session {
            Some(session) => f(session).await,
            None => Err(not_registered()),
        }
    };
    let outcome = tokio::select! {
        r = work => Some(r),
        // The client went away: dropping `work` cancels the call at consensus too.
        () = reply.closed() => None,
    };
    if let Some(r) = outcome {
        let _ = reply.send(r);
    }
}

/// Starts the link as a task of the current `LocalSet`, on the same thread as the gRPC server:
/// a request then reaches consensus without waking another thread. Every successful registration
/// (the first and each re-registration) is reported on the returned receiver.
pub fn start_local(socket: PathBuf) -> (Link, mpsc::UnboundedReceiver<Registration>) {
    let (jobs_tx, jobs_rx) = mpsc::channel(JOB_QUEUE);
    let (registered_tx, registered_rx) = mpsc::unbounded_channel();
    tokio::task::spawn_local(run(socket, jobs_rx, registered_tx));
    (Link { jobs: jobs_tx }, registered_rx)
}

/// Starts the link on a thread of its own, for tests only (the gateway uses [`start_local`]).
/// Every successful registration is reported on the returned receiver, which closes if the
/// thread ever stops.
#[cfg(test)]
pub fn spawn(socket: PathBuf) -> Result<(Link, mpsc::UnboundedReceiver<Registration>), Error> {
    let (jobs_tx, jobs_rx) = mpsc::channel(JOB_QUEUE);
    let (registered_tx, registered_rx) = mpsc::unbounded_channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Runtime {
            what: "consensus link",
            source,
        })?;
    std::thread::Builder::new()
        .name("consensus-link".into())
        .spawn(move || {
            tokio::task::LocalSet::new().block_on(&runtime, run(socket, jobs_rx, registered_tx));
        })
        .map_err(|source| Error::Runtime {
            what: "consensus link",
            source,
        })?;
    Ok((Link { jobs: jobs_tx }, registered_rx))
}

/// The link's body; must run inside a `LocalSet`. Returns once nobody listens any more.
async fn run(
    socket: PathBuf,
    mut jobs: mpsc::Receiver<Job>,
    registered: mpsc::UnboundedSender<Registration>,
) {
    let (sessions_tx, sessions_rx) = watch::channel(None);
    let dispatch = async move {
        while let Some(job) = jobs.recv().await {
            tokio::task::spawn_local(job(sessions_rx.clone()));
        }
    };
    tokio::select! {
        () = dispatch => {}
        () = stay_registered(socket, sessions_tx, registered) => {}
    }
}

async fn stay_registered(
    socket: PathBuf,
    sessions: watch::Sender<Option<Session>>,
    registered: mpsc::UnboundedSender<Registration>,
) {
    let write_socket = schema::write_socket_beside(&socket);
    let mut backoff = MIN_BACKOFF;
    // Log an outage once, not on every retry.
    let mut outage_logged = false;
    while !registered.is_closed() {
        match registration::register(&socket).await {
            Ok(r) => match serve(r, &write_socket, &sessions, &registered).await {
                Served::Lost(why) => {
                    warn!(reason = %why, "lost consensus; re-registering");
                    backoff = MIN_BACKOFF;
                    outage_logged = true;
                }
                Served::NoStream(why) if !outage_logged => {
                    warn!(reason = %why, "no write stream to consensus; re-registering");
                    outage_logged = true;
                }
                Served::NoStream(why) => {
                    debug!(reason = %why, "still no write stream to consensus")
                }
                Served::Stopped => return,
            },
            Err(e) if !outage_logged => {
                warn!(error = %e, "cannot register with consensus; retrying");
                outage_logged = true;
            }
            Err(e) => debug!(error = %e, "still cannot register with consensus"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// How one registration ended.
enum Served {
    /// It was in use until consensus, or its write stream, went away.
    Lost(String),
    /// Its write stream could not be connected, so it was never used.
    NoStream(String),
    /// Nobody listens for registrations any more.
    Stopped,
}

/// Connects the registration's write stream, then offers the session to requests until the RPC
/// connection or the stream ends. A session always has a working write stream.
async fn serve(
    r: Registered,
    write_socket: &Path,
    sessions: &watch::Sender<Option<Session>>,
    registered: &mpsc::UnboundedSender<Registration>,
) -> Served {
    let Registered {
        plane,
        registration,
        mut closed,
    } = r;
    let rpc_ended = |why: Result<String, _>| why.unwrap_or_else(|_| "connection task ended".into());
    let connected = tokio::select! {
        why = &mut closed => Err(rpc_ended(why)),
        c = writes::connect(write_socket) => c.map_err(|e| e.to_string()),
    };
    let (writes, mut stream) = match connected {
        Ok(c) => c,
        Err(why) => return Served::NoStream(why),
    };
    let id = &registration.identity;
    info!(
        member_id = %format_args!("{:x}", id.member_id),
        cluster_id = %format_args!("{:x}", id.cluster_id),
        name = %id.name,
        "registered with consensus"
    );
    sessions.send_replace(Some(Session {
        plane,
        writes,
        cluster_id: id.cluster_id,
        member_id: id.member_id,
    }));
    if registered.send(registration).is_err() {
        return Served::Stopped;
    }
    let why = tokio::select! {
        why = &mut closed => rpc_ended(why),
        why = stream.ended() => why,
    };
    sessions.send_replace(None);
    // Writes still waiting fail now rather than when consensus would have answered.
    stream.close(&why);
    Served::Lost(why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tonic::Code;

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn without_a_registration_a_request_fails_unavailable_after_the_wait() {
        let (_tx, sessions) = watch::channel(None);
        let ran = Arc::new(AtomicBool::new(false));
        let (reply, answer) = oneshot::channel::<Result<(), Status>>();
        let started = tokio::time::Instant::now();
        let flag = ran.clone();
        run_job(
            sessions,
            move |_s| async move {
                flag.store(true, Ordering::SeqCst);
                Ok(())
            },
            reply,
        )
        .await;
        let err = answer.await.unwrap().unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert!(started.elapsed() >= SESSION_WAIT);
        assert!(!ran.load(Ordering::SeqCst));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_request_whose_client_left_is_dropped_without_running() {
        let (_tx, sessions) = watch::channel(None);
        let (reply, answer) = oneshot::channel::<Result<(), Status>>();
        drop(answer);
        let started = tokio::time::Instant::now();
        run_job(sessions, |_s| async { Ok(()) }, reply).await;
        // It stopped at once instead of waiting for a registration.
        assert!(started.elapsed() < SESSION_WAIT);
    }

    #[tokio::test]
    async fn a_stopped_link_answers_unavailable() {
        let (jobs, rx) = mpsc::channel(1);
        drop(rx);
        let link = Link { jobs };
        let err = link
            .call(|_s| async { Ok::<(), Status>(()) })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
    }
}
