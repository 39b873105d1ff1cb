//! The one harness of the pooler's integration tests: a throwaway PostgreSQL
//! per test, dev certificates, and the real `teresa-pooler` binary run as a
//! process on free ports, reached over real TLS.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use teresa_pooler::certs::{ClientIdentity, DevCa};
use teresa_pooler::devdb::ThrowawayPostgres;
use teresa_proto::admin::pooler_admin_client::PoolerAdminClient;
use teresa_proto::connectionpool::connection_pool_service_client::ConnectionPoolServiceClient;
use teresa_proto::connectionpool::{
    ConnectionRelease, ConnectionRequest, ExecuteRequest, ExecuteResponse, StatsRequest,
    StatsResponse, Value, execute_response::Kind, value::Kind as V,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// Every password the tests give PostgreSQL roles; the log scan looks for it.
pub const TEST_PASSWORD_PREFIX: &str = "pw-teresa-test-";

pub type LeaseClient = ConnectionPoolServiceClient<Channel>;

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "teresa-test-{tag}-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A throwaway PostgreSQL with tenant databases.
pub struct Db {
    pub pg: ThrowawayPostgres,
}

/// One tenant database: its name, role and password.
#[derive(Clone)]
pub struct TenantDb {
    pub id: String,
    pub dbname: String,
    pub user: String,
    pub password: String,
    pub host: String,
    pub port: u16,
}

impl Db {
    pub async fn start() -> Db {
        Db {
            pg: ThrowawayPostgres::start().await.expect("start PostgreSQL"),
        }
    }

    /// Creates a database and login role for tenant `id`.
    pub async fn tenant(&self, id: &str) -> TenantDb {
        let password = format!("{TEST_PASSWORD_PREFIX}{:x}", rand::random::<u64>());
        let dbname = format!("db_{id}").replace('-', "_");
        let user = format!("role_{id}").replace('-', "_");
        self.pg
            .create_database(&dbname, &user, &password)
            .await
            .expect("create tenant database");
        TenantDb {
            id: id.to_owned(),
            dbname,
            user,
            password,
            host: self.pg.host().to_owned(),
            port: self.pg.port(),
        }
    }

    /// A superuser connection to `dbname`.
    pub async fn admin(&self, dbname: &str) -> tokio_postgres::Client {
        self.pg.client(dbname).await.expect("superuser connection")
    }

    /// Server connections the pooler holds to `dbname` (from pg_stat_activity).
    pub async fn pooler_backends(&self, dbname: &str) -> i64 {
        let client = self.admin("postgres").await;
        client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'teresa-pooler'",
                &[&dbname],
            )
            .await
            .unwrap()
            .get(0)
    }
}

