//! The HTTP API: `GET /v1/scene`, `POST /v1/ask` (a JSON question or a WAV body), `GET /healthz`, `GET /metrics`.
//! A small HTTP/1.1 server on std threads: one request per connection, at most `HTTP_CONNECTIONS` at once, the
//! whole request within `http.timeout_ms` (slow clients get 408), bodies within `http.max_body_kib` (413), and a
//! bearer token on everything but `/healthz` when one is configured.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use lookout_models::audio::{self, AudioLimit};
use serde::Deserialize;
use serde_json::{json, Value};

use super::metrics::Metrics;
use super::state::{AskError, Current, Origin, Question, Shared};
use crate::config::Config;
use crate::fusion::MAX_QUESTION_BYTES;
use crate::memory;
use crate::plan::HTTP_CONNECTIONS;

/// Largest request line plus headers.
const MAX_HEAD_BYTES: usize = 16 * 1024;
const MAX_HEADERS: usize = 48;

#[derive(Debug, Clone)]
struct Settings {
    token: Option<String>,
    max_body: usize,
    timeout: Duration,
    answer_timeout: Duration,
    /// A spoken question may be as long as the microphone's ring holds; none without speech recognition.
    question_audio: Option<AudioLimit>,
}

impl Settings {
    fn of(config: &Config) -> Settings {
        let http = &config.http;
        Settings {
            token: http.token.clone(),
            max_body: http.max_body_kib as usize * 1024,
            timeout: Duration::from_millis(u64::from(http.timeout_ms)),
            answer_timeout: Duration::from_secs(u64::from(http.answer_timeout_s)),
            question_audio: config.question_audio(),
        }
    }
}

pub struct HttpServer {
    pub addr: SocketAddr,
    listen: String,
    settings: Arc<RwLock<Settings>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    pub fn start(config: &Config, current: Arc<Current>) -> anyhow::Result<HttpServer> {
        let http = &config.http;
        let listener = TcpListener::bind(&http.listen)
            .with_context(|| format!("http.listen: cannot listen on {}", http.listen))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let settings = Arc::new(RwLock::new(Settings::of(config)));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (settings, stop) = (settings.clone(), stop.clone());
            std::thread::Builder::new()
                .name("http".into())
                .spawn(move || accept_loop(listener, settings, current, stop))?
        };
        Ok(HttpServer { addr, listen: http.listen.clone(), settings, stop, thread: Some(thread) })
    }

    /// The address as configured (`127.0.0.1:0` stays as written, `addr` is where it landed).
    pub fn listen(&self) -> &str {
        &self.listen
    }

    /// Takes the token, limits and timeouts of a reloaded configuration.
    pub fn update(&self, config: &Config) {
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = Settings::of(config);
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept_loop(listener: TcpListener, settings: Arc<RwLock<Settings>>, current: Arc<Current>, stop: Arc<AtomicBool>) {
    let active = Arc::new(AtomicUsize::new(0));
    while !stop.load(Relaxed) {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(_) => continue,
        };
        let _ = stream.set_nonblocking(false);
        let shared = current.get();
        if active.load(Relaxed) >= HTTP_CONNECTIONS as usize {
            Metrics::add(&shared.metrics.http_connections_refused, 1);
            let mut stream = stream;
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = Response::error(503, "every request slot is busy; try again shortly").write(&mut stream);
            continue;
        }
        active.fetch_add(1, Relaxed);
        let settings = settings.read().unwrap_or_else(|p| p.into_inner()).clone();
        let slot = active.clone();
        let spawned = std::thread::Builder::new().name("http-request".into()).spawn(move || {
            serve_connection(stream, &settings, &shared);
            slot.fetch_sub(1, Relaxed);
        });
        if spawned.is_err() {
            active.fetch_sub(1, Relaxed);
        }
    }
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    extra: Vec<(&'static str, String)>,
}

impl Response {
    fn json(status: u16, value: &Value) -> Response {
        Response { status, content_type: "application/json", body: value.to_string().into_bytes(), extra: Vec::new() }
    }

    fn error(status: u16, message: &str) -> Response {
        Response::json(status, &json!({ "error": message }))
    }

    fn with(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.extra.push((name, value.into()));
        self
    }

    fn write(&self, stream: &mut TcpStream) -> std::io::Result<()> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.extra {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(&self.body)?;
        stream.flush()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Status",
    }
}

fn serve_connection(mut stream: TcpStream, settings: &Settings, shared: &Shared) {
    let started = Instant::now();
    let response = match read_request(&mut stream, settings) {
        Ok(request) => route(&request, settings, shared),
        Err(response) => response,
    };
    let metrics = &shared.metrics;
    Metrics::add(&metrics.http_requests, 1);
    match response.status {
        400..=499 => Metrics::add(&metrics.http_client_errors, 1),
        500..=599 => Metrics::add(&metrics.http_server_errors, 1),
        _ => {}
    }
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    if response.write(&mut stream).is_ok() {
        // Read what the client still sends (a refused body) for a moment, so closing does not reset the
        // connection before the client has read the response.
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
        let mut sink = [0u8; 8192];
        let mut drained = 0;
        while drained < 1 << 20 {
            match stream.read(&mut sink) {
                Ok(n) if n > 0 => drained += n,
                _ => break,
            }
        }
    }
    metrics.latency.http.observe(started.elapsed());
}

/// Reads one request within the deadline; a failure is the response to send.
fn read_request(stream: &mut TcpStream, settings: &Settings) -> Result<Request, Response> {
    let deadline = Instant::now() + settings.timeout;
    let mut buf = Vec::with_capacity(2048);
    let head_len = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(Response::error(431, &format!("request line and headers exceed {MAX_HEAD_BYTES} bytes")));
        }
        read_some(stream, &mut buf, deadline)?;
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(&buf[..head_len]) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(Response::error(400, "incomplete request head")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Response::error(431, &format!("more than {MAX_HEADERS} headers")))
        }
        Err(e) => return Err(Response::error(400, &format!("malformed request: {e}"))),
    }
    let method = parsed.method.unwrap_or_default().to_string();
    let path = parsed.path.unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = parsed
        .headers
        .iter()
        .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).trim().to_string()))
        .collect();
    let mut request = Request { method, path, headers, body: Vec::new() };
    if request.header("transfer-encoding").is_some() {
        return Err(Response::error(411, "chunked bodies are not accepted; send Content-Length"));
    }
    let length = match request.header("content-length") {
        None => 0,
        Some(v) => {
            v.parse::<usize>().map_err(|_| Response::error(400, &format!("Content-Length `{v}` is not a number")))?
        }
    };
    if length > settings.max_body {
        return Err(Response::error(413, &format!("the body has {length} bytes; the limit is {}", settings.max_body)));
    }
    let mut body = buf.split_off(head_len);
    while body.len() < length {
        read_some(stream, &mut body, deadline)?;
    }
    body.truncate(length);
    request.body = body;
    Ok(request)
}

