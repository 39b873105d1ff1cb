//! One scenario's world: the cluster (exclusively), the chart rendered into a
//! fresh release namespace with its RBAC applied, a PostgreSQL, the local
//! fleet and the operator replicas, plus the checks every scenario makes.

use std::time::{Duration, Instant};

use tokio::sync::MutexGuard;

use crate::chart::Chart;
use crate::cluster::Cluster;
use crate::database::{Database, TenantDb};
use crate::fleet::{FleetOptions, LocalFleet};
use crate::observe::{TenantPoolView, Tenants};
use crate::operator::{OperatorOptions, OperatorReplica};

/// How long a change may take to show on a loaded 2-core machine before a
/// scenario calls it lost. The timings printed say how long it really took.
pub const CONVERGE: Duration = Duration::from_secs(30);

/// Everything one scenario runs against.
pub struct Scenario {
    /// Scenario name (in timing lines).
    pub name: &'static str,
    /// The operator replicas, in start order.
    pub operators: Vec<OperatorReplica>,
    /// The pooler fleet.
    pub fleet: LocalFleet,
    /// The database server.
    pub db: Database,
    /// The chart, rendered into the release namespace.
    pub chart: Chart,
    /// The cluster.
    pub cluster: Cluster,
    /// The namespace where the scenario's TenantPools live.
    pub apps: Tenants,
    _exclusive: MutexGuard<'static, ()>,
}

impl Scenario {
    /// Sets up the world with `replicas` operator replicas (named `op-0`, ...).
    pub async fn start(
        name: &'static str,
        fleet: FleetOptions,
        replicas: usize,
        operator: OperatorOptions,
    ) -> Self {
        let (cluster, exclusive) = Cluster::connect().await;
        let release = cluster.namespace("rel").await;
        let apps_namespace = cluster.namespace("apps").await;
        let chart = Chart::render(&release);
        chart.apply_rbac(&cluster).await;
        let db = Database::start().await;
        let fleet = LocalFleet::start(&cluster, &chart, fleet).await;
        let mut operators = Vec::new();
        for i in 0..replicas {
            operators.push(
                OperatorReplica::start(
                    &cluster,
                    &chart,
                    &fleet,
                    &format!("op-{i}"),
                    operator.clone(),
                )
                .await,
            );
        }
        let apps = Tenants::new(&cluster, &apps_namespace);
        Self {
            name,
            operators,
            fleet,
            db,
            chart,
            cluster,
            apps,
            _exclusive: exclusive,
        }
    }

    /// A further namespace for TenantPools.
    pub async fn namespace(&self, tag: &str) -> Tenants {
        Tenants::new(&self.cluster, &self.cluster.namespace(tag).await)
    }

    /// A database for `name` and a Secret `<name>-db` holding its credentials in `tenants`.
    pub async fn database_for(&self, tenants: &Tenants, name: &str) -> TenantDb {
        let tenant = self.db.tenant(name).await;
        tenants
            .apply_credentials(&format!("{name}-db"), &tenant)
            .await;
        tenant
    }

    /// Waits until TenantPool `name` is Ready, its generation observed and
    /// `kubectl get tp` shows it synced on every pod.
    pub async fn ready(&self, tenants: &Tenants, name: &str) -> TenantPoolView {
        let pods = self.fleet.len();
        crate::eventually(
            CONVERGE,
            &format!("TenantPool {name} is Ready on {pods} pods"),
            || async move {
                let view = tenants.get(name).await.ok_or("not found")?;
                let row = tenants.row(name).await.ok_or("no table row")?;
                let synced = format!("{pods}/{pods}");
                if view.is(crate::READY)
                    && view.observed_current()
                    && row.get("Synced") == Some(&synced)
                    && row.get("Ready").map(String::as_str) == Some("True")
                {
                    Ok(view)
                } else {
                    Err(format!("{} row={row:?}", view.summary()))
                }
            },
        )
        .await
    }

    /// Waits until every pod's `admin status` satisfies `check` on its tenant
    /// ids; returns how long that took.
    pub async fn on_every_pod(&self, what: &str, check: impl Fn(&[String]) -> bool) -> Duration {
        let started = Instant::now();
        crate::eventually(CONVERGE, what, || async {
            for pod in 0..self.fleet.len() {
                let ids = self.fleet.tenant_ids(pod).await;
                if !check(&ids) {
                    return Err(format!("pod {pod} serves {ids:?}"));
                }
            }
            Ok(())
        })
        .await;
        started.elapsed()
    }

    /// Checks that a client of every pod can lease `tenant_id` and reaches `expect`
    /// (`db_<name>/<name>`).
    pub async fn clients_reach(&self, tenant_id: &str, expect: &str) {
        for pod in 0..self.fleet.len() {
            let mut client = self.fleet.lease_client(pod).await;
            let reached = client
                .lease_and_identify(tenant_id)
                .await
                .unwrap_or_else(|e| panic!("pod {pod}: lease {tenant_id} and run SQL: {e}"));
            assert_eq!(
                reached, expect,
                "pod {pod}: tenant {tenant_id} reached the wrong database"
            );
        }
    }

    /// Prints a timing line for this scenario.
    pub fn timing(&self, what: &str, elapsed: Duration) {
        crate::report_timing(self.name, what, elapsed);
    }
}
