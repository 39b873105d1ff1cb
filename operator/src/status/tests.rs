use std::collections::BTreeMap;

use super::*;
use crate::{
    desired::TenantKey,
    fixtures::*,
    push::{PodSync, TenantStats},
};

fn key(namespace: &str, name: &str) -> TenantKey {
    TenantKey {
        namespace: namespace.into(),
        name: name.into(),
    }
}

fn now() -> Timestamp {
    at(1000).0
}

/// Every pod in the plan confirmed its desired version and reports its
/// tenants, their databases reachable.
fn all_synced(plan: &FleetPlan) -> FleetSync {
    plan.pods
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

fn one_pod_plan(tp: &TenantPool) -> FleetPlan {
    plan_of(
        std::slice::from_ref(tp),
        &[creds("shop", "pw", "1")],
        &[pod("a", "10.0.0.1", &[])],
    )
}

fn condition<'a>(status: &'a TenantPoolStatus, type_: &str) -> &'a Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .expect(type_)
}

fn status_for(tp: &TenantPool, plan: &FleetPlan, fleet: &FleetSync) -> TenantPoolStatus {
    compute(tp, &plan.tenants[&TenantKey::of(tp)], plan, fleet, now())
}

#[test]
fn synced_tenant_is_ready_with_counts_and_version() {
    let tp = tenant_pool("shop", "orders", 0);
    let plan = plan_of(
        std::slice::from_ref(&tp),
        &[creds("shop", "pw", "1")],
        &[
            pod("a", "10.0.0.1", &[]),
            pod("b", "10.0.0.2", &[]),
            pod("c", "10.0.0.3", &[]),
        ],
    );
    let status = status_for(&tp, &plan, &all_synced(&plan));
    assert_eq!(condition(&status, READY).status, "True");
    assert_eq!(condition(&status, CREDENTIALS_RESOLVED).status, "True");
    assert_eq!(condition(&status, CONFIG_APPLIED).reason, "Applied");
    assert_eq!(condition(&status, DATABASE_REACHABLE).status, "True");
    assert_eq!(status.synced.as_deref(), Some("3/3"));
    assert_eq!((status.poolers_synced, status.poolers_selected), (3, 3));
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.tenant_id.as_deref(), Some("orders"));
    assert!(
        status
            .config_version
            .as_ref()
            .is_some_and(|v| v.len() == 16)
    );
}

#[test]
fn missing_secret_makes_credentials_unresolved_and_not_ready() {
    let tp = tenant_pool("shop", "orders", 0);
    let plan = plan_of(std::slice::from_ref(&tp), &[], &[pod("a", "10.0.0.1", &[])]);
    let status = status_for(&tp, &plan, &all_synced(&plan));
    let creds = condition(&status, CREDENTIALS_RESOLVED);
    assert_eq!(
        (creds.status.as_str(), creds.reason.as_str()),
        ("False", "SecretNotFound")
    );
    assert!(creds.message.contains("shop/db-creds"));
    let ready = condition(&status, READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "CredentialsUnresolved")
    );
    assert_eq!(condition(&status, CONFIG_APPLIED).reason, "NotPushed");
    assert_eq!(status.config_version, None);
}

#[test]
fn conflict_names_the_older_tenant_pool() {
    let older = with_id(tenant_pool("team-b", "pay", 0), "payments");
    let newer = with_id(tenant_pool("team-a", "pay", 9), "payments");
    let plan = plan_of(
        &[older, newer.clone()],
        &[creds("team-a", "a", "1"), creds("team-b", "b", "1")],
        &[pod("a", "10.0.0.1", &[])],
    );
    let status = status_for(&newer, &plan, &all_synced(&plan));
    let ready = condition(&status, READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "TenantIdConflict")
    );
    assert!(ready.message.contains("team-b/pay"), "{}", ready.message);
}

#[test]
fn no_pooler_pods_is_not_ready_with_an_actionable_reason() {
    let tp = tenant_pool("shop", "orders", 0);
    let plan = plan_of(std::slice::from_ref(&tp), &[creds("shop", "pw", "1")], &[]);
    let status = status_for(&tp, &plan, &FleetSync::new());
    assert_eq!(condition(&status, CONFIG_APPLIED).reason, "NoPoolerPods");
    assert_eq!(condition(&status, READY).reason, "NoPoolerPods");
    assert_eq!(status.synced.as_deref(), Some("0/0"));
}

