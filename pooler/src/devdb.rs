//! A throwaway PostgreSQL 15 cluster: the database behind `teresa-pooler dev`
//! and the one PostgreSQL harness every test uses.
//!
//! [`ThrowawayPostgres::start`] runs `initdb` into a fresh directory under the
//! system temp dir, starts `postgres` on a free port of 127.0.0.1 with
//! SCRAM authentication and a random superuser password, and hands out
//! clients. Tests inject faults with [`ThrowawayPostgres::stop_fast`] and
//! [`ThrowawayPostgres::start_again`]. Dropping it stops the server at once
//! and removes the directory.
//!
//! PostgreSQL refuses to run as root, so when this process is root the
//! cluster is created and run as the `postgres` OS user.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use rand::Rng as _;
use rand::distr::Alphanumeric;
use tokio::process::Command;

/// Where Debian and Ubuntu's `postgresql-15` package installs the server binaries.
const DEFAULT_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
/// Environment variable naming the directory holding `initdb` and `pg_ctl`.
pub const PG_BIN_ENV: &str = "TERESA_PG_BIN";
const HOST: &str = "127.0.0.1";
const SUPERUSER: &str = "postgres";
const LOG_FILE_NAME: &str = "postgres.log";
/// Seconds `pg_ctl -w` waits for the server to start or stop.
const PG_CTL_TIMEOUT_SECS: &str = "60";
/// Attempts at starting on a fresh port when another process took the one we picked.
const PORT_ATTEMPTS: usize = 3;

/// Errors from creating, running or talking to a throwaway cluster.
#[derive(Debug, thiserror::Error)]
pub enum DevDbError {
    /// A PostgreSQL binary is missing.
    #[error("{tool} not found at {}; install postgresql-15 (apt-get install postgresql-15) or set {PG_BIN_ENV} to the directory holding initdb and pg_ctl", path.display())]
    BinaryNotFound {
        /// The binary, e.g. "initdb".
        tool: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// This process is root but there is no `postgres` user to run PostgreSQL as.
    #[error(
        "running as root, but /etc/passwd has no `postgres` user to run PostgreSQL as (PostgreSQL refuses to run as root); install postgresql-15, which creates it, or run as a non-root user"
    )]
    NoPostgresUser,
    /// No free TCP port could be reserved on 127.0.0.1.
    #[error("could not find a free TCP port on 127.0.0.1: {0}")]
    NoFreePort(#[source] io::Error),
    /// A file or directory operation failed.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "create".
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// A PostgreSQL program could not be run at all.
    #[error("could not run {tool}: {source}")]
    Spawn {
        /// The program, e.g. "pg_ctl".
        tool: &'static str,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// A PostgreSQL program ran and failed.
    #[error("{tool} {action} failed ({status}):\n{output}")]
    CommandFailed {
        /// The program, e.g. "pg_ctl".
        tool: &'static str,
        /// What it was asked to do, e.g. "start".
        action: &'static str,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its stderr and stdout, and for a failed start the server log's tail.
        output: String,
    },
    /// Connecting to the cluster failed.
    #[error(
        "could not connect to the throwaway PostgreSQL at 127.0.0.1:{port} as {user}: {source}"
    )]
    Connect {
        /// The cluster's port.
        port: u16,
        /// The role connected as.
        user: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A SQL statement the harness ran failed.
    #[error("could not {action} on the throwaway PostgreSQL: {source}")]
    Sql {
        /// What the statement was for; never the statement, which may hold a password.
        action: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
}

/// The OS account PostgreSQL runs as when this process is root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OsUser {
    uid: u32,
    gid: u32,
}

/// A running PostgreSQL 15 cluster in a temporary directory, removed on drop.
pub struct ThrowawayPostgres {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    port: u16,
    password: String,
    run_as: Option<OsUser>,
    /// Set once the directory is gone, so Drop has nothing left to do.
    cleaned_up: bool,
}

impl fmt::Debug for ThrowawayPostgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThrowawayPostgres")
            .field("data_dir", &self.data_dir)
            .field("port", &self.port)
            .field("running", &self.server_may_be_running())
            .finish_non_exhaustive()
    }
}

