use super::*;
use crate::fixtures::*;

fn key(namespace: &str, name: &str) -> TenantKey {
    TenantKey {
        namespace: namespace.into(),
        name: name.into(),
    }
}

fn ids(snapshot: &Snapshot) -> Vec<&str> {
    snapshot.tenant_ids()
}

#[test]
fn every_running_pod_gets_every_tenant_without_a_pooler_selector() {
    let plan = plan_of(
        &[
            tenant_pool("shop", "orders", 0),
            tenant_pool("blog", "posts", 1),
        ],
        &[creds("shop", "s3cret", "1"), creds("blog", "pw", "7")],
        &[
            pod("pooler-a", "10.0.0.1", &[]),
            pod("pooler-b", "10.0.0.2", &[]),
        ],
    );
    for name in ["pooler-a", "pooler-b"] {
        assert_eq!(ids(&plan.pods[name].snapshot), ["orders", "posts"]);
    }
    assert_eq!(
        plan.pods["pooler-a"].snapshot,
        plan.pods["pooler-b"].snapshot
    );
    assert_eq!(plan.stored, plan.pods["pooler-a"].snapshot);
    assert_eq!(
        plan.tenants[&key("shop", "orders")].selected_pods,
        ["pooler-a", "pooler-b"]
    );
}

#[test]
fn rendered_tenant_carries_database_target_pool_and_lease_settings() {
    let mut tp = with_id(tenant_pool("shop", "orders", 0), "orders-eu");
    tp.spec.pool.max_connections = 50;
    tp.spec.pool.statement_timeout = Some("30s".into());
    tp.spec.access.allowed_clients = vec!["spiffe://shop/api".into()];
    let plan = plan_of(
        &[tp],
        &[creds("shop", "s3cret", "1")],
        &[pod("p", "10.0.0.1", &[])],
    );
    let tenant = &plan.pods["p"].snapshot.config().tenants[0];
    assert_eq!(tenant.id, "orders-eu");
    let db = tenant.database.as_ref().unwrap();
    assert_eq!(
        (db.host.as_str(), db.port, db.dbname.as_str()),
        ("db.example", 5432, "app")
    );
    assert_eq!((db.user.as_str(), db.password.as_str()), ("app", "s3cret"));
    let pool = tenant.pool.as_ref().unwrap();
    assert_eq!(pool.max_connections, 50);
    assert_eq!(pool.min_connections, Some(5));
    assert_eq!(pool.max_lifetime, "30m");
    assert_eq!(pool.max_idle_time, "5m");
    assert_eq!(pool.statement_timeout, "30s");
    let leases = tenant.leases.as_ref().unwrap();
    assert_eq!(
        (leases.default_ttl.as_str(), leases.max_ttl.as_str()),
        ("60s", "1h")
    );
    assert_eq!(tenant.allowed_clients, ["spiffe://shop/api"]);
}

#[test]
fn missing_secret_keeps_the_tenant_off_every_pod_and_names_the_secret() {
    let plan = plan_of(
        &[tenant_pool("shop", "orders", 0)],
        &[],
        &[pod("p", "10.0.0.1", &[])],
    );
    assert!(ids(&plan.pods["p"].snapshot).is_empty());
    let TenantOutcome::CredentialsUnresolved(problem) =
        &plan.tenants[&key("shop", "orders")].outcome
    else {
        panic!("expected unresolved credentials");
    };
    assert_eq!(problem.reason(), "SecretNotFound");
    assert!(problem.to_string().contains("shop/db-creds"), "{problem}");
}

#[test]
fn missing_password_key_is_reported_with_the_key_name() {
    let plan = plan_of(
        &[tenant_pool("shop", "orders", 0)],
        &[secret("shop", "db-creds", &[("username", "app")], "1")],
        &[pod("p", "10.0.0.1", &[])],
    );
    let TenantOutcome::CredentialsUnresolved(problem) =
        &plan.tenants[&key("shop", "orders")].outcome
    else {
        panic!("expected unresolved credentials");
    };
    assert_eq!(problem.reason(), "SecretKeyNotFound");
    assert!(problem.to_string().contains("\"password\""));
    assert!(problem.to_string().contains("passwordKey"));
}

