//! Reconcile scenarios against a mocked API server (tower-test): each test states
//! which requests the controller makes, in order, with method, path and body.

use http::{Method, Request, Response};
use kube::{
    client::Body,
    runtime::{reflector::store::Writer, watcher},
};
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};

use super::*;
use crate::{
    fixtures::*,
    push::{PodSync, TenantStats},
    status::{CONFIG_APPLIED, CREDENTIALS_RESOLVED, READY},
};

const SNAPSHOT_PATH: &str = "/api/v1/namespaces/teresa/secrets/teresa-pooler-config";
const TP_PATH: &str = "/apis/teresa.dev/v1alpha1/namespaces/shop/tenantpools/orders";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";

struct Harness {
    ctx: Arc<Context>,
    api: Handle<Request<Body>, Response<Body>>,
    fleet: watch::Sender<Arc<FleetSync>>,
    targets: watch::Receiver<Arc<PushTargets>>,
}

fn filled<K>(objects: Vec<K>) -> (Store<K>, Writer<K>)
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let (store, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for object in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(object));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    (store, writer)
}

fn harness(tenant_pools: Vec<TenantPool>, secrets: Vec<Secret>, pods: Vec<Pod>) -> Harness {
    let (service, api) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let (tenant_pools, _) = filled(tenant_pools);
    let (secrets, _) = filled(secrets);
    let (pods, _) = filled(pods);
    let (targets_tx, targets) = watch::channel(Arc::new(PushTargets::new()));
    let (fleet, fleet_rx) = watch::channel(Arc::new(FleetSync::new()));
    let ctx = Arc::new(Context {
        client: client.clone(),
        settings: Settings {
            pooler_namespace: "teresa".into(),
            snapshot_secret: "teresa-pooler-config".into(),
            snapshot_mount_path: "/etc/teresa/config".into(),
            deletion_timeout: Duration::from_secs(120),
            default_access: Default::default(),
        },
        tenant_pools,
        secrets,
        pods,
        targets: targets_tx,
        fleet: fleet_rx,
        reporter: Reporter {
            controller: FIELD_MANAGER.into(),
            instance: None,
        },
        metrics: Metrics::new().unwrap(),
        generation: Default::default(),
    });
    Harness {
        ctx,
        api,
        fleet,
        targets,
    }
}

/// One request the controller made.
struct Seen {
    method: Method,
    path: String,
    query: String,
    body: Value,
}

/// Takes the next request, answers it with `answer(body)`, and returns it.
async fn expect_request(
    api: &mut Handle<Request<Body>, Response<Body>>,
    answer: impl FnOnce(&Value) -> Value,
) -> Seen {
    let (request, respond) = tokio::time::timeout(Duration::from_secs(5), api.next_request())
        .await
        .expect("the controller made a request")
        .expect("service open");
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or_default().to_string();
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let reply = answer(&body);
    respond.send_response(
        Response::builder()
            .body(Body::from(serde_json::to_vec(&reply).unwrap()))
            .unwrap(),
    );
    Seen {
        method,
        path,
        query,
        body,
    }
}

fn finalized(mut tp: TenantPool) -> TenantPool {
    tp.metadata.finalizers = Some(vec![FINALIZER.into()]);
    tp
}

/// Every pod confirmed its target and reports its tenants, databases reachable.
fn synced(plan_pods: &PushTargets) -> FleetSync {
    plan_pods
        .values()
        .map(|p| {
            (
                p.name.clone(),
                PodSync {
                    uid: p.uid.clone(),
                    applied_version: Some(p.snapshot.version().to_string()),
                    tenants: p
                        .snapshot
                        .tenant_ids()
                        .into_iter()
                        .map(|id| {
                            (
                                id.to_string(),
                                TenantStats {
                                    database_reachable: true,
                                    ..TenantStats::default()
                                },
                            )
                        })
                        .collect(),
                    ..PodSync::default()
                },
            )
        })
        .collect()
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap()
}

