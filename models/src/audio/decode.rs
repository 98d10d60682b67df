//! WAV and FLAC decoding to interleaved f32 samples; the container is detected from its magic bytes.

use std::fs::File;
use std::io::{self, BufReader, Cursor, Read, Seek, SeekFrom};
use std::path::Path;

use super::{AudioError, RESAMPLE_RATE_RANGE};

/// Upper bound on the sample buffer reserved up front from a FLAC header, whose
/// declared length cannot be checked against the compressed size.
const MAX_FLAC_PREALLOCATED_SAMPLES: u64 = 1 << 24;

/// Decoded samples a second of audio may take from a limit's budget: 48 kHz stereo. Audio with more channels or a
/// higher rate is accepted for proportionally less time, so a limit bounds memory whatever the header says.
const BUDGET_SAMPLES_PER_SECOND: u64 = 48_000 * 2;

/// How much audio a caller accepts. It is checked against the header before anything is allocated, and against
/// the frames as they are decoded (a FLAC stream need not declare its length), so a small compressed file cannot
/// expand into gigabytes of samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioLimit {
    seconds: u32,
}

impl AudioLimit {
    /// A recording to transcribe: half an hour (at most 660 MiB of decoded samples, 110 MiB at 16 kHz mono).
    pub const RECORDING: AudioLimit = AudioLimit::seconds(30 * 60);

    /// At most `seconds` of audio (of 48 kHz stereo or less; see [`AudioLimit::max_frames`]).
    pub const fn seconds(seconds: u32) -> AudioLimit {
        AudioLimit { seconds }
    }

    pub fn max_seconds(self) -> u32 {
        self.seconds
    }

    /// Decoded samples, all channels together, that the limit allows.
    pub fn max_samples(self) -> u64 {
        u64::from(self.seconds) * BUDGET_SAMPLES_PER_SECOND
    }

    /// Sample frames allowed at this rate and channel count: the limit's length, or less when the layout would
    /// take more samples a second than 48 kHz stereo.
    pub fn max_frames(self, sample_rate: u32, channels: u16) -> u64 {
        (u64::from(self.seconds) * u64::from(sample_rate)).min(self.max_samples() / u64::from(channels.max(1)))
    }

    /// Most bytes decoding and converting such audio to 16 kHz mono holds at once: the decoded f32 samples, and at
    /// most as much again for the mono and resampled copies.
    pub fn max_decoding_bytes(self) -> u64 {
        2 * self.max_samples() * std::mem::size_of::<f32>() as u64
    }

    /// Refuses a header that declares more than the limit allows.
    fn check_declared(self, frames: u64, sample_rate: u32, channels: u16) -> Result<(), AudioError> {
        let allowed = self.max_frames(sample_rate, channels);
        if frames > allowed {
            return Err(AudioError::TooLong {
                declared_seconds: frames as f64 / f64::from(sample_rate),
                limit_seconds: allowed as f64 / f64::from(sample_rate),
            });
        }
        Ok(())
    }

    /// Stops a stream whose decoded frames have gone past what the limit allows.
    fn check_decoded(self, frames: u64, sample_rate: u32, channels: u16) -> Result<(), AudioError> {
        let allowed = self.max_frames(sample_rate, channels);
        if frames > allowed {
            return Err(AudioError::RunsPastLimit { limit_seconds: allowed as f64 / f64::from(sample_rate) });
        }
        Ok(())
    }
}

/// Decoded audio, channels interleaved, every sample in [-1, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedAudio {
    /// Samples per second per channel.
    pub sample_rate: u32,
    /// Number of interleaved channels, at least 1.
    pub channels: u16,
    /// Interleaved samples: frame `i` is `samples[i * channels..(i + 1) * channels]`.
    pub samples: Vec<f32>,
}

impl DecodedAudio {
    /// Number of sample frames (samples per channel).
    pub fn frames(&self) -> usize {
        self.samples.len() / usize::from(self.channels.max(1))
    }

