//! The `TenantPool` custom resource (`tenantpools.teresa.dev/v1alpha1`): the Rust
//! types are the single source of the CRD schema that `teresa-operator crd` prints.
//!
//! Every field's doc comment becomes its description in the CRD (`kubectl explain`),
//! so each states its default, its unit and whether a change applies live. Invariants
//! that the API server can check are CEL rules (`x-kubernetes-validations`), so an
//! invalid TenantPool is refused at admission instead of failing later.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The finalizer the operator puts on every TenantPool so that deleting one first
/// removes the tenant from the pooler pods.
pub const FINALIZER: &str = "teresa.dev/tenant-removal";

/// Duration strings accepted by the CRD and the pooler: "0", or whole numbers
/// each with a unit ("500ms", "30s", "1h30m"). The pooler's own grammar.
pub const DURATION_PATTERN: &str = teresa_proto::config::DURATION_PATTERN;

/// Tenant ids, as the pooler accepts them.
pub const TENANT_ID_PATTERN: &str = teresa_proto::config::TENANT_ID_PATTERN;

/// `allowedClients` items: the pooler's pattern grammar as far as a regular
/// expression can say it.
pub const ALLOWED_CLIENT_PATTERN: &str = teresa_proto::identity::PATTERN_REGEX;

/// CEL: a duration the pooler requires to be greater than zero.
const POSITIVE_DURATION: &str = "duration(self) > duration('0s')";

/// Desired state of one tenant: which PostgreSQL database it reaches, the pool that
/// the pooler keeps for it, its lease policy and which clients may use it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "teresa.dev",
    version = "v1alpha1",
    kind = "TenantPool",
    namespaced,
    shortname = "tp",
    status = "TenantPoolStatus",
    derive = "PartialEq",
    doc = "A tenant of the Teresa poolers: its database, connection pool and lease policy.",
    printcolumn(name = "Tenant", type_ = "string", json_path = ".status.tenantId", description = "Tenant id clients pass to GetConnection"),
    printcolumn(name = "Max", type_ = "integer", json_path = ".spec.pool.maxConnections", description = "Server connections per pooler pod"),
    printcolumn(name = "Synced", type_ = "string", json_path = ".status.synced", description = "Pooler pods holding the current configuration / pods selected"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new(
        "(has(self.spec.tenantId) ? self.spec.tenantId : self.metadata.name) == (has(oldSelf.spec.tenantId) ? oldSelf.spec.tenantId : oldSelf.metadata.name)"
    ).message("tenantId is immutable: it defaults to metadata.name and cannot be set, changed or removed after creation; create a new TenantPool instead"),
    validation = Rule::new(
        "has(self.spec.tenantId) || size(self.metadata.name) <= 128"
    ).message("a TenantPool whose name is longer than 128 characters must set spec.tenantId (tenant ids are at most 128 characters)"),
)]
#[serde(rename_all = "camelCase")]
pub struct TenantPoolSpec {
    /// Tenant id that clients pass as `tenant_id`. Default: the TenantPool's name.
    /// Unique per pooler pod: when two TenantPools claim one id the older one keeps
    /// it. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = TENANT_ID_PATTERN)
    )]
    #[x_kube(validation = Rule::new("self == oldSelf").message("tenantId is immutable"))]
    pub tenant_id: Option<String>,

    /// The PostgreSQL database the tenant's connections go to. Changes apply live:
    /// the pooler replaces the tenant's pool, leases in flight finish on the old one.
    pub database: DatabaseSpec,

    /// Connection pool settings, per pooler pod. Changes apply live.
    #[serde(default)]
    pub pool: PoolSpec,

    /// Lease policy for clients of this tenant. Changes apply live to new leases.
    #[serde(default)]
    pub leases: LeaseSpec,

    /// Which clients may lease this tenant. Changes apply live to new leases.
    #[serde(default)]
    pub access: AccessSpec,

    /// Label selector narrowing which pooler pods (of the operator's fleet, chosen by
    /// its --pooler-namespace and --pooler-selector) serve this tenant. Default: every
    /// pod of the fleet. Changes apply live: newly selected pods get the tenant,
    /// deselected pods drain it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooler_selector: Option<LabelSelector>,
}

/// Connection target of a tenant.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    /// Host name or IP address of the PostgreSQL server. Required. Applies live.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,

    /// TCP port of the PostgreSQL server. Default: 5432. Applies live.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,

    /// Database name. Required. Applies live.
    #[schemars(length(min = 1, max = 63))]
    pub dbname: String,

    /// TLS to PostgreSQL: disable, prefer, require, verify-ca or verify-full.
    /// Default: prefer. Applies live (new server connections).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_mode: Option<SslMode>,

    /// Secret in this TenantPool's namespace holding the database user name and
    /// password. Required; Secrets of other namespaces cannot be referenced. A
    /// rotation (the Secret changes) is pushed to the poolers within seconds and
    /// applies to new server connections.
    pub credentials_secret: CredentialsSecretRef,

    /// Secret in this TenantPool's namespace holding the PEM CA bundle used to verify
    /// the server for sslMode verify-ca and verify-full. Default: the system roots.
    /// Applies live: the bundle travels in the pushed configuration, and a changed
    /// bundle applies to new server connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<CaSecretRef>,
}

