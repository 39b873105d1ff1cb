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

    /// Creates table `t (id int)` in the tenant's database, writable by its role.
    pub async fn create_table_t(&self, tenant: &TenantDb) {
        self.admin(&tenant.dbname)
            .await
            .batch_execute(&format!(
                "CREATE TABLE t (id int); GRANT ALL ON t TO {}",
                tenant.user
            ))
            .await
            .unwrap();
    }

    /// Rows in table `t` of the tenant's database, as the superuser sees them.
    pub async fn count_t(&self, tenant: &TenantDb) -> i64 {
        self.admin(&tenant.dbname)
            .await
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .unwrap()
            .get(0)
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

    /// A client certificate whose only name is `identity` (a URI SAN, a DNS
    /// SAN or, with no SAN, the subject CN).
    pub fn client_with(&self, identity: &ClientIdentity) -> Identity {
        let issued = self.ca.issue_client(identity).unwrap();
        Identity::from_pem(issued.cert_pem, issued.key_pem)
    }

    /// A client certificate with exactly these names (e.g. two URI SANs).
    pub fn client_names(&self, cn: &str, uris: &[&str], dns: &[&str]) -> Identity {
        let issued = self.ca.issue_client_names(cn, uris, dns).unwrap();
        Identity::from_pem(issued.cert_pem, issued.key_pem)
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

    /// A channel to `port` presenting the client certificate `identity`.
    pub async fn channel_as(&self, port: u16, identity: Identity) -> Channel {
        self.channel(port, Some(identity)).await.unwrap()
    }

    /// A lease API client presenting the client certificate `identity`.
    pub async fn client_with(&self, identity: Identity) -> LeaseClient {
        ConnectionPoolServiceClient::new(self.channel_as(self.grpc_port, identity).await)
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

/// Runs `sql` on a lease expecting the call to fail; returns its status.
pub async fn lease_error(client: &mut LeaseClient, lease: &str, sql: &str) -> tonic::Status {
    run(
        client,
        ExecuteRequest {
            connection_id: lease.to_owned(),
            sql: sql.to_owned(),
            ..Default::default()
        },
    )
    .await
    .err()
    .unwrap_or_else(|| panic!("Execute {sql:?} on lease {lease} succeeded"))
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

// ---- fault and abuse suite: a steady load, PostgreSQL probes, the summary ----

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tonic::Code;

/// How much longer than its deadline a call may take before it counts as hung.
pub const HANG_GRACE: Duration = Duration::from_secs(1);

impl Pooler {
    /// Starts the process again on the same ports, certificates and config
    /// file (after `signal("KILL")` and `wait_exit`), with `setup`'s tenants
    /// and flags.
    pub async fn restart(&mut self, setup: PoolerSetup) {
        assert!(
            self.child.is_none(),
            "the previous process is still running"
        );
        std::fs::write(&self.config_path, &setup.tenants_yaml).unwrap();
        self.spawn(&setup).await;
    }

    /// A channel to the lease API, for raw calls.
    pub async fn lease_channel(&self) -> Channel {
        self.channel(self.grpc_port, None).await.unwrap()
    }
}

/// One backend of `pg_stat_activity`.
#[derive(Debug, Clone)]
pub struct Backend {
    pub pid: i32,
    pub state: String,
    pub query: String,
    pub wait_event: String,
}

impl Db {
    /// Runs SQL as the superuser on `dbname`.
    pub async fn exec(&self, dbname: &str, sql: &str) {
        self.admin(dbname)
            .await
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// The pooler's backends on `dbname`, from `pg_stat_activity`.
    pub async fn backends(&self, dbname: &str) -> Vec<Backend> {
        let client = self.admin("postgres").await;
        client
            .query(
                "SELECT pid, coalesce(state, ''), coalesce(query, ''), coalesce(wait_event, '') \
                 FROM pg_stat_activity WHERE datname = $1 AND application_name = 'teresa-pooler' \
                 ORDER BY pid",
                &[&dbname],
            )
            .await
            .unwrap()
            .into_iter()
            .map(|row| Backend {
                pid: row.get(0),
                state: row.get(1),
                query: row.get(2),
                wait_event: row.get(3),
            })
            .collect()
    }

    /// Terminates the pooler's backends on `dbname` whose state is one of
    /// `states` (all of them when empty); returns their pids.
    pub async fn terminate_backends(&self, dbname: &str, states: &[&str]) -> Vec<i32> {
        let client = self.admin("postgres").await;
        let states: Vec<String> = states.iter().map(|s| (*s).to_owned()).collect();
        // Chosen first, then terminated: WHERE clauses run in no fixed order.
        let chosen: Vec<i32> = client
            .query(
                "SELECT pid FROM pg_stat_activity \
                 WHERE datname = $1 AND application_name = 'teresa-pooler' \
                 AND (cardinality($2::text[]) = 0 OR state = ANY($2))",
                &[&dbname, &states],
            )
            .await
            .unwrap()
            .into_iter()
            .map(|row| row.get(0))
            .collect();
        client
            .query(
                "SELECT pid FROM unnest($1::int[]) AS pid WHERE pg_terminate_backend(pid)",
                &[&chosen],
            )
            .await
            .unwrap()
            .into_iter()
            .map(|row| row.get(0))
            .collect()
    }

    /// Lines of the PostgreSQL server log containing `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        std::fs::read_to_string(self.pg.log_file())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }
}

/// Checks that a tenant's pool lost nothing: no lease or waiter left, every
/// connection the pool counts exists on the server and vice versa, and all
/// `max` connections can be leased at once and run SQL. Returns what it saw.
pub async fn assert_pool_whole(
    client: &mut LeaseClient,
    db: &Db,
    tenant: &TenantDb,
    max: i32,
) -> Result<String, String> {
    let seen = Mutex::new((0, 0));
    let settled = eventually(Duration::from_secs(5), || {
        let mut client = client.clone();
        let seen = &seen;
        async move {
            let s = stats(&mut client, &tenant.id).await;
            let backends = db.pooler_backends(&tenant.dbname).await;
            *seen.lock().unwrap() = (s.total_connections, backends);
            s.active_leases == 0
                && s.active_connections == 0
                && s.waiting_clients == 0
                && i64::from(s.total_connections) == backends
        }
    })
    .await;
    let seen = *seen.lock().unwrap();
    let s = stats(client, &tenant.id).await;
    if !settled {
        return Err(format!(
            "pool not settled: stats {s:?}, pooler backends on the server {}",
            seen.1
        ));
    }
    let mut ids = Vec::new();
    for _ in 0..max {
        let request = ConnectionRequest {
            tenant_id: tenant.id.clone(),
            ..Default::default()
        };
        match client.get_connection(request).await {
            Ok(r) => ids.push(r.into_inner().connection_id),
            Err(e) => {
                return Err(format!(
                    "only {} of {max} connections could be leased: {e:?}",
                    ids.len()
                ));
            }
        }
    }
    for id in &ids {
        let outcome = on_lease(client, id, "SELECT 1", vec![]).await;
        if outcome.sql_error.is_some() || outcome.rows.len() != 1 {
            return Err(format!("a leased connection is unusable: {outcome:?}"));
        }
    }
    let backends = db.pooler_backends(&tenant.dbname).await;
    for id in &ids {
        release(client, id).await;
    }
    if backends != i64::from(max) {
        return Err(format!(
            "{max} leases held, but {backends} pooler backends on the server"
        ));
    }
    Ok(format!(
        "stats total {} = pg_stat_activity {}, leases 0, {max}/{max} leasable",
        seen.0, seen.1
    ))
}

/// What kind of work one operation of the load did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// One Execute given only a tenant.
    OneShot,
    /// GetConnection, BEGIN, SELECT, COMMIT, ReleaseConnection.
    LeaseCycle,
}

/// How one operation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum OpResult {
    Ok,
    /// Refused before the pooler took the work on (the status of
    /// GetConnection, or of the Execute call before its stream started).
    Refused(Code, String),
    /// Failed after the pooler took the work on (on a granted lease, or in a
    /// started stream). `None`: a SQL error in the stream (SQLSTATE in text).
    InFlight(Option<Code>, String),
    /// Answered with a value other than the one asked for.
    WrongResult(String),
    /// No answer within the call's deadline plus [`HANG_GRACE`].
    Hung(String),
}

/// One operation of the load, timed from the start of the load.
#[derive(Debug, Clone)]
pub struct Op {
    pub client: usize,
    pub kind: OpKind,
    pub tenant: String,
    pub start: Duration,
    pub end: Duration,
    pub result: OpResult,
}

impl Op {
    pub fn ok(&self) -> bool {
        self.result == OpResult::Ok
    }

    pub fn latency(&self) -> Duration {
        self.end.saturating_sub(self.start)
    }
}

/// The shape of a steady load.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Client `i` works on `tenants[i % len]`.
    pub tenants: Vec<String>,
    pub clients: usize,
    /// Even clients start with a one-shot, odd ones with a lease cycle; each
    /// then alternates.
    pub deadline: Duration,
    /// Pause after a successful operation.
    pub think: Duration,
    /// Pause after a failed one.
    pub backoff: Duration,
    /// HTTP/2 connections shared by the clients.
    pub channels: usize,
}

impl LoadSpec {
    /// The issue's steady load: 32 clients mixing one-shot Execute and lease
    /// cycles, each call with a 3 s deadline.
    pub fn steady(tenants: &[&str]) -> Self {
        LoadSpec {
            tenants: tenants.iter().map(|t| (*t).to_owned()).collect(),
            clients: 32,
            deadline: Duration::from_secs(3),
            think: Duration::from_millis(20),
            backoff: Duration::from_millis(50),
            channels: 4,
        }
    }

    pub fn clients(mut self, n: usize) -> Self {
        self.clients = n;
        self
    }
}

/// A running load; [`Load::stop`] ends it and returns every operation.
pub struct Load {
    started: Instant,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Op>>>,
}

impl Load {
    pub async fn start(pooler: &Pooler, spec: LoadSpec) -> Load {
        let mut channels = Vec::new();
        for _ in 0..spec.channels.max(1) {
            channels.push(pooler.client().await);
        }
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..spec.clients)
            .map(|i| {
                let client = channels[i % channels.len()].clone();
                let tenant = spec.tenants[i % spec.tenants.len()].clone();
                tokio::spawn(load_client(
                    i,
                    client,
                    tenant,
                    spec.clone(),
                    started,
                    stop.clone(),
                ))
            })
            .collect();
        Load {
            started,
            stop,
            tasks,
        }
    }

    /// Time since the load started; marks events on the operations' clock.
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut ops = Vec::new();
        for task in self.tasks {
            ops.extend(task.await.expect("load client panicked"));
        }
        ops.sort_by_key(|op| op.start);
        LoadReport { ops }
    }
}

