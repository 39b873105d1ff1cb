//! The operator's command line: `teresa-operator crd` and `teresa-operator run`.
//! Every flag of `run` also reads a `TERESA_*` environment variable (the Helm chart
//! sets these names).

use std::{net::IpAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};

/// Teresa's control plane: reconciles TenantPool resources into pooler configurations.
#[derive(Debug, Parser)]
#[command(name = "teresa-operator", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the TenantPool CustomResourceDefinition as YAML.
    Crd,
    /// Run the controller against the cluster of the in-cluster service account or
    /// the current kubeconfig context.
    Run(Box<RunArgs>),
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (production).
    Json,
    /// Human-readable lines.
    Text,
}

/// Flags of `teresa-operator run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Namespace of the pooler pods (the fleet) and of the snapshot Secret.
    /// Default: the POD_NAMESPACE environment variable, else "default".
    #[arg(long, env = "TERESA_POOLER_NAMESPACE")]
    pub pooler_namespace: Option<String>,

    /// Label selector of the fleet's pooler pods; each TenantPool's poolerSelector
    /// narrows it.
    #[arg(
        long,
        env = "TERESA_POOLER_SELECTOR",
        default_value = "app.kubernetes.io/name=teresa-pooler"
    )]
    pub pooler_selector: String,

    /// The poolers' admin API port.
    #[arg(long, env = "TERESA_ADMIN_PORT", default_value_t = 50053)]
    pub admin_port: u16,

    /// PEM client certificate presented to the poolers' admin API.
    #[arg(
        long,
        env = "TERESA_TLS_CERT",
        default_value = "/etc/teresa/tls/tls.crt"
    )]
    pub tls_cert: PathBuf,

    /// PEM private key of --tls-cert.
    #[arg(
        long,
        env = "TERESA_TLS_KEY",
        default_value = "/etc/teresa/tls/tls.key"
    )]
    pub tls_key: PathBuf,

    /// PEM CA bundle that signed the poolers' server certificates.
    #[arg(long, env = "TERESA_CA", default_value = "/etc/teresa/tls/ca.crt")]
    pub ca: PathBuf,

    /// Name the poolers' certificates must carry (pods are dialed by IP).
    #[arg(
        long,
        env = "TERESA_POOLER_TLS_SERVER_NAME",
        default_value = "teresa-pooler"
    )]
    pub pooler_tls_server_name: String,

    /// Secret in the pooler namespace where the fleet's snapshot is stored (key
    /// pooler.yaml); the pooler Deployment mounts it as its --config.
    #[arg(
        long,
        env = "TERESA_SNAPSHOT_SECRET",
        default_value = "teresa-pooler-config"
    )]
    pub snapshot_secret: String,

    /// Directory where pooler pods mount the snapshot Secret. Kept for
    /// compatibility: CA bundles now travel inside the configuration.
    #[arg(
        long,
        env = "TERESA_SNAPSHOT_MOUNT_PATH",
        default_value = "/etc/teresa/config"
    )]
    pub snapshot_mount_path: String,

    /// Address the HTTP server with /livez, /readyz and /metrics binds to. The
    /// kubelet's probes and Prometheus reach the pod IP, so in a pod it must
    /// include that IP; 127.0.0.1 keeps it local when running outside a cluster.
    #[arg(long, env = "TERESA_METRICS_HOST", default_value = "0.0.0.0")]
    pub metrics_host: IpAddr,

    /// Port of the HTTP server with /livez, /readyz and /metrics.
    #[arg(long, env = "TERESA_METRICS_PORT", default_value_t = 8080)]
    pub metrics_port: u16,

    /// Elect a leader through a Lease so several replicas can run; only the leader
    /// reconciles.
    #[arg(long, env = "TERESA_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,

    /// Name of the leader election Lease.
    #[arg(long, env = "TERESA_LEASE_NAME", default_value = "teresa-operator")]
    pub lease_name: String,

    /// Namespace of the leader election Lease. Default: the pooler namespace.
    #[arg(long, env = "TERESA_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// How long deleting a TenantPool waits for pooler pods to confirm the tenant's
    /// removal before letting it go anyway (with a Warning Event), in seconds.
    #[arg(long, env = "TERESA_DELETION_TIMEOUT_SECONDS", default_value_t = 120)]
    pub deletion_timeout_seconds: u64,

    /// SPIFFE trust domain of the clients' certificates (such as
    /// "cluster.local"); set it when the poolers require client certificates
    /// (--client-ca). With --default-access namespace, a TenantPool without
    /// access.allowedClients then admits only
    /// spiffe://<trust-domain>/ns/<its namespace>/*.
    #[arg(long, env = "TERESA_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,

    /// Who a TenantPool without access.allowedClients admits: "namespace"
    /// (its own namespace's workload identities, once --trust-domain is set)
    /// or "any" (every client the pooler accepts).
    #[arg(
        long,
        env = "TERESA_DEFAULT_ACCESS",
        value_enum,
        default_value = "namespace"
    )]
    pub default_access: DefaultAccessArg,

    /// Log format.
    #[arg(long, env = "TERESA_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
}