    /// Length in seconds.
    pub fn duration_seconds(&self) -> f64 {
        self.frames() as f64 / f64::from(self.sample_rate.max(1))
    }
}

/// Decodes the WAV or FLAC file at `path` within `limit`; the extension is ignored.
pub fn decode_file(path: impl AsRef<Path>, limit: AudioLimit) -> Result<DecodedAudio, AudioError> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            AudioError::NotFound { path: path.to_path_buf() }
        } else {
            AudioError::Io { path: path.to_path_buf(), source }
        }
    })?;
    let total_len = file.metadata().map_err(|source| AudioError::Io { path: path.to_path_buf(), source })?.len();
    decode_stream(BufReader::new(file), total_len, Some(path), limit)
}

/// Decodes a WAV or FLAC stream held in memory within `limit`.
pub fn decode_bytes(bytes: &[u8], limit: AudioLimit) -> Result<DecodedAudio, AudioError> {
    decode_stream(Cursor::new(bytes), bytes.len() as u64, None, limit)
}

enum Container {
    Wav,
    Flac,
}

fn decode_stream<R: Read + Seek>(
    mut reader: R,
    total_len: u64,
    path: Option<&Path>,
    limit: AudioLimit,
) -> Result<DecodedAudio, AudioError> {
    let mut magic = [0u8; 12];
    let magic_len = read_up_to(&mut reader, &mut magic).map_err(|e| io_error(e, path, "header"))?;
    let container = detect_container(&magic[..magic_len])?;
    reader.seek(SeekFrom::Start(0)).map_err(|e| io_error(e, path, "header"))?;
    let audio = match container {
        Container::Wav => decode_wav(reader, total_len, path, limit)?,
        Container::Flac => decode_flac(reader, path, limit)?,
    };
    if audio.samples.is_empty() {
        return Err(AudioError::Empty);
    }
    Ok(audio)
}

fn detect_container(magic: &[u8]) -> Result<Container, AudioError> {
    let unsupported = |encoding: &str| Err(AudioError::Unsupported { encoding: encoding.to_string() });
    if magic.is_empty() {
        return Err(AudioError::NotAudio { detail: "input is empty".to_string() });
    }
    if magic.starts_with(b"fLaC") {
        return Ok(Container::Flac);
    }
    if magic.starts_with(b"RIFF") {
        return match magic.get(8..12) {
            Some(b"WAVE") => Ok(Container::Wav),
            Some(form) => Err(AudioError::NotAudio {
                detail: format!("RIFF file of form '{}', not 'WAVE'", String::from_utf8_lossy(form)),
            }),
            None => Err(AudioError::Truncated { detail: format!("RIFF header is {} bytes, 12 needed", magic.len()) }),
        };
    }
    if magic.starts_with(b"RF64") || magic.starts_with(b"BW64") {
        return unsupported("RF64/BW64 (64-bit WAV) container");
    }
    if magic.starts_with(b"RIFX") {
        return unsupported("big-endian WAV (RIFX)");
    }
    if magic.starts_with(b"OggS") {
        return unsupported("Ogg container (Vorbis, Opus or Ogg FLAC)");
    }
    if magic.starts_with(b"ID3") {
        return unsupported("ID3-tagged stream (MP3, or FLAC with an ID3 prefix)");
    }
    let hex: Vec<String> = magic.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Err(AudioError::NotAudio { detail: format!("unrecognised leading bytes {}", hex.join(" ")) })
}

/// Reads until `buf` is full or the stream ends; returns the number of bytes read.
fn read_up_to<R: Read>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn io_error(error: io::Error, path: Option<&Path>, part: &str) -> AudioError {
    match (error.kind(), path) {
        (io::ErrorKind::UnexpectedEof, _) => AudioError::Truncated { detail: format!("stream ends inside its {part}") },
        (_, Some(path)) => AudioError::Io { path: path.to_path_buf(), source: error },
        (_, None) => AudioError::Corrupt { detail: format!("cannot read {part}: {error}") },
    }
}