async fn load_client(
    index: usize,
    mut client: LeaseClient,
    tenant: String,
    spec: LoadSpec,
    started: Instant,
    stop: Arc<AtomicBool>,
) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut n: i64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let kind = if (index as i64 + n) % 2 == 0 {
            OpKind::OneShot
        } else {
            OpKind::LeaseCycle
        };
        // Unique per operation, so a crossed result cannot go unnoticed.
        let value = ((index as i64) << 32) | n;
        let start = started.elapsed();
        let result = match kind {
            OpKind::OneShot => one_shot_op(&mut client, &tenant, value, spec.deadline).await,
            OpKind::LeaseCycle => lease_cycle_op(&mut client, &tenant, value, spec.deadline).await,
        };
        let ok = result == OpResult::Ok;
        ops.push(Op {
            client: index,
            kind,
            tenant: tenant.clone(),
            start,
            end: started.elapsed(),
            result,
        });
        n += 1;
        tokio::time::sleep(if ok { spec.think } else { spec.backoff }).await;
    }
    ops
}

fn with_deadline<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline);
    request
}

/// Runs `call`, turning "no answer by the deadline plus grace" into Hung.
async fn bounded<T>(
    deadline: Duration,
    what: &str,
    call: impl std::future::Future<Output = T>,
) -> Result<T, OpResult> {
    tokio::time::timeout(deadline + HANG_GRACE, call)
        .await
        .map_err(|_| OpResult::Hung(format!("{what}: no answer after {deadline:?} + grace")))
}

