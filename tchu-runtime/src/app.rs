//! The service: [`App`] collects handlers (link-time and run-time), declares the topology and
//! runs the dispatcher until SIGINT/SIGTERM (or [`Running::shutdown`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::ack::Settler;
use crate::broker::memory::MemoryBroker;
use crate::broker::{Broker, Consumer, QueueType};
use crate::client::Client;
use crate::config::Config;
use crate::context::ContextHelpers;
use crate::dispatch::{Dispatcher, Stats, StatsSnapshot};
use crate::error::{ConfigError, Error, SubscriptionError};
use crate::event::Event;
use crate::handler::Meta;
use crate::handler::{Delivery, IntoOutcome, StateMap};
use crate::health::{Health, HealthCheck};
use crate::registry::{BoxFuture, HandlerEntry, Registry, Subscription};
use crate::retry::RetryPolicy;
use crate::topic::Pattern;
use crate::topology::Topology;
use crate::url::BrokerUrl;

/// Keeps or drops a link-time subscription.
type SubscriptionFilter = Box<dyn Fn(&Subscription) -> bool + Send + Sync>;

/// A service being configured.
///
/// ```no_run
/// # use tchu_runtime as tchu;
/// # async fn demo() -> Result<(), tchu::Error> {
/// tchu::App::from_env()?.prefetch(100).run().await
/// # }
/// ```
pub struct App {
    config: Config,
    client: Option<Client>,
    /// The in-process broker handed over with [`App::broker`].
    memory: Option<MemoryBroker>,
    filter: Option<SubscriptionFilter>,
    extra: Vec<HandlerEntry>,
    errors: Vec<SubscriptionError>,
    state: StateMap,
    contexts: ContextHelpers,
    publish_only: bool,
    /// Use (and at the end close) the process's default client ([`run`]).
    default_client: bool,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("config", &self.config)
            .field("extra", &self.extra)
            .field("publish_only", &self.publish_only)
            .finish_non_exhaustive()
    }
}

impl App {
    /// An app with the given settings.
    pub fn new(config: Config) -> Self {
        App {
            config,
            client: None,
            memory: None,
            filter: None,
            extra: Vec::new(),
            errors: Vec::new(),
            state: StateMap::default(),
            contexts: ContextHelpers::default(),
            publish_only: false,
            default_client: false,
        }
    }

    /// An app with [`Config::from_env`].
    ///
    /// # Errors
    /// Bad settings.
    pub fn from_env() -> Result<Self, Error> {
        Ok(App::new(Config::from_env()?))
    }