#[test]
fn secrets_of_other_namespaces_are_never_used() {
    // The same Secret name exists, but in another namespace.
    let plan = plan_of(
        &[tenant_pool("shop", "orders", 0)],
        &[creds("other", "s3cret", "1")],
        &[pod("p", "10.0.0.1", &[])],
    );
    assert!(matches!(
        plan.tenants[&key("shop", "orders")].outcome,
        TenantOutcome::CredentialsUnresolved(CredentialsProblem::SecretNotFound { .. })
    ));
}

#[test]
fn empty_user_name_is_refused() {
    let plan = plan_of(
        &[tenant_pool("shop", "orders", 0)],
        &[secret(
            "shop",
            "db-creds",
            &[("username", " "), ("password", "x")],
            "1",
        )],
        &[],
    );
    assert!(matches!(
        plan.tenants[&key("shop", "orders")].outcome,
        TenantOutcome::CredentialsUnresolved(CredentialsProblem::BadValue { .. })
    ));
}

#[test]
fn pooler_selector_narrows_the_fleet() {
    let tp = selecting(tenant_pool("shop", "orders", 0), &[("tier", "gold")]);
    let plan = plan_of(
        &[tp, tenant_pool("blog", "posts", 1)],
        &[creds("shop", "a", "1"), creds("blog", "b", "1")],
        &[
            pod("gold-1", "10.0.0.1", &[("tier", "gold")]),
            pod("plain-1", "10.0.0.2", &[]),
        ],
    );
    assert_eq!(ids(&plan.pods["gold-1"].snapshot), ["orders", "posts"]);
    assert_eq!(ids(&plan.pods["plain-1"].snapshot), ["posts"]);
    assert_eq!(
        plan.tenants[&key("shop", "orders")].selected_pods,
        ["gold-1"]
    );
    // Not every pod serves orders, so the stored snapshot leaves it out.
    assert_eq!(ids(&plan.stored), ["posts"]);
}

#[test]
fn stored_snapshot_keeps_a_narrowed_tenant_that_every_pod_serves() {
    let tp = selecting(tenant_pool("shop", "orders", 0), &[("tier", "gold")]);
    let plan = plan_of(
        &[tp],
        &[creds("shop", "a", "1")],
        &[pod("gold-1", "10.0.0.1", &[("tier", "gold")])],
    );
    assert_eq!(ids(&plan.stored), ["orders"]);
    assert_eq!(plan.stored, plan.pods["gold-1"].snapshot);
}

#[test]
fn pods_not_running_get_a_plan_but_are_not_selected_for_push() {
    let plan = plan_of(
        &[tenant_pool("shop", "orders", 0)],
        &[creds("shop", "a", "1")],
        &[pending_pod("starting"), pod("up", "10.0.0.1", &[])],
    );
    assert_eq!(plan.pods["starting"].address, None);
    assert_eq!(plan.pods["up"].address.as_deref(), Some("10.0.0.1"));
    assert_eq!(plan.tenants[&key("shop", "orders")].selected_pods, ["up"]);
}

#[test]
fn terminating_pods_are_left_alone() {
    let mut going = pod("going", "10.0.0.9", &[]);
    going.metadata.deletion_timestamp = Some(at(5));
    let plan = plan_of(
        &[tenant_pool("shop", "orders", 0)],
        &[creds("shop", "a", "1")],
        &[going],
    );
    assert!(plan.pods.is_empty());
}