fn read_some(stream: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant) -> Result<(), Response> {
    let timeout = || Response::error(408, "the request did not arrive in time");
    let remaining = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()).ok_or_else(timeout)?;
    let _ = stream.set_read_timeout(Some(remaining));
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk) {
        Ok(0) => Err(Response::error(400, "the connection closed mid-request")),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => Err(timeout()),
        Err(e) => Err(Response::error(400, &format!("reading the request: {e}"))),
    }
}

fn route(request: &Request, settings: &Settings, shared: &Shared) -> Response {
    let path = request.path.split('?').next().unwrap_or_default();
    let allowed = match path {
        "/healthz" | "/metrics" | "/v1/scene" => "GET",
        "/v1/ask" => "POST",
        _ => return Response::error(404, &format!("no such endpoint: {path}")),
    };
    if request.method != allowed {
        return Response::error(405, &format!("{path} takes {allowed}")).with("Allow", allowed);
    }
    if path == "/healthz" {
        return health(shared);
    }
    if let Some(token) = &settings.token {
        let expected = format!("Bearer {token}");
        let given = request.header("authorization").unwrap_or_default();
        if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            return Response::error(401, "a bearer token is required").with("WWW-Authenticate", "Bearer");
        }
    } else if let Some(host) = request.header("host").filter(|host| !is_loopback_host(host)) {
        // Without a token the API listens on loopback only, but a web page could still reach it through a DNS name
        // rebound to 127.0.0.1; its requests name that host.
        return Response::error(
            403,
            &format!("Host `{host}` is refused: without http.token only localhost, 127.0.0.1 and [::1] are answered"),
        );
    }
    match path {
        "/metrics" => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4",
            body: shared.metrics.render(memory::rss()).into_bytes(),
            extra: Vec::new(),
        },
        "/v1/scene" => scene(shared),
        _ => ask(request, settings, shared),
    }
}

/// Whether a `Host` header names this machine's loopback interface: `localhost`, 127.0.0.0/8 or `[::1]`, with or
/// without a port.
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        let Some((address, port)) = rest.split_once(']') else { return false };
        return (port.is_empty() || port.strip_prefix(':').is_some_and(is_port))
            && address.parse::<std::net::Ipv6Addr>().is_ok_and(|a| a.is_loopback());
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if is_port(port) => name,
        Some(_) => return false,
        None => host,
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok_and(|a| a.is_loopback())
}