impl ThrowawayPostgres {
    /// Creates a new cluster and starts it; returns once it accepts connections.
    ///
    /// Binaries come from `$TERESA_PG_BIN`, else `pg_config --bindir`, else
    /// `/usr/lib/postgresql/15/bin`.
    pub async fn start() -> Result<Self, DevDbError> {
        let bin_dir = find_bin_dir().await;
        check_binaries(&bin_dir)?;
        let run_as = if running_as_root().await {
            Some(postgres_os_user()?)
        } else {
            None
        };
        let data_dir = std::env::temp_dir().join(format!(
            "teresa-devdb-{}-{}",
            std::process::id(),
            random_alphanumeric(12).to_lowercase()
        ));
        create_private_dir(&data_dir, run_as)?;
        let mut cluster = Self {
            bin_dir,
            data_dir,
            port: free_port()?,
            password: random_alphanumeric(32),
            run_as,
            cleaned_up: false,
        };
        // From here on, Drop removes the directory if anything fails.
        cluster.initdb().await?;
        let mut attempt = 1;
        loop {
            match cluster.pg_ctl_start().await {
                Ok(()) => break,
                Err(error) if attempt < PORT_ATTEMPTS && cluster.log_says_port_taken() => {
                    tracing::debug!(port = cluster.port, %error, "port taken, retrying on another");
                    cluster.port = free_port()?;
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
        tracing::info!(
            port = cluster.port,
            data_dir = %cluster.data_dir.display(),
            "throwaway PostgreSQL started"
        );
        Ok(cluster)
    }

    /// The host the cluster listens on: always `127.0.0.1`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The TCP port the cluster listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser role: `postgres`.
    pub fn superuser(&self) -> &str {
        SUPERUSER
    }

    /// The superuser's random password. Secret: never log it.
    pub fn superuser_password(&self) -> &str {
        &self.password
    }

    /// The cluster's data directory (also holds its Unix socket and log).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server log, useful when a test needs to know why PostgreSQL did something.
    pub fn log_file(&self) -> PathBuf {
        self.data_dir.join(LOG_FILE_NAME)
    }

    /// Connection settings for the superuser on `dbname`, over TCP.
    pub fn config(&self, dbname: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(HOST)
            .port(self.port)
            .user(SUPERUSER)
            .password(&self.password)
            .dbname(dbname)
            .application_name("teresa-devdb");
        config
    }

    /// Connects as the superuser to `dbname` without TLS.
    ///
    /// The connection runs on a spawned task that ends when the returned
    /// client is dropped or the server goes away.
    pub async fn client(&self, dbname: &str) -> Result<tokio_postgres::Client, DevDbError> {
        let (client, connection) = self
            .config(dbname)
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|source| DevDbError::Connect {
                port: self.port,
                user: SUPERUSER.to_owned(),
                source,
            })?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "throwaway PostgreSQL connection ended");
            }
        });
        Ok(client)
    }

    /// Makes `owner_role` a login role with `owner_password` and `db` a
    /// database it owns. Idempotent: an existing role gets the password
    /// (and LOGIN) again, an existing database gets the owner again.
    pub async fn create_database(
        &self,
        db: &str,
        owner_role: &str,
        owner_password: &str,
    ) -> Result<(), DevDbError> {
        let client = self.client("postgres").await?;
        let sql_error = |action: String| move |source| DevDbError::Sql { action, source };
        let role_exists = client
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&owner_role])
            .await
            .map_err(sql_error(format!("look up role {owner_role:?}")))?
            .is_some();
        let verb = if role_exists { "ALTER" } else { "CREATE" };
        client
            .batch_execute(&format!(
                "{verb} ROLE {} LOGIN PASSWORD {}",
                quote_identifier(owner_role),
                quote_literal(owner_password)
            ))
            .await
            .map_err(sql_error(format!(
                "{} role {owner_role:?}",
                verb.to_lowercase()
            )))?;
        let db_exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&db])
            .await
            .map_err(sql_error(format!("look up database {db:?}")))?
            .is_some();
        // CREATE DATABASE cannot run in a transaction block, hence the check above.
        let statement = if db_exists {
            format!(
                "ALTER DATABASE {} OWNER TO {}",
                quote_identifier(db),
                quote_identifier(owner_role)
            )
        } else {
            format!(
                "CREATE DATABASE {} OWNER {}",
                quote_identifier(db),
                quote_identifier(owner_role)
            )
        };
        client
            .batch_execute(&statement)
            .await
            .map_err(sql_error(format!("create database {db:?}")))
    }

    /// Stops the server the way an orderly shutdown does (`pg_ctl -m fast
    /// stop`): clients are disconnected, data is kept.
    pub async fn stop_fast(&self) -> Result<(), DevDbError> {
        self.pg_ctl("stop", &["stop", "-m", "fast"]).await
    }

    /// Starts the server again on the same port with the same data.
    pub async fn start_again(&self) -> Result<(), DevDbError> {
        self.pg_ctl_start().await
    }

    /// Stops the server cleanly and removes its directory.
    pub async fn shutdown(mut self) -> Result<(), DevDbError> {
        if self.server_may_be_running() {
            self.stop_fast().await?;
        }
        tokio::fs::remove_dir_all(&self.data_dir)
            .await
            .map_err(|source| DevDbError::Io {
                action: "remove",
                path: self.data_dir.clone(),
                source,
            })?;
        self.cleaned_up = true;
        Ok(())
    }

    async fn initdb(&self) -> Result<(), DevDbError> {
        // The password goes through a file so it never shows up in `ps`.
        let pwfile = self.data_dir.with_extension("pw");
        write_password_file(&pwfile, &self.password, self.run_as)?;
        let mut command = self.command("initdb");
        command
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-U", SUPERUSER, "--auth=scram-sha-256", "-E", "UTF8"])
            .args(["--locale=C", "--no-sync", "--no-instructions"])
            .arg(format!("--pwfile={}", pwfile.display()));
        let result = run(command, "initdb", "create the cluster").await;
        let removed = std::fs::remove_file(&pwfile);
        result?;
        removed.map_err(|source| DevDbError::Io {
            action: "remove",
            path: pwfile,
            source,
        })
    }

    async fn pg_ctl_start(&self) -> Result<(), DevDbError> {
        let data_dir = shell_quote(&self.data_dir.to_string_lossy());
        // pg_ctl hands -o to a shell, hence the quoting of the path.
        let options = format!(
            "-p {} -k {data_dir} -c listen_addresses={HOST} -c max_connections=500 \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            self.port
        );
        let log_file = self.log_file();
        let log_file = log_file.to_string_lossy();
        let result = self
            .pg_ctl("start", &["start", "-l", &log_file, "-o", &options])
            .await;
        match result {
            Ok(()) => Ok(()),
            Err(DevDbError::CommandFailed {
                tool,
                action,
                status,
                mut output,
            }) => {
                output.push_str("\nserver log (last lines):\n");
                output.push_str(&self.log_tail(20));
                Err(DevDbError::CommandFailed {
                    tool,
                    action,
                    status,
                    output,
                })
            }
            Err(other) => Err(other),
        }
    }

    async fn pg_ctl(&self, action: &'static str, args: &[&str]) -> Result<(), DevDbError> {
        let mut command = self.command("pg_ctl");
        command
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-w", "-t", PG_CTL_TIMEOUT_SECS])
            .args(args);
        run(command, "pg_ctl", action).await.map(drop)
    }

    /// A command for one of the PostgreSQL binaries, as the right OS user.
    fn command(&self, tool: &str) -> Command {
        let mut command = Command::new(self.bin_dir.join(tool));
        // The postgres user may not be able to enter our working directory.
        command
            .current_dir(&self.data_dir)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(user) = self.run_as {
            command.uid(user.uid).gid(user.gid);
        }
        command
    }

    fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn log_says_port_taken(&self) -> bool {
        self.log_tail(20).contains("Address already in use")
    }

    /// Whether a postmaster may be running on the data directory. The lock
    /// file, not a flag of ours, is the truth: it also covers a start that
    /// was cancelled after pg_ctl launched the server.
    fn server_may_be_running(&self) -> bool {
        self.data_dir.join("postmaster.pid").exists()
    }

    /// Stops the server immediately (no checkpoint), synchronously.
    fn stop_immediately(&self) {
        let mut command = std::process::Command::new(self.bin_dir.join("pg_ctl"));
        command
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-w", "-t", PG_CTL_TIMEOUT_SECS, "-m", "immediate", "stop"])
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(user) = self.run_as {
            std::os::unix::process::CommandExt::uid(&mut command, user.uid);
            std::os::unix::process::CommandExt::gid(&mut command, user.gid);
        }
        match command.status() {
            Ok(status) if status.success() => {}
            Ok(status) => tracing::warn!(%status, port = self.port, "pg_ctl immediate stop failed"),
            Err(error) => tracing::warn!(%error, port = self.port, "could not run pg_ctl"),
        }
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        if self.cleaned_up {
            return;
        }
        if self.server_may_be_running() {
            self.stop_immediately();
        }
        if let Err(error) = std::fs::remove_dir_all(&self.data_dir)
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(%error, data_dir = %self.data_dir.display(), "could not remove throwaway PostgreSQL directory");
        }
    }
}

