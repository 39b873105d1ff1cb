//! Whether a one-shot statement can leave anything on its server session,
//! decided with PostgreSQL's own parser (libpg_query, through `pg_query`).
//!
//! The verdict is [`Verdict::Inert`] only for one plain `SELECT` (which
//! covers `VALUES`, `TABLE t` and parenthesized selects) with no `INTO`, no
//! locking clause, no data-modifying `WITH`, and no function call outside
//! [`SIDE_EFFECT_FREE`]. Everything else, parse failures included, is
//! [`Verdict::Stateful`]: its connection is reset before anyone else uses it.
//! Writes are stateful too: a column default or a trigger may call
//! `nextval` or `set_config`, which the text does not show.
//!
//! Verdicts are memoized per SQL text, so a statement is parsed once per
//! pooler (until the memo fills and starts over).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value as Json;

/// What a statement may leave on its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Leaves nothing: the connection goes back as it is.
    Inert,
    /// May leave something: reset the session afterwards.
    Stateful,
}

/// Distinct SQL texts remembered before the memo starts over.
const MEMO_MAX: usize = 4096;

/// What the parser says of one SQL text.
#[derive(Debug, Clone)]
pub struct Classified {
    pub verdict: Verdict,
    /// The command tag's verb the server will report (`SELECT`, `INSERT`,
    /// `BEGIN`, ...), from the statement's parse tree, not from its text.
    pub tag: Arc<str>,
}

static MEMO: Mutex<Option<HashMap<String, Classified>>> = Mutex::new(None);

/// The verdict and tag for `sql`, parsed once and then remembered.
pub fn classified(sql: &str) -> Classified {
    if let Some(c) = MEMO
        .lock()
        .expect("memo poisoned")
        .as_ref()
        .and_then(|m| m.get(sql))
    {
        return c.clone();
    }
    let c = analyze(sql);
    let mut memo = MEMO.lock().expect("memo poisoned");
    let map = memo.get_or_insert_with(HashMap::new);
    if map.len() >= MEMO_MAX {
        map.clear();
    }
    map.insert(sql.to_owned(), c.clone());
    c
}

fn analyze(sql: &str) -> Classified {
    let parsed = pg_query::parse(sql, 0).ok();
    let node = parsed
        .as_ref()
        .and_then(|p| match p.protobuf.stmts.as_slice() {
            [raw] => raw.stmt.as_ref().and_then(|s| s.node.as_ref()),
            _ => None,
        });
    Classified {
        verdict: node.map_or(Verdict::Stateful, verdict_of),
        tag: tag_of(sql, node).into(),
    }
}

/// The verb of the command tag PostgreSQL reports for this statement.
fn tag_of(sql: &str, node: Option<&pg_query::NodeEnum>) -> String {
    use pg_query::NodeEnum as N;
    use pg_query::protobuf::TransactionStmtKind as T;
    let verb = match node {
        Some(N::SelectStmt(_)) => Some("SELECT"),
        Some(N::InsertStmt(_)) => Some("INSERT"),
        Some(N::UpdateStmt(_)) => Some("UPDATE"),
        Some(N::DeleteStmt(_)) => Some("DELETE"),
        Some(N::MergeStmt(_)) => Some("MERGE"),
        Some(N::TransactionStmt(t)) => match T::try_from(t.kind) {
            Ok(T::TransStmtBegin | T::TransStmtStart) => Some("BEGIN"),
            Ok(T::TransStmtCommit) => Some("COMMIT"),
            Ok(T::TransStmtRollback) => Some("ROLLBACK"),
            _ => None,
        },
        _ => None,
    };
    if let Some(verb) = verb {
        return verb.to_owned();
    }
    // Other statements: their first keyword, as PostgreSQL's scanner reads
    // it (comments of every form skipped).
    pg_query::scan(sql)
        .ok()
        .and_then(|scan| {
            scan.tokens
                .iter()
                .find(|t| t.keyword_kind != 0)
                .and_then(|t| sql.get(t.start as usize..t.end as usize))
                .map(str::to_ascii_uppercase)
        })
        .unwrap_or_default()
}

