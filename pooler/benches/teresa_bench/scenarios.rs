//! The scenarios: the same point SELECT of pgbench's `-S` script run
//! straight against PostgreSQL, through PgBouncer, and through Teresa's
//! lease API in each of its shapes.

use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use teresa_proto::connectionpool::connection_pool_service_client::ConnectionPoolServiceClient;
use teresa_proto::connectionpool::{
    ConnectionRelease, ConnectionRequest, ExecuteRequest, Value, execute_response::Kind,
    value::Kind as V,
};
use tokio_postgres::types::Type;
use tonic::transport::Channel;

use crate::load::Worker;

/// pgbench's `-S` statement.
pub const POINT_SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";
/// The tenant every Teresa scenario uses.
pub const TENANT: &str = "bench";

/// Every scenario, in the order a run goes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// tokio-postgres through a deadpool pool of the same size straight to
    /// PostgreSQL, with a cached prepared statement: the ceiling.
    Direct,
    /// The same client through PgBouncer. PgBouncer 1.18 in transaction mode
    /// cannot carry named prepared statements, so it sends the statement
    /// unnamed (Parse/Bind/Execute in one round trip, `query_typed`).
    Pgbouncer,
    /// The `direct` client sending the statement unnamed, as `pgbouncer`
    /// must: isolates PgBouncer's cost from the statement protocol's.
    DirectUnnamed,
    /// `pgbench -S -M prepared` through PgBouncer. Not run by default:
    /// PgBouncer before 1.21 cannot carry named prepared statements in
    /// transaction mode, so with more clients than one its clients abort
    /// ("prepared statement P_0 already exists").
    PgbenchPrepared,
    /// `pgbench -S -M extended` through PgBouncer: the extended protocol
    /// with unnamed statements, what `-M prepared` becomes on PgBouncer 1.18.
    PgbenchExtended,
    /// `pgbench -S -M simple` through PgBouncer.
    PgbenchSimple,
    /// Teresa `Execute` with only `tenant_id`: a connection borrowed for
    /// one statement.
    TeresaOneshot,
    /// GetConnection, Execute on the lease, ReleaseConnection.
    TeresaLeaseCycle,
    /// Each client keeps a lease for many Executes (session style), then
    /// releases it and takes another; the acquire and release are timed
    /// into the first and last Execute of the lease.
    TeresaLeaseHeld,
    /// GetConnection + ReleaseConnection alone, no SQL.
    TeresaGetRelease,
}

impl Scenario {
    /// What a run measures unless told otherwise.
    pub const DEFAULT: [Scenario; 9] = [
        Scenario::Direct,
        Scenario::Pgbouncer,
        Scenario::DirectUnnamed,
        Scenario::PgbenchExtended,
        Scenario::PgbenchSimple,
        Scenario::TeresaOneshot,
        Scenario::TeresaLeaseCycle,
        Scenario::TeresaLeaseHeld,
        Scenario::TeresaGetRelease,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Direct => "direct",
            Scenario::Pgbouncer => "pgbouncer",
            Scenario::DirectUnnamed => "direct-unnamed",
            Scenario::PgbenchPrepared => "pgbench-prepared",
            Scenario::PgbenchExtended => "pgbench-extended",
            Scenario::PgbenchSimple => "pgbench-simple",
            Scenario::TeresaOneshot => "teresa-oneshot",
            Scenario::TeresaLeaseCycle => "teresa-lease-cycle",
            Scenario::TeresaLeaseHeld => "teresa-lease-held",
            Scenario::TeresaGetRelease => "teresa-get-release",
        }
    }

    /// What one operation is, for the report.
    pub fn operation(self) -> &'static str {
        match self {
            Scenario::Direct => "pool get + prepared SELECT",
            Scenario::Pgbouncer | Scenario::DirectUnnamed => "pool get + unnamed SELECT",
            Scenario::PgbenchPrepared | Scenario::PgbenchExtended | Scenario::PgbenchSimple => {
                "pgbench -S transaction"
            }
            Scenario::TeresaOneshot => "Execute (one-shot)",
            Scenario::TeresaLeaseCycle => "GetConnection + Execute + ReleaseConnection",
            Scenario::TeresaLeaseHeld => "Execute on a held lease",
            Scenario::TeresaGetRelease => "GetConnection + ReleaseConnection",
        }
    }

    pub fn is_teresa(self) -> bool {
        matches!(
            self,
            Scenario::TeresaOneshot
                | Scenario::TeresaLeaseCycle
                | Scenario::TeresaLeaseHeld
                | Scenario::TeresaGetRelease
        )
    }
}

fn rng(seed: usize) -> SmallRng {
    SmallRng::seed_from_u64(0x7e7e5a ^ seed as u64)
}

/// A tokio-postgres client behind a deadpool pool (direct or PgBouncer).
pub struct PgWorker {
    pub pool: deadpool_postgres::Pool,
    pub prepared: bool,
    pub accounts: i32,
    pub rng: SmallRng,
}

