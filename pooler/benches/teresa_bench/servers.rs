//! The three servers of a run, all on 127.0.0.1: a throwaway PostgreSQL with
//! pgbench's tables, PgBouncer in transaction mode, and the release
//! `teresa-pooler` binary with dev certificates. Each is stopped and its
//! files removed when dropped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use teresa_pooler::certs::{self, DevCertPaths};
use teresa_pooler::devdb::ThrowawayPostgres;
use teresa_proto::admin::pooler_admin_client::PoolerAdminClient;
use teresa_proto::admin::{
    DatabaseTarget, GetStatusRequest, LeaseSettings, PoolSettings, PoolerConfig, TenantConfig,
};
use teresa_proto::connectionpool::StatsRequest;
use teresa_proto::connectionpool::connection_pool_service_client::ConnectionPoolServiceClient;
use tokio::process::{Child, Command};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::procfs;

/// The database, role and table every scenario uses.
pub const DBNAME: &str = "bench";
pub const ROLE: &str = "bench";

/// A scratch directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> anyhow::Result<TempDir> {
        let dir = std::env::temp_dir().join(format!(
            "teresa-bench-{tag}-{}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(TempDir(dir))
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

/// Where the PostgreSQL client programs are: `$TERESA_PG_BIN`, else
/// Debian's PostgreSQL 15 directory, else `$PATH`.
pub fn pg_program(name: &str) -> PathBuf {
    let dir = std::env::var_os(teresa_pooler::devdb::PG_BIN_ENV)
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
    let path = dir.join(name);
    if path.is_file() {
        path
    } else {
        PathBuf::from(name)
    }
}

/// The first line a program prints for `--version`, for the report.
pub async fn version_of(program: &Path) -> String {
    match Command::new(program).arg("--version").output().await {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned(),
        Err(_) => "unknown".to_owned(),
    }
}

/// The throwaway PostgreSQL 15 with `pgbench -i` tables owned by [`ROLE`].
pub struct Database {
    pub pg: ThrowawayPostgres,
    pub password: String,
    pub accounts: i32,
}

impl Database {
    /// Starts the cluster, creates the role and database, and loads pgbench's
    /// tables at `scale` (100,000 accounts per unit).
    pub async fn start(scale: u32) -> anyhow::Result<Database> {
        let pg = ThrowawayPostgres::start()
            .await
            .context("start a throwaway PostgreSQL 15")?;
        let password = format!("bench-{:x}", rand::random::<u64>());
        pg.create_database(DBNAME, ROLE, &password).await?;
        let db = Database {
            pg,
            password,
            accounts: (scale * 100_000) as i32,
        };
        let started = Instant::now();
        let output = db
            .pgbench_command(db.pg.port())
            .args(["-i", "-q", "-s", &scale.to_string()])
            .arg(DBNAME)
            .output()
            .await
            .context("run pgbench -i")?;
        if !output.status.success() {
            bail!(
                "pgbench -i failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        eprintln!(
            "  pgbench -i -s {scale}: {} accounts in {:.1} s",
            db.accounts,
            started.elapsed().as_secs_f64()
        );
        Ok(db)
    }

    /// pgbench as [`ROLE`] against `port` (PostgreSQL's or PgBouncer's).
    pub fn pgbench_command(&self, port: u16) -> Command {
        let mut command = Command::new(pg_program("pgbench"));
        command
            .args(["-h", self.pg.host(), "-p", &port.to_string()])
            .args(["-U", ROLE])
            .env("PGPASSWORD", &self.password)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    pub fn postmaster_pid(&self) -> anyhow::Result<u32> {
        procfs::postmaster_pid(self.pg.data_dir()).context("read postmaster.pid")
    }

    /// The role's SCRAM secret as PostgreSQL stores it, for PgBouncer's userlist.
    pub async fn scram_secret(&self) -> anyhow::Result<String> {
        let client = self.pg.client("postgres").await?;
        let row = client
            .query_one(
                "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
                &[&ROLE],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Client settings for [`ROLE`] on `port` (PostgreSQL's or PgBouncer's).
    pub fn client_config(&self, port: u16) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(self.pg.host())
            .port(port)
            .user(ROLE)
            .password(&self.password)
            .dbname(DBNAME)
            .application_name("teresa-bench");
        config
    }

    /// A deadpool-postgres pool of at most `max` connections to `port`.
    pub fn pool(&self, port: u16, max: usize) -> anyhow::Result<deadpool_postgres::Pool> {
        let manager = deadpool_postgres::Manager::from_config(
            self.client_config(port),
            tokio_postgres::NoTls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        Ok(deadpool_postgres::Pool::builder(manager)
            .max_size(max)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()?)
    }

    /// A tenant of [`ROLE`] on [`DBNAME`] at `port`.
    pub fn tenant(&self, id: &str, port: u16, pool: PoolSettings) -> TenantConfig {
        TenantConfig {
            id: id.to_owned(),
            database: Some(DatabaseTarget {
                host: self.pg.host().to_owned(),
                port: port.into(),
                dbname: DBNAME.to_owned(),
                user: ROLE.to_owned(),
                password: self.password.clone(),
                ssl_mode: "disable".to_owned(),
                ..Default::default()
            }),
            pool: Some(pool),
            leases: Some(LeaseSettings {
                default_ttl: "30m".to_owned(),
                max_ttl: "1h".to_owned(),
                max_per_client: 0,
            }),
            allowed_clients: Vec::new(),
        }
    }
}

/// The `postgres` OS user's uid and gid, to run PgBouncer as when we are
/// root (it refuses to run as root).
fn postgres_user() -> Option<(u32, u32)> {
    let is_root = std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .is_some_and(|euid| euid == "0");
    if !is_root {
        return None;
    }
    std::fs::read_to_string("/etc/passwd")
        .ok()?
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.first() == Some(&"postgres"))
                .then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
        })
}

/// How to authenticate PgBouncer's clients.
pub enum BouncerAuth {
    /// `auth_type = scram-sha-256` with the role's SCRAM secret in the
    /// userlist; PgBouncer logs in to PostgreSQL with the client's keys.
    Scram(String),
    /// `auth_type = trust` with the plain password in the userlist, which
    /// PgBouncer uses to log in to PostgreSQL: no per-connection key
    /// derivation, for opening thousands of client connections quickly.
    TrustWithPassword(String),
}

/// A PgBouncer process in transaction mode.
pub struct PgBouncer {
    child: Child,
    pub port: u16,
    dir: TempDir,
}

impl PgBouncer {
    pub async fn start(
        db: &Database,
        auth: BouncerAuth,
        pool_size: u32,
        max_client_conn: u32,
    ) -> anyhow::Result<PgBouncer> {
        let dir = TempDir::new("pgbouncer")?;
        let run_as = postgres_user();
        let port = free_port()?;
        let (auth_type, secret) = match auth {
            BouncerAuth::Scram(secret) => ("scram-sha-256", secret),
            BouncerAuth::TrustWithPassword(password) => ("trust", password),
        };
        let userlist = dir.path().join("userlist.txt");
        std::fs::write(&userlist, format!("\"{ROLE}\" \"{secret}\"\n"))?;
        let ini = dir.path().join("pgbouncer.ini");
        let log = dir.path().join("pgbouncer.log");
        std::fs::write(
            &ini,
            format!(
                "[databases]\n\
                 {DBNAME} = host={host} port={pg_port} dbname={DBNAME}\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = {auth_type}\n\
                 auth_file = {userlist}\n\
                 pool_mode = transaction\n\
                 default_pool_size = {pool_size}\n\
                 max_db_connections = {pool_size}\n\
                 reserve_pool_size = 0\n\
                 max_client_conn = {max_client_conn}\n\
                 logfile = {log}\n\
                 log_connections = 0\n\
                 log_disconnections = 0\n\
                 ignore_startup_parameters = extra_float_digits\n",
                host = db.pg.host(),
                pg_port = db.pg.port(),
                userlist = userlist.display(),
                log = log.display(),
            ),
        )?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&userlist, std::fs::Permissions::from_mode(0o600))?;
        if let Some((uid, gid)) = run_as {
            for path in [dir.path(), &userlist, &ini] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
            }
        }
        let stderr = std::fs::File::create(dir.path().join("stderr.log"))?;
        let mut command = Command::new(if Path::new("/usr/sbin/pgbouncer").is_file() {
            "/usr/sbin/pgbouncer"
        } else {
            "pgbouncer"
        });
        command
            .arg(&ini)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true);
        if let Some((uid, gid)) = run_as {
            command.uid(uid).gid(gid);
        }
        let mut child = command
            .spawn()
            .context("run pgbouncer (apt-get install pgbouncer)")?;
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "pgbouncer exited with {status}:\n{}\n{}",
                    tail(&log),
                    tail(&dir.path().join("stderr.log"))
                );
            }
            if started.elapsed() > Duration::from_secs(15) {
                bail!("pgbouncer did not listen within 15 s:\n{}", tail(&log));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(PgBouncer { child, port, dir })
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    pub fn log_tail(&self) -> String {
        tail(&self.dir.path().join("pgbouncer.log"))
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// How to run `teresa-pooler`: which binary, with which extra environment
/// (e.g. `TOKIO_WORKER_THREADS`).
#[derive(Debug, Clone)]
pub struct TeresaBinary {
    pub path: PathBuf,
    pub env: Vec<(String, String)>,
}

/// A `teresa-pooler` process with dev certificates, its lease API on TLS
/// and its admin API on mTLS.
pub struct Teresa {
    child: Child,
    pub grpc_port: u16,
    pub admin_port: u16,
    certs: DevCertPaths,
    dir: TempDir,
}

impl Teresa {
    /// Starts the pooler with `tenants` as its config file (none: an empty
    /// pooler waiting for the admin API) and waits until it serves.
    pub async fn start(
        binary: &TeresaBinary,
        tenants: Option<Vec<TenantConfig>>,
    ) -> anyhow::Result<Self> {
        let dir = TempDir::new("teresa")?;
        let certs = certs::generate_dev_certs(&dir.path().join("certs"))?;
        let grpc_port = free_port()?;
        let admin_port = free_port()?;
        let log = std::fs::File::create(dir.path().join("teresa.log"))?;
        let mut command = Command::new(&binary.path);
        command
            .args(["--host", "127.0.0.1"])
            .args(["--port", &grpc_port.to_string()])
            .args(["--metrics-port", &free_port()?.to_string()])
            .args(["--admin-port", &admin_port.to_string()])
            .arg("--tls-cert")
            .arg(&certs.server_cert)
            .arg("--tls-key")
            .arg(&certs.server_key)
            .arg("--admin-ca")
            .arg(&certs.ca_cert)
            .args(["--log-level", "warn"])
            .env_remove("RUST_LOG")
            .envs(binary.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        if let Some(tenants) = tenants {
            let path = dir.path().join("pooler.yaml");
            let yaml = serde_yaml::to_string(&PoolerConfig {
                generation: 0,
                version: String::new(),
                tenants,
            })?;
            std::fs::write(&path, yaml)?;
            command.arg("--config").arg(path);
        }
        let child = command
            .spawn()
            .with_context(|| format!("run {}", binary.path.display()))?;
        let mut teresa = Teresa {
            child,
            grpc_port,
            admin_port,
            certs,
            dir,
        };
        teresa.wait_serving().await?;
        Ok(teresa)
    }

    async fn wait_serving(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if let Ok(mut admin) = self.admin().await
                && admin.get_status(GetStatusRequest {}).await.is_ok()
            {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("teresa-pooler exited with {status}:\n{}", self.log_tail());
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("teresa-pooler not serving after 30 s:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `tenant` holds `connections` open server connections.
    pub async fn wait_warm(&self, tenant: &str, connections: i32) -> anyhow::Result<()> {
        let mut client = ConnectionPoolServiceClient::new(self.channel().await?);
        let started = Instant::now();
        loop {
            let stats = client
                .get_pool_stats(StatsRequest {
                    tenant_id: tenant.to_owned(),
                })
                .await?
                .into_inner();
            if stats.total_connections >= connections {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!(
                    "tenant {tenant} has {} of {connections} connections after 30 s",
                    stats.total_connections
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    pub fn rss_kib(&self) -> u64 {
        procfs::rss_kib(self.pid())
    }

    pub fn log_tail(&self) -> String {
        tail(&self.dir.path().join("teresa.log"))
    }

    fn tls(&self) -> anyhow::Result<ClientTlsConfig> {
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(&self.certs.ca_cert)?))
            .domain_name("localhost"))
    }

    /// A new HTTP/2 connection to the lease API.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(
            Channel::from_shared(format!("https://127.0.0.1:{}", self.grpc_port))?
                .tls_config(self.tls()?)?
                .tcp_nodelay(true)
                .connect()
                .await?,
        )
    }

    /// `n` connections to the lease API.
    pub async fn channels(&self, n: usize) -> anyhow::Result<Vec<Channel>> {
        let mut channels = Vec::with_capacity(n);
        for _ in 0..n {
            channels.push(self.channel().await?);
        }
        Ok(channels)
    }

    /// An admin API client with the operator's certificate.
    pub async fn admin(&self) -> anyhow::Result<PoolerAdminClient<Channel>> {
        let identity = Identity::from_pem(
            std::fs::read(&self.certs.operator_cert)?,
            std::fs::read(&self.certs.operator_key)?,
        );
        let channel = Channel::from_shared(format!("https://127.0.0.1:{}", self.admin_port))?
            .tls_config(self.tls()?.identity(identity))?
            .connect()
            .await?;
        Ok(PoolerAdminClient::new(channel).max_decoding_message_size(64 << 20))
    }

    /// Stops the pooler (SIGKILL; nothing of it is measured after this).
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
