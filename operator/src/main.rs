//! `teresa-operator`: `crd` prints the TenantPool CRD, `run` reconciles.

#![forbid(unsafe_code)]

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::AtomicBool},
};

use anyhow::Context as _;
use clap::Parser;
use futures::FutureExt;
use teresa_operator::{
    cli::{Cli, Command, LogFormat, RunArgs},
    controller::{self, RunConfig, Settings},
    crd, http,
    leader::Leadership,
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
    let ready = Arc::new(AtomicBool::new(false));
    let addr = SocketAddr::from(([0, 0, 0, 0], args.metrics_port));
    let http_server = tokio::spawn(http::serve(
        addr,
        http::router(ready.clone(), metrics.clone()),
    ));

    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes (in-cluster service account or kubeconfig)")?;
    let pooler_namespace = args.pooler_namespace();
    let instance = std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok());
    tracing::info!(pooler_namespace = %pooler_namespace, selector = %args.pooler_selector, leader_election = args.leader_election, "teresa-operator starting");

    let config = RunConfig {
        settings: Settings {
            pooler_namespace: pooler_namespace.clone(),
            snapshot_secret: args.snapshot_secret.clone(),
            snapshot_mount_path: args.snapshot_mount_path.clone(),
            deletion_timeout: args.deletion_timeout(),
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
        controller::run(client, config, metrics, ready, shutdown)
            .await
            .context("controller")?;
        http_server.abort();
        return Ok(());
    }

    let identity = instance.unwrap_or_else(|| format!("teresa-operator-{}", std::process::id()));
    let lease_namespace = args.lease_namespace();
    let mut leadership = Leadership::start(
        client.clone(),
        &lease_namespace,
        &args.lease_name,
        &identity,
    )
    .await
    .context("leader election")?;
    // A standby replica is healthy and ready; it just does not reconcile.
    ready.store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(lease = %args.lease_name, namespace = %lease_namespace, identity = %identity, "waiting for leadership");
    tokio::select! {
        _ = shutdown.clone() => return Ok(()),
        acquired = leadership.acquired() => acquired.context("leader election")?,
    }
    tracing::info!(identity = %identity, "acquired leadership, reconciling");
    metrics.leader.set(1);
    tokio::select! {
        result = controller::run(client, config, metrics, ready, shutdown) => {
            result.context("controller")?;
            Ok(())
        }
        _ = leadership.lost() => {
            // Exit so that a restarted replica competes again: never reconcile
            // beside a new leader.
            anyhow::bail!("lost leadership of Lease {lease_namespace}/{}", args.lease_name)
        }
    }
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
