use super::*;
use std::time::Duration;
use teresa_proto::identity::Identity;

fn yaml(text: &str) -> Result<ValidConfig, String> {
    let snapshot = parse_yaml(text).map_err(|e| e.to_string())?;
    validate(&snapshot).map_err(|e| e.to_string())
}

const MINIMAL: &str = r#"
tenants:
  - id: acme
    database: { host: 127.0.0.1, dbname: acme, user: acme, password: s3cret }
"#;

#[test]
fn missing_settings_take_the_original_defaults() {
    let config = yaml(MINIMAL).unwrap();
    let tenant = &config.tenants[0];
    assert_eq!(tenant.target.port, 5432);
    assert_eq!(tenant.target.ssl_mode, SslMode::Prefer);
    assert_eq!(tenant.pool.max_connections, 20);
    assert_eq!(tenant.pool.min_connections, 5);
    assert_eq!(tenant.pool.max_lifetime, Duration::from_secs(1800));
    assert_eq!(tenant.pool.max_idle_time, Duration::from_secs(300));
    assert_eq!(tenant.pool.statement_timeout, None);
    assert_eq!(tenant.leases.default_ttl, Duration::from_secs(60));
    assert!(config.version.starts_with("sha-"), "{}", config.version);
}

#[test]
fn every_field_is_read() {
    let config = yaml(
        r#"
version: v7
tenants:
  - id: acme
    database:
      host: db.internal
      port: 6432
      dbname: app
      user: app
      passwordFile: /run/secrets/pw
      sslMode: verify-full
      caFile: /etc/ca.pem
    pool:
      maxConnections: 50
      minConnections: 0
      maxLifetime: 1h
      maxIdleTime: 90s
      acquireTimeout: 250ms
      maxWaiting: 10
      statementTimeout: 15s
    leases: { defaultTtl: 2m, maxTtl: 10m, maxPerClient: 3 }
    allowedClients: ["spiffe://teresa.dev/ns/app/*"]
"#,
    )
    .unwrap();
    assert_eq!(config.version, "v7");
    let t = &config.tenants[0];
    assert_eq!(t.target.port, 6432);
    assert_eq!(t.target.password, Secret::File("/run/secrets/pw".into()));
    assert_eq!(t.target.ssl_mode, SslMode::VerifyFull);
    assert_eq!(t.pool.min_connections, 0);
    assert_eq!(t.pool.acquire_timeout, Duration::from_millis(250));
    assert_eq!(t.pool.statement_timeout, Some(Duration::from_secs(15)));
    assert_eq!(t.leases.max_ttl, Duration::from_secs(600));
    let uri = |v: &str| Identity::new(teresa_proto::identity::IdentityKind::Uri, v).unwrap();
    assert!(t.allows(Some(&uri("spiffe://teresa.dev/ns/app/sa/web"))));
    assert!(!t.allows(Some(&uri("spiffe://teresa.dev/ns/other/sa/web"))));
    assert!(!t.allows(None));
}

#[test]
fn allowed_clients_follow_the_one_pattern_grammar() {
    let with = |pattern: &str| {
        yaml(&format!(
            "tenants:\n  - id: a\n    database: {{ host: h, dbname: d, user: u }}\n    allowedClients: [{pattern:?}]\n"
        ))
    };
    for bad in [
        "spiffe://x/*/y*",
        "spiffe://x/ns/*/sa/web",
        "spiffe://x/ns/shop*",
        "spiffe://x/ns/../admin/*",
        "spiffe://x/ns/%2e%2e/*",
        "*.shop.svc",
        "",
    ] {
        let err = with(bad).unwrap_err();
        assert!(
            err.contains("tenants[0] (a).allowedClients[0]"),
            "{bad:?}: {err}"
        );
    }
    let err = with("spiffe://x/*/y*").unwrap_err();
    assert!(err.contains("'/*'"), "{err}");
    for good in [
        "*",
        "spiffe://x/ns/shop/*",
        "spiffe://x/ns/shop/sa/web",
        "web.shop.svc",
    ] {
        let config = with(good).unwrap();
        assert_eq!(config.tenants[0].allowed_clients[0].to_string(), good);
    }
}

#[test]
fn no_list_admits_anyone_and_a_list_admits_only_identities() {
    let open = &yaml(MINIMAL).unwrap().tenants[0];
    assert!(open.allows(None));
    let star = &yaml(
        "tenants:\n  - id: a\n    database: { host: h, dbname: d, user: u }\n    allowedClients: [\"*\"]\n",
    )
    .unwrap()
    .tenants[0];
    assert!(!star.allows(None));
    let anyone = Identity::new(teresa_proto::identity::IdentityKind::Dns, "web.shop.svc").unwrap();
    assert!(star.allows(Some(&anyone)));
}

#[test]
fn unknown_fields_are_refused_by_name() {
    let err = yaml(
        "tenants:\n  - id: a\n    database: { host: h, dbname: d, user: u }\n    pool: { maxConnection: 3 }\n",
    )
    .unwrap_err();
    assert!(err.contains("maxConnection"), "{err}");
}

#[test]
fn every_problem_is_listed_with_its_field() {
    let err = yaml(
        r#"
tenants:
  - id: a
    database: { host: "", dbname: d, user: u }
    pool: { maxConnections: 2, minConnections: 3, maxIdleTime: soon }
  - id: a
    database: { host: h, dbname: d, user: u, sslMode: sometimes }
    leases: { defaultTtl: 2h, maxTtl: 1h }
"#,
    )
    .unwrap_err();
    for expected in [
        "tenants[0] (a).database.host: must not be empty",
        "tenants[0] (a).pool.minConnections: 3 is greater than maxConnections (2)",
        "tenants[0] (a).pool.maxIdleTime: \"soon\" is not a duration",
        "tenants[1] (a).id: duplicate tenant id",
        "tenants[1] (a).database.sslMode",
        "tenants[1] (a).leases.defaultTtl: 2h is longer than maxTtl (1h)",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in {err}");
    }
}

#[test]
fn errors_never_echo_the_password() {
    let err = yaml(
        "tenants:\n  - id: a\n    database: { host: '', dbname: d, user: u, password: hunter2, passwordFile: /x }\n",
    )
    .unwrap_err();
    assert!(!err.contains("hunter2"), "{err}");
    let config = yaml(MINIMAL).unwrap();
    assert!(!format!("{:?}", config).contains("s3cret"));
}

#[test]
fn durations_parse_in_the_documented_forms() {
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
    assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    for bad in ["", "5", "m5", "5 minutes", "-5s", "1.5s"] {
        assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
    }
    assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
    assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
}
