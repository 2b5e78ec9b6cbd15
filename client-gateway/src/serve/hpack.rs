//! HPACK (RFC 7541), as much as [`authority`](super::authority) needs: a [`Decoder`] that follows
//! the client's dynamic table, and an encoder ([`encode_plain`]) that writes only literals
//! "without indexing", so what we forward never puts anything in the server's dynamic table and
//! needs no state.

use std::collections::VecDeque;
use std::sync::OnceLock;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HpackError(pub &'static str);

pub type Field = (Vec<u8>, Vec<u8>);

/// The largest dynamic table a client may ask for. The server never announces
/// SETTINGS_HEADER_TABLE_SIZE, so a well-behaved client stays at 4096; we allow more since it
/// only costs us memory, never correctness.
const MAX_TABLE_SIZE: usize = 64 * 1024;
/// Cap on one decoded header list, against memory blow-up by a hostile client.
const MAX_LIST_SIZE: usize = 1024 * 1024;

/// RFC 7541 Appendix A.
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Huffman code length of each byte value (RFC 7541 Appendix B). The code is canonical, so the
/// codes themselves follow from the lengths; EOS (30 ones) is never a valid symbol.
const HUFFMAN_LENGTHS: [u8; 256] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
];

const MAX_CODE_LEN: usize = 30;

/// Canonical decoding tables: per code length, the first code, how many codes, and where their
/// symbols start in `symbols` (sorted by length, then value).
struct Huffman {
    first: [u32; MAX_CODE_LEN + 1],
    count: [u32; MAX_CODE_LEN + 1],
    offset: [usize; MAX_CODE_LEN + 1],
    symbols: Vec<u8>,
}

fn huffman() -> &'static Huffman {
    static TABLE: OnceLock<Huffman> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut symbols: Vec<u8> = (0..=255u8).collect();
        symbols.sort_by_key(|&s| (HUFFMAN_LENGTHS[s as usize], s));
        let mut h = Huffman {
            first: [0; MAX_CODE_LEN + 1],
            count: [0; MAX_CODE_LEN + 1],
            offset: [0; MAX_CODE_LEN + 1],
            symbols,
        };
        for &len in &HUFFMAN_LENGTHS {
            h.count[len as usize] += 1;
        }
        let (mut code, mut offset) = (0u32, 0usize);
        for len in 1..=MAX_CODE_LEN {
            code <<= 1;
            h.first[len] = code;
            h.offset[len] = offset;
            code += h.count[len];
            offset += h.count[len] as usize;
        }
        h
    })
}

pub fn huffman_decode(src: &[u8]) -> Result<Vec<u8>, HpackError> {
    let h = huffman();
    let mut out = Vec::with_capacity(src.len() * 8 / 5);
    let (mut code, mut len) = (0u32, 0usize);
    // Whether every bit since the last symbol was a 1 (valid padding is a prefix of EOS).
    let mut all_ones = true;
    for &byte in src {
        for shift in (0..8).rev() {
            let bit = u32::from((byte >> shift) & 1);
            code = (code << 1) | bit;
            len += 1;
            all_ones &= bit == 1;
            if len > MAX_CODE_LEN {
                return Err(HpackError("invalid Huffman code"));
            }
            let index = code.wrapping_sub(h.first[len]);
            if code >= h.first[len] && index < h.count[len] {
                out.push(h.symbols[h.offset[len] + index as usize]);
                (code, len, all_ones) = (0, 0, true);
            }
        }
    }
    if len > 7 || !all_ones {
        return Err(HpackError("invalid Huffman padding"));
    }
    Ok(out)
}

