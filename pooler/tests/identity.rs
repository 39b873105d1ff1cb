//! Client identities and tenant boundaries: a client reaches only what it was
//! granted, by an identity it cannot forge. Real pooler processes, real mTLS,
//! certificates minted per test.

mod support;

use std::time::Duration;

use support::*;
use teresa_pooler::certs::ClientIdentity;
use teresa_pooler::config::parse_yaml;
use teresa_proto::admin::pooler_admin_client::PoolerAdminClient;
use teresa_proto::admin::{GetStatusRequest, PoolerConfig, TenantApplyResult};
use teresa_proto::connectionpool::{KeepAliveRequest, StatsRequest};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

const OPERATOR: &str = "spiffe://teresa.dev/operator";

/// GetPoolStats of `tenant` as `client`: the cheapest call that authorizes.
async fn stats_call(client: &mut LeaseClient, tenant: &str) -> Result<(), tonic::Status> {
    client
        .get_pool_stats(StatsRequest {
            tenant_id: tenant.to_owned(),
        })
        .await
        .map(drop)
}

/// Asserts the call was refused with `code` and a message holding every `says`.
#[track_caller]
fn assert_refused(result: Result<(), tonic::Status>, code: Code, says: &[&str]) {
    let status = result.expect_err("the call succeeded");
    assert_eq!(status.code(), code, "{status:?}");
    for part in says {
        assert!(
            status.message().contains(part),
            "{:?} does not say {part:?}",
            status.message()
        );
    }
}

fn snapshot(version: &str, tenants: &[(&TenantDb, &str)]) -> PoolerConfig {
    let mut config = parse_yaml(&PoolerSetup::new(tenants).tenants_yaml).unwrap();
    config.version = version.to_owned();
    config
}

