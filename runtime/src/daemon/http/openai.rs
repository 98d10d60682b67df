//! The OpenAI-compatible endpoints: `GET /v1/models`, `POST /v1/chat/completions` (text and data-URL images,
//! streamed as server-sent events on request) and `POST /v1/audio/transcriptions` (multipart WAV or FLAC). Chat
//! answers go through the same fusion and scene check as `/v1/ask`; errors take OpenAI's shape.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hyper::body::Bytes;
use hyper::StatusCode;
use lookout_models::speech::Transcript;
use lookout_models::vision::image::image_size;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{json_response, multipart, response, stream_response, Failure, Handling, Request, Response, Settings};
use crate::daemon::state::{Answer, AnswerReceiver, AskOptions, Origin, Question};
use crate::daemon::Checked;
use crate::fusion::{Exchange, MAX_QUESTION_BYTES};

/// How often a streamed answer still being worked on sends an SSE comment, which also finds a client gone.
const KEEPALIVE: Duration = Duration::from_secs(2);
/// The name OpenAI clients use for speech recognition by default; it means the configured speech model.
const WHISPER_ALIAS: &str = "whisper-1";

pub fn serves(path: &str) -> bool {
    matches!(path, "/v1/models" | "/v1/chat/completions" | "/v1/audio/transcriptions")
}

/// The bundle's chat and speech models by id (their component names), and which of them the configuration runs.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    chat: Vec<String>,
    speech: Vec<String>,
    chat_running: Option<String>,
    speech_running: Option<String>,
    /// When the bundle was prepared, seconds since the epoch.
    created: u64,
}

impl Catalog {
    pub fn of(checked: &Checked) -> Catalog {
        let (bundle, config) = (&checked.bundle, &checked.config);
        let named = |role: &str| -> Vec<String> {
            bundle.manifest.components.iter().filter(|c| c.role == role).map(|c| c.name.clone()).collect()
        };
        let running = |stage: &str, role: &str, variant: &str| {
            config.stage_enabled(stage).then(|| bundle.component(role, Some(variant)).ok().map(|c| c.name.clone()))?
        };
        let created = std::fs::metadata(bundle.dir.join("manifest.toml"))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        Catalog {
            chat: named("llm-decoder"),
            speech: named("asr-decoder"),
            chat_running: running("decoder", "llm-decoder", config.models.decoder.as_str()),
            speech_running: running("speech", "asr-decoder", config.models.speech.as_str()),
            created,
        }
    }

    /// The model that answers a request naming `requested`: the one the configuration runs (a chat answer without
    /// a decoder comes from the scene alone, and is named for the bundle's first decoder).
    fn chat_model(&self, requested: &str) -> Result<String, Failure> {
        if !self.chat.iter().any(|m| m == requested) {
            return Err(unknown_model(requested, &self.chat));
        }
        Ok(self.chat_running.clone().unwrap_or_else(|| requested.to_string()))
    }

    fn speech_model(&self, requested: &str) -> Result<String, Failure> {
        if requested != WHISPER_ALIAS && !self.speech.iter().any(|m| m == requested) {
            return Err(unknown_model(requested, &self.speech));
        }
        self.speech_running
            .clone()
            .ok_or_else(|| Failure::new(422, "speech_off", "speech recognition is off in this configuration"))
    }
}

fn unknown_model(requested: &str, known: &[String]) -> Failure {
    Failure::new(
        404,
        "model_not_found",
        format!("no model `{requested}` here; this endpoint takes {}", known.join(", ")),
    )
}

pub(super) fn models(settings: &Settings) -> Response {
    let catalog = &settings.models;
    let data: Vec<Value> = catalog
        .chat
        .iter()
        .chain(&catalog.speech)
        .map(|id| json!({ "id": id, "object": "model", "created": catalog.created, "owned_by": "lookout" }))
        .collect();
    json_response(StatusCode::OK, &json!({ "object": "list", "data": data }))
}

#[derive(Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<ChatMessage>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<i64>,
    stop: Option<Stop>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    n: Option<u32>,
    tools: Option<Vec<Value>>,
    response_format: Option<Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    /// A string, an array of parts, or null (an assistant turn that only called tools).
    #[serde(default)]
    content: Value,
}

/// What a conversation asks: the last user turn's text, the earlier turns, and the newest image sent.
struct Conversation {
    question: String,
    history: Vec<Exchange>,
    image: Option<Vec<u8>>,
}

