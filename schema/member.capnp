# The contract between the three processes of one member.
#
# consensus serves two Unix sockets in its data dir: `peer.sock` (bootstrap: PeerRegistrar) and
# `client.sock` (bootstrap: ClientRegistrar). Each gateway registers with `protocolVersion`; consensus
# refuses any other version. The gateways are restarted independently of consensus, so this file only
# ever grows: add fields and methods at the end, never renumber or retype one, never reuse an ordinal.
@0xcb9f39efa5dd9560;

const protocolVersion :UInt32 = 3;
# 1: first release. 2: raft messages travel as one-way PeerFrames on `raft.sock` instead of
#    PeerGateway.send / PeerPlane.deliver calls (those stay in this file for their ordinals only).
# 3: writes (put, deleteRange, txns that write) travel as WriteFrames on `write.sock` instead of
#    ClientPlane calls (those methods stay for their ordinals; consensus refuses writes there).

# ---------------------------------------------------------------- identity, handed out at registration

struct Member {
  id @0 :UInt64;
  name @1 :Text;             # empty until the member has published itself through raft
  peerUrls @2 :List(Text);
  clientUrls @3 :List(Text);
  isLearner @4 :Bool;
}

struct Identity {
  # Computed once by consensus on first start and persisted; no gateway ever derives an ID.
  memberId @0 :UInt64;
  name @1 :Text;
  clusterId @2 :UInt64;
  members @3 :List(Member);
}

struct TlsConfig {
  # Paths as given in etcd.conf; empty when not configured.
  certFile @0 :Text;
  keyFile @1 :Text;
  trustedCaFile @2 :Text;
  clientCertAuth @3 :Bool;
  # --peer-cert-allowed-cn / --peer-cert-allowed-hostname (etcd 3.5's comma-separated lists; at
  # most one of the two is set). Empty: any certificate of the trusted CA. Peer TLS only.
  allowedCns @4 :List(Text);
  allowedHostnames @5 :List(Text);
}

struct PeerGatewayConfig {
  listenPeerUrls @0 :List(Text);
  tls @1 :TlsConfig;
  # --max-request-bytes: bounds the size of a raft message (see schema::limits); 0 from an older
  # consensus means etcd's default.
  maxRequestBytes @2 :UInt64;
}

struct ClientGatewayConfig {
  listenClientUrls @0 :List(Text);
  tls @1 :TlsConfig;
  maxRequestBytes @2 :UInt64;
  maxTxnOps @3 :UInt32;
}

# ---------------------------------------------------------------- peer plane

struct RaftMessage {
  to @0 :UInt64;
  from @1 :UInt64;
  isSnapshot @2 :Bool;       # routed on its own QUIC stream so it never delays heartbeats and appends
  data @3 :Data;             # raft eraftpb.Message, protobuf-encoded; gateways route by `to` only
}

interface PeerRegistrar {
  register @0 (version :UInt32, gateway :PeerGateway)
      -> (identity :Identity, config :PeerGatewayConfig, plane :PeerPlane);
  # The member table as this consensus has applied it (names and client URLs once published):
  # what the peer gateway answers another member's cluster query with (etcd's `/members` on the
  # peer port). An older consensus answers "unimplemented", and the query goes unanswered.
  members @1 () -> (members :List(Member));

  # Raft snapshots. A raft message with `isSnapshot` set (a MsgSnapshot) is only a description of
  # a state-machine image; the image itself travels on a QUIC stream of its own, streamed from a
  # file here through `reader` to the receiving member's file through `writer`, in chunks, never
  # whole in memory.
  #
  # Sending: the peer gateway opens the image `message` (that RaftMessage's `data`, as consensus
  # sent it) describes and reads it to the end; an error (the image is gone, a newer one replaced
  # it) means the send failed, which the gateway reports in a `snapshotStatus` frame as for any
  # failed send. An older consensus answers "unimplemented" and sends no snapshots.
  snapshotImage @2 (message :Data) -> (error :Status, reader :SnapshotReader, totalBytes :UInt64);
  # Receiving: a snapshot stream from member `from` (as the QUIC handshake authenticated it)
  # began with `message` and announces `totalBytes` of image. With no error, the gateway writes
  # every byte of the image that follows through `writer`, in order, then calls `finish`.
  receiveSnapshot @3 (from :UInt64, message :Data, totalBytes :UInt64)
      -> (error :Status, writer :SnapshotWriter);
}

