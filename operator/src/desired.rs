//! What every pooler pod should hold: a pure function from the TenantPools, the
//! Secrets they reference and the fleet's pods to one [`Snapshot`] per pod, the
//! snapshot stored for restarting poolers, and each tenant's outcome (serving,
//! credentials missing, invalid, losing a tenant id conflict, being deleted).
//!
//! No I/O here: the controller fetches the inputs and applies the outputs, and
//! the tests in `desired/tests.rs` cover the decisions without any network.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    sync::Arc,
};

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::ResourceExt;
use sha2::{Digest, Sha256};
use teresa_proto::admin::{
    DatabaseTarget, LeaseSettings, PoolSettings, PoolerConfig, TenantConfig,
};

use crate::{crd::TenantPool, selector};

/// Key of the pooler's `--config` file inside the snapshot Secret.
pub const SNAPSHOT_KEY: &str = "pooler.yaml";

/// Identifies a TenantPool: namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TenantKey {
    /// Namespace of the TenantPool.
    pub namespace: String,
    /// Name of the TenantPool.
    pub name: String,
}

impl TenantKey {
    /// The key of a TenantPool object.
    pub fn of(tenant_pool: &TenantPool) -> Self {
        Self {
            namespace: tenant_pool.namespace().unwrap_or_default(),
            name: tenant_pool.name_any(),
        }
    }
}

impl fmt::Display for TenantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Where the inputs' Secrets come from: a reflector store in production, a map in
/// tests.
pub trait SecretSource {
    /// The Secret `namespace/name`, if it exists.
    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>>;
}

impl SecretSource for BTreeMap<(String, String), Arc<Secret>> {
    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        self.get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }
}

/// Everything the desired state depends on.
pub struct FleetInputs<'a> {
    /// Every TenantPool in the cluster, including those being deleted.
    pub tenant_pools: &'a [Arc<TenantPool>],
    /// The Secrets the TenantPools reference.
    pub secrets: &'a dyn SecretSource,
    /// The pods of the pooler fleet (the operator's namespace and selector), in
    /// any phase.
    pub pods: &'a [Arc<Pod>],
    /// Who a TenantPool without `access.allowedClients` admits.
    pub default_access: &'a DefaultAccess,
}

/// Who a TenantPool without `access.allowedClients` admits
/// (`--default-access`, `--trust-domain`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum DefaultAccess {
    /// Any client the pooler accepts (the pooler's own rule for an empty list).
    #[default]
    Any,
    /// Only workload identities of the TenantPool's own namespace:
    /// `spiffe://<trust domain>/ns/<namespace>/*`.
    Namespace {
        /// The SPIFFE trust domain of the clients' certificates.
        trust_domain: String,
    },
}

impl DefaultAccess {
    /// The allowedClients a TenantPool of `namespace` gets when it lists none.
    pub fn patterns(&self, namespace: &str) -> Vec<String> {
        match self {
            DefaultAccess::Any => Vec::new(),
            DefaultAccess::Namespace { trust_domain } => {
                vec![format!("spiffe://{trust_domain}/ns/{namespace}/*")]
            }
        }
    }
}

/// The whole fleet's desired state.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetPlan {
    /// Every TenantPool's outcome.
    pub tenants: BTreeMap<TenantKey, TenantPlan>,
    /// Per live pod (not terminating), by pod name: what it should hold.
    pub pods: BTreeMap<String, PodPlan>,
    /// What the snapshot Secret holds for poolers that (re)start while the
    /// operator is away: the tenants every pod of the fleet serves.
    pub stored: Snapshot,
}

impl FleetPlan {
    /// Stamps every snapshot (stored and per pod) with the fleet's generation.
    pub fn set_generation(&mut self, generation: u64) {
        self.stored.config.generation = generation;
        for pod in self.pods.values_mut() {
            pod.snapshot.config.generation = generation;
        }
    }

