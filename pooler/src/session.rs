//! How a server connection leaves a call: the [`Checkout`] guard owns it
//! from the moment it leaves the pool, and only an explicit
//! [`Checkout::give_back`] returns it, after a reset when it was used. Every
//! other way out (a dropped future, an aborted task, a panic, a failed reset)
//! discards the connection: closing it ends the server session, which rolls
//! back and forgets everything. The next user never sees an open
//! transaction, settings, temporary tables, cursors, LISTENs, advisory locks,
//! sequence state or SQL-level prepared statements of the previous one.

use std::ops::Deref;

use deadpool_postgres::Object;
use tracing::warn;

use crate::pool::TenantPool;

/// Undoes everything a session can keep, in one round trip, keeping the
/// pooler's own protocol-level prepared statements (`DISCARD ALL` would drop
/// them, and cannot run in this implicit transaction anyway). `ROLLBACK`
/// first ends any transaction (only a warning when none is open); `RESET ALL`
/// goes back to the session defaults, which include the tenant's settings
/// sent as startup options (`statementTimeout`); the `DO` block deallocates
/// the statements a client prepared with SQL `PREPARE` (`from_sql`), never
/// the pooler's.
pub const RESET: &str = "ROLLBACK; RESET ALL; SET SESSION AUTHORIZATION DEFAULT; CLOSE ALL; \
    UNLISTEN *; SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES; \
    DO $teresa$DECLARE s text; BEGIN FOR s IN SELECT name FROM pg_prepared_statements \
    WHERE from_sql LOOP EXECUTE format('DEALLOCATE %I', s); END LOOP; END$teresa$";

/// A server connection taken from a tenant's pool. Dropped without
/// [`Self::give_back`], it is discarded (closed), never returned as it is.
pub struct Checkout(Option<Object>);

impl Checkout {
    pub fn new(conn: Object) -> Self {
        Checkout(Some(conn))
    }

    /// Closes the connection and frees its place in the pool.
    pub fn discard(self) {
        drop(self);
    }

    /// Resets the session if `reset`, then hands the connection back to its
    /// pool; discards it instead when it is closed, was opened with settings
    /// that have changed since, or the reset fails. Cancelled half-way (the
    /// future dropped), it discards.
    pub async fn give_back(mut self, tenant: &TenantPool, reset: bool) {
        let Some(conn) = self.0.as_ref() else {
            return;
        };
        if conn.is_closed() || tenant.is_stale(conn) {
            return;
        }
        if reset && let Err(e) = conn.simple_query(RESET).await {
            warn!(tenant = %tenant.id(), error = %e, "session reset failed; discarding the connection");
            return;
        }
        // Back to deadpool, as it is now: clean.
        drop(self.0.take());
    }
}

impl Deref for Checkout {
    type Target = Object;

    fn deref(&self) -> &Object {
        self.0
            .as_ref()
            .expect("a checkout holds its connection until dropped")
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            // Detached from the pool: the client closes when this is dropped.
            drop(Object::take(conn));
        }
    }
}
