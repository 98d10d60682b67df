//! The Wyoming speech-to-text server, through which Home Assistant's voice pipeline (Assist) has Lookout transcribe
//! spoken commands. A message is a JSON header line, then `data_length` bytes of JSON merged over the header's
//! `data`, then `payload_length` bytes of payload. Served: `describe` → `info` (from memory, whatever the pipeline
//! is doing), `transcribe`, `audio-start`, `audio-chunk`s and `audio-stop` → `transcript`, `ping` → `pong`; other
//! types are ignored, as the protocol asks. Every part of a message is bounded before it is read, a session's audio
//! by the configured utterance length; a protocol error gets an `error` event and closes the connection. Sessions
//! run on the HTTP server's runtime; transcription goes through the pipeline's question queue.

use std::future::Future as _;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use lookout_models::audio::{resample, AudioLimit, TARGET_SAMPLE_RATE};
use lookout_models::whisper::LANGUAGES;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::metrics::Metrics;
use super::state::{AskError, Current, Origin};
use super::Checked;
use crate::plan::{WYOMING_MAX_DATA_BYTES, WYOMING_MAX_HEADER_BYTES, WYOMING_MAX_PAYLOAD_BYTES, WYOMING_MAX_RATE};

/// The protocol version written in every header: the one Home Assistant's integration pins.
const PROTOCOL_VERSION: &str = "1.7.1";
const MIN_RATE: u32 = 8_000;
const MAX_CHANNELS: u32 = 2;
/// Bytes per sample: 16-bit signed little-endian PCM, what Home Assistant and the satellites send.
const SAMPLE_WIDTH: u32 = 2;
/// How long, and for how many bytes, a refused client's data is still read after the error event.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 4 * 1024 * 1024;

/// What a session is served with; rebuilt from the configuration on reload.
pub struct Settings {
    /// The `info` message, encoded once.
    info: Vec<u8>,
    audio_limit: AudioLimit,
    idle_timeout: Duration,
    answer_timeout: Duration,
}

impl Settings {
    fn of(checked: &Checked) -> Settings {
        let config = &checked.config;
        Settings {
            info: encode("info", &info(checked), &[]),
            audio_limit: AudioLimit::seconds(config.microphone.ring_s),
            idle_timeout: Duration::from_millis(u64::from(config.wyoming.idle_timeout_ms)),
            answer_timeout: Duration::from_secs(u64::from(config.http.answer_timeout_s)),
        }
    }
}

/// The `info` event's data: one speech-to-text program, Lookout, with the configured Whisper as its model; every
/// key the clients' dataclasses require is present.
fn info(checked: &Checked) -> Value {
    let variant = checked.config.models.speech.as_str();
    let model = checked.bundle.component("asr-decoder", Some(variant)).map(|c| c.name.clone());
    let model = model.unwrap_or_else(|_| format!("whisper-{variant}"));
    let lookout = json!({ "name": "Lookout", "url": env!("CARGO_PKG_REPOSITORY") });
    json!({
        "asr": [{
            "name": "lookout",
            "attribution": lookout,
            "installed": true,
            "description": "Lookout: speech recognition on this device, Whisper through Lookout's own runtime",
            "version": env!("CARGO_PKG_VERSION"),
            "models": [{
                "name": model,
                "attribution": { "name": "OpenAI", "url": "https://github.com/openai/whisper" },
                "installed": true,
                "description": format!("Whisper base, multilingual ({variant})"),
                "version": variant,
                "languages": LANGUAGES.as_slice(),
            }],
            "supports_transcript_streaming": false,
            "requires_external_vad": true,
        }],
        "tts": [], "handle": [], "intent": [], "wake": [], "mic": [], "snd": [],
    })
}

/// The listener and what its sessions share.
pub struct Server {
    settings: RwLock<Arc<Settings>>,
    current: Arc<Current>,
    sessions: Arc<Semaphore>,
    max_sessions: usize,
}

