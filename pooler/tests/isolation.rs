//! Client isolation: nothing one client runs on a pooled connection reaches
//! the next one. Every tenant here has one server connection
//! (`maxConnections: 1`), so each call reuses the previous caller's backend;
//! a direct superuser connection (a third party) checks what was really
//! written and which locks are really held.

mod support;

use std::time::Duration;

use support::*;
use teresa_proto::connectionpool::{ConnectionRelease, ExecuteRequest};

const POOL: &str = "pool: { maxConnections: 1, acquireTimeout: 15s, statementTimeout: 7s }";

async fn one_connection_tenant() -> (Db, TenantDb, Pooler) {
    let db = Db::start().await;
    let acme = db.tenant("acme").await;
    let pooler = Pooler::start(PoolerSetup::new(&[(&acme, POOL)])).await;
    (db, acme, pooler)
}

/// The session defaults a fresh connection of the tenant has.
async fn assert_fresh_session(client: &mut LeaseClient, acme: &TenantDb, after: &str) {
    let row = one_shot(
        client,
        "acme",
        "SELECT current_setting('search_path'), current_user::text, session_user::text, \
         current_setting('statement_timeout'), \
         (SELECT count(*) FROM pg_prepared_statements WHERE from_sql)::int8",
        vec![],
    )
    .await;
    let texts: Vec<String> = row.rows[0][..4]
        .iter()
        .map(|v| match &v.kind {
            Some(teresa_proto::connectionpool::value::Kind::Text(s)) => s.clone(),
            other => panic!("not text: {other:?}"),
        })
        .collect();
    assert_eq!(
        texts,
        ["\"$user\", public", &acme.user, &acme.user, "7s"],
        "after {after:?}"
    );
    assert_eq!(
        row.rows[0][4].kind,
        int(0).kind,
        "prepared statements left after {after:?}"
    );
}

