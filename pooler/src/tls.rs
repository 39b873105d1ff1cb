//! TLS for every listener of the pooler, through our own tokio-rustls
//! acceptor (tonic's TLS cannot rotate certificates). The server
//! configuration sits in an `ArcSwap`; a watcher rebuilds it when the
//! certificate, key or client CA files change (cert-manager rewrites them in
//! place), so new handshakes use the new files while open connections keep
//! theirs. A broken new file keeps the old configuration and logs an error.
//! Peer identity comes from the client certificate, read once at the
//! handshake by the listener's [`IdentitySources`]: its one URI SAN (SPIFFE
//! style) by default; a DNS SAN or the CN only where enabled.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use teresa_proto::identity::{Identity, IdentityError, IdentityKind};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tracing::{debug, error, info};

/// How often certificate files are checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Loading TLS material failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} file {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} file {path} holds no PEM {expected}")]
    Empty {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("invalid TLS material ({0})")]
    Rustls(String),
}

/// Where a listener's TLS material lives.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
    /// ALPN protocols offered, most preferred first.
    pub alpn: Vec<Vec<u8>>,
}

impl TlsFiles {
    fn build(&self) -> Result<ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = read_certs(&self.cert, "certificate")?;
        let key = read_key(&self.key)?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certs(ca, "client CA")? {
                    roots.add(cert).map_err(|e| {
                        TlsError::Rustls(format!("client CA {}: {e}", ca.display()))
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| TlsError::Rustls(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Rustls(format!("certificate and key do not fit: {e}")))?;
        config.alpn_protocols = self.alpn.clone();
        Ok(config)
    }

    fn fingerprint(&self) -> Vec<Option<(std::time::SystemTime, u64)>> {
        let mut paths: Vec<&Path> = vec![&self.cert, &self.key];
        if let Some(ca) = &self.client_ca {
            paths.push(ca);
        }
        paths
            .into_iter()
            .map(|p| {
                std::fs::metadata(p)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len())))
            })
            .collect()
    }
}

fn read_file(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path, what)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Read {
            what,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_owned(),
            expected: "certificate",
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(path, "private key")?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|source| TlsError::Read {
            what: "private key",
            path: path.to_owned(),
            source,
        })?
        .ok_or_else(|| TlsError::Empty {
            what: "private key",
            path: path.to_owned(),
            expected: "private key",
        })
}

/// A server TLS configuration that follows its files.
#[derive(Clone)]
pub struct ReloadingTls {
    files: TlsFiles,
    current: Arc<ArcSwap<ServerConfig>>,
}

impl ReloadingTls {
    /// Loads the files now; an error here is fatal at start.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let config = files.build()?;
        Ok(ReloadingTls {
            files,
            current: Arc::new(ArcSwap::from_pointee(config)),
        })
    }

    pub fn requires_client_cert(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// Re-reads the files whenever they change, until the task is aborted.
    pub fn spawn_watcher(&self, name: &'static str) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut seen = this.files.fingerprint();
            loop {
                tokio::time::sleep(WATCH_INTERVAL).await;
                let now = this.files.fingerprint();
                if now == seen {
                    continue;
                }
                seen = now;
                match this.files.build() {
                    Ok(config) => {
                        this.current.store(Arc::new(config));
                        info!(
                            listener = name,
                            "TLS certificate files changed; new handshakes use them"
                        );
                    }
                    Err(e) => error!(
                        listener = name,
                        error = %e,
                        "TLS certificate files changed but cannot be used; keeping the previous ones"
                    ),
                }
            }
        })
    }

    /// Accepts TCP connections on `listener` and yields them once their TLS
    /// handshake is done, with the client certificate's identity read as
    /// `sources` allows. Handshakes run concurrently, so a slow or hostile
    /// client cannot hold up the others.
    pub fn incoming(
        &self,
        listener: TcpListener,
        sources: IdentitySources,
    ) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsConn>> {
        let (tx, rx) = mpsc::channel(64);
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, remote) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            debug!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    _ = tx.closed() => return,
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = tokio_rustls::TlsAcceptor::from(this.current.load_full());
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let identity = match stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|certs| certs.first())
                            {
                                None => PeerIdentity::Anonymous,
                                Some(cert) => match identity_of(cert, sources) {
                                    Ok(identity) => PeerIdentity::Known(identity),
                                    Err(refused) => {
                                        debug!(%remote, reason = %refused, "client certificate has no usable identity");
                                        PeerIdentity::Refused(refused)
                                    }
                                },
                            };
                            let _ = tx
                                .send(Ok(TlsConn {
                                    stream,
                                    info: PeerInfo { remote, identity },
                                }))
                                .await;
                        }
                        Ok(Err(e)) => debug!(%remote, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%remote, "TLS handshake timed out"),
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: SocketAddr,
    /// What the client certificate says, as this listener reads it.
    pub identity: PeerIdentity,
}