/// Runs one statement and returns its outcome; `refused` tells how an error
/// status of the call itself is classified.
async fn execute_op(
    client: &mut LeaseClient,
    request: ExecuteRequest,
    deadline: Duration,
    on_lease: bool,
) -> Result<Outcome, OpResult> {
    let what = format!("Execute {:?}", request.sql);
    bounded(deadline, &what, async {
        let mut stream = match client.execute(with_deadline(request, deadline)).await {
            Ok(response) => response.into_inner(),
            Err(s) if on_lease => {
                return Err(OpResult::InFlight(Some(s.code()), s.message().to_owned()));
            }
            Err(s) => return Err(OpResult::Refused(s.code(), s.message().to_owned())),
        };
        let mut outcome = Outcome::default();
        loop {
            match stream.message().await {
                Ok(Some(message)) => collect(&mut outcome, message),
                Ok(None) => break,
                Err(s) => return Err(OpResult::InFlight(Some(s.code()), s.message().to_owned())),
            }
        }
        if let Some((sqlstate, message)) = &outcome.sql_error {
            return Err(OpResult::InFlight(
                None,
                format!("SQLSTATE {sqlstate}: {message}"),
            ));
        }
        Ok(outcome)
    })
    .await?
}

fn check_value(outcome: &Outcome, value: i64) -> Result<(), OpResult> {
    match outcome
        .rows
        .first()
        .and_then(|r| r.first())
        .map(|v| &v.kind)
    {
        Some(Some(V::Int64(n))) if *n == value => Ok(()),
        other => Err(OpResult::WrongResult(format!(
            "asked for {value}, got {other:?}"
        ))),
    }
}