impl PgWorker {
    pub fn new(pool: deadpool_postgres::Pool, prepared: bool, accounts: i32, seed: usize) -> Self {
        PgWorker {
            pool,
            prepared,
            accounts,
            rng: rng(seed),
        }
    }
}

impl Worker for PgWorker {
    async fn op(&mut self) -> Result<(), String> {
        let aid: i32 = self.rng.random_range(1..=self.accounts);
        let client = self.pool.get().await.map_err(|e| e.to_string())?;
        let rows = if self.prepared {
            let statement = client
                .prepare_cached(POINT_SELECT)
                .await
                .map_err(|e| e.to_string())?;
            client.query(&statement, &[&aid]).await
        } else {
            client
                .query_typed(POINT_SELECT, &[(&aid, Type::INT4)])
                .await
        }
        .map_err(|e| e.to_string())?;
        if rows.len() == 1 {
            Ok(())
        } else {
            Err(format!("expected 1 row, got {}", rows.len()))
        }
    }
}

type LeaseClient = ConnectionPoolServiceClient<Channel>;

/// A lease API client running one of the Teresa scenarios.
pub struct TeresaWorker {
    pub client: LeaseClient,
    pub scenario: Scenario,
    pub accounts: i32,
    pub rng: SmallRng,
    /// `teresa-lease-held`: the lease and how many Executes it has run.
    pub held: Option<(String, u32)>,
    pub executes_per_lease: u32,
}

impl TeresaWorker {
    pub fn new(
        channel: Channel,
        scenario: Scenario,
        accounts: i32,
        executes_per_lease: u32,
        seed: usize,
    ) -> Self {
        TeresaWorker {
            client: ConnectionPoolServiceClient::new(channel),
            scenario,
            accounts,
            rng: rng(seed),
            held: None,
            executes_per_lease: executes_per_lease.max(1),
        }
    }

    async fn lease(&mut self) -> Result<String, String> {
        Ok(self
            .client
            .get_connection(ConnectionRequest {
                tenant_id: TENANT.to_owned(),
                ..Default::default()
            })
            .await
            .map_err(|s| format!("GetConnection: {:?} {}", s.code(), s.message()))?
            .into_inner()
            .connection_id)
    }

    async fn release(&mut self, id: String) -> Result<(), String> {
        let response = self
            .client
            .release_connection(ConnectionRelease { connection_id: id })
            .await
            .map_err(|s| format!("ReleaseConnection: {:?} {}", s.code(), s.message()))?;
        if response.into_inner().success {
            Ok(())
        } else {
            Err("ReleaseConnection: success = false".to_owned())
        }
    }

    /// Runs the point SELECT (on `lease`, else one-shot) and reads the
    /// whole stream: columns, one row, the command tag.
    async fn select(&mut self, lease: Option<&str>) -> Result<(), String> {
        let aid = self.rng.random_range(1..=self.accounts);
        let request = ExecuteRequest {
            connection_id: lease.unwrap_or_default().to_owned(),
            tenant_id: if lease.is_some() {
                String::new()
            } else {
                TENANT.to_owned()
            },
            sql: POINT_SELECT.to_owned(),
            params: vec![Value {
                kind: Some(V::Int64(aid.into())),
            }],
            batch_size: 0,
        };
        let mut stream = self
            .client
            .execute(request)
            .await
            .map_err(|s| format!("Execute: {:?} {}", s.code(), s.message()))?
            .into_inner();
        let (mut rows, mut complete) = (0, false);
        while let Some(message) = stream
            .message()
            .await
            .map_err(|s| format!("Execute stream: {:?} {}", s.code(), s.message()))?
        {
            match message.kind {
                Some(Kind::Rows(batch)) => rows += batch.rows.len(),
                Some(Kind::Complete(_)) => complete = true,
                Some(Kind::Error(e)) => return Err(format!("SQL {}: {}", e.sqlstate, e.message)),
                Some(Kind::Columns(_)) | None => {}
            }
        }
        if complete && rows == 1 {
            Ok(())
        } else {
            Err(format!("Execute: {rows} rows, complete = {complete}"))
        }
    }
}

impl Worker for TeresaWorker {
    async fn op(&mut self) -> Result<(), String> {
        match self.scenario {
            Scenario::TeresaOneshot => self.select(None).await,
            Scenario::TeresaLeaseCycle => {
                let id = self.lease().await?;
                let result = self.select(Some(&id)).await;
                self.release(id).await?;
                result
            }
            Scenario::TeresaGetRelease => {
                let id = self.lease().await?;
                self.release(id).await
            }
            Scenario::TeresaLeaseHeld => {
                let (id, used) = match self.held.take() {
                    Some(held) => held,
                    None => (self.lease().await?, 0),
                };
                let result = self.select(Some(&id)).await;
                if result.is_err() || used + 1 >= self.executes_per_lease {
                    self.release(id).await?;
                } else {
                    self.held = Some((id, used + 1));
                }
                result
            }
            other => Err(format!("{} is not a Teresa scenario", other.name())),
        }
    }

    async fn finish(&mut self) {
        if let Some((id, _)) = self.held.take() {
            let _ = self.release(id).await;
        }
    }
}
