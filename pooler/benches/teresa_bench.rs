//! Teresa's benchmark: the same point SELECT (pgbench's `-S`) straight
//! against PostgreSQL, through PgBouncer and through Teresa's lease API, at
//! several client counts, measured in one run on one machine; then scale
//! figures of the pooler (1,000 tenants, thousands of open leases, 2,000
//! concurrent streams, idle memory).
//!
//! It prepares everything itself on 127.0.0.1: a throwaway PostgreSQL 15
//! (`teresa_pooler::devdb`) loaded with `pgbench -i`, PgBouncer in
//! transaction mode, and the release `teresa-pooler` binary, all with the
//! same pool size. Results go to `results.json` and `results.md`.
//!
//! `cargo bench -p teresa-pooler --bench teresa_bench -- --help`; see
//! `pooler/BENCHMARKS.md` and `pooler/benches/run.sh`.

#![forbid(unsafe_code)]

#[path = "teresa_bench/load.rs"]
mod load;
#[path = "teresa_bench/pgbench.rs"]
mod pgbench;
#[path = "teresa_bench/procfs.rs"]
mod procfs;
#[path = "teresa_bench/report.rs"]
mod report;
#[path = "teresa_bench/scale.rs"]
mod scale;
#[path = "teresa_bench/scenarios.rs"]
mod scenarios;
#[path = "teresa_bench/servers.rs"]
mod servers;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use teresa_proto::admin::PoolSettings;

use load::{Probe, Profiler, Window};
use report::{Point, Report, Settings, Versions};
use scenarios::{PgWorker, Scenario, TeresaWorker};
use servers::{BouncerAuth, Database, PgBouncer, Teresa, TeresaBinary};

/// Benchmarks Teresa against a direct pool and PgBouncer, then measures
/// its scale figures.
#[derive(Debug, Parser)]
#[command(name = "teresa_bench")]
struct Options {
    /// Measured time per point.
    #[arg(long, default_value = "20s", value_parser = duration)]
    duration: Duration,
    /// Unmeasured time before each point.
    #[arg(long, default_value = "2s", value_parser = duration)]
    warmup: Duration,
    /// Smoke run: 2 s per point, 0.5 s warm-up, smaller scale figures.
    #[arg(long)]
    quick: bool,
    /// Client counts.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,128")]
    clients: Vec<usize>,
    /// Scenarios to run [default: all].
    #[arg(long, value_delimiter = ',', value_enum)]
    scenarios: Vec<Scenario>,
    /// Server connections of the direct pool, PgBouncer and Teresa.
    #[arg(long, default_value_t = 20)]
    pool_size: u32,
    /// pgbench scale factor (100,000 accounts each).
    #[arg(long, default_value_t = 10)]
    pgbench_scale: u32,
    /// HTTP/2 connections the Teresa clients of a point share (gRPC
    /// multiplexes calls, as one tonic Channel per application instance
    /// does); 0: one connection per client.
    #[arg(long, default_value_t = 4)]
    grpc_connections: usize,
    /// Executes per lease in teresa-lease-held.
    #[arg(long, default_value_t = 100)]
    executes_per_lease: u32,
    /// Skip the scale figures.
    #[arg(long, conflicts_with = "scale_only")]
    skip_scale: bool,
    /// Only the scale figures.
    #[arg(long)]
    scale_only: bool,
    /// Open leases of the scale figure.
    #[arg(long, default_value_t = 10_000)]
    leases: usize,
    /// Concurrent streams of the scale figure.
    #[arg(long, default_value_t = 2_000)]
    streams: usize,
    /// Record `perf` profiles of teresa-pooler into this directory during
    /// teresa-oneshot and teresa-lease-cycle at 32 clients.
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Where results.json and results.md go [default: <target>/tmp/teresa-bench].
    #[arg(long)]
    out: Option<PathBuf>,
    /// The teresa-pooler binary [default: the one cargo built with this bench].
    #[arg(long)]
    teresa_bin: Option<PathBuf>,
    /// Extra environment of teresa-pooler, KEY=VALUE (repeatable), e.g.
    /// TOKIO_WORKER_THREADS=1.
    #[arg(long, value_parser = key_value)]
    teresa_env: Vec<(String, String)>,
    /// Passed by `cargo bench`; without it (as under `cargo test`) nothing runs.
    #[arg(long, hide = true)]
    bench: bool,
}

fn key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

fn duration(text: &str) -> Result<Duration, String> {
    teresa_pooler::config::parse_duration(text)
}

