//! A member's disk of its own, for the tests that need one: a small ext4 loop filesystem (it
//! fills up) under the lossy FUSE layer (it loses what was not fsynced when the power fails).
//! The member's data dir is the FUSE mount; the filler that takes the disk's last blocks lives
//! beside the backing dir, outside it.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::support::loop_fs::LoopFs;
use crate::support::lossy_fs::{Keep, LossyFs, Report};

/// How big each member's disk is, unless `NEMESIS_DISK_MIB` says otherwise. The raft log is
/// compacted, but the key space's history is kept (nothing compacts it), so a very long run may
/// need more.
pub const DEFAULT_MIB: u64 = 1024;

pub struct Disk {
    // Fields drop in order: the FUSE layer is unmounted before the loop filesystem under it.
    lossy: LossyFs,
    disk: LoopFs,
    filler: PathBuf,
}

impl Disk {
    /// A `size_mib` MiB disk whose FUSE layer is mounted on `data_dir` (made here).
    pub fn new(data_dir: &Path, size_mib: u64) -> io::Result<Disk> {
        let disk = LoopFs::new(&data_dir.with_extension("disk"), size_mib)?;
        let backing = disk.mountpoint().join("backing");
        fs::create_dir_all(&backing)?;
        fs::create_dir_all(data_dir)?;
        let lossy = LossyFs::mount(&backing, data_dir)?;
        let filler = disk.mountpoint().join("filler");
        Ok(Disk {
            lossy,
            disk,
            filler,
        })
    }

    /// Rolls back what the member's processes (all killed with -9 and gone) did not fsync.
    pub fn power_loss(&self, keep: Keep) -> io::Result<Report> {
        self.lossy.power_loss(keep)
    }

    /// From now on fsyncs wait (until [`Disk::release_syncs`], then fail with EIO): the power
    /// fails in the middle of them.
    pub fn hold_syncs(&self) {
        self.lossy.hold_syncs();
    }

    pub fn held_syncs(&self) -> usize {
        self.lossy.held_syncs()
    }

    pub fn release_syncs(&self) {
        self.lossy.release_syncs();
    }

    /// Takes every free block of the disk; returns how many bytes that took.
    pub fn fill(&self) -> io::Result<u64> {
        let free = statvfs(self.disk.mountpoint())?;
        let f = File::create(&self.filler)?;
        // The bulk at once (ext4 needs a little of it for the extent tree), the rest block by
        // block until ENOSPC. Root may use the reserved blocks too, and the member runs as root.
        let mut taken = 0;
        let mut want = free.saturating_sub(8 << 20);
        while want >= 1 << 20 {
            match nix::fcntl::posix_fallocate(&f, taken as i64, want as i64) {
                Ok(()) => {
                    taken += want;
                    break;
                }
                Err(nix::errno::Errno::ENOSPC) => want /= 2,
                Err(e) => return Err(e.into()),
            }
        }
        let block = [0xAAu8; 4096];
        loop {
            match f.write_all_at(&block, taken) {
                Ok(()) => taken += block.len() as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(e),
            }
            if taken > free + (64 << 20) {
                return Err(io::Error::other(format!(
                    "{} does not fill up: {taken} bytes written with {free} free",
                    self.disk.mountpoint().display()
                )));
            }
        }
        // What did not fit may sit in the page cache; a sync makes the disk refuse it now.
        let _ = f.sync_all();
        Ok(taken)
    }

    /// Gives the filler's blocks back.
    pub fn free(&self) -> io::Result<()> {
        match fs::remove_file(&self.filler) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Bytes free on the filesystem of `path` (for root, reserved blocks included).
fn statvfs(path: &Path) -> io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(path)?;
    Ok(st.blocks_free() * st.fragment_size())
}
