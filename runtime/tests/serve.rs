//! `lookout serve` end to end on file sources with the real default models: the scene and its caption over HTTP,
//! a spoken question heard by the VAD, questions posted as JSON and as WAV, bad requests refused with 4xx while
//! the daemon keeps serving, systemd notifications (READY, WATCHDOG, STOPPING) on a test socket, SIGHUP reloads,
//! SIGTERM within 2 s; configurations the daemon must refuse with exit code 78, and absent devices with exit 1;
//! Home Assistant's two ways in, with real clients: the Wyoming speech-to-text server, and MQTT discovery and
//! states through a mosquitto broker.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use common::{lookout, normalize, patience, test_machine_board, testdata_dir, Scratch};
use serde_json::Value;

#[path = "../../models/tests/support/silent_flac.rs"]
mod silent_flac;

const TOKEN: &str = "test-token-0123456789";
/// The tests' `WatchdogSec`, and so the daemon's stall limit (stretched under emulation, where one decoder prefill
/// keeps the pipeline from beating for a minute).
const WATCHDOG: Duration = Duration::from_secs(3);

fn temp_dir(name: &str) -> Scratch {
    Scratch::new(&format!("serve-{name}"))
}

fn config_text(frames: &Path, wav: &Path, extra: &str) -> String {
    // The daemon's own deadline for an answer (120 s by default) stretches with the tests' (at most 3600 s), and so
    // does the longest a still scene goes unanalysed (10 s by default): under emulation one analysis takes longer.
    // `[http]` comes last: tests append keys of theirs to it.
    let answer_timeout_s = patience(Duration::from_secs(120)).as_secs().min(3600);
    let max_interval_s = patience(Duration::from_secs(10)).as_secs().min(3600);
    format!(
        "{}\n{extra}\n[camera]\ndevice = \"dir:{}\"\n[microphone]\ndevice = \"wav:{}\"\n\
         [scene_change]\nmax_interval_s = {max_interval_s}\n\
         [http]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\nheader_timeout_ms = 1000\ntimeout_ms = 1500\nmax_body_kib = 1024\nanswer_timeout_s = {answer_timeout_s}\n",
        test_machine_board(),
        frames.display(),
        wav.display()
    )
}

/// A response: status, head and body.
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head
            .lines()
            .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim()))
    }
}

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(patience(Duration::from_secs(120)))).unwrap();
    stream
}

/// Reads one response: its head, then the body by Content-Length, chunked, or to the end of the connection. None
/// when the connection closes before a whole head arrived.
fn read_response(stream: &mut TcpStream) -> Option<Reply> {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut more = |raw: &mut Vec<u8>| match stream.read(&mut chunk) {
        Ok(n) if n > 0 => {
            raw.extend_from_slice(&chunk[..n]);
            true
        }
        _ => false,
    };
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if !more(&mut raw) {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status in {head:?}"));
    let mut reply = Reply { status, head, body: String::new() };
    let mut body = raw.split_off(head_end);
    if let Some(length) = reply.header("content-length").map(|l| l.parse::<usize>().unwrap()) {
        while body.len() < length && more(&mut body) {}
        body.truncate(length);
    } else if reply.header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        while !body.ends_with(b"0\r\n\r\n") && more(&mut body) {}
        body = dechunk(&body);
    } else {
        while more(&mut body) {}
    }
    reply.body = String::from_utf8_lossy(&body).into_owned();
    Some(reply)
}

fn dechunk(mut chunked: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = chunked.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&chunked[..line_end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&chunked[line_end + 2..line_end + 2 + size]);
        chunked = &chunked[line_end + 4 + size..];
    }
    out
}

/// Sends raw request bytes on a new connection and reads one response.
fn send(port: u16, request: &[u8]) -> Reply {
    let mut stream = connect(port);
    stream.write_all(request).unwrap();
    read_response(&mut stream).unwrap_or_else(|| panic!("no response to {:?}", String::from_utf8_lossy(request)))
}

