//! `consensus snapshot status FILE`: what `etcdutl snapshot status` prints of a snapshot that
//! `etcdctl snapshot save` fetched from a member of ours (see [`crate::storage::image`]).
//!
//! The hash is the image's HashKV at its revision (what `etcdctl endpoint hashkv --rev` gives
//! on a member at that revision, not etcd's CRC over bbolt pages); total keys counts every
//! stored version and tombstone; the size is the file's.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::mvcc::View;
use crate::storage::Db;
use crate::storage::image;

/// What `snapshot status` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub hash: u32,
    pub revision: i64,
    pub total_keys: u64,
    pub total_size: u64,
}

/// Reads and checks the image in `file` (unpacked into a scratch directory, removed after).
pub fn status(file: &Path) -> Result<Status> {
    let name = file.display().to_string();
    let f = File::open(file).map_err(|e| Error::io(format!("opening {name}"), e))?;
    let total_size = f
        .metadata()
        .map_err(|e| Error::io(format!("stat {name}"), e))?
        .len();
    let scratch = Scratch(
        std::env::temp_dir().join(format!("etcd-rs-snapshot-status-{}", std::process::id())),
    );
    let _ = std::fs::remove_dir_all(&scratch.0);
    image::unpack(f, &name, &scratch.0)?;
    let db = Db::open(&scratch.0)?;
    let view = View::snapshot(&db);
    let (hash, _, revision) = view
        .hash_kv_at(0)
        .map_err(|e| Error::Startup(format!("{name}: hashing its key space: {}", e.message)))?;
    let total_keys = db.version_count()?;
    Ok(Status {
        hash,
        revision,
        total_keys,
        total_size,
    })
}

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sizes as etcd prints them (go-humanize's `Bytes`: powers of 1000, one decimal below 10).
pub fn human_bytes(n: u64) -> String {
    if n < 10 {
        return format!("{n} B");
    }
    const SIZES: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let e = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let e = e.min(SIZES.len() - 1);
    let val = ((n as f64) / 1000f64.powi(e as i32) * 10.0 + 0.5).floor() / 10.0;
    if val < 10.0 {
        format!("{val:.1} {}", SIZES[e])
    } else {
        format!("{val:.0} {}", SIZES[e])
    }
}

/// The status in etcdctl's `-w` formats: `simple` (the default), `table` or `json`.
pub fn render(s: &Status, format: &str) -> std::result::Result<String, String> {
    let size = human_bytes(s.total_size);
    match format {
        "simple" => Ok(format!(
            "{:x}, {}, {}, {size}\n",
            s.hash, s.revision, s.total_keys
        )),
        "json" => Ok(format!(
            "{{\"hash\":{},\"revision\":{},\"totalKey\":{},\"totalSize\":{}}}\n",
            s.hash, s.revision, s.total_keys, s.total_size
        )),
        "table" => {
            let head = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"];
            let row = [
                format!("{:x}", s.hash),
                s.revision.to_string(),
                s.total_keys.to_string(),
                size,
            ];
            let widths: Vec<usize> = head
                .iter()
                .zip(&row)
                .map(|(h, r)| h.len().max(r.len()))
                .collect();
            let line: String = widths
                .iter()
                .map(|w| format!("+{}", "-".repeat(w + 2)))
                .collect::<String>()
                + "+\n";
            // As etcdctl's table: headings centred, values to the right.
            let heads: String = head
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("| {c:^w$} "))
                .collect::<String>()
                + "|\n";
            let values: String = row
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("| {c:>w$} "))
                .collect::<String>()
                + "|\n";
            Ok(format!("{line}{heads}{line}{values}{line}"))
        }
        other => Err(format!(
            "--write-out {other:?} is not one of simple, table, json"
        )),
    }
}

const USAGE: &str = "usage: consensus snapshot status FILE [-w simple|table|json]";

