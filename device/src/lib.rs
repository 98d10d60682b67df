//! Lookout's devices: cameras (V4L2) and microphones (ALSA) behind small traits, each with a file twin that plays
//! recorded input at the device's pace; the push-to-talk button and status LED on GPIO. Errors carry a small kind
//! so the scheduler can retry, reopen or give up without knowing which driver failed.

#[cfg(feature = "alsa")]
pub mod alsa_capture;
pub mod button_led;
pub mod camera;
pub mod gpio;
pub mod microphone;
#[cfg(feature = "v4l2")]
pub mod v4l2;

use std::fmt;

/// What the caller can do about a device error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The device (or file) does not exist.
    NotFound,
    /// The device went away while in use; reopen it with backoff.
    Disconnected,
    /// Data was lost because the reader fell behind; the stream continues.
    Overrun,
    /// Another process holds the device.
    Busy,
    /// The device delivered something that cannot be used.
    BadData,
    Other,
}

#[derive(Debug, thiserror::Error)]
pub struct DeviceError {
    pub kind: ErrorKind,
    pub message: String,
}

impl DeviceError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> DeviceError {
        DeviceError { kind, message: message.into() }
    }

    pub fn io(what: &str, err: &std::io::Error) -> DeviceError {
        let kind = match err.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::ResourceBusy => ErrorKind::Busy,
            _ => ErrorKind::Other,
        };
        DeviceError::new(kind, format!("{what}: {err}"))
    }
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:?})", self.message, self.kind)
    }
}

/// Sleeps until `next` unless `pace` is off; returns the following tick `period` later (or now when late, so a
/// stalled reader does not get a burst of catch-up frames).
pub(crate) fn wait_for_tick(next: std::time::Instant, period: std::time::Duration) -> std::time::Instant {
    let now = std::time::Instant::now();
    if next > now {
        std::thread::sleep(next - now);
        next + period
    } else {
        now + period
    }
}
