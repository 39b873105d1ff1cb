//! What an SRE relies on: probes, metrics that move with reality, mutual TLS
//! identities, certificate rotation without dropping anything, and a
//! graceful drain on SIGTERM.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;
use teresa_pooler::certs::{ClientIdentity, DevCa};
use teresa_proto::connectionpool::{
    ConnectionRelease, ConnectionRequest, ExecuteRequest, KeepAliveRequest, StatsRequest,
};
use tonic::Code;

/// The value of one series in Prometheus text output, 0 when absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn probes_answer_like_the_original_and_metrics_move_with_leases_and_queries() {
    let db = Db::start().await;
    let acme = db.tenant("acme").await;
    let pooler = Pooler::start(PoolerSetup::new(&[(
        &acme,
        "pool: { maxConnections: 1, minConnections: 1, acquireTimeout: 200ms }\nleases: { defaultTtl: 1s }",
    )]))
    .await;
    assert_eq!(
        pooler.http_get("/health").await.unwrap(),
        (200, "OK".into())
    );
    assert_eq!(pooler.http_get("/livez").await.unwrap().0, 200);
    assert_eq!(pooler.http_get("/readyz").await.unwrap().0, 200);
    let before = pooler.metrics().await;
    assert_eq!(
        sample(&before, "teresa_pool_max_connections{tenant=\"acme\"}"),
        1.0
    );
    assert_eq!(
        sample(
            &before,
            "teresa_pool_connections{state=\"idle\",tenant=\"acme\"}"
        ),
        1.0
    );
    assert!(
        before.contains("teresa_config_version_info{version=\"sha-"),
        "{before}"
    );
    assert_eq!(
        sample(&before, "teresa_config_applies_total{outcome=\"applied\"}"),
        1.0
    );
    assert!(before.contains("process_resident_memory_bytes"));

    let mut client = pooler.client().await;
    // A lease, a good query and a failing one.
    let id = lease(&mut client, "acme").await;
    on_lease(&mut client, &id, "SELECT 1", vec![]).await;
    on_lease(&mut client, &id, "SELECT 1/0", vec![]).await;
    let during = pooler.metrics().await;
    assert_eq!(
        sample(&during, "teresa_leases_active{tenant=\"acme\"}"),
        1.0
    );
    assert_eq!(
        sample(
            &during,
            "teresa_pool_connections{state=\"active\",tenant=\"acme\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &during,
            "teresa_queries_total{outcome=\"ok\",tenant=\"acme\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &during,
            "teresa_queries_total{outcome=\"error\",tenant=\"acme\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &during,
            "teresa_query_duration_seconds_count{tenant=\"acme\"}"
        ),
        2.0
    );
    // The only connection is leased: the next acquire times out.
    let err = client
        .get_connection(ConnectionRequest {
            tenant_id: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    release(&mut client, &id).await;
    // A lease left to expire.
    let _abandoned = lease(&mut client, "acme").await;
    assert!(
        eventually(Duration::from_secs(3), || async {
            sample(
                &pooler.metrics().await,
                "teresa_leases_total{outcome=\"expired\",tenant=\"acme\"}",
            ) == 1.0
        })
        .await
    );
    let after = pooler.metrics().await;
    assert_eq!(
        sample(
            &after,
            "teresa_leases_total{outcome=\"released\",tenant=\"acme\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            "teresa_acquire_failures_total{reason=\"timeout\",tenant=\"acme\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            "teresa_acquire_duration_seconds_count{tenant=\"acme\"}"
        ),
        2.0
    );
    assert_eq!(sample(&after, "teresa_leases_active{tenant=\"acme\"}"), 0.0);
    assert_eq!(
        sample(
            &after,
            "teresa_pool_connections{state=\"active\",tenant=\"acme\"}"
        ),
        0.0
    );
}

#[tokio::test]
async fn promtool_accepts_the_metrics_output() {
    let db = Db::start().await;
    let acme = db.tenant("acme").await;
    let pooler = Pooler::start(PoolerSetup::new(&[(&acme, "")])).await;
    let mut client = pooler.client().await;
    let id = lease(&mut client, "acme").await;
    on_lease(&mut client, &id, "SELECT 1", vec![]).await;
    release(&mut client, &id).await;
    let metrics = pooler.metrics().await;

    let mut promtool = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed by .ci/run (Debian package prometheus)");
    use tokio::io::AsyncWriteExt;
    let mut stdin = promtool.stdin.take().unwrap();
    stdin.write_all(metrics.as_bytes()).await.unwrap();
    drop(stdin);
    let output = promtool.wait_with_output().await.unwrap();
    assert!(
        output.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn metrics_can_be_served_over_plain_http() {
    let db = Db::start().await;
    let acme = db.tenant("acme").await;
    let setup = PoolerSetup::new(&[(&acme, "")]).arg("--metrics-plaintext");
    // The harness probes over HTTPS, so start without waiting on it.
    let certs = Certs::generate();
    let work = TempDir::new("plain");
    let config = work.path().join("pooler.yaml");
    std::fs::write(&config, &setup.tenants_yaml).unwrap();
    let port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_teresa-pooler"))
        .arg("--config")
        .arg(&config)
        .args(["--host", "127.0.0.1", "--admin-port", "0"])
        .args(["--port", &free_port().to_string()])
        .args(["--metrics-port", &port.to_string(), "--metrics-plaintext"])
        .arg("--tls-cert")
        .arg(certs.path("cert.pem"))
        .arg("--tls-key")
        .arg(certs.path("key.pem"))
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let get = || async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        tcp.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.ok()?;
        Some(out)
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            get().await.is_some_and(|r| r.starts_with("HTTP/1.1 200"))
        })
        .await
    );
    child.start_kill().unwrap();
}

#[tokio::test]
async fn sigterm_turns_readiness_off_at_once_and_lets_an_open_transaction_commit() {
    let db = Db::start().await;
    let acme = db.tenant("acme").await;
    db.create_table_t(&acme).await;
    let mut pooler = Pooler::start(
        PoolerSetup::new(&[(&acme, "")])
            .arg("--drain-timeout")
            .arg("20s"),
    )
    .await;
    let mut client = pooler.client().await;
    let id = lease(&mut client, "acme").await;
    on_lease(&mut client, &id, "BEGIN", vec![]).await;
    on_lease(&mut client, &id, "INSERT INTO t VALUES (1)", vec![]).await;

    pooler.signal("TERM");
    assert!(
        eventually(Duration::from_secs(2), || async {
            pooler
                .http_get("/readyz")
                .await
                .is_ok_and(|(s, _)| s == 503)
        })
        .await,
        "readyz must turn 503 when draining starts"
    );
    let err = client
        .get_connection(ConnectionRequest {
            tenant_id: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let err = run(
        &mut client,
        ExecuteRequest {
            tenant_id: "acme".into(),
            sql: "SELECT 1".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);

    // The open lease keeps working until it is released.
    on_lease(&mut client, &id, "INSERT INTO t VALUES (2)", vec![]).await;
    on_lease(&mut client, &id, "COMMIT", vec![]).await;
    release(&mut client, &id).await;
    let started = Instant::now();
    assert_eq!(pooler.wait_exit(Duration::from_secs(15)).await, Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "exit waited for nothing"
    );
    let rows: i64 = db.count_t(&acme).await;
    assert_eq!(rows, 2);
    assert!(
        eventually(Duration::from_secs(3), || async {
            db.pooler_backends(&acme.dbname).await == 0
        })
        .await,
        "server connections must be closed on exit"
    );
}

#[tokio::test]
async fn after_the_drain_deadline_an_open_lease_is_rolled_back() {
    let db = Db::start().await;
    let acme = db.tenant("acme").await;
    db.create_table_t(&acme).await;
    let mut pooler = Pooler::start(
        PoolerSetup::new(&[(&acme, "")])
            .arg("--drain-timeout")
            .arg("1s"),
    )
    .await;
    let mut client = pooler.client().await;
    let id = lease(&mut client, "acme").await;
    on_lease(&mut client, &id, "BEGIN", vec![]).await;
    on_lease(&mut client, &id, "INSERT INTO t VALUES (1)", vec![]).await;
    pooler.signal("TERM");
    let started = Instant::now();
    assert_eq!(pooler.wait_exit(Duration::from_secs(10)).await, Some(0));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "exited before the drain deadline: {took:?}"
    );
    let rows: i64 = db.count_t(&acme).await;
    assert_eq!(rows, 0, "the open transaction must be rolled back");
}

/// A pooler requiring client certificates, with a tenant for `spiffe://teresa.dev/ns/app/*`.
async fn mtls_pooler() -> (Db, Pooler) {
    let db = Db::start().await;
    let acme = db.tenant("acme").await;
    let pooler = Pooler::start(
        PoolerSetup::new(&[(&acme, "allowedClients: [\"spiffe://teresa.dev/ns/app/*\"]")])
            .require_client_certs(),
    )
    .await;
    (db, pooler)
}

#[tokio::test]
async fn mtls_refuses_clients_without_a_certificate_or_from_another_ca() {
    let (_db, pooler) = mtls_pooler().await;
    let no_cert =
        tonic::transport::Channel::from_shared(format!("https://127.0.0.1:{}", pooler.grpc_port))
            .unwrap()
            .tls_config(pooler.ca_tls())
            .unwrap()
            .connect()
            .await;
    if let Ok(channel) = no_cert {
        let mut client =
            teresa_proto::connectionpool::connection_pool_service_client::ConnectionPoolServiceClient::new(channel);
        assert!(
            client
                .get_pool_stats(StatsRequest {
                    tenant_id: "acme".into()
                })
                .await
                .is_err()
        );
    }
    let stranger = DevCa::generate().unwrap();
    let issued = stranger
        .issue_client(&ClientIdentity::Uri(
            "spiffe://teresa.dev/ns/app/sa/web".into(),
        ))
        .unwrap();
    let foreign =
        tonic::transport::Channel::from_shared(format!("https://127.0.0.1:{}", pooler.grpc_port))
            .unwrap()
            .tls_config(
                pooler
                    .ca_tls()
                    .identity(tonic::transport::Identity::from_pem(
                        issued.cert_pem,
                        issued.key_pem,
                    )),
            )
            .unwrap()
            .connect()
            .await;
    if let Ok(channel) = foreign {
        let mut client =
            teresa_proto::connectionpool::connection_pool_service_client::ConnectionPoolServiceClient::new(channel);
        assert!(
            client
                .get_pool_stats(StatsRequest {
                    tenant_id: "acme".into()
                })
                .await
                .is_err()
        );
    }
    // A certificate from the right CA gets in.
    let mut client = pooler.client_as("spiffe://teresa.dev/ns/app/sa/web").await;
    stats(&mut client, "acme").await;
}

#[tokio::test]
async fn mtls_identities_decide_who_may_lease_and_leases_belong_to_their_taker() {
    let (_db, pooler) = mtls_pooler().await;
    let mut outsider = pooler
        .client_as("spiffe://teresa.dev/ns/other/sa/web")
        .await;
    let err = outsider
        .get_connection(ConnectionRequest {
            tenant_id: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message()
            .contains("spiffe://teresa.dev/ns/other/sa/web"),
        "{}",
        err.message()
    );

    let mut web = pooler.client_as("spiffe://teresa.dev/ns/app/sa/web").await;
    let mut worker = pooler
        .client_as("spiffe://teresa.dev/ns/app/sa/worker")
        .await;
    let id = lease(&mut web, "acme").await;
    let err = lease_error(&mut worker, &id, "SELECT 1").await;
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = worker
        .keep_alive(KeepAliveRequest {
            connection_id: id.clone(),
            ttl: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = worker
        .release_connection(ConnectionRelease {
            connection_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // The owner still has it.
    assert_eq!(on_lease(&mut web, &id, "SELECT 5", vec![]).await.int(), 5);
    release(&mut web, &id).await;
}

/// The serial number of the certificate a fresh TLS handshake sees.
async fn served_serial(port: u16, ca_pem: &[u8]) -> String {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let cert = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).unwrap();
    parsed.raw_serial_as_string()
}

#[tokio::test]
async fn rotated_certificates_serve_new_handshakes_while_open_streams_keep_working() {
    let db = Db::start().await;
    let acme = db.tenant("acme").await;
    let pooler = Pooler::start(PoolerSetup::new(&[(&acme, "")])).await;
    let ca = pooler.certs.ca_pem();
    let old_serial = served_serial(pooler.grpc_port, &ca).await;
    let mut client = pooler.client().await;
    let id = lease(&mut client, "acme").await;

    // cert-manager rewrites the files in place.
    let renewed = pooler
        .certs
        .ca
        .issue_server(&["localhost"], &["127.0.0.1".parse().unwrap()])
        .unwrap();
    renewed
        .write(
            &pooler.certs.path("cert.pem"),
            &pooler.certs.path("key.pem"),
        )
        .unwrap();
    let new_serial = |port| {
        let ca = ca.clone();
        async move { served_serial(port, &ca).await }
    };
    assert!(
        eventually(Duration::from_secs(5), || async {
            new_serial(pooler.grpc_port).await != old_serial
        })
        .await,
        "the gRPC port still serves the old certificate"
    );
    assert_ne!(new_serial(pooler.metrics_port).await, old_serial);
    // The connection made before the rotation and its lease are untouched.
    assert_eq!(
        on_lease(&mut client, &id, "SELECT 3", vec![]).await.int(),
        3
    );
    release(&mut client, &id).await;

    // A broken new file keeps the current certificate.
    let current = new_serial(pooler.grpc_port).await;
    std::fs::write(pooler.certs.path("cert.pem"), "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(new_serial(pooler.grpc_port).await, current);
    assert!(
        pooler
            .log()
            .contains("cannot be used; keeping the previous ones")
    );
}

#[tokio::test]
async fn unreadable_tls_files_or_a_bad_config_stop_the_start_with_a_clear_error() {
    let db = Db::start().await;
    let acme = db.tenant("acme").await;
    let certs = Certs::generate();
    let work = TempDir::new("badstart");
    let good = work.path().join("good.yaml");
    std::fs::write(&good, PoolerSetup::new(&[(&acme, "")]).tenants_yaml).unwrap();
    let bad = work.path().join("bad.yaml");
    std::fs::write(
        &bad,
        PoolerSetup::new(&[(
            &acme,
            "pool: { maxConnections: 2, minConnections: 3, maxConection: 1 }",
        )])
        .tenants_yaml,
    )
    .unwrap();
    let run_pooler = |config: &std::path::Path, cert: std::path::PathBuf| {
        std::process::Command::new(env!("CARGO_BIN_EXE_teresa-pooler"))
            .arg("--config")
            .arg(config)
            .args(["--host", "127.0.0.1", "--admin-port", "0"])
            .args(["--port", &free_port().to_string()])
            .args(["--metrics-port", &free_port().to_string()])
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(certs.path("key.pem"))
            .output()
            .unwrap()
    };
    let missing = run_pooler(&good, work.path().join("nope.pem"));
    assert_eq!(missing.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("nope.pem"), "{stderr}");

    let garbage = work.path().join("garbage.pem");
    std::fs::write(&garbage, "hello").unwrap();
    let output = run_pooler(&good, garbage);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("garbage.pem"));

    let output = run_pooler(&bad, certs.path("cert.pem"));
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("maxConection"), "{stderr}");
    assert!(!stderr.contains(&acme.password));
}

#[tokio::test]
async fn oversized_sql_and_messages_are_refused_without_disturbing_others() {
    let db = Db::start().await;
    let acme = db.tenant("acme").await;
    let pooler = Pooler::start(
        PoolerSetup::new(&[(&acme, "")])
            .arg("--max-sql-bytes")
            .arg("1000")
            .arg("--max-message-bytes")
            .arg("100000"),
    )
    .await;
    let mut client = pooler.client().await;
    let long_sql = format!("SELECT '{}'", "x".repeat(2000));
    let err = run(
        &mut client,
        ExecuteRequest {
            tenant_id: "acme".into(),
            sql: long_sql,
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("--max-sql-bytes"),
        "{}",
        err.message()
    );
    let huge = ExecuteRequest {
        tenant_id: "acme".into(),
        sql: "SELECT $1::text".into(),
        params: vec![text(&"y".repeat(200_000))],
        ..Default::default()
    };
    let err = run(&mut client, huge).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert_eq!(
        one_shot(&mut client, "acme", "SELECT 9", vec![])
            .await
            .int(),
        9
    );
}