    /// What the generation follows: every snapshot's content version.
    pub fn content_fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.stored.version().as_bytes());
        for (name, pod) in &self.pods {
            hasher.update(format!("\n{name}={}", pod.snapshot.version()).as_bytes());
        }
        short_hex(hasher)
    }
}

/// One TenantPool's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantPlan {
    /// The effective tenant id.
    pub tenant_id: String,
    /// Whether and why (not) the tenant is pushed.
    pub outcome: TenantOutcome,
    /// Names of the pushable pods (Running, with an IP, not terminating) that this
    /// TenantPool selects.
    pub selected_pods: Vec<String>,
}

/// Whether a tenant is pushed, and if not, why.
#[derive(Clone, Debug, PartialEq)]
pub enum TenantOutcome {
    /// In the snapshot of every pod it selects.
    Serving {
        /// Content hash of the tenant's configuration.
        config_version: String,
    },
    /// Its credentials (or CA) Secret or key is missing; not pushed.
    CredentialsUnresolved(CredentialsProblem),
    /// The spec breaks an invariant (normally refused at admission); not pushed.
    Invalid(Vec<String>),
    /// An older TenantPool with the same tenant id shares a pooler pod.
    Conflict {
        /// The older TenantPool that keeps the tenant id.
        winner: TenantKey,
    },
    /// Being deleted: removed from every pod.
    Deleting,
}

/// Why a tenant's credentials cannot be resolved. Messages name the Secret and key,
/// never a value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsProblem {
    /// The credentials Secret does not exist.
    #[error(
        "Secret {namespace}/{secret} (spec.database.credentialsSecret) not found; create it with keys {username_key:?} and {password_key:?}"
    )]
    SecretNotFound {
        namespace: String,
        secret: String,
        username_key: String,
        password_key: String,
    },
    /// A key is missing from the credentials Secret.
    #[error(
        "Secret {namespace}/{secret} has no key {key:?}; add it or set spec.database.credentialsSecret.{field}"
    )]
    KeyNotFound {
        namespace: String,
        secret: String,
        key: String,
        field: &'static str,
    },
    /// A value is not UTF-8 or the user name is empty.
    #[error("key {key:?} of Secret {namespace}/{secret} {problem}")]
    BadValue {
        namespace: String,
        secret: String,
        key: String,
        problem: &'static str,
    },
    /// The CA Secret does not exist.
    #[error("Secret {namespace}/{secret} (spec.database.caSecret) not found")]
    CaSecretNotFound { namespace: String, secret: String },
    /// The CA key is missing.
    #[error("Secret {namespace}/{secret} has no key {key:?} (spec.database.caSecret.key)")]
    CaKeyNotFound {
        namespace: String,
        secret: String,
        key: String,
    },
}

impl CredentialsProblem {
    /// The condition reason: CamelCase, stable.
    pub fn reason(&self) -> &'static str {
        match self {
            CredentialsProblem::SecretNotFound { .. } => "SecretNotFound",
            CredentialsProblem::KeyNotFound { .. } => "SecretKeyNotFound",
            CredentialsProblem::BadValue { .. } => "SecretValueInvalid",
            CredentialsProblem::CaSecretNotFound { .. } => "CaSecretNotFound",
            CredentialsProblem::CaKeyNotFound { .. } => "CaSecretKeyNotFound",
        }
    }

    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            CredentialsProblem::SecretNotFound { .. } => "secret_not_found",
            CredentialsProblem::KeyNotFound { .. } => "secret_key_not_found",
            CredentialsProblem::BadValue { .. } => "secret_value_invalid",
            CredentialsProblem::CaSecretNotFound { .. } => "ca_secret_not_found",
            CredentialsProblem::CaKeyNotFound { .. } => "ca_secret_key_not_found",
        }
    }
}