fn decode_int(src: &[u8], pos: &mut usize, prefix_bits: u32) -> Result<usize, HpackError> {
    let mask = (1u16 << prefix_bits) as usize - 1;
    let first = *src.get(*pos).ok_or(HpackError("truncated integer"))?;
    *pos += 1;
    let mut value = usize::from(first) & mask;
    if value < mask {
        return Ok(value);
    }
    let mut shift = 0u32;
    loop {
        let b = *src.get(*pos).ok_or(HpackError("truncated integer"))?;
        *pos += 1;
        // Nothing legitimate needs more than 28 bits; refuse before overflowing.
        if shift > 21 {
            return Err(HpackError("integer too large"));
        }
        value += usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
}

fn decode_string(src: &[u8], pos: &mut usize) -> Result<Vec<u8>, HpackError> {
    let huffman = *src.get(*pos).ok_or(HpackError("truncated string"))? & 0x80 != 0;
    let len = decode_int(src, pos, 7)?;
    let end = pos
        .checked_add(len)
        .filter(|&e| e <= src.len())
        .ok_or(HpackError("truncated string"))?;
    let raw = &src[*pos..end];
    *pos = end;
    if huffman {
        huffman_decode(raw)
    } else {
        Ok(raw.to_vec())
    }
}

fn encode_int(dst: &mut Vec<u8>, first_byte_flags: u8, prefix_bits: u32, mut value: usize) {
    let mask = (1usize << prefix_bits) - 1;
    if value < mask {
        dst.push(first_byte_flags | value as u8);
        return;
    }
    dst.push(first_byte_flags | mask as u8);
    value -= mask;
    while value >= 0x80 {
        dst.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    dst.push(value as u8);
}

/// Each field as a "literal header field without indexing, new name", no Huffman.
pub fn encode_plain(fields: &[Field]) -> Vec<u8> {
    let mut dst = Vec::new();
    for (name, value) in fields {
        dst.push(0x00);
        encode_int(&mut dst, 0, 7, name.len());
        dst.extend_from_slice(name);
        encode_int(&mut dst, 0, 7, value.len());
        dst.extend_from_slice(value);
    }
    dst
}

/// Decodes one connection's header blocks in order, keeping its dynamic table.
pub struct Decoder {
    dynamic: VecDeque<Field>,
    size: usize,
    max_size: usize,
}

fn entry_size((name, value): &Field) -> usize {
    name.len() + value.len() + 32
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            dynamic: VecDeque::new(),
            size: 0,
            max_size: 4096,
        }
    }
}

impl Decoder {
    fn evict_to(&mut self, max: usize) {
        while self.size > max {
            match self.dynamic.pop_back() {
                Some(e) => self.size -= entry_size(&e),
                None => break,
            }
        }
    }

    fn insert(&mut self, field: Field) {
        let size = entry_size(&field);
        self.evict_to(self.max_size.saturating_sub(size));
        if size <= self.max_size {
            self.size += size;
            self.dynamic.push_front(field);
        }
    }

