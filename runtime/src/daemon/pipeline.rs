//! The pipeline thread: the one place models run, one stage at a time, so the memory plan's "largest run" holds.
//! It answers waiting questions first, then publishes a caption when one is due, then analyses the newest
//! camera frame; a caption being decoded is stopped between tokens when a question arrives.

use std::collections::BTreeMap;
use std::hash::{Hash as _, Hasher as _};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use lookout_models::bundle::Bundle;
use lookout_models::llm::{Finish, GenerateOptions, LanguageModel};
use lookout_models::speech::{Transcriber, Transcript};
use lookout_models::vad::SileroVad;
use lookout_models::vision::detections::{count_by_label, LabelFilter};
use lookout_models::vision::image::{decode_image, RgbImage};
use lookout_models::vision::{Scene, VisionModels, VisionSession};
use lookout_models::whisper::{DecodeOptions, Whisper, Window};
use lookout_models::ModelError;
use serde_json::json;

use super::metrics::Metrics;
use super::state::{
    Answer, AskError, AskOptions, Beat, Inbox, Job, Origin, Published, PublishedCaption, Question, Shared, TokenCounts,
    Work,
};
use crate::answer::Reply;
use crate::config::{Config, OcrModel, SpeechWindow};
use crate::fusion::{Exchange, Task};
use crate::memory;
use crate::scene_change::{ChangeGate, Verdict};
use crate::scheduler::{Clock, Deadline, MonotonicClock};
use crate::tracker::Tracker;
use crate::turn::{self, VisionChoice};

/// Consecutive frames a changed scene must hold before it is captioned, so a passer-by does not trigger one.
const SETTLE_FRAMES: u32 = 2;
/// Longest a question asked before the first scene was published waits for the camera's next frame.
const FIRST_SCENE_WAIT: Duration = Duration::from_secs(5);
/// Longest idle wait before the pipeline beats again.
const IDLE_WAIT: Duration = Duration::from_millis(250);

/// A stage's models: loaded at start-up, or (`on_demand`) for each use and released after it.
pub struct Stage<T> {
    resident: Option<T>,
    load: Box<dyn Fn() -> anyhow::Result<T> + Send>,
}

impl<T> Stage<T> {
    fn new(on_demand: bool, load: Box<dyn Fn() -> anyhow::Result<T> + Send>) -> anyhow::Result<Stage<T>> {
        let resident = if on_demand { None } else { Some(load()?) };
        memory::release_free_memory();
        Ok(Stage { resident, load })
    }

    fn is_resident(&self) -> bool {
        self.resident.is_some()
    }

    /// Runs `f` on the models, loading them first (and releasing them after) when they are not resident.
    fn with<R>(&self, f: impl FnOnce(&T) -> anyhow::Result<R>) -> anyhow::Result<R> {
        if let Some(models) = &self.resident {
            return f(models);
        }
        let models = (self.load)()?;
        let result = f(&models);
        drop(models);
        memory::release_free_memory();
        result
    }
}

/// Every model the configuration enables.
pub struct Models {
    pub speech: Option<Stage<Whisper>>,
    pub vad: Option<Arc<SileroVad>>,
    pub vision: Option<Stage<VisionModels>>,
    pub decoder: Option<Stage<LanguageModel>>,
    /// The detector's label set, for grounding sentences when vision is on demand.
    pub labels: Vec<String>,
    /// Per label id, what a followed object needs before it is reported (`[objects.filters]`).
    track_filters: Vec<LabelFilter>,
    /// Most detections the detector keeps in a frame.
    max_detections: usize,
    window: Window,
}

