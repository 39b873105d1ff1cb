//! Command-line flags (each with a `TERESA_*` environment variable) and the
//! subcommands they drive.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use teresa_pooler::config;
use teresa_pooler::server::{self, ServeOptions};
use teresa_pooler::state::ApiLimits;
use teresa_pooler::tls::IdentitySources;
use teresa_proto::admin::pooler_admin_client::PoolerAdminClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// Kubernetes-native, multi-tenant PostgreSQL connection pooling with a gRPC lease API.
///
/// Without a subcommand, serves: the lease API over gRPC with TLS, probes and
/// metrics over HTTPS, and the admin API with mutual TLS.
#[derive(Debug, Parser)]
#[command(
    name = "teresa-pooler",
    version,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a throwaway PostgreSQL, dev certificates and two demo tenants,
    /// then serve on 127.0.0.1. Ctrl-C stops it all and removes the cluster.
    Dev(DevArgs),
    /// Generate a dev CA, a server certificate for localhost, a client and an
    /// operator client certificate.
    Certs(CertsArgs),
    /// Talk to a running pooler's admin API.
    Admin(AdminArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// YAML file with the tenants to serve (the admin snapshot schema);
    /// re-applied when it changes.
    #[arg(long, env = "TERESA_CONFIG")]
    config: Option<PathBuf>,
    /// Address every listener binds to.
    #[arg(long, env = "TERESA_HOST", default_value = "0.0.0.0")]
    host: IpAddr,
    /// gRPC lease API port (TLS).
    #[arg(long, env = "TERESA_PORT", default_value_t = 50052)]
    port: u16,
    /// HTTPS port of /health, /livez, /readyz and /metrics.
    #[arg(long, env = "TERESA_METRICS_PORT", default_value_t = 8082)]
    metrics_port: u16,
    /// Serve /health, /livez, /readyz and /metrics over plain HTTP.
    #[arg(long, env = "TERESA_METRICS_PLAINTEXT")]
    metrics_plaintext: bool,
    /// Admin API port (mutual TLS); 0 turns it off.
    #[arg(long, env = "TERESA_ADMIN_PORT", default_value_t = 50053)]
    admin_port: u16,
    /// Server certificate (PEM), reloaded when it changes.
    #[arg(long, env = "TERESA_TLS_CERT", default_value = "certs/cert.pem")]
    tls_cert: PathBuf,
    /// Server private key (PEM), reloaded when it changes.
    #[arg(long, env = "TERESA_TLS_KEY", default_value = "certs/key.pem")]
    tls_key: PathBuf,
    /// CA of client certificates; when set, the gRPC port requires one and
    /// tenants' allowedClients apply to its identity.
    #[arg(long, env = "TERESA_CLIENT_CA")]
    client_ca: Option<PathBuf>,
    /// Which parts of a lease API client certificate name its identity: its
    /// URI SAN (SPIFFE ID) only, else also a DNS SAN, else also the subject
    /// CN. The first kind a certificate has decides. The admin API reads
    /// URI SANs only.
    #[arg(
        long,
        env = "TERESA_CLIENT_IDENTITY",
        value_enum,
        default_value = "uri"
    )]
    client_identity: ClientIdentityArg,
    /// CA of the operator's client certificate [default: certs/ca.pem if it
    /// exists, else the admin API is off].
    #[arg(long, env = "TERESA_ADMIN_CA")]
    admin_ca: Option<PathBuf>,
    /// URI SAN identities allowed to call the admin API (comma-separated).
    #[arg(
        long,
        env = "TERESA_ADMIN_IDENTITIES",
        value_delimiter = ',',
        default_value = "spiffe://teresa.dev/operator"
    )]
    admin_identities: Vec<String>,
    /// How long open leases may continue after SIGTERM before they are rolled
    /// back and revoked (also the drain time of a removed tenant).
    #[arg(long, env = "TERESA_DRAIN_TIMEOUT", default_value = "30s", value_parser = duration)]
    drain_timeout: Duration,
    /// Accept a client's `dsn` and make a pool for it (the original's
    /// standalone mode; credentials then travel from clients).
    #[arg(long, env = "TERESA_ALLOW_CLIENT_DSN")]
    allow_client_dsn: bool,
    /// Largest gRPC message accepted or sent, in bytes.
    #[arg(long, env = "TERESA_MAX_MESSAGE_BYTES", default_value_t = 4 << 20)]
    max_message_bytes: usize,
    /// Longest SQL text Execute accepts, in bytes.
    #[arg(long, env = "TERESA_MAX_SQL_BYTES", default_value_t = 1 << 20)]
    max_sql_bytes: usize,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, env = "TERESA_LOG_FORMAT", value_enum, default_value = "json")]
    log_format: LogFormat,
    /// Log level or filter (overrides RUST_LOG), e.g. "info" or "teresa_pooler=debug".
    #[arg(long, env = "TERESA_LOG_LEVEL")]
    log_level: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ClientIdentityArg {
    /// URI SANs only.
    #[value(name = "uri")]
    Uri,
    /// A URI SAN, else a DNS SAN.
    #[value(name = "uri,dns")]
    UriDns,
    /// A URI SAN, else a DNS SAN, else the subject CN.
    #[value(name = "uri,dns,cn")]
    UriDnsCn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Args)]