async fn count(db: &Db, acme: &TenantDb, table: &str) -> i64 {
    db.admin(&acme.dbname)
        .await
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn set_config_in_any_wrapper_never_reaches_the_next_caller() {
    let (db, acme, pooler) = one_connection_tenant().await;
    db.exec(
        &acme.dbname,
        &format!(
            "CREATE SCHEMA evil AUTHORIZATION {u}; CREATE TABLE evil.accounts (id int); \
             CREATE TABLE public.accounts (id int); GRANT ALL ON public.accounts TO {u}; \
             ALTER TABLE evil.accounts OWNER TO {u}; CREATE ROLE helper NOLOGIN; \
             GRANT helper TO {u}",
            u = acme.user
        ),
    )
    .await;
    let mut client = pooler.client().await;
    let planted = [
        "SELECT set_config('search_path', 'evil', false)",
        "select pg_catalog.set_config('search_path', 'evil', false)",
        "WITH s AS (SELECT set_config('search_path', 'evil', false)) SELECT * FROM s",
        "VALUES (set_config('search_path', 'evil', false))",
        "(SELECT set_config('search_path', 'evil', false))",
        "SELECT 1 WHERE set_config('search_path', 'evil', false) IS NOT NULL",
        "SELECT * FROM set_config('search_path', 'evil', false)",
        "SELECT set_config('role', 'helper', false)",
        "SELECT set_config('statement_timeout', '0', false)",
        "SELECT set_config('myapp.tenant', 'other', false)",
    ];
    for (i, sql) in planted.iter().enumerate() {
        one_shot(&mut client, "acme", sql, vec![]).await;
        assert_fresh_session(&mut client, &acme, sql).await;
        // The next caller's unqualified INSERT lands in the real table.
        one_shot(&mut client, "acme", sql, vec![]).await;
        let insert = one_shot(
            &mut client,
            "acme",
            "INSERT INTO accounts VALUES (1)",
            vec![],
        )
        .await;
        assert_eq!(insert.tag.as_deref(), Some("INSERT"));
        assert_eq!(
            count(&db, &acme, "public.accounts").await,
            i as i64 + 1,
            "{sql}"
        );
        assert_eq!(count(&db, &acme, "evil.accounts").await, 0, "{sql}");
    }
    // A custom setting is gone too.
    let custom = one_shot(
        &mut client,
        "acme",
        "SELECT coalesce(current_setting('myapp.tenant', true), '')",
        vec![],
    )
    .await;
    assert_eq!(custom.text(), "");
    // session_authorization: refused for a non-superuser, and in any case
    // the next caller is itself.
    let refused = run(
        &mut client,
        ExecuteRequest {
            tenant_id: "acme".into(),
            sql: "SELECT set_config('session_authorization', 'postgres', false)".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(refused.sql_error.is_some(), "{refused:?}");
    assert_fresh_session(&mut client, &acme, "session_authorization").await;

    // The tenant's statementTimeout (7s) still applies after a one-shot set it to 0.
    one_shot(
        &mut client,
        "acme",
        "SELECT set_config('statement_timeout', '100ms', false)",
        vec![],
    )
    .await;
    let slept = one_shot(&mut client, "acme", "SELECT pg_sleep(0.3)", vec![]).await;
    assert!(slept.sql_error.is_none(), "{slept:?}");
}

#[tokio::test]
async fn temp_tables_locks_and_sequences_never_reach_the_next_caller() {
    let (db, acme, pooler) = one_connection_tenant().await;
    db.exec(
        &acme.dbname,
        &format!(
            "CREATE TABLE accounts (id int); GRANT ALL ON accounts TO {u}; \
             CREATE SEQUENCE seq; GRANT ALL ON seq TO {u}",
            u = acme.user
        ),
    )
    .await;
    let mut client = pooler.client().await;

    // A temp table that would shadow the real one and swallow inserts.
    for (i, sql) in [
        "SELECT 1 AS id INTO TEMP TABLE accounts",
        "EXPLAIN ANALYZE CREATE TEMP TABLE accounts AS SELECT 1 AS id",
        "WITH x AS (SELECT 1 AS id) SELECT id INTO TEMP accounts FROM x",
    ]
    .iter()
    .enumerate()
    {
        one_shot(&mut client, "acme", sql, vec![]).await;
        one_shot(
            &mut client,
            "acme",
            "INSERT INTO accounts VALUES (7)",
            vec![],
        )
        .await;
        assert_eq!(count(&db, &acme, "accounts").await, i as i64 + 1, "{sql}");
        let temp = one_shot(
            &mut client,
            "acme",
            "SELECT count(*) FROM pg_class WHERE relpersistence = 't'",
            vec![],
        )
        .await;
        assert_eq!(temp.int(), 0, "temp table left after {sql:?}");
    }

    // A session advisory lock is released: a third connection can take it.
    let admin = db.admin(&acme.dbname).await;
    for sql in [
        "SELECT pg_advisory_lock(42)",
        "SELECT pg_try_advisory_lock(42)",
        "(SELECT pg_advisory_lock(42))",
        "VALUES (pg_advisory_lock(42))",
    ] {
        one_shot(&mut client, "acme", sql, vec![]).await;
        let free: bool = admin
            .query_one("SELECT pg_try_advisory_lock(42)", &[])
            .await
            .unwrap()
            .get(0);
        assert!(free, "lock 42 still held after {sql:?}");
        admin
            .execute("SELECT pg_advisory_unlock(42)", &[])
            .await
            .unwrap();
        let next = one_shot(
            &mut client,
            "acme",
            "SELECT pg_try_advisory_lock(42)",
            vec![],
        )
        .await;
        assert!(
            matches!(
                next.scalar().kind,
                Some(teresa_proto::connectionpool::value::Kind::Bool(true))
            ),
            "{next:?}"
        );
    }

    // Sequence state: the next caller has no currval.
    one_shot(&mut client, "acme", "SELECT nextval('seq')", vec![]).await;
    let currval = run(
        &mut client,
        ExecuteRequest {
            tenant_id: "acme".into(),
            sql: "SELECT currval('seq')".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        currval.sql_error.as_ref().map(|e| e.0.as_str()),
        Some("55000"),
        "currval visible to the next caller: {currval:?}"
    );
}

#[tokio::test]
async fn disguised_transaction_control_never_swallows_the_next_callers_writes() {
    let (db, acme, pooler) = one_connection_tenant().await;
    db.create_table_t(&acme).await;
    let mut client = pooler.client().await;
    let mut acknowledged = 0;
    for sql in [
        "/* /* */ SELECT */ BEGIN",
        "-- SELECT\rBEGIN",
        "\r/* SELECT */ START TRANSACTION",
        "( BEGIN )",
    ] {
        let request = ExecuteRequest {
            tenant_id: "acme".into(),
            sql: sql.into(),
            ..Default::default()
        };
        if let Ok(outcome) = run(&mut client, request).await
            && outcome.sql_error.is_none()
        {
            assert_eq!(outcome.tag.as_deref(), Some("BEGIN"), "{sql:?}");
        }
        let insert = one_shot(
            &mut client,
            "acme",
            "INSERT INTO t VALUES (1) RETURNING id",
            vec![],
        )
        .await;
        assert_eq!(insert.tag.as_deref(), Some("INSERT"));
        assert_eq!(insert.rows.len(), 1);
        acknowledged += 1;
        // Acknowledged means committed: a third connection sees it.
        assert_eq!(db.count_t(&acme).await, acknowledged, "after {sql:?}");
    }
    let idle = db
        .backends(&acme.dbname)
        .await
        .iter()
        .all(|b| b.state != "idle in transaction");
    assert!(idle, "{:?}", db.backends(&acme.dbname).await);

    // Tags are the statement's, not a guess from its text.
    let select = one_shot(
        &mut client,
        "acme",
        "WITH x AS (SELECT 1) SELECT 'INSERT' FROM x",
        vec![],
    )
    .await;
    assert_eq!(select.tag.as_deref(), Some("SELECT"));
}

#[tokio::test]
async fn client_prepared_statements_and_schema_changes_never_break_the_cache() {
    let (db, acme, pooler) = one_connection_tenant().await;
    db.create_table_t(&acme).await;
    let mut client = pooler.client().await;
    let cached = ["SELECT count(*) FROM t", "SELECT $1::int8 + 1"];
    let run_cached = |client: &mut LeaseClient| {
        let mut client = client.clone();
        async move {
            assert_eq!(
                one_shot(&mut client, "acme", cached[0], vec![]).await.int(),
                0
            );
            assert_eq!(
                one_shot(&mut client, "acme", cached[1], vec![int(1)])
                    .await
                    .int(),
                2
            );
        }
    };
    run_cached(&mut client).await;

    // DEALLOCATE ALL / DISCARD ALL, plain and hidden in DO or a function.
    db.exec(
        &acme.dbname,
        &format!(
            "CREATE FUNCTION wipe() RETURNS void LANGUAGE plpgsql AS \
             $$BEGIN EXECUTE 'DEALLOCATE ALL'; END$$; GRANT EXECUTE ON FUNCTION wipe() TO {}",
            acme.user
        ),
    )
    .await;
    for sql in [
        "DEALLOCATE ALL",
        "DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$",
        "SELECT wipe()",
        "DO $$ BEGIN EXECUTE 'PREPARE s1 AS SELECT 1'; EXECUTE 'PREPARE s2 AS SELECT 2'; END $$",
    ] {
        let outcome = one_shot(&mut client, "acme", sql, vec![]).await;
        assert!(outcome.sql_error.is_none(), "{sql}: {outcome:?}");
        run_cached(&mut client).await;
        assert_fresh_session(&mut client, &acme, sql).await;
    }
    // DISCARD ALL cannot run in a transaction block, so not through Execute's
    // extended protocol on a lease either; on a lease it runs as a statement.
    let lease_id = lease(&mut client, "acme").await;
    on_lease(&mut client, &lease_id, "DISCARD ALL", vec![]).await;
    for sql in cached {
        let params = if sql.contains("$1") {
            vec![int(1)]
        } else {
            vec![]
        };
        on_lease(&mut client, &lease_id, sql, params).await;
    }
    // Names the pooler will use next, planted by the client on its lease:
    // every colliding prepare is retried under a fresh name.
    on_lease(
        &mut client,
        &lease_id,
        "DO $$ BEGIN FOR i IN 0..3000 BY 2 LOOP EXECUTE format('PREPARE s%s AS SELECT 1', i); END LOOP; END $$",
        vec![],
    )
    .await;
    for n in 0..20 {
        let sql = format!("SELECT {n} + 0 AS n");
        let outcome = on_lease(&mut client, &lease_id, &sql, vec![]).await;
        assert!(outcome.sql_error.is_none(), "{sql}: {outcome:?}");
        assert_eq!(outcome.int(), n);
    }
    release(&mut client, &lease_id).await;
    // The release dropped what the client prepared, not the pooler's own.
    assert_fresh_session(&mut client, &acme, "planted PREPAREs").await;
    run_cached(&mut client).await;

    // A schema change alters a cached statement's result type.
    one_shot(&mut client, "acme", "SELECT * FROM t", vec![]).await;
    db.exec(&acme.dbname, "ALTER TABLE t ADD COLUMN extra int")
        .await;
    let after = one_shot(&mut client, "acme", "SELECT * FROM t", vec![]).await;
    assert!(after.sql_error.is_none(), "{after:?}");
    assert_eq!(after.columns, ["id", "extra"]);
}

#[tokio::test]
async fn a_release_cut_short_by_its_deadline_still_rolls_back_and_resets() {
    let (db, acme, pooler) = one_connection_tenant().await;
    db.create_table_t(&acme).await;
    db.exec(
        &acme.dbname,
        &format!("CREATE SCHEMA evil AUTHORIZATION {}", acme.user),
    )
    .await;
    let mut client = pooler.client().await;
    let id = lease(&mut client, "acme").await;
    for sql in [
        "BEGIN",
        "INSERT INTO t VALUES (1)",
        "SET search_path = evil",
        "SELECT pg_advisory_lock(42)",
    ] {
        on_lease(&mut client, &id, sql, vec![]).await;
    }
    let sleeper = {
        let mut client = client.clone();
        let id = id.clone();
        tokio::spawn(async move { on_lease(&mut client, &id, "SELECT pg_sleep(3)", vec![]).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut request = tonic::Request::new(ConnectionRelease {
        connection_id: id.clone(),
    });
    request.set_timeout(Duration::from_secs(1));
    let cut = client.release_connection(request).await;
    assert!(cut.is_err(), "the release outlived its deadline: {cut:?}");
    sleeper.await.unwrap();

    // The next client (the pool's only connection) finds it clean.
    let next = lease(&mut client, "acme").await;
    let seen = on_lease(
        &mut client,
        &next,
        "SELECT (SELECT count(*) FROM t), current_setting('search_path')",
        vec![],
    )
    .await;
    assert_eq!(seen.rows[0][0].kind, int(0).kind, "{seen:?}");
    assert_eq!(seen.rows[0][1].kind, text("\"$user\", public").kind);
    release(&mut client, &next).await;
    assert_eq!(db.count_t(&acme).await, 0, "the uncommitted row survived");
    let admin = db.admin(&acme.dbname).await;
    let free: bool = admin
        .query_one("SELECT pg_try_advisory_lock(42)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(free, "advisory lock 42 still held");
    let in_transaction: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
             AND application_name = 'teresa-pooler' AND state LIKE 'idle in transaction%'",
            &[&acme.dbname],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(in_transaction, 0);
}
