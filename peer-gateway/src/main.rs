//! The peer gateway of a member: registers with consensus on `peer.sock` and carries raft messages
//! to and from the other members' peer gateways over QUIC.
//!
//! [`consensus`] is the link to consensus (as in the client gateway); [`transport`] is QUIC
//! between the members, with [`tls`] and [`peer_url`].

mod consensus;
mod counters;
mod error;
mod peer_url;
mod tls;
mod transport;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "peer-gateway",
    about = "Ships raft messages between members over QUIC"
)]
struct Args {
    /// The consensus peer socket, `<data-dir>/peer.sock`; the raft stream's `raft.sock` is beside it.
    #[arg(long)]
    socket: PathBuf,
    /// Log filter (e.g. `info`, `debug`, `peer_gateway=debug`); defaults to RUST_LOG, then info.
    #[arg(long)]
    log_level: Option<String>,
}

fn main() -> ExitCode {
    // Stop with the supervisor (start-node.sh): if it is killed, even with SIGKILL, the kernel
    // sends SIGTERM here instead of leaving an orphan that holds the member's ports and data dir.
    schema::supervisor::fail_stop_on_panic();
    if let Err(e) = schema::supervisor::stop_with_supervisor() {
        eprintln!("peer-gateway: {e}");
        return ExitCode::from(1);
    }
    let args = Args::parse();
    init_logging(args.log_level.as_deref());

    // One thread: the member's three processes share two cores.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = tokio::task::LocalSet::new();
    match local.block_on(&runtime, consensus::run(args.socket)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: Option<&str>) {
    let filter = match level {
        Some(level) => EnvFilter::try_new(level).unwrap_or_else(|e| {
            eprintln!("invalid --log-level {level:?} ({e}); using info");
            EnvFilter::new("info")
        }),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