async fn one_shot_op(
    client: &mut LeaseClient,
    tenant: &str,
    value: i64,
    deadline: Duration,
) -> OpResult {
    let request = ExecuteRequest {
        tenant_id: tenant.to_owned(),
        sql: "SELECT $1::int8".into(),
        params: vec![int(value)],
        ..Default::default()
    };
    match execute_op(client, request, deadline, false).await {
        Ok(outcome) => check_value(&outcome, value).err().unwrap_or(OpResult::Ok),
        Err(result) => result,
    }
}

async fn lease_cycle_op(
    client: &mut LeaseClient,
    tenant: &str,
    value: i64,
    deadline: Duration,
) -> OpResult {
    let request = ConnectionRequest {
        tenant_id: tenant.to_owned(),
        ..Default::default()
    };
    let granted = bounded(
        deadline,
        "GetConnection",
        client.get_connection(with_deadline(request, deadline)),
    )
    .await;
    let id = match granted {
        Ok(Ok(response)) => response.into_inner().connection_id,
        Ok(Err(s)) => return OpResult::Refused(s.code(), s.message().to_owned()),
        Err(hung) => return hung,
    };
    let result = lease_work(client, &id, value, deadline).await;
    let release_request = ConnectionRelease {
        connection_id: id.clone(),
    };
    let released = bounded(
        deadline,
        "ReleaseConnection",
        client.release_connection(with_deadline(release_request, deadline)),
    )
    .await;
    match (result, released) {
        (Err(first), _) => first,
        (Ok(()), Ok(Ok(_))) => OpResult::Ok,
        (Ok(()), Ok(Err(s))) => OpResult::InFlight(
            Some(s.code()),
            format!("ReleaseConnection: {}", s.message()),
        ),
        (Ok(()), Err(hung)) => hung,
    }
}

async fn lease_work(
    client: &mut LeaseClient,
    id: &str,
    value: i64,
    deadline: Duration,
) -> Result<(), OpResult> {
    for (sql, params) in [
        ("BEGIN", vec![]),
        ("SELECT $1::int8", vec![int(value)]),
        ("COMMIT", vec![]),
    ] {
        let request = ExecuteRequest {
            connection_id: id.to_owned(),
            sql: sql.into(),
            params,
            ..Default::default()
        };
        let outcome = execute_op(client, request, deadline, true).await?;
        if sql.starts_with("SELECT") {
            check_value(&outcome, value)?;
        }
    }
    Ok(())
}

