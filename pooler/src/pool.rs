//! One tenant's pool of real PostgreSQL server connections (deadpool-postgres),
//! and what deadpool does not do by itself: keeping `minConnections` warm,
//! closing connections past their max lifetime or idle time, bounding the wait
//! queue, replacing connections after a credential change, and counting what
//! happens for stats and metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod};
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;
use tokio_postgres_rustls::MakeRustlsConnect;
use tracing::{debug, info, warn};

use crate::config::{Secret, TargetSpec, TenantSpec};
use crate::metrics::TenantMetrics;
use crate::session::Checkout;
use crate::upstream_tls;

/// How often the maintenance task looks at the pool.
const MAINTENANCE_TICK: Duration = Duration::from_millis(500);
/// How long opening one server connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keepalive on server connections, so a vanished peer is noticed.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);

/// Why a connection could not be acquired.
#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    #[error(
        "tenant {tenant:?}: no connection became free within {waited_ms} ms (pool of {max}); retry later or raise pool.maxConnections"
    )]
    Timeout {
        tenant: String,
        waited_ms: u128,
        max: u32,
    },
    #[error(
        "tenant {tenant:?}: {waiting} callers are already waiting (pool.maxWaiting); retry later"
    )]
    QueueFull { tenant: String, waiting: usize },
    #[error("tenant {tenant:?}: the database is unreachable: {reason}")]
    Unavailable { tenant: String, reason: String },
    #[error("tenant {tenant:?} is being removed from this pooler")]
    Removed { tenant: String },
}

impl AcquireError {
    /// The `reason` label of `teresa_acquire_failures_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            AcquireError::Timeout { .. } => "timeout",
            AcquireError::QueueFull { .. } => "queue_full",
            AcquireError::Unavailable { .. } => "unavailable",
            AcquireError::Removed { .. } => "removed",
        }
    }
}

/// A tenant's connection pool and its live settings.
pub struct TenantPool {
    id: String,
    spec: ArcSwap<TenantSpec>,
    upstream: Arc<ArcSwap<Upstream>>,
    pool: Pool,
    counters: Arc<Counters>,
    metrics: TenantMetrics,
    maintenance: std::sync::Mutex<Option<JoinHandle<()>>>,
}

/// Live numbers of one pool, as GetPoolStats and GetStatus report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    pub active: u32,
    pub idle: u32,
    pub total: u32,
    pub max: u32,
    pub min: u32,
    pub waiting: u32,
    pub acquires_total: u64,
    pub acquire_timeouts_total: u64,
    pub expired_leases_total: u64,
    pub database_reachable: bool,
}

#[derive(Default)]
struct Counters {
    waiting: AtomicUsize,
    leases: AtomicUsize,
    acquires: AtomicU64,
    timeouts: AtomicU64,
    expired: AtomicU64,
    reachable: AtomicBool,
    draining: AtomicBool,
}

/// Where new connections go and with which credentials; swapped whole when
/// the target or the password changes.
pub struct Upstream {
    pg: tokio_postgres::Config,
    password: Secret,
    tls: Option<MakeRustlsConnect>,
    /// Connections created before this instant use old settings.
    since: Instant,
}

