//! Local fleet mode: real `teresa-pooler` processes on loopback addresses
//! (127.0.X.2, 127.0.X.3, ...) standing behind Pod objects with the chart's
//! labels. A bare API server has no kubelet, so the fleet plays its part: it
//! keeps each Pod's status (phase Running, podIP, Ready from the pooler's
//! `/readyz`, restartCount) and writes the snapshot Secret's keys into the
//! directory every pooler reads its `--config` from, as a Secret volume would.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use teresa_pooler::certs::{ClientIdentity, DEV_OPERATOR_IDENTITY, DevCa};
use teresa_proto::admin::pooler_admin_client::PoolerAdminClient;
use teresa_proto::admin::{GetStatusRequest, PoolerStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::chart::{Chart, override_args};
use crate::cluster::Cluster;
use crate::lease::LeaseClient;

/// The name pooler certificates carry; the chart's `--pooler-tls-server-name`.
pub const POOLER_TLS_NAME: &str = "teresa-pooler";
/// How often the stand-in kubelet syncs pod status and the mounted Secret.
const KUBELET_PERIOD: Duration = Duration::from_millis(250);

/// The fleet's certificates: a CA, the poolers' server certificate and the
/// operator's client certificate (identity `spiffe://teresa.dev/operator`,
/// the chart's `--admin-identities`).
pub struct FleetCerts {
    /// The CA, for minting more certificates (clients, database servers).
    pub ca: DevCa,
    dir: PathBuf,
}

impl FleetCerts {
    fn generate(dir: &Path) -> Self {
        let ca = DevCa::generate().expect("generate a CA");
        ca.write(&dir.join("ca.pem"), &dir.join("ca-key.pem"))
            .expect("write the CA");
        let server = ca
            .issue_server(&[POOLER_TLS_NAME, "localhost"], &[])
            .expect("issue the pooler certificate");
        server
            .write(&dir.join("tls.crt"), &dir.join("tls.key"))
            .expect("write the pooler certificate");
        let operator = ca
            .issue_client(&ClientIdentity::Uri(DEV_OPERATOR_IDENTITY.to_string()))
            .expect("issue the operator certificate");
        operator
            .write(&dir.join("operator.crt"), &dir.join("operator.key"))
            .expect("write the operator certificate");
        Self {
            ca,
            dir: dir.to_path_buf(),
        }
    }

    /// A file of the certificate directory (`ca.pem`, `tls.crt`, `operator.key`, ...).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The CA certificate (PEM).
    pub fn ca_pem(&self) -> String {
        self.ca.cert_pem().to_string()
    }

    fn tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.ca_pem()))
            .domain_name(POOLER_TLS_NAME)
    }
}

/// What the stand-in kubelet knows of one pod.
#[derive(Debug)]
pub struct PodSlot {
    /// Pod name.
    pub name: String,
    /// Its loopback address (the podIP).
    pub ip: Ipv4Addr,
    /// Container restarts reported in the status.
    pub restarts: AtomicI32,
    /// While set, the kubelet reports nothing for this pod (its node is cut off).
    pub partitioned: AtomicBool,
}

/// How the fleet runs.
#[derive(Clone, Debug)]
pub struct FleetOptions {
    /// Pooler pods at the start.
    pub pods: usize,
    /// `--drain-timeout` of the poolers (the chart's `pooler.drainTimeout`).
    pub drain_timeout: String,
}

impl Default for FleetOptions {
    fn default() -> Self {
        Self {
            pods: 2,
            drain_timeout: "5s".into(),
        }
    }
}

/// The pooler fleet of one release namespace.
pub struct LocalFleet {
    /// Release namespace (pods, snapshot Secret).
    pub namespace: String,
    /// The fleet's certificates.
    pub certs: FleetCerts,
    /// Where the snapshot Secret is "mounted" (`--config` lives here).
    pub mount_dir: PathBuf,
    /// Lease API port of every pod.
    pub grpc_port: u16,
    /// HTTPS probes and metrics port of every pod.
    pub metrics_port: u16,
    /// Admin API port of every pod (the operator's `--admin-port`).
    pub admin_port: u16,
    /// Name of the snapshot Secret (the chart's `--snapshot-secret`).
    pub snapshot_secret: String,
    cluster: Cluster,
    chart: Chart,
    options: FleetOptions,
    subnet: u8,
    slots: watch::Sender<Vec<Arc<PodSlot>>>,
    processes: Vec<Option<Child>>,
    kubelet: tokio::task::JoinHandle<()>,
    work: crate::WorkDir,
}

