//! What the generator reads from the OS: CPU time and RSS of a process from
//! /proc, its own CPU time, the open-file limit, CPU pinning, and a Ctrl-C
//! flag.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::resource::{getrlimit, getrusage, setrlimit, Resource, UsageWho};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::{sysconf, Pid, SysconfVar};

/// CPU time (user + system, all threads) of process `pid` in nanoseconds.
///
/// The figure is utime + stime; `/proc/PID/stat` reports it in clock ticks
/// (10 ms here), too coarse for sub-second windows, so the same time is
/// read at nanosecond resolution as the sum of the threads' run times in
/// `/proc/PID/task/*/schedstat` when available, else from the stat file.
pub fn proc_cpu_ns(pid: u32) -> io::Result<u64> {
    match threads_run_ns(pid) {
        Ok(ns) if ns > 0 => Ok(ns),
        _ => proc_stat_cpu_ns(pid),
    }
}

fn threads_run_ns(pid: u32) -> io::Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        // A thread may exit between listing and reading: skip it.
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        total += text
            .split_whitespace()
            .next()
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

/// utime + stime of `pid` from `/proc/PID/stat`, in nanoseconds (tick resolution).
pub fn proc_stat_cpu_ns(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat_cpu_ticks(&stat)
        .map(|ticks| ticks * 1_000_000_000 / clock_ticks_per_sec())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc/PID/stat"))
}

/// utime + stime in clock ticks. The command name (field 2) may contain
/// spaces and parentheses, so fields are counted after its last ')'.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_sec() -> u64 {
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as u64,
        _ => 100,
    }
}

/// Resident set size of process `pid` in bytes (`/proc/PID/statm`).
pub fn proc_rss_bytes(pid: u32) -> io::Result<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm"))?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc/PID/statm"))?;
    let page = match sysconf(SysconfVar::PAGE_SIZE) {
        Ok(Some(p)) if p > 0 => p as u64,
        _ => 4096,
    };
    Ok(pages * page)
}

/// This process's CPU time (all threads, user + system) in nanoseconds.
pub fn self_cpu_ns() -> u64 {
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let t = |tv: nix::sys::time::TimeVal| {
                tv.tv_sec() as u64 * 1_000_000_000 + tv.tv_usec() as u64 * 1_000
            };
            t(u.user_time()) + t(u.system_time())
        }
        Err(_) => 0,
    }
}

/// Raises the soft open-file limit to the hard one; returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Err(_) => 1024,
    }
}

/// Pins the calling process (all future threads) to one CPU.
pub fn pin_to_cpu(cpu: usize) -> nix::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(Pid::from_raw(0), &set)
}

/// CPUs this process may run on (1 under `taskset -c 1`).
pub fn cpus_available() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The one CPU process `pid` (0: this process) may run on, if it is pinned
/// to exactly one.
pub fn pinned_cpu(pid: u32) -> Option<usize> {
    let status = std::fs::read_to_string(if pid == 0 {
        "/proc/self/status".to_owned()
    } else {
        format!("/proc/{pid}/status")
    })
    .ok()?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?
        .trim();
    list.parse().ok()
}

/// Busy and total clock ticks of one CPU so far, from `/proc/stat`
/// (busy: everything but idle and iowait).
pub fn cpu_ticks(cpu: usize) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest fields are in user)
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// How busy a CPU was between two [`cpu_ticks`] readings (0..=1).
pub fn busy_between(a: (u64, u64), b: (u64, u64)) -> Option<f64> {
    let total = b.1.checked_sub(a.1)?;
    (total > 0).then(|| b.0.saturating_sub(a.0) as f64 / total as f64)
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Makes Ctrl-C (SIGINT) and SIGTERM set the [`stop_requested`] flag instead
/// of killing the process, so a run can report what it measured so far.
pub fn install_stop_handler() {
    let action = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to a static atomic, which is
        // async-signal-safe; no other handler for these signals is relied on.
        let _ = unsafe { sigaction(sig, &action) };
    }
}

/// True once Ctrl-C or SIGTERM arrived (or [`request_stop`] was called).
pub fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Sets the stop flag from code (used by worker processes told to stop).
pub fn request_stop() {
    STOP.store(true, Ordering::Relaxed);
}

/// One-line description of this machine for reports.
pub fn machine_summary() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU", str::trim)
        .to_owned();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {} CPUs online, Linux {}",
        std::fs::read_to_string("/sys/devices/system/cpu/online")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        kernel.trim()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_command_name() {
        let line = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 500 0 0 0 \
                    250 37 0 0 20 0 3 0 100 1000000 200 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(line), Some(287));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn cpu_ticks_of_cpu0() {
        let (busy, total) = cpu_ticks(0).unwrap();
        assert!(busy <= total && total > 0);
        assert_eq!(busy_between((10, 100), (30, 200)), Some(0.2));
        assert_eq!(busy_between((10, 100), (10, 100)), None);
    }

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(proc_rss_bytes(pid).unwrap() > 0);
        // Burn a little CPU so both sources have something to show.
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed().as_millis() < 30 {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let fine = proc_cpu_ns(pid).unwrap();
        let coarse = proc_stat_cpu_ns(pid).unwrap();
        assert!(fine > 0);
        // Same quantity: within a few ticks of each other.
        assert!(fine.abs_diff(coarse) < 200_000_000, "{fine} vs {coarse}");
    }
}