/// What one live pod should hold.
#[derive(Clone, Debug, PartialEq)]
pub struct PodPlan {
    /// Pod name.
    pub name: String,
    /// Pod UID: a recreated pod with the same name is another pod.
    pub uid: String,
    /// The pod IP while the pod is Running; `None`: nothing to push to yet (it
    /// starts from the snapshot Secret).
    pub address: Option<String>,
    /// Container restarts, summed: a restarted pooler must be asked again.
    pub restarts: i32,
    /// The configuration it should hold.
    pub snapshot: Snapshot,
}

/// A complete pooler configuration with its content-hash version. Its `Debug`
/// shows no credential.
#[derive(Clone, PartialEq, Default)]
pub struct Snapshot {
    config: PoolerConfig,
}

impl Snapshot {
    /// The content-hash version (16 hex characters).
    pub fn version(&self) -> &str {
        &self.config.version
    }

    /// The fleet generation it carries (see [`FleetPlan::set_generation`]).
    pub fn generation(&self) -> u64 {
        self.config.generation
    }

    /// The admin API message, credentials included.
    pub fn config(&self) -> &PoolerConfig {
        &self.config
    }

    /// Tenant ids in this snapshot, sorted.
    pub fn tenant_ids(&self) -> Vec<&str> {
        self.config.tenants.iter().map(|t| t.id.as_str()).collect()
    }

    /// The pooler's `--config` file: exactly `serde_yaml` of the admin message.
    pub fn to_yaml(&self) -> Result<String, serde_yaml::Error> {
        serde_yaml::to_string(&self.config)
    }

    /// The passwords it carries, to scrub them from any text that might echo one.
    pub fn passwords(&self) -> impl Iterator<Item = &str> {
        self.config
            .tenants
            .iter()
            .filter_map(|t| t.database.as_ref())
            .map(|d| d.password.as_str())
            .filter(|p| !p.is_empty())
    }

    fn from_tenants(tenants: Vec<&RenderedTenant>) -> Self {
        let mut hasher = Sha256::new();
        let mut sorted = tenants;
        sorted.sort_by(|a, b| a.config.id.cmp(&b.config.id));
        for tenant in &sorted {
            hasher.update(tenant.config.id.as_bytes());
            hasher.update(b"=");
            hasher.update(tenant.version.as_bytes());
            hasher.update(b"\n");
        }
        Self {
            config: PoolerConfig {
                version: short_hex(hasher),
                tenants: sorted.into_iter().map(|t| t.config.clone()).collect(),
                generation: 0,
            },
        }
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.config.version)
            .field("generation", &self.config.generation)
            .field("tenants", &self.tenant_ids())
            .finish()
    }
}

/// A tenant rendered for the admin API, with its content hash.
struct RenderedTenant {
    config: TenantConfig,
    version: String,
}

/// Checks a TenantPool with exactly the pooler's rules
/// ([`teresa_proto::config`]) on its rendered tenant (with placeholder
/// credentials, so that a spec problem shows before a missing Secret), plus
/// what only the operator knows (poolerSelector). A TenantPool admitted under
/// an older or looser CRD never reaches a pooler.
pub fn validate(tenant_pool: &TenantPool) -> Vec<String> {
    validate_with(tenant_pool, &DefaultAccess::Any)
}

fn validate_with(tenant_pool: &TenantPool, default_access: &DefaultAccess) -> Vec<String> {
    let placeholder = Resolved {
        user: "placeholder".into(),
        password: String::new(),
        ca_pem: tenant_pool
            .spec
            .database
            .ca_secret
            .as_ref()
            .map(|_| "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n".into()),
    };
    let mut problems = check_rendered(&render_config(tenant_pool, placeholder, default_access));
    if let Some(selector) = &tenant_pool.spec.pooler_selector
        && let Err(e) = selector::matches(selector, &BTreeMap::new())
    {
        problems.push(format!("spec.poolerSelector: {e}"));
    }
    problems
}

