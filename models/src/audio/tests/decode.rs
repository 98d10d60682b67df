//! Decoding tests: every supported WAV encoding, FLAC fixtures, and each kind of bad input.

use std::io::Cursor;

use super::fixture_path;
use std::path::Path;

use crate::allocations::PeakBytes;
use crate::audio::{decode_bytes, decode_file, AudioError, AudioLimit, DecodedAudio};

#[path = "../../../tests/support/silent_flac.rs"]
mod silent_flac;
use silent_flac::{silent_flac, FRAMES_PER_BLOCK};

fn decode(bytes: &[u8]) -> Result<DecodedAudio, AudioError> {
    decode_bytes(bytes, AudioLimit::RECORDING)
}

fn decode_path(path: impl AsRef<Path>) -> Result<DecodedAudio, AudioError> {
    decode_file(path, AudioLimit::RECORDING)
}

fn hound_wav(spec: hound::WavSpec, write: impl FnOnce(&mut hound::WavWriter<Cursor<&mut Vec<u8>>>)) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut writer = hound::WavWriter::new(Cursor::new(&mut bytes), spec).unwrap();
    write(&mut writer);
    writer.finalize().unwrap();
    bytes
}

fn int_spec(channels: u16, sample_rate: u32, bits_per_sample: u16) -> hound::WavSpec {
    hound::WavSpec { channels, sample_rate, bits_per_sample, sample_format: hound::SampleFormat::Int }
}

/// A WAV file with a hand-written 'fmt ' chunk body and a 'data' chunk declaring `data_len` bytes.
fn raw_wav(fmt: &[u8], data: &[u8], data_len: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"RIFF");
    let riff_len = 4 + 8 + fmt.len() + 8 + data.len();
    bytes.extend_from_slice(&(riff_len as u32).to_le_bytes());
    bytes.extend_from_slice(b"WAVE");
    bytes.extend_from_slice(b"fmt ");
    bytes.extend_from_slice(&(fmt.len() as u32).to_le_bytes());
    bytes.extend_from_slice(fmt);
    bytes.extend_from_slice(b"data");
    bytes.extend_from_slice(&data_len.to_le_bytes());
    bytes.extend_from_slice(data);
    bytes
}

/// A 16-byte WAVEFORMAT body.
fn fmt_body(tag: u16, channels: u16, sample_rate: u32, block_align: u16, bits: u16) -> Vec<u8> {
    let mut fmt = Vec::new();
    fmt.extend_from_slice(&tag.to_le_bytes());
    fmt.extend_from_slice(&channels.to_le_bytes());
    fmt.extend_from_slice(&sample_rate.to_le_bytes());
    fmt.extend_from_slice(&(sample_rate.wrapping_mul(u32::from(block_align))).to_le_bytes());
    fmt.extend_from_slice(&block_align.to_le_bytes());
    fmt.extend_from_slice(&bits.to_le_bytes());
    fmt
}

/// A 40-byte WAVEFORMATEXTENSIBLE body with the given sub-format GUID.
fn extensible_fmt_body(channels: u16, sample_rate: u32, bits: u16, guid: [u8; 16]) -> Vec<u8> {
    let block_align = channels * bits / 8;
    let mut fmt = fmt_body(0xFFFE, channels, sample_rate, block_align, bits);
    fmt.extend_from_slice(&22u16.to_le_bytes());
    fmt.extend_from_slice(&bits.to_le_bytes());
    fmt.extend_from_slice(&0u32.to_le_bytes());
    fmt.extend_from_slice(&guid);
    fmt
}

fn ksdataformat_guid(tag: u16) -> [u8; 16] {
    let mut guid = [0, 0, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71];
    guid[..2].copy_from_slice(&tag.to_le_bytes());
    guid
}

fn expect_error(result: Result<DecodedAudio, AudioError>) -> AudioError {
    match result {
        Ok(audio) => panic!("expected an error, decoded {} samples at {} Hz", audio.samples.len(), audio.sample_rate),
        Err(error) => error,
    }
}

