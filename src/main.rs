//! The `flashgate` binary: a thin CLI over the library.

use clap::{Parser, Subcommand};

use flashgate::config::Settings;
use flashgate::startup::{self, Application, Options};

/// jemalloc, not glibc's malloc: a request makes about a hundred small
/// allocations, and glibc spent a fifth of flashgate's CPU on them (perf,
/// sustained sold-out load). jemalloc measured 16-21 % less CPU per request
/// on the same load, with peak RSS under a 10,000-connection burst within a
/// few MiB of glibc's (mimalloc was as fast but added ~100 MiB there).
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "flashgate",
    version,
    about = "Flash-sale gatekeeper: atomic reservations in Redis, durable orders in Postgres"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API (plus the sweeper and the write-behind worker).
    Serve {
        /// Run the API alone (another process runs `flashgate worker`).
        #[arg(long)]
        no_worker: bool,
        /// Allow missing or short secrets for a local trial (never in production).
        #[arg(long)]
        dev: bool,
    },
    /// Run only the write-behind worker.
    Worker,
    /// Apply the Postgres migrations and exit.
    Migrate,
    /// Compare Redis with Postgres for every sale and print the drift
    /// (exit code 1 when drift remains, 2 on an incident: an invariant broken).
    Reconcile {
        /// Repair Redis from Postgres (and Postgres' totals from its orders).
        #[arg(long)]
        fix: bool,
        /// Only this sale.
        #[arg(long)]
        sale: Option<String>,
        /// A confirm this many seconds in a sale's stream but not yet in
        /// Postgres is drift (the write-behind is behind or stalled), not lag.
        #[arg(long, default_value_t = 60)]
        max_lag_secs: u64,
    },
    /// Mint a buyer token (HS256, signed with FLASHGATE_JWT_SECRET).
    Token {
        /// The buyer's user id (`sub`).
        #[arg(long)]
        sub: String,
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
    /// Print a Lua script as Redis runs it (e.g. for redis-benchmark).
    Script { name: String },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    flashgate::telemetry::init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(cli.command))
}

async fn run(command: Command) -> anyhow::Result<()> {
    let mut settings = Settings::from_env()?;
    match command {
        Command::Serve { no_worker, dev } => {
            if dev {
                settings.dev_mode = true;
            }
            if settings.dev_mode {
                tracing::warn!(
                    "DEV MODE: short secrets are accepted. Never run like this in production."
                );
            }
            let app = Application::build(
                settings,
                Options {
                    run_worker: !no_worker,
                    run_sweeper: true,
                },
            )
            .await?;
            app.run_until_stopped().await?;
        }
        Command::Worker => {
            let (gate, store) = startup::connect(&settings).await?;
            store.migrate().await?;
            let worker = startup::worker(&settings, &gate, &store).await?;
            let shutdown = tokio_util::sync::CancellationToken::new();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                wait_for_signal().await;
                stop.cancel();
            });
            worker.run(shutdown).await;
        }
        Command::Migrate => {
            let (_, store) = startup::connect(&settings).await?;
            store.migrate().await?;
            println!("migrations applied");
        }
        Command::Reconcile {
            fix,
            sale,
            max_lag_secs,
        } => {
            let only = sale
                .as_deref()
                .map(flashgate::ids::SaleId::parse)
                .transpose()?;
            let service = startup::service(&settings).await?;
            let opts = flashgate::reconcile::Options {
                fix,
                max_lag: std::time::Duration::from_secs(max_lag_secs),
            };
            let report = flashgate::reconcile::reconcile(&service, only.as_ref(), &opts).await?;
            for i in &report.incidents {
                println!("INCIDENT {i}");
            }
            for d in &report.drift {
                println!("drift    {d}");
            }
            for s in &report.missing {
                let done = if report.restored.contains(s) {
                    " (rebuilt from Postgres)"
                } else {
                    " (rebuilt on first use; --fix to do it now)"
                };
                println!("missing  {s}: no state in Redis{done}");
            }
            for s in &report.busy {
                println!("busy     {s}: kept changing while repairing; run again");
            }
            let left = report.unresolved();
            println!(
                "{} sale(s) checked, {} drift, {} unresolved, {} incident(s)",
                report.sales,
                report.drift.len() + report.missing.len(),
                left,
                report.incidents.len()
            );
            if !report.incidents.is_empty() {
                eprintln!("INCIDENT: an invariant is broken (oversold, or a buyer over the cap); nothing that would keep it broken was written. Investigate before the sale goes on.");
                std::process::exit(2);
            }
            if left > 0 {
                std::process::exit(1);
            }
        }
        Command::Token { sub, ttl_secs } => {
            if settings.jwt_secret.is_empty() {
                anyhow::bail!("FLASHGATE_JWT_SECRET is not set");
            }
            println!(
                "{}",
                flashgate::auth::mint(settings.jwt_secret.expose(), &sub, ttl_secs)?
            );
        }
        Command::Script { name } => match flashgate::gate::scripts::source(&name) {
            Some(src) => print!("{src}"),
            None => anyhow::bail!("no script named {name}"),
        },
    }
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
