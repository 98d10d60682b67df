//! The V4L2 camera: opened by path or by card name, the closest format, size and frame rate to the configured
//! ones negotiated among YUYV, NV12, RGB24 and MJPEG, frames streamed through a fixed set of memory-mapped buffers
//! and handed out in place, stamped with the driver's capture time. A camera that goes away reports `Disconnected` and can be reopened. Also lists the
//! cameras with their formats, sizes and frame rates.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use v4l::buffer::{Flags, Metadata, Type};
use v4l::frameinterval::FrameIntervalEnum;
use v4l::framesize::FrameSizeEnum;
use v4l::io::mmap::Stream;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::{Device, FourCC};

use crate::camera::{Camera, CapturedFrame, FrameFormat};
use crate::{DeviceError, ErrorKind};

/// Formats Lookout converts itself, in order of preference (raw ones cost no decoding).
const FORMATS: [(&[u8; 4], FrameFormat); 4] = [
    (b"YUYV", FrameFormat::Yuyv),
    (b"NV12", FrameFormat::Nv12),
    (b"RGB3", FrameFormat::Rgb24),
    (b"MJPG", FrameFormat::Mjpeg),
];

/// When the driver captured a frame, from the buffer's timestamp when it is on the monotonic clock (which `Instant`
/// also reads); otherwise, or when the stamp is implausible, `now` at dequeue.
fn capture_time(meta: &Metadata, now: Instant) -> Instant {
    let monotonic = meta.flags & Flags::TIMESTAMP_MASK == Flags::TIMESTAMP_MONOTONIC;
    let stamp = Duration::new(meta.timestamp.sec.max(0) as u64, (meta.timestamp.usec.clamp(0, 999_999) * 1000) as u32);
    if !monotonic || stamp.is_zero() {
        return now;
    }
    let mut clock = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into `clock`, which lives for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut clock) };
    let clock = Duration::new(clock.tv_sec as u64, clock.tv_nsec as u32);
    captured_before(clock, stamp, now)
}

/// `now` moved back by how long before `clock` the `stamp` was taken (both on the monotonic clock); a stamp from
/// the future or older than 10 s is not believed.
fn captured_before(clock: Duration, stamp: Duration, now: Instant) -> Instant {
    match clock.checked_sub(stamp) {
        Some(age) if age < Duration::from_secs(10) => now.checked_sub(age).unwrap_or(now),
        _ => now,
    }
}

fn io_error(what: &str, err: &std::io::Error) -> DeviceError {
    let kind = match err.raw_os_error() {
        Some(libc::ENODEV) | Some(libc::ENXIO) => ErrorKind::Disconnected,
        Some(libc::ENOENT) => ErrorKind::NotFound,
        Some(libc::EBUSY) => ErrorKind::Busy,
        _ => ErrorKind::Other,
    };
    DeviceError::new(kind, format!("{what}: {err}"))
}

/// What was agreed with the driver.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Negotiated {
    pub format: FrameFormat,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
}

/// What a camera offers for one pixel format: sizes with their frame rates.
#[derive(Debug, Clone)]
pub struct FormatInfo {
    pub fourcc: String,
    pub description: String,
    /// Whether Lookout can convert it.
    pub supported: bool,
    pub sizes: Vec<(u32, u32, Vec<f64>)>,
}

#[derive(Debug, Clone)]
pub struct CameraInfo {
    pub path: PathBuf,
    pub card: String,
    pub driver: String,
    pub bus: String,
    pub formats: Vec<FormatInfo>,
}

pub struct V4l2Camera {
    name: String,
    path: PathBuf,
    wanted: (u32, u32, u32),
    buffers: u32,
    only: Option<FrameFormat>,
    negotiated: Negotiated,
    /// None after the device went away, until `reconnect` opens it again.
    stream: Option<Stream<'static>>,
    /// The driver counts frames from 0 on every stream it starts; frames after a reconnect are numbered on from
    /// `sequence_base`, so the numbers never go back and a gap still shows lost frames.
    sequence_base: u64,
    /// One past the last frame's number.
    next_sequence: u64,
}

