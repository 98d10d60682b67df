//! The real drivers against real kernel drivers, inside the test VM (`device/vm/run.sh` boots Debian's kernel
//! under qemu with vivid, snd-aloop and gpio-mockup and runs these with `--ignored`; on a machine without those
//! devices they have nothing to open). vivid's colour bars in three pixel formats, a recording through the ALSA
//! loopback sample for sample, an overrun from a stalled reader, a stream suspended while the system sleeps, a
//! camera disconnected and reopened, a button and an LED on a kernel GPIO chip, `lookout probe`, and the daemon
//! captioning vivid's frames, following the button and riding out a camera disconnect.

#![cfg(all(feature = "alsa", feature = "v4l2", feature = "gpio"))]

use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use alsa::pcm::{Access, Format, HwParams, PCM};
use alsa::{Direction, ValueOr};
use lookout_device::alsa_capture::AlsaMicrophone;
use lookout_device::button_led::{open_button, open_led, ButtonEvent, LedState};
use lookout_device::camera::{Camera, FrameFormat};
use lookout_device::gpio::{chip_lines, list_chips};
use lookout_device::microphone::Microphone;
use lookout_device::v4l2::V4l2Camera;
use lookout_device::ErrorKind;
use lookout_models::vision::image::RgbImage;
use lookout_models::vision::pixels::{convert_frame, PixelFormat};
use serde_json::Value;

const CAMERA: &str = "/dev/video0";
const LOOP_PLAY: &str = "hw:CARD=Loopback,DEV=0";
const LOOP_CAPTURE: &str = "hw:CARD=Loopback,DEV=1";

fn testdata() -> PathBuf {
    std::env::var_os("LOOKOUT_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/testdata"))
}

/// vivid's default pattern, 75% colour bars left to right, as full-range RGB.
const BARS: [[u8; 3]; 8] =
    [[191, 191, 191], [191, 191, 0], [0, 191, 191], [0, 191, 0], [191, 0, 191], [191, 0, 0], [0, 0, 191], [0, 0, 0]];

fn check_bars(image: &RgbImage, what: &str) {
    let y = image.height * 3 / 4;
    for (i, want) in BARS.iter().enumerate() {
        let x = (2 * i as u32 + 1) * image.width / 16;
        let got = image.pixel(x, y).unwrap();
        let off = got.iter().zip(want).map(|(g, w)| g.abs_diff(*w)).max().unwrap();
        assert!(off <= 16, "{what}: bar {i} at ({x}, {y}) is {got:?}, expected {want:?}");
    }
}

#[test]
#[ignore = "needs vivid: run by device/vm/run.sh"]
fn vivid_frames_show_the_colour_bars_in_three_formats_with_the_drivers_timestamps() {
    for (format, pixels) in [
        (FrameFormat::Yuyv, PixelFormat::Yuyv),
        (FrameFormat::Rgb24, PixelFormat::Rgb24),
        (FrameFormat::Nv12, PixelFormat::Nv12),
    ] {
        let mut camera = V4l2Camera::open_as(CAMERA, Some(format), 640, 480, 30, 4).unwrap();
        let n = camera.negotiated();
        assert_eq!((n.format, n.width, n.height), (format, 640, 480), "{format:?}");
        let mut image = RgbImage::default();
        let mut last: Option<(u64, Instant)> = None;
        for _ in 0..3 {
            let frame = camera.next_frame().unwrap();
            assert_eq!(frame.format, format);
            if let Some((sequence, at)) = last {
                assert!(frame.sequence > sequence && frame.captured_at > at, "sequence numbers and capture times grow");
            }
            last = Some((frame.sequence, frame.captured_at));
            convert_frame(pixels, frame.bytes, frame.width, frame.height, &mut image).unwrap();
        }
        // A frame read late was captured when the driver filled it, not when it was read.
        std::thread::sleep(Duration::from_millis(300));
        let age = camera.next_frame().unwrap().captured_at.elapsed();
        assert!(
            age > Duration::from_millis(100) && age < Duration::from_secs(1),
            "{format:?}: read 300 ms late, captured {age:?} ago"
        );
        check_bars(&image, &format!("{format:?}"));
    }
    let by_name = V4l2Camera::open("vivid", 640, 480, 30, 2).expect("open by card name");
    assert_eq!((by_name.negotiated().width, by_name.negotiated().height), (640, 480));
}