#[test]
fn older_tenant_pool_keeps_a_contested_tenant_id() {
    let older = with_id(tenant_pool("team-b", "payments", 10), "payments");
    let newer = with_id(tenant_pool("team-a", "payments", 20), "payments");
    let plan = plan_of(
        &[newer, older],
        &[creds("team-a", "a", "1"), creds("team-b", "b", "1")],
        &[pod("p", "10.0.0.1", &[])],
    );
    assert!(matches!(
        plan.tenants[&key("team-b", "payments")].outcome,
        TenantOutcome::Serving { .. }
    ));
    assert_eq!(
        plan.tenants[&key("team-a", "payments")].outcome,
        TenantOutcome::Conflict {
            winner: key("team-b", "payments")
        }
    );
    let pooler = &plan.pods["p"].snapshot.config().tenants;
    assert_eq!(pooler.len(), 1);
    assert_eq!(pooler[0].database.as_ref().unwrap().password, "b");
}

#[test]
fn same_creation_time_is_broken_by_namespace_then_name() {
    let a = with_id(tenant_pool("ns", "alpha", 10), "shared");
    let b = with_id(tenant_pool("ns", "beta", 10), "shared");
    let plan = plan_of(
        &[b, a],
        &[creds("ns", "x", "1")],
        &[pod("p", "10.0.0.1", &[])],
    );
    assert!(matches!(
        plan.tenants[&key("ns", "beta")].outcome,
        TenantOutcome::Conflict { ref winner } if *winner == key("ns", "alpha")
    ));
}

#[test]
fn same_tenant_id_on_disjoint_pods_is_no_conflict() {
    let gold = selecting(
        with_id(tenant_pool("a", "t1", 0), "shared"),
        &[("tier", "gold")],
    );
    let silver = selecting(
        with_id(tenant_pool("b", "t2", 5), "shared"),
        &[("tier", "silver")],
    );
    let plan = plan_of(
        &[gold, silver],
        &[creds("a", "x", "1"), creds("b", "y", "1")],
        &[
            pod("g", "10.0.0.1", &[("tier", "gold")]),
            pod("s", "10.0.0.2", &[("tier", "silver")]),
        ],
    );
    for k in [key("a", "t1"), key("b", "t2")] {
        assert!(
            matches!(plan.tenants[&k].outcome, TenantOutcome::Serving { .. }),
            "{k}"
        );
    }
}

#[test]
fn a_deleted_winner_hands_the_tenant_id_to_the_next_claimant() {
    let older = deleting(with_id(tenant_pool("a", "old", 0), "shared"), 100);
    let newer = with_id(tenant_pool("b", "new", 5), "shared");
    let plan = plan_of(
        &[older, newer],
        &[creds("a", "x", "1"), creds("b", "y", "1")],
        &[pod("p", "10.0.0.1", &[])],
    );
    assert_eq!(
        plan.tenants[&key("a", "old")].outcome,
        TenantOutcome::Deleting
    );
    assert!(matches!(
        plan.tenants[&key("b", "new")].outcome,
        TenantOutcome::Serving { .. }
    ));
    assert_eq!(
        plan.pods["p"].snapshot.config().tenants[0]
            .database
            .as_ref()
            .unwrap()
            .password,
        "y"
    );
}

#[test]
fn deleting_tenant_is_removed_from_pods_but_keeps_its_selected_pods() {
    let plan = plan_of(
        &[
            deleting(tenant_pool("shop", "orders", 0), 50),
            tenant_pool("blog", "posts", 1),
        ],
        &[creds("shop", "a", "1"), creds("blog", "b", "1")],
        &[pod("p", "10.0.0.1", &[])],
    );
    assert_eq!(ids(&plan.pods["p"].snapshot), ["posts"]);
    assert_eq!(plan.tenants[&key("shop", "orders")].selected_pods, ["p"]);
}