async fn run(
    mut command: Command,
    tool: &'static str,
    action: &'static str,
) -> Result<Output, DevDbError> {
    let output = command
        .output()
        .await
        .map_err(|source| DevDbError::Spawn { tool, source })?;
    if output.status.success() {
        return Ok(output);
    }
    let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stdout));
    Err(DevDbError::CommandFailed {
        tool,
        action,
        status: output.status,
        output: text.trim_end().to_owned(),
    })
}

/// `$TERESA_PG_BIN`, else what `pg_config --bindir` says if it holds
/// `initdb`, else the Debian location of PostgreSQL 15.
async fn find_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(PG_BIN_ENV).filter(|dir| !dir.is_empty()) {
        return PathBuf::from(dir);
    }
    let pg_config = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .output()
        .await;
    if let Ok(output) = pg_config
        && output.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if dir.join("initdb").is_file() {
            return dir;
        }
    }
    PathBuf::from(DEFAULT_BIN_DIR)
}

fn check_binaries(bin_dir: &Path) -> Result<(), DevDbError> {
    for tool in ["initdb", "pg_ctl", "postgres"] {
        let path = bin_dir.join(tool);
        if !path.is_file() {
            return Err(DevDbError::BinaryNotFound { tool, path });
        }
    }
    Ok(())
}

