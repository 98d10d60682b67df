//! What the daemon's threads share: the inbox (frames, questions and transcriptions waiting for the pipeline),
//! the latest scene and caption, heartbeats, metrics and events. Work waits in a bounded queue; a full queue
//! refuses it rather than growing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use heapless::Deque;
use lookout_models::llm::sampler::Sampling;
use lookout_models::speech::Transcript;
use lookout_models::vision::image::RgbImage;
use lookout_models::vision::Scene;
use serde::Serialize;
use tokio::sync::oneshot;

use super::events::Events;
use super::metrics::Metrics;
use crate::answer::Source;
use crate::fusion::Exchange;
use crate::scheduler::buffers::FrameQueue;

pub use crate::plan::QUESTION_QUEUE;

pub enum Question {
    Text(String),
    /// 16 kHz mono samples.
    Speech(Vec<f32>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Http,
    /// Found in the microphone stream by the VAD or push-to-talk.
    Voice,
    /// Sent by a Wyoming client (Home Assistant's voice pipeline).
    Wyoming,
    /// Published on the MQTT question topic.
    Mqtt,
}

impl Origin {
    /// Whether a client waits for the reply (and may leave before it comes).
    pub fn awaited(self) -> bool {
        self != Origin::Voice
    }
}

/// Where the pipeline's reply to a question goes; the asker awaits it, or blocks on it outside async code.
pub type AnswerReceiver = oneshot::Receiver<Result<Answer, AskError>>;
pub type TranscriptReceiver = oneshot::Receiver<Result<Transcript, AskError>>;

pub struct Job {
    pub work: Work,
    pub origin: Origin,
    pub queued_at: Instant,
}

pub enum Work {
    Ask {
        question: Question,
        options: AskOptions,
        reply: oneshot::Sender<Result<Answer, AskError>>,
    },
    /// 16 kHz mono samples to transcribe, in `language` (the speech model's default when `None`).
    Transcribe {
        samples: Vec<f32>,
        language: Option<String>,
        reply: oneshot::Sender<Result<Transcript, AskError>>,
    },
}

impl Work {
    /// Whoever asked has stopped waiting (gone, or past its timeout): the work need not be done.
    pub fn abandoned(&self) -> bool {
        match self {
            Work::Ask { reply, .. } => reply.is_closed(),
            Work::Transcribe { reply, .. } => reply.is_closed(),
        }
    }

    pub fn refuse(self, error: AskError) {
        match self {
            Work::Ask { reply, .. } => drop(reply.send(Err(error))),
            Work::Transcribe { reply, .. } => drop(reply.send(Err(error))),
        }
    }
}

/// How a question is to be answered beyond the daemon's defaults (the OpenAI-compatible endpoint sets these).
#[derive(Debug, Clone, Default)]
pub struct AskOptions {
    /// A JPEG or PNG to answer about instead of the camera's scene; its size was checked by whoever queued it.
    pub image: Option<Vec<u8>>,
    /// Earlier questions and answers of the conversation, oldest first.
    pub history: Vec<Exchange>,
    /// At most this many tokens in the answer (the daemon's own limit when `None` or larger).
    pub max_tokens: Option<usize>,
    pub sampling: Option<Sampling>,
    /// The answer ends before the first of these.
    pub stop: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    pub question: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcript: Option<String>,
    pub answer: String,
    pub source: Source,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
    /// The camera frame the answer is about.
    pub frame: Option<u64>,
    pub scene_age_s: Option<f64>,
    pub timings_ms: BTreeMap<&'static str, f64>,
    /// Token counts, when the decoder's tokenizer is loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<TokenCounts>,
    /// The answer was cut at the token limit the question set.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct TokenCounts {
    /// The prompt the decoder read (0 when the answer came from the scene without it).
    pub prompt: usize,
    pub answer: usize,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AskError {
    #[error("the question queue is full ({QUESTION_QUEUE} waiting); try again shortly")]
    Busy,
    #[error("no camera frame has been analysed yet")]
    NoScene,
    #[error("no speech found in the audio")]
    NoSpeech,
    /// What was sent cannot be used (an image that does not decode).
    #[error("{0}")]
    Invalid(String),
    /// The configuration has no model for this (speech recognition or vision off).
    #[error("{0}")]
    Unavailable(String),
    #[error("the daemon is stopping or reloading")]
    Stopping,
    /// The answer timeout passed while the question waited or was being answered: the work was stopped.
    #[error("no answer within the answer timeout; the question was dropped")]
    TimedOut,
    #[error("{0}")]
    Failed(String),
}

/// The newest analysed frame and the newest caption.
#[derive(Debug, Clone)]
pub struct Published {
    pub scene: Scene,
    /// The frame the scene was analysed on, and when.
    pub frame: u64,
    pub seen_at: Instant,
    /// The newest frame found unchanged since, and when: the scene held for it without being analysed again.
    pub checked: Option<(u64, Instant)>,
    pub caption: Option<PublishedCaption>,
}

#[derive(Debug, Clone)]
pub struct PublishedCaption {
    pub text: String,
    pub source: Source,
    pub fallback_reason: Option<String>,
    pub frame: u64,
    pub at: Instant,
}

pub struct Inbox {
    pub questions: Deque<Job, QUESTION_QUEUE>,
    pub frames: FrameQueue,
    /// Off while the pipeline stops or reloads: questions are refused instead of left waiting.
    pub accepting: bool,
}

/// The threads that must keep beating for the daemon to count as alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    Pipeline,
    Camera,
    Microphone,
    /// The HTTP server's event loop (a handler that blocked it would silence every request).
    Http,
}

/// When each thread last showed progress, in milliseconds since the daemon started; 0 for threads not running.
#[derive(Default)]
pub struct Heartbeats {
    beats: [AtomicU64; 4],
}

impl Heartbeats {
    pub fn beat(&self, who: Beat, now_ms: u64) {
        self.beats[who as usize].store(now_ms.max(1), Relaxed);
    }