impl Models {
    /// Loads the resident stages, smallest first, trimming the allocator after each so the load peaks the plan
    /// counts do not add up.
    pub fn load(config: &Config, bundle: &Bundle) -> anyhow::Result<Models> {
        let m = &config.models;
        let vad = match config.stage_enabled("speech") {
            true => Some(Arc::new(turn::load_vad(bundle).context("loading the VAD")?)),
            false => None,
        };
        let vision = match config.stage_enabled("vision") {
            true => {
                let b = bundle.clone();
                let choice = VisionChoice {
                    detector: config.detector_variant().map(str::to_string),
                    with_text: m.ocr != OcrModel::Off,
                    filters: config.objects.filters.clone(),
                    text_budget: Some(Duration::from_secs_f32(m.text_budget_s)),
                    tiles: config.objects.tiles,
                };
                Some(Stage::new(config.on_demand("vision"), Box::new(move || turn::load_vision(&b, &choice)))?)
            }
            false => None,
        };
        let (labels, track_filters, max_detections) = match &vision {
            Some(stage) => stage.with(|v| {
                let d = &v.detector;
                Ok((d.labels().to_vec(), d.label_filters().to_vec(), d.filter.max_detections))
            })?,
            None => (Vec::new(), Vec::new(), 0),
        };
        let speech = match config.stage_enabled("speech") {
            true => {
                let (b, variant) = (bundle.clone(), m.speech.as_str());
                let load = move || Ok(turn::load_speech(&b, Some(variant))?);
                Some(Stage::new(config.on_demand("speech"), Box::new(load))?)
            }
            false => None,
        };
        let decoder = match config.stage_enabled("decoder") {
            true => {
                let (b, variant, context) = (bundle.clone(), m.decoder.as_str(), m.context as usize);
                let load = move || Ok(turn::load_decoder(&b, Some(variant), Some(context))?);
                Some(Stage::new(config.on_demand("decoder"), Box::new(load))?)
            }
            false => None,
        };
        let window = if m.speech_window == SpeechWindow::Full { Window::Full } else { Window::FIT };
        Ok(Models { speech, vad, vision, decoder, labels, track_filters, max_detections, window })
    }
}

/// When to caption: after the scene changed and held for `SETTLE_FRAMES` frames, and every `interval`.
#[derive(Debug)]
pub struct CaptionPolicy {
    interval: Option<Duration>,
    on_change: bool,
    captioned: Option<u64>,
    candidate: Option<(u64, u32)>,
    last_at: Option<Duration>,
    changed: bool,
}

impl CaptionPolicy {
    pub fn new(interval: Option<Duration>, on_change: bool) -> CaptionPolicy {
        CaptionPolicy { interval, on_change, captioned: None, candidate: None, last_at: None, changed: false }
    }

    /// Takes note of the scene of a new frame, by its signature.
    pub fn observe(&mut self, signature: u64) {
        if self.captioned == Some(signature) {
            self.candidate = None;
            return;
        }
        let held = match self.candidate {
            Some((s, n)) if s == signature => n + 1,
            _ => 1,
        };
        self.candidate = Some((signature, held));
        if self.on_change && held >= SETTLE_FRAMES {
            self.changed = true;
        }
    }

    pub fn due(&self, now: Duration) -> bool {
        let periodic =
            self.interval.is_some_and(|every| self.last_at.is_none_or(|last| now.saturating_sub(last) >= every));
        self.changed || periodic
    }

    pub fn captioned(&mut self, signature: u64, now: Duration) {
        self.captioned = Some(signature);
        self.candidate = None;
        self.last_at = Some(now);
        self.changed = false;
    }
}

/// A short fingerprint of what a caption depends on: the labels with their counts and the text read.
pub fn signature(scene: &Scene) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    scene.counts.hash(&mut hasher);
    for line in &scene.text {
        line.text.hash(&mut hasher);
    }
    hasher.finish()
}

/// The pipeline's loop over its models, on a clock: the monotonic one in the daemon, a manual one in tests.
pub struct Worker<'m, C: Clock = MonotonicClock> {
    shared: Arc<Shared>,
    models: &'m Models,
    vision: Option<VisionSession<'m>>,
    policy: CaptionPolicy,
    image: RgbImage,
    options: GenerateOptions,
    clock: C,
    /// Whether a frame was analysed since the last caption was tried: a caption stopped by a question waits for
    /// a fresh look at the scene before it is tried again, so retried captions cannot starve the camera.
    fresh_scene: bool,
    /// A frame older than this when taken means vision has fallen behind the camera.
    frame_deadline: Deadline,
    /// A question answered later than this has outlived the HTTP client's wait.
    answer_deadline: Deadline,
    /// Confirms objects over the analysed frames (`objects.track`).
    tracker: Option<Tracker>,
    /// Passes only frames that changed since the last analysed one (`[scene_change]`)...
    gate: ChangeGate,
    /// ...whose scene, before tracking, and frame number an unchanged frame reuses.
    analysed: Option<(Scene, u64, Instant)>,
    /// Keep the frame behind each caption for the MQTT snapshot.
    snapshots: bool,
}

