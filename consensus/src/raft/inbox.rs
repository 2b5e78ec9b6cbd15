//! The raft thread's inbox: commands from the IPC thread, and the wait that also watches the raft
//! stream (`raft.sock`). A queue behind a mutex plus an eventfd, so one `poll` covers both; the
//! eventfd is written only when the raft thread is actually asleep, so a busy raft thread costs
//! senders no system call.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::command::Command;
use crate::error::{Error, Result};

struct Queue {
    commands: VecDeque<Command>,
    /// The raft thread is in (or about to enter) `poll` and must be woken through the eventfd.
    parked: bool,
}

struct Inner {
    queue: Mutex<Queue>,
    wake: EventFd,
    /// Set when the inbox is dropped: the raft thread has stopped.
    closed: AtomicBool,
}

/// The sending side, one per user (the IPC thread and its tasks); cheap to clone.
#[derive(Clone)]
pub struct Sender(Arc<Inner>);

/// The raft thread's side.
pub struct Inbox(Arc<Inner>);

/// The raft thread is gone (it stops only with the process).
#[derive(Debug)]
pub struct Stopped;

pub fn channel() -> Result<(Sender, Inbox)> {
    let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
        .map_err(|e| Error::io("creating the raft thread's eventfd", e.into()))?;
    let inner = Arc::new(Inner {
        queue: Mutex::new(Queue {
            commands: VecDeque::new(),
            parked: false,
        }),
        wake,
        closed: AtomicBool::new(false),
    });
    Ok((Sender(inner.clone()), Inbox(inner)))
}

impl Sender {
    pub fn send(&self, cmd: Command) -> std::result::Result<(), Stopped> {
        if self.0.closed.load(Ordering::Acquire) {
            return Err(Stopped);
        }
        let wake = {
            let mut q = self.0.queue.lock().map_err(|_| Stopped)?;
            q.commands.push_back(cmd);
            std::mem::replace(&mut q.parked, false)
        };
        if wake {
            // Cannot fail short of the counter overflowing, which a pending wake-up rules out.
            let _ = self.0.wake.write(1);
        }
        Ok(())
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
    }
}

impl Inbox {
    /// Moves every queued command into `out`. Returns false once no sender is left (only the
    /// senders and the inbox hold the `Arc`).
    pub fn drain(&self, out: &mut VecDeque<Command>) -> bool {
        if let Ok(mut q) = self.0.queue.lock() {
            out.append(&mut q.commands);
        }
        Arc::strong_count(&self.0) > 1
    }

    /// Sleeps until a command arrives, one of `streams` is readable (or writable, when its flag
    /// asks), or `timeout` passes; returns at once when commands are already queued. Says which
    /// streams to try: those poll reported, or all of them when it did not poll.
    pub fn wait(&self, timeout: Duration, streams: &[(BorrowedFd<'_>, bool)]) -> Woken {
        {
            let Ok(mut q) = self.0.queue.lock() else {
                return Woken::ALL;
            };
            if !q.commands.is_empty() {
                return Woken::ALL;
            }
            q.parked = true;
        }
        let mut fds = Vec::with_capacity(1 + streams.len());
        fds.push(PollFd::new(self.0.wake.as_fd(), PollFlags::POLLIN));
        for (fd, want_write) in streams {
            let mut flags = PollFlags::POLLIN;
            if *want_write {
                flags |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(*fd, flags));
        }
        let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
        // EINTR (a signal) only ends the wait early, and then every stream is worth a try.
        let polled = poll(&mut fds, timeout).is_ok();
        if let Ok(mut q) = self.0.queue.lock() {
            q.parked = false;
        }
        let fired = |fd: &PollFd<'_>| fd.revents().is_none_or(|r| !r.is_empty());
        if !polled {
            return Woken::ALL;
        }
        if fired(&fds[0]) {
            // Clear the wake-up (non-blocking: already cleared is fine).
            let _ = self.0.wake.read();
        }
        let mut woken = Woken(0);
        for (i, fd) in fds[1..].iter().enumerate() {
            if fired(fd) {
                woken.0 |= 1 << i;
            }
        }
        woken
    }
}

/// Which of the streams passed to `Inbox::wait` have something (readable, writable, hung up):
/// a bit per stream, in order. Trying only those saves a read that would block per stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Woken(u32);

impl Woken {
    pub const ALL: Woken = Woken(u32::MAX);

    pub fn stream(self, i: usize) -> bool {
        i < 32 && self.0 & (1 << i) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn cmd() -> Command {
        Command::ReadIndex {
            reply: tokio::sync::oneshot::channel().0,
        }
    }

    #[test]
    fn a_command_wakes_a_sleeping_inbox() {
        let (tx, inbox) = channel().unwrap();
        let started = Instant::now();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            tx.send(cmd()).unwrap();
            tx
        });
        inbox.wait(Duration::from_secs(10), &[]);
        assert!(started.elapsed() < Duration::from_secs(5));
        let mut got = VecDeque::new();
        assert!(inbox.drain(&mut got));
        assert!(matches!(got.pop_front(), Some(Command::ReadIndex { .. })));
        let tx = sender.join().unwrap();
        // Queued before the wait: no sleep at all.
        tx.send(cmd()).unwrap();
        let started = Instant::now();
        inbox.wait(Duration::from_secs(10), &[]);
        assert!(started.elapsed() < Duration::from_secs(1));
        inbox.drain(&mut got);
        assert_eq!(got.len(), 1);
        // The timeout alone ends a wait.
        let started = Instant::now();
        inbox.wait(Duration::from_millis(30), &[]);
        assert!(started.elapsed() >= Duration::from_millis(29));
        drop(tx);
        assert!(!inbox.drain(&mut got));
    }

    #[test]
    fn a_send_after_the_inbox_is_gone_fails() {
        let (tx, inbox) = channel().unwrap();
        drop(inbox);
        assert!(tx.send(cmd()).is_err());
    }

    #[test]
    fn a_readable_stream_wakes_the_inbox() {
        use std::io::Write;
        let (_tx, inbox) = channel().unwrap();
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (c, _d) = std::os::unix::net::UnixStream::pair().unwrap();
        a.write_all(b"x").unwrap();
        let started = Instant::now();
        let woken = inbox.wait(
            Duration::from_secs(10),
            &[(c.as_fd(), false), (b.as_fd(), false)],
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(woken.stream(1), "the readable stream is reported");
        assert!(!woken.stream(0), "the quiet stream is not");
        drop(a);
    }
}