/// The verdict alone (tests).
#[cfg(test)]
fn classify(sql: &str) -> Verdict {
    analyze(sql).verdict
}

/// Built-in functions that change no session state (no settings, sequences,
/// locks, random seed, large objects, other connections), called by their
/// plain or `pg_catalog.` name. Anything not listed is treated as stateful.
const SIDE_EFFECT_FREE: &[&str] = &[
    // aggregates and window functions
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "every",
    "bit_and",
    "bit_or",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "percentile_cont",
    "percentile_disc",
    "mode",
    "row_number",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "ntile",
    "lag",
    "lead",
    "first_value",
    "last_value",
    "nth_value",
    // time
    "now",
    "clock_timestamp",
    "statement_timestamp",
    "transaction_timestamp",
    "timeofday",
    "date_trunc",
    "date_part",
    "extract",
    "age",
    "make_date",
    "make_time",
    "make_timestamp",
    "make_timestamptz",
    "make_interval",
    "to_char",
    "to_date",
    "to_timestamp",
    "to_number",
    "isfinite",
    // strings
    "lower",
    "upper",
    "initcap",
    "length",
    "char_length",
    "character_length",
    "octet_length",
    "bit_length",
    "substr",
    "substring",
    "position",
    "strpos",
    "starts_with",
    "trim",
    "btrim",
    "ltrim",
    "rtrim",
    "lpad",
    "rpad",
    "replace",
    "translate",
    "concat",
    "concat_ws",
    "format",
    "left",
    "right",
    "repeat",
    "reverse",
    "split_part",
    "string_to_array",
    "array_to_string",
    "regexp_replace",
    "regexp_match",
    "regexp_matches",
    "regexp_split_to_array",
    "regexp_split_to_table",
    "quote_ident",
    "quote_literal",
    "quote_nullable",
    "md5",
    "sha224",
    "sha256",
    "sha384",
    "sha512",
    "encode",
    "decode",
    "ascii",
    "chr",
    "to_hex",
    // numbers
    "abs",
    "round",
    "trunc",
    "floor",
    "ceil",
    "ceiling",
    "sqrt",
    "cbrt",
    "power",
    "pow",
    "exp",
    "ln",
    "log",
    "mod",
    "sign",
    "div",
    "greatest",
    "least",
    "width_bucket",
    // arrays, sets, JSON
    "generate_series",
    "generate_subscripts",
    "unnest",
    "array_length",
    "array_lower",
    "array_upper",
    "array_position",
    "array_positions",
    "array_append",
    "array_prepend",
    "array_cat",
    "array_remove",
    "cardinality",
    "json_build_object",
    "jsonb_build_object",
    "json_build_array",
    "jsonb_build_array",
    "to_json",
    "to_jsonb",
    "row_to_json",
    "json_array_elements",
    "jsonb_array_elements",
    "json_array_elements_text",
    "jsonb_array_elements_text",
    "json_each",
    "jsonb_each",
    "json_each_text",
    "jsonb_each_text",
    "json_object_keys",
    "jsonb_object_keys",
    "json_array_length",
    "jsonb_array_length",
    "json_typeof",
    "jsonb_typeof",
    "jsonb_set",
    "jsonb_insert",
    "jsonb_strip_nulls",
    "jsonb_pretty",
    "jsonb_path_query",
    "jsonb_path_exists",
    "jsonb_extract_path",
    "jsonb_extract_path_text",
    "json_extract_path",
    "json_extract_path_text",
    // identity and introspection
    "gen_random_uuid",
    "version",
    "current_database",
    "current_schema",
    "current_schemas",
    "current_setting",
    "pg_backend_pid",
    "pg_typeof",
    "format_type",
    "has_table_privilege",
    "has_schema_privilege",
    "has_database_privilege",
    "pg_has_role",
    "pg_table_is_visible",
    "pg_get_indexdef",
    "pg_get_viewdef",
    "pg_get_constraintdef",
    "pg_relation_size",
    "pg_total_relation_size",
    "pg_database_size",
    "pg_size_pretty",
    "obj_description",
    "col_description",
    "num_nulls",
    "num_nonnulls",
];

