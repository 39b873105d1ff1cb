//! A client of the lease API, as a service developer's code would use it:
//! lease a connection, run SQL on it, release it; or run one statement.

use std::time::Duration;

use teresa_proto::connectionpool::connection_pool_service_client::ConnectionPoolServiceClient;
use teresa_proto::connectionpool::execute_response::Kind;
use teresa_proto::connectionpool::value::Kind as ValueKind;
use teresa_proto::connectionpool::{
    ConnectionRelease, ConnectionRequest, ExecuteRequest, StatsRequest, StatsResponse,
};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// A lease API client of one pooler pod.
#[derive(Clone)]
pub struct LeaseClient {
    inner: ConnectionPoolServiceClient<Channel>,
}

impl LeaseClient {
    /// Connects over TLS to `url` (`https://ip:port`).
    pub async fn connect(url: &str, tls: ClientTlsConfig) -> Self {
        let channel = Endpoint::from_shared(url.to_string())
            .expect("endpoint")
            .timeout(Duration::from_secs(10))
            .tls_config(tls)
            .expect("lease API TLS")
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect to the lease API at {url}: {e}"));
        Self {
            inner: ConnectionPoolServiceClient::new(channel),
        }
    }

    /// `GetConnection` for `tenant`: the lease id.
    pub async fn lease(&mut self, tenant: &str) -> Result<String, tonic::Status> {
        Ok(self
            .inner
            .get_connection(ConnectionRequest {
                tenant_id: tenant.to_string(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .connection_id)
    }

    /// `ReleaseConnection`.
    pub async fn release(&mut self, lease: &str) -> Result<bool, tonic::Status> {
        Ok(self
            .inner
            .release_connection(ConnectionRelease {
                connection_id: lease.to_string(),
            })
            .await?
            .into_inner()
            .success)
    }

    /// `GetPoolStats` for `tenant`.
    pub async fn stats(&mut self, tenant: &str) -> Result<StatsResponse, tonic::Status> {
        Ok(self
            .inner
            .get_pool_stats(StatsRequest {
                tenant_id: tenant.to_string(),
            })
            .await?
            .into_inner())
    }

    /// Runs `sql` on `lease` and returns the first column of the first row as text.
    pub async fn query_on_lease(
        &mut self,
        lease: &str,
        sql: &str,
    ) -> Result<String, tonic::Status> {
        self.execute(ExecuteRequest {
            connection_id: lease.to_string(),
            sql: sql.to_string(),
            ..Default::default()
        })
        .await
    }

    /// Runs `sql` one-shot on `tenant`: the first column of the first row as text.
    pub async fn query(&mut self, tenant: &str, sql: &str) -> Result<String, tonic::Status> {
        self.execute(ExecuteRequest {
            tenant_id: tenant.to_string(),
            sql: sql.to_string(),
            ..Default::default()
        })
        .await
    }

    /// Leases a connection of `tenant`, reads which database it reached
    /// (`current_database()`) and the `owner` table's row, and releases it:
    /// the check that a client can lease and run SQL.
    pub async fn lease_and_identify(&mut self, tenant: &str) -> Result<String, tonic::Status> {
        let lease = self.lease(tenant).await?;
        let result = self
            .query_on_lease(
                &lease,
                "SELECT current_database() || '/' || (SELECT name FROM owner)",
            )
            .await;
        self.release(&lease).await?;
        result
    }

    async fn execute(&mut self, request: ExecuteRequest) -> Result<String, tonic::Status> {
        let mut stream = self.inner.execute(request).await?.into_inner();
        let mut first = None;
        while let Some(message) = stream.message().await? {
            match message.kind {
                Some(Kind::Rows(batch)) if first.is_none() => {
                    first = batch
                        .rows
                        .into_iter()
                        .next()
                        .and_then(|row| row.values.into_iter().next())
                        .map(|value| match value.kind {
                            Some(ValueKind::Text(text)) => text,
                            Some(ValueKind::Int64(n)) => n.to_string(),
                            Some(ValueKind::Bool(b)) => b.to_string(),
                            other => format!("{other:?}"),
                        });
                }
                Some(Kind::Error(e)) => {
                    return Err(tonic::Status::unknown(format!(
                        "SQL error {}: {}",
                        e.sqlstate, e.message
                    )));
                }
                _ => {}
            }
        }
        first.ok_or_else(|| tonic::Status::unknown("the statement returned no row"))
    }
}
