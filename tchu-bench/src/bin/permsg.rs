//! Cost per message, without a broker: instructions (under callgrind) and allocations (a
//! counting global allocator) of one case run `N` times.
//!
//! ```text
//! permsg CASE N        runs CASE N times after a warm-up; prints allocations per message
//! permsg list          the cases
//! ```
//! Instructions per message come from two callgrind runs, `N` and `2N`: the difference divided
//! by `N` (set-up, warm-up and exit cancel out). `.ci/permsg.sh` does that and compares the
//! figures with `benchmarks/permsg-baseline.txt`.
//!
//! Everything runs on one current-thread tokio runtime with the in-memory broker, so a run is
//! deterministic. Nothing listens: no tracing subscriber, no metrics recorder (the production
//! default).
#![expect(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool: its output is the report"
)]

use std::alloc::System;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tchu::{
    App, CeleryEncoding, Client, Config, MemoryBroker, RpcError, Running, State, WireFormat,
};
use tokio::sync::Notify;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// A small order event, about 100 bytes of JSON.
#[tchu::event(topic = "bench.order.placed")]
#[derive(Debug, Clone)]
pub struct OrderPlaced {
    /// Sequence number.
    pub seq: u64,
    /// The customer.
    pub customer: String,
    /// Amount in cents.
    pub amount_cents: u64,
    /// Currency code.
    pub currency: String,
    /// Whether it is paid.
    pub paid: bool,
}

/// An RPC request answered with [`Echo`].
#[tchu::event(topic = "bench.rpc.echo", response = Echo)]
#[derive(Debug, Clone)]
pub struct EchoRequest {
    /// Sequence number.
    pub seq: u64,
    /// Some text.
    pub text: String,
}

/// The reply to [`EchoRequest`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Echo {
    /// The request's sequence number.
    pub seq: u64,
}

/// The handlers, one module each so that a case picks one with `App::only_module`.
mod typed {
    use super::*;

    #[tchu::subscribe(OrderPlaced)]
    async fn on_order(event: OrderPlaced, seen: State<Arc<Seen>>) -> Result<(), RpcError> {
        std::hint::black_box(event.seq);
        seen.hit();
        Ok(())
    }
}

mod value {
    use super::*;

    #[tchu::subscribe(OrderPlaced)]
    async fn on_order(event: serde_json::Value, seen: State<Arc<Seen>>) -> Result<(), RpcError> {
        std::hint::black_box(event.get("seq"));
        seen.hit();
        Ok(())
    }
}

mod rpc {
    use super::*;

    #[tchu::subscribe(EchoRequest)]
    async fn echo(request: EchoRequest) -> Result<Echo, RpcError> {
        Ok(Echo { seq: request.seq })
    }
}

fn order(seq: u64) -> OrderPlaced {
    OrderPlaced {
        seq,
        customer: "customer-0042@example.com".to_owned(),
        amount_cents: 129_900,
        currency: "EUR".to_owned(),
        paid: true,
    }
}

const WARM_UP: u64 = 64;

/// The wire format a case sends in: a [`WireFormat`] and, for Celery, its [`CeleryEncoding`]
/// (the default `Lean` unless the case name says `full`).
#[derive(Debug, Clone, Copy)]
struct Format(WireFormat, CeleryEncoding);

const CELERY: Format = Format(WireFormat::Celery, CeleryEncoding::Lean);
const CELERY_FULL: Format = Format(WireFormat::Celery, CeleryEncoding::Full);
const NATIVE: Format = Format(WireFormat::Native, CeleryEncoding::Lean);

/// What a case measures.
#[derive(Debug, Clone, Copy)]
enum Case {
    /// `serde_json::to_vec` of a typed event and `wire::encode_with` to a `Message` in memory.
    Encode(Format),
    /// `Client::publish_event` on the in-memory broker, nothing bound: the client's whole
    /// publish path without the AMQP conversion.
    Publish(Format),
    /// Publish and consume: `Client::publish_event`, then the service's consumer, decode,
    /// dispatch to one handler, its outcome and the ack. Minus `Publish`, this is the
    /// consuming side.
    Consume(Format, Handler),
    /// One `Client::call_event` round trip: caller, responder and reply, both sides.
    Rpc(Format),
}

/// The kind of handler a consume case runs.
#[derive(Debug, Clone, Copy)]
enum Handler {
    /// Takes the typed event (`extract_event::<OrderPlaced>`).
    Typed,
    /// Reads the `serde_json::Value`.
    Value,
}

const CASES: [(&str, Case); 12] = [
    ("encode-celery", Case::Encode(CELERY)),
    ("encode-celery-full", Case::Encode(CELERY_FULL)),
    ("encode-native", Case::Encode(NATIVE)),
    ("publish-celery", Case::Publish(CELERY)),
    ("publish-native", Case::Publish(NATIVE)),
    ("e2e-celery-typed", Case::Consume(CELERY, Handler::Typed)),
    ("e2e-celery-value", Case::Consume(CELERY, Handler::Value)),
    // Typed handler, like e2e-celery-typed (the name fits permsg.sh's column).
    (
        "e2e-celery-full",
        Case::Consume(CELERY_FULL, Handler::Typed),
    ),
    ("e2e-native-typed", Case::Consume(NATIVE, Handler::Typed)),
    ("e2e-native-value", Case::Consume(NATIVE, Handler::Value)),
    ("rpc-celery", Case::Rpc(CELERY)),
    ("rpc-native", Case::Rpc(NATIVE)),
];

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn config(Format(format, celery): Format) -> Config {
    let mut c = Config::memory();
    c.format = format;
    c.celery_encoding = celery;
    c.exchange = "permsg".to_owned();
    c.call_timeout = Duration::from_secs(30);
    c
}

