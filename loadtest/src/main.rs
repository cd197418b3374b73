//! flashgate-loadtest: replays N-buyer bursts, reservation flows and
//! sustained load against a running flashgate, prints latency percentiles and
//! outcome counts, and checks the sale's invariants. Exit code 0: every check
//! passed; 1: an invariant was violated; 2: the run itself failed.

mod burst;
mod carts;
mod cli;
mod client;
mod confirm;
mod flow;
mod queue;
mod raw;
mod report;
mod session;
mod sustained;
mod watch;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Burst(a) => burst::run(&cli.common, a).await,
            Command::Flow(a) => flow::run(&cli.common, a).await,
            Command::Sustained(a) => sustained::run(&cli.common, a).await,
            Command::Watch(a) => watch::run(&cli.common, a).await,
            Command::Queue(a) => queue::run(&cli.common, a).await,
            Command::Confirm(a) => confirm::run(&cli.common, a).await,
        }
    });
    match result {
        Ok(report) => {
            if cli.common.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_table());
            }
            if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
