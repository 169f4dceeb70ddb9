//! A server process's CPU time (`utime + stime` of `/proc/<pid>/stat`, every thread) and resident
//! memory (`VmRSS` of `/proc/<pid>/status`).

use std::time::Duration;

/// CPU time a process has used so far, user and system.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTime {
    pub user: Duration,
    pub system: Duration,
}

impl CpuTime {
    pub fn total(&self) -> Duration {
        self.user + self.system
    }

    pub fn since(&self, earlier: &CpuTime) -> CpuTime {
        CpuTime { user: self.user.saturating_sub(earlier.user), system: self.system.saturating_sub(earlier.system) }
    }
}

/// `utime` and `stime` (fields 14 and 15) of a `stat` line, in clock ticks. The command name
/// (field 2) is in parentheses and may hold spaces and parentheses itself, so fields are counted
/// from the last `)`.
pub fn parse_stat_ticks(stat: &str) -> Option<(u64, u64)> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // after_name starts with field 3 (state): utime and stime are the 12th and 13th from there.
    let mut fields = after_name.split_ascii_whitespace().skip(11);
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

/// `VmRSS` of a `status` file, in KiB.
pub fn parse_status_rss_kib(status: &str) -> Option<u64> {
    let value = status.lines().find_map(|line| line.strip_prefix("VmRSS:"))?;
    value.trim().strip_suffix("kB")?.trim().parse().ok()
}

/// `USER_HZ`, the unit of `utime` and `stime` (100 on every Linux this runs on; asked once).
fn ticks_per_second() -> u32 {
    static TICKS: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .filter(|ticks| *ticks > 0)
            .unwrap_or(100)
    })
}

pub fn cpu_time(pid: u32) -> std::io::Result<CpuTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let (user, system) = parse_stat_ticks(&stat).ok_or_else(|| invalid(format!("/proc/{pid}/stat: no utime/stime")))?;
    let tick = Duration::from_secs(1) / ticks_per_second();
    Ok(CpuTime {
        user: tick * u32::try_from(user).unwrap_or(u32::MAX),
        system: tick * u32::try_from(system).unwrap_or(u32::MAX),
    })
}

pub fn rss_kib(pid: u32) -> std::io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status_rss_kib(&status).ok_or_else(|| invalid(format!("/proc/{pid}/status: no VmRSS")))
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

/// Cores of the machine, whatever this process is pinned to (`available_parallelism` and `nproc`
/// count only the cores a process may run on).
pub fn online_cores() -> usize {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    match cpuinfo.lines().filter(|line| line.starts_with("processor")).count() {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        cores => cores,
    }
}

/// `nproc` (unpinned) and the CPU model, for the line printed above a table.
pub fn machine() -> String {
    let cores = online_cores();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|line| {
                line.strip_prefix("model name").and_then(|rest| rest.split_once(':')).map(|(_, m)| m.trim().to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    format!("{cores} cores ({model}), {}", std::env::consts::ARCH)
}

/// `net.core.somaxconn`: how many connection attempts the kernel queues for a listener at most,
/// whatever the listener asks for (a reconnect storm beyond it retries its SYNs after 1, 3, 7 s).
pub fn somaxconn() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn").ok()?.trim().parse().ok()
}

/// Idle and total time of all cores (`idle + iowait` and the sum of the first line of
/// `/proc/stat`), in ticks.
pub fn parse_machine_idle(stat: &str) -> Option<(u64, u64)> {
    let fields: Vec<u64> =
        stat.lines().next()?.strip_prefix("cpu ")?.split_ascii_whitespace().map_while(|f| f.parse().ok()).collect();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((idle, fields.iter().sum()))
}

fn machine_idle() -> Option<(u64, u64)> {
    parse_machine_idle(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// How idle the whole machine was since `start`: whether a phase was short of CPU (near 0 %) or
/// waiting on something (a round trip, a lock, a pool).
pub struct MachineIdle(Option<(u64, u64)>);

impl MachineIdle {
    pub fn start() -> Self {
        Self(machine_idle())
    }

    /// Percent of all cores' time idle since `start` (NaN when `/proc/stat` cannot be read).
    pub fn percent(&self) -> f64 {
        match (self.0, machine_idle()) {
            (Some((idle_from, all_from)), Some((idle_to, all_to))) if all_to > all_from => {
                100.0 * idle_to.saturating_sub(idle_from) as f64 / (all_to - all_from) as f64
            }
            _ => f64::NAN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime_past_a_tricky_command_name() {
        let stat = "4242 (ws gate) (x)) S 1 4242 4242 0 -1 4194560 1234 0 0 0 987 65 0 0 20 0 9 0 100 2000 300";
        assert_eq!(parse_stat_ticks(stat), Some((987, 65)));
        assert_eq!(parse_stat_ticks("1 (x) S 1 2"), None);
        assert_eq!(parse_stat_ticks("no parenthesis"), None);
    }

    #[test]
    fn reads_vm_rss() {
        let status = "Name:\tws-gateway\nVmPeak:\t  999 kB\nVmRSS:\t   51234 kB\nThreads:\t3\n";
        assert_eq!(parse_status_rss_kib(status), Some(51_234));
        assert_eq!(parse_status_rss_kib("Name: x\n"), None);
    }

    #[test]
    fn reads_machine_idle_with_iowait() {
        let stat = "cpu  100 5 50 800 20 0 25 0 0 0\ncpu0 50 2 25 400 10 0 12 0 0 0\n";
        assert_eq!(parse_machine_idle(stat), Some((820, 1000)));
        assert_eq!(parse_machine_idle("cpu0 1 2 3 4\n"), None);
        assert_eq!(parse_machine_idle("cpu  1 2 3\n"), None);
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(rss_kib(pid).expect("own status") > 0);
        let burn: u64 = (0..2_000_000u64).map(|i| i.wrapping_mul(i) % 7).sum();
        assert!(burn > 0);
        let cpu = cpu_time(pid).expect("own stat");
        assert!(cpu.since(&CpuTime::default()) == cpu);
        assert!(machine().contains("cores"));
    }
}
