//! What a statement does to a server session, and how a session is reset
//! before its connection serves someone else: the next lessee never sees an
//! open transaction, settings, temporary tables, cursors, LISTENs, advisory
//! locks or SQL-level prepared statements of the previous one.

use deadpool_postgres::Object;
use tracing::warn;

use crate::lease::SessionMarks;
use crate::pool::TenantPool;

/// `DISCARD ALL` without `DEALLOCATE ALL`, so the pooler's own cached
/// prepared statements survive; `ROLLBACK` first ends any transaction
/// (a warning only when none is open). `DISCARD ALL` itself cannot run in
/// the implicit transaction of a multi-statement query.
const RESET: &str = "ROLLBACK; RESET ALL; SET SESSION AUTHORIZATION DEFAULT; CLOSE ALL; \
    UNLISTEN *; SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES";

/// The statement's leading keyword, upper-cased ("SELECT", "BEGIN", ...),
/// skipping white space, comments and parentheses.
pub fn leading_keyword(sql: &str) -> String {
    let mut rest = sql;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '(');
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, r)| r);
        } else {
            break;
        }
    }
    rest.chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_uppercase()
}

/// Marks that a statement with this keyword leaves on the session, beyond
/// [`SessionMarks::USED`]. Plain reads and writes leave nothing.
pub fn marks_for(keyword: &str) -> u8 {
    match keyword {
        "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "WITH" | "VALUES" | "TABLE" | "MERGE"
        | "EXPLAIN" => 0,
        "PREPARE" | "DEALLOCATE" | "DISCARD" => SessionMarks::USED | SessionMarks::PREPARED,
        _ => SessionMarks::USED,
    }
}

/// True when a one-shot statement left session state that must be reset.
pub fn one_shot_needs_reset(keyword: &str) -> bool {
    marks_for(keyword) != 0
}

/// Resets the session if it was used and hands the connection back to its
/// pool, or discards it when it is broken, stale or cannot be reset.
pub async fn return_to_pool(tenant: &TenantPool, conn: Object, marks: u8) {
    if marks & SessionMarks::USED != 0 && !conn.is_closed() {
        let mut reset = RESET.to_owned();
        if marks & SessionMarks::PREPARED != 0 {
            reset.push_str("; DEALLOCATE ALL");
        }
        if let Err(e) = conn.simple_query(&reset).await {
            warn!(tenant = %tenant.id(), error = %e, "session reset failed; discarding the connection");
            drop(Object::take(conn));
            return;
        }
        if marks & SessionMarks::PREPARED != 0 {
            conn.statement_cache.clear();
        }
    }
    if tenant.is_stale(&conn) {
        drop(Object::take(conn));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_keyword_skips_comments_and_space() {
        assert_eq!(leading_keyword("  select 1"), "SELECT");
        assert_eq!(leading_keyword("-- note\n/* x */ Begin"), "BEGIN");
        assert_eq!(leading_keyword("(SELECT 1) UNION (SELECT 2)"), "SELECT");
        assert_eq!(leading_keyword(""), "");
    }

    #[test]
    fn session_changing_statements_are_marked() {
        assert_eq!(marks_for("SELECT"), 0);
        assert!(one_shot_needs_reset("SET"));
        assert!(one_shot_needs_reset("BEGIN"));
        assert!(one_shot_needs_reset("CREATE"));
        assert_ne!(marks_for("PREPARE") & SessionMarks::PREPARED, 0);
    }
}
