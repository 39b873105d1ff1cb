use super::*;

fn uri(value: &str) -> Identity {
    Identity::new(IdentityKind::Uri, value).unwrap()
}

fn name(kind: IdentityKind, value: &str) -> Identity {
    Identity::new(kind, value).unwrap()
}

#[test]
fn prefix_matches_whole_segments_only() {
    let p = Pattern::parse("spiffe://x/ns/shop/*").unwrap();
    assert!(p.matches(&uri("spiffe://x/ns/shop/sa/orders")));
    assert!(p.matches(&uri("spiffe://x/ns/shop/a")));
    assert!(!p.matches(&uri("spiffe://x/ns/shop")));
    assert!(!p.matches(&uri("spiffe://x/ns/shopping/sa/a")));
    assert!(!p.matches(&uri("spiffe://x/ns/other/sa/a")));
}

#[test]
fn traversal_and_encoding_are_not_identities() {
    for bad in [
        "spiffe://x/ns/../admin/sa/root",
        "spiffe://x/ns/./a",
        "spiffe://x/ns//a",
        "spiffe://x/ns/a/",
        "spiffe://x/ns/%2e%2e/admin",
        "spiffe://x/é",
        "spiffe://x/a b",
        "spiffe://x/a?b",
        "spiffe://x/a#b",
        "spiffe:///a",
        "SPIFFE://x/a",
        "",
    ] {
        assert!(Identity::new(IdentityKind::Uri, bad).is_err(), "{bad:?}");
    }
}

#[test]
fn name_identities_never_match_uri_patterns() {
    let cn = name(IdentityKind::Cn, "orders.shop");
    assert!(
        !Pattern::parse("spiffe://teresa.dev/operator")
            .unwrap()
            .matches(&cn)
    );
    assert!(Identity::new(IdentityKind::Cn, "spiffe://teresa.dev/operator").is_err());
    assert!(Pattern::parse("orders.shop").unwrap().matches(&cn));
    let dns = name(IdentityKind::Dns, "orders.shop");
    assert!(Pattern::parse("orders.shop").unwrap().matches(&dns));
    assert!(
        !Pattern::parse("orders.shop")
            .unwrap()
            .matches(&uri("spiffe://orders.shop"))
    );
}

#[test]
fn star_admits_any_identity_of_any_kind() {
    let p = Pattern::parse("*").unwrap();
    assert!(p.matches(&uri("spiffe://x/a")));
    assert!(p.matches(&name(IdentityKind::Dns, "a.b")));
}

#[test]
fn grammar_refuses_misplaced_wildcards_and_bad_identities() {
    for bad in [
        "spiffe://x/*/y*",
        "spiffe://x/ns*",
        "spiffe://x/*/*",
        "**",
        "a*",
        "orders/*",
        "spiffe://x/ns/../*",
        "spiffe://x/é",
        "spiffe://x/ns/",
        "",
    ] {
        assert!(Pattern::parse(bad).is_err(), "{bad:?}");
    }
    for good in [
        "*",
        "spiffe://x/ns/a/*",
        "spiffe://x/a",
        "orders.shop",
        "x/*",
    ] {
        let parsed = Pattern::parse(good);
        if good == "x/*" {
            assert!(parsed.is_err());
        } else {
            assert_eq!(parsed.unwrap().to_string(), good);
        }
    }
}

/// Every pattern the parser accepts also passes the CRD's regular
/// expression, so the CRD never refuses what the pooler takes; what the
/// regular expression lets through beyond that is refused by the operator.
#[test]
fn crd_regex_admits_every_valid_pattern() {
    let re = regex::Regex::new(PATTERN_REGEX).unwrap();
    for text in [
        "*",
        "spiffe://x/ns/a/*",
        "spiffe://teresa.dev/ns/shop/sa/orders",
        "orders.shop",
        "svc-1@example.com",
        "spiffe://x/*/y*",
        "spiffe://x/ns*",
        "spiffe://x/%41",
        "spiffe://x/é",
        "orders/*",
        "a b",
        "",
    ] {
        let parses = Pattern::parse(text).is_ok();
        let admitted = re.is_match(text);
        assert!(
            !parses || admitted,
            "{text:?} parses but the CRD would refuse it"
        );
        if matches!(
            text,
            "spiffe://x/*/y*" | "spiffe://x/ns*" | "spiffe://x/%41" | "spiffe://x/é" | "a b" | ""
        ) {
            assert!(!admitted, "{text:?} should be refused at admission");
        }
    }
}