/// The pooler's validation of one rendered tenant, its field names turned into
/// the TenantPool's.
fn check_rendered(config: &TenantConfig) -> Vec<String> {
    match teresa_proto::config::check_tenant(config, "spec") {
        Ok(_) => Vec::new(),
        Err(problems) => problems
            .into_iter()
            .map(|p| {
                p.replacen("spec.id:", "spec.tenantId:", 1).replacen(
                    "spec.allowedClients",
                    "spec.access.allowedClients",
                    1,
                )
            })
            .collect(),
    }
}

/// Computes the fleet's desired state.
pub fn plan(inputs: &FleetInputs<'_>) -> FleetPlan {
    let live_pods: Vec<&Pod> = inputs
        .pods
        .iter()
        .map(Arc::as_ref)
        .filter(|p| p.metadata.deletion_timestamp.is_none() && !is_finished(p))
        .collect();

    // Claimants in age order: the older TenantPool keeps a contested tenant id.
    let mut claimants: Vec<&TenantPool> = inputs.tenant_pools.iter().map(Arc::as_ref).collect();
    claimants.sort_by(|a, b| {
        let created = |t: &TenantPool| t.metadata.creation_timestamp.as_ref().map(|t| t.0);
        created(a)
            .cmp(&created(b))
            .then_with(|| TenantKey::of(a).cmp(&TenantKey::of(b)))
    });

    let mut winners: Vec<(&TenantPool, Selection)> = Vec::new();
    let mut tenants = BTreeMap::new();
    let mut rendered: BTreeMap<TenantKey, (RenderedTenant, Selection)> = BTreeMap::new();

    for tenant_pool in claimants {
        let key = TenantKey::of(tenant_pool);
        let tenant_id = tenant_pool.tenant_id();
        let selection = Selection::of(tenant_pool);
        let selected_pods = live_pods
            .iter()
            .filter(|p| pod_address(p).is_some() && selection.selects(p))
            .map(|p| p.name_any())
            .collect();
        let outcome = if tenant_pool.metadata.deletion_timestamp.is_some() {
            TenantOutcome::Deleting
        } else if let Some((winner, _)) = winners
            .iter()
            .find(|(w, ws)| w.tenant_id() == tenant_id && ws.overlaps(&selection, &live_pods))
        {
            TenantOutcome::Conflict {
                winner: TenantKey::of(winner),
            }
        } else {
            winners.push((tenant_pool, selection.clone()));
            let problems = validate_with(tenant_pool, inputs.default_access);
            if !problems.is_empty() {
                TenantOutcome::Invalid(problems)
            } else {
                match render(tenant_pool, inputs.secrets, inputs.default_access) {
                    Ok(r) => match check_rendered(&r.config) {
                        problems if !problems.is_empty() => TenantOutcome::Invalid(problems),
                        _ => {
                            let config_version = r.version.clone();
                            rendered.insert(key.clone(), (r, selection));
                            TenantOutcome::Serving { config_version }
                        }
                    },
                    Err(problem) => TenantOutcome::CredentialsUnresolved(problem),
                }
            }
        };
        tenants.insert(
            key,
            TenantPlan {
                tenant_id,
                outcome,
                selected_pods,
            },
        );
    }

    let pods = live_pods
        .iter()
        .map(|pod| {
            let serving = rendered
                .values()
                .filter(|(_, selection)| selection.selects(pod))
                .map(|(r, _)| r)
                .collect();
            let plan = PodPlan {
                name: pod.name_any(),
                uid: pod.metadata.uid.clone().unwrap_or_default(),
                address: pod_address(pod),
                restarts: restarts(pod),
                snapshot: Snapshot::from_tenants(serving),
            };
            (plan.name.clone(), plan)
        })
        .collect();

    let stored = Snapshot::from_tenants(
        rendered
            .values()
            .filter(|(_, selection)| {
                selection.everything
                    || (!live_pods.is_empty() && live_pods.iter().all(|p| selection.selects(p)))
            })
            .map(|(r, _)| r)
            .collect(),
    );
    FleetPlan {
        tenants,
        pods,
        stored,
    }
}