fn decoded_snapshot(body: &Value) -> String {
    let encoded = body["data"]["pooler.yaml"]
        .as_str()
        .expect("pooler.yaml key");
    let bytes: ByteString = serde_json::from_value(json!(encoded)).unwrap();
    String::from_utf8(bytes.0).unwrap()
}

#[tokio::test]
async fn new_tenant_pool_first_gets_the_finalizer_and_nothing_else() {
    let tp = tenant_pool("shop", "orders", 0);
    let mut h = harness(vec![tp.clone()], vec![creds("shop", "pw", "1")], vec![]);
    let run = tokio::spawn(reconcile(Arc::new(tp.clone()), h.ctx.clone()));
    let seen = expect_request(&mut h.api, |_| {
        serde_json::to_value(finalized(tp.clone())).unwrap()
    })
    .await;
    assert_eq!(seen.method, Method::PATCH);
    assert_eq!(seen.path, TP_PATH);
    assert_eq!(
        seen.body,
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}
        ])
    );
    let action = run.await.unwrap().expect("reconcile succeeds");
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn serving_tenant_stores_snapshot_pushes_and_applies_ready_status_with_an_event() {
    let tp = finalized(tenant_pool("shop", "orders", 0));
    let mut h = harness(
        vec![tp.clone()],
        vec![creds("shop", "s3cret-pw", "1")],
        vec![pod("pooler-a", "10.0.0.1", &[])],
    );
    // The pusher already confirmed what the plan asks: pretend by computing it.
    let plan = h.ctx.plan(&tp);
    h.fleet.send_replace(Arc::new(synced(&plan.pods)));

    let run = tokio::spawn(reconcile(Arc::new(tp.clone()), h.ctx.clone()));

    let secret = expect_request(&mut h.api, |body| body.clone()).await;
    assert_eq!(secret.method, Method::PATCH);
    assert_eq!(secret.path, SNAPSHOT_PATH);
    assert!(
        secret.query.contains("fieldManager=teresa-operator")
            && secret.query.contains("force=true")
    );
    assert_eq!(secret.body["kind"], "Secret");
    assert_eq!(
        secret.body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "teresa-operator"
    );
    let yaml = decoded_snapshot(&secret.body);
    assert!(
        yaml.contains("id: orders") && yaml.contains("password: s3cret-pw"),
        "{yaml}"
    );

    let status_patch = expect_request(&mut h.api, |_| serde_json::to_value(&tp).unwrap()).await;
    assert_eq!(status_patch.method, Method::PATCH);
    assert_eq!(status_patch.path, format!("{TP_PATH}/status"));
    assert!(status_patch.query.contains("fieldManager=teresa-operator"));
    assert_eq!(status_patch.body["apiVersion"], "teresa.dev/v1alpha1");
    assert_eq!(status_patch.body["kind"], "TenantPool");
    let status = &status_patch.body["status"];
    assert_eq!(condition(status, READY)["status"], "True");
    assert_eq!(condition(status, CONFIG_APPLIED)["reason"], "Applied");
    assert_eq!(status["synced"], "1/1");
    assert_eq!(status["tenantId"], "orders");
    assert!(!status_patch.body.to_string().contains("s3cret-pw"));

    let event = expect_request(&mut h.api, |body| body.clone()).await;
    assert_eq!(
        (event.method, event.path.as_str()),
        (Method::POST, EVENTS_PATH)
    );
    assert_eq!(event.body["reason"], "ConfigApplied");
    assert_eq!(event.body["type"], "Normal");
    assert_eq!(event.body["regarding"]["name"], "orders");

    run.await.unwrap().expect("reconcile succeeds");
    let targets = h.targets.borrow_and_update().clone();
    assert_eq!(targets["pooler-a"].snapshot.tenant_ids(), ["orders"]);
}