impl TenantDb {
    /// This tenant as a YAML config entry, with extra lines for `pool`, `leases`.
    pub fn yaml(&self, extra: &str) -> String {
        let mut out = format!(
            "  - id: {}\n    database:\n      host: {}\n      port: {}\n      dbname: {}\n      user: {}\n      password: {}\n      sslMode: disable\n",
            self.id, self.host, self.port, self.dbname, self.user, self.password
        );
        for line in extra.lines().filter(|l| !l.trim().is_empty()) {
            out.push_str("    ");
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// A libpq DSN for the legacy `dsn` field.
    pub fn dsn(&self) -> String {
        format!(
            "host={} port={} dbname={} user={} password={} sslmode=disable",
            self.host, self.port, self.dbname, self.user, self.password
        )
    }
}

/// Dev certificates in a directory: a CA, the server pair, clients.
pub struct Certs {
    pub dir: TempDir,
    pub ca: Arc<DevCa>,
}

impl Certs {
    pub fn generate() -> Certs {
        let dir = TempDir::new("certs");
        let ca = DevCa::generate().unwrap();
        ca.write(&dir.0.join("ca.pem"), &dir.0.join("ca-key.pem"))
            .unwrap();
        let server = ca
            .issue_server(&["localhost"], &["127.0.0.1".parse().unwrap()])
            .unwrap();
        server
            .write(&dir.0.join("cert.pem"), &dir.0.join("key.pem"))
            .unwrap();
        Certs {
            dir,
            ca: Arc::new(ca),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.0.join(name)
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.path("ca.pem")).unwrap()
    }

    /// A client certificate with a URI SAN identity.
    pub fn client(&self, uri: &str) -> Identity {
        let issued = self
            .ca
            .issue_client(&ClientIdentity::Uri(uri.to_owned()))
            .unwrap();
        Identity::from_pem(issued.cert_pem.clone(), issued.key_pem.clone())
    }
}

/// How to start a pooler.
pub struct PoolerSetup {
    pub tenants_yaml: String,
    pub args: Vec<String>,
    pub client_ca: bool,
    pub env: Vec<(String, String)>,
}

impl PoolerSetup {
    pub fn new(tenants: &[(&TenantDb, &str)]) -> Self {
        let mut yaml = String::from("tenants:\n");
        for (tenant, extra) in tenants {
            yaml.push_str(&tenant.yaml(extra));
        }
        PoolerSetup {
            tenants_yaml: yaml,
            args: Vec::new(),
            client_ca: false,
            env: Vec::new(),
        }
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    pub fn require_client_certs(mut self) -> Self {
        self.client_ca = true;
        self
    }
}

/// A running `teresa-pooler` process.
pub struct Pooler {
    pub child: Option<Child>,
    pub certs: Certs,
    pub work: TempDir,
    pub config_path: PathBuf,
    pub grpc_port: u16,
    pub metrics_port: u16,
    pub admin_port: u16,
    pub log_path: PathBuf,
}

impl Drop for Pooler {
    /// Every pooler's log is scanned when its test ends: no test password may
    /// ever appear in it, whatever the test did.
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if std::thread::panicking() {
            return;
        }
        let log = self.log();
        assert!(
            !log.contains(TEST_PASSWORD_PREFIX),
            "a database password appeared in the pooler's log {}",
            self.log_path.display()
        );
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Where every pooler of the test run appends its log, for the password scan.
pub fn log_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pooler-logs");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Pooler {
    pub async fn start(setup: PoolerSetup) -> Pooler {
        Self::start_with_certs(setup, Certs::generate()).await
    }

    pub async fn start_with_certs(setup: PoolerSetup, certs: Certs) -> Pooler {
        let work = TempDir::new("pooler");
        let config_path = work.0.join("pooler.yaml");
        std::fs::write(&config_path, &setup.tenants_yaml).unwrap();
        let log_path = log_dir().join(format!(
            "pooler-{}-{:x}.log",
            std::process::id(),
            rand::random::<u32>()
        ));
        let mut pooler = Pooler {
            child: None,
            certs,
            work,
            config_path,
            grpc_port: free_port(),
            metrics_port: free_port(),
            admin_port: free_port(),
            log_path,
        };
        pooler.spawn(&setup).await;
        pooler
    }

    async fn spawn(&mut self, setup: &PoolerSetup) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_teresa-pooler"));
        cmd.arg("--config")
            .arg(&self.config_path)
            .args(["--host", "127.0.0.1"])
            .args(["--port", &self.grpc_port.to_string()])
            .args(["--metrics-port", &self.metrics_port.to_string()])
            .args(["--admin-port", &self.admin_port.to_string()])
            .arg("--tls-cert")
            .arg(self.certs.path("cert.pem"))
            .arg("--tls-key")
            .arg(self.certs.path("key.pem"))
            .arg("--admin-ca")
            .arg(self.certs.path("ca.pem"))
            .args(["--log-level", "debug"])
            .args(&setup.args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        if setup.client_ca {
            cmd.arg("--client-ca").arg(self.certs.path("ca.pem"));
        }
        for (k, v) in &setup.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn teresa-pooler"));
        self.wait_ready(Duration::from_secs(20)).await;
    }

    /// Waits until /readyz answers 200.
    pub async fn wait_ready(&mut self, limit: Duration) {
        let started = Instant::now();
        loop {
            if let Ok((200, _)) = self.http_get("/readyz").await {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("teresa-pooler exited with {status}:\n{}", self.log());
            }
            assert!(
                started.elapsed() < limit,
                "teresa-pooler not ready after {limit:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().and_then(|c| c.id()).expect("running")
    }

    /// Resident memory of the pooler process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Sends a signal (TERM, INT, KILL) to the pooler.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let child = self.child.as_mut().expect("running");
        let status = tokio::time::timeout(limit, child.wait())
            .await
            .expect("pooler did not exit in time")
            .unwrap();
        self.child = None;
        status.code()
    }

    pub fn ca_tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.certs.ca_pem()))
            .domain_name("localhost")
    }

    async fn channel(
        &self,
        port: u16,
        identity: Option<Identity>,
    ) -> Result<Channel, tonic::transport::Error> {
        let mut tls = self.ca_tls();
        if let Some(identity) = identity {
            tls = tls.identity(identity);
        }
        Channel::from_shared(format!("https://127.0.0.1:{port}"))
            .unwrap()
            .tls_config(tls)?
            .connect()
            .await
    }

    /// A lease API client without a client certificate.
    pub async fn client(&self) -> LeaseClient {
        ConnectionPoolServiceClient::new(self.channel(self.grpc_port, None).await.unwrap())
    }

    /// A lease API client presenting a client certificate for `identity`.
    pub async fn client_as(&self, identity: &str) -> LeaseClient {
        let id = self.certs.client(identity);
        ConnectionPoolServiceClient::new(self.channel(self.grpc_port, Some(id)).await.unwrap())
    }

    /// An admin client with the given client identity.
    pub async fn admin_as(
        &self,
        identity: Option<&str>,
    ) -> Result<PoolerAdminClient<Channel>, tonic::transport::Error> {
        let id = identity.map(|i| self.certs.client(i));
        Ok(PoolerAdminClient::new(
            self.channel(self.admin_port, id).await?,
        ))
    }

    /// An admin client with the operator's identity.
    pub async fn admin(&self) -> PoolerAdminClient<Channel> {
        self.admin_as(Some("spiffe://teresa.dev/operator"))
            .await
            .unwrap()
    }

    /// GET over HTTPS on the metrics port: (status, body).
    pub async fn http_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        https_get(self.metrics_port, path, &self.certs.ca_pem()).await
    }