#[tokio::test]
async fn dns_and_cn_identities_count_only_when_the_flag_enables_them() {
    let db = Db::start().await;
    let names = db.tenant("names").await;
    let uris = db.tenant("uris").await;
    let tenants = [
        (&names, r#"allowedClients: ["web.shop.svc", "billing"]"#),
        (&uris, r#"allowedClients: ["spiffe://teresa.dev/*"]"#),
    ];
    let dns = ClientIdentity::Dns("web.shop.svc".into());
    let cn = ClientIdentity::CommonName("billing".into());
    // A DNS name spelled like the URI pattern's trust domain.
    let lookalike = ClientIdentity::Dns("teresa.dev".into());

    // Default (uri): neither a DNS SAN nor a CN is an identity.
    let pooler = Pooler::start(PoolerSetup::new(&tenants).require_client_certs()).await;
    for only_a_name in [&dns, &cn] {
        let mut client = pooler
            .client_with(pooler.certs.client_with(only_a_name))
            .await;
        assert_refused(
            stats_call(&mut client, "names").await,
            Code::PermissionDenied,
            &["no URI SAN", "--client-identity"],
        );
    }
    drop(pooler);

    // uri,dns: the DNS SAN is an identity, the CN still is not, and a DNS
    // identity never matches a URI pattern.
    let pooler = Pooler::start(
        PoolerSetup::new(&tenants)
            .require_client_certs()
            .arg("--client-identity")
            .arg("uri,dns"),
    )
    .await;
    let mut web = pooler.client_with(pooler.certs.client_with(&dns)).await;
    stats_call(&mut web, "names").await.unwrap();
    let mut billing = pooler.client_with(pooler.certs.client_with(&cn)).await;
    assert_refused(
        stats_call(&mut billing, "names").await,
        Code::PermissionDenied,
        &["no URI or DNS SAN"],
    );
    let mut lookalike_client = pooler
        .client_with(pooler.certs.client_with(&lookalike))
        .await;
    assert_refused(
        stats_call(&mut lookalike_client, "uris").await,
        Code::PermissionDenied,
        &["\"teresa.dev\"", "allowedClients"],
    );
    drop(pooler);

    // uri,dns,cn (from the environment): the CN is an identity too.
    let mut setup = PoolerSetup::new(&tenants).require_client_certs();
    setup
        .env
        .push(("TERESA_CLIENT_IDENTITY".into(), "uri,dns,cn".into()));
    let pooler = Pooler::start(setup).await;
    let mut billing = pooler.client_with(pooler.certs.client_with(&cn)).await;
    stats_call(&mut billing, "names").await.unwrap();
    let mut web = pooler.client_with(pooler.certs.client_with(&dns)).await;
    stats_call(&mut web, "names").await.unwrap();
    assert_refused(
        stats_call(&mut web, "uris").await,
        Code::PermissionDenied,
        &["allowedClients"],
    );
}

#[tokio::test]
async fn a_cn_that_looks_like_the_operator_is_refused_by_the_admin_api() {
    let db = Db::start().await;
    let acme = db.tenant("acme").await;
    // Even where the lease port reads CNs, the admin port reads URI SANs only.
    let pooler = Pooler::start(
        PoolerSetup::new(&[(&acme, &format!("allowedClients: [{OPERATOR:?}]"))])
            .require_client_certs()
            .arg("--client-identity=uri,dns,cn"),
    )
    .await;
    let forged = ClientIdentity::CommonName(OPERATOR.into());
    let channel = pooler
        .channel_as(pooler.admin_port, pooler.certs.client_with(&forged))
        .await;
    let err = PoolerAdminClient::new(channel)
        .get_status(GetStatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("URI SANs only"), "{err:?}");
    assert!(err.message().contains("no URI SAN"), "{err:?}");

    // On the lease port the same CN is refused too: a name never looks like a URI.
    let mut client = pooler.client_with(pooler.certs.client_with(&forged)).await;
    assert_refused(
        stats_call(&mut client, "acme").await,
        Code::PermissionDenied,
        &["must not look like a URI"],
    );
    // The real operator certificate still works.
    assert!(
        pooler
            .admin()
            .await
            .get_status(GetStatusRequest {})
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn unnormalized_or_ambiguous_uri_identities_are_refused_naming_why() {
    let db = Db::start().await;
    let app = db.tenant("app").await;
    let open = db.tenant("open").await;
    let pooler = Pooler::start(
        PoolerSetup::new(&[
            (&app, r#"allowedClients: ["spiffe://teresa.dev/ns/app/*"]"#),
            (&open, ""),
        ])
        .require_client_certs(),
    )
    .await;
    for (uri, says) in [
        ("spiffe://teresa.dev/ns/app/../admin/sa/root", "'..'"),
        ("spiffe://teresa.dev/ns/app/sa/%2e%2e", "percent-encoding"),
        ("spiffe://teresa.dev/ns/app//sa/web", "empty"),
    ] {
        let mut client = pooler
            .client_with(pooler.certs.client_with(&ClientIdentity::Uri(uri.into())))
            .await;
        // Refused everywhere, even on a tenant without allowedClients.
        for tenant in ["app", "open"] {
            assert_refused(
                stats_call(&mut client, tenant).await,
                Code::PermissionDenied,
                &[uri, says],
            );
        }
    }
    let two = pooler.certs.client_names(
        "client",
        &["spiffe://teresa.dev/ns/app/sa/web", OPERATOR],
        &[],
    );
    let mut client = pooler.client_with(two).await;
    assert_refused(
        stats_call(&mut client, "app").await,
        Code::PermissionDenied,
        &["2 URI SANs", "exactly one"],
    );
    // A normalized identity under the prefix is served.
    let mut web = pooler.client_as("spiffe://teresa.dev/ns/app/sa/web").await;
    stats_call(&mut web, "app").await.unwrap();
}

#[tokio::test]
async fn a_pattern_with_a_star_in_the_middle_is_rejected_by_config_validation() {
    let db = Db::start().await;
    let acme = db.tenant("acme").await;
    let pooler = Pooler::start(PoolerSetup::new(&[(&acme, "")])).await;
    for bad in [
        "spiffe://teresa.dev/*/sa/web",
        "spiffe://teresa.dev/ns/*/y*",
    ] {
        let config = snapshot("v2", &[(&acme, &format!("allowedClients: [{bad:?}]"))]);
        // Per-tenant apply: the call answers, the tenant alone is rejected,
        // with the entry and the grammar named.
        let results = pooler
            .admin()
            .await
            .apply_config(config)
            .await
            .unwrap()
            .into_inner()
            .tenants;
        let acme_result = results
            .iter()
            .find(|t| t.tenant_id == "acme")
            .expect("a result for acme");
        assert_eq!(
            acme_result.result(),
            TenantApplyResult::Rejected,
            "{results:?}"
        );
        assert!(
            acme_result.reason.contains("allowedClients[0]") && acme_result.reason.contains("'/*'"),
            "{results:?}"
        );
    }
    // The rejected tenant keeps its previous configuration (no list): a
    // client is still served.
    let mut client = pooler.client().await;
    stats_call(&mut client, "acme").await.unwrap();
    let applied = pooler
        .admin()
        .await
        .get_status(GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(applied.ready, "{applied:?}");
}

#[tokio::test]
async fn a_tenant_with_allowed_clients_refuses_everyone_without_client_certificates() {
    let db = Db::start().await;
    let open = db.tenant("open").await;
    let star = db.tenant("star").await;
    let pooler = Pooler::start(PoolerSetup::new(&[
        (&open, ""),
        (&star, r#"allowedClients: ["*"]"#),
    ]))
    .await;
    let mut client = pooler.client().await;
    stats_call(&mut client, "open").await.unwrap();
    let says = ["\"star\"", "client certificates are off", "--client-ca"];
    assert_refused(
        stats_call(&mut client, "star").await,
        Code::PermissionDenied,
        &says,
    );
    let lease = client
        .get_connection(teresa_proto::connectionpool::ConnectionRequest {
            tenant_id: "star".into(),
            ..Default::default()
        })
        .await
        .map(drop);
    assert_refused(lease, Code::PermissionDenied, &says);
    let log = pooler.log();
    assert!(
        log.lines().any(|l| l.contains("refuse every caller")
            && l.contains("star")
            && !l.contains("open")),
        "no start-up warning naming only the tenant with allowedClients:\n{log}"
    );
}

#[tokio::test]
async fn the_admin_port_answers_only_admin_identities_health_and_reflection_included() {
    let db = Db::start().await;
    let acme = db.tenant("acme").await;
    let pooler = Pooler::start(PoolerSetup::new(&[(&acme, "")])).await;
    let stranger = pooler.certs.client("spiffe://teresa.dev/ns/app/sa/web");
    let operator = pooler.certs.client(OPERATOR);

    let list_services = |channel: tonic::transport::Channel| async move {
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = ServerReflectionClient::new(channel)
            .server_reflection_info(tokio_stream::iter([request]))
            .await?
            .into_inner();
        let mut names = Vec::new();
        while let Some(response) = stream.message().await? {
            if let Some(MessageResponse::ListServicesResponse(list)) = response.message_response {
                names.extend(list.service.into_iter().map(|s| s.name));
            }
        }
        Ok::<_, tonic::Status>(names)
    };
    let health = |channel: tonic::transport::Channel| async move {
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|r| r.into_inner().status)
    };

    let channel = pooler.channel_as(pooler.admin_port, stranger).await;
    let err = list_services(channel.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("may not use the admin port"),
        "{err:?}"
    );
    let err = health(channel).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    let channel = pooler.channel_as(pooler.admin_port, operator).await;
    let names = list_services(channel.clone()).await.unwrap();
    assert!(
        names.iter().any(|n| n == "teresa.admin.v1.PoolerAdmin"),
        "{names:?}"
    );
    assert_eq!(
        health(channel).await.unwrap(),
        ServingStatus::Serving as i32
    );
}

/// Backends of the tenant's database inside a transaction.
async fn in_transaction(db: &Db, tenant: &TenantDb) -> usize {
    db.backends(&tenant.dbname)
        .await
        .iter()
        .filter(|b| b.state == "idle in transaction")
        .count()
}

/// Alice and Bob each hold a lease of `acme`; Alice's has an uncommitted row.
async fn two_leases(
    db: &Db,
    acme: &TenantDb,
    pooler: &Pooler,
) -> (LeaseClient, String, LeaseClient, String) {
    let mut alice = pooler
        .client_as("spiffe://teresa.dev/ns/shop/sa/alice")
        .await;
    let mut bob = pooler.client_as("spiffe://teresa.dev/ns/shop/sa/bob").await;
    let alice_lease = lease(&mut alice, "acme").await;
    let bob_lease = lease(&mut bob, "acme").await;
    on_lease(&mut alice, &alice_lease, "BEGIN", vec![]).await;
    on_lease(&mut alice, &alice_lease, "INSERT INTO t VALUES (1)", vec![]).await;
    assert_eq!(in_transaction(db, acme).await, 1);
    (alice, alice_lease, bob, bob_lease)
}

/// What Alice and Bob see once an apply dropped Alice from allowedClients.
async fn assert_only_alice_was_revoked(
    db: &Db,
    acme: &TenantDb,
    pooler: &Pooler,
    (mut alice, alice_lease, mut bob, bob_lease): (LeaseClient, String, LeaseClient, String),
) {
    let reason = "identity no longer allowed by allowedClients";
    let err = lease_error(&mut alice, &alice_lease, "SELECT 1").await;
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains(reason), "{err:?}");
    let err = alice
        .keep_alive(KeepAliveRequest {
            connection_id: alice_lease.clone(),
            ttl: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains(reason), "{err:?}");
    // Rolled back, and no new lease either.
    assert_eq!(in_transaction(db, acme).await, 0);
    assert_eq!(db.count_t(acme).await, 0);
    assert_refused(
        stats_call(&mut alice, "acme").await,
        Code::PermissionDenied,
        &["alice", "allowedClients"],
    );
    // Bob's lease was not touched.
    assert_eq!(
        on_lease(&mut bob, &bob_lease, "SELECT 7::int8", vec![])
            .await
            .int(),
        7
    );
    assert_eq!(stats(&mut bob, "acme").await.active_leases, 1);
    assert!(
        pooler
            .metrics()
            .await
            .contains("teresa_leases_total{outcome=\"revoked\",tenant=\"acme\"} 1"),
        "{}",
        pooler.metrics().await
    );
}

#[tokio::test]
async fn an_apply_that_drops_an_identity_revokes_its_open_leases() {
    let db = Db::start().await;
    let acme = db.tenant("acme").await;
    db.create_table_t(&acme).await;
    let both = r#"allowedClients: ["spiffe://teresa.dev/ns/shop/sa/alice", "spiffe://teresa.dev/ns/shop/sa/bob"]"#;
    let pooler = Pooler::start(PoolerSetup::new(&[(&acme, both)]).require_client_certs()).await;
    let held = two_leases(&db, &acme, &pooler).await;

    let only_bob = r#"allowedClients: ["spiffe://teresa.dev/ns/shop/sa/bob"]"#;
    pooler
        .admin()
        .await
        .apply_config(snapshot("v2", &[(&acme, only_bob)]))
        .await
        .unwrap();
    // Revoked by the time the apply answers.
    assert_only_alice_was_revoked(&db, &acme, &pooler, held).await;
}

#[tokio::test]
async fn a_config_file_that_narrows_a_prefix_revokes_the_leases_it_no_longer_admits() {
    let db = Db::start().await;
    let acme = db.tenant("acme").await;
    db.create_table_t(&acme).await;
    let pooler = Pooler::start(
        PoolerSetup::new(&[(
            &acme,
            r#"allowedClients: ["spiffe://teresa.dev/ns/shop/*"]"#,
        )])
        .require_client_certs(),
    )
    .await;
    let held = two_leases(&db, &acme, &pooler).await;
    let alice_lease = held.1.clone();
    let mut probe = pooler
        .client_as("spiffe://teresa.dev/ns/shop/sa/alice")
        .await;

    let narrowed = PoolerSetup::new(&[(
        &acme,
        r#"allowedClients: ["spiffe://teresa.dev/ns/shop/sa/bob"]"#,
    )]);
    std::fs::write(&pooler.config_path, narrowed.tenants_yaml).unwrap();
    // The file watcher applies within about a second.
    let started = std::time::Instant::now();
    let mut revoked = false;
    while !revoked && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        revoked = probe
            .keep_alive(KeepAliveRequest {
                connection_id: alice_lease.clone(),
                ttl: None,
            })
            .await
            .is_err();
    }
    assert!(
        revoked,
        "the config file change did not revoke alice's lease"
    );
    assert_only_alice_was_revoked(&db, &acme, &pooler, held).await;
}
