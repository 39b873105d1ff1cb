//! What a run reports: one record per scenario and client count, ratios to
//! `direct` and to `pgbouncer` at the same client count, the issue's
//! targets, and the scale figures; written as JSON and as Markdown.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::load::{Cpu, Measured};
use crate::procfs::Machine;
use crate::scale::ScaleReport;
use crate::scenarios::Scenario;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub mean: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(hist: &hdrhistogram::Histogram<u64>) -> Latency {
        let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
        Latency {
            p50: us(hist.value_at_quantile(0.50)),
            p99: us(hist.value_at_quantile(0.99)),
            p999: us(hist.value_at_quantile(0.999)),
            mean: (hist.mean() / 100.0).round() / 10.0,
            max: us(hist.max()),
        }
    }
}

/// One scenario at one client count.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub scenario: Scenario,
    pub operation: &'static str,
    pub clients: usize,
    pub seconds: f64,
    pub ops: u64,
    pub errors: u64,
    /// Operations per second.
    pub throughput: f64,
    pub latency_us: Latency,
    /// CPU seconds each server process (and the client) spent in the window.
    pub cpu_s: Cpu,
    /// CPU microseconds the proxy in the path (PgBouncer or Teresa) spent
    /// per operation; PostgreSQL's per operation.
    pub proxy_cpu_us_per_op: Option<f64>,
    pub postgres_cpu_us_per_op: Option<f64>,
    pub first_error: Option<String>,
    /// Throughput over `direct`'s at the same client count.
    pub vs_direct: Option<f64>,
    /// Throughput over `pgbouncer`'s (same Rust client through PgBouncer).
    pub vs_pgbouncer: Option<f64>,
}

impl Point {
    pub fn new(scenario: Scenario, clients: usize, m: Measured) -> Point {
        let per_op = |cpu: f64| (m.ops > 0).then(|| (cpu / m.ops as f64 * 1e7).round() / 10.0);
        let proxy = if scenario.is_teresa() {
            m.cpu.teresa
        } else {
            m.cpu.pgbouncer
        };
        let through_proxy = !matches!(scenario, Scenario::Direct | Scenario::DirectUnnamed);
        Point {
            scenario,
            operation: scenario.operation(),
            clients,
            seconds: m.seconds,
            ops: m.ops,
            errors: m.errors,
            throughput: (m.ops as f64 / m.seconds).round(),
            latency_us: Latency::of(&m.hist),
            cpu_s: m.cpu,
            proxy_cpu_us_per_op: if through_proxy { per_op(proxy) } else { None },
            postgres_cpu_us_per_op: per_op(m.cpu.postgres),
            first_error: if m.errors > 0 { m.first_error } else { None },
            vs_direct: None,
            vs_pgbouncer: None,
        }
    }
}

/// Fills in every point's ratios from the points of the same run.
pub fn set_ratios(points: &mut [Point]) {
    let find = |points: &[Point], scenario: Scenario, clients: usize| {
        points
            .iter()
            .find(|p| p.scenario == scenario && p.clients == clients && p.ops > 0)
            .map(|p| p.throughput)
    };
    let ratio = |a: f64, b: Option<f64>| b.map(|b| (a / b * 100.0).round() / 100.0);
    for i in 0..points.len() {
        let (clients, throughput) = (points[i].clients, points[i].throughput);
        points[i].vs_direct = ratio(throughput, find(points, Scenario::Direct, clients));
        points[i].vs_pgbouncer = ratio(throughput, find(points, Scenario::Pgbouncer, clients));
    }
}

/// Versions of what ran.
#[derive(Debug, Clone, Serialize)]
pub struct Versions {
    pub postgres: String,
    pub pgbouncer: String,
    /// The commit of the work tree this benchmark was built from.
    pub teresa_commit: String,
    /// The teresa-pooler binary that ran (`--teresa-bin` or cargo's).
    pub teresa_binary: String,
}

/// Settings of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub duration_s: f64,
    pub warmup_s: f64,
    pub pool_size: u32,
    pub pgbench_scale: u32,
    pub clients: Vec<usize>,
    /// HTTP/2 connections the Teresa clients share; 0 means one per client.
    pub grpc_connections: usize,
    pub executes_per_lease: u32,
}

/// A goal of the issue and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: String,
    pub goal: String,
    pub measured: String,
    pub met: Option<bool>,
}

/// Everything a run reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub started_at: String,
    /// The machine's 1-minute load average when the run started.
    pub load_average_at_start: f64,
    pub command: String,
    pub machine: Machine,
    pub versions: Versions,
    pub settings: Settings,
    pub points: Vec<Point>,
    pub scale: Option<ScaleReport>,
    pub targets: Vec<Target>,
}

