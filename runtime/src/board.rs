//! Boards: the profiles in board-configs/ (built into the binary), recognizing this machine from
//! `/proc/device-tree/model` and `/proc/cpuinfo`, and checking a budget against the RAM the kernel reports.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Every board profile of the repository, by name.
pub const BUILT_IN: [(&str, &str); 9] = [
    ("rpi0-2w", include_str!("../../board-configs/rpi0-2w.toml")),
    ("rpi0-2w-32", include_str!("../../board-configs/rpi0-2w-32.toml")),
    ("rpi3", include_str!("../../board-configs/rpi3.toml")),
    ("rpi3-32", include_str!("../../board-configs/rpi3-32.toml")),
    ("rpi4", include_str!("../../board-configs/rpi4.toml")),
    ("rpi5", include_str!("../../board-configs/rpi5.toml")),
    ("jetson-nano", include_str!("../../board-configs/jetson-nano.toml")),
    ("jetson-orin-nano", include_str!("../../board-configs/jetson-orin-nano.toml")),
    ("x86-dev", include_str!("../../board-configs/x86-dev.toml")),
];

/// The target this binary was built for (one of `config::TARGETS`).
pub const BUILD_TARGET: &str = if cfg!(target_arch = "x86_64") {
    "x86_64-unknown-linux-gnu"
} else if cfg!(target_arch = "aarch64") {
    "aarch64-unknown-linux-gnu"
} else {
    "armv7-unknown-linux-gnueabihf"
};

/// What the kernel says about the machine: the device-tree model (absent on PCs) and `/proc/cpuinfo`.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    pub device_tree_model: Option<String>,
    pub cpuinfo: String,
}

impl Probe {
    pub fn this_machine() -> Probe {
        Probe::from_root(Path::new("/"))
    }

    /// Reads the probe files under `root` (`/` on a live system; a directory of canned files in tests).
    pub fn from_root(root: &Path) -> Probe {
        let model = std::fs::read(root.join("proc/device-tree/model"))
            .ok()
            .map(|bytes| String::from_utf8_lossy(&bytes).trim_end_matches(['\0', '\n']).to_string());
        Probe {
            device_tree_model: model,
            cpuinfo: std::fs::read_to_string(root.join("proc/cpuinfo")).unwrap_or_default(),
        }
    }

    /// The value of the first `key : value` line of cpuinfo with this key.
    fn cpuinfo_field(&self, key: &str) -> Option<&str> {
        self.cpuinfo.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == key).then(|| v.trim())
        })
    }

    /// What the board calls itself: the device-tree model, else cpuinfo's `Model` line (32-bit Raspberry Pi OS).
    pub fn model(&self) -> Option<&str> {
        self.device_tree_model.as_deref().filter(|m| !m.is_empty()).or_else(|| self.cpuinfo_field("Model"))
    }
}

/// The built-in board that matches the probe, for this build: see [`detect_for`].
pub fn detect(probe: &Probe) -> Result<&'static str, String> {
    detect_for(probe, BUILD_TARGET)
}