#[tokio::test]
async fn missing_secret_reports_credentials_and_warns_without_pushing_the_tenant() {
    let tp = finalized(tenant_pool("shop", "orders", 0));
    let mut h = harness(
        vec![tp.clone()],
        vec![],
        vec![pod("pooler-a", "10.0.0.1", &[])],
    );
    let run = tokio::spawn(reconcile(Arc::new(tp.clone()), h.ctx.clone()));

    let secret = expect_request(&mut h.api, |body| body.clone()).await;
    assert_eq!(secret.path, SNAPSHOT_PATH);
    assert!(decoded_snapshot(&secret.body).contains("tenants: []"));

    let status_patch = expect_request(&mut h.api, |_| serde_json::to_value(&tp).unwrap()).await;
    let status = &status_patch.body["status"];
    assert_eq!(condition(status, CREDENTIALS_RESOLVED)["status"], "False");
    assert_eq!(
        condition(status, CREDENTIALS_RESOLVED)["reason"],
        "SecretNotFound"
    );
    assert_eq!(condition(status, READY)["reason"], "CredentialsUnresolved");

    let event = expect_request(&mut h.api, |body| body.clone()).await;
    assert_eq!(event.body["reason"], "CredentialsMissing");
    assert_eq!(event.body["type"], "Warning");

    let action = run.await.unwrap().expect("reconcile succeeds");
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    assert!(
        h.targets.borrow()["pooler-a"]
            .snapshot
            .tenant_ids()
            .is_empty()
    );
}

#[tokio::test]
async fn steady_state_makes_no_api_calls() {
    let mut tp = finalized(tenant_pool("shop", "orders", 0));
    let h0 = harness(
        vec![tp.clone()],
        vec![creds("shop", "pw", "1")],
        vec![pod("p", "10.0.0.1", &[])],
    );
    let plan = h0.ctx.plan(&tp);
    let fleet = synced(&plan.pods);
    tp.status = Some(status::compute(
        &tp,
        &plan.tenants[&TenantKey::of(&tp)],
        &plan,
        &fleet,
        Timestamp::now(),
    ));
    // The snapshot Secret in the store already holds the plan.
    let mut stored = Secret {
        metadata: ObjectMeta {
            name: Some("teresa-pooler-config".into()),
            namespace: Some("teresa".into()),
            ..ObjectMeta::default()
        },
        ..Secret::default()
    };
    stored.data = Some(BTreeMap::from([(
        SNAPSHOT_KEY.to_string(),
        ByteString(plan.stored.to_yaml().unwrap().into_bytes()),
    )]));
    let h = harness(
        vec![tp.clone()],
        vec![creds("shop", "pw", "1"), stored],
        vec![pod("p", "10.0.0.1", &[])],
    );
    h.fleet.send_replace(Arc::new(fleet));
    let action = tokio::time::timeout(
        Duration::from_secs(5),
        reconcile(Arc::new(tp), h.ctx.clone()),
    )
    .await
    .expect("no request was left unanswered")
    .expect("reconcile succeeds");
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
}

