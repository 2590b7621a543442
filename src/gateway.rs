//! Assembles a running gateway from a config and bound listeners: the control
//! plane, the data path, the admin API and the background tasks (reload,
//! discovery, fleet store, App Mesh sync).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{self, Admin};
use crate::config::{Config, EndpointSource, StoreConfig};
use crate::control::status::ReloadStatus;
use crate::control::{Control, ControlError};
use crate::discovery::{CloudMapSource, EndpointSink};
use crate::future::BoxFuture;
use crate::proxy::{Proxy, server};
use crate::reload::{self, Reload};
use crate::route_sync::{self, RouteSync};
use crate::store::Store;
use crate::store::file::{FileStore, StateLock};
use crate::tls::ListenerTls;

/// Why the gateway did not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Token(#[from] admin::auth::TokenError),
    #[error(
        "the admin address {0} is not loopback and no admin token is configured: set the variable named by admin.token_env (default CANARY_ADMIN_TOKEN) or admin.token_file"
    )]
    OpenAdmin(SocketAddr),
    #[error(transparent)]
    Control(#[from] ControlError),
    // Not a `source`: the message holds the error's text already, and the
    // binary prints the chain (it would say it twice).
    #[error("listener.tls: {0}")]
    Tls(crate::tls::TlsError),
    #[error("AWS setup: {0}")]
    Aws(String),
    /// The state file cannot be taken for this gateway (another one holds
    /// it, or its lock file cannot be opened: see `FileStore::lock`), or
    /// its directory cannot be written in (`FileStore::check_writable`).
    #[error("{0}")]
    State(crate::store::StoreError),
    #[error("cannot bind {what} {addr}: {error}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        error: std::io::Error,
    },
}

impl From<crate::tls::TlsError> for GatewayError {
    fn from(e: crate::tls::TlsError) -> GatewayError {
        GatewayError::Tls(e)
    }
}

/// The two bound sockets.
pub struct Listeners {
    pub proxy: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds the addresses of the config.
    pub async fn bind(config: &Config) -> Result<Listeners, GatewayError> {
        let bind = |what, addr| async move {
            listen(addr).map_err(|error| GatewayError::Bind { what, addr, error })
        };
        Ok(Listeners {
            proxy: bind("listener", config.listener.address).await?,
            admin: bind("admin", config.admin.address).await?,
        })
    }
}

/// How many connections the kernel queues on a listener before they are
/// accepted (it caps this at `net.core.somaxconn`, 4096 by default since
/// Linux 5.4). With tokio's default of 128 a burst of new connections past
/// it (an ALB scaling out, clients reconnecting after a deploy) has its SYNs
/// dropped, and each waits a second for the retry; nginx asks for 511.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` and listens on it with [`LISTEN_BACKLOG`].
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // As tokio's `TcpListener::bind`: a restarted gateway binds again at once.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Spawns the poller that keeps one version's endpoints current.
pub type PollerSpawner =
    Arc<dyn Fn(String, CloudMapSource, Arc<dyn EndpointSink>) -> JoinHandle<()> + Send + Sync>;

/// What the gateway depends on outside itself. Each `None` is built from the
/// config (AWS clients when the config asks for them).
#[derive(Default, Clone)]
pub struct Dependencies {
    pub discovery: Option<PollerSpawner>,
    pub store: Option<Arc<dyn Store>>,
    pub route_sync: Option<Arc<dyn RouteSync>>,
}

/// A running gateway.
pub struct Running {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub control: Arc<Control>,
    shutdown: watch::Sender<bool>,
    serving: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    pollers: Arc<Pollers>,
    /// The file store's hold on the state file, for as long as this gateway
    /// runs (released when [`Running::shutdown`] ends or this is dropped).
    _state_lock: Option<StateLock>,
}

