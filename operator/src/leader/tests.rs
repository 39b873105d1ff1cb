//! Leader election against a mocked API server (tower-test): each test answers
//! the elector's Lease requests by hand and checks what it does and when.

use std::time::Duration;

use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use tokio::time::Instant;
use tower_test::mock::{self, Handle, SendResponse};

use super::*;

const LEASE_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/teresa/leases/teresa-operator";
const LEASES_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/teresa/leases";

type ApiHandle = Handle<Request<Body>, Response<Body>>;

/// One request of the elector, not answered yet.
struct Call {
    method: Method,
    path: String,
    body: Value,
    respond: SendResponse<Response<Body>>,
}

impl Call {
    fn answer(self, status: u16, body: Value) {
        self.respond.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
        );
    }

    /// Answers a write with what was written, at `resource_version`.
    fn accept(self, resource_version: &str) {
        let mut body = self.body.clone();
        body["metadata"]["resourceVersion"] = json!(resource_version);
        self.answer(200, body);
    }
}

async fn next_call(api: &mut ApiHandle) -> Call {
    let (request, respond) = tokio::time::timeout(Duration::from_secs(5), api.next_request())
        .await
        .expect("the elector made a request")
        .expect("service open");
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let bytes = request.into_body().collect_bytes().await.unwrap();
    Call {
        method,
        path,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        respond,
    }
}

fn failure(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
           "reason": reason, "code": code, "message": reason})
}

fn lease(holder: Option<&str>, resource_version: &str, seconds: i32, transitions: i32) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "teresa-operator", "namespace": "teresa", "resourceVersion": resource_version},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": seconds,
                 "leaseTransitions": transitions, "renewTime": "2026-01-01T00:00:00.000000Z"}
    })
}

fn settings(identity: &str, lease: u64, deadline_ms: u64, retry_ms: u64) -> ElectionSettings {
    ElectionSettings {
        lease_duration: Duration::from_secs(lease),
        renew_deadline: Duration::from_millis(deadline_ms),
        retry_period: Duration::from_millis(retry_ms),
        ..ElectionSettings::new("teresa", "teresa-operator", identity)
    }
}

struct Elected {
    leadership: Leadership,
    api: ApiHandle,
    metrics: Metrics,
    readiness: Readiness,
}

fn start(settings: ElectionSettings) -> Elected {
    let (service, api) = mock::pair::<Request<Body>, Response<Body>>();
    let metrics = Metrics::new().unwrap();
    let readiness = Readiness::default();
    let leadership = Leadership::start(
        Client::new(service, "default"),
        settings,
        metrics.clone(),
        readiness.clone(),
    );
    Elected {
        leadership,
        api,
        metrics,
        readiness,
    }
}

/// Lets the elector create the missing Lease; returns when the create arrived.
async fn acquire_new_lease(e: &mut Elected) -> Instant {
    let get = next_call(&mut e.api).await;
    assert_eq!(
        (get.method.clone(), get.path.as_str()),
        (Method::GET, LEASE_PATH)
    );
    get.answer(404, failure(404, "NotFound"));
    let create = next_call(&mut e.api).await;
    let written = Instant::now();
    assert_eq!(
        (create.method.clone(), create.path.as_str()),
        (Method::POST, LEASES_PATH)
    );
    assert_eq!(create.body["spec"]["holderIdentity"], "op-a");
    assert_eq!(create.body["spec"]["leaseTransitions"], 0);
    create.accept("1");
    tokio::time::timeout(Duration::from_secs(5), e.leadership.acquired())
        .await
        .expect("acquired in time")
        .unwrap();
    written
}

#[tokio::test]
async fn a_leader_whose_renewals_are_refused_stops_before_the_lease_expires() {
    let mut e = start(settings("op-a", 3, 1500, 200));
    let written = acquire_new_lease(&mut e).await;
    assert!(e.leadership.is_leader());
    assert!(e.metrics.render().contains("teresa_operator_leader 1"));

    // Credentials revoked: every renewal is refused from now on.
    let mut api = e.api;
    let refuse = tokio::spawn(async move {
        loop {
            next_call(&mut api)
                .await
                .answer(403, failure(403, "Forbidden"));
        }
    });
    tokio::time::timeout(Duration::from_secs(5), e.leadership.lost())
        .await
        .expect("stepped down");
    let led_for = written.elapsed();
    refuse.abort();

    assert!(
        led_for < Duration::from_secs(3),
        "still leading {led_for:?} after the last renewal: the Lease (3 s) had expired"
    );
    assert!(
        led_for >= Duration::from_millis(1000),
        "stepped down after {led_for:?}, long before the renew deadline"
    );
    let text = e.metrics.render();
    assert!(text.contains("teresa_operator_leader 0"), "{text}");
    assert!(
        text.contains("teresa_operator_leader_transitions_total{event=\"lost\"} 1"),
        "{text}"
    );
    let why = e
        .readiness
        .problems()
        .expect("not ready while the Lease is unreachable");
    assert!(why.contains("Forbidden"), "{why}");
}