impl V4l2Camera {
    /// Opens `device` (a path, or a card name as `lookout probe` prints it) and negotiates the closest match to
    /// `width`×`height` at `fps`, streaming through `buffers` mapped buffers.
    pub fn open(device: &str, width: u32, height: u32, fps: u32, buffers: u32) -> Result<V4l2Camera, DeviceError> {
        V4l2Camera::open_as(device, None, width, height, fps, buffers)
    }

    /// As `open`, limited to one pixel format when `only` is set.
    pub fn open_as(
        device: &str,
        only: Option<FrameFormat>,
        width: u32,
        height: u32,
        fps: u32,
        buffers: u32,
    ) -> Result<V4l2Camera, DeviceError> {
        let path = resolve(device)?;
        let (negotiated, stream) = start(&path, only, (width, height, fps), buffers)?;
        Ok(V4l2Camera {
            name: device.to_string(),
            path,
            wanted: (width, height, fps),
            buffers,
            only,
            negotiated,
            stream: Some(stream),
            sequence_base: 0,
            next_sequence: 0,
        })
    }

    pub fn negotiated(&self) -> Negotiated {
        self.negotiated
    }
}

/// A path as given; a name is matched against the card names of `/dev/video*`.
pub fn resolve(device: &str) -> Result<PathBuf, DeviceError> {
    if device.starts_with('/') {
        return Ok(PathBuf::from(device));
    }
    for node in v4l::context::enum_devices() {
        if let Ok(caps) = Device::with_path(node.path()).and_then(|d| d.query_caps()) {
            if caps.card.eq_ignore_ascii_case(device)
                && caps.capabilities.contains(v4l::capability::Flags::VIDEO_CAPTURE)
            {
                return Ok(node.path().to_path_buf());
            }
        }
    }
    Err(DeviceError::new(ErrorKind::NotFound, format!("no V4L2 capture device named `{device}` (see `lookout probe`)")))
}

/// The frame sizes a format offers (stepwise ranges reduced to the wanted size clamped into the range).
fn sizes(device: &Device, fourcc: FourCC, wanted: (u32, u32)) -> Vec<(u32, u32)> {
    let Ok(sizes) = device.enum_framesizes(fourcc) else { return Vec::new() };
    sizes
        .into_iter()
        .map(|s| match s.size {
            FrameSizeEnum::Discrete(d) => (d.width, d.height),
            FrameSizeEnum::Stepwise(s) => {
                let snap = |v: u32, min: u32, max: u32, step: u32| {
                    let v = v.clamp(min, max);
                    min + (v - min) / step.max(1) * step.max(1)
                };
                (
                    snap(wanted.0, s.min_width, s.max_width, s.step_width),
                    snap(wanted.1, s.min_height, s.max_height, s.step_height),
                )
            }
        })
        .collect()
}

fn rates(device: &Device, fourcc: FourCC, width: u32, height: u32) -> Vec<f64> {
    let Ok(intervals) = device.enum_frameintervals(fourcc, width, height) else { return Vec::new() };
    intervals
        .into_iter()
        .filter_map(|i| match i.interval {
            FrameIntervalEnum::Discrete(f) if f.numerator > 0 => {
                Some(f64::from(f.denominator) / f64::from(f.numerator))
            }
            FrameIntervalEnum::Stepwise(s) if s.min.numerator > 0 => {
                Some(f64::from(s.min.denominator) / f64::from(s.min.numerator))
            }
            _ => None,
        })
        .collect()
}