/// Counts handled events and wakes the driver at a target.
#[derive(Debug, Default)]
struct Seen {
    n: AtomicU64,
    target: AtomicU64,
    done: Notify,
}

impl Seen {
    fn hit(&self) {
        let n = self.n.fetch_add(1, Ordering::Relaxed) + 1;
        if n == self.target.load(Ordering::Relaxed) {
            self.done.notify_one();
        }
    }

    async fn wait_for(&self, target: u64) {
        self.target.store(target, Ordering::Relaxed);
        if self.n.load(Ordering::Relaxed) >= target {
            return;
        }
        self.done.notified().await;
    }
}

async fn service(broker: &MemoryBroker, format: Format, h: Handler) -> Res<(Running, Arc<Seen>)> {
    let seen = Arc::new(Seen::default());
    let module = match h {
        Handler::Typed => concat!(module_path!(), "::typed"),
        Handler::Value => concat!(module_path!(), "::value"),
    };
    let app = App::new(config(format))
        .broker(broker)
        .service("permsg.svc")
        .only_module(module)
        .state(Arc::clone(&seen));
    Ok((app.start().await?, seen))
}

/// Runs `n` messages of `case` (after a warm-up); returns the allocation counter's change over
/// the measured part.
async fn run(case: Case, n: u64) -> Res<stats_alloc::Stats> {
    let broker = MemoryBroker::new();
    match case {
        Case::Encode(Format(format, celery)) => {
            let ev = order(1);
            let one = |i: u64| {
                let json = serde_json::to_vec(&ev).unwrap_or_default();
                let msg = tchu_runtime::wire::encode_with(
                    format,
                    celery,
                    <OrderPlaced as tchu::Event>::TOPIC,
                    &json,
                    "7b1a2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
                    false,
                );
                std::hint::black_box((i, msg));
            };
            (0..WARM_UP).for_each(one);
            let region = Region::new(GLOBAL);
            (0..n).for_each(one);
            Ok(region.change())
        }
        Case::Publish(format) => {
            let client = Client::connect_memory(config(format), &broker).await?;
            let ev = order(1);
            for _ in 0..WARM_UP {
                client.publish_event(&ev).await?;
            }
            let region = Region::new(GLOBAL);
            for _ in 0..n {
                client.publish_event(&ev).await?;
            }
            let change = region.change();
            client.close().await;
            Ok(change)
        }
        Case::Consume(format, h) => {
            let (running, seen) = service(&broker, format, h).await?;
            let client = Client::connect_memory(config(format), &broker).await?;
            let ev = order(1);
            for _ in 0..WARM_UP {
                client.publish_event(&ev).await?;
            }
            seen.wait_for(WARM_UP).await;
            let region = Region::new(GLOBAL);
            for _ in 0..n {
                client.publish_event(&ev).await?;
            }
            seen.wait_for(WARM_UP + n).await;
            let change = region.change();
            running.shutdown().await;
            client.close().await;
            Ok(change)
        }
        Case::Rpc(format) => {
            let app = App::new(config(format))
                .broker(&broker)
                .service("permsg.rpc")
                .only_module(concat!(module_path!(), "::rpc"));
            let running = app.start().await?;
            let client = Client::connect_memory(config(format), &broker).await?;
            let req = EchoRequest {
                seq: 1,
                text: "hello, service".to_owned(),
            };
            for _ in 0..WARM_UP {
                client.call_event(&req, None).await?;
            }
            let region = Region::new(GLOBAL);
            for _ in 0..n {
                let r = client.call_event(&req, None).await?;
                std::hint::black_box(r.seq);
            }
            let change = region.change();
            running.shutdown().await;
            client.close().await;
            Ok(change)
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || -> ! {
        let names: Vec<&str> = CASES.iter().map(|(n, _)| *n).collect();
        eprintln!(
            "usage: permsg CASE N | permsg list\ncases: {}",
            names.join(" ")
        );
        std::process::exit(2)
    };
    match args.as_slice() {
        [l] if l == "list" => {
            for (name, _) in CASES {
                println!("{name}");
            }
        }
        [name, n] => {
            let Some((_, case)) = CASES.iter().find(|(c, _)| c == name) else {
                usage()
            };
            let Ok(n) = n.parse::<u64>() else { usage() };
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: {e}");
                    std::process::exit(1)
                }
            };
            match rt.block_on(run(*case, n)) {
                Ok(s) => {
                    let per = |x: usize| x as f64 / n as f64;
                    println!(
                        "{name} n={n} allocs/msg={:.2} reallocs/msg={:.2} bytes/msg={:.1}",
                        per(s.allocations),
                        per(s.reallocations),
                        per(s.bytes_allocated),
                    );
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    std::process::exit(1)
                }
            }
        }
        _ => usage(),
    }
}
