//! `tchu outbox ...`: the transactional outbox's tables, state, relay and replay
//! (PostgreSQL from `--database-url`, `TCHU_DATABASE_URL` or `DATABASE_URL`).

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use tchu::outbox::{self, Relay, RelayConfig};
use tchu::sqlx::postgres::PgPoolOptions;

use crate::{BoxError, Cli};

#[derive(Debug, Subcommand)]
pub(crate) enum OutboxCommand {
    /// Create or upgrade tchu's tables (outbox, leases, relays, inbox); safe to run again.
    Migrate,
    /// Pending rows, age of the oldest, failing rows, retained rows and live relays.
    Status,
    /// Run a relay: publish committed outbox rows until Ctrl-C / SIGTERM (or, with `--once`,
    /// until none is left).
    Relay {
        /// Drain what is pending, then exit.
        #[arg(long)]
        once: bool,
    },
    /// Publish again the rows published within the last DURATION (kept for the retention,
    /// 1 h by default), with their original message ids.
    Replay {
        /// How far back (`30m`, `2h`, `90s`).
        #[arg(long, value_parser = crate::parse_duration)]
        since: Duration,
        /// Only this topic.
        #[arg(long)]
        topic: Option<String>,
    },
}

/// `--database-url`, `TCHU_DATABASE_URL` or `DATABASE_URL`.
pub(crate) fn database_url(arg: Option<&str>) -> Result<String, BoxError> {
    arg.map(str::to_owned)
        .or_else(|| std::env::var("TCHU_DATABASE_URL").ok())
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .ok_or_else(|| {
            "no database: pass --database-url or set TCHU_DATABASE_URL (or DATABASE_URL), \
             e.g. postgres://user@127.0.0.1/app"
                .into()
        })
}

pub(crate) async fn run(
    cli: &Cli,
    database: Option<&str>,
    command: &OutboxCommand,
) -> Result<ExitCode, BoxError> {
    let url = database_url(database)?;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&url)
        .await
        .map_err(|e| format!("cannot connect to the database: {e}"))?;
    match command {
        OutboxCommand::Migrate => {
            let applied = outbox::migrate(&pool).await?;
            if applied.is_empty() {
                println!(
                    "tchu schema up to date (version {})",
                    outbox::schema::latest_version()
                );
            } else {
                println!("applied tchu schema version(s) {applied:?}");
            }
        }
        OutboxCommand::Status => {
            let s = outbox::status(&pool).await?;
            let approx = if s.pending_exact { "" } else { "at most " };
            println!("pending:     {approx}{}", s.pending);
            match s.oldest_age {
                Some(a) => println!("oldest:      {:.3} s", a.as_secs_f64()),
                None => println!("oldest:      -"),
            }
            println!("failing:     {}", s.failing);
            if let Some(e) = &s.last_error {
                println!("last error:  {e}");
            }
            println!("retained:    {} (published, kept for replay)", s.retained);
            println!("relays:      {}", s.relays.len());
            for (id, slots) in &s.relays {
                println!("  {id}: {slots} slot(s)");
            }
            println!("schema:      version {}", s.schema_version);
        }
        OutboxCommand::Relay { once } => {
            outbox::migrate(&pool).await?;
            let client = crate::connect(cli).await?;
            let relay =
                Relay::new(pool.clone(), client.clone()).with_config(RelayConfig::from_env()?)?;
            eprintln!(
                "outbox relay `{}` publishing to exchange `{}`",
                relay.config().relay_id,
                client.config().exchange
            );
            if *once {
                let n = relay.drain(usize::MAX).await?;
                println!("published {n} row(s)");
            } else {
                relay.run(shutdown()).await?;
            }
            client.close().await;
        }
        OutboxCommand::Replay { since, topic } => {
            let n = outbox::replay(&pool, *since, topic.as_deref()).await?;
            println!("{n} row(s) marked for publishing again");
        }
    }
    pool.close().await;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
