//! Every bad input a client can send, each answered with the right gRPC
//! status and a message that says what is wrong, while bystander clients on
//! another tenant keep working undisturbed. Each test writes its row of
//! `target/fault-summary.md`.

mod support;

use std::time::{Duration, Instant};

use support::*;
use teresa_proto::connectionpool::{
    ConnectionRelease, ConnectionRequest, ExecuteRequest, KeepAliveRequest, StatsRequest, Value,
    value::Kind as V,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Code, Status};

/// The 10,000-call burst runs alone; the other tests share the machine.
static GATE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A pooler with tenant `acme` (set up by `acme_yaml`) and bystanders: eight
/// clients mixing one-shots and lease cycles on tenant `other` all along.
struct Bench {
    db: Db,
    acme: TenantDb,
    pooler: Pooler,
    bystanders: Option<Load>,
}

impl Bench {
    async fn start(acme_yaml: &str, client_certs: bool) -> Bench {
        let db = Db::start().await;
        let acme = db.tenant("acme").await;
        let other = db.tenant("other").await;
        let mut setup = PoolerSetup::new(&[(&acme, acme_yaml), (&other, "")]);
        if client_certs {
            setup = setup.require_client_certs();
        }
        let pooler = Pooler::start(setup).await;
        let bystanders = if client_certs {
            None
        } else {
            Some(Load::start(&pooler, LoadSpec::steady(&["other"]).clients(8)).await)
        };
        Bench {
            db,
            acme,
            pooler,
            bystanders,
        }
    }

    /// Stops the bystanders and checks nothing happened to them.
    async fn bystanders_undisturbed(&mut self, f: &mut Finding) {
        let Some(load) = self.bystanders.take() else {
            return;
        };
        // Long enough to have seen a few hundred operations.
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(load.now())).await;
        let report = load.stop().await;
        f.observe(format!(
            "bystanders on another tenant: {}",
            report.summary()
        ));
        f.check(
            !report.ops.is_empty() && report.failed().is_empty(),
            format!(
                "bystanders disturbed: {}",
                report.examples(&report.failed())
            ),
        );
    }
}

/// Checks a call failed with `code` and a message containing every word of
/// `says`; returns "CODE \"message\"" for the summary.
#[track_caller]
fn refused<T: std::fmt::Debug>(
    f: &mut Finding,
    what: &str,
    result: Result<T, Status>,
    code: Code,
    says: &[&str],
) -> String {
    match result {
        Err(status) => {
            let message = status.message().to_owned();
            f.check(
                status.code() == code && says.iter().all(|w| message.contains(w)),
                format!(
                    "{what}: {:?} {message:?}, expected {code:?} saying {says:?}",
                    status.code()
                ),
            );
            format!("{:?} {message:?}", status.code())
        }
        Ok(answer) => {
            f.check(false, format!("{what}: accepted ({answer:?})"));
            unreachable!()
        }
    }
}

fn on(id: &str, sql: &str, params: Vec<Value>) -> ExecuteRequest {
    ExecuteRequest {
        connection_id: id.to_owned(),
        sql: sql.to_owned(),
        params,
        ..Default::default()
    }
}

fn shot(tenant: &str, sql: &str) -> ExecuteRequest {
    ExecuteRequest {
        tenant_id: tenant.to_owned(),
        sql: sql.to_owned(),
        ..Default::default()
    }
}

fn keep_alive(id: &str, ttl: Option<prost_types::Duration>) -> KeepAliveRequest {
    KeepAliveRequest {
        connection_id: id.to_owned(),
        ttl,
    }
}

fn release_request(id: &str) -> ConnectionRelease {
    ConnectionRelease {
        connection_id: id.to_owned(),
    }
}

