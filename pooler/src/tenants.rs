//! The tenants this pooler serves, and how a new configuration is applied.
//!
//! The map of tenant pools sits in an `ArcSwap`: the lease path reads it
//! without locking, and an apply builds the new map beside the old one, then
//! swaps it whole. Unchanged tenants keep their pool object (same connections,
//! same counters); changed ones are updated in place, and open leases of
//! identities their allowedClients no longer admit are revoked; removed ones
//! stop taking new leases and drain. A tenant that fails validation, or whose
//! pool cannot be built, is rejected alone and keeps its previous
//! configuration: one bad tenant never blocks the others.
//!
//! The two sources differ. A push ([`Tenants::apply_push`], the admin API) is
//! the whole desired configuration of this pod. The `--config` file
//! ([`Tenants::apply`]) is a bootstrap, never a rollback: a file whose
//! generation is below the one applied is ignored, and a file never removes
//! a tenant that a push gave this pod.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tracing::{info, warn};

use teresa_proto::admin::{TenantApplyResult, TenantResult};

use crate::config::{ConfigError, TenantSpec, ValidConfig};
use crate::lease::{LeaseTable, Outcome};
use crate::metrics::Metrics;
use crate::pool::{PoolStats, TenantPool};
use crate::upstream_tls;

/// What an apply did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    /// Whether anything changed.
    pub changed: bool,
    /// A file older than the applied generation, ignored as a whole.
    pub ignored: bool,
    /// One result per tenant given, then one per tenant removed.
    pub tenants: Vec<TenantResult>,
}

impl ApplyReport {
    /// The tenants rejected, with their reasons.
    pub fn rejected(&self) -> impl Iterator<Item = &TenantResult> {
        self.tenants
            .iter()
            .filter(|t| t.result() == TenantApplyResult::Rejected)
    }
}

/// Where a configuration comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The admin API: the whole desired configuration of this pod.
    Push,
    /// The `--config` file: a bootstrap.
    File,
}

fn result(id: &str, result: TenantApplyResult, reason: String) -> TenantResult {
    TenantResult {
        tenant_id: id.to_owned(),
        result: result as i32,
        reason,
    }
}

/// The version in force and when it was applied.
#[derive(Debug, Clone)]
pub struct AppliedVersion {
    pub version: String,
    pub at: SystemTime,
}

/// Every tenant pool of the pooler.
pub struct Tenants {
    map: ArcSwap<HashMap<String, Arc<TenantPool>>>,
    /// Pools made on demand from a client's `dsn` (`--allow-client-dsn`).
    dsn_pools: Mutex<HashMap<(String, String), Arc<TenantPool>>>,
    /// Removed tenants whose leases are still draining.
    draining: Arc<Mutex<Vec<Arc<TenantPool>>>>,
    applied: Mutex<Option<AppliedVersion>>,
    /// Highest snapshot generation applied, and which tenants a push gave.
    generation: Mutex<(u64, std::collections::HashSet<String>)>,
    apply_lock: tokio::sync::Mutex<()>,
    metrics: Metrics,
    leases: Arc<LeaseTable>,
    drain_timeout: Duration,
}

impl Tenants {
    pub fn new(metrics: Metrics, leases: Arc<LeaseTable>, drain_timeout: Duration) -> Self {
        Tenants {
            map: ArcSwap::from_pointee(HashMap::new()),
            dsn_pools: Mutex::new(HashMap::new()),
            draining: Arc::new(Mutex::new(Vec::new())),
            applied: Mutex::new(None),
            generation: Mutex::new((0, Default::default())),
            apply_lock: tokio::sync::Mutex::new(()),
            metrics,
            leases,
            drain_timeout,
        }
    }

    /// The tenant's pool, if configured and not being removed.
    pub fn get(&self, id: &str) -> Option<Arc<TenantPool>> {
        self.map.load().get(id).cloned()
    }

    /// Every configured tenant, in id order.
    pub fn all(&self) -> Vec<Arc<TenantPool>> {
        let mut all: Vec<_> = self.map.load().values().cloned().collect();
        all.sort_by(|a, b| a.id().cmp(b.id()));
        all
    }

    /// Every pool with live connections: configured, on-demand and draining.
    pub fn every_pool(&self) -> Vec<Arc<TenantPool>> {
        let mut pools = self.all();
        pools.extend(self.dsn_pools.lock().expect("poisoned").values().cloned());
        pools.extend(self.draining.lock().expect("poisoned").iter().cloned());
        pools
    }

    pub fn applied(&self) -> Option<AppliedVersion> {
        self.applied.lock().expect("poisoned").clone()
    }