#[tokio::test]
async fn deletion_removes_the_tenant_everywhere_then_releases_the_finalizer() {
    let tp = deleting(tenant_pool("shop", "orders", 0), 0);
    let mut h = harness(
        vec![tp.clone()],
        vec![creds("shop", "pw", "1")],
        vec![pod("p", "10.0.0.1", &[])],
    );
    let plan = h.ctx.plan(&tp);
    assert!(plan.pods["p"].snapshot.tenant_ids().is_empty());
    h.fleet.send_replace(Arc::new(synced(&plan.pods)));
    let run = tokio::spawn(reconcile(Arc::new(tp.clone()), h.ctx.clone()));

    let secret = expect_request(&mut h.api, |body| body.clone()).await;
    assert_eq!(secret.path, SNAPSHOT_PATH);
    assert!(!decoded_snapshot(&secret.body).contains("orders"));

    let status_patch = expect_request(&mut h.api, |_| serde_json::to_value(&tp).unwrap()).await;
    assert_eq!(status_patch.path, format!("{TP_PATH}/status"));
    let ready = condition(&status_patch.body["status"], READY);
    assert_eq!(
        (&ready["status"], &ready["reason"]),
        (&json!("False"), &json!("Deleting"))
    );
    assert!(
        condition(&status_patch.body["status"], CONFIG_APPLIED)["message"]
            .as_str()
            .unwrap()
            .contains("1 confirmed")
    );

    let event = expect_request(&mut h.api, |body| body.clone()).await;
    assert_eq!(event.body["reason"], "TenantRemoved");

    let finalizer = expect_request(&mut h.api, |_| serde_json::to_value(&tp).unwrap()).await;
    assert_eq!(
        (finalizer.method, finalizer.path.as_str()),
        (Method::PATCH, TP_PATH)
    );
    assert_eq!(
        finalizer.body,
        json!([
            {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
            {"op": "remove", "path": "/metadata/finalizers/0"}
        ])
    );
    run.await.unwrap().expect("reconcile succeeds");
}

#[tokio::test]
async fn deletion_keeps_the_finalizer_while_pods_have_not_confirmed() {
    // Deleted just now: well within the deletion timeout.
    let mut tp = tenant_pool("shop", "orders", 0);
    tp.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        Timestamp::now(),
    ));
    tp.metadata.finalizers = Some(vec![FINALIZER.into()]);
    let mut h = harness(
        vec![tp.clone()],
        vec![creds("shop", "pw", "1")],
        vec![pod("p", "10.0.0.1", &[])],
    );
    let run = tokio::spawn(reconcile(Arc::new(tp.clone()), h.ctx.clone()));
    let secret = expect_request(&mut h.api, |body| body.clone()).await;
    assert_eq!(secret.path, SNAPSHOT_PATH);
    let status_patch = expect_request(&mut h.api, |_| serde_json::to_value(&tp).unwrap()).await;
    let applied = condition(&status_patch.body["status"], CONFIG_APPLIED);
    assert_eq!(applied["reason"], "Removing");
    assert!(applied["message"].as_str().unwrap().contains("0 confirmed"));
    let error = run.await.unwrap().expect_err("removal not confirmed yet");
    assert_eq!(error.metric_label(), "removal_pending");
    assert!(error.to_string().contains('p'));
    // The wait retries soon, through the finalizer's wrapping.
    assert_eq!(
        error_policy(Arc::new(tp), &error, h.ctx.clone()),
        Action::requeue(Duration::from_secs(2))
    );
}

#[tokio::test]
async fn deletion_gives_up_on_unreachable_pods_after_the_timeout_with_a_warning() {
    // Deleted long ago (fixtures' epoch is 2026-01-01).
    let tp = deleting(tenant_pool("shop", "orders", 0), 0);
    let mut h = harness(
        vec![tp.clone()],
        vec![creds("shop", "pw", "1")],
        vec![pod("p", "10.0.0.1", &[])],
    );
    let run = tokio::spawn(reconcile(Arc::new(tp.clone()), h.ctx.clone()));
    expect_request(&mut h.api, |body| body.clone()).await;
    let status_patch = expect_request(&mut h.api, |_| serde_json::to_value(&tp).unwrap()).await;
    assert_eq!(status_patch.path, format!("{TP_PATH}/status"));
    let event = expect_request(&mut h.api, |body| body.clone()).await;
    assert_eq!(event.body["reason"], "RemovalUnconfirmed");
    assert_eq!(event.body["type"], "Warning");
    assert!(event.body["note"].as_str().unwrap().contains('p'));
    let finalizer = expect_request(&mut h.api, |_| serde_json::to_value(&tp).unwrap()).await;
    assert_eq!(finalizer.path, TP_PATH);
    run.await.unwrap().expect("reconcile succeeds");
}