/// The supported format and size closest to `wanted`: the smallest size difference, then the preferred format.
fn choose(
    device: &Device,
    only: Option<FrameFormat>,
    wanted: (u32, u32),
) -> Result<(FourCC, FrameFormat, u32, u32), DeviceError> {
    let offered = device.enum_formats().map_err(|e| io_error("listing formats", &e))?;
    let mut best: Option<(u64, usize, FourCC, FrameFormat, u32, u32)> = None;
    for (rank, (code, format)) in FORMATS.iter().enumerate() {
        let fourcc = FourCC::new(code);
        if only.is_some_and(|f| f != *format) || !offered.iter().any(|d| d.fourcc == fourcc) {
            continue;
        }
        for (w, h) in sizes(device, fourcc, wanted) {
            let distance = u64::from(w.abs_diff(wanted.0)).pow(2) + u64::from(h.abs_diff(wanted.1)).pow(2);
            if best.is_none_or(|b| (distance, rank) < (b.0, b.1)) {
                best = Some((distance, rank, fourcc, *format, w, h));
            }
        }
    }
    let offered: Vec<String> = offered.iter().map(|d| d.fourcc.to_string()).collect();
    best.map(|b| (b.2, b.3, b.4, b.5)).ok_or_else(|| {
        DeviceError::new(
            ErrorKind::BadData,
            format!("the camera offers {}; Lookout reads YUYV, NV12, RGB3 and MJPG", offered.join(", ")),
        )
    })
}

fn start(
    path: &Path,
    only: Option<FrameFormat>,
    wanted: (u32, u32, u32),
    buffers: u32,
) -> Result<(Negotiated, Stream<'static>), DeviceError> {
    let what = path.display().to_string();
    let device = Device::with_path(path).map_err(|e| io_error(&what, &e))?;
    let caps = device.query_caps().map_err(|e| io_error(&what, &e))?;
    if !caps.capabilities.contains(v4l::capability::Flags::VIDEO_CAPTURE)
        || !caps.capabilities.contains(v4l::capability::Flags::STREAMING)
    {
        return Err(DeviceError::new(
            ErrorKind::BadData,
            format!("{what} ({}) is not a streaming capture device", caps.card),
        ));
    }
    let (fourcc, format, width, height) = choose(&device, only, (wanted.0, wanted.1))?;
    let mut fmt = device.format().map_err(|e| io_error(&what, &e))?;
    fmt.fourcc = fourcc;
    fmt.width = width;
    fmt.height = height;
    // Zero lets the driver compute the row length and size for the new format instead of keeping the old ones.
    fmt.stride = 0;
    fmt.size = 0;
    let fmt =
        device.set_format(&fmt).map_err(|e| io_error(&format!("{what}: setting {fourcc} {width}x{height}"), &e))?;
    let packed_row = match format {
        FrameFormat::Yuyv => Some(fmt.width * 2),
        FrameFormat::Nv12 => Some(fmt.width),
        FrameFormat::Rgb24 => Some(fmt.width * 3),
        FrameFormat::Mjpeg | FrameFormat::Png => None,
    };
    if let Some(row) = packed_row.filter(|&row| fmt.stride != 0 && fmt.stride != row) {
        return Err(DeviceError::new(
            ErrorKind::BadData,
            format!("{what}: {fourcc} rows of {} bytes for {} pixels ({row} without padding); padded rows are not supported", fmt.stride, fmt.width),
        ));
    }
    let params = device
        .set_params(&v4l::video::capture::Parameters::with_fps(wanted.2.max(1)))
        .map_err(|e| io_error(&what, &e))?;
    let fps = match params.interval.numerator {
        0 => f64::from(wanted.2),
        n => f64::from(params.interval.denominator) / f64::from(n),
    };
    let format = FORMATS.iter().find(|(code, _)| FourCC::new(code) == fmt.fourcc).map_or(format, |(_, f)| *f);
    let mut stream =
        Stream::with_buffers(&device, Type::VideoCapture, buffers.max(2)).map_err(|e| io_error(&what, &e))?;
    stream.set_timeout(Duration::from_secs(5));
    Ok((Negotiated { format, width: fmt.width, height: fmt.height, fps }, stream))
}

