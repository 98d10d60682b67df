//! The ALSA microphone on the host, through an ALSA `file` PCM that serves a real recording: the samples read are
//! the recording's, sample for sample; a device that does not exist is reported as not found.

#![cfg(feature = "alsa")]

use std::path::PathBuf;

use lookout_device::alsa_capture::AlsaMicrophone;
use lookout_device::microphone::Microphone;
use lookout_device::ErrorKind;

/// The 16-bit samples of a PCM WAV file's `data` chunk.
fn wav_samples(bytes: &[u8]) -> Vec<i16> {
    assert_eq!(&bytes[..4], b"RIFF");
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        if id == b"fmt " {
            let bits = u16::from_le_bytes(bytes[at + 22..at + 24].try_into().unwrap());
            assert_eq!(bits, 16, "the recording is 16-bit PCM");
        }
        if id == b"data" {
            return bytes[at + 8..at + 8 + len].chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
        }
        at += 8 + len + len % 2;
    }
    panic!("no data chunk");
}

#[test]
fn a_file_pcm_delivers_the_recording_sample_for_sample() {
    let testdata = std::env::var_os("LOOKOUT_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/testdata"));
    let recording = std::fs::read(testdata.join("speech/how_many_people.wav"))
        .expect("test speech (run models/prepare/prepare.sh)");
    let samples = wav_samples(&recording);
    assert!(samples.len() > 16_000);

    let dir = std::env::temp_dir().join(format!("lookout-alsa-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let raw = dir.join("speech.raw");
    std::fs::write(&raw, samples.iter().flat_map(|s| s.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let conf = dir.join("asound.conf");
    std::fs::write(
        &conf,
        format!(
            "pcm.lookout_filecap {{ type file slave.pcm \"lookout_null\" file \"/dev/null\" infile \"{}\" format \"raw\" }}\npcm.lookout_null {{ type null }}\n",
            raw.display()
        ),
    )
    .unwrap();
    // Read by alsa-lib when the first PCM is opened; nothing else in this test binary uses ALSA.
    std::env::set_var("ALSA_CONFIG_PATH", format!("/usr/share/alsa/alsa.conf:{}", conf.display()));

    let mut mic = AlsaMicrophone::open("lookout_filecap", 16_000, 512).unwrap();
    assert_eq!((mic.rate(), mic.channels()), (16_000, 1));
    let mut captured = Vec::new();
    let mut chunk = [0.0f32; 512];
    while captured.len() < samples.len() {
        mic.read(&mut chunk).unwrap();
        captured.extend_from_slice(&chunk);
    }
    for (i, (got, want)) in captured.iter().zip(&samples).enumerate() {
        assert_eq!(*got, f32::from(*want) / 32768.0, "sample {i}");
    }
    assert_eq!(mic.overruns, 0);

    let missing = AlsaMicrophone::open("hw:CARD=NoSuchCard,DEV=0", 16_000, 512).err().expect("no such card");
    assert_eq!(missing.kind, ErrorKind::NotFound, "{missing}");
    std::fs::remove_dir_all(&dir).unwrap();
}
