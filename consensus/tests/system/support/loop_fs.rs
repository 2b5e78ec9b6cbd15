//! A small ext4 filesystem on a loop device, mounted for one test: a disk that fills up.
//! Dropping it unmounts it and detaches exactly the loop device it attached.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct LoopFs {
    mountpoint: PathBuf,
    image: PathBuf,
    /// `/dev/loopN`, once attached.
    device: Option<String>,
    mounted: bool,
}

fn run(cmd: &mut Command) -> io::Result<String> {
    let out = cmd.output().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("running {cmd:?}: {e} (run as root, with e2fsprogs and mount installed)"),
        )
    })?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl LoopFs {
    /// Mounts a new `size_mib` MiB ext4 filesystem on `mountpoint` (made if missing), its image
    /// beside it in `<mountpoint>.img`.
    pub fn new(mountpoint: &Path, size_mib: u64) -> io::Result<LoopFs> {
        std::fs::create_dir_all(mountpoint)?;
        let image = mountpoint.with_extension("img");
        let mut fs = LoopFs {
            mountpoint: mountpoint.to_path_buf(),
            image: image.clone(),
            device: None,
            mounted: false,
        };
        run(Command::new("truncate")
            .arg(format!("--size={size_mib}M"))
            .arg(&image))?;
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image))?;
        let device = run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image))?;
        if !device.starts_with("/dev/loop") {
            return Err(io::Error::other(format!("losetup printed {device:?}")));
        }
        // Kept before mounting, so that a failed mount still detaches it.
        fs.device = Some(device.clone());
        run(Command::new("mount").arg(&device).arg(mountpoint))?;
        fs.mounted = true;
        Ok(fs)
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted && run(Command::new("umount").arg(&self.mountpoint)).is_err() {
            // Busy: detach it from the tree; the kernel lets the device go with its last user.
            let _ = run(Command::new("umount").arg("--lazy").arg(&self.mountpoint));
        }
        if let Some(device) = self.device.take()
            && let Err(e) = run(Command::new("losetup").arg("--detach").arg(&device))
        {
            eprintln!("LoopFs: {e}");
        }
        let _ = std::fs::remove_file(&self.image);
    }
}