impl Server {
    /// Binds `wyoming.listen`, or returns none when the server is off.
    pub fn bind(
        checked: &Checked,
        current: Arc<Current>,
    ) -> anyhow::Result<Option<(Arc<Server>, std::net::TcpListener)>> {
        let wyoming = &checked.config.wyoming;
        if !wyoming.enabled {
            return Ok(None);
        }
        let listener = std::net::TcpListener::bind(&wyoming.listen)
            .with_context(|| format!("wyoming.listen: cannot listen on {}", wyoming.listen))?;
        listener.set_nonblocking(true)?;
        let server = Server {
            settings: RwLock::new(Arc::new(Settings::of(checked))),
            current,
            sessions: Arc::new(Semaphore::new(wyoming.max_sessions as usize)),
            max_sessions: wyoming.max_sessions as usize,
        };
        Ok(Some((Arc::new(server), listener)))
    }

    /// Takes the limits and the model of a reloaded configuration (the address and the session count stay).
    pub fn update(&self, checked: &Checked) {
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Settings::of(checked));
    }

    fn settings(&self) -> Arc<Settings> {
        self.settings.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sessions open now.
    pub fn open_sessions(&self) -> usize {
        self.max_sessions.saturating_sub(self.sessions.available_permits())
    }

    /// Accepts clients until the runtime ends; over `wyoming.max_sessions` a client gets an error event.
    pub async fn accept_loop(self: Arc<Self>, listener: std::net::TcpListener) {
        let listener = match TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => return eprintln!("lookout: the Wyoming listener cannot be used: {e}"),
        };
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of file descriptors or a connection reset before it was taken: wait a moment, go on.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let metrics = &self.current.get().metrics;
            match self.sessions.clone().try_acquire_owned() {
                Ok(permit) => {
                    Metrics::add(&metrics.wyoming_sessions, 1);
                    tokio::spawn(self.clone().serve(stream, permit));
                }
                Err(_) => {
                    Metrics::add(&metrics.wyoming_refused, 1);
                    tokio::spawn(refuse(stream));
                }
            }
        }
    }

    async fn serve(self: Arc<Self>, stream: TcpStream, _session: OwnedSemaphorePermit) {
        let _ = stream.set_nodelay(true);
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::with_capacity(16 * 1024, read);
        let mut session = Session::default();
        loop {
            let settings = self.settings();
            let message = match tokio::time::timeout(settings.idle_timeout, read_message(&mut reader)).await {
                Ok(Ok(Some(message))) => message,
                Ok(Ok(None)) => return, // The client closed the connection between messages.
                Ok(Err(MessageError::Closed)) => return,
                Ok(Err(MessageError::Invalid(reason))) => {
                    return self.fail(&mut reader, &mut write, Refusal::new("invalid_message", reason)).await;
                }
                Err(_) => {
                    let reason = format!("no message within {} ms", settings.idle_timeout.as_millis());
                    return self.fail(&mut reader, &mut write, Refusal::new("timeout", reason)).await;
                }
            };
            let reply = match self.handle(&mut session, message, &settings, &mut reader).await {
                Ok(Some(reply)) => reply,
                Ok(None) => continue,
                Err(refusal) => return self.fail(&mut reader, &mut write, refusal).await,
            };
            // A client that does not read its replies is let go like one that does not write.
            if !matches!(tokio::time::timeout(settings.idle_timeout, write.write_all(&reply)).await, Ok(Ok(()))) {
                return;
            }
        }
    }

    /// What a message asks for: the reply to write, if any.
    async fn handle(
        &self,
        session: &mut Session,
        message: Message,
        settings: &Settings,
        reader: &mut (impl AsyncBufRead + Unpin),
    ) -> Result<Option<Vec<u8>>, Refusal> {
        match session.take(message, &settings.info, settings.audio_limit)? {
            Step::Nothing => Ok(None),
            Step::Reply(reply) => Ok(Some(reply)),
            Step::Transcribe(audio, language) => {
                let text = match audio {
                    Some(audio) => self.transcribe(audio, &language, settings, reader).await?,
                    None => String::new(), // No audio-start: no audio, an empty transcript.
                };
                Metrics::add(&self.current.get().metrics.wyoming_transcripts, 1);
                Ok(Some(encode("transcript", &json!({ "text": text, "language": language }), &[])))
            }
        }
    }

    /// The text of a session's audio, from the pipeline; none for no audio or no speech. Stops waiting, and so
    /// cancels the work, when the client leaves.
    async fn transcribe(
        &self,
        audio: Audio,
        language: &str,
        settings: &Settings,
        reader: &mut (impl AsyncBufRead + Unpin),
    ) -> Result<String, Refusal> {
        if audio.samples.is_empty() {
            return Ok(String::new());
        }
        let rate = audio.format.rate;
        let samples = match rate {
            TARGET_SAMPLE_RATE => audio.samples,
            _ => tokio::task::spawn_blocking(move || resample(&audio.samples, rate, TARGET_SAMPLE_RATE))
                .await
                .map_err(|e| Refusal::new("internal_error", format!("resampling: {e}")))?
                .map_err(|e| Refusal::new("bad_audio", format!("resampling from {rate} Hz: {e}")))?,
        };
        let shared = self.current.get();
        let reply = shared
            .transcribe(samples, Some(language.to_string()), Origin::Wyoming)
            .map_err(|e| Refusal::new(ask_code(&e), e.to_string()))?;
        drop(shared);
        let outcome = tokio::select! {
            outcome = tokio::time::timeout(settings.answer_timeout, reply) => outcome,
            () = client_gone(reader) => return Err(Refusal::new("client_gone", "the client left".to_string())),
        };
        match outcome {
            Ok(Ok(Ok(transcript))) => Ok(transcript.text.trim().to_string()),
            Ok(Ok(Err(AskError::NoSpeech))) => Ok(String::new()),
            Ok(Ok(Err(e))) => Err(Refusal::new(ask_code(&e), e.to_string())),
            Ok(Err(_)) => Err(Refusal::new("internal_error", "the pipeline dropped the request".to_string())),
            Err(_) => {
                Err(Refusal::new("timeout", format!("no transcript within {} s", settings.answer_timeout.as_secs())))
            }
        }
    }

    /// Writes an `error` event and ends the session. What the client still sends is read and dropped for a
    /// moment (`LINGER`, at most `LINGER_BYTES`), so that closing with unread data does not reset the connection
    /// under the error before the client has read it.
    async fn fail(
        &self,
        reader: &mut (impl AsyncBufRead + Unpin),
        write: &mut (impl AsyncWriteExt + Unpin),
        refusal: Refusal,
    ) {
        Metrics::add(&self.current.get().metrics.wyoming_errors, 1);
        if refusal.code == "client_gone" {
            return;
        }
        send_error(write, &refusal).await;
        let mut sink = [0u8; 8192];
        let mut dropped = 0;
        let _ = tokio::time::timeout(LINGER, async {
            while dropped < LINGER_BYTES {
                match reader.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => dropped += n,
                }
            }
        })
        .await;
    }
}