struct DevArgs {
    /// gRPC lease API port.
    #[arg(long, env = "TERESA_PORT", default_value_t = 50052)]
    port: u16,
    /// HTTPS probes and metrics port.
    #[arg(long, env = "TERESA_METRICS_PORT", default_value_t = 8082)]
    metrics_port: u16,
    /// Admin API port.
    #[arg(long, env = "TERESA_ADMIN_PORT", default_value_t = 50053)]
    admin_port: u16,
    /// Where the dev certificates are (generated if missing).
    #[arg(long, env = "TERESA_CERTS_DIR", default_value = "certs")]
    certs_dir: PathBuf,
    /// Log level or filter.
    #[arg(long, env = "TERESA_LOG_LEVEL")]
    log_level: Option<String>,
}

#[derive(Debug, Args)]
struct CertsArgs {
    /// Output directory.
    #[arg(long, default_value = "certs")]
    out: PathBuf,
    /// Extra DNS names for the server certificate.
    #[arg(long = "dns")]
    dns: Vec<String>,
    /// Replace existing certificates.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
struct AdminArgs {
    #[command(subcommand)]
    command: AdminCommand,
    /// The pooler's admin endpoint.
    #[arg(
        long,
        global = true,
        env = "TERESA_ADMIN_ADDR",
        default_value = "https://localhost:50053"
    )]
    addr: String,
    /// Client certificate of an admin identity.
    #[arg(
        long,
        global = true,
        env = "TERESA_ADMIN_CERT",
        default_value = "certs/operator.pem"
    )]
    cert: PathBuf,
    /// Its private key.
    #[arg(
        long,
        global = true,
        env = "TERESA_ADMIN_KEY",
        default_value = "certs/operator-key.pem"
    )]
    key: PathBuf,
    /// CA that signed the pooler's server certificate.
    #[arg(
        long,
        global = true,
        env = "TERESA_ADMIN_CA_CERT",
        default_value = "certs/ca.pem"
    )]
    ca: PathBuf,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Print the applied version and every tenant's live numbers.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Apply a YAML snapshot (the --config schema).
    Apply {
        /// The YAML file.
        file: PathBuf,
    },
}

fn duration(text: &str) -> Result<Duration, String> {
    config::parse_duration(text)
}

/// Sets up tracing: JSON or text, level from the flag, else RUST_LOG, else info.
pub fn init_logging(format: LogFormatChoice, level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    // The driver reports PostgreSQL notices at info, such as the warning of
    // the session reset's ROLLBACK when no transaction was open: one line per
    // lease. They stay visible at debug.
    let quiet_driver = |filter: EnvFilter| match "tokio_postgres=warn".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let filter = match level {
        Some(level) => EnvFilter::new(level),
        None => EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| quiet_driver(EnvFilter::new("info"))),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormatChoice::Json => builder.json().flatten_event(true).init(),
        LogFormatChoice::Text => builder.init(),
    }
}

/// Which log format to set up.
#[derive(Debug, Clone, Copy)]
pub enum LogFormatChoice {
    Json,
    Text,
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => {
            let args = cli.serve;
            init_logging(
                match args.log.log_format {
                    LogFormat::Json => LogFormatChoice::Json,
                    LogFormat::Text => LogFormatChoice::Text,
                },
                args.log.log_level.as_deref(),
            );
            let options = serve_options(args);
            server::serve(options, server::shutdown_signal()).await?;
            Ok(())
        }
        Some(Command::Dev(args)) => {
            init_logging(LogFormatChoice::Text, args.log_level.as_deref());
            crate::dev::run(crate::dev::DevOptions {
                port: args.port,
                metrics_port: args.metrics_port,
                admin_port: args.admin_port,
                certs_dir: args.certs_dir,
            })
            .await
        }
        Some(Command::Certs(args)) => {
            let paths = teresa_pooler::certs::generate_dev_certs_with(
                &args.out,
                &teresa_pooler::certs::DevCertOptions {
                    extra_dns_names: args.dns,
                    force: args.force,
                },
            )?;
            println!(
                "dev certificates in {} ({}): CA ca.pem, server cert.pem/key.pem, client client.pem/client-key.pem, operator operator.pem/operator-key.pem",
                args.out.display(),
                if paths.reused_existing {
                    "kept the existing CA and server certificate"
                } else {
                    "new"
                }
            );
            Ok(())
        }
        Some(Command::Admin(args)) => admin(args).await,
    }
}