impl Drop for LocalFleet {
    fn drop(&mut self) {
        self.kubelet.abort();
    }
}

impl LocalFleet {
    /// Starts `options.pods` poolers and their Pod objects, and the stand-in kubelet.
    pub async fn start(cluster: &Cluster, chart: &Chart, options: FleetOptions) -> Self {
        let work = crate::WorkDir::new("fleet");
        let certs_dir = work.path().join("certs");
        let mount_dir = work.path().join("config");
        std::fs::create_dir_all(&certs_dir).expect("certs dir");
        std::fs::create_dir_all(&mount_dir).expect("config dir");
        let certs = FleetCerts::generate(&certs_dir);
        let subnet = 1 + rand::random::<u8>() % 250;
        // Ports shared by every pod, free on the addresses pods may get.
        let hosts: Vec<IpAddr> = (0..16).map(|i| IpAddr::V4(pod_ip(subnet, i))).collect();
        let snapshot_secret = chart_flag(
            &chart.operator_container().args.unwrap_or_default(),
            "--snapshot-secret",
        )
        .unwrap_or_else(|| "teresa-pooler-config".into());
        let (slots, slots_rx) = watch::channel(Vec::new());
        let metrics_port = crate::free_port_on(&hosts);
        let kubelet = tokio::spawn(kubelet(KubeletInputs {
            client: cluster.client.clone(),
            namespace: chart.namespace.clone(),
            snapshot_secret: snapshot_secret.clone(),
            mount_dir: mount_dir.clone(),
            metrics_port,
            ca_pem: certs.ca_pem(),
            slots: slots_rx,
        }));
        let mut fleet = Self {
            namespace: chart.namespace.clone(),
            certs,
            mount_dir,
            grpc_port: crate::free_port_on(&hosts),
            metrics_port,
            admin_port: crate::free_port_on(&hosts),
            snapshot_secret,
            cluster: cluster.clone(),
            chart: chart.clone(),
            options: options.clone(),
            subnet,
            slots,
            processes: Vec::new(),
            kubelet,
            work,
        };
        for _ in 0..options.pods {
            fleet.add_pod().await;
        }
        fleet
    }

    /// Number of pods.
    pub fn len(&self) -> usize {
        self.processes.len()
    }

    /// Whether the fleet has no pods.
    pub fn is_empty(&self) -> bool {
        self.processes.is_empty()
    }

    /// The pod slot `index`.
    pub fn slot(&self, index: usize) -> Arc<PodSlot> {
        self.slots.borrow()[index].clone()
    }