#[test]
fn password_rotation_changes_the_version_without_revealing_the_password() {
    let pods = [pod("p", "10.0.0.1", &[])];
    let before = plan_of(
        &[tenant_pool("shop", "orders", 0)],
        &[creds("shop", "old-pw", "1")],
        &pods,
    );
    let after = plan_of(
        &[tenant_pool("shop", "orders", 0)],
        &[creds("shop", "new-pw", "2")],
        &pods,
    );
    assert_ne!(
        before.pods["p"].snapshot.version(),
        after.pods["p"].snapshot.version()
    );
    // The version hashes the Secret's resourceVersion, not the password.
    let same_rv = plan_of(
        &[tenant_pool("shop", "orders", 0)],
        &[creds("shop", "other", "1")],
        &pods,
    );
    assert_eq!(
        before.pods["p"].snapshot.version(),
        same_rv.pods["p"].snapshot.version()
    );
}

#[test]
fn versions_are_stable_for_equal_inputs_and_independent_of_input_order() {
    let pods = [pod("p", "10.0.0.1", &[])];
    let secrets = [creds("shop", "a", "1"), creds("blog", "b", "1")];
    let one = plan_of(
        &[
            tenant_pool("shop", "orders", 0),
            tenant_pool("blog", "posts", 1),
        ],
        &secrets,
        &pods,
    );
    let two = plan_of(
        &[
            tenant_pool("blog", "posts", 1),
            tenant_pool("shop", "orders", 0),
        ],
        &secrets,
        &pods,
    );
    assert_eq!(
        one.pods["p"].snapshot.version(),
        two.pods["p"].snapshot.version()
    );
    assert_eq!(one.pods["p"].snapshot.version().len(), 16);
}

#[test]
fn a_setting_change_changes_the_version() {
    let pods = [pod("p", "10.0.0.1", &[])];
    let mut bigger = tenant_pool("shop", "orders", 0);
    bigger.spec.pool.max_connections = 40;
    let before = plan_of(
        &[tenant_pool("shop", "orders", 0)],
        &[creds("shop", "a", "1")],
        &pods,
    );
    let after = plan_of(&[bigger], &[creds("shop", "a", "1")], &pods);
    assert_ne!(
        before.pods["p"].snapshot.version(),
        after.pods["p"].snapshot.version()
    );
}

#[test]
fn snapshot_debug_output_shows_no_password() {
    let plan = plan_of(
        &[tenant_pool("shop", "orders", 0)],
        &[creds("shop", "hunter2-secret", "1")],
        &[],
    );
    let debug = format!("{:?}", plan);
    assert!(!debug.contains("hunter2-secret"), "{debug}");
}

#[test]
fn snapshot_yaml_is_the_pooler_config_schema_in_camel_case() {
    let plan = plan_of(
        &[tenant_pool("shop", "orders", 0)],
        &[creds("shop", "a", "1")],
        &[],
    );
    let yaml = plan.stored.to_yaml().unwrap();
    assert!(yaml.contains("maxConnections: 20"), "{yaml}");
    assert!(yaml.contains("defaultTtl: 60s"), "{yaml}");
    let back: PoolerConfig = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(&back, plan.stored.config());
}

#[test]
fn ca_secret_travels_as_pem_content_in_the_pushed_config() {
    let mut tp = tenant_pool("shop", "orders", 0);
    tp.spec.database.ca_secret = Some(crate::crd::CaSecretRef {
        name: "db-ca".into(),
        key: "ca.crt".into(),
    });
    let plan = plan_of(
        &[tp],
        &[
            creds("shop", "a", "1"),
            secret(
                "shop",
                "db-ca",
                &[("ca.crt", "-----BEGIN CERTIFICATE-----\nA\n")],
                "3",
            ),
        ],
        &[],
    );
    let db = plan.stored.config().tenants[0].database.clone().unwrap();
    assert_eq!(db.ca_pem, "-----BEGIN CERTIFICATE-----\nA\n");
    assert!(db.ca_file.is_empty());
}

