//! The client gateway of a member: serves etcd's v3 gRPC API on the listen-client URLs and
//! forwards every request to the member's consensus process over `client.sock`.
//!
//! Its only input is `--socket`: everything else (identity, listeners, TLS, limits) comes from
//! consensus at registration.
//!
//! A request goes from a handler of [`api`] over the link to consensus ([`consensus`]); the
//! listeners it arrives on are [`serve`]'s, and [`gateway`] puts them together.

mod api;
mod consensus;
mod error;
mod gateway;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
// The generated protos live in the lib target, shared with etcd-bench and the benchmark.
use client_gateway::proto;
use tracing::error;
use tracing_subscriber::EnvFilter;

use crate::error::Error;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "etcd v3 gRPC API of one member, forwarded to its consensus process"
)]
struct Args {
    /// consensus's client.sock (in its data dir).
    #[arg(long)]
    socket: PathBuf,
    /// Log filter, e.g. `info` or `client_gateway=debug` (default: RUST_LOG, else info).
    #[arg(long)]
    log_level: Option<String>,
}

fn main() -> ExitCode {
    // Stop with the supervisor (start-node.sh): if it is killed, even with SIGKILL, the kernel
    // sends SIGTERM here instead of leaving an orphan that holds the member's ports and data dir.
    schema::supervisor::fail_stop_on_panic();
    if let Err(e) = schema::supervisor::stop_with_supervisor() {
        eprintln!("client-gateway: {e}");
        return ExitCode::from(1);
    }
    let args = Args::parse();
    if let Err(e) = init_tracing(args.log_level.as_deref()) {
        eprintln!("client-gateway: {e}");
        return ExitCode::FAILURE;
    }
    match run(args.socket) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(level: Option<&str>) -> Result<(), Error> {
    let filter = match level {
        Some(l) => EnvFilter::try_new(l).map_err(|e| Error::LogFilter {
            filter: l.to_string(),
            reason: e.to_string(),
        })?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // No colour codes in log files.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    Ok(())
}

/// One thread for everything: tonic's connections and the capnp link to consensus share a
/// current-thread runtime, so a request costs no thread wake-ups inside the gateway (a member's
/// three processes share the host's cores; each cross-thread hop is a context switch).
fn run(socket: PathBuf) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Runtime {
            what: "gRPC",
            source,
        })?;
    tokio::task::LocalSet::new().block_on(&runtime, async {
        let (link, registrations) = consensus::link::start_local(socket);
        gateway::run(link, registrations, shutdown_signal()).await
    })
}

/// SIGINT or SIGTERM. If a handler cannot be installed, that signal keeps its default action.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