/// The built-in board that matches the probe: the longest `detect.model` substring found in the model, else a
/// `detect.vendor_id` equal to cpuinfo's. One board can have profiles for a 64-bit and a 32-bit OS: among equal
/// matches the one for `target` wins, else the one listed first. An unrecognized machine is an error that says
/// what was read.
pub fn detect_for(probe: &Probe, target: &str) -> Result<&'static str, String> {
    let boards: Vec<(&'static str, toml::Table)> =
        BUILT_IN.iter().filter_map(|(name, text)| Some((*name, text.parse::<toml::Table>().ok()?))).collect();
    let detect_list = |table: &toml::Table, key: &str| -> Vec<String> {
        table
            .get("board")
            .and_then(|b| b.get("detect"))
            .and_then(|d| d.get(key))
            .and_then(|v| v.as_array())
            .map(|items| items.iter().filter_map(|i| i.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    };
    let for_target =
        |table: &toml::Table| table.get("board").and_then(|b| b.get("target")).and_then(|t| t.as_str()) == Some(target);
    if let Some(model) = probe.model() {
        let best = boards
            .iter()
            .enumerate()
            .flat_map(|(index, (name, table))| {
                let rank = move |needle: &String| (needle.len(), for_target(table), std::cmp::Reverse(index));
                detect_list(table, "model").into_iter().map(move |needle| (*name, rank(&needle), needle))
            })
            .filter(|(_, _, needle)| model.contains(needle.as_str()))
            .max_by_key(|(_, rank, _)| *rank);
        return best.map(|(name, _, _)| name).ok_or_else(|| {
            format!(
                "no board profile matches this machine (model \"{model}\"); name one with --board or `board = \"...\"`"
            )
        });
    }
    if let Some(vendor) = probe.cpuinfo_field("vendor_id") {
        if let Some((name, _)) =
            boards.iter().find(|(_, table)| detect_list(table, "vendor_id").iter().any(|v| v == vendor))
        {
            return Ok(name);
        }
        return Err(format!("no board profile matches this machine (CPU vendor \"{vendor}\"); name one with --board"));
    }
    Err("cannot tell which board this is (no /proc/device-tree/model, no CPU vendor in /proc/cpuinfo); name one with --board".into())
}

/// Where the board named by a configuration comes from.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BoardSource {
    /// The file itself has a `[board]` table.
    File,
    /// A board built into the binary, by name.
    Named(String),
    /// Detected from this machine's `/proc` files.
    Detected(String),
    /// A board file given by path.
    Path(PathBuf),
}

/// The text of the board a configuration refers to: `auto`, a built-in name, or a path (relative to the config).
pub fn resolve(reference: &str, config_path: &Path, probe: &Probe) -> Result<(String, BoardSource), String> {
    if reference == "auto" {
        let name = detect(probe)?;
        return Ok((
            built_in(name).expect("detect returns built-in names").to_string(),
            BoardSource::Detected(name.to_string()),
        ));
    }
    if let Some(text) = built_in(reference) {
        return Ok((text.to_string(), BoardSource::Named(reference.to_string())));
    }
    if reference.contains('/') || reference.ends_with(".toml") {
        let path = config_path.parent().map_or_else(|| PathBuf::from(reference), |dir| dir.join(reference));
        let text = std::fs::read_to_string(&path).map_err(|e| format!("board file {}: {e}", path.display()))?;
        return Ok((text, BoardSource::Path(path)));
    }
    let names: Vec<&str> = BUILT_IN.iter().map(|(n, _)| *n).collect();
    Err(format!("unknown board `{reference}`; known boards: {}, or auto", names.join(", ")))
}

pub fn built_in(name: &str) -> Option<&'static str> {
    BUILT_IN.iter().find(|(n, _)| *n == name).map(|(_, text)| *text)
}

/// The development machine's profile (x86-dev) as a file in `dir`, retargeted to this build: benchmarks and tests
/// that run the daemon use it on any build (under qemu-user too), where the profile as shipped would be refused.
pub fn development_profile_for_this_build(dir: &Path) -> std::io::Result<PathBuf> {
    let text = built_in("x86-dev").expect("x86-dev is built in");
    let path = dir.join("x86-dev-this-build.toml");
    std::fs::write(
        &path,
        text.replace("target = \"x86_64-unknown-linux-gnu\"", &format!("target = \"{BUILD_TARGET}\"")),
    )?;
    Ok(path)
}

/// `MemTotal` from `/proc/meminfo` text, in MiB.
pub fn mem_total_mib(meminfo: &str) -> Option<u32> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    u32::try_from(kib / 1024).ok()
}