    /// The metrics text.
    pub async fn metrics(&self) -> String {
        let (status, body) = self.http_get("/metrics").await.unwrap();
        assert_eq!(status, 200);
        body
    }
}

/// A minimal HTTPS/1.1 GET, enough for probes and metrics.
pub async fn https_get(port: u16, path: &str, ca_pem: &[u8]) -> std::io::Result<(u16, String)> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
        roots.add(cert?).map_err(std::io::Error::other)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(std::io::Error::other)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no HTTP status"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| dechunk(b))
        .unwrap_or_default();
    Ok((status, body))
}

/// Undoes chunked transfer encoding if the body uses it.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            return body.to_owned();
        };
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_owned();
        };
        if size == 0 {
            return out;
        }
        if after.len() < size {
            return body.to_owned();
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
}

// ---- lease API helpers ----

pub fn int(n: i64) -> Value {
    Value {
        kind: Some(V::Int64(n)),
    }
}

pub fn text(s: &str) -> Value {
    Value {
        kind: Some(V::Text(s.to_owned())),
    }
}

/// Leases a connection of `tenant`.
pub async fn lease(client: &mut LeaseClient, tenant: &str) -> String {
    client
        .get_connection(ConnectionRequest {
            tenant_id: tenant.to_owned(),
            ..Default::default()
        })
        .await
        .expect("GetConnection")
        .into_inner()
        .connection_id
}

pub async fn release(client: &mut LeaseClient, id: &str) {
    let response = client
        .release_connection(ConnectionRelease {
            connection_id: id.to_owned(),
        })
        .await
        .expect("ReleaseConnection")
        .into_inner();
    assert!(response.success);
}

pub async fn stats(client: &mut LeaseClient, tenant: &str) -> StatsResponse {
    client
        .get_pool_stats(StatsRequest {
            tenant_id: tenant.to_owned(),
        })
        .await
        .expect("GetPoolStats")
        .into_inner()
}

/// What one Execute call returned.
#[derive(Debug, Default)]
pub struct Outcome {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    pub tag: Option<String>,
    pub rows_affected: u64,
    pub sql_error: Option<(String, String)>,
    pub batches: usize,
}

impl Outcome {
    /// The first column of the first row.
    pub fn scalar(&self) -> &Value {
        &self.rows[0][0]
    }

    pub fn int(&self) -> i64 {
        match &self.scalar().kind {
            Some(V::Int64(n)) => *n,
            other => panic!("not an int: {other:?}"),
        }
    }

    pub fn text(&self) -> String {
        match &self.scalar().kind {
            Some(V::Text(s)) => s.clone(),
            other => panic!("not text: {other:?}"),
        }
    }
}

/// Runs a statement and collects the whole stream.
pub async fn run(
    client: &mut LeaseClient,
    request: ExecuteRequest,
) -> Result<Outcome, tonic::Status> {
    let mut stream = client.execute(request).await?.into_inner();
    let mut outcome = Outcome::default();
    while let Some(message) = stream.message().await? {
        collect(&mut outcome, message);
    }
    Ok(outcome)
}

fn collect(outcome: &mut Outcome, message: ExecuteResponse) {
    match message.kind.expect("kind set") {
        Kind::Columns(c) => outcome.columns = c.columns.into_iter().map(|c| c.name).collect(),
        Kind::Rows(batch) => {
            outcome.batches += 1;
            outcome
                .rows
                .extend(batch.rows.into_iter().map(|r| r.values));
        }
        Kind::Complete(c) => {
            outcome.tag = Some(c.command_tag);
            outcome.rows_affected = c.rows_affected;
        }
        Kind::Error(e) => outcome.sql_error = Some((e.sqlstate, e.message)),
    }
}

/// Runs `sql` on a lease.
pub async fn on_lease(
    client: &mut LeaseClient,
    lease: &str,
    sql: &str,
    params: Vec<Value>,
) -> Outcome {
    run(
        client,
        ExecuteRequest {
            connection_id: lease.to_owned(),
            sql: sql.to_owned(),
            params,
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|s| panic!("Execute {sql:?} failed: {s:?}"))
}

/// Runs `sql` one-shot on `tenant`.
pub async fn one_shot(
    client: &mut LeaseClient,
    tenant: &str,
    sql: &str,
    params: Vec<Value>,
) -> Outcome {
    run(
        client,
        ExecuteRequest {
            tenant_id: tenant.to_owned(),
            sql: sql.to_owned(),
            params,
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|s| panic!("Execute {sql:?} failed: {s:?}"))
}

/// Polls `check` until it holds or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < limit {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check().await
}