/// A turn's text and the image URLs it carries.
fn turn_content(index: usize, content: &Value) -> Result<(String, Vec<&str>), Failure> {
    let bad = |message: String| Failure::new(400, "invalid_content", format!("messages[{index}].content: {message}"));
    match content {
        Value::Null => Ok((String::new(), Vec::new())),
        Value::String(text) => Ok((text.clone(), Vec::new())),
        Value::Array(parts) => {
            let (mut texts, mut images) = (Vec::new(), Vec::new());
            for (j, part) in parts.iter().enumerate() {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => match part.get("text").and_then(Value::as_str) {
                        Some(text) => texts.push(text),
                        None => return Err(bad(format!("part {j} of type text has no `text` string"))),
                    },
                    Some("image_url") => match part.pointer("/image_url/url").and_then(Value::as_str) {
                        Some(url) => images.push(url),
                        None => return Err(bad(format!("part {j} of type image_url has no `image_url.url` string"))),
                    },
                    Some(other) => {
                        return Err(bad(format!("part {j} is of type `{other}`; only `text` and `image_url` are read")))
                    }
                    None => return Err(bad(format!("part {j} has no `type`"))),
                }
            }
            Ok((texts.join("\n"), images))
        }
        _ => Err(bad("must be a string, an array of parts or null".into())),
    }
}

fn conversation(messages: &[ChatMessage], max_image_pixels: u32) -> Result<Conversation, Failure> {
    let mut turns: Vec<(bool, String)> = Vec::new();
    let mut image_url = None;
    for (i, message) in messages.iter().enumerate() {
        let (text, images) = turn_content(i, &message.content)?;
        match message.role.as_str() {
            // Lookout answers by its own instructions, which keep answers to what the scene shows.
            "system" | "developer" => continue,
            "user" => {
                image_url = images.last().copied().or(image_url);
                turns.push((true, text));
            }
            "assistant" if images.is_empty() => turns.push((false, text)),
            "assistant" => return Err(Failure::new(400, "invalid_content", "assistant messages cannot carry images")),
            "tool" | "function" => {
                return Err(Failure::new(400, "unsupported_role", "tool calls are not supported: no tools are offered"))
            }
            other => {
                return Err(Failure::new(
                    400,
                    "invalid_role",
                    format!("messages[{i}].role `{other}` is unknown; use system, developer, user or assistant"),
                ))
            }
        }
    }
    let Some((true, question)) = turns.pop() else {
        return Err(Failure::new(
            400,
            "invalid_messages",
            "the last message (system messages aside) must be the user's",
        ));
    };
    if question.len() > MAX_QUESTION_BYTES {
        return Err(Failure::new(
            400,
            "question_too_long",
            format!("the last user message has {} bytes; the limit is {MAX_QUESTION_BYTES}", question.len()),
        ));
    }
    let history = turns
        .windows(2)
        .filter_map(|pair| match pair {
            [(true, question), (false, answer)] => {
                Some(Exchange { question: question.trim().to_string(), answer: answer.trim().to_string() })
            }
            _ => None,
        })
        .collect();
    let image = image_url.map(|url| image_bytes(url, max_image_pixels)).transpose()?;
    Ok(Conversation { question: question.trim().to_string(), history, image })
}

/// The JPEG or PNG in a `data:` URL, its size checked; remote URLs are refused, never fetched.
fn image_bytes(url: &str, max_pixels: u32) -> Result<Vec<u8>, Failure> {
    let bad = |message: String| Failure::new(400, "invalid_image_url", message);
    let Some(rest) = url.strip_prefix("data:") else {
        let shown: String = url.chars().take(40).collect();
        return Err(bad(format!(
            "image_url `{shown}` is not a data: URL; send the image inline (data:image/jpeg;base64,...): remote URLs \
             are not fetched"
        )));
    };
    let (meta, data) = rest.split_once(',').ok_or_else(|| bad("the data: URL has no `,` before its data".into()))?;
    let Some(mime) = meta.strip_suffix(";base64") else {
        return Err(bad(format!("the data: URL `data:{meta},` is not base64-encoded (`;base64`)")));
    };
    if !matches!(mime.to_ascii_lowercase().as_str(), "image/jpeg" | "image/jpg" | "image/png") {
        return Err(bad(format!("images of type `{mime}` are not read; send image/jpeg or image/png")));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| bad(format!("the image's base64 does not decode: {e}")))?;
    let (width, height) = image_size(&bytes).map_err(|e| bad(format!("the image cannot be used: {e}")))?;
    if u64::from(width) * u64::from(height) > u64::from(max_pixels) {
        return Err(Failure::new(
            413,
            "image_too_large",
            format!(
                "the image is {width}x{height}, over the limit of {:.1} megapixels (http.max_image_pixels); scale \
                 it down",
                f64::from(max_pixels) / 1e6
            ),
        ));
    }
    Ok(bytes)
}

