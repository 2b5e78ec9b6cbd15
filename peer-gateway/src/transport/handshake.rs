//! The hello the dialer sends on a new connection, and the acceptor's verdict on it.
//!
//! Hello layout (big-endian): magic (8) | wire version u32 | cluster ID u64 | sender member ID u64 |
//! receiver member ID u64 | sender incarnation u64. The incarnation is random per process start: it
//! tells the acceptor that the sender restarted, so its own connection to the sender is stale.
//! The answer is one byte, ACCEPTED, or REFUSED followed by a UTF-8 reason until the stream ends.

pub const MAGIC: [u8; 8] = *b"ETCDRSP1";
pub const WIRE_VERSION: u32 = 1;
pub const HELLO_LEN: usize = 8 + 4 + 8 * 4;
pub const ACCEPTED: u8 = 0;
pub const REFUSED: u8 = 1;
/// Longest refusal reason a dialer reads.
pub const MAX_REASON: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub version: u32,
    pub cluster_id: u64,
    pub from: u64,
    pub to: u64,
    pub incarnation: u64,
}

impl Hello {
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut out = [0u8; HELLO_LEN];
        out[..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&self.version.to_be_bytes());
        out[12..20].copy_from_slice(&self.cluster_id.to_be_bytes());
        out[20..28].copy_from_slice(&self.from.to_be_bytes());
        out[28..36].copy_from_slice(&self.to.to_be_bytes());
        out[36..44].copy_from_slice(&self.incarnation.to_be_bytes());
        out
    }

    fn decode(b: &[u8; HELLO_LEN]) -> Result<Self, Refusal> {
        if b[..8] != MAGIC {
            return Err(Refusal::BadMagic);
        }
        let u64_at = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_be_bytes(w)
        };
        let mut v = [0u8; 4];
        v.copy_from_slice(&b[8..12]);
        Ok(Self {
            version: u32::from_be_bytes(v),
            cluster_id: u64_at(12),
            from: u64_at(20),
            to: u64_at(28),
            incarnation: u64_at(36),
        })
    }
}

/// Why an acceptor refuses a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    BadMagic,
    Version {
        theirs: u32,
    },
    Cluster {
        theirs: u64,
        ours: u64,
    },
    Receiver {
        intended: u64,
        ours: u64,
    },
    UnknownSender(u64),
    /// The sender's TLS certificate names none of the hosts of the member it claims to be.
    Certificate {
        member: u64,
        hosts: String,
    },
}

impl Refusal {
    /// The reason as the acceptor logs it.
    pub fn local(&self) -> String {
        match self {
            Refusal::BadMagic => "not an etcd-rs peer connection".to_string(),
            Refusal::Version { theirs } => {
                format!("peer wire version {theirs} differs from ours {WIRE_VERSION}")
            }
            Refusal::Cluster { theirs, ours } => {
                format!("cluster ID {theirs:x} differs from ours {ours:x}")
            }
            Refusal::Receiver { intended, ours } => {
                format!("connection meant for member {intended:x} reached us, member {ours:x}")
            }
            Refusal::UnknownSender(id) => format!("member {id:x} is not in our member table"),
            Refusal::Certificate { member, hosts } => format!(
                "its certificate names none of member {member:x}'s peer URL hosts ({hosts}), \
                 so it is not that member"
            ),
        }
    }

    /// The reason as sent to the dialer, worded from neither side so it reads right in its log.
    pub fn wire(&self) -> String {
        match self {
            Refusal::BadMagic => "not an etcd-rs peer connection".to_string(),
            Refusal::Version { theirs } => {
                format!("sender's wire version {theirs} differs from receiver's {WIRE_VERSION}")
            }
            Refusal::Cluster { theirs, ours } => {
                format!("sender's cluster ID {theirs:x} differs from receiver's {ours:x}")
            }
            Refusal::Receiver { intended, ours } => {
                format!("connection meant for member {intended:x} reached member {ours:x}")
            }
            Refusal::UnknownSender(id) => {
                format!("sender member {id:x} is not in the receiver's member table")
            }
            Refusal::Certificate { member, hosts } => format!(
                "sender's certificate names none of member {member:x}'s peer URL hosts ({hosts})"
            ),
        }
    }
}

/// Checks a hello against our identity; returns it when the connection may proceed.
pub fn check(
    bytes: &[u8; HELLO_LEN],
    cluster_id: u64,
    member_id: u64,
    is_member: impl Fn(u64) -> bool,
) -> Result<Hello, Refusal> {
    let hello = Hello::decode(bytes)?;
    if hello.version != WIRE_VERSION {
        return Err(Refusal::Version {
            theirs: hello.version,
        });
    }
    if hello.cluster_id != cluster_id {
        return Err(Refusal::Cluster {
            theirs: hello.cluster_id,
            ours: cluster_id,
        });
    }
    if hello.to != member_id {
        return Err(Refusal::Receiver {
            intended: hello.to,
            ours: member_id,
        });
    }
    if hello.from == member_id || !is_member(hello.from) {
        return Err(Refusal::UnknownSender(hello.from));
    }
    Ok(hello)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            version: WIRE_VERSION,
            cluster_id: 0x1a2b,
            from: 2,
            to: 1,
            incarnation: 77,
        }
    }

    #[test]
    fn accepts_a_matching_hello() {
        let got = check(&hello().encode(), 0x1a2b, 1, |id| id == 2).unwrap();
        assert_eq!(got, hello());
    }

    #[test]
    fn refuses_mismatches() {
        let members = |id| id == 1 || id == 2;
        let other_cluster = check(&hello().encode(), 0x3c4d, 1, members).unwrap_err();
        assert_eq!(
            other_cluster,
            Refusal::Cluster {
                theirs: 0x1a2b,
                ours: 0x3c4d
            }
        );
        assert!(other_cluster.local().contains("1a2b") && other_cluster.local().contains("3c4d"));
        assert!(other_cluster.wire().contains("1a2b") && other_cluster.wire().contains("3c4d"));

        assert!(matches!(
            check(&hello().encode(), 0x1a2b, 3, members),
            Err(Refusal::Receiver {
                intended: 1,
                ours: 3
            })
        ));
        assert_eq!(
            check(&hello().encode(), 0x1a2b, 1, |id| id == 1),
            Err(Refusal::UnknownSender(2))
        );
        let selfie = Hello { from: 1, ..hello() };
        assert_eq!(
            check(&selfie.encode(), 0x1a2b, 1, members),
            Err(Refusal::UnknownSender(1))
        );
        let future = Hello {
            version: WIRE_VERSION + 1,
            ..hello()
        };
        assert!(matches!(
            check(&future.encode(), 0x1a2b, 1, members),
            Err(Refusal::Version { .. })
        ));
        let mut garbage = hello().encode();
        garbage[0] = b'X';
        assert_eq!(check(&garbage, 0x1a2b, 1, members), Err(Refusal::BadMagic));
    }
}
