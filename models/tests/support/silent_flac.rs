//! FLAC streams of digital silence in the largest blocks FLAC allows: about 20 bytes stand for 65,535 frames, which
//! is what a decompression bomb looks like. Shared by the decoder's tests and the command-line and daemon tests.

/// Frames in each block: the most a FLAC frame header can state.
pub const FRAMES_PER_BLOCK: u64 = 65_535;

/// A stream of `blocks` silent blocks of 16-bit samples at `sample_rate` Hz with `channels` (1 to 8) channels.
/// Its STREAMINFO declares `declared_frames` frames; 0 means "unknown", as streaming encoders write it.
pub fn silent_flac(sample_rate: u32, channels: u8, blocks: u32, declared_frames: u64) -> Vec<u8> {
    assert!((1..=8).contains(&channels) && sample_rate < 1 << 20 && declared_frames < 1 << 36);
    let mut bytes = b"fLaC".to_vec();
    // The last metadata block (bit 7), of type STREAMINFO (0), 34 bytes long.
    bytes.extend_from_slice(&[0x80, 0, 0, 34]);
    let block = FRAMES_PER_BLOCK as u16;
    bytes.extend_from_slice(&block.to_be_bytes());
    bytes.extend_from_slice(&block.to_be_bytes());
    bytes.extend_from_slice(&[0; 6]); // frame sizes unknown
    let packed = u64::from(sample_rate) << 44 | u64::from(channels - 1) << 41 | 15 << 36 | declared_frames;
    bytes.extend_from_slice(&packed.to_be_bytes());
    bytes.extend_from_slice(&[0; 16]); // no MD5 signature
    for number in 0..blocks {
        let start = bytes.len();
        // Sync code with fixed block sizes; block size stated as 16 bits at the header's end, rate from STREAMINFO;
        // independent channels; 16-bit samples.
        bytes.extend_from_slice(&[0xFF, 0xF8, 0x70, (channels - 1) << 4 | 0b100 << 1]);
        bytes.extend_from_slice(&utf8_number(number));
        bytes.extend_from_slice(&(block - 1).to_be_bytes());
        bytes.push(crc8(&bytes[start..]));
        for _ in 0..channels {
            bytes.extend_from_slice(&[0x00, 0x00, 0x00]); // a CONSTANT subframe holding 0
        }
        let crc = crc16(&bytes[start..]);
        bytes.extend_from_slice(&crc.to_be_bytes());
    }
    bytes
}

/// A frame number in FLAC's UTF-8-like coding.
fn utf8_number(n: u32) -> Vec<u8> {
    match n {
        0..0x80 => vec![n as u8],
        0x80..0x800 => vec![0xC0 | (n >> 6) as u8, 0x80 | (n & 0x3F) as u8],
        0x800..0x1_0000 => vec![0xE0 | (n >> 12) as u8, 0x80 | (n >> 6 & 0x3F) as u8, 0x80 | (n & 0x3F) as u8],
        _ => panic!("frame number {n} needs more than three bytes"),
    }
}

fn crc8(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |mut crc, &b| {
        crc ^= b;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 { crc << 1 ^ 0x07 } else { crc << 1 };
        }
        crc
    })
}

fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |mut crc, &b| {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { crc << 1 ^ 0x8005 } else { crc << 1 };
        }
        crc
    })
}
