//! `teresa-operator`: `crd` prints the TenantPool CRD, `run` reconciles.

#![forbid(unsafe_code)]

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;
use futures::FutureExt;
use teresa_operator::{
    cli::{Cli, Command, LogFormat, RunArgs},
    controller::{self, RunConfig, Settings},
    crd,
    http::{self, Blocker, Readiness},
    leader::{ElectionSettings, Leadership},
    metrics::Metrics,
    push::{AdminTls, PushSettings},
    selector,
};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", crd::crd_yaml().context("rendering the CRD")?);
            Ok(())
        }
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the runtime")?
            .block_on(run(*args)),
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    selector::parse(&args.pooler_selector)
        .with_context(|| format!("--pooler-selector {:?}", args.pooler_selector))?;
    let metrics = Metrics::new().context("registering metrics")?;
    let readiness = Readiness::starting();
    let addr = SocketAddr::new(args.metrics_host, args.metrics_port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics server to {addr}"))?;
    let http_server = tokio::spawn(http::serve(
        listener,
        http::router(readiness.clone(), metrics.clone()),
    ));

    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes (in-cluster service account or kubeconfig)")?;
    let pooler_namespace = args.pooler_namespace();
    let instance = std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok());
    tracing::info!(pooler_namespace = %pooler_namespace, selector = %args.pooler_selector, leader_election = args.leader_election, metrics = %addr, "teresa-operator starting");

    let config = RunConfig {
        settings: Settings {
            pooler_namespace: pooler_namespace.clone(),
            snapshot_secret: args.snapshot_secret.clone(),
            snapshot_mount_path: args.snapshot_mount_path.clone(),
            deletion_timeout: args.deletion_timeout(),
            default_access: args.default_access(),
        },
        pooler_selector: args.pooler_selector.clone(),
        push: PushSettings::new(
            AdminTls {
                cert: args.tls_cert.clone(),
                key: args.tls_key.clone(),
                ca: args.ca.clone(),
                server_name: args.pooler_tls_server_name.clone(),
            },
            args.admin_port,
        ),
        instance: instance.clone(),
    };

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    .boxed()
    .shared();

    if !args.leader_election {
        metrics.leader.set(1);
        let result = controller::run(client, config, metrics, readiness, shutdown).await;
        http_server.abort();
        return result.context("controller");
    }

    let identity = instance.unwrap_or_else(|| format!("teresa-operator-{}", std::process::id()));
    let lease_namespace = args.lease_namespace();
    let mut leadership = Leadership::start(
        client.clone(),
        ElectionSettings::new(&lease_namespace, &args.lease_name, &identity),
        metrics.clone(),
        readiness.clone(),
    );
    // A standby replica is ready (unless it cannot reach its Lease); it just
    // does not reconcile.
    readiness.clear(Blocker::Starting);
    tracing::info!(lease = %args.lease_name, namespace = %lease_namespace, identity = %identity, "waiting for leadership");
    let result = loop {
        tokio::select! {
            _ = shutdown.clone() => break Ok(()),
            acquired = leadership.acquired() => {
                if let Err(e) = acquired {
                    break Err(anyhow::Error::new(e).context("leader election"));
                }
            }
        }
        tracing::info!(identity = %identity, "leading: reconciling");
        // Dropping the controller on loss stops every reconcile and push at once:
        // the new leader may act in a few seconds.
        tokio::select! {
            result = controller::run(client.clone(), config.clone(), metrics.clone(), readiness.clone(), shutdown.clone()) => {
                break result.context("controller");
            }
            _ = leadership.lost() => {
                tracing::warn!(identity = %identity, "standing by to compete for the Lease again");
            }
        }
    };
    // After the controller stopped: hand the Lease to a standby at once.
    leadership.release().await;
    http_server.abort();
    result
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