#[test]
fn missing_ca_secret_is_a_credentials_problem() {
    let mut tp = tenant_pool("shop", "orders", 0);
    tp.spec.database.ca_secret = Some(crate::crd::CaSecretRef {
        name: "db-ca".into(),
        key: "ca.crt".into(),
    });
    let plan = plan_of(&[tp], &[creds("shop", "a", "1")], &[]);
    assert!(matches!(
        plan.tenants[&key("shop", "orders")].outcome,
        TenantOutcome::CredentialsUnresolved(CredentialsProblem::CaSecretNotFound { .. })
    ));
}

#[test]
fn invalid_spec_admitted_under_an_old_crd_is_not_pushed() {
    let mut tp = tenant_pool("shop", "orders", 0);
    tp.spec.pool.min_connections = 50;
    tp.spec.leases.default_ttl = "2h".into();
    tp.spec.pool.max_idle_time = "soon".into();
    let plan = plan_of(
        &[tp],
        &[creds("shop", "a", "1")],
        &[pod("p", "10.0.0.1", &[])],
    );
    let TenantOutcome::Invalid(problems) = &plan.tenants[&key("shop", "orders")].outcome else {
        panic!("expected invalid");
    };
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(ids(&plan.pods["p"].snapshot).is_empty());
}

#[test]
fn durations_follow_the_poolers_grammar() {
    for good in ["1h30m", "500ms"] {
        let mut tp = tenant_pool("shop", "orders", 0);
        tp.spec.pool.max_lifetime = good.into();
        assert!(validate(&tp).is_empty(), "{good}");
    }
    for bad in ["0s", "30", "1.5s", "1d", " 5s"] {
        let mut tp = tenant_pool("shop", "orders", 0);
        tp.spec.pool.max_lifetime = bad.into();
        assert_eq!(validate(&tp).len(), 1, "{bad}");
    }
    // "0" is in the grammar, where zero is allowed.
    let mut tp = tenant_pool("shop", "orders", 0);
    tp.spec.pool.statement_timeout = Some("0".into());
    assert!(validate(&tp).is_empty());
}

#[test]
fn no_tenants_and_no_pods_store_an_empty_snapshot() {
    let plan = plan_of(&[], &[], &[]);
    assert!(plan.stored.config().tenants.is_empty());
    assert_eq!(plan.stored.version().len(), 16);
}

#[test]
fn restarts_and_uid_identify_a_pod_incarnation() {
    let mut restarted = pod("p", "10.0.0.1", &[]);
    if let Some(cs) = restarted
        .status
        .as_mut()
        .and_then(|s| s.container_statuses.as_mut())
    {
        cs[0].restart_count = 3;
    }
    let plan = plan_of(&[], &[], &[restarted]);
    assert_eq!(plan.pods["p"].restarts, 3);
    assert_eq!(plan.pods["p"].uid, "uid-p");
}

#[test]
fn referenced_secrets_are_the_credentials_and_ca_secrets_in_the_same_namespace() {
    let mut tp = tenant_pool("shop", "orders", 0);
    tp.spec.database.ca_secret = Some(crate::crd::CaSecretRef {
        name: "db-ca".into(),
        key: "ca.crt".into(),
    });
    let refs = referenced_secrets(&tp);
    assert!(refs.contains(&("shop".to_string(), "db-creds".to_string())));
    assert!(refs.contains(&("shop".to_string(), "db-ca".to_string())));
    assert_eq!(refs.len(), 2);
}

#[test]
fn a_restarted_native_sidecar_pooler_counts_as_a_new_incarnation() {
    let mut sidecar = pod("p", "10.0.0.1", &[]);
    if let Some(s) = sidecar.status.as_mut() {
        // A native sidecar is an init container with restartPolicy: Always.
        s.init_container_statuses = Some(vec![k8s_openapi::api::core::v1::ContainerStatus {
            name: "teresa-pooler".into(),
            restart_count: 2,
            ..Default::default()
        }]);
    }
    let plan = plan_of(&[], &[], &[sidecar]);
    assert_eq!(plan.pods["p"].restarts, 2);
}