    /// The settings so far.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Sets the service name (its queue's name).
    #[must_use]
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.config.service = Some(name.into());
        self
    }

    /// Sets the exchange name.
    #[must_use]
    pub fn exchange(mut self, name: impl Into<String>) -> Self {
        self.config.exchange = name.into();
        self
    }

    /// Sets the prefetch window (at least 1: 0 is refused at start).
    #[must_use]
    pub fn prefetch(mut self, n: u16) -> Self {
        self.config.prefetch = n;
        self
    }

    /// Sets how many deliveries are handled at once (at least 1: 0 is refused at start).
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.config.concurrency = n;
        self
    }

    /// Sets the type of the service's queues (main, dead-letter, retry wait queues and binding
    /// record); default [`QueueType::Classic`]. Declaring against existing queues of another
    /// type fails at start with the way to migrate.
    #[must_use]
    pub fn queue_type(mut self, queue_type: QueueType) -> Self {
        self.config.queue_type = queue_type;
        self
    }

    /// Sets the service-wide retry policy (handlers with their own keep theirs).
    #[must_use]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.config.retry = policy;
        self
    }

    /// Sets the longest one handler run may take (see [`Config::handler_timeout`]).
    #[must_use]
    pub fn handler_timeout(mut self, d: Duration) -> Self {
        self.config.handler_timeout = d;
        self
    }

    /// Sets the shutdown grace period.
    #[must_use]
    pub fn shutdown_grace(mut self, d: Duration) -> Self {
        self.config.shutdown_grace = d;
        self
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` on `addr` once started (the `prometheus`
    /// feature; see [`Config::metrics_addr`]).
    #[must_use]
    pub fn metrics_addr(mut self, addr: SocketAddr) -> Self {
        self.config.metrics_addr = Some(addr);
        self
    }

    /// Runs on the given in-process broker instead of the one the settings name (the app's
    /// `broker` setting becomes `memory://`): apps and clients handed the same [`MemoryBroker`]
    /// see each other's events. A client given with [`App::client`] wins over it.
    #[must_use]
    pub fn broker(mut self, broker: &MemoryBroker) -> Self {
        self.config.broker = BrokerUrl::Memory;
        self.memory = Some(broker.clone());
        self
    }

    /// Uses an existing client (and its broker) instead of connecting anew.
    #[must_use]
    pub fn client(mut self, client: Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Registers a shared resource for `State<T>` arguments.
    #[must_use]
    pub fn state<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.state.insert(value);
        self
    }

    /// Sets the app's context helper for `Context<T>` arguments: it rebuilds a request context
    /// (user, company, ...) from the event data, or says why it cannot.
    #[must_use]
    pub fn context_helper<T, F>(mut self, helper: F) -> Self
    where
        T: Send + 'static,
        F: Fn(&serde_json::Value, &Meta) -> Result<T, crate::context::ContextError>
            + Send
            + Sync
            + 'static,
    {
        self.contexts.set(None, helper);
        self
    }

    /// Overrides the context helper of `Context<T>` for events of type `E`.
    #[must_use]
    pub fn context_helper_for<E, T, F>(mut self, helper: F) -> Self
    where
        E: Event,
        T: Send + 'static,
        F: Fn(&serde_json::Value, &Meta) -> Result<T, crate::context::ContextError>
            + Send
            + Sync
            + 'static,
    {
        self.contexts.set(Some(E::TOPIC), helper);
        self
    }

    /// Events of type `E` require a `T` context: when the helper cannot build one, the
    /// delivery is dead-lettered as unauthorized and no handler runs.
    #[must_use]
    pub fn require_context<E: Event, T: 'static>(mut self) -> Self {
        self.contexts.require::<T>(E::TOPIC);
        self
    }

    /// Keeps only the link-time subscriptions for which `keep` is true (tests, several
    /// services in one binary).
    #[must_use]
    pub fn filter(mut self, keep: impl Fn(&Subscription) -> bool + Send + Sync + 'static) -> Self {
        self.filter = Some(Box::new(keep));
        self
    }

    /// Keeps only the link-time subscriptions whose id starts with `prefix` (e.g. a module path).
    #[must_use]
    pub fn only_module(self, prefix: &'static str) -> Self {
        self.filter(move |s| s.id.starts_with(prefix))
    }

    /// Runs the outbox relay in this service (feature `postgres`): rows written with
    /// `publish_in` on `pool`'s database are published by this app's client. tchu's tables are
    /// created or upgraded at start; relay settings come from `RelayConfig::from_env`.
    #[cfg(feature = "postgres")]
    #[must_use]
    pub fn outbox(mut self, pool: sqlx::PgPool) -> Self {
        self.state.insert(crate::outbox::AppOutbox(pool));
        self
    }

    /// Runs every handler in a transaction with an inbox record, skipping duplicates (feature
    /// `postgres`; see [`crate::inbox`]). Handlers get the transaction as a `Tx` argument.
    #[cfg(feature = "postgres")]
    #[must_use]
    pub fn inbox(mut self, inbox: crate::inbox::Inbox) -> Self {
        self.state.insert(inbox);
        self
    }

    /// Allows starting with no subscriptions (a service that only publishes and calls).
    #[must_use]
    pub fn publish_only(mut self) -> Self {
        self.publish_only = true;
        self
    }

    /// Adds a handler at run time (plugins); it gets a binding like static ones.
    #[must_use]
    pub fn subscribe<F, Fut, R>(mut self, pattern: &str, id: &str, handler: F) -> Self
    where
        F: Fn(Arc<Delivery>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoOutcome,
    {
        match Pattern::new(pattern) {
            Ok(p) => {
                let handler = Arc::new(handler);
                self.extra.push(HandlerEntry {
                    id: id.to_owned(),
                    name: id.to_owned(),
                    pattern: p,
                    handler: Arc::new(move |d| {
                        let fut = handler(d);
                        Box::pin(async move { fut.await.into_outcome() }) as BoxFuture
                    }),
                    retry: None,
                    timeout: None,
                });
            }
            Err(source) => self.errors.push(SubscriptionError::BadPattern {
                handler: id.to_owned(),
                pattern: pattern.to_owned(),
                source,
            }),
        }
        self
    }

    fn registry(&mut self) -> Result<Registry, Error> {
        match self.errors.len() {
            0 => {}
            1 => return Err(self.errors.remove(0).into()),
            _ => return Err(SubscriptionError::Many(std::mem::take(&mut self.errors)).into()),
        }
        let mut subs = Registry::static_subscriptions();
        if let Some(f) = &self.filter {
            subs.retain(|s| f(s));
        }
        // A `State<T>` or `Context<T>` the app does not provide: refused now, not
        // dead-lettered at every delivery.
        let mut missing: Vec<SubscriptionError> = subs
            .iter()
            .flat_map(|s| {
                (s.needs)()
                    .into_iter()
                    .filter_map(|n| n.check(s.id, &self.state, &self.contexts))
            })
            .collect();
        match missing.len() {
            0 => {}
            1 => return Err(missing.remove(0).into()),
            _ => return Err(SubscriptionError::Many(missing).into()),
        }
        let mut entries = Registry::entries_from(&subs)?;
        entries.append(&mut self.extra);
        Ok(Registry::from_entries(entries)?)
    }

    /// Connects, declares the topology and starts consuming in the background.
    ///
    /// # Errors
    /// Bad settings, invalid or missing subscriptions, or broker failures.
    pub async fn start(mut self) -> Result<Running, Error> {
        self.config.check()?;
        let registry = self.registry()?;
        if registry.is_empty() && !self.publish_only {
            return Err(Error::NoSubscriptions);
        }
        let service = self
            .config
            .service
            .clone()
            .ok_or(ConfigError::NoServiceName)?;
        let owns_client = self.client.is_none();
        let client = match self.client.take() {
            Some(c) => c,
            None if self.default_client => crate::client::default_client().await?,
            None => match &self.memory {
                Some(broker) => Client::connect_memory(self.config.clone(), broker).await?,
                None => Client::connect(self.config.clone()).await?,
            },
        };
        // The outbox relay and the inbox this service runs (feature `postgres`), by table.
        #[cfg(feature = "postgres")]
        let (outbox, inbox) = (
            self.state
                .get::<crate::outbox::AppOutbox>()
                .map_or("off", |_| "tchu_outbox"),
            self.state
                .get::<crate::inbox::Inbox>()
                .map_or("off", |_| "tchu_inbox"),
        );
        #[cfg(not(feature = "postgres"))]
        let (outbox, inbox) = ("off", "off");
        tracing::info!(
            service = %service,
            broker = %self.config.broker,
            exchange = %self.config.exchange,
            queue = %service,
            queue_type = %self.config.queue_type,
            prefetch = self.config.prefetch,
            concurrency = self.config.concurrency,
            format = ?self.config.format,
            celery_encoding = %self.config.celery_encoding,
            handlers = registry.entries().len(),
            outbox = %outbox,
            inbox = %inbox,
            "tchu service starting"
        );
        for e in registry.entries() {
            tracing::info!(handler = %e.id, pattern = %e.pattern, "handler linked");
        }
        // publish()/call() inside handlers use the default client: make it this one if unset.
        let _ = crate::client::set_default(client.clone());
        let (stop_tx, stop_rx) = watch::channel(false);
        // Tasks stopped with the consumer: the outbox relay and the inbox sweep (outbox/mod.rs).
        #[cfg(feature = "postgres")]
        let background = crate::outbox::start_in_app(&self.state, &client, stop_rx.clone()).await?;
        #[cfg(not(feature = "postgres"))]
        let background = Vec::new();
        let stats = Arc::new(Stats::default());
        let consuming = Arc::new(AtomicBool::new(false));
        let mut task = None;
        if !registry.is_empty() {
            let topology = Topology::new(
                self.config.exchange.clone(),
                service.clone(),
                self.config.queue_type,
                registry
                    .entries()
                    .iter()
                    .map(|e| (e.pattern.clone(), e.id.clone())),
            );
            let declared = topology.declare(client.broker()).await?;
            let prefetch = self.config.prefetch;
            tracing::info!(service = %service, queue = %service, added = ?declared.bound, removed = ?declared.unbound, "bindings declared");
            let consumer = client
                .broker()
                .consume(&service, self.config.prefetch)
                .await?;
            let mut state = self.state;
            if !self.contexts.is_empty() {
                state.insert(self.contexts);
            }
            let dispatcher = Arc::new(Dispatcher {
                handler_meters: crate::dispatch::handler_meters(&registry),
                received: crate::telemetry::TopicCounters::new(crate::telemetry::RECEIVED_TOTAL),
                matches: crate::registry::MatchCache::default(),
                registry: Arc::new(registry),
                client: client.clone(),
                queue: service.clone(),
                queue_type: self.config.queue_type,
                state: Arc::new(state),
                limits: crate::wire::Limits::new(self.config.max_body, self.config.max_headers),
                retry: self.config.retry,
                handler_timeout: self.config.handler_timeout,
                stats: Arc::clone(&stats),
                topology: topology.clone(),
            });
            consuming.store(true, Ordering::Relaxed);
            task = Some(tokio::spawn(consume_loop(
                dispatcher,
                consumer,
                Resubscribe { topology, prefetch },
                self.config.concurrency,
                self.config.shutdown_grace,
                stop_rx,
                Arc::clone(&consuming),
            )));
        }
        let health = HealthCheck {
            client: client.clone(),
            consuming,
            stats: Arc::clone(&stats),
            has_consumer: task.is_some(),
        };
        let metrics = match self.config.metrics_addr {
            Some(addr) => start_exporter(addr, health.clone()).await,
            None => None,
        };
        Ok(Running {
            client,
            owns_client,
            service,
            stop: stop_tx,
            task,
            stats,
            health,
            metrics,
            background,
        })
    }

    /// Starts, then runs until SIGINT or SIGTERM, then shuts down gracefully.
    ///
    /// # Errors
    /// See [`App::start`].
    ///
    /// Installs tchu's default log output first when the process has none
    /// ([`init_default_logs`](crate::telemetry::init_default_logs)), and closes the connection
    /// at the end unless the client was given with [`App::client`].
    pub async fn run(self) -> Result<(), Error> {
        crate::telemetry::init_default_logs();
        // Listening before the start, so that a signal during it is not lost.
        let signal = ShutdownSignal::new();
        let running = self.start().await?;
        signal.recv().await;
        tracing::info!("shutdown requested");
        let client = running.client.clone();
        let close = running.owns_client;
        let stats = running.shutdown().await;
        tracing::info!(
            received = stats.received,
            handled = stats.handled,
            failed = stats.failed,
            dead_lettered = stats.dead_lettered,
            "tchu service stopped"
        );
        if close {
            // Bounded: closing a connection that is down may never complete. Closed before
            // `main` returns, lapin's I/O thread does not panic at the runtime's shutdown.
            let _ = tokio::time::timeout(Duration::from_secs(5), client.close()).await;
        }
        Ok(())
    }
}

