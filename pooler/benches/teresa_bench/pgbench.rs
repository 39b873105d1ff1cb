//! `pgbench -S` through PgBouncer: a warm-up run, then a measured run with a
//! per-transaction log (`-l`) whose latencies go into the same kind of HDR
//! histogram as the Rust clients'.

use std::path::Path;
use std::time::Duration;

use crate::load::{Measured, Probe, Window, histogram};
use crate::servers::{DBNAME, Database};

/// Runs `pgbench -S -M <mode>` with `clients` clients against `port`.
pub async fn run(
    db: &Database,
    port: u16,
    mode: &str,
    clients: usize,
    window: Window,
    probe: &Probe,
    log_dir: &Path,
) -> anyhow::Result<Measured> {
    let threads = clients.clamp(1, 2).to_string();
    let clients_arg = clients.to_string();
    let command = |seconds: u64| {
        let mut command = db.pgbench_command(port);
        command
            .args(["-n", "-S", "-M", mode])
            .args(["-c", &clients_arg, "-j", &threads])
            .args(["-T", &seconds.to_string()]);
        command
    };
    if !window.warmup.is_zero() {
        let _ = command(whole_seconds(window.warmup))
            .arg(DBNAME)
            .output()
            .await?;
    }
    std::fs::create_dir_all(log_dir)?;
    let prefix = log_dir.join(format!("pgbench-{mode}-{clients}"));
    let seconds = whole_seconds(window.duration);
    let before = probe.snapshot();
    let output = command(seconds)
        .arg("-l")
        .arg(format!("--log-prefix={}", prefix.display()))
        .arg(DBNAME)
        .output()
        .await?;
    let after = probe.snapshot();

    let mut hist = histogram();
    let (mut ops, mut errors) = (0u64, 0u64);
    let name = prefix
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for entry in std::fs::read_dir(log_dir)?.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(&name) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path())?;
        // client_id transaction_no time_us script_no epoch_s epoch_us [...]
        for line in text.lines() {
            match line.split_whitespace().nth(2).map(str::parse::<u64>) {
                Some(Ok(us)) => {
                    ops += 1;
                    hist.saturating_record(us.max(1) * 1000);
                }
                _ => errors += 1,
            }
        }
        let _ = std::fs::remove_file(entry.path());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let first_error = (!output.status.success() || errors > 0).then(|| {
        stderr
            .lines()
            .find(|l| l.contains("error") || l.contains("aborted"))
            .unwrap_or(stderr.trim())
            .to_owned()
    });
    if !output.status.success() {
        // Clients that aborted ran no more transactions; count them.
        errors += stderr.lines().filter(|l| l.contains("aborted")).count() as u64;
    }
    Ok(Measured {
        hist,
        ops,
        errors,
        first_error,
        cpu: after.since(&before),
        seconds: seconds as f64,
    })
}

fn whole_seconds(d: Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}
