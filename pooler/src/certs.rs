//! Development certificates: a throwaway CA and the certificates it issues.
//!
//! `teresa-pooler dev` calls [`generate_dev_certs`] so the lease API, the
//! health endpoints and the admin API can serve TLS (and mTLS) on a laptop
//! with no cert-manager. Tests use the in-memory [`DevCa`] to mint server
//! certificates and client certificates carrying whatever identity a test
//! needs (URI SAN, DNS SAN, or only a Common Name).
//!
//! Keys are ECDSA P-256; every certificate gets a random serial number.
//! Private key files are written with mode 0600. Files are written to a
//! temporary name and renamed into place, so a pooler watching them for
//! rotation never reads a half-written file.

use std::fmt;
use std::fs;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PublicKeyData as _, SanType, SerialNumber,
};
use x509_parser::asn1_rs::Tag;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::x509::X509Name;

/// Common Name of the development CA.
pub const DEV_CA_COMMON_NAME: &str = "Teresa dev CA";
/// Client identity (URI SAN) of the dev client certificate `client.pem`.
pub const DEV_CLIENT_IDENTITY: &str = "spiffe://teresa.dev/client/dev";
/// Client identity (URI SAN) of `operator.pem`: the pooler's default admin identity.
pub const DEV_OPERATOR_IDENTITY: &str = "spiffe://teresa.dev/operator";

const ORGANIZATION: &str = "Teresa";
const SERVER_COMMON_NAME: &str = "Teresa dev server";
/// Common Name of client certificates whose identity is a SAN, kept distinct
/// from any identity so a test can tell which one the pooler read.
const CLIENT_COMMON_NAME: &str = "Teresa dev client";
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const LEAF_VALIDITY: Duration = Duration::from_secs(2 * 365 * 24 * 3600);
/// Back-dating tolerates clocks that differ slightly between machines.
const BACKDATE: Duration = Duration::from_secs(3600);

/// Errors from generating, loading or writing development certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused to build a key or certificate.
    #[error("could not generate the {what}: {source}")]
    Generate {
        /// What was being generated, e.g. "server certificate".
        what: &'static str,
        /// The underlying rcgen error.
        #[source]
        source: rcgen::Error,
    },
    /// A name cannot be put in a certificate (e.g. a non-ASCII DNS name).
    #[error("{name:?} cannot be used as a {kind} subject alternative name: {source}")]
    InvalidName {
        /// The offending name.
        name: String,
        /// "DNS" or "URI".
        kind: &'static str,
        /// Why rcgen rejected it.
        #[source]
        source: rcgen::Error,
    },
    /// A PEM input does not hold a usable X.509 certificate.
    #[error("the {what} is not a PEM-encoded X.509 certificate: {reason}")]
    InvalidCertificate {
        /// Which certificate, e.g. "CA certificate".
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A PEM input does not hold a usable private key.
    #[error("the {what} is not a PEM-encoded private key rcgen can sign with: {source}")]
    InvalidKey {
        /// Which key, e.g. "CA key".
        what: String,
        /// The underlying rcgen error.
        #[source]
        source: rcgen::Error,
    },
    /// The CA key and CA certificate are not a pair.
    #[error(
        "the CA key does not belong to the CA certificate; supply the key the CA was created with"
    )]
    CaKeyMismatch,
    /// The CA certificate's subject uses an encoding that cannot be reproduced
    /// in the issuer field of new certificates, so they would not chain.
    #[error(
        "the CA certificate's subject name cannot be reproduced ({reason}); use a CA whose subject has single-valued UTF8String or PrintableString attributes"
    )]
    UnsupportedCaSubject {
        /// What could not be reproduced.
        reason: String,
    },
    /// Existing server certificates are kept, but the client certificates are
    /// missing and cannot be issued without the CA key.
    #[error(
        "{missing} is missing or invalid and cannot be issued because the CA key {ca_key} is missing or does not match ca.pem; add the CA key or regenerate all dev certificates with force"
    )]
    CaKeyUnavailable {
        /// The certificate that could not be issued.
        missing: PathBuf,
        /// Where the CA key was expected.
        ca_key: PathBuf,
    },
    /// A file or directory operation failed.
    #[error("could not {action} {path}: {source}")]
    Io {
        /// What was being done, e.g. "write".
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// The identity a client certificate carries, as the pooler reads it for
/// `allowedClients` and the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientIdentity {
    /// A URI SAN, e.g. `spiffe://teresa.dev/client/dev`.
    Uri(String),
    /// A DNS SAN, e.g. `billing.apps.svc`.
    Dns(String),
    /// No SAN at all: only the subject Common Name.
    CommonName(String),
}

