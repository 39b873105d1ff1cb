//! The lease API (`connectionpool.ConnectionPoolService`): checks each call's
//! input and caller, then hands the work to the tenant pools, the lease table
//! and the statement runner. Every error leaves through [`ApiError`].

use std::sync::Arc;
use std::time::Duration;

use teresa_proto::connectionpool::{
    ConnectionRelease, ConnectionRequest, ConnectionResponse, ExecuteRequest, KeepAliveRequest,
    KeepAliveResponse, ReleaseResponse, StatsRequest, StatsResponse,
    connection_pool_service_server::ConnectionPoolService,
};
use tonic::{Request, Response, Status};
use tracing::debug;

use crate::access::{self, Caller};
use crate::error::ApiError;
use crate::execute::{self, DEFAULT_BATCH_ROWS, MAX_BATCH_ROWS, Statement, Target};
use crate::lease::LeaseError;
use crate::pool::{PoolStats, TenantPool};
use crate::state::PoolerState;
use crate::tls::PeerInfo;

/// The lease API over a running pooler's state.
#[derive(Clone)]
pub struct LeaseService {
    state: Arc<PoolerState>,
}

impl LeaseService {
    pub fn new(state: Arc<PoolerState>) -> Self {
        LeaseService { state }
    }

    /// A configured tenant the caller may use.
    fn tenant(&self, id: &str, caller: &Caller) -> Result<Arc<TenantPool>, ApiError> {
        if id.is_empty() {
            return Err(ApiError::InvalidArgument(
                "tenant_id must not be empty".into(),
            ));
        }
        let tenant = self
            .state
            .tenants
            .get(id)
            .ok_or_else(|| ApiError::UnknownTenant(id.to_owned()))?;
        authorize(&tenant, caller)?;
        Ok(tenant)
    }
}

fn authorize(tenant: &TenantPool, caller: &Caller) -> Result<(), ApiError> {
    Ok(access::authorize(&tenant.spec(), caller)?)
}

/// Who is calling, from the connection's client certificate; refused when
/// the certificate names no usable identity.
fn caller<T>(request: &Request<T>) -> Result<Caller, ApiError> {
    Ok(Caller::of(request.extensions().get::<PeerInfo>())?)
}

/// What is left of the call's deadline (`grpc-timeout`), if it set one.
fn deadline<T>(request: &Request<T>) -> Option<Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (number, unit) = value.split_at(value.len().checked_sub(1)?);
    let number: u64 = number.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(number.saturating_mul(3600)),
        "M" => Duration::from_secs(number.saturating_mul(60)),
        "S" => Duration::from_secs(number),
        "m" => Duration::from_millis(number),
        "u" => Duration::from_micros(number),
        "n" => Duration::from_nanos(number),
        _ => return None,
    })
}

/// How long to wait for a connection: the acquire timeout, cut short by the
/// call's deadline (keeping a little room to answer before it passes).
fn acquire_budget<T>(request: &Request<T>, tenant: &TenantPool) -> Duration {
    let timeout = tenant.spec().pool.acquire_timeout;
    match deadline(request) {
        Some(left) => timeout.min(left.saturating_sub(left / 20 + Duration::from_millis(2))),
        None => timeout,
    }
}

/// The TTL a lease gets: the asked one, or the tenant's default; within (0, max].
fn lease_ttl(
    asked: Option<&prost_types::Duration>,
    default: Duration,
    max: Duration,
) -> Result<Duration, ApiError> {
    let Some(asked) = asked else {
        return Ok(default);
    };
    if asked.seconds < 0 || asked.nanos < 0 || (asked.seconds == 0 && asked.nanos == 0) {
        return Err(ApiError::InvalidArgument(format!(
            "ttl must be positive (got {}s {}ns); omit it for the default of {}",
            asked.seconds,
            asked.nanos,
            crate::config::format_duration(default)
        )));
    }
    let ttl = Duration::new(asked.seconds as u64, asked.nanos as u32);
    if ttl > max {
        return Err(ApiError::InvalidArgument(format!(
            "ttl {}s is longer than this tenant's leases.maxTtl ({})",
            ttl.as_secs(),
            crate::config::format_duration(max)
        )));
    }
    Ok(ttl)
}