/// A client over `wyoming.max_sessions`: told so, and closed.
async fn refuse(mut stream: TcpStream) {
    let text = "the Wyoming server is serving as many clients as wyoming.max_sessions allows; try again shortly";
    send_error(&mut stream, &Refusal::new("busy", text.to_string())).await;
}

/// The `error` event for `refusal`, written within `LINGER`, then the end of this side of the connection.
async fn send_error(write: &mut (impl AsyncWriteExt + Unpin), refusal: &Refusal) {
    let event = encode("error", &json!({ "text": refusal.text, "code": refusal.code }), &[]);
    let _ = tokio::time::timeout(LINGER, write.write_all(&event)).await;
    let _ = write.shutdown().await;
}

/// Resolves when the client has closed its side (or the connection broke); never while it is only quiet.
async fn client_gone(reader: &mut (impl AsyncBufRead + Unpin)) {
    match reader.fill_buf().await {
        Ok([]) | Err(_) => {}
        // It sent more (a ping while it waits): left in the buffer for the next read.
        Ok(_) => std::future::pending().await,
    }
}

fn ask_code(error: &AskError) -> &'static str {
    match error {
        AskError::Busy => "busy",
        AskError::Stopping => "stopping",
        AskError::TimedOut => "timeout",
        AskError::Unavailable(_) => "unavailable",
        _ => "transcription_failed",
    }
}