/// Whether this process's effective user is root, from /proc, else `id -u`.
async fn running_as_root() -> bool {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status")
        && let Some(euid) = effective_uid_from_proc_status(&status)
    {
        return euid == 0;
    }
    match Command::new("id")
        .arg("-u")
        .stdin(Stdio::null())
        .output()
        .await
    {
        Ok(output) => String::from_utf8_lossy(&output.stdout).trim() == "0",
        Err(_) => false,
    }
}

/// The effective uid: the second number of the `Uid:` line of /proc/self/status.
fn effective_uid_from_proc_status(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
}

fn postgres_os_user() -> Result<OsUser, DevDbError> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|source| DevDbError::Io {
        action: "read",
        path: PathBuf::from("/etc/passwd"),
        source,
    })?;
    os_user_from_passwd(&passwd, "postgres").ok_or(DevDbError::NoPostgresUser)
}

/// Finds `name`'s uid and gid in the text of an /etc/passwd file.
fn os_user_from_passwd(passwd: &str, name: &str) -> Option<OsUser> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some(OsUser { uid, gid })
    })
}

fn create_private_dir(dir: &Path, owner: Option<OsUser>) -> Result<(), DevDbError> {
    use std::os::unix::fs::DirBuilderExt as _;
    let io_error = |action| {
        move |source| DevDbError::Io {
            action,
            path: dir.to_path_buf(),
            source,
        }
    };
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(io_error("create"))?;
    if let Some(user) = owner {
        std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid))
            .map_err(io_error("change the owner of"))?;
    }
    Ok(())
}

fn write_password_file(
    path: &Path,
    password: &str,
    owner: Option<OsUser>,
) -> Result<(), DevDbError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io_error = |action| {
        move |source| DevDbError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error("create"))?;
    if let Some(user) = owner {
        std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
            .map_err(io_error("change the owner of"))?;
    }
    writeln!(file, "{password}").map_err(io_error("write"))
}

/// Reserves a port the kernel says is free, then releases it for PostgreSQL.
fn free_port() -> Result<u16, DevDbError> {
    let listener = std::net::TcpListener::bind((HOST, 0)).map_err(DevDbError::NoFreePort)?;
    let port = listener
        .local_addr()
        .map_err(DevDbError::NoFreePort)?
        .port();
    Ok(port)
}

fn random_alphanumeric(len: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// `name` as a PostgreSQL quoted identifier.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `value` as a PostgreSQL string literal (standard_conforming_strings is on
/// by default, so backslashes need no escaping).
fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// `value` as one POSIX shell word.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests;
