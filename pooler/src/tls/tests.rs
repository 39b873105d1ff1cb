use super::*;
use crate::certs::{ClientIdentity, DevCa};

fn der(pem: &str) -> CertificateDer<'static> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
}

fn read(of: ClientIdentity, sources: IdentitySources) -> Result<String, IdentityRefused> {
    let issued = DevCa::generate().unwrap().issue_client(&of).unwrap();
    identity_of(&der(&issued.cert_pem), sources).map(|id| id.to_string())
}

fn read_names(
    cn: &str,
    uris: &[&str],
    dns: &[&str],
    sources: IdentitySources,
) -> Result<Identity, IdentityRefused> {
    let issued = DevCa::generate()
        .unwrap()
        .issue_client_names(cn, uris, dns)
        .unwrap();
    identity_of(&der(&issued.cert_pem), sources)
}

#[test]
fn by_default_only_a_uri_san_is_an_identity() {
    let uri = ClientIdentity::Uri("spiffe://teresa.dev/ns/a/sa/b".into());
    assert_eq!(
        read(uri, IdentitySources::Uri).unwrap(),
        "spiffe://teresa.dev/ns/a/sa/b"
    );
    for only_a_name in [
        ClientIdentity::Dns("worker.apps.internal".into()),
        ClientIdentity::CommonName("billing".into()),
    ] {
        let err = read(only_a_name.clone(), IdentitySources::Uri).unwrap_err();
        assert!(
            matches!(err, IdentityRefused::NoIdentity { .. }),
            "{only_a_name:?}: {err}"
        );
        assert!(err.to_string().contains("--client-identity"), "{err}");
    }
}

#[test]
fn dns_and_cn_identities_only_where_enabled() {
    let dns = ClientIdentity::Dns("worker.apps.internal".into());
    let cn = ClientIdentity::CommonName("billing".into());
    assert_eq!(
        read(dns.clone(), IdentitySources::UriDns).unwrap(),
        "worker.apps.internal"
    );
    assert!(read(cn.clone(), IdentitySources::UriDns).is_err());
    assert_eq!(
        read(dns, IdentitySources::UriDnsCn).unwrap(),
        "worker.apps.internal"
    );
    assert_eq!(read(cn, IdentitySources::UriDnsCn).unwrap(), "billing");
    let kind = read_names("billing", &[], &[], IdentitySources::UriDnsCn)
        .unwrap()
        .kind();
    assert_eq!(kind, IdentityKind::Cn);
}

#[test]
fn a_cn_that_looks_like_a_uri_is_never_a_uri_identity() {
    let forged = ClientIdentity::CommonName("spiffe://teresa.dev/operator".into());
    assert!(matches!(
        read(forged.clone(), IdentitySources::Uri),
        Err(IdentityRefused::NoIdentity { .. })
    ));
    let err = read(forged, IdentitySources::UriDnsCn).unwrap_err();
    assert!(
        matches!(
            err,
            IdentityRefused::Invalid {
                reason: IdentityError::NameLooksLikeUri,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn the_first_enabled_kind_present_decides_and_a_bad_one_is_not_passed_over() {
    let both = read_names(
        "client",
        &["spiffe://teresa.dev/ns/a/sa/b"],
        &["b.a.svc"],
        IdentitySources::UriDnsCn,
    )
    .unwrap();
    assert_eq!(both.kind(), IdentityKind::Uri);
    let err = read_names(
        "client",
        &["spiffe://teresa.dev/ns/a/../admin"],
        &["b.a.svc"],
        IdentitySources::UriDnsCn,
    )
    .unwrap_err();
    assert!(matches!(err, IdentityRefused::Invalid { .. }), "{err}");
}

#[test]
fn unnormalized_or_several_uri_sans_are_refused_with_the_reason() {
    for (uri, says) in [
        ("spiffe://teresa.dev/ns/app/../admin", "'..'"),
        ("spiffe://teresa.dev/ns/app/./sa", "'..'"),
        ("spiffe://teresa.dev/ns//sa", "empty"),
        ("spiffe://teresa.dev/ns/app/sa/%2e%2e", "percent-encoding"),
    ] {
        let err = read(ClientIdentity::Uri(uri.into()), IdentitySources::Uri).unwrap_err();
        assert!(err.to_string().contains(says), "{uri}: {err}");
    }
    let err = read_names(
        "client",
        &[
            "spiffe://teresa.dev/ns/a/sa/b",
            "spiffe://teresa.dev/operator",
        ],
        &[],
        IdentitySources::Uri,
    )
    .unwrap_err();
    assert!(
        matches!(err, IdentityRefused::Ambiguous { count: 2, .. }),
        "{err}"
    );
}