fn serve_options(args: ServeArgs) -> ServeOptions {
    let default_admin_ca = Path::new("certs/ca.pem");
    let (admin_port, admin_ca) = match (args.admin_ca, args.admin_port) {
        (_, 0) => (0, None),
        (Some(ca), port) => (port, Some(ca)),
        (None, port) if default_admin_ca.exists() => (port, Some(default_admin_ca.to_owned())),
        (None, _) => {
            tracing::warn!("admin API off: no --admin-ca given and certs/ca.pem does not exist");
            (0, None)
        }
    };
    ServeOptions {
        host: args.host,
        port: args.port,
        metrics_port: args.metrics_port,
        admin_port,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        client_ca: args.client_ca,
        client_identity: match args.client_identity {
            ClientIdentityArg::Uri => IdentitySources::Uri,
            ClientIdentityArg::UriDns => IdentitySources::UriDns,
            ClientIdentityArg::UriDnsCn => IdentitySources::UriDnsCn,
        },
        admin_ca,
        admin_identities: args.admin_identities,
        metrics_plaintext: args.metrics_plaintext,
        config: args.config,
        drain_timeout: args.drain_timeout,
        max_message_bytes: args.max_message_bytes,
        limits: ApiLimits {
            allow_client_dsn: args.allow_client_dsn,
            max_sql_bytes: args.max_sql_bytes,
            ..ApiLimits::default()
        },
    }
}

/// A TLS channel to a pooler's admin API with a client certificate.
pub async fn admin_channel(
    addr: &str,
    cert: &Path,
    key: &Path,
    ca: &Path,
) -> anyhow::Result<Channel> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let host = addr
        .split("://")
        .nth(1)
        .unwrap_or(addr)
        .rsplit_once(':')
        .map_or(addr, |(host, _)| host)
        .trim_matches(['[', ']']);
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca)?))
        .identity(Identity::from_pem(read(cert)?, read(key)?))
        .domain_name(host.to_owned());
    Channel::from_shared(addr.to_owned())
        .with_context(|| format!("{addr} is not a valid address"))?
        .tls_config(tls)?
        .connect()
        .await
        .with_context(|| format!("cannot connect to the admin API at {addr}"))
}

async fn admin(args: AdminArgs) -> anyhow::Result<()> {
    let channel = admin_channel(&args.addr, &args.cert, &args.key, &args.ca).await?;
    let mut client = PoolerAdminClient::new(channel);
    match args.command {
        AdminCommand::Apply { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let snapshot = config::parse_yaml(&text)
                .with_context(|| format!("{} is not a valid snapshot", file.display()))?;
            let response = client
                .apply_config(snapshot)
                .await
                .map_err(|s| anyhow::anyhow!("{}: {}", s.code(), s.message()))?
                .into_inner();
            println!(
                "applied version {}{}",
                response.applied_version,
                if response.changed {
                    ""
                } else {
                    " (already applied; nothing changed)"
                }
            );
        }
        AdminCommand::Status { json } => {
            let status = client
                .get_status(teresa_proto::admin::GetStatusRequest {})
                .await
                .map_err(|s| anyhow::anyhow!("{}: {}", s.code(), s.message()))?
                .into_inner();
            if json {
                println!("{}", status_json(&status));
            } else {
                print!("{}", status_table(&status));
            }
        }
    }
    Ok(())
}

fn status_json(status: &teresa_proto::admin::PoolerStatus) -> String {
    let tenants: Vec<_> = status
        .tenants
        .iter()
        .map(|t| {
            serde_json::json!({
                "tenant": t.tenant_id,
                "active": t.active_connections,
                "idle": t.idle_connections,
                "total": t.total_connections,
                "max": t.max_connections,
                "min": t.min_connections,
                "waiting": t.waiting_clients,
                "leases": t.active_leases,
                "acquires": t.acquires_total,
                "acquireTimeouts": t.acquire_timeouts_total,
                "expiredLeases": t.expired_leases_total,
                "databaseReachable": t.database_reachable,
                "draining": t.draining,
            })
        })
        .collect();
    serde_json::json!({
        "appliedVersion": status.applied_version,
        "appliedAt": status.applied_at.as_ref().map(|t| t.seconds),
        "ready": status.ready,
        "draining": status.draining,
        "tenants": tenants,
    })
    .to_string()
}

fn status_table(status: &teresa_proto::admin::PoolerStatus) -> String {
    let mut out = format!(
        "version {}  ready {}  draining {}\n",
        if status.applied_version.is_empty() {
            "-"
        } else {
            &status.applied_version
        },
        status.ready,
        status.draining
    );
    out.push_str(&format!(
        "{:<24} {:>6} {:>6} {:>6} {:>5} {:>7} {:>6} {:>4} {:>9}\n",
        "TENANT", "ACTIVE", "IDLE", "TOTAL", "MAX", "WAITING", "LEASES", "DB", "DRAINING"
    ));
    for t in &status.tenants {
        out.push_str(&format!(
            "{:<24} {:>6} {:>6} {:>6} {:>5} {:>7} {:>6} {:>4} {:>9}\n",
            t.tenant_id,
            t.active_connections,
            t.idle_connections,
            t.total_connections,
            t.max_connections,
            t.waiting_clients,
            t.active_leases,
            if t.database_reachable { "up" } else { "down" },
            t.draining
        ));
    }
    out
}
