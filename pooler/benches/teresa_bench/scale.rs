//! Scale figures: applying 1,000 tenants, the pooler idle with 100 tenants,
//! thousands of open leases, and 2,000 concurrent client streams. Each
//! figure except the streams gets a fresh `teresa-pooler` process, so
//! memory figures are not inflated by earlier work.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use teresa_proto::admin::{GetStatusRequest, PoolSettings, PoolerConfig};
use teresa_proto::connectionpool::connection_pool_service_client::ConnectionPoolServiceClient;
use teresa_proto::connectionpool::{ConnectionRelease, ConnectionRequest, StatsRequest};

use crate::load::{self, Probe, Window, histogram};
use crate::procfs;
use crate::report::{Latency, Target};
use crate::scenarios::{Scenario, TeresaWorker};
use crate::servers::{BouncerAuth, Database, PgBouncer, Teresa, TeresaBinary};

/// All scale figures of a run; a figure that could not be measured is `None`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScaleReport {
    pub tenants_applied: Option<TenantsApplied>,
    pub idle_tenants: Option<IdleTenants>,
    /// Leases whose connections go straight to PostgreSQL, as many as its
    /// max_connections leaves room for.
    pub leases_postgres: Option<OpenLeases>,
    /// Leases whose server connections go through a PgBouncer in
    /// transaction mode, so PostgreSQL needs no backend per lease.
    pub leases_pgbouncer: Option<OpenLeases>,
    pub streams: Option<Streams>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TenantsApplied {
    pub tenants: usize,
    /// Wall time of the ApplyConfig call that adds them to an empty pooler.
    pub apply_ms: f64,
    /// The same config applied again (a no-op).
    pub reapply_ms: f64,
    pub rss_empty_kib: u64,
    pub rss_applied_kib: u64,
    /// CPU the idle pooler spends with these tenants, percent of one core.
    pub idle_cpu_percent: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleTenants {
    pub tenants: usize,
    pub min_connections: u32,
    pub server_connections: i64,
    pub rss_kib: u64,
    pub idle_cpu_percent: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct OpenLeases {
    pub upstream: &'static str,
    pub asked: usize,
    pub opened: usize,
    pub open_s: f64,
    pub rss_before_kib: u64,
    pub rss_open_kib: u64,
    pub kib_per_lease: f64,
    /// GetPoolStats of the tenant while they are open, sequential calls.
    pub stats_latency_us: Latency,
    pub release_s: f64,
    pub first_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Streams {
    pub streams: usize,
    pub connections: usize,
    pub seconds: f64,
    pub ops: u64,
    pub errors: u64,
    pub throughput: f64,
    pub latency_us: Latency,
    pub rss_before_kib: u64,
    pub rss_peak_kib: u64,
    pub first_error: Option<String>,
}

/// Percent of one core a process spends over `window` while nothing calls it.
async fn idle_cpu_percent(pid: u32, window: Duration) -> f64 {
    let before = procfs::cpu_seconds(pid);
    tokio::time::sleep(window).await;
    let spent = procfs::cpu_seconds(pid) - before;
    (spent / window.as_secs_f64() * 1000.0).round() / 10.0
}

fn tenant_pool(max: u32, min: u32, waiting: u32) -> PoolSettings {
    PoolSettings {
        max_connections: max,
        min_connections: Some(min),
        acquire_timeout: "60s".to_owned(),
        max_waiting: Some(waiting),
        ..Default::default()
    }
}

/// `count` tenants (min 0) applied through the admin API to an empty pooler.
pub async fn tenants_applied(
    db: &Database,
    binary: &TeresaBinary,
    count: usize,
) -> anyhow::Result<TenantsApplied> {
    let teresa = Teresa::start(binary, None).await?;
    let mut admin = teresa.admin().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_empty_kib = teresa.rss_kib();
    let config = PoolerConfig {
        generation: 0,
        version: format!("bench-{count}"),
        tenants: (0..count)
            .map(|i| {
                db.tenant(
                    &format!("tenant-{i:05}"),
                    db.pg.port(),
                    tenant_pool(20, 0, 128),
                )
            })
            .collect(),
    };
    let started = Instant::now();
    admin.apply_config(config.clone()).await?;
    let apply_ms = started.elapsed().as_secs_f64() * 1000.0;
    let started = Instant::now();
    admin.apply_config(config).await?;
    let reapply_ms = started.elapsed().as_secs_f64() * 1000.0;
    let idle_cpu_percent = idle_cpu_percent(teresa.pid(), Duration::from_secs(5)).await;
    let rss_applied_kib = teresa.rss_kib();
    teresa.stop().await;
    Ok(TenantsApplied {
        tenants: count,
        apply_ms: (apply_ms * 10.0).round() / 10.0,
        reapply_ms: (reapply_ms * 10.0).round() / 10.0,
        rss_empty_kib,
        rss_applied_kib,
        idle_cpu_percent,
    })
}

/// A pooler with `count` tenants holding `min` connections each, idle.
pub async fn idle_tenants(
    db: &Database,
    binary: &TeresaBinary,
    count: usize,
    min: u32,
) -> anyhow::Result<IdleTenants> {
    let teresa = Teresa::start(binary, None).await?;
    let mut admin = teresa.admin().await?;
    let config = PoolerConfig {
        generation: 0,
        version: format!("idle-{count}"),
        tenants: (0..count)
            .map(|i| {
                db.tenant(
                    &format!("tenant-{i:03}"),
                    db.pg.port(),
                    tenant_pool(20, min, 128),
                )
            })
            .collect(),
    };
    admin.apply_config(config).await?;
    let wanted = count as i64 * i64::from(min);
    let started = Instant::now();
    let mut connections = 0;
    while started.elapsed() < Duration::from_secs(60) {
        let status = admin.get_status(GetStatusRequest {}).await?.into_inner();
        connections = status
            .tenants
            .iter()
            .map(|t| i64::from(t.total_connections))
            .sum();
        if connections >= wanted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_cpu_percent = idle_cpu_percent(teresa.pid(), Duration::from_secs(5)).await;
    let rss_kib = teresa.rss_kib();
    teresa.stop().await;
    Ok(IdleTenants {
        tenants: count,
        min_connections: min,
        server_connections: connections,
        rss_kib,
        idle_cpu_percent,
    })
}

/// Server connections PostgreSQL can still accept, keeping a margin.
pub async fn postgres_room(db: &Database) -> anyhow::Result<usize> {
    let client = db.pg.client("postgres").await?;
    let max: i64 = client
        .query_one(
            "SELECT setting::bigint FROM pg_settings WHERE name = 'max_connections'",
            &[],
        )
        .await?
        .get(0);
    let used: i64 = client
        .query_one("SELECT count(*) FROM pg_stat_activity", &[])
        .await?
        .get(0);
    Ok((max - used - 20).max(0) as usize)
}

/// Opens `count` leases on a fresh pooler whose one tenant connects to
/// `port` (PostgreSQL or a PgBouncer), measures, then releases them.
pub async fn open_leases(
    db: &Database,
    binary: &TeresaBinary,
    port: u16,
    upstream: &'static str,
    count: usize,
) -> anyhow::Result<OpenLeases> {
    const TENANT: &str = "leases";
    const CONCURRENCY: usize = 64;
    let max = count.max(1) as u32;
    let teresa = Teresa::start(
        binary,
        Some(vec![db.tenant(TENANT, port, tenant_pool(max, 0, max))]),
    )
    .await?;
    let channels = teresa.channels(4).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before_kib = teresa.rss_kib();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..CONCURRENCY {
        let mut client = ConnectionPoolServiceClient::new(channels[i % channels.len()].clone());
        let next = next.clone();
        tasks.spawn(async move {
            let (mut ids, mut first_error) = (Vec::new(), None);
            while next.fetch_add(1, Ordering::Relaxed) < count {
                match client
                    .get_connection(ConnectionRequest {
                        tenant_id: TENANT.to_owned(),
                        ..Default::default()
                    })
                    .await
                {
                    Ok(r) => ids.push(r.into_inner().connection_id),
                    Err(s) => {
                        first_error.get_or_insert(format!("{:?} {}", s.code(), s.message()));
                    }
                }
            }
            (ids, first_error)
        });
    }
    let (mut ids, mut first_error) = (Vec::with_capacity(count), None);
    while let Some(Ok((mut got, error))) = tasks.join_next().await {
        ids.append(&mut got);
        if first_error.is_none() {
            first_error = error;
        }
    }
    let open_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_open_kib = teresa.rss_kib();

    let mut client = ConnectionPoolServiceClient::new(channels[0].clone());
    let mut hist = histogram();
    for _ in 0..200 {
        let began = Instant::now();
        client
            .get_pool_stats(StatsRequest {
                tenant_id: TENANT.to_owned(),
            })
            .await?;
        hist.saturating_record(began.elapsed().as_nanos() as u64);
    }

    let opened = ids.len();
    let started = Instant::now();
    let ids = Arc::new(std::sync::Mutex::new(ids));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..CONCURRENCY {
        let mut client = ConnectionPoolServiceClient::new(channels[i % channels.len()].clone());
        let ids = ids.clone();
        tasks.spawn(async move {
            loop {
                let Some(id) = ids.lock().expect("not poisoned").pop() else {
                    return;
                };
                let _ = client
                    .release_connection(ConnectionRelease { connection_id: id })
                    .await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let release_s = started.elapsed().as_secs_f64();
    teresa.stop().await;
    let round = |x: f64| (x * 100.0).round() / 100.0;
    Ok(OpenLeases {
        upstream,
        asked: count,
        opened,
        open_s: round(open_s),
        rss_before_kib,
        rss_open_kib,
        kib_per_lease: round(
            rss_open_kib.saturating_sub(rss_before_kib) as f64 / opened.max(1) as f64,
        ),
        stats_latency_us: Latency::of(&hist),
        release_s: round(release_s),
        first_error,
    })
}

/// The 10,000-lease figure through a PgBouncer of its own (trust auth, so
/// opening connections costs no key derivation).
pub async fn open_leases_through_pgbouncer(
    db: &Database,
    binary: &TeresaBinary,
    count: usize,
) -> anyhow::Result<OpenLeases> {
    let bouncer = PgBouncer::start(
        db,
        BouncerAuth::TrustWithPassword(db.password.clone()),
        5,
        count as u32 + 100,
    )
    .await?;
    let result = open_leases(
        db,
        binary,
        bouncer.port,
        "PgBouncer (transaction mode)",
        count,
    )
    .await;
    if result.is_err() {
        eprintln!("  pgbouncer log:\n{}", bouncer.log_tail());
    }
    result
}

/// `streams` concurrent one-shot Execute calls over `connections` HTTP/2
/// connections to the running benchmark pooler.
pub async fn streams(
    teresa: &Teresa,
    db: &Database,
    probe: &Probe,
    streams: usize,
    connections: usize,
    window: Window,
) -> anyhow::Result<Streams> {
    let channels = teresa.channels(connections).await?;
    let workers = (0..streams)
        .map(|i| {
            TeresaWorker::new(
                channels[i % channels.len()].clone(),
                Scenario::TeresaOneshot,
                db.accounts,
                1,
                i,
            )
        })
        .collect();
    let pid = teresa.pid();
    let rss_before_kib = procfs::rss_kib(pid);
    let peak = Arc::new(AtomicUsize::new(rss_before_kib as usize));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(procfs::rss_kib(pid) as usize, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let measured = load::drive(workers, window, probe, None).await;
    sampler.abort();
    Ok(Streams {
        streams,
        connections,
        seconds: measured.seconds,
        ops: measured.ops,
        errors: measured.errors,
        throughput: (measured.ops as f64 / measured.seconds).round(),
        latency_us: Latency::of(&measured.hist),
        rss_before_kib,
        rss_peak_kib: peak.load(Ordering::Relaxed) as u64,
        first_error: if measured.errors > 0 {
            measured.first_error
        } else {
            None
        },
    })
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

impl ScaleReport {
    pub fn targets(&self) -> Vec<Target> {
        let mut targets = Vec::new();
        if let Some(t) = &self.tenants_applied {
            targets.push(Target {
                name: format!("{} tenants applied", t.tenants),
                goal: "< 1 s".to_owned(),
                measured: format!("{:.0} ms", t.apply_ms),
                met: Some(t.apply_ms < 1000.0),
            });
        }
        for leases in [&self.leases_pgbouncer, &self.leases_postgres]
            .into_iter()
            .flatten()
        {
            let projected = leases.rss_before_kib as f64 + leases.kib_per_lease * 10_000.0;
            let measured_10k = leases.opened >= 10_000;
            targets.push(Target {
                name: format!("10,000 open leases RSS (via {})", leases.upstream),
                goal: "< 500 MB".to_owned(),
                measured: if measured_10k {
                    format!("{} with {} leases", mib(leases.rss_open_kib), leases.opened)
                } else {
                    format!(
                        "{} projected from {} leases",
                        mib(projected as u64),
                        leases.opened
                    )
                },
                met: Some(
                    (if measured_10k {
                        leases.rss_open_kib as f64
                    } else {
                        projected
                    }) * 1024.0
                        < 500e6,
                ),
            });
        }
        targets
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        if let Some(t) = &self.tenants_applied {
            let _ = writeln!(
                out,
                "- **{} tenants applied** (min 0) through the admin API to an empty pooler: {:.0} ms (re-applying the same version: {:.1} ms); RSS {} empty, {} with the tenants; idle CPU with them {:.1}% of a core.",
                t.tenants,
                t.apply_ms,
                t.reapply_ms,
                mib(t.rss_empty_kib),
                mib(t.rss_applied_kib),
                t.idle_cpu_percent
            );
        }
        if let Some(t) = &self.idle_tenants {
            let _ = writeln!(
                out,
                "- **Idle with {} tenants** (minConnections {}, {} server connections open): RSS {}, CPU {:.1}% of a core.",
                t.tenants,
                t.min_connections,
                t.server_connections,
                mib(t.rss_kib),
                t.idle_cpu_percent
            );
        }
        for l in [&self.leases_pgbouncer, &self.leases_postgres]
            .into_iter()
            .flatten()
        {
            let _ = writeln!(
                out,
                "- **{} open leases** (asked {}) with server connections via {}: opened in {:.2} s; RSS {} before, {} open ({:.1} KiB per lease); GetPoolStats while open p50 {} µs, p99 {} µs, max {} µs; released in {:.2} s.{}",
                l.opened,
                l.asked,
                l.upstream,
                l.open_s,
                mib(l.rss_before_kib),
                mib(l.rss_open_kib),
                l.kib_per_lease,
                l.stats_latency_us.p50,
                l.stats_latency_us.p99,
                l.stats_latency_us.max,
                l.release_s,
                l.first_error
                    .as_ref()
                    .map(|e| format!(" First error: {e}"))
                    .unwrap_or_default()
            );
        }
        if let Some(s) = &self.streams {
            let _ = writeln!(
                out,
                "- **{} concurrent client streams** (one-shot Execute, {} HTTP/2 connections, {} s): {:.0} ops/s, p50 {} µs, p99 {} µs, p99.9 {} µs, {} errors; RSS {} before, peak {}.{}",
                s.streams,
                s.connections,
                s.seconds,
                s.throughput,
                s.latency_us.p50.round(),
                s.latency_us.p99.round(),
                s.latency_us.p999.round(),
                s.errors,
                mib(s.rss_before_kib),
                mib(s.rss_peak_kib),
                s.first_error
                    .as_ref()
                    .map(|e| format!(" First error: {e}"))
                    .unwrap_or_default()
            );
        }
        out
    }
}