impl Upstream {
    fn new(target: &TargetSpec, statement_timeout: Option<Duration>) -> Result<Self, String> {
        let mut pg = tokio_postgres::Config::new();
        pg.host(&target.host)
            .port(target.port)
            .dbname(&target.dbname)
            .user(&target.user)
            .application_name("teresa-pooler")
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE)
            .keepalives_interval(Duration::from_secs(10))
            .keepalives_retries(3)
            .ssl_mode(match target.ssl_mode {
                crate::config::SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                crate::config::SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                _ => tokio_postgres::config::SslMode::Require,
            });
        if let Some(timeout) = statement_timeout {
            pg.options(format!("-c statement_timeout={}", timeout.as_millis()));
        }
        let tls = upstream_tls::connector(target).map_err(|e| e.to_string())?;
        Ok(Upstream {
            pg,
            password: target.password.clone(),
            tls,
            since: Instant::now(),
        })
    }

    async fn connect(
        &self,
    ) -> Result<(tokio_postgres::Client, JoinHandle<()>), tokio_postgres::Error> {
        let mut pg = self.pg.clone();
        match self.password.resolve() {
            Ok(Some(password)) => {
                pg.password(password);
            }
            Ok(None) => {}
            // Connect anyway: the server's authentication error is what the user sees.
            Err(e) => warn!(error = %e, "cannot read the database password file"),
        }
        match &self.tls {
            None => {
                let (client, connection) = pg.connect(NoTls).await?;
                Ok((client, tokio::spawn(drive(connection))))
            }
            Some(tls) => {
                let (client, connection) = pg.connect(tls.clone()).await?;
                Ok((client, tokio::spawn(drive(connection))))
            }
        }
    }

    /// Sends PostgreSQL's cancel request for the statement running on `client`.
    pub async fn cancel(&self, token: &tokio_postgres::CancelToken) {
        let result = match &self.tls {
            None => token.cancel_query(NoTls).await,
            Some(tls) => token.cancel_query(tls.clone()).await,
        };
        if let Err(e) = result {
            debug!(error = %e, "cancel request failed");
        }
    }
}

async fn drive<F: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(connection: F) {
    if let Err(e) = connection.await {
        debug!(error = %e, "server connection ended");
    }
}

/// deadpool's connector, reading the current [`Upstream`] on every connect.
struct UpstreamConnector {
    upstream: Arc<ArcSwap<Upstream>>,
    counters: Arc<Counters>,
}