#[test]
fn partially_synced_fleet_reports_pending_pods() {
    let tp = tenant_pool("shop", "orders", 0);
    let plan = plan_of(
        std::slice::from_ref(&tp),
        &[creds("shop", "pw", "1")],
        &[pod("a", "10.0.0.1", &[]), pod("b", "10.0.0.2", &[])],
    );
    let mut fleet = all_synced(&plan);
    fleet.remove("b");
    let status = status_for(&tp, &plan, &fleet);
    let applied = condition(&status, CONFIG_APPLIED);
    assert_eq!(
        (applied.status.as_str(), applied.reason.as_str()),
        ("False", "Pending")
    );
    assert!(applied.message.contains('b'));
    assert_eq!(status.synced.as_deref(), Some("1/2"));
}

#[test]
fn push_failure_is_reported_with_the_pod_and_error() {
    let tp = tenant_pool("shop", "orders", 0);
    let plan = plan_of(
        std::slice::from_ref(&tp),
        &[creds("shop", "pw", "1")],
        &[pod("a", "10.0.0.1", &[])],
    );
    let fleet = FleetSync::from([(
        "a".to_string(),
        PodSync {
            uid: "uid-a".into(),
            last_error: Some("cannot connect to https://10.0.0.1:50053: refused".into()),
            failures: 2,
            ..PodSync::default()
        },
    )]);
    let status = status_for(&tp, &plan, &fleet);
    let applied = condition(&status, CONFIG_APPLIED);
    assert_eq!(applied.reason, "PushFailed");
    assert!(
        applied.message.contains("a: cannot connect"),
        "{}",
        applied.message
    );
}

#[test]
fn a_pod_recreated_under_the_same_name_is_not_synced() {
    let tp = tenant_pool("shop", "orders", 0);
    let plan = plan_of(
        std::slice::from_ref(&tp),
        &[creds("shop", "pw", "1")],
        &[pod("a", "10.0.0.1", &[])],
    );
    let mut fleet = all_synced(&plan);
    fleet.get_mut("a").unwrap().uid = "old-uid".into();
    assert_eq!(status_for(&tp, &plan, &fleet).poolers_synced, 0);
}

#[test]
fn connections_sum_over_synced_pods() {
    let tp = tenant_pool("shop", "orders", 0);
    let plan = plan_of(
        std::slice::from_ref(&tp),
        &[creds("shop", "pw", "1")],
        &[pod("a", "10.0.0.1", &[]), pod("b", "10.0.0.2", &[])],
    );
    let mut fleet = all_synced(&plan);
    for (name, active) in [("a", 3), ("b", 4)] {
        fleet.get_mut(name).unwrap().tenants = BTreeMap::from([(
            "orders".to_string(),
            TenantStats {
                active,
                idle: 2,
                max: 20,
                database_reachable: true,
            },
        )]);
    }
    let status = status_for(&tp, &plan, &fleet);
    assert_eq!(
        status.connections,
        Some(ConnectionSummary {
            active: 7,
            idle: 4,
            max: 40
        })
    );
}

#[test]
fn unchanged_situation_gives_an_equal_status_so_nothing_is_written() {
    let mut tp = tenant_pool("shop", "orders", 0);
    let plan = plan_of(
        std::slice::from_ref(&tp),
        &[creds("shop", "pw", "1")],
        &[pod("a", "10.0.0.1", &[])],
    );
    let fleet = all_synced(&plan);
    let first = status_for(&tp, &plan, &fleet);
    tp.status = Some(first.clone());
    let later = compute(
        &tp,
        &plan.tenants[&key("shop", "orders")],
        &plan,
        &fleet,
        at(5000).0,
    );
    assert_eq!(first, later);
}

#[test]
fn a_condition_that_flips_gets_a_new_transition_time() {
    let mut tp = tenant_pool("shop", "orders", 0);
    let plan = plan_of(
        std::slice::from_ref(&tp),
        &[creds("shop", "pw", "1")],
        &[pod("a", "10.0.0.1", &[])],
    );
    tp.status = Some(status_for(&tp, &plan, &FleetSync::new()));
    let later = compute(
        &tp,
        &plan.tenants[&key("shop", "orders")],
        &plan,
        &all_synced(&plan),
        at(5000).0,
    );
    assert_eq!(condition(&later, READY).last_transition_time, at(5000));
    assert_eq!(
        condition(&later, CREDENTIALS_RESOLVED).last_transition_time,
        at(1000)
    );
}

#[test]
fn becoming_applied_publishes_one_normal_event() {
    let tp = tenant_pool("shop", "orders", 0);
    let plan = plan_of(
        std::slice::from_ref(&tp),
        &[creds("shop", "pw", "1")],
        &[pod("a", "10.0.0.1", &[])],
    );
    let pending = status_for(&tp, &plan, &FleetSync::new());
    let applied = status_for(&tp, &plan, &all_synced(&plan));
    let notices = notices(Some(&pending), &applied);
    assert_eq!(notices.len(), 1);
    assert_eq!(
        (notices[0].severity, notices[0].reason),
        (Severity::Normal, "ConfigApplied")
    );
    assert!(
        super::notices(Some(&applied), &applied).is_empty(),
        "steady state is silent"
    );
}