/// A language as Whisper names it: `en` from `en`, `en-US` or `en_GB`.
fn whisper_language(language: &str) -> Result<String, Refusal> {
    let primary = language.split(['-', '_']).next().unwrap_or_default().to_ascii_lowercase();
    match LANGUAGES.contains(&primary.as_str()) {
        true => Ok(primary),
        false => Err(Refusal::new("unsupported_language", format!("Whisper does not know the language `{language}`"))),
    }
}

/// What ends a session with an error event.
#[derive(Debug, PartialEq)]
struct Refusal {
    code: &'static str,
    text: String,
}

impl Refusal {
    fn new(code: &'static str, text: String) -> Refusal {
        Refusal { code, text }
    }
}

/// What a session has been told so far.
#[derive(Default)]
struct Session {
    language: Option<String>,
    audio: Option<Audio>,
}

/// What a message leads to.
enum Step {
    Nothing,
    Reply(Vec<u8>),
    /// `audio-stop`: the audio so far (none without `audio-start`) to transcribe in this language.
    Transcribe(Option<Audio>, String),
}

impl Session {
    /// Takes one message: `info` answers `describe`, `limit` bounds the audio.
    fn take(&mut self, message: Message, info: &[u8], limit: AudioLimit) -> Result<Step, Refusal> {
        let Message { kind, data, payload } = message;
        match kind.as_str() {
            "describe" => Ok(Step::Reply(info.to_vec())),
            "ping" => Ok(Step::Reply(encode("pong", &json!({ "text": data.get("text") }), &[]))),
            "transcribe" => {
                self.language = match data.get("language") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(language)) => Some(whisper_language(language)?),
                    Some(other) => {
                        return Err(Refusal::new("invalid_message", format!("language {other} is not text")))
                    }
                };
                Ok(Step::Nothing)
            }
            "audio-start" => {
                self.audio = Some(Audio::new(AudioFormat::of(&data)?, limit));
                Ok(Step::Nothing)
            }
            "audio-chunk" => {
                let audio = self
                    .audio
                    .as_mut()
                    .ok_or_else(|| Refusal::new("audio_not_started", "audio-chunk before audio-start".to_string()))?;
                audio.push(AudioFormat::of(&data)?, &payload)?;
                Ok(Step::Nothing)
            }
            "audio-stop" => {
                let language = self.language.clone().unwrap_or_else(|| "en".to_string());
                Ok(Step::Transcribe(self.audio.take(), language))
            }
            _ => Ok(Step::Nothing),
        }
    }
}

