//! `etcd-bench`: etcd's `benchmark` tool in spirit. Speaks etcd's v3 gRPC API, so it measures a
//! member of ours and a real etcd the same way.
//!
//!   etcd-bench --endpoints 127.0.0.1:2379 --conns 10 --clients 100 --total 20000 \
//!       put --key-size 8 --val-size 256 --key-space 10000
//!   etcd-bench --conns 10 --clients 100 range --consistency s
//!   etcd-bench txn-put --total 1000
//!
//! Prints requests/s and latency percentiles, then one JSON line with the same figures. Exits 1
//! if any request failed, 2 on bad flags or when the endpoints cannot be reached.

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use client_gateway::loadgen::{self, Op, Spec};

#[derive(Parser, Debug)]
#[command(
    name = "etcd-bench",
    about = "Load generator for etcd's v3 gRPC API (etcd's `benchmark` in spirit)"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
    /// Comma-separated endpoints (host:port or http://host:port); connections are spread over
    /// them round-robin.
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:2379",
        value_delimiter = ','
    )]
    endpoints: Vec<String>,
    /// HTTP/2 connections.
    #[arg(long, global = true, default_value_t = 1)]
    conns: usize,
    /// Requests in flight at once (spread over the connections round-robin).
    #[arg(long, global = true, default_value_t = 1)]
    clients: usize,
    /// Requests in all.
    #[arg(long, global = true, default_value_t = 10_000)]
    total: u64,
    /// Key size in bytes.
    #[arg(long, global = true, default_value_t = 8)]
    key_size: usize,
    /// Value size in bytes (put, txn-put).
    #[arg(long, global = true, default_value_t = 8)]
    val_size: usize,
    /// Keys are drawn at random from this many (etcd's --key-space-size).
    #[arg(long, global = true, default_value_t = 1, alias = "key-space-size")]
    key_space: u64,
    /// Values of random bytes, a new one per request (incompressible), instead of `v`s (put,
    /// txn-put).
    #[arg(long, global = true)]
    random_values: bool,
    /// Worker threads of the load generator's runtime.
    #[arg(long, global = true, default_value_t = 2)]
    threads: usize,
    /// Also write every successful request to FILE, one line each in the order of the answers:
    /// the Unix time of its answer in seconds and its latency in milliseconds (to split a run by
    /// what happened meanwhile, as scripts/bench-snapshot.sh does).
    #[arg(long, global = true, value_name = "FILE")]
    samples: Option<std::path::PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Put random keys of the key space.
    Put,
    /// Range over one key: KEY if given, else a random key of the key space.
    Range {
        key: Option<String>,
        /// l: linearizable (read index), s: serializable (local).
        #[arg(long, value_enum, default_value_t = Consistency::L)]
        consistency: Consistency,
    },
    /// Txn with one put and no compares.
    TxnPut,
    /// Watch latency (not supported yet).
    WatchLatency,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Consistency {
    L,
    S,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let args_samples = args.samples.clone();
    let op = match args.command {
        Command::Put => Op::Put,
        Command::Range { key, consistency } => Op::Range {
            serializable: consistency == Consistency::S,
            key: key.map(String::into_bytes),
        },
        Command::TxnPut => Op::TxnPut,
        Command::WatchLatency => {
            eprintln!(
                "etcd-bench: watch-latency is not supported yet (the store does not serve Watch yet)"
            );
            return ExitCode::from(2);
        }
    };
    let spec = Spec {
        op,
        endpoints: args
            .endpoints
            .into_iter()
            .filter(|e| !e.trim().is_empty())
            .collect(),
        conns: args.conns,
        clients: args.clients,
        total: args.total,
        key_size: args.key_size,
        val_size: args.val_size,
        key_space: args.key_space,
        random_values: args.random_values,
    };
    if let Err(e) = spec.check() {
        eprintln!("etcd-bench: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.clamp(1, 64))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("etcd-bench: cannot start the tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(loadgen::run(&spec)) {
        Ok(report) => {
            if let Some(path) = &args_samples
                && let Err(e) = std::fs::write(path, report.samples_text())
            {
                eprintln!("etcd-bench: writing {}: {e}", path.display());
                return ExitCode::from(2);
            }
            print!("{}", report.summary());
            println!("{}", report.json());
            if report.errors > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("etcd-bench: {e}");
            ExitCode::from(2)
        }
    }
}
