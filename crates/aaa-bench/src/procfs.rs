//! Readings of other processes from /proc: memory and CPU time. The parsers
//! are pure; the readers return `None` when the process is gone.

/// Peak and current resident memory of a process, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Memory {
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
}

/// From the text of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, in kB).
pub fn parse_status(status: &str) -> Option<Memory> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kb| kb * 1024)
    };
    Some(Memory {
        rss_bytes: field("VmRSS:")?,
        peak_rss_bytes: field("VmHWM:")?,
    })
}

pub fn memory(pid: u32) -> Option<Memory> {
    parse_status(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// Parent pid and CPU time (user + system, in clock ticks) from the text of
/// `/proc/<pid>/stat`. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from its closing parenthesis.
pub fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) ... utime(11) stime(12).
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// Clock ticks per second for /proc CPU times (USER_HZ; 100 on Linux).
pub const TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds used so far by `pid` and all its direct children (Postgres:
/// the postmaster and its backends).
pub fn cpu_seconds_with_children(pid: u32) -> f64 {
    let mut ticks = 0;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    for entry in entries.flatten() {
        let Some(this) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{this}/stat")) else {
            continue;
        };
        if let Some((ppid, cpu)) = parse_stat(&stat)
            && (this == pid || ppid == pid)
        {
            ticks += cpu;
        }
    }
    ticks as f64 / TICKS_PER_SECOND
}

/// CPU seconds used so far by `pid` alone (all its threads).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(_, ticks)| ticks as f64 / TICKS_PER_SECOND)
}

/// Parent of `pid`.
pub fn parent(pid: u32) -> Option<u32> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?).map(|(p, _)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_gives_current_and_peak_rss() {
        let status = "Name:\taaa\nVmPeak:\t  900 kB\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\n";
        assert_eq!(
            parse_status(status),
            Some(Memory {
                rss_bytes: 1024 * 1024,
                peak_rss_bytes: 2048 * 1024
            })
        );
        assert_eq!(parse_status("Name:\tkthread\n"), None);
    }

    #[test]
    fn stat_survives_names_with_spaces_and_parentheses() {
        let stat =
            "4242 (postgres: a (b) c) S 4200 4242 4242 0 -1 4194304 100 0 0 0 70 30 0 0 20 0 1 0";
        assert_eq!(parse_stat(stat), Some((4200, 100)));
        assert_eq!(parse_stat("garbage"), None);
    }
}
