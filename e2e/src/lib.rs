//! Teresa's end-to-end kit: what a platform team sets up, against any real
//! Kubernetes API server given by a kubeconfig (`TERESA_E2E_KUBECONFIG`).
//!
//! [`cluster`] connects and installs the CRD from `crds/`; [`chart`] renders
//! `charts/teresa` (through `charts/check.sh --render`) and applies its RBAC;
//! [`database`] is a real PostgreSQL 15; [`fleet`] runs real `teresa-pooler`
//! processes on loopback addresses behind Pod objects whose status it keeps
//! the way a kubelet would (local fleet mode, for clusters without nodes);
//! [`operator`] runs `teresa-operator run` out of cluster as the chart's
//! ServiceAccount, with a token from the TokenRequest API; [`lease`] is a
//! client of the lease API; [`observe`] reads what `kubectl get tp`, the
//! conditions and the Events show; [`scenario`] puts them together. The
//! scenarios live in `tests/`.

#![forbid(unsafe_code)]

pub mod chart;
pub mod cluster;
pub mod database;
pub mod fleet;
pub mod lease;
pub mod observe;
pub mod operator;
pub mod scenario;

/// The Ready condition type of a TenantPool.
pub const READY: &str = "Ready";

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The repository root (the workspace).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ is inside the workspace")
        .to_path_buf()
}

/// Polls `check` every 100 ms until it returns `Ok`, or panics after `limit`
/// with `what` and the last `Err` (what was seen instead).
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if started.elapsed() >= limit => {
                panic!("{what}: not so after {limit:?}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Prints an observed timing in one greppable line (`cargo test -- --nocapture`
/// shows them; the report lists them per scenario).
pub fn report_timing(scenario: &str, what: &str, elapsed: Duration) {
    println!(
        "e2e-timing scenario={scenario} what={what:?} ms={}",
        elapsed.as_millis()
    );
}

/// A fresh lowercase suffix for names that must not collide across runs.
pub fn random_suffix() -> String {
    use rand::Rng as _;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(6)
        .map(|c| char::from(c).to_ascii_lowercase())
        .collect()
}

/// A directory under the system temp dir, removed on drop unless
/// `TERESA_E2E_KEEP` is set (then its logs stay for a post-mortem).
#[derive(Debug)]
pub struct WorkDir(PathBuf);

impl WorkDir {
    /// Creates `teresa-e2e-<tag>-<random>`.
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("teresa-e2e-{tag}-{}", random_suffix()));
        std::fs::create_dir_all(&dir).expect("create a work directory");
        Self(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::env::var_os("TERESA_E2E_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A free TCP port on every one of `hosts` (pods share port numbers, as in a
/// Deployment, so the operator's single `--admin-port` reaches them all).
pub fn free_port_on(hosts: &[std::net::IpAddr]) -> u16 {
    'search: for _ in 0..100 {
        let port = std::net::TcpListener::bind((hosts[0], 0))
            .expect("bind a loopback port")
            .local_addr()
            .expect("local address")
            .port();
        for host in &hosts[1..] {
            if std::net::TcpListener::bind((*host, port)).is_err() {
                continue 'search;
            }
        }
        return port;
    }
    panic!("no port free on all of {hosts:?}")
}

/// The path of a workspace binary (`teresa-pooler`, `teresa-operator`):
/// `$TERESA_E2E_<NAME>_BIN` (e.g. `TERESA_E2E_TERESA_POOLER_BIN`), else
/// `target/debug/<name>`. Panics if it is missing or older than the sources it
/// is built from, so a scenario never runs yesterday's code.
pub fn binary(name: &str) -> PathBuf {
    let var = format!("TERESA_E2E_{}_BIN", name.to_uppercase().replace('-', "_"));
    if let Some(path) = std::env::var_os(&var) {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let path = target.join("debug").join(name);
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is missing: run `cargo build -p teresa-pooler -p teresa-operator` first (or set {var})",
                path.display()
            )
        });
    let crate_dir = name.strip_prefix("teresa-").unwrap_or(name);
    for sources in [crate_dir, "proto"] {
        if let Some(newest) = newest_mtime(&repo_root().join(sources)) {
            assert!(
                newest <= built,
                "{} is older than the sources in {sources}/: run `cargo build -p teresa-pooler -p teresa-operator` first",
                path.display()
            );
        }
    }
    path
}

fn newest_mtime(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let time = if path.is_dir() {
            newest_mtime(&path)
        } else if path
            .extension()
            .is_some_and(|e| e == "rs" || e == "proto" || e == "toml")
        {
            entry.metadata().and_then(|m| m.modified()).ok()
        } else {
            None
        };
        newest = newest.max(time);
    }
    newest
}
