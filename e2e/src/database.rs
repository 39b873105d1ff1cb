//! A real PostgreSQL 15 (the pooler's throwaway cluster, [`ThrowawayPostgres`])
//! with one database and login role per tenant.

use teresa_pooler::devdb::ThrowawayPostgres;

/// The scenario's PostgreSQL.
pub struct Database {
    /// The running cluster; dropped, it stops and its directory goes.
    pub pg: ThrowawayPostgres,
}

/// One tenant's database, role and current password.
#[derive(Clone, Debug)]
pub struct TenantDb {
    /// Database name.
    pub dbname: String,
    /// Login role.
    pub user: String,
    /// The role's password. Secret: never printed.
    pub password: String,
}

impl Database {
    /// Starts a throwaway cluster on a free port of 127.0.0.1.
    pub async fn start() -> Self {
        let pg = ThrowawayPostgres::start()
            .await
            .unwrap_or_else(|e| panic!("cannot start PostgreSQL 15: {e}"));
        Self { pg }
    }

    /// Creates database `db_<name>` owned by role `role_<name>` with a table
    /// `owner(name text)` holding the one row `name`, so a client can tell
    /// which database it reached.
    pub async fn tenant(&self, name: &str) -> TenantDb {
        let tenant = TenantDb {
            dbname: format!("db_{name}"),
            user: format!("role_{name}"),
            password: format!("pw-e2e-{}", crate::random_suffix()),
        };
        self.pg
            .create_database(&tenant.dbname, &tenant.user, &tenant.password)
            .await
            .unwrap_or_else(|e| panic!("create database for {name}: {e}"));
        let client = self
            .pg
            .client(&tenant.dbname)
            .await
            .expect("connect as superuser");
        client
            .batch_execute(&format!(
                "SET ROLE {user}; CREATE TABLE owner (name text NOT NULL); INSERT INTO owner VALUES ('{name}');",
                user = tenant.user
            ))
            .await
            .expect("create the owner table");
        tenant
    }

    /// `ALTER ROLE ... PASSWORD`: the database side of a password rotation.
    pub async fn rotate_password(&self, tenant: &mut TenantDb) {
        tenant.password = format!("pw-e2e-{}", crate::random_suffix());
        let client = self
            .pg
            .client("postgres")
            .await
            .expect("connect as superuser");
        client
            .batch_execute(&format!(
                "ALTER ROLE {} PASSWORD '{}'",
                tenant.user, tenant.password
            ))
            .await
            .expect("ALTER ROLE ... PASSWORD");
    }

    /// Server connections open to `dbname` (what the poolers hold).
    pub async fn backends(&self, dbname: &str) -> i64 {
        let client = self
            .pg
            .client("postgres")
            .await
            .expect("connect as superuser");
        client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'",
                &[&dbname],
            )
            .await
            .expect("count backends")
            .get(0)
    }
}

impl Database {
    /// Turns on TLS with a server certificate from `ca` (for 127.0.0.1), as a
    /// managed PostgreSQL would present: `sslMode: verify-ca` can check it.
    /// Called again with another CA, it rotates the server certificate.
    pub async fn serve_tls(&self, ca: &teresa_pooler::certs::DevCa) {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let dir = self.pg.data_dir();
        let owner = std::fs::metadata(dir).expect("data dir");
        let server = ca
            .issue_server(&["localhost"], &["127.0.0.1".parse().expect("ip")])
            .expect("issue the database server certificate");
        let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
        server
            .write(&cert, &key)
            .expect("write the database server certificate");
        for path in [&cert, &key] {
            std::os::unix::fs::chown(path, Some(owner.uid()), Some(owner.gid()))
                .expect("chown to the server's user");
        }
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .expect("chmod the key");
        let client = self
            .pg
            .client("postgres")
            .await
            .expect("connect as superuser");
        for statement in [
            format!("ALTER SYSTEM SET ssl_cert_file = '{}'", cert.display()),
            format!("ALTER SYSTEM SET ssl_key_file = '{}'", key.display()),
            "ALTER SYSTEM SET ssl = on".to_string(),
            "SELECT pg_reload_conf()".to_string(),
        ] {
            client
                .batch_execute(&statement)
                .await
                .unwrap_or_else(|e| panic!("{statement}: {e}"));
        }
    }

    /// Closes every server connection to `dbname`, so the next lease opens a
    /// new one (with the current password, through the current CA).
    pub async fn terminate_backends(&self, dbname: &str) {
        let client = self
            .pg
            .client("postgres")
            .await
            .expect("connect as superuser");
        client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&dbname],
            )
            .await
            .expect("terminate backends");
    }
}
