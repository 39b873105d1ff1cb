//! Leases: a real server connection handed to one client identity until it
//! releases it or its TTL passes. The [`LeaseTable`] is where a lease is
//! created, found, renewed and ended; ending one always resets the session
//! (see [`crate::session`]) before the connection goes back to its pool, or
//! discards the connection. The end runs in a task of its own, so a caller
//! that goes away half-way (a `ReleaseConnection` past its deadline) cannot
//! cut it short; a lease dropped while it still holds its connection
//! discards that connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Mutex as AsyncMutex;
use tracing::debug;

use crate::pool::TenantPool;
use crate::session::Checkout;

/// How often the reaper looks for expired leases.
const REAP_INTERVAL: Duration = Duration::from_millis(200);
/// How long ended lease ids are remembered, to answer their later use clearly.
const REMEMBER_ENDED: Duration = Duration::from_secs(600);
const REMEMBER_ENDED_MAX: usize = 100_000;

/// A lease id: 128 random bits, shown as 32 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseId(u128);

impl LeaseId {
    fn random() -> Self {
        LeaseId(rand::random())
    }

    /// Parses the hex form; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != 32 {
            return None;
        }
        u128::from_str_radix(text, 16).ok().map(LeaseId)
    }
}

impl std::fmt::Display for LeaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// How a lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The client released it.
    Released,
    /// Its TTL passed without KeepAlive.
    Expired,
    /// The pooler took it back (drain deadline, tenant removed).
    Revoked,
    /// The tenant's allowedClients no longer admit its owner.
    Disallowed,
    /// Its server connection was closed by the server or the network.
    Lost,
}

impl Outcome {
    /// The `outcome` label of `teresa_leases_total`.
    pub fn metric_label(self) -> &'static str {
        match self {
            Outcome::Released => "released",
            Outcome::Expired => "expired",
            // The metric names fix three outcomes; a lost connection is a revocation.
            Outcome::Revoked | Outcome::Disallowed | Outcome::Lost => "revoked",
        }
    }
}

/// Why a lease id could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("connection_id is not a lease id (32 hex digits)")]
    Malformed,
    #[error("lease {0} does not exist")]
    NotFound(LeaseId),
    #[error("lease {0} was already released")]
    Released(LeaseId),
    #[error(
        "lease {0} expired (its TTL passed without KeepAlive); its open transaction was rolled back. Take a new lease"
    )]
    Expired(LeaseId),
    #[error(
        "lease {0} was revoked by the pooler (drain or tenant removal); its open transaction was rolled back. Take a new lease"
    )]
    Revoked(LeaseId),
    #[error(
        "lease {0} was revoked: identity no longer allowed by allowedClients (the tenant's list changed); its open transaction was rolled back"
    )]
    Disallowed(LeaseId),
    #[error(
        "lease {0} lost its server connection (PostgreSQL closed it: restart, failover or pg_terminate_backend), which rolled back its open transaction. Take a new lease"
    )]
    Lost(LeaseId),
    #[error("lease {0} belongs to another client identity")]
    Foreign(LeaseId),
    #[error(
        "client {identity:?} already holds {held} leases on tenant {tenant:?} (leases.maxPerClient)"
    )]
    TooMany {
        tenant: String,
        identity: String,
        held: u32,
    },
}

/// One lease. The connection sits behind an async mutex: one statement at a
/// time runs on it, and ending the lease waits for the running one.
pub struct Lease {
    pub id: LeaseId,
    pub tenant: Arc<TenantPool>,
    pub owner: String,
    ttl_ms: AtomicU64,
    expires_ms: AtomicU64,
    /// What the lessee did to the session, for the reset on return.
    pub session: SessionMarks,
    conn: Arc<AsyncMutex<Option<Checkout>>>,
    cancel: tokio_postgres::CancelToken,
}

/// Flags set as statements run on a connection, read by the reset.
#[derive(Default)]
pub struct SessionMarks(AtomicU8);

impl SessionMarks {
    pub const USED: u8 = 1;

    pub fn mark(&self, flags: u8) {
        self.0.fetch_or(flags, Ordering::Relaxed);
    }

    pub fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Lease {
    /// The lease's connection, locked for one statement. `None` inside means
    /// the lease is ending.
    pub async fn lock_conn(&self) -> tokio::sync::OwnedMutexGuard<Option<Checkout>> {
        self.conn.clone().lock_owned().await
    }

    pub fn cancel_token(&self) -> &tokio_postgres::CancelToken {
        &self.cancel
    }

    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.load(Ordering::Relaxed))
    }

    /// Wall-clock expiry, for clients.
    pub fn expires_at(&self, clock: &Clock) -> SystemTime {
        clock.wall(self.expires_ms.load(Ordering::Relaxed))
    }

    fn renew(&self, clock: &Clock, ttl: Duration) {
        self.ttl_ms.store(ttl.as_millis() as u64, Ordering::Relaxed);
        self.expires_ms
            .store(clock.now_ms() + ttl.as_millis() as u64, Ordering::Relaxed);
    }
}

