//! Runs a pooler: loads TLS and the configuration, opens the three listeners
//! (lease API, probes and metrics, admin API), keeps certificates and the
//! config file fresh, reaps expired leases, and on SIGTERM/SIGINT drains:
//! not ready at once, no new leases, open leases get until the drain
//! deadline, then are revoked, then the servers close (GOAWAY) and the
//! process exits.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use teresa_proto::admin::pooler_admin_server::PoolerAdminServer;
use teresa_proto::connectionpool::connection_pool_service_server::ConnectionPoolServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::access;
use crate::admin::{self, AdminAccess, AdminService};
use crate::config;
use crate::http;
use crate::service::LeaseService;
use crate::state::{ApiLimits, PoolerState};
use crate::tls::{IdentitySources, ReloadingTls, TlsError, TlsFiles};
use teresa_proto::identity::{Identity, IdentityError, IdentityKind};

/// How often the config file is checked for changes.
const CONFIG_WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// After the drain deadline, how long servers get to finish in-flight calls.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Everything `teresa-pooler` serves with.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub host: IpAddr,
    pub port: u16,
    pub metrics_port: u16,
    /// 0 turns the admin API off.
    pub admin_port: u16,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub client_ca: Option<PathBuf>,
    /// Which parts of a lease API client certificate name its identity.
    pub client_identity: IdentitySources,
    pub admin_ca: Option<PathBuf>,
    /// URI identities allowed on the admin port.
    pub admin_identities: Vec<String>,
    pub metrics_plaintext: bool,
    pub config: Option<PathBuf>,
    pub drain_timeout: Duration,
    pub max_message_bytes: usize,
    pub limits: ApiLimits,
}

/// A pooler that could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("TLS for the {listener} port: {source}")]
    Tls {
        listener: &'static str,
        source: TlsError,
    },
    #[error(transparent)]
    Config(#[from] config::LoadError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "the admin API needs --admin-ca (the CA that signs the operator's client certificate), or --admin-port 0 to turn it off"
    )]
    AdminCaMissing,
    #[error("cannot set up gRPC reflection: {0}")]
    Reflection(String),
    #[error(
        "--admin-identities: {value:?} is not a URI identity such as spiffe://teresa.dev/operator ({reason}); the admin API takes URI SANs only"
    )]
    AdminIdentity {
        value: String,
        reason: IdentityError,
    },
}