/// Every operation of a finished load.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub ops: Vec<Op>,
}

impl LoadReport {
    /// The operations that started within `[from, to)`.
    pub fn started_between(&self, from: Duration, to: Duration) -> LoadReport {
        LoadReport {
            ops: self
                .ops
                .iter()
                .filter(|op| op.start >= from && op.start < to)
                .cloned()
                .collect(),
        }
    }

    pub fn filter(&self, keep: impl Fn(&Op) -> bool) -> Vec<&Op> {
        self.ops.iter().filter(|op| keep(op)).collect()
    }

    pub fn ok(&self) -> usize {
        self.filter(Op::ok).len()
    }

    pub fn failed(&self) -> Vec<&Op> {
        self.filter(|op| !op.ok())
    }

    pub fn hung(&self) -> Vec<&Op> {
        self.filter(|op| matches!(op.result, OpResult::Hung(_)))
    }

    pub fn wrong(&self) -> Vec<&Op> {
        self.filter(|op| matches!(op.result, OpResult::WrongResult(_)))
    }

    pub fn in_flight(&self) -> Vec<&Op> {
        self.filter(|op| matches!(op.result, OpResult::InFlight(..)))
    }

    /// Failures other than the given status codes (refused or in flight).
    pub fn failed_except(&self, codes: &[Code]) -> Vec<&Op> {
        self.filter(|op| match &op.result {
            OpResult::Ok => false,
            OpResult::Refused(code, _) | OpResult::InFlight(Some(code), _) => !codes.contains(code),
            _ => true,
        })
    }

    /// Failures other than a lost server connection: UNAVAILABLE, or
    /// FAILED_PRECONDITION on a lease that lost its connection.
    pub fn failed_other_than_connection_loss(&self) -> Vec<&Op> {
        self.filter(|op| match &op.result {
            OpResult::Ok => false,
            OpResult::Refused(code, _) | OpResult::InFlight(Some(code), _)
                if *code == Code::Unavailable =>
            {
                false
            }
            OpResult::InFlight(Some(Code::FailedPrecondition), message) => {
                !message.contains("lost its server connection")
            }
            _ => true,
        })
    }

    /// Counts by outcome, e.g. "1210 ok, 12 refused Unavailable, 3 in flight Unavailable".
    pub fn summary(&self) -> String {
        let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
        for op in &self.ops {
            let key = match &op.result {
                OpResult::Ok => "ok".to_owned(),
                OpResult::Refused(code, _) => format!("refused {code:?}"),
                OpResult::InFlight(Some(code), _) => format!("in-flight {code:?}"),
                OpResult::InFlight(None, message) => format!(
                    "in-flight SQL error {}",
                    message.split(':').next().unwrap_or_default()
                ),
                OpResult::WrongResult(_) => "wrong result".to_owned(),
                OpResult::Hung(_) => "hung".to_owned(),
            };
            *counts.entry(key).or_default() += 1;
        }
        counts
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The first few distinct failures, for a test's message.
    pub fn examples(&self, ops: &[&Op]) -> String {
        let mut seen = Vec::new();
        for op in ops {
            let text = format!("{:?}", op.result);
            if !seen.contains(&text) {
                seen.push(text);
            }
            if seen.len() == 4 {
                break;
            }
        }
        seen.join(" | ")
    }

    /// The `p`-quantile (0..=1) of successful operations' latency.
    pub fn percentile(&self, p: f64, kind: Option<OpKind>) -> Duration {
        let mut latencies: Vec<Duration> = self
            .ops
            .iter()
            .filter(|op| op.ok() && kind.is_none_or(|k| op.kind == k))
            .map(Op::latency)
            .collect();
        if latencies.is_empty() {
            return Duration::ZERO;
        }
        latencies.sort();
        let rank = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len());
        latencies[rank - 1]
    }

    pub fn max_latency(&self) -> Duration {
        self.ops.iter().map(Op::latency).max().unwrap_or_default()
    }