/// Plays `samples` into the loopback at 16 kHz mono, from another thread.
fn play(samples: Vec<i16>, repeat: usize) -> std::thread::JoinHandle<()> {
    let pcm = PCM::new(LOOP_PLAY, Direction::Playback, false).unwrap();
    {
        let hw = HwParams::any(&pcm).unwrap();
        hw.set_access(Access::RWInterleaved).unwrap();
        hw.set_format(Format::s16()).unwrap();
        hw.set_channels(1).unwrap();
        hw.set_rate(16_000, ValueOr::Nearest).unwrap();
        pcm.hw_params(&hw).unwrap();
    }
    std::thread::spawn(move || {
        let io = pcm.io_i16().unwrap();
        for _ in 0..repeat {
            for block in samples.chunks(1024) {
                if io.writei(block).is_err() {
                    let _ = pcm.prepare();
                }
            }
        }
        let _ = pcm.drain();
    })
}

fn recording() -> Vec<i16> {
    let bytes = std::fs::read(testdata().join("speech/how_many_people.wav")).unwrap();
    let at = bytes.windows(4).position(|w| w == b"data").unwrap();
    let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
    bytes[at + 8..at + 8 + len].chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect()
}

#[test]
#[ignore = "needs snd-aloop: run by device/vm/run.sh"]
fn a_recording_played_into_the_loopback_is_captured_sample_for_sample() {
    let source = recording();
    let mut mic = AlsaMicrophone::open(LOOP_CAPTURE, 16_000, 512).unwrap();
    assert_eq!(mic.rate(), 16_000);
    let player = play(source.clone(), 1);
    let mut captured = Vec::new();
    let mut chunk = [0.0f32; 512];
    while captured.len() < source.len() + 16_000 {
        mic.read(&mut chunk).unwrap();
        captured.extend(chunk.iter().map(|&s| (s * 32768.0).round() as i16));
    }
    player.join().unwrap();
    // The lag with the largest cross-correlation over the first second of speech.
    let probe = &source[..16_000];
    let lag = (0..captured.len() - source.len())
        .max_by_key(|&lag| probe.iter().zip(&captured[lag..]).map(|(a, b)| i64::from(*a) * i64::from(*b)).sum::<i64>())
        .unwrap();
    let aligned = &captured[lag..lag + source.len()];
    let differing = aligned.iter().zip(&source).filter(|(a, b)| a != b).count();
    assert_eq!(differing, 0, "lag {lag}: {differing} of {} samples differ", source.len());
    assert_eq!(mic.overruns, 0);
}

#[test]
#[ignore = "needs snd-aloop: run by device/vm/run.sh"]
fn a_stalled_reader_gets_an_overrun_and_the_stream_goes_on() {
    let mut mic = AlsaMicrophone::open(LOOP_CAPTURE, 16_000, 512).unwrap();
    let player = play(recording(), 3);
    let mut chunk = [0.0f32; 512];
    mic.read(&mut chunk).unwrap();
    // The capture buffer holds 16 periods, half a second; stall for two.
    std::thread::sleep(Duration::from_secs(2));
    let mut overrun = None;
    for _ in 0..4 {
        if let Err(e) = mic.read(&mut chunk) {
            overrun = Some(e);
            break;
        }
    }
    let overrun = overrun.expect("an overrun after stalling");
    assert_eq!(overrun.kind, ErrorKind::Overrun, "{overrun}");
    assert_eq!(mic.overruns, 1);
    mic.read(&mut chunk).expect("reading goes on after the overrun");
    player.join().unwrap();
}