#[tokio::test]
async fn newer_tenant_pool_with_a_taken_id_gets_a_conflict_status_and_warning() {
    let older = finalized(with_id(tenant_pool("billing", "pay", 0), "orders"));
    let newer = finalized(tenant_pool("shop", "orders", 10));
    let mut h = harness(
        vec![older, newer.clone()],
        vec![creds("shop", "a", "1"), creds("billing", "b", "1")],
        vec![pod("p", "10.0.0.1", &[])],
    );
    let run = tokio::spawn(reconcile(Arc::new(newer.clone()), h.ctx.clone()));
    let secret = expect_request(&mut h.api, |body| body.clone()).await;
    let yaml = decoded_snapshot(&secret.body);
    assert!(
        yaml.contains("password: b") && !yaml.contains("password: a\n"),
        "{yaml}"
    );
    let status_patch = expect_request(&mut h.api, |_| serde_json::to_value(&newer).unwrap()).await;
    let ready = condition(&status_patch.body["status"], READY);
    assert_eq!(ready["reason"], "TenantIdConflict");
    assert!(ready["message"].as_str().unwrap().contains("billing/pay"));
    let event = expect_request(&mut h.api, |body| body.clone()).await;
    assert_eq!(event.body["reason"], "TenantIdConflict");
    run.await.unwrap().expect("reconcile succeeds");
}

#[tokio::test]
async fn reconciliations_are_counted_by_outcome() {
    let tp = tenant_pool("shop", "orders", 0);
    let mut h = harness(vec![tp.clone()], vec![], vec![]);
    let run = tokio::spawn(reconcile(Arc::new(tp.clone()), h.ctx.clone()));
    expect_request(&mut h.api, |_| {
        serde_json::to_value(finalized(tp.clone())).unwrap()
    })
    .await;
    run.await.unwrap().unwrap();
    let text = h.ctx.metrics.render();
    assert!(
        text.contains("teresa_operator_reconciliations_total{outcome=\"ok\"} 1"),
        "{text}"
    );
    assert!(text.contains("teresa_operator_reconcile_duration_seconds_count 1"));
}

/// A TenantPool whose status already says what `fleet` confirms, and a store
/// whose snapshot Secret already holds the plan: what a new leader finds.
fn settled(tp: TenantPool, secrets: Vec<Secret>, pods: Vec<Pod>) -> (TenantPool, Harness) {
    let mut tp = tp;
    let h0 = harness(vec![tp.clone()], secrets.clone(), pods.clone());
    let plan = h0.ctx.plan(&tp);
    tp.status = Some(status::compute(
        &tp,
        &plan.tenants[&TenantKey::of(&tp)],
        &plan,
        &synced(&plan.pods),
        Timestamp::now(),
    ));
    let stored = Secret {
        metadata: ObjectMeta {
            name: Some("teresa-pooler-config".into()),
            namespace: Some("teresa".into()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            SNAPSHOT_KEY.to_string(),
            ByteString(plan.stored.to_yaml().unwrap().into_bytes()),
        )])),
        ..Secret::default()
    };
    let mut secrets = secrets;
    secrets.push(stored);
    let h = harness(vec![tp.clone()], secrets, pods);
    (tp, h)
}

#[tokio::test]
async fn a_fresh_operator_does_not_flap_a_ready_tenant_before_the_pods_answered() {
    let (tp, h) = settled(
        finalized(tenant_pool("shop", "orders", 0)),
        vec![creds("shop", "pw", "1")],
        vec![pod("p", "10.0.0.1", &[])],
    );
    // The pusher of the new process has not heard from the pod yet: no status
    // write (which the mock would have to answer), no Event.
    let action = tokio::time::timeout(
        Duration::from_secs(5),
        reconcile(Arc::new(tp.clone()), h.ctx.clone()),
    )
    .await
    .expect("no request was made")
    .expect("reconcile succeeds");
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    // Then the pod answers with what it held all along: still nothing to write.
    let plan = h.ctx.plan(&tp);
    h.fleet.send_replace(Arc::new(synced(&plan.pods)));
    tokio::time::timeout(
        Duration::from_secs(5),
        reconcile(Arc::new(tp), h.ctx.clone()),
    )
    .await
    .expect("no request was made")
    .expect("reconcile succeeds");
}