#[tokio::test]
async fn a_leader_whose_renewal_hangs_stops_at_its_deadline() {
    let mut e = start(settings("op-a", 3, 1500, 200));
    let written = acquire_new_lease(&mut e).await;
    // A network partition: the renewal's GET never gets an answer.
    let hanging = next_call(&mut e.api).await;
    assert_eq!(hanging.method, Method::GET);
    tokio::time::timeout(Duration::from_secs(5), e.leadership.lost())
        .await
        .expect("stepped down");
    let led_for = written.elapsed();
    assert!(
        led_for < Duration::from_secs(3),
        "still leading {led_for:?} after the last renewal"
    );
    drop(hanging);
}

#[tokio::test]
async fn shutdown_releases_the_lease_for_a_standby() {
    // Long retry: no renewal happens during the test.
    let mut e = start(settings("op-a", 30, 20_000, 10_000));
    acquire_new_lease(&mut e).await;
    let metrics = e.metrics.clone();
    let release = tokio::spawn(e.leadership.release());
    let put = next_call(&mut e.api).await;
    assert_eq!(
        (put.method.clone(), put.path.as_str()),
        (Method::PUT, LEASE_PATH)
    );
    assert_eq!(put.body["metadata"]["resourceVersion"], "1");
    assert!(
        put.body["spec"].get("holderIdentity").is_none(),
        "{}",
        put.body
    );
    assert_eq!(put.body["spec"]["leaseDurationSeconds"], 1);
    put.accept("2");
    tokio::time::timeout(Duration::from_secs(5), release)
        .await
        .expect("release finished")
        .unwrap();
    let text = metrics.render();
    assert!(text.contains("teresa_operator_leader 0"), "{text}");
    assert!(
        text.contains("teresa_operator_leader_transitions_total{event=\"released\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_standby_takes_over_at_its_next_poll_after_the_leader_released() {
    let mut e = start(settings("op-b", 15, 10_000, 300));
    let get = next_call(&mut e.api).await;
    get.answer(200, lease(Some("op-a"), "5", 15, 0));
    // The leader releases right after that poll.
    let released = Instant::now();
    let get = next_call(&mut e.api).await;
    assert_eq!(get.method, Method::GET, "a held Lease is not written");
    get.answer(200, lease(None, "6", 1, 0));
    let put = next_call(&mut e.api).await;
    assert_eq!(
        (put.method.clone(), put.path.as_str()),
        (Method::PUT, LEASE_PATH)
    );
    assert_eq!(put.body["metadata"]["resourceVersion"], "6");
    assert_eq!(put.body["spec"]["holderIdentity"], "op-b");
    assert_eq!(put.body["spec"]["leaseDurationSeconds"], 15);
    assert_eq!(put.body["spec"]["leaseTransitions"], 1);
    put.accept("7");
    tokio::time::timeout(Duration::from_secs(5), e.leadership.acquired())
        .await
        .expect("acquired")
        .unwrap();
    let took = released.elapsed();
    assert!(
        took < Duration::from_millis(300) + Duration::from_secs(1),
        "took over {took:?} after the release, not at the next poll"
    );
}

#[tokio::test]
async fn a_standby_waits_out_a_held_lease_on_its_own_clock_and_loses_a_race() {
    let mut e = start(settings("op-b", 15, 10_000, 100));
    let mut first_seen = None;
    let put = loop {
        let call = next_call(&mut e.api).await;
        if call.method != Method::GET {
            break call;
        }
        // A Lease that op-a stopped renewing: the same record every time.
        call.answer(200, lease(Some("op-a"), "5", 1, 3));
        first_seen.get_or_insert_with(Instant::now);
    };
    let waited = first_seen.unwrap().elapsed();
    assert!(
        waited >= Duration::from_secs(1),
        "took a held Lease after {waited:?}, before its 1 s duration passed"
    );
    assert_eq!(put.method, Method::PUT);
    assert_eq!(put.body["spec"]["holderIdentity"], "op-b");
    assert_eq!(put.body["spec"]["leaseTransitions"], 4);
    // Another standby wrote first.
    put.answer(409, failure(409, "Conflict"));
    let next = next_call(&mut e.api).await;
    assert_eq!(next.method, Method::GET);
    assert!(!e.leadership.is_leader());
}

#[test]
fn production_timings_leave_a_margin_and_hand_over_within_two_seconds() {
    let s = ElectionSettings::new("ns", "lease", "me");
    assert!(s.renew_deadline + Duration::from_secs(5) <= s.lease_duration);
    assert!(s.retry_period <= Duration::from_secs(2));
}
