//! Runs one SQL statement on a connection and streams its result: column
//! descriptions, rows in bounded batches, then the command tag. The stream is
//! fed through a small channel, so a slow reader holds back the server
//! connection (and only it) instead of growing the pooler's memory. A reader
//! that goes away gets its statement cancelled on the server.

use std::sync::Arc;
use std::time::Instant;

use deadpool_postgres::Object;
use futures::StreamExt;
use postgres_types::ToSql;
use teresa_proto::connectionpool::{
    Column, ColumnDescriptions, CommandComplete, ExecuteResponse, Row, RowBatch, SqlError,
    execute_response::Kind, value::Kind as V,
};
use tokio::sync::{OwnedMutexGuard, mpsc};
use tonic::Status;
use tracing::debug;

use crate::classify::{self, Verdict};
use crate::lease::{Lease, LeaseTable, Outcome, SessionMarks};
use crate::pool::TenantPool;
use crate::session::Checkout;
use crate::values::{Cell, Param};

/// Rows per batch when the client asks for none.
pub const DEFAULT_BATCH_ROWS: usize = 256;
/// Largest rows-per-batch a client may ask for.
pub const MAX_BATCH_ROWS: usize = 10_000;
/// A batch is sent once its values reach about this many bytes.
const MAX_BATCH_BYTES: usize = 256 << 10;
/// Messages buffered per stream; with the batch bound, this bounds memory
/// (about 1 MiB a stream). Room for columns, rows and completion of a small
/// result, so they leave in one write.
const STREAM_BUFFER: usize = 4;
/// How long a response waits for its first message before its headers go.
const FIRST_MESSAGE_WAIT: std::time::Duration = std::time::Duration::from_millis(20);
/// Prepared statements cached per connection before the cache is cleared.
const MAX_CACHED_STATEMENTS: usize = 512;

/// The stream an Execute call returns.
pub type ResultStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<ExecuteResponse, Status>> + Send>>;

/// The connection a statement runs on.
pub enum Target {
    /// A lease's connection, locked for this statement.
    Lease {
        lease: Arc<Lease>,
        leases: Arc<LeaseTable>,
        conn: OwnedMutexGuard<Option<Checkout>>,
    },
    /// A connection borrowed for this one statement.
    OneShot {
        tenant: Arc<TenantPool>,
        conn: Box<Checkout>,
    },
}

impl Target {
    fn conn(&self) -> &Object {
        match self {
            Target::Lease { conn, .. } => conn.as_ref().expect("checked before running"),
            Target::OneShot { conn, .. } => conn,
        }
    }

    fn tenant(&self) -> &Arc<TenantPool> {
        match self {
            Target::Lease { lease, .. } => &lease.tenant,
            Target::OneShot { tenant, .. } => tenant,
        }
    }
}

/// One statement, validated for size.
pub struct Statement {
    pub sql: String,
    pub params: Vec<teresa_proto::connectionpool::Value>,
    pub batch_rows: usize,
    /// When the call's deadline (`grpc-timeout`) passes, if it set one.
    pub deadline: Option<Instant>,
}

