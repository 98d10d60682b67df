//! Cameras: the `Camera` trait the scheduler drives, and `ImageDirCamera`, which plays a directory of JPEG and
//! PNG photos as a camera at a fixed frame rate.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{wait_for_tick, DeviceError, ErrorKind};

/// How the bytes of a frame are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameFormat {
    /// Packed 4:2:2 (Y0 U Y1 V).
    Yuyv,
    /// Planar 4:2:0 with interleaved chroma.
    Nv12,
    Rgb24,
    /// One JPEG per frame.
    Mjpeg,
    /// One PNG per frame (file sources only).
    Png,
}

/// A frame as the device delivered it, borrowed until the next call to `next_frame`.
#[derive(Debug)]
pub struct CapturedFrame<'a> {
    pub format: FrameFormat,
    /// Size the device declared; 0 for compressed frames, whose size is in their header.
    pub width: u32,
    pub height: u32,
    pub bytes: &'a [u8],
    /// Counts every frame the device produced, so gaps show frames lost before this point.
    pub sequence: u64,
    pub captured_at: Instant,
    /// Where the frame came from (a file name, a device path).
    pub source: &'a str,
}

pub trait Camera: Send {
    /// Blocks until the next frame.
    fn next_frame(&mut self) -> Result<CapturedFrame<'_>, DeviceError>;
    /// The device, for logs and events.
    fn name(&self) -> &str;
    /// Reopens a device that reported `Disconnected`.
    fn reconnect(&mut self) -> Result<(), DeviceError> {
        Ok(())
    }
}

/// Largest file played as a frame; larger ones are refused before they are read.
pub const MAX_FRAME_FILE_BYTES: u64 = 32 << 20;

/// Plays the JPEG and PNG files of a directory, in name order, each for `hold` frames, looping forever.
pub struct ImageDirCamera {
    name: String,
    files: Vec<PathBuf>,
    bytes: Vec<u8>,
    file_name: String,
    hold: u32,
    period: Duration,
    pace: bool,
    next_tick: Instant,
    sequence: u64,
}

impl ImageDirCamera {
    /// Opens `dir`; frames come `fps` times a second when `pace` is on, else as fast as they are taken.
    pub fn open(dir: &Path, fps: u32, hold: u32, pace: bool) -> Result<ImageDirCamera, DeviceError> {
        let entries = std::fs::read_dir(dir).map_err(|e| DeviceError::io(&dir.display().to_string(), &e))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let ext = p.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
                p.is_file() && matches!(ext.as_str(), "jpg" | "jpeg" | "png")
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(DeviceError::new(
                ErrorKind::NotFound,
                format!("{}: no .jpg, .jpeg or .png files", dir.display()),
            ));
        }
        let period = Duration::from_secs_f64(1.0 / f64::from(fps.max(1)));
        Ok(ImageDirCamera {
            name: format!("dir:{}", dir.display()),
            files,
            bytes: Vec::new(),
            file_name: String::new(),
            hold: hold.max(1),
            period,
            pace,
            next_tick: Instant::now(),
            sequence: 0,
        })
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    fn load(&mut self, path: &Path) -> Result<(), DeviceError> {
        let what = path.display().to_string();
        let len = std::fs::metadata(path).map_err(|e| DeviceError::io(&what, &e))?.len();
        if len > MAX_FRAME_FILE_BYTES {
            return Err(DeviceError::new(
                ErrorKind::BadData,
                format!("{what}: {len} bytes; frames are limited to {MAX_FRAME_FILE_BYTES}"),
            ));
        }
        use std::io::Read as _;
        self.bytes.clear();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut self.bytes))
            .map_err(|e| DeviceError::io(&what, &e))?;
        self.file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or(what);
        Ok(())
    }
}

impl Camera for ImageDirCamera {
    fn next_frame(&mut self) -> Result<CapturedFrame<'_>, DeviceError> {
        if self.pace {
            self.next_tick = wait_for_tick(self.next_tick, self.period);
        }
        let index = (self.sequence / u64::from(self.hold)) as usize % self.files.len();
        if self.sequence.is_multiple_of(u64::from(self.hold)) || self.bytes.is_empty() {
            let path = self.files[index].clone();
            self.load(&path)?;
        }
        let format = if self.bytes.starts_with(b"\x89PNG") { FrameFormat::Png } else { FrameFormat::Mjpeg };
        let sequence = self.sequence;
        self.sequence += 1;
        Ok(CapturedFrame {
            format,
            width: 0,
            height: 0,
            bytes: &self.bytes,
            sequence,
            captured_at: Instant::now(),
            source: &self.file_name,
        })
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plays_each_image_for_its_hold_and_loops_in_name_order() {
        let dir = std::env::temp_dir().join(format!("lookout-camera-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("b.png"), b"\x89PNG second").unwrap();
        std::fs::write(dir.join("a.jpg"), b"\xff\xd8 first").unwrap();
        std::fs::write(dir.join("notes.txt"), b"ignored").unwrap();
        let mut camera = ImageDirCamera::open(&dir, 30, 2, false).unwrap();
        let mut seen = Vec::new();
        for _ in 0..5 {
            let f = camera.next_frame().unwrap();
            seen.push((f.source.to_string(), f.format, f.sequence));
        }
        assert_eq!(seen[0], ("a.jpg".into(), FrameFormat::Mjpeg, 0));
        assert_eq!(seen[1].0, "a.jpg");
        assert_eq!(seen[2], ("b.png".into(), FrameFormat::Png, 2));
        assert_eq!(seen[4].0, "a.jpg");
        std::fs::remove_dir_all(&dir).unwrap();
        let missing = ImageDirCamera::open(&dir, 1, 1, false).err().unwrap();
        assert_eq!(missing.kind, ErrorKind::NotFound);
    }
}