impl<'m> Worker<'m> {
    pub fn new(config: &Config, models: &'m Models, shared: Arc<Shared>) -> anyhow::Result<Worker<'m>> {
        let clock = MonotonicClock::since(shared.started);
        Worker::with_clock(config, models, shared, clock)
    }
}

impl<'m, C: Clock> Worker<'m, C> {
    pub fn with_clock(config: &Config, models: &'m Models, shared: Arc<Shared>, clock: C) -> anyhow::Result<Self> {
        // The camera's frames go to the tracker, which also takes the moving candidates; an image sent with a
        // question does not (`describe_image`).
        let vision = match &models.vision {
            Some(stage) if stage.is_resident() => {
                let mut session = stage.resident.as_ref().expect("resident").session()?;
                session.set_moving_candidates(config.objects.track);
                Some(session)
            }
            _ => None,
        };
        let cam = &config.camera;
        let interval =
            (config.caption.interval_s > 0).then(|| Duration::from_secs(u64::from(config.caption.interval_s)));
        Ok(Worker {
            models,
            vision,
            policy: CaptionPolicy::new(interval, config.caption.on_change),
            image: RgbImage::new(cam.width, cam.height),
            options: GenerateOptions { max_tokens: 48, ..GenerateOptions::default() },
            frame_deadline: Deadline::new(Duration::from_secs_f64(
                f64::from(cam.pool_frames) / f64::from(cam.fps.max(1)),
            )),
            answer_deadline: Deadline::new(Duration::from_secs(u64::from(config.http.answer_timeout_s))),
            clock,
            fresh_scene: true,
            tracker: (config.objects.track && models.vision.is_some())
                .then(|| Tracker::new(config.objects.tracker_settings(), models.max_detections)),
            gate: ChangeGate::new(config.scene_change.gate_settings()),
            analysed: None,
            snapshots: config.mqtt.enabled && config.mqtt.snapshot && models.vision.is_some(),
            shared,
        })
    }

    /// Runs until the shared stop flag is set.
    pub fn run(mut self) {
        let shared = self.shared.clone();
        loop {
            shared.beat(Beat::Pipeline);
            if shared.stopping() {
                break;
            }
            if let Some(idle) = self.step_or_idle(&shared) {
                let _ = shared.wake.wait_timeout(idle, IDLE_WAIT);
            }
        }
        shared.heartbeats.retire(Beat::Pipeline);
    }

    /// One turn of the loop: answers the first waiting question, or publishes a caption that is due, or analyses
    /// the newest frame. False when there was nothing to do.
    pub fn step(&mut self) -> bool {
        let shared = self.shared.clone();
        let worked = self.step_or_idle(&shared).is_none();
        worked
    }