/// What every chunk or completion of one answer shares.
struct Completion {
    id: String,
    created: u64,
    model: String,
}

impl Completion {
    fn new(model: String) -> Completion {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Completion { id: format!("chatcmpl-{:x}{n:04x}", now.as_millis()), created: now.as_secs(), model }
    }

    fn chunk(&self, choices: Value, usage: Option<Value>) -> Value {
        let mut chunk = json!({ "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                "model": self.model, "choices": choices });
        if let Some(usage) = usage {
            chunk["usage"] = usage;
        }
        chunk
    }
}

fn finish_reason(answer: &Answer) -> &'static str {
    if answer.truncated {
        "length"
    } else {
        "stop"
    }
}

fn usage(answer: &Answer) -> Value {
    let (prompt, completion) = answer.tokens.map_or((0, 0), |t| (t.prompt, t.answer));
    json!({ "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion })
}

/// Why Lookout answered as it did (clients that do not know the field ignore it).
fn explanation(answer: &Answer) -> Value {
    json!({ "source": answer.source, "fallback_reason": answer.fallback_reason, "frame": answer.frame,
            "scene_age_s": answer.scene_age_s, "timings_ms": answer.timings_ms })
}

pub(super) async fn chat(context: Handling, mut request: Request) -> Result<Response, Failure> {
    let mime = request.mime();
    if mime != "application/json" {
        return Err(Failure::new(
            415,
            "unsupported_media_type",
            format!("Content-Type `{mime}`: send application/json"),
        ));
    }
    let body = context.body(&mut request).await?;
    let ChatCall { model, stream, include_usage, question, options } =
        read_chat(&body.bytes, context.settings.max_image_pixels)?;
    let model = context.settings.models.chat_model(&model)?;
    let image = options.image.as_ref();
    if image.is_some() && !context.settings.vision {
        return Err(Failure::new(422, "vision_off", "vision is off in this configuration; an image cannot be read"));
    }
    let holds_image = image.is_some();
    let reply =
        context.shared.ask_with(Question::Text(question), options, Origin::Http).map_err(|e| super::ask_failure(&e))?;
    // An image waits in the queue with the request's body slot, which counts it in the memory plan; a text
    // question is small.
    let slot = holds_image.then_some(body.slot);
    let completion = Completion::new(model);
    if stream {
        let (response, pieces) = stream_response("text/event-stream");
        tokio::spawn(async move {
            stream_answer(&context, reply, &pieces, &completion, include_usage).await;
            drop(slot);
        });
        return Ok(response);
    }
    let answer = context.wait(reply).await?;
    drop(slot);
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "id": completion.id, "object": "chat.completion", "created": completion.created, "model": completion.model,
            "choices": [{ "index": 0, "message": { "role": "assistant", "content": answer.answer, "refusal": null },
                          "logprobs": null, "finish_reason": finish_reason(&answer) }],
            "usage": usage(&answer),
            "lookout": explanation(&answer),
        }),
    ))
}

/// What a chat completion request asks, read and checked: the model named, how to reply, the question and its
/// options (history, image, limits, sampling).
pub struct ChatCall {
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    pub question: String,
    pub options: AskOptions,
}

/// Reads a chat completion request's JSON body; any malformed, unsupported or oversized part is a 400 naming it.
pub fn read_chat(body: &[u8], max_image_pixels: u32) -> Result<ChatCall, Failure> {
    let mut reader = serde_json::Deserializer::from_slice(body);
    let chat: ChatRequest = serde_path_to_error::deserialize(&mut reader).map_err(|e| {
        Failure::new(400, "invalid_json", format!("malformed request at `{}`: {}", e.path(), e.inner()))
    })?;
    let options = ask_options(&chat)?;
    let Conversation { question, history, image } = conversation(&chat.messages, max_image_pixels)?;
    Ok(ChatCall {
        stream: chat.stream.unwrap_or(false),
        include_usage: chat.stream_options.and_then(|o| o.include_usage).unwrap_or(false),
        model: chat.model,
        question,
        options: AskOptions { image, history, ..options },
    })
}