# Where a received snapshot image goes: a file of consensus's own (see
# PeerRegistrar.receiveSnapshot). Dropped without `finish`, the file is deleted.
interface SnapshotWriter {
  # The next bytes of the image, at most `schema::limits::SNAPSHOT_CHUNK_BYTES`; the gateway may
  # have two writes in flight.
  write @0 (chunk :Data) -> (error :Status);
  # Every byte written: consensus checks the image (its length and trailing SHA-256, its format,
  # that it holds the state the message describes) and installs it, atomically. No error: the
  # member has that state now (or already had it), and the sender may report success to its
  # raft; consensus then restarts itself in place on the new state, and the gateways register
  # again. An error: nothing changed, and the sender reports a failure.
  finish @1 () -> (error :Status);
}

# Served by the peer gateway, called by consensus.
interface PeerGateway {
  send @0 (messages :List(RaftMessage)) -> ();     # protocol 1 only; now PeerFrame.messages
  membersChanged @1 (members :List(Member)) -> ();
  # Asks every other member's peer gateway, over QUIC and after the same handshake as raft
  # traffic, for its consensus's member table; answers within `timeoutMs` with the views of the
  # members that answered (etcd's getClusterFromRemotePeers). It answers early once every member
  # answered, or once one knows `publishedId` as published (non-empty client URLs). Consensus calls
  # it once, at a start that bootstrapped an empty data dir, before raft takes part. An older
  # gateway answers "unimplemented", and consensus proceeds as if nobody answered.
  askMembers @2 (timeoutMs :UInt32, publishedId :UInt64) -> (views :List(PeerView));
}

# One member's view of the cluster's members, as its peer gateway answers a cluster query: on
# QUIC (one length-prefixed frame, see peer-gateway's transport) and in PeerGateway.askMembers.
struct PeerView {
  memberId @0 :UInt64;       # who answered (in askMembers: the peer the answer came from)
  members @1 :List(Member);
}

# Served by consensus, called by the peer gateway (protocol 1 only; since 2 these travel as
# PeerFrames, see below, and `register` leaves `plane` null).
interface PeerPlane {
  deliver @0 (messages :List(RaftMessage)) -> ();
  reportUnreachable @1 (memberId :UInt64) -> ();
  reportSnapshot @2 (memberId :UInt64, ok :Bool) -> ();
}

# The raft stream (protocol 2). Once registered on `peer.sock`, the peer gateway connects to
# `raft.sock` beside it, where consensus's raft thread itself reads and writes. Each direction is a
# sequence of PeerFrames in Cap'n Proto's standard stream framing, and nothing is answered: raft
# resends what is lost, and a reply per batch cost a process wake-up on every hop of a write. The
# gateway's first frame is `hello`; a newer stream replaces an older one.
struct PeerFrame {
  union {
    hello @0 :UInt32;                   # gateway -> consensus, first frame: its protocolVersion
    messages @1 :List(RaftMessage);     # both directions
    unreachable @2 :UInt64;             # gateway -> consensus: this member could not be reached
    snapshotStatus @3 :SnapshotStatus;  # gateway -> consensus: how sending a snapshot ended
    counters @4 :PeerGatewayCounters;   # gateway -> consensus: what it refused and dropped
  }
}