fn timestamp(at: std::time::SystemTime) -> prost_types::Timestamp {
    let since = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos() as i32,
    }
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn stats_response(stats: PoolStats, active_leases: usize) -> StatsResponse {
    let int = |n: u32| n.min(i32::MAX as u32) as i32;
    StatsResponse {
        active_connections: int(stats.active),
        idle_connections: int(stats.idle),
        total_connections: int(stats.total),
        error: String::new(),
        max_connections: int(stats.max),
        waiting_clients: int(stats.waiting),
        active_leases: active_leases.min(i32::MAX as usize) as i32,
        acquires_total: stats.acquires_total,
        acquire_timeouts_total: stats.acquire_timeouts_total,
        expired_leases_total: stats.expired_leases_total,
        min_connections: int(stats.min),
        database_reachable: stats.database_reachable,
    }
}

#[tonic::async_trait]
impl ConnectionPoolService for LeaseService {
    async fn get_connection(
        &self,
        request: Request<ConnectionRequest>,
    ) -> Result<Response<ConnectionResponse>, Status> {
        let caller = caller(&request)?;
        if self.state.is_draining() {
            return Err(ApiError::Draining.into());
        }
        let req = request.get_ref();
        let tenant = if req.dsn.is_empty() {
            self.tenant(&req.tenant_id, &caller)?
        } else if self.state.limits.allow_client_dsn {
            if req.tenant_id.is_empty() {
                return Err(ApiError::InvalidArgument("tenant_id must not be empty".into()).into());
            }
            self.state
                .tenants
                .dsn_pool(&req.tenant_id, &req.dsn)
                .map_err(ApiError::InvalidArgument)?
        } else {
            return Err(ApiError::InvalidArgument(
                "dsn must be empty: database credentials come from the pooler's configuration, \
                 not from clients (a pooler started with --allow-client-dsn accepts them)"
                    .into(),
            )
            .into());
        };
        let spec = tenant.spec();
        let ttl = lease_ttl(
            req.ttl.as_ref(),
            spec.leases.default_ttl,
            spec.leases.max_ttl,
        )?;
        let conn = tenant
            .acquire(acquire_budget(&request, &tenant))
            .await
            .map_err(ApiError::from)?;
        let lease = match self
            .state
            .leases
            .grant(tenant.clone(), caller.owner(), conn, ttl)
        {
            Ok(lease) => lease,
            Err(refused) => {
                let (e, conn) = *refused;
                conn.give_back(&tenant, false).await;
                return Err(ApiError::from(e).into());
            }
        };
        access::confirm_grant(&self.state.leases, &lease, &caller)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(ConnectionResponse {
            connection_id: lease.id.to_string(),
            error: String::new(),
            expires_at: Some(timestamp(lease.expires_at(self.state.leases.clock()))),
            ttl: Some(proto_duration(ttl)),
        }))
    }

    async fn release_connection(
        &self,
        request: Request<ConnectionRelease>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        let caller = caller(&request)?;
        self.state
            .leases
            .release(&request.get_ref().connection_id, caller.owner())
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(ReleaseResponse {
            success: true,
            error: String::new(),
        }))
    }

    async fn get_pool_stats(
        &self,
        request: Request<StatsRequest>,
    ) -> Result<Response<StatsResponse>, Status> {
        let caller = caller(&request)?;
        let id = &request.get_ref().tenant_id;
        if self.state.tenants.get(id).is_none()
            && self.state.limits.allow_client_dsn
            && let Some(stats) = self.state.tenants.dsn_stats(id)
        {
            let leases = self.state.leases.count(Some(id));
            return Ok(Response::new(stats_response(stats, leases)));
        }
        let tenant = self.tenant(id, &caller)?;
        Ok(Response::new(stats_response(
            tenant.stats(),
            tenant.lease_count(),
        )))
    }

    async fn keep_alive(
        &self,
        request: Request<KeepAliveRequest>,
    ) -> Result<Response<KeepAliveResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let lease = self
            .state
            .leases
            .get(&req.connection_id, caller.owner())
            .map_err(ApiError::from)?;
        let spec = lease.tenant.spec();
        let ttl = lease_ttl(req.ttl.as_ref(), lease.ttl(), spec.leases.max_ttl)?;
        self.state.leases.keep_alive(&lease, ttl);
        debug!(lease = %lease.id, ttl_ms = ttl.as_millis() as u64, "lease kept alive");
        Ok(Response::new(KeepAliveResponse {
            expires_at: Some(timestamp(lease.expires_at(self.state.leases.clock()))),
        }))
    }

    type ExecuteStream = execute::ResultStream;

    async fn execute(
        &self,
        request: Request<ExecuteRequest>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        let caller = caller(&request)?;
        let deadline_at = deadline(&request).map(|left| std::time::Instant::now() + left);
        let req = request.get_ref();
        if req.sql.trim().is_empty() {
            return Err(ApiError::InvalidArgument("sql must not be empty".into()).into());
        }
        if req.sql.len() > self.state.limits.max_sql_bytes {
            return Err(ApiError::InvalidArgument(format!(
                "sql is {} bytes, more than this pooler's limit of {} (--max-sql-bytes)",
                req.sql.len(),
                self.state.limits.max_sql_bytes
            ))
            .into());
        }
        if req.sql.contains('\0') {
            // The wire protocol ends strings at NUL; the driver would refuse it
            // only after the connection was taken, as if the server failed.
            return Err(ApiError::InvalidArgument(
                "sql contains a NUL character (\\0), which PostgreSQL cannot accept".into(),
            )
            .into());
        }
        if req.params.len() > self.state.limits.max_params {
            return Err(ApiError::InvalidArgument(format!(
                "{} params given; at most {} are allowed",
                req.params.len(),
                self.state.limits.max_params
            ))
            .into());
        }
        let batch_rows = match req.batch_size as usize {
            0 => DEFAULT_BATCH_ROWS,
            n => n.min(MAX_BATCH_ROWS),
        };
        let target = if !req.connection_id.is_empty() {
            let leases = self.state.leases.clone();
            let lease = leases
                .get(&req.connection_id, caller.owner())
                .map_err(ApiError::from)?;
            leases.touch(&lease);
            let conn = lease.lock_conn().await;
            if conn.is_none() {
                // The lease ended while this call waited for its connection.
                return Err(ApiError::from(
                    leases
                        .get(&req.connection_id, caller.owner())
                        .err()
                        .unwrap_or(LeaseError::Revoked(lease.id)),
                )
                .into());
            }
            Target::Lease {
                lease,
                leases,
                conn,
            }
        } else if !req.tenant_id.is_empty() {
            if self.state.is_draining() {
                return Err(ApiError::Draining.into());
            }
            let tenant = self.tenant(&req.tenant_id, &caller)?;
            let conn = tenant
                .acquire(acquire_budget(&request, &tenant))
                .await
                .map_err(ApiError::from)?;
            Target::OneShot {
                tenant,
                conn: Box::new(conn),
            }
        } else {
            return Err(ApiError::InvalidArgument(
                "set connection_id (run on a lease) or tenant_id (run one-shot)".into(),
            )
            .into());
        };
        let req = request.into_inner();
        Ok(Response::new(
            execute::spawn(
                target,
                Statement {
                    sql: req.sql,
                    params: req.params,
                    batch_rows,
                    deadline: deadline_at,
                },
            )
            .await,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header_is_read_in_every_unit() {
        let mut request = Request::new(());
        for (value, expected) in [
            ("250m", Duration::from_millis(250)),
            ("3S", Duration::from_secs(3)),
            ("2M", Duration::from_secs(120)),
            ("1H", Duration::from_secs(3600)),
            ("5000u", Duration::from_millis(5)),
        ] {
            request
                .metadata_mut()
                .insert("grpc-timeout", value.parse().unwrap());
            assert_eq!(deadline(&request), Some(expected), "{value}");
        }
    }

    #[test]
    fn ttl_must_be_positive_and_within_max() {
        let d = |seconds, nanos| prost_types::Duration { seconds, nanos };
        let (default, max) = (Duration::from_secs(60), Duration::from_secs(600));
        assert_eq!(lease_ttl(None, default, max).unwrap(), default);
        assert_eq!(
            lease_ttl(Some(&d(30, 0)), default, max).unwrap(),
            Duration::from_secs(30)
        );
        for bad in [d(0, 0), d(-5, 0), d(601, 0)] {
            let status: Status = lease_ttl(Some(&bad), default, max).unwrap_err().into();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
    }
}