/// Decides for one parsed statement.
fn verdict_of(node: &pg_query::NodeEnum) -> Verdict {
    if !matches!(node, pg_query::NodeEnum::SelectStmt(_)) {
        return Verdict::Stateful;
    }
    // Every node of the tree, through its serialized form: no node kind can
    // hide from a walk that does not know it.
    match serde_json::to_value(node) {
        Ok(tree) if inert(&tree) => Verdict::Inert,
        _ => Verdict::Stateful,
    }
}

fn inert(tree: &Json) -> bool {
    match tree {
        Json::Object(fields) => fields.iter().all(|(key, value)| match key.as_str() {
            "FuncCall" => side_effect_free(value) && inert(value),
            // SELECT ... INTO creates a table; FOR UPDATE / SHARE takes locks.
            "into_clause" | "IntoClause" => value.is_null(),
            "LockingClause" => false,
            "locking_clause" => value.as_array().is_none_or(|a| a.is_empty()) && inert(value),
            // A data-modifying WITH, or any statement nested in the tree.
            "SelectStmt" | "RawStmt" => inert(value),
            k if k.ends_with("Stmt") => false,
            _ => inert(value),
        }),
        Json::Array(items) => items.iter().all(inert),
        _ => true,
    }
}

/// True for a call of a listed built-in by its plain or `pg_catalog.` name.
fn side_effect_free(call: &Json) -> bool {
    let Some(parts) = call.get("funcname").and_then(Json::as_array) else {
        return false;
    };
    let names: Vec<&str> = parts
        .iter()
        .filter_map(|p| p.pointer("/node/String/sval").and_then(Json::as_str))
        .collect();
    if names.len() != parts.len() {
        return false;
    }
    let name = match names.as_slice() {
        [name] => name,
        ["pg_catalog", name] => name,
        _ => return false,
    };
    SIDE_EFFECT_FREE.contains(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        use Verdict::{Inert, Stateful};
        let table: &[(&str, Verdict)] = &[
            // plain reads
            ("SELECT 1", Inert),
            ("select * from accounts where id = $1", Inert),
            ("SELECT count(*), max(id) FROM t", Inert),
            ("SELECT pg_catalog.lower(name) FROM t", Inert),
            ("VALUES (1), (2)", Inert),
            ("TABLE accounts", Inert),
            ("(SELECT 1) UNION (SELECT 2)", Inert),
            ("WITH x AS (SELECT 1 AS a) SELECT a FROM x", Inert),
            ("SELECT 'INSERT'", Inert),
            ("WITH x AS (SELECT 1) SELECT 'INSERT' FROM x", Inert),
            ("SELECT id FROM t WHERE id IN (SELECT id FROM u)", Inert),
            ("SELECT $1::int + 1", Inert),
            // settings through set_config, in every wrapper
            ("SELECT set_config('search_path', 'evil', false)", Stateful),
            ("SELECT pg_catalog.set_config('role', 'x', false)", Stateful),
            (
                "SELECT set_config('session_authorization', 'x', false)",
                Stateful,
            ),
            (
                "SELECT set_config('statement_timeout', '0', false)",
                Stateful,
            ),
            ("SELECT SET_CONFIG('search_path', 'evil', false)", Stateful),
            (
                "WITH s AS (SELECT set_config('search_path','evil',false)) SELECT * FROM s",
                Stateful,
            ),
            (
                "VALUES (set_config('search_path', 'evil', false))",
                Stateful,
            ),
            (
                "(SELECT set_config('search_path', 'evil', false))",
                Stateful,
            ),
            (
                "SELECT 1 WHERE set_config('search_path','evil',false) IS NOT NULL",
                Stateful,
            ),
            (
                "SELECT * FROM t ORDER BY set_config('a.b', 'c', false)",
                Stateful,
            ),
            (
                "SELECT * FROM t LIMIT length(set_config('a.b', 'c', false))",
                Stateful,
            ),
            ("SELECT * FROM set_config('a.b', 'c', false)", Stateful),
            ("SELECT (SELECT set_config('a.b', 'c', false))", Stateful),
            ("SELECT lower(set_config('a.b', 'c', false))", Stateful),
            // temp objects
            ("SELECT * INTO TEMP TABLE accounts FROM t", Stateful),
            ("SELECT 1 INTO x", Stateful),
            (
                "EXPLAIN ANALYZE CREATE TEMP TABLE accounts AS SELECT 1",
                Stateful,
            ),
            ("EXPLAIN SELECT 1", Stateful),
            ("CREATE TEMP TABLE x (a int)", Stateful),
            // locks, sequences, other side effects
            ("SELECT pg_advisory_lock(42)", Stateful),
            ("SELECT pg_try_advisory_lock(42)", Stateful),
            ("SELECT nextval('s')", Stateful),
            ("SELECT setval('s', 1)", Stateful),
            ("SELECT currval('s')", Stateful),
            ("SELECT lo_open(1, 1)", Stateful),
            ("SELECT dblink_connect('x')", Stateful),
            ("SELECT random()", Stateful),
            ("SELECT my_function()", Stateful),
            ("SELECT public.lower('x')", Stateful),
            ("SELECT * FROM t FOR UPDATE", Stateful),
            ("SELECT * FROM t FOR SHARE SKIP LOCKED", Stateful),
            // writes, data-modifying WITH, utility and transaction control
            ("INSERT INTO t VALUES (1) RETURNING id", Stateful),
            ("UPDATE t SET id = 2", Stateful),
            ("DELETE FROM t", Stateful),
            (
                "WITH x AS (INSERT INTO t VALUES (1) RETURNING id) SELECT * FROM x",
                Stateful,
            ),
            ("SET search_path = evil", Stateful),
            ("RESET ALL", Stateful),
            ("BEGIN", Stateful),
            ("START TRANSACTION", Stateful),
            ("LISTEN x", Stateful),
            ("PREPARE s3 AS SELECT 1", Stateful),
            ("DEALLOCATE ALL", Stateful),
            ("DISCARD ALL", Stateful),
            ("DO $$ BEGIN PERFORM 1; END $$", Stateful),
            ("CALL p()", Stateful),
            ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", Stateful),
            ("SELECT 1; SELECT 2", Stateful),
            ("SELECT 1; BEGIN", Stateful),
            // what fooled the keyword scanner
            ("/* /* */ SELECT */ BEGIN", Stateful),
            ("/* SELECT */ BEGIN", Stateful),
            ("-- SELECT\rBEGIN", Stateful),
            ("--x\r\nBEGIN", Stateful),
            ("\rBEGIN", Stateful),
            ("( BEGIN )", Stateful),
            // unparsable
            ("SELEC 1", Stateful),
            ("SELECT (", Stateful),
        ];
        for (sql, expected) in table {
            assert_eq!(classify(sql), *expected, "{sql:?}");
        }
    }

    #[test]
    fn verdicts_are_memoized() {
        let sql = "SELECT 41 + 1 AS memo_probe";
        assert_eq!(classified(sql).verdict, Verdict::Inert);
        assert!(
            MEMO.lock()
                .unwrap()
                .as_ref()
                .is_some_and(|m| m.contains_key(sql))
        );
        assert_eq!(classified(sql).verdict, Verdict::Inert);
    }

    #[test]
    fn tags_come_from_the_parse_tree() {
        for (sql, tag) in [
            ("select 1", "SELECT"),
            ("WITH x AS (SELECT 1) SELECT 'INSERT' FROM x", "SELECT"),
            (
                "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x",
                "INSERT",
            ),
            ("(SELECT 1)", "SELECT"),
            ("VALUES (1)", "SELECT"),
            ("/* /* */ SELECT */ BEGIN", "BEGIN"),
            ("START TRANSACTION", "BEGIN"),
            ("end", "COMMIT"),
            ("abort", "ROLLBACK"),
            ("-- x\r\n update t set id = 1", "UPDATE"),
            ("/* c */ create table x (a int)", "CREATE"),
            ("set search_path = a", "SET"),
        ] {
            assert_eq!(&*classified(sql).tag, tag, "{sql:?}");
        }
    }
}