/// Content of `tests/fixtures/ramp_16bit_stereo_22050.flac` (4000 frames, encoded with `flac -8`).
fn ramp_stereo(frames: usize) -> (Vec<i32>, Vec<i32>) {
    (
        (0..frames).map(|i| ((i * 37) % 2000) as i32 - 1000).collect(),
        (0..frames).map(|i| ((i * 53) % 3001) as i32 - 1500).collect(),
    )
}

/// Content of `tests/fixtures/ramp_24bit_mono_44100.flac` (2000 frames, encoded with `flac -8`).
fn ramp_mono_24bit(frames: usize) -> Vec<i32> {
    (0..frames).map(|i| (((i * 7919) % 65536) as i32 - 32768) * 97).collect()
}

#[test]
fn wav_integer_encodings_scale_to_unit_range() {
    for bits in [8u16, 16, 24, 32] {
        let full_scale = 1i64 << (bits - 1);
        let values: Vec<i32> = [-full_scale, -full_scale / 2, -1, 0, 1, full_scale / 3, full_scale - 1]
            .iter()
            .map(|&v| v as i32)
            .collect();
        for channels in [1u16, 2, 3] {
            let bytes = hound_wav(int_spec(channels, 22_050, bits), |w| {
                for &v in &values {
                    for _ in 0..channels {
                        w.write_sample(v).unwrap();
                    }
                }
            });
            let audio = decode(&bytes).unwrap();
            assert_eq!(audio.sample_rate, 22_050);
            assert_eq!(audio.channels, channels);
            assert_eq!(audio.frames(), values.len());
            for (frame, &v) in audio.samples.chunks_exact(usize::from(channels)).zip(&values) {
                let expected = (v as f64 / full_scale as f64) as f32;
                for &s in frame {
                    assert_eq!(s, expected, "{bits}-bit, {channels} channels");
                }
            }
            assert!(audio.samples.iter().all(|s| (-1.0..=1.0).contains(s)));
        }
    }
}

#[test]
fn wav_float32_decodes_and_clamps() {
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 48_000,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let values = [0.0f32, 0.25, -0.5, 1.0, -1.0, 1.5, -2.0, 1e-6];
    let bytes = hound_wav(spec, |w| values.iter().for_each(|&v| w.write_sample(v).unwrap()));
    let audio = decode(&bytes).unwrap();
    assert_eq!((audio.sample_rate, audio.channels), (48_000, 2));
    assert_eq!(audio.samples, vec![0.0, 0.25, -0.5, 1.0, -1.0, 1.0, -1.0, 1e-6]);
}

#[test]
fn wav_float_nan_is_corrupt() {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let bytes = hound_wav(spec, |w| [0.5f32, f32::NAN].iter().for_each(|&v| w.write_sample(v).unwrap()));
    let error = expect_error(decode(&bytes));
    assert!(matches!(error, AudioError::Corrupt { .. }), "{error:?}");
    assert_eq!(error.to_string(), "corrupt audio: WAV float sample 1 is NaN");
}

#[test]
fn wav_with_many_channels_and_odd_rate() {
    let (left, _) = ramp_stereo(500);
    let bytes = hound_wav(int_spec(6, 11_025, 16), |w| {
        for &v in &left {
            for channel in 0..6 {
                w.write_sample((v + channel) as i16).unwrap();
            }
        }
    });
    let audio = decode(&bytes).unwrap();
    assert_eq!((audio.sample_rate, audio.channels, audio.frames()), (11_025, 6, 500));
    assert_eq!(audio.samples[6 * 10 + 5], (left[10] + 5) as f32 / 32768.0);
}