    /// How long after `since` the load was healthy again: the end of the
    /// first successful operation that started after the last failure (or
    /// since `since` if nothing failed after it). `None` if nothing succeeded.
    pub fn healthy_again_after(&self, since: Duration) -> Option<Duration> {
        let last_failure = self
            .ops
            .iter()
            .filter(|op| !op.ok() && op.end >= since)
            .map(|op| op.start)
            .max();
        let from = last_failure.unwrap_or(since);
        self.ops
            .iter()
            .filter(|op| op.ok() && op.start >= from)
            .map(|op| op.end)
            .min()
            .map(|end| end.saturating_sub(since))
    }
}

/// Milliseconds, for tables.
pub fn ms(d: Duration) -> String {
    if d >= Duration::from_secs(10) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// One row of `target/fault-summary.md`: what was done, what should happen,
/// what did happen. Written when the test passes, and as FAIL when a check
/// fails or the test ends early.
pub struct Finding {
    id: String,
    fault: String,
    expected: String,
    observed: Vec<String>,
    written: bool,
}

static SUMMARY: Mutex<()> = Mutex::new(());

impl Finding {
    /// `id` orders the table (F1..F9 faults, B01.. bad input).
    pub fn new(id: &str, fault: &str, expected: &str) -> Finding {
        Finding {
            id: id.to_owned(),
            fault: fault.to_owned(),
            expected: expected.to_owned(),
            observed: Vec::new(),
            written: false,
        }
    }

    pub fn observe(&mut self, text: impl Into<String>) {
        self.observed.push(text.into());
    }

    /// Asserts `ok`; a failed check is written to the summary, then panics.
    #[track_caller]
    pub fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            let what = what.into();
            self.observed.push(format!("FAILED: {what}"));
            self.write(false);
            panic!("[{}] {}: {what}", self.id, self.fault);
        }
    }

    /// All checks held: written as PASS.
    pub fn pass(mut self) {
        self.write(true);
    }

    fn write(&mut self, pass: bool) {
        self.written = true;
        let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
        let row = format!(
            "| {} | {} | {} | {} | {} |\n",
            self.id,
            cell(&self.fault),
            cell(&self.expected),
            cell(&self.observed.join("; ")),
            if pass { "PASS" } else { "**FAIL**" }
        );
        let _one_writer = SUMMARY.lock().unwrap_or_else(|e| e.into_inner());
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fault-summary");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{}.md", self.id)), &row).unwrap();
        let mut rows: Vec<(String, String)> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                Some((name, std::fs::read_to_string(e.path()).ok()?))
            })
            .collect();
        rows.sort_by_key(|(name, _)| sort_key(name));
        let mut table = String::from(
            "# Teresa fault and abuse suite\n\n\
             Written by `cargo test -p teresa-pooler --test faults --test bad_input` \
             (pooler/tests/faults.rs, pooler/tests/bad_input.rs): real PostgreSQL 15, \
             real `teresa-pooler` processes over TLS; every fault runs under a steady load \
             of 32 clients mixing one-shot Execute and lease cycles, every bad input beside \
             8 bystander clients on another tenant. Figures are from the last run on this \
             machine (2 cores, debug build).\n\n\
             | # | Fault or input | Expected | Observed | Pass |\n\
             |---|---|---|---|---|\n",
        );
        for (_, row) in &rows {
            table.push_str(row);
        }
        let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("CARGO_TARGET_TMPDIR is target/tmp")
            .join("fault-summary.md");
        let partial = target.with_extension(format!("md.{}", std::process::id()));
        std::fs::write(&partial, &table).unwrap();
        std::fs::rename(&partial, &target).unwrap();
        println!("{row}");
        println!("summary: {}\n{table}", target.display());
    }
}

/// Faults before bad input; F2 before F6b before F10.
fn sort_key(name: &str) -> (bool, u32, String) {
    let stem = name.trim_end_matches(".md");
    let number: String = stem
        .chars()
        .skip(1)
        .take_while(char::is_ascii_digit)
        .collect();
    let rest = stem[1 + number.len()..].to_owned();
    (!stem.starts_with('F'), number.parse().unwrap_or(0), rest)
}

impl Drop for Finding {
    fn drop(&mut self) {
        if !self.written {
            self.observed
                .push("the test ended before its checks finished".into());
            self.write(false);
        }
    }
}
