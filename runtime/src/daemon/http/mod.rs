//! The HTTP server: hyper's HTTP/1.1 on a single-threaded tokio runtime in a thread of its own. Keep-alive and
//! chunked bodies; request headers within `http.header_timeout_ms` (an idle keep-alive connection closes after it
//! too); a body within `http.timeout_ms` (408) and `http.max_body_kib` (413, before reading when it is declared);
//! connections capped in all and per client address; at most `REQUEST_BODIES` bodies held at once, so `/healthz`,
//! `/metrics` and `/v1/scene` never wait behind uploads or answers; the bearer token checked as soon as the headers
//! are read. Models run only on the pipeline thread: requests queue work for it and await the reply.
//! Endpoints: api.rs (Lookout's own), openai.rs (OpenAI-compatible, under /v1).

mod api;
pub mod multipart;
pub mod openai;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{HeaderMap, Method, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use lookout_models::audio::AudioLimit;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::metrics::Metrics;
use super::state::{Beat, Current, Shared};
use super::{wyoming, Checked};
use crate::plan::REQUEST_BODIES;

/// Largest request line plus headers (hyper's read buffer, which also bounds what one read takes of a body).
const MAX_HEAD_BYTES: usize = 16 * 1024;
const MAX_HEADERS: usize = 48;
/// How often the server's event loop beats for the watchdog, at most (a quarter of the stall limit when that is
/// shorter).
const HTTP_BEAT_EVERY: Duration = Duration::from_secs(1);
/// How long a request with a body waits for one of the `REQUEST_BODIES` slots before it is refused (503).
const SLOT_WAIT: Duration = Duration::from_secs(2);

/// What a request is served with; taken afresh from the configuration on each reload.
#[derive(Debug, Clone)]
struct Settings {
    token: Option<String>,
    max_body: usize,
    header_timeout: Duration,
    body_timeout: Duration,
    answer_timeout: Duration,
    max_connections: usize,
    max_connections_per_client: usize,
    /// A spoken question or a recording to transcribe may be as long as the microphone's ring holds; none without
    /// speech recognition.
    audio_limit: Option<AudioLimit>,
    /// Whether the configuration reads images (an image sent with a question needs the vision models).
    vision: bool,
    max_image_pixels: u32,
    models: openai::Catalog,
}

impl Settings {
    fn of(checked: &Checked) -> Settings {
        let (config, http) = (&checked.config, &checked.config.http);
        Settings {
            token: http.token.clone(),
            max_body: http.max_body_kib as usize * 1024,
            header_timeout: Duration::from_millis(u64::from(http.header_timeout_ms)),
            body_timeout: Duration::from_millis(u64::from(http.timeout_ms)),
            answer_timeout: Duration::from_secs(u64::from(http.answer_timeout_s)),
            max_connections: http.max_connections as usize,
            max_connections_per_client: http.max_connections_per_client as usize,
            audio_limit: config.question_audio(),
            vision: config.stage_enabled("vision"),
            max_image_pixels: http.max_image_pixels,
            models: openai::Catalog::of(checked),
        }
    }
}

/// What every request handler reaches: the settings, the running pipeline's shared state and the body slots.
struct Server {
    settings: RwLock<Arc<Settings>>,
    current: Arc<Current>,
    bodies: Arc<Semaphore>,
    /// Open connections per client address.
    clients: Mutex<HashMap<IpAddr, usize>>,
    /// The Wyoming server on the same runtime, when it is on.
    wyoming: Option<Arc<wyoming::Server>>,
}

/// The HTTP API, and the Wyoming server beside it when the configuration turns it on: one thread, one runtime.
pub struct HttpServer {
    pub addr: SocketAddr,
    pub wyoming_addr: Option<SocketAddr>,
    listen: String,
    wyoming_listen: Option<(String, u32)>,
    server: Arc<Server>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    pub fn start(checked: &Checked, current: Arc<Current>) -> anyhow::Result<HttpServer> {
        let http = &checked.config.http;
        let listener = std::net::TcpListener::bind(&http.listen)
            .with_context(|| format!("http.listen: cannot listen on {}", http.listen))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let wyoming = wyoming::Server::bind(checked, current.clone())?;
        let wyoming_addr = wyoming.as_ref().map(|(_, listener)| listener.local_addr()).transpose()?;
        let server = Arc::new(Server {
            settings: RwLock::new(Arc::new(Settings::of(checked))),
            current,
            bodies: Arc::new(Semaphore::new(REQUEST_BODIES as usize)),
            clients: Mutex::new(HashMap::new()),
            wyoming: wyoming.as_ref().map(|(server, _)| server.clone()),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            // Audio decoding runs off the server's thread, one body at a time (the memory plan counts one).
            .max_blocking_threads(2)
            .thread_name("http-blocking")
            .build()
            .context("starting the HTTP server's runtime")?;
        let (stop, stopped) = oneshot::channel();
        let thread = {
            let server = server.clone();
            std::thread::Builder::new().name("http".into()).spawn(move || {
                runtime.block_on(async move {
                    let beating = tokio::spawn(beat(server.current.clone()));
                    if let Some((wyoming, listener)) = wyoming {
                        tokio::spawn(wyoming.accept_loop(listener));
                    }
                    match TcpListener::from_std(listener) {
                        Ok(listener) => {
                            accept_loop(listener, server.clone(), stopped).await;
                            // Stopped on purpose: no longer watched.
                            beating.abort();
                            server.current.get().heartbeats.retire(Beat::Http);
                        }
                        // Left beating until the thread ends, then silent: the watchdog reports it.
                        Err(e) => eprintln!("lookout: the HTTP listener cannot be used: {e}"),
                    }
                });
                // In-flight connections end with the runtime.
                runtime.shutdown_timeout(Duration::from_millis(200));
            })?
        };
        Ok(HttpServer {
            addr,
            wyoming_addr,
            listen: http.listen.clone(),
            wyoming_listen: wyoming_listen(checked),
            server,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Whether this server listens where `checked` asks (as configured: `127.0.0.1:0` stays as written) with as
    /// many Wyoming sessions, so that a reload can keep it.
    pub fn listens_as(&self, checked: &Checked) -> bool {
        self.listen == checked.config.http.listen && self.wyoming_listen == wyoming_listen(checked)
    }

    /// Takes the token, limits, timeouts and models of a reloaded configuration.
    pub fn update(&self, checked: &Checked) {
        *self.server.settings.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Settings::of(checked));
        if let Some(wyoming) = &self.server.wyoming {
            wyoming.update(checked);
        }
    }
}

/// The Wyoming server's address and session count, when it is on.
fn wyoming_listen(checked: &Checked) -> Option<(String, u32)> {
    let wyoming = &checked.config.wyoming;
    wyoming.enabled.then(|| (wyoming.listen.clone(), wyoming.max_sessions))
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Server {
    fn settings(&self) -> Arc<Settings> {
        self.settings.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Counts a new connection from `ip`, or says why it is refused.
    fn admit(self: &Arc<Self>, ip: IpAddr, settings: &Settings) -> Result<ConnectionSlot, String> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = clients.values().sum();
        let from_client = clients.get(&ip).copied().unwrap_or(0);
        if total >= settings.max_connections {
            return Err(format!("{total} connections are open, the most http.max_connections allows"));
        }
        if from_client >= settings.max_connections_per_client {
            return Err(format!(
                "{from_client} connections from {ip} are open, the most http.max_connections_per_client allows"
            ));
        }
        *clients.entry(ip).or_default() += 1;
        Ok(ConnectionSlot { server: self.clone(), ip })
    }
}

/// One admitted connection; released when the connection ends, however it ends.
struct ConnectionSlot {
    server: Arc<Server>,
    ip: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut clients = self.server.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = clients.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                clients.remove(&self.ip);
            }
        }
    }
}

/// Beats for the watchdog while this thread's event loop turns: a handler that blocked the thread, or the thread's
/// end, silences it, and the daemon then stops its systemd pings as for a hung pipeline.
async fn beat(current: Arc<Current>) {
    loop {
        let shared = current.get();
        shared.beat(Beat::Http);
        // Well inside the stall limit, however short the watchdog interval is set.
        let every = HTTP_BEAT_EVERY.min(shared.stall_limit() / 4).max(Duration::from_millis(10));
        drop(shared);
        tokio::time::sleep(every).await;
    }
}

async fn accept_loop(listener: TcpListener, server: Arc<Server>, mut stop: oneshot::Receiver<()>) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors or a connection reset before it was taken: wait a moment, go on.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let settings = server.settings();
        match server.admit(peer.ip(), &settings) {
            Ok(slot) => {
                tokio::spawn(serve_connection(stream, server.clone(), slot, settings));
            }
            Err(reason) => {
                Metrics::add(&server.current.get().metrics.http_connections_refused, 1);
                tokio::spawn(refuse_connection(stream, reason));
            }
        }
    }
}

async fn refuse_connection(mut stream: TcpStream, reason: String) {
    let body = json!({ "error": format!("too many connections: {reason}; try again shortly") }).to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nRetry-After: \
         1\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(response.as_bytes())).await;
    let _ = stream.shutdown().await;
}