impl deadpool_postgres::Connect for UpstreamConnector {
    fn connect(
        &self,
        _: &tokio_postgres::Config,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<
                        (tokio_postgres::Client, JoinHandle<()>),
                        tokio_postgres::Error,
                    >,
                > + Send
                + '_,
        >,
    > {
        Box::pin(async move {
            let upstream = self.upstream.load_full();
            let result = upstream.connect().await;
            let reachable = result.is_ok();
            if self.counters.reachable.swap(reachable, Ordering::Relaxed) != reachable {
                if reachable {
                    info!("database reachable again");
                } else if let Err(e) = &result {
                    warn!(error = %e, "cannot open a server connection");
                }
            }
            result
        })
    }
}

impl TenantPool {
    /// Builds the pool and starts keeping its minimum warm.
    pub fn new(spec: TenantSpec, metrics: TenantMetrics) -> Result<Arc<Self>, String> {
        let upstream = Arc::new(ArcSwap::from_pointee(Upstream::new(
            &spec.target,
            spec.pool.statement_timeout,
        )?));
        let counters = Arc::new(Counters {
            reachable: AtomicBool::new(true),
            ..Counters::default()
        });
        let manager = Manager::from_connect(
            tokio_postgres::Config::new(),
            UpstreamConnector {
                upstream: upstream.clone(),
                counters: counters.clone(),
            },
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(spec.pool.max_connections as usize)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| e.to_string())?;
        let tenant = Arc::new(TenantPool {
            id: spec.id.clone(),
            spec: ArcSwap::from_pointee(spec),
            upstream,
            pool,
            counters,
            metrics,
            maintenance: std::sync::Mutex::new(None),
        });
        let weak = Arc::downgrade(&tenant);
        let task = tokio::spawn(async move {
            loop {
                match weak.upgrade() {
                    Some(tenant) => tenant.maintain().await,
                    None => return,
                }
                tokio::time::sleep(MAINTENANCE_TICK).await;
            }
        });
        *tenant.maintenance.lock().expect("poisoned") = Some(task);
        Ok(tenant)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The settings in force now.
    pub fn spec(&self) -> Arc<TenantSpec> {
        self.spec.load_full()
    }

    pub fn metrics(&self) -> &TenantMetrics {
        &self.metrics
    }

    /// Where new connections go; also sends cancel requests.
    pub fn upstream(&self) -> Arc<Upstream> {
        self.upstream.load_full()
    }

    /// Applies changed settings in place: resizes, and if the connection
    /// target or credentials changed, new connections use them at once while
    /// old ones are replaced as they come back idle.
    pub fn update(&self, spec: TenantSpec) -> Result<(), String> {
        let old = self.spec.load_full();
        if old.target != spec.target || old.pool.statement_timeout != spec.pool.statement_timeout {
            self.upstream.store(Arc::new(Upstream::new(
                &spec.target,
                spec.pool.statement_timeout,
            )?));
            info!(tenant = %self.id, "connection settings changed; replacing connections gradually");
        }
        if old.pool.max_connections != spec.pool.max_connections {
            self.pool.resize(spec.pool.max_connections as usize);
        }
        self.spec.store(Arc::new(spec));
        Ok(())
    }

    /// Stops handing out connections; the pool closes when the last lease ends.
    pub fn start_draining(&self) {
        self.counters.draining.store(true, Ordering::Relaxed);
    }

    /// Closes the pool: idle connections close now, others when returned.
    pub fn close(&self) {
        self.start_draining();
        self.pool.close();
    }

    pub fn is_draining(&self) -> bool {
        self.counters.draining.load(Ordering::Relaxed)
    }

    /// Takes one connection, waiting at most `budget` (the acquire timeout or
    /// what is left of the caller's deadline, whichever is shorter). The
    /// connection is discarded unless it is given back explicitly.
    pub async fn acquire(&self, budget: Duration) -> Result<Checkout, AcquireError> {
        let started = Instant::now();
        let result = self.acquire_inner(budget).await;
        match &result {
            Ok(_) => {
                self.counters.acquires.fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .acquire_duration
                    .observe(started.elapsed().as_secs_f64());
            }
            Err(e) => {
                if matches!(e, AcquireError::Timeout { .. }) {
                    self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                }
                self.metrics.acquire_failure(e.metric_label());
            }
        }
        result.map(Checkout::new)
    }

    async fn acquire_inner(&self, budget: Duration) -> Result<Object, AcquireError> {
        if self.is_draining() {
            return Err(AcquireError::Removed {
                tenant: self.id.clone(),
            });
        }
        let spec = self.spec.load();
        // Join the queue only while it has room (or a connection is idle), so
        // refused callers never count as waiting.
        let max_waiting = spec.pool.max_waiting as usize;
        let mut waiting = self.counters.waiting.load(Ordering::Relaxed);
        loop {
            if waiting >= max_waiting && self.pool.status().available == 0 {
                return Err(AcquireError::QueueFull {
                    tenant: self.id.clone(),
                    waiting,
                });
            }
            match self.counters.waiting.compare_exchange_weak(
                waiting,
                waiting + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => waiting = now,
            }
        }
        let _waiting = scopeguard(|| {
            self.counters.waiting.fetch_sub(1, Ordering::Relaxed);
        });
        let max = spec.pool.max_connections;
        drop(spec);
        let started = Instant::now();
        match tokio::time::timeout(budget, self.pool.get()).await {
            // A connect that hangs (an unroutable database) is an outage, not contention.
            Err(_) if !self.counters.reachable.load(Ordering::Relaxed) => {
                Err(AcquireError::Unavailable {
                    tenant: self.id.clone(),
                    reason: "no server connection could be opened in time".into(),
                })
            }
            Err(_) | Ok(Err(PoolError::Timeout(deadpool_postgres::TimeoutType::Wait))) => {
                Err(AcquireError::Timeout {
                    tenant: self.id.clone(),
                    waited_ms: started.elapsed().as_millis(),
                    max,
                })
            }
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(PoolError::Closed)) => Err(AcquireError::Removed {
                tenant: self.id.clone(),
            }),
            Ok(Err(PoolError::Backend(e))) => Err(AcquireError::Unavailable {
                tenant: self.id.clone(),
                reason: e.to_string(),
            }),
            Ok(Err(e)) => Err(AcquireError::Unavailable {
                tenant: self.id.clone(),
                reason: e.to_string(),
            }),
        }
    }