impl Camera for V4l2Camera {
    fn next_frame(&mut self) -> Result<CapturedFrame<'_>, DeviceError> {
        let what = self.path.display().to_string();
        let Some(stream) = self.stream.as_mut() else {
            return Err(DeviceError::new(ErrorKind::Disconnected, format!("{what}: gone until reconnected")));
        };
        let (buffer, meta) = CaptureStream::next(stream).map_err(|e| io_error(&what, &e))?;
        let captured_at = capture_time(meta, Instant::now());
        let n = self.negotiated;
        // Some drivers report the whole buffer as used; a raw frame is exactly its pixels.
        let frame_len = match n.format {
            FrameFormat::Yuyv => Some(n.width as usize * n.height as usize * 2),
            FrameFormat::Nv12 => Some(n.width as usize * n.height as usize * 3 / 2),
            FrameFormat::Rgb24 => Some(n.width as usize * n.height as usize * 3),
            FrameFormat::Mjpeg | FrameFormat::Png => None,
        };
        let used = (meta.bytesused as usize).min(buffer.len());
        let used = frame_len.filter(|&len| len <= used).unwrap_or(used);
        let sequence = self.sequence_base + u64::from(meta.sequence);
        self.next_sequence = sequence + 1;
        Ok(CapturedFrame {
            format: n.format,
            width: n.width,
            height: n.height,
            bytes: &buffer[..used],
            sequence,
            captured_at,
            source: &self.name,
        })
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn reconnect(&mut self) -> Result<(), DeviceError> {
        // The old descriptors go first, so the driver can be reloaded while this keeps trying.
        self.stream = None;
        let path = if self.name.starts_with('/') { self.path.clone() } else { resolve(&self.name)? };
        let (negotiated, stream) = start(&path, self.only, self.wanted, self.buffers)?;
        self.path = path;
        self.negotiated = negotiated;
        self.stream = Some(stream);
        self.sequence_base = self.next_sequence;
        Ok(())
    }
}

/// Every V4L2 capture device with its formats, sizes and frame rates.
pub fn list_cameras() -> Vec<CameraInfo> {
    let mut cameras = Vec::new();
    let mut nodes = v4l::context::enum_devices();
    nodes.sort_by_key(|n| n.index());
    for node in nodes {
        let Ok(device) = Device::with_path(node.path()) else { continue };
        let Ok(caps) = device.query_caps() else { continue };
        if !caps.capabilities.contains(v4l::capability::Flags::VIDEO_CAPTURE) {
            continue;
        }
        let formats = device
            .enum_formats()
            .unwrap_or_default()
            .into_iter()
            .map(|d| FormatInfo {
                fourcc: d.fourcc.to_string(),
                description: d.description.clone(),
                supported: FORMATS.iter().any(|(code, _)| FourCC::new(code) == d.fourcc),
                sizes: sizes(&device, d.fourcc, (640, 480))
                    .into_iter()
                    .map(|(w, h)| (w, h, rates(&device, d.fourcc, w, h)))
                    .collect(),
            })
            .collect();
        cameras.push(CameraInfo {
            path: node.path().to_path_buf(),
            card: caps.card.clone(),
            driver: caps.driver.clone(),
            bus: caps.bus.clone(),
            formats,
        });
    }
    cameras
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_monotonic_stamp_dates_the_frame_back_by_its_age() {
        let now = Instant::now() + Duration::from_secs(60);
        let clock = Duration::from_secs(1000);
        assert_eq!(captured_before(clock, clock - Duration::from_millis(40), now), now - Duration::from_millis(40));
        assert_eq!(captured_before(clock, clock + Duration::from_millis(5), now), now, "a stamp from the future");
        assert_eq!(captured_before(clock, clock - Duration::from_secs(11), now), now, "a stamp too old to believe");
    }

    #[test]
    fn frames_without_a_monotonic_stamp_are_dated_at_dequeue() {
        let now = Instant::now();
        let mut meta = Metadata {
            bytesused: 0,
            flags: Flags::TIMESTAMP_COPY,
            field: 0,
            timestamp: v4l::Timestamp::new(5, 0),
            sequence: 0,
        };
        assert_eq!(capture_time(&meta, now), now, "a copied stamp is not on our clock");
        meta.flags = Flags::TIMESTAMP_MONOTONIC;
        meta.timestamp = v4l::Timestamp::new(0, 0);
        assert_eq!(capture_time(&meta, now), now, "no stamp");
    }
}
