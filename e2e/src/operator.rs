//! `teresa-operator run` out of cluster, as one replica of the chart's
//! Deployment: the chart's arguments and environment (with local paths and
//! ports), the chart's ServiceAccount, and a token from the TokenRequest API
//! bound to a Pod object standing for the replica, so missing permissions
//! show up as they would in the cluster, and deleting that Pod revokes the
//! replica's API access.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::Kubeconfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::chart::{Chart, override_args};
use crate::cluster::Cluster;
use crate::fleet::LocalFleet;

/// Extra flags for a replica (after the chart's).
#[derive(Clone, Debug, Default)]
pub struct OperatorOptions {
    /// `--flag`, value pairs that override or extend the chart's arguments.
    pub args: Vec<(&'static str, String)>,
}

/// One operator replica.
pub struct OperatorReplica {
    /// The replica's name (its Pod object's name, its HOSTNAME, its Lease identity).
    pub name: String,
    /// Port of `/livez`, `/readyz` and `/metrics`.
    pub metrics_port: u16,
    namespace: String,
    cluster: Cluster,
    command: Vec<String>,
    kubeconfig: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    env: Vec<(String, String)>,
    _work: crate::WorkDir,
}

impl OperatorReplica {
    /// Starts replica `name` of the chart's operator against `fleet`.
    pub async fn start(
        cluster: &Cluster,
        chart: &Chart,
        fleet: &LocalFleet,
        name: &str,
        options: OperatorOptions,
    ) -> Self {
        let work = crate::WorkDir::new("operator");
        let namespace = chart.namespace.clone();
        let service_account = chart.operator_service_account();
        let token = pod_bound_token(cluster, &namespace, &service_account, name, chart).await;
        let kubeconfig = work.path().join("kubeconfig");
        write_token_kubeconfig(&cluster.kubeconfig, &token, &kubeconfig);
        let container = chart.operator_container();
        let metrics_port = crate::free_port_on(&[std::net::IpAddr::from([127, 0, 0, 1])]);
        let mut overrides = vec![
            ("--admin-port", fleet.admin_port.to_string()),
            (
                "--tls-cert",
                fleet.certs.path("operator.crt").display().to_string(),
            ),
            (
                "--tls-key",
                fleet.certs.path("operator.key").display().to_string(),
            ),
            ("--ca", fleet.certs.path("ca.pem").display().to_string()),
            (
                "--snapshot-mount-path",
                fleet.mount_dir.display().to_string(),
            ),
            ("--metrics-port", metrics_port.to_string()),
        ];
        overrides.extend(options.args);
        let command = override_args(&container.args.unwrap_or_default(), &overrides);
        // The chart's environment; fieldRefs resolve as the downward API would.
        let mut env: Vec<(String, String)> = container
            .env
            .unwrap_or_default()
            .into_iter()
            .map(|var| {
                let value = match var
                    .value_from
                    .and_then(|v| v.field_ref)
                    .map(|f| f.field_path)
                {
                    Some(path) if path == "metadata.namespace" => namespace.clone(),
                    Some(path) if path == "metadata.name" => name.to_string(),
                    Some(path) => panic!(
                        "the chart's operator env uses fieldRef {path}, unknown to the suite"
                    ),
                    None => var.value.unwrap_or_default(),
                };
                (var.name, value)
            })
            .collect();
        env.push(("HOSTNAME".into(), name.to_string()));
        let mut replica = Self {
            name: name.to_string(),
            metrics_port,
            namespace,
            cluster: cluster.clone(),
            command,
            log: work.path().join("operator.log"),
            kubeconfig,
            child: None,
            env,
            _work: work,
        };
        replica.spawn();
        replica.wait_live().await;
        replica
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("operator log file");
        let child = Command::new(crate::binary("teresa-operator"))
            .args(&self.command)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn teresa-operator");
        self.child = Some(child);
    }

    async fn wait_live(&mut self) {
        let port = self.metrics_port;
        crate::eventually(
            Duration::from_secs(30),
            "the operator answers /livez",
            || async move {
                match http_get(port, "/livez").await {
                    Some((200, _)) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
    }

    /// Starts the replica again after [`kill`](Self::kill) or [`terminate`](Self::terminate).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "replica {} still runs", self.name);
        self.spawn();
        self.wait_live().await;
    }

    /// SIGKILL, and wait for the process to be gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// SIGTERM, and wait (up to `limit`) for the process to exit: its exit code.
    pub async fn terminate(&mut self, limit: Duration) -> Option<i32> {
        let mut child = self.child.take().expect("the replica runs");
        let pid = child.id().expect("running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid}");
        let exit = tokio::time::timeout(limit, child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "operator {} did not exit within {limit:?} of SIGTERM",
                    self.name
                )
            })
            .expect("wait for the operator");
        exit.code()
    }

