//! A lease API client: lease a connection, run a transaction across several
//! Execute calls, release it, print the pool's stats.
//!
//! ```text
//! teresa-pooler dev    # in another terminal
//! cargo run -p teresa-pooler --example lease_client -- --addr https://localhost:50052 --ca certs/ca.pem
//! ```

use clap::Parser;
use teresa_proto::connectionpool::{
    ConnectionRelease, ConnectionRequest, ExecuteRequest, StatsRequest, Value,
    connection_pool_service_client::ConnectionPoolServiceClient, execute_response::Kind,
    value::Kind as V,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

#[derive(Parser)]
struct Args {
    /// The pooler's lease API.
    #[arg(long, default_value = "https://localhost:50052")]
    addr: String,
    /// CA that signed the pooler's certificate.
    #[arg(long, default_value = "certs/ca.pem")]
    ca: std::path::PathBuf,
    /// Client certificate and key, when the pooler requires one.
    #[arg(long, requires = "key")]
    cert: Option<std::path::PathBuf>,
    #[arg(long, requires = "cert")]
    key: Option<std::path::PathBuf>,
    /// Tenant to lease from (`teresa-pooler dev` serves "acme" and "globex").
    #[arg(long, default_value = "acme")]
    tenant: String,
}

type Client = ConnectionPoolServiceClient<Channel>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(&args.ca)?));
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert)?,
            std::fs::read(key)?,
        ));
    }
    let channel = Channel::from_shared(args.addr.clone())?
        .tls_config(tls)?
        .connect()
        .await?;
    let mut client = ConnectionPoolServiceClient::new(channel);

    let lease = client
        .get_connection(ConnectionRequest {
            tenant_id: args.tenant.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    println!(
        "leased {} (expires at {:?})",
        lease.connection_id, lease.expires_at
    );
    let id = lease.connection_id;

    // One transaction across several calls: move 5.00 from account 1 to 2.
    execute(&mut client, &id, "BEGIN", vec![]).await?;
    let amount = Value {
        kind: Some(V::Text("5.00".into())),
    };
    for (sql, account) in [
        (
            "UPDATE accounts SET balance = balance - $1 WHERE id = $2",
            1,
        ),
        (
            "UPDATE accounts SET balance = balance + $1 WHERE id = $2",
            2,
        ),
    ] {
        let account = Value {
            kind: Some(V::Int64(account)),
        };
        execute(&mut client, &id, sql, vec![amount.clone(), account]).await?;
    }
    execute(
        &mut client,
        &id,
        "SELECT id, owner, balance FROM accounts WHERE id <= 2 ORDER BY id",
        vec![],
    )
    .await?;
    execute(&mut client, &id, "COMMIT", vec![]).await?;

    client
        .release_connection(ConnectionRelease {
            connection_id: id.clone(),
        })
        .await?;
    println!("released {id}");

    let stats = client
        .get_pool_stats(StatsRequest {
            tenant_id: args.tenant,
        })
        .await?
        .into_inner();
    println!(
        "pool: {} active, {} idle, {} total of max {}; {} leases; {} acquires",
        stats.active_connections,
        stats.idle_connections,
        stats.total_connections,
        stats.max_connections,
        stats.active_leases,
        stats.acquires_total
    );
    Ok(())
}

/// Runs one statement on the lease and prints what comes back.
async fn execute(
    client: &mut Client,
    lease: &str,
    sql: &str,
    params: Vec<Value>,
) -> anyhow::Result<()> {
    let mut stream = client
        .execute(ExecuteRequest {
            connection_id: lease.to_owned(),
            sql: sql.to_owned(),
            params,
            ..Default::default()
        })
        .await?
        .into_inner();
    while let Some(message) = stream.message().await? {
        match message.kind {
            Some(Kind::Columns(c)) if !c.columns.is_empty() => {
                let names: Vec<_> = c.columns.iter().map(|c| c.name.as_str()).collect();
                println!("  {}", names.join(" | "));
            }
            Some(Kind::Rows(batch)) => {
                for row in batch.rows {
                    let cells: Vec<String> = row.values.iter().map(show).collect();
                    println!("  {}", cells.join(" | "));
                }
            }
            Some(Kind::Complete(done)) => {
                println!("{sql:.40} -> {} {}", done.command_tag, done.rows_affected)
            }
            Some(Kind::Error(e)) => anyhow::bail!("{sql}: SQLSTATE {} {}", e.sqlstate, e.message),
            Some(Kind::Columns(_)) | None => {}
        }
    }
    Ok(())
}

fn show(value: &Value) -> String {
    match &value.kind {
        Some(V::Null(_)) | None => "NULL".into(),
        Some(V::Bool(b)) => b.to_string(),
        Some(V::Int64(n)) => n.to_string(),
        Some(V::Float64(f)) => f.to_string(),
        Some(V::Text(s)) => s.clone(),
        Some(V::Bytes(b)) => format!(
            "\\x{}",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        ),
    }
}