#[tokio::test]
async fn the_conflict_loser_is_not_counted_as_synced() {
    let older = finalized(with_id(tenant_pool("billing", "pay", 0), "orders"));
    let newer = finalized(tenant_pool("shop", "orders", 10));
    let mut h = harness(
        vec![older, newer.clone()],
        vec![creds("shop", "a", "1"), creds("billing", "b", "1")],
        vec![pod("p", "10.0.0.1", &[])],
    );
    let plan = h.ctx.plan(&newer);
    h.fleet.send_replace(Arc::new(synced(&plan.pods)));
    let run = tokio::spawn(reconcile(Arc::new(newer.clone()), h.ctx.clone()));
    expect_request(&mut h.api, |body| body.clone()).await;
    let status_patch = expect_request(&mut h.api, |_| serde_json::to_value(&newer).unwrap()).await;
    assert_eq!(status_patch.body["status"]["synced"], "0/1");
    assert_eq!(status_patch.body["status"]["poolersSynced"], 0);
    expect_request(&mut h.api, |body| body.clone()).await;
    run.await.unwrap().expect("reconcile succeeds");
}

#[tokio::test]
async fn a_pod_unreachable_after_syncing_is_not_synced_and_named() {
    let (tp, mut h) = settled(
        finalized(tenant_pool("shop", "orders", 0)),
        vec![creds("shop", "pw", "1")],
        vec![pod("p", "10.0.0.1", &[])],
    );
    let plan = h.ctx.plan(&tp);
    let mut fleet = synced(&plan.pods);
    let p = fleet.get_mut("p").unwrap();
    p.last_error = Some("cannot connect to https://10.0.0.1:50053: connection refused".into());
    p.failures = 1;
    h.fleet.send_replace(Arc::new(fleet));
    let run = tokio::spawn(reconcile(Arc::new(tp.clone()), h.ctx.clone()));
    let status_patch = expect_request(&mut h.api, |_| serde_json::to_value(&tp).unwrap()).await;
    let status = &status_patch.body["status"];
    assert_eq!(status["synced"], "0/1");
    assert_eq!(condition(status, CONFIG_APPLIED)["reason"], "PushFailed");
    assert!(
        condition(status, CONFIG_APPLIED)["message"]
            .as_str()
            .unwrap()
            .contains("p: cannot connect")
    );
    assert_eq!(condition(status, READY)["status"], "False");
    let event = expect_request(&mut h.api, |body| body.clone()).await;
    assert_eq!(
        (event.body["reason"].as_str(), event.body["type"].as_str()),
        (Some("PushFailed"), Some("Warning"))
    );
    run.await.unwrap().expect("reconcile succeeds");
}

#[tokio::test]
async fn push_failed_clears_with_its_cause_and_names_nothing_stale() {
    let mut tp = finalized(tenant_pool("shop", "orders", 0));
    let secrets = vec![creds("shop", "pw", "1")];
    let pods = vec![pod("p", "10.0.0.1", &[])];
    let mut h = harness(vec![tp.clone()], secrets.clone(), pods.clone());
    let plan = h.ctx.plan(&tp);
    let failing = FleetSync::from([(
        "p".to_string(),
        PodSync {
            uid: "uid-p".into(),
            last_error: Some("pooler rejected the configuration: tenants[1] (poison): bad".into()),
            failures: 4,
            ..PodSync::default()
        },
    )]);
    tp.status = Some(status::compute(
        &tp,
        &plan.tenants[&TenantKey::of(&tp)],
        &plan,
        &failing,
        Timestamp::now(),
    ));
    // The poison is gone and the pod took the new configuration.
    h.fleet.send_replace(Arc::new(synced(&plan.pods)));
    let run = tokio::spawn(reconcile(Arc::new(tp.clone()), h.ctx.clone()));
    expect_request(&mut h.api, |body| body.clone()).await;
    let status_patch = expect_request(&mut h.api, |_| serde_json::to_value(&tp).unwrap()).await;
    let status = &status_patch.body["status"];
    assert_eq!(condition(status, CONFIG_APPLIED)["reason"], "Applied");
    assert_eq!(condition(status, READY)["status"], "True");
    assert!(!status.to_string().contains("poison"), "{status}");
    let event = expect_request(&mut h.api, |body| body.clone()).await;
    assert_eq!(event.body["reason"], "ConfigApplied");
    run.await.unwrap().expect("reconcile succeeds");
}

