//! Member and cluster IDs.
//!
//! The shape is etcd's (`membership.computeMemberID` and `RaftCluster.genID`), with SHA-256 in place
//! of SHA-1 as the design asks:
//!
//! * member ID: the member's peer URLs sorted as strings and concatenated with no separator, then the
//!   cluster token; SHA-256 of those bytes; the first 8 bytes of the digest as a big-endian `u64`.
//! * cluster ID: the member IDs sorted, each written as 8 big-endian bytes, concatenated; SHA-256; the
//!   first 8 bytes of the digest as a big-endian `u64`.
//!
//! The URLs are hashed as text, so they must be the exact text of the configuration (see
//! [`crate::config::Url`], whose `Display` gives the text back unchanged).

use sha2::{Digest, Sha256};

/// The ID of a member whose peer URLs are `peer_urls`, in a cluster whose token is `token`.
///
/// The order of `peer_urls` does not matter: they are sorted first.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let mut hasher = Sha256::new();
    for url in urls {
        hasher.update(url.as_bytes());
    }
    hasher.update(token.as_bytes());
    first_u64(&hasher.finalize())
}

/// The ID of a cluster whose members have the IDs `member_ids`.
///
/// The order of `member_ids` does not matter: they are sorted first.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut hasher = Sha256::new();
    for id in ids {
        hasher.update(id.to_be_bytes());
    }
    first_u64(&hasher.finalize())
}

/// An ID as etcd prints it: lowercase hexadecimal without leading zeros (`8e9e05c52164694d`).
pub fn format_id(id: u64) -> String {
    format!("{id:x}")
}

/// The first 8 bytes of a digest as a big-endian integer.
fn first_u64(digest: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    for (dst, src) in bytes.iter_mut().zip(digest) {
        *dst = *src;
    }
    u64::from_be_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The expected values were computed independently with Python's hashlib:
    //
    // python3 -c 'import hashlib as h; m=lambda us,t: int.from_bytes(h.sha256(("".join(sorted(us))+t).encode()).digest()[:8],"big"); c=lambda ids: int.from_bytes(h.sha256(b"".join(i.to_bytes(8,"big") for i in sorted(ids))).digest()[:8],"big"); a=[m([u],"etcd-cluster") for u in ["https://10.0.52.13:2380","https://10.0.52.14:2380","https://10.0.52.6:2380"]]; s=m(["http://localhost:2380"],"etcd-cluster"); print([hex(x) for x in a], hex(c(a)), hex(s), hex(c([s])), hex(m(["https://10.0.0.2:2380","http://10.0.0.1:2380"],"tok")))'
    //
    // which prints
    // ['0x301633477b7398ac', '0x58299fb3c309cf17', '0xd1382f38b078ff01'] 0xfbf46dd0277aed0b
    // 0x487554137cca34c1 0xda59da4db15f746f 0x7499911882575018

    fn urls(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    const ETCD01: u64 = 0x3016_3347_7b73_98ac;
    const ETCD02: u64 = 0x5829_9fb3_c309_cf17;
    const ETCD03: u64 = 0xd138_2f38_b078_ff01;

    #[test]
    fn seed_members() {
        assert_eq!(
            member_id(&urls(&["https://10.0.52.13:2380"]), "etcd-cluster"),
            ETCD01
        );
        assert_eq!(
            member_id(&urls(&["https://10.0.52.14:2380"]), "etcd-cluster"),
            ETCD02
        );
        assert_eq!(
            member_id(&urls(&["https://10.0.52.6:2380"]), "etcd-cluster"),
            ETCD03
        );
    }

    #[test]
    fn seed_cluster() {
        assert_eq!(cluster_id(&[ETCD01, ETCD02, ETCD03]), 0xfbf4_6dd0_277a_ed0b);
        // Every member derives the same cluster ID whatever order it lists the members in.
        assert_eq!(cluster_id(&[ETCD03, ETCD01, ETCD02]), 0xfbf4_6dd0_277a_ed0b);
    }

    #[test]
    fn single_default_member() {
        let id = member_id(&urls(&["http://localhost:2380"]), "etcd-cluster");
        assert_eq!(id, 0x4875_5413_7cca_34c1);
        assert_eq!(cluster_id(&[id]), 0xda59_da4d_b15f_746f);
    }

    #[test]
    fn two_peer_urls_unsorted() {
        // "http://" sorts before "https://" (':' < 's'), so the given order is not the hashed one.
        let given = urls(&["https://10.0.0.2:2380", "http://10.0.0.1:2380"]);
        assert_eq!(member_id(&given, "tok"), 0x7499_9118_8257_5018);
        let sorted = urls(&["http://10.0.0.1:2380", "https://10.0.0.2:2380"]);
        assert_eq!(member_id(&sorted, "tok"), 0x7499_9118_8257_5018);
    }

    #[test]
    fn token_and_urls_matter() {
        let u = urls(&["http://localhost:2380"]);
        assert_ne!(member_id(&u, "etcd-cluster"), member_id(&u, "other"));
        assert_ne!(
            member_id(&u, "etcd-cluster"),
            member_id(&urls(&["http://localhost:2381"]), "etcd-cluster")
        );
    }

    #[test]
    fn formatting() {
        assert_eq!(format_id(ETCD01), "301633477b7398ac");
        assert_eq!(format_id(0xfbf4_6dd0_277a_ed0b), "fbf46dd0277aed0b");
        assert_eq!(format_id(0x0abc), "abc");
        assert_eq!(format_id(0), "0");
    }
}