fn ttl(seconds: i64, nanos: i32) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_tenant_is_not_found_by_name() {
    let _shared = GATE.read().await;
    let mut f = Finding::new(
        "B1",
        "Unknown tenant (GetConnection, one-shot Execute, GetPoolStats); empty tenant_id",
        "NOT_FOUND naming the tenant; empty: INVALID_ARGUMENT naming the field",
    );
    let mut bench = Bench::start("", false).await;
    let mut client = bench.pooler.client().await;
    let says = ["\"nobody\"", "not configured"];
    let get = client
        .get_connection(ConnectionRequest {
            tenant_id: "nobody".into(),
            ..Default::default()
        })
        .await;
    let observed = refused(&mut f, "GetConnection", get, Code::NotFound, &says);
    let exec = run(&mut client, shot("nobody", "SELECT 1")).await;
    refused(&mut f, "Execute", exec, Code::NotFound, &says);
    let stats = client
        .get_pool_stats(StatsRequest {
            tenant_id: "nobody".into(),
        })
        .await;
    refused(&mut f, "GetPoolStats", stats, Code::NotFound, &says);
    let empty = client.get_connection(ConnectionRequest::default()).await;
    let empty = refused(
        &mut f,
        "empty tenant_id",
        empty,
        Code::InvalidArgument,
        &["tenant_id"],
    );
    let neither = run(&mut client, shot("", "SELECT 1")).await;
    refused(
        &mut f,
        "Execute without tenant_id or connection_id",
        neither,
        Code::InvalidArgument,
        &["connection_id", "tenant_id"],
    );
    f.observe(format!("all three: {observed}; empty tenant_id: {empty}"));
    bench.bystanders_undisturbed(&mut f).await;
    f.pass();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_released_and_expired_lease_ids_are_told_apart() {
    let _shared = GATE.read().await;
    let mut f = Finding::new(
        "B2",
        "Lease ids: unknown, malformed, released, expired (Execute, KeepAlive, ReleaseConnection)",
        "unknown and malformed: NOT_FOUND; released and expired: FAILED_PRECONDITION saying so; releasing a released lease again succeeds",
    );
    let mut bench = Bench::start("leases: { defaultTtl: 1s }", false).await;
    let mut client = bench.pooler.client().await;
    let mut observed = Vec::new();

    let unknown = format!("{:032x}", rand::random::<u128>());
    for (label, id, says) in [
        ("unknown", unknown.as_str(), "does not exist"),
        ("malformed", "not-a-lease", "32 hex digits"),
    ] {
        let exec = run(&mut client, on(id, "SELECT 1", vec![])).await;
        let text = refused(&mut f, label, exec, Code::NotFound, &[says]);
        let kept = client.keep_alive(keep_alive(id, None)).await;
        refused(&mut f, label, kept, Code::NotFound, &[says]);
        let released = client.release_connection(release_request(id)).await;
        refused(&mut f, label, released, Code::NotFound, &[says]);
        observed.push(format!("{label}: {text}"));
    }

    let released = lease(&mut client, "acme").await;
    release(&mut client, &released).await;
    let exec = run(&mut client, on(&released, "SELECT 1", vec![])).await;
    let text = refused(
        &mut f,
        "released",
        exec,
        Code::FailedPrecondition,
        &["already released"],
    );
    let kept = client.keep_alive(keep_alive(&released, None)).await;
    refused(
        &mut f,
        "released",
        kept,
        Code::FailedPrecondition,
        &["already released"],
    );
    let again = client
        .release_connection(release_request(&released))
        .await
        .map(|r| r.into_inner().success);
    f.check(
        matches!(again, Ok(true)),
        format!("second release: {again:?}"),
    );
    observed.push(format!("released: {text}; released again: OK"));

    let expired = lease(&mut client, "acme").await;
    let gone = eventually(Duration::from_secs(3), || {
        let mut client = client.clone();
        async move { stats(&mut client, "acme").await.active_leases == 0 }
    })
    .await;
    f.check(gone, "the 1 s lease did not expire");
    let says = ["expired", "Take a new lease"];
    let exec = run(&mut client, on(&expired, "SELECT 1", vec![])).await;
    let text = refused(&mut f, "expired", exec, Code::FailedPrecondition, &says);
    let kept = client.keep_alive(keep_alive(&expired, None)).await;
    refused(&mut f, "expired", kept, Code::FailedPrecondition, &says);
    let released = client.release_connection(release_request(&expired)).await;
    refused(&mut f, "expired", released, Code::FailedPrecondition, &says);
    observed.push(format!("expired: {text}"));
    f.observe(observed.join("; "));
    bench.bystanders_undisturbed(&mut f).await;
    f.pass();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_identitys_lease_and_a_tenant_not_allowed_are_permission_denied() {
    let _shared = GATE.read().await;
    let mut f = Finding::new(
        "B3",
        "Foreign lease id (mTLS: bob uses alice's lease: Execute, KeepAlive, ReleaseConnection); a tenant whose allowedClients exclude the caller",
        "PERMISSION_DENIED saying whose it is; alice's lease keeps working; nothing ends it",
    );
    let bench = Bench::start(
        "allowedClients: [\"spiffe://teresa.dev/alice\", \"spiffe://teresa.dev/bob\"]",
        true,
    )
    .await;
    let mut alice = bench.pooler.client_as("spiffe://teresa.dev/alice").await;
    let mut bob = bench.pooler.client_as("spiffe://teresa.dev/bob").await;
    let mut mallory = bench.pooler.client_as("spiffe://teresa.dev/mallory").await;
    let id = lease(&mut alice, "acme").await;
    on_lease(&mut alice, &id, "BEGIN", vec![]).await;
    on_lease(&mut alice, &id, "CREATE TEMP TABLE mine (x int)", vec![]).await;

    let says = ["belongs to another client identity"];
    let exec = run(&mut bob, on(&id, "SELECT 1", vec![])).await;
    let text = refused(&mut f, "bob Execute", exec, Code::PermissionDenied, &says);
    let kept = bob.keep_alive(keep_alive(&id, None)).await;
    refused(&mut f, "bob KeepAlive", kept, Code::PermissionDenied, &says);
    let released = bob.release_connection(release_request(&id)).await;
    refused(
        &mut f,
        "bob ReleaseConnection",
        released,
        Code::PermissionDenied,
        &says,
    );
    let still = on_lease(&mut alice, &id, "SELECT count(*) FROM mine", vec![]).await;
    f.check(
        still.sql_error.is_none() && still.int() == 0,
        format!("alice's lease was disturbed: {still:?}"),
    );
    on_lease(&mut alice, &id, "COMMIT", vec![]).await;
    release(&mut alice, &id).await;

    let denied = mallory
        .get_connection(ConnectionRequest {
            tenant_id: "acme".into(),
            ..Default::default()
        })
        .await;
    let tenant_text = refused(
        &mut f,
        "mallory GetConnection",
        denied,
        Code::PermissionDenied,
        &["spiffe://teresa.dev/mallory", "allowedClients"],
    );
    let exec = run(&mut mallory, shot("acme", "SELECT 1")).await;
    refused(
        &mut f,
        "mallory Execute",
        exec,
        Code::PermissionDenied,
        &["allowedClients"],
    );
    f.observe(format!(
        "foreign lease: {text}; alice's transaction and temp table intact; tenant not allowed: {tenant_text}"
    ));
    f.pass();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_oversized_and_nul_sql_are_invalid_arguments() {
    let _shared = GATE.read().await;
    let mut f = Finding::new(
        "B4",
        "Empty SQL (\"\", blanks), SQL over --max-sql-bytes (1 MiB), SQL with a NUL byte, comment-only SQL",
        "INVALID_ARGUMENT naming the problem and the limit; comment-only SQL is PostgreSQL's empty query: an empty CommandComplete",
    );
    let mut bench = Bench::start("", false).await;
    let mut client = bench.pooler.client().await;
    let id = lease(&mut client, "acme").await;
    let mut observed = Vec::new();
    for sql in ["", "  \n\t "] {
        let one = run(&mut client, shot("acme", sql)).await;
        let text = refused(
            &mut f,
            "empty",
            one,
            Code::InvalidArgument,
            &["sql must not be empty"],
        );
        let leased = run(&mut client, on(&id, sql, vec![])).await;
        refused(
            &mut f,
            "empty on a lease",
            leased,
            Code::InvalidArgument,
            &["sql must not be empty"],
        );
        if sql.is_empty() {
            observed.push(format!("empty: {text}"));
        }
    }
    let big = format!("SELECT '{}'", "x".repeat(1 << 20));
    let one = run(&mut client, shot("acme", &big)).await;
    let text = refused(
        &mut f,
        "oversized",
        one,
        Code::InvalidArgument,
        &["1048576", "--max-sql-bytes"],
    );
    observed.push(format!("1 MiB + 9 bytes: {text}"));
    let nul = run(&mut client, on(&id, "SELECT 'a\0b'", vec![])).await;
    let text = refused(&mut f, "NUL", nul, Code::InvalidArgument, &["NUL"]);
    observed.push(format!("NUL: {text}"));
    let comment = on_lease(&mut client, &id, "-- nothing to run", vec![]).await;
    f.check(
        comment.sql_error.is_none()
            && comment.rows.is_empty()
            && comment.tag.as_deref() == Some(""),
        format!("comment-only SQL: {comment:?}"),
    );
    observed.push("comment-only: empty CommandComplete (tag \"\")".into());
    let after = on_lease(&mut client, &id, "SELECT 7", vec![]).await;
    f.check(after.int() == 7, "the lease was disturbed");
    release(&mut client, &id).await;
    f.observe(observed.join("; "));
    bench.bystanders_undisturbed(&mut f).await;
    f.pass();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_statements_in_one_execute_are_refused_by_postgres_and_leave_the_lease_usable() {
    let _shared = GATE.read().await;
    let mut f = Finding::new(
        "B5",
        "Several statements in one Execute (\"SELECT 1; SELECT 2\"; \"BEGIN; DROP ...\"), one-shot and on a lease",
        "refused by PostgreSQL itself (extended protocol): SqlError 42601 in the stream, nothing of it runs; the lease stays usable",
    );
    let mut bench = Bench::start("", false).await;
    bench
        .db
        .exec(
            &bench.acme.dbname,
            &format!(
                "CREATE TABLE keep (x int); GRANT ALL ON keep TO {}",
                bench.acme.user
            ),
        )
        .await;
    let mut client = bench.pooler.client().await;
    let one = run(&mut client, shot("acme", "SELECT 1; SELECT 2"))
        .await
        .unwrap();
    let (sqlstate, message) = one.sql_error.clone().unwrap_or_default();
    f.check(
        sqlstate == "42601" && message.contains("multiple commands"),
        format!("one-shot: {one:?}"),
    );
    let id = lease(&mut client, "acme").await;
    let leased = on_lease(&mut client, &id, "BEGIN; DROP TABLE keep", vec![]).await;
    f.check(
        leased.sql_error.as_ref().is_some_and(|(s, _)| s == "42601"),
        format!("on a lease: {leased:?}"),
    );
    let kept = on_lease(&mut client, &id, "SELECT count(*) FROM keep", vec![]).await;
    f.check(
        kept.sql_error.is_none() && kept.int() == 0,
        format!("the table or the lease was disturbed: {kept:?}"),
    );
    let in_txn = on_lease(
        &mut client,
        &id,
        "SELECT now() = statement_timestamp()",
        vec![],
    )
    .await;
    f.check(in_txn.sql_error.is_none(), "no transaction may have begun");
    release(&mut client, &id).await;
    f.observe(format!(
        "SqlError {sqlstate} {message:?}; table intact, no transaction opened, lease usable"
    ));
    bench.bystanders_undisturbed(&mut f).await;
    f.pass();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_of_the_wrong_count_or_type_are_invalid_arguments() {
    let _shared = GATE.read().await;
    let mut f = Finding::new(
        "B6",
        "Parameters: too few, too many; bool, bytes, float and out-of-range int64 for an int4; text that is not a number",
        "INVALID_ARGUMENT naming the count or the parameter and type; text is parsed by PostgreSQL (SqlError 22P02); the lease stays usable",
    );
    let mut bench = Bench::start("", false).await;
    let mut client = bench.pooler.client().await;
    let id = lease(&mut client, "acme").await;
    let value = |kind: V| Value { kind: Some(kind) };
    let cases: Vec<(&str, &str, Vec<Value>, &[&str])> = vec![
        (
            "too few",
            "SELECT $1::int4 + $2::int4",
            vec![int(1)],
            &["takes 2 parameter(s), 1 given"],
        ),
        (
            "too many",
            "SELECT $1::int4",
            vec![int(1), int(2)],
            &["takes 1 parameter(s), 2 given"],
        ),
        (
            "bool for int4",
            "SELECT $1::int4",
            vec![value(V::Bool(true))],
            &["$1", "bool", "int4"],
        ),
        (
            "bytes for int4",
            "SELECT $1::int4",
            vec![value(V::Bytes(vec![1, 2]))],
            &["$1", "bytes", "int4"],
        ),
        (
            "int64 overflowing int4",
            "SELECT $1::int4",
            vec![int(1 << 40)],
            &["$1", "does not fit int4"],
        ),
    ];
    let mut observed = Vec::new();
    for (label, sql, params, says) in cases {
        let result = run(&mut client, on(&id, sql, params)).await;
        let text = refused(&mut f, label, result, Code::InvalidArgument, says);
        observed.push(format!("{label}: {text}"));
    }
    let parsed = on_lease(&mut client, &id, "SELECT $1::int4", vec![text("twelve")]).await;
    f.check(
        parsed
            .sql_error
            .as_ref()
            .is_some_and(|(s, m)| s == "22P02" && m.contains("twelve")),
        format!("text for int4: {parsed:?}"),
    );
    let float = on_lease(
        &mut client,
        &id,
        "SELECT $1::int4",
        vec![value(V::Float64(2.5))],
    )
    .await;
    f.check(
        float.sql_error.as_ref().is_some_and(|(s, _)| s == "22P02"),
        format!("float for int4: {float:?}"),
    );
    observed.push("text or float for int4: SqlError 22P02 from PostgreSQL".into());
    let after = on_lease(&mut client, &id, "SELECT $1::int4", vec![int(5)]).await;
    f.check(after.int() == 5, "the lease was disturbed");
    release(&mut client, &id).await;
    f.observe(observed.join("; "));
    bench.bystanders_undisturbed(&mut f).await;
    f.pass();
}

/// A codec that sends and receives raw protobuf bytes, to put on the wire
/// what a well-behaved client library never would.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

/// A length-delimited protobuf field (wire type 2).
fn field(number: u8, bytes: &[u8]) -> Vec<u8> {
    assert!(bytes.len() < 128);
    let mut out = vec![(number << 3) | 2, bytes.len() as u8];
    out.extend_from_slice(bytes);
    out
}

async fn raw_call(pooler: &Pooler, method: &str, message: Vec<u8>) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(pooler.lease_channel().await);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = format!("/connectionpool.ConnectionPoolService/{method}");
    let path = tonic::codegen::http::uri::PathAndQuery::try_from(path).unwrap();
    match method {
        "Execute" => {
            let mut stream = grpc
                .server_streaming(tonic::Request::new(message), path, RawCodec)
                .await?
                .into_inner();
            let mut all = Vec::new();
            while let Some(chunk) = stream.message().await? {
                all.extend(chunk);
            }
            Ok(all)
        }
        _ => grpc
            .unary(tonic::Request::new(message), path, RawCodec)
            .await
            .map(|r| r.into_inner()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_and_messages_over_the_size_limit_are_refused_with_the_reason() {
    let _shared = GATE.read().await;
    let mut f = Finding::new(
        "B7",
        "Invalid UTF-8 in a string field (sql, tenant_id, connection_id) sent raw; a 5 MiB request and a 5 MB result row (limit --max-message-bytes 4 MiB)",
        "invalid UTF-8: INTERNAL (gRPC's code for an unparsable request) naming the field; too large: OUT_OF_RANGE (tonic's code) or RESOURCE_EXHAUSTED (gRPC's) naming the limit; the pooler keeps serving",
    );
    let mut bench = Bench::start("", false).await;
    let bad = [b'S', b'E', 0xff, 0xfe, b'L'];
    let mut observed = Vec::new();
    for (label, method, message) in [
        (
            "sql",
            "Execute",
            [field(2, b"acme"), field(3, &bad)].concat(),
        ),
        ("tenant_id", "GetConnection", field(1, &bad)),
        ("connection_id", "KeepAlive", field(1, &bad)),
    ] {
        let result = raw_call(&bench.pooler, method, message).await;
        let text = refused(
            &mut f,
            label,
            result,
            Code::Internal,
            &["failed to decode", "UTF-8"],
        );
        if label == "sql" {
            observed.push(format!("invalid UTF-8: {text}"));
        }
    }
    let mut client = bench.pooler.client().await;
    // tonic answers OUT_OF_RANGE; gRPC's status table says RESOURCE_EXHAUSTED.
    let too_large = |f: &mut Finding, what: &str, result: Result<Outcome, Status>| match result {
        Err(s) => {
            f.check(
                matches!(s.code(), Code::OutOfRange | Code::ResourceExhausted)
                    && s.message().contains("too large")
                    && s.message().contains("4194304"),
                format!("{what}: {s:?}"),
            );
            format!("{:?} {:?}", s.code(), s.message())
        }
        Ok(outcome) => {
            f.check(
                false,
                format!("{what}: accepted ({} rows)", outcome.rows.len()),
            );
            unreachable!()
        }
    };
    let huge = format!("SELECT '{}'", "x".repeat(5 << 20));
    let result = run(&mut client, shot("acme", &huge)).await;
    observed.push(format!(
        "5 MiB request: {}",
        too_large(&mut f, "5 MiB request", result)
    ));
    let result = run(&mut client, shot("acme", "SELECT repeat('x', 5000000)")).await;
    observed.push(format!(
        "a 5 MB result row: {}",
        too_large(&mut f, "5 MB row", result)
    ));
    let fine = one_shot(&mut client, "acme", "SELECT 1", vec![]).await;
    f.check(fine.int() == 1, "the pooler stopped serving");
    f.observe(observed.join("; "));
    bench.bystanders_undisturbed(&mut f).await;
    f.pass();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_ttls_that_are_zero_negative_or_above_max_are_invalid_arguments() {
    let _shared = GATE.read().await;
    let mut f = Finding::new(
        "B8",
        "Lease TTL zero, negative (seconds or nanos), above leases.maxTtl (10 m): on GetConnection and KeepAlive",
        "INVALID_ARGUMENT saying the TTL must be positive or naming maxTtl; no lease granted; the existing lease keeps its TTL",
    );
    let mut bench = Bench::start("leases: { defaultTtl: 1m, maxTtl: 10m }", false).await;
    let mut client = bench.pooler.client().await;
    let id = lease(&mut client, "acme").await;
    let cases = [
        ("zero", ttl(0, 0), "must be positive"),
        ("negative", ttl(-5, 0), "must be positive"),
        ("negative nanos", ttl(0, -1), "must be positive"),
        ("above max", ttl(601, 0), "leases.maxTtl (10m)"),
    ];
    let mut observed = Vec::new();
    for (label, asked, says) in cases {
        let get = client
            .get_connection(ConnectionRequest {
                tenant_id: "acme".into(),
                ttl: asked,
                ..Default::default()
            })
            .await;
        let text = refused(&mut f, label, get, Code::InvalidArgument, &[says]);
        let kept = client.keep_alive(keep_alive(&id, asked)).await;
        refused(&mut f, label, kept, Code::InvalidArgument, &[says]);
        observed.push(format!("{label}: {text}"));
    }
    let s = stats(&mut client, "acme").await;
    f.check(s.active_leases == 1, format!("leases granted: {s:?}"));
    let ok = on_lease(&mut client, &id, "SELECT 1", vec![]).await;
    f.check(ok.int() == 1, "the lease was disturbed");
    release(&mut client, &id).await;
    f.observe(observed.join("; "));
    bench.bystanders_undisturbed(&mut f).await;
    f.pass();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_get_connections_are_bounded_by_max_waiting_and_the_rest_refused_fast()
 {
    let _alone = GATE.write().await;
    let mut f = Finding::new(
        "B9",
        "10,000 concurrent GetConnection calls from one client identity (pool of 4, maxWaiting 64, acquireTimeout 30 s; each lease released at once)",
        "at most 4 leases and about 64 waiters at any time; the surplus refused fast (well inside the acquire timeout) with RESOURCE_EXHAUSTED naming maxWaiting; nothing else fails; the pool is whole afterwards",
    );
    let mut bench = Bench::start(
        "pool: { maxConnections: 4, minConnections: 4, maxWaiting: 64, acquireTimeout: 30s }",
        false,
    )
    .await;
    let channels: Vec<LeaseClient> = {
        let mut channels = Vec::new();
        for _ in 0..10 {
            channels.push(bench.pooler.client().await);
        }
        channels
    };
    let mut watcher = bench.pooler.client().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch = {
        let stop = stop.clone();
        let mut watcher = watcher.clone();
        tokio::spawn(async move {
            let (mut waiting, mut leases, mut connections) = (0, 0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let s = stats(&mut watcher, "acme").await;
                waiting = waiting.max(s.waiting_clients);
                leases = leases.max(s.active_leases);
                connections = connections.max(s.total_connections);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (waiting, leases, connections)
        })
    };
    let started = Instant::now();
    let calls: Vec<_> = (0..10_000)
        .map(|i| {
            let mut client = channels[i % channels.len()].clone();
            tokio::spawn(async move {
                let begun = Instant::now();
                let mut request = tonic::Request::new(ConnectionRequest {
                    tenant_id: "acme".into(),
                    ..Default::default()
                });
                request.set_timeout(Duration::from_secs(60));
                let result = client.get_connection(request).await;
                let took = begun.elapsed();
                if let Ok(response) = &result {
                    let id = response.get_ref().connection_id.clone();
                    client
                        .release_connection(release_request(&id))
                        .await
                        .map_err(|s| format!("release: {s:?}"))?;
                }
                Ok::<_, String>((
                    result
                        .map(|_| ())
                        .map_err(|s| (s.code(), s.message().to_owned())),
                    took,
                ))
            })
        })
        .collect();
    let mut granted = Vec::new();
    let mut refused_fast = Vec::new();
    let mut other = Vec::new();
    for call in calls {
        match call.await.unwrap() {
            Ok((Ok(()), took)) => granted.push(took),
            Ok((Err((Code::ResourceExhausted, message)), took))
                if message.contains("maxWaiting") =>
            {
                refused_fast.push(took)
            }
            Ok((Err(e), _)) => other.push(format!("{e:?}")),
            Err(e) => other.push(e),
        }
    }
    let burst = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (max_waiting, max_leases, max_connections) = watch.await.unwrap();
    refused_fast.sort();
    granted.sort();
    let pct = |v: &[Duration], p: f64| {
        v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    f.observe(format!(
        "{} granted (p50 wait {}), {} refused RESOURCE_EXHAUSTED (p50 {}, p99 {}, slowest {}), {} other; peak {max_leases} leases, {max_waiting} waiting, {max_connections} connections; burst took {}",
        granted.len(),
        ms(pct(&granted, 0.5)),
        refused_fast.len(),
        ms(pct(&refused_fast, 0.5)),
        ms(pct(&refused_fast, 0.99)),
        ms(refused_fast.last().copied().unwrap_or_default()),
        other.len(),
        ms(burst)
    ));
    f.check(
        other.is_empty(),
        format!("other outcomes: {:?}", &other[..other.len().min(3)]),
    );
    f.check(
        !granted.is_empty() && !refused_fast.is_empty(),
        "expected both grants and refusals",
    );
    f.check(
        max_leases <= 4 && max_connections <= 4,
        "the pool grew past 4",
    );
    // The counter includes callers being refused at that instant.
    f.check(
        max_waiting <= 64 + 16,
        format!("{max_waiting} callers waiting, maxWaiting is 64"),
    );
    f.check(
        pct(&refused_fast, 0.99) < Duration::from_secs(15),
        "refusals were not fast (p99 >= half the acquire timeout)",
    );
    let whole = assert_pool_whole(&mut watcher, &bench.db, &bench.acme, 4).await;
    f.check(whole.is_ok(), format!("{whole:?}"));
    bench.bystanders_undisturbed(&mut f).await;
    f.pass();
}

/// Sends `bytes` on a fresh TCP connection to `port` and reads until the
/// server closes it; returns what came back and how long it took.
async fn send_raw(port: u16, bytes: &[u8]) -> (Vec<u8>, Duration, bool) {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let started = Instant::now();
    let _ = tcp.write_all(bytes).await;
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (answer, started.elapsed(), closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_a_tls_handshake_is_dropped_on_every_port() {
    let _shared = GATE.read().await;
    let mut f = Finding::new(
        "B10",
        "Garbage instead of a TLS handshake on the gRPC, metrics and admin ports (random bytes; a plaintext HTTP/1 request); 100 connections that stall mid-handshake",
        "each connection closed at once with at most a TLS alert; stalled handshakes hold up no one; the pooler keeps serving",
    );
    let mut bench = Bench::start("", false).await;
    let ports = [
        ("gRPC", bench.pooler.grpc_port),
        ("metrics", bench.pooler.metrics_port),
        ("admin", bench.pooler.admin_port),
    ];
    let noise: Vec<u8> = (0..2048).map(|_| rand::random::<u8>()).collect();
    let http = b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec();
    let mut slowest = Duration::ZERO;
    for (name, port) in ports {
        for (label, bytes) in [("random bytes", &noise), ("plaintext HTTP/1", &http)] {
            let (answer, took, closed) = send_raw(port, bytes).await;
            let alert_or_nothing = answer.is_empty() || answer[0] == 0x15;
            f.check(
                closed && alert_or_nothing,
                format!(
                    "{name} port, {label}: closed {closed}, answered {:?}",
                    &answer[..answer.len().min(16)]
                ),
            );
            slowest = slowest.max(took);
        }
    }
    // A ClientHello's first bytes, then silence: the handshake waits (up to
    // its timeout) without holding up anyone else.
    let mut stalled = Vec::new();
    for _ in 0..100 {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", bench.pooler.grpc_port))
            .await
            .unwrap();
        tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
            .await
            .unwrap();
        stalled.push(tcp);
    }
    let mut client = bench.pooler.client().await;
    let started = Instant::now();
    let fine = one_shot(&mut client, "acme", "SELECT 1", vec![]).await;
    let served_in = started.elapsed();
    drop(stalled);
    f.observe(format!(
        "3 ports x 2 kinds of garbage: closed with a TLS alert or nothing, slowest {}; with 100 stalled handshakes open, a new client connected and ran SQL in {}",
        ms(slowest),
        ms(served_in)
    ));
    f.check(slowest < Duration::from_secs(2), "a connection lingered");
    f.check(fine.int() == 1, "the pooler stopped serving");
    f.check(
        served_in < Duration::from_secs(5),
        "stalled handshakes held up a new client",
    );
    bench.bystanders_undisturbed(&mut f).await;
    f.pass();
}

/// Opens TLS to `port` offering `alpn`, sends an HTTP/1.1 request and
/// returns (handshake result, bytes answered after it, closed within 2 s).
async fn http1_over_tls(pooler: &Pooler, alpn: &[&[u8]]) -> (Result<(), String>, Vec<u8>, bool) {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &pooler.certs.ca_pem()[..]) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", pooler.grpc_port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = match connector.connect(name, tcp).await {
        Ok(tls) => tls,
        Err(e) => return (Err(e.to_string()), Vec::new(), true),
    };
    let _ = tls
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(2), tls.read_to_end(&mut answer))
        .await
        .is_ok();
    (Ok(()), answer, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_request_on_the_grpc_port_is_refused_without_disturbing_anyone() {
    let _shared = GATE.read().await;
    let mut f = Finding::new(
        "B11",
        "HTTP/1.1 request on the gRPC port over TLS: offering ALPN http/1.1 only, and offering no ALPN",
        "ALPN http/1.1: handshake refused (no_application_protocol alert); no ALPN: the HTTP/2 server sees no preface and closes the connection at once, never answering HTTP/1; the pooler keeps serving",
    );
    let mut bench = Bench::start("", false).await;
    let (refused_handshake, _, _) = http1_over_tls(&bench.pooler, &[b"http/1.1"]).await;
    f.check(
        refused_handshake
            .as_ref()
            .is_err_and(|e| e.contains("NoApplicationProtocol")),
        format!("ALPN http/1.1: {refused_handshake:?}"),
    );
    let (handshake, answer, closed) = http1_over_tls(&bench.pooler, &[]).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let frames = h2_frame_types(&answer);
    // Only HTTP/2 SETTINGS (the server's preface) or GOAWAY frames.
    f.check(
        handshake.is_ok()
            && closed
            && !text.contains("HTTP/1")
            && frames.iter().all(|t| matches!(t, 0x04 | 0x07)),
        format!(
            "no ALPN: {handshake:?}, closed {closed}, answered {} bytes, HTTP/2 frame types {frames:?}",
            answer.len()
        ),
    );
    let mut client = bench.pooler.client().await;
    let fine = one_shot(&mut client, "acme", "SELECT 1", vec![]).await;
    f.check(fine.int() == 1, "the pooler stopped serving");
    f.observe(format!(
        "ALPN http/1.1: {}; no ALPN: the server's HTTP/2 SETTINGS, then the connection closed ({} bytes, frame types {frames:?})",
        handshake_text(&refused_handshake),
        answer.len()
    ));
    bench.bystanders_undisturbed(&mut f).await;
    f.pass();
}

/// The types of the HTTP/2 frames in `bytes` (9-byte headers: length, type, ...).
fn h2_frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let length =
            usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        types.push(bytes[3]);
        bytes = &bytes[(9 + length).min(bytes.len())..];
    }
    types
}

fn handshake_text(result: &Result<(), String>) -> String {
    match result {
        Ok(()) => "handshake accepted".into(),
        Err(e) => format!("handshake refused ({e})"),
    }
}
