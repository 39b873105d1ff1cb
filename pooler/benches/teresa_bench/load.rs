//! The closed-loop load generator: N client tasks, each repeating one
//! operation as fast as it completes. Operations that start during the
//! warm-up are not counted; those that start in the measured window are
//! timed into an HDR histogram. CPU seconds of every server process are read
//! at the window's edges.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::process::Child;

use crate::procfs;

/// Warm-up, then the measured window.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub warmup: Duration,
    pub duration: Duration,
}

/// One client of a scenario: holds its connection or channel and whatever
/// state its operation needs.
pub trait Worker: Send + 'static {
    /// One operation; an error's text goes into the report.
    fn op(&mut self) -> impl Future<Output = Result<(), String>> + Send;

    /// Runs once after the last operation (e.g. releases a held lease).
    fn finish(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Latency histogram in nanoseconds, 1 ns to 2 min, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000_000, 3).expect("valid histogram bounds")
}

/// The processes whose CPU time a run reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct Probe {
    pub postmaster: u32,
    pub pgbouncer: Option<u32>,
    pub teresa: Option<u32>,
}

/// CPU seconds per process at one instant.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Cpu {
    /// The postmaster and every backend.
    pub postgres: f64,
    pub pgbouncer: f64,
    pub teresa: f64,
    /// The benchmark client itself, plus pgbench when it is the client.
    pub client: f64,
    /// Everything else the machine ran meanwhile (other users' work): noise.
    pub other: f64,
}

impl Probe {
    pub fn snapshot(&self) -> Cpu {
        let (own, children) = procfs::self_cpu_seconds();
        let mut cpu = Cpu {
            postgres: procfs::tree_cpu_seconds(self.postmaster),
            pgbouncer: self.pgbouncer.map_or(0.0, procfs::cpu_seconds),
            teresa: self.teresa.map_or(0.0, procfs::cpu_seconds),
            client: own + children,
            other: 0.0,
        };
        // Busy time not spent by the processes above.
        cpu.other = procfs::machine_busy_seconds()
            - (cpu.postgres + cpu.pgbouncer + cpu.teresa + cpu.client);
        cpu
    }
}

impl Cpu {
    pub fn since(&self, before: &Cpu) -> Cpu {
        let d = |a: f64, b: f64| ((a - b).max(0.0) * 100.0).round() / 100.0;
        Cpu {
            postgres: d(self.postgres, before.postgres),
            pgbouncer: d(self.pgbouncer, before.pgbouncer),
            teresa: d(self.teresa, before.teresa),
            client: d(self.client, before.client),
            other: d(self.other, before.other),
        }
    }
}

/// What one measured window produced.
pub struct Measured {
    pub hist: Histogram<u64>,
    pub ops: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub cpu: Cpu,
    pub seconds: f64,
}

/// `perf record` on one process for the measured window, if asked for.
pub struct Profiler {
    pub dir: PathBuf,
    pub pid: u32,
    pub name: String,
}

impl Profiler {
    fn start(&self) -> Option<Child> {
        let _ = std::fs::create_dir_all(&self.dir);
        let out = self.dir.join(format!("{}.perf.data", self.name));
        tokio::process::Command::new("perf")
            .args([
                "record",
                "-F",
                "999",
                "-g",
                "-p",
                &self.pid.to_string(),
                "-o",
            ])
            .arg(&out)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .inspect_err(|e| eprintln!("  perf record not started: {e}"))
            .ok()
    }

    async fn stop(mut child: Child) {
        if let Some(pid) = child.id() {
            let _ = tokio::process::Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status()
                .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    }
}

/// Runs `workers` concurrently through the warm-up and the window.
pub async fn drive<W: Worker>(
    workers: Vec<W>,
    window: Window,
    probe: &Probe,
    profiler: Option<&Profiler>,
) -> Measured {
    let start = Instant::now();
    let measure_from = start + window.warmup;
    let end = measure_from + window.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for mut worker in workers {
        tasks.spawn(async move {
            let mut hist = histogram();
            let (mut ops, mut errors, mut first_error) = (0u64, 0u64, None);
            loop {
                let began = Instant::now();
                if began >= end {
                    break;
                }
                let result = worker.op().await;
                let took = began.elapsed();
                let counted = began >= measure_from;
                match result {
                    Ok(()) if counted => {
                        ops += 1;
                        hist.saturating_record(took.as_nanos().max(1) as u64);
                    }
                    Ok(()) => {}
                    Err(e) => {
                        if counted {
                            errors += 1;
                        }
                        first_error.get_or_insert(e);
                        // An error is often instant; don't spin on it.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            worker.finish().await;
            (hist, ops, errors, first_error)
        });
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let before = probe.snapshot();
    let perf = profiler.and_then(Profiler::start);
    tokio::time::sleep_until(end.into()).await;
    let after = probe.snapshot();
    if let Some(perf) = perf {
        Profiler::stop(perf).await;
    }
    let mut measured = Measured {
        hist: histogram(),
        ops: 0,
        errors: 0,
        first_error: None,
        cpu: after.since(&before),
        seconds: window.duration.as_secs_f64(),
    };
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((hist, ops, errors, first_error)) => {
                let _ = measured.hist.add(&hist);
                measured.ops += ops;
                measured.errors += errors;
                if measured.first_error.is_none() {
                    measured.first_error = first_error;
                }
            }
            Err(e) => {
                measured.errors += 1;
                measured
                    .first_error
                    .get_or_insert(format!("client task failed: {e}"));
            }
        }
    }
    measured
}
