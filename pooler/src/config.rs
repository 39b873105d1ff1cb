//! The pooler's tenant configuration: the YAML file of `--config` and the
//! admin API's `ApplyConfig` share one schema (`teresa_proto::admin::PoolerConfig`,
//! camelCase, unknown fields refused). The rules and defaults live once, in
//! [`teresa_proto::config`], which the operator runs too; this module adds
//! what only the pooler does: reading the file and the legacy client `dsn`.

use std::path::{Path, PathBuf};

use teresa_proto::admin::{PoolerConfig, TenantConfig};
pub use teresa_proto::config::*;

/// Reading a configuration file failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid YAML for the pooler schema: {source}")]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("config file {path}: {source}")]
    Invalid { path: PathBuf, source: ConfigError },
}

/// Reads and validates a YAML configuration file tenant by tenant: a bad
/// tenant is logged and left out, the others are returned.
pub fn load_file(path: &Path) -> Result<ValidConfig, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    let snapshot = parse_yaml(&text).map_err(|source| LoadError::Parse {
        path: path.to_owned(),
        source,
    })?;
    let checked = check(&snapshot);
    for rejected in &checked.rejected {
        tracing::warn!(path = %path.display(), tenant = %rejected.id, problems = %rejected.problems.join("; "), "config file: tenant rejected; the others apply");
    }
    Ok(checked)
}

/// Parses YAML into the snapshot schema (unknown fields are errors).
pub fn parse_yaml(text: &str) -> Result<PoolerConfig, serde_yaml::Error> {
    serde_yaml::from_str(text)
}

/// The tenant of a legacy client-supplied `dsn` (`--allow-client-dsn`), with
/// the default pool and lease settings. Errors never echo the DSN.
pub fn spec_from_dsn(tenant: &str, dsn: &str) -> Result<TenantSpec, String> {
    use tokio_postgres::config::{Host, SslMode as PgSslMode};
    let pg: tokio_postgres::Config = dsn
        .parse()
        .map_err(|e| format!("dsn is not a valid PostgreSQL connection string: {e}"))?;
    let host = pg
        .get_hosts()
        .iter()
        .find_map(|h| match h {
            Host::Tcp(host) => Some(host.clone()),
            _ => None,
        })
        .ok_or("dsn: a TCP host is required")?;
    let user = pg.get_user().ok_or("dsn: user is required")?.to_owned();
    let password = pg
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let snapshot = TenantConfig {
        id: tenant.to_owned(),
        database: Some(teresa_proto::admin::DatabaseTarget {
            host,
            port: pg
                .get_ports()
                .first()
                .copied()
                .unwrap_or(defaults::PORT)
                .into(),
            dbname: pg.get_dbname().unwrap_or(&user).to_owned(),
            user,
            password,
            ssl_mode: match pg.get_ssl_mode() {
                PgSslMode::Disable => "disable",
                PgSslMode::Require => "require",
                _ => "prefer",
            }
            .to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut problems = Vec::new();
    validate_tenant(&snapshot, "dsn", &mut problems).ok_or_else(|| problems.join("; "))
}

#[cfg(test)]
mod tests;
