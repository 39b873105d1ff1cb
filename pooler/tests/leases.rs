//! The lease API against a real PostgreSQL, through a real `teresa-pooler`
//! process over real TLS.

mod support;

use std::time::{Duration, Instant};

use support::*;
use teresa_proto::connectionpool::{
    ConnectionRelease, ConnectionRequest, ExecuteRequest, KeepAliveRequest, StatsRequest,
    value::Kind as V,
};
use tonic::Code;

async fn one_tenant(pool: &str) -> (Db, TenantDb, Pooler) {
    let db = Db::start().await;
    let acme = db.tenant("acme").await;
    let pooler = Pooler::start(PoolerSetup::new(&[(&acme, pool)])).await;
    (db, acme, pooler)
}

#[tokio::test]
async fn lease_round_trip_runs_sql_on_a_real_server_connection() {
    let (db, acme, pooler) = one_tenant("pool: { minConnections: 1 }").await;
    let mut client = pooler.client().await;

    let response = client
        .get_connection(ConnectionRequest {
            tenant_id: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.connection_id.len(), 32, "128 bits in hex");
    assert!(response.error.is_empty());
    assert!(response.expires_at.is_some());
    let id = response.connection_id;

    let outcome = on_lease(
        &mut client,
        &id,
        "SELECT current_database(), current_user",
        vec![],
    )
    .await;
    assert_eq!(outcome.columns, ["current_database", "current_user"]);
    assert_eq!(outcome.text(), acme.dbname);
    assert_eq!(outcome.tag.as_deref(), Some("SELECT"));
    assert_eq!(stats(&mut client, "acme").await.active_leases, 1);
    assert!(db.pooler_backends(&acme.dbname).await >= 1);

    release(&mut client, &id).await;
    let after = stats(&mut client, "acme").await;
    assert_eq!(after.active_leases, 0);
    assert_eq!(after.active_connections, 0);
}

#[tokio::test]
async fn a_transaction_spans_several_execute_calls_on_one_lease() {
    let (db, acme, pooler) = one_tenant("").await;
    db.create_table_t(&acme).await;
    let mut client = pooler.client().await;
    let id = lease(&mut client, "acme").await;

    on_lease(&mut client, &id, "BEGIN", vec![]).await;
    let insert = on_lease(
        &mut client,
        &id,
        "INSERT INTO t VALUES ($1), ($2)",
        vec![int(1), int(2)],
    )
    .await;
    assert_eq!(insert.tag.as_deref(), Some("INSERT"));
    assert_eq!(insert.rows_affected, 2);
    // Another session cannot see the rows yet: the transaction is open.
    let outside = one_shot(&mut client, "acme", "SELECT count(*) FROM t", vec![]).await;
    assert_eq!(outside.int(), 0);
    let inside = on_lease(&mut client, &id, "SELECT count(*) FROM t", vec![]).await;
    assert_eq!(inside.int(), 2);
    on_lease(&mut client, &id, "COMMIT", vec![]).await;
    let after = one_shot(&mut client, "acme", "SELECT count(*) FROM t", vec![]).await;
    assert_eq!(after.int(), 2);
    release(&mut client, &id).await;
}

#[tokio::test]
async fn nothing_of_a_lease_session_reaches_the_next_lessee() {
    // One connection, so the second lease gets the very same server session.
    let (_db, _acme, pooler) = one_tenant("pool: { maxConnections: 1, minConnections: 1 }").await;
    let mut client = pooler.client().await;

    let first = lease(&mut client, "acme").await;
    let pid = on_lease(&mut client, &first, "SELECT pg_backend_pid()", vec![])
        .await
        .int();
    for sql in [
        "SET search_path TO leaked",
        "SET application_name TO 'leaked'",
        "CREATE TEMP TABLE scratch (x int)",
        "PREPARE leaked_stmt AS SELECT 1",
        "LISTEN leaked_channel",
        "SELECT pg_advisory_lock(42)",
        "BEGIN",
        "CREATE TABLE public.half_done (x int)",
    ] {
        let outcome = on_lease(&mut client, &first, sql, vec![]).await;
        assert!(
            outcome.sql_error.is_none(),
            "{sql}: {:?}",
            outcome.sql_error
        );
    }
    release(&mut client, &first).await;

    let second = lease(&mut client, "acme").await;
    let same = on_lease(&mut client, &second, "SELECT pg_backend_pid()", vec![])
        .await
        .int();
    assert_eq!(
        same, pid,
        "the pool of one must hand out the same connection"
    );
    let check = |sql: &'static str| (sql, Vec::new());
    for (sql, params) in [
        check("SELECT current_setting('search_path')"),
        check("SELECT current_setting('application_name')"),
        check("SELECT count(*) FROM pg_prepared_statements WHERE name = 'leaked_stmt'"),
        check("SELECT count(*) FROM pg_listening_channels()"),
        check(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
        ),
        check("SELECT count(*) FROM pg_class WHERE relname IN ('scratch', 'half_done')"),
    ] {
        let outcome = on_lease(&mut client, &second, sql, params).await;
        match sql {
            s if s.contains("search_path") => assert_eq!(outcome.text(), "\"$user\", public"),
            s if s.contains("application_name") => assert_eq!(outcome.text(), "teresa-pooler"),
            _ => assert_eq!(outcome.int(), 0, "{sql} leaked"),
        }
    }
    // The pooler's own cached statements still work after the reset.
    let again = on_lease(&mut client, &second, "SELECT pg_backend_pid()", vec![]).await;
    assert_eq!(again.int(), pid);
    release(&mut client, &second).await;
}

#[tokio::test]
async fn an_exhausted_pool_answers_resource_exhausted_within_the_acquire_timeout() {
    let (db, acme, pooler) =
        one_tenant("pool: { maxConnections: 2, minConnections: 0, acquireTimeout: 300ms }").await;
    let mut client = pooler.client().await;
    let a = lease(&mut client, "acme").await;
    let b = lease(&mut client, "acme").await;

    let started = Instant::now();
    let err = client
        .get_connection(ConnectionRequest {
            tenant_id: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("maxConnections"),
        "{}",
        err.message()
    );
    assert!(
        waited >= Duration::from_millis(280),
        "gave up early: {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(1500),
        "waited too long: {waited:?}"
    );

    // A call deadline shorter than the acquire timeout is honoured too.
    let mut request = tonic::Request::new(ConnectionRequest {
        tenant_id: "acme".into(),
        ..Default::default()
    });
    request.set_timeout(Duration::from_millis(100));
    let started = Instant::now();
    let err = client.get_connection(request).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    // Whichever side's timer fires first ends the call: the pooler's answer
    // (DEADLINE_EXCEEDED or RESOURCE_EXHAUSTED) or tonic's own enforcement of
    // the same grpc-timeout (CANCELLED "Timeout expired"), which races the
    // pooler's by the request's transit time.
    assert!(
        matches!(
            err.code(),
            Code::ResourceExhausted | Code::DeadlineExceeded | Code::Cancelled
        ),
        "{err:?}"
    );

    release(&mut client, &a).await;
    release(&mut client, &b).await;
    // No slot leaked: both connections can be leased again at once.
    let a = lease(&mut client, "acme").await;
    let b = lease(&mut client, "acme").await;
    let s = stats(&mut client, "acme").await;
    assert_eq!(
        (s.active_connections, s.total_connections, s.max_connections),
        (2, 2, 2)
    );
    assert!(s.acquire_timeouts_total >= 1);
    release(&mut client, &a).await;
    release(&mut client, &b).await;
    assert_eq!(db.pooler_backends(&acme.dbname).await, 2);
}

#[tokio::test]
async fn an_expired_lease_is_rolled_back_returned_and_its_id_fails() {
    let (db, acme, pooler) = one_tenant("leases: { defaultTtl: 1s }").await;
    db.create_table_t(&acme).await;
    let mut client = pooler.client().await;
    let id = lease(&mut client, "acme").await;
    on_lease(&mut client, &id, "BEGIN", vec![]).await;
    on_lease(&mut client, &id, "INSERT INTO t VALUES (1)", vec![]).await;

    // The client vanishes; the TTL reclaims the lease.
    assert!(
        eventually(Duration::from_secs(3), || {
            let mut client = client.clone();
            async move { stats(&mut client, "acme").await.active_leases == 0 }
        })
        .await,
        "lease not reclaimed"
    );
    let s = stats(&mut client, "acme").await;
    assert_eq!(s.expired_leases_total, 1);
    assert_eq!(s.active_connections, 0);
    let rows = one_shot(&mut client, "acme", "SELECT count(*) FROM t", vec![]).await;
    assert_eq!(
        rows.int(),
        0,
        "the abandoned transaction must be rolled back"
    );

    let err = lease_error(&mut client, &id, "SELECT 1").await;
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("expired"), "{}", err.message());
    let err = client
        .keep_alive(KeepAliveRequest {
            connection_id: id.clone(),
            ttl: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn keep_alive_extends_a_lease_past_its_ttl() {
    let (_db, _acme, pooler) = one_tenant("leases: { defaultTtl: 2s, maxTtl: 10s }").await;
    let mut client = pooler.client().await;
    let id = lease(&mut client, "acme").await;
    for _ in 0..7 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let response = client
            .keep_alive(KeepAliveRequest {
                connection_id: id.clone(),
                ttl: None,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(response.expires_at.is_some());
    }
    // 3.5 seconds in, well past the TTL, the lease still works.
    let outcome = on_lease(&mut client, &id, "SELECT 1", vec![]).await;
    assert_eq!(outcome.int(), 1);
    // A longer TTL may be asked for, up to maxTtl.
    let err = client
        .keep_alive(KeepAliveRequest {
            connection_id: id.clone(),
            ttl: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    release(&mut client, &id).await;
}

#[tokio::test]
async fn unknown_tenants_and_leases_are_not_found_and_releasing_twice_is_harmless() {
    let (_db, _acme, pooler) = one_tenant("").await;
    let mut client = pooler.client().await;
    let err = client
        .get_connection(ConnectionRequest {
            tenant_id: "nobody".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("nobody"));
    let err = client
        .get_pool_stats(StatsRequest {
            tenant_id: "nobody".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let unknown = format!("{:032x}", rand::random::<u128>());
    for id in [unknown.as_str(), "not-a-lease"] {
        let err = client
            .release_connection(ConnectionRelease {
                connection_id: id.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{id}");
    }

    let id = lease(&mut client, "acme").await;
    release(&mut client, &id).await;
    release(&mut client, &id).await;
    let err = lease_error(&mut client, &id, "SELECT 1").await;
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("released"), "{}", err.message());
}

#[tokio::test]
async fn a_client_dsn_is_refused_by_default_and_honoured_with_the_flag() {
    let db = Db::start().await;
    let acme = db.tenant("acme").await;
    let legacy = db.tenant("legacy").await;

    let strict = Pooler::start(PoolerSetup::new(&[(&acme, "")])).await;
    let mut client = strict.client().await;
    let err = client
        .get_connection(ConnectionRequest {
            tenant_id: "legacy".into(),
            dsn: legacy.dsn(),
            ttl: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("--allow-client-dsn"));
    assert!(!err.message().contains(&legacy.password));
    drop(strict);

    let compat = Pooler::start(PoolerSetup::new(&[(&acme, "")]).arg("--allow-client-dsn")).await;
    let mut client = compat.client().await;
    let id = client
        .get_connection(ConnectionRequest {
            tenant_id: "legacy".into(),
            dsn: legacy.dsn(),
            ttl: None,
        })
        .await
        .unwrap()
        .into_inner()
        .connection_id;
    let outcome = on_lease(&mut client, &id, "SELECT current_database()", vec![]).await;
    assert_eq!(outcome.text(), legacy.dbname);
    assert_eq!(stats(&mut client, "legacy").await.active_leases, 1);
    release(&mut client, &id).await;
}

#[tokio::test]
async fn a_sql_error_carries_its_sqlstate_and_leaves_the_lease_usable() {
    let (_db, _acme, pooler) = one_tenant("").await;
    let mut client = pooler.client().await;
    let id = lease(&mut client, "acme").await;
    let outcome = on_lease(&mut client, &id, "SELECT * FROM no_such_table", vec![]).await;
    let (sqlstate, message) = outcome.sql_error.expect("a SQL error");
    assert_eq!(sqlstate, "42P01");
    assert!(message.contains("no_such_table"));
    let outcome = on_lease(&mut client, &id, "SELECT 1/0", vec![]).await;
    assert_eq!(outcome.sql_error.unwrap().0, "22012");

    // Inside a transaction the error aborts it, as PostgreSQL does, and a
    // ROLLBACK makes the lease usable again.
    on_lease(&mut client, &id, "BEGIN", vec![]).await;
    on_lease(&mut client, &id, "SELECT 1/0", vec![]).await;
    let blocked = on_lease(&mut client, &id, "SELECT 1", vec![]).await;
    assert_eq!(blocked.sql_error.unwrap().0, "25P02");
    on_lease(&mut client, &id, "ROLLBACK", vec![]).await;
    assert_eq!(
        on_lease(&mut client, &id, "SELECT 7", vec![]).await.int(),
        7
    );

    // Parameters of the wrong count or type are INVALID_ARGUMENT.
    let err = run(
        &mut client,
        ExecuteRequest {
            connection_id: id.clone(),
            sql: "SELECT $1::int".into(),
            params: vec![],
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        on_lease(&mut client, &id, "SELECT 8", vec![]).await.int(),
        8
    );
    release(&mut client, &id).await;
}

#[tokio::test]
async fn typed_parameters_and_results_round_trip() {
    let (_db, _acme, pooler) = one_tenant("").await;
    let mut client = pooler.client().await;
    let outcome = one_shot(
        &mut client,
        "acme",
        "SELECT $1::int8, $2::float8, $3::text, $4::bool, $5::bytea, $6::numeric * 2, \
         $7::timestamptz, $8::uuid, NULL::int, '{\"a\": 1}'::jsonb, $9::int4",
        vec![
            int(-42),
            teresa_proto::connectionpool::Value {
                kind: Some(V::Float64(2.5)),
            },
            text("héllo"),
            teresa_proto::connectionpool::Value {
                kind: Some(V::Bool(true)),
            },
            teresa_proto::connectionpool::Value {
                kind: Some(V::Bytes(vec![0, 1, 255])),
            },
            text("12345.678"),
            text("2026-11-28 10:20:30.5+00"),
            text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            int(7),
        ],
    )
    .await;
    let row: Vec<_> = outcome.rows[0]
        .iter()
        .map(|v| v.kind.clone().unwrap())
        .collect();
    assert_eq!(row[0], V::Int64(-42));
    assert_eq!(row[1], V::Float64(2.5));
    assert_eq!(row[2], V::Text("héllo".into()));
    assert_eq!(row[3], V::Bool(true));
    assert_eq!(row[4], V::Bytes(vec![0, 1, 255]));
    assert_eq!(row[5], V::Text("24691.356".into()));
    assert_eq!(row[6], V::Text("2026-11-28 10:20:30.5+00".into()));
    assert_eq!(
        row[7],
        V::Text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into())
    );
    assert_eq!(row[8], V::Null(true));
    assert_eq!(row[9], V::Text("{\"a\": 1}".into()));
    assert_eq!(row[10], V::Int64(7));
}

#[tokio::test]
async fn a_million_row_select_streams_through_with_bounded_memory() {
    let (_db, _acme, pooler) = one_tenant("pool: { minConnections: 1 }").await;
    let mut client = pooler.client().await;
    // Warm up allocations (TLS, HTTP/2, statement cache) before measuring.
    one_shot(
        &mut client,
        "acme",
        "SELECT g, md5(g::text) FROM generate_series(1, 20000) g",
        vec![],
    )
    .await;
    let before = pooler.rss_kib();

    let mut stream = client
        .execute(ExecuteRequest {
            tenant_id: "acme".into(),
            sql: "SELECT g, md5(g::text) FROM generate_series(1, 1000000) g".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (mut rows, mut peak, mut sum) = (0u64, before, 0i64);
    let mut tag = None;
    while let Some(message) = stream.message().await.unwrap() {
        match message.kind.unwrap() {
            teresa_proto::connectionpool::execute_response::Kind::Rows(batch) => {
                for row in &batch.rows {
                    if let Some(V::Int64(n)) = row.values[0].kind {
                        sum += n;
                    }
                }
                rows += batch.rows.len() as u64;
                if rows % 100_000 < 256 {
                    peak = peak.max(pooler.rss_kib());
                }
            }
            teresa_proto::connectionpool::execute_response::Kind::Complete(c) => {
                tag = Some((c.command_tag, c.rows_affected))
            }
            _ => {}
        }
    }
    assert_eq!(rows, 1_000_000);
    assert_eq!(sum, 500_000_500_000);
    assert_eq!(tag, Some(("SELECT".to_owned(), 1_000_000)));
    let growth_mib = peak.saturating_sub(before) as f64 / 1024.0;
    eprintln!("pooler RSS before {before} KiB, peak {peak} KiB, growth {growth_mib:.1} MiB");
    assert!(
        growth_mib < 16.0,
        "RSS grew by {growth_mib:.1} MiB while streaming"
    );
}

#[tokio::test]
async fn two_hundred_clients_share_a_pool_of_five_and_all_finish() {
    let (db, acme, pooler) = one_tenant(
        "pool: { maxConnections: 5, minConnections: 5, acquireTimeout: 30s, maxWaiting: 500 }",
    )
    .await;
    let client = pooler.client().await;
    let mut tasks = Vec::new();
    for i in 0..200i64 {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                let id = lease(&mut client, "acme").await;
                let outcome = on_lease(&mut client, &id, "SELECT $1::int8 * 2", vec![int(i)]).await;
                release(&mut client, &id).await;
                outcome.int() == i * 2
            } else {
                one_shot(&mut client, "acme", "SELECT $1::int8 + 1", vec![int(i)])
                    .await
                    .int()
                    == i + 1
            }
        }));
    }
    for task in tasks {
        assert!(task.await.unwrap(), "a client got a wrong result");
    }
    let mut client = client.clone();
    let s = stats(&mut client, "acme").await;
    assert_eq!(s.active_connections, 0);
    assert_eq!(s.active_leases, 0);
    assert_eq!(s.waiting_clients, 0);
    assert_eq!(s.total_connections, 5);
    assert!(s.acquires_total >= 200);
    assert_eq!(db.pooler_backends(&acme.dbname).await, 5);
}

#[tokio::test]
async fn the_original_clients_call_sequence_works_unchanged() {
    let (_db, _acme, pooler) = one_tenant("pool: { minConnections: 2 }").await;
    let mut client = pooler.client().await;
    // Exactly what the Go README shows (without the dsn, which now lives in config).
    let connection = client
        .get_connection(ConnectionRequest {
            tenant_id: "acme".into(),
            dsn: String::new(),
            ttl: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(connection.error.is_empty());
    let stats = client
        .get_pool_stats(StatsRequest {
            tenant_id: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stats.error.is_empty());
    assert_eq!(stats.active_connections, 1);
    assert!(stats.total_connections >= 2);
    assert_eq!(
        stats.total_connections,
        stats.active_connections + stats.idle_connections
    );
    let result = client
        .release_connection(ConnectionRelease {
            connection_id: connection.connection_id,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(result.success);
    assert!(result.error.is_empty());
}

#[tokio::test]
async fn a_plaintext_client_is_refused_by_the_tls_port() {
    let (_db, _acme, pooler) = one_tenant("").await;
    let channel =
        tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", pooler.grpc_port))
            .unwrap()
            .connect()
            .await;
    if let Ok(channel) = channel {
        let mut client =
            teresa_proto::connectionpool::connection_pool_service_client::ConnectionPoolServiceClient::new(channel);
        let err = client
            .get_pool_stats(StatsRequest {
                tenant_id: "acme".into(),
            })
            .await
            .unwrap_err();
        // The handshake never happens, so the call fails at the transport.
        assert!(
            matches!(
                err.code(),
                Code::Unavailable | Code::Unknown | Code::Internal
            ),
            "{err:?}"
        );
    }
    // The TLS port still serves TLS clients.
    let mut client = pooler.client().await;
    stats(&mut client, "acme").await;
}

#[tokio::test]
async fn health_and_reflection_services_answer() {
    let (_db, _acme, pooler) = one_tenant("").await;
    let channel =
        tonic::transport::Channel::from_shared(format!("https://127.0.0.1:{}", pooler.grpc_port))
            .unwrap()
            .tls_config(pooler.ca_tls())
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "connectionpool.ConnectionPoolService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"connectionpool.ConnectionPoolService".to_owned()),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.contains("admin")), "{names:?}");
}
