//! Machine facts and CPU accounting from `/proc`.
//!
//! A benchmark on a shared 2-core box is only as honest as its record of
//! what else ran. For every measured cell the bench takes a [`CpuSnapshot`]
//! before and after and splits the machine's busy CPU time into: the
//! servers of the system under test, the servers of the idle system (the
//! other cluster stays up between its turns), the bench process itself (load
//! generator, and in WAN scenarios the lab's proxies), and everything else
//! (other users of the machine). The last share decides whether a cell is
//! flagged as noisy.

use std::collections::BTreeMap;

use serde::Serialize;

/// Clock ticks per second of `/proc` CPU counters.
fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a constant of the running system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// CPU seconds (user + system) a process has used so far, threads included;
/// `None` once it has exited.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: fields start after its ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': field 3 (state) is index 0, so utime (14) is 11, stime (15) 12.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks_per_second())
}

/// Busy CPU seconds of the whole machine (all cores) since boot.
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let values: Vec<f64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal guest guest_nice;
    // guest time is already inside user, so it is not added again.
    let busy = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| values.get(i)).sum::<f64>();
    Some(busy / clock_ticks_per_second())
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut values = text.split_whitespace().filter_map(|v| v.parse::<f64>().ok());
    [values.next().unwrap_or(0.0), values.next().unwrap_or(0.0), values.next().unwrap_or(0.0)]
}

/// What the machine is, recorded once per run.
#[derive(Debug, Clone, Serialize)]
pub struct MachineFacts {
    pub cores: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub load_average_before: [f64; 3],
    pub load_average_after: [f64; 3],
    /// The busiest other processes in the second before the run started
    /// (name, share of one core).
    pub busiest_before: Vec<(String, f64)>,
}

impl MachineFacts {
    pub fn collect() -> MachineFacts {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
        MachineFacts {
            cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            cpu_model,
            kernel,
            load_average_before: load_average(),
            load_average_after: [0.0; 3],
            busiest_before: busiest_processes(std::time::Duration::from_secs(1), 5),
        }
    }
}

/// CPU seconds per pid for every process now.
fn all_process_cpu() -> BTreeMap<u32, (String, f64)> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string();
        if let Some(cpu) = process_cpu_seconds(pid) {
            out.insert(pid, (name, cpu));
        }
    }
    out
}

/// The `top` processes by CPU over `window` (name, cores used), excluding
/// this process.
pub fn busiest_processes(window: std::time::Duration, top: usize) -> Vec<(String, f64)> {
    let before = all_process_cpu();
    std::thread::sleep(window);
    let after = all_process_cpu();
    let me = std::process::id();
    let mut used: Vec<(String, f64)> = after
        .iter()
        .filter(|(pid, _)| **pid != me)
        .filter_map(|(pid, (name, cpu))| {
            let start = before.get(pid).map(|(_, c)| *c).unwrap_or(*cpu);
            let share = (cpu - start) / window.as_secs_f64();
            (share > 0.01).then(|| (format!("{name}[{pid}]"), (share * 100.0).round() / 100.0))
        })
        .collect();
    used.sort_by(|a, b| b.1.total_cmp(&a.1));
    used.truncate(top);
    used
}

/// CPU counters at one instant.
#[derive(Debug, Clone)]
pub struct CpuSnapshot {
    machine_busy_s: f64,
    bench_s: f64,
    pids: BTreeMap<u32, f64>,
}

impl CpuSnapshot {
    /// Counters of the machine, this process and `pids`.
    pub fn take(pids: &[u32]) -> CpuSnapshot {
        CpuSnapshot {
            machine_busy_s: machine_busy_seconds().unwrap_or(0.0),
            bench_s: process_cpu_seconds(std::process::id()).unwrap_or(0.0),
            pids: pids.iter().filter_map(|&pid| Some((pid, process_cpu_seconds(pid)?))).collect(),
        }
    }
}

/// Where the machine's CPU went between two snapshots, in CPU seconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuUse {
    /// The servers of the system being measured.
    pub target_servers_s: f64,
    /// The servers of the other system, idle but running.
    pub idle_servers_s: f64,
    /// This process: load generator (and lab proxies where used).
    pub bench_s: f64,
    /// Everything else on the machine.
    pub others_s: f64,
}

impl CpuUse {
    /// Splits the time between `before` and `after`; `target` are the pids of
    /// the measured servers, `idle` those of the other system.
    pub fn between(before: &CpuSnapshot, after: &CpuSnapshot, target: &[u32], idle: &[u32]) -> CpuUse {
        let used = |pids: &[u32]| -> f64 {
            pids.iter()
                .filter_map(|pid| Some(after.pids.get(pid)? - before.pids.get(pid).unwrap_or(&0.0)))
                .map(|d| d.max(0.0))
                .sum()
        };
        let target_servers_s = used(target);
        let idle_servers_s = used(idle);
        let bench_s = (after.bench_s - before.bench_s).max(0.0);
        let machine = (after.machine_busy_s - before.machine_busy_s).max(0.0);
        let others_s = (machine - target_servers_s - idle_servers_s - bench_s).max(0.0);
        CpuUse { target_servers_s, idle_servers_s, bench_s, others_s }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_time_and_the_machine() {
        let mine = process_cpu_seconds(std::process::id()).expect("own /proc/<pid>/stat");
        assert!(mine >= 0.0);
        assert!(machine_busy_seconds().expect("/proc/stat") > 0.0);
        assert!(load_average()[0] >= 0.0);
    }
}