fn ask_options(chat: &ChatRequest) -> Result<AskOptions, Failure> {
    let unsupported = |code, message: &str| Err(Failure::new(400, code, message.to_string()));
    if chat.n.is_some_and(|n| n != 1) {
        return unsupported("unsupported_n", "`n` must be 1: one answer is made per request");
    }
    if chat.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return unsupported("unsupported_tools", "tools are not supported");
    }
    if let Some(format) = &chat.response_format {
        if format.get("type").and_then(Value::as_str) != Some("text") {
            return unsupported(
                "unsupported_response_format",
                "only response_format {\"type\": \"text\"} is supported",
            );
        }
    }
    if chat.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
        return unsupported("invalid_temperature", "`temperature` must be between 0 and 2");
    }
    if chat.top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
        return unsupported("invalid_top_p", "`top_p` must be above 0 and at most 1");
    }
    let stop = match &chat.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(list)) if list.len() <= 4 => list.clone(),
        Some(Stop::Many(_)) => return unsupported("invalid_stop", "`stop` takes at most 4 sequences"),
    };
    let max_tokens = chat.max_completion_tokens.or(chat.max_tokens);
    if max_tokens == Some(0) {
        return unsupported("invalid_max_tokens", "`max_tokens` must be at least 1");
    }
    // Without a temperature the answer is greedy, Lookout's own default (OpenAI's is 1).
    let sampling = (chat.temperature.is_some() || chat.top_p.is_some() || chat.seed.is_some()).then(|| {
        lookout_models::llm::sampler::Sampling {
            temperature: chat.temperature.unwrap_or(0.0),
            top_p: chat.top_p.unwrap_or(1.0),
            seed: chat.seed.unwrap_or(0) as u64,
        }
    });
    Ok(AskOptions { max_tokens: max_tokens.map(|m| m as usize), sampling, stop, ..AskOptions::default() })
}

/// Streams one answer as server-sent events. Lookout sends no text it has not checked against the scene, so the
/// role comes at once, comments keep the stream open while the answer is made and checked, and the checked
/// answer follows in word pieces, then the finish, the usage when asked for, and `[DONE]`.
async fn stream_answer(
    context: &Handling,
    reply: AnswerReceiver,
    pieces: &mpsc::Sender<Bytes>,
    completion: &Completion,
    include_usage: bool,
) {
    let event = |value: Value| Bytes::from(format!("data: {value}\n\n"));
    let delta = |delta: Value, finish: Value| json!([{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }]);
    let opening = completion.chunk(delta(json!({ "role": "assistant", "content": "" }), Value::Null), None);
    if pieces.send(event(opening)).await.is_err() {
        return;
    }
    let waiting = context.wait(reply);
    tokio::pin!(waiting);
    let mut keepalive = tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    let result = loop {
        tokio::select! {
            result = &mut waiting => break result,
            _ = keepalive.tick() => {
                // A client gone ends the wait, which withdraws the question from the pipeline.
                if pieces.send(Bytes::from_static(b": working\n\n")).await.is_err() {
                    return;
                }
            }
        }
    };
    let answer = match result {
        Ok(answer) => answer,
        Err(failure) => {
            let _ = pieces.send(event(failure.body(super::Dialect::OpenAi))).await;
            return;
        }
    };
    for piece in word_pieces(&answer.answer) {
        let chunk = completion.chunk(delta(json!({ "content": piece }), Value::Null), None);
        if pieces.send(event(chunk)).await.is_err() {
            return;
        }
    }
    let mut last = completion.chunk(delta(json!({}), json!(finish_reason(&answer))), None);
    last["lookout"] = explanation(&answer);
    let _ = pieces.send(event(last)).await;
    if include_usage {
        let _ = pieces.send(event(completion.chunk(json!([]), Some(usage(&answer))))).await;
    }
    let _ = pieces.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
}

/// The text cut after each run of spaces: pieces that join back into exactly the text.
fn word_pieces(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut in_space = false;
    for (i, c) in text.char_indices() {
        if in_space && !c.is_whitespace() {
            pieces.push(&text[start..i]);
            start = i;
        }
        in_space = c.is_whitespace();
    }
    if start < text.len() {
        pieces.push(&text[start..]);
    }
    pieces
}

/// The response formats of a transcription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TranscriptFormat {
    Json,
    Text,
    VerboseJson,
    Srt,
    Vtt,
}