# What the peer gateway counted since its previous `counters` frame (increments, not totals, so
# that consensus's sums survive a gateway restart). Consensus adds them to its Metrics.
struct PeerGatewayCounters {
  certRefused @0 :UInt64;      # TLS handshakes refused: certificate outside the allowed CN/hostname
  framesRefused @1 :UInt64;    # peer streams closed for an oversized frame or an unsupported kind
  messagesDropped @2 :UInt64;  # raft messages dropped: to a peer not connected or whose queue is full
}

struct SnapshotStatus {
  memberId @0 :UInt64;
  ok @1 :Bool;
}

# ---------------------------------------------------------------- client plane
#
# Requests and responses mirror etcd's v3 API (etcdserverpb). Enum-like fields keep etcd's protobuf
# numbers as plain integers, so that a value this file does not know still reaches consensus, which
# answers it the way etcd does.

struct ResponseHeader {
  clusterId @0 :UInt64;
  memberId @1 :UInt64;
  revision @2 :Int64;
  raftTerm @3 :UInt64;
}

# A refused request: the gRPC status code and message etcd gives for it.
struct Status {
  code @0 :UInt32;
  message @1 :Text;
}

struct KeyValue {
  key @0 :Data;
  createRevision @1 :Int64;
  modRevision @2 :Int64;
  version @3 :Int64;
  value @4 :Data;
  lease @5 :Int64;
}

struct RangeRequest {
  key @0 :Data;
  rangeEnd @1 :Data;
  limit @2 :Int64;
  revision @3 :Int64;
  sortOrder @4 :Int32;       # NONE=0 ASCEND=1 DESCEND=2
  sortTarget @5 :Int32;      # KEY=0 VERSION=1 CREATE=2 MOD=3 VALUE=4
  serializable @6 :Bool;
  keysOnly @7 :Bool;
  countOnly @8 :Bool;
  minModRevision @9 :Int64;
  maxModRevision @10 :Int64;
  minCreateRevision @11 :Int64;
  maxCreateRevision @12 :Int64;
}

struct RangeResponse {
  header @0 :ResponseHeader;
  kvs @1 :List(KeyValue);
  more @2 :Bool;
  count @3 :Int64;
}

struct PutRequest {
  key @0 :Data;
  value @1 :Data;
  lease @2 :Int64;
  prevKv @3 :Bool;
  ignoreValue @4 :Bool;
  ignoreLease @5 :Bool;
}

struct PutResponse {
  header @0 :ResponseHeader;
  prevKv @1 :KeyValue;       # null when not asked for or no previous key
}

struct DeleteRangeRequest {
  key @0 :Data;
  rangeEnd @1 :Data;
  prevKv @2 :Bool;
}

struct DeleteRangeResponse {
  header @0 :ResponseHeader;
  deleted @1 :Int64;
  prevKvs @2 :List(KeyValue);
}

struct Compare {
  result @0 :Int32;          # EQUAL=0 GREATER=1 LESS=2 NOT_EQUAL=3
  target @1 :Int32;          # VERSION=0 CREATE=1 MOD=2 VALUE=3 LEASE=4
  key @2 :Data;
  # etcd's target_union: the field named by `target` is the one compared.
  version @3 :Int64;
  createRevision @4 :Int64;
  modRevision @5 :Int64;
  value @6 :Data;
  lease @7 :Int64;
  rangeEnd @8 :Data;
}

struct RequestOp {
  union {
    range @0 :RangeRequest;
    put @1 :PutRequest;
    deleteRange @2 :DeleteRangeRequest;
    txn @3 :TxnRequest;
  }
}

struct ResponseOp {
  union {
    range @0 :RangeResponse;
    put @1 :PutResponse;
    deleteRange @2 :DeleteRangeResponse;
    txn @3 :TxnResponse;
  }
}

struct TxnRequest {
  compare @0 :List(Compare);
  success @1 :List(RequestOp);
  failure @2 :List(RequestOp);
}

struct TxnResponse {
  header @0 :ResponseHeader;
  succeeded @1 :Bool;
  responses @2 :List(ResponseOp);
}

