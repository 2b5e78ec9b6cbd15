//! `consensus`: the raft and storage process of a member. Takes etcd's configuration (flags,
//! `ETCD_*` variables, or an etcd.conf file with `--env-file`).

use std::io::IsTerminal;
use std::process::ExitCode;

use consensus::config::Config;
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Stop with the supervisor (start-node.sh): if it is killed, even with SIGKILL, the kernel
    // sends SIGTERM here instead of leaving an orphan that holds the member's ports and data dir.
    schema::supervisor::fail_stop_on_panic();
    if let Err(e) = schema::supervisor::stop_with_supervisor() {
        eprintln!("consensus: {e}");
        return ExitCode::from(1);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("snapshot") {
        // Warnings only (what a restore leaves out), so that the answer and an error stay the
        // lines they are; RUST_LOG=info shows the progress.
        tracing_subscriber::fmt()
            .with_env_filter(
                EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("warn")),
            )
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .init();
        return consensus::snapshot_cmd::main(&args[1..]);
    }
    let config = match Config::from_process() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("consensus: {e}");
            return ExitCode::from(1);
        }
    };
    if config.print_data_dir {
        println!("{}", config.data_dir.display());
        return ExitCode::SUCCESS;
    }
    let filter = EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("{},raft=warn", config.log_level)));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    match consensus::boot::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("consensus: {e}");
            ExitCode::from(1)
        }
    }
}