    /// When `who` last beat, in milliseconds since the daemon started; `None` when it is not running.
    pub fn last(&self, who: Beat) -> Option<u64> {
        Some(self.beats[who as usize].load(Relaxed)).filter(|&ms| ms != 0)
    }

    /// Forgets a thread that has stopped on purpose.
    pub fn retire(&self, who: Beat) {
        self.beats[who as usize].store(0, Relaxed);
    }

    /// The first running thread silent for longer than `limit`.
    pub fn stalled(&self, now_ms: u64, limit: Duration) -> Option<Beat> {
        [Beat::Pipeline, Beat::Camera, Beat::Microphone, Beat::Http].into_iter().find(|&who| {
            let last = self.beats[who as usize].load(Relaxed);
            last != 0 && now_ms.saturating_sub(last) > limit.as_millis() as u64
        })
    }
}

pub struct Shared {
    pub metrics: Metrics,
    pub events: Events,
    pub inbox: Mutex<Inbox>,
    /// Signalled when a frame or a question arrives, and when the pipeline must stop.
    pub wake: Condvar,
    pub scene: Mutex<Option<Published>>,
    /// The frame behind the newest caption, with its number, kept for the MQTT snapshot when that is on.
    pub snapshot: Mutex<Option<(u64, RgbImage)>>,
    pub heartbeats: Heartbeats,
    questions_waiting: AtomicUsize,
    /// Set to stop the pipeline's threads (shutdown or reload).
    pub stop: AtomicBool,
    /// Held down by push-to-talk (the GPIO button, or SIGUSR1 toggling it).
    pub push_to_talk: AtomicBool,
    /// The VAD hears speech now.
    pub hearing: AtomicBool,
    /// The pipeline is answering a question.
    pub thinking: AtomicBool,
    pub started: Instant,
    pub board: Mutex<String>,
    /// Silence after which a thread counts as hung (the watchdog interval under systemd).
    stall_limit_ms: AtomicU64,
}

impl Shared {
    pub fn new(frames: FrameQueue, board: &str) -> Shared {
        Shared {
            metrics: Metrics::default(),
            events: Events::default(),
            inbox: Mutex::new(Inbox { questions: Deque::new(), frames, accepting: true }),
            wake: Condvar::new(),
            scene: Mutex::new(None),
            snapshot: Mutex::new(None),
            heartbeats: Heartbeats::default(),
            questions_waiting: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            push_to_talk: AtomicBool::new(false),
            hearing: AtomicBool::new(false),
            thinking: AtomicBool::new(false),
            started: Instant::now(),
            board: Mutex::new(board.to_string()),
            stall_limit_ms: AtomicU64::new(60_000),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn stall_limit(&self) -> Duration {
        Duration::from_millis(self.stall_limit_ms.load(Relaxed))
    }

    pub fn set_stall_limit(&self, limit: Duration) {
        self.stall_limit_ms.store(limit.as_millis() as u64, Relaxed);
    }

    pub fn beat(&self, who: Beat) {
        self.heartbeats.beat(who, self.now_ms());
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Relaxed)
    }

    pub fn inbox(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps a copy of `image` as frame `frame`'s snapshot, in the buffer of the previous one once it has one.
    pub fn keep_snapshot(&self, frame: u64, image: &RgbImage) {
        let mut kept = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        let (number, copy) = kept.get_or_insert_with(|| (frame, RgbImage::default()));
        *number = frame;
        copy.reshape(image.width, image.height);
        copy.data.copy_from_slice(&image.data);
    }

    pub fn latest(&self) -> Option<Published> {
        self.scene.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn questions_waiting(&self) -> bool {
        self.questions_waiting.load(Relaxed) > 0
    }

    /// Queues a question; the answer arrives on the returned channel.
    pub fn ask(&self, question: Question, origin: Origin) -> Result<AnswerReceiver, AskError> {
        self.ask_with(question, AskOptions::default(), origin)
    }

    pub fn ask_with(
        &self,
        question: Question,
        options: AskOptions,
        origin: Origin,
    ) -> Result<AnswerReceiver, AskError> {
        let (reply, answer) = oneshot::channel();
        self.enqueue(Work::Ask { question, options, reply }, origin)?;
        Ok(answer)
    }

    /// Queues 16 kHz mono samples for transcription.
    pub fn transcribe(
        &self,
        samples: Vec<f32>,
        language: Option<String>,
        origin: Origin,
    ) -> Result<TranscriptReceiver, AskError> {
        let (reply, transcript) = oneshot::channel();
        self.enqueue(Work::Transcribe { samples, language, reply }, origin)?;
        Ok(transcript)
    }

    fn enqueue(&self, work: Work, origin: Origin) -> Result<(), AskError> {
        let job = Job { work, origin, queued_at: Instant::now() };
        let mut inbox = self.inbox();
        if !inbox.accepting {
            return Err(AskError::Stopping);
        }
        if inbox.questions.push_back(job).is_err() {
            Metrics::add(&self.metrics.questions_rejected, 1);
            return Err(AskError::Busy);
        }
        self.questions_waiting.store(inbox.questions.len(), Relaxed);
        self.metrics.question_queue_depth.store(inbox.questions.len() as u64, Relaxed);
        drop(inbox);
        self.wake.notify_all();
        Ok(())
    }

    /// The next question, taken from a locked inbox.
    pub fn next_question(&self, inbox: &mut Inbox) -> Option<Job> {
        let job = inbox.questions.pop_front();
        self.questions_waiting.store(inbox.questions.len(), Relaxed);
        self.metrics.question_queue_depth.store(inbox.questions.len() as u64, Relaxed);
        job
    }

    /// Refuses new questions and answers the waiting ones with `Stopping`.
    pub fn close_inbox(&self) {
        let mut inbox = self.inbox();
        inbox.accepting = false;
        while let Some(job) = self.next_question(&mut inbox) {
            job.work.refuse(AskError::Stopping);
        }
        drop(inbox);
        self.wake.notify_all();
    }
}

/// The running pipeline's shared state; a reload swaps in a fresh one while the HTTP server keeps listening.
pub struct Current(RwLock<Arc<Shared>>);

impl Current {
    pub fn new(shared: Arc<Shared>) -> Current {
        Current(RwLock::new(shared))
    }

    pub fn get(&self) -> Arc<Shared> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, shared: Arc<Shared>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = shared;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_silent_past_the_limit_is_stalled_and_a_retired_one_is_not() {
        let beats = Heartbeats::default();
        let limit = Duration::from_secs(10);
        beats.beat(Beat::Pipeline, 1_000);
        beats.beat(Beat::Camera, 5_000);
        assert_eq!(beats.stalled(10_000, limit), None);
        assert_eq!(beats.stalled(11_500, limit), Some(Beat::Pipeline));
        beats.beat(Beat::Pipeline, 11_000);
        assert_eq!(beats.stalled(15_500, limit), Some(Beat::Camera));
        beats.retire(Beat::Camera);
        assert_eq!(beats.stalled(15_500, limit), None);
        beats.beat(Beat::Http, 15_000);
        beats.beat(Beat::Pipeline, 26_000);
        assert_eq!(beats.stalled(26_000, limit), Some(Beat::Http), "a silent HTTP event loop is stalled too");
    }

    #[test]
    fn a_full_question_queue_refuses_and_a_closed_inbox_answers_stopping() {
        let shared = Shared::new(FrameQueue::new(2, 2, 2), "x86-dev");
        let waiting: Vec<_> =
            (0..QUESTION_QUEUE).map(|i| shared.ask(Question::Text(format!("q{i}")), Origin::Http).unwrap()).collect();
        assert!(matches!(shared.ask(Question::Text("one more".into()), Origin::Http), Err(AskError::Busy)));
        assert_eq!(Metrics::get(&shared.metrics.questions_rejected), 1);
        assert!(shared.questions_waiting());
        shared.close_inbox();
        for answer in waiting {
            assert!(matches!(answer.blocking_recv().unwrap(), Err(AskError::Stopping)));
        }
        assert!(!shared.questions_waiting());
        assert!(matches!(shared.ask(Question::Text("late".into()), Origin::Http), Err(AskError::Stopping)));
    }
}