impl TranscriptFormat {
    fn parse(name: &str) -> Result<TranscriptFormat, Failure> {
        Ok(match name {
            "json" => TranscriptFormat::Json,
            "text" => TranscriptFormat::Text,
            "verbose_json" => TranscriptFormat::VerboseJson,
            "srt" => TranscriptFormat::Srt,
            "vtt" => TranscriptFormat::Vtt,
            other => {
                return Err(Failure::new(
                    400,
                    "invalid_response_format",
                    format!("response_format `{other}` is unknown; use json, text, verbose_json, srt or vtt"),
                ))
            }
        })
    }
}

pub(super) async fn transcriptions(context: &Handling, mut request: Request) -> Result<Response, Failure> {
    let content_type = request.header("content-type").unwrap_or_default().to_string();
    let boundary = multipart::boundary(&content_type).map_err(|e| Failure::new(415, "unsupported_media_type", e))?;
    let body = context.body(&mut request).await?;
    let parts = multipart::parse(&body.bytes, &boundary).map_err(|e| Failure::new(400, "invalid_multipart", e))?;
    let field = |name: &str| parts.iter().find(|p| p.name == name);
    let text_field = |name: &str| -> Result<Option<String>, Failure> {
        field(name)
            .map(|p| {
                String::from_utf8(p.data.to_vec())
                    .map(|s| s.trim().to_string())
                    .map_err(|_| Failure::new(400, "invalid_field", format!("the form's `{name}` is not text")))
            })
            .transpose()
    };
    let file = field("file").ok_or_else(|| Failure::new(400, "missing_file", "the form has no `file` field"))?;
    let model =
        text_field("model")?.ok_or_else(|| Failure::new(400, "missing_model", "the form has no `model` field"))?;
    let model = context.settings.models.speech_model(&model)?;
    let format = TranscriptFormat::parse(text_field("response_format")?.as_deref().unwrap_or("json"))?;
    let language = text_field("language")?.filter(|l| !l.is_empty());
    if let Some(language) = &language {
        if !(2..=3).contains(&language.len()) || !language.bytes().all(|b| b.is_ascii_lowercase()) {
            return Err(Failure::new(
                400,
                "invalid_language",
                format!("language `{language}` is not an ISO-639-1 code"),
            ));
        }
    }
    if let Some(t) = text_field("temperature")? {
        t.parse::<f32>()
            .ok()
            .filter(|t| (0.0..=1.0).contains(t))
            .ok_or_else(|| Failure::new(400, "invalid_temperature", "`temperature` must be between 0 and 1"))?;
    }
    let start = file.data.as_ptr() as usize - body.bytes.as_ptr() as usize;
    let range = start..start + file.data.len();
    let filename = file.filename.clone().unwrap_or_else(|| "file".into());
    drop(parts);
    let samples = context.decode_audio_range(body.bytes, range).await.map_err(|mut failure| {
        failure.message = format!("`{filename}`: {}; send WAV or FLAC", failure.message);
        failure
    })?;
    let duration_s = samples.len() as f64 / 16_000.0;
    let reply =
        context.shared.transcribe(samples, language.clone(), Origin::Http).map_err(|e| super::ask_failure(&e))?;
    drop(body.slot);
    let transcript = context.wait(reply).await?;
    Ok(transcript_response(&transcript, format, language.as_deref().unwrap_or("en"), duration_s, &model))
}

fn transcript_response(
    t: &Transcript,
    format: TranscriptFormat,
    language: &str,
    duration_s: f64,
    model: &str,
) -> Response {
    let text = t.text.trim();
    let segments: Vec<(f64, f64, &str, &[u32])> = match t.segments.is_empty() {
        true if !text.is_empty() => vec![(0.0, duration_s, text, &[])],
        _ => t.segments.iter().map(|s| (s.start_s, s.end_s, s.text.trim(), s.tokens.as_slice())).collect(),
    };
    match format {
        TranscriptFormat::Json => json_response(StatusCode::OK, &json!({ "text": text })),
        TranscriptFormat::Text => response(StatusCode::OK, "text/plain; charset=utf-8", format!("{text}\n")),
        TranscriptFormat::VerboseJson => {
            let segments: Vec<Value> = segments
                .iter()
                .enumerate()
                .map(|(id, (start, end, text, tokens))| {
                    json!({ "id": id, "seek": (start * 100.0).round() as u64, "start": start, "end": end,
                            "text": text, "tokens": tokens, "temperature": 0.0 })
                })
                .collect();
            json_response(
                StatusCode::OK,
                &json!({ "task": "transcribe", "language": language, "duration": duration_s, "text": text,
                         "segments": segments, "model": model }),
            )
        }
        TranscriptFormat::Srt | TranscriptFormat::Vtt => {
            let srt = format == TranscriptFormat::Srt;
            let mut out = String::from(if srt { "" } else { "WEBVTT\n\n" });
            for (i, (start, end, text, _)) in segments.iter().enumerate() {
                if srt {
                    out.push_str(&format!("{}\n", i + 1));
                }
                out.push_str(&format!("{} --> {}\n{text}\n\n", timestamp(*start, srt), timestamp(*end, srt)));
            }
            let content_type = if srt { "application/x-subrip; charset=utf-8" } else { "text/vtt; charset=utf-8" };
            response(StatusCode::OK, content_type, out)
        }
    }
}

