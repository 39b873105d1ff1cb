//! The one set of tenant rules and defaults, shared by the pooler (which
//! validates every snapshot it is given, by the admin API or the `--config`
//! file) and the operator (which runs exactly this validation on every
//! rendered tenant before pushing it). The CRD expresses as much of it as
//! OpenAPI and CEL can ([`DURATION_PATTERN`], [`TENANT_ID_PATTERN`],
//! [`crate::identity::PATTERN_REGEX`]).
//!
//! Validation is per tenant: a snapshot with one bad tenant still yields the
//! good ones, and each bad one comes back with every problem found, each
//! naming its field.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::admin::{PoolerConfig, TenantConfig};
use crate::identity::{Identity, Pattern};

/// The duration grammar of the pooler, the operator and the CRD: "0", or one
/// or more whole numbers each with a unit ("500ms", "30s", "1h30m").
pub const DURATION_PATTERN: &str = "^(0|([0-9]+(ms|s|m|h))+)$";

/// Tenant ids: letters, digits, '-', '_' or '.', 1 to [`MAX_TENANT_ID_LEN`]
/// characters, starting with a letter or digit.
pub const TENANT_ID_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]*$";

/// Pool and lease defaults, from the original project where it had them.
pub mod defaults {
    use std::time::Duration;

    pub const PORT: u16 = 5432;
    pub const MAX_CONNECTIONS: u32 = 20;
    pub const MIN_CONNECTIONS: u32 = 5;
    pub const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);
    pub const MAX_IDLE_TIME: Duration = Duration::from_secs(5 * 60);
    pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
    pub const MAX_WAITING: u32 = 128;
    pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
    pub const MAX_TTL: Duration = Duration::from_secs(60 * 60);
}

/// Upper bounds that keep one tenant from hurting the process.
pub const MAX_CONNECTIONS_LIMIT: u32 = 10_000;
/// The longest tenant id, in bytes.
pub const MAX_TENANT_ID_LEN: usize = 128;

/// A snapshot that failed validation: every problem found, each naming its field.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {}", .problems.join("; "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

/// A validated pooler configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidConfig {
    pub version: String,
    /// The snapshot's generation (0: none given).
    pub generation: u64,
    pub tenants: Vec<TenantSpec>,
    /// Tenants refused by [`check`] (always empty from [`validate`]).
    pub rejected: Vec<RejectedTenant>,
}

/// A tenant that failed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedTenant {
    /// Its id as given (possibly empty or invalid itself).
    pub id: String,
    /// Every problem found, each naming its field.
    pub problems: Vec<String>,
}

/// One tenant, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantSpec {
    pub id: String,
    pub target: TargetSpec,
    pub pool: PoolSpec,
    pub leases: LeaseSpec,
    /// Who may lease this tenant; empty: anyone, with or without an identity.
    pub allowed_clients: Vec<Pattern>,
}

/// Where and as whom to connect. `Debug` hides the password.
#[derive(Clone, PartialEq)]
pub struct TargetSpec {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    pub password: Secret,
    pub ssl_mode: SslMode,
    /// CAs that verify the server for verify-ca and verify-full; `None`: the
    /// system roots.
    pub ca: Option<CaBundle>,
}

/// Where a tenant's database CA bundle comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum CaBundle {
    /// PEM text carried in the configuration (`caPem`, what the operator sends).
    Pem(String),
    /// A PEM file read when the tenant's connector is built (`caFile`).
    File(PathBuf),
}

impl std::fmt::Debug for TargetSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetSpec")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .field("user", &self.user)
            .field("ssl_mode", &self.ssl_mode)
            .finish_non_exhaustive()
    }
}

/// A password, inline or read from a file at connect time.
#[derive(Clone, PartialEq)]
pub enum Secret {
    None,
    Inline(String),
    File(PathBuf),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::None => f.write_str("None"),
            Secret::Inline(_) => f.write_str("Inline(<redacted>)"),
            Secret::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

impl Secret {
    /// The password now; a file is read on every call, so rotating the file
    /// takes effect for the next connection.
    pub fn resolve(&self) -> std::io::Result<Option<String>> {
        match self {
            Secret::None => Ok(None),
            Secret::Inline(password) => Ok(Some(password.clone())),
            Secret::File(path) => {
                let text = std::fs::read_to_string(path)?;
                Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned()))
            }
        }
    }
}

/// How to secure the connection to PostgreSQL, as libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// Pool sizing and timing.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSpec {
    pub max_connections: u32,
    pub min_connections: u32,
    pub max_lifetime: Duration,
    pub max_idle_time: Duration,
    pub acquire_timeout: Duration,
    pub max_waiting: u32,
    /// `None`: no statement timeout.
    pub statement_timeout: Option<Duration>,
}

/// Lease TTLs and per-client limits.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseSpec {
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    /// 0: no limit.
    pub max_per_client: u32,
}

