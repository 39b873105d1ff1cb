//! Faults injected for real under a steady load of 32 clients mixing one-shot
//! Execute and lease cycles: PostgreSQL stopped and started, backends
//! terminated, clients and poolers killed, queries cancelled, slow readers,
//! a hammered tenant. Each test writes its row of `target/fault-summary.md`.
//!
//! What the pooler sets against dead peers, as F7 checks: TCP keepalive on
//! every server connection (idle 30 s, interval 10 s, 3 probes: a vanished
//! PostgreSQL is noticed within about a minute). PostgreSQL notices a killed
//! pooler at once (the kernel closes its sockets); a running query notices
//! only with the server's `client_connection_check_interval` (PostgreSQL 14+,
//! recommended; F7 sets 1 s), and a vanished pooler host only with the
//! server's `tcp_keepalives_*` settings.
//!
//! `TERESA_SOAK=1` runs long variants: a 20 s PostgreSQL outage, 30 s phases
//! of the hammered tenant.

mod support;

use std::time::{Duration, Instant};

use support::*;
use teresa_proto::connectionpool::{
    ConnectionRelease, ConnectionRequest, ExecuteRequest, value::Kind as V,
};
use tonic::Code;

/// One fault at a time: each brings its own PostgreSQL, pooler and 32
/// clients, and several of them measure time on a machine of 2 cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn soak() -> bool {
    std::env::var("TERESA_SOAK").is_ok_and(|v| v == "1")
}

