//! Who may use which tenant on the lease API. A caller is the identity its
//! connection's client certificate names (see [`crate::tls`]), or anonymous
//! when the pooler asks for no certificate; a tenant's `allowedClients`
//! (the grammar of [`teresa_proto::identity::Pattern`]) decides. A tenant
//! that lists `allowedClients` admits only identities, so without
//! `--client-ca` it admits no one. When an apply narrows a tenant's list,
//! [`revoke_disallowed`] ends the open leases of the identities it dropped.

use std::sync::Arc;

use teresa_proto::identity::{Identity, IdentityKind};
use tracing::{info, warn};

use crate::config::{TenantSpec, ValidConfig};
use crate::lease::{Lease, LeaseTable, Outcome};
use crate::pool::TenantPool;
use crate::tls::{IdentityRefused, PeerIdentity, PeerInfo};

/// The caller of one lease API call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No client certificate: the pooler runs without `--client-ca`.
    Anonymous,
    /// The identity of the caller's client certificate.
    Client(Identity),
}

impl Caller {
    /// The caller behind a connection; refused when its certificate names
    /// no usable identity.
    pub fn of(peer: Option<&PeerInfo>) -> Result<Caller, AccessError> {
        match peer.map(|p| &p.identity) {
            None | Some(PeerIdentity::Anonymous) => Ok(Caller::Anonymous),
            Some(PeerIdentity::Known(identity)) => Ok(Caller::Client(identity.clone())),
            Some(PeerIdentity::Refused(why)) => Err(AccessError::Refused(why.clone())),
        }
    }

    /// The owner a lease of this caller is recorded under: the identity, or
    /// the empty string for an anonymous caller.
    pub fn owner(&self) -> &str {
        match self {
            Caller::Anonymous => "",
            Caller::Client(identity) => identity.as_str(),
        }
    }

    fn identity(&self) -> Option<&Identity> {
        match self {
            Caller::Anonymous => None,
            Caller::Client(identity) => Some(identity),
        }
    }
}

/// Why a caller may not use a tenant.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(transparent)]
    Refused(IdentityRefused),
    #[error("client {identity:?} may not use tenant {tenant:?} (not in its allowedClients)")]
    NotAllowed { tenant: String, identity: String },
    #[error(
        "tenant {tenant:?} admits only the client identities in its allowedClients, but client \
         certificates are off on this pooler (it runs without --client-ca), so no caller has an \
         identity; start the pooler with --client-ca, or remove the tenant's allowedClients"
    )]
    ClientCertificatesOff { tenant: String },
}

/// Whether `caller` may use the tenant `spec` describes.
pub fn authorize(spec: &TenantSpec, caller: &Caller) -> Result<(), AccessError> {
    if spec.allows(caller.identity()) {
        return Ok(());
    }
    Err(match caller {
        Caller::Anonymous => AccessError::ClientCertificatesOff {
            tenant: spec.id.clone(),
        },
        Caller::Client(identity) => AccessError::NotAllowed {
            tenant: spec.id.clone(),
            identity: identity.to_string(),
        },
    })
}

/// Whether the tenant still admits a lease's owner. A lease keeps its owner
/// as text, which the grammar makes unambiguous: URI identities contain
/// `://`, DNS and CN identities never do (and a name pattern matches either
/// kind alike), and the empty owner is an anonymous caller.
fn admits_owner(spec: &TenantSpec, owner: &str) -> bool {
    if owner.is_empty() {
        return spec.allows(None);
    }
    let kind = if owner.contains("://") {
        IdentityKind::Uri
    } else {
        IdentityKind::Dns
    };
    // Owners come from checked identities; anything else is refused.
    Identity::new(kind, owner).is_ok_and(|identity| spec.allows(Some(&identity)))
}

/// Ends every open lease of `pool` whose owner its allowedClients no longer
/// admit: rolled back, returned, and later use of the lease says why.
/// Called by an apply once the tenant's new settings are in place.
pub async fn revoke_disallowed(leases: &LeaseTable, pool: &Arc<TenantPool>) {
    let spec = pool.spec();
    let dropped = leases.select(|l| Arc::ptr_eq(&l.tenant, pool) && !admits_owner(&spec, &l.owner));
    if dropped.is_empty() {
        return;
    }
    info!(
        tenant = %pool.id(),
        leases = dropped.len(),
        "allowedClients changed; revoking the leases of identities it no longer admits"
    );
    leases.end_all(dropped, Outcome::Disallowed).await;
}

/// Checks a lease just granted against the tenant's settings now: an apply
/// that narrowed allowedClients while the grant waited for a connection
/// revoked only the leases it saw, so the grant checks again after joining
/// the table and ends itself if its owner was dropped.
pub async fn confirm_grant(
    leases: &LeaseTable,
    lease: &Arc<Lease>,
    caller: &Caller,
) -> Result<(), AccessError> {
    let refused = authorize(&lease.tenant.spec(), caller);
    if refused.is_err() {
        leases.end(lease, Outcome::Disallowed).await;
    }
    refused
}

/// Logs, for a configuration about to apply, the tenants no caller can
/// reach because they list allowedClients while client certificates are off.
pub fn warn_unreachable(config: &ValidConfig, client_certificates: bool) {
    if client_certificates {
        return;
    }
    let unreachable: Vec<&str> = config
        .tenants
        .iter()
        .filter(|t| !t.allowed_clients.is_empty())
        .map(|t| t.id.as_str())
        .collect();
    if !unreachable.is_empty() {
        warn!(
            tenants = ?unreachable,
            "these tenants list allowedClients, but client certificates are off (no --client-ca): they refuse every caller until the pooler runs with --client-ca"
        );
    }
}

#[cfg(test)]
mod tests;