    /// The on-demand pool for `tenant` + `dsn`, made on first use.
    pub fn dsn_pool(&self, tenant: &str, dsn: &str) -> Result<Arc<TenantPool>, String> {
        let key = (tenant.to_owned(), dsn.to_owned());
        if let Some(pool) = self.dsn_pools.lock().expect("poisoned").get(&key) {
            return Ok(pool.clone());
        }
        let spec = crate::config::spec_from_dsn(tenant, dsn)?;
        let pool = TenantPool::new(spec, self.metrics.tenant(tenant))?;
        let mut pools = self.dsn_pools.lock().expect("poisoned");
        Ok(pools.entry(key).or_insert(pool).clone())
    }

    /// Sums the stats of a tenant's on-demand pools, if it has any.
    pub fn dsn_stats(&self, tenant: &str) -> Option<PoolStats> {
        let pools = self.dsn_pools.lock().expect("poisoned");
        let mut matching = pools
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|(_, p)| p.stats());
        let first = matching.next()?;
        Some(matching.fold(first, |a, b| PoolStats {
            active: a.active + b.active,
            idle: a.idle + b.idle,
            total: a.total + b.total,
            max: a.max + b.max,
            min: a.min + b.min,
            waiting: a.waiting + b.waiting,
            acquires_total: a.acquires_total + b.acquires_total,
            acquire_timeouts_total: a.acquire_timeouts_total + b.acquire_timeouts_total,
            expired_leases_total: a.expired_leases_total + b.expired_leases_total,
            database_reachable: a.database_reachable && b.database_reachable,
        }))
    }

    /// Applies the `--config` file: ignored when its generation is below the
    /// one applied; otherwise its tenants are applied and tenants a push gave
    /// this pod stay (only tenants of an earlier file are removed).
    pub async fn apply(&self, config: ValidConfig) -> Result<ApplyReport, ConfigError> {
        Ok(self.apply_from(config, Source::File).await)
    }

    /// Applies a push: the whole configuration of this pod.
    pub async fn apply_push(&self, config: ValidConfig) -> ApplyReport {
        self.apply_from(config, Source::Push).await
    }

    async fn apply_from(&self, config: ValidConfig, source: Source) -> ApplyReport {
        let _one_at_a_time = self.apply_lock.lock().await;
        let (applied_generation, pushed) = self.generation.lock().expect("poisoned").clone();
        if source == Source::File && config.generation < applied_generation {
            info!(
                file_generation = config.generation,
                applied_generation, "config file is older than the configuration applied; ignored"
            );
            self.metrics.config_applied("ignored");
            return ApplyReport {
                changed: false,
                ignored: true,
                tenants: Vec::new(),
            };
        }
        let previous = self.applied();
        let old = self.map.load_full();
        let mut results = Vec::new();
        if config.rejected.is_empty()
            && previous
                .as_ref()
                .is_some_and(|p| p.version == config.version)
        {
            self.metrics.config_applied("unchanged");
            for spec in &config.tenants {
                results.push(result(
                    &spec.id,
                    TenantApplyResult::Unchanged,
                    String::new(),
                ));
            }
            return ApplyReport {
                changed: false,
                ignored: false,
                tenants: results,
            };
        }

        // Build everything that can fail before touching anything live; a
        // tenant that fails is rejected and keeps what it had.
        let mut failed: HashMap<String, String> = HashMap::new();
        let mut new_pools = HashMap::new();
        for spec in &config.tenants {
            match old.get(&spec.id) {
                // Only a changed target builds a new connector on update.
                Some(pool) if pool.spec().target != spec.target => {
                    if let Err(e) = upstream_tls::connector(&spec.target) {
                        failed.insert(spec.id.clone(), format!("tenant {}: {e}", spec.id));
                    }
                }
                Some(_) => {}
                None => match TenantPool::new(spec.clone(), self.metrics.tenant(&spec.id)) {
                    Ok(pool) => {
                        new_pools.insert(spec.id.clone(), pool);
                    }
                    Err(e) => {
                        failed.insert(spec.id.clone(), format!("tenant {}: {e}", spec.id));
                    }
                },
            }
        }

        let mut next = HashMap::with_capacity(config.tenants.len());
        let (mut added, mut changed) = (Vec::new(), Vec::new());
        let mut access_changed = Vec::new();
        let mut given = std::collections::HashSet::new();
        for spec in config.tenants {
            let id = spec.id.clone();
            given.insert(id.clone());
            if let Some(reason) = failed.remove(&id) {
                results.push(result(&id, TenantApplyResult::Rejected, reason));
                if let Some(pool) = old.get(&id) {
                    next.insert(id, pool.clone());
                }
                continue;
            }
            match old.get(&id) {
                Some(pool) => {
                    if *pool.spec() != spec {
                        if pool.spec().allowed_clients != spec.allowed_clients {
                            access_changed.push(pool.clone());
                        }
                        update_in_place(pool, spec);
                        changed.push(id.clone());
                        results.push(result(&id, TenantApplyResult::Applied, String::new()));
                    } else {
                        results.push(result(&id, TenantApplyResult::Unchanged, String::new()));
                    }
                    next.insert(id, pool.clone());
                }
                None => {
                    let pool = new_pools.remove(&id).expect("built above");
                    added.push(id.clone());
                    results.push(result(&id, TenantApplyResult::Applied, String::new()));
                    next.insert(id, pool);
                }
            }
        }
        // Rejected by validation: keep what they had.
        for rejected in &config.rejected {
            given.insert(rejected.id.clone());
            results.push(result(
                &rejected.id,
                TenantApplyResult::Rejected,
                rejected.problems.join("; "),
            ));
            if let Some(pool) = old.get(&rejected.id) {
                next.entry(rejected.id.clone())
                    .or_insert_with(|| pool.clone());
            }
        }
        // A file never removes what a push gave this pod.
        if source == Source::File {
            for id in &pushed {
                if let (false, Some(pool)) = (next.contains_key(id), old.get(id)) {
                    next.insert(id.clone(), pool.clone());
                }
            }
        }
        let mut removed: Vec<String> = old
            .keys()
            .filter(|id| !next.contains_key(*id))
            .cloned()
            .collect();
        removed.sort();
        for id in &removed {
            results.push(result(id, TenantApplyResult::Removed, String::new()));
        }
        let any_change = !added.is_empty()
            || !changed.is_empty()
            || !removed.is_empty()
            || previous
                .as_ref()
                .is_none_or(|p| p.version != config.version);
        self.map.store(Arc::new(next));
        for pool in &access_changed {
            crate::access::revoke_disallowed(&self.leases, pool).await;
        }
        for id in &removed {
            if let Some(pool) = old.get(id) {
                self.drain_removed(pool.clone());
            }
        }
        {
            let mut generation = self.generation.lock().expect("poisoned");
            generation.0 = generation.0.max(config.generation);
            match source {
                Source::Push => generation.1 = given,
                Source::File => generation.1.retain(|id| !removed.contains(id)),
            }
        }
        self.metrics.set_config_version(
            previous.as_ref().map_or("", |p| &p.version),
            &config.version,
        );
        let rejected: Vec<&str> = results
            .iter()
            .filter(|r| r.result() == TenantApplyResult::Rejected)
            .map(|r| r.tenant_id.as_str())
            .collect();
        self.metrics.config_applied(if rejected.is_empty() {
            "applied"
        } else {
            "partial"
        });
        *self.applied.lock().expect("poisoned") = Some(AppliedVersion {
            version: config.version.clone(),
            at: SystemTime::now(),
        });
        added.sort();
        changed.sort();
        info!(
            version = %config.version,
            generation = config.generation,
            added = ?added,
            changed = ?changed,
            removed = ?removed,
            rejected = ?rejected,
            "configuration applied"
        );
        ApplyReport {
            changed: any_change,
            ignored: false,
            tenants: results,
        }
    }

    /// A removed tenant: no new leases; open ones continue until released or
    /// the drain timeout, then are revoked; then its pool closes.
    fn drain_removed(&self, pool: Arc<TenantPool>) {
        pool.start_draining();
        self.draining.lock().expect("poisoned").push(pool.clone());
        let leases = self.leases.clone();
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        let draining = self.draining.clone();
        tokio::spawn(async move {
            while tokio::time::Instant::now() < deadline && pool.lease_count() > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let left = leases.select(|l| Arc::ptr_eq(&l.tenant, &pool));
            if !left.is_empty() {
                warn!(tenant = %pool.id(), leases = left.len(), "drain deadline passed; revoking leases of the removed tenant");
            }
            leases.end_all(left, Outcome::Revoked).await;
            draining
                .lock()
                .expect("poisoned")
                .retain(|p| !Arc::ptr_eq(p, &pool));
            info!(tenant = %pool.id(), "removed tenant drained; pool closed");
        });
    }

    /// Closes every pool (the end of a drain): idle connections close now,
    /// and nothing new is handed out.
    pub fn close_all(&self) {
        for pool in self.every_pool() {
            pool.close();
        }
        self.map.store(Arc::new(HashMap::new()));
        self.dsn_pools.lock().expect("poisoned").clear();
        self.draining.lock().expect("poisoned").clear();
    }

    /// Revokes every lease of every tenant (end of a drain).
    pub async fn revoke_all(&self) {
        let all = self.leases.select(|_| true);
        self.leases.end_all(all, Outcome::Revoked).await;
    }
}

fn update_in_place(pool: &TenantPool, spec: TenantSpec) {
    let id = spec.id.clone();
    if let Err(e) = pool.update(spec) {
        // Checked before the swap; only a file that vanished since can fail.
        warn!(tenant = %id, error = %e, "cannot update the tenant's connection settings");
    }
}