/// Starts the statement and returns its result stream, once the first
/// message is ready if that is quick: the response headers then leave with it
/// (and, for a small result, with the rest and the trailers) in one write. A
/// slow statement gets its headers at once, so the call's deadline and the
/// client's cancellation keep working through the stream.
pub async fn spawn(target: Target, statement: Statement) -> ResultStream {
    let (tx, mut rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(run(target, statement, tx));
    let first = tokio::time::timeout(FIRST_MESSAGE_WAIT, rx.recv())
        .await
        .ok()
        .flatten();
    Box::pin(futures::stream::iter(first).chain(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

type Tx = mpsc::Sender<Result<ExecuteResponse, Status>>;

async fn run(target: Target, statement: Statement, tx: Tx) {
    let classified = classify::classified(&statement.sql);
    let started = Instant::now();
    let conn = target.conn();
    let tenant = target.tenant();
    // Watched for the whole statement, not only while rows stream: PostgreSQL
    // sends nothing, not even BindComplete, until a long statement produces
    // its first row. tonic times a call only until its response starts, so
    // the deadline of a streaming call is enforced here.
    let outcome = tokio::select! {
        outcome = stream_statement(conn, tenant, &statement, &classified.tag, &tx) => outcome,
        _ = tx.closed() => {
            debug!(tenant = %tenant.id(), "client went away; cancelling its statement");
            tenant.upstream().cancel(&conn.cancel_token()).await;
            Finished::Cancelled
        }
        _ = passes(statement.deadline) => {
            tenant.upstream().cancel(&conn.cancel_token()).await;
            let _ = tx
                .send(Err(Status::deadline_exceeded(
                    "the call's deadline passed before the statement finished; it was cancelled on the server",
                )))
                .await;
            Finished::Cancelled
        }
    };
    let ok = matches!(outcome, Finished::Complete);
    target
        .tenant()
        .metrics()
        .query(ok, started.elapsed().as_secs_f64());
    match target {
        Target::Lease {
            lease,
            leases,
            conn,
        } => {
            lease.session.mark(SessionMarks::USED);
            let broken = outcome == Finished::Lost || conn.as_ref().is_some_and(|c| c.is_closed());
            drop(conn);
            if broken {
                debug!(lease = %lease.id, "server connection lost; ending the lease");
                leases.end(&lease, Outcome::Lost).await;
            }
        }
        Target::OneShot { tenant, conn } => {
            if outcome == Finished::Lost {
                // The server ended the session; its socket may not be closed yet.
                conn.discard();
                return;
            }
            // A statement cut short may have left its protocol exchange half
            // done; anything the parser cannot vouch for may have left state.
            let reset = classified.verdict == Verdict::Stateful || outcome != Finished::Complete;
            conn.give_back(&tenant, reset).await;
        }
    }
}

/// Resolves when `deadline` passes; never without one.
async fn passes(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Finished {
    Complete,
    SqlError,
    Failed,
    Cancelled,
    /// The server ended the session (FATAL or PANIC): the connection is gone.
    Lost,
}

async fn stream_statement(
    client: &Object,
    tenant: &TenantPool,
    statement: &Statement,
    tag: &str,
    tx: &Tx,
) -> Finished {
    if client.statement_cache.size() >= MAX_CACHED_STATEMENTS {
        client.statement_cache.clear();
    }
    // A stale cached statement is prepared again and the call retried once.
    // The first error aborted an open transaction, if there was one; then
    // the retry's "transaction is aborted" would only hide the cause.
    let mut stale: Option<tokio_postgres::Error> = None;
    let (prepared, rows) = loop {
        let error = match client.prepare_cached(&statement.sql).await {
            Ok(prepared) => match start(client, &prepared, statement, tx).await {
                Started::Rows(rows) => break (prepared, rows),
                Started::Failed(finished) => return finished,
                Started::Error(e) => e,
            },
            Err(e) => e,
        };
        match stale {
            None if stale_cache(&error) => {
                debug!(error = %error, "cached statement is stale; preparing it again");
                client.statement_cache.remove(&statement.sql, &[]);
                stale = Some(error);
            }
            Some(first)
                if error.code()
                    == Some(&tokio_postgres::error::SqlState::IN_FAILED_SQL_TRANSACTION) =>
            {
                return send_error(tx, first).await;
            }
            _ => return send_error(tx, error).await,
        }
    };
    let columns = prepared
        .columns()
        .iter()
        .map(|c| Column {
            name: c.name().to_owned(),
            type_name: c.type_().name().to_owned(),
            type_oid: c.type_().oid(),
        })
        .collect();
    if !send(tx, Kind::Columns(ColumnDescriptions { columns })).await {
        tenant.upstream().cancel(&client.cancel_token()).await;
        return Finished::Cancelled;
    }
    let mut rows = std::pin::pin!(rows);
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    loop {
        // A client that goes away is noticed by `run`, around this whole loop.
        match rows.next().await {
            Some(Ok(row)) => {
                let mut values = Vec::with_capacity(row.len());
                for i in 0..row.len() {
                    match row.try_get::<_, Cell>(i) {
                        Ok(Cell(value)) => {
                            batch_bytes += value_size(&value);
                            values.push(value);
                        }
                        Err(e) => {
                            let _ = tx
                                .send(Err(Status::internal(format!(
                                    "cannot decode column {}: {e}",
                                    i + 1
                                ))))
                                .await;
                            tenant.upstream().cancel(&client.cancel_token()).await;
                            return Finished::Failed;
                        }
                    }
                }
                batch.push(Row { values });
                if batch.len() >= statement.batch_rows || batch_bytes >= MAX_BATCH_BYTES {
                    batch_bytes = 0;
                    let rows = std::mem::take(&mut batch);
                    if !send(tx, Kind::Rows(RowBatch { rows })).await {
                        tenant.upstream().cancel(&client.cancel_token()).await;
                        return Finished::Cancelled;
                    }
                }
            }
            Some(Err(e)) => {
                if !batch.is_empty() {
                    send(tx, Kind::Rows(RowBatch { rows: batch })).await;
                }
                return send_error(tx, e).await;
            }
            None => break,
        }
    }
    if !batch.is_empty() && !send(tx, Kind::Rows(RowBatch { rows: batch })).await {
        return Finished::Cancelled;
    }
    let complete = CommandComplete {
        command_tag: tag.to_owned(),
        rows_affected: rows.rows_affected().unwrap_or(0),
    };
    send(tx, Kind::Complete(complete)).await;
    Finished::Complete
}

/// How starting a statement went.
enum Started {
    Rows(tokio_postgres::RowStream),
    /// Refused before reaching the server; the client was told.
    Failed(Finished),
    /// The server refused it (Bind): nothing ran yet.
    Error(tokio_postgres::Error),
}

/// Binds the parameters and starts the statement.
async fn start(
    client: &Object,
    prepared: &tokio_postgres::Statement,
    statement: &Statement,
    tx: &Tx,
) -> Started {
    let types = prepared.params();
    if types.len() != statement.params.len() {
        let _ = tx
            .send(Err(Status::invalid_argument(format!(
                "the statement takes {} parameter(s), {} given",
                types.len(),
                statement.params.len()
            ))))
            .await;
        return Started::Failed(Finished::Failed);
    }
    let params = match statement
        .params
        .iter()
        .zip(types)
        .enumerate()
        .map(|(i, (value, ty))| Param::bind(value, ty, i + 1))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(params) => params,
        Err(e) => {
            let _ = tx.send(Err(Status::invalid_argument(e.to_string()))).await;
            return Started::Failed(Finished::Failed);
        }
    };
    let rows = client
        .query_raw(prepared, params.iter().map(|p| p as &dyn ToSql))
        .await;
    match rows {
        Ok(rows) => Started::Rows(rows),
        Err(e) => Started::Error(e),
    }
}

/// True for the errors a stale statement cache causes, which a fresh
/// prepare cures: the server no longer knows the statement (a client's
/// `DEALLOCATE ALL` or `DISCARD ALL`, in any form), the name is taken by a
/// client's own `PREPARE`, or a schema change altered its result type.
fn stale_cache(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.as_db_error().is_some_and(|db| {
        *db.code() == SqlState::INVALID_SQL_STATEMENT_NAME
            || *db.code() == SqlState::DUPLICATE_PSTATEMENT
            || (*db.code() == SqlState::FEATURE_NOT_SUPPORTED
                && db
                    .message()
                    .contains("cached plan must not change result type"))
    })
}

fn value_size(value: &teresa_proto::connectionpool::Value) -> usize {
    8 + match &value.kind {
        Some(V::Text(s)) => s.len(),
        Some(V::Bytes(b)) => b.len(),
        _ => 0,
    }
}

async fn send(tx: &Tx, kind: Kind) -> bool {
    tx.send(Ok(ExecuteResponse { kind: Some(kind) }))
        .await
        .is_ok()
}

/// A SQL error goes into the stream with its SQLSTATE; a lost connection or
/// other I/O failure ends the stream with UNAVAILABLE. So does an error of
/// severity FATAL or PANIC (shutdown, `pg_terminate_backend`, a crash): the
/// server ended the session, so it is an outage, not the client's SQL error.
async fn send_error(tx: &Tx, e: tokio_postgres::Error) -> Finished {
    match e.as_db_error() {
        Some(db)
            if matches!(
                db.parsed_severity(),
                Some(
                    tokio_postgres::error::Severity::Fatal | tokio_postgres::error::Severity::Panic
                )
            ) =>
        {
            let _ = tx
                .send(Err(Status::unavailable(format!(
                    "the server connection was lost: PostgreSQL ended the session ({} {}: {}); \
                     retry, on a new lease if this was one",
                    db.severity(),
                    db.code().code(),
                    db.message()
                ))))
                .await;
            Finished::Lost
        }
        Some(db) => {
            let error = SqlError {
                sqlstate: db.code().code().to_owned(),
                message: db.message().to_owned(),
                detail: db.detail().unwrap_or_default().to_owned(),
                hint: db.hint().unwrap_or_default().to_owned(),
                severity: db.severity().to_owned(),
            };
            send(tx, Kind::Error(error)).await;
            Finished::SqlError
        }
        None => {
            let _ = tx
                .send(Err(Status::unavailable(format!(
                    "the server connection failed ({e}); retry, on a new lease if this was one"
                ))))
                .await;
            Finished::Failed
        }
    }
}