impl TenantSpec {
    /// True when a caller with `identity` (`None`: no client certificate)
    /// may lease this tenant: no list admits anyone; a list admits only an
    /// identity one of its patterns matches.
    pub fn allows(&self, identity: Option<&Identity>) -> bool {
        if self.allowed_clients.is_empty() {
            return true;
        }
        identity.is_some_and(|identity| self.allowed_clients.iter().any(|p| p.matches(identity)))
    }
}

/// Validates a snapshot as a whole: any problem in any tenant refuses it.
pub fn validate(snapshot: &PoolerConfig) -> Result<ValidConfig, ConfigError> {
    let checked = check(snapshot);
    if checked.rejected.is_empty() {
        Ok(checked)
    } else {
        Err(ConfigError {
            problems: checked
                .rejected
                .into_iter()
                .flat_map(|r| r.problems)
                .collect(),
        })
    }
}

/// Validates a snapshot tenant by tenant, collecting every problem rather
/// than stopping at the first. A duplicate id refuses every later tenant
/// with that id; the first one stands on its own merits.
pub fn check(snapshot: &PoolerConfig) -> ValidConfig {
    let mut seen = HashSet::new();
    let mut tenants = Vec::with_capacity(snapshot.tenants.len());
    let mut rejected = Vec::new();
    for (index, tenant) in snapshot.tenants.iter().enumerate() {
        let at = if tenant.id.is_empty() {
            format!("tenants[{index}]")
        } else {
            format!("tenants[{index}] ({})", tenant.id)
        };
        let mut problems = Vec::new();
        if !tenant.id.is_empty() && !seen.insert(tenant.id.as_str()) {
            problems.push(format!("{at}.id: duplicate tenant id {:?}", tenant.id));
        }
        match validate_tenant(tenant, &at, &mut problems) {
            Some(spec) if problems.is_empty() => tenants.push(spec),
            _ => rejected.push(RejectedTenant {
                id: tenant.id.clone(),
                problems,
            }),
        }
    }
    let version = if snapshot.version.is_empty() {
        content_version(snapshot)
    } else {
        snapshot.version.clone()
    };
    ValidConfig {
        version,
        generation: snapshot.generation,
        tenants,
        rejected,
    }
}

/// Validates one tenant alone, as the operator does for each rendered
/// tenant: every problem found, each prefixed with `at`.
pub fn check_tenant(tenant: &TenantConfig, at: &str) -> Result<TenantSpec, Vec<String>> {
    let mut problems = Vec::new();
    match validate_tenant(tenant, at, &mut problems) {
        Some(spec) if problems.is_empty() => Ok(spec),
        _ => Err(problems),
    }
}

/// A short content hash, used as the version of a snapshot that names none.
fn content_version(snapshot: &PoolerConfig) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    prost::Message::encode_to_vec(snapshot).hash(&mut hasher);
    format!("sha-{:016x}", hasher.finish())
}

