//! Leader election on a `coordination.k8s.io` Lease (kube-lease-manager): only the
//! holder reconciles; a replica that loses the lease exits so that it never acts
//! beside a new leader.

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;

/// Leader election failures.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The Lease could not be created or read.
    #[error("leader election on Lease {namespace}/{name} failed: {source}")]
    Lease {
        namespace: String,
        name: String,
        #[source]
        source: LeaseManagerError,
    },
    /// The lease manager stopped.
    #[error("leader election stopped")]
    Stopped,
}

impl LeaderError {
    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            LeaderError::Lease { .. } => "lease",
            LeaderError::Stopped => "stopped",
        }
    }
}

/// Holds (or waits for) the leader Lease.
pub struct Leadership {
    state: watch::Receiver<bool>,
}

impl Leadership {
    /// Starts competing for the Lease `namespace/name` as `identity`.
    pub async fn start(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
    ) -> Result<Self, LeaderError> {
        let manager = LeaseManagerBuilder::new(client, name)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(15)
            .with_grace(5)
            .build()
            .await
            .map_err(|source| LeaderError::Lease {
                namespace: namespace.to_string(),
                name: name.to_string(),
                source,
            })?;
        let (state, _task) = manager.watch().await;
        Ok(Self { state })
    }

    /// Resolves once this replica holds the Lease.
    pub async fn acquired(&mut self) -> Result<(), LeaderError> {
        self.state
            .wait_for(|leader| *leader)
            .await
            .map(|_| ())
            .map_err(|_| LeaderError::Stopped)
    }

    /// Resolves when this replica no longer holds the Lease.
    pub async fn lost(&mut self) {
        let _ = self.state.wait_for(|leader| !*leader).await;
    }
}
