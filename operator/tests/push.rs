//! The push path against real `teresa-pooler` processes over real mTLS: the
//! operator's planner renders snapshots from TenantPools and Secrets, its pusher
//! brings each pooler to them, and the poolers serve (or stop serving) the
//! tenants against a throwaway PostgreSQL.
//!
//! The pooler binary is `$TERESA_POOLER_BIN`, else `teresa-pooler` in this
//! build's target directory (`cargo test --workspace` builds it first), else it
//! is built here into a separate target directory.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Pod, Secret};
use teresa_operator::{
    crd::TenantPool,
    desired::{FleetInputs, FleetPlan, plan},
    push::{AdminTls, FleetSync, PushError, PushSettings, PushTargets, Pusher, sync_pod},
};
use teresa_pooler::devdb::ThrowawayPostgres;
use teresa_proto::connectionpool::{
    ConnectionRelease, ConnectionRequest, ExecuteRequest,
    connection_pool_service_client::ConnectionPoolServiceClient,
};
use tokio::{process::Child, sync::watch};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

// ---------------------------------------------------------------- harness

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

fn pooler_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("TERESA_POOLER_BIN") {
        return PathBuf::from(bin);
    }
    let built = target_dir().join("debug/teresa-pooler");
    if built.exists() {
        return built;
    }
    // A separate target directory: this build's directory is locked by cargo.
    let own = target_dir().join("operator-push-tests");
    let status =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "-p", "teresa-pooler", "--bin", "teresa-pooler"])
            .env("CARGO_TARGET_DIR", &own)
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .expect("cargo runs");
    assert!(status.success(), "building teresa-pooler failed");
    own.join("debug/teresa-pooler")
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "teresa-operator-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Dev certificates from `teresa-pooler certs`: a CA, the pooler's server
/// certificate for localhost, the operator identity and a plain client.
struct Certs(TempDir);

impl Certs {
    fn generate() -> Self {
        let dir = TempDir::new("certs");
        let status = std::process::Command::new(pooler_binary())
            .args(["certs", "--out"])
            .arg(&dir.0)
            .stdout(Stdio::null())
            .status()
            .expect("teresa-pooler certs runs");
        assert!(status.success());
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.0.join(name)
    }

    /// Push settings presenting the certificate `cert`/`key`.
    fn push_settings(&self, cert: &str, key: &str, admin_port: u16) -> PushSettings {
        let mut settings = PushSettings::new(
            AdminTls {
                cert: self.path(cert),
                key: self.path(key),
                ca: self.path("ca.pem"),
                server_name: "localhost".into(),
            },
            admin_port,
        );
        settings.timeout = Duration::from_secs(10);
        settings.backoff_min = Duration::from_millis(100);
        settings.backoff_max = Duration::from_millis(500);
        settings.stats_interval = Duration::from_millis(300);
        settings
    }
}

/// A running `teresa-pooler` with an empty configuration (or a given file).
struct Pooler {
    child: Child,
    grpc_port: u16,
    admin_port: u16,
    _work: TempDir,
    log: PathBuf,
}

impl Pooler {
    async fn start(certs: &Certs, config_yaml: &str) -> Self {
        let work = TempDir::new("pooler");
        let config = work.0.join("pooler.yaml");
        std::fs::write(&config, config_yaml).unwrap();
        let log = work.0.join("pooler.log");
        let grpc_port = free_port();
        let admin_port = free_port();
        let child = tokio::process::Command::new(pooler_binary())
            .arg("--config")
            .arg(&config)
            .args(["--host", "127.0.0.1"])
            .args(["--port", &grpc_port.to_string()])
            .args(["--metrics-port", &free_port().to_string()])
            .args(["--admin-port", &admin_port.to_string()])
            .arg("--tls-cert")
            .arg(certs.path("cert.pem"))
            .arg("--tls-key")
            .arg(certs.path("key.pem"))
            .arg("--admin-ca")
            .arg(certs.path("ca.pem"))
            .args(["--admin-identities", "spiffe://teresa.dev/operator"])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("teresa-pooler starts");
        let mut pooler = Self {
            child,
            grpc_port,
            admin_port,
            _work: work,
            log,
        };
        pooler.wait_listening().await;
        pooler
    }

    async fn wait_listening(&mut self) {
        let started = Instant::now();
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.admin_port))
                .await
                .is_ok()
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("teresa-pooler exited with {status}: {}", self.log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "pooler not listening: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn lease_client(
        &self,
        certs: &Certs,
    ) -> ConnectionPoolServiceClient<tonic::transport::Channel> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(
                std::fs::read(certs.path("ca.pem")).unwrap(),
            ))
            .domain_name("localhost");
        let channel = Endpoint::from_shared(format!("https://127.0.0.1:{}", self.grpc_port))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .expect("lease API reachable");
        ConnectionPoolServiceClient::new(channel)
    }
}