/// Runs the service with the link-time subscriptions and settings from the environment, until
/// SIGINT or SIGTERM.
///
/// # Errors
/// Bad settings, no subscriptions, or an unreachable broker.
///
/// Installs tchu's default log output when the process has none (see
/// [`init_default_logs`](crate::telemetry::init_default_logs)), and closes the connection at
/// the end.
pub async fn run() -> Result<(), Error> {
    crate::telemetry::init_default_logs();
    let mut app = App::from_env()?;
    app.default_client = true;
    app.run().await
}

/// SIGINT or SIGTERM (Ctrl-C elsewhere), listened to from its creation on.
struct ShutdownSignal {
    #[cfg(unix)]
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl ShutdownSignal {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signals = signal(SignalKind::interrupt())
                .and_then(|int| Ok((int, signal(SignalKind::terminate())?)))
                .ok();
            ShutdownSignal { signals }
        }
        #[cfg(not(unix))]
        {
            ShutdownSignal {}
        }
    }

    async fn recv(self) {
        #[cfg(unix)]
        if let Some((mut int, mut term)) = self.signals {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The metrics endpoint of a running service.
#[derive(Debug)]
struct MetricsServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

#[cfg(feature = "prometheus")]
async fn start_exporter(addr: SocketAddr, health: HealthCheck) -> Option<MetricsServer> {
    match crate::exporter::serve(addr, health).await {
        Ok((addr, task)) => {
            tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
            Some(MetricsServer { addr, task })
        }
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot serve metrics; going on without them");
            None
        }
    }
}

/// Not reached: [`Config::check`] refuses a metrics address without the feature.
#[cfg(not(feature = "prometheus"))]
async fn start_exporter(addr: SocketAddr, _: HealthCheck) -> Option<MetricsServer> {
    tracing::error!(%addr, "tchu was built without its `prometheus` feature; not serving");
    None
}

/// A started service.
#[derive(Debug)]
pub struct Running {
    client: Client,
    /// Whether [`App::run`] closes the client at the end (it was not given with
    /// [`App::client`]).
    owns_client: bool,
    service: String,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    stats: Arc<Stats>,
    health: HealthCheck,
    metrics: Option<MetricsServer>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// The service's client (for publishing and calling).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The service (and queue) name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The service's counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Whether the service is connected and consuming right now.
    pub fn health(&self) -> Health {
        self.health.health()
    }

    /// A handle that reads [`Running::health`] from elsewhere, and keeps answering (not
    /// consuming) after a shutdown.
    pub fn health_check(&self) -> HealthCheck {
        self.health.clone()
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served (the bound address, so a port 0
    /// shows the one picked), if they are.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|m| m.addr)
    }

    /// Stops consuming, lets in-flight handlers finish within the grace period, and returns
    /// unstarted deliveries to the queue. The health endpoints answer 503 during the grace
    /// period and stop with it.
    ///
    /// Returns the service's final counters: every delivery taken before the stop is settled
    /// and counted by then.
    ///
    /// The service's client stays open: it may be shared, or the process's default client
    /// that handlers publish with. Close it (`running.client().clone()`, then
    /// [`Client::close`] after this returns) before the runtime ends, as for any client;
    /// [`App::run`] does so for a client it made itself.
    pub async fn shutdown(mut self) -> StatsSnapshot {
        self.health.consuming.store(false, Ordering::Relaxed);
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        for t in std::mem::take(&mut self.background) {
            let _ = t.await;
        }
        if let Some(m) = self.metrics.take() {
            m.task.abort();
            let _ = m.task.await; // the listener is closed once this returns
        }
        self.stats.snapshot()
    }
}

/// Polls `work` once with the calling task's context: `Ok(true)` when it finished, `Ok(false)`
/// when it waits (its wakers are registered again by its next poll, in whichever task), the
/// panic's text when it panicked (it must not be polled again).
async fn poll_once(
    work: std::pin::Pin<&mut (dyn Future<Output = ()> + Send)>,
) -> Result<bool, String> {
    let mut work = Some(work);
    std::future::poll_fn(move |cx| {
        let Some(w) = work.take() else {
            return std::task::Poll::Ready(Ok(false));
        };
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.poll(cx)));
        std::task::Poll::Ready(match polled {
            Ok(p) => Ok(p.is_ready()),
            Err(p) => Err(crate::dispatch::panic_text(p.as_ref())),
        })
    })
    .await
}