/// Which pods a TenantPool selects.
#[derive(Clone)]
struct Selection {
    everything: bool,
    selector: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
}

impl Selection {
    fn of(tenant_pool: &TenantPool) -> Self {
        let selector = tenant_pool.spec.pooler_selector.clone();
        Self {
            everything: selector::is_everything(selector.as_ref()),
            selector,
        }
    }

    fn selects(&self, pod: &Pod) -> bool {
        if self.everything {
            return true;
        }
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        match &self.selector {
            None => true,
            // An invalid selector selects nothing; the tenant reports it as invalid.
            Some(s) => selector::matches(s, &labels).unwrap_or(false),
        }
    }

    /// Two selections share a pooler: both take the whole fleet (now and in
    /// future pods), or some live pod is selected by both.
    fn overlaps(&self, other: &Selection, pods: &[&Pod]) -> bool {
        (self.everything && other.everything)
            || pods.iter().any(|p| self.selects(p) && other.selects(p))
    }
}

fn is_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The IP to push to: only Running pods that are not terminating.
fn pod_address(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") || pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    status.pod_ip.clone().filter(|ip| !ip.is_empty())
}

/// Restarts of every container, init containers included: a pooler running as
/// a native sidecar (an init container with `restartPolicy: Always`) reports
/// its restarts there.
fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .map(|s| {
            s.container_statuses
                .iter()
                .chain(s.init_container_statuses.iter())
                .flatten()
                .map(|c| c.restart_count)
                .sum()
        })
        .unwrap_or(0)
}

/// A TenantPool's resolved Secrets.
struct Resolved {
    user: String,
    password: String,
    ca_pem: Option<String>,
}

/// Renders one valid TenantPool with its resolved Secrets.
fn render(
    tenant_pool: &TenantPool,
    secrets: &dyn SecretSource,
    default_access: &DefaultAccess,
) -> Result<RenderedTenant, CredentialsProblem> {
    let namespace = tenant_pool.namespace().unwrap_or_default();
    let spec = &tenant_pool.spec;
    let creds = &spec.database.credentials_secret;
    let secret = secrets.secret(&namespace, &creds.name).ok_or_else(|| {
        CredentialsProblem::SecretNotFound {
            namespace: namespace.clone(),
            secret: creds.name.clone(),
            username_key: creds.username_key.clone(),
            password_key: creds.password_key.clone(),
        }
    })?;
    let value = |key: &str, field: &'static str| -> Result<String, CredentialsProblem> {
        let bytes = secret_value(&secret, key).ok_or_else(|| CredentialsProblem::KeyNotFound {
            namespace: namespace.clone(),
            secret: creds.name.clone(),
            key: key.to_string(),
            field,
        })?;
        String::from_utf8(bytes).map_err(|_| CredentialsProblem::BadValue {
            namespace: namespace.clone(),
            secret: creds.name.clone(),
            key: key.to_string(),
            problem: "is not UTF-8 text",
        })
    };
    let user = value(&creds.username_key, "usernameKey")?;
    if user.trim().is_empty() {
        return Err(CredentialsProblem::BadValue {
            namespace,
            secret: creds.name.clone(),
            key: creds.username_key.clone(),
            problem: "is empty",
        });
    }
    let password = value(&creds.password_key, "passwordKey")?;

    let ca_pem = match &spec.database.ca_secret {
        None => None,
        Some(ca) => {
            let ca_secret = secrets.secret(&namespace, &ca.name).ok_or_else(|| {
                CredentialsProblem::CaSecretNotFound {
                    namespace: namespace.clone(),
                    secret: ca.name.clone(),
                }
            })?;
            let pem = secret_value(&ca_secret, &ca.key).ok_or_else(|| {
                CredentialsProblem::CaKeyNotFound {
                    namespace: namespace.clone(),
                    secret: ca.name.clone(),
                    key: ca.key.clone(),
                }
            })?;
            Some(
                String::from_utf8(pem).map_err(|_| CredentialsProblem::BadValue {
                    namespace: namespace.clone(),
                    secret: ca.name.clone(),
                    key: ca.key.clone(),
                    problem: "is not a PEM text",
                })?,
            )
        }
    };

    let mut config = render_config(
        tenant_pool,
        Resolved {
            user,
            password: String::new(),
            ca_pem,
        },
        default_access,
    );

    // The version hashes the configuration with the password replaced by the
    // Secret's identity and resourceVersion: a rotation changes the version, and
    // the version (shown in status) is no oracle for guessing the password. The
    // CA bundle is public and enters as is.
    let mut hasher = Sha256::new();
    let fingerprint = format!(
        "secret:{}:{}",
        secret.metadata.uid.as_deref().unwrap_or_default(),
        secret
            .metadata
            .resource_version
            .as_deref()
            .unwrap_or_default()
    );
    if let Some(db) = config.database.as_mut() {
        db.password = fingerprint;
    }
    hasher.update(
        serde_yaml::to_string(&config)
            .unwrap_or_default()
            .as_bytes(),
    );
    if let Some(db) = config.database.as_mut() {
        db.password = password;
    }
    Ok(RenderedTenant {
        config,
        version: short_hex(hasher),
    })
}