#[test]
fn wav_skips_unknown_chunks_including_padded_odd_ones() {
    let mut bytes =
        hound_wav(int_spec(1, 16_000, 16), |w| (0..10).for_each(|v| w.write_sample(v as i16 * 100).unwrap()));
    // Insert a 3-byte 'junk' chunk plus its pad byte just after "WAVE".
    let junk = [b'j', b'u', b'n', b'k', 3, 0, 0, 0, 1, 2, 3, 0];
    bytes.splice(12..12, junk);
    let declared = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) + junk.len() as u32;
    bytes[4..8].copy_from_slice(&declared.to_le_bytes());
    let audio = decode(&bytes).unwrap();
    assert_eq!(audio.samples[3], 300.0 / 32768.0);
}

#[test]
fn flac_16bit_stereo_fixture_decodes_exactly() {
    let audio = decode_path(fixture_path("ramp_16bit_stereo_22050.flac")).unwrap();
    assert_eq!((audio.sample_rate, audio.channels, audio.frames()), (22_050, 2, 4000));
    let (left, right) = ramp_stereo(4000);
    for (i, frame) in audio.samples.chunks_exact(2).enumerate() {
        assert_eq!(frame[0], left[i] as f32 / 32768.0);
        assert_eq!(frame[1], right[i] as f32 / 32768.0);
    }
}

#[test]
fn flac_24bit_mono_fixture_decodes_exactly() {
    let audio = decode_path(fixture_path("ramp_24bit_mono_44100.flac")).unwrap();
    assert_eq!((audio.sample_rate, audio.channels, audio.frames()), (44_100, 1, 2000));
    let expected: Vec<f32> = ramp_mono_24bit(2000).iter().map(|&v| v as f32 / 8_388_608.0).collect();
    assert_eq!(audio.samples, expected);
}

