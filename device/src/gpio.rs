//! GPIO character devices (`/dev/gpiochip*`): each chip's name, label and lines (name, user, direction), read with
//! the kernel's chip-info and line-info ioctls, for `lookout probe` and for checking the board configuration's pins.

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
const GET_CHIPINFO: libc::c_ulong =
    (2 << 30) | ((std::mem::size_of::<RawChipInfo>() as libc::c_ulong) << 16) | (0xB4 << 8) | 0x01;

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// One line of a chip, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineInfo {
    pub offset: u32,
    pub name: String,
    /// Who has requested the line (empty when free).
    pub consumer: String,
    pub used: bool,
    pub output: bool,
    pub active_low: bool,
}

/// `struct gpio_v2_line_info` from `<linux/gpio.h>` (the attributes are left as raw words).
#[repr(C)]
struct RawLineInfo {
    name: [u8; 32],
    consumer: [u8; 32],
    offset: u32,
    num_attrs: u32,
    flags: u64,
    attrs: [u64; 20],
    padding: [u32; 4],
}

/// `GPIO_V2_GET_LINEINFO_IOCTL`: `_IOWR(0xB4, 0x05, struct gpio_v2_line_info)`.
const GET_LINEINFO: libc::c_ulong =
    (3 << 30) | ((std::mem::size_of::<RawLineInfo>() as libc::c_ulong) << 16) | (0xB4 << 8) | 0x05;
const LINE_USED: u64 = 1 << 0;
const LINE_ACTIVE_LOW: u64 = 1 << 1;
const LINE_OUTPUT: u64 = 1 << 3;

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

/// Reads every line of the chip at `path`.
pub fn chip_lines(path: &Path) -> Result<Vec<LineInfo>, DeviceError> {
    let count = chip_info(path)?.lines;
    let what = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| DeviceError::io(&what, &e))?;
    (0..count)
        .map(|offset| {
            let mut raw = RawLineInfo {
                name: [0; 32],
                consumer: [0; 32],
                offset,
                num_attrs: 0,
                flags: 0,
                attrs: [0; 20],
                padding: [0; 4],
            };
            // SAFETY: the ioctl reads the offset from and writes one `gpio_v2_line_info` into `raw`, which has that
            // layout and lives for the call.
            let result = unsafe { libc::ioctl(file.as_raw_fd(), GET_LINEINFO as _, &mut raw as *mut RawLineInfo) };
            if result < 0 {
                let err = std::io::Error::last_os_error();
                return Err(DeviceError::new(ErrorKind::Other, format!("{what}: line {offset}: {err}")));
            }
            Ok(LineInfo {
                offset,
                name: c_string(&raw.name),
                consumer: c_string(&raw.consumer),
                used: raw.flags & LINE_USED != 0,
                output: raw.flags & LINE_OUTPUT != 0,
                active_low: raw.flags & LINE_ACTIVE_LOW != 0,
            })
        })
        .collect()
}

/// Every `/dev/gpiochip*` in number order.
pub fn list_chips() -> Vec<Result<ChipInfo, DeviceError>> {
    let Ok(entries) = std::fs::read_dir("/dev") else { return Vec::new() };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("gpiochip")))
        .collect();
    paths.sort_by_key(|p| {
        p.file_name().and_then(|n| n.to_str()).and_then(|n| n["gpiochip".len()..].parse::<u32>().ok())
    });
    paths.iter().map(|p| chip_info(p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chip_info_request_has_the_kernels_number() {
        assert_eq!(GET_CHIPINFO, 0x8044_B401);
        assert_eq!(GET_LINEINFO, 0xC100_B405);
        let err = chip_info(Path::new("/dev/null")).unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadData, "{err}");
        assert_eq!(chip_info(Path::new("/dev/gpiochip-missing")).unwrap_err().kind, ErrorKind::NotFound);
    }
}