/// The end of a lease, after it left the table: cancels the statement still
/// running on it unless the client released it (a release waits for it),
/// then resets and returns the connection, or discards it. Aborted half-way
/// (the runtime shutting down), the [`Checkout`] discards the connection.
async fn finish(lease: Arc<Lease>, outcome: Outcome) {
    if outcome != Outcome::Released && lease.conn.try_lock().is_err() {
        // A statement is running on a lease the client no longer owns.
        lease.tenant.upstream().cancel(&lease.cancel).await;
    }
    let conn = lease.conn.lock().await.take();
    if let Some(conn) = conn {
        let used = lease.session.get() & SessionMarks::USED != 0;
        conn.give_back(&lease.tenant, used).await;
    }
    if outcome == Outcome::Expired {
        lease.tenant.count_expired();
    }
    lease.tenant.metrics().lease_ended(outcome.metric_label());
    debug!(tenant = %lease.tenant.id(), lease = %lease.id, outcome = outcome.metric_label(), "lease ended");
}

/// Monotonic milliseconds since the table was made, and their wall-clock form.
pub struct Clock {
    start: Instant,
    start_wall: SystemTime,
}

impl Clock {
    fn new() -> Self {
        Clock {
            start: Instant::now(),
            start_wall: SystemTime::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn wall(&self, ms: u64) -> SystemTime {
        self.start_wall + Duration::from_millis(ms)
    }
}

/// Every live lease of the pooler, and the recently ended ones.
pub struct LeaseTable {
    clock: Clock,
    live: Mutex<HashMap<LeaseId, Arc<Lease>>>,
    ended: Mutex<EndedIds>,
}

/// Recently ended lease ids in two generations: lookups see both, and when
/// the current one is full or old the previous is dropped whole, so
/// remembering never scans.
#[derive(Default)]
struct EndedIds {
    current: HashMap<LeaseId, Outcome>,
    previous: HashMap<LeaseId, Outcome>,
    since: Option<Instant>,
}

impl EndedIds {
    fn get(&self, id: &LeaseId) -> Option<Outcome> {
        self.current
            .get(id)
            .or_else(|| self.previous.get(id))
            .copied()
    }

    fn insert(&mut self, id: LeaseId, outcome: Outcome) {
        let since = *self.since.get_or_insert_with(Instant::now);
        if self.current.len() >= REMEMBER_ENDED_MAX / 2 || since.elapsed() >= REMEMBER_ENDED / 2 {
            self.previous = std::mem::take(&mut self.current);
            self.since = Some(Instant::now());
        }
        self.current.insert(id, outcome);
    }
}

impl Default for LeaseTable {
    fn default() -> Self {
        Self::new()
    }
}

impl LeaseTable {
    pub fn new() -> Self {
        LeaseTable {
            clock: Clock::new(),
            live: Mutex::new(HashMap::new()),
            ended: Mutex::new(EndedIds::default()),
        }
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Creates a lease on `conn` for `owner`, enforcing `leases.maxPerClient`.
    pub fn grant(
        &self,
        tenant: Arc<TenantPool>,
        owner: &str,
        conn: Checkout,
        ttl: Duration,
    ) -> Result<Arc<Lease>, Box<(LeaseError, Checkout)>> {
        let max_per_client = tenant.spec().leases.max_per_client;
        let cancel = conn.cancel_token();
        let lease = Arc::new(Lease {
            id: LeaseId::random(),
            tenant,
            owner: owner.to_owned(),
            ttl_ms: AtomicU64::new(0),
            expires_ms: AtomicU64::new(0),
            session: SessionMarks::default(),
            conn: Arc::new(AsyncMutex::new(Some(conn))),
            cancel,
        });
        lease.renew(&self.clock, ttl);
        let mut live = self.live.lock().expect("lease table poisoned");
        if max_per_client > 0 {
            let held = live
                .values()
                .filter(|l| l.owner == owner && Arc::ptr_eq(&l.tenant, &lease.tenant))
                .count() as u32;
            if held >= max_per_client {
                drop(live);
                let conn = lease
                    .conn
                    .try_lock()
                    .ok()
                    .and_then(|mut c| c.take())
                    .expect("a new lease's connection is unshared");
                return Err(Box::new((
                    LeaseError::TooMany {
                        tenant: lease.tenant.id().to_owned(),
                        identity: owner.to_owned(),
                        held,
                    },
                    conn,
                )));
            }
        }
        live.insert(lease.id, lease.clone());
        drop(live);
        lease.tenant.count_lease(true);
        debug!(tenant = %lease.tenant.id(), lease = %lease.id, owner = %owner, "lease granted");
        Ok(lease)
    }

    /// Finds a live lease for `caller`.
    pub fn get(&self, id: &str, caller: &str) -> Result<Arc<Lease>, LeaseError> {
        let id = LeaseId::parse(id).ok_or(LeaseError::Malformed)?;
        let found = self
            .live
            .lock()
            .expect("lease table poisoned")
            .get(&id)
            .cloned();
        match found {
            Some(lease) if lease.owner == caller => Ok(lease),
            Some(_) => Err(LeaseError::Foreign(id)),
            None => Err(self.ended_error(id)),
        }
    }

    fn ended_error(&self, id: LeaseId) -> LeaseError {
        match self.ended.lock().expect("lease table poisoned").get(&id) {
            Some(Outcome::Released) => LeaseError::Released(id),
            Some(Outcome::Expired) => LeaseError::Expired(id),
            Some(Outcome::Revoked) => LeaseError::Revoked(id),
            Some(Outcome::Disallowed) => LeaseError::Disallowed(id),
            Some(Outcome::Lost) => LeaseError::Lost(id),
            None => LeaseError::NotFound(id),
        }
    }

    /// Extends a lease by `ttl` from now.
    pub fn keep_alive(&self, lease: &Lease, ttl: Duration) {
        lease.renew(&self.clock, ttl);
    }

    /// Renews a lease by its own TTL (any use of a lease is a sign of life).
    pub fn touch(&self, lease: &Lease) {
        lease.renew(&self.clock, lease.ttl());
    }

    /// Ends a lease on behalf of `caller`. Releasing a lease already released
    /// succeeds; one that expired or was revoked says so.
    pub async fn release(&self, id: &str, caller: &str) -> Result<(), LeaseError> {
        let lease = match self.get(id, caller) {
            Ok(lease) => lease,
            Err(LeaseError::Released(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.end(&lease, Outcome::Released).await;
        Ok(())
    }

    /// Takes the lease out of the table (once; later calls do nothing), waits
    /// for or cancels its running statement, resets the session and returns
    /// the connection to its pool. Waits for that to finish, but the work runs
    /// in a task of its own: dropping this future does not stop it.
    pub async fn end(&self, lease: &Arc<Lease>, outcome: Outcome) {
        if let Some(task) = self.begin_end(lease, outcome) {
            let _ = task.await;
        }
    }

    /// Takes the lease out of the table and starts the task that ends it;
    /// `None` when it had already ended.
    pub fn begin_end(
        &self,
        lease: &Arc<Lease>,
        outcome: Outcome,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let removed = self
            .live
            .lock()
            .expect("lease table poisoned")
            .remove(&lease.id)
            .is_some();
        if !removed {
            return None;
        }
        lease.tenant.count_lease(false);
        self.remember(lease.id, outcome);
        Some(tokio::spawn(finish(lease.clone(), outcome)))
    }

    fn remember(&self, id: LeaseId, outcome: Outcome) {
        self.ended
            .lock()
            .expect("lease table poisoned")
            .insert(id, outcome);
    }

    /// Leases held now, optionally only those of one tenant.
    pub fn count(&self, tenant: Option<&str>) -> usize {
        let live = self.live.lock().expect("lease table poisoned");
        match tenant {
            None => live.len(),
            Some(t) => live.values().filter(|l| l.tenant.id() == t).count(),
        }
    }

    /// The live leases matching `filter`.
    pub fn select(&self, filter: impl Fn(&Lease) -> bool) -> Vec<Arc<Lease>> {
        self.live
            .lock()
            .expect("lease table poisoned")
            .values()
            .filter(|l| filter(l))
            .cloned()
            .collect()
    }

    /// Ends every lease whose TTL has passed.
    pub async fn reap_expired(self: &Arc<Self>) {
        let now = self.clock.now_ms();
        let expired = self.select(|l| l.expires_ms.load(Ordering::Relaxed) <= now);
        for lease in expired {
            self.begin_end(&lease, Outcome::Expired);
        }
    }

    /// Ends every lease in `leases` at once, and waits until all have ended.
    pub async fn end_all(&self, leases: Vec<Arc<Lease>>, outcome: Outcome) {
        let tasks: Vec<_> = leases
            .iter()
            .filter_map(|lease| self.begin_end(lease, outcome))
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    }

    /// Runs [`Self::reap_expired`] until the returned task is aborted.
    pub fn spawn_reaper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let table = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REAP_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                match table.upgrade() {
                    Some(table) => table.reap_expired().await,
                    None => return,
                }
            }
        })
    }
}