async fn serve_connection(stream: TcpStream, server: Arc<Server>, slot: ConnectionSlot, settings: Arc<Settings>) {
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |request| {
        let server = server.clone();
        async move { Ok::<_, Infallible>(handle(&server, request).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout)
        .keep_alive(true)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    let _ = builder.serve_connection(TokioIo::new(stream), service).await;
    drop(slot);
}

/// A request as the handlers see it: its head, with the body still to be read (or not) by the handler.
struct Request {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    body: Option<Incoming>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
    }

    /// The media type of the body, lower-cased, without parameters.
    pub fn mime(&self) -> String {
        self.header("content-type")
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    }
}

/// How a refusal is written: Lookout's `{"error": "..."}`, or OpenAI's `{"error": {"message", "type", "code"}}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Lookout,
    OpenAi,
}

impl Dialect {
    fn of(path: &str) -> Dialect {
        match openai::serves(path) {
            true => Dialect::OpenAi,
            false => Dialect::Lookout,
        }
    }
}

/// A request refused or failed: the status, what went wrong, and a short machine-readable code.
#[derive(Debug)]
pub struct Failure {
    pub status: StatusCode,
    pub message: String,
    pub code: &'static str,
    headers: Vec<(&'static str, &'static str)>,
}

impl Failure {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Failure {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Failure { status, message: message.into(), code, headers: Vec::new() }
    }