#[test]
fn missing_credentials_publish_a_warning_once() {
    let tp = tenant_pool("shop", "orders", 0);
    let plan = plan_of(std::slice::from_ref(&tp), &[], &[]);
    let status = status_for(&tp, &plan, &FleetSync::new());
    let first = notices(None, &status);
    assert!(
        first
            .iter()
            .any(|n| n.reason == "CredentialsMissing" && n.severity == Severity::Warning)
    );
    assert!(notices(Some(&status), &status).is_empty());
}

#[test]
fn conflict_and_push_failure_publish_warnings() {
    let older = with_id(tenant_pool("b", "x", 0), "t");
    let newer = with_id(tenant_pool("a", "y", 5), "t");
    let plan = plan_of(
        &[older.clone(), newer.clone()],
        &[creds("a", "1", "1"), creds("b", "2", "1")],
        &[pod("p", "10.0.0.1", &[])],
    );
    let conflict = status_for(&newer, &plan, &FleetSync::new());
    assert!(
        notices(None, &conflict)
            .iter()
            .any(|n| n.reason == "TenantIdConflict")
    );

    let fleet = FleetSync::from([(
        "p".to_string(),
        PodSync {
            uid: "uid-p".into(),
            last_error: Some("no answer".into()),
            ..PodSync::default()
        },
    )]);
    let failed = status_for(&older, &plan, &fleet);
    assert!(
        notices(None, &failed)
            .iter()
            .any(|n| n.reason == "PushFailed")
    );
}

#[test]
fn a_new_config_version_publishes_applied_again() {
    let tp = tenant_pool("shop", "orders", 0);
    let pods = [pod("a", "10.0.0.1", &[])];
    let plan1 = plan_of(
        std::slice::from_ref(&tp),
        &[creds("shop", "pw", "1")],
        &pods,
    );
    let plan2 = plan_of(
        std::slice::from_ref(&tp),
        &[creds("shop", "pw2", "2")],
        &pods,
    );
    let s1 = status_for(&tp, &plan1, &all_synced(&plan1));
    let s2 = status_for(&tp, &plan2, &all_synced(&plan2));
    assert_eq!(notices(Some(&s1), &s2)[0].reason, "ConfigApplied");
}

#[test]
fn removal_waits_only_for_selected_pods_that_have_not_confirmed() {
    let gone = deleting(tenant_pool("shop", "orders", 0), 10);
    let plan = plan_of(
        &[gone],
        &[creds("shop", "pw", "1")],
        &[pod("a", "10.0.0.1", &[]), pod("b", "10.0.0.2", &[])],
    );
    let tenant = &plan.tenants[&key("shop", "orders")];
    assert_eq!(
        removal_pending(tenant, &plan, &FleetSync::new()),
        ["a", "b"]
    );
    let mut fleet = all_synced(&plan);
    assert!(removal_pending(tenant, &plan, &fleet).is_empty());
    fleet.remove("b");
    assert_eq!(removal_pending(tenant, &plan, &fleet), ["b"]);
}

#[test]
fn status_never_contains_the_password() {
    let tp = tenant_pool("shop", "orders", 0);
    let plan = plan_of(
        std::slice::from_ref(&tp),
        &[creds("shop", "hunter2-pw", "1")],
        &[pod("a", "10.0.0.1", &[])],
    );
    let status = status_for(&tp, &plan, &all_synced(&plan));
    let text = serde_json::to_string(&status).unwrap();
    assert!(!text.contains("hunter2-pw"));
}

#[test]
fn a_fresh_operator_keeps_the_written_status_until_the_pods_answered() {
    let mut tp = tenant_pool("shop", "orders", 0);
    let plan = one_pod_plan(&tp);
    let ready = status_for(&tp, &plan, &all_synced(&plan));
    tp.status = Some(ready.clone());
    // A new process: the pusher has not heard from the pod yet (no entry, then
    // an entry without an answer).
    let unheard = FleetSync::from([(
        "a".to_string(),
        PodSync {
            uid: "uid-a".into(),
            ..PodSync::default()
        },
    )]);
    for fleet in [FleetSync::new(), unheard] {
        let status = compute(
            &tp,
            &plan.tenants[&key("shop", "orders")],
            &plan,
            &fleet,
            at(5000).0,
        );
        assert_eq!(status, ready, "no downgrade before the pod answered");
        assert!(notices(Some(&ready), &status).is_empty());
    }
    // A changed spec is another matter: nothing is known about it yet.
    tp.metadata.generation = Some(2);
    let status = status_for(&tp, &plan, &FleetSync::new());
    assert_eq!(condition(&status, CONFIG_APPLIED).reason, "Pending");
}

