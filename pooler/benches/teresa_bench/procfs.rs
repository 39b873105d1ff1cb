//! CPU time and resident memory of processes, read from `/proc`: what each
//! server process spent during a measured window, and how big the pooler is.

use std::path::Path;

/// `/proc/PID/stat` counts CPU time in clock ticks of this many per second
/// (USER_HZ, 100 on every Linux this runs on).
const TICKS_PER_SECOND: f64 = 100.0;

/// The fields of `/proc/PID/stat` this benchmark reads.
#[derive(Debug, Clone, Copy)]
struct Stat {
    ppid: u32,
    /// utime + stime of the process (all its threads).
    own: u64,
    /// cutime + cstime: children it has waited for.
    children: u64,
}

fn read_stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some(Stat {
        ppid: num(1)? as u32,
        own: num(11)? + num(12)?,
        children: num(13)? + num(14)?,
    })
}

/// CPU seconds of one process, its threads included.
pub fn cpu_seconds(pid: u32) -> f64 {
    read_stat(pid).map_or(0.0, |s| s.own as f64 / TICKS_PER_SECOND)
}

/// CPU seconds of a process and of all its children, live or exited (an
/// exited backend's time is folded into the postmaster's cutime/cstime).
pub fn tree_cpu_seconds(pid: u32) -> f64 {
    let Some(root) = read_stat(pid) else {
        return 0.0;
    };
    let mut ticks = root.own + root.children;
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(stat) = read_stat(child).filter(|s| s.ppid == pid) {
                ticks += stat.own + stat.children;
            }
        }
    }
    ticks as f64 / TICKS_PER_SECOND
}

/// CPU seconds of this process, and of the children it has waited for
/// (pgbench runs).
pub fn self_cpu_seconds() -> (f64, f64) {
    read_stat(std::process::id()).map_or((0.0, 0.0), |s| {
        (
            s.own as f64 / TICKS_PER_SECOND,
            s.children as f64 / TICKS_PER_SECOND,
        )
    })
}

/// CPU seconds the whole machine has been busy (all cores, every process).
pub fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .map(|fields| {
            fields
                .split_whitespace()
                .filter_map(|f| f.parse::<u64>().ok())
                .enumerate()
                // user nice system idle iowait irq softirq steal: not idle, iowait
                .filter(|(i, _)| !matches!(i, 3 | 4) && *i < 8)
                .map(|(_, v)| v)
                .sum()
        })
        .unwrap_or(0);
    ticks as f64 / TICKS_PER_SECOND
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Resident memory of a process in KiB (`VmRSS`), 0 if it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    status_field(pid, "VmRSS:").unwrap_or(0)
}

fn status_field(pid: u32, name: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The postmaster's pid, from the first line of `postmaster.pid`.
pub fn postmaster_pid(data_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// The machine, for the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
}

impl Machine {
    pub fn describe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            memory_gib: (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
        }
    }
}
