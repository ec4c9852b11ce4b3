//! What the kernel says about a process: CPU seconds (`/proc/<pid>/stat`) and peak RSS (`/proc/<pid>/status`).

use std::fs;

use anyhow::{Context, anyhow};

/// Clock ticks per second of `utime` / `stime`. Linux reports USER_HZ, 100 on every mainstream architecture;
/// `getconf CLK_TCK` overrides it when available.
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// `utime + stime` in ticks from the text of `/proc/<pid>/stat`. The command name (field 2) is in parentheses
/// and may itself hold spaces or parentheses, so fields are counted after the LAST `)`.
pub fn parse_stat_ticks(stat: &str) -> anyhow::Result<u64> {
    let close = stat
        .rfind(')')
        .ok_or_else(|| anyhow!("no ')' in /proc stat line"))?;
    // After ")": field 3 (state) is index 0, so utime (field 14) is index 11 and stime (15) index 12.
    let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        rest.get(i)
            .ok_or_else(|| {
                anyhow!(
                    "/proc stat line has only {} fields after the name",
                    rest.len()
                )
            })?
            .parse::<u64>()
            .with_context(|| format!("field {} of /proc stat", i + 3))
    };
    Ok(field(11)? + field(12)?)
}

/// CPU seconds (user + system, all threads, exited ones included) used so far by `pid`.
pub fn cpu_seconds(pid: u32, ticks_per_second: f64) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    Ok(parse_stat_ticks(&text)? as f64 / ticks_per_second)
}

/// A `kB` field of `/proc/<pid>/status` (e.g. `VmHWM`, the peak resident set), in bytes.
pub fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if name.trim() != field {
            return None;
        }
        let number = value.trim().strip_suffix("kB").unwrap_or(value).trim();
        number.parse::<u64>().ok().map(|kib| kib * 1024)
    })
}

/// Peak resident set size of `pid` in bytes (`VmHWM`).
pub fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_status_kib(&text, "VmHWM").ok_or_else(|| anyhow!("no VmHWM in {path}"))
}

/// The machine, for the report: CPU model, logical CPUs, kernel.
pub fn machine() -> (String, usize, String) {
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    // Every CPU of the machine, not just those this (pinned) process may use.
    let cpus = fs::read_to_string("/proc/cpuinfo")
        .map(|t| t.lines().filter(|l| l.starts_with("processor")).count())
        .ok()
        .filter(|n| *n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    (model, cpus, kernel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_paren() {
        // A command name with a space and a ')' in it must not shift the fields.
        let line = "4242 (life guard) x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_stat_ticks(line).unwrap(), 325);
    }

    #[test]
    fn stat_too_short_is_an_error() {
        assert!(parse_stat_ticks("1 (x) S 1 2").is_err());
        assert!(parse_stat_ticks("garbage").is_err());
    }

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid, clock_ticks()).unwrap() >= 0.0);
        assert!(peak_rss(pid).unwrap() > 0);
    }

    #[test]
    fn status_fields() {
        let status = "Name:\tlifeguard\nVmPeak:\t  300000 kB\nVmHWM:\t   51200 kB\nThreads:\t3\n";
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(51200 * 1024));
        assert_eq!(parse_status_kib(status, "VmRSS"), None);
    }
}
