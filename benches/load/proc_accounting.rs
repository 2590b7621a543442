//! /proc accounting: a process tree's CPU ticks and peak memory, a core's
//! busy share.

use std::process::Command;
use std::time::Duration;

/// Fields after the `(comm)` of /proc/PID/stat; index 0 is field 3 (state).
pub fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

pub fn process_tree(root: u32) -> Vec<u32> {
    let mut all: Vec<(u32, u32)> = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(ppid) = stat_fields(pid).and_then(|f| f.get(1)?.parse::<u32>().ok()) {
                all.push((pid, ppid));
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(all.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    tree
}

/// utime + stime of all threads of `pids`, in clock ticks.
pub fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| {
            let f = stat_fields(*pid)?;
            let utime: u64 = f.get(11)?.parse().ok()?;
            let stime: u64 = f.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .sum()
}

/// Sum of VmHWM (peak RSS) over `pids`, in KiB.
pub fn peak_rss_kib(pids: &[u32]) -> u64 {
    status_kib(pids, "VmHWM:")
}

/// Sum of VmRSS (resident now) over `pids`, in KiB.
pub fn rss_kib(pids: &[u32]) -> u64 {
    status_kib(pids, "VmRSS:")
}

fn status_kib(pids: &[u32], field: &str) -> u64 {
    pids.iter()
        .filter_map(|pid| {
            let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .sum()
}

/// (busy, total) jiffies of `cpu` ("cpu" for all, "cpu1" for core 1) from /proc/stat.
pub fn cpu_jiffies_of(cpu: &str) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s
        .lines()
        .find(|l| l.split_whitespace().next() == Some(cpu))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    // idle + iowait
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Share of the machine that other processes keep busy, sampled for 1 s.
pub fn background_busy_percent() -> Option<f64> {
    let (b0, t0) = cpu_jiffies_of("cpu")?;
    std::thread::sleep(Duration::from_secs(1));
    let (b1, t1) = cpu_jiffies_of("cpu")?;
    let dt = t1.checked_sub(t0).filter(|d| *d > 0)?;
    Some(100.0 * b1.saturating_sub(b0) as f64 / dt as f64)
}

pub fn clock_ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .unwrap_or(100.0)
}