/// Checks the budget against the RAM this machine really has (a 1 GB Pi 4 given the 2 GB profile, say).
pub fn check_ram(memory_mib: u32, os_reserve_mib: u32, mem_total_mib: u32) -> Result<(), String> {
    if u64::from(memory_mib) + u64::from(os_reserve_mib) > u64::from(mem_total_mib) {
        return Err(format!(
            "the budget of {memory_mib} MiB plus {os_reserve_mib} MiB for the OS exceeds this machine's {mem_total_mib} MiB \
             (MemTotal); choose a smaller board profile or lower budget.memory_mib"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `/proc` files captured from each board, under runtime/tests/data/boards/<case>/proc.
    fn canned(case: &str) -> Probe {
        Probe::from_root(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/boards").join(case))
    }

    #[test]
    fn each_board_is_recognized_from_its_own_proc_files() {
        const ARM64: &str = "aarch64-unknown-linux-gnu";
        const ARMHF: &str = "armv7-unknown-linux-gnueabihf";
        for (case, target, board) in [
            ("rpi0-2w", ARM64, "rpi0-2w"),
            ("rpi0-2w", ARMHF, "rpi0-2w-32"),
            ("rpi3-armhf", ARMHF, "rpi3-32"),
            ("rpi3-armhf", ARM64, "rpi3"),
            ("rpi4", ARM64, "rpi4"),
            ("rpi4", ARMHF, "rpi4"),
            ("rpi400", ARM64, "rpi4"),
            ("rpi5", ARM64, "rpi5"),
            ("jetson-nano", ARM64, "jetson-nano"),
            ("jetson-orin-nano", ARM64, "jetson-orin-nano"),
            ("x86-dev", "x86_64-unknown-linux-gnu", "x86-dev"),
        ] {
            assert_eq!(detect_for(&canned(case), target), Ok(board), "{case} for {target}");
        }
        // A build with no profile of its own for the board gets the first profile listed, the 64-bit one.
        assert_eq!(detect_for(&canned("rpi3-armhf"), "x86_64-unknown-linux-gnu"), Ok("rpi3"));
    }

    #[test]
    fn the_device_tree_model_loses_its_trailing_nul_and_cpuinfo_stands_in_for_it() {
        assert_eq!(canned("rpi0-2w").model(), Some("Raspberry Pi Zero 2 W Rev 1.0"));
        let armhf = canned("rpi3-armhf");
        assert_eq!(armhf.device_tree_model, None);
        assert_eq!(armhf.model(), Some("Raspberry Pi 3 Model B Plus Rev 1.3"));
    }

    #[test]
    fn an_unknown_board_is_an_error_naming_what_was_read() {
        let err = detect(&canned("rockpro64")).unwrap_err();
        assert!(err.contains("Pine64 RockPro64 v2.1") && err.contains("--board"), "{err}");
        let nothing = Probe { device_tree_model: None, cpuinfo: "processor : 0\n".into() };
        assert!(detect(&nothing).unwrap_err().contains("cannot tell which board"));
    }

    #[test]
    fn a_board_file_path_is_resolved_beside_the_config() {
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../board-configs/lookout.toml");
        let (text, source) = resolve("rpi4.toml", &config, &Probe::default()).unwrap();
        assert!(text.contains("name = \"rpi4\""));
        assert!(matches!(source, BoardSource::Path(_)));
        assert!(resolve("missing.toml", &config, &Probe::default()).unwrap_err().contains("missing.toml"));
        assert!(resolve("rpi9", &config, &Probe::default()).unwrap_err().contains("known boards: rpi0-2w"));
    }

    #[test]
    fn the_ram_check_reads_memtotal_and_refuses_a_smaller_machine() {
        let meminfo = "MemTotal:         944268 kB\nMemFree:          512000 kB\n";
        assert_eq!(mem_total_mib(meminfo), Some(922));
        assert!(check_ram(720, 200, 922).is_ok());
        let err = check_ram(1280, 512, 922).unwrap_err();
        assert!(err.contains("922 MiB"), "{err}");
    }
}