/// The admin API tenant of a TenantPool with `resolved` credentials.
fn render_config(
    tenant_pool: &TenantPool,
    resolved: Resolved,
    default_access: &DefaultAccess,
) -> TenantConfig {
    let spec = &tenant_pool.spec;
    let allowed_clients = if spec.access.allowed_clients.is_empty() {
        default_access.patterns(&tenant_pool.namespace().unwrap_or_default())
    } else {
        spec.access.allowed_clients.clone()
    };
    TenantConfig {
        id: tenant_pool.tenant_id(),
        database: Some(DatabaseTarget {
            host: spec.database.host.clone(),
            port: u32::from(spec.database.port),
            dbname: spec.database.dbname.clone(),
            user: resolved.user,
            password: resolved.password,
            password_file: String::new(),
            ssl_mode: spec
                .database
                .ssl_mode
                .map(|m| m.as_str().to_string())
                .unwrap_or_default(),
            ca_file: String::new(),
            ca_pem: resolved.ca_pem.unwrap_or_default(),
        }),
        pool: Some(PoolSettings {
            max_connections: spec.pool.max_connections,
            min_connections: Some(spec.pool.min_connections),
            max_lifetime: spec.pool.max_lifetime.clone(),
            max_idle_time: spec.pool.max_idle_time.clone(),
            acquire_timeout: spec.pool.acquire_timeout.clone(),
            max_waiting: Some(spec.pool.max_waiting),
            statement_timeout: spec.pool.statement_timeout.clone().unwrap_or_default(),
        }),
        leases: Some(LeaseSettings {
            default_ttl: spec.leases.default_ttl.clone(),
            max_ttl: spec.leases.max_ttl.clone(),
            max_per_client: spec.leases.max_per_client,
        }),
        allowed_clients,
    }
}

fn secret_value(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|s| s.clone().into_bytes())
        })
}

fn short_hex(hasher: Sha256) -> String {
    hasher.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The names of the Secrets (namespace, name) a TenantPool references, for
/// mapping Secret changes to TenantPools.
pub fn referenced_secrets(tenant_pool: &TenantPool) -> BTreeSet<(String, String)> {
    let namespace = tenant_pool.namespace().unwrap_or_default();
    let db = &tenant_pool.spec.database;
    std::iter::once(db.credentials_secret.name.clone())
        .chain(db.ca_secret.as_ref().map(|c| c.name.clone()))
        .map(|name| (namespace.clone(), name))
        .collect()
}

/// Whether a TenantPool's selection includes `pod` (for mapping pod changes).
pub fn selects_pod(tenant_pool: &TenantPool, pod: &Pod) -> bool {
    Selection::of(tenant_pool).selects(pod)
}

#[cfg(test)]
mod tests;