#[tokio::test]
async fn events_whose_text_changes_are_new_events_not_a_series() {
    let (tp, mut h) = settled(
        finalized(tenant_pool("shop", "orders", 0)),
        vec![creds("shop", "pw", "1")],
        vec![pod("p", "10.0.0.1", &[])],
    );
    let mut notes = Vec::new();
    for note in ["applied version aaaa", "applied version bbbb"] {
        let (ctx, tp) = (h.ctx.clone(), tp.clone());
        let notice = Notice {
            severity: Severity::Normal,
            reason: "ConfigApplied",
            action: "PushConfig",
            note: note.into(),
        };
        let publish = tokio::spawn(async move { ctx.publish(&tp, &notice).await });
        notes.push(expect_request(&mut h.api, |body| body.clone()).await);
        publish.await.unwrap();
    }
    assert_eq!(notes.len(), 2);
    for (seen, note) in notes
        .iter()
        .zip(["applied version aaaa", "applied version bbbb"])
    {
        assert_eq!(
            (seen.method.clone(), seen.path.as_str()),
            (Method::POST, EVENTS_PATH)
        );
        assert_eq!(seen.body["note"], note);
        assert!(seen.body["series"].is_null(), "{}", seen.body);
    }
}

#[tokio::test]
async fn an_empty_fleet_gets_an_empty_configuration_stored_and_pushed() {
    let mut h = harness(vec![], vec![], vec![pod("p", "10.0.0.1", &[])]);
    let crd = Arc::new(CrdPresence::new(Readiness::default()));
    let (_pods_changed, pods_changed_rx) = watch::channel(());
    let keeper = tokio::spawn(keep_empty_fleet(h.ctx.clone(), crd, pods_changed_rx));
    let secret = expect_request(&mut h.api, |body| body.clone()).await;
    assert_eq!(
        (secret.method, secret.path.as_str()),
        (Method::PATCH, SNAPSHOT_PATH)
    );
    assert!(decoded_snapshot(&secret.body).contains("tenants: []"));
    tokio::time::timeout(
        Duration::from_secs(5),
        h.targets.wait_for(|t| t.contains_key("p")),
    )
    .await
    .expect("the pod got a target")
    .unwrap();
    let targets = h.targets.borrow().clone();
    assert!(targets["p"].snapshot.tenant_ids().is_empty());
    assert!(!targets["p"].snapshot.version().is_empty());
    keeper.abort();
}

#[tokio::test]
async fn without_the_crd_the_empty_fleet_is_left_alone_and_not_ready() {
    let h = harness(vec![], vec![], vec![pod("p", "10.0.0.1", &[])]);
    let readiness = Readiness::default();
    let crd = Arc::new(CrdPresence::new(readiness.clone()));
    let missing = watcher::Error::InitialListFailed(kube::Error::Api(
        kube::core::Status::failure(
            "the server could not find the requested resource",
            "NotFound",
        )
        .with_code(404)
        .boxed(),
    ));
    crd.observe::<()>(Err(&missing));
    assert!(readiness.problems().unwrap().contains("CRD"));
    let (_pods_changed, pods_changed_rx) = watch::channel(());
    let keeper = tokio::spawn(keep_empty_fleet(
        h.ctx.clone(),
        crd.clone(),
        pods_changed_rx,
    ));
    let mut api = h.api;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), api.next_request())
            .await
            .is_err(),
        "no snapshot written without the CRD"
    );
    assert!(
        h.targets.borrow().is_empty(),
        "nothing pushed without the CRD"
    );
    keeper.abort();
    crd.observe(Ok(()));
    assert_eq!(readiness.problems(), None);
}