/// TLS to PostgreSQL, as libpq names the modes: disable, prefer, require,
/// verify-ca or verify-full. Default: prefer. Applies live (new server connections).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it, unverified.
    Prefer,
    /// TLS always, unverified.
    Require,
    /// TLS always, server certificate signed by the CA.
    VerifyCa,
    /// TLS always, certificate signed by the CA and matching the host.
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling the pooler's configuration uses.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Reference to the Secret with the database credentials (same namespace).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialsSecretRef {
    /// Name of the Secret, in the TenantPool's namespace. Required.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,

    /// Key of the Secret holding the user name. Default: "username".
    #[serde(default = "default_username_key")]
    #[schemars(length(min = 1, max = 253))]
    pub username_key: String,

    /// Key of the Secret holding the password. Default: "password".
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253))]
    pub password_key: String,
}

/// Reference to a Secret with a PEM CA bundle (same namespace).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaSecretRef {
    /// Name of the Secret, in the TenantPool's namespace. Required.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,

    /// Key of the Secret holding the PEM bundle. Default: "ca.crt" (what
    /// cert-manager writes).
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Pool sizing and timeouts of the tenant's pool on each pooler pod.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minConnections <= self.maxConnections").message("pool.minConnections must not exceed pool.maxConnections"))]
pub struct PoolSpec {
    /// Upper bound of server connections per pooler pod (so the database sees up to
    /// this times the number of selected pods). Default: 20. Applies live.
    #[serde(default = "default_max_connections")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_connections: u32,

    /// Server connections each pooler pod keeps open even when idle. Default: 5.
    /// Applies live.
    #[serde(default = "default_min_connections")]
    #[schemars(range(min = 0, max = 10000))]
    pub min_connections: u32,

    /// A server connection older than this is closed once idle. Duration such as
    /// "30m". Default: "30m". Applies live.
    #[serde(default = "default_max_lifetime")]
    #[schemars(length(max = 16), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(POSITIVE_DURATION).message("pool.maxLifetime must be greater than zero"))]
    pub max_lifetime: String,

    /// An idle server connection unused this long is closed, down to
    /// minConnections. Duration such as "5m". Default: "5m". Applies live.
    #[serde(default = "default_max_idle_time")]
    #[schemars(length(max = 16), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(POSITIVE_DURATION).message("pool.maxIdleTime must be greater than zero"))]
    pub max_idle_time: String,

    /// How long GetConnection waits for a free connection before answering
    /// RESOURCE_EXHAUSTED. Duration such as "5s". Default: "5s". Applies live.
    #[serde(default = "default_acquire_timeout")]
    #[schemars(length(max = 16), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(POSITIVE_DURATION).message("pool.acquireTimeout must be greater than zero"))]
    pub acquire_timeout: String,

    /// Clients allowed to wait for a connection at once, per pooler pod; more are
    /// refused with RESOURCE_EXHAUSTED. Default: 128. Applies live.
    #[serde(default = "default_max_waiting")]
    #[schemars(range(min = 0, max = 100000))]
    pub max_waiting: u32,

    /// PostgreSQL statement_timeout of every server connection, such as "30s";
    /// "0s" disables it. Default: unset (the server's setting). Applies live to new
    /// server connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), regex(pattern = DURATION_PATTERN))]
    pub statement_timeout: Option<String>,
}

/// Lease policy of a tenant.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("duration(self.defaultTtl) <= duration(self.maxTtl)").message("leases.defaultTtl must not exceed leases.maxTtl"))]
pub struct LeaseSpec {
    /// TTL of a lease whose client asks for none; an expired lease is rolled back
    /// and returned to the pool. Duration such as "60s". Default: "60s". Applies
    /// live to new leases.
    #[serde(default = "default_default_ttl")]
    #[schemars(length(max = 16), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(POSITIVE_DURATION).message("leases.defaultTtl must be greater than zero"))]
    pub default_ttl: String,

    /// Largest TTL a client may ask for. Duration such as "1h". Default: "1h".
    /// Applies live to new leases.
    #[serde(default = "default_max_ttl")]
    #[schemars(length(max = 16), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(POSITIVE_DURATION).message("leases.maxTtl must be greater than zero"))]
    pub max_ttl: String,