/// A tenant database with its own login role.
struct TenantDb {
    dbname: String,
    user: String,
}

async fn tenant_db(pg: &ThrowawayPostgres, name: &str, password: &str) -> TenantDb {
    let db = TenantDb {
        dbname: format!("db_{name}"),
        user: format!("role_{name}"),
    };
    pg.create_database(&db.dbname, &db.user, password)
        .await
        .expect("tenant database");
    db
}

fn tenant_pool(name: &str, pg: &ThrowawayPostgres, db: &TenantDb, max: u32) -> TenantPool {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "teresa.dev/v1alpha1",
        "kind": "TenantPool",
        "metadata": {
            "name": name, "namespace": "shop", "uid": format!("uid-{name}"),
            "generation": 1, "creationTimestamp": "2026-01-01T00:00:00Z"
        },
        "spec": {
            "database": {
                "host": pg.host(), "port": pg.port(), "dbname": db.dbname,
                "sslMode": "disable",
                "credentialsSecret": {"name": format!("{name}-creds")}
            },
            "pool": {"maxConnections": max, "minConnections": 1}
        }
    }))
    .expect("valid TenantPool")
}

fn creds(name: &str, user: &str, password: &str, resource_version: &str) -> Secret {
    serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": format!("{name}-creds"), "namespace": "shop",
            "uid": format!("uid-secret-{name}"), "resourceVersion": resource_version
        },
        "stringData": {"username": user, "password": password}
    }))
    .unwrap()
}

/// A Running pooler pod at 127.0.0.1 (the pusher dials IP:admin_port).
fn pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "teresa", "uid": format!("uid-{name}"),
                     "labels": {"app.kubernetes.io/name": "teresa-pooler"}},
        "status": {"phase": "Running", "podIP": "127.0.0.1"}
    }))
    .unwrap()
}

fn fleet_plan(tenant_pools: &[TenantPool], secrets: &[Secret], pods: &[Pod]) -> FleetPlan {
    let tenant_pools: Vec<Arc<TenantPool>> = tenant_pools.iter().cloned().map(Arc::new).collect();
    let secrets: BTreeMap<(String, String), Arc<Secret>> = secrets
        .iter()
        .map(|s| {
            (
                ("shop".to_string(), s.metadata.name.clone().unwrap()),
                Arc::new(s.clone()),
            )
        })
        .collect();
    let pods: Vec<Arc<Pod>> = pods.iter().cloned().map(Arc::new).collect();
    plan(&FleetInputs {
        tenant_pools: &tenant_pools,
        secrets: &secrets,
        pods: &pods,
        default_access: &Default::default(),
    })
}

