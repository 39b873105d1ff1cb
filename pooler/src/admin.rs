//! The admin API (`teresa.admin.v1.PoolerAdmin`) the operator drives: apply a
//! complete configuration, read the applied version and live stats. Served
//! only on the admin port, whose TLS requires a client certificate; an
//! [`AdminAccess`] interceptor in front of every service of that port (the
//! admin API, health and reflection alike) admits only the URI SAN
//! identities of `--admin-identities`.

use std::sync::Arc;

use teresa_proto::admin::{
    ApplyConfigResponse, GetStatusRequest, PoolerConfig, PoolerStatus, TenantStatus,
    pooler_admin_server::PoolerAdmin,
};
use teresa_proto::identity::Identity;
use tonic::{Request, Response, Status};
use tracing::warn;

use crate::access;
use crate::config;
use crate::state::PoolerState;
use crate::tenants::ApplyReport;
use crate::tls::{IdentityRefused, PeerIdentity, PeerInfo};

/// The admin API over a running pooler's state.
pub struct AdminService {
    state: Arc<PoolerState>,
}

impl AdminService {
    /// The service alone; serve it only behind [`AdminAccess`].
    pub fn new(state: Arc<PoolerState>) -> Self {
        AdminService { state }
    }
}

/// Who may use the admin port: exactly the listed URI identities.
#[derive(Clone)]
pub struct AdminAccess {
    allowed: Arc<[Identity]>,
}

/// Why a call on the admin port was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminDenied {
    #[error("the admin port requires a client certificate")]
    NoCertificate,
    #[error("the admin port takes identities from URI SANs only: {0}")]
    Refused(IdentityRefused),
    #[error("client identity {identity:?} may not use the admin port (allowed: {allowed})")]
    NotAdmin { identity: String, allowed: String },
}

impl AdminAccess {
    /// Admits `allowed` (URI identities, checked by the caller).
    pub fn new(allowed: Vec<Identity>) -> Self {
        AdminAccess {
            allowed: allowed.into(),
        }
    }

    /// Whether the peer of a connection may use the admin port.
    pub fn check(&self, peer: Option<&PeerInfo>) -> Result<(), AdminDenied> {
        match peer.map(|p| &p.identity) {
            None | Some(PeerIdentity::Anonymous) => Err(AdminDenied::NoCertificate),
            Some(PeerIdentity::Refused(why)) => Err(AdminDenied::Refused(why.clone())),
            Some(PeerIdentity::Known(identity)) if self.allowed.contains(identity) => Ok(()),
            Some(PeerIdentity::Known(identity)) => Err(AdminDenied::NotAdmin {
                identity: identity.to_string(),
                allowed: self
                    .allowed
                    .iter()
                    .map(Identity::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }
}

impl tonic::service::Interceptor for AdminAccess {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(request.extensions().get::<PeerInfo>())?;
        Ok(request)
    }
}

/// Applies the `--config` file's snapshot (a bootstrap: see
/// [`crate::tenants`]): every valid tenant, each bad one logged alone.
pub async fn apply_snapshot(
    state: &PoolerState,
    snapshot: &PoolerConfig,
) -> Result<(String, bool), config::ConfigError> {
    let valid = config::check(snapshot);
    access::warn_unreachable(&valid, state.limits.client_certificates);
    let version = valid.version.clone();
    let report = state.tenants.apply(valid).await?;
    log_rejected(&report);
    Ok((version, report.changed))
}

fn log_rejected(report: &ApplyReport) {
    for tenant in report.rejected() {
        warn!(tenant = %tenant.tenant_id, reason = %tenant.reason, "tenant configuration rejected; its previous configuration (if any) stays");
    }
}

#[tonic::async_trait]
impl PoolerAdmin for AdminService {
    async fn apply_config(
        &self,
        request: Request<PoolerConfig>,
    ) -> Result<Response<ApplyConfigResponse>, Status> {
        let valid = config::check(request.get_ref());
        access::warn_unreachable(&valid, self.state.limits.client_certificates);
        let applied_version = valid.version.clone();
        let report = self.state.tenants.apply_push(valid).await;
        log_rejected(&report);
        Ok(Response::new(ApplyConfigResponse {
            applied_version,
            changed: report.changed,
            tenants: report.tenants,
        }))
    }

    async fn get_status(
        &self,
        _request: Request<GetStatusRequest>,
    ) -> Result<Response<PoolerStatus>, Status> {
        Ok(Response::new(status(&self.state)))
    }
}

/// The pooler's status as the admin API reports it.
pub fn status(state: &PoolerState) -> PoolerStatus {
    let applied = state.tenants.applied();
    let mut tenants: Vec<TenantStatus> = state
        .tenants
        .every_pool()
        .into_iter()
        .map(|pool| {
            let s = pool.stats();
            let int = |n: u32| n.min(i32::MAX as u32) as i32;
            TenantStatus {
                tenant_id: pool.id().to_owned(),
                active_connections: int(s.active),
                idle_connections: int(s.idle),
                total_connections: int(s.total),
                max_connections: int(s.max),
                min_connections: int(s.min),
                waiting_clients: int(s.waiting),
                active_leases: pool.lease_count().min(i32::MAX as usize) as i32,
                acquires_total: s.acquires_total,
                acquire_timeouts_total: s.acquire_timeouts_total,
                expired_leases_total: s.expired_leases_total,
                database_reachable: s.database_reachable,
                draining: pool.is_draining(),
            }
        })
        .collect();
    tenants.sort_by(|a, b| a.tenant_id.cmp(&b.tenant_id));
    PoolerStatus {
        applied_version: applied
            .as_ref()
            .map(|a| a.version.clone())
            .unwrap_or_default(),
        applied_at: applied.map(|a| {
            let since =
                a.at.duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
            prost_types::Timestamp {
                seconds: since.as_secs() as i64,
                nanos: since.subsec_nanos() as i32,
            }
        }),
        ready: state.is_ready(),
        draining: state.is_draining(),
        tenants,
    }
}
