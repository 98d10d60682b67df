//! GPIO character devices (`/dev/gpiochip*`): each chip's name, label and line count, read with the kernel's
//! chip-info ioctl, for `lookout probe` and for checking the board configuration's pins.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::{DeviceError, ErrorKind};

#[derive(Debug, Clone)]
pub struct ChipInfo {
    pub path: PathBuf,
    pub name: String,
    pub label: String,
    pub lines: u32,
}

/// `struct gpiochip_info` from `<linux/gpio.h>`.
#[repr(C)]
struct RawChipInfo {
    name: [u8; 32],
    label: [u8; 32],
    lines: u32,
}

/// `GPIO_GET_CHIPINFO_IOCTL`: `_IOR(0xB4, 0x01, struct gpiochip_info)`.
const GET_CHIPINFO: libc::c_ulong = (2 << 30) | ((std::mem::size_of::<RawChipInfo>() as libc::c_ulong) << 16) | (0xB4 << 8) | 0x01;

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Reads one chip's information.
pub fn chip_info(path: &Path) -> Result<ChipInfo, DeviceError> {
    let what = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| DeviceError::io(&what, &e))?;
    let mut raw = RawChipInfo { name: [0; 32], label: [0; 32], lines: 0 };
    // SAFETY: the ioctl writes one `gpiochip_info` into `raw`, which has that layout and lives for the call.
    let result = unsafe { libc::ioctl(file.as_raw_fd(), GET_CHIPINFO as _, &mut raw as *mut RawChipInfo) };
    if result < 0 {
        let err = std::io::Error::last_os_error();
        return Err(DeviceError::new(ErrorKind::BadData, format!("{what}: not a GPIO chip: {err}")));
    }
    Ok(ChipInfo { path: path.to_path_buf(), name: c_string(&raw.name), label: c_string(&raw.label), lines: raw.lines })
}

/// Every `/dev/gpiochip*` in number order.
pub fn list_chips() -> Vec<Result<ChipInfo, DeviceError>> {
    let Ok(entries) = std::fs::read_dir("/dev") else { return Vec::new() };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("gpiochip")))
        .collect();
    paths.sort_by_key(|p| p.file_name().and_then(|n| n.to_str()).and_then(|n| n["gpiochip".len()..].parse::<u32>().ok()));
    paths.iter().map(|p| chip_info(p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chip_info_request_has_the_kernels_number() {
        assert_eq!(GET_CHIPINFO, 0x8044_B401);
        let err = chip_info(Path::new("/dev/null")).unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadData, "{err}");
        assert_eq!(chip_info(Path::new("/dev/gpiochip-missing")).unwrap_err().kind, ErrorKind::NotFound);
    }
}