#[test]
fn the_conflict_loser_counts_no_synced_pods() {
    let older = with_id(tenant_pool("team-b", "pay", 0), "payments");
    let newer = with_id(tenant_pool("team-a", "pay", 9), "payments");
    let plan = plan_of(
        &[older.clone(), newer.clone()],
        &[creds("team-a", "a", "1"), creds("team-b", "b", "1")],
        &[pod("a", "10.0.0.1", &[])],
    );
    let fleet = all_synced(&plan);
    let loser = status_for(&newer, &plan, &fleet);
    assert_eq!(loser.synced.as_deref(), Some("0/1"));
    assert_eq!(condition(&loser, DATABASE_REACHABLE).status, "Unknown");
    assert_eq!(
        status_for(&older, &plan, &fleet).synced.as_deref(),
        Some("1/1")
    );
}

#[test]
fn a_pod_that_became_unreachable_after_syncing_is_not_synced() {
    let tp = tenant_pool("shop", "orders", 0);
    let plan = one_pod_plan(&tp);
    let mut fleet = all_synced(&plan);
    let a = fleet.get_mut("a").unwrap();
    a.last_error = Some("cannot connect to https://10.0.0.1:50053: timed out".into());
    a.failures = 1;
    let status = status_for(&tp, &plan, &fleet);
    assert_eq!(status.synced.as_deref(), Some("0/1"));
    let applied = condition(&status, CONFIG_APPLIED);
    assert_eq!(
        (applied.status.as_str(), applied.reason.as_str()),
        ("False", "PushFailed")
    );
    assert_eq!(condition(&status, READY).status, "False");
}

#[test]
fn a_pod_that_does_not_report_the_tenant_does_not_hold_it() {
    let tp = tenant_pool("shop", "orders", 0);
    let plan = one_pod_plan(&tp);
    let mut fleet = all_synced(&plan);
    fleet.get_mut("a").unwrap().tenants.clear();
    let status = status_for(&tp, &plan, &fleet);
    assert_eq!(status.synced.as_deref(), Some("0/1"));
    assert_eq!(condition(&status, READY).status, "False");
}

#[test]
fn an_unreachable_database_is_its_own_condition_and_holds_ready_back() {
    let tp = tenant_pool("shop", "orders", 0);
    let plan = one_pod_plan(&tp);
    let healthy = status_for(&tp, &plan, &all_synced(&plan));
    let mut fleet = all_synced(&plan);
    fleet
        .get_mut("a")
        .unwrap()
        .tenants
        .get_mut("orders")
        .unwrap()
        .database_reachable = false;
    let status = status_for(&tp, &plan, &fleet);
    let db = condition(&status, DATABASE_REACHABLE);
    assert_eq!(
        (db.status.as_str(), db.reason.as_str()),
        ("False", "Unreachable")
    );
    assert!(
        db.message.contains("db.example:5432/app") && db.message.contains("shop/db-creds"),
        "{}",
        db.message
    );
    assert!(!db.message.contains("pw"), "{}", db.message);
    let ready = condition(&status, READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "DatabaseUnreachable")
    );
    assert_eq!(condition(&status, CONFIG_APPLIED).status, "True");
    let warned = notices(Some(&healthy), &status);
    assert!(
        warned
            .iter()
            .any(|n| n.reason == "DatabaseUnreachable" && n.severity == Severity::Warning),
        "{warned:?}"
    );
}

#[test]
fn push_failed_clears_with_its_cause() {
    let mut tp = tenant_pool("shop", "orders", 0);
    let plan = one_pod_plan(&tp);
    let failing = FleetSync::from([(
        "a".to_string(),
        PodSync {
            uid: "uid-a".into(),
            last_error: Some("pooler rejected the configuration: tenants[1] (poison)".into()),
            failures: 3,
            ..PodSync::default()
        },
    )]);
    tp.status = Some(status_for(&tp, &plan, &failing));
    assert_eq!(
        condition(tp.status.as_ref().unwrap(), CONFIG_APPLIED).reason,
        "PushFailed"
    );
    let status = status_for(&tp, &plan, &all_synced(&plan));
    let applied = condition(&status, CONFIG_APPLIED);
    assert_eq!(applied.reason, "Applied");
    assert!(!serde_json::to_string(&status).unwrap().contains("poison"));
}