/// The identity of a connection's client certificate.
#[derive(Debug, Clone)]
pub enum PeerIdentity {
    /// No client certificate (the listener does not ask for one).
    Anonymous,
    /// A normalized identity of an enabled kind.
    Known(Identity),
    /// A certificate whose identity cannot be used; every call is refused
    /// with this reason.
    Refused(IdentityRefused),
}

/// Which parts of a client certificate may name its identity
/// (`--client-identity`). Each includes the ones before it; the first kind
/// the certificate has decides, so a certificate with a URI SAN is always
/// known by it, and a bad URI SAN is never passed over for a DNS SAN or CN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdentitySources {
    /// URI SANs only (SPIFFE IDs): the default, and always the admin API's.
    #[default]
    Uri,
    /// A URI SAN, else a DNS SAN.
    UriDns,
    /// A URI SAN, else a DNS SAN, else the subject CN.
    UriDnsCn,
}

impl IdentitySources {
    fn kinds(self) -> &'static [IdentityKind] {
        match self {
            IdentitySources::Uri => &[IdentityKind::Uri],
            IdentitySources::UriDns => &[IdentityKind::Uri, IdentityKind::Dns],
            IdentitySources::UriDnsCn => &[IdentityKind::Uri, IdentityKind::Dns, IdentityKind::Cn],
        }
    }

    fn wanted(self) -> &'static str {
        match self {
            IdentitySources::Uri => "URI SAN",
            IdentitySources::UriDns => "URI or DNS SAN",
            IdentitySources::UriDnsCn => "URI SAN, DNS SAN or subject CN",
        }
    }

    /// The flag value: `uri`, `uri,dns` or `uri,dns,cn`.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentitySources::Uri => "uri",
            IdentitySources::UriDns => "uri,dns",
            IdentitySources::UriDnsCn => "uri,dns,cn",
        }
    }
}

impl std::fmt::Display for IdentitySources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a verified client certificate names no usable identity.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IdentityRefused {
    #[error("the client certificate cannot be parsed: {0}")]
    Unparsable(String),
    #[error(
        "the client certificate has no {}, which is where this port reads identities from \
         (the lease port reads DNS SANs or the CN only when started with --client-identity \
         uri,dns or uri,dns,cn; the admin port reads URI SANs only)",
        .sources.wanted()
    )]
    NoIdentity { sources: IdentitySources },
    #[error(
        "the client certificate has {count} {kind}s; an identity must be exactly one \
         (a SPIFFE X.509-SVID carries one URI SAN)"
    )]
    Ambiguous { kind: &'static str, count: usize },
    #[error("the client certificate's {kind} {value:?} is not a usable identity: {reason}")]
    Invalid {
        kind: &'static str,
        value: String,
        reason: IdentityError,
    },
}

fn kind_name(kind: IdentityKind) -> &'static str {
    match kind {
        IdentityKind::Uri => "URI SAN",
        IdentityKind::Dns => "DNS SAN",
        IdentityKind::Cn => "subject CN",
    }
}

/// Longest identity text quoted back in a refusal.
const QUOTE_LIMIT: usize = 256;

/// The identity in a client certificate: of the first kind in `sources`
/// that the certificate has any of, exactly one value, normalized.
pub fn identity_of(
    cert: &CertificateDer<'_>,
    sources: IdentitySources,
) -> Result<Identity, IdentityRefused> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| IdentityRefused::Unparsable(e.to_string()))?;
    let names: Vec<GeneralName<'_>> = parsed
        .subject_alternative_name()
        .map_err(|e| IdentityRefused::Unparsable(format!("subject alternative names: {e}")))?
        .map(|san| san.value.general_names.clone())
        .unwrap_or_default();
    for &kind in sources.kinds() {
        let values: Vec<String> = match kind {
            IdentityKind::Uri => names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(uri) => Some(uri.to_string()),
                    _ => None,
                })
                .collect(),
            IdentityKind::Dns => names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(dns) => Some(dns.to_string()),
                    _ => None,
                })
                .collect(),
            IdentityKind::Cn => parsed
                .subject()
                .iter_common_name()
                .map(|cn| {
                    cn.as_str().map(str::to_owned).map_err(|_| {
                        IdentityRefused::Unparsable("its subject CN is not a text string".into())
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        match values.as_slice() {
            [] => continue,
            [value] => {
                return Identity::new(kind, value).map_err(|reason| IdentityRefused::Invalid {
                    kind: kind_name(kind),
                    value: value.chars().take(QUOTE_LIMIT).collect(),
                    reason,
                });
            }
            several => {
                return Err(IdentityRefused::Ambiguous {
                    kind: kind_name(kind),
                    count: several.len(),
                });
            }
        }
    }
    Err(IdentityRefused::NoIdentity { sources })
}

/// A TLS connection with what is known of its peer.
pub struct TlsConn {
    stream: TlsStream<TcpStream>,
    pub info: PeerInfo,
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests;