impl Running {
    /// Starts draining and, meanwhile, writes a rollback still pending in
    /// the store (see [`Control::flush_pending_rollback`]: the fleet's other
    /// tasks would otherwise go on serving the canary), trying again every
    /// quarter second for up to `PENDING_FLUSH_AT_EXIT` (5 s) or the
    /// `shutdown_grace` if shorter; once the data path has drained, tries
    /// again for up to `LAST_FLUSH_AT_EXIT` (2 s), for one made during the
    /// drain or still pending, and removes this task's generation report
    /// from a shared store (best effort). Side by side, so that the whole
    /// stays within ECS's `stopTimeout` (30 s by default): the drain's
    /// `shutdown_grace` (25 s by default), then at most `LAST_FLUSH_AT_EXIT`
    /// and the report's 2 s.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let grace = self.control.config().timeouts.shutdown_grace;
        let flushed = self.control.flush_rollback_before_exit(
            PENDING_FLUSH_AT_EXIT,
            PENDING_FLUSH_AT_EXIT.min(grace),
            false,
        );
        let _ = tokio::join!(self.serving, flushed);
        for task in &self.background {
            task.abort();
        }
        self.pollers.stop_all();
        self.control
            .flush_rollback_before_exit(LAST_FLUSH_AT_EXIT, LAST_FLUSH_AT_EXIT, true)
            .await;
        self.control.withdraw_report().await;
    }
}

/// The discovery pollers, one per Cloud Map version.
struct Pollers {
    spawner: Option<PollerSpawner>,
    running: Mutex<BTreeMap<String, (CloudMapSource, JoinHandle<()>)>>,
}

impl Pollers {
    /// Starts, restarts or stops pollers to match the config in force.
    fn sync(&self, control: &Arc<Control>) {
        let Some(spawner) = &self.spawner else {
            return;
        };
        let config = control.config();
        let wanted: BTreeMap<String, CloudMapSource> = config
            .versions
            .iter()
            .filter_map(|v| match &v.source {
                EndpointSource::CloudMap(c) => Some((v.name.clone(), c.clone())),
                EndpointSource::Static(_) => None,
            })
            .collect();
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.retain(|name, (source, task)| {
            let keep = wanted.get(name) == Some(source);
            if !keep {
                task.abort();
            }
            keep
        });
        for (name, source) in wanted {
            if let std::collections::btree_map::Entry::Vacant(slot) = running.entry(name) {
                let sink: Arc<dyn EndpointSink> = control.clone();
                let task = spawner(slot.key().clone(), source.clone(), sink);
                slot.insert((source, task));
            }
        }
    }

    fn stop_all(&self) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        for (_, (_, task)) in std::mem::take(&mut *running) {
            task.abort();
        }
    }
}

/// Reloads the config (file or environment text), the TLS pair, and brings
/// the pollers in line.
struct ConfigReloader {
    control: Arc<Control>,
    from: ReloadFrom,
    pollers: Arc<Pollers>,
    tls: Option<Arc<ListenerTls>>,
}

/// What a reload reads.
enum ReloadFrom {
    /// A config file's reloads (one at a time; the watcher skips the text
    /// a SIGHUP settled).
    File(reload::FileReloads),
    /// The text read at start (the environment's, a pipe's).
    Text(reload::Source),
}

impl Reload for ConfigReloader {
    fn reload<'a>(&'a self, trigger: &'a str) -> BoxFuture<'a, ReloadStatus> {
        Box::pin(async move {
            let status = match &self.from {
                ReloadFrom::File(file) => file.reload(&self.control, trigger).await.0,
                ReloadFrom::Text(source) => {
                    reload::reload_source(&self.control, source, trigger).await
                }
            };
            self.pollers.sync(&self.control);
            crate::tls::listener::reload_into(self.tls.as_deref(), trigger, status)
        })
    }

    fn reload_file_change(&self, seen: u64) -> BoxFuture<'_, reload::FileChange> {
        const TRIGGER: &str = "file-change";
        Box::pin(async move {
            // Whether to try again is the config's alone: a rejected TLS pair
            // is the TLS watcher's to notice once its files change.
            let (status, retry) = match &self.from {
                ReloadFrom::File(file) => match file.file_change(&self.control, seen).await {
                    reload::FileChange::Reloaded(status, retry) => (status, retry),
                    nothing => return nothing,
                },
                ReloadFrom::Text(source) => (
                    reload::reload_source(&self.control, source, TRIGGER).await,
                    false,
                ),
            };
            self.pollers.sync(&self.control);
            let status = crate::tls::listener::reload_into(self.tls.as_deref(), TRIGGER, status);
            reload::FileChange::Reloaded(status, retry)
        })
    }

    fn settled_text(&self) -> Option<u64> {
        match &self.from {
            ReloadFrom::File(file) => file.settled_now(),
            ReloadFrom::Text(_) => None,
        }
    }

    fn file_unsettled(&self, since_ms: Option<u64>) {
        self.control.set_config_file_unsettled(since_ms);
    }
}