/// Refuses a sample rate of 0 or one the resampler cannot convert, before anything is decoded.
fn check_sample_rate(sample_rate: u32) -> Result<(), AudioError> {
    if sample_rate == 0 {
        return Err(AudioError::InvalidHeader { detail: "sample rate is 0".to_string() });
    }
    if !RESAMPLE_RATE_RANGE.contains(&sample_rate) {
        return Err(AudioError::InvalidHeader {
            detail: format!(
                "sample rate {sample_rate} Hz is outside {}..={} Hz",
                RESAMPLE_RATE_RANGE.start(),
                RESAMPLE_RATE_RANGE.end()
            ),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------- WAV

const WAVE_FORMAT_PCM: u16 = 0x0001;
const WAVE_FORMAT_IEEE_FLOAT: u16 = 0x0003;
const WAVE_FORMAT_EXTENSIBLE: u16 = 0xFFFE;
/// Bytes 2..16 shared by every KSDATAFORMAT_SUBTYPE GUID derived from a format tag.
const KSDATAFORMAT_GUID_TAIL: [u8; 14] =
    [0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71];
/// Largest 'fmt ' chunk read; real ones are 16 to 40 bytes.
const MAX_FMT_CHUNK_LEN: u32 = 1024;

/// How one sample is stored in the 'data' chunk.
#[derive(Debug, Clone, Copy, PartialEq)]
enum WavSampleFormat {
    /// Unsigned 8-bit, offset by 128.
    U8,
    /// Signed little-endian integer filling 2, 3 or 4 bytes; fewer valid bits are left-justified.
    Int { bytes: usize },
    /// IEEE little-endian 32-bit float.
    F32,
}

struct WavFormat {
    sample_format: WavSampleFormat,
    channels: u16,
    sample_rate: u32,
    block_align: u16,
}

struct WavLayout {
    format: WavFormat,
    data_offset: u64,
    data_len: u32,
}

/// Bytes converted per read from the 'data' chunk.
const WAV_READ_BLOCK: usize = 64 * 1024;

fn decode_wav<R: Read + Seek>(
    mut reader: R,
    total_len: u64,
    path: Option<&Path>,
    limit: AudioLimit,
) -> Result<DecodedAudio, AudioError> {
    let layout = read_wav_layout(&mut reader, total_len, path)?;
    let format = &layout.format;
    let block_align = usize::from(format.block_align);
    // An incomplete trailing frame is ignored.
    let frames = layout.data_len as usize / block_align;
    if frames == 0 {
        return Err(AudioError::Empty);
    }
    limit.check_declared(frames as u64, format.sample_rate, format.channels)?;
    let available = total_len.saturating_sub(layout.data_offset);
    if u64::from(layout.data_len) > available {
        return Err(AudioError::Truncated {
            detail: format!(
                "WAV 'data' chunk declares {} bytes but only {available} follow its header",
                layout.data_len
            ),
        });
    }

    reader.seek(SeekFrom::Start(layout.data_offset)).map_err(|e| io_error(e, path, "WAV data"))?;
    let sample_count = frames * usize::from(format.channels);
    let mut samples = Vec::with_capacity(sample_count);
    let mut block = vec![0u8; (WAV_READ_BLOCK / block_align).max(1) * block_align];
    let mut remaining = frames * block_align;
    while remaining > 0 {
        let chunk_len = remaining.min(block.len());
        let chunk = &mut block[..chunk_len];
        reader.read_exact(chunk).map_err(|e| io_error(e, path, "WAV data"))?;
        append_wav_samples(chunk, format.sample_format, &mut samples)?;
        remaining -= chunk.len();
    }
    Ok(DecodedAudio { sample_rate: format.sample_rate, channels: format.channels, samples })
}

/// Converts whole samples from `bytes` to f32 in [-1, 1] and appends them.
fn append_wav_samples(bytes: &[u8], format: WavSampleFormat, samples: &mut Vec<f32>) -> Result<(), AudioError> {
    match format {
        WavSampleFormat::U8 => {
            samples.extend(bytes.iter().map(|&b| f32::from(i16::from(b) - 128) / 128.0));
        }
        WavSampleFormat::Int { bytes: 2 } => {
            samples.extend(bytes.chunks_exact(2).map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32_768.0))
        }
        WavSampleFormat::Int { bytes: 3 } => samples.extend(bytes.chunks_exact(3).map(|b| {
            // Placed in the top three bytes of an i32, so full scale is 2^31.
            i32::from_le_bytes([0, b[0], b[1], b[2]]) as f32 / 2_147_483_648.0
        })),
        WavSampleFormat::Int { .. } => samples.extend(
            bytes.chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32 / 2_147_483_648.0),
        ),
        WavSampleFormat::F32 => {
            for b in bytes.chunks_exact(4) {
                let sample = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                if !sample.is_finite() {
                    return Err(AudioError::Corrupt {
                        detail: format!("WAV float sample {} is {sample}", samples.len()),
                    });
                }
                samples.push(sample.clamp(-1.0, 1.0));
            }
        }
    }
    Ok(())
}

/// Walks the RIFF chunks up to 'data', validating the format before any sample is read.
fn read_wav_layout<R: Read + Seek>(
    reader: &mut R,
    total_len: u64,
    path: Option<&Path>,
) -> Result<WavLayout, AudioError> {
    let header_error = |e| io_error(e, path, "WAV header");
    let mut format = None;
    let mut position: u64 = 12;
    loop {
        reader.seek(SeekFrom::Start(position)).map_err(header_error)?;
        let mut chunk_header = [0u8; 8];
        let got = read_up_to(reader, &mut chunk_header).map_err(header_error)?;
        if got < chunk_header.len() {
            let missing = if format.is_some() { "'data'" } else { "'fmt '" };
            return Err(if got == 0 {
                AudioError::Corrupt { detail: format!("WAV file has no {missing} chunk") }
            } else {
                AudioError::Truncated { detail: "WAV file ends inside a chunk header".to_string() }
            });
        }
        let chunk_len = u32::from_le_bytes([chunk_header[4], chunk_header[5], chunk_header[6], chunk_header[7]]);
        position += 8;
        match &chunk_header[..4] {
            b"fmt " => {
                if !(16..=MAX_FMT_CHUNK_LEN).contains(&chunk_len) {
                    return Err(AudioError::Corrupt { detail: format!("WAV 'fmt ' chunk is {chunk_len} bytes long") });
                }
                let mut body = vec![0u8; chunk_len as usize];
                reader.read_exact(&mut body).map_err(|e| io_error(e, path, "WAV 'fmt ' chunk"))?;
                format = Some(parse_fmt_chunk(&body)?);
            }
            b"data" => {
                let format = format.ok_or_else(|| AudioError::Corrupt {
                    detail: "WAV 'data' chunk comes before the 'fmt ' chunk".to_string(),
                })?;
                return Ok(WavLayout { format, data_offset: position, data_len: chunk_len });
            }
            _ => {}
        }
        // RIFF chunks are padded to an even length.
        position += u64::from(chunk_len) + u64::from(chunk_len & 1);
        if position > total_len {
            return Err(AudioError::Truncated {
                detail: "WAV file ends inside a chunk before the 'data' chunk".to_string(),
            });
        }
    }
}

fn parse_fmt_chunk(body: &[u8]) -> Result<WavFormat, AudioError> {
    let u16_at = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes([body[i], body[i + 1], body[i + 2], body[i + 3]]);
    let format_tag = u16_at(0);
    let channels = u16_at(2);
    let sample_rate = u32_at(4);
    let block_align = u16_at(12);
    let bits_per_sample = u16_at(14);

    if channels == 0 {
        return Err(AudioError::InvalidHeader { detail: "channel count is 0".to_string() });
    }
    check_sample_rate(sample_rate)?;

    let (encoding, bits) = if format_tag == WAVE_FORMAT_EXTENSIBLE {
        if body.len() < 40 {
            return Err(AudioError::Corrupt {
                detail: format!("WAVE_FORMAT_EXTENSIBLE 'fmt ' chunk is {} bytes, 40 needed", body.len()),
            });
        }
        let valid_bits = u16_at(18);
        let guid = &body[24..40];
        if guid[2..] != KSDATAFORMAT_GUID_TAIL {
            return Err(AudioError::Unsupported {
                encoding: format!("WAV WAVE_FORMAT_EXTENSIBLE with sub-format GUID {}", format_guid(guid)),
            });
        }
        let bits = if valid_bits != 0 { valid_bits } else { bits_per_sample };
        (u16_at(24), bits)
    } else {
        (format_tag, bits_per_sample)
    };

    if block_align == 0 || block_align % channels != 0 {
        return Err(AudioError::Corrupt {
            detail: format!("WAV block align {block_align} does not fit {channels} channels"),
        });
    }
    let container_bytes = block_align / channels;
    let container_bits = u32::from(container_bytes) * 8;
    let sample_format = match (encoding, container_bytes) {
        (WAVE_FORMAT_PCM, 1) if (1..=8).contains(&bits) => WavSampleFormat::U8,
        (WAVE_FORMAT_PCM, 2..=4) if (1..=container_bits).contains(&u32::from(bits)) => {
            WavSampleFormat::Int { bytes: usize::from(container_bytes) }
        }
        (WAVE_FORMAT_PCM, _) => {
            return Err(AudioError::Unsupported {
                encoding: format!("WAV {bits}-bit integer PCM stored in {container_bytes}-byte samples"),
            })
        }
        (WAVE_FORMAT_IEEE_FLOAT, 4) if bits == 32 => WavSampleFormat::F32,
        (WAVE_FORMAT_IEEE_FLOAT, _) => {
            return Err(AudioError::Unsupported { encoding: format!("WAV {bits}-bit float") })
        }
        (other, _) => {
            return Err(AudioError::Unsupported {
                encoding: format!("WAV {} (format tag 0x{other:04X})", format_tag_name(other)),
            })
        }
    };
    Ok(WavFormat { sample_format, channels, sample_rate, block_align })
}

fn format_tag_name(tag: u16) -> &'static str {
    match tag {
        0x0002 => "Microsoft ADPCM",
        0x0006 => "A-law",
        0x0007 => "µ-law",
        0x0011 => "IMA ADPCM",
        0x0031 => "GSM 6.10",
        0x0050 => "MPEG audio",
        0x0055 => "MP3",
        0x0161..=0x0163 => "Windows Media Audio",
        0x2000 => "AC-3",
        0xF1AC => "FLAC",
        _ => "compressed encoding",
    }
}

fn format_guid(guid: &[u8]) -> String {
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02X}")).collect::<String>();
    let rev = |bytes: &[u8]| bytes.iter().rev().map(|b| format!("{b:02X}")).collect::<String>();
    format!(
        "{}-{}-{}-{}-{}",
        rev(&guid[0..4]),
        rev(&guid[4..6]),
        rev(&guid[6..8]),
        hex(&guid[8..10]),
        hex(&guid[10..16])
    )
}