async fn sleep(d: Duration) {
    tokio::time::sleep(d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_under_load_fails_fast_and_pools_recover_within_five_seconds() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let outage = if soak() {
        Duration::from_secs(20)
    } else {
        Duration::from_secs(2)
    };
    let mut f = Finding::new(
        "F1",
        &format!(
            "PostgreSQL restarted under load (fast shutdown, down {} s, start)",
            outage.as_secs()
        ),
        "UNAVAILABLE during the outage, no call past its deadline; pool recovers <= 5 s after PostgreSQL is back; no leaked lease, no lost slot, no broken connection handed out",
    );
    let db = Db::start().await;
    let acme = db.tenant("acme").await;
    let pooler = Pooler::start(PoolerSetup::new(&[(
        &acme,
        "pool: { maxConnections: 8, minConnections: 4, acquireTimeout: 2s }",
    )]))
    .await;
    let load = Load::start(&pooler, LoadSpec::steady(&["acme"])).await;
    sleep(Duration::from_millis(1500)).await;

    let down_at = load.now();
    db.pg.stop_fast().await.unwrap();
    let stopped_at = load.now();
    sleep(outage).await;
    db.pg.start_again().await.unwrap();
    let back_at = load.now();
    sleep(Duration::from_millis(5500)).await;
    let report = load.stop().await;

    let during = report.started_between(down_at, back_at);
    f.observe(format!(
        "load {} ops ({}); during the outage {}",
        report.ops.len(),
        report.summary(),
        during.summary()
    ));
    f.observe(format!(
        "slowest call {} (deadline 3 s)",
        ms(report.max_latency())
    ));
    let unexpected = report.failed_other_than_connection_loss();
    f.check(
        unexpected.is_empty(),
        format!(
            "only UNAVAILABLE (or FAILED_PRECONDITION for a lease whose connection was lost) expected, got {}: {}",
            unexpected.len(),
            report.examples(&unexpected)
        ),
    );
    f.check(during.ok() < during.ops.len(), "the outage was not noticed");
    f.check(
        report.hung().is_empty() && report.wrong().is_empty(),
        format!("hung or wrong: {}", report.examples(&report.failed())),
    );
    let recovered = report.healthy_again_after(back_at);
    f.observe(format!(
        "stop took {}; healthy again {} after PostgreSQL was back",
        ms(stopped_at - down_at),
        recovered.map_or("never".into(), ms)
    ));
    f.check(
        recovered.is_some_and(|d| d <= Duration::from_secs(5)),
        format!("not healthy within 5 s: {recovered:?}"),
    );
    let mut client = pooler.client().await;
    let whole = assert_pool_whole(&mut client, &db, &acme, 8).await;
    f.check(whole.is_ok(), format!("{whole:?}"));
    f.observe(whole.unwrap());
    f.pass();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_whose_database_is_down_at_start_reports_unreachable_then_serves_when_it_appears()
{
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut f = Finding::new(
        "F2",
        "PostgreSQL unreachable when the pooler starts (a second tenant on another server is up)",
        "pooler starts; the tenant reports database_reachable=false and teresa_pool_database_up 0; its calls get UNAVAILABLE; served <= 5 s after the database appears; the other tenant is untouched",
    );
    let down_db = Db::start().await;
    let up_db = Db::start().await;
    let acme = down_db.tenant("acme").await;
    let globex = up_db.tenant("globex").await;
    down_db.pg.stop_fast().await.unwrap();
    let started = Instant::now();
    let pooler = Pooler::start(PoolerSetup::new(&[
        (&acme, "pool: { maxConnections: 6 }"),
        (&globex, ""),
    ]))
    .await;
    f.observe(format!("pooler ready in {}", ms(started.elapsed())));
    let mut client = pooler.client().await;
    let unreachable = eventually(Duration::from_secs(3), || {
        let mut client = client.clone();
        async move { !stats(&mut client, "acme").await.database_reachable }
    })
    .await;
    f.check(unreachable, "stats still say database_reachable for acme");
    let metrics = pooler.metrics().await;
    let gauge = |tenant: &str, metrics: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("teresa_pool_database_up{{tenant=\"{tenant}\"}}")))
            .map(|l| l.rsplit(' ').next().unwrap_or_default().to_owned())
    };
    f.check(
        gauge("acme", &metrics).as_deref() == Some("0")
            && gauge("globex", &metrics).as_deref() == Some("1"),
        format!(
            "teresa_pool_database_up acme {:?}, globex {:?}",
            gauge("acme", &metrics),
            gauge("globex", &metrics)
        ),
    );
    f.observe("stats database_reachable=false, teresa_pool_database_up{acme} 0, {globex} 1");

    let load = Load::start(&pooler, LoadSpec::steady(&["acme", "globex"])).await;
    sleep(Duration::from_secs(2)).await;
    let starting_at = load.now();
    down_db.pg.start_again().await.unwrap();
    let back_at = load.now();
    sleep(Duration::from_millis(5500)).await;
    let report = load.stop().await;

    let acme_ops = LoadReport {
        ops: report
            .filter(|op| op.tenant == "acme")
            .into_iter()
            .cloned()
            .collect(),
    };
    let globex_ops = LoadReport {
        ops: report
            .filter(|op| op.tenant == "globex")
            .into_iter()
            .cloned()
            .collect(),
    };
    let before = acme_ops.started_between(Duration::ZERO, starting_at);
    f.observe(format!(
        "acme while down: {}, slowest {}; globex: {}",
        before.summary(),
        ms(before.max_latency()),
        globex_ops.summary()
    ));
    let unexpected = acme_ops.failed_except(&[Code::Unavailable]);
    f.check(
        unexpected.is_empty() && before.ok() == 0,
        format!("acme while down: {}", report.examples(&unexpected)),
    );
    let refusal = before
        .ops
        .iter()
        .find_map(|op| match &op.result {
            OpResult::Refused(_, message) => Some(message.clone()),
            _ => None,
        })
        .unwrap_or_default();
    f.check(
        refusal.contains("acme") && refusal.contains("unreachable"),
        format!("refusal does not say what is wrong: {refusal:?}"),
    );
    f.check(
        globex_ops.failed().is_empty(),
        format!(
            "globex disturbed: {}",
            report.examples(&globex_ops.failed())
        ),
    );
    let recovered = acme_ops.healthy_again_after(back_at);
    f.observe(format!(
        "acme served {} after its database appeared",
        recovered.map_or("never".into(), ms)
    ));
    f.check(
        recovered.is_some_and(|d| d <= Duration::from_secs(5)),
        format!("acme not served within 5 s: {recovered:?}"),
    );
    let s = stats(&mut client, "acme").await;
    let metrics = pooler.metrics().await;
    f.check(
        s.database_reachable && gauge("acme", &metrics).as_deref() == Some("1"),
        format!("still reported unreachable: {s:?}"),
    );
    let whole = assert_pool_whole(&mut client, &down_db, &acme, 6).await;
    f.check(whole.is_ok(), format!("{whole:?}"));
    f.observe(format!("then reachable again; {}", whole.unwrap()));
    f.pass();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_backend_fails_its_lessee_cleanly_and_is_replaced_whether_leased_or_idle() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut f = Finding::new(
        "F3",
        "Backends killed with pg_terminate_backend: all idle ones, then one leased, then every one under load",
        "no killed connection is handed out; the lessee gets UNAVAILABLE, then FAILED_PRECONDITION naming the lost connection; killed connections are discarded and replaced; load healthy again <= 2 s",
    );
    let db = Db::start().await;
    let acme = db.tenant("acme").await;
    let pooler = Pooler::start(PoolerSetup::new(&[(
        &acme,
        "pool: { maxConnections: 8, minConnections: 4 }",
    )]))
    .await;
    let mut client = pooler.client().await;
    let warm = eventually(Duration::from_secs(5), || async {
        db.pooler_backends(&acme.dbname).await == 4
    })
    .await;
    f.check(warm, "the pool did not warm to its minimum");

    // Idle: every pooled connection killed before any traffic. Once the
    // server has closed them, none may be handed out.
    let idle_killed = db.terminate_backends(&acme.dbname, &["idle"]).await;
    let exited = eventually(Duration::from_secs(5), || async {
        let now = db.backends(&acme.dbname).await;
        !now.iter().any(|b| idle_killed.contains(&b.pid))
    })
    .await;
    f.check(exited, "killed backends did not exit");
    let load = Load::start(&pooler, LoadSpec::steady(&["acme"])).await;
    sleep(Duration::from_secs(1)).await;
    let first_second = load.now();
    let replaced = db.backends(&acme.dbname).await;
    f.check(
        idle_killed.len() == 4 && !replaced.iter().any(|b| idle_killed.contains(&b.pid)),
        format!("killed {idle_killed:?}, now {replaced:?}"),
    );

    // Leased.
    let id = lease(&mut client, "acme").await;
    let pid = on_lease(&mut client, &id, "SELECT pg_backend_pid()", vec![])
        .await
        .int();
    db.exec("postgres", &format!("SELECT pg_terminate_backend({pid})"))
        .await;
    let first = run(&mut client, support_execute(&id, "SELECT 1"))
        .await
        .unwrap_err();
    f.check(
        first.code() == Code::Unavailable && first.message().contains("connection"),
        format!("{first:?}"),
    );
    let second = run(&mut client, support_execute(&id, "SELECT 1"))
        .await
        .unwrap_err();
    f.check(
        second.code() == Code::FailedPrecondition
            && second.message().contains("lost its server connection"),
        format!("{second:?}"),
    );
    let lessee = format!(
        "lessee: {:?} {:?}, then {:?} {:?}",
        first.code(),
        first.message(),
        second.code(),
        second.message()
    );

    // Every one, under load.
    let killed_at = load.now();
    let all_killed = db.terminate_backends(&acme.dbname, &[]).await;
    sleep(Duration::from_secs(3)).await;
    let report = load.stop().await;
    let start = report.started_between(Duration::ZERO, first_second);
    let after = report.started_between(killed_at, Duration::MAX);
    f.observe(format!(
        "4 idle killed, then load: {} in the first second, none handed out; {lessee}",
        start.summary()
    ));
    f.check(
        start.failed().is_empty(),
        format!(
            "a killed idle connection was handed out: {}",
            report.examples(&start.failed())
        ),
    );
    let unexpected = report.failed_other_than_connection_loss();
    f.check(
        unexpected.is_empty() && report.hung().is_empty() && report.wrong().is_empty(),
        report.examples(&unexpected),
    );
    let healthy = report.healthy_again_after(killed_at);
    f.observe(format!(
        "{} killed under load: {}; healthy again {} after",
        all_killed.len(),
        after.summary(),
        healthy.map_or("never".into(), ms)
    ));
    f.check(
        healthy.is_some_and(|d| d <= Duration::from_secs(2)),
        format!("{healthy:?}"),
    );
    let now: Vec<i32> = db
        .backends(&acme.dbname)
        .await
        .into_iter()
        .map(|b| b.pid)
        .collect();
    f.check(
        !all_killed.iter().any(|pid| now.contains(pid)),
        "a killed backend is still listed",
    );
    let whole = assert_pool_whole(&mut client, &db, &acme, 8).await;
    f.check(whole.is_ok(), format!("{whole:?}"));
    f.observe(whole.unwrap());
    f.pass();
}