    /// Leases one client identity may hold at once on one pooler pod; 0 means no
    /// limit. Default: 0. Applies live to new leases.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100000))]
    pub max_per_client: u32,
}

/// Who may lease a tenant.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AccessSpec {
    /// Client certificate identities allowed to lease this tenant: an exact
    /// identity such as "spiffe://example.org/ns/shop/sa/api", a prefix ending in
    /// "/*" (one or more whole path segments), or "*" (any authenticated
    /// identity). Default: empty, meaning the operator's --default-access: with
    /// "namespace" and a trust domain, only spiffe://<trust-domain>/ns/<this
    /// namespace>/*; with "any", any client the pooler accepts. Applies live:
    /// open leases of identities no longer admitted are revoked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 256),
        inner(length(min = 1, max = 512), regex(pattern = ALLOWED_CLIENT_PATTERN))
    )]
    pub allowed_clients: Vec<String>,
}

/// Observed state of a TenantPool, written by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TenantPoolStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The effective tenant id (spec.tenantId, or the name when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,

    /// Ready, CredentialsResolved, ConfigApplied and DatabaseReachable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Content hash of this tenant's rendered configuration (credentials enter it
    /// only through their Secret's resourceVersion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_version: Option<String>,

    /// Running pooler pods that this tenant selects.
    #[serde(default)]
    pub poolers_selected: u32,

    /// Of those, the reachable pods that confirmed the current configuration
    /// and report serving this tenant.
    #[serde(default)]
    pub poolers_synced: u32,

    /// poolersSynced/poolersSelected, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced: Option<String>,

    /// The tenant's server connections summed over its synced pooler pods,
    /// refreshed at most every 30 seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<ConnectionSummary>,
}

/// Live connection numbers of a tenant, summed over pooler pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionSummary {
    /// Server connections leased or running a statement.
    pub active: i64,
    /// Open server connections waiting in the pool.
    pub idle: i64,
    /// The sum of maxConnections over the pods.
    pub max: i64,
}

impl Default for PoolSpec {
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(),
            min_connections: default_min_connections(),
            max_lifetime: default_max_lifetime(),
            max_idle_time: default_max_idle_time(),
            acquire_timeout: default_acquire_timeout(),
            max_waiting: default_max_waiting(),
            statement_timeout: None,
        }
    }
}

impl Default for LeaseSpec {
    fn default() -> Self {
        Self {
            default_ttl: default_default_ttl(),
            max_ttl: default_max_ttl(),
            max_per_client: 0,
        }
    }
}

fn default_port() -> u16 {
    5432
}
fn default_username_key() -> String {
    "username".into()
}
fn default_password_key() -> String {
    "password".into()
}
fn default_ca_key() -> String {
    "ca.crt".into()
}
fn default_max_connections() -> u32 {
    20
}
fn default_min_connections() -> u32 {
    5
}
fn default_max_lifetime() -> String {
    "30m".into()
}
fn default_max_idle_time() -> String {
    "5m".into()
}
fn default_acquire_timeout() -> String {
    "5s".into()
}
fn default_max_waiting() -> u32 {
    128
}
fn default_default_ttl() -> String {
    "60s".into()
}
fn default_max_ttl() -> String {
    "1h".into()
}

impl TenantPool {
    /// The tenant id clients use: `spec.tenantId`, or the resource name.
    pub fn tenant_id(&self) -> String {
        self.spec
            .tenant_id
            .clone()
            .or_else(|| self.metadata.name.clone())
            .unwrap_or_default()
    }
}

/// The CRD as YAML, exactly what `teresa-operator crd` prints and
/// `crds/tenantpool.yaml` holds.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    let mut crd = serde_yaml::to_value(TenantPool::crd())?;
    reflow_descriptions(&mut crd);
    serde_yaml::to_string(&crd)
}

/// Joins the doc comments' wrapped lines in every `description` (blank lines stay
/// paragraph breaks): `kubectl explain` wraps text to the terminal itself and
/// would otherwise show the source's line breaks in the middle of sentences.
fn reflow_descriptions(value: &mut serde_yaml::Value) {
    match value {
        serde_yaml::Value::Mapping(map) => {
            for (key, value) in map.iter_mut() {
                match value {
                    serde_yaml::Value::String(text) if key.as_str() == Some("description") => {
                        *text = text
                            .split("\n\n")
                            .map(|paragraph| {
                                paragraph
                                    .lines()
                                    .map(str::trim)
                                    .collect::<Vec<_>>()
                                    .join(" ")
                            })
                            .collect::<Vec<_>>()
                            .join("\n\n");
                    }
                    other => reflow_descriptions(other),
                }
            }
        }
        serde_yaml::Value::Sequence(items) => items.iter_mut().for_each(reflow_descriptions),
        _ => {}
    }
}

#[cfg(test)]
mod tests;
