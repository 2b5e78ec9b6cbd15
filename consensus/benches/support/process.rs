//! What the per-process benchmarks share: the process under test, started with its log and
//! stopped by PID; where the workspace's binaries are; the CPU time a process used. Each crate's
//! benchmark includes this file by path (`#[path = ...] mod process;`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A process under test; stopped by PID when dropped (SIGTERM, then SIGKILL after 5 s).
pub struct Running {
    child: Child,
}

impl Running {
    /// Starts `command` with stdin closed and stdout and stderr in `log`.
    pub fn start(mut command: Command, log: &Path) -> Running {
        let file = std::fs::File::create(log).expect("log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {:?}: {e}", command.get_program()));
        Running { child }
    }

    /// A gateway (peer or client) registering on `socket`, logging warnings only.
    pub fn gateway(bin: &Path, socket: &Path, log: &Path) -> Running {
        let mut command = Command::new(bin);
        command
            .arg("--socket")
            .arg(socket)
            .arg("--log-level")
            .arg("warn");
        Running::start(command, log)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A binary of the workspace, next to this benchmark's own executable (`target/release/deps/..`
/// when run by `cargo bench`), else where cargo built it for this benchmark.
pub fn locate(name: &str, built_by_cargo: Option<&str>) -> PathBuf {
    let dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(Path::to_path_buf));
    if let Some(path) = dir.as_ref().map(|d| d.join(name))
        && path.is_file()
    {
        return path;
    }
    if let Some(path) = built_by_cargo.map(PathBuf::from)
        && path.is_file()
    {
        return path;
    }
    eprintln!(
        "{name} is not built in {}: run `cargo build --release --bins` first",
        dir.map(|d| d.display().to_string())
            .unwrap_or_else(|| "the target dir".into())
    );
    std::process::exit(1);
}

/// The last `lines` lines of a log.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// CPU time (user + system, all threads) a process has used so far, from /proc/<pid>/stat.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3; utime and stime
    // are fields 14 and 15, in clock ticks of 1/100 s (USER_HZ on Linux).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Microseconds of CPU per request between two readings (0 when unknown).
pub fn cpu_us_per(before: Option<Duration>, after: Option<Duration>, requests: u64) -> f64 {
    match (before, after) {
        (Some(b), Some(a)) if requests > 0 => {
            a.saturating_sub(b).as_secs_f64() * 1e6 / requests as f64
        }
        _ => 0.0,
    }
}