    pub fn with(mut self, name: &'static str, value: &'static str) -> Failure {
        self.headers.push((name, value));
        self
    }

    /// Refused for now (busy, stopping, no scene yet): the client may retry in a second.
    pub fn retry_later(code: &'static str, message: impl Into<String>) -> Failure {
        Failure::new(503, code, message).with("Retry-After", "1")
    }

    fn response(&self, dialect: Dialect) -> Response {
        let mut response = json_response(self.status, &self.body(dialect));
        for (name, value) in &self.headers {
            response.headers_mut().insert(*name, HeaderValue::from_static(value));
        }
        response
    }

    fn body(&self, dialect: Dialect) -> Value {
        match dialect {
            Dialect::Lookout => json!({ "error": self.message }),
            Dialect::OpenAi => {
                let kind = match self.status.as_u16() {
                    401 => "authentication_error",
                    403 => "permission_error",
                    404 => "not_found_error",
                    429 | 503 => "server_busy",
                    400..=499 => "invalid_request_error",
                    _ => "server_error",
                };
                json!({ "error": { "message": self.message, "type": kind, "param": null, "code": self.code } })
            }
        }
    }
}

type Response = hyper::Response<Payload>;

/// A response body: all at once, or pieces sent by a task as they are ready (server-sent events).
enum Payload {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl Body for Payload {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Payload::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Payload::Stream(pieces) => pieces.poll_recv(cx).map(|piece| piece.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Payload::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Payload::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Payload::Stream(_) => SizeHint::default(),
        }
    }
}

