//! Resident memory of this process, read from `/proc/self/status`, and the machine's available memory, read from
//! `/proc/meminfo` (Linux); `None` elsewhere.

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

/// Memory the kernel could give to new work without swapping (`MemAvailable`), in MiB.
pub fn available_mib() -> Option<f64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Returns the allocator's free memory to the kernel. Loading a model parses and rewrites whole graphs; glibc
/// keeps most of what that frees (hundreds of MiB for the decoder) unless asked.
pub use lookout_models::engine::release_free_memory;

/// Resets the peak resident size (`VmHWM`) to the current one, so a later peak measures only what follows.
pub fn reset_peak() -> std::io::Result<()> {
    std::fs::write("/proc/self/clear_refs", "5")
}