/// Values of --default-access.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultAccessArg {
    /// The TenantPool's own namespace (needs --trust-domain).
    Namespace,
    /// Any client the pooler accepts.
    Any,
}

impl RunArgs {
    /// The default access rule after flags: the namespace rule needs a trust
    /// domain; without one it is "any".
    pub fn default_access(&self) -> crate::desired::DefaultAccess {
        match (self.default_access, self.trust_domain.as_deref()) {
            (DefaultAccessArg::Namespace, Some(domain)) if !domain.is_empty() => {
                crate::desired::DefaultAccess::Namespace {
                    trust_domain: domain.to_string(),
                }
            }
            _ => crate::desired::DefaultAccess::Any,
        }
    }

    /// The pooler namespace after defaults: flag, POD_NAMESPACE, "default".
    pub fn pooler_namespace(&self) -> String {
        self.pooler_namespace
            .clone()
            .filter(|n| !n.is_empty())
            .or_else(|| {
                std::env::var("POD_NAMESPACE")
                    .ok()
                    .filter(|n| !n.is_empty())
            })
            .unwrap_or_else(|| "default".to_string())
    }

    /// The lease namespace after defaults.
    pub fn lease_namespace(&self) -> String {
        self.lease_namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| self.pooler_namespace())
    }

    /// The deletion timeout as a duration.
    pub fn deletion_timeout(&self) -> Duration {
        Duration::from_secs(self.deletion_timeout_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_flags_have_the_documented_defaults() {
        let cli = Cli::try_parse_from(["teresa-operator", "run"]).expect("parses");
        let Command::Run(args) = cli.command else {
            panic!("expected run");
        };
        assert_eq!(args.pooler_selector, "app.kubernetes.io/name=teresa-pooler");
        assert_eq!(args.admin_port, 50053);
        assert_eq!(args.snapshot_secret, "teresa-pooler-config");
        assert_eq!(args.metrics_port, 8080);
        assert_eq!(args.metrics_host, IpAddr::from([0, 0, 0, 0]));
        assert!(args.leader_election);
        assert_eq!(args.lease_name, "teresa-operator");
        assert_eq!(args.pooler_tls_server_name, "teresa-pooler");
        assert_eq!(args.log_format, LogFormat::Json);
    }

    #[test]
    fn leader_election_can_be_switched_off_and_lease_namespace_follows_pooler_namespace() {
        let cli = Cli::try_parse_from([
            "teresa-operator",
            "run",
            "--leader-election=false",
            "--pooler-namespace",
            "pools",
            "--log-format",
            "text",
            "--metrics-host",
            "127.0.0.1",
        ])
        .expect("parses");
        let Command::Run(args) = cli.command else {
            panic!("expected run");
        };
        assert!(!args.leader_election);
        assert_eq!(args.pooler_namespace(), "pools");
        assert_eq!(args.lease_namespace(), "pools");
        assert_eq!(args.log_format, LogFormat::Text);
        assert_eq!(args.metrics_host, IpAddr::from([127, 0, 0, 1]));
    }
}
