use super::*;
use crate::certs::{ClientIdentity, DevCa};

fn identity(of: ClientIdentity) -> Option<String> {
    let issued = DevCa::generate().unwrap().issue_client(&of).unwrap();
    let der = rustls_pemfile::certs(&mut issued.cert_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    identity_of(&der)
}

#[test]
fn the_identity_is_the_uri_san_else_the_dns_san_else_the_common_name() {
    assert_eq!(
        identity(ClientIdentity::Uri("spiffe://teresa.dev/ns/a/sa/b".into())).as_deref(),
        Some("spiffe://teresa.dev/ns/a/sa/b")
    );
    assert_eq!(
        identity(ClientIdentity::Dns("worker.apps.internal".into())).as_deref(),
        Some("worker.apps.internal")
    );
    assert_eq!(
        identity(ClientIdentity::CommonName("billing".into())).as_deref(),
        Some("billing")
    );
}