/// How long a stopping task tries to write a rollback still pending in the
/// store, while it drains (ECS gives 30 s between SIGTERM and SIGKILL by
/// default); within the `shutdown_grace` when that is shorter, but for
/// one try.
const PENDING_FLUSH_AT_EXIT: Duration = Duration::from_secs(5);

/// How long a stopping task tries, after its drain, to write a rollback
/// made during the drain (or still pending): what is left of ECS's 30 s
/// after a 25 s drain, with the report's withdrawal.
const LAST_FLUSH_AT_EXIT: Duration = Duration::from_secs(2);

/// How often the metrics exporter runs its upkeep and the upstream pools
/// drop their stale idle connections.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

/// How often the config file is checked for changes.
const FILE_WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// The admin token the gateway starts with (see [`admin::auth::resolve`]);
/// without one, the admin address must be loopback.
fn admin_token(config: &Config) -> Result<Option<String>, GatewayError> {
    let token = admin::auth::resolve(
        config.admin.token_env.as_deref(),
        config.admin.token_file.as_deref(),
    )?;
    if token.is_none() && !config.admin.address.ip().is_loopback() {
        return Err(GatewayError::OpenAdmin(config.admin.address));
    }
    Ok(token)
}

/// The state file's store, where no shared store is given.
fn file_store(config: &Config) -> FileStore {
    let path = config
        .state_path
        .clone()
        .unwrap_or_else(|| "gateway.state.json".into());
    FileStore::new(path)
}

/// What `canary-gateway check` validates beyond the config itself: the
/// checks [`start`] makes before serving that need neither AWS nor a bound
/// port, with the same errors: the admin token (and a non-loopback admin
/// address without one), the listener's TLS files (a certificate expired or
/// not yet valid is a warning, as `run` logs it), with the file store the
/// state file's first read and whether its directory can be written in,
/// and when AWS is used an AWS region (short of the instance metadata
/// service, a network call) and the SDK's `AWS_ENDPOINT_URL*` variables,
/// and an ejection base above its maximum (a warning). Within a tokio runtime.
/// `Ok` holds warnings: what only the start can tell.
pub async fn preflight(config: &Config) -> Result<Vec<String>, GatewayError> {
    let mut warnings = Vec::new();
    admin_token(config)?;
    if let Some(tls) = &config.listener.tls {
        // An expired (or not yet valid) certificate serves all the same, as
        // `run` warns: `check` says so too, before a deploy.
        let status = ListenerTls::load(tls)?.status();
        warnings.extend(status.validity_problem(crate::store::unix_ms()));
    }
    if matches!(config.store, StoreConfig::File) {
        let store = file_store(config);
        store.load().await.map_err(ControlError::StoreLoad)?;
        store.check_writable().map_err(GatewayError::State)?;
    }
    match crate::aws::region_without_network(config).await {
        crate::aws::RegionCheck::Found => {}
        crate::aws::RegionCheck::Missing => {
            return Err(GatewayError::Aws(crate::aws::NO_REGION.into()));
        }
        crate::aws::RegionCheck::OnlyFromImds => warnings.push(
            "no AWS region in [aws] region, AWS_REGION, AWS_DEFAULT_REGION or the AWS config file: \
             run asks the EC2 instance metadata service (check does not) and does not start without one"
                .to_string(),
        ),
    }
    crate::aws::endpoint_env_check(config).map_err(GatewayError::Aws)?;
    let upstream = &config.upstream;
    if upstream.eject_base > upstream.eject_max {
        warnings.push(format!(
            "`upstream.eject_base` ({:?}) is above `upstream.eject_max` ({:?}): every ejection lasts `eject_max`",
            upstream.eject_base, upstream.eject_max
        ));
    }
    Ok(warnings)
}

/// Starts a gateway on bound listeners; SIGHUP is listened for from here on
/// (see [`start_with_hangup`]).
pub async fn start(
    config: Config,
    listeners: Listeners,
    deps: Dependencies,
) -> Result<Running, GatewayError> {
    start_with_hangup(config, listeners, deps, reload::Hangup::listen()).await
}