/// Validates one tenant, appending its problems; `Some` when it had none.
pub fn validate_tenant(
    tenant: &TenantConfig,
    at: &str,
    problems: &mut Vec<String>,
) -> Option<TenantSpec> {
    let before = problems.len();
    if tenant.id.is_empty() {
        problems.push(format!("{at}.id: must not be empty"));
    } else if tenant.id.len() > MAX_TENANT_ID_LEN
        || !tenant.id.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !tenant
            .id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        problems.push(format!(
            "{at}.id: {:?} must be 1 to {MAX_TENANT_ID_LEN} characters of letters, digits, '-', '_' or '.', starting with a letter or digit",
            tenant.id
        ));
    }

    let default_db = Default::default();
    let db = tenant.database.as_ref().unwrap_or(&default_db);
    if db.host.trim().is_empty() {
        problems.push(format!("{at}.database.host: must not be empty"));
    }
    let port = match db.port {
        0 => defaults::PORT,
        p => u16::try_from(p).unwrap_or_else(|_| {
            problems.push(format!("{at}.database.port: {p} is not a TCP port"));
            0
        }),
    };
    if db.dbname.is_empty() {
        problems.push(format!("{at}.database.dbname: must not be empty"));
    }
    if db.user.is_empty() {
        problems.push(format!("{at}.database.user: must not be empty"));
    }
    let password = match (db.password.is_empty(), db.password_file.is_empty()) {
        (true, true) => Secret::None,
        (false, true) => Secret::Inline(db.password.clone()),
        (true, false) => Secret::File(PathBuf::from(&db.password_file)),
        (false, false) => {
            problems.push(format!(
                "{at}.database: set password or passwordFile, not both"
            ));
            Secret::None
        }
    };
    let ssl_mode = match db.ssl_mode.as_str() {
        "" | "prefer" => SslMode::Prefer,
        "disable" => SslMode::Disable,
        "require" => SslMode::Require,
        "verify-ca" => SslMode::VerifyCa,
        "verify-full" => SslMode::VerifyFull,
        other => {
            problems.push(format!(
                "{at}.database.sslMode: {other:?} is not one of disable, prefer, require, verify-ca, verify-full"
            ));
            SslMode::Prefer
        }
    };

    let ca = match (db.ca_pem.is_empty(), db.ca_file.is_empty()) {
        (true, true) => None,
        (false, true) => {
            if !db.ca_pem.contains("-----BEGIN CERTIFICATE-----") {
                problems.push(format!(
                    "{at}.database.caPem: holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\")"
                ));
            }
            Some(CaBundle::Pem(db.ca_pem.clone()))
        }
        (true, false) => Some(CaBundle::File(PathBuf::from(&db.ca_file))),
        (false, false) => {
            problems.push(format!("{at}.database: set caPem or caFile, not both"));
            None
        }
    };

    let default_pool = Default::default();
    let pool = tenant.pool.as_ref().unwrap_or(&default_pool);
    let max_connections = match pool.max_connections {
        0 => defaults::MAX_CONNECTIONS,
        n if n > MAX_CONNECTIONS_LIMIT => {
            problems.push(format!(
                "{at}.pool.maxConnections: {n} is above the limit of {MAX_CONNECTIONS_LIMIT}"
            ));
            n
        }
        n => n,
    };
    let min_connections = pool
        .min_connections
        .unwrap_or(defaults::MIN_CONNECTIONS.min(max_connections));
    if min_connections > max_connections {
        problems.push(format!(
            "{at}.pool.minConnections: {min_connections} is greater than maxConnections ({max_connections})"
        ));
    }
    let mut duration = |field: &str, text: &str, default: Duration, allow_zero: bool| {
        if text.is_empty() {
            return default;
        }
        match parse_duration(text) {
            Ok(d) if d.is_zero() && !allow_zero => {
                problems.push(format!("{at}.{field}: must be greater than zero"));
                default
            }
            Ok(d) => d,
            Err(e) => {
                problems.push(format!("{at}.{field}: {e}"));
                default
            }
        }
    };
    let max_lifetime = duration(
        "pool.maxLifetime",
        &pool.max_lifetime,
        defaults::MAX_LIFETIME,
        false,
    );
    let max_idle_time = duration(
        "pool.maxIdleTime",
        &pool.max_idle_time,
        defaults::MAX_IDLE_TIME,
        false,
    );
    let acquire_timeout = duration(
        "pool.acquireTimeout",
        &pool.acquire_timeout,
        defaults::ACQUIRE_TIMEOUT,
        false,
    );
    let statement_timeout = Some(duration(
        "pool.statementTimeout",
        &pool.statement_timeout,
        Duration::ZERO,
        true,
    ))
    .filter(|d| !d.is_zero());

    let default_leases = Default::default();
    let leases = tenant.leases.as_ref().unwrap_or(&default_leases);
    let default_ttl = duration(
        "leases.defaultTtl",
        &leases.default_ttl,
        defaults::DEFAULT_TTL,
        false,
    );
    let max_ttl = duration(
        "leases.maxTtl",
        &leases.max_ttl,
        defaults::MAX_TTL.max(default_ttl),
        false,
    );
    if default_ttl > max_ttl {
        problems.push(format!(
            "{at}.leases.defaultTtl: {} is longer than maxTtl ({})",
            format_duration(default_ttl),
            format_duration(max_ttl)
        ));
    }
    let mut allowed_clients = Vec::with_capacity(tenant.allowed_clients.len());
    for (i, client) in tenant.allowed_clients.iter().enumerate() {
        match Pattern::parse(client) {
            Ok(pattern) => allowed_clients.push(pattern),
            Err(e) => problems.push(format!("{at}.allowedClients[{i}]: {e}")),
        }
    }

    if problems.len() > before {
        return None;
    }
    Some(TenantSpec {
        id: tenant.id.clone(),
        target: TargetSpec {
            host: db.host.clone(),
            port,
            dbname: db.dbname.clone(),
            user: db.user.clone(),
            password,
            ssl_mode,
            ca,
        },
        pool: PoolSpec {
            max_connections,
            min_connections,
            max_lifetime,
            max_idle_time,
            acquire_timeout,
            max_waiting: pool.max_waiting.unwrap_or(defaults::MAX_WAITING),
            statement_timeout,
        },
        leases: LeaseSpec {
            default_ttl,
            max_ttl,
            max_per_client: leases.max_per_client,
        },
        allowed_clients,
    })
}

/// Parses durations like "250ms", "30s", "5m", "1h", "1h30m" or "0".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || {
        format!(
            "{text:?} is not a duration; use a number with a unit, like \"500ms\", \"30s\", \"5m\" or \"1h\""
        )
    };
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return Err(invalid());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(invalid)?;
        if digits == 0 {
            return Err(invalid());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(value),
            "s" => Duration::from_secs(value),
            "m" => Duration::from_secs(value.saturating_mul(60)),
            "h" => Duration::from_secs(value.saturating_mul(3600)),
            _ => return Err(invalid()),
        };
        total = total.saturating_add(part);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Formats a duration the way the config writes them ("1h", "30s", "250ms").
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}
