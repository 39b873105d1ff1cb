//! End-to-end scenarios against a real Kubernetes API server: the CRD, the
//! chart's RBAC, the operator as the chart's ServiceAccount, real poolers on
//! loopback (local fleet mode) and a real PostgreSQL. Each asserts what a
//! platform team sees (`kubectl get tp`, conditions, Events), what the poolers
//! report (`admin status`), and that a client can lease and run SQL.
//!
//! Run: `TERESA_E2E_KUBECONFIG=... cargo test -p teresa-e2e -- --include-ignored --nocapture`
//! (the timing lines start with `e2e-timing`). Scenarios take the cluster one
//! at a time.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use serde_json::json;
use teresa_e2e::fleet::FleetOptions;
use teresa_e2e::observe::spec;
use teresa_e2e::operator::{OperatorOptions, OperatorReplica};
use teresa_e2e::scenario::{CONVERGE, Scenario};
use teresa_e2e::{READY, eventually};

async fn one_operator(name: &'static str) -> Scenario {
    Scenario::start(name, FleetOptions::default(), 1, OperatorOptions::default()).await
}

fn serves(id: &str) -> impl Fn(&[String]) -> bool + '_ {
    move |ids| ids.iter().any(|t| t == id)
}

fn lacks(id: &str) -> impl Fn(&[String]) -> bool + '_ {
    move |ids| !ids.iter().any(|t| t == id)
}

/// The holder of the scenario's leader-election Lease.
async fn lease_holder(s: &Scenario) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(s.cluster.client.clone(), &s.chart.namespace);
    let name = teresa_e2e::fleet::chart_flag(
        &s.chart.operator_container().args.unwrap_or_default(),
        "--lease-name",
    )
    .unwrap_or_else(|| "teresa-operator".into());
    leases
        .get_opt(&name)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Kubernetes API server: TERESA_E2E_KUBECONFIG=... cargo test -p teresa-e2e -- --include-ignored"]