fn response(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response {
    let mut response = hyper::Response::new(Payload::Full(Some(body.into())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    response(status, "application/json", value.to_string())
}

/// A streamed response whose pieces the returned sender writes; the body ends when the sender is dropped.
fn stream_response(content_type: &'static str) -> (Response, mpsc::Sender<Bytes>) {
    let (pieces, body) = mpsc::channel(16);
    let mut response = hyper::Response::new(Payload::Stream(body));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    (response, pieces)
}

async fn handle(server: &Arc<Server>, request: hyper::Request<Incoming>) -> Response {
    let started = Instant::now();
    let shared = server.current.get();
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let dialect = Dialect::of(&path);
    let request = Request { method: parts.method, path, headers: parts.headers, body: Some(body) };
    let settings = server.settings();
    let response = match route(server, &settings, &shared, request).await {
        Ok(response) => response,
        Err(failure) => failure.response(dialect),
    };
    let metrics = &shared.metrics;
    Metrics::add(&metrics.http_requests, 1);
    match response.status().as_u16() {
        400..=499 => Metrics::add(&metrics.http_client_errors, 1),
        500..=599 => Metrics::add(&metrics.http_server_errors, 1),
        _ => {}
    }
    metrics.latency.http.observe(started.elapsed());
    response
}

/// The method each endpoint takes.
fn method_of(path: &str) -> Option<Method> {
    match path {
        "/healthz" | "/metrics" | "/v1/scene" | "/v1/models" => Some(Method::GET),
        "/v1/ask" | "/v1/chat/completions" | "/v1/audio/transcriptions" => Some(Method::POST),
        _ => None,
    }
}

async fn route(
    server: &Arc<Server>,
    settings: &Arc<Settings>,
    shared: &Arc<Shared>,
    request: Request,
) -> Result<Response, Failure> {
    let path = request.path.as_str();
    let Some(allowed) = method_of(path) else {
        return Err(Failure::new(404, "unknown_url", format!("no such endpoint: {path}")));
    };
    if request.method != allowed {
        let allow = if allowed == Method::GET { "GET" } else { "POST" };
        return Err(Failure::new(405, "method_not_allowed", format!("{path} takes {allow}")).with("Allow", allow));
    }
    if path == "/healthz" {
        return Ok(api::health(shared));
    }
    authorize(&request, settings)?;
    let context = Handling { server: server.clone(), settings: settings.clone(), shared: shared.clone() };
    match path {
        "/metrics" => Ok(api::metrics(&context)),
        "/v1/scene" => Ok(api::scene(shared)),
        "/v1/ask" => api::ask(&context, request).await,
        "/v1/models" => Ok(openai::models(settings)),
        "/v1/chat/completions" => openai::chat(context, request).await,
        _ => openai::transcriptions(&context, request).await,
    }
}

/// The bearer token when one is configured; without one, only requests naming a loopback host.
fn authorize(request: &Request, settings: &Settings) -> Result<(), Failure> {
    if let Some(token) = &settings.token {
        let expected = format!("Bearer {token}");
        let given = request.header("authorization").unwrap_or_default();
        if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            return Err(
                Failure::new(401, "invalid_api_key", "a bearer token is required").with("WWW-Authenticate", "Bearer")
            );
        }
    } else if let Some(host) = request.header("host").filter(|host| !is_loopback_host(host)) {
        // Without a token the API listens on loopback only, but a web page could still reach it through a DNS name
        // rebound to 127.0.0.1; its requests name that host.
        return Err(Failure::new(
            403,
            "host_refused",
            format!("Host `{host}` is refused: without http.token only localhost, 127.0.0.1 and [::1] are answered"),
        ));
    }
    Ok(())
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

/// What an endpoint handler works with.
struct Handling {
    server: Arc<Server>,
    pub settings: Arc<Settings>,
    pub shared: Arc<Shared>,
}

/// A request body read into memory, and the slot that counts it in the memory plan while it is held.
struct ReadBody {
    pub bytes: Vec<u8>,
    pub slot: OwnedSemaphorePermit,
}

impl Handling {
    /// Connections open, request bodies held and Wyoming sessions open now.
    pub fn server_load(&self) -> (usize, usize, usize) {
        let connections = self.server.clients.lock().unwrap_or_else(|p| p.into_inner()).values().sum();
        let sessions = self.server.wyoming.as_ref().map_or(0, |w| w.open_sessions());
        (connections, REQUEST_BODIES as usize - self.server.bodies.available_permits(), sessions)
    }

    /// Reads the body within `http.max_body_kib` and `http.timeout_ms`, once one of the body slots is free.
    pub async fn body(&self, request: &mut Request) -> Result<ReadBody, Failure> {
        let limit = self.settings.max_body;
        let too_large = |length: u64| {
            Failure::new(413, "request_too_large", format!("the body has {length} bytes; the limit is {limit}"))
        };
        if let Some(declared) = request.header(CONTENT_LENGTH.as_str()) {
            let length: u64 = declared.parse().map_err(|_| {
                Failure::new(400, "bad_content_length", format!("Content-Length `{declared}` is not a number"))
            })?;
            if length > limit as u64 {
                return Err(too_large(length));
            }
        }
        let slot = tokio::time::timeout(SLOT_WAIT, self.server.bodies.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| {
                Failure::retry_later("server_busy", format!("all {REQUEST_BODIES} request body slots are busy"))
            })?;
        let Some(mut body) = request.body.take() else {
            return Err(Failure::new(500, "internal_error", "the body was read twice"));
        };
        let mut bytes = Vec::new();
        let read = async {
            while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                let frame = frame.map_err(|e| Failure::new(400, "bad_body", format!("reading the body: {e}")))?;
                if let Some(data) = frame.data_ref() {
                    if bytes.len() + data.len() > limit {
                        return Err(too_large((bytes.len() + data.len()) as u64));
                    }
                    bytes.extend_from_slice(data);
                }
            }
            Ok(())
        };
        match tokio::time::timeout(self.settings.body_timeout, read).await {
            Ok(result) => result?,
            Err(_) => return Err(Failure::new(408, "request_timeout", "the request body did not arrive in time")),
        }
        Ok(ReadBody { bytes, slot })
    }

    /// Decodes WAV or FLAC bytes to 16 kHz mono off the server's thread, one body at a time, within the
    /// configured audio length.
    pub async fn decode_audio(&self, bytes: Vec<u8>) -> Result<Vec<f32>, Failure> {
        let all = 0..bytes.len();
        self.decode_audio_range(bytes, all).await
    }

    /// Decodes the audio at `range` of `bytes` (a file inside a form) as [`Handling::decode_audio`] does.
    pub async fn decode_audio_range(&self, bytes: Vec<u8>, range: std::ops::Range<usize>) -> Result<Vec<f32>, Failure> {
        let Some(limit) = self.settings.audio_limit else {
            return Err(Failure::new(422, "speech_off", "speech recognition is off in this configuration"));
        };
        let decoded = tokio::task::spawn_blocking(move || {
            // One body at a time is decoded, so the memory plan counts one decoding, not one per request.
            static DECODING: Mutex<()> = Mutex::new(());
            let _decoding = DECODING.lock().unwrap_or_else(|p| p.into_inner());
            let audio = bytes.get(range).unwrap_or_default();
            lookout_models::audio::decode_bytes(audio, limit).and_then(lookout_models::audio::to_mono_16k)
        })
        .await
        .map_err(|e| Failure::new(500, "internal_error", format!("decoding the audio: {e}")))?;
        decoded.map_err(|e| Failure::new(400, "bad_audio", format!("the audio cannot be used: {e}")))
    }

    /// Waits for the pipeline's reply within `http.answer_timeout_s`.
    pub async fn wait<T>(&self, reply: oneshot::Receiver<Result<T, super::state::AskError>>) -> Result<T, Failure> {
        let timeout = self.settings.answer_timeout;
        match tokio::time::timeout(timeout, reply).await {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(e))) => Err(ask_failure(&e)),
            Ok(Err(_)) => Err(Failure::new(500, "internal_error", "the pipeline dropped the request")),
            Err(_) => Err(Failure::new(504, "timeout", format!("no answer within {} s", timeout.as_secs()))),
        }
    }
}

/// The status and code for the pipeline's refusal of a question.
fn ask_failure(error: &super::state::AskError) -> Failure {
    use super::state::AskError;
    let message = error.to_string();
    match error {
        AskError::Busy => Failure::retry_later("server_busy", message),
        AskError::NoScene => Failure::retry_later("no_scene", message),
        AskError::Stopping => Failure::retry_later("stopping", message),
        AskError::NoSpeech => Failure::new(422, "no_speech", message),
        AskError::Invalid(_) => Failure::new(400, "invalid_input", message),
        AskError::Unavailable(_) => Failure::new(422, "unavailable", message),
        AskError::TimedOut => Failure::new(504, "timeout", message),
        AskError::Failed(_) => Failure::new(500, "pipeline_error", message),
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
