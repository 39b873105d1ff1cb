use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use x509_parser::extensions::GeneralName;

use super::*;

/// A directory under the system temp dir, removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!(
            "teresa-certs-test-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        fs::create_dir(&path).expect("create scratch dir");
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM certificate")
}

fn roots(ca_pem: &str) -> Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(ca_pem)).expect("CA is a valid trust anchor");
    Arc::new(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn verify_server(ca_pem: &str, cert_pem: &str, name: &str) -> Result<(), rustls::Error> {
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca_pem), provider())
        .build()
        .expect("server verifier");
    let name = ServerName::try_from(name.to_owned()).expect("server name");
    verifier
        .verify_server_cert(&der(cert_pem), &[], &name, &[], UnixTime::now())
        .map(drop)
}

fn verify_client(ca_pem: &str, cert_pem: &str) -> Result<(), rustls::Error> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_pem), provider())
        .build()
        .expect("client verifier");
    verifier
        .verify_client_cert(&der(cert_pem), &[], UnixTime::now())
        .map(drop)
}

/// The SANs of a certificate as "DNS:x", "URI:x", "IP:x".
fn sans(cert_pem: &str) -> Vec<String> {
    let der = der(cert_pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("X.509");
    let Some(extension) = cert.subject_alternative_name().expect("SAN extension") else {
        return Vec::new();
    };
    extension
        .value
        .general_names
        .iter()
        .map(|name| match name {
            GeneralName::DNSName(dns) => format!("DNS:{dns}"),
            GeneralName::URI(uri) => format!("URI:{uri}"),
            GeneralName::IPAddress(bytes) => {
                let ip = match bytes.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(*bytes).expect("IPv4")),
                    _ => IpAddr::from(<[u8; 16]>::try_from(*bytes).expect("IPv6")),
                };
                format!("IP:{ip}")
            }
            other => format!("other:{other:?}"),
        })
        .collect()
}