    fn lookup(&self, index: usize) -> Result<Field, HpackError> {
        match index {
            0 => Err(HpackError("index 0")),
            1..=61 => {
                let (n, v) = STATIC_TABLE[index - 1];
                Ok((n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            }
            _ => self
                .dynamic
                .get(index - 62)
                .cloned()
                .ok_or(HpackError("index beyond the dynamic table")),
        }
    }

    #[cfg(test)]
    fn table_size(&self) -> usize {
        self.size
    }

    pub fn decode(&mut self, block: &[u8]) -> Result<Vec<Field>, HpackError> {
        let mut fields = Vec::new();
        let (mut pos, mut total) = (0usize, 0usize);
        let mut size_update_allowed = true;
        while pos < block.len() {
            let b = block[pos];
            let field = if b & 0x80 != 0 {
                self.lookup(decode_int(block, &mut pos, 7)?)?
            } else if b & 0xe0 == 0x20 {
                if !size_update_allowed {
                    return Err(HpackError("table size update after a field"));
                }
                let size = decode_int(block, &mut pos, 5)?;
                if size > MAX_TABLE_SIZE {
                    return Err(HpackError("table size update too large"));
                }
                self.max_size = size;
                self.evict_to(size);
                continue;
            } else {
                // Literal: with incremental indexing (01), never indexed (0001), or without (0000).
                let (prefix, indexed) = if b & 0xc0 == 0x40 {
                    (6, true)
                } else {
                    (4, false)
                };
                let name_index = decode_int(block, &mut pos, prefix)?;
                let name = if name_index == 0 {
                    decode_string(block, &mut pos)?
                } else {
                    self.lookup(name_index)?.0
                };
                let value = decode_string(block, &mut pos)?;
                let field = (name, value);
                if indexed {
                    self.insert(field.clone());
                }
                field
            };
            size_update_allowed = false;
            total += entry_size(&field);
            if total > MAX_LIST_SIZE {
                return Err(HpackError("header list too large"));
            }
            fields.push(field);
        }
        Ok(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn f(n: &str, v: &str) -> Field {
        (n.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    #[test]
    fn huffman_decodes_rfc_examples() {
        let cases = [
            ("f1e3 c2e5 f23a 6ba0 ab90 f4ff", "www.example.com"),
            ("a8eb 1064 9cbf", "no-cache"),
            ("25a8 49e9 5ba9 7d7f", "custom-key"),
            ("25a8 49e9 5bb8 e8b4 bf", "custom-value"),
            ("6402", "302"),
            ("aec3 771a 4b", "private"),
        ];
        for (code, text) in cases {
            assert_eq!(
                huffman_decode(&hex(code)).unwrap(),
                text.as_bytes(),
                "{text}"
            );
        }
    }

    #[test]
    fn huffman_refuses_bad_padding() {
        // "0" is 00000; padding with zeros instead of ones.
        assert!(huffman_decode(&[0b0000_0000]).is_err());
        // A whole byte of padding is too much.
        assert!(huffman_decode(&[0xf1, 0xe3, 0xff]).is_err());
        // EOS (thirty 1s) is never valid.
        assert!(huffman_decode(&[0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn integers_roundtrip_and_match_rfc() {
        // C.1.2: 1337 with a 5-bit prefix.
        let mut pos = 0;
        assert_eq!(decode_int(&[0x1f, 0x9a, 0x0a], &mut pos, 5).unwrap(), 1337);
        assert_eq!(pos, 3);
        for v in [0usize, 1, 126, 127, 128, 300, 16_383, 1 << 20] {
            let mut buf = Vec::new();
            encode_int(&mut buf, 0, 7, v);
            let mut pos = 0;
            assert_eq!(decode_int(&buf, &mut pos, 7).unwrap(), v);
            assert_eq!(pos, buf.len());
        }
        let mut pos = 0;
        assert!(decode_int(&[0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], &mut pos, 7).is_err());
    }

    /// RFC 7541 C.3 (plain) and C.4 (Huffman): three requests sharing one dynamic table.
    #[test]
    fn decodes_rfc_request_sequences() {
        for blocks in [
            [
                "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
                "8286 84be 5808 6e6f 2d63 6163 6865",
                "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
            ],
            [
                "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
                "8286 84be 5886 a8eb 1064 9cbf",
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            ],
        ] {
            let mut d = Decoder::default();
            assert_eq!(
                d.decode(&hex(blocks[0])).unwrap(),
                vec![
                    f(":method", "GET"),
                    f(":scheme", "http"),
                    f(":path", "/"),
                    f(":authority", "www.example.com")
                ]
            );
            assert_eq!(d.table_size(), 57);
            assert_eq!(
                d.decode(&hex(blocks[1])).unwrap(),
                vec![
                    f(":method", "GET"),
                    f(":scheme", "http"),
                    f(":path", "/"),
                    f(":authority", "www.example.com"),
                    f("cache-control", "no-cache")
                ]
            );
            assert_eq!(d.table_size(), 110);
            assert_eq!(
                d.decode(&hex(blocks[2])).unwrap(),
                vec![
                    f(":method", "GET"),
                    f(":scheme", "https"),
                    f(":path", "/index.html"),
                    f(":authority", "www.example.com"),
                    f("custom-key", "custom-value")
                ]
            );
            assert_eq!(d.table_size(), 164);
        }
    }

    #[test]
    fn size_updates_evict_and_must_come_first() {
        let mut d = Decoder::default();
        d.decode(&hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d"))
            .unwrap();
        // Update to 0 empties the table; index 62 is then gone.
        assert_eq!(d.decode(&hex("20 82")).unwrap(), vec![f(":method", "GET")]);
        assert_eq!(d.table_size(), 0);
        assert!(d.decode(&hex("be")).is_err());
        assert!(d.decode(&hex("82 20")).is_err());
    }

    #[test]
    fn plain_encoding_decodes_back() {
        let fields = vec![
            f(":authority", "127.0.0.1:2379"),
            f(":path", "/etcdserverpb.KV/Range"),
            f("x-long", &"v".repeat(300)),
        ];
        let mut d = Decoder::default();
        assert_eq!(d.decode(&encode_plain(&fields)).unwrap(), fields);
        // Nothing was indexed.
        assert_eq!(d.table_size(), 0);
    }

    #[test]
    fn refuses_truncated_blocks() {
        let mut d = Decoder::default();
        assert!(d.decode(&hex("41 0f77 77")).is_err());
        assert!(d.decode(&hex("40")).is_err());
        assert!(d.decode(&hex("80")).is_err());
    }
}