fn is_port(text: &str) -> bool {
    text.parse::<u16>().is_ok()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn health(shared: &Shared) -> Response {
    let stalled = shared.heartbeats.stalled(shared.now_ms(), shared.stall_limit());
    let m = &shared.metrics;
    let body = json!({
        "status": if stalled.is_some() { "stalled" } else { "ok" },
        "stalled": stalled.map(|b| format!("{b:?}").to_lowercase()),
        "board": shared.board.lock().map(|b| b.clone()).unwrap_or_default(),
        "uptime_s": shared.started.elapsed().as_secs_f64(),
        "frames_processed": Metrics::get(&m.frames_processed),
        "captions": Metrics::get(&m.captions),
        "answers": Metrics::get(&m.answers),
    });
    Response::json(if stalled.is_some() { 503 } else { 200 }, &body)
}

fn scene(shared: &Shared) -> Response {
    let Some(p) = shared.latest() else {
        return Response::error(503, "no camera frame has been analysed yet").with("Retry-After", "1");
    };
    let caption = p.caption.as_ref().map(|c| {
        json!({ "text": c.text, "source": c.source, "fallback_reason": c.fallback_reason, "frame": c.frame,
                "age_s": c.at.elapsed().as_secs_f64() })
    });
    Response::json(
        200,
        &json!({
            "frame": p.frame,
            "age_s": p.seen_at.elapsed().as_secs_f64(),
            "checked_frame": p.checked.map(|(frame, _)| frame),
            "checked_age_s": p.checked.map(|(_, at)| at.elapsed().as_secs_f64()),
            "caption": caption,
            "objects": p.scene.objects,
            "counts": p.scene.counts,
            "text": p.scene.text,
            "width": p.scene.width,
            "height": p.scene.height,
        }),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AskBody {
    question: String,
}

fn ask(request: &Request, settings: &Settings, shared: &Shared) -> Response {
    let content_type = request.header("content-type").unwrap_or_default();
    let mime = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let question = match mime.as_str() {
        "application/json" => match serde_json::from_slice::<AskBody>(&request.body) {
            Ok(body) if body.question.trim().is_empty() => return Response::error(400, "`question` is empty"),
            Ok(body) if body.question.len() > MAX_QUESTION_BYTES => {
                return Response::error(
                    400,
                    &format!("`question` has {} bytes; the limit is {MAX_QUESTION_BYTES}", body.question.len()),
                )
            }
            Ok(body) => Question::Text(body.question.trim().to_string()),
            Err(e) => return Response::error(400, &format!("malformed JSON: {e}; expected {{\"question\": \"...\"}}")),
        },
        "audio/wav" | "audio/wave" | "audio/x-wav" | "audio/vnd.wave" | "audio/flac" => {
            let Some(limit) = settings.question_audio else {
                return Response::error(422, "speech recognition is off in this configuration; ask in JSON text");
            };
            // One body at a time is decoded, so the memory plan counts one decoding, not one per connection.
            static DECODING: Mutex<()> = Mutex::new(());
            let decoding = DECODING.lock().unwrap_or_else(|p| p.into_inner());
            let decoded = audio::decode_bytes(&request.body, limit).and_then(audio::to_mono_16k);
            drop(decoding);
            match decoded {
                Ok(samples) => Question::Speech(samples),
                Err(e) => return Response::error(400, &format!("the audio cannot be used: {e}")),
            }
        }
        "" => return Response::error(415, "Content-Type is required: application/json or audio/wav"),
        other => {
            return Response::error(
                415,
                &format!("Content-Type `{other}` is not accepted: use application/json or audio/wav"),
            )
        }
    };
    let answer = match shared.ask(question, Origin::Http) {
        Ok(answer) => answer,
        Err(e) => return Response::error(503, &e.to_string()).with("Retry-After", "1"),
    };
    match answer.recv_timeout(settings.answer_timeout) {
        Ok(Ok(answer)) => Response::json(200, &serde_json::to_value(&answer).unwrap_or(Value::Null)),
        Ok(Err(e @ (AskError::NoScene | AskError::Busy | AskError::Stopping))) => {
            Response::error(503, &e.to_string()).with("Retry-After", "1")
        }
        Ok(Err(e @ AskError::NoSpeech)) => Response::error(422, &e.to_string()),
        Ok(Err(e @ AskError::TimedOut)) => Response::error(504, &e.to_string()),
        Ok(Err(e @ AskError::Failed(_))) => Response::error(500, &e.to_string()),
        Err(_) => Response::error(504, &format!("no answer within {} s", settings.answer_timeout.as_secs())),
    }
}

#[cfg(test)]
mod tests {
    use super::is_loopback_host;

    #[test]
    fn only_loopback_names_pass_the_host_check() {
        for host in
            ["localhost", "LOCALHOST:8470", "127.0.0.1", "127.0.0.1:8470", "127.1.2.3:80", "[::1]", "[::1]:8470"]
        {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8470",
            "localhost.evil.example",
            "192.168.1.20:8470",
            "0.0.0.0",
            "[::2]:8470",
            "[::1]x",
            "127.0.0.1:99999",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