impl Report {
    /// Evaluates the targets against the points and scale figures.
    pub fn evaluate_targets(&mut self) {
        let at = |scenario: Scenario| {
            self.points
                .iter()
                .find(|p| p.scenario == scenario && p.clients == 32)
        };
        let mut targets = Vec::new();
        let ratio_target = |name: &str, goal: &str, value: Option<f64>, min: f64| Target {
            name: name.to_owned(),
            goal: goal.to_owned(),
            measured: value.map_or("not measured".to_owned(), |v| format!("{v:.2}x")),
            met: value.map(|v| v >= min),
        };
        let oneshot = at(Scenario::TeresaOneshot);
        targets.push(ratio_target(
            "one-shot Execute vs PgBouncer (same client), 32 clients",
            ">= 1.0x",
            oneshot.and_then(|p| p.vs_pgbouncer),
            1.0,
        ));
        targets.push(ratio_target(
            "one-shot Execute vs direct, 32 clients",
            ">= 0.6x",
            oneshot.and_then(|p| p.vs_direct),
            0.6,
        ));
        targets.push(ratio_target(
            "lease cycle vs direct, 32 clients",
            ">= 0.35x",
            at(Scenario::TeresaLeaseCycle).and_then(|p| p.vs_direct),
            0.35,
        ));
        let get_release = at(Scenario::TeresaGetRelease);
        targets.push(Target {
            name: "GetConnection+ReleaseConnection p50, 32 clients".to_owned(),
            goal: "< 150 us".to_owned(),
            measured: get_release.map_or("not measured".to_owned(), |p| {
                format!("{} us", p.latency_us.p50)
            }),
            met: get_release.map(|p| p.latency_us.p50 < 150.0),
        });
        targets.push(Target {
            name: "GetConnection+ReleaseConnection p99, 32 clients".to_owned(),
            goal: "< 1 ms".to_owned(),
            measured: get_release.map_or("not measured".to_owned(), |p| {
                format!("{} us", p.latency_us.p99)
            }),
            met: get_release.map(|p| p.latency_us.p99 < 1000.0),
        });
        if let Some(scale) = &self.scale {
            targets.extend(scale.targets());
        }
        self.targets = targets;
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(
            out,
            "Run {}; benchmark built from commit `{}`; teresa-pooler binary `{}`.\n",
            self.started_at, self.versions.teresa_commit, self.versions.teresa_binary
        );
        let _ = writeln!(
            out,
            "Machine: {} CPUs ({}), {} GiB RAM, Linux {}; {}; {}. Client and servers share the machine; its 1-minute load average was {} when the run started, and the column \"CPU s other\" is what other work on the machine used during each point (noise).\n",
            m.cpus,
            m.cpu_model,
            m.memory_gib,
            m.kernel,
            self.versions.postgres,
            self.versions.pgbouncer,
            self.load_average_at_start
        );
        let _ = writeln!(out, "Command: `{}`\n", self.command);
        let s = &self.settings;
        let _ = writeln!(
            out,
            "Settings: {} s per point after {} s of warm-up; pool size {} (direct pool, PgBouncer default_pool_size, Teresa maxConnections); pgbench scale {}; {}; {} Executes per held lease.\n",
            s.duration_s,
            s.warmup_s,
            s.pool_size,
            s.pgbench_scale,
            if s.grpc_connections == 0 {
                "one HTTP/2 connection per Teresa client".to_owned()
            } else {
                format!(
                    "Teresa clients share {} HTTP/2 connections",
                    s.grpc_connections
                )
            },
            s.executes_per_lease
        );
        out.push_str("### Throughput and latency\n\n");
        out.push_str(
            "| scenario | clients | ops/s | p50 µs | p99 µs | p99.9 µs | × direct | × PgBouncer | CPU s postgres | CPU s pgbouncer | CPU s teresa | CPU s client | CPU s other | proxy CPU µs/op | errors |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        let ratio = |r: Option<f64>| r.map_or("–".to_owned(), |r| format!("{r:.2}"));
        for p in &self.points {
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |",
                p.scenario.name(),
                p.clients,
                p.throughput,
                p.latency_us.p50.round(),
                p.latency_us.p99.round(),
                p.latency_us.p999.round(),
                ratio(p.vs_direct),
                ratio(p.vs_pgbouncer),
                p.cpu_s.postgres,
                p.cpu_s.pgbouncer,
                p.cpu_s.teresa,
                p.cpu_s.client,
                p.cpu_s.other,
                p.proxy_cpu_us_per_op
                    .map_or("–".to_owned(), |v| format!("{v:.0}")),
                p.errors
            );
        }
        let errors: Vec<&Point> = self
            .points
            .iter()
            .filter(|p| p.first_error.is_some())
            .collect();
        if !errors.is_empty() {
            out.push_str("\nErrors:\n\n");
            for p in errors {
                let _ = writeln!(
                    out,
                    "- {} at {} clients: {}",
                    p.scenario.name(),
                    p.clients,
                    p.first_error.as_deref().unwrap_or_default()
                );
            }
        }
        if let Some(scale) = &self.scale {
            out.push_str("\n### Scale\n\n");
            out.push_str(&scale.markdown());
        }
        out.push_str("\n### Targets\n\n| target | goal | measured | met |\n|---|---|---|---|\n");
        for t in &self.targets {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                t.name,
                t.goal,
                t.measured,
                match t.met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "–",
                }
            );
        }
        out
    }

    /// Writes `results.json` and `results.md` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("results.json"),
            serde_json::to_string_pretty(self)?,
        )?;
        std::fs::write(dir.join("results.md"), self.markdown())?;
        Ok(())
    }
}