async fn a_created_tenant_pool_is_served_by_every_pod() {
    let s = one_operator("create").await;
    let tenant = s.database_for(&s.apps, "orders").await;
    let started = Instant::now();
    s.apps
        .apply_ok("orders", spec(&s.db, &tenant, "orders-db", 5))
        .await;
    let pushed = s
        .on_every_pod("every pod serves orders", serves("orders"))
        .await;
    s.timing("apply to every pod serving (push latency)", pushed);
    let view = s.ready(&s.apps, "orders").await;
    s.timing("apply to Ready", started.elapsed());

    let row = s.apps.row("orders").await.expect("kubectl get tp lists it");
    assert_eq!(row["Tenant"], "orders");
    assert_eq!(row["Max"], "5");
    assert!(view.is("CredentialsResolved"), "{}", view.summary());
    assert!(view.is("ConfigApplied"), "{}", view.summary());
    let events = s.apps.events("orders").await;
    assert!(
        events
            .iter()
            .any(|e| e.reason == "ConfigApplied" && e.type_ == "Normal"),
        "a ConfigApplied Event: {events:?}"
    );
    assert!(
        events.iter().all(|e| e.type_ == "Normal"),
        "no warnings: {events:?}"
    );
    for pod in 0..s.fleet.len() {
        let status = s.fleet.admin_status(pod).await;
        let orders = status
            .tenants
            .iter()
            .find(|t| t.tenant_id == "orders")
            .expect("listed");
        assert_eq!(orders.max_connections, 5, "pod {pod}");
        assert!(orders.database_reachable, "pod {pod} reaches the database");
        assert!(status.ready, "pod {pod} is ready");
    }
    s.clients_reach("orders", "db_orders/orders").await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Kubernetes API server: TERESA_E2E_KUBECONFIG=... cargo test -p teresa-e2e -- --include-ignored"]
async fn max_connections_change_applies_live_without_breaking_a_held_lease() {
    let s = one_operator("resize").await;
    let tenant = s.database_for(&s.apps, "orders").await;
    s.apps
        .apply_ok("orders", spec(&s.db, &tenant, "orders-db", 3))
        .await;
    s.ready(&s.apps, "orders").await;
    let mut client = s.fleet.lease_client(0).await;
    let held = client.lease("orders").await.expect("lease");

    let started = Instant::now();
    s.apps
        .patch_spec("orders", json!({"pool": {"maxConnections": 7}}))
        .await;
    eventually(CONVERGE, "every pod runs maxConnections 7", || async {
        for pod in 0..s.fleet.len() {
            let status = s.fleet.admin_status(pod).await;
            let max = status
                .tenants
                .iter()
                .find(|t| t.tenant_id == "orders")
                .map(|t| t.max_connections);
            if max != Some(7) {
                return Err(format!("pod {pod}: {max:?}"));
            }
        }
        Ok(())
    })
    .await;
    s.timing("maxConnections change to every pod", started.elapsed());
    s.ready(&s.apps, "orders").await;
    assert_eq!(s.apps.row("orders").await.expect("row")["Max"], "7");
    let reached = client
        .query_on_lease(&held, "SELECT current_database()")
        .await
        .expect("the held lease still works after a live resize");
    assert_eq!(reached, "db_orders");
    assert!(client.release(&held).await.expect("release"));
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Kubernetes API server: TERESA_E2E_KUBECONFIG=... cargo test -p teresa-e2e -- --include-ignored"]
async fn a_rotated_password_is_used_for_new_server_connections() {
    let s = one_operator("rotate").await;
    let mut tenant = s.database_for(&s.apps, "orders").await;
    s.apps
        .apply_ok("orders", spec(&s.db, &tenant, "orders-db", 3))
        .await;
    let before = s.ready(&s.apps, "orders").await.config_version();

    s.db.rotate_password(&mut tenant).await;
    let started = Instant::now();
    s.apps.apply_credentials("orders-db", &tenant).await;
    eventually(
        CONVERGE,
        "a new configuration version after the rotation",
        || async {
            let view = s.apps.get("orders").await.ok_or("gone")?;
            (view.config_version() != before && view.is(READY))
                .then_some(())
                .ok_or_else(|| view.summary())
        },
    )
    .await;
    s.timing(
        "Secret update to Ready with the new version",
        started.elapsed(),
    );
    // Old server connections keep their session; new ones must log in with
    // the new password, so close them all and lease again.
    s.db.terminate_backends("db_orders").await;
    eventually(
        CONVERGE,
        "every pod leases with the new password",
        || async {
            for pod in 0..s.fleet.len() {
                let mut client = s.fleet.lease_client(pod).await;
                client
                    .lease_and_identify("orders")
                    .await
                    .map_err(|e| format!("pod {pod}: {e}"))?;
            }
            Ok(())
        },
    )
    .await;
    let events = s.apps.events("orders").await;
    assert!(
        events.iter().all(|e| e.type_ == "Normal"),
        "no warnings: {events:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Kubernetes API server: TERESA_E2E_KUBECONFIG=... cargo test -p teresa-e2e -- --include-ignored"]
async fn two_tenant_pools_with_one_tenant_id_the_older_wins_and_the_other_is_not_synced() {
    let s = one_operator("conflict").await;
    let first = s.database_for(&s.apps, "first").await;
    let second = s.database_for(&s.apps, "second").await;
    let mut winner = spec(&s.db, &first, "first-db", 3);
    winner["tenantId"] = json!("orders");
    s.apps.apply_ok("first", winner).await;
    s.ready(&s.apps, "first").await;
    let mut loser = spec(&s.db, &second, "second-db", 3);
    loser["tenantId"] = json!("orders");
    s.apps.apply_ok("second", loser).await;

    let view = eventually(
        CONVERGE,
        "the younger TenantPool reports the conflict",
        || async {
            let view = s.apps.get("second").await.ok_or("gone")?;
            let ready = view.condition(READY).ok_or("no Ready")?;
            (ready.status == "False" && ready.reason == "TenantIdConflict")
                .then_some(view.clone())
                .ok_or_else(|| view.summary())
        },
    )
    .await;
    let pods = s.fleet.len();
    assert_eq!(
        view.synced(),
        format!("0/{pods}"),
        "the loser is on no pod: {}",
        view.summary()
    );
    let row = s.apps.row("second").await.expect("row");
    assert_eq!(row["Ready"], "False");
    let events = s.apps.events("second").await;
    assert!(
        events
            .iter()
            .any(|e| e.reason == "TenantIdConflict" && e.type_ == "Warning"),
        "{events:?}"
    );
    s.ready(&s.apps, "first").await;
    s.clients_reach("orders", "db_first/first").await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Kubernetes API server: TERESA_E2E_KUBECONFIG=... cargo test -p teresa-e2e -- --include-ignored"]
async fn deleting_a_tenant_pool_with_a_held_lease_drains_then_revokes_it() {
    let s = one_operator("delete").await;
    let tenant = s.database_for(&s.apps, "orders").await;
    s.apps
        .apply_ok("orders", spec(&s.db, &tenant, "orders-db", 3))
        .await;
    s.ready(&s.apps, "orders").await;
    let mut client = s.fleet.lease_client(0).await;
    let held = client.lease("orders").await.expect("lease");

    let started = Instant::now();
    s.apps.delete("orders").await;
    // Pod 1 holds no lease: it drops the tenant as soon as the removal arrives.
    eventually(CONVERGE, "pod 1 drops orders", || async {
        let ids = s.fleet.tenant_ids(1).await;
        (!ids.iter().any(|t| t == "orders"))
            .then_some(())
            .ok_or_else(|| format!("{ids:?}"))
    })
    .await;
    s.timing(
        "delete to removal on a pod without leases",
        started.elapsed(),
    );
    let mut other = s.fleet.lease_client(1).await;
    let refused = other
        .lease("orders")
        .await
        .expect_err("no new lease of a removed tenant");
    assert!(
        matches!(
            refused.code(),
            tonic::Code::NotFound | tonic::Code::Unavailable
        ),
        "{refused:?}"
    );
    // Pod 0 drains (the poolers' --drain-timeout, 5 s here): the held lease
    // may finish its work...
    client
        .query_on_lease(&held, "SELECT current_database()")
        .await
        .expect("a held lease keeps working while its tenant drains");
    // ...then it is revoked.
    let revoked = eventually(
        CONVERGE,
        "the held lease is revoked after the drain",
        || {
            let (mut client, held) = (client.clone(), held.clone());
            async move {
                match client.query_on_lease(&held, "SELECT 1").await {
                    Err(status) => Ok(status),
                    Ok(_) => Err("still works".to_string()),
                }
            }
        },
    )
    .await;
    s.timing("delete to held lease revoked", started.elapsed());
    assert!(
        matches!(
            revoked.code(),
            tonic::Code::FailedPrecondition | tonic::Code::NotFound
        ),
        "a revoked lease fails cleanly: {revoked:?}"
    );
    s.on_every_pod("no pod serves orders", lacks("orders"))
        .await;
    s.timing("delete to removed from every pod", started.elapsed());
    eventually(CONVERGE, "the TenantPool is gone", || async {
        s.apps
            .get("orders")
            .await
            .map_or(Ok(()), |v| Err(v.summary()))
    })
    .await;
    s.timing("delete to TenantPool gone", started.elapsed());
    let events = s.apps.events("orders").await;
    assert!(
        events.iter().any(|e| e.reason == "TenantRemoved"),
        "{events:?}"
    );
    assert_eq!(
        s.db.backends("db_orders").await,
        0,
        "the poolers closed the tenant's server connections"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Kubernetes API server: TERESA_E2E_KUBECONFIG=... cargo test -p teresa-e2e -- --include-ignored"]
async fn deletion_waits_for_an_unreachable_pod_only_as_long_as_the_deletion_timeout() {
    const TIMEOUT: u64 = 10;
    let s = Scenario::start(
        "unreachable-deletion",
        FleetOptions::default(),
        1,
        OperatorOptions {
            args: vec![("--deletion-timeout-seconds", TIMEOUT.to_string())],
        },
    )
    .await;
    let tenant = s.database_for(&s.apps, "orders").await;
    s.apps
        .apply_ok("orders", spec(&s.db, &tenant, "orders-db", 3))
        .await;
    s.ready(&s.apps, "orders").await;
    s.fleet.partition(1);

    let started = Instant::now();
    s.apps.delete("orders").await;
    let view = eventually(
        CONVERGE,
        "the deletion's conditions are written",
        || async {
            let view = s
                .apps
                .get("orders")
                .await
                .ok_or("gone before any condition")?;
            let ready = view.condition(READY).ok_or("no Ready")?;
            (ready.status == "False")
                .then_some(view.clone())
                .ok_or_else(|| view.summary())
        },
    )
    .await;
    assert!(
        view.synced().starts_with("1/") || view.synced().starts_with("0/"),
        "{}",
        view.summary()
    );
    eventually(
        Duration::from_secs(TIMEOUT + 20),
        "the TenantPool goes after the deletion timeout",
        || async {
            s.apps
                .get("orders")
                .await
                .map_or(Ok(()), |v| Err(v.summary()))
        },
    )
    .await;
    let gone = started.elapsed();
    s.timing("delete to gone with an unreachable pod", gone);
    assert!(
        gone >= Duration::from_secs(TIMEOUT - 1),
        "it waited for the pod: {gone:?}"
    );
    // The operator retries about every 2 s, so it lets go soon after the timeout.
    assert!(
        gone <= Duration::from_secs(TIMEOUT + 8),
        "bounded wait, retried promptly: {gone:?}"
    );
    let events = s.apps.events("orders").await;
    let warning = events
        .iter()
        .find(|e| e.reason == "RemovalUnconfirmed")
        .unwrap_or_else(|| panic!("a RemovalUnconfirmed Event: {events:?}"));
    assert_eq!(warning.type_, "Warning");
    assert!(
        warning.note.contains(&s.fleet.slot(1).name),
        "names the pod: {}",
        warning.note
    );

    s.fleet.heal(1);
    let healed = Instant::now();
    eventually(
        CONVERGE,
        "the healed pod drops the deleted tenant",
        || async {
            let ids = s.fleet.tenant_ids(1).await;
            (!ids.iter().any(|t| t == "orders"))
                .then_some(())
                .ok_or_else(|| format!("{ids:?}"))
        },
    )
    .await;
    s.timing("heal to the deleted tenant dropped", healed.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Kubernetes API server: TERESA_E2E_KUBECONFIG=... cargo test -p teresa-e2e -- --include-ignored"]
async fn a_new_pod_and_a_restarted_pod_get_the_configuration() {
    let mut s = one_operator("pods").await;
    let tenant = s.database_for(&s.apps, "orders").await;
    s.apps
        .apply_ok("orders", spec(&s.db, &tenant, "orders-db", 3))
        .await;
    s.ready(&s.apps, "orders").await;

    let started = Instant::now();
    let new = s.fleet.add_pod().await;
    eventually(CONVERGE, "the new pod serves orders", || async {
        let ids = s.fleet.tenant_ids(new).await;
        ids.iter()
            .any(|t| t == "orders")
            .then_some(())
            .ok_or_else(|| format!("{ids:?}"))
    })
    .await;
    s.timing("new pod to serving", started.elapsed());
    s.ready(&s.apps, "orders").await;

    s.apps
        .patch_spec("orders", json!({"pool": {"maxConnections": 4}}))
        .await;
    s.ready(&s.apps, "orders").await;
    let started = Instant::now();
    s.fleet.restart(0).await;
    eventually(
        CONVERGE,
        "the restarted pod serves the current configuration",
        || async {
            let status = s
                .fleet
                .admin(0)
                .await
                .get_status(teresa_proto::admin::GetStatusRequest {})
                .await;
            let status = status.map_err(|e| e.to_string())?.into_inner();
            let max = status
                .tenants
                .iter()
                .find(|t| t.tenant_id == "orders")
                .map(|t| t.max_connections);
            (max == Some(4))
                .then_some(())
                .ok_or_else(|| format!("{max:?}"))
        },
    )
    .await;
    s.timing("restarted pod to serving", started.elapsed());
    s.ready(&s.apps, "orders").await;
    s.clients_reach("orders", "db_orders/orders").await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Kubernetes API server: TERESA_E2E_KUBECONFIG=... cargo test -p teresa-e2e -- --include-ignored"]
async fn an_operator_restarted_after_changes_converges_without_status_flapping() {
    let mut s = one_operator("operator-restart").await;
    let mut dbs = Vec::new();
    for name in ["steady", "resized", "deleted", "added"] {
        dbs.push(s.database_for(&s.apps, name).await);
    }
    for (name, db) in ["steady", "resized", "deleted"].iter().zip(&dbs) {
        s.apps
            .apply_ok(name, spec(&s.db, db, &format!("{name}-db"), 3))
            .await;
    }
    for name in ["steady", "resized", "deleted"] {
        s.ready(&s.apps, name).await;
    }
    let steady_ready = s
        .apps
        .get("steady")
        .await
        .expect("steady")
        .condition(READY)
        .expect("Ready");
    let event_count =
        |events: Vec<teresa_e2e::observe::EventView>| events.iter().map(|e| e.count).sum::<i32>();
    let steady_events = event_count(s.apps.events("steady").await);

    s.operators[0].kill().await;
    s.apps
        .patch_spec("resized", json!({"pool": {"maxConnections": 6}}))
        .await;
    s.apps.delete("deleted").await;
    s.apps
        .apply_ok("added", spec(&s.db, &dbs[3], "added-db", 3))
        .await;

    let started = Instant::now();
    s.operators[0].restart().await;
    // Watch `steady` while the operator converges: it must never leave Ready.
    let watch_until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < watch_until {
        let view = s.apps.get("steady").await.expect("steady");
        assert_eq!(
            view.condition(READY).as_ref(),
            Some(&steady_ready),
            "no status flap on restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.ready(&s.apps, "added").await;
    s.ready(&s.apps, "resized").await;
    eventually(
        CONVERGE,
        "the TenantPool deleted while the operator was down is gone",
        || async {
            s.apps
                .get("deleted")
                .await
                .map_or(Ok(()), |v| Err(v.summary()))
        },
    )
    .await;
    s.timing("operator restart to converged", started.elapsed());
    s.on_every_pod("pods hold exactly the live tenants", |ids| {
        ids == ["added", "resized", "steady"]
    })
    .await;
    assert_eq!(
        s.fleet
            .admin_status(0)
            .await
            .tenants
            .iter()
            .find(|t| t.tenant_id == "resized")
            .map(|t| t.max_connections),
        Some(6)
    );
    assert_eq!(
        event_count(s.apps.events("steady").await),
        steady_events,
        "no new Event for an unchanged TenantPool"
    );
}

/// Two replicas; returns the scenario and the index of the leader.
async fn two_replicas(name: &'static str) -> (Scenario, usize) {
    let s = Scenario::start(name, FleetOptions::default(), 2, OperatorOptions::default()).await;
    let tenant = s.database_for(&s.apps, "orders").await;
    s.apps
        .apply_ok("orders", spec(&s.db, &tenant, "orders-db", 3))
        .await;
    s.ready(&s.apps, "orders").await;
    let holder = eventually(CONVERGE, "a replica holds the Lease", || async {
        lease_holder(&s)
            .await
            .ok_or_else(|| "no holder".to_string())
    })
    .await;
    let leader = s
        .operators
        .iter()
        .position(|o| o.name == holder)
        .expect("the holder is a replica");
    (s, leader)
}

/// Changes maxConnections and waits until every pod runs it: what only a
/// reconciling leader can bring about. Returns how long it took.
async fn change_reaches_pods(s: &Scenario, max: i32) -> Duration {
    let started = Instant::now();
    s.apps
        .patch_spec("orders", json!({"pool": {"maxConnections": max}}))
        .await;
    eventually(
        Duration::from_secs(60),
        &format!("every pod runs maxConnections {max}"),
        || async {
            for pod in 0..s.fleet.len() {
                let status = s.fleet.admin_status(pod).await;
                let got = status
                    .tenants
                    .iter()
                    .find(|t| t.tenant_id == "orders")
                    .map(|t| t.max_connections);
                if got != Some(max) {
                    return Err(format!("pod {pod}: {got:?}"));
                }
            }
            Ok(())
        },
    )
    .await;
    started.elapsed()
}

async fn new_leader(s: &Scenario, old: &OperatorReplica, limit: Duration) -> Duration {
    let started = Instant::now();
    let old = old.name.clone();
    eventually(limit, "the standby takes the Lease", || async {
        match lease_holder(s).await {
            Some(holder) if holder != old => Ok(()),
            other => Err(format!("holder {other:?}")),
        }
    })
    .await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Kubernetes API server: TERESA_E2E_KUBECONFIG=... cargo test -p teresa-e2e -- --include-ignored"]
async fn the_standby_takes_over_when_the_leader_is_killed() {
    let (mut s, leader) = two_replicas("failover-kill").await;
    let started = Instant::now();
    s.operators[leader].kill().await;
    let old = &s.operators[leader];
    let took = new_leader(&s, old, Duration::from_secs(40)).await;
    s.timing("kill -9 to new Lease holder", took);
    let applied = change_reaches_pods(&s, 6).await;
    s.timing("kill -9 to a change on every pod", started.elapsed());
    s.timing("change to every pod under the new leader", applied);
    s.ready(&s.apps, "orders").await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Kubernetes API server: TERESA_E2E_KUBECONFIG=... cargo test -p teresa-e2e -- --include-ignored"]
async fn sigterm_releases_the_lease_so_the_standby_takes_over_at_once() {
    let (mut s, leader) = two_replicas("failover-term").await;
    let started = Instant::now();
    let code = s.operators[leader].terminate(Duration::from_secs(20)).await;
    assert_eq!(
        code,
        Some(0),
        "SIGTERM is a clean exit:\n{}",
        s.operators[leader].log()
    );
    let old = &s.operators[leader];
    let took = new_leader(&s, old, Duration::from_secs(20)).await;
    s.timing("SIGTERM to new Lease holder", started.elapsed());
    assert!(
        took <= Duration::from_secs(5),
        "SIGTERM released the Lease: standby took over after {took:?}"
    );
    let applied = change_reaches_pods(&s, 6).await;
    s.timing("change to every pod under the new leader", applied);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Kubernetes API server: TERESA_E2E_KUBECONFIG=... cargo test -p teresa-e2e -- --include-ignored"]
async fn a_leader_that_loses_api_access_stops_leading_and_the_standby_takes_over() {
    let (mut s, leader) = two_replicas("failover-revoked").await;
    let started = Instant::now();
    s.operators[leader].revoke_api_access().await;
    // It cannot renew; before the Lease (15 s) expires it must stop acting:
    // exit, or report itself not leader.
    let stepped_down = loop {
        let replica = &mut s.operators[leader];
        if replica.has_exited() || replica.leader_gauge().await == Some(0) {
            break Instant::now();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the leader cut off from the API still says it leads after 20 s (its Lease lasts 15 s):\n{}",
            replica.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    s.timing(
        "API access revoked to the leader stepping down",
        stepped_down - started,
    );
    let old = &s.operators[leader];
    new_leader(&s, old, Duration::from_secs(40)).await;
    s.timing("API access revoked to new Lease holder", started.elapsed());
    let applied = change_reaches_pods(&s, 6).await;
    s.timing("change to every pod under the new leader", applied);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Kubernetes API server: TERESA_E2E_KUBECONFIG=... cargo test -p teresa-e2e -- --include-ignored"]
async fn a_tenant_pool_the_pooler_would_reject_stays_its_own_problem() {
    let mut s = one_operator("invalid").await;
    let good = s.database_for(&s.apps, "good").await;
    let bad = s.database_for(&s.apps, "bad").await;
    s.apps
        .apply_ok("good", spec(&s.db, &good, "good-db", 3))
        .await;
    s.ready(&s.apps, "good").await;

    let mut zero_lifetime = spec(&s.db, &bad, "bad-db", 3);
    zero_lifetime["pool"]["maxLifetime"] = json!("0s");
    let mut middle_star = spec(&s.db, &bad, "bad-db", 3);
    middle_star["access"] = json!({"allowedClients": ["spiffe://x/*/y*"]});
    let long_name = "l".repeat(150);
    let poisons = [
        ("zero-lifetime".to_string(), zero_lifetime),
        ("middle-star".to_string(), middle_star),
        (long_name, spec(&s.db, &bad, "bad-db", 3)),
    ];
    for (name, poison) in &poisons {
        match s.apps.apply(name, poison.clone()).await {
            // Refused at admission: the best outcome.
            Err(kube::Error::Api(e)) if e.code == 422 => continue,
            Err(e) => panic!("apply {name}: {e}"),
            Ok(()) => {}
        }
        let view = eventually(CONVERGE, &format!("{name} is InvalidSpec"), || async {
            let view = s.apps.get(name).await.ok_or("gone")?;
            let ready = view.condition(READY).ok_or("no Ready")?;
            (ready.status == "False" && ready.reason == "InvalidSpec")
                .then_some(view.clone())
                .ok_or_else(|| view.summary())
        })
        .await;
        assert!(
            view.synced().starts_with("0/"),
            "{name} is on no pod: {}",
            view.summary()
        );
    }
    // The good tenant is unaffected: still Ready, its changes still pushed.
    let applied = change_reaches_pods_named(&s, "good", 5).await;
    s.timing("good tenant's change beside invalid ones", applied);
    let view = s.ready(&s.apps, "good").await;
    assert_eq!(
        view.condition("ConfigApplied")
            .expect("ConfigApplied")
            .status,
        "True",
        "{}",
        view.summary()
    );
    s.on_every_pod("poolers hold only the good tenant", |ids| ids == ["good"])
        .await;
    // A pooler restarting from the stored snapshot still serves.
    s.fleet.restart(0).await;
    eventually(CONVERGE, "the restarted pooler serves good", || async {
        let mut client = s.fleet.lease_client(0).await;
        client
            .lease_and_identify("good")
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    s.clients_reach("good", "db_good/good").await;
}

async fn change_reaches_pods_named(s: &Scenario, name: &str, max: i32) -> Duration {
    let started = Instant::now();
    s.apps
        .patch_spec(name, json!({"pool": {"maxConnections": max}}))
        .await;
    eventually(
        CONVERGE,
        &format!("every pod runs {name} with maxConnections {max}"),
        || async {
            for pod in 0..s.fleet.len() {
                let status = s.fleet.admin_status(pod).await;
                let got = status
                    .tenants
                    .iter()
                    .find(|t| t.tenant_id == name)
                    .map(|t| t.max_connections);
                if got != Some(max) {
                    return Err(format!("pod {pod}: {got:?}"));
                }
            }
            Ok(())
        },
    )
    .await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Kubernetes API server: TERESA_E2E_KUBECONFIG=... cargo test -p teresa-e2e -- --include-ignored"]
async fn with_zero_tenant_pools_the_poolers_become_ready() {
    let s = one_operator("empty").await;
    let started = Instant::now();
    eventually(CONVERGE, "every pooler's /readyz answers 200", || async {
        for pod in 0..s.fleet.len() {
            let status = s.fleet.readyz(pod).await;
            if status != Some(200) {
                return Err(format!("pod {pod}: {status:?}"));
            }
        }
        Ok(())
    })
    .await;
    s.timing("operator start to an empty fleet ready", started.elapsed());
    for pod in 0..s.fleet.len() {
        assert!(s.fleet.admin_status(pod).await.tenants.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Kubernetes API server: TERESA_E2E_KUBECONFIG=... cargo test -p teresa-e2e -- --include-ignored"]
async fn deleting_a_tenant_pool_never_hands_its_clients_to_another_namespace() {
    let s = one_operator("cross-namespace").await;
    let shop = s.namespace("shop").await;
    let billing = s.namespace("billing").await;
    let shop_db = s.database_for(&shop, "shop").await;
    let billing_db = s.database_for(&billing, "billing").await;
    let mut shop_spec = spec(&s.db, &shop_db, "shop-db", 3);
    shop_spec["tenantId"] = json!("orders");
    shop.apply_ok("orders", shop_spec).await;
    s.ready(&shop, "orders").await;
    let mut billing_spec = spec(&s.db, &billing_db, "billing-db", 3);
    billing_spec["tenantId"] = json!("orders");
    billing.apply_ok("orders", billing_spec).await;
    eventually(
        CONVERGE,
        "billing/orders is not served while shop/orders holds the id",
        || async {
            let view = billing.get("orders").await.ok_or("gone")?;
            (!view.is(READY))
                .then_some(())
                .ok_or_else(|| view.summary())
        },
    )
    .await;
    let mut shop_client = s.fleet.lease_client(0).await;
    assert_eq!(
        shop_client
            .lease_and_identify("orders")
            .await
            .expect("shop's client"),
        "db_shop/shop"
    );

    shop.delete("orders").await;
    let started = Instant::now();
    eventually(CONVERGE, "shop/orders is gone", || async {
        shop.get("orders")
            .await
            .map_or(Ok(()), |v| Err(v.summary()))
    })
    .await;
    // Whatever billing/orders does now, shop's client calling "orders" must
    // never reach billing's database.
    while started.elapsed() < Duration::from_secs(10) {
        for pod in 0..s.fleet.len() {
            let mut client = s.fleet.lease_client(pod).await;
            if let Ok(reached) = client.lease_and_identify("orders").await {
                assert_ne!(
                    reached, "db_billing/billing",
                    "pod {pod}: a deleted TenantPool's clients got another namespace's database"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let events = shop.events("orders").await;
    assert!(
        events.iter().any(|e| e.reason == "TenantRemoved"),
        "{events:?}"
    );
}

/// The scale run: `TERESA_E2E_SCALE` TenantPools (default 50), each with its
/// own Secret and `minConnections: 0`, on `TERESA_E2E_SCALE_PODS` pods (default 3).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Kubernetes API server: TERESA_E2E_KUBECONFIG=... cargo test -p teresa-e2e -- --include-ignored"]
async fn scale_many_tenant_pools_converge() {
    let count: usize = std::env::var("TERESA_E2E_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let pods: usize = std::env::var("TERESA_E2E_SCALE_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let s = Scenario::start(
        "scale",
        FleetOptions {
            pods,
            ..FleetOptions::default()
        },
        1,
        OperatorOptions::default(),
    )
    .await;
    let tenant = s.db.tenant("shared").await;
    let started = Instant::now();
    for i in 0..count {
        let name = format!("t{i:05}");
        s.apps
            .apply_credentials(&format!("{name}-db"), &tenant)
            .await;
        let mut body = spec(&s.db, &tenant, &format!("{name}-db"), 2);
        body["pool"]["minConnections"] = json!(0);
        s.apps.apply_ok(&name, body).await;
    }
    s.timing(
        &format!("apply of {count} TenantPools and Secrets"),
        started.elapsed(),
    );
    let limit = Duration::from_secs(60 + count as u64 / 10);
    eventually(limit, &format!("all {count} TenantPools Ready"), || async {
        let rows = s.apps.table().await;
        let ready = rows
            .iter()
            .filter(|r| r.get("Ready").map(String::as_str) == Some("True"))
            .count();
        (ready == count)
            .then_some(())
            .ok_or_else(|| format!("{ready}/{count} Ready"))
    })
    .await;
    s.timing(
        &format!("apply start to all {count} Ready on {pods} pods"),
        started.elapsed(),
    );
    let one = Instant::now();
    s.apps
        .patch_spec("t00000", json!({"pool": {"maxConnections": 3}}))
        .await;
    eventually(CONVERGE, "one TenantPool's change on every pod", || async {
        for pod in 0..s.fleet.len() {
            let got = s
                .fleet
                .admin_status(pod)
                .await
                .tenants
                .iter()
                .find(|t| t.tenant_id == "t00000")
                .map(|t| t.max_connections);
            if got != Some(3) {
                return Err(format!("pod {pod}: {got:?}"));
            }
        }
        Ok(())
    })
    .await;
    s.timing(
        &format!("one change to every pod at {count} TenantPools"),
        one.elapsed(),
    );
    println!(
        "e2e-figure scenario=scale operator_rss_kib={}",
        s.operators[0].rss_kib().unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Kubernetes API server: TERESA_E2E_KUBECONFIG=... cargo test -p teresa-e2e -- --include-ignored"]
async fn a_ca_secret_verifies_the_database_at_once_and_a_rotated_ca_is_picked_up() {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    use teresa_pooler::certs::DevCa;

    let s = one_operator("ca-secret").await;
    let tenant = s.database_for(&s.apps, "orders").await;
    let ca_secret = |pem: &str| Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("orders-ca".into()),
            namespace: Some(s.apps.namespace.clone()),
            ..Default::default()
        },
        data: Some([("ca.crt".to_string(), ByteString(pem.as_bytes().to_vec()))].into()),
        ..Default::default()
    };
    let first_ca = DevCa::generate().expect("CA");
    s.db.serve_tls(&first_ca).await;
    s.apps.apply_secret(ca_secret(first_ca.cert_pem())).await;
    let mut body = spec(&s.db, &tenant, "orders-db", 3);
    body["database"]["sslMode"] = json!("verify-ca");
    body["database"]["caSecret"] = json!({"name": "orders-ca"});
    let started = Instant::now();
    s.apps.apply_ok("orders", body).await;
    s.ready(&s.apps, "orders").await;
    s.timing("apply with caSecret to Ready", started.elapsed());
    let events = s.apps.events("orders").await;
    assert!(
        events.iter().all(|e| e.type_ == "Normal"),
        "a caSecret never makes the push fail while a kubelet writes files: {events:?}"
    );
    for pod in 0..s.fleet.len() {
        let mut client = s.fleet.lease_client(pod).await;
        let lease = client
            .lease("orders")
            .await
            .expect("lease over verified TLS");
        let ssl = client
            .query_on_lease(
                &lease,
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            )
            .await
            .expect("SQL");
        assert_eq!(ssl, "true", "pod {pod}: the server connection uses TLS");
        client.release(&lease).await.expect("release");
    }

    // Rotation: the server moves to a certificate of a new CA, the Secret
    // follows; new server connections verify against the new CA.
    let second_ca = DevCa::generate().expect("CA");
    s.db.serve_tls(&second_ca).await;
    let rotated = Instant::now();
    s.apps.apply_secret(ca_secret(second_ca.cert_pem())).await;
    s.db.terminate_backends("db_orders").await;
    eventually(
        CONVERGE,
        "every pod connects through the rotated CA",
        || async {
            for pod in 0..s.fleet.len() {
                let mut client = s.fleet.lease_client(pod).await;
                client
                    .lease_and_identify("orders")
                    .await
                    .map_err(|e| format!("pod {pod}: {e}"))?;
            }
            Ok(())
        },
    )
    .await;
    s.timing("CA rotation to every pod connecting", rotated.elapsed());
}