    /// The clock the worker runs on.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// [`Worker::step`], handing back the inbox, still locked, when there was nothing to do: a question or frame
    /// that arrives is then signalled to the caller's wait, not lost between the check and the wait.
    fn step_or_idle<'s>(&mut self, shared: &'s Shared) -> Option<std::sync::MutexGuard<'s, Inbox>> {
        let mut inbox = shared.inbox();
        if let Some(job) = shared.next_question(&mut inbox) {
            drop(inbox);
            self.work(job);
            return None;
        }
        let frame_waiting = inbox.frames.waiting() > 0 && self.models.vision.is_some();
        if self.policy.due(self.clock.now()) && self.caption_ready() && (self.fresh_scene || !frame_waiting) {
            drop(inbox);
            self.caption();
            return None;
        }
        if frame_waiting {
            drop(inbox);
            self.analyse_waiting_frame();
            return None;
        }
        Some(inbox)
    }

    fn caption_ready(&self) -> bool {
        self.models.vision.is_none() || self.shared.scene.lock().is_ok_and(|s| s.is_some())
    }

    /// Analyses the newest frame the camera delivered, if any; whether there was one.
    fn analyse_waiting_frame(&mut self) -> bool {
        if self.models.vision.is_none() {
            return false;
        }
        let mut inbox = self.shared.inbox();
        let taken = inbox.frames.take(&mut self.image);
        let metrics = &self.shared.metrics;
        metrics.frames_dropped.store(inbox.frames.dropped(), std::sync::atomic::Ordering::Relaxed);
        metrics.frame_queue_depth.store(0, std::sync::atomic::Ordering::Relaxed);
        drop(inbox);
        if let Some((sequence, captured_at)) = taken {
            self.analyse(sequence, captured_at);
        }
        taken.is_some()
    }

    fn analyse(&mut self, sequence: u64, captured_at: Option<Instant>) {
        let shared = self.shared.clone();
        if let Some(at) = captured_at {
            if !self.frame_deadline.finish(&self.clock, self.clock.at(at)) {
                Metrics::add(&shared.metrics.frame_deadline_misses, 1);
            }
        }
        let verdict = self.gate.judge(&self.image, self.clock.now());
        let (mut scene, analysed_frame, analysed_at) = match (verdict, &self.analysed) {
            // The objects of an unchanged frame are those of the last analysed one: the tracker sees them again.
            (Verdict::Unchanged, Some((scene, frame, at))) => {
                Metrics::add(&shared.metrics.frames_skipped_unchanged, 1);
                (scene.clone(), *frame, *at)
            }
            _ => {
                let started = Instant::now();
                let (image, tracking) = (&self.image, self.tracker.is_some());
                let scene = match (&mut self.vision, &self.models.vision) {
                    (Some(session), _) => session.describe(image).map_err(anyhow::Error::from),
                    (None, Some(stage)) => stage.with(|v| {
                        let mut session = v.session()?;
                        session.set_moving_candidates(tracking);
                        Ok(session.describe(image)?)
                    }),
                    (None, None) => return,
                };
                shared.metrics.latency.vision.observe(started.elapsed());
                let scene = match scene {
                    Ok(scene) => scene,
                    Err(e) => {
                        self.gate.reset();
                        self.analysed = None;
                        return self.failed("vision", &e);
                    }
                };
                Metrics::add(&shared.metrics.frames_processed, 1);
                let at = Instant::now();
                self.analysed = Some((scene.clone(), sequence, at));
                (scene, sequence, at)
            }
        };
        if let Some(tracker) = &mut self.tracker {
            scene.objects = tracker.update(&scene.objects, (scene.width, scene.height), &self.models.track_filters);
            scene.counts = count_by_label(&scene.objects);
            if !tracker.is_warm() {
                return; // Nothing is published before an object in view could have been confirmed.
            }
        }
        self.fresh_scene = true;
        let signature = signature(&scene);
        let mut latest = shared.scene.lock().unwrap_or_else(|p| p.into_inner());
        let changed = latest.as_ref().is_none_or(|p| signature != self::signature(&p.scene));
        let caption = latest.take().and_then(|p| p.caption);
        let checked = (sequence != analysed_frame).then(|| (sequence, Instant::now()));
        *latest = Some(Published { scene, frame: analysed_frame, seen_at: analysed_at, checked, caption });
        if changed {
            let p = latest.as_ref().expect("just set");
            shared.events.emit("scene", json!({ "frame": sequence, "counts": p.scene.counts, "text": p.scene.text.iter().map(|t| &t.text).collect::<Vec<_>>() }));
        }
        drop(latest);
        self.policy.observe(signature);
    }

    fn caption(&mut self) {
        self.fresh_scene = false;
        let shared = self.shared.clone();
        let now = self.clock.now();
        let (scene, frame) = match shared.latest() {
            Some(p) => (p.scene, p.frame),
            None => (Scene::default(), 0),
        };
        let started = Instant::now();
        let cancel = || {
            shared.beat(Beat::Pipeline);
            shared.questions_waiting() || shared.stopping()
        };
        let result = self.reply(&scene, &Task::Caption, &[], &self.options, &cancel);
        let reply = match result {
            Ok(r) if r.generation.as_ref().is_some_and(|g| matches!(g.finish, Finish::Cancelled)) => {
                Metrics::add(&shared.metrics.captions_preempted, 1);
                return;
            }
            Ok(r) => r,
            Err(e) => {
                self.policy.captioned(signature(&scene), now);
                return self.failed("caption", &e);
            }
        };
        shared.metrics.latency.caption.observe(started.elapsed());
        Metrics::add(&shared.metrics.captions, 1);
        self.policy.captioned(signature(&scene), now);
        let event = json!({ "frame": frame, "text": reply.text, "source": reply.source, "fallback_reason": reply.fallback_reason,
                            "ms": started.elapsed().as_secs_f64() * 1e3 });
        let published = PublishedCaption {
            text: reply.text,
            source: reply.source,
            fallback_reason: reply.fallback_reason,
            frame,
            at: Instant::now(),
        };
        if self.snapshots {
            shared.keep_snapshot(frame, &self.image);
        }
        // Published before it is announced, so that whoever hears the event finds the caption in /v1/scene.
        if let Some(latest) = shared.scene.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            latest.caption = Some(published);
        }
        shared.events.emit("caption", event);
        memory::release_free_memory();
    }

    fn work(&mut self, job: Job) {
        let Job { work, origin, queued_at } = job;
        // A spoken question's answer goes to the events, not to a waiting client.
        let awaited = origin.awaited();
        if awaited && work.abandoned() {
            return; // Nobody waits for it any more: its client left or gave up.
        }
        let shared = self.shared.clone();
        // Past this, whoever asked has stopped waiting: the work is dropped, or stopped at its next step.
        let give_up_at = queued_at + self.answer_deadline.budget;
        shared.thinking.store(true, std::sync::atomic::Ordering::Relaxed);
        match work {
            Work::Ask { question, options, reply } => {
                let started = Instant::now();
                let result = match Instant::now() >= give_up_at {
                    true => Err(AskError::TimedOut),
                    false => self.answer_question(question, &options, give_up_at, &|| awaited && reply.is_closed()),
                };
                self.report_answer(&result, origin, queued_at, started);
                let _ = reply.send(result);
            }
            Work::Transcribe { samples, language, reply } => {
                let result = self.transcription(&samples, language, give_up_at, &|| awaited && reply.is_closed());
                if let Err(AskError::Failed(reason)) = &result {
                    Metrics::add(&shared.metrics.pipeline_errors, 1);
                    shared.events.emit("error", json!({ "stage": "transcribe", "origin": origin, "error": reason }));
                }
                let _ = reply.send(result);
            }
        }
        shared.thinking.store(false, std::sync::atomic::Ordering::Relaxed);
        if !self.answer_deadline.finish(&self.clock, self.clock.at(queued_at)) {
            Metrics::add(&shared.metrics.answer_deadline_misses, 1);
        }
        // Runs free what they allocated; hand it back so the resident set stays at the plan's level.
        memory::release_free_memory();
    }

    fn report_answer(&self, result: &Result<Answer, AskError>, origin: Origin, queued_at: Instant, started: Instant) {
        let shared = &self.shared;
        match result {
            Ok(answer) => {
                shared.metrics.latency.answer.observe(started.elapsed());
                Metrics::add(&shared.metrics.answers, 1);
                shared.events.emit(
                    "answer",
                    json!({ "origin": origin, "question": answer.question, "answer": answer.answer, "source": answer.source,
                            "frame": answer.frame, "ms": queued_at.elapsed().as_secs_f64() * 1e3 }),
                );
            }
            Err(AskError::Failed(reason)) => {
                Metrics::add(&shared.metrics.pipeline_errors, 1);
                shared.events.emit("error", json!({ "stage": "answer", "origin": origin, "error": reason }));
            }
            Err(e) if origin == Origin::Voice => {
                shared.events.emit("unanswered", json!({ "origin": origin, "reason": e.to_string() }))
            }
            Err(_) => {}
        }
    }

    /// Asked before each Whisper window and each decoder token: the watchdog sees the pipeline alive through long
    /// work, and work nobody waits for (past its deadline, or its client gone) stops.
    fn cancel_check<'a>(&'a self, give_up_at: Instant, abandoned: &'a dyn Fn() -> bool) -> impl Fn() -> bool + 'a {
        move || {
            self.shared.beat(Beat::Pipeline);
            self.shared.stopping() || Instant::now() >= give_up_at || abandoned()
        }
    }

    /// The error for a failed step: a cancelled one timed out (or the daemon is stopping).
    fn failure(&self, e: anyhow::Error) -> AskError {
        match e.chain().find_map(|c| c.downcast_ref::<ModelError>()) {
            Some(ModelError::Cancelled) if !self.shared.stopping() => AskError::TimedOut,
            Some(ModelError::Cancelled) => AskError::Stopping,
            Some(ModelError::UnknownLanguage(language)) => {
                AskError::Invalid(format!("the speech model knows no language `{language}`"))
            }
            _ => AskError::Failed(format!("{e:#}")),
        }
    }

    fn transcription(
        &self,
        samples: &[f32],
        language: Option<String>,
        give_up_at: Instant,
        abandoned: &dyn Fn() -> bool,
    ) -> Result<Transcript, AskError> {
        let Some(stage) = &self.models.speech else {
            return Err(AskError::Unavailable("speech recognition is off in this configuration".into()));
        };
        let cancel = self.cancel_check(give_up_at, abandoned);
        let mut options = DecodeOptions { window: self.models.window, ..DecodeOptions::default() };
        if let Some(language) = language {
            options.language = language;
        }
        let started = Instant::now();
        let (transcript, _) = stage
            .with(|whisper| {
                let mut transcriber = Transcriber::new(whisper, self.models.vad.as_deref())?;
                Ok(turn::hear(&mut transcriber, samples, &options, &cancel)?)
            })
            .map_err(|e| self.failure(e))?;
        self.shared.metrics.latency.transcribe.observe(started.elapsed());
        Ok(transcript)
    }

    fn answer_question(
        &mut self,
        question: Question,
        options: &AskOptions,
        give_up_at: Instant,
        abandoned: &dyn Fn() -> bool,
    ) -> Result<Answer, AskError> {
        let mut timings = BTreeMap::new();
        let (question, transcript) = match question {
            Question::Text(text) => (text, None),
            Question::Speech(samples) => {
                let started = Instant::now();
                let transcript = self.transcription(&samples, None, give_up_at, abandoned)?;
                timings.insert("transcribe", started.elapsed().as_secs_f64() * 1e3);
                let text = turn::question_in(&transcript.text).ok_or(AskError::NoSpeech)?;
                (text.clone(), Some(text))
            }
        };
        let (scene, frame, scene_age_s) = match &options.image {
            Some(bytes) => {
                let started = Instant::now();
                let scene = self.describe_image(bytes)?;
                timings.insert("vision", started.elapsed().as_secs_f64() * 1e3);
                (scene, None, None)
            }
            None => {
                // The answer is about the present: a frame newer than the published scene is analysed first.
                self.analyse_waiting_frame();
                let mut latest = self.shared.latest();
                // Right after a start or a reload the tracker has not yet confirmed what is in view: the question
                // waits while the first frames are analysed, however long each takes on this machine, as long as
                // the camera keeps delivering them, and within the question's own deadline.
                let shared = self.shared.clone();
                let mut last_frame_at = Instant::now();
                while latest.is_none()
                    && self.models.vision.is_some()
                    && Instant::now() < give_up_at
                    && last_frame_at.elapsed() < FIRST_SCENE_WAIT
                {
                    shared.beat(Beat::Pipeline);
                    if shared.stopping() || abandoned() {
                        break;
                    }
                    let inbox = shared.inbox();
                    if inbox.frames.waiting() == 0 {
                        drop(shared.wake.wait_timeout(inbox, Duration::from_millis(50)));
                    } else {
                        drop(inbox);
                    }
                    if self.analyse_waiting_frame() {
                        last_frame_at = Instant::now();
                    }
                    latest = shared.latest();
                }
                if latest.is_none() && self.models.vision.is_some() {
                    return Err(AskError::NoScene);
                }
                let age = latest.as_ref().map(|p| p.seen_at.elapsed().as_secs_f64());
                (latest.as_ref().map(|p| p.scene.clone()).unwrap_or_default(), latest.map(|p| p.frame), age)
            }
        };
        // A question with nothing to ask (an image alone) is a request for a caption.
        let task = turn::task_for(Some(&question));
        let started = Instant::now();
        let mut generate = self.options;
        if let Some(limit) = options.max_tokens {
            generate.max_tokens = generate.max_tokens.min(limit.max(1));
        }
        if let Some(sampling) = options.sampling {
            generate.sampling = sampling;
        }
        let cancel = self.cancel_check(give_up_at, abandoned);
        let reply = self.reply(&scene, &task, &options.history, &generate, &cancel).map_err(|e| self.failure(e))?;
        if reply.generation.as_ref().is_some_and(|g| matches!(g.finish, Finish::Cancelled)) {
            return Err(if self.shared.stopping() { AskError::Stopping } else { AskError::TimedOut });
        }
        timings.insert("answer", started.elapsed().as_secs_f64() * 1e3);
        let prompt_tokens = reply.generation.as_ref().map_or(0, |g| g.prompt_tokens);
        let (answer, tokens, truncated) = self.limit_answer(reply.text, &options.stop, options.max_tokens);
        Ok(Answer {
            question,
            transcript,
            answer,
            source: reply.source,
            fallback_reason: reply.fallback_reason,
            frame,
            scene_age_s,
            timings_ms: timings,
            tokens: tokens.map(|answer| TokenCounts { prompt: prompt_tokens, answer }),
            truncated,
        })
    }

    /// The objects and text in an image sent with a question (not the camera's: nothing is tracked or published).
    fn describe_image(&self, bytes: &[u8]) -> Result<Scene, AskError> {
        let Some(stage) = &self.models.vision else {
            return Err(AskError::Unavailable("vision is off in this configuration; an image cannot be read".into()));
        };
        let image = decode_image(bytes).map_err(|e| AskError::Invalid(format!("the image cannot be used: {e}")))?;
        let started = Instant::now();
        let scene = stage.with(|v| Ok(v.session()?.describe(&image)?)).map_err(|e| self.failure(e))?;
        self.shared.metrics.latency.vision.observe(started.elapsed());
        Ok(scene)
    }

    /// Cuts the answer before the first stop sequence and at `max_tokens`; returns it with its token count (when
    /// the decoder's tokenizer is loaded) and whether the token limit cut it.
    fn limit_answer(
        &self,
        mut text: String,
        stop: &[String],
        max_tokens: Option<usize>,
    ) -> (String, Option<usize>, bool) {
        if let Some(at) = stop.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str())).min() {
            text.truncate(at);
        }
        let tokenizer = self.models.decoder.as_ref().and_then(|d| d.resident.as_ref()).map(|lm| &lm.text.tokenizer);
        let Some(tokenizer) = tokenizer else {
            // Without a tokenizer the limit counts words, which are never fewer than tokens.
            let words = text.split_whitespace().count();
            return match max_tokens.filter(|&m| words > m) {
                Some(limit) => (text.split_whitespace().take(limit).collect::<Vec<_>>().join(" "), None, true),
                None => (text, None, false),
            };
        };
        let ids = tokenizer.encode_plain(&text);
        match max_tokens.filter(|&m| ids.len() > m) {
            Some(limit) => (tokenizer.decode(&ids[..limit]), Some(limit), true),
            None => (text, Some(ids.len()), false),
        }
    }

    fn reply(
        &self,
        scene: &Scene,
        task: &Task,
        history: &[Exchange],
        options: &GenerateOptions,
        cancel: &dyn Fn() -> bool,
    ) -> anyhow::Result<Reply> {
        let labels = &self.models.labels;
        match &self.models.decoder {
            Some(stage) => {
                stage.with(|lm| turn::answer(scene, labels, task, history, Some(lm), options, &mut |_| {}, cancel))
            }
            None => turn::answer(scene, labels, task, history, None, options, &mut |_| {}, cancel),
        }
    }

    fn failed(&self, stage: &str, error: &anyhow::Error) {
        Metrics::add(&self.shared.metrics.pipeline_errors, 1);
        self.shared.events.emit("error", json!({ "stage": stage, "error": format!("{error:#}") }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::buffers::FrameQueue;
    use crate::scheduler::ManualClock;

    /// A daemon with every model off: captions and answers come from the (empty) scene alone.
    fn sceneless(caption: &str) -> (Config, Models, Arc<Shared>) {
        let text = format!(
            "board = \"x86-dev\"\n[models]\nspeech = \"off\"\ndetector = \"off\"\ndecoder = \"off\"\nocr = \"off\"\n\
             [caption]\n{caption}\n[camera]\ndevice = \"dir:/nonexistent\"\n[microphone]\ndevice = \"wav:/none.wav\"\n"
        );
        let probe = crate::board::Probe { device_tree_model: None, cpuinfo: String::new() };
        let config = Config::parse(&text, std::path::Path::new("test.toml"), None, &probe).unwrap().config;
        let models = Models {
            speech: None,
            vad: None,
            vision: None,
            decoder: None,
            labels: Vec::new(),
            track_filters: Vec::new(),
            max_detections: 0,
            window: Window::FIT,
        };
        (config, models, Arc::new(Shared::new(FrameQueue::new(2, 64, 48), "x86-dev")))
    }

    /// In process, on the manual clock: the caption interval and a waiting question, an hour of the daemon's time
    /// without waiting for it.
    #[test]
    fn the_worker_captions_at_the_interval_of_its_clock_and_answers_questions_first() {
        let (config, models, shared) = sceneless("interval_s = 60\non_change = false");
        let mut worker = Worker::with_clock(&config, &models, shared.clone(), ManualClock::default()).unwrap();
        let captions = || shared.metrics.captions.load(std::sync::atomic::Ordering::Relaxed);
        assert!(worker.step(), "the first caption comes at once");
        assert_eq!(captions(), 1);
        assert!(!worker.step(), "then nothing is due");
        worker.clock().advance(Duration::from_secs(59));
        assert!(!worker.step(), "not before the interval");
        worker.clock().advance(Duration::from_secs(1));
        assert!(worker.step());
        assert_eq!(captions(), 2);

        // A question waiting when a caption is due is answered first; the caption follows.
        worker.clock().advance(Duration::from_secs(60));
        let mut reply = shared.ask(Question::Text("how many dogs are there?".into()), Origin::Http).unwrap();
        assert!(worker.step());
        let answer = reply.try_recv().expect("answered in that step").expect("answered from the scene");
        // Without a detector nothing can be counted, and the answer says so.
        assert_eq!(
            (answer.answer.as_str(), answer.source),
            ("I see nothing I recognize.", crate::answer::Source::Scene)
        );
        assert_eq!(captions(), 2, "the question went before the caption");
        assert!(worker.step());
        assert_eq!(captions(), 3);

        for _ in 0..60 {
            worker.clock().advance(Duration::from_secs(60));
            assert!(worker.step());
            assert!(!worker.step());
        }
        assert_eq!(captions(), 63, "an hour of the clock, a caption a minute");
    }

    #[test]
    fn captions_on_change_alone_never_come_for_a_scene_that_does_not_change() {
        let (config, models, shared) = sceneless("interval_s = 0\non_change = true");
        let mut worker = Worker::with_clock(&config, &models, shared.clone(), ManualClock::default()).unwrap();
        assert!(!worker.step());
        worker.clock().advance(Duration::from_secs(24 * 3600));
        assert!(!worker.step(), "a day later, still nothing to caption");
        assert_eq!(shared.metrics.captions.load(std::sync::atomic::Ordering::Relaxed), 0);
    }

    #[test]
    fn a_changed_scene_is_captioned_once_it_holds_and_the_interval_repeats_it() {
        let s = Duration::from_secs;
        let mut policy = CaptionPolicy::new(Some(s(60)), true);
        assert!(policy.due(s(0)), "the first caption comes as soon as there is a scene");
        policy.captioned(1, s(0));
        policy.observe(1);
        assert!(!policy.due(s(10)));
        policy.observe(2);
        assert!(!policy.due(s(11)), "one frame of a new scene is not enough");
        policy.observe(1);
        policy.observe(2);
        policy.observe(2);
        assert!(policy.due(s(12)));
        policy.captioned(2, s(12));
        assert!(!policy.due(s(71)));
        assert!(policy.due(s(72)), "the interval repeats the caption of an unchanged scene");

        let mut quiet = CaptionPolicy::new(None, false);
        quiet.captioned(1, s(0));
        quiet.observe(3);
        quiet.observe(3);
        assert!(!quiet.due(s(1000)), "neither interval nor change captions");
    }

    #[test]
    fn the_signature_follows_counts_and_text() {
        let scene = |labels: &[&str], text: &[&str]| {
            let mut s = Scene::default();
            for l in labels {
                *s.counts.entry(l.to_string()).or_default() += 1;
            }
            s.text = text
                .iter()
                .map(|t| lookout_models::vision::scene::TextLine { text: t.to_string(), score: 1.0, bbox: [0.0; 4] })
                .collect();
            s
        };
        assert_eq!(signature(&scene(&["dog", "cat"], &[])), signature(&scene(&["cat", "dog"], &[])));
        assert_ne!(signature(&scene(&["dog"], &[])), signature(&scene(&["dog", "dog"], &[])));
        assert_ne!(signature(&scene(&["dog"], &["EXIT"])), signature(&scene(&["dog"], &["EXTT"])));
    }
}
