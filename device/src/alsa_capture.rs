//! The ALSA microphone: a capture PCM opened by name (`default`, `hw:1,0`, `plughw:CARD=Device,DEV=0`), with
//! 16- or 32-bit samples, mono or downmixed, at the rate nearest the one asked for, read through a fixed period
//! buffer; overruns are recovered and counted, a suspended device is resumed. Also lists the capture devices.

use alsa::pcm::{Access, Format, HwParams, State, PCM};
use alsa::{Direction, ValueOr};

use crate::microphone::Microphone;
use crate::{DeviceError, ErrorKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sample {
    S16,
    S32,
}

pub struct AlsaMicrophone {
    name: String,
    pcm: PCM,
    requested: (u32, usize),
    rate: u32,
    channels: usize,
    sample: Sample,
    raw16: Vec<i16>,
    raw32: Vec<i32>,
    /// Overruns recovered so far.
    pub overruns: u64,
    /// Times the device was suspended (the system slept) and the stream was brought back.
    pub suspends: u64,
}

fn alsa_error(name: &str, what: &str, err: alsa::Error) -> DeviceError {
    let kind = match err.errno() {
        libc::ENOENT | libc::ENXIO => ErrorKind::NotFound,
        libc::EBUSY => ErrorKind::Busy,
        libc::ENODEV => ErrorKind::Disconnected,
        libc::EPIPE => ErrorKind::Overrun,
        _ => ErrorKind::Other,
    };
    DeviceError::new(kind, format!("ALSA `{name}`: {what}: {err}"))
}

impl AlsaMicrophone {
    /// Opens `name` for capture at the rate nearest `rate`, reading `period` frames at a time.
    pub fn open(name: &str, rate: u32, period: usize) -> Result<AlsaMicrophone, DeviceError> {
        let requested_rate = rate;
        let pcm = PCM::new(name, Direction::Capture, false).map_err(|e| {
            // At open, "no such device" means it is not there, not that it went away.
            let mut err = alsa_error(name, "open", e);
            if err.kind == ErrorKind::Disconnected {
                err.kind = ErrorKind::NotFound;
            }
            err
        })?;
        let (rate, channels, sample) = {
            let e = |what: &'static str| move |err| alsa_error(name, what, err);
            let hw = HwParams::any(&pcm).map_err(e("hardware parameters"))?;
            hw.set_access(Access::RWInterleaved).map_err(e("interleaved access"))?;
            let sample = if hw.test_format(Format::s16()).is_ok() {
                hw.set_format(Format::s16()).map_err(e("S16 samples"))?;
                Sample::S16
            } else if hw.test_format(Format::s32()).is_ok() {
                hw.set_format(Format::s32()).map_err(e("S32 samples"))?;
                Sample::S32
            } else {
                return Err(DeviceError::new(
                    ErrorKind::BadData,
                    format!("ALSA `{name}`: neither S16_LE nor S32_LE capture"),
                ));
            };
            let channels = hw.set_channels_near(1).map_err(e("channels"))?;
            let rate = hw.set_rate_near(rate, ValueOr::Nearest).map_err(e("rate"))?;
            hw.set_period_size_near(period as alsa::pcm::Frames, ValueOr::Nearest).map_err(e("period size"))?;
            hw.set_buffer_size_near((period * 16) as alsa::pcm::Frames).map_err(e("buffer size"))?;
            pcm.hw_params(&hw).map_err(e("applying hardware parameters"))?;
            (rate, channels as usize, sample)
        };
        pcm.prepare().map_err(|e| alsa_error(name, "prepare", e))?;
        let samples = period.max(1) * channels;
        Ok(AlsaMicrophone {
            name: name.to_string(),
            pcm,
            requested: (requested_rate, period),
            rate,
            channels,
            sample,
            raw16: if sample == Sample::S16 { vec![0; samples] } else { Vec::new() },
            raw32: if sample == Sample::S32 { vec![0; samples] } else { Vec::new() },
            overruns: 0,
            suspends: 0,
        })
    }

    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Brings the stream back after an error: an overrun is counted and the stream restarted; a suspended
    /// device is resumed (or restarted when it cannot resume).
    fn recover(&mut self, err: alsa::Error) -> Result<(), DeviceError> {
        match err.errno() {
            libc::EPIPE => {
                self.overruns += 1;
                self.pcm.prepare().map_err(|e| alsa_error(&self.name, "restarting after an overrun", e))?;
                Err(DeviceError::new(ErrorKind::Overrun, format!("ALSA `{}`: overrun, samples lost", self.name)))
            }
            libc::ESTRPIPE => {
                self.suspends += 1;
                for _ in 0..50 {
                    match self.pcm.resume() {
                        Err(e) if e.errno() == libc::EAGAIN => {
                            std::thread::sleep(std::time::Duration::from_millis(100))
                        }
                        Ok(()) => return Ok(()),
                        Err(_) => break,
                    }
                }
                self.pcm.prepare().map_err(|e| alsa_error(&self.name, "restarting after suspend", e))
            }
            libc::EAGAIN | libc::EINTR => Ok(()),
            _ => Err(alsa_error(&self.name, "read", err)),
        }
    }

    fn read_frames(&mut self, frames: usize) -> Result<usize, alsa::Error> {
        let samples = frames * self.channels;
        match self.sample {
            Sample::S16 => {
                if self.raw16.len() < samples {
                    self.raw16.resize(samples, 0);
                }
                self.pcm.io_i16()?.readi(&mut self.raw16[..samples])
            }
            Sample::S32 => {
                if self.raw32.len() < samples {
                    self.raw32.resize(samples, 0);
                }
                self.pcm.io_i32()?.readi(&mut self.raw32[..samples])
            }
        }
    }
}

impl Microphone for AlsaMicrophone {
    fn rate(&self) -> u32 {
        self.rate
    }

    fn read(&mut self, out: &mut [f32]) -> Result<(), DeviceError> {
        let mut filled = 0;
        while filled < out.len() {
            if self.pcm.state() == State::Prepared {
                self.pcm.start().map_err(|e| alsa_error(&self.name, "start", e))?;
            }
            let frames = match self.read_frames(out.len() - filled) {
                Ok(n) => n,
                Err(e) => {
                    self.recover(e)?;
                    continue;
                }
            };
            let channels = self.channels;
            let scale = 1.0 / channels as f32;
            for (i, sample) in out[filled..filled + frames].iter_mut().enumerate() {
                let frame = i * channels..(i + 1) * channels;
                *sample = match self.sample {
                    Sample::S16 => self.raw16[frame].iter().map(|&s| f32::from(s) / 32768.0).sum::<f32>() * scale,
                    Sample::S32 => self.raw32[frame].iter().map(|&s| s as f32 / 2_147_483_648.0).sum::<f32>() * scale,
                };
            }
            filled += frames;
        }
        Ok(())
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn reconnect(&mut self) -> Result<(), DeviceError> {
        let (overruns, suspends) = (self.overruns, self.suspends);
        *self = AlsaMicrophone::open(&self.name, self.requested.0, self.requested.1)?;
        (self.overruns, self.suspends) = (overruns, suspends);
        Ok(())
    }
}

/// A capture device as `lookout probe` lists it.
#[derive(Debug, Clone)]
pub struct CaptureDevice {
    /// The name to open it by (`hw:CARD=Loopback,DEV=1`).
    pub name: String,
    pub card: String,
    pub description: String,
    pub rates: Option<(u32, u32)>,
    pub channels: Option<(u32, u32)>,
    pub formats: Vec<&'static str>,
    /// Why the parameters are missing (the device is busy, say).
    pub note: Option<String>,
}

/// Every card's capture PCMs, with the rates, channels and sample formats their hardware offers.
pub fn list_capture_devices() -> Vec<CaptureDevice> {
    let mut found = Vec::new();
    for card in alsa::card::Iter::new().filter_map(Result::ok) {
        let Ok(ctl) = alsa::Ctl::from_card(&card, false) else { continue };
        let Ok(info) = ctl.card_info() else { continue };
        let card_id = info.get_id().unwrap_or_default().to_string();
        let card_name = info.get_name().unwrap_or_default().to_string();
        for device in alsa::ctl::DeviceIter::new(&ctl) {
            let Ok(pcm_info) = ctl.pcm_info(device as u32, 0, Direction::Capture) else { continue };
            let name = format!("hw:CARD={card_id},DEV={device}");
            let mut entry = CaptureDevice {
                name: name.clone(),
                card: card_name.clone(),
                description: pcm_info.get_name().unwrap_or_default().to_string(),
                rates: None,
                channels: None,
                formats: Vec::new(),
                note: None,
            };
            match PCM::new(&name, Direction::Capture, true).and_then(|pcm| {
                let hw = HwParams::any(&pcm)?;
                entry.rates = Some((hw.get_rate_min()?, hw.get_rate_max()?));
                entry.channels = Some((hw.get_channels_min()?, hw.get_channels_max()?));
                for (format, label) in [
                    (Format::s16(), "S16_LE"),
                    (Format::s32(), "S32_LE"),
                    (Format::S243LE, "S24_3LE"),
                    (Format::float(), "FLOAT_LE"),
                ] {
                    if hw.test_format(format).is_ok() {
                        entry.formats.push(label);
                    }
                }
                Ok(())
            }) {
                Ok(()) => {}
                Err(e) => entry.note = Some(e.to_string()),
            }
            found.push(entry);
        }
    }
    found
}