/// `HH:MM:SS,mmm` (SRT) or `HH:MM:SS.mmm` (WebVTT).
fn timestamp(seconds: f64, srt: bool) -> String {
    let ms = (seconds.max(0.0) * 1000.0).round() as u64;
    let (h, m, s, ms) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    format!("{h:02}:{m:02}:{s:02}{}{ms:03}", if srt { ',' } else { '.' })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(value: Value) -> Vec<ChatMessage> {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_conversation_keeps_its_last_question_the_earlier_exchanges_and_the_newest_image() {
        let png = base64::engine::general_purpose::STANDARD.encode(tiny_png());
        let c = conversation(&messages(json!([
            { "role": "system", "content": "You are a pirate." },
            { "role": "user", "content": [{ "type": "text", "text": "What is this?" },
                                          { "type": "image_url", "image_url": { "url": format!("data:image/png;base64,{png}") } }] },
            { "role": "assistant", "content": "A dog on a bench." },
            { "role": "user", "content": "How many dogs? " },
        ])), 1 << 20)
        .unwrap();
        assert_eq!(c.question, "How many dogs?");
        assert_eq!(c.history.len(), 1);
        assert_eq!(
            (c.history[0].question.as_str(), c.history[0].answer.as_str()),
            ("What is this?", "A dog on a bench.")
        );
        assert_eq!(c.image.as_deref(), Some(&tiny_png()[..]));
    }

    #[test]
    fn conversations_that_cannot_be_answered_are_refused_with_their_reason() {
        let code = |value: Value| conversation(&messages(value), 1 << 20).err().map(|f| (f.status.as_u16(), f.code));
        assert_eq!(code(json!([{ "role": "wizard", "content": "hi" }])), Some((400, "invalid_role")));
        assert_eq!(code(json!([{ "role": "tool", "content": "42" }])), Some((400, "unsupported_role")));
        assert_eq!(code(json!([{ "role": "assistant", "content": "hi" }])), Some((400, "invalid_messages")));
        assert_eq!(code(json!([])), Some((400, "invalid_messages")));
        assert_eq!(code(json!([{ "role": "user", "content": 7 }])), Some((400, "invalid_content")));
        assert_eq!(
            code(json!([{ "role": "user", "content": [{ "type": "input_audio" }] }])),
            Some((400, "invalid_content"))
        );
        let image =
            |url: &str| json!([{ "role": "user", "content": [{ "type": "image_url", "image_url": { "url": url } }] }]);
        for url in [
            "https://example.com/cat.jpg",
            "data:image/gif;base64,R0lGOD",
            "data:image/png;base64,%%%",
            "data:image/png,raw",
            "data:image/jpeg;base64,aGVsbG8=",
        ] {
            assert_eq!(code(image(url)), Some((400, "invalid_image_url")), "{url}");
        }
        let long = "x".repeat(MAX_QUESTION_BYTES + 1);
        assert_eq!(code(json!([{ "role": "user", "content": long }])), Some((400, "question_too_long")));
    }

    #[test]
    fn word_pieces_join_back_into_the_text() {
        for text in ["There are 3 people.", "  two  spaces ", "", "one"] {
            assert_eq!(word_pieces(text).concat(), text);
        }
        assert_eq!(word_pieces("A dog sits."), ["A ", "dog ", "sits."]);
    }

    #[test]
    fn subtitle_timestamps_have_hours_minutes_seconds_and_milliseconds() {
        assert_eq!(timestamp(3723.4567, true), "01:02:03,457");
        assert_eq!(timestamp(2.5, false), "00:00:02.500");
    }

    fn tiny_png() -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, 2, 2);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.write_header().unwrap().write_image_data(&[0u8; 12]).unwrap();
        out
    }
}