/// A running pusher with its channels.
struct RunningPusher {
    targets: watch::Sender<Arc<PushTargets>>,
    state: watch::Receiver<Arc<FleetSync>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningPusher {
    fn start(settings: PushSettings) -> Self {
        let (targets, targets_rx) = watch::channel(Arc::new(PushTargets::new()));
        let (state_tx, state) = watch::channel(Arc::new(FleetSync::new()));
        let task = tokio::spawn(Pusher::new(settings, targets_rx, state_tx, None).run());
        Self {
            targets,
            state,
            task,
        }
    }

    /// Hands over `plan` and waits until every pod with an address confirmed it.
    async fn converge(&mut self, plan: &FleetPlan) -> FleetSync {
        self.targets.send_replace(Arc::new(plan.pods.clone()));
        let wanted: BTreeMap<String, String> = plan
            .pods
            .iter()
            .map(|(name, p)| (name.clone(), p.snapshot.version().to_string()))
            .collect();
        let reached = matches!(
            tokio::time::timeout(
                Duration::from_secs(30),
                self.state.wait_for(|state| {
                    wanted.iter().all(|(pod, v)| {
                        state.get(pod).and_then(|s| s.applied_version.as_ref()) == Some(v)
                    })
                }),
            )
            .await,
            Ok(Ok(_))
        );
        let state = self.state.borrow().clone();
        assert!(reached, "pods did not converge: {state:?}");
        (*state).clone()
    }
}

impl Drop for RunningPusher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Leases a connection of `tenant` and runs `SELECT current_user` on it.
async fn lease_and_query(
    client: &mut ConnectionPoolServiceClient<tonic::transport::Channel>,
    tenant: &str,
) -> Result<String, tonic::Status> {
    let lease = client
        .get_connection(ConnectionRequest {
            tenant_id: tenant.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut stream = client
        .execute(ExecuteRequest {
            connection_id: lease.connection_id.clone(),
            sql: "SELECT current_user::text".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut seen = String::new();
    while let Some(message) = stream.message().await? {
        seen.push_str(&format!("{message:?}"));
    }
    client
        .release_connection(ConnectionRelease {
            connection_id: lease.connection_id,
        })
        .await?;
    Ok(seen)
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_snapshot_is_applied_and_the_tenant_serves_then_a_change_is_pushed() {
    let pg = ThrowawayPostgres::start().await.expect("PostgreSQL");
    let db = tenant_db(&pg, "orders", "pw-initial-1").await;
    let certs = Certs::generate();
    let pooler = Pooler::start(&certs, "tenants: []\n").await;
    let mut pusher = RunningPusher::start(certs.push_settings(
        "operator.pem",
        "operator-key.pem",
        pooler.admin_port,
    ));

    let tp = tenant_pool("orders", &pg, &db, 4);
    let secrets = [creds("orders", &db.user, "pw-initial-1", "1")];
    let first = fleet_plan(std::slice::from_ref(&tp), &secrets, &[pod("pooler-0")]);
    let state = pusher.converge(&first).await;
    assert_eq!(state["pooler-0"].last_error, None);

    let mut client = pooler.lease_client(&certs).await;
    let answer = lease_and_query(&mut client, "orders")
        .await
        .expect("tenant serves");
    assert!(answer.contains(&db.user), "{answer}");

    // A setting change is a new version, pushed and visible in the pod's numbers.
    let mut bigger = tp.clone();
    bigger.spec.pool.max_connections = 9;
    let second = fleet_plan(&[bigger], &secrets, &[pod("pooler-0")]);
    assert_ne!(
        first.pods["pooler-0"].snapshot.version(),
        second.pods["pooler-0"].snapshot.version()
    );
    pusher.converge(&second).await;
    let refreshed = matches!(
        tokio::time::timeout(
            Duration::from_secs(10),
            pusher.state.wait_for(|s| s["pooler-0"]
                .tenants
                .get("orders")
                .is_some_and(|t| t.max == 9)),
        )
        .await,
        Ok(Ok(_))
    );
    assert!(
        refreshed,
        "max connections not refreshed: {:?}",
        pusher.state.borrow()
    );
    assert!(
        !pooler.log().contains("pw-initial-1"),
        "password in the pooler log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_rotation_is_pushed_and_the_tenant_keeps_serving_with_the_new_password() {
    let pg = ThrowawayPostgres::start().await.expect("PostgreSQL");
    let db = tenant_db(&pg, "billing", "pw-before-rotation").await;
    let certs = Certs::generate();
    let pooler = Pooler::start(&certs, "tenants: []\n").await;
    let mut pusher = RunningPusher::start(certs.push_settings(
        "operator.pem",
        "operator-key.pem",
        pooler.admin_port,
    ));
    let tp = tenant_pool("billing", &pg, &db, 4);
    let before = fleet_plan(
        std::slice::from_ref(&tp),
        &[creds("billing", &db.user, "pw-before-rotation", "1")],
        &[pod("pooler-0")],
    );
    pusher.converge(&before).await;
    let mut client = pooler.lease_client(&certs).await;
    lease_and_query(&mut client, "billing")
        .await
        .expect("serves before rotation");

    // Rotate: the database gets the new password, then the Secret does.
    pg.create_database(&db.dbname, &db.user, "pw-after-rotation")
        .await
        .unwrap();
    let after = fleet_plan(
        std::slice::from_ref(&tp),
        &[creds("billing", &db.user, "pw-after-rotation", "2")],
        &[pod("pooler-0")],
    );
    assert_ne!(
        before.pods["pooler-0"].snapshot.version(),
        after.pods["pooler-0"].snapshot.version()
    );
    pusher.converge(&after).await;
    // Old server connections authenticated with the old password: end them so
    // the pooler must log in again.
    let admin = pg.client("postgres").await.unwrap();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
            &[&db.user],
        )
        .await
        .unwrap();
    let mut served = None;
    for _ in 0..20 {
        match lease_and_query(&mut client, "billing").await {
            Ok(answer) => {
                served = Some(answer);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    let answer = served.expect("tenant serves with the rotated password");
    assert!(answer.contains(&db.user));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_tenant_is_no_longer_served() {
    let pg = ThrowawayPostgres::start().await.expect("PostgreSQL");
    let db = tenant_db(&pg, "posts", "pw-posts-1").await;
    let certs = Certs::generate();
    let pooler = Pooler::start(&certs, "tenants: []\n").await;
    let mut pusher = RunningPusher::start(certs.push_settings(
        "operator.pem",
        "operator-key.pem",
        pooler.admin_port,
    ));
    let tp = tenant_pool("posts", &pg, &db, 2);
    let secrets = [creds("posts", &db.user, "pw-posts-1", "1")];
    pusher
        .converge(&fleet_plan(
            std::slice::from_ref(&tp),
            &secrets,
            &[pod("pooler-0")],
        ))
        .await;
    let mut client = pooler.lease_client(&certs).await;
    lease_and_query(&mut client, "posts").await.expect("serves");

    // The TenantPool is being deleted: the plan leaves it out.
    let mut gone = tp.clone();
    gone.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let removal = fleet_plan(&[gone], &secrets, &[pod("pooler-0")]);
    assert!(removal.pods["pooler-0"].snapshot.tenant_ids().is_empty());
    pusher.converge(&removal).await;
    let refused = client
        .get_connection(ConnectionRequest {
            tenant_id: "posts".into(),
            ..Default::default()
        })
        .await
        .expect_err("tenant removed");
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_without_the_operator_identity_is_refused_and_nothing_changes() {
    let pg = ThrowawayPostgres::start().await.expect("PostgreSQL");
    let db = tenant_db(&pg, "intruder", "pw-intruder-1").await;
    let certs = Certs::generate();
    let pooler = Pooler::start(&certs, "tenants: []\n").await;
    let plan = fleet_plan(
        &[tenant_pool("intruder", &pg, &db, 2)],
        &[creds("intruder", &db.user, "pw-intruder-1", "1")],
        &[pod("pooler-0")],
    );
    // client.pem is signed by the same CA but is not the operator's identity.
    let wrong = certs.push_settings("client.pem", "client-key.pem", pooler.admin_port);
    let error = sync_pod(&wrong, "127.0.0.1", &plan.pods["pooler-0"])
        .await
        .expect_err("refused");
    assert!(
        matches!(error, PushError::Refused { .. } | PushError::Connect { .. }),
        "{error:?}"
    );
    assert!(!error.to_string().contains("pw-intruder-1"));

    // The right identity finds nothing applied by the refused attempt.
    let right = certs.push_settings("operator.pem", "operator-key.pem", pooler.admin_port);
    let report = sync_pod(&right, "127.0.0.1", &plan.pods["pooler-0"])
        .await
        .expect("accepted");
    assert!(
        report.pushed,
        "the refused push must not have applied anything"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_pod_backs_off_without_blocking_the_others() {
    let certs = Certs::generate();
    let pooler = Pooler::start(&certs, "tenants: []\n").await;
    let mut pusher = RunningPusher::start(certs.push_settings(
        "operator.pem",
        "operator-key.pem",
        pooler.admin_port,
    ));
    // Same admin port, but an address where nothing listens.
    let mut dead = pod("pooler-dead");
    dead.status.as_mut().unwrap().pod_ip = Some("127.0.0.2".into());
    let plan = fleet_plan(&[], &[], &[pod("pooler-0"), dead]);
    pusher.targets.send_replace(Arc::new(plan.pods.clone()));
    let outcome = matches!(
        tokio::time::timeout(
            Duration::from_secs(20),
            pusher.state.wait_for(|s| {
                s.get("pooler-0").and_then(|p| p.applied_version.as_deref())
                    == Some(plan.pods["pooler-0"].snapshot.version())
                    && s.get("pooler-dead")
                        .is_some_and(|p| p.failures >= 2 && p.last_error.is_some())
            }),
        )
        .await,
        Ok(Ok(_))
    );
    assert!(outcome, "{:?}", pusher.state.borrow());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooler_started_from_the_stored_snapshot_needs_no_push() {
    let pg = ThrowawayPostgres::start().await.expect("PostgreSQL");
    let db = tenant_db(&pg, "stored", "pw-stored-1").await;
    let certs = Certs::generate();
    let plan = fleet_plan(
        &[tenant_pool("stored", &pg, &db, 2)],
        &[creds("stored", &db.user, "pw-stored-1", "1")],
        &[pod("pooler-0")],
    );
    // What the snapshot Secret holds, as the pooler Deployment mounts it.
    let pooler = Pooler::start(&certs, &plan.stored.to_yaml().unwrap()).await;
    let settings = certs.push_settings("operator.pem", "operator-key.pem", pooler.admin_port);
    let mut report = None;
    for _ in 0..40 {
        match sync_pod(&settings, "127.0.0.1", &plan.pods["pooler-0"]).await {
            Ok(r) => {
                report = Some(r);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    let report = report.expect("admin API answers");
    assert_eq!(report.applied_version, plan.stored.version());
    assert!(
        !report.pushed,
        "a pooler started from the stored snapshot already holds it"
    );
    let mut client = pooler.lease_client(&certs).await;
    lease_and_query(&mut client, "stored")
        .await
        .expect("serves from the file");
}