    /// Adds a pod: its Pod object (the chart's labels and ServiceAccount) and
    /// its pooler process; the kubelet reports it Running at once.
    pub async fn add_pod(&mut self) -> usize {
        let index = self.processes.len();
        let template = self.chart.pooler_template();
        let spec = template.spec.clone().expect("pooler pod spec");
        let name = format!("teresa-pooler-{}-{index}", crate::random_suffix());
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": self.chart.pooler_labels(),
            },
            "spec": {
                "serviceAccountName": spec.service_account_name,
                "automountServiceAccountToken": false,
                "containers": [{"name": "pooler", "image": spec.containers[0].image}],
            }
        }))
        .expect("pod object");
        Api::<Pod>::namespaced(self.cluster.client.clone(), &self.namespace)
            .create(&PostParams::default(), &pod)
            .await
            .unwrap_or_else(|e| panic!("create pod {name}: {e}"));
        let slot = Arc::new(PodSlot {
            name,
            ip: pod_ip(self.subnet, index),
            restarts: AtomicI32::new(0),
            partitioned: AtomicBool::new(false),
        });
        self.processes.push(Some(self.spawn(&slot)));
        self.slots.send_modify(|slots| slots.push(slot));
        index
    }

    fn spawn(&self, slot: &PodSlot) -> Child {
        let chart_args = self.chart.pooler_container().args.unwrap_or_default();
        let args = override_args(
            &chart_args,
            &[
                (
                    "--config",
                    self.mount_dir.join("pooler.yaml").display().to_string(),
                ),
                ("--host", slot.ip.to_string()),
                ("--port", self.grpc_port.to_string()),
                ("--metrics-port", self.metrics_port.to_string()),
                ("--admin-port", self.admin_port.to_string()),
                (
                    "--tls-cert",
                    self.certs.path("tls.crt").display().to_string(),
                ),
                (
                    "--tls-key",
                    self.certs.path("tls.key").display().to_string(),
                ),
                (
                    "--admin-ca",
                    self.certs.path("ca.pem").display().to_string(),
                ),
                ("--drain-timeout", self.options.drain_timeout.clone()),
            ],
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(&slot.name))
            .expect("pooler log file");
        Command::new(crate::binary("teresa-pooler"))
            .args(&args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn teresa-pooler")
    }

    fn log_path(&self, pod: &str) -> PathBuf {
        self.work.path().join(format!("{pod}.log"))
    }

    /// The pooler log of pod `index`.
    pub fn log(&self, index: usize) -> String {
        std::fs::read_to_string(self.log_path(&self.slot(index).name)).unwrap_or_default()
    }

    /// Kills pod `index`'s pooler (SIGKILL) and starts it again, as the
    /// kubelet restarts a crashed container: restartCount goes up by one.
    pub async fn restart(&mut self, index: usize) {
        if let Some(mut child) = self.processes[index].take() {
            let _ = child.kill().await;
        }
        let slot = self.slot(index);
        self.processes[index] = Some(self.spawn(&slot));
        slot.restarts.fetch_add(1, Ordering::SeqCst);
    }

    /// Cuts pod `index` off: its pooler stops answering (SIGSTOP) and the
    /// kubelet reports nothing, so the Pod still looks Running and Ready.
    pub fn partition(&self, index: usize) {
        let slot = self.slot(index);
        slot.partitioned.store(true, Ordering::SeqCst);
        self.signal(index, "STOP");
    }

    /// Ends a [`partition`](Self::partition).
    pub fn heal(&self, index: usize) {
        self.signal(index, "CONT");
        self.slot(index).partitioned.store(false, Ordering::SeqCst);
    }

    fn signal(&self, index: usize, signal: &str) {
        let pid = self.processes[index]
            .as_ref()
            .and_then(|c| c.id())
            .expect("the pooler runs");
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// Deletes pod `index`'s Pod object and stops its pooler.
    pub async fn delete_pod(&mut self, index: usize) {
        let name = self.slot(index).name.clone();
        Api::<Pod>::namespaced(self.cluster.client.clone(), &self.namespace)
            .delete(&name, &DeleteParams::default().grace_period(0))
            .await
            .unwrap_or_else(|e| panic!("delete pod {name}: {e}"));
        if let Some(mut child) = self.processes[index].take() {
            let _ = child.kill().await;
        }
    }

    /// An admin API client of pod `index`, as the operator's identity.
    pub async fn admin(&self, index: usize) -> PoolerAdminClient<Channel> {
        let identity = Identity::from_pem(
            std::fs::read(self.certs.path("operator.crt")).expect("operator cert"),
            std::fs::read(self.certs.path("operator.key")).expect("operator key"),
        );
        let channel = Endpoint::from_shared(format!(
            "https://{}:{}",
            self.slot(index).ip,
            self.admin_port
        ))
        .expect("endpoint")
        .timeout(Duration::from_secs(5))
        .tls_config(self.certs.tls().identity(identity))
        .expect("admin TLS")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to the admin API of pod {index}: {e}"));
        PoolerAdminClient::new(channel)
    }

    /// `teresa-pooler admin status` of pod `index`.
    pub async fn admin_status(&self, index: usize) -> PoolerStatus {
        self.admin(index)
            .await
            .get_status(GetStatusRequest {})
            .await
            .unwrap_or_else(|e| panic!("GetStatus of pod {index}: {e}"))
            .into_inner()
    }

    /// The tenant ids pod `index` serves.
    pub async fn tenant_ids(&self, index: usize) -> Vec<String> {
        let mut ids: Vec<String> = self
            .admin_status(index)
            .await
            .tenants
            .into_iter()
            .map(|t| t.tenant_id)
            .collect();
        ids.sort();
        ids
    }

    /// A lease API client of pod `index` (TLS, no client certificate: the
    /// chart's default pooler has no `--client-ca`).
    pub async fn lease_client(&self, index: usize) -> LeaseClient {
        LeaseClient::connect(
            &format!("https://{}:{}", self.slot(index).ip, self.grpc_port),
            self.certs.tls(),
        )
        .await
    }

    /// `GET /readyz` of pod `index`: the HTTP status.
    pub async fn readyz(&self, index: usize) -> Option<u16> {
        https_status(
            self.slot(index).ip,
            self.metrics_port,
            "/readyz",
            &self.certs.ca_pem(),
        )
        .await
    }
}

/// The chart flag `--name=value`'s value.
pub fn chart_flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .find_map(|a| a.strip_prefix(&format!("{name}=")).map(str::to_string))
}