/// `consensus snapshot ...`, with the arguments after `snapshot`. Prints its own errors.
pub fn main(args: &[String]) -> std::process::ExitCode {
    use std::process::ExitCode;
    let fail = |why: String| {
        eprintln!("Error: {why}");
        ExitCode::from(1)
    };
    let Some((cmd, rest)) = args.split_first() else {
        return fail(USAGE.into());
    };
    if cmd != "status" {
        return fail(format!("unknown snapshot command {cmd:?}; {USAGE}"));
    }
    let mut file = None;
    let mut format = "simple".to_string();
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        if let Some(v) = a
            .strip_prefix("--write-out=")
            .or_else(|| a.strip_prefix("-w="))
        {
            format = v.to_string();
        } else if a == "-w" || a == "--write-out" {
            match it.next() {
                Some(v) => format = v.clone(),
                None => return fail(format!("{a} needs a format; {USAGE}")),
            }
        } else if a.starts_with('-') {
            return fail(format!("unknown flag {a}; {USAGE}"));
        } else if file.replace(a.clone()).is_some() {
            return fail(format!("one snapshot file at a time; {USAGE}"));
        }
    }
    let Some(file) = file else {
        return fail(format!("snapshot status needs a file; {USAGE}"));
    };
    match status(Path::new(&file)).map_err(|e| e.to_string()) {
        Ok(s) => match render(&s, &format) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(why) => fail(why),
        },
        Err(why) => fail(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_as_etcd_prints_them() {
        for (n, text) in [
            (0, "0 B"),
            (9, "9 B"),
            (999, "999 B"),
            (1000, "1.0 kB"),
            (20_480, "20 kB"),
            (2_097_152, "2.1 MB"),
            (1_073_741_824, "1.1 GB"),
        ] {
            assert_eq!(human_bytes(n), text, "{n}");
        }
    }

    #[test]
    fn status_renders_in_etcdctls_formats() {
        let s = Status {
            hash: 0xfe01cf57,
            revision: 10,
            total_keys: 7,
            total_size: 20_480,
        };
        assert_eq!(render(&s, "simple").unwrap(), "fe01cf57, 10, 7, 20 kB\n");
        assert_eq!(
            render(&s, "json").unwrap(),
            "{\"hash\":4261531479,\"revision\":10,\"totalKey\":7,\"totalSize\":20480}\n"
        );
        let table = render(&s, "table").unwrap();
        assert!(
            table.contains("|   HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |"),
            "{table}"
        );
        assert!(
            table.contains("| fe01cf57 |       10 |          7 |      20 kB |"),
            "{table}"
        );
        assert!(render(&s, "yaml").unwrap_err().contains("yaml"));
    }

    #[test]
    fn status_of_an_image_reads_its_revision_and_rows() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db")).unwrap();
        let mut batch = db.batch();
        batch.put_applied(3);
        batch.put_revisions(3, -1);
        for i in 0..3 {
            let key = format!("k{i}");
            batch.put_version(key.as_bytes(), i + 1, 0, b"", &[0u8; 40]);
        }
        db.write_applied(batch).unwrap();
        let mut img = image::Image::create(&db, dir.path()).unwrap();
        let file = dir.path().join("snap.db");
        let mut bytes = Vec::new();
        loop {
            let c = img.read_chunk(1 << 16).unwrap();
            if c.is_empty() {
                break;
            }
            bytes.extend(c);
        }
        std::fs::write(&file, &bytes).unwrap();
        let s = status(&file).unwrap();
        assert_eq!(
            (s.revision, s.total_keys, s.total_size),
            (3, 3, bytes.len() as u64)
        );
        let again = status(&file).unwrap();
        assert_eq!(s, again, "the hash is a function of the image");
        std::fs::write(&file, &bytes[..bytes.len() - 5]).unwrap();
        let e = status(&file).unwrap_err().to_string();
        assert!(e.contains("snap.db") && e.contains("truncated"), "{e}");
    }
}