// ---------------------------------------------------------------- FLAC

/// "fLaC", a metadata block header and the 34-byte STREAMINFO body.
const FLAC_STREAMINFO_END: usize = 4 + 4 + 34;

fn decode_flac<R: Read + Seek>(
    mut reader: R,
    path: Option<&Path>,
    limit: AudioLimit,
) -> Result<DecodedAudio, AudioError> {
    let mut head = [0u8; FLAC_STREAMINFO_END];
    let got = read_up_to(&mut reader, &mut head).map_err(|e| io_error(e, path, "FLAC header"))?;
    if got < head.len() {
        return Err(AudioError::Truncated { detail: "FLAC stream ends inside its STREAMINFO block".to_string() });
    }
    if head[4] & 0x7F != 0 {
        return Err(AudioError::Corrupt { detail: "FLAC stream does not start with a STREAMINFO block".to_string() });
    }
    let info = &head[8..];
    let sample_rate = u32::from(info[10]) << 12 | u32::from(info[11]) << 4 | u32::from(info[12]) >> 4;
    check_sample_rate(sample_rate)?;
    let header_channels = u16::from((info[12] >> 1) & 0x07) + 1;
    let declared_frames =
        u64::from(info[13] & 0x0F) << 32 | u64::from(u32::from_be_bytes([info[14], info[15], info[16], info[17]]));
    limit.check_declared(declared_frames, sample_rate, header_channels)?;

    reader.seek(SeekFrom::Start(0)).map_err(|e| io_error(e, path, "FLAC header"))?;
    let mut flac = claxon::FlacReader::new(reader).map_err(|e| claxon_error(e, path))?;
    let streaminfo = flac.streaminfo();
    let channels = streaminfo.channels;
    let bits = streaminfo.bits_per_sample;
    if channels == 0 || !(1..=32).contains(&bits) {
        return Err(AudioError::InvalidHeader {
            detail: format!("FLAC declares {channels} channels of {bits}-bit samples"),
        });
    }
    let scale = 1.0 / (1u64 << (bits - 1)) as f32;

    let declared_samples = declared_frames * u64::from(channels);
    let mut samples = Vec::with_capacity(declared_samples.min(MAX_FLAC_PREALLOCATED_SAMPLES) as usize);
    let channel_count = u16::try_from(channels).unwrap_or(u16::MAX);
    let mut decoded_frames: u64 = 0;
    let mut blocks = flac.blocks();
    let mut buffer = Vec::new();
    loop {
        let block = match blocks.read_next_or_eof(buffer) {
            Ok(Some(block)) => block,
            Ok(None) => break,
            Err(e) => return Err(claxon_error(e, path)),
        };
        if block.channels() != channels {
            return Err(AudioError::Corrupt {
                detail: format!("FLAC frame has {} channels, the stream declares {channels}", block.channels()),
            });
        }
        decoded_frames += u64::from(block.duration());
        // Checked before the block's samples are stored: a stream that does not declare its length (or lies about
        // it) stops at the limit.
        limit.check_decoded(decoded_frames, sample_rate, channel_count)?;
        // Growth doubles, but never past what the limit allows, so the buffer stays within it.
        let needed = block.duration() as usize * channels as usize;
        if samples.capacity() - samples.len() < needed {
            let allowed = (limit.max_frames(sample_rate, channel_count) * u64::from(channels)) as usize;
            let target = (samples.len() + needed).max(2 * samples.capacity()).min(allowed);
            samples.reserve_exact(target - samples.len());
        }
        for frame in 0..block.duration() {
            for channel in 0..channels {
                let value = block.sample(channel, frame) as f32 * scale;
                samples.push(value.clamp(-1.0, 1.0));
            }
        }
        buffer = block.into_buffer();
    }

    if declared_frames != 0 && decoded_frames != declared_frames {
        return Err(if decoded_frames < declared_frames {
            AudioError::Truncated {
                detail: format!(
                    "FLAC stream ends after {decoded_frames} of {declared_frames} declared samples per channel"
                ),
            }
        } else {
            AudioError::Corrupt {
                detail: format!(
                    "FLAC stream holds {decoded_frames} samples per channel, its header declares {declared_frames}"
                ),
            }
        });
    }
    Ok(DecodedAudio { sample_rate, channels: channels as u16, samples })
}

fn claxon_error(error: claxon::Error, path: Option<&Path>) -> AudioError {
    match error {
        claxon::Error::IoError(e) => io_error(e, path, "FLAC data"),
        claxon::Error::FormatError(reason) => AudioError::Corrupt { detail: format!("malformed FLAC: {reason}") },
        claxon::Error::Unsupported(feature) => AudioError::Unsupported { encoding: format!("FLAC {feature}") },
    }
}
