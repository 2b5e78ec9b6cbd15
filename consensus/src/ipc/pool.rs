//! A fixed set of threads that run the IPC thread's long work, so that a scan of the whole key
//! space never stalls the calls behind it (Status, `/health`'s read, point reads): ranges and
//! read-only txns on [`Pools::readers`], Defragment and HashKV one at a time on
//! [`Pools::maintenance`]. RocksDB's snapshots and iterators may be used from any thread.

use std::sync::{Arc, Mutex, mpsc};

use crate::error::{Error, Result};
use crate::etcd_error::{self as ee, EtcdError};

type Job = Box<dyn FnOnce() + Send>;

/// Threads taking jobs from one queue, in order. A job waits while every thread is busy.
#[derive(Clone)]
pub(crate) struct Pool {
    name: &'static str,
    jobs: mpsc::Sender<Job>,
}

impl Pool {
    pub(crate) fn start(name: &'static str, threads: usize) -> Result<Pool> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads.max(1) {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        // The lock is only held while waiting for the next job.
                        let job = match queue.lock() {
                            Ok(q) => q.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })
                .map_err(|e| Error::io(format!("starting the {name} threads"), e))?;
        }
        Ok(Pool { name, jobs })
    }

    /// Runs `work` on one of the threads and waits for its result without blocking the caller's
    /// thread.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, EtcdError> {
        let (done, result) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = done.send(work());
            }))
            .map_err(|_| ee::internal(format!("the {} threads stopped", self.name)))?;
        result
            .await
            .map_err(|_| ee::internal(format!("a {} thread stopped", self.name)))
    }
}

/// Lowers the calling thread's CPU priority (nice 10): the member's raft and IPC threads, and
/// its gateways, share a few cores with this long work and must not wait behind it, or
/// heartbeats and `/health` are late. Best effort: a failure leaves the default priority.
pub(crate) fn lower_priority() {
    // SAFETY: gettid and setpriority take and return plain integers; on Linux, nice is per
    // thread and PRIO_PROCESS with a thread ID changes that thread only.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10) };
}

/// The IPC thread's pools.
pub(crate) struct Pools {
    /// Ranges and read-only txns that may scan many keys.
    pub readers: Pool,
    /// Defragment and HashKV: passes over the whole database, one at a time, as etcd runs them
    /// (a second request waits for the first).
    pub maintenance: Pool,
}

/// Reader threads: two, so that one long scan leaves another for the next range; the member's
/// three processes share the host's cores.
const READERS: usize = 2;

impl Pools {
    pub(crate) fn start() -> Result<Pools> {
        Ok(Pools {
            readers: Pool::start("reader", READERS)?,
            maintenance: Pool::start("maintenance", 1)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Pool;
    use std::time::{Duration, Instant};

    #[test]
    fn jobs_run_off_the_calling_thread_one_at_a_time_per_thread() {
        let pool = Pool::start("test", 1).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let caller = std::thread::current().id();
        rt.block_on(async {
            let started = Instant::now();
            let (a, b, other) = tokio::join!(
                pool.run(|| std::thread::sleep(Duration::from_millis(100))),
                pool.run(|| std::thread::sleep(Duration::from_millis(100))),
                pool.run(move || std::thread::current().id() != caller),
            );
            a.unwrap();
            b.unwrap();
            assert!(other.unwrap());
            // One thread: the second job waited for the first.
            assert!(started.elapsed() >= Duration::from_millis(200));
        });
    }

    /// What handing a read to a reader costs: one round trip of an empty job, from a
    /// current-thread runtime as the IPC thread's. Prints its figure (`--nocapture`).
    #[test]
    fn a_round_trip_costs_microseconds() {
        let pool = Pool::start("test", 2).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let rounds = 2000;
        let took = rt.block_on(async {
            let started = Instant::now();
            for _ in 0..rounds {
                pool.run(|| ()).await.unwrap();
            }
            started.elapsed()
        });
        let each = took / rounds;
        println!("pool round trip: {each:?} each over {rounds}");
        // Loose, for a loaded CI host; the figure is what counts.
        assert!(each < Duration::from_millis(5), "{each:?}");
    }
}