    /// Whether the process has exited on its own.
    pub fn has_exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(Some(_))),
            None => true,
        }
    }

    /// Revokes this replica's API access: its token is bound to its Pod
    /// object, and deleting the Pod invalidates the token at once.
    pub async fn revoke_api_access(&self) {
        Api::<Pod>::namespaced(self.cluster.client.clone(), &self.namespace)
            .delete(&self.name, &DeleteParams::default().grace_period(0))
            .await
            .unwrap_or_else(|e| panic!("delete the Pod of replica {}: {e}", self.name));
    }

    /// `teresa_operator_leader` from `/metrics` (None: no answer).
    pub async fn leader_gauge(&self) -> Option<i64> {
        let (_, body) = http_get(self.metrics_port, "/metrics").await?;
        body.lines()
            .find_map(|l| l.strip_prefix("teresa_operator_leader "))
            .and_then(|v| v.trim().parse().ok())
    }

    /// `GET /readyz`: the HTTP status (None: no answer).
    pub async fn readyz(&self) -> Option<u16> {
        http_get(self.metrics_port, "/readyz").await.map(|(s, _)| s)
    }

    /// Resident memory of the process, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id()?;
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// The replica's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A token of `service_account` from the TokenRequest API, bound to a Pod
/// object `pod` (created here, as the Deployment's pod would be).
async fn pod_bound_token(
    cluster: &Cluster,
    namespace: &str,
    service_account: &str,
    pod: &str,
    chart: &Chart,
) -> String {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
    let image = chart.operator_container().image;
    let object: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": pod, "labels": chart.operator_template().metadata.and_then(|m| m.labels)},
        "spec": {
            "serviceAccountName": service_account,
            "automountServiceAccountToken": false,
            "containers": [{"name": "operator", "image": image}],
        }
    }))
    .expect("operator pod object");
    let created = match pods.create(&PostParams::default(), &object).await {
        Ok(created) => created,
        Err(kube::Error::Api(e)) if e.code == 409 => {
            pods.get(pod).await.expect("get the operator pod")
        }
        Err(e) => panic!("create the operator's Pod {pod}: {e}"),
    };
    let request: TokenRequest = serde_json::from_value(serde_json::json!({
        "spec": {
            "audiences": [],
            "expirationSeconds": 3600,
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": pod,
                "uid": created.metadata.uid,
            }
        }
    }))
    .expect("token request");
    let accounts: Api<ServiceAccount> = Api::namespaced(cluster.client.clone(), namespace);
    accounts
        .create_token_request(service_account, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| {
            panic!("TokenRequest for ServiceAccount {namespace}/{service_account}: {e}")
        })
        .status
        .and_then(|s| s.token)
        .expect("the TokenRequest answers a token")
}

/// A kubeconfig for the same cluster as `admin`'s current context,
/// authenticating with `token` only.
fn write_token_kubeconfig(admin: &Kubeconfig, token: &str, path: &std::path::Path) {
    let context_name = admin
        .current_context
        .clone()
        .or_else(|| admin.contexts.first().map(|c| c.name.clone()))
        .expect("the kubeconfig has a context");
    let cluster_name = admin
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .expect("the current context names a cluster");
    let cluster = admin
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .expect("the context's cluster is in the kubeconfig");
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [serde_json::to_value(cluster).expect("cluster entry")],
        "users": [{"name": "teresa-operator", "user": {"token": token}}],
        "contexts": [{"name": "teresa-operator", "context": {"cluster": cluster_name, "user": "teresa-operator"}}],
        "current-context": "teresa-operator",
    });
    std::fs::write(
        path,
        serde_yaml::to_string(&config).expect("kubeconfig YAML"),
    )
    .expect("write the operator kubeconfig");
}

/// A plain HTTP/1.1 GET on 127.0.0.1 (the operator's metrics port): status and body.
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let attempt = async {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        tcp.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .ok()?;
        let mut response = Vec::new();
        let _ = tcp.read_to_end(&mut response).await;
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}