#[test]
fn container_is_detected_from_magic_bytes_not_extension() {
    let dir = std::env::temp_dir().join(format!("lookout-audio-magic-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wav_named_flac = dir.join("speech.flac");
    let wav = hound_wav(int_spec(1, 16_000, 16), |w| (0..100).for_each(|v| w.write_sample(v as i16).unwrap()));
    std::fs::write(&wav_named_flac, &wav).unwrap();
    let flac_named_wav = dir.join("speech.wav");
    std::fs::copy(fixture_path("ramp_24bit_mono_44100.flac"), &flac_named_wav).unwrap();

    let from_wav = decode_path(&wav_named_flac);
    let from_flac = decode_path(&flac_named_wav);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(from_wav.unwrap().frames(), 100);
    assert_eq!(from_flac.unwrap().sample_rate, 44_100);
}

// ---------------------------------------------------------------- errors

#[test]
fn missing_file_names_the_path() {
    let path = std::env::temp_dir().join("lookout-no-such-dir/absent.wav");
    let error = expect_error(decode_path(&path));
    assert!(matches!(&error, AudioError::NotFound { path: p } if *p == path), "{error:?}");
    assert_eq!(error.to_string(), format!("audio file not found: {}", path.display()));

    let directory = std::env::temp_dir();
    let error = expect_error(decode_path(&directory));
    assert!(matches!(&error, AudioError::Io { path: p, .. } if *p == directory), "{error:?}");
    let prefix = format!("cannot read audio file {}: ", directory.display());
    assert!(error.to_string().starts_with(&prefix), "{error}");
}

#[test]
fn unknown_magic_is_not_audio() {
    let error = expect_error(decode(b"hello, this is a text file"));
    assert!(matches!(error, AudioError::NotAudio { .. }), "{error:?}");
    assert_eq!(error.to_string(), "not a WAV or FLAC file: unrecognised leading bytes 68 65 6c 6c 6f 2c 20 74");

    let error = expect_error(decode(&[]));
    assert!(matches!(error, AudioError::NotAudio { .. }), "{error:?}");
    assert_eq!(error.to_string(), "not a WAV or FLAC file: input is empty");

    let mut avi = b"RIFF\x04\x00\x00\x00AVI ".to_vec();
    avi.extend_from_slice(&[0; 16]);
    let error = expect_error(decode(&avi));
    assert_eq!(error.to_string(), "not a WAV or FLAC file: RIFF file of form 'AVI ', not 'WAVE'");
}

#[test]
fn other_containers_are_named_as_unsupported() {
    let error = expect_error(decode(b"OggS\x00\x02\x00\x00\x00\x00\x00\x00"));
    assert!(matches!(error, AudioError::Unsupported { .. }), "{error:?}");
    assert_eq!(error.to_string(), "unsupported audio encoding: Ogg container (Vorbis, Opus or Ogg FLAC)");
    let error = expect_error(decode(b"RF64\xff\xff\xff\xffWAVEds64"));
    assert_eq!(error.to_string(), "unsupported audio encoding: RF64/BW64 (64-bit WAV) container");
}

#[test]
fn wav_alaw_and_mulaw_are_unsupported() {
    for (tag, name) in [(6u16, "A-law"), (7, "µ-law")] {
        let bytes = raw_wav(&fmt_body(tag, 1, 8000, 1, 8), &[0x55; 100], 100);
        let error = expect_error(decode(&bytes));
        assert!(matches!(error, AudioError::Unsupported { .. }), "{error:?}");
        assert_eq!(error.to_string(), format!("unsupported audio encoding: WAV {name} (format tag 0x{tag:04X})"));
    }
}

#[test]
fn wav_adpcm_is_unsupported() {
    let bytes = raw_wav(&fmt_body(0x0011, 1, 8000, 256, 4), &[0; 256], 256);
    let error = expect_error(decode(&bytes));
    assert_eq!(error.to_string(), "unsupported audio encoding: WAV IMA ADPCM (format tag 0x0011)");
}

#[test]
fn wav_float64_is_unsupported() {
    let bytes = raw_wav(&fmt_body(3, 1, 16_000, 8, 64), &[0; 64], 64);
    let error = expect_error(decode(&bytes));
    assert!(matches!(error, AudioError::Unsupported { .. }), "{error:?}");
    assert_eq!(error.to_string(), "unsupported audio encoding: WAV 64-bit float");

    let extensible = extensible_fmt_body(2, 16_000, 64, ksdataformat_guid(3));
    let error = expect_error(decode(&raw_wav(&extensible, &[0; 64], 64)));
    assert_eq!(error.to_string(), "unsupported audio encoding: WAV 64-bit float");
}

#[test]
fn wav_extensible_with_odd_subformat_is_unsupported() {
    let alaw = extensible_fmt_body(1, 8000, 8, ksdataformat_guid(6));
    let error = expect_error(decode(&raw_wav(&alaw, &[0; 8], 8)));
    assert_eq!(error.to_string(), "unsupported audio encoding: WAV A-law (format tag 0x0006)");

    let foreign_guid = [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F, 0x10];
    let foreign = extensible_fmt_body(1, 8000, 16, foreign_guid);
    let error = expect_error(decode(&raw_wav(&foreign, &[0; 8], 8)));
    assert!(matches!(error, AudioError::Unsupported { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        "unsupported audio encoding: WAV WAVE_FORMAT_EXTENSIBLE with sub-format GUID \
         04030201-0605-0807-090A-0B0C0D0E0F10"
    );
}

#[test]
fn wav_24bit_in_32bit_container_is_left_justified() {
    let mut fmt = extensible_fmt_body(1, 48_000, 32, ksdataformat_guid(1));
    fmt[18..20].copy_from_slice(&24u16.to_le_bytes());
    let values = [-8_388_608i32, -1, 0, 1, 4_194_304, 8_388_607];
    let data: Vec<u8> = values.iter().flat_map(|&v| (v << 8).to_le_bytes()).collect();
    let audio = decode(&raw_wav(&fmt, &data, data.len() as u32)).unwrap();
    let expected: Vec<f32> = values.iter().map(|&v| v as f32 / 8_388_608.0).collect();
    assert_eq!(audio.samples, expected);
}

#[test]
fn wav_integer_wider_than_its_container_is_unsupported() {
    let mut fmt = extensible_fmt_body(1, 48_000, 16, ksdataformat_guid(1));
    fmt[18..20].copy_from_slice(&20u16.to_le_bytes());
    let error = expect_error(decode(&raw_wav(&fmt, &[0; 16], 16)));
    assert!(matches!(error, AudioError::Unsupported { .. }), "{error:?}");
    assert_eq!(error.to_string(), "unsupported audio encoding: WAV 20-bit integer PCM stored in 2-byte samples");
    let error = expect_error(decode(&raw_wav(&fmt_body(1, 1, 8000, 8, 64), &[0; 16], 16)));
    assert_eq!(error.to_string(), "unsupported audio encoding: WAV 64-bit integer PCM stored in 8-byte samples");
}

#[test]
fn wav_truncated_data_is_reported() {
    let bytes = raw_wav(&fmt_body(1, 1, 16_000, 2, 16), &[0; 100], 16_000);
    let error = expect_error(decode(&bytes));
    assert!(matches!(error, AudioError::Truncated { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        "truncated audio: WAV 'data' chunk declares 16000 bytes but only 100 follow its header"
    );

    let whole = hound_wav(int_spec(1, 16_000, 16), |w| (0..100).for_each(|_| w.write_sample(1i16).unwrap()));
    for cut in [4, 11, 20, 30, 43, 60] {
        let error = expect_error(decode(&whole[..cut]));
        assert!(matches!(error, AudioError::Truncated { .. } | AudioError::Corrupt { .. }), "cut at {cut}: {error:?}");
    }
    let error = expect_error(decode(&whole[..20]));
    assert_eq!(error.to_string(), "truncated audio: stream ends inside its WAV 'fmt ' chunk");
}

#[test]
fn wav_without_data_chunk_is_corrupt() {
    let mut bytes = raw_wav(&fmt_body(1, 1, 16_000, 2, 16), &[], 0);
    bytes.truncate(bytes.len() - 8);
    let error = expect_error(decode(&bytes));
    assert!(matches!(error, AudioError::Corrupt { .. }), "{error:?}");
    assert_eq!(error.to_string(), "corrupt audio: WAV file has no 'data' chunk");
}

#[test]
fn wav_without_samples_is_empty() {
    let bytes = hound_wav(int_spec(2, 44_100, 16), |_| {});
    let error = expect_error(decode(&bytes));
    assert!(matches!(error, AudioError::Empty), "{error:?}");
    assert_eq!(error.to_string(), "audio contains no samples");
}

#[test]
fn wav_zero_rate_or_channels_is_invalid() {
    let error = expect_error(decode(&raw_wav(&fmt_body(1, 1, 0, 2, 16), &[0; 4], 4)));
    assert!(matches!(error, AudioError::InvalidHeader { .. }), "{error:?}");
    assert_eq!(error.to_string(), "invalid audio header: sample rate is 0");

    let error = expect_error(decode(&raw_wav(&fmt_body(1, 0, 16_000, 2, 16), &[0; 4], 4)));
    assert!(matches!(error, AudioError::InvalidHeader { .. }), "{error:?}");
    assert_eq!(error.to_string(), "invalid audio header: channel count is 0");
}

#[test]
fn wav_declaring_absurd_length_is_refused_before_allocating() {
    let bytes = raw_wav(&fmt_body(1, 1, 8000, 1, 8), &[0; 64], 0xFFFF_FFF0);
    let error = expect_error(decode(&bytes));
    assert!(matches!(error, AudioError::TooLong { limit_seconds, .. } if limit_seconds == 1800.0), "{error:?}");
    assert_eq!(error.to_string(), "audio declares 536871 s, more than the limit of 1800 s");
}

fn flac_fixture() -> Vec<u8> {
    std::fs::read(fixture_path("ramp_16bit_stereo_22050.flac")).unwrap()
}

/// Offset of the first audio frame: the end of the last metadata block.
fn flac_frames_offset(bytes: &[u8]) -> usize {
    let mut offset = 4;
    loop {
        let is_last = bytes[offset] & 0x80 != 0;
        let len = u32::from_be_bytes([0, bytes[offset + 1], bytes[offset + 2], bytes[offset + 3]]) as usize;
        offset += 4 + len;
        if is_last {
            return offset;
        }
    }
}

/// Overwrites the 36-bit total-samples field of STREAMINFO.
fn set_flac_total_samples(bytes: &mut [u8], total: u64) {
    bytes[8 + 13] = (bytes[8 + 13] & 0xF0) | ((total >> 32) as u8 & 0x0F);
    bytes[8 + 14..8 + 18].copy_from_slice(&(total as u32).to_be_bytes());
}

#[test]
fn flac_truncated_is_reported() {
    let bytes = flac_fixture();
    let frames_start = flac_frames_offset(&bytes);
    for cut in [frames_start + 10, (frames_start + bytes.len()) / 2, bytes.len() - 1] {
        let error = expect_error(decode(&bytes[..cut]));
        assert!(matches!(error, AudioError::Truncated { .. }), "cut at {cut}: {error:?}");
    }
    let error = expect_error(decode(&bytes[..frames_start]));
    assert_eq!(error.to_string(), "truncated audio: FLAC stream ends after 0 of 4000 declared samples per channel");
    let error = expect_error(decode(&bytes[..30]));
    assert_eq!(error.to_string(), "truncated audio: FLAC stream ends inside its STREAMINFO block");
}

#[test]
fn flac_corrupt_frames_are_reported_without_panic() {
    let clean = flac_fixture();
    let frames_start = flac_frames_offset(&clean);
    let mut garbage = clean.clone();
    for (i, byte) in garbage[frames_start..].iter_mut().enumerate() {
        *byte = (i as u8).wrapping_mul(31).wrapping_add(7);
    }
    let error = expect_error(decode(&garbage));
    assert!(matches!(error, AudioError::Corrupt { .. }), "{error:?}");
    assert!(error.to_string().starts_with("corrupt audio: malformed FLAC: "), "{error}");

    // Flipping single bytes anywhere must give an error or audio, never a panic.
    for position in (0..clean.len()).step_by(97) {
        let mut damaged = clean.clone();
        damaged[position] ^= 0x5A;
        let _ = decode(&damaged);
    }
}

#[test]
fn flac_without_frames_is_empty() {
    let mut bytes = flac_fixture();
    let frames_start = flac_frames_offset(&bytes);
    bytes.truncate(frames_start);
    set_flac_total_samples(&mut bytes, 0);
    let error = expect_error(decode(&bytes));
    assert!(matches!(error, AudioError::Empty), "{error:?}");
}

#[test]
fn flac_zero_rate_is_invalid() {
    let mut bytes = flac_fixture();
    bytes[8 + 10] = 0;
    bytes[8 + 11] = 0;
    bytes[8 + 12] &= 0x0F;
    let error = expect_error(decode(&bytes));
    assert!(matches!(error, AudioError::InvalidHeader { .. }), "{error:?}");
    assert_eq!(error.to_string(), "invalid audio header: sample rate is 0");
}

#[test]
fn flac_declaring_absurd_length_is_refused() {
    let mut bytes = flac_fixture();
    set_flac_total_samples(&mut bytes, 1 << 35);
    let error = expect_error(decode(&bytes));
    assert!(matches!(error, AudioError::TooLong { .. }), "{error:?}");
    assert_eq!(error.to_string(), "audio declares 1558265 s, more than the limit of 1800 s");
}

#[test]
fn garbage_after_riff_header_never_panics() {
    let whole = hound_wav(int_spec(2, 16_000, 24), |w| (0..64).for_each(|v| w.write_sample(v * 1000).unwrap()));
    for position in 0..whole.len().min(80) {
        for flip in [0x01u8, 0x80, 0xFF] {
            let mut damaged = whole.clone();
            damaged[position] ^= flip;
            let _ = decode(&damaged);
        }
    }
}

#[test]
fn a_flac_bomb_stops_at_the_limit_before_its_samples_are_held() {
    let limit = AudioLimit::seconds(30);
    // The writer's streams are valid FLAC: a short one decodes to silence.
    let short = decode(&silent_flac(16_000, 1, 5, 0)).unwrap();
    assert_eq!((short.sample_rate, short.channels, short.frames() as u64), (16_000, 1, 5 * FRAMES_PER_BLOCK));
    assert!(short.samples.iter().all(|&s| s == 0.0));

    // 3,000 blocks: under 64 KB that expand to 68 minutes of 48 kHz stereo (1.5 GiB of f32) when nothing stops them.
    let bomb = silent_flac(48_000, 2, 3_000, 0);
    assert!(bomb.len() < 64 * 1024, "{} bytes", bomb.len());
    let measure = PeakBytes::start();
    let error = expect_error(decode_bytes(&bomb, limit));
    let peak = measure.peak();
    assert!(matches!(error, AudioError::RunsPastLimit { .. }), "{error:?}");
    assert_eq!(error.to_string(), "audio runs longer than the limit of 30 s");
    assert!(
        peak <= limit.max_decoding_bytes(),
        "decoding held {peak} bytes, the limit allows {}",
        limit.max_decoding_bytes()
    );

    // A header that declares the length is refused before any frame is decoded.
    let declared = silent_flac(48_000, 2, 3_000, 3_000 * FRAMES_PER_BLOCK);
    let measure = PeakBytes::start();
    let error = expect_error(decode_bytes(&declared, limit));
    assert_eq!(error.to_string(), "audio declares 4096 s, more than the limit of 30 s");
    assert!(measure.peak() < 1 << 20, "{} bytes held before refusing", measure.peak());
}

#[test]
fn more_channels_or_a_higher_rate_shorten_what_a_limit_allows() {
    let limit = AudioLimit::seconds(30);
    assert_eq!(limit.max_frames(16_000, 1), 30 * 16_000);
    assert_eq!(limit.max_frames(48_000, 2), 30 * 48_000);
    // Eight channels at 96 kHz take eight times 48 kHz stereo's samples a second: 3.75 s.
    assert_eq!(limit.max_frames(96_000, 8), 360_000);
    let error = expect_error(decode_bytes(&silent_flac(96_000, 8, 10, 0), limit));
    assert_eq!(error.to_string(), "audio runs longer than the limit of 3.8 s");
    assert!(decode_bytes(&silent_flac(96_000, 8, 5, 0), limit).is_ok());
}

#[test]
fn sample_rates_the_resampler_cannot_take_are_refused_from_the_header() {
    let error = expect_error(decode(&raw_wav(&fmt_body(1, 1, 500, 2, 16), &[0; 4], 4)));
    assert_eq!(error.to_string(), "invalid audio header: sample rate 500 Hz is outside 1000..=768000 Hz");
    let error = expect_error(decode(&silent_flac(1_000_000, 1, 3_000, 0)));
    assert_eq!(error.to_string(), "invalid audio header: sample rate 1000000 Hz is outside 1000..=768000 Hz");
}

#[test]
fn a_huge_block_align_is_unsupported_not_an_overflow() {
    let error = expect_error(decode(&raw_wav(&fmt_body(1, 1, 16_000, 65_535, 16), &[0; 4], 4)));
    assert_eq!(error.to_string(), "unsupported audio encoding: WAV 16-bit integer PCM stored in 65535-byte samples");
}