/// Serves until `stop` resolves (a signal, or the caller's own reason), then
/// drains and returns.
pub async fn serve(
    options: ServeOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let lease_tls = ReloadingTls::load(TlsFiles {
        cert: options.tls_cert.clone(),
        key: options.tls_key.clone(),
        client_ca: options.client_ca.clone(),
        alpn: vec![b"h2".to_vec()],
    })
    .map_err(|source| ServeError::Tls {
        listener: "gRPC",
        source,
    })?;
    let http_tls = ReloadingTls::load(TlsFiles {
        cert: options.tls_cert.clone(),
        key: options.tls_key.clone(),
        client_ca: None,
        alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    })
    .map_err(|source| ServeError::Tls {
        listener: "metrics",
        source,
    })?;
    let admin_tls = if options.admin_port == 0 {
        None
    } else {
        let ca = options.admin_ca.clone().ok_or(ServeError::AdminCaMissing)?;
        Some(
            ReloadingTls::load(TlsFiles {
                cert: options.tls_cert.clone(),
                key: options.tls_key.clone(),
                client_ca: Some(ca),
                alpn: vec![b"h2".to_vec()],
            })
            .map_err(|source| ServeError::Tls {
                listener: "admin",
                source,
            })?,
        )
    };
    let admin_identities = options
        .admin_identities
        .iter()
        .map(|value| {
            Identity::new(IdentityKind::Uri, value).map_err(|reason| ServeError::AdminIdentity {
                value: value.clone(),
                reason,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let client_certificates = lease_tls.requires_client_cert();
    if !client_certificates {
        warn!(
            "no --client-ca: any client that reaches the gRPC port may lease any tenant without allowedClients, and tenants with allowedClients refuse every caller; set --client-ca to require client certificates"
        );
    }

    let state = PoolerState::new(
        ApiLimits {
            client_certificates,
            ..options.limits.clone()
        },
        options.drain_timeout,
    );
    if let Some(path) = &options.config {
        if path.exists() {
            let valid = config::load_file(path)?;
            access::warn_unreachable(&valid, client_certificates);
            state
                .tenants
                .apply(valid)
                .await
                .map_err(|source| config::LoadError::Invalid {
                    path: path.clone(),
                    source,
                })?;
        } else {
            warn!(path = %path.display(), "config file does not exist yet; not ready until it appears or the admin API applies a configuration");
        }
    }

    let bind = |port: u16| {
        let addr = SocketAddr::new(options.host, port);
        async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { addr, source })
        }
    };
    let grpc_listener = bind(options.port).await?;
    let http_listener = bind(options.metrics_port).await?;
    let admin_listener = match &admin_tls {
        Some(_) => Some(bind(options.admin_port).await?),
        None => None,
    };

    let mut background = vec![state.leases.spawn_reaper()];
    background.push(lease_tls.spawn_watcher("gRPC"));
    background.push(http_tls.spawn_watcher("metrics"));
    if let Some(tls) = &admin_tls {
        background.push(tls.spawn_watcher("admin"));
    }
    if let Some(path) = options.config.clone() {
        background.push(spawn_config_watcher(state.clone(), path));
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<ConnectionPoolServiceServer<LeaseService>>()
        .await;
    let lease_reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(teresa_proto::LEASE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let lease_api = ConnectionPoolServiceServer::new(LeaseService::new(state.clone()))
        .max_decoding_message_size(options.max_message_bytes)
        .max_encoding_message_size(options.max_message_bytes);
    let grpc = tokio::spawn(
        grpc_builder()
            .add_service(health_service)
            .add_service(lease_reflection)
            .add_service(lease_api)
            .serve_with_incoming_shutdown(
                lease_tls.incoming(grpc_listener, options.client_identity),
                stopped(stop_rx.clone()),
            ),
    );

    let admin = match (admin_tls, admin_listener) {
        (Some(tls), Some(listener)) => {
            let reflection = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(teresa_proto::ADMIN_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .build_v1()
                .map_err(|e| ServeError::Reflection(e.to_string()))?;
            let (admin_health, admin_health_service) = tonic_health::server::health_reporter();
            admin_health
                .set_serving::<PoolerAdminServer<AdminService>>()
                .await;
            let service = PoolerAdminServer::new(AdminService::new(state.clone()))
                .max_decoding_message_size(64 << 20);
            // Every service of the admin port, health and reflection
            // included, answers only the admin identities.
            let access = AdminAccess::new(admin_identities);
            Some(tokio::spawn(
                grpc_builder()
                    .layer(tonic::service::InterceptorLayer::new(access))
                    .add_service(admin_health_service)
                    .add_service(reflection)
                    .add_service(service)
                    .serve_with_incoming_shutdown(
                        tls.incoming(listener, IdentitySources::Uri),
                        stopped(stop_rx.clone()),
                    ),
            ))
        }
        _ => None,
    };

    let router = http::router(state.clone());
    let http = if options.metrics_plaintext {
        tokio::spawn(async move {
            axum::serve(http_listener, router)
                .with_graceful_shutdown(stopped(stop_rx))
                .await
        })
    } else {
        let local = http_listener
            .local_addr()
            .map_err(|source| ServeError::Bind {
                addr: SocketAddr::new(options.host, options.metrics_port),
                source,
            })?;
        let listener = http::TlsListener {
            incoming: http_tls.incoming(http_listener, IdentitySources::Uri),
            local,
        };
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(stopped(stop_rx))
                .await
        })
    };
    state.set_listening();
    info!(
        grpc = %SocketAddr::new(options.host, options.port),
        metrics = %SocketAddr::new(options.host, options.metrics_port),
        admin = options.admin_port,
        metrics_tls = !options.metrics_plaintext,
        client_certificates,
        client_identity = %options.client_identity,
        "teresa-pooler serving"
    );

    stop.await;
    info!(
        leases = state.leases.count(None),
        deadline_s = options.drain_timeout.as_secs_f64(),
        "draining: not ready, refusing new leases"
    );
    state.start_draining();
    health
        .set_not_serving::<ConnectionPoolServiceServer<LeaseService>>()
        .await;
    let deadline = tokio::time::Instant::now() + options.drain_timeout;
    // Callers already waiting inside GetConnection may still be granted a
    // lease, so the drain waits for them too.
    let busy = |state: &PoolerState| {
        state.leases.count(None) > 0
            || state
                .tenants
                .every_pool()
                .iter()
                .any(|pool| pool.stats().waiting > 0)
    };
    while busy(&state) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = state.leases.count(None);
    if left > 0 {
        warn!(
            leases = left,
            "drain deadline passed; rolling back and revoking open leases"
        );
    }
    state.tenants.revoke_all().await;
    let _ = stop_tx.send(true);
    let finish = async {
        if let Err(e) = grpc.await.map(|r| r.map_err(|e| e.to_string())) {
            error!(error = %e, "gRPC server task failed");
        }
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        let _ = http.await;
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, finish).await.is_err() {
        warn!("in-flight calls did not finish within the shutdown grace period");
    }
    for task in background {
        task.abort();
    }
    state.tenants.close_all();
    info!("drained; all server connections closed");
    Ok(())
}

fn grpc_builder() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(1024))
        .tcp_nodelay(true)
}

/// Re-applies the config file whenever it changes. A bad file is logged and
/// the configuration in force stays.
fn spawn_config_watcher(state: Arc<PoolerState>, path: PathBuf) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let fingerprint = |path: &PathBuf| std::fs::read(path).ok();
        let mut seen = fingerprint(&path);
        loop {
            tokio::time::sleep(CONFIG_WATCH_INTERVAL).await;
            let now = fingerprint(&path);
            if now == seen || now.is_none() {
                continue;
            }
            seen = now;
            let snapshot = std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|text| config::parse_yaml(&text).map_err(|e| e.to_string()));
            match snapshot {
                Ok(snapshot) => match admin::apply_snapshot(&state, &snapshot).await {
                    Ok((version, _)) => {
                        info!(path = %path.display(), version = %version, "config file re-applied")
                    }
                    Err(e) => {
                        error!(path = %path.display(), error = %e, "config file changed but is invalid; keeping the configuration in force")
                    }
                },
                Err(e) => {
                    state.metrics.config_applied("rejected");
                    error!(path = %path.display(), error = %e, "config file changed but cannot be read; keeping the configuration in force")
                }
            }
        }
    })
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
    }
}