fn support_execute(id: &str, sql: &str) -> ExecuteRequest {
    ExecuteRequest {
        connection_id: id.to_owned(),
        sql: sql.to_owned(),
        ..Default::default()
    }
}

// ---- client processes: this test binary started again as a client ----

const CHILD_ROLE: &str = "TERESA_FAULT_CHILD";

/// Starts this test binary again as a client process of `pooler` that plays
/// `role` (see [`fault_client_process`]); its stdout lines arrive on the channel.
fn client_process(
    pooler: &Pooler,
    role: &str,
    env: &[(&str, String)],
) -> (
    tokio::process::Child,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    use tokio::io::AsyncBufReadExt;
    let mut command = tokio::process::Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "fault_client_process",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ROLE, role)
        .env("TERESA_FAULT_PORT", pooler.grpc_port.to_string())
        .env("TERESA_FAULT_CA", pooler.certs.path("ca.pem"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("start a client process");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// Waits for a line of the client process starting with `prefix`; returns the rest.
async fn expect_line(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    prefix: &str,
) -> String {
    let wait = async {
        while let Some(line) = rx.recv().await {
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.trim().to_owned();
            }
        }
        panic!("the client process ended without printing {prefix:?}");
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .unwrap_or_else(|_| panic!("no {prefix:?} from the client process"))
}

/// Not a test of its own: the client process that fault tests start (and
/// kill), selected by `TERESA_FAULT_CHILD`. Without it, does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a client process started by the fault tests, not a test of its own"]
async fn fault_client_process() {
    let Ok(role) = std::env::var(CHILD_ROLE) else {
        return;
    };
    let var = |key: &str| std::env::var(key).unwrap_or_else(|_| panic!("{key} not set"));
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            std::fs::read(var("TERESA_FAULT_CA")).unwrap(),
        ))
        .domain_name("localhost");
    let channel = tonic::transport::Channel::from_shared(format!(
        "https://127.0.0.1:{}",
        var("TERESA_FAULT_PORT")
    ))
    .unwrap()
    .tls_config(tls)
    .unwrap()
    .connect()
    .await
    .unwrap();
    let mut client = LeaseClient::new(channel);
    match role.as_str() {
        // Leases with a 2 s TTL, locks row 1 in a transaction, then waits to be killed.
        "lease-holder" => {
            let id = client
                .get_connection(ConnectionRequest {
                    tenant_id: var("TERESA_FAULT_TENANT"),
                    ttl: Some(prost_types::Duration {
                        seconds: 2,
                        nanos: 0,
                    }),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .connection_id;
            on_lease(&mut client, &id, "BEGIN", vec![]).await;
            let locked = on_lease(
                &mut client,
                &id,
                "SELECT v FROM fault_rows WHERE id = 1 FOR UPDATE",
                vec![],
            )
            .await;
            assert!(locked.sql_error.is_none(), "{locked:?}");
            println!("LEASED {id}");
            tokio::time::sleep(Duration::from_secs(600)).await;
        }
        // Many clients running short one-shot statements on one tenant as
        // fast as they are let; refused ones retry after a backoff.
        "hammer" => {
            let clients: usize = var("TERESA_FAULT_CLIENTS").parse().unwrap();
            let backoff = Duration::from_millis(var("TERESA_FAULT_BACKOFF_MS").parse().unwrap());
            let tenant = var("TERESA_FAULT_TENANT");
            let counts =
                std::sync::Arc::new(std::sync::Mutex::new((0u64, 0u64, 0u64, Duration::ZERO)));
            for _ in 0..clients {
                let mut client = client.clone();
                let tenant = tenant.clone();
                let counts = counts.clone();
                tokio::spawn(async move {
                    loop {
                        let mut request = tonic::Request::new(ExecuteRequest {
                            tenant_id: tenant.clone(),
                            sql: "SELECT pg_sleep(0.02)".into(),
                            ..Default::default()
                        });
                        request.set_timeout(Duration::from_secs(5));
                        let started = Instant::now();
                        let result = match client.execute(request).await {
                            Ok(response) => {
                                let mut stream = response.into_inner();
                                let mut result = Ok(());
                                loop {
                                    match stream.message().await {
                                        Ok(Some(_)) => {}
                                        Ok(None) => break,
                                        Err(s) => {
                                            result = Err(s);
                                            break;
                                        }
                                    }
                                }
                                result
                            }
                            Err(s) => Err(s),
                        };
                        let took = started.elapsed();
                        let refused = result.is_err();
                        {
                            let mut c = counts.lock().unwrap();
                            match result {
                                Ok(()) => c.0 += 1,
                                Err(s) if s.code() == Code::ResourceExhausted => {
                                    c.1 += 1;
                                    c.3 = c.3.max(took);
                                }
                                Err(_) => c.2 += 1,
                            }
                        }
                        if refused {
                            tokio::time::sleep(backoff).await;
                        }
                    }
                });
            }
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let c = *counts.lock().unwrap();
                println!("COUNTS {} {} {} {}", c.0, c.1, c.2, c.3.as_millis());
            }
        }
        other => panic!("unknown client role {other}"),
    }
}

async fn rows_table(db: &Db, tenant: &TenantDb) {
    db.exec(
        &tenant.dbname,
        &format!(
            "CREATE TABLE fault_rows (id int PRIMARY KEY, v int); \
             INSERT INTO fault_rows VALUES (1, 0); GRANT ALL ON fault_rows TO {}",
            tenant.user
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_clients_row_lock_is_released_within_ttl_plus_one_second() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut f = Finding::new(
        "F4",
        "Client process SIGKILLed while its lease (TTL 2 s) holds a row lock in an open transaction",
        "the transaction is rolled back and the lock released <= TTL + 1 s after the kill; a waiting client then gets the row; the dead lease's id answers FAILED_PRECONDITION (expired)",
    );
    let db = Db::start().await;
    let acme = db.tenant("acme").await;
    rows_table(&db, &acme).await;
    let pooler = Pooler::start(PoolerSetup::new(&[(
        &acme,
        "pool: { maxConnections: 10 }\nleases: { maxTtl: 1m }",
    )]))
    .await;
    let load = Load::start(&pooler, LoadSpec::steady(&["acme"])).await;
    let (mut holder, mut lines) = client_process(
        &pooler,
        "lease-holder",
        &[("TERESA_FAULT_TENANT", "acme".into())],
    );
    let id = expect_line(&mut lines, "LEASED").await;

    // Another client wants the row and blocks on the lock.
    let mut client = pooler.client().await;
    let waiter = {
        let mut client = client.clone();
        tokio::spawn(async move {
            let mut request = tonic::Request::new(ExecuteRequest {
                tenant_id: "acme".into(),
                sql: "UPDATE fault_rows SET v = v + 1 WHERE id = 1 RETURNING v".into(),
                ..Default::default()
            });
            request.set_timeout(Duration::from_secs(15));
            let mut stream = client.execute(request).await?.into_inner();
            let mut outcome = Vec::new();
            while let Some(message) = stream.message().await? {
                outcome.push(message);
            }
            Ok::<_, tonic::Status>((Instant::now(), outcome))
        })
    };
    sleep(Duration::from_millis(500)).await;
    f.check(
        !waiter.is_finished(),
        "the row was not locked by the lease holder",
    );
    let blocked = db
        .backends(&acme.dbname)
        .await
        .iter()
        .any(|b| b.wait_event == "transactionid" && b.query.contains("UPDATE fault_rows"));
    f.check(blocked, "no client was waiting for the row lock");

    holder.start_kill().unwrap();
    let killed = Instant::now();
    holder.wait().await.unwrap();
    let (got_row, outcome) = waiter.await.unwrap().expect("the waiting UPDATE failed");
    let released_after = got_row.saturating_duration_since(killed);
    let report = load.stop().await;
    f.observe(format!(
        "lock released and row updated {} after the kill (TTL 2 s); load {}",
        ms(released_after),
        report.summary()
    ));
    f.check(
        released_after <= Duration::from_secs(3),
        format!("released after {released_after:?}"),
    );
    f.check(
        outcome.len() >= 2,
        format!("the UPDATE returned no row: {outcome:?}"),
    );
    let err = run(&mut client, support_execute(&id, "SELECT 1"))
        .await
        .unwrap_err();
    f.check(
        err.code() == Code::FailedPrecondition && err.message().contains("expired"),
        format!("{err:?}"),
    );
    let s = stats(&mut client, "acme").await;
    f.check(s.expired_leases_total == 1, format!("{s:?}"));
    f.check(
        report.failed().is_empty(),
        format!("load disturbed: {}", report.examples(&report.failed())),
    );
    let whole = assert_pool_whole(&mut client, &db, &acme, 10).await;
    f.check(whole.is_ok(), format!("{whole:?}"));
    f.observe(format!(
        "dead lease's id: {:?}; {}",
        err.code(),
        whole.unwrap()
    ));
    f.pass();
}

#[derive(Debug, Clone, Copy)]
enum GiveUp {
    Drop,
    Deadline,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_long_query_is_cancelled_on_the_server_and_its_connection_reused() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut f = Finding::new(
        "F5",
        "SELECT pg_sleep(30) given up by its client: call dropped, or 1 s deadline passed; one-shot and on a lease",
        "the statement is cancelled on the server (cancel request) <= 2 s; the deadline is answered DEADLINE_EXCEEDED; the same server connection serves the next statement",
    );
    let db = Db::start().await;
    let acme = db.tenant("acme").await;
    let sleepy = db.tenant("sleepy").await;
    let pooler = Pooler::start(PoolerSetup::new(&[
        (&acme, ""),
        (&sleepy, "pool: { maxConnections: 1, minConnections: 1 }"),
    ]))
    .await;
    let load = Load::start(&pooler, LoadSpec::steady(&["acme"])).await;
    let mut client = pooler.client().await;
    let pid = one_shot(&mut client, "sleepy", "SELECT pg_backend_pid()", vec![])
        .await
        .int() as i32;
    // Leased once the one-shot cases are done: the tenant has one connection.
    let mut lease_id = String::new();
    let mut figures = Vec::new();
    for (on_lease_too, give_up) in [
        (false, GiveUp::Drop),
        (false, GiveUp::Deadline),
        (true, GiveUp::Drop),
        (true, GiveUp::Deadline),
    ] {
        let case = format!(
            "{} {give_up:?}",
            if on_lease_too { "lease" } else { "one-shot" }
        );
        if on_lease_too && lease_id.is_empty() {
            lease_id = lease(&mut client, "sleepy").await;
        }
        let cancels = db.log_count("canceling statement due to user request");
        let request = ExecuteRequest {
            connection_id: if on_lease_too {
                lease_id.clone()
            } else {
                String::new()
            },
            tenant_id: "sleepy".into(),
            sql: "SELECT pg_sleep(30)".into(),
            ..Default::default()
        };
        let sleeping = || async {
            db.backends(&sleepy.dbname)
                .await
                .iter()
                .any(|b| b.pid == pid && b.state == "active" && b.query.contains("pg_sleep(30)"))
        };
        let mut caller = pooler.client().await;
        let gave_up = match give_up {
            GiveUp::Drop => {
                let call = tokio::spawn(async move { run(&mut caller, request).await });
                f.check(
                    eventually(Duration::from_secs(5), sleeping).await,
                    format!("{case}: the statement never ran"),
                );
                call.abort();
                Instant::now()
            }
            GiveUp::Deadline => {
                let mut request = tonic::Request::new(request);
                request.set_timeout(Duration::from_secs(1));
                let started = Instant::now();
                let answer = tokio::time::timeout(Duration::from_secs(5), async {
                    let mut stream = caller.execute(request).await?.into_inner();
                    while stream.message().await?.is_some() {}
                    Ok::<_, tonic::Status>(())
                })
                .await;
                let answered = started.elapsed();
                f.check(
                    matches!(&answer, Ok(Err(s)) if s.code() == Code::DeadlineExceeded),
                    format!("{case}: after {answered:?}: {answer:?} (DEADLINE_EXCEEDED expected)"),
                );
                f.check(
                    answered < Duration::from_secs(1) + HANG_GRACE,
                    format!("{case}: deadline answered after {answered:?}"),
                );
                Instant::now()
            }
        };
        let stopped = eventually(Duration::from_secs(3), || async { !sleeping().await }).await;
        let cancelled_after = gave_up.elapsed();
        f.check(stopped, format!("{case}: still sleeping on the server"));
        f.check(
            cancelled_after <= Duration::from_secs(2),
            format!("{case}: cancelled after {cancelled_after:?}"),
        );
        let logged = eventually(Duration::from_secs(2), || async {
            db.log_count("canceling statement due to user request") > cancels
        })
        .await;
        f.check(logged, format!("{case}: PostgreSQL logged no cancel"));
        let next = if on_lease_too {
            on_lease(&mut client, &lease_id, "SELECT pg_backend_pid()", vec![]).await
        } else {
            one_shot(&mut client, "sleepy", "SELECT pg_backend_pid()", vec![]).await
        };
        f.check(
            next.int() as i32 == pid,
            format!(
                "{case}: the next statement ran on backend {} instead of {pid}",
                next.int()
            ),
        );
        figures.push(format!(
            "{case}: cancelled on the server {} after",
            ms(cancelled_after)
        ));
    }
    release(&mut client, &lease_id).await;
    let report = load.stop().await;
    f.observe(format!(
        "{}; every time the same backend served the next statement; load {}",
        figures.join(", "),
        report.summary()
    ));
    f.check(
        report.failed().is_empty(),
        format!("load disturbed: {}", report.examples(&report.failed())),
    );
    f.pass();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_fails_no_in_flight_statement_and_exits_by_the_drain_deadline() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut f = Finding::new(
        "F6",
        "Pooler SIGTERM under load (drain timeout 3 s) with four 1 s statements running, 2 leases still working, 1 lease abandoned in a transaction",
        "not ready at once; new work refused with UNAVAILABLE (after exit: client-side transport errors); zero failed in-flight statements; the abandoned lease rolled back; exit 0 <= drain deadline + 1 s; no server connection left",
    );
    let db = Db::start().await;
    let acme = db.tenant("acme").await;
    rows_table(&db, &acme).await;
    let mut pooler = Pooler::start(
        PoolerSetup::new(&[(&acme, "pool: { maxConnections: 16, minConnections: 4 }")])
            .arg("--drain-timeout")
            .arg("3s"),
    )
    .await;
    let load = Load::start(&pooler, LoadSpec::steady(&["acme"])).await;
    sleep(Duration::from_secs(1)).await;
    let mut client = pooler.client().await;

    let abandoned = lease(&mut client, "acme").await;
    on_lease(&mut client, &abandoned, "BEGIN", vec![]).await;
    on_lease(
        &mut client,
        &abandoned,
        "INSERT INTO fault_rows VALUES (2, 0)",
        vec![],
    )
    .await;
    let mut work = Vec::new();
    for i in 0..2 {
        let mut client = client.clone();
        let id = lease(&mut client, "acme").await;
        work.push(tokio::spawn(async move {
            for n in 0..6 {
                sleep(Duration::from_millis(250)).await;
                let outcome = run(
                    &mut client,
                    ExecuteRequest {
                        connection_id: id.clone(),
                        sql: "SELECT $1::int8".into(),
                        params: vec![int(n)],
                        ..Default::default()
                    },
                )
                .await
                .map_err(|s| format!("worker {i} statement {n}: {s:?}"))?;
                if outcome.int() != n {
                    return Err(format!("worker {i}: wrong result {outcome:?}"));
                }
            }
            client
                .release_connection(ConnectionRelease { connection_id: id })
                .await
                .map_err(|s| format!("worker {i} release: {s:?}"))?;
            Ok(())
        }));
    }
    for i in 0..4 {
        let mut client = client.clone();
        work.push(tokio::spawn(async move {
            let outcome = run(
                &mut client,
                ExecuteRequest {
                    tenant_id: "acme".into(),
                    sql: "SELECT $1::int8 FROM pg_sleep(1)".into(),
                    params: vec![int(i)],
                    ..Default::default()
                },
            )
            .await
            .map_err(|s| format!("long statement {i}: {s:?}"))?;
            match outcome.rows.first().map(|r| r[0].kind.clone()) {
                Some(Some(V::Int64(n))) if n == i => Ok(()),
                _ => Err(format!("long statement {i}: {outcome:?}")),
            }
        }));
    }
    let running = eventually(Duration::from_secs(5), || async {
        db.backends(&acme.dbname)
            .await
            .iter()
            .filter(|b| b.state == "active" && b.query.contains("pg_sleep(1)"))
            .count()
            == 4
    })
    .await;
    f.check(running, "the long statements did not start");

    let term_at = load.now();
    let signalled = Instant::now();
    pooler.signal("TERM");
    let not_ready = eventually(Duration::from_secs(1), || async {
        !matches!(pooler.http_get("/readyz").await, Ok((200, _)))
    })
    .await;
    let not_ready_after = signalled.elapsed();
    let code = pooler.wait_exit(Duration::from_secs(15)).await;
    let exited_after = signalled.elapsed();
    let mut in_flight_errors = Vec::new();
    for task in work {
        if let Err(e) = task.await.unwrap() {
            in_flight_errors.push(e);
        }
    }
    let report = load.stop().await;
    let after = report.started_between(term_at, Duration::MAX);
    f.observe(format!(
        "not ready {} after SIGTERM; exit code {code:?} after {}; 4 long statements and 2 working leases: {} failed; load after SIGTERM: {}",
        ms(not_ready_after),
        ms(exited_after),
        in_flight_errors.len(),
        after.summary()
    ));
    f.check(not_ready, "/readyz stayed 200 after SIGTERM");
    f.check(code == Some(0), format!("exit code {code:?}"));
    f.check(
        exited_after <= Duration::from_secs(4),
        format!("exited after {exited_after:?}"),
    );
    f.check(in_flight_errors.is_empty(), format!("{in_flight_errors:?}"));
    let in_flight = report.in_flight();
    f.check(
        in_flight.is_empty() && report.wrong().is_empty() && report.hung().is_empty(),
        format!("in-flight failures: {}", report.examples(&in_flight)),
    );
    // Refused by the draining pooler, or by tonic once the pooler is gone.
    let unexpected: Vec<&Op> = report
        .failed_except(&[Code::Unavailable])
        .into_iter()
        .filter(|op| !is_transport_error(op))
        .collect();
    f.check(unexpected.is_empty(), report.examples(&unexpected));
    let draining = report
        .filter(|op| matches!(&op.result, OpResult::Refused(_, m) if m.contains("shutting down")));
    f.check(
        !draining.is_empty(),
        "no call was told the pooler is shutting down",
    );
    let rolled_back = db
        .admin(&acme.dbname)
        .await
        .query_one("SELECT count(*) FROM fault_rows WHERE id = 2", &[])
        .await
        .unwrap()
        .get::<_, i64>(0)
        == 0;
    f.check(rolled_back, "the abandoned lease's insert was committed");
    let gone = eventually(Duration::from_secs(3), || async {
        db.pooler_backends(&acme.dbname).await == 0
    })
    .await;
    f.check(gone, "server connections left after exit");
    f.observe("abandoned insert rolled back; 0 server connections left");
    f.pass();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_a_saturated_pool_fails_no_lease_granted_while_draining() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut f = Finding::new(
        "F6b",
        "Pooler SIGTERM under load on a saturated pool (4 connections for 32 clients: callers wait inside GetConnection), no lease left open",
        "every lease granted is usable until released (zero failed in-flight statements); new work refused with UNAVAILABLE; exit 0 well before the drain deadline (10 s)",
    );
    let db = Db::start().await;
    let acme = db.tenant("acme").await;
    let mut pooler = Pooler::start(
        PoolerSetup::new(&[(
            &acme,
            "pool: { maxConnections: 4, minConnections: 4, acquireTimeout: 2s }",
        )])
        .arg("--drain-timeout")
        .arg("10s"),
    )
    .await;
    let mut spec = LoadSpec::steady(&["acme"]);
    spec.think = Duration::ZERO;
    let load = Load::start(&pooler, spec).await;
    sleep(Duration::from_secs(1)).await;
    let term_at = load.now();
    let signalled = Instant::now();
    pooler.signal("TERM");
    let code = pooler.wait_exit(Duration::from_secs(15)).await;
    let exited_after = signalled.elapsed();
    sleep(Duration::from_millis(200)).await;
    let report = load.stop().await;
    let after = report.started_between(term_at, Duration::MAX);
    f.observe(format!(
        "exit code {code:?} after {}; load after SIGTERM: {}",
        ms(exited_after),
        after.summary()
    ));
    f.check(code == Some(0), format!("exit code {code:?}"));
    f.check(
        exited_after <= Duration::from_secs(5),
        format!("exited after {exited_after:?}"),
    );
    let in_flight = report.in_flight();
    f.check(
        in_flight.is_empty() && report.wrong().is_empty() && report.hung().is_empty(),
        format!("in-flight failures: {}", report.examples(&in_flight)),
    );
    let unexpected: Vec<&Op> = report
        .failed_except(&[Code::Unavailable])
        .into_iter()
        .filter(|op| !is_transport_error(op))
        .collect();
    f.check(unexpected.is_empty(), report.examples(&unexpected));
    f.pass();
}

/// An error tonic makes up on the client side when the connection to the
/// pooler breaks (no status from the pooler).
fn is_transport_error(op: &Op) -> bool {
    match &op.result {
        OpResult::Refused(code, m) | OpResult::InFlight(Some(code), m) => {
            matches!(
                code,
                Code::Unknown | Code::Cancelled | Code::Unavailable | Code::Internal
            ) && (m.contains("transport error")
                || m.contains("h2 protocol error")
                || m.contains("operation was canceled"))
        }
        _ => false,
    }
}

/// The pooler's TCP connections to `pg_port` and how many have keepalive on (from `ss`).
fn keepalive_sockets(pooler_pid: u32, pg_port: u16) -> (usize, usize, String) {
    let out = std::process::Command::new("ss")
        .args([
            "-tnpoH",
            "state",
            "established",
            "dport",
            &format!("= :{pg_port}"),
        ])
        .output()
        .expect("ss (iproute2) is needed to read socket options");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mine: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&format!("pid={pooler_pid},")))
        .collect();
    let timer = mine
        .iter()
        .find_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("timer:(keepalive"))
        })
        .unwrap_or_default()
        .to_owned();
    (
        mine.len(),
        mine.iter()
            .filter(|l| l.contains("timer:(keepalive"))
            .count(),
        timer,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_leaves_no_server_connection_behind_and_a_restart_serves_again() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut f = Finding::new(
        "F7",
        "Pooler SIGKILL under load while holding a row lock in an open transaction and running pg_sleep(60); restart on the same ports",
        "no server connection left: idle ones at once (the kernel closes the sockets, backends read EOF), the running query within the server's client_connection_check_interval (1 s here); lock free; the restarted pooler serves <= 5 s",
    );
    let db = Db::start().await;
    let acme = db.tenant("acme").await;
    rows_table(&db, &acme).await;
    db.exec(
        "postgres",
        "ALTER SYSTEM SET client_connection_check_interval = '1s'",
    )
    .await;
    db.exec("postgres", "SELECT pg_reload_conf()").await;
    let setup = || PoolerSetup::new(&[(&acme, "pool: { maxConnections: 10, minConnections: 4 }")]);
    let mut pooler = Pooler::start(setup()).await;
    let load = Load::start(&pooler, LoadSpec::steady(&["acme"])).await;
    sleep(Duration::from_secs(1)).await;

    // Sampled until settled: a socket being opened has no options set yet.
    let mut seen = (0, 0, String::new());
    let all_keepalive = eventually(Duration::from_secs(3), || {
        seen = keepalive_sockets(pooler.pid(), db.pg.port());
        let (sockets, with_keepalive) = (seen.0, seen.1);
        async move { sockets > 0 && with_keepalive == sockets }
    })
    .await;
    let (sockets, with_keepalive, timer) = seen;
    f.observe(format!(
        "pooler sets TCP keepalive (idle 30 s, interval 10 s, 3 probes) on its server sockets: {with_keepalive}/{sockets} sockets have it ({timer})"
    ));
    f.check(
        all_keepalive,
        format!("{with_keepalive} of {sockets} server sockets have keepalive"),
    );
    let mut client = pooler.client().await;
    let locker = lease(&mut client, "acme").await;
    on_lease(&mut client, &locker, "BEGIN", vec![]).await;
    on_lease(
        &mut client,
        &locker,
        "SELECT v FROM fault_rows WHERE id = 1 FOR UPDATE",
        vec![],
    )
    .await;
    let sleeper = lease(&mut client, "acme").await;
    let sleeping = {
        let mut client = client.clone();
        let id = sleeper.clone();
        tokio::spawn(
            async move { run(&mut client, support_execute(&id, "SELECT pg_sleep(60)")).await },
        )
    };
    let sleeper_pid = loop {
        let found = db
            .backends(&acme.dbname)
            .await
            .into_iter()
            .find(|b| b.state == "active" && b.query.contains("pg_sleep(60)"));
        if let Some(b) = found {
            break b.pid;
        }
        sleep(Duration::from_millis(50)).await;
    };
    let before = db.backends(&acme.dbname).await.len();

    pooler.signal("KILL");
    let killed = Instant::now();
    let killed_at = load.now();
    pooler.wait_exit(Duration::from_secs(5)).await;
    let idle_gone = eventually(Duration::from_secs(5), || async {
        db.backends(&acme.dbname)
            .await
            .iter()
            .all(|b| b.pid == sleeper_pid)
    })
    .await;
    let idle_gone_after = killed.elapsed();
    let all_gone = eventually(Duration::from_secs(5), || async {
        db.pooler_backends(&acme.dbname).await == 0
    })
    .await;
    let all_gone_after = killed.elapsed();
    f.observe(format!(
        "{before} server connections at the kill: idle and idle-in-transaction gone {} after, the running query's {} after",
        ms(idle_gone_after),
        ms(all_gone_after)
    ));
    f.check(idle_gone, "idle backends of the killed pooler remain");
    f.check(all_gone, "the running query's backend remains");
    let admin = db.admin(&acme.dbname).await;
    let locked = admin
        .batch_execute("SET lock_timeout = '1s'; BEGIN; SELECT v FROM fault_rows WHERE id = 1 FOR UPDATE; ROLLBACK")
        .await;
    f.check(locked.is_ok(), format!("row lock still held: {locked:?}"));
    let _ = sleeping.await;

    pooler.restart(setup()).await;
    let restarted_at = load.now();
    sleep(Duration::from_secs(3)).await;
    let report = load.stop().await;
    let down = report.started_between(killed_at, restarted_at);
    let healthy = report.healthy_again_after(restarted_at);
    f.observe(format!(
        "restarted {} after the kill; load while down {}; healthy {} after the restart",
        ms(restarted_at - killed_at),
        down.summary(),
        healthy.map_or("never".into(), ms)
    ));
    // While no pooler listens, tonic reports its own transport errors.
    let unexpected: Vec<&Op> = report
        .failed_other_than_connection_loss()
        .into_iter()
        .filter(|op| !(is_transport_error(op) && op.start < restarted_at))
        .collect();
    f.check(
        unexpected.is_empty() && report.hung().is_empty() && report.wrong().is_empty(),
        report.examples(&unexpected),
    );
    f.check(
        healthy.is_some_and(|d| d <= Duration::from_secs(5)),
        format!("{healthy:?}"),
    );
    let mut client = pooler.client().await;
    let whole = assert_pool_whole(&mut client, &db, &acme, 10).await;
    f.check(whole.is_ok(), format!("{whole:?}"));
    f.observe(whole.unwrap());
    f.pass();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_holds_back_only_its_own_stream() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut f = Finding::new(
        "F8",
        "A client reads a 100 MB result at 5 messages/s for 4 s while 32 clients run on its tenant and another",
        "pooler RSS grows < 32 MiB; PostgreSQL waits on the pooler (ClientWrite); other clients see no error and their p99 stays within 2x of before",
    );
    let db = Db::start().await;
    let bulk = db.tenant("bulk").await;
    let calm = db.tenant("calm").await;
    let pooler = Pooler::start(PoolerSetup::new(&[
        (&bulk, "pool: { maxConnections: 6, minConnections: 6 }"),
        (&calm, "pool: { maxConnections: 8, minConnections: 8 }"),
    ]))
    .await;
    let load = Load::start(&pooler, LoadSpec::steady(&["calm", "bulk"])).await;
    sleep(Duration::from_secs(4)).await;
    let slow_from = load.now();
    let before = pooler.rss_kib();
    let mut reader = pooler.client().await;
    let mut stream = reader
        .execute(ExecuteRequest {
            tenant_id: "bulk".into(),
            sql: "SELECT g, repeat(md5(g::text), 30) FROM generate_series(1, 100000) g".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (mut peak, mut messages, mut client_write) = (before, 0, false);
    let reading = Instant::now();
    while reading.elapsed() < Duration::from_secs(4) {
        stream
            .message()
            .await
            .unwrap()
            .expect("the stream ended early");
        messages += 1;
        peak = peak.max(pooler.rss_kib());
        if !client_write {
            client_write = db
                .backends(&bulk.dbname)
                .await
                .iter()
                .any(|b| b.query.contains("generate_series") && b.wait_event == "ClientWrite");
        }
        sleep(Duration::from_millis(200)).await;
    }
    let slow_to = load.now();
    drop(stream);
    sleep(Duration::from_secs(1)).await;
    let report = load.stop().await;

    let growth = peak.saturating_sub(before) as f64 / 1024.0;
    let calm_ops = |from, to| LoadReport {
        ops: report
            .started_between(from, to)
            .ops
            .into_iter()
            .filter(|op| op.tenant == "calm")
            .collect(),
    };
    let base = calm_ops(Duration::from_secs(1), slow_from).percentile(0.99, None);
    let during = calm_ops(slow_from, slow_to).percentile(0.99, None);
    f.observe(format!(
        "read {messages} messages in 4 s; pooler RSS +{growth:.1} MiB; PostgreSQL in ClientWrite: {client_write}; calm p99 {} before, {} during; load {}",
        ms(base),
        ms(during),
        report.summary()
    ));
    f.check(growth < 32.0, format!("RSS grew {growth:.1} MiB"));
    f.check(client_write, "PostgreSQL never waited on the pooler");
    f.check(
        report.failed().is_empty(),
        format!("load disturbed: {}", report.examples(&report.failed())),
    );
    f.check(
        during <= base * 2,
        format!("calm p99 {during:?} > 2 x {base:?}"),
    );
    let mut client = pooler.client().await;
    let whole = assert_pool_whole(&mut client, &db, &bulk, 6).await;
    f.check(whole.is_ok(), format!("after the reader left: {whole:?}"));
    f.pass();
}

const HAMMER_CLIENTS: usize = 128;
const HAMMER_BACKOFF_MS: u64 = 250;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hammered_tenant_does_not_slow_other_tenants() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut f = Finding::new(
        "F9",
        "Tenant hot (4 connections, 16 waiters) hammered by 128 clients of another process running 20 ms statements, refused ones retrying after 250 ms; 32 clients on tenant calm",
        "hot's wait queue full and its surplus refused fast with RESOURCE_EXHAUSTED; calm has no errors and its p99 stays within 2x of its p99 before",
    );
    let db = Db::start().await;
    let hot = db.tenant("hot").await;
    let calm = db.tenant("calm").await;
    let pooler = Pooler::start(PoolerSetup::new(&[
        (
            &hot,
            "pool: { maxConnections: 4, minConnections: 4, maxWaiting: 16, acquireTimeout: 1s }",
        ),
        // Enough connections that calm's own clients do not queue.
        (&calm, "pool: { maxConnections: 32, minConnections: 32 }"),
    ]))
    .await;
    let phase = if soak() {
        Duration::from_secs(30)
    } else {
        Duration::from_millis(2500)
    };
    let load = Load::start(&pooler, LoadSpec::steady(&["calm"])).await;
    sleep(Duration::from_secs(1)).await;
    let mut client = pooler.client().await;
    // Unloaded and hammered phases alternate twice, so whatever else the
    // machine does falls on both sides of the comparison.
    let (mut base_windows, mut hammer_windows) = (Vec::new(), Vec::new());
    let (mut ok, mut exhausted, mut other, mut slowest_refusal) = (0, 0, 0, 0);
    let mut max_waiting = 0;
    for _ in 0..2 {
        let base_from = load.now();
        sleep(phase).await;
        base_windows.push((base_from, load.now()));
        let (mut hammer, mut lines) = client_process(
            &pooler,
            "hammer",
            &[
                ("TERESA_FAULT_TENANT", "hot".into()),
                ("TERESA_FAULT_CLIENTS", HAMMER_CLIENTS.to_string()),
                ("TERESA_FAULT_BACKOFF_MS", HAMMER_BACKOFF_MS.to_string()),
            ],
        );
        expect_line(&mut lines, "COUNTS").await;
        let hammer_from = load.now();
        let watching = Instant::now();
        while watching.elapsed() < phase {
            max_waiting = max_waiting.max(stats(&mut client, "hot").await.waiting_clients);
            sleep(Duration::from_millis(100)).await;
        }
        hammer_windows.push((hammer_from, load.now()));
        let mut counts = Vec::new();
        while let Ok(line) = lines.try_recv() {
            if let Some(rest) = line.strip_prefix("COUNTS") {
                counts = rest
                    .split_whitespace()
                    .filter_map(|n| n.parse::<u64>().ok())
                    .collect();
            }
        }
        hammer.start_kill().unwrap();
        hammer.wait().await.unwrap();
        if let [o, e, x, slowest] = counts[..] {
            (ok, exhausted, other) = (ok + o, exhausted + e, other + x);
            slowest_refusal = slowest_refusal.max(slowest);
        }
    }
    let report = load.stop().await;

    let during_windows = |windows: &[(Duration, Duration)]| LoadReport {
        ops: windows
            .iter()
            .flat_map(|(from, to)| report.started_between(*from, *to).ops)
            .collect(),
    };
    let base = during_windows(&base_windows);
    let during = during_windows(&hammer_windows);
    let (p99_base, p99_during) = (base.percentile(0.99, None), during.percentile(0.99, None));
    let counts = format!("{ok} ok, {exhausted} refused, {other} other");
    f.observe(format!(
        "hot: {ok} ok, {exhausted} RESOURCE_EXHAUSTED ({}/s, slowest {slowest_refusal} ms, acquire timeout 1 s), {other} other, up to {max_waiting} waiting; calm p50 {} / p99 {} unloaded, p50 {} / p99 {} hammered ({} and {} ops, 2 x 2.5 s each)",
        (exhausted as f64 / (2.0 * phase.as_secs_f64())) as u64,
        ms(base.percentile(0.5, None)),
        ms(p99_base),
        ms(during.percentile(0.5, None)),
        ms(p99_during),
        base.ops.len(),
        during.ops.len(),
    ));
    f.check(exhausted > 0 && other == 0, format!("hot: {counts}"));
    f.check(
        max_waiting == 16,
        format!("hot's wait queue peaked at {max_waiting}"),
    );
    f.check(
        report.failed().is_empty(),
        format!("calm disturbed: {}", report.examples(&report.failed())),
    );
    f.check(
        p99_during <= p99_base * 2,
        format!("calm p99 {p99_during:?} > 2 x {p99_base:?}"),
    );
    f.pass();
}
