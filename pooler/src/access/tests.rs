use super::*;
use crate::config::{parse_yaml, validate};

fn tenant(allowed: &str) -> TenantSpec {
    let text = format!(
        "tenants:\n  - id: shop\n    database: {{ host: h, dbname: d, user: u }}\n    allowedClients: {allowed}\n"
    );
    validate(&parse_yaml(&text).unwrap())
        .unwrap()
        .tenants
        .remove(0)
}

fn client(kind: IdentityKind, value: &str) -> Caller {
    Caller::Client(Identity::new(kind, value).unwrap())
}

#[test]
fn a_tenant_without_a_list_admits_anyone_even_without_a_certificate() {
    let open = tenant("[]");
    assert!(authorize(&open, &Caller::Anonymous).is_ok());
    assert!(authorize(&open, &client(IdentityKind::Cn, "anyone")).is_ok());
}

#[test]
fn a_list_even_star_needs_an_identity_and_says_certificates_are_off() {
    for list in [r#"["*"]"#, r#"["spiffe://x/ns/shop/*"]"#] {
        let err = authorize(&tenant(list), &Caller::Anonymous).unwrap_err();
        assert!(
            matches!(err, AccessError::ClientCertificatesOff { .. }),
            "{list}: {err}"
        );
        assert!(err.to_string().contains("--client-ca"), "{err}");
    }
    assert!(
        authorize(
            &tenant(r#"["*"]"#),
            &client(IdentityKind::Uri, "spiffe://x/a")
        )
        .is_ok()
    );
}

#[test]
fn a_name_identity_never_matches_a_uri_pattern() {
    let shop = tenant(r#"["spiffe://teresa.dev/operator", "spiffe://teresa.dev/ns/shop/*"]"#);
    let err = authorize(&shop, &client(IdentityKind::Dns, "teresa.dev")).unwrap_err();
    assert!(matches!(err, AccessError::NotAllowed { .. }), "{err}");
    assert!(
        authorize(
            &shop,
            &client(IdentityKind::Uri, "spiffe://teresa.dev/ns/shop/sa/web")
        )
        .is_ok()
    );
}

#[test]
fn lease_owners_are_judged_by_the_same_patterns() {
    let shop = tenant(r#"["spiffe://x/ns/shop/*", "web.shop.svc"]"#);
    assert!(admits_owner(&shop, "spiffe://x/ns/shop/sa/web"));
    assert!(admits_owner(&shop, "web.shop.svc"));
    assert!(!admits_owner(&shop, "spiffe://x/ns/billing/sa/web"));
    assert!(!admits_owner(&shop, ""));
    assert!(admits_owner(&tenant("[]"), ""));
}