/// Starts a gateway on bound listeners, reloading on the SIGHUPs `hup` hears
/// (one heard before the start is done reloads once it is).
pub async fn start_with_hangup(
    config: Config,
    listeners: Listeners,
    deps: Dependencies,
    hup: reload::Hangup,
) -> Result<Running, GatewayError> {
    let token = admin_token(&config)?;
    if token.is_none() {
        tracing::warn!(
            "no admin token configured: the loopback admin API accepts changes without authentication"
        );
    }
    let metrics = crate::telemetry::metrics_handle();
    let tls = config
        .listener
        .tls
        .as_ref()
        .map(ListenerTls::load)
        .transpose()?;

    let mut deps = deps;
    crate::aws::fill_dependencies(&config, &mut deps)
        .await
        .map_err(GatewayError::Aws)?;
    let mut state_lock = None;
    let (store, store_kind): (Arc<dyn Store>, &str) = match (&deps.store, &config.store) {
        (Some(s), StoreConfig::File) => (s.clone(), "custom"),
        (Some(s), shared) => (s.clone(), shared.kind()),
        (None, _) => {
            // Before the state file is read or written: a second gateway on
            // the same path stops here, having changed nothing.
            let store = file_store(&config);
            state_lock = Some(store.lock().map_err(GatewayError::State)?);
            // A directory it cannot write in (a read-only volume whose lock
            // file is writable) would refuse every change while serving.
            store.check_writable().map_err(GatewayError::State)?;
            (Arc::new(store), "file")
        }
    };
    let store_poll = config.store.poll_interval();
    let reload_source = reload::Source::of(&config);
    // What the running config was parsed from: the file watcher's baseline.
    let watch_baseline = config.source_fingerprint;
    let control = Control::start(config, store, store_kind).await?;
    // A reload into a Cloud Map source needs the poller spawner built here
    // (only when the start config had such a version, or one was given).
    control.set_cloud_map_discovery(deps.discovery.is_some());

    let proxy_addr = listeners
        .proxy
        .local_addr()
        .map_err(|error| GatewayError::Bind {
            what: "listener",
            addr: control.config().listener.address,
            error,
        })?;
    let admin_addr = listeners
        .admin
        .local_addr()
        .map_err(|error| GatewayError::Bind {
            what: "admin",
            addr: control.config().admin.address,
            error,
        })?;

    let pollers = Arc::new(Pollers {
        spawner: deps.discovery.clone(),
        running: Mutex::new(BTreeMap::new()),
    });
    pollers.sync(&control);

    let mut background = Vec::new();
    let reloader: Option<Arc<dyn Reload>> = reload_source.map(|source| {
        let from = match source {
            reload::Source::File(path) => {
                ReloadFrom::File(reload::FileReloads::new(path, watch_baseline))
            }
            text => ReloadFrom::Text(text),
        };
        Arc::new(ConfigReloader {
            control: control.clone(),
            from,
            pollers: pollers.clone(),
            tls: tls.clone(),
        }) as Arc<dyn Reload>
    });
    background.push(tokio::spawn(reload::on_sighup(reloader.clone(), hup)));
    match (
        &reloader,
        &control.config().source,
        &control.config().once_text,
    ) {
        (Some(r), Some(path), None) => {
            background.push(tokio::spawn(reload::watch_file(
                r.clone(),
                path.clone(),
                FILE_WATCH_INTERVAL,
                watch_baseline,
            )));
        }
        (_, Some(path), Some(_)) => tracing::info!(
            config = %path.display(),
            "the config file is no regular file (a pipe such as --config <(...)): it was read once and is not watched; SIGHUP and POST /reload apply the text read at start again (and reload the TLS files)"
        ),
        _ => {}
    }
    if let Some(tls) = &tls {
        background.push(tokio::spawn(tls.clone().watch(FILE_WATCH_INTERVAL)));
    }
    background.push(tokio::spawn(crate::control::keep_store(
        control.clone(),
        store_poll,
    )));
    background.push(tokio::spawn(crate::rollout::driver::run(control.clone())));
    if let Some(sync) = deps.route_sync.clone() {
        let every = control
            .config()
            .appmesh
            .as_ref()
            .map_or(crate::config::DEFAULT_APPMESH_RECONCILE, |a| {
                a.reconcile_interval
            });
        background.push(tokio::spawn(route_sync::follow_route(
            control.clone(),
            sync,
            every,
        )));
    }
    {
        // The exporter's own histograms queue their samples until an upkeep
        // (the per-request duration is not one of them: see telemetry); the
        // upstream pools drop the connections that went stale.
        let metrics = metrics.clone();
        let snapshots = control.snapshot_cell();
        background.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(UPKEEP_INTERVAL).await;
                metrics.run_upkeep();
                let snapshot = snapshots.load();
                let (idle_timeout, now) = (
                    snapshot.settings.upstream.pool_idle_timeout,
                    std::time::Instant::now(),
                );
                for version in snapshot.versions.iter() {
                    for endpoint in version.endpoints.iter() {
                        endpoint.sweep(idle_timeout, now);
                    }
                }
            }
        }));
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let admin = Arc::new(Admin {
        control: control.clone(),
        token,
        metrics,
        reloader,
        tls: tls.clone(),
    });
    let admin_task = tokio::spawn(admin::serve(
        listeners.admin,
        admin,
        wait_for(shutdown_rx.clone(), true),
    ));
    // The listener is bound (connections wait in its backlog) and the admin API
    // answers: /healthz 200, /readyz 503 with the reason until every discovery
    // source was asked once.
    control.set_listening();
    wait_for_first_discovery(&control).await;

    let proxy = Arc::new(Proxy::new(control.snapshot_cell(), proxy_addr.port()).with_tls(tls));
    let serving = {
        let control = control.clone();
        let drain_rx = shutdown_rx.clone();
        tokio::spawn(async move {
            let draining = {
                let control = control.clone();
                async move {
                    wait_for(drain_rx, false).await;
                    control.start_draining();
                }
            };
            let grace_control = control.clone();
            server::serve(listeners.proxy, proxy, draining, move || {
                grace_control.config().timeouts.shutdown_grace
            })
            .await;
            admin_task.abort();
        })
    };
    if let Err(why) = control.readiness() {
        tracing::info!("not ready yet: {why}");
    }
    tracing::info!(listener = %proxy_addr, admin = %admin_addr, "canary-gateway serving");
    Ok(Running {
        proxy_addr,
        admin_addr,
        control,
        shutdown: shutdown_tx,
        serving,
        background,
        pollers,
        _state_lock: state_lock,
    })
}

