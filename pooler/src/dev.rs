//! `teresa-pooler dev`: everything needed to try Teresa on one machine. A
//! throwaway PostgreSQL with two demo tenant databases, dev certificates, a
//! generated config, and the pooler serving on 127.0.0.1 until Ctrl-C.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use teresa_pooler::certs;
use teresa_pooler::devdb::ThrowawayPostgres;
use teresa_pooler::server::{self, ServeOptions};
use teresa_pooler::state::ApiLimits;
use teresa_proto::admin::{DatabaseTarget, PoolSettings, PoolerConfig, TenantConfig};

pub struct DevOptions {
    pub port: u16,
    pub metrics_port: u16,
    pub admin_port: u16,
    pub certs_dir: PathBuf,
}

/// The demo tenants: id, database and role.
const DEMO_TENANTS: [&str; 2] = ["acme", "globex"];

pub async fn run(options: DevOptions) -> anyhow::Result<()> {
    let paths = certs::generate_dev_certs(&options.certs_dir)
        .context("cannot generate dev certificates")?;
    let db = ThrowawayPostgres::start()
        .await
        .context("cannot start a throwaway PostgreSQL")?;
    let mut tenants = Vec::new();
    for tenant in DEMO_TENANTS {
        let password = random_password();
        let database = format!("demo_{tenant}");
        db.create_database(&database, tenant, &password).await?;
        let client = db.client(&database).await?;
        client
            .batch_execute(&format!(
                "SET ROLE {tenant}; \
                 CREATE TABLE accounts (id bigint PRIMARY KEY, owner text NOT NULL, balance numeric(12,2) NOT NULL); \
                 INSERT INTO accounts SELECT i, '{tenant}-user-' || i, i * 10.5 FROM generate_series(1, 100) i;"
            ))
            .await
            .context("cannot create the demo table")?;
        tenants.push(TenantConfig {
            id: tenant.to_owned(),
            database: Some(DatabaseTarget {
                host: db.host().to_owned(),
                port: db.port().into(),
                dbname: database,
                user: tenant.to_owned(),
                password,
                ssl_mode: "disable".into(),
                ..Default::default()
            }),
            pool: Some(PoolSettings {
                max_connections: 10,
                min_connections: Some(2),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let config_path = db.data_dir().with_extension("pooler.yaml");
    let yaml = serde_yaml::to_string(&PoolerConfig {
        generation: 0,
        version: String::new(),
        tenants,
    })?;
    write_private(&config_path, &yaml)?;

    println!(
        "\nTeresa dev pooler: PostgreSQL on 127.0.0.1:{}, tenants {}\n\
         \n  gRPC (TLS)   127.0.0.1:{port}\n  metrics      https://127.0.0.1:{mport}/metrics\n  admin (mTLS) 127.0.0.1:{aport}\n\
         \nTry it:\n  grpcurl -cacert {ca} 127.0.0.1:{port} list\n  \
         grpcurl -cacert {ca} -d '{{\"tenant_id\":\"acme\"}}' 127.0.0.1:{port} connectionpool.ConnectionPoolService/GetConnection\n  \
         grpcurl -cacert {ca} -d '{{\"tenant_id\":\"acme\",\"sql\":\"SELECT id, owner, balance FROM accounts WHERE id = $1\",\"params\":[{{\"int64\":\"7\"}}]}}' 127.0.0.1:{port} connectionpool.ConnectionPoolService/Execute\n  \
         curl --cacert {ca} https://127.0.0.1:{mport}/metrics\n  \
         cargo run -p teresa-pooler --example lease_client -- --addr https://localhost:{port} --ca {ca}\n  \
         teresa-pooler admin status --addr https://localhost:{aport}\n\
         \nCtrl-C stops the pooler and removes the throwaway cluster.\n",
        db.port(),
        DEMO_TENANTS.join(", "),
        port = options.port,
        mport = options.metrics_port,
        aport = options.admin_port,
        ca = paths.ca_cert.display(),
    );

    let result = server::serve(
        ServeOptions {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: options.port,
            metrics_port: options.metrics_port,
            admin_port: options.admin_port,
            tls_cert: paths.server_cert.clone(),
            tls_key: paths.server_key.clone(),
            client_ca: None,
            client_identity: Default::default(),
            admin_ca: Some(paths.ca_cert.clone()),
            admin_identities: vec![certs::DEV_OPERATOR_IDENTITY.to_owned()],
            metrics_plaintext: false,
            config: Some(config_path.clone()),
            drain_timeout: Duration::from_secs(5),
            max_message_bytes: 4 << 20,
            limits: ApiLimits::default(),
        },
        server::shutdown_signal(),
    )
    .await;
    let _ = std::fs::remove_file(&config_path);
    db.shutdown().await?;
    println!("stopped; the throwaway cluster is removed");
    Ok(result?)
}

fn random_password() -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}