/// Reads `bytes` as the whole of what one client sent, message by message, as a session takes them (audio
/// included, within `limit`, nothing transcribed): how many messages were taken before the end, or why the session
/// would have been ended. The fuzz target's way in.
pub fn take_client_bytes(bytes: &[u8], limit: AudioLimit) -> Result<usize, String> {
    let mut reader = bytes;
    let mut session = Session::default();
    let mut taken = 0;
    loop {
        let read = std::pin::pin!(read_message(&mut reader));
        // A byte slice never makes a read wait, so the future is ready on its first poll.
        let std::task::Poll::Ready(message) = read.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
        else {
            return Err("a read waited on a byte slice".into());
        };
        match message {
            Ok(None) => return Ok(taken),
            Ok(Some(message)) => {
                session.take(message, b"", limit).map_err(|r| format!("{}: {}", r.code, r.text))?;
                taken += 1;
            }
            Err(e) => return Err(format!("{e:?}")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct AudioFormat {
    rate: u32,
    channels: u32,
}

impl AudioFormat {
    /// The format of an `audio-start` or `audio-chunk`; only what Lookout can take.
    fn of(data: &Map<String, Value>) -> Result<AudioFormat, Refusal> {
        let field = |name: &str| {
            data.get(name).and_then(Value::as_u64).and_then(|v| u32::try_from(v).ok()).ok_or_else(|| {
                Refusal::new("invalid_message", format!("the audio's `{name}` is missing or not a positive integer"))
            })
        };
        let (rate, width, channels) = (field("rate")?, field("width")?, field("channels")?);
        if width != SAMPLE_WIDTH {
            return Err(Refusal::new("unsupported_audio", format!("{width}-byte samples; send 16-bit PCM (width 2)")));
        }
        if !(1..=MAX_CHANNELS).contains(&channels) {
            return Err(Refusal::new("unsupported_audio", format!("{channels} channels; send 1 or {MAX_CHANNELS}")));
        }
        if !(MIN_RATE..=WYOMING_MAX_RATE).contains(&rate) {
            return Err(Refusal::new(
                "unsupported_audio",
                format!("{rate} Hz; send {MIN_RATE} to {WYOMING_MAX_RATE} Hz (16000 is best)"),
            ));
        }
        Ok(AudioFormat { rate, channels })
    }
}

/// A session's audio so far: mono, at the client's rate, within the utterance limit.
struct Audio {
    format: AudioFormat,
    samples: Vec<f32>,
    max_frames: usize,
    max_seconds: u32,
}

impl Audio {
    fn new(format: AudioFormat, limit: AudioLimit) -> Audio {
        let max_frames = limit.max_frames(format.rate, 1).try_into().unwrap_or(usize::MAX);
        Audio { format, samples: Vec::new(), max_frames, max_seconds: limit.max_seconds() }
    }

    fn push(&mut self, format: AudioFormat, pcm: &[u8]) -> Result<(), Refusal> {
        if format != self.format {
            return Err(Refusal::new(
                "unsupported_audio",
                format!(
                    "a chunk at {} Hz, {} channels in a stream started as {:?}",
                    format.rate, format.channels, self.format
                ),
            ));
        }
        let frame_bytes = (SAMPLE_WIDTH * format.channels) as usize;
        if !pcm.len().is_multiple_of(frame_bytes) {
            return Err(Refusal::new(
                "invalid_audio",
                format!("{} bytes is not whole {frame_bytes}-byte frames", pcm.len()),
            ));
        }
        let frames = pcm.len() / frame_bytes;
        if self.samples.len() + frames > self.max_frames {
            return Err(Refusal::new(
                "audio_too_long",
                format!("more than {} s of audio (the configured microphone.ring_s)", self.max_seconds),
            ));
        }
        let channels = format.channels as f32;
        self.samples.extend(pcm.chunks_exact(frame_bytes).map(|frame| {
            let sum: f32 = frame.chunks_exact(2).map(|s| f32::from(i16::from_le_bytes([s[0], s[1]]))).sum();
            sum / (channels * 32_768.0)
        }));
        Ok(())
    }
}

/// One message as read: its type, its data (the header's and the data block's merged) and its payload.
#[derive(Debug, PartialEq)]
struct Message {
    kind: String,
    data: Map<String, Value>,
    payload: Vec<u8>,
}

#[derive(Debug, PartialEq)]
enum MessageError {
    /// The connection ended inside a message.
    Closed,
    Invalid(String),
}

/// Reads the next message, or none at a clean end of the stream; every length is checked before it is read.
async fn read_message(reader: &mut (impl AsyncBufRead + Unpin)) -> Result<Option<Message>, MessageError> {
    let mut line = Vec::with_capacity(256);
    (&mut *reader)
        .take(WYOMING_MAX_HEADER_BYTES as u64 + 1)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|_| MessageError::Closed)?;
    if line.is_empty() {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(match line.len() > WYOMING_MAX_HEADER_BYTES {
            true => MessageError::Invalid(format!("a header line longer than {WYOMING_MAX_HEADER_BYTES} bytes")),
            false => MessageError::Closed,
        });
    }
    let invalid = |reason: String| MessageError::Invalid(reason);
    let header: Map<String, Value> =
        serde_json::from_slice(&line).map_err(|e| invalid(format!("the header line is not a JSON object: {e}")))?;
    let kind = match header.get("type") {
        Some(Value::String(kind)) => kind.clone(),
        _ => return Err(invalid("the header has no `type`".into())),
    };
    let mut data = match header.get("data") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(data)) => data.clone(),
        Some(_) => return Err(invalid("the header's `data` is not an object".into())),
    };
    let length = |name: &str, limit: usize| -> Result<usize, MessageError> {
        match header.get(name) {
            None | Some(Value::Null) => Ok(0),
            // Compared as u64 so that a length past a 32-bit usize is reported as over the limit too.
            Some(value) => match value.as_u64() {
                Some(n) if n <= limit as u64 => Ok(n as usize),
                Some(n) => Err(invalid(format!("`{name}` {n} is over the limit of {limit} bytes"))),
                None => Err(invalid(format!("`{name}` is not a length"))),
            },
        }
    };
    let (data_length, payload_length) =
        (length("data_length", WYOMING_MAX_DATA_BYTES)?, length("payload_length", WYOMING_MAX_PAYLOAD_BYTES)?);
    if data_length > 0 {
        let mut block = vec![0; data_length];
        reader.read_exact(&mut block).await.map_err(|_| MessageError::Closed)?;
        let more: Map<String, Value> =
            serde_json::from_slice(&block).map_err(|e| invalid(format!("the data block is not a JSON object: {e}")))?;
        data.extend(more);
    }
    let mut payload = vec![0; payload_length];
    reader.read_exact(&mut payload).await.map_err(|_| MessageError::Closed)?;
    Ok(Some(Message { kind, data, payload }))
}

/// A message as the clients write it: the header line with the version and lengths, the data, the payload.
fn encode(kind: &str, data: &Value, payload: &[u8]) -> Vec<u8> {
    let data = serde_json::to_vec(data).expect("JSON values serialize");
    let mut header = json!({ "type": kind, "version": PROTOCOL_VERSION, "data_length": data.len() });
    if !payload.is_empty() {
        header["payload_length"] = json!(payload.len());
    }
    let mut message = serde_json::to_vec(&header).expect("JSON values serialize");
    message.push(b'\n');
    message.extend_from_slice(&data);
    message.extend_from_slice(payload);
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8]) -> Result<Option<Message>, MessageError> {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(read_message(&mut &bytes[..]))
    }

    fn message(kind: &str, data: Value, payload: &[u8]) -> Message {
        Message { kind: kind.into(), data: data.as_object().unwrap().clone(), payload: payload.to_vec() }
    }

    #[test]
    fn messages_read_back_as_written_with_inline_and_separate_data() {
        let written = encode("audio-chunk", &json!({ "rate": 16000, "width": 2, "channels": 1 }), &[1, 2, 3, 4]);
        let expected = message("audio-chunk", json!({ "rate": 16000, "width": 2, "channels": 1 }), &[1, 2, 3, 4]);
        assert_eq!(read(&written), Ok(Some(expected)));
        let inline = b"{\"type\": \"transcribe\", \"data\": {\"language\": \"de\", \"name\": \"x\"}}\n";
        assert_eq!(read(inline), Ok(Some(message("transcribe", json!({ "language": "de", "name": "x" }), &[]))));
        // The data block is merged over the header's data, as the clients do it.
        let both =
            b"{\"type\": \"ping\", \"data\": {\"text\": \"a\", \"k\": 1}, \"data_length\": 13}\n{\"text\": \"b\"}";
        assert_eq!(read(both), Ok(Some(message("ping", json!({ "text": "b", "k": 1 }), &[]))));
        assert_eq!(read(b""), Ok(None), "a clean end between messages");
    }

    #[test]
    fn bad_messages_are_refused_before_anything_is_allocated_from_them() {
        let invalid = |bytes: &[u8]| match read(bytes) {
            Err(MessageError::Invalid(reason)) => reason,
            other => panic!("{} read as {other:?}", String::from_utf8_lossy(bytes)),
        };
        assert!(invalid(b"not json\n").contains("not a JSON object"));
        assert!(invalid(b"[1, 2]\n").contains("not a JSON object"));
        assert!(invalid(b"{\"data\": {}}\n").contains("no `type`"));
        assert!(invalid(b"{\"type\": \"x\", \"data\": 5}\n").contains("not an object"));
        assert!(invalid(b"{\"type\": \"x\", \"payload_length\": 18446744073709551615}\n").contains("over the limit"));
        assert!(invalid(b"{\"type\": \"x\", \"data_length\": 65537}\n").contains("over the limit"));
        assert!(invalid(b"{\"type\": \"x\", \"data_length\": -1}\n").contains("not a length"));
        assert!(invalid(b"{\"type\": \"x\", \"data_length\": 2}\n[]").contains("data block"));
        let long = [vec![b' '; WYOMING_MAX_HEADER_BYTES + 10], b"{}\n".to_vec()].concat();
        assert!(invalid(&long).contains("longer than"));
        assert_eq!(read(b"{\"type\": \"x\""), Err(MessageError::Closed), "cut inside the header");
        assert_eq!(read(b"{\"type\": \"x\", \"payload_length\": 4}\n12"), Err(MessageError::Closed));
    }

    #[test]
    fn audio_is_taken_as_16_bit_pcm_mixed_to_mono_within_the_limit() {
        let stereo = AudioFormat::of(json!({ "rate": 48000, "width": 2, "channels": 2 }).as_object().unwrap());
        let stereo = stereo.unwrap();
        let mut audio = Audio::new(stereo, AudioLimit::seconds(1));
        let frame = |l: i16, r: i16| [l.to_le_bytes(), r.to_le_bytes()].concat();
        audio.push(stereo, &[frame(16_384, -16_384), frame(16_384, 16_384)].concat()).unwrap();
        assert_eq!(audio.samples, vec![0.0, 0.5]);
        let refused = |data: Value| AudioFormat::of(data.as_object().unwrap()).unwrap_err().code;
        assert_eq!(refused(json!({ "rate": 16000, "width": 4, "channels": 1 })), "unsupported_audio");
        assert_eq!(refused(json!({ "rate": 16000, "width": 2, "channels": 6 })), "unsupported_audio");
        assert_eq!(refused(json!({ "rate": 4000, "width": 2, "channels": 1 })), "unsupported_audio");
        assert_eq!(refused(json!({ "rate": 16000, "channels": 1 })), "invalid_message");
        assert_eq!(audio.push(stereo, &[0; 6]).unwrap_err().code, "invalid_audio", "half a frame");
        let mono = AudioFormat { rate: 48_000, channels: 1 };
        assert_eq!(audio.push(mono, &[0; 4]).unwrap_err().code, "unsupported_audio", "a chunk of another format");
        let second = vec![0; 48_000 * 4];
        assert_eq!(audio.push(stereo, &second).unwrap_err().code, "audio_too_long", "over a second");
        assert_eq!(audio.samples.len(), 2, "nothing of a refused chunk is kept");
    }

    #[test]
    fn a_clients_bytes_are_taken_message_by_message_as_a_session_takes_them() {
        let limit = AudioLimit::seconds(1);
        let format = json!({ "rate": 16000, "width": 2, "channels": 1 });
        let stream = [
            encode("transcribe", &json!({ "language": "de" }), &[]),
            encode("audio-start", &format, &[]),
            encode("audio-chunk", &format, &[0; 3200]),
            encode("audio-stop", &json!({}), &[]),
        ]
        .concat();
        assert_eq!(take_client_bytes(&stream, limit), Ok(4));
        let too_long = [encode("audio-start", &format, &[]), encode("audio-chunk", &format, &[0; 32_002])].concat();
        assert!(take_client_bytes(&too_long, limit).unwrap_err().starts_with("audio_too_long"));
        assert!(take_client_bytes(b"{\"type\": 1}\n", limit).unwrap_err().contains("no `type`"));
    }

    #[test]
    fn languages_are_taken_as_whisper_names_them() {
        assert_eq!(whisper_language("en"), Ok("en".into()));
        assert_eq!(whisper_language("en-US"), Ok("en".into()));
        assert_eq!(whisper_language("DE_de"), Ok("de".into()));
        assert_eq!(whisper_language("xx").unwrap_err().code, "unsupported_language");
        assert_eq!(whisper_language("").unwrap_err().code, "unsupported_language");
    }
}
