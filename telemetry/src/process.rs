//! Process statistics from `/proc/self` (Linux): CPU seconds, resident memory, open descriptors.
//! Read on the admin thread, never on the tick thread. On other systems every value is `None`.

/// Clock ticks per second for `/proc/self/stat` times. Linux has reported 100 on every mainstream
/// architecture for decades; reading it properly needs `sysconf`, which would need `libc`.
const CLOCK_TICKS_PER_S: f64 = 100.0;
const PAGE_BYTES: u64 = 4096;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessSample {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<u64>,
    pub open_fds: Option<u64>,
}

pub fn sample() -> ProcessSample {
    ProcessSample {
        cpu_seconds: cpu_seconds(),
        resident_bytes: resident_bytes(),
        open_fds: open_fds(),
    }
}

fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may contain spaces; fields after the closing parenthesis are fixed.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / CLOCK_TICKS_PER_S)
}

fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * PAGE_BYTES)
}

fn open_fds() -> Option<u64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process() {
        let s = super::sample();
        if cfg!(target_os = "linux") {
            assert!(s.resident_bytes.unwrap() > 1 << 20);
            assert!(s.open_fds.unwrap() >= 3);
            assert!(s.cpu_seconds.unwrap() >= 0.0);
        }
    }
}