#[test]
#[ignore = "needs snd-aloop and suspend-to-idle: run by device/vm/run.sh"]
fn a_capture_stream_comes_back_after_the_system_sleeps() {
    let mut mic = AlsaMicrophone::open(LOOP_CAPTURE, 16_000, 512).unwrap();
    let mut chunk = [0.0f32; 512];
    mic.read(&mut chunk).unwrap();
    // A system suspend that stops after suspending the devices (the kernel's `pm_test` mode, which resumes them 5 s
    // later: an emulated machine has nothing to wake it from a real sleep). ALSA suspends the stream with the card.
    std::fs::write("/sys/power/pm_test", "devices").expect("pm_test");
    let slept = std::fs::write("/sys/power/state", "freeze");
    std::fs::write("/sys/power/pm_test", "none").unwrap();
    slept.expect("suspend to idle");
    for _ in 0..8 {
        mic.read(&mut chunk).expect("reading goes on after the system wakes");
    }
    assert_eq!((mic.suspends, mic.overruns), (1, 0), "one suspend seen and recovered, no overrun");
}

/// `VIDIOC_S_CTRL` with vivid's "Disconnect" button (`VIVID_CID_DISCONNECT`).
fn press_vivid_disconnect() {
    #[repr(C)]
    struct Control {
        id: u32,
        value: i32,
    }
    const VIDIOC_S_CTRL: libc::c_ulong = 0xC008_561C;
    const VIVID_CID_DISCONNECT: u32 = 0x00f0_f000 + 65;
    let device = std::fs::OpenOptions::new().read(true).write(true).open(CAMERA).unwrap();
    let mut control = Control { id: VIVID_CID_DISCONNECT, value: 0 };
    // SAFETY: the ioctl reads and writes one `v4l2_control`, which `control` is, for the duration of the call.
    let result = unsafe {
        libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&device), VIDIOC_S_CTRL as _, &mut control as *mut Control)
    };
    assert_eq!(result, 0, "pressing Disconnect: {}", std::io::Error::last_os_error());
}

