//! The admin API and live reconfiguration: what the operator relies on to
//! change a pooler at any moment under load without dropping anything.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use support::*;
use teresa_pooler::config::parse_yaml;
use teresa_proto::admin::{GetStatusRequest, PoolerConfig, PoolerStatus, TenantApplyResult};
use teresa_proto::connectionpool::ConnectionRequest;
use tonic::Code;

fn snapshot(version: &str, tenants: &[(&TenantDb, &str)]) -> PoolerConfig {
    let mut config = parse_yaml(&PoolerSetup::new(tenants).tenants_yaml).unwrap();
    config.version = version.to_owned();
    config
}

async fn status(pooler: &Pooler) -> PoolerStatus {
    pooler
        .admin()
        .await
        .get_status(GetStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Client-visible failures of a steady load, by kind.
#[derive(Default)]
struct LoadErrors {
    unexpected: AtomicU64,
    not_found_on_removed: AtomicU64,
    ok: AtomicU64,
    last: std::sync::Mutex<Option<String>>,
}

/// `clients` tasks leasing and querying `tenants` round-robin until `stop`.
fn steady_load(
    client: LeaseClient,
    tenants: Vec<String>,
    removed: &'static str,
    clients: usize,
    stop: Arc<AtomicBool>,
    errors: Arc<LoadErrors>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|i| {
            let (mut client, stop, errors) = (client.clone(), stop.clone(), errors.clone());
            let tenants = tenants.clone();
            tokio::spawn(async move {
                let mut n = i;
                while !stop.load(Ordering::Relaxed) {
                    let tenant = &tenants[n % tenants.len()];
                    n += 1;
                    let result = if n % 2 == 0 {
                        cycle(&mut client, tenant).await
                    } else {
                        run(
                            &mut client,
                            teresa_proto::connectionpool::ExecuteRequest {
                                tenant_id: tenant.clone(),
                                sql: "SELECT 1".into(),
                                ..Default::default()
                            },
                        )
                        .await
                        .and_then(|o| match o.sql_error {
                            None => Ok(()),
                            Some(e) => Err(tonic::Status::internal(format!("{e:?}"))),
                        })
                    };
                    match result {
                        Ok(()) => errors.ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) if e.code() == Code::NotFound && tenant == removed => {
                            errors.not_found_on_removed.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(e) => {
                            *errors.last.lock().unwrap() = Some(format!("{tenant}: {e:?}"));
                            errors.unexpected.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect()
}

async fn cycle(client: &mut LeaseClient, tenant: &str) -> Result<(), tonic::Status> {
    let id = client
        .get_connection(ConnectionRequest {
            tenant_id: tenant.to_owned(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .connection_id;
    let outcome = run(
        client,
        teresa_proto::connectionpool::ExecuteRequest {
            connection_id: id.clone(),
            sql: "SELECT 1".into(),
            ..Default::default()
        },
    )
    .await?;
    client
        .release_connection(teresa_proto::connectionpool::ConnectionRelease { connection_id: id })
        .await?;
    match outcome.sql_error {
        None => Ok(()),
        Some(e) => Err(tonic::Status::internal(format!("{e:?}"))),
    }
}

#[tokio::test]
async fn live_reconfiguration_under_load_drops_nothing_and_leaks_nothing() {
    let db = Db::start().await;
    let acme = db.tenant("acme").await;
    let mut globex = db.tenant("globex").await;
    let initech = db.tenant("initech").await;
    let gone = db.tenant("gone").await;
    db.create_table_t(&gone).await;
    let acme_pool =
        "pool: { maxConnections: 10, minConnections: 2, acquireTimeout: 10s, maxWaiting: 1000 }";
    let globex_pool =
        "pool: { maxConnections: 8, minConnections: 8, acquireTimeout: 10s, maxWaiting: 1000 }";
    let initech_pool =
        "pool: { maxConnections: 4, minConnections: 2, acquireTimeout: 10s, maxWaiting: 1000 }";
    let gone_pool =
        "pool: { maxConnections: 4, minConnections: 1, acquireTimeout: 10s, maxWaiting: 1000 }";
    let pooler = Pooler::start(PoolerSetup::new(&[
        (&acme, acme_pool),
        (&globex, globex_pool),
        (&gone, gone_pool),
    ]))
    .await;
    let mut admin = pooler.admin().await;
    let client = pooler.client().await;

    // A lease on the tenant about to be removed, inside a transaction.
    let mut holder = client.clone();
    let held = lease(&mut holder, "gone").await;
    on_lease(&mut holder, &held, "BEGIN", vec![]).await;
    on_lease(&mut holder, &held, "INSERT INTO t VALUES (1)", vec![]).await;

    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(LoadErrors::default());
    let load = steady_load(
        client.clone(),
        vec!["acme".into(), "globex".into(), "gone".into()],
        "gone",
        32,
        stop.clone(),
        errors.clone(),
    );
    let pause = || tokio::time::sleep(Duration::from_millis(700));
    pause().await;

    // 1. Add a tenant: its pool is ready when ApplyConfig returns.
    let v2 = snapshot(
        "v2",
        &[
            (&acme, acme_pool),
            (&globex, globex_pool),
            (&gone, gone_pool),
            (&initech, initech_pool),
        ],
    );
    let applied = admin.apply_config(v2.clone()).await.unwrap().into_inner();
    assert_eq!(
        (applied.applied_version.as_str(), applied.changed),
        ("v2", true)
    );
    let mut c = client.clone();
    assert_eq!(
        one_shot(&mut c, "initech", "SELECT 1", vec![]).await.int(),
        1
    );
    pause().await;

    // 2. Resize up, then down below what is in use.
    let bigger = acme_pool.replace("maxConnections: 10", "maxConnections: 20");
    let v3 = snapshot(
        "v3",
        &[
            (&acme, &bigger),
            (&globex, globex_pool),
            (&gone, gone_pool),
            (&initech, initech_pool),
        ],
    );
    admin.apply_config(v3).await.unwrap();
    pause().await;
    assert_eq!(stats(&mut c, "acme").await.max_connections, 20);
    let smaller = acme_pool.replace("maxConnections: 10", "maxConnections: 3");
    let v4 = snapshot(
        "v4",
        &[
            (&acme, &smaller),
            (&globex, globex_pool),
            (&gone, gone_pool),
            (&initech, initech_pool),
        ],
    );
    admin.apply_config(v4).await.unwrap();
    pause().await;

    // 3. Rotate globex's password: ALTER ROLE, then apply.
    globex.password = format!("{TEST_PASSWORD_PREFIX}rotated-{:x}", rand::random::<u32>());
    db.admin("postgres")
        .await
        .batch_execute(&format!(
            "ALTER ROLE {} PASSWORD '{}'",
            globex.user, globex.password
        ))
        .await
        .unwrap();
    let v5 = snapshot(
        "v5",
        &[
            (&acme, &smaller),
            (&globex, globex_pool),
            (&gone, gone_pool),
            (&initech, initech_pool),
        ],
    );
    admin.apply_config(v5).await.unwrap();
    pause().await;

    // 4. Change acme's statement timeout.
    let timed = format!(
        "{}, statementTimeout: 2500ms }}",
        smaller.trim_end_matches(" }")
    );
    let v6 = snapshot(
        "v6",
        &[
            (&acme, &timed),
            (&globex, globex_pool),
            (&gone, gone_pool),
            (&initech, initech_pool),
        ],
    );
    admin.apply_config(v6).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || {
            let mut c = client.clone();
            async move {
                one_shot(&mut c, "acme", "SHOW statement_timeout", vec![])
                    .await
                    .text()
                    == "2500ms"
            }
        })
        .await,
        "new connections must carry the new statement timeout"
    );

    // 5. Remove a tenant while its lease has an open transaction.
    let v7 = snapshot(
        "v7",
        &[
            (&acme, &timed),
            (&globex, globex_pool),
            (&initech, initech_pool),
        ],
    );
    admin.apply_config(v7).await.unwrap();
    let err = c
        .get_connection(ConnectionRequest {
            tenant_id: "gone".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // The open lease continues and commits before the drain deadline.
    on_lease(&mut holder, &held, "INSERT INTO t VALUES (2)", vec![]).await;
    on_lease(&mut holder, &held, "COMMIT", vec![]).await;
    release(&mut holder, &held).await;
    pause().await;

    // The rotated password is what new connections use: force a few.
    let v8 = snapshot(
        "v8",
        &[
            (&acme, &timed),
            (
                &globex,
                &globex_pool.replace("8, minConnections: 8", "12, minConnections: 12"),
            ),
            (&initech, initech_pool),
        ],
    );
    admin.apply_config(v8).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || {
            let mut c = client.clone();
            async move { stats(&mut c, "globex").await.total_connections == 12 }
        })
        .await,
        "globex could not open connections with its new password"
    );
    pause().await;

    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let unexpected = errors.unexpected.load(Ordering::Relaxed);
    eprintln!(
        "load: {} ok, {} NOT_FOUND on the removed tenant, {} unexpected",
        errors.ok.load(Ordering::Relaxed),
        errors.not_found_on_removed.load(Ordering::Relaxed),
        unexpected
    );
    assert_eq!(
        unexpected,
        0,
        "last error: {:?}",
        errors.last.lock().unwrap()
    );
    assert!(errors.ok.load(Ordering::Relaxed) > 100);

    let committed: i64 = db.count_t(&gone).await;
    assert_eq!(
        committed, 2,
        "the removed tenant's transaction committed before the deadline"
    );

    // Nothing leaked: what PostgreSQL sees equals what the pools hold.
    for tenant in [&acme, &globex, &initech] {
        let total = stats(&mut c, &tenant.id).await.total_connections as i64;
        assert!(
            eventually(Duration::from_secs(5), || async {
                db.pooler_backends(&tenant.dbname).await == total
                    && stats(&mut c.clone(), &tenant.id).await.active_connections == 0
            })
            .await,
            "{}: pool says {total}, PostgreSQL says {}",
            tenant.id,
            db.pooler_backends(&tenant.dbname).await
        );
    }
    assert!(
        stats(&mut c, "acme").await.total_connections <= 3,
        "shrunk pool kept surplus"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            db.pooler_backends(&gone.dbname).await == 0
        })
        .await,
        "the removed tenant's pool must close"
    );
    let status = status(&pooler).await;
    assert_eq!(status.applied_version, "v8");
    assert!(status.tenants.iter().all(|t| t.tenant_id != "gone"));
}

#[tokio::test]
async fn a_removed_tenants_open_lease_is_rolled_back_after_the_drain_deadline() {
    let db = Db::start().await;
    let acme = db.tenant("acme").await;
    let gone = db.tenant("gone").await;
    db.create_table_t(&gone).await;
    let pooler = Pooler::start(
        PoolerSetup::new(&[(&acme, ""), (&gone, "")])
            .arg("--drain-timeout")
            .arg("1s"),
    )
    .await;
    let mut client = pooler.client().await;
    let id = lease(&mut client, "gone").await;
    on_lease(&mut client, &id, "BEGIN", vec![]).await;
    on_lease(&mut client, &id, "INSERT INTO t VALUES (1)", vec![]).await;
    pooler
        .admin()
        .await
        .apply_config(snapshot("without-gone", &[(&acme, "")]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let err = lease_error(&mut client, &id, "COMMIT").await;
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("revoked"), "{}", err.message());
    let rows: i64 = db.count_t(&gone).await;
    assert_eq!(rows, 0);
    let metrics = pooler.metrics().await;
    assert!(
        !metrics.contains("tenant=\"gone\""),
        "series of a removed tenant linger"
    );
}

#[tokio::test]
async fn one_bad_tenant_is_rejected_alone_and_the_others_apply() {
    let db = Db::start().await;
    let acme = db.tenant("acme").await;
    let globex = db.tenant("globex").await;
    let initech = db.tenant("initech").await;
    let pooler = Pooler::start(PoolerSetup::new(&[(&acme, "")])).await;
    let mut mixed = snapshot(
        "mixed",
        &[
            (&acme, "pool: { maxConnections: 2, minConnections: 5 }"),
            (&globex, ""),
            (&initech, ""),
            (&globex, ""),
        ],
    );
    mixed.tenants[2].database.as_mut().unwrap().host.clear();
    let answer = pooler
        .admin()
        .await
        .apply_config(mixed)
        .await
        .unwrap()
        .into_inner();
    let results: Vec<(String, TenantApplyResult, String)> = answer
        .tenants
        .iter()
        .map(|t| (t.tenant_id.clone(), t.result(), t.reason.clone()))
        .collect();
    let of = |id: &str| -> Vec<&(String, TenantApplyResult, String)> {
        results.iter().filter(|r| r.0 == id).collect()
    };
    assert_eq!(of("globex")[0].1, TenantApplyResult::Applied, "{results:?}");
    assert!(
        of("globex")[1].2.contains("duplicate tenant id"),
        "{results:?}"
    );
    assert_eq!(of("acme")[0].1, TenantApplyResult::Rejected, "{results:?}");
    assert!(
        of("acme")[0]
            .2
            .contains("minConnections: 5 is greater than maxConnections (2)")
    );
    assert_eq!(of("initech")[0].1, TenantApplyResult::Rejected);
    assert!(
        of("initech")[0]
            .2
            .contains("database.host: must not be empty")
    );
    for r in &results {
        assert!(!r.2.contains(&acme.password) && !r.2.contains(&initech.password));
    }
    assert!(answer.changed);
    // The good tenant serves; the rejected one keeps its previous configuration.
    let mut client = pooler.client().await;
    for tenant in ["acme", "globex"] {
        assert_eq!(
            one_shot(&mut client, tenant, "SELECT 4", vec![])
                .await
                .int(),
            4
        );
    }
    let ids: Vec<String> = status(&pooler)
        .await
        .tenants
        .into_iter()
        .map(|t| t.tenant_id)
        .collect();
    assert_eq!(ids, ["acme", "globex"]);
    let metrics = pooler.metrics().await;
    assert!(
        metrics.contains("teresa_config_applies_total{outcome=\"partial\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_config_file_with_a_bad_tenant_starts_serving_the_good_ones() {
    let db = Db::start().await;
    let acme = db.tenant("acme").await;
    let globex = db.tenant("globex").await;
    let pooler = Pooler::start(PoolerSetup::new(&[
        (&acme, "pool: { maxLifetime: 0s }"),
        (&globex, ""),
    ]))
    .await;
    let mut client = pooler.client().await;
    assert_eq!(
        one_shot(&mut client, "globex", "SELECT 2", vec![])
            .await
            .int(),
        2
    );
    let ids: Vec<String> = status(&pooler)
        .await
        .tenants
        .into_iter()
        .map(|t| t.tenant_id)
        .collect();
    assert_eq!(ids, ["globex"]);
    assert!(
        pooler
            .log()
            .contains("pool.maxLifetime: must be greater than zero")
    );
}

#[tokio::test]
async fn a_stale_snapshot_file_does_not_undo_a_push() {
    let db = Db::start().await;
    let acme = db.tenant("acme").await;
    let globex = db.tenant("globex").await;
    let setup = PoolerSetup::new(&[(&acme, "")]);
    let file = |generation: u64, version: &str| {
        format!(
            "generation: {generation}\nversion: {version}\n{}",
            setup.tenants_yaml
        )
    };
    let pooler = Pooler::start(PoolerSetup {
        tenants_yaml: file(5, "file-5"),
        ..PoolerSetup::new(&[])
    })
    .await;
    // A push gives this pod a narrowed tenant the file does not have.
    let mut pushed = snapshot("push-7", &[(&acme, ""), (&globex, "")]);
    pushed.generation = 7;
    pooler.admin().await.apply_config(pushed).await.unwrap();
    // The kubelet brings back an older file: ignored.
    std::fs::write(&pooler.config_path, file(6, "file-6")).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(status(&pooler).await.applied_version, "push-7");
    assert!(
        pooler
            .log()
            .contains("older than the configuration applied")
    );
    // A newer file applies, but never removes what the push gave.
    std::fs::write(&pooler.config_path, file(8, "file-8")).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            status(&pooler).await.applied_version == "file-8"
        })
        .await
    );
    let mut client = pooler.client().await;
    assert_eq!(
        one_shot(&mut client, "globex", "SELECT 3", vec![])
            .await
            .int(),
        3
    );
}

#[tokio::test]
async fn only_the_operator_identity_may_call_the_admin_api_and_only_on_its_port() {
    let db = Db::start().await;
    let acme = db.tenant("acme").await;
    let pooler = Pooler::start(PoolerSetup::new(&[(&acme, "")])).await;
    // No client certificate: the handshake or the call fails.
    if let Ok(mut anonymous) = pooler.admin_as(None).await {
        assert!(anonymous.get_status(GetStatusRequest {}).await.is_err());
    }
    let err = pooler
        .admin_as(Some("spiffe://teresa.dev/ns/app/sa/web"))
        .await
        .unwrap()
        .get_status(GetStatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // The lease port does not serve the admin service.
    let channel =
        tonic::transport::Channel::from_shared(format!("https://127.0.0.1:{}", pooler.grpc_port))
            .unwrap()
            .tls_config(pooler.ca_tls())
            .unwrap()
            .connect()
            .await
            .unwrap();
    let err = teresa_proto::admin::pooler_admin_client::PoolerAdminClient::new(channel)
        .get_status(GetStatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(status(&pooler).await.ready);
}

#[tokio::test]
async fn applying_the_same_version_twice_changes_nothing() {
    let db = Db::start().await;
    let acme = db.tenant("acme").await;
    let pooler = Pooler::start(PoolerSetup::new(&[(&acme, "pool: { minConnections: 2 }")])).await;
    let mut admin = pooler.admin().await;
    let v1 = snapshot("v1", &[(&acme, "pool: { minConnections: 2 }")]);
    assert!(
        admin
            .apply_config(v1.clone())
            .await
            .unwrap()
            .into_inner()
            .changed
    );
    let pids = || {
        let (db, dbname) = (&db, acme.dbname.clone());
        async move {
            let mut pids: Vec<i32> = db
                .admin("postgres")
                .await
                .query(
                    "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = 'teresa-pooler'",
                    &[&dbname],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            pids.sort();
            pids
        }
    };
    let before = pids().await;
    let applied_at = status(&pooler).await.applied_at;
    let again = admin.apply_config(v1).await.unwrap().into_inner();
    assert!(!again.changed);
    assert_eq!(status(&pooler).await.applied_at, applied_at);
    assert_eq!(pids().await, before, "same connections");
}

#[tokio::test]
async fn the_config_file_is_re_applied_when_it_changes_and_the_version_is_visible() {
    let db = Db::start().await;
    let acme = db.tenant("acme").await;
    let globex = db.tenant("globex").await;
    let pooler = Pooler::start(PoolerSetup::new(&[(&acme, "")])).await;
    let mut file = format!(
        "version: file-2\n{}",
        PoolerSetup::new(&[(&acme, ""), (&globex, "")]).tenants_yaml
    );
    std::fs::write(&pooler.config_path, &file).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            status(&pooler).await.applied_version == "file-2"
        })
        .await
    );
    let mut client = pooler.client().await;
    assert_eq!(
        one_shot(&mut client, "globex", "SELECT 2", vec![])
            .await
            .int(),
        2
    );
    assert!(
        pooler
            .metrics()
            .await
            .contains("teresa_config_version_info{version=\"file-2\"} 1")
    );
    assert!(pooler.log().contains("file-2"));
    // A broken edit is refused and the configuration in force stays.
    file.push_str("bogus: true\n");
    std::fs::write(&pooler.config_path, &file).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(status(&pooler).await.applied_version, "file-2");
    assert!(pooler.log().contains("keeping the configuration in force"));
}

#[tokio::test]
async fn without_a_config_the_pooler_is_not_ready_until_one_is_applied() {
    let db = Db::start().await;
    let acme = db.tenant("acme").await;
    let pooler = spawn_unready(PoolerSetup::new(&[]), Certs::generate()).await;
    assert_eq!(pooler.http_get("/readyz").await.unwrap().0, 503);
    assert!(!status(&pooler).await.ready);
    pooler
        .admin()
        .await
        .apply_config(snapshot("pushed", &[(&acme, "")]))
        .await
        .unwrap();
    assert_eq!(pooler.http_get("/readyz").await.unwrap().0, 200);
    let mut client = pooler.client().await;
    assert_eq!(
        one_shot(&mut client, "acme", "SELECT 1", vec![])
            .await
            .int(),
        1
    );
}

#[tokio::test]
async fn an_applied_empty_configuration_makes_the_pooler_ready() {
    // What the operator pushes to a fleet without any TenantPool.
    let pooler = spawn_unready(PoolerSetup::new(&[]), Certs::generate()).await;
    assert_eq!(pooler.http_get("/readyz").await.unwrap().0, 503);
    pooler
        .admin()
        .await
        .apply_config(PoolerConfig {
            version: "empty".into(),
            ..PoolerConfig::default()
        })
        .await
        .unwrap();
    assert_eq!(pooler.http_get("/readyz").await.unwrap().0, 200);
    let status = status(&pooler).await;
    assert!(status.ready);
    assert_eq!(status.applied_version, "empty");
    assert!(status.tenants.is_empty());
}

/// Starts a pooler whose --config file is missing, waiting only for its
/// listeners (it is not ready by design).
async fn spawn_unready(setup: PoolerSetup, certs: Certs) -> Pooler {
    let mut pooler = Pooler::start_with_certs(setup, certs).await;
    pooler.signal("KILL");
    pooler.wait_exit(Duration::from_secs(5)).await;
    std::fs::remove_file(&pooler.config_path).unwrap();
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(&pooler.log_path)
        .unwrap();
    pooler.child = Some(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_teresa-pooler"))
            .arg("--config")
            .arg(&pooler.config_path)
            .args(["--host", "127.0.0.1"])
            .args(["--port", &pooler.grpc_port.to_string()])
            .args(["--metrics-port", &pooler.metrics_port.to_string()])
            .args(["--admin-port", &pooler.admin_port.to_string()])
            .arg("--tls-cert")
            .arg(pooler.certs.path("cert.pem"))
            .arg("--tls-key")
            .arg(pooler.certs.path("key.pem"))
            .arg("--admin-ca")
            .arg(pooler.certs.path("ca.pem"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap(),
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            pooler.http_get("/readyz").await.is_ok()
        })
        .await,
        "listeners never came up: {}",
        pooler.log()
    );
    pooler
}

#[tokio::test]
async fn the_admin_command_prints_status_and_applies_a_file() {
    let db = Db::start().await;
    let acme = db.tenant("acme").await;
    let globex = db.tenant("globex").await;
    let pooler = Pooler::start(PoolerSetup::new(&[(&acme, "")])).await;
    let operator = pooler
        .certs
        .ca
        .issue_client(&teresa_pooler::certs::ClientIdentity::Uri(
            "spiffe://teresa.dev/operator".into(),
        ))
        .unwrap();
    let (cert, key) = (
        pooler.work.path().join("op.pem"),
        pooler.work.path().join("op-key.pem"),
    );
    operator.write(&cert, &key).unwrap();
    let file = pooler.work.path().join("next.yaml");
    std::fs::write(
        &file,
        format!(
            "version: cli-1\n{}",
            PoolerSetup::new(&[(&acme, ""), (&globex, "")]).tenants_yaml
        ),
    )
    .unwrap();
    let admin = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_teresa-pooler"))
            .arg("admin")
            .args(args)
            .args([
                "--addr",
                &format!("https://localhost:{}", pooler.admin_port),
            ])
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .arg("--ca")
            .arg(pooler.certs.path("ca.pem"))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let applied = admin(&["apply", file.to_str().unwrap()]);
    assert!(applied.contains("applied version cli-1"), "{applied}");
    let table = admin(&["status"]);
    assert!(table.contains("version cli-1"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("globex")), "{table}");
    let json: serde_json::Value = serde_json::from_str(&admin(&["status", "--json"])).unwrap();
    assert_eq!(json["appliedVersion"], "cli-1");
    assert_eq!(json["tenants"].as_array().unwrap().len(), 2);
}
