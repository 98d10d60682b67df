//! Lookout's own endpoints: `GET /healthz`, `GET /metrics`, `GET /v1/scene`, and `POST /v1/ask` (a JSON question,
//! or a spoken one as a WAV or FLAC body).

use std::sync::atomic::Ordering::Relaxed;

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{json_response, response, Failure, Handling, Request, Response};
use crate::daemon::metrics::Metrics;
use crate::daemon::state::{Origin, Question, Shared};
use crate::fusion::checked_question;
use crate::memory;

pub fn health(shared: &Shared) -> Response {
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
    json_response(if stalled.is_some() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK }, &body)
}

pub fn metrics(context: &Handling) -> Response {
    let metrics = &context.shared.metrics;
    let (connections, bodies, sessions) = context.server_load();
    metrics.http_connections_open.store(connections as u64, Relaxed);
    metrics.wyoming_sessions_open.store(sessions as u64, Relaxed);
    metrics.http_bodies_in_use.store(bodies as u64, Relaxed);
    response(StatusCode::OK, "text/plain; version=0.0.4", metrics.render(memory::rss()))
}

pub fn scene(shared: &Shared) -> Response {
    let Some(p) = shared.latest() else {
        return Failure::retry_later("no_scene", "no camera frame has been analysed yet")
            .response(super::Dialect::Lookout);
    };
    let caption = p.caption.as_ref().map(|c| {
        json!({ "text": c.text, "source": c.source, "fallback_reason": c.fallback_reason, "frame": c.frame,
                "age_s": c.at.elapsed().as_secs_f64() })
    });
    json_response(
        StatusCode::OK,
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

/// The media types a spoken question may be sent as.
pub const AUDIO_TYPES: [&str; 5] = ["audio/wav", "audio/wave", "audio/x-wav", "audio/vnd.wave", "audio/flac"];

pub async fn ask(context: &Handling, mut request: Request) -> Result<Response, Failure> {
    let mime = request.mime();
    let is_audio = AUDIO_TYPES.contains(&mime.as_str());
    match mime.as_str() {
        "application/json" => {}
        _ if is_audio => {}
        "" => {
            return Err(Failure::new(415, "no_content_type", "Content-Type is required: application/json or audio/wav"))
        }
        other => {
            return Err(Failure::new(
                415,
                "unsupported_media_type",
                format!("Content-Type `{other}` is not accepted: use application/json or audio/wav"),
            ))
        }
    }
    if is_audio && context.settings.audio_limit.is_none() {
        return Err(Failure::new(
            422,
            "speech_off",
            "speech recognition is off in this configuration; ask in JSON text",
        ));
    }
    let body = context.body(&mut request).await?;
    let question = match is_audio {
        true => Question::Speech(context.decode_audio(body.bytes).await?),
        false => Question::Text(text_question(&body.bytes)?),
    };
    let reply = context.shared.ask(question, Origin::Http).map_err(|e| super::ask_failure(&e))?;
    // The question is in the queue now, which the memory plan counts on its own.
    drop(body.slot);
    let answer = context.wait(reply).await?;
    Ok(json_response(StatusCode::OK, &serde_json::to_value(&answer).unwrap_or(Value::Null)))
}

fn text_question(body: &[u8]) -> Result<String, Failure> {
    let bad = |message: String| Failure::new(400, "bad_question", message);
    let body = serde_json::from_slice::<AskBody>(body)
        .map_err(|e| bad(format!("malformed JSON: {e}; expected {{\"question\": \"...\"}}")))?;
    Ok(checked_question(&body.question, "`question`").map_err(bad)?.to_string())
}