struct CompactionRequest {
  revision @0 :Int64;
  physical @1 :Bool;
}

struct CompactionResponse {
  header @0 :ResponseHeader;
}

struct MemberListResponse {
  header @0 :ResponseHeader;
  members @1 :List(Member);
}

struct DefragmentResponse {
  header @0 :ResponseHeader;
}

struct MoveLeaderResponse {
  header @0 :ResponseHeader;
}

struct HashKvResponse {
  header @0 :ResponseHeader;
  hash @1 :UInt32;
  compactRevision @2 :Int64;
}

struct StatusResponse {
  header @0 :ResponseHeader;
  version @1 :Text;
  dbSize @2 :Int64;
  leader @3 :UInt64;
  raftIndex @4 :UInt64;
  raftTerm @5 :UInt64;
  raftAppliedIndex @6 :UInt64;
  errors @7 :List(Text);
  dbSizeInUse @8 :Int64;
  isLearner @9 :Bool;
}

interface ClientRegistrar {
  register @0 (version :UInt32)
      -> (identity :Identity, config :ClientGatewayConfig, plane :ClientPlane);
}

# Served by consensus, called by the client gateway. Each result carries either `error` (set when the
# request is refused) or `response`. Streams (watch, lease keep-alive) will come as methods that take
# a sink capability, e.g. `watch @8 (sink :WatchSink) -> (stream :WatchStream)`.
interface ClientPlane {
  range @0 (request :RangeRequest) -> (error :Status, response :RangeResponse);
  put @1 (request :PutRequest) -> (error :Status, response :PutResponse);
  deleteRange @2 (request :DeleteRangeRequest) -> (error :Status, response :DeleteRangeResponse);
  txn @3 (request :TxnRequest) -> (error :Status, response :TxnResponse);
  compact @4 (request :CompactionRequest) -> (error :Status, response :CompactionResponse);
  memberList @5 () -> (error :Status, response :MemberListResponse);
  status @6 () -> (error :Status, response :StatusResponse);
  metrics @7 () -> (metrics :Metrics);
  # Rewrites this member's state machine on disk to reclaim the space of deleted and compacted
  # data (etcd's defrag; local to the member, not through raft).
  defragment @8 () -> (error :Status, response :DefragmentResponse);
  # Hands this member's leadership to `targetId` and answers once it leads (etcd's MoveLeader;
  # only the leader takes it).
  moveLeader @9 (targetId :UInt64) -> (error :Status, response :MoveLeaderResponse);
  # A hash of the key space's history up to `revision` (0: the current one), equal on members
  # that applied the same entries (etcd's HashKV; the value is ours, not etcd's).
  hashKv @10 (revision :Int64) -> (error :Status, response :HashKvResponse);
  # A point-in-time image of this member's state machine (etcd's Maintenance.Snapshot): taken
  # when called, read in chunks by the caller at its own pace, and deleted once `reader` is
  # dropped. `totalBytes` is the image's whole length, its trailing SHA-256 included.
  snapshot @11 () -> (error :Status, reader :SnapshotReader, totalBytes :UInt64,
                      header :ResponseHeader);
}

# The next bytes of a snapshot image, at most about `schema::limits::SNAPSHOT_CHUNK_BYTES` a
# call; an empty chunk once it is all read. Calls in flight at once are answered with the chunks
# in the order the calls were made.
interface SnapshotReader {
  read @0 () -> (error :Status, chunk :Data);
}

# The write stream (protocol 3). Once registered on `client.sock`, the client gateway connects to
# `write.sock` beside it, which consensus's raft thread serves itself: puts, deletes and txns that
# write go there as WriteFrames, in Cap'n Proto's standard stream framing like the raft stream, and
# their answers come back the same way, matched by the gateway's request id. A write so skips two
# hops through the IPC thread. Reads, read-only txns and everything else stay on ClientPlane. The
# gateway's first frame is `hello`; a newer stream replaces an older one, whose requests are then
# not answered.
struct WriteFrame {
  union {
    hello @0 :UInt32;            # gateway -> consensus, first frame: its protocolVersion
    request @1 :WriteRequest;    # gateway -> consensus
    reply @2 :WriteReply;        # consensus -> gateway
  }
}