fn main() -> ExitCode {
    let mut options = Options::parse();
    if !options.bench {
        eprintln!("teresa_bench runs under `cargo bench` (or with --bench); nothing to do here");
        return ExitCode::SUCCESS;
    }
    if options.quick {
        options.duration = Duration::from_secs(2);
        options.warmup = Duration::from_millis(500);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        tokio::select! {
            result = run(options) => result,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("teresa_bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut command = "cargo bench -p teresa-pooler --bench teresa_bench".to_owned();
    if !args.is_empty() {
        command.push_str(" -- ");
        command.push_str(&args.join(" "));
    }
    command
}

async fn git_commit() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let run = |args: &'static [&'static str]| async move {
        tokio::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .await
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let commit = run(&["rev-parse", "--short", "HEAD"])
        .await
        .unwrap_or_else(|| "unknown".to_owned());
    let dirty = run(&["status", "--porcelain", "--untracked-files=no"])
        .await
        .is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{commit} + uncommitted changes")
    } else {
        commit
    }
}

async fn utc_now() -> String {
    tokio::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .await
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

async fn run(options: Options) -> anyhow::Result<()> {
    let binary = TeresaBinary {
        path: options
            .teresa_bin
            .clone()
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_teresa-pooler"))),
        env: options.teresa_env.clone(),
    };
    let out = options
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("teresa-bench"));
    let scenarios: Vec<Scenario> = if options.scale_only {
        Vec::new()
    } else if options.scenarios.is_empty() {
        Scenario::DEFAULT.to_vec()
    } else {
        options.scenarios.clone()
    };
    let window = Window {
        warmup: options.warmup,
        duration: options.duration,
    };
    let points_planned = scenarios.len() * options.clients.len();
    eprintln!(
        "teresa_bench: {} scenarios x {} client counts, {:.0} s per point + {:.1} s warm-up (~{:.1} min){}; results in {}",
        scenarios.len(),
        options.clients.len(),
        window.duration.as_secs_f64(),
        window.warmup.as_secs_f64(),
        points_planned as f64 * (window.duration + window.warmup).as_secs_f64() / 60.0,
        if options.skip_scale {
            ""
        } else {
            ", then scale figures"
        },
        out.display()
    );

    eprintln!("setting up PostgreSQL, PgBouncer and teresa-pooler on 127.0.0.1");
    let db = Database::start(options.pgbench_scale).await?;
    let bouncer = PgBouncer::start(
        &db,
        BouncerAuth::Scram(db.scram_secret().await?),
        options.pool_size,
        10_000,
    )
    .await?;
    let bench_tenant = db.tenant(
        scenarios::TENANT,
        db.pg.port(),
        PoolSettings {
            max_connections: options.pool_size,
            min_connections: Some(options.pool_size),
            acquire_timeout: "60s".to_owned(),
            max_waiting: Some(10_000),
            ..Default::default()
        },
    );
    let teresa = Teresa::start(&binary, Some(vec![bench_tenant])).await?;
    teresa
        .wait_warm(scenarios::TENANT, options.pool_size as i32)
        .await?;

    let mut report = Report {
        started_at: utc_now().await,
        load_average_at_start: procfs::load_average(),
        command: command_line(),
        machine: procfs::Machine::describe(),
        versions: Versions {
            postgres: servers::version_of(&servers::pg_program("postgres")).await,
            pgbouncer: servers::version_of(std::path::Path::new("/usr/sbin/pgbouncer")).await,
            teresa_commit: git_commit().await,
            teresa_binary: std::iter::once(binary.path.display().to_string())
                .chain(binary.env.iter().map(|(k, v)| format!("{k}={v}")))
                .collect::<Vec<_>>()
                .join(" "),
        },
        settings: Settings {
            duration_s: window.duration.as_secs_f64(),
            warmup_s: window.warmup.as_secs_f64(),
            pool_size: options.pool_size,
            pgbench_scale: options.pgbench_scale,
            clients: options.clients.clone(),
            grpc_connections: options.grpc_connections,
            executes_per_lease: options.executes_per_lease,
        },
        points: Vec::new(),
        scale: None,
        targets: Vec::new(),
    };
    let probe = Probe {
        postmaster: db.postmaster_pid()?,
        pgbouncer: Some(bouncer.pid()),
        teresa: Some(teresa.pid()),
    };
    let max_clients = options.clients.iter().copied().max().unwrap_or(1);
    let direct_pool = db.pool(db.pg.port(), options.pool_size as usize)?;
    let bouncer_pool = db.pool(bouncer.port, max_clients)?;

    let started = Instant::now();
    for &clients in &options.clients {
        for &scenario in &scenarios {
            let measured = match scenario {
                Scenario::Direct | Scenario::DirectUnnamed | Scenario::Pgbouncer => {
                    let (pool, prepared) = match scenario {
                        Scenario::Direct => (&direct_pool, true),
                        Scenario::DirectUnnamed => (&direct_pool, false),
                        _ => (&bouncer_pool, false),
                    };
                    let workers = (0..clients)
                        .map(|i| PgWorker::new(pool.clone(), prepared, db.accounts, i))
                        .collect();
                    load::drive(workers, window, &probe, None).await
                }
                Scenario::PgbenchPrepared | Scenario::PgbenchExtended | Scenario::PgbenchSimple => {
                    let mode = match scenario {
                        Scenario::PgbenchPrepared => "prepared",
                        Scenario::PgbenchExtended => "extended",
                        _ => "simple",
                    };
                    pgbench::run(&db, bouncer.port, mode, clients, window, &probe, &out).await?
                }
                _ => {
                    let connections = match options.grpc_connections {
                        0 => clients,
                        n => n.min(clients),
                    };
                    let channels = teresa.channels(connections).await?;
                    let workers = (0..clients)
                        .map(|i| {
                            TeresaWorker::new(
                                channels[i % channels.len()].clone(),
                                scenario,
                                db.accounts,
                                options.executes_per_lease,
                                i,
                            )
                        })
                        .collect();
                    let profiler = options
                        .profile
                        .as_ref()
                        .filter(|_| {
                            clients == 32
                                && matches!(
                                    scenario,
                                    Scenario::TeresaOneshot | Scenario::TeresaLeaseCycle
                                )
                        })
                        .map(|dir| Profiler {
                            dir: dir.clone(),
                            pid: teresa.pid(),
                            name: format!("{}-{clients}", scenario.name()),
                        });
                    load::drive(workers, window, &probe, profiler.as_ref()).await
                }
            };
            let point = Point::new(scenario, clients, measured);
            eprintln!(
                "  {:<20} {:>4} clients {:>8.0} ops/s  p50 {:>7.0} us  p99 {:>7.0} us  p99.9 {:>7.0} us  cpu pg {:>5.1} pgb {:>5.1} teresa {:>5.1} client {:>5.1} other {:>5.1}{}",
                scenario.name(),
                clients,
                point.throughput,
                point.latency_us.p50,
                point.latency_us.p99,
                point.latency_us.p999,
                point.cpu_s.postgres,
                point.cpu_s.pgbouncer,
                point.cpu_s.teresa,
                point.cpu_s.client,
                point.cpu_s.other,
                point
                    .first_error
                    .as_ref()
                    .map(|e| format!("  {} errors: {e}", point.errors))
                    .unwrap_or_default()
            );
            report.points.push(point);
            report::set_ratios(&mut report.points);
            report.write(&out)?;
        }
    }
    if !scenarios.is_empty() {
        eprintln!(
            "scenarios done in {:.1} min",
            started.elapsed().as_secs_f64() / 60.0
        );
    }

    if !options.skip_scale {
        let mut scale = scale::ScaleReport::default();
        let (streams_window, tenants, idle_tenants, leases) = if options.quick {
            (
                Window {
                    warmup: Duration::from_millis(500),
                    duration: Duration::from_secs(2),
                },
                200,
                20,
                options.leases.min(1_000),
            )
        } else {
            (
                Window {
                    warmup: Duration::from_secs(2),
                    duration: Duration::from_secs(10),
                },
                1_000,
                100,
                options.leases,
            )
        };
        eprintln!("scale: {} concurrent streams", options.streams);
        scale.streams =
            Some(scale::streams(&teresa, &db, &probe, options.streams, 4, streams_window).await?);
        // Free PostgreSQL's connections for the lease figures.
        drop(direct_pool);
        drop(bouncer_pool);
        teresa.stop().await;
        drop(bouncer);
        report.scale = Some(scale.clone());
        report.write(&out)?;

        eprintln!("scale: {tenants} tenants applied");
        scale.tenants_applied = Some(scale::tenants_applied(&db, &binary, tenants).await?);
        eprintln!("scale: idle with {idle_tenants} tenants");
        scale.idle_tenants = Some(scale::idle_tenants(&db, &binary, idle_tenants, 1).await?);
        let room = scale::postgres_room(&db).await?;
        eprintln!("scale: {} leases straight to PostgreSQL", room.min(leases));
        scale.leases_postgres = Some(
            scale::open_leases(&db, &binary, db.pg.port(), "PostgreSQL", room.min(leases)).await?,
        );
        eprintln!("scale: {leases} leases through PgBouncer");
        scale.leases_pgbouncer =
            Some(scale::open_leases_through_pgbouncer(&db, &binary, leases).await?);
        report.scale = Some(scale);
    }
    report.evaluate_targets();
    report.write(&out)?;
    println!("{}", report.markdown());
    eprintln!(
        "wrote {} and {}",
        out.join("results.json").display(),
        out.join("results.md").display()
    );
    Ok(())
}