fn common_name(cert_pem: &str) -> String {
    let der = der(cert_pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("X.509");
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .expect("a Common Name")
        .to_owned()
}

/// (serverAuth, clientAuth) from the extended key usage extension.
fn extended_key_usage(cert_pem: &str) -> (bool, bool) {
    let der = der(cert_pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("X.509");
    let eku = cert
        .extended_key_usage()
        .expect("EKU parses")
        .expect("EKU present")
        .value;
    (eku.server_auth, eku.client_auth)
}

fn serial_hex(cert_pem: &str) -> String {
    let der = der(cert_pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("X.509");
    cert.raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

fn loopback() -> [IpAddr; 2] {
    [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ]
}

#[test]
fn server_cert_verifies_against_the_ca_for_localhost_and_loopback_ips() {
    let ca = DevCa::generate().unwrap();
    let server = ca.issue_server(&["localhost"], &loopback()).unwrap();

    for name in ["localhost", "127.0.0.1", "::1"] {
        verify_server(ca.cert_pem(), &server.cert_pem, name)
            .unwrap_or_else(|e| panic!("{name} should verify: {e}"));
    }
}

#[test]
fn server_cert_is_rejected_for_other_names_and_by_another_ca() {
    let ca = DevCa::generate().unwrap();
    let other_ca = DevCa::generate().unwrap();
    let server = ca.issue_server(&["localhost"], &loopback()).unwrap();

    assert!(verify_server(ca.cert_pem(), &server.cert_pem, "example.com").is_err());
    assert!(verify_server(other_ca.cert_pem(), &server.cert_pem, "localhost").is_err());
}

#[test]
fn server_cert_is_for_server_auth_only_and_client_certs_for_client_auth_only() {
    let ca = DevCa::generate().unwrap();
    let server = ca.issue_server(&["localhost"], &[]).unwrap();
    let client = ca
        .issue_client(&ClientIdentity::Uri(DEV_CLIENT_IDENTITY.to_owned()))
        .unwrap();

    assert_eq!(extended_key_usage(&server.cert_pem), (true, false));
    assert_eq!(extended_key_usage(&client.cert_pem), (false, true));
    assert!(verify_client(ca.cert_pem(), &server.cert_pem).is_err());
    assert!(verify_server(ca.cert_pem(), &client.cert_pem, "localhost").is_err());
}

#[test]
fn client_cert_with_a_uri_identity_carries_only_that_uri_san() {
    let ca = DevCa::generate().unwrap();
    let identity = "spiffe://teresa.dev/ns/billing/sa/api";

    let client = ca
        .issue_client(&ClientIdentity::Uri(identity.to_owned()))
        .unwrap();

    assert_eq!(sans(&client.cert_pem), [format!("URI:{identity}")]);
    assert_eq!(common_name(&client.cert_pem), "Teresa dev client");
    verify_client(ca.cert_pem(), &client.cert_pem).unwrap();
}

#[test]
fn client_cert_with_a_dns_identity_carries_only_that_dns_san() {
    let ca = DevCa::generate().unwrap();

    let client = ca
        .issue_client(&ClientIdentity::Dns("billing.apps.svc".to_owned()))
        .unwrap();

    assert_eq!(sans(&client.cert_pem), ["DNS:billing.apps.svc"]);
    verify_client(ca.cert_pem(), &client.cert_pem).unwrap();
}

#[test]
fn client_cert_with_a_common_name_identity_has_no_san() {
    let ca = DevCa::generate().unwrap();

    let client = ca
        .issue_client(&ClientIdentity::CommonName("legacy-billing".to_owned()))
        .unwrap();

    assert!(sans(&client.cert_pem).is_empty());
    assert_eq!(common_name(&client.cert_pem), "legacy-billing");
    verify_client(ca.cert_pem(), &client.cert_pem).unwrap();
}

#[test]
fn a_name_that_cannot_be_a_san_is_an_error_naming_it() {
    let ca = DevCa::generate().unwrap();

    let error = ca.issue_server(&["bücher.example"], &[]).unwrap_err();

    assert!(matches!(error, CertError::InvalidName { kind: "DNS", .. }));
    assert!(error.to_string().contains("bücher.example"), "{error}");
}

#[test]
fn serial_numbers_are_random_and_reported_in_hex() {
    let ca = DevCa::generate().unwrap();

    let first = ca.issue_server(&["localhost"], &[]).unwrap();
    let second = ca.issue_server(&["localhost"], &[]).unwrap();

    assert_ne!(first.serial_hex, second.serial_hex);
    assert_eq!(first.serial_hex.len(), 32);
    assert_eq!(serial_hex(&first.cert_pem), first.serial_hex);
    assert_eq!(serial_hex(&second.cert_pem), second.serial_hex);
}

#[test]
fn a_loaded_ca_issues_certs_that_chain_to_the_original_ca_cert() {
    let original = DevCa::generate().unwrap();

    let loaded = DevCa::load(original.cert_pem(), &original.key_pem()).unwrap();
    let server = loaded.issue_server(&["localhost"], &[]).unwrap();
    let client = loaded
        .issue_client(&ClientIdentity::CommonName("cn-only".to_owned()))
        .unwrap();

    verify_server(original.cert_pem(), &server.cert_pem, "localhost").unwrap();
    verify_client(original.cert_pem(), &client.cert_pem).unwrap();
}

#[test]
fn loading_a_ca_with_a_foreign_key_or_a_non_certificate_fails() {
    let ca = DevCa::generate().unwrap();
    let other = DevCa::generate().unwrap();

    let mismatch = DevCa::load(ca.cert_pem(), &other.key_pem()).unwrap_err();
    let not_a_cert = DevCa::load(&ca.key_pem(), &ca.key_pem()).unwrap_err();

    assert!(matches!(mismatch, CertError::CaKeyMismatch), "{mismatch}");
    assert!(
        matches!(not_a_cert, CertError::InvalidCertificate { .. }),
        "{not_a_cert}"
    );
}

#[test]
fn issued_cert_write_makes_the_key_owner_only() {
    let dir = ScratchDir::new();
    let ca = DevCa::generate().unwrap();
    let issued = ca.issue_server(&["localhost"], &[]).unwrap();
    let (cert_path, key_path) = (
        dir.path().join("sub/cert.pem"),
        dir.path().join("sub/key.pem"),
    );

    issued.write(&cert_path, &key_path).unwrap();

    assert_eq!(fs::read_to_string(&cert_path).unwrap(), issued.cert_pem);
    assert_eq!(fs::read_to_string(&key_path).unwrap(), issued.key_pem);
    assert_eq!(mode(&key_path), 0o600);
    assert_eq!(mode(&cert_path), 0o644);
}

#[test]
fn dev_certs_are_written_with_identities_and_private_keys_0600() {
    let dir = ScratchDir::new();
    let options = DevCertOptions {
        extra_dns_names: vec!["pooler.teresa.svc".to_owned()],
        force: false,
    };

    let paths = generate_dev_certs_with(dir.path(), &options).unwrap();

    assert!(!paths.reused_existing);
    let read = |path: &Path| fs::read_to_string(path).unwrap();
    let ca_pem = read(&paths.ca_cert);
    assert_eq!(common_name(&ca_pem), DEV_CA_COMMON_NAME);
    let server_pem = read(&paths.server_cert);
    assert_eq!(
        sans(&server_pem),
        [
            "DNS:localhost",
            "DNS:pooler.teresa.svc",
            "IP:127.0.0.1",
            "IP:::1"
        ]
    );
    verify_server(&ca_pem, &server_pem, "pooler.teresa.svc").unwrap();
    let client_pem = read(&paths.client_cert);
    assert_eq!(sans(&client_pem), [format!("URI:{DEV_CLIENT_IDENTITY}")]);
    verify_client(&ca_pem, &client_pem).unwrap();
    let operator_pem = read(&paths.operator_cert);
    assert_eq!(
        sans(&operator_pem),
        [format!("URI:{DEV_OPERATOR_IDENTITY}")]
    );
    verify_client(&ca_pem, &operator_pem).unwrap();
    for key in [
        &paths.ca_key,
        &paths.server_key,
        &paths.client_key,
        &paths.operator_key,
    ] {
        assert_eq!(mode(key), 0o600, "{}", key.display());
    }
    for cert in [
        &paths.ca_cert,
        &paths.server_cert,
        &paths.client_cert,
        &paths.operator_cert,
    ] {
        assert_eq!(mode(cert), 0o644, "{}", cert.display());
    }
    assert_eq!(paths.server_cert, dir.path().join("cert.pem"));
    assert_eq!(paths.server_key, dir.path().join("key.pem"));
    assert_eq!(paths.operator_key, dir.path().join("operator-key.pem"));
}

#[test]
fn dev_certs_are_kept_when_usable_and_replaced_when_forced() {
    let dir = ScratchDir::new();
    let first = generate_dev_certs(dir.path()).unwrap();
    let ca_before = fs::read_to_string(&first.ca_cert).unwrap();
    let server_before = fs::read_to_string(&first.server_cert).unwrap();

    let second = generate_dev_certs(dir.path()).unwrap();

    assert!(second.reused_existing);
    assert_eq!(fs::read_to_string(&second.ca_cert).unwrap(), ca_before);
    assert_eq!(
        fs::read_to_string(&second.server_cert).unwrap(),
        server_before
    );

    let forced = DevCertOptions {
        force: true,
        ..DevCertOptions::default()
    };
    let third = generate_dev_certs_with(dir.path(), &forced).unwrap();

    assert!(!third.reused_existing);
    let ca_after = fs::read_to_string(&third.ca_cert).unwrap();
    assert_ne!(ca_after, ca_before);
    verify_server(
        &ca_after,
        &fs::read_to_string(&third.server_cert).unwrap(),
        "localhost",
    )
    .unwrap();
    verify_client(
        &ca_after,
        &fs::read_to_string(&third.operator_cert).unwrap(),
    )
    .unwrap();
}

#[test]
fn dev_certs_are_regenerated_when_an_existing_file_does_not_parse() {
    let dir = ScratchDir::new();
    let first = generate_dev_certs(dir.path()).unwrap();
    let ca_before = fs::read_to_string(&first.ca_cert).unwrap();
    fs::write(&first.server_key, "not a key").unwrap();

    let second = generate_dev_certs(dir.path()).unwrap();

    assert!(!second.reused_existing);
    let ca_after = fs::read_to_string(&second.ca_cert).unwrap();
    assert_ne!(ca_after, ca_before);
    verify_server(
        &ca_after,
        &fs::read_to_string(&second.server_cert).unwrap(),
        "localhost",
    )
    .unwrap();
}

#[test]
fn dev_certs_are_regenerated_when_the_server_cert_lacks_a_requested_name() {
    let dir = ScratchDir::new();
    let first = generate_dev_certs(dir.path()).unwrap();
    let ca_before = fs::read_to_string(&first.ca_cert).unwrap();
    let options = DevCertOptions {
        extra_dns_names: vec!["db-pooler.internal".to_owned()],
        force: false,
    };

    let second = generate_dev_certs_with(dir.path(), &options).unwrap();

    assert!(!second.reused_existing);
    assert_ne!(fs::read_to_string(&second.ca_cert).unwrap(), ca_before);
    let server_pem = fs::read_to_string(&second.server_cert).unwrap();
    assert!(sans(&server_pem).contains(&"DNS:db-pooler.internal".to_owned()));
}

#[test]
fn dev_certs_are_regenerated_when_the_server_cert_is_signed_by_another_ca() {
    let dir = ScratchDir::new();
    let first = generate_dev_certs(dir.path()).unwrap();
    // Same subject name "Teresa dev CA", different key: only a signature check tells them apart.
    let impostor = DevCa::generate()
        .unwrap()
        .issue_server(&["localhost"], &loopback())
        .unwrap();
    impostor
        .write(&first.server_cert, &first.server_key)
        .unwrap();

    let second = generate_dev_certs(dir.path()).unwrap();

    assert!(!second.reused_existing);
    let ca_pem = fs::read_to_string(&second.ca_cert).unwrap();
    let server_pem = fs::read_to_string(&second.server_cert).unwrap();
    assert_ne!(server_pem, impostor.cert_pem);
    verify_server(&ca_pem, &server_pem, "localhost").unwrap();
}

#[test]
fn a_client_cert_signed_by_another_ca_is_reissued() {
    let dir = ScratchDir::new();
    let first = generate_dev_certs(dir.path()).unwrap();
    let foreign = DevCa::generate()
        .unwrap()
        .issue_client(&ClientIdentity::Uri(DEV_CLIENT_IDENTITY.to_owned()))
        .unwrap();
    foreign
        .write(&first.client_cert, &first.client_key)
        .unwrap();

    let second = generate_dev_certs(dir.path()).unwrap();

    assert!(second.reused_existing);
    let ca_pem = fs::read_to_string(&second.ca_cert).unwrap();
    let client_pem = fs::read_to_string(&second.client_cert).unwrap();
    assert_ne!(client_pem, foreign.cert_pem);
    verify_client(&ca_pem, &client_pem).unwrap();
}

#[test]
fn a_missing_client_cert_is_reissued_from_the_kept_ca() {
    let dir = ScratchDir::new();
    let first = generate_dev_certs(dir.path()).unwrap();
    let server_before = fs::read_to_string(&first.server_cert).unwrap();
    fs::remove_file(&first.operator_cert).unwrap();

    let second = generate_dev_certs(dir.path()).unwrap();

    assert!(second.reused_existing);
    assert_eq!(
        fs::read_to_string(&second.server_cert).unwrap(),
        server_before
    );
    let ca_pem = fs::read_to_string(&second.ca_cert).unwrap();
    let operator_pem = fs::read_to_string(&second.operator_cert).unwrap();
    assert_eq!(
        sans(&operator_pem),
        [format!("URI:{DEV_OPERATOR_IDENTITY}")]
    );
    verify_client(&ca_pem, &operator_pem).unwrap();
    assert_eq!(mode(&second.operator_key), 0o600);
}

#[test]
fn a_missing_client_cert_without_the_ca_key_is_an_actionable_error() {
    let dir = ScratchDir::new();
    let first = generate_dev_certs(dir.path()).unwrap();
    fs::remove_file(&first.ca_key).unwrap();
    fs::remove_file(&first.client_cert).unwrap();

    let error = generate_dev_certs(dir.path()).unwrap_err();

    assert!(
        matches!(error, CertError::CaKeyUnavailable { .. }),
        "{error}"
    );
    let message = error.to_string();
    assert!(
        message.contains("client.pem") && message.contains("ca-key.pem"),
        "{message}"
    );
}

#[test]
fn debug_output_never_shows_a_private_key() {
    let ca = DevCa::generate().unwrap();
    let issued = ca.issue_server(&["localhost"], &[]).unwrap();

    let debug = format!("{issued:?} {ca:?}");

    assert!(!debug.contains("PRIVATE KEY"), "{debug}");
    assert!(debug.contains(&issued.serial_hex));
}