/// Resolves once shutdown was asked for. `after_drain` keeps the admin API up
/// while the data path drains (so /readyz reports it): it then never resolves,
/// and the admin task is aborted when draining is over.
async fn wait_for(mut rx: watch::Receiver<bool>, after_drain: bool) {
    if after_drain {
        std::future::pending::<()>().await;
    }
    let _ = rx.wait_for(|stop| *stop).await;
}

/// How long the start waits for Cloud Map's first answers before it serves
/// anyway (not ready: /readyz answers 503 until every source was asked once).
const DISCOVERY_WAIT: Duration = Duration::from_secs(10);

/// At start, waits a bounded time for the first discovery answers, and says
/// why it waits; then warns loudly when the stable version has no endpoints.
async fn wait_for_first_discovery(control: &Control) {
    if !control.discovery_attempted() {
        tracing::info!(
            wait_s = DISCOVERY_WAIT.as_secs(),
            "waiting for Cloud Map's first answers"
        );
        let deadline = tokio::time::Instant::now() + DISCOVERY_WAIT;
        while tokio::time::Instant::now() < deadline && !control.discovery_attempted() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for warning in control.status().warnings {
        tracing::warn!("{warning}");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpStream;
    use tokio::task::JoinSet;

    use super::*;

    /// A burst of connections larger than tokio's default backlog (128)
    /// waits in the queue: none has its SYN dropped, which would show as a
    /// connect that waits for the kernel's one-second SYN retry.
    #[tokio::test]
    async fn a_burst_of_new_connections_waits_in_the_queue() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        // The kernel caps the backlog at somaxconn: ask for no more.
        let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(128);
        let burst = somaxconn.min(300);
        // Nobody accepts: every connection stays in the listener's queue.
        let mut connects = JoinSet::new();
        for _ in 0..burst {
            connects.spawn(tokio::time::timeout(
                Duration::from_millis(900),
                TcpStream::connect(addr),
            ));
        }
        let mut streams = Vec::new();
        while let Some(done) = connects.join_next().await {
            let Ok(connected) = done.unwrap() else {
                panic!("a connect of {burst} waited for a SYN retry: its SYN was dropped");
            };
            streams.push(connected.unwrap());
        }
        assert_eq!(streams.len(), burst);
        drop(listener);
    }
}