    /// True when a connection must not go back to the pool: the server
    /// closed it, or it was opened with settings that have since changed.
    pub fn is_stale(&self, conn: &Object) -> bool {
        conn.is_closed() || Object::metrics(conn).created < self.upstream.load().since
    }

    /// Leases held on this pool now.
    pub fn lease_count(&self) -> usize {
        self.counters.leases.load(Ordering::Relaxed)
    }

    /// Counts a lease granted (`true`) or ended (`false`).
    pub(crate) fn count_lease(&self, granted: bool) {
        if granted {
            self.counters.leases.fetch_add(1, Ordering::Relaxed);
        } else {
            self.counters.leases.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Counts a lease reclaimed because its TTL passed.
    pub fn count_expired(&self) {
        self.counters.expired.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stats(&self) -> PoolStats {
        let status = self.pool.status();
        let spec = self.spec.load();
        let total = status.size as u32;
        let idle = status.available as u32;
        PoolStats {
            active: total.saturating_sub(idle),
            idle,
            total,
            max: spec.pool.max_connections,
            min: spec.pool.min_connections,
            waiting: self.counters.waiting.load(Ordering::Relaxed) as u32,
            acquires_total: self.counters.acquires.load(Ordering::Relaxed),
            acquire_timeouts_total: self.counters.timeouts.load(Ordering::Relaxed),
            expired_leases_total: self.counters.expired.load(Ordering::Relaxed),
            database_reachable: self.counters.reachable.load(Ordering::Relaxed),
        }
    }

    /// Closes idle connections past their lifetime, idle time (down to the
    /// minimum) or settings, then opens connections up to the minimum.
    async fn maintain(&self) {
        let spec = self.spec.load_full();
        let since = self.upstream.load().since;
        let status = self.pool.status();
        let mut removable_idle = status
            .size
            .saturating_sub(spec.pool.min_connections as usize);
        let mut replace_stale = 1;
        let removed = self.pool.retain(|client, metrics| {
            if client.is_closed() || metrics.age() > spec.pool.max_lifetime {
                return false;
            }
            if metrics.created < since && replace_stale > 0 {
                replace_stale -= 1;
                return false;
            }
            if metrics.last_used() > spec.pool.max_idle_time && removable_idle > 0 {
                removable_idle -= 1;
                return false;
            }
            true
        });
        if !removed.removed.is_empty() {
            debug!(tenant = %self.id, closed = removed.removed.len(), "closed idle connections");
        }
        if self.is_draining() {
            return;
        }
        self.warm(spec.pool.min_connections as usize).await;
    }

    /// Opens connections until the pool holds `min`, without waiting for
    /// permits (a busy pool is already warm).
    async fn warm(&self, min: usize) {
        let mut held = Vec::new();
        let no_wait = deadpool_postgres::Timeouts {
            wait: Some(Duration::ZERO),
            create: Some(CONNECT_TIMEOUT),
            recycle: Some(Duration::from_secs(5)),
        };
        while self.pool.status().size < min {
            match self.pool.timeout_get(&no_wait).await {
                Ok(conn) => held.push(conn),
                Err(_) => break,
            }
        }
    }
}

impl Drop for TenantPool {
    fn drop(&mut self) {
        if let Some(task) = self.maintenance.lock().ok().and_then(|mut t| t.take()) {
            task.abort();
        }
        self.pool.close();
        self.metrics.remove();
    }
}

/// Runs `f` when dropped.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