/// A certificate and its private key, both PEM-encoded.
#[derive(Clone)]
pub struct IssuedCert {
    /// The certificate (one PEM block, without the CA).
    pub cert_pem: String,
    /// The PKCS#8 private key. Secret: never log it.
    pub key_pem: String,
    /// The serial number as lowercase hex without separators.
    pub serial_hex: String,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("serial_hex", &self.serial_hex)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl IssuedCert {
    /// Writes the certificate (mode 0644) and the key (mode 0600), each
    /// atomically, creating missing parent directories.
    pub fn write(&self, cert_path: &Path, key_path: &Path) -> Result<(), CertError> {
        write_atomically(cert_path, self.cert_pem.as_bytes(), PUBLIC_MODE)?;
        write_atomically(key_path, self.key_pem.as_bytes(), PRIVATE_MODE)
    }
}

/// A development certificate authority held in memory.
pub struct DevCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for DevCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

impl DevCa {
    /// Creates a new self-signed CA named [`DEV_CA_COMMON_NAME`], valid for ten years.
    pub fn generate() -> Result<Self, CertError> {
        let key = KeyPair::generate().map_err(generate_error("CA key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(DEV_CA_COMMON_NAME);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_VALIDITY);
        params.serial_number = Some(random_serial().0);
        let cert = params
            .self_signed(&key)
            .map_err(generate_error("CA certificate"))?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads an existing CA from its PEM certificate and PEM private key.
    ///
    /// Certificates issued afterwards chain to that CA certificate.
    pub fn load(ca_pem: &str, ca_key_pem: &str) -> Result<Self, CertError> {
        let der = pem_certificate_der(ca_pem, "CA certificate")?;
        let ca = parse_der(&der, "CA certificate")?;
        let key = KeyPair::from_pem(ca_key_pem).map_err(|source| CertError::InvalidKey {
            what: "CA key".to_owned(),
            source,
        })?;
        if ca.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(CertError::CaKeyMismatch);
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = reproduce_name(ca.subject())?;
        // Authority key identifiers must name the CA's own subject key identifier.
        params.key_identifier_method = match subject_key_identifier(&ca) {
            Some(ski) => KeyIdMethod::PreSpecified(ski),
            None => KeyIdMethod::Sha256,
        };
        let loaded = Self {
            cert_pem: ca_pem.to_owned(),
            issuer: Issuer::new(params, key),
        };
        loaded.check_issuer_name_matches(&ca)?;
        Ok(loaded)
    }

    /// The CA certificate, PEM-encoded.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PEM-encoded (PKCS#8). Secret: never log it.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Writes the CA certificate (mode 0644) and key (mode 0600) atomically.
    pub fn write(&self, cert_path: &Path, key_path: &Path) -> Result<(), CertError> {
        write_atomically(cert_path, self.cert_pem.as_bytes(), PUBLIC_MODE)?;
        write_atomically(key_path, self.key_pem().as_bytes(), PRIVATE_MODE)
    }

    /// Issues a TLS server certificate (serverAuth) for the given DNS names
    /// and IP addresses.
    pub fn issue_server(
        &self,
        dns_names: &[&str],
        ips: &[IpAddr],
    ) -> Result<IssuedCert, CertError> {
        let mut sans = dns_names
            .iter()
            .map(|name| Ok(SanType::DnsName(ia5(name, "DNS")?)))
            .collect::<Result<Vec<_>, CertError>>()?;
        sans.extend(ips.iter().copied().map(SanType::IpAddress));
        self.issue(
            "server certificate",
            SERVER_COMMON_NAME,
            sans,
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// Issues a TLS client certificate (clientAuth) carrying `identity`.
    ///
    /// A URI or DNS identity becomes the only SAN and the Common Name is a
    /// fixed "Teresa dev client"; a Common Name identity yields a certificate
    /// with no SAN at all.
    pub fn issue_client(&self, identity: &ClientIdentity) -> Result<IssuedCert, CertError> {
        let (common_name, sans) = match identity {
            ClientIdentity::Uri(uri) => (CLIENT_COMMON_NAME, vec![SanType::URI(ia5(uri, "URI")?)]),
            ClientIdentity::Dns(name) => (
                CLIENT_COMMON_NAME,
                vec![SanType::DnsName(ia5(name, "DNS")?)],
            ),
            ClientIdentity::CommonName(cn) => (cn.as_str(), Vec::new()),
        };
        self.issue(
            "client certificate",
            common_name,
            sans,
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    /// Issues a client certificate (clientAuth) with exactly these names:
    /// the subject Common Name and any number of URI and DNS SANs. For
    /// certificates [`ClientIdentity`] cannot describe, such as several URI
    /// SANs.
    pub fn issue_client_names(
        &self,
        common_name: &str,
        uris: &[&str],
        dns_names: &[&str],
    ) -> Result<IssuedCert, CertError> {
        let mut sans = Vec::with_capacity(uris.len() + dns_names.len());
        for uri in uris {
            sans.push(SanType::URI(ia5(uri, "URI")?));
        }
        for name in dns_names {
            sans.push(SanType::DnsName(ia5(name, "DNS")?));
        }
        self.issue(
            "client certificate",
            common_name,
            sans,
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    fn issue(
        &self,
        what: &'static str,
        common_name: &str,
        subject_alt_names: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<IssuedCert, CertError> {
        let key = KeyPair::generate().map_err(generate_error(what))?;
        let (serial, serial_hex) = random_serial();
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(common_name);
        params.subject_alt_names = subject_alt_names;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(serial);
        set_validity(&mut params, LEAF_VALIDITY);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(generate_error(what))?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial_hex,
        })
    }

    /// Signs a probe certificate and checks its issuer field is byte-for-byte
    /// the CA's subject, which is what verifiers compare when building a chain.
    fn check_issuer_name_matches(&self, ca: &X509Certificate<'_>) -> Result<(), CertError> {
        let mut probe = CertificateParams::default();
        probe.serial_number = Some(random_serial().0);
        let cert = probe
            .signed_by(self.issuer.key(), &self.issuer)
            .map_err(generate_error("probe certificate"))?;
        let parsed = parse_der(cert.der(), "probe certificate")?;
        if parsed.issuer().as_raw() == ca.subject().as_raw() {
            Ok(())
        } else {
            Err(CertError::UnsupportedCaSubject {
                reason: "re-encoding changed its bytes".to_owned(),
            })
        }
    }
}

/// Options for [`generate_dev_certs_with`].
#[derive(Debug, Clone, Default)]
pub struct DevCertOptions {
    /// DNS names for the server certificate besides `localhost`, e.g. a
    /// hostname other machines reach the pooler by.
    pub extra_dns_names: Vec<String>,
    /// Regenerate everything even if usable certificates already exist.
    pub force: bool,
}

/// Where [`generate_dev_certs`] put the development certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevCertPaths {
    /// The dev CA certificate, `ca.pem`: what clients trust.
    pub ca_cert: PathBuf,
    /// The dev CA key, `ca-key.pem`.
    pub ca_key: PathBuf,
    /// The server certificate, `cert.pem`.
    pub server_cert: PathBuf,
    /// The server key, `key.pem`.
    pub server_key: PathBuf,
    /// The dev client certificate, `client.pem`, identity [`DEV_CLIENT_IDENTITY`].
    pub client_cert: PathBuf,
    /// The dev client key, `client-key.pem`.
    pub client_key: PathBuf,
    /// The operator client certificate, `operator.pem`, identity [`DEV_OPERATOR_IDENTITY`].
    pub operator_cert: PathBuf,
    /// The operator client key, `operator-key.pem`.
    pub operator_key: PathBuf,
    /// True when the existing CA and server certificate were kept.
    pub reused_existing: bool,
}

impl DevCertPaths {
    fn in_dir(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca-key.pem"),
            server_cert: dir.join("cert.pem"),
            server_key: dir.join("key.pem"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client-key.pem"),
            operator_cert: dir.join("operator.pem"),
            operator_key: dir.join("operator-key.pem"),
            reused_existing: false,
        }
    }
}

/// Writes the development certificates into `out_dir` with default options:
/// server names `localhost`, `127.0.0.1` and `::1`, existing usable
/// certificates kept.
pub fn generate_dev_certs(out_dir: &Path) -> Result<DevCertPaths, CertError> {
    generate_dev_certs_with(out_dir, &DevCertOptions::default())
}

/// Writes the development certificates into `out_dir` (created if missing).
///
/// Unless `options.force` is set, an existing `ca.pem`, `cert.pem` and
/// `key.pem` are kept when they parse, `key.pem` is the certificate's key,
/// and the certificate verifies against that CA today for `localhost` and
/// every extra DNS name; missing or unusable client certificates are then
/// issued from `ca-key.pem`. Otherwise every file is regenerated under a new
/// CA.
pub fn generate_dev_certs_with(
    out_dir: &Path,
    options: &DevCertOptions,
) -> Result<DevCertPaths, CertError> {
    fs::create_dir_all(out_dir).map_err(io_error("create directory", out_dir))?;
    let mut paths = DevCertPaths::in_dir(out_dir);
    if !options.force && existing_server_set_is_usable(&paths, options) {
        paths.reused_existing = true;
        issue_missing_client_certs(&paths)?;
        return Ok(paths);
    }

    let ca = DevCa::generate()?;
    let mut dns_names = vec!["localhost"];
    dns_names.extend(options.extra_dns_names.iter().map(String::as_str));
    let server = ca.issue_server(
        &dns_names,
        &[
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ],
    )?;
    let client = ca.issue_client(&ClientIdentity::Uri(DEV_CLIENT_IDENTITY.to_owned()))?;
    let operator = ca.issue_client(&ClientIdentity::Uri(DEV_OPERATOR_IDENTITY.to_owned()))?;
    // Leaves first, CA last: a reader that sees the new CA also sees leaves it signed.
    server.write(&paths.server_cert, &paths.server_key)?;
    client.write(&paths.client_cert, &paths.client_key)?;
    operator.write(&paths.operator_cert, &paths.operator_key)?;
    ca.write(&paths.ca_cert, &paths.ca_key)?;
    Ok(paths)
}

/// Whether `ca.pem`, `cert.pem` and `key.pem` can be kept: the CA is valid
/// now, the server certificate verifies against it (signature, validity,
/// serverAuth) for `localhost` and every requested extra name, and the key
/// belongs to the certificate.
fn existing_server_set_is_usable(paths: &DevCertPaths, options: &DevCertOptions) -> bool {
    let (Some(ca_der), Some(cert_der), Some(key)) = (
        read_certificate(&paths.ca_cert),
        read_certificate(&paths.server_cert),
        read_key(&paths.server_key),
    ) else {
        return false;
    };
    let ca_is_valid = parse_der(&ca_der, "CA certificate").is_ok_and(|ca| ca.validity().is_valid());
    let names =
        std::iter::once("localhost").chain(options.extra_dns_names.iter().map(String::as_str));
    ca_is_valid
        && key_belongs_to(&cert_der, &key)
        && names
            .into_iter()
            .all(|name| verify_leaf(&ca_der, &cert_der, LeafUsage::Server(name)))
}

fn issue_missing_client_certs(paths: &DevCertPaths) -> Result<(), CertError> {
    let wanted = [
        (&paths.client_cert, &paths.client_key, DEV_CLIENT_IDENTITY),
        (
            &paths.operator_cert,
            &paths.operator_key,
            DEV_OPERATOR_IDENTITY,
        ),
    ];
    let missing: Vec<_> = wanted
        .into_iter()
        .filter(|(cert_path, key_path, _)| !client_cert_is_usable(paths, cert_path, key_path))
        .collect();
    let Some((first_missing, _, _)) = missing.first() else {
        return Ok(());
    };
    let ca = load_ca_files(paths).map_err(|_| CertError::CaKeyUnavailable {
        missing: first_missing.to_path_buf(),
        ca_key: paths.ca_key.clone(),
    })?;
    for (cert_path, key_path, identity) in &missing {
        ca.issue_client(&ClientIdentity::Uri((*identity).to_owned()))?
            .write(cert_path, key_path)?;
    }
    Ok(())
}

/// Whether a client certificate verifies against `ca.pem` for clientAuth
/// and its key belongs to it.
fn client_cert_is_usable(paths: &DevCertPaths, cert_path: &Path, key_path: &Path) -> bool {
    let (Some(ca_der), Some(cert_der), Some(key)) = (
        read_certificate(&paths.ca_cert),
        read_certificate(cert_path),
        read_key(key_path),
    ) else {
        return false;
    };
    key_belongs_to(&cert_der, &key) && verify_leaf(&ca_der, &cert_der, LeafUsage::Client)
}

fn read_certificate(path: &Path) -> Option<Vec<u8>> {
    let pem = fs::read_to_string(path).ok()?;
    pem_certificate_der(&pem, "certificate").ok()
}

fn read_key(path: &Path) -> Option<KeyPair> {
    KeyPair::from_pem(&fs::read_to_string(path).ok()?).ok()
}

fn key_belongs_to(cert_der: &[u8], key: &KeyPair) -> bool {
    parse_der(cert_der, "certificate")
        .is_ok_and(|cert| cert.public_key().raw == key.subject_public_key_info().as_slice())
}

/// What a leaf certificate must be good for.
enum LeafUsage<'a> {
    /// serverAuth, for this DNS name.
    Server(&'a str),
    /// clientAuth.
    Client,
}

/// Verifies `cert_der` against the single trust anchor `ca_der` the way a
/// rustls peer would: signature, validity period and extended key usage.
fn verify_leaf(ca_der: &[u8], cert_der: &[u8], usage: LeafUsage<'_>) -> bool {
    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier as _;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::server::WebPkiClientVerifier;

    let mut roots = rustls::RootCertStore::empty();
    if roots.add(CertificateDer::from(ca_der.to_vec())).is_err() {
        return false;
    }
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = CertificateDer::from(cert_der);
    match usage {
        LeafUsage::Server(name) => {
            let Ok(name) = ServerName::try_from(name.to_owned()) else {
                return false;
            };
            WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .is_ok_and(|verifier| {
                    verifier
                        .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
                        .is_ok()
                })
        }
        LeafUsage::Client => WebPkiClientVerifier::builder_with_provider(roots, provider)
            .build()
            .is_ok_and(|verifier| {
                verifier
                    .verify_client_cert(&cert, &[], UnixTime::now())
                    .is_ok()
            }),
    }
}

fn load_ca_files(paths: &DevCertPaths) -> Result<DevCa, CertError> {
    let ca_pem = fs::read_to_string(&paths.ca_cert).map_err(io_error("read", &paths.ca_cert))?;
    let key_pem = fs::read_to_string(&paths.ca_key).map_err(io_error("read", &paths.ca_key))?;
    DevCa::load(&ca_pem, &key_pem)
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, ORGANIZATION);
    name.push(DnType::CommonName, common_name);
    name
}

/// Rebuilds an rcgen name from a parsed one, keeping each attribute's string type.
fn reproduce_name(name: &X509Name<'_>) -> Result<DistinguishedName, CertError> {
    let unsupported = |reason: &str| CertError::UnsupportedCaSubject {
        reason: reason.to_owned(),
    };
    let mut out = DistinguishedName::new();
    for rdn in name.iter() {
        let mut attributes = rdn.iter();
        let (Some(attribute), None) = (attributes.next(), attributes.next()) else {
            return Err(unsupported("a multi-valued or empty relative name"));
        };
        let oid: Vec<u64> = attribute
            .attr_type()
            .iter()
            .ok_or_else(|| unsupported("an attribute type too large to encode"))?
            .collect();
        let value = attribute.attr_value();
        let text = std::str::from_utf8(value.data)
            .map_err(|_| unsupported("an attribute that is not valid UTF-8"))?;
        let value = match value.tag() {
            Tag::Utf8String => DnValue::Utf8String(text.to_owned()),
            Tag::PrintableString => DnValue::PrintableString(
                text.try_into()
                    .map_err(|_| unsupported("an invalid PrintableString"))?,
            ),
            Tag::Ia5String => DnValue::Ia5String(
                text.try_into()
                    .map_err(|_| unsupported("an invalid IA5String"))?,
            ),
            _ => {
                return Err(unsupported(
                    "an attribute string type other than UTF8, Printable or IA5",
                ));
            }
        };
        out.push(DnType::from_oid(&oid), value);
    }
    Ok(out)
}

fn subject_key_identifier(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|extension| match extension.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        })
}

fn pem_certificate_der(pem: &str, what: &str) -> Result<Vec<u8>, CertError> {
    let invalid = |reason: String| CertError::InvalidCertificate {
        what: what.to_owned(),
        reason,
    };
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| invalid(format!("no PEM block ({e})")))?;
    if block.label != "CERTIFICATE" {
        return Err(invalid(format!(
            "the PEM block is a {:?}, not a CERTIFICATE",
            block.label
        )));
    }
    Ok(block.contents)
}

fn parse_der<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>, CertError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|e| CertError::InvalidCertificate {
            what: what.to_owned(),
            reason: e.to_string(),
        })
}

fn ia5(name: &str, kind: &'static str) -> Result<Ia5String, CertError> {
    Ia5String::try_from(name).map_err(|source| CertError::InvalidName {
        name: name.to_owned(),
        kind,
        source,
    })
}

/// A random positive 128-bit serial, as rcgen wants it and as lowercase hex.
fn random_serial() -> (SerialNumber, String) {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and without a leading zero byte, so the DER integer keeps all 16 bytes.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    let hex = bytes.iter().map(|b| format!("{b:02x}")).collect();
    (SerialNumber::from_slice(&bytes), hex)
}

fn set_validity(params: &mut CertificateParams, lifetime: Duration) {
    // rcgen's date type is reachable only through its values; the Unix epoch
    // plus the time since it is "now" without naming the `time` crate.
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
    params.not_before = now - BACKDATE;
    params.not_after = now + lifetime;
}

fn generate_error(what: &'static str) -> impl FnOnce(rcgen::Error) -> CertError {
    move |source| CertError::Generate { what, source }
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CertError {
    let path = path.to_path_buf();
    move |source| CertError::Io {
        action,
        path,
        source,
    }
}

const PUBLIC_MODE: u32 = 0o644;
const PRIVATE_MODE: u32 = 0o600;

/// Writes `contents` to a temporary sibling created with `mode`, then renames
/// it over `path`, so readers see the old file or the new one, never a mix.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = dir.join(format!(".{file_name}.{:016x}.tmp", rand::random::<u64>()));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temporary)
            .map_err(io_error("create", &temporary))?;
        // The umask may have narrowed the creation mode; public files must stay readable.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_error("set permissions on", &temporary))?;
        file.write_all(contents)
            .map_err(io_error("write", &temporary))?;
        file.sync_all().map_err(io_error("write", &temporary))?;
        fs::rename(&temporary, path).map_err(io_error("replace", path))
    })();
    if result.is_err() {
        // Best effort: the error being returned is the one worth reporting.
        let _ = fs::remove_file(&temporary);
    }
    result
}

#[cfg(test)]
mod tests;
