//! Resident memory of this process, read from `/proc/self/status` (Linux); `None` elsewhere.

use serde::Serialize;

/// Current and peak resident set size, in MiB.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Rss {
    pub rss_mib: f64,
    pub peak_mib: f64,
}

pub fn rss() -> Option<Rss> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    };
    Some(Rss { rss_mib: field("VmRSS:")?, peak_mib: field("VmHWM:")? })
}