struct WriteRequest {
  id @0 :UInt64;                 # chosen by the gateway, echoed in the reply
  union {
    put @1 :PutRequest;
    deleteRange @2 :DeleteRangeRequest;
    txn @3 :TxnRequest;
  }
}

struct WriteReply {
  id @0 :UInt64;
  error @1 :Status;              # set when the request was refused, and then the union is `none`
  union {
    none @2 :Void;
    put @3 :PutResponse;
    deleteRange @4 :DeleteRangeResponse;
    txn @5 :TxnResponse;
  }
}

# Counters consensus keeps since it started, for /metrics and the benchmarks.
struct Metrics {
  proposalsCommitted @0 :UInt64;   # entries applied (etcd_server_proposals_committed_total)
  proposalsFailed @1 :UInt64;      # proposals answered with an error before commit
  fsyncs @2 :UInt64;               # synced raft log writes (etcd_disk_wal_fsync_duration_seconds_count)
  fsyncNanos @3 :UInt64;           # time spent in them
  readIndexes @4 :UInt64;          # read-index requests sent to raft (each serves a batch of reads)
  linearizableReads @5 :UInt64;
  appliedIndex @6 :UInt64;
  isLeader @7 :Bool;
  leaderChanges @8 :UInt64;        # etcd_server_leader_changes_seen_total
  revision @9 :Int64;
  hasLeader @10 :Bool;             # etcd_server_has_leader
  committedIndex @11 :UInt64;      # etcd_server_proposals_committed_total (etcd: the commit index)
  dbSize @12 :Int64;               # etcd_mvcc_db_total_size_in_bytes
  # fsyncs by duration, one count per bucket (not cumulative): bucket i holds those of at most
  # 1 ms * 2^i (etcd's etcd_disk_wal_fsync_duration_seconds buckets, 1 ms to 8.192 s), and the last,
  # one more, those above. Absent from an older consensus.
  fsyncBuckets @13 :List(UInt64);
  peerMessagesRefused @14 :UInt64; # raft messages from peers dropped before raft saw them
  # From the peer gateway's `counters` frames (PeerGatewayCounters) plus consensus's own drops.
  peerCertRefused @15 :UInt64;     # peer TLS handshakes refused by the allowed CN/hostname
  peerFramesRefused @16 :UInt64;   # peer streams closed for an oversized frame or a malformed header
  peerMessagesDropped @17 :UInt64; # outbound raft messages dropped (raft resends)
  streamFramesRefused @18 :UInt64; # oversized frames on raft.sock or write.sock (stream closed)
  # Raft snapshots (etcd_network_snapshot_{send,receive}_{success,failures}, summed over peers):
  # sends as the peer gateway reported them (or their reports timed out), and receipts as
  # installed (or not needed) or refused.
  snapshotsSent @19 :UInt64;
  snapshotsSendFailed @20 :UInt64;
  snapshotsReceived @21 :UInt64;
  snapshotsReceiveFailed @22 :UInt64;
}

# ---------------------------------------------------------------- the raft log
#
# What consensus proposes: one entry's data. It is durable and crosses members of different versions,
# so it evolves under the same rules as the rest of this file.

struct RaftRequest {
  id @0 :UInt64;             # proposer-local, matches the reply to its waiter; 0 when nobody waits
  union {
    put @1 :PutRequest;
    deleteRange @2 :DeleteRangeRequest;
    txn @3 :TxnRequest;
    compaction @4 :CompactionRequest;
    publish @5 :Member;      # a member's name and client URLs, published once it has started
  }
}