fn pod_ip(subnet: u8, index: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        127,
        0,
        subnet,
        2 + u8::try_from(index).expect("at most 250 pods"),
    )
}

struct KubeletInputs {
    client: kube::Client,
    namespace: String,
    snapshot_secret: String,
    mount_dir: PathBuf,
    metrics_port: u16,
    ca_pem: String,
    slots: watch::Receiver<Vec<Arc<PodSlot>>>,
}

/// The stand-in kubelet: pod status from each pooler's `/readyz`, and the
/// snapshot Secret's keys written into the mount directory (atomically, as
/// the kubelet swaps a Secret volume's files).
async fn kubelet(inputs: KubeletInputs) {
    let pods: Api<Pod> = Api::namespaced(inputs.client.clone(), &inputs.namespace);
    let secrets: Api<Secret> = Api::namespaced(inputs.client.clone(), &inputs.namespace);
    let mut reported: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut mounted: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let started = k8s_openapi::jiff::Timestamp::now().to_string();
    loop {
        if let Ok(Some(secret)) = secrets.get_opt(&inputs.snapshot_secret).await {
            let data: BTreeMap<String, Vec<u8>> = secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            if data != mounted {
                for (key, value) in &data {
                    let tmp = inputs.mount_dir.join(format!(".{key}.tmp"));
                    if std::fs::write(&tmp, value).is_ok() {
                        let _ = std::fs::rename(&tmp, inputs.mount_dir.join(key));
                    }
                }
                for key in mounted.keys().filter(|k| !data.contains_key(*k)) {
                    let _ = std::fs::remove_file(inputs.mount_dir.join(key));
                }
                mounted = data;
            }
        }
        let slots: Vec<Arc<PodSlot>> = inputs.slots.borrow().clone();
        for slot in slots {
            if slot.partitioned.load(Ordering::SeqCst) {
                continue;
            }
            let ready = https_status(slot.ip, inputs.metrics_port, "/readyz", &inputs.ca_pem).await
                == Some(200);
            let status = pod_status(&slot, ready, &started);
            if reported.get(&slot.name) == Some(&status) {
                continue;
            }
            let result = pods
                .patch_status(
                    &slot.name,
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({ "status": status })),
                )
                .await;
            if result.is_ok() {
                reported.insert(slot.name.clone(), status);
            }
        }
        tokio::time::sleep(KUBELET_PERIOD).await;
    }
}

fn pod_status(slot: &PodSlot, ready: bool, started: &str) -> serde_json::Value {
    let ready = if ready { "True" } else { "False" };
    let ip = slot.ip.to_string();
    serde_json::json!({
        "phase": "Running",
        "hostIP": "127.0.0.1",
        "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": started,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": started},
            {"type": "Initialized", "status": "True", "lastTransitionTime": started},
            {"type": "ContainersReady", "status": ready, "lastTransitionTime": started},
            {"type": "Ready", "status": ready, "lastTransitionTime": started},
        ],
        "containerStatuses": [{
            "name": "pooler",
            "image": "teresa-pooler",
            "imageID": "",
            "ready": ready == "True",
            "started": true,
            "restartCount": slot.restarts.load(Ordering::SeqCst),
            "state": {"running": {"startedAt": started}},
        }],
    })
}

/// The HTTP status of an HTTPS GET to a pooler's probes port, or `None` when
/// it does not answer within a second.
pub async fn https_status(ip: Ipv4Addr, port: u16, path: &str, ca_pem: &str) -> Option<u16> {
    let attempt = async {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
            roots.add(cert.ok()?).ok()?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect((ip, port)).await.ok()?;
        let name = rustls::pki_types::ServerName::try_from(POOLER_TLS_NAME).ok()?;
        let mut tls = connector.connect(name, tcp).await.ok()?;
        tls.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {POOLER_TLS_NAME}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .ok()?;
        let mut response = Vec::new();
        let _ = tls.read_to_end(&mut response).await;
        String::from_utf8_lossy(&response)
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()
        .flatten()
}