/// What the consume loop needs to consume again after losing the connection.
struct Resubscribe {
    topology: Topology,
    prefetch: u16,
}

impl Resubscribe {
    /// Reconnects, declares the topology again and consumes anew, with backoff, until it works
    /// or a stop is requested (`None`).
    /// `waited` is how long the connection was already seen down: lapin's recovery gets only
    /// the rest of [`RECOVERY_GRACE`](crate::broker::amqp::RECOVERY_GRACE) before the
    /// connection is replaced (on a cluster: by one to the next node).
    async fn run(
        &self,
        broker: &Broker,
        stop: &mut watch::Receiver<bool>,
        waited: Duration,
    ) -> Option<Consumer> {
        let mut backoff = Duration::from_millis(200);
        let mut grace = crate::broker::amqp::RECOVERY_GRACE.saturating_sub(waited);
        loop {
            let attempt = async {
                broker.reconnect_within(grace).await?;
                self.topology.declare(broker).await?;
                broker.consume(&self.topology.queue, self.prefetch).await
            };
            match tokio::time::timeout(Duration::from_secs(30), attempt).await {
                Ok(Ok(c)) => {
                    tracing::info!(queue = %self.topology.queue, "consuming again");
                    return Some(c);
                }
                Ok(Err(e)) => tracing::warn!(error = %e, ?backoff, "cannot consume again yet"),
                Err(_) => tracing::warn!(?backoff, "consuming again timed out"),
            }
            tokio::select! {
                _ = stop.changed() => return None,
                _ = tokio::time::sleep(backoff) => {}
            }
            grace = Duration::ZERO;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }
}

async fn consume_loop(
    dispatcher: Arc<Dispatcher>,
    mut consumer: Consumer,
    resubscribe: Resubscribe,
    concurrency: usize,
    grace: Duration,
    mut stop: watch::Receiver<bool>,
    consuming: Arc<AtomicBool>,
) {
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut inflight = JoinSet::new();
    // Deliveries are polled once in this task before any is spawned when that cannot take
    // parallelism away: on a current-thread runtime, or when one delivery runs at a time.
    // On a multi-thread runtime with more, each goes to its own task at once, so that
    // handlers that compute without waiting still run on several workers.
    let inline = concurrency == 1
        || tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::CurrentThread;
    let broker = dispatcher.client.broker().clone();
    let batched = true; // both brokers acknowledge with `multiple`
    let (mut settler, mut settler_task) = Settler::start(batched);
    // lapin's recovery may never complete: a connection down for longer than this is replaced.
    let mut watchdog = tokio::time::interval(Duration::from_secs(1));
    let mut down_since: Option<tokio::time::Instant> = None;
    // A consumer that receives nothing while its queue has ready messages is replaced (ops).
    let mut stall = crate::broker::stall::StallWatch::new(resubscribe.topology.queue.clone());
    'outer: loop {
        let permit = tokio::select! {
            biased;
            _ = stop.changed() => break,
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let next = loop {
            tokio::select! {
                biased;
                _ = stop.changed() => break 'outer,
                d = consumer.next() => {
                    stall.delivered();
                    break d;
                }
                _ = watchdog.tick() => {
                    while inflight.try_join_next().is_some() {}
                    if batched && stall.stalled(&broker, inflight.is_empty()).await {
                        break None;
                    }
                    crate::telemetry::connected(broker.is_connected());
                    if broker.is_connected() {
                        down_since = None;
                    } else if down_since
                        .get_or_insert_with(tokio::time::Instant::now)
                        .elapsed()
                        >= crate::broker::amqp::RECOVERY_GRACE
                    {
                        tracing::warn!("the broker connection has not recovered");
                        break None;
                    }
                }
            }
        };
        match next {
            Some(Ok(d)) => {
                tracing::debug!(
                    routing_key = %d.message.routing_key,
                    redelivered = d.redelivered,
                    "delivery received"
                );
                // The acker stays here, in the delivery's settle guard (see `dispatch`).
                // Boxed: the delivery's future is ~5.5 KB, and tokio moves a spawned future
                // several times (measured by tchu-bench's permsg: +116k instructions of
                // memcpy per delivery unboxed).
                let mut work = Box::pin(dispatcher.accept(d, &mut settler));
                let waits = if inline {
                    match poll_once(work.as_mut()).await {
                        // Done on its first poll (a handler that did not wait): no task.
                        Ok(done) => !done,
                        // A panic outside the handlers' own boundary (a bug in tchu), as a
                        // task's would be: logged, and the guard requeues as `work` drops.
                        Err(text) => {
                            tracing::error!(panic = %text, "a delivery task panicked; its delivery was requeued");
                            false
                        }
                    }
                } else {
                    true
                };
                if waits {
                    // It goes on in its own task.
                    inflight.spawn(async move {
                        work.await;
                        drop(permit);
                    });
                } else {
                    drop(work);
                    drop(permit);
                }
            }
            Some(Err(e)) => {
                // lapin may resume the consumer after recovering; if not, it ends next.
                tracing::warn!(error = %e, "consumer error");
            }
            None if !broker.recovers() => {
                tracing::warn!("consumer ended");
                break;
            }
            None => {
                tracing::warn!("consumer ended or connection lost; reconnecting");
                consuming.store(false, Ordering::Relaxed);
                crate::telemetry::connected(broker.is_connected());
                drop(permit);
                let waited = down_since.map_or(Duration::ZERO, |t| t.elapsed());
                let Some(fresh) = resubscribe.run(&broker, &mut stop, waited).await else {
                    break;
                };
                consuming.store(true, Ordering::Relaxed);
                stall.reset();
                // Deliveries of the old consumer settle (or not) on its own channel.
                let (fresh_settler, fresh_task) = Settler::start(batched);
                drop(std::mem::replace(&mut settler, fresh_settler));
                drop(std::mem::replace(&mut settler_task, fresh_task));
                let old = std::mem::replace(&mut consumer, fresh);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(1), old.close()).await;
                });
                down_since = None;
            }
        }
        while let Some(done) = inflight.try_join_next() {
            crate::dispatch::log_task_end(done);
        }
    }
    consuming.store(false, Ordering::Relaxed);
    let drain = async { while inflight.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drain).await.is_err() {
        tracing::warn!(
            "in-flight handlers did not finish within the grace period; their deliveries return to the queue"
        );
        inflight.abort_all();
        // Each aborted delivery's guard requeues it as its task is dropped.
        while inflight.join_next().await.is_some() {}
    }
    // Let the settler send the last acks before the channel closes.
    drop(settler);
    let _ = tokio::time::timeout(Duration::from_secs(5), settler_task).await;
    // Bounded: closing a channel of a connection that is down may never complete.
    let _ = tokio::time::timeout(Duration::from_secs(5), consumer.close()).await;
    // A graceful stop says so: the other versions see this one gone at once (bounded).
    resubscribe.topology.leave(&broker).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An RPC reply carries the request's trace (same trace id, a new span) when the request
    /// had a `traceparent`, and no trace header when it had none.
    #[tokio::test]
    async fn a_reply_carries_its_requests_trace_and_none_without_one() {
        use crate::broker::QueueSpec;
        use crate::trace::{TRACEPARENT_HEADER, TraceContext};
        let broker = MemoryBroker::new();
        let config = Config::memory();
        let exchange = config.exchange.clone();
        let running = App::new(config)
            .broker(&broker)
            .service("t.reply_trace")
            .only_module("none")
            .subscribe(
                "rt.echo",
                "echo",
                |d: Arc<crate::handler::Delivery>| async move {
                    Ok::<_, std::convert::Infallible>(d.event().clone())
                },
            )
            .start()
            .await
            .expect("start");
        broker
            .declare_queue(&QueueSpec::durable("rt.replies", QueueType::Classic))
            .expect("reply queue");
        let mut replies = broker.consume("rt.replies", 10).expect("consume");
        for traced in [None, Some(TraceContext::new_root())] {
            let id = crate::MessageId::new();
            let mut msg = crate::wire::encode(
                crate::wire::WireFormat::Celery,
                "rt.echo",
                br#"{"n": 1}"#,
                id.as_str(),
                true,
            );
            msg.properties.reply_to = Some("rt.replies".to_owned());
            msg.properties.correlation_id = Some(id.as_str().to_owned());
            if let Some(ctx) = &traced {
                ctx.write_headers(&mut msg.properties.headers);
            }
            broker.publish_owned(&exchange, msg, true).expect("request");
            let reply = tokio::time::timeout(Duration::from_secs(5), replies.next())
                .await
                .expect("a reply within 5 s")
                .expect("a reply");
            let headers = &reply.message.properties.headers;
            assert_eq!(
                reply.message.properties.correlation_id.as_deref(),
                Some(id.as_str())
            );
            match traced {
                None => assert!(!headers.contains_key(TRACEPARENT_HEADER), "{headers:?}"),
                Some(ctx) => {
                    let got = TraceContext::from_headers(headers).expect("a traceparent");
                    assert_eq!(got.trace_id(), ctx.trace_id());
                    assert_ne!(got.span_id(), ctx.span_id());
                }
            }
            reply.acker.ack().await.expect("ack");
        }
        running.shutdown().await;
    }

    /// The consume loop's first poll: done, waiting (and then finished by a task), or a panic
    /// reported with its text and the future dropped, not polled again.
    #[tokio::test]
    async fn poll_once_tells_done_waiting_and_panicked() {
        let mut ready = Box::pin(async {});
        assert_eq!(poll_once(ready.as_mut()).await, Ok(true));

        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let done = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&done);
        let mut waiting = Box::pin(async move {
            let _ = rx.await;
            flag.store(true, Ordering::Relaxed);
        });
        assert_eq!(poll_once(waiting.as_mut()).await, Ok(false));
        // Polled once here, it goes on in a task of its own and is woken there.
        let task = tokio::spawn(waiting);
        let _ = tx.send(());
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the moved future is woken in its task")
            .expect("no panic");
        assert!(done.load(Ordering::Relaxed));

        let mut panics = Box::pin(async {
            if std::hint::black_box(true) {
                panic!("a bug in tchu");
            }
        });
        assert_eq!(
            poll_once(panics.as_mut()).await,
            Err("a bug in tchu".to_owned())
        );
    }
}
