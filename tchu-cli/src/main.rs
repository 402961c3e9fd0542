//! `tchu`: publish, call, tail and manage dead letters on a tchu (or Python tchu-tchu) exchange
//! from the shell. The broker comes from the settings services use (`TCHU_BROKER_URL`, then
//! `AMQP_URL`, or `--url`; `TCHU_EXCHANGE` or `--exchange`); credentials are never printed.
//!
//! ```sh
//! tchu publish user.created '{"user_id": 1, "email": "a@b.co"}'
//! tchu call rpc.users.validate '{"email": "a@b.co"}' --timeout 5s
//! tchu tail 'user.#' --count 10
//! tchu dlq list notifications
//! ```

mod contracts;
mod outbox;
mod print;

use std::error::Error;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use futures_util::StreamExt;
use tchu::{BrokerUrl, Client, Config, Pattern, WireFormat};

/// Errors of a command; printed with their causes, credentials scrubbed.
type BoxError = Box<dyn Error + Send + Sync>;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Command-line tool for tchu: publish events, make RPC calls, watch traffic, and inspect,
/// replay or purge dead letters.
#[derive(Debug, Parser)]
#[command(name = "tchu", version)]
struct Cli {
    /// Broker URL [default: $TCHU_BROKER_URL, then $AMQP_URL, then
    /// amqp://guest:guest@127.0.0.1:5672/%2f]
    #[arg(long, global = true, value_name = "URL")]
    url: Option<String>,
    /// Topic exchange [default: $TCHU_EXCHANGE, then tchu_events]
    #[arg(long, global = true, value_name = "NAME")]
    exchange: Option<String>,
    /// Wire format of what `publish` and `call` send [default: $TCHU_FORMAT, then celery]
    #[arg(long, global = true, value_enum)]
    format: Option<Format>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    /// Celery task messages, as Python tchu-tchu sends them.
    Celery,
    /// tchu's native JSON format.
    Native,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish an event (a JSON object); prints its message id once the broker confirmed it.
    Publish {
        /// The topic (routing key), e.g. `user.created`.
        topic: String,
        /// The event, a JSON object.
        json: String,
    },
    /// Send an RPC request and print the reply (exit status 1 and the error kind on failure).
    Call {
        /// The request topic.
        topic: String,
        /// The request, a JSON object.
        json: String,
        /// How long to wait for the reply (`500ms`, `5s`, `1m`).
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Print live messages matching a pattern, in either wire format. A temporary queue is
    /// bound for the purpose; services' queues are not touched.
    Tail {
        /// The binding pattern (`#` for everything, `user.*`, `order.#`).
        pattern: String,
        /// Exit after this many messages.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// One JSON object per line instead of the readable form.
        #[arg(long)]
        json: bool,
    },
    /// Check contracts across catalog files (`my-service --catalog`): unmatched or
    /// incompatible subscriptions, conflicting schemas, RPC responders. Exit 1 on errors.
    Lint {
        /// Catalog files, or directories of them.
        #[arg(required = true, value_name = "CATALOG")]
        catalogs: Vec<std::path::PathBuf>,
        /// One JSON report instead of the readable form.
        #[arg(long)]
        json: bool,
        /// Exit 1 on warnings too.
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Breaking changes between two versions of one service's catalog. Exit 1 on breaking.
    Diff {
        /// The catalog file of the deployed version.
        old: std::path::PathBuf,
        /// The catalog file of the new version.
        new: std::path::PathBuf,
        /// One JSON report instead of the readable form.
        #[arg(long)]
        json: bool,
        /// Exit 0 even when something breaks (still reported).
        #[arg(long)]
        allow_breaking: bool,
    },
    /// Draw the fleet as a self-contained HTML page with an SVG.
    Map {
        /// Catalog files, or directories of them.
        #[arg(required = true, value_name = "CATALOG")]
        catalogs: Vec<std::path::PathBuf>,
        /// Where to write the page [default: stdout].
        #[arg(long, short, value_name = "FILE")]
        output: Option<std::path::PathBuf>,
    },
    /// Dead letters of a service (its `<service>.dlq` queue).
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// The transactional outbox on PostgreSQL: migrate, status, relay, replay.
    Outbox {
        /// PostgreSQL URL [default: $TCHU_DATABASE_URL, then $DATABASE_URL]
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
        #[command(subcommand)]
        command: outbox::OutboxCommand,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List the dead letters, numbered from 0, as they are read (nothing is removed, even if
    /// the command is interrupted).
    List {
        /// The service (its queue name).
        service: String,
        /// Skip the first N.
        #[arg(long, value_name = "N", default_value_t = 0)]
        skip: usize,
        /// List at most N.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// Show one dead letter in full: why, headers, and the decoded event.
    Show {
        /// The service (its queue name).
        service: String,
        /// The number `list` shows.
        n: usize,
    },
    /// Move dead letters back to the service queue (all, or those matching the filters); each
    /// leaves the dead-letter queue only once the service queue has confirmed its copy.
    Replay {
        /// The service (its queue name).
        service: String,
        /// Only those of this handler: its id as `list` shows it (`myshop::reserve`) or the
        /// end of it (`reserve`).
        #[arg(long, value_name = "HANDLER")]
        filter_handler: Option<String>,
        /// Only those whose topic matches this pattern.
        #[arg(long, value_name = "PATTERN")]
        filter_topic: Option<String>,
    },
    /// Delete every dead letter of the service (asks first).
    Purge {
        /// The service (its queue name).
        service: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

/// `500ms`, `5s`, `2m`, `1h`, or a number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{s}`: expected a duration such as `500ms`, `5s` or `1m`"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        other => Err(format!(
            "unknown unit `{other}`; expected `ms`, `s`, `m` or `h`"
        )),
    }
}

/// The URL the settings point at (for scrubbing its password from any output).
fn raw_url(cli: &Cli) -> Option<String> {
    cli.url
        .clone()
        .or_else(|| std::env::var("TCHU_BROKER_URL").ok())
        .or_else(|| std::env::var("AMQP_URL").ok())
}

async fn connect(cli: &Cli) -> Result<Client, BoxError> {
    let mut config = Config::from_env()?;
    if let Some(url) = &cli.url {
        config.broker = BrokerUrl::parse(url)?;
    }
    if let Some(exchange) = &cli.exchange {
        config.exchange.clone_from(exchange);
    }
    if let Some(format) = cli.format {
        config.format = match format {
            Format::Celery => WireFormat::Celery,
            Format::Native => WireFormat::Native,
        };
    }
    // The connection's name in the broker's management UI.
    config.service = Some("tchu-cli".to_owned());
    let broker = config.broker.to_string();
    match tokio::time::timeout(CONNECT_TIMEOUT, Client::connect(config)).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(print::context(format!("cannot connect to {broker}"), e)),
        Err(_) => {
            Err(format!("cannot connect to {broker}: no answer within {CONNECT_TIMEOUT:?}").into())
        }
    }
}

fn parse_json(json: &str) -> Result<serde_json::Value, BoxError> {
    serde_json::from_str(json).map_err(|e| format!("invalid JSON argument: {e}").into())
}

async fn run(cli: &Cli) -> Result<ExitCode, BoxError> {
    if let Some(code) = contracts::command(&cli.command)? {
        return Ok(code); // lint, diff, map: files only, no broker.
    }
    // Outbox commands need the database (and the broker only to relay): outbox.rs.
    if let Command::Outbox {
        database_url,
        command,
    } = &cli.command
    {
        return outbox::run(cli, database_url.as_deref(), command).await;
    }
    let client = connect(cli).await?;
    let code = command(cli, &client).await;
    // Closed on every path: a connection still open when the runtime shuts down makes lapin's
    // I/O thread panic at exit.
    client.close().await;
    code
}

async fn command(cli: &Cli, client: &Client) -> Result<ExitCode, BoxError> {
    let code = match &cli.command {
        Command::Publish { topic, json } => {
            let id = client.publish(topic, &parse_json(json)?).await?;
            println!("{id}");
            ExitCode::SUCCESS
        }
        Command::Call {
            topic,
            json,
            timeout,
        } => match client.call(topic, &parse_json(json)?, Some(*timeout)).await {
            Ok(reply) => {
                println!("{}", serde_json::to_string_pretty(&reply)?);
                ExitCode::SUCCESS
            }
            Err(e) => {
                print::call_error(&e);
                ExitCode::FAILURE
            }
        },
        Command::Tail {
            pattern,
            count,
            json,
        } => tail(client, pattern, *count, *json).await?,
        Command::Dlq { command } => dlq(client, command).await?,
        Command::Outbox { .. } => ExitCode::SUCCESS, // handled in `run`
        Command::Lint { .. } | Command::Diff { .. } | Command::Map { .. } => ExitCode::SUCCESS,
    };
    Ok(code)
}

async fn tail(
    client: &Client,
    pattern: &str,
    count: Option<u64>,
    json: bool,
) -> Result<ExitCode, BoxError> {
    let pattern = Pattern::new(pattern).map_err(|e| format!("pattern `{pattern}`: {e}"))?;
    let stream = client.tail(&pattern).await?;
    let mut stream = std::pin::pin!(stream);
    eprintln!(
        "listening on exchange `{}` for `{pattern}` (Ctrl-C to stop)",
        client.config().exchange
    );
    let mut seen = 0u64;
    while count.is_none_or(|n| seen < n) {
        let next = tokio::select! {
            next = stream.next() => next,
            _ = tokio::signal::ctrl_c() => break,
        };
        let Some(item) = next else {
            return Err("the broker connection closed".into());
        };
        let event = item?;
        if json {
            println!("{}", print::tailed_json(&event));
        } else {
            println!("{}", print::tailed(&event));
        }
        seen += 1;
    }
    Ok(ExitCode::SUCCESS)
}

async fn dlq(client: &Client, command: &DlqCommand) -> Result<ExitCode, BoxError> {
    match command {
        DlqCommand::List {
            service,
            skip,
            limit,
        } => dlq_list(client, service, *skip, *limit).await?,
        DlqCommand::Show { service, n } => {
            let letters = client.dead_letters_page(service, *n, 1).await?;
            let Some(letter) = letters.first() else {
                let len = client.queue_len(&format!("{service}.dlq")).await?;
                return Err(format!("no dead letter {n} in `{service}.dlq` (it has {len})").into());
            };
            print!("{}", print::dead_letter(letter));
        }
        DlqCommand::Replay {
            service,
            filter_handler,
            filter_topic,
        } => {
            let topic = filter_topic
                .as_deref()
                .map(Pattern::new)
                .transpose()
                .map_err(|e| format!("--filter-topic: {e}"))?;
            if let Some(h) = filter_handler {
                check_handler_filter(client, service, h).await?;
            }
            let n = client
                .replay_dead_letters(service, |dl| {
                    filter_handler
                        .as_ref()
                        .is_none_or(|h| dl.handler_matches(h))
                        && topic
                            .as_ref()
                            .is_none_or(|p| p.matches(&dl.original_routing_key))
                })
                .await?;
            println!("replayed {n} dead letter(s) to `{service}`");
        }
        DlqCommand::Purge { service, yes } => {
            let dlq = format!("{service}.dlq");
            if !yes {
                let len = client.queue_len(&dlq).await?;
                if !confirm(&format!("delete the {len} dead letter(s) in `{dlq}`?"))? {
                    eprintln!("nothing purged (answer `y`, or pass --yes)");
                    return Ok(ExitCode::FAILURE);
                }
            }
            let n = client.purge_dead_letters(service).await?;
            println!("purged {n} dead letter(s) from `{dlq}`");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the table row by row as the letters are read: one letter in memory at a time.
async fn dlq_list(
    client: &Client,
    service: &str,
    skip: usize,
    limit: Option<usize>,
) -> Result<(), BoxError> {
    use std::io::Write as _;
    let mut browser = client.browse_dead_letters(service).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let listed = async {
        out.write_all(print::dead_letter_header().as_bytes())?;
        let mut i = 0usize;
        let mut shown = 0usize;
        while limit.is_none_or(|l| shown < l) {
            let Some(dl) = browser.next().await? else {
                break;
            };
            if i >= skip {
                out.write_all(print::dead_letter_row(i, &dl).as_bytes())?;
                shown += 1;
            }
            i += 1;
        }
        out.flush()?;
        Ok::<_, BoxError>(shown)
    }
    .await;
    browser.close().await;
    let shown = listed?;
    eprintln!("{shown} dead letter(s) in `{service}.dlq`");
    Ok(())
}

/// Refuses a handler filter that matches no dead letter, listing the handler ids there are.
async fn check_handler_filter(
    client: &Client,
    service: &str,
    filter: &str,
) -> Result<(), BoxError> {
    let handlers = client.dead_letter_handlers(service).await?;
    if handlers
        .keys()
        .any(|id| tchu::DeadLetter::handler_id_matches(id, filter))
    {
        return Ok(());
    }
    let known = if handlers.is_empty() {
        "none".to_owned()
    } else {
        handlers
            .iter()
            .map(|(id, n)| format!("{id} ({n})"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(format!(
        "--filter-handler `{filter}` matches no dead letter in `{service}.dlq`; handlers with \
         dead letters there: {known}"
    )
    .into())
}

/// Asks on stderr and reads the answer from stdin; anything but `y`/`yes` (or end of input)
/// is a no.
fn confirm(question: &str) -> Result<bool, BoxError> {
    use std::io::Write as _;
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let secret = raw_url(&cli);
    match run(&cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!(
                "{}",
                print::scrub(&print::error_chain(&*e), secret.as_deref())
            );
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