#[test]
#[ignore = "needs vivid: run by device/vm/run.sh"]
fn a_disconnected_camera_reports_it_and_reopens_when_the_device_returns() {
    let mut camera = V4l2Camera::open(CAMERA, 640, 480, 30, 4).unwrap();
    let first = camera.next_frame().unwrap().sequence;
    press_vivid_disconnect();
    let error = (0..10).find_map(|_| camera.next_frame().err()).expect("an error after the disconnect");
    assert_eq!(error.kind, ErrorKind::Disconnected, "{error}");
    // vivid comes back once every descriptor of the disconnected device is closed, as a replugged USB camera
    // does; `reconnect` closes the old ones before it opens the device again.
    let started = Instant::now();
    while let Err(e) = camera.reconnect() {
        assert!(started.elapsed() < Duration::from_secs(10), "not back after 10 s: {e}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let later = camera.next_frame().expect("frames again after reconnecting").sequence;
    assert!(later > first, "the driver starts counting again; the camera's numbers go on: {first} then {later}");
    let missing = V4l2Camera::open("/dev/video9", 640, 480, 30, 4).err().expect("no /dev/video9");
    assert_eq!(missing.kind, ErrorKind::NotFound, "{missing}");
}

/// The gpio-mockup chip's device and its debugfs directory, where writing a line's file sets the level an input
/// reads and reading it gives the line's value.
fn mockup_chip() -> (PathBuf, PathBuf) {
    let chip = list_chips()
        .into_iter()
        .filter_map(Result::ok)
        .find(|c| c.label == "gpio-mockup-A")
        .expect("gpio-mockup loaded");
    let debugfs = PathBuf::from("/sys/kernel/debug/gpio-mockup").join(chip.path.file_name().unwrap());
    (chip.path, debugfs)
}

fn set_level(debugfs: &std::path::Path, line: u32, high: bool) {
    std::fs::write(debugfs.join(line.to_string()), if high { "1" } else { "0" }).unwrap();
}

fn level(debugfs: &std::path::Path, line: u32) -> bool {
    std::fs::read_to_string(debugfs.join(line.to_string())).unwrap().trim() == "1"
}

#[test]
#[ignore = "needs gpio-mockup: run by device/vm/run.sh"]
fn a_button_and_an_led_on_a_kernel_gpio_chip() {
    let (chip, lines) = mockup_chip();
    set_level(&lines, 0, false);
    let mut button = open_button(&chip, 0, false, 3).unwrap();
    for _ in 0..5 {
        assert_eq!(button.poll().unwrap(), None, "released and quiet");
    }
    // A bounce: high for two reads, low again, then high for good.
    set_level(&lines, 0, true);
    assert_eq!((button.poll().unwrap(), button.poll().unwrap()), (None, None));
    set_level(&lines, 0, false);
    assert_eq!(button.poll().unwrap(), None);
    set_level(&lines, 0, true);
    assert_eq!((button.poll().unwrap(), button.poll().unwrap()), (None, None));
    assert_eq!(button.poll().unwrap(), Some(ButtonEvent::Pressed));
    assert!(button.is_pressed());
    set_level(&lines, 0, false);
    let events: Vec<_> = (0..3).map(|_| button.poll().unwrap()).collect();
    assert_eq!(events, [None, None, Some(ButtonEvent::Released)]);

    // An active-low button (to ground, with a pull-up) is pressed when the line reads low.
    set_level(&lines, 2, true);
    let mut to_ground = open_button(&chip, 2, true, 1).unwrap();
    assert_eq!(to_ground.poll().unwrap(), None);
    set_level(&lines, 2, false);
    assert_eq!(to_ground.poll().unwrap(), Some(ButtonEvent::Pressed));

    let mut led = open_led(&chip, 1).unwrap();
    assert!(!level(&lines, 1), "the LED starts off");
    led.show(LedState::Listening, 0).unwrap();
    assert!(level(&lines, 1), "listening: on");
    led.show(LedState::Thinking, 1000).unwrap();
    assert!(level(&lines, 1), "thinking: on for the first 125 ms");
    led.show(LedState::Thinking, 1130).unwrap();
    assert!(!level(&lines, 1), "thinking: then off");
    led.show(LedState::Listening, 1200).unwrap();
    led.off().unwrap();
    assert!(!level(&lines, 1), "off");

    // The kernel reports who holds which line, and refuses a second request for a held one.
    let info = chip_lines(&chip).unwrap();
    assert_eq!(info.len(), 8);
    assert_eq!(
        (info[0].name.as_str(), info[0].consumer.as_str(), info[0].used, info[0].output),
        ("gpio-mockup-A-0", "lookout-button", true, false)
    );
    assert_eq!((info[1].consumer.as_str(), info[1].output), ("lookout-led", true));
    assert!(!info[3].used && info[3].consumer.is_empty(), "{:?}", info[3]);
    let busy = open_button(&chip, 0, false, 3).err().expect("line 0 is already held");
    assert!(busy.to_string().contains("line 0"), "{busy}");
    assert!(open_led(&chip, 99).is_err(), "chip has 8 lines");
    let missing = open_led(std::path::Path::new("/dev/gpiochip9"), 1).err().expect("no gpiochip9");
    assert_eq!(missing.kind, ErrorKind::NotFound, "{missing}");
}

fn lookout() -> Command {
    Command::new(std::env::var_os("LOOKOUT_BIN").expect("LOOKOUT_BIN names the lookout binary"))
}

#[test]
#[ignore = "needs vivid, snd-aloop and gpio-mockup: run by device/vm/run.sh"]
fn probe_lists_vivid_the_loopback_and_the_gpio_chip() {
    let out = lookout().args(["probe", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let probe: Value = serde_json::from_slice(&out.stdout).unwrap();
    let vivid = probe["cameras"].as_array().unwrap().iter().find(|c| c["driver"] == "vivid").expect("vivid listed");
    let formats: Vec<&str> =
        vivid["formats"].as_array().unwrap().iter().map(|f| f["fourcc"].as_str().unwrap()).collect();
    assert!(formats.contains(&"YUYV") && formats.contains(&"RGB3") && formats.contains(&"NV12"), "{formats:?}");
    let loopback =
        probe["microphones"].as_array().unwrap().iter().find(|m| m["card"] == "Loopback").expect("loopback listed");
    let rates = &loopback["rates"];
    assert!(rates[0].as_u64().unwrap() <= 16_000 && rates[1].as_u64().unwrap() >= 48_000, "{loopback}");
    let (chip, _) = mockup_chip();
    let gpio = probe["gpio"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["path"] == chip.to_str().unwrap())
        .expect("gpio-mockup listed");
    assert_eq!((gpio["label"].as_str(), gpio["lines"].as_u64()), (Some("gpio-mockup-A"), Some(8)), "{gpio}");
    assert_eq!(gpio["line_info"][7]["name"], "gpio-mockup-A-7", "{gpio}");
    let table = lookout().arg("probe").output().unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("/dev/video0") && text.contains("Loopback") && text.contains("gpio-mockup-A-7"), "{text}");
}

/// The daemon under test; killed if the test fails before stopping it, so the camera is free for the next test.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A daemon on vivid's camera with `extra` appended to its configuration: the process, its event lines and the
/// HTTP port it announced. Speech, OCR and the decoder are off, so only the detector runs under emulation.
fn start_daemon(name: &str, extra: &str) -> (Daemon, impl Iterator<Item = Value>, u16) {
    let dir = std::env::temp_dir().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("lookout.toml");
    std::fs::write(
        &config,
        format!(
            "board = \"x86-dev\"\n[camera]\ndevice = \"/dev/video0\"\nwidth = 640\nheight = 480\nfps = 2\n\
             [models]\nspeech = \"off\"\nocr = \"off\"\ndecoder = \"off\"\n[http]\nlisten = \"127.0.0.1:0\"\n{extra}"
        ),
    )
    .unwrap();
    let mut daemon =
        Daemon(lookout().args(["serve", "--config", config.to_str().unwrap()]).stdout(Stdio::piped()).spawn().unwrap());
    let mut events = std::io::BufReader::new(daemon.0.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .map(|line| serde_json::from_str::<Value>(&line).unwrap());
    let mut early = Vec::new();
    let listening = events.by_ref().find(|e| e["event"] == "listening" || (early.push(e.clone()), false).1);
    let listening = listening.expect("a listening event");
    let port = listening["address"].as_str().and_then(|a| a.rsplit(':').next()).and_then(|p| p.parse().ok());
    (daemon, early.into_iter().chain(events), port.expect("a port in the listening event"))
}

/// One request on its own connection: the status line's code and the body.
fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    (status, body.to_string())
}

/// Stops the daemon with SIGTERM and checks that it exits cleanly, which releases the camera.
fn stop_daemon(mut daemon: Daemon) {
    Command::new("kill").args(["-TERM", &daemon.0.id().to_string()]).status().unwrap();
    let status = daemon.0.wait().unwrap();
    assert!(status.success(), "{status}");
}

/// The detector runs under emulation here: a caption can take minutes on a busy machine.
const CAPTION_WAIT: Duration = Duration::from_secs(600);

/// The next event named `name` within `CAPTION_WAIT`, passing over the others.
fn next_event(events: &mut impl Iterator<Item = Value>, name: &str) -> Value {
    let started = Instant::now();
    events
        .take_while(|_| started.elapsed() < CAPTION_WAIT)
        .find(|e| e["event"] == name)
        .unwrap_or_else(|| panic!("no {name} event"))
}

#[test]
#[ignore = "needs vivid and the detector: run by device/vm/run.sh"]
fn the_daemon_captions_vivid_frames_and_follows_the_button() {
    let (chip, lines) = mockup_chip();
    set_level(&lines, 4, false);
    let gpio = format!("[gpio]\nchip = \"{}\"\nbutton = 4\nled = 5\nbutton_active_low = false\n", chip.display());
    let (daemon, mut events, port) = start_daemon("lookout-vm-daemon", &gpio);
    let caption = next_event(&mut events, "caption");
    assert!(!caption["text"].as_str().unwrap().is_empty());
    // The button holds push-to-talk, and the LED stays on while it is held.
    set_level(&lines, 4, true);
    let pressed = next_event(&mut events, "push_to_talk");
    assert_eq!((pressed["held"].as_bool(), pressed["from"].as_str()), (Some(true), Some("button")), "{pressed}");
    let lit_for_a_second = (0..10).all(|_| {
        std::thread::sleep(Duration::from_millis(100));
        level(&lines, 5)
    });
    assert!(lit_for_a_second, "the LED is steady while the button is held");
    set_level(&lines, 4, false);
    let released = next_event(&mut events, "push_to_talk");
    assert_eq!(released["held"].as_bool(), Some(false), "{released}");
    let (status, body) = http_get(port, "/v1/scene");
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((body["width"].as_u64(), body["height"].as_u64()), (Some(640), Some(480)), "{body}");
    assert_eq!(body["caption"]["text"], caption["text"]);
    stop_daemon(daemon);
}

/// A metric's value from the `/metrics` text.
fn metric(port: u16, name: &str) -> f64 {
    let (status, text) = http_get(port, "/metrics");
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[test]
#[ignore = "needs vivid and the detector: run by device/vm/run.sh"]
fn the_daemon_rides_out_a_camera_disconnect_during_an_analysis() {
    // Every frame is analysed, so the detector is busy on one (seconds under emulation) when the camera goes.
    let (daemon, mut events, port) =
        start_daemon("lookout-vm-disconnect", "[scene_change]\nskip_unchanged = false\n[caption]\ninterval_s = 1\n");
    next_event(&mut events, "caption");
    let before: Value = serde_json::from_str(&http_get(port, "/v1/scene").1).unwrap();
    let (processed, captured) =
        (metric(port, "lookout_frames_processed_total"), metric(port, "lookout_frames_captured_total"));
    press_vivid_disconnect();
    let gone = next_event(&mut events, "camera_disconnected");
    assert_eq!(gone["camera"], CAMERA, "{gone}");
    let back = next_event(&mut events, "camera_reconnected");
    assert!(back["attempts"].as_u64().is_some_and(|n| n >= 1), "{back}");
    // The analysis under way when the camera went is finished and published, and frames taken after the
    // reconnection are analysed in turn: a later caption, of a later frame, with the daemon healthy throughout.
    let caption = next_event(&mut events, "caption");
    assert!(!caption["text"].as_str().unwrap().is_empty(), "{caption}");
    let started = Instant::now();
    while metric(port, "lookout_frames_processed_total") < processed + 2.0 {
        assert!(started.elapsed() < CAPTION_WAIT, "no frame analysed after the reconnection");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(metric(port, "lookout_frames_captured_total") > captured);
    assert!(metric(port, "lookout_camera_errors_total") >= 1.0);
    let (status, health) = http_get(port, "/healthz");
    assert_eq!(status, 200, "{health}");
    let after: Value = serde_json::from_str(&http_get(port, "/v1/scene").1).unwrap();
    let frame = |scene: &Value| scene["checked_frame"].as_u64().or(scene["frame"].as_u64()).unwrap();
    assert!(frame(&after) > frame(&before), "frame numbers go on across the reconnection: {before} then {after}");
    stop_daemon(daemon);
}