fn request(port: u16, method: &str, path: &str, content_type: Option<&str>, body: &[u8]) -> Reply {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = content_type {
        head.push_str(&format!("Content-Type: {t}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    send(port, &bytes)
}

/// The daemon as a child process, with its events and its systemd notifications collected.
struct Daemon {
    child: Child,
    events: Receiver<Value>,
    notifications: Receiver<String>,
    seen: Vec<Value>,
}

impl Daemon {
    fn start(config: &Path, dir: &Path) -> Daemon {
        Daemon::start_with_watchdog(config, dir, patience(WATCHDOG))
    }

    /// Started as systemd would with `WatchdogSec` set to `watchdog`, which is also the daemon's stall limit.
    fn start_with_watchdog(config: &Path, dir: &Path, watchdog: Duration) -> Daemon {
        let socket_path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&socket_path);
        let socket = UnixDatagram::bind(&socket_path).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_lookout"))
            .args(["serve", "--config", config.to_str().unwrap()])
            .env("NOTIFY_SOCKET", &socket_path)
            .env("WATCHDOG_USEC", watchdog.as_micros().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (send_event, events) = channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let event: Value =
                    serde_json::from_str(&line).unwrap_or_else(|e| panic!("event is not JSON ({e}): {line}"));
                if send_event.send(event).is_err() {
                    break;
                }
            }
        });
        let (send_note, notifications) = channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                if send_note.send(String::from_utf8_lossy(&buf[..n]).into_owned()).is_err() {
                    break;
                }
            }
        });
        Daemon { child, events, notifications, seen: Vec::new() }
    }

    /// The port the daemon listens on, once its `listening` event has come.
    fn port(&mut self) -> u16 {
        let listening = self.event("listening", patience(Duration::from_secs(120)), event_is("listening"));
        listening["address"].as_str().unwrap().rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Waits for the first event (new or already seen) that `matches`.
    fn event(&mut self, what: &str, within: Duration, matches: impl Fn(&Value) -> bool) -> Value {
        self.event_after(0, what, within, matches)
    }

    /// Waits for the first event that `matches` among those after the first `seen` ones.
    fn event_after(&mut self, seen: usize, what: &str, within: Duration, matches: impl Fn(&Value) -> bool) -> Value {
        if let Some(e) = self.seen.iter().skip(seen).find(|e| matches(e)) {
            return e.clone();
        }
        let deadline = Instant::now() + within;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.events.recv_timeout(left) {
                Ok(e) => {
                    self.seen.push(e.clone());
                    if matches(&e) {
                        return e;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("no {what} event within {within:?}; seen: {:#?}", self.seen);
    }

    fn notification(&self, prefix: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.notifications.recv_timeout(left) {
                Ok(n) if n.starts_with(prefix) => return n,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("no {prefix} notification within {within:?}");
    }

    /// SIGTERM: STOPPING=1 arrives and the process exits with 0, both within `limit` (stretched by [`patience`]).
    fn terminate_within(&mut self, limit: Duration) {
        let limit = patience(limit);
        let stopping = Instant::now();
        self.signal("TERM");
        self.notification("STOPPING=1", limit);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(stopping.elapsed() < limit, "still running {limit:?} after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{status}");
    }

    fn signal(&self, name: &str) {
        let signal = match name {
            "TERM" => libc::SIGTERM,
            "HUP" => libc::SIGHUP,
            "USR1" => libc::SIGUSR1,
            other => panic!("no signal {other} in this test"),
        };
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) with the pid of our own child and a valid signal number touches no memory of ours.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill -{name}: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The daemon's peak resident set so far (VmHWM).
fn peak_rss_kib(daemon: &Daemon) -> i64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.child.id())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A camera folder in `dir` that shows kite.jpg (a beach with kites and people).
fn kite_camera(dir: &Path) -> std::path::PathBuf {
    let frames = dir.join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    std::fs::copy(testdata_dir().join("vision/photos/kite.jpg"), frames.join("kite.jpg")).unwrap();
    frames
}

fn event_is(kind: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["event"] == kind
}

#[test]
fn the_daemon_captions_answers_refuses_bad_requests_and_talks_to_systemd() {
    let dir = temp_dir("daemon");
    let frames = kite_camera(&dir);
    let photos = testdata_dir().join("vision/photos");
    let speech = testdata_dir().join("speech");
    let config = dir.join("lookout.toml");
    std::fs::write(&config, config_text(&frames, &speech.join("how_many_people.wav"), "")).unwrap();

    let started = Instant::now();
    let mut daemon = Daemon::start(&config, &dir);
    let port = daemon.port();
    daemon.event("ready", patience(Duration::from_secs(10)), event_is("ready"));
    assert!(daemon.notification("READY=1", patience(Duration::from_secs(10))).contains("STATUS=serving on"));
    daemon.notification("WATCHDOG=1", patience(Duration::from_secs(5)));

    // The caption of the photo the camera shows, published without being asked.
    let caption = daemon.event("caption", patience(Duration::from_secs(60)), event_is("caption"));
    let scene = request(port, "GET", "/v1/scene", None, b"");
    assert_eq!(scene.status, 200, "{}", scene.body);
    let scene = scene.json();
    assert!(
        scene["counts"]["kite"].as_u64().unwrap() >= 2 && scene["counts"]["person"].as_u64().unwrap() >= 2,
        "{scene}"
    );
    // Every object published was confirmed by the tracker over at least three frames of the camera.
    let objects = scene["objects"].as_array().unwrap();
    assert!(objects.iter().all(|o| o["track"]["seen_frames"].as_u64().unwrap() >= 3), "{scene}");
    let text = scene["caption"]["text"].as_str().unwrap().to_lowercase();
    assert_eq!(scene["caption"]["text"], caption["text"]);
    assert!(text.contains("kite") && (text.contains("people") || text.contains("person")), "{text}");
    // The scene is of the captioned frame or a later one, read by this daemon (how old it is depends on the load).
    assert!(scene["frame"].as_u64().unwrap() >= scene["caption"]["frame"].as_u64().unwrap(), "{scene}");
    assert!(
        scene["age_s"].as_f64().unwrap() < started.elapsed().as_secs_f64(),
        "the scene is of a frame read by this daemon: {scene}"
    );

    // The question played into the microphone, found by the VAD and answered.
    let heard = daemon
        .event("voice answer", patience(Duration::from_secs(60)), |e| e["event"] == "answer" && e["origin"] == "voice");
    assert_eq!(normalize(heard["question"].as_str().unwrap()), "how many people are outside");
    let people = scene["counts"]["person"].as_u64().unwrap().to_string();
    assert!(heard["answer"].as_str().unwrap().contains(&people), "{heard}");

    // Push-to-talk (SIGUSR1 presses, SIGUSR1 releases) over the silence after the recording: heard, nothing said.
    daemon.signal("USR1");
    daemon.event("push-to-talk press", patience(Duration::from_secs(5)), |e| {
        e["event"] == "push_to_talk" && e["held"] == true
    });
    std::thread::sleep(Duration::from_millis(1500));
    daemon.signal("USR1");
    let unanswered = daemon.event("push-to-talk utterance", patience(Duration::from_secs(60)), event_is("unanswered"));
    assert_eq!(unanswered["reason"], "no speech found in the audio", "{unanswered}");
    let heard: Vec<f64> =
        daemon.seen.iter().filter(|e| e["event"] == "heard").map(|e| e["seconds"].as_f64().unwrap()).collect();
    assert!(heard.len() == 2 && heard[1] >= 1.4, "the second utterance spans the press: {heard:?}");

    // A spoken question posted as WAV.
    let wav = std::fs::read(speech.join("what_do_you_see.wav")).unwrap();
    let answer = request(port, "POST", "/v1/ask", Some("audio/wav"), &wav);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let answer = answer.json();
    assert_eq!(normalize(answer["transcript"].as_str().unwrap()), "what do you see");
    assert!(answer["answer"].as_str().unwrap().to_lowercase().contains("kite"), "{answer}");

    // A typed question.
    let answer =
        request(port, "POST", "/v1/ask", Some("application/json"), br#"{"question": "How many people are there?"}"#);
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.json()["answer"].as_str().unwrap().contains(&people), "{}", answer.body);

    // A FLAC bomb (under 64 KB that expand to 68 minutes of 48 kHz stereo) stops at the microphone ring's 30 s,
    // without raising the daemon's peak memory.
    let peak_before = peak_rss_kib(&daemon);
    let bomb = silent_flac::silent_flac(48_000, 2, 3_000, 0);
    let refused = request(port, "POST", "/v1/ask", Some("audio/flac"), &bomb);
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body.contains("audio runs longer than the limit of 30 s"), "{}", refused.body);
    let grew_mib = (peak_rss_kib(&daemon) - peak_before) / 1024;
    assert!(grew_mib < 32, "decoding the bomb raised the peak by {grew_mib} MiB");

    // Bad requests: each refused with its 4xx, and the daemon keeps serving.
    let not_wav = std::fs::read(photos.join("dog.jpg")).unwrap();
    let huge = format!("POST /v1/ask HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: audio/wav\r\nContent-Length: {}\r\n\r\n", 64 << 20);
    let cases: Vec<(&str, Reply, u16)> = vec![
        ("malformed JSON", request(port, "POST", "/v1/ask", Some("application/json"), b"{\"question\": "), 400),
        (
            "unknown field",
            request(port, "POST", "/v1/ask", Some("application/json"), br#"{"question": "hi", "x": 1}"#),
            400,
        ),
        ("empty question", request(port, "POST", "/v1/ask", Some("application/json"), br#"{"question": "  "}"#), 400),
        ("wrong content type", request(port, "POST", "/v1/ask", Some("text/plain"), b"What do you see?"), 415),
        ("no content type", request(port, "POST", "/v1/ask", None, b"What do you see?"), 415),
        ("non-WAV audio", request(port, "POST", "/v1/ask", Some("audio/wav"), &not_wav), 400),
        ("oversized body", send(port, huge.as_bytes()), 413),
        (
            "slow body",
            send(port, format!("POST /v1/ask HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"ques").as_bytes()),
            408,
        ),
        ("no token", send(port, b"GET /v1/scene HTTP/1.1\r\n\r\n"), 401),
        ("wrong method", request(port, "GET", "/v1/ask", None, b""), 405),
        ("unknown path", request(port, "GET", "/v2/everything", None, b""), 404),
    ];
    for (what, reply, status) in &cases {
        assert_eq!(reply.status, *status, "{what}: {}", reply.body);
        assert!(reply.json()["error"].as_str().is_some_and(|e| !e.is_empty()), "{what}: {}", reply.body);
    }
    // What is not HTTP gets a bare 400 from the HTTP layer; headers that never end are cut off after the header
    // timeout, without an answer.
    assert_eq!(send(port, b"\x16\x03\x01 not http\r\n\r\n").status, 400);
    let mut slow = connect(port);
    slow.write_all(b"POST /v1/ask HTTP/1.1\r\nContent-").unwrap();
    assert!(read_response(&mut slow).is_none(), "a request whose headers never end is closed");
    let health = send(port, b"GET /healthz HTTP/1.1\r\n\r\n");
    assert_eq!((health.status, health.json()["status"].as_str()), (200, Some("ok")), "{}", health.body);

    let metrics = request(port, "GET", "/metrics", None, b"");
    assert_eq!(metrics.status, 200);
    let value = |name: &str| -> f64 {
        let line = metrics
            .body
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(value("lookout_frames_processed_total") >= 1.0);
    // The camera shows one photo: frames after the first are too like it to analyse, and keep its scene, which
    // says so (the frame it was analysed on, and the newest one it held for).
    assert!(value("lookout_frames_skipped_unchanged_total") >= 1.0);
    // (Right after the still scene's periodic analysis, no frame has been checked against it yet.)
    let mut scene = Value::Null;
    let checked_by = Instant::now() + patience(Duration::from_secs(5));
    while Instant::now() < checked_by {
        scene = request(port, "GET", "/v1/scene", None, b"").json();
        if scene["checked_frame"].is_u64() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (analysed, checked) = (scene["frame"].as_u64().unwrap(), scene["checked_frame"].as_u64().unwrap());
    assert!(checked > analysed && scene["checked_age_s"].as_f64() <= scene["age_s"].as_f64(), "{scene}");
    assert!(value("lookout_answers_total") >= 3.0);
    assert!(value("lookout_http_client_errors_total") >= cases.len() as f64);
    assert!(value("lookout_resident_memory_bytes") > 100e6);
    assert!(metrics.body.contains("lookout_stage_latency_seconds_count{stage=\"vision\"}"));

    // SIGHUP: a broken configuration is refused and the old one keeps running; a good one is taken.
    std::fs::write(&config, format!("{}\n[camera]\nfps = 500\n", test_machine_board())).unwrap();
    daemon.signal("HUP");
    let failed = daemon.event("reload_failed", patience(Duration::from_secs(10)), event_is("reload_failed"));
    assert!(failed["error"].as_str().unwrap().contains("camera.fps"), "{failed}");
    assert_eq!(send(port, b"GET /healthz HTTP/1.1\r\n\r\n").status, 200);
    // A valid configuration whose camera cannot be opened: the previous configuration starts again and serves.
    let missing = dir.join("no-such-frames");
    std::fs::write(&config, config_text(&missing, &speech.join("how_many_people.wav"), "")).unwrap();
    while daemon.notifications.try_recv().is_ok() {}
    daemon.signal("HUP");
    let failed = daemon.event("reload_failed at the camera", patience(Duration::from_secs(60)), |e| {
        e["event"] == "reload_failed" && e["error"].as_str().is_some_and(|e| e.contains("no-such-frames"))
    });
    assert_eq!(failed["running"], "the previous configuration", "{failed}");
    // The first reload's READY=1 may come after its event, past the drain above: it names camera.fps, not this.
    let notice = loop {
        let notice = daemon.notification("READY=1", patience(Duration::from_secs(60)));
        if !notice.contains("camera.fps") {
            break notice;
        }
    };
    assert!(
        notice.contains("reload failed, previous configuration kept") && notice.contains("no-such-frames"),
        "{notice}"
    );
    assert_eq!(send(port, b"GET /healthz HTTP/1.1\r\n\r\n").status, 200);
    std::fs::write(&config, config_text(&frames, &speech.join("how_many_people.wav"), "[caption]\ninterval_s = 5"))
        .unwrap();
    daemon.signal("HUP");
    daemon.event("reloaded", patience(Duration::from_secs(120)), event_is("reloaded"));
    assert_eq!(send(port, b"GET /healthz HTTP/1.1\r\n\r\n").status, 200);

    // SIGTERM: STOPPING=1, and the process is gone within 2 s.
    while daemon.notifications.try_recv().is_ok() {}
    daemon.terminate_within(Duration::from_secs(2));
    daemon.event("stopped", patience(Duration::from_secs(1)), event_is("stopped"));
}

/// The value of one metric in a `/metrics` text.
fn metric(text: &str, name: &str) -> f64 {
    let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name} missing"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// A multipart/form-data body of text fields and one file.
fn form(fields: &[(&str, &str)], file: Option<(&str, &[u8])>) -> (String, Vec<u8>) {
    let boundary = "lookout-test-boundary";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").as_bytes(),
        );
    }
    if let Some((filename, data)) = file {
        body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes());
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[test]
fn the_api_keeps_connections_alive_streams_and_answers_the_official_openai_client() {
    let dir = temp_dir("openai");
    let frames = kite_camera(&dir);
    let photos = testdata_dir().join("vision/photos");
    let speech = testdata_dir().join("speech");
    let config = dir.join("lookout.toml");
    let text = config_text(&frames, &speech.join("how_many_people.wav"), "")
        + "max_connections = 16\nmax_connections_per_client = 8\n";
    std::fs::write(&config, text).unwrap();
    let mut daemon = Daemon::start(&config, &dir);
    let port = daemon.port();
    daemon.event("caption", patience(Duration::from_secs(120)), event_is("caption"));
    let head = |method: &str, path: &str| {
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n")
    };

    // Keep-alive: three requests on one connection.
    let mut kept = connect(port);
    for path in ["/healthz", "/v1/scene", "/v1/models"] {
        kept.write_all(format!("{}\r\n", head("GET", path)).as_bytes()).unwrap();
        let reply = read_response(&mut kept).unwrap_or_else(|| panic!("{path}: the connection was closed"));
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    }
    // A chunked request body.
    let question = br#"{"question": "How many people are there?"}"#;
    let (first, rest) = question.split_at(10);
    let chunked = format!(
        "{}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        head("POST", "/v1/ask"),
        first.len(),
        String::from_utf8_lossy(first),
        rest.len(),
        String::from_utf8_lossy(rest)
    );
    kept.write_all(chunked.as_bytes()).unwrap();
    let answer = read_response(&mut kept).unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.json()["answer"].as_str().unwrap().contains("people"), "{}", answer.body);
    // An idle keep-alive connection is closed after the header timeout (1 s here).
    let idle_since = Instant::now();
    assert!(read_response(&mut kept).is_none());
    assert!(idle_since.elapsed() < patience(Duration::from_secs(10)));

    // Idle connections do not starve anyone: with 7 open, /healthz and /v1/scene answer on the 8th; a 9th from the
    // same client is refused at once, with the reason.
    let idle: Vec<TcpStream> = (0..7).map(|_| connect(port)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut eighth = connect(port);
    eighth.write_all(format!("{}\r\n", head("GET", "/healthz")).as_bytes()).unwrap();
    assert_eq!(read_response(&mut eighth).unwrap().status, 200);
    let refused = send(port, format!("{}\r\n", head("GET", "/healthz")).as_bytes());
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused.json()["error"].as_str().unwrap().contains("max_connections_per_client"), "{}", refused.body);
    drop((idle, eighth));
    std::thread::sleep(Duration::from_millis(300));

    // /healthz is served while the pipeline transcribes and answers 10 s of speech (a full 30 s window would keep
    // the pipeline from beating for longer than this test's 3 s stall limit).
    let long_wav = std::fs::read(speech.join("beckett.wav")).unwrap();
    let busy = std::thread::spawn(move || request(port, "POST", "/v1/ask", Some("audio/wav"), &long_wav));
    let mut health_during = 0;
    while !busy.is_finished() {
        let health = send(port, format!("{}\r\n", head("GET", "/healthz")).as_bytes());
        assert_eq!(health.status, 200, "{}", health.body);
        health_during += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let long_answer = busy.join().unwrap();
    assert_eq!(long_answer.status, 200, "{}", long_answer.body);
    assert!(health_during >= 3, "only {health_during} health checks answered while the question ran");

    // The official client: the model list, a chat about a photo sent as a data URL, the same streamed, and every
    // transcription format.
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/venv-client/bin/python");
    assert!(python.exists(), "{} is missing: run models/prepare/prepare.sh", python.display());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai/client.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(format!("http://127.0.0.1:{port}/v1"))
        .arg(TOKEN)
        .arg(photos.join("dog.jpg"))
        .arg(speech.join("what_do_you_see.wav"))
        .arg(patience(Duration::from_secs(900)).as_secs().to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let client: Value = serde_json::from_slice(&out.stdout).unwrap();
    let models: Vec<&str> = client["models"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    assert!(models.len() >= 2 && models.contains(&client["chat"]["model"].as_str().unwrap()), "{client}");
    let chat = &client["chat"];
    assert!(chat["text"].as_str().unwrap().to_lowercase().contains("dog"), "names the dog the detector found: {chat}");
    assert_eq!(chat["finish_reason"], "stop", "{chat}");
    assert!(chat["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{chat}");
    let stream = &client["stream"];
    assert_eq!(stream["text"], chat["text"], "greedy: the streamed answer is the answer");
    assert!(stream["pieces"].as_u64().unwrap() >= 2 && stream["chunks"].as_u64().unwrap() >= 4, "{stream}");
    assert!(stream["first_s"].as_f64().unwrap() < stream["last_s"].as_f64().unwrap(), "{stream}");
    assert_eq!(stream["finish_reason"], "stop");
    assert_eq!(stream["usage"], chat["usage"]);
    let t = &client["transcriptions"];
    assert_eq!(normalize(t["json"]["text"].as_str().unwrap()), "what do you see", "{t}");
    assert_eq!(normalize(t["text"].as_str().unwrap()), "what do you see", "{t}");
    assert!(t["verbose_json"]["segments"].as_array().is_some_and(|s| !s.is_empty()), "{t}");
    assert!((t["verbose_json"]["duration"].as_f64().unwrap() - 1.35).abs() < 0.1, "{t}");
    assert!(t["srt"].as_str().unwrap().starts_with("1\n00:00:00,000 --> 00:00:0"), "{t}");
    assert!(t["vtt"].as_str().unwrap().starts_with("WEBVTT\n\n00:00:00.000 --> 00:00:0"), "{t}");
    assert_eq!(client["remote_image"]["status"], 400, "{client}");
    assert_eq!(client["remote_image"]["code"], "invalid_image_url", "{client}");

    // Bad requests on the OpenAI paths: each refused in OpenAI's shape, and the daemon keeps serving.
    let chat_model = chat["model"].as_str().unwrap().to_string();
    let chat_body =
        |messages: &str, more: &str| format!(r#"{{"model": "{chat_model}", "messages": {messages}{more}}}"#);
    let user_image = |url: &str| {
        format!(r#"[{{"role": "user", "content": [{{"type": "image_url", "image_url": {{"url": "{url}"}}}}]}}]"#)
    };
    let mut big = Vec::new();
    let mut encoder = png::Encoder::new(&mut big, 5000, 3000);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.write_header().unwrap().write_image_data(&vec![0u8; 5000 * 3000]).unwrap();
    use base64::Engine as _;
    let big_url = format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(&big));
    let post_chat =
        |body: String| request(port, "POST", "/v1/chat/completions", Some("application/json"), body.as_bytes());
    let wav = std::fs::read(speech.join("what_do_you_see.wav")).unwrap();
    let jpeg = std::fs::read(photos.join("dog.jpg")).unwrap();
    let transcribe = |fields: &[(&str, &str)], file: Option<(&str, &[u8])>| {
        let (content_type, body) = form(fields, file);
        request(port, "POST", "/v1/audio/transcriptions", Some(&content_type), &body)
    };
    let oversized = format!(
        "{}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        head("POST", "/v1/chat/completions"),
        2 << 20
    );
    let cases: Vec<(&str, Reply, u16)> = vec![
        ("malformed JSON", post_chat("{\"model\": ".into()), 400),
        ("unknown role", post_chat(chat_body(r#"[{"role": "wizard", "content": "hi"}]"#, "")), 400),
        (
            "unknown model",
            post_chat(r#"{"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}"#.into()),
            404,
        ),
        ("remote image URL", post_chat(chat_body(&user_image("http://192.168.1.2/cam.jpg"), "")), 400),
        ("base64 that does not decode", post_chat(chat_body(&user_image("data:image/jpeg;base64,@@@@"), "")), 400),
        ("image over the size limit", post_chat(chat_body(&user_image(&big_url), "")), 413),
        ("n > 1", post_chat(chat_body(r#"[{"role": "user", "content": "hi"}]"#, r#", "n": 2"#)), 400),
        ("not JSON", request(port, "POST", "/v1/chat/completions", Some("text/plain"), b"hi"), 415),
        ("body over the limit", send(port, oversized.as_bytes()), 413),
        ("no token", send(port, b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\n\r\n"), 401),
        ("audio that is not WAV or FLAC", transcribe(&[("model", "whisper-1")], Some(("dog.jpg", &jpeg))), 400),
        ("a form without a file", transcribe(&[("model", "whisper-1")], None), 400),
        (
            "unknown response_format",
            transcribe(&[("model", "whisper-1"), ("response_format", "xml")], Some(("q.wav", &wav))),
            400,
        ),
        ("not a form", request(port, "POST", "/v1/audio/transcriptions", Some("audio/wav"), &wav), 415),
    ];
    for (what, reply, status) in &cases {
        assert_eq!(reply.status, *status, "{what}: {}", reply.body);
        let error = &reply.json()["error"];
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()) && error["type"].is_string(),
            "{what}: {}",
            reply.body
        );
    }
    // A client that leaves in the middle of a streamed answer.
    let body = chat_body(r#"[{"role": "user", "content": "What do you see?"}]"#, r#", "stream": true"#);
    let mut leaving = connect(port);
    let streamed = format!(
        "{}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        head("POST", "/v1/chat/completions"),
        body.len()
    );
    leaving.write_all(streamed.as_bytes()).unwrap();
    let mut first = [0u8; 64];
    assert!(leaving.read(&mut first).unwrap() > 0);
    drop(leaving);

    // Nothing leaked: every connection but the one reading the metrics closed, no body held, no question waiting.
    let mut settled = String::new();
    let settled_by = Instant::now() + patience(Duration::from_secs(10));
    while Instant::now() < settled_by {
        settled = request(port, "GET", "/metrics", None, b"").body;
        if metric(&settled, "lookout_http_connections_open") == 1.0
            && metric(&settled, "lookout_http_bodies_in_use") == 0.0
            && metric(&settled, "lookout_question_queue_depth") == 0.0
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(metric(&settled, "lookout_http_connections_open"), 1.0, "{settled}");
    assert_eq!(metric(&settled, "lookout_http_bodies_in_use"), 0.0, "{settled}");
    assert_eq!(metric(&settled, "lookout_question_queue_depth"), 0.0, "{settled}");
    assert_eq!(send(port, format!("{}\r\n", head("GET", "/healthz")).as_bytes()).status, 200);
    daemon.terminate_within(Duration::from_secs(2));
}

/// A daemon on the kite camera in `dir` and the quiet recording, `extra` added to its configuration, started with
/// `watchdog` as `WatchdogSec`, once it has published its first scene; with the port it listens on.
fn kite_daemon(dir: &Path, extra: &str, watchdog: Duration) -> (Daemon, u16) {
    let frames = kite_camera(dir);
    let config = dir.join("lookout.toml");
    let wav = testdata_dir().join("speech/how_many_people.wav");
    std::fs::write(&config, config_text(&frames, &wav, extra)).unwrap();
    let mut daemon = Daemon::start_with_watchdog(&config, dir, watchdog);
    let port = daemon.port();
    daemon.event("scene", patience(Duration::from_secs(60)), event_is("scene"));
    (daemon, port)
}

/// SIGHUP while a spoken question is being answered: the question ends in a defined status (its answer, or 503
/// "stopping" when the pipeline was stopped under it), nothing hangs, and the reloaded daemon answers the next one.
#[test]
fn sighup_during_an_answer_ends_it_in_a_defined_status_and_the_reload_serves() {
    let dir = temp_dir("hup-answer");
    let (mut daemon, port) = kite_daemon(&dir, "", patience(WATCHDOG));
    let question = std::fs::read(testdata_dir().join("speech/beckett.wav")).unwrap();
    let asking = std::thread::spawn(move || request(port, "POST", "/v1/ask", Some("audio/wav"), &question));
    // The question is being heard (10 s of speech) when the reload comes.
    std::thread::sleep(Duration::from_millis(300));
    daemon.signal("HUP");
    let answered = asking.join().unwrap();
    eprintln!("the question in flight: {} {}", answered.status, answered.body);
    match answered.status {
        200 => assert!(!answered.json()["answer"].as_str().unwrap().is_empty(), "{}", answered.body),
        503 => {
            assert_eq!(answered.header("Retry-After"), Some("1"), "{}", answered.head);
            assert!(answered.body.contains("stopping or reloading"), "{}", answered.body);
        }
        other => panic!("the question in flight ended in {other}: {}", answered.body),
    }
    daemon.event("reloaded", patience(Duration::from_secs(120)), event_is("reloaded"));
    let next =
        request(port, "POST", "/v1/ask", Some("application/json"), br#"{"question": "How many kites are there?"}"#);
    assert_eq!(next.status, 200, "{}", next.body);
    daemon.terminate_within(Duration::from_secs(2));
}

/// The watchdog fires on a pipeline gone silent: with a stall limit of half a second, the Whisper encoder's one call
/// on a 30 s question (about 2 s here) keeps the pipeline from beating; the daemon reports it `stalled`, stops its
/// systemd pings, answers the question all the same, and pings again once the pipeline beats.
#[test]
fn the_watchdog_fires_on_a_silent_pipeline_and_pings_again_once_it_beats() {
    let dir = temp_dir("watchdog");
    let (mut daemon, port) = kite_daemon(&dir, "", patience(Duration::from_millis(500)));
    let question = std::fs::read(testdata_dir().join("speech/clip_30s.wav")).unwrap();
    let asking = std::thread::spawn(move || request(port, "POST", "/v1/ask", Some("audio/wav"), &question));
    // Other threads may miss a beat on a busy machine too; the pipeline's silence is the one asked for.
    daemon.event("the pipeline stalled", patience(Duration::from_secs(60)), |e| {
        e["event"] == "stalled" && e["thread"] == "pipeline"
    });
    let status = daemon.notification("STATUS=the pipeline thread is stalled", patience(Duration::from_secs(10)));
    assert!(status.contains("watchdog pings stopped"), "{status}");
    let answered = asking.join().unwrap();
    assert_eq!(answered.status, 200, "{}", answered.body);
    daemon.notification("WATCHDOG=1", patience(Duration::from_secs(10)));
    daemon.terminate_within(Duration::from_secs(2));
}

/// A models directory in `dir` whose `default` bundle links every file of the prepared one (hard links, else
/// symbolic ones), so a test can damage a file of its own without touching the shared bundle.
fn linked_bundle(dir: &Path) -> std::path::PathBuf {
    let source = lookout_models::bundle::resolve_models_dir(None).join(lookout_models::bundle::DEFAULT_BUNDLE);
    let models = dir.join("models");
    for entry in walk(&source) {
        let target = models.join("default").join(entry.strip_prefix(&source).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        if std::fs::hard_link(&entry, &target).is_err() {
            std::os::unix::fs::symlink(&entry, &target).unwrap();
        }
    }
    return models;

    fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .flat_map(|p| if p.is_dir() { walk(&p) } else { vec![p] })
            .collect()
    }
}

/// A model file damaged on disk before a reload: the reload is refused before the running pipeline is stopped,
/// which goes on serving from the models it holds.
#[test]
fn a_reload_onto_a_damaged_model_file_keeps_the_running_pipeline() {
    let dir = temp_dir("damaged-reload");
    let models = linked_bundle(&dir);
    let vision_only = format!(
        "[models]\ndir = \"{}\"\nspeech = \"off\"\ndecoder = \"off\"\nocr = \"off\"\ndetector = \"centernet\"",
        models.display()
    );
    let (mut daemon, port) = kite_daemon(&dir, &vision_only, patience(WATCHDOG));

    // The detector's compiled graph, one byte changed, its size kept.
    let graph = models.join("default/vision/centernet.nnef.tar");
    let mut bytes = std::fs::read(&graph).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::remove_file(&graph).unwrap();
    std::fs::write(&graph, bytes).unwrap();
    daemon.signal("HUP");
    let failed = daemon.event("reload_failed", patience(Duration::from_secs(60)), event_is("reload_failed"));
    assert!(failed["error"].as_str().unwrap().contains("centernet.nnef.tar"), "{failed}");
    assert_eq!(failed["running"], "the previous configuration", "{failed}");
    assert!(!daemon.seen.iter().any(|e| e["event"] == "reloading"), "the running pipeline was stopped");
    let scene = request(port, "GET", "/v1/scene", None, b"");
    assert_eq!(scene.status, 200, "{}", scene.body);
    assert!(scene.json()["counts"]["kite"].as_u64() > Some(0), "{}", scene.body);
    assert!(daemon.child.try_wait().unwrap().is_none(), "the daemon exited");
    daemon.terminate_within(Duration::from_secs(2));
}

/// In process, through the runtime library: the HTTP server's event loop beats for the watchdog while it serves,
/// and is no longer watched once stopped.
#[test]
fn the_http_server_beats_for_the_watchdog_while_it_serves() {
    use std::sync::Arc;

    use lookout::context::Context;
    use lookout::daemon::http::HttpServer;
    use lookout::daemon::state::{Beat, Current, Shared};
    use lookout::daemon::Checked;
    use lookout::scheduler::buffers::FrameQueue;

    let dir = temp_dir("http-beat");
    let frames = kite_camera(&dir);
    let config = dir.join("lookout.toml");
    let wav = testdata_dir().join("speech/how_many_people.wav");
    std::fs::write(&config, config_text(&frames, &wav, "")).unwrap();
    let ctx = Context {
        models_dir: lookout_models::bundle::resolve_models_dir(None),
        bundle: lookout_models::bundle::DEFAULT_BUNDLE.into(),
    };
    let checked = Checked::load(&ctx, &config, None).unwrap();
    let shared = Arc::new(Shared::new(FrameQueue::new(2, 64, 48), "x86-dev"));
    assert_eq!(shared.heartbeats.last(Beat::Http), None, "nothing beats before the server starts");
    let server = HttpServer::start(&checked, Arc::new(Current::new(shared.clone()))).unwrap();
    let healthz = request(server.addr.port(), "GET", "/healthz", None, b"");
    assert_eq!(healthz.status, 200, "{}", healthz.body);
    let first = wait_for_beat(&shared, 0);
    let later = wait_for_beat(&shared, first);
    assert!(later > first, "the beat repeats while the server runs ({first} then {later} ms)");
    drop(server);
    assert_eq!(shared.heartbeats.last(Beat::Http), None, "a server stopped on purpose is no longer watched");

    fn wait_for_beat(shared: &Shared, after: u64) -> u64 {
        let deadline = Instant::now() + patience(Duration::from_secs(5));
        loop {
            match shared.heartbeats.last(Beat::Http) {
                Some(ms) if ms > after => return ms,
                _ if Instant::now() > deadline => panic!("no HTTP beat after {after} ms"),
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

#[test]
fn configurations_and_devices_the_daemon_cannot_run_exit_naming_the_problem() {
    let dir = temp_dir("refused");
    std::fs::copy(testdata_dir().join("vision/photos/dog.jpg"), dir.join("dog.jpg")).unwrap();
    let wav = testdata_dir().join("speech/how_many_people.wav");
    let cases = [
        ("unknown key", config_text(&dir, &wav, "[caption]\nzoom = 2"), "caption.zoom", 78),
        ("over budget", config_text(&dir, &wav, "[budget]\nmemory_mib = 200\nos_reserve_mib = 100"), "MiB", 78),
        ("missing camera directory", config_text(&dir.join("nowhere"), &wav, ""), "camera.device", 78),
        ("unreadable recording", config_text(&dir, &dir.join("missing.wav"), ""), "microphone.device", 78),
        // An absent device is waited for (`wait_s`, 1 s here), then a runtime failure (exit 1): systemd retries.
        (
            "absent camera",
            config_text(&dir, &wav, "")
                .replace(&format!("dir:{}", dir.display()), "/dev/video9")
                .replace("[camera]\n", "[camera]\nwait_s = 1\n"),
            "camera.device `/dev/video9`",
            1,
        ),
        (
            "absent microphone",
            config_text(&dir, &wav, "")
                .replace(&format!("wav:{}", wav.display()), "hw:CARD=NoSuchCard,DEV=0")
                .replace("[microphone]\n", "[microphone]\nwait_s = 1\n"),
            "microphone.device",
            1,
        ),
    ];
    for (what, text, names, code) in cases {
        let path = dir.join("lookout.toml");
        std::fs::write(&path, &text).unwrap();
        let out = lookout(&["serve", "--config", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{what}: {stderr}");
        assert!(stderr.contains(names) && stderr.lines().count() >= 1, "{what}: {stderr}");
        if code == 1 {
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(stdout.contains("\"event\":\"waiting_for_device\""), "{what} was not waited for: {stdout}");
        }
    }
    let plan = lookout(&["serve", "--print-plan", "--config", dir.join("lookout.toml").to_str().unwrap()]);
    assert!(plan.status.success(), "{}", String::from_utf8_lossy(&plan.stderr));
    assert!(String::from_utf8_lossy(&plan.stdout).contains("total at peak"));
}

#[test]
fn sigterm_while_the_models_load_stops_within_2_s() {
    let dir = temp_dir("loading");
    std::fs::copy(testdata_dir().join("vision/photos/dog.jpg"), dir.join("dog.jpg")).unwrap();
    let config = dir.join("lookout.toml");
    std::fs::write(&config, config_text(&dir, &testdata_dir().join("speech/how_many_people.wav"), "")).unwrap();
    let mut daemon = Daemon::start(&config, &dir);
    daemon.event("starting", patience(Duration::from_secs(10)), event_is("starting"));
    daemon.terminate_within(Duration::from_secs(2));
    assert!(!daemon.seen.iter().any(|e| e["event"] == "ready"), "stopped before it was ready");
}

/// runtime/tests/wyoming/client.py, run by the `wyoming` package at `version` (`ha`: the one Home Assistant pins,
/// `newest`), with `args` after the script; its standard output as JSON objects, one a line.
fn wyoming_client(version: &str, args: &[&str], input: &[u8]) -> Vec<Value> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../.cache/venv-wyoming-{version}/bin/python"));
    assert!(python.exists(), "{} is missing: run models/prepare/prepare.sh", python.display());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/wyoming/client.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "client.py {args:?} ({version}): {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

/// What the server sent back to raw bytes before it closed the connection: the events' types and data.
fn wyoming_raw(port: u16, input: &[u8]) -> Vec<Value> {
    let out = wyoming_client("newest", &["raw", &port.to_string()], input);
    out[0]["events"].as_array().unwrap().clone()
}

#[test]
fn the_wyoming_server_transcribes_for_home_assistants_client_and_refuses_bad_messages() {
    let dir = temp_dir("wyoming");
    let wyoming = "[wyoming]\nenabled = true\nlisten = \"127.0.0.1:0\"\nmax_sessions = 3\nidle_timeout_ms = 2000\n";
    let (mut daemon, http_port) = kite_daemon(&dir, wyoming, patience(WATCHDOG));
    let listening = daemon.event("listening", Duration::ZERO, event_is("listening"));
    let port: u16 = listening["wyoming"].as_str().unwrap().rsplit(':').next().unwrap().parse().unwrap();
    let port_arg = port.to_string();
    let speech = testdata_dir().join("speech");
    let (people, door) = (speech.join("how_many_people.wav"), speech.join("is_the_door_open.wav"));
    let (people, door) = (people.to_str().unwrap(), door.to_str().unwrap());
    let said = |answer: &Value| normalize(answer["text"].as_str().unwrap_or_else(|| panic!("no text: {answer}")));

    for version in ["ha", "newest"] {
        // describe → info, parsed by the client's own Info.from_event, within Home Assistant's 1 s.
        let info = &wyoming_client(version, &["describe", &port_arg], b"")[0];
        assert_eq!((info["name"].as_str(), info["installed"].as_bool()), (Some("lookout"), Some(true)), "{info}");
        let model = &info["models"][0];
        assert!(model["name"].as_str().unwrap().starts_with("whisper-base"), "{info}");
        let languages: Vec<&str> = model["languages"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert!(languages.len() == 99 && languages.contains(&"en") && languages.contains(&"de"), "{info}");
        assert!(info["seconds"].as_f64().unwrap() < patience(Duration::from_secs(1)).as_secs_f64(), "{info}");
        // A spoken command in 1024-sample chunks at 16 kHz, the same at 48 kHz, and two clients at once.
        let at_16k = &wyoming_client(version, &["transcribe", &port_arg, people], b"")[0];
        assert_eq!((said(at_16k).as_str(), at_16k["language"].as_str()), ("how many people are outside", Some("en")));
        let at_48k = &wyoming_client(version, &["transcribe", &port_arg, door, "48000"], b"")[0];
        assert_eq!(said(at_48k), "is the door open", "{at_48k}");
        let both = wyoming_client(version, &["transcribe", &port_arg, people, door], b"");
        assert_eq!(both.iter().map(said).collect::<Vec<_>>(), ["how many people are outside", "is the door open"]);
    }

    // The info comes from memory while two transcriptions keep the pipeline busy.
    let busy = {
        let (port_arg, people, door) = (port_arg.clone(), people.to_string(), door.to_string());
        std::thread::spawn(move || wyoming_client("ha", &["transcribe", &port_arg, &people, &door], b""))
    };
    std::thread::sleep(Duration::from_millis(300));
    let info = &wyoming_client("ha", &["describe", &port_arg], b"")[0];
    assert!(info["seconds"].as_f64().unwrap() < patience(Duration::from_secs(1)).as_secs_f64(), "{info}");
    assert_eq!(busy.join().unwrap().len(), 2);

    // Bad messages: an error event, then the connection closes.
    let refused = |input: &[u8]| -> String {
        let events = wyoming_raw(port, input);
        let last = events.last().unwrap_or_else(|| panic!("nothing came back to {}", String::from_utf8_lossy(input)));
        assert_eq!(last["type"], "error", "{events:?}");
        last["data"]["code"].as_str().unwrap().to_string()
    };
    assert_eq!(refused(b"not json\n"), "invalid_message");
    assert_eq!(refused(&[vec![b' '; 9000], b"{}\n".to_vec()].concat()), "invalid_message", "a header over 8 KiB");
    assert_eq!(refused(b"{\"type\": \"audio-chunk\", \"payload_length\": 1000000000}\n"), "invalid_message");
    assert_eq!(refused(b"{\"type\": \"x\", \"data_length\": 100000000}\n"), "invalid_message");
    let chunk = b"{\"type\": \"audio-chunk\", \"data\": {\"rate\": 16000, \"width\": 2, \"channels\": 1}, \"payload_length\": 4}\n\0\0\0\0";
    assert_eq!(refused(chunk), "audio_not_started");
    assert_eq!(
        refused(b"{\"type\": \"audio-start\", \"data\": {\"rate\": 16000, \"width\": 4, \"channels\": 1}}\n"),
        "unsupported_audio"
    );
    assert_eq!(
        refused(b"{\"type\": \"audio-start\", \"data\": {\"rate\": 16000, \"width\": 2, \"channels\": 5}}\n"),
        "unsupported_audio"
    );
    assert_eq!(refused(b"{\"type\": \"transcribe\", \"data\": {\"language\": \"xx\"}}\n"), "unsupported_language");
    // 31 s of audio where microphone.ring_s allows 30.
    let start = b"{\"type\": \"audio-start\", \"data\": {\"rate\": 16000, \"width\": 2, \"channels\": 1}}\n";
    let mut long = start.to_vec();
    for _ in 0..31 * 16_000 * 2 / 32_000 {
        long.extend_from_slice(b"{\"type\": \"audio-chunk\", \"data\": {\"rate\": 16000, \"width\": 2, \"channels\": 1}, \"payload_length\": 32000}\n");
        long.extend_from_slice(&[0; 32_000]);
    }
    assert_eq!(refused(&long), "audio_too_long");
    // A client that stops sending is closed after wyoming.idle_timeout_ms.
    assert_eq!(refused(b""), "timeout");
    // audio-stop with no audio: an empty transcript; ping: pong; unknown types are passed over.
    let format = br#"{"rate": 16000, "width": 2, "channels": 1}"#;
    let start_with_data_block =
        [format!("{{\"type\": \"audio-start\", \"data_length\": {}}}\n", format.len()).as_bytes(), format].concat();
    let input = [
        &b"{\"type\": \"ping\", \"data\": {\"text\": \"hi\"}}\n{\"type\": \"run-satellite\"}\n"[..],
        b"{\"type\": \"transcribe\", \"data\": {\"language\": \"en-US\"}}\n",
        &start_with_data_block,
        b"{\"type\": \"audio-stop\"}\n",
    ]
    .concat();
    let events = wyoming_raw(port, &input);
    assert_eq!(events[0], serde_json::json!({ "type": "pong", "data": { "text": "hi" } }), "{events:?}");
    assert_eq!(events[1], serde_json::json!({ "type": "transcript", "data": { "text": "", "language": "en" } }));
    assert_eq!(events[2]["type"], "error", "the quiet client timed out after: {events:?}");

    // Over wyoming.max_sessions: the next client is told so at once.
    let idle: Vec<TcpStream> = (0..3).map(|_| connect(port)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = connect(port);
    let mut line = String::new();
    extra.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&mut extra), &mut line).unwrap();
    assert!(line.contains("\"error\""), "{line}");
    drop(idle);

    // Afterwards no session is open, nothing is queued, and the daemon still serves HTTP.
    let metrics_now = || {
        let reply = request(http_port, "GET", "/metrics", None, b"");
        assert_eq!(reply.status, 200);
        reply.body
    };
    let started = Instant::now();
    while metric(&metrics_now(), "lookout_wyoming_sessions_open") > 0.0 {
        assert!(started.elapsed() < patience(Duration::from_secs(10)), "{}", metrics_now());
        std::thread::sleep(Duration::from_millis(100));
    }
    let metrics = metrics_now();
    assert_eq!(metric(&metrics, "lookout_question_queue_depth"), 0.0);
    assert!(metric(&metrics, "lookout_wyoming_transcripts_total") >= 11.0, "{metrics}");
    assert!(metric(&metrics, "lookout_wyoming_errors_total") >= 10.0, "{metrics}");
    assert!(metric(&metrics, "lookout_wyoming_refused_total") >= 1.0, "{metrics}");
    daemon.terminate_within(Duration::from_secs(2));
}

/// A mosquitto broker on a loopback port for one test: anonymous clients (the watcher) may connect; a client that
/// gives a user name must give `lookout`'s password, `right-password`.
struct Broker {
    child: Child,
    port: u16,
}

impl Broker {
    fn start(dir: &Path, port: u16) -> Broker {
        let passwords = dir.join("mosquitto.passwords");
        let made = Command::new("mosquitto_passwd")
            .args(["-b", "-c", passwords.to_str().unwrap(), "lookout", "right-password"])
            .output()
            .expect("mosquitto_passwd (Debian's mosquitto; run models/prepare/prepare.sh)");
        assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
        let config = dir.join("mosquitto.conf");
        let text = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npassword_file {}\npersistence false\n",
            passwords.display()
        );
        std::fs::write(&config, text).unwrap();
        let child = Command::new("/usr/sbin/mosquitto")
            .args(["-c", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("/usr/sbin/mosquitto (Debian's mosquitto; run models/prepare/prepare.sh)");
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "mosquitto did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker { child, port }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// runtime/tests/mqtt/watch.py with `args` after the script: its JSON output.
fn mqtt_watch(args: &[&str]) -> Value {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/venv-mqtt/bin/python");
    assert!(python.exists(), "{} is missing: run models/prepare/prepare.sh", python.display());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mqtt/watch.py");
    let out = Command::new(&python).arg(&script).args(args).output().unwrap();
    assert!(out.status.success(), "watch.py {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn home_assistant_finds_lookout_over_mqtt_and_it_rides_out_the_broker() {
    let dir = temp_dir("mqtt");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let password = dir.join("mqtt.password");
    std::fs::write(&password, "wrong-password\n").unwrap();
    std::fs::set_permissions(&password, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let extra = format!(
        "[mqtt]\nenabled = true\nport = {port}\nusername = \"lookout\"\npassword_file = \"mqtt.password\"\n\
         node_id = \"test_node\"\nbase_topic = \"lookout_test\"\nlabels = [\"person\", \"kite\", \"sports ball\"]\n\
         snapshot_interval_s = 1\noccupancy_off_delay_s = 1\n\
         [objects]\nforget_after_frames = 2\nremember_stationary_frames = 3\n"
    );
    // No broker yet: the daemon serves, and says so once.
    let (mut daemon, http_port) = kite_daemon(&dir, &extra, patience(WATCHDOG));
    daemon.event("mqtt_disconnected", patience(Duration::from_secs(30)), event_is("mqtt_disconnected"));
    assert_eq!(request(http_port, "GET", "/healthz", None, b"").status, 200);
    // A broker that refuses the password in the file: one more event, naming the refusal.
    let broker = Broker::start(&dir, port);
    let refused = daemon.event("a refusal", patience(Duration::from_secs(60)), |e| {
        e["event"] == "mqtt_disconnected" && e["error"].as_str().is_some_and(|m| m.contains("NotAuthorized"))
    });
    assert_eq!(refused["broker"], format!("127.0.0.1:{port}"));
    // The right password and a reload: connected.
    std::fs::write(&password, "right-password\n").unwrap();
    daemon.signal("HUP");
    daemon.event("reloaded", patience(Duration::from_secs(60)), event_is("reloaded"));
    daemon.event("mqtt_connected", patience(Duration::from_secs(60)), event_is("mqtt_connected"));

    // What Home Assistant reads: the discovery configs, then the states and the snapshot.
    let config_topic = |component: &str, object: &str| format!("homeassistant/{component}/test_node/{object}/config");
    let configs = [
        config_topic("sensor", "caption"),
        config_topic("sensor", "person_count"),
        config_topic("sensor", "kite_count"),
        config_topic("sensor", "sports_ball_count"),
        config_topic("binary_sensor", "occupancy"),
        config_topic("image", "snapshot"),
    ];
    let states =
        ["caption", "caption/attributes", "count/person", "count/kite", "count/sports_ball", "occupancy", "snapshot"]
            .map(|s| format!("lookout_test/{s}"));
    let availability = "lookout_test/availability".to_string();
    let mut wanted: Vec<&str> = configs.iter().chain(&states).map(String::as_str).collect();
    wanted.push(&availability);
    let mut args =
        vec!["collect".to_string(), port.to_string(), patience(Duration::from_secs(90)).as_secs().to_string()];
    args.extend(wanted.iter().map(|t| t.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let seen = mqtt_watch(&args);
    assert_eq!(seen["missing"], serde_json::json!([]), "{seen}");
    let messages = &seen["messages"];
    let config = |topic: &str| -> Value { serde_json::from_str(messages[topic].as_str().unwrap()).unwrap() };
    for topic in &configs {
        let c = config(topic);
        assert!(c["unique_id"].as_str().unwrap().starts_with("test_node_"), "{c}");
        assert_eq!(c["device"]["identifiers"][0], "lookout_test_node", "{c}");
        assert_eq!(
            (c["origin"]["name"].as_str(), c["availability_topic"].as_str()),
            (Some("Lookout"), Some("lookout_test/availability"))
        );
    }
    let caption_config = config(&configs[0]);
    assert_eq!(caption_config["state_topic"], "lookout_test/caption");
    assert_eq!(caption_config["json_attributes_topic"], "lookout_test/caption/attributes");
    let ball = config(&configs[3]);
    assert_eq!(
        (ball["state_class"].as_str(), ball["state_topic"].as_str()),
        (Some("measurement"), Some("lookout_test/count/sports_ball"))
    );
    assert_eq!(config(&configs[4])["device_class"], "occupancy");
    let image = config(&configs[5]);
    assert_eq!(
        (image["content_type"].as_str(), image["image_topic"].as_str()),
        (Some("image/jpeg"), Some("lookout_test/snapshot"))
    );
    assert_eq!(messages[&availability], "online");
    // The states are the scene's.
    let scene = request(http_port, "GET", "/v1/scene", None, b"").json();
    let count = |label: &str| scene["counts"][label].as_u64().unwrap_or(0).to_string();
    assert_eq!(messages["lookout_test/count/person"].as_str(), Some(count("person").as_str()), "{scene}");
    assert_eq!(messages["lookout_test/count/kite"].as_str(), Some(count("kite").as_str()));
    assert_eq!(messages["lookout_test/count/sports_ball"].as_str(), Some(count("sports ball").as_str()));
    assert!(count("person") != "0" && messages["lookout_test/occupancy"] == "ON", "{scene}");
    let caption = scene["caption"]["text"].as_str().unwrap();
    assert_eq!(messages["lookout_test/caption"].as_str(), Some(caption));
    let attributes: Value =
        serde_json::from_str(messages["lookout_test/caption/attributes"].as_str().unwrap()).unwrap();
    assert_eq!((attributes["caption"].as_str(), &attributes["frame"]), (Some(caption), &scene["caption"]["frame"]));
    use base64::Engine as _;
    let jpeg = base64::engine::general_purpose::STANDARD
        .decode(messages["lookout_test/snapshot"]["base64"].as_str().expect("the snapshot is binary"))
        .unwrap();
    let snapshot = lookout_models::vision::image::decode_image(&jpeg).expect("the snapshot is a JPEG");
    assert_eq!(
        (u64::from(snapshot.width), u64::from(snapshot.height)),
        (scene["width"].as_u64().unwrap(), scene["height"].as_u64().unwrap())
    );

    // A question on the ask topic is answered like /v1/ask; bad ones get an error answer.
    let ask = |payload: &str| -> Value {
        let answer = mqtt_watch(&["ask", &port.to_string(), "lookout_test", payload]);
        serde_json::from_str(answer["answer"].as_str().expect("an answer")).unwrap()
    };
    let answer = ask(r#"{"question": "How many people are there?"}"#);
    assert!(answer["answer"].as_str().unwrap().contains("people"), "{answer}");
    assert!(ask("   ")["error"].as_str().unwrap().contains("empty"));
    assert!(ask(&"x".repeat(5000))["error"].as_str().unwrap().contains("limit"));

    // The broker goes away and comes back empty (no persistence): the daemon connects again and announces it all.
    let before = daemon.seen.len();
    drop(broker);
    let broker = Broker::start(&dir, port);
    daemon.event_after(before, "mqtt_connected again", patience(Duration::from_secs(90)), event_is("mqtt_connected"));
    let mut args = vec!["collect".to_string(), port.to_string(), "60".into(), configs[0].clone(), states[0].clone()];
    args.push(availability.clone());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let again = mqtt_watch(&args);
    assert_eq!(again["missing"], serde_json::json!([]), "{again}");
    let metrics = request(http_port, "GET", "/metrics", None, b"").body;
    assert!(metric(&metrics, "lookout_mqtt_reconnects_total") >= 1.0, "{metrics}");
    // Home Assistant coming back online (`online` on its status topic) has every config published again.
    let sent = metric(&metrics, "lookout_mqtt_messages_total");
    mqtt_watch(&["publish", &port.to_string(), "homeassistant/status", "online"]);
    let started = Instant::now();
    while metric(&request(http_port, "GET", "/metrics", None, b"").body, "lookout_mqtt_messages_total") < sent + 6.0 {
        assert!(started.elapsed() < patience(Duration::from_secs(20)), "the configs were not published again");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A second photo without people (a cup) in the camera's folder, taken up by a reload: the states follow the
    // scene as the camera turns from one photo to the other every 5 s.
    std::fs::copy(testdata_dir().join("vision/photos/coffee.png"), dir.join("frames/coffee.png")).unwrap();
    let before = daemon.seen.len();
    daemon.signal("HUP");
    daemon.event_after(before, "reloaded", patience(Duration::from_secs(60)), event_is("reloaded"));
    let followed = ["lookout_test/count/person", "lookout_test/occupancy"];
    let seconds = patience(Duration::from_secs(30)).as_secs().to_string();
    let history = &mqtt_watch(&["follow", &port.to_string(), &seconds, followed[0], followed[1]])["history"];
    let persons: Vec<&str> = history[followed[0]].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    let occupancy: Vec<&str> = history[followed[1]].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(persons.contains(&"0") && persons.iter().any(|n| *n != "0"), "person counts {persons:?}");
    assert!(occupancy.contains(&"ON") && occupancy.contains(&"OFF"), "occupancy {occupancy:?}");

    // kill -9: the broker publishes the last will, and a newcomer reads `offline`.
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    let started = Instant::now();
    loop {
        let seen = mqtt_watch(&["collect", &broker.port.to_string(), "5", &availability]);
        if seen["messages"][&availability] == "offline" {
            break;
        }
        assert!(started.elapsed() < patience(Duration::from_secs(30)), "still {seen}");
    }
}
