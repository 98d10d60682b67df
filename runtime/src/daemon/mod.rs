//! `lookout serve`: the daemon. Checks the configuration and its memory plan, loads the models once, runs the
//! capture threads, the pipeline, the HTTP API and the Wyoming server, talks to systemd (READY, STATUS, WATCHDOG
//! from the threads' heartbeats, STOPPING), stops within 2 s on SIGTERM, reloads on SIGHUP and toggles
//! push-to-talk on SIGUSR1.

pub mod events;
pub mod http;
pub mod metrics;
pub mod mqtt;
pub mod notify;
#[cfg(feature = "gpio")]
pub mod panel;
pub mod pipeline;
pub mod sources;
pub mod state;
pub mod unit;
pub mod wyoming;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lookout_models::bundle::Bundle;
use serde_json::json;

use self::http::HttpServer;
use self::mqtt::MqttClient;
use self::notify::Notifier;
use self::pipeline::{Models, Worker};
use self::state::{Beat, Current, Shared};
use crate::config::{Config, Loaded};
use crate::context::{check_label_filters, open_config_bundle, Context};
use crate::memory;
use crate::plan::{self, Plan};
use crate::scheduler::buffers::FrameQueue;
use crate::turn;

/// How long SIGTERM waits for the threads before exiting anyway (systemd allows 5 s; the promise is 2 s).
const STOP_WITHIN: Duration = Duration::from_millis(1500);
/// How long a reload waits for the old pipeline to finish its current run.
const RELOAD_STOP_WITHIN: Duration = Duration::from_secs(120);
/// Silence after which a thread counts as hung when systemd sets no watchdog.
const DEFAULT_STALL_LIMIT: Duration = Duration::from_secs(60);
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// A configuration ready to run: checked, its bundle found and its plan within budget.
pub struct Checked {
    pub config: Config,
    pub path: PathBuf,
    pub bundle: Bundle,
    pub plan: Plan,
    /// Read from `mqtt.password_file` when MQTT is on.
    pub mqtt_password: Option<String>,
}

impl Checked {
    pub fn load(ctx: &Context, path: &Path, board: Option<&str>) -> anyhow::Result<Checked> {
        let Loaded { config, .. } = Config::load(path, board)?;
        config.check_build(path)?;
        let mqtt_password = config.mqtt.password(path)?;
        let bundle = open_config_bundle(ctx, &config)?;
        check_label_filters(&config, &bundle, path)?;
        turn::check_stage_files(&bundle, &config)?;
        let plan = plan::plan(&config, &bundle)?;
        plan.check_fits(path)?;
        Ok(Checked { config, path: path.to_path_buf(), bundle, plan, mqtt_password })
    }

    fn shared(&self) -> Arc<Shared> {
        let cam = &self.config.camera;
        let shared =
            Shared::new(FrameQueue::new(cam.pool_frames as usize, cam.width, cam.height), &self.config.board.name);
        shared.metrics.budget_bytes.store((self.plan.budget_mib * 1048576.0) as u64, Relaxed);
        shared.metrics.plan_bytes.store((self.plan.total_mib * 1048576.0) as u64, Relaxed);
        Arc::new(shared)
    }
}

/// Sets the inference threads and tract's CPU kernel family; call before any model is loaded.
pub fn apply_compute(config: &Config) -> usize {
    if let Some(kind) = &config.compute.tract_cpu_kind {
        if std::env::var_os("TRACT_CPU_AARCH64_KIND").is_none() {
            std::env::set_var("TRACT_CPU_AARCH64_KIND", kind);
        }
    }
    lookout_models::engine::set_threads(config.compute.threads as usize)
}

/// How the sources run.
#[derive(Debug, Clone, Copy)]
pub struct SourceOptions {
    /// Play file cameras at their frame rate (off: as fast as frames are taken).
    pub pace_camera: bool,
    /// Overrides the camera's frame rate.
    pub camera_fps: Option<u32>,
    pub microphone: bool,
}

impl Default for SourceOptions {
    fn default() -> SourceOptions {
        SourceOptions { pace_camera: true, camera_fps: None, microphone: true }
    }
}

/// The running threads of one configuration: pipeline, camera, microphone.
pub struct Pipeline {
    threads: Vec<JoinHandle<()>>,
}

impl Pipeline {
    /// Opens the sources (failing fast on a bad device), loads the models and starts the threads.
    pub fn start(checked: &Checked, shared: &Arc<Shared>, options: SourceOptions) -> anyhow::Result<Pipeline> {
        let config = &checked.config;
        let mut camera_config = config.clone();
        if let Some(fps) = options.camera_fps {
            camera_config.camera.fps = fps;
        }
        let wait = |seconds: u32| Duration::from_secs(u64::from(seconds));
        let camera = match config.stage_enabled("vision") {
            true => Some(sources::open_waiting("camera.device", wait(config.camera.wait_s), shared, || {
                sources::open_camera(&camera_config, &checked.path, options.pace_camera)
            })?),
            false => None,
        };
        let microphone = match config.stage_enabled("speech") && options.microphone {
            true => Some(sources::open_waiting("microphone.device", wait(config.microphone.wait_s), shared, || {
                sources::open_microphone(config, &checked.path)
            })?),
            false => None,
        };
        #[cfg(feature = "gpio")]
        let panel = panel::open(config)?;
        #[cfg(not(feature = "gpio"))]
        sources::refuse_gpio(config, &checked.path)?;
        let models = Models::load(config, &checked.bundle)?;
        memory::release_free_memory();
        let mut threads = Vec::new();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| std::thread::Builder::new().name(name.into()).spawn(f);
        if let (Some(microphone), Some(vad)) = (microphone, models.vad.clone()) {
            let (shared, ring_s) = (shared.clone(), config.microphone.ring_s);
            shared.beat(Beat::Microphone);
            threads
                .push(spawn("microphone", Box::new(move || sources::run_microphone(microphone, vad, ring_s, shared)))?);
        }
        if let Some(camera) = camera {
            let (shared, w, h) = (shared.clone(), config.camera.width, config.camera.height);
            shared.beat(Beat::Camera);
            threads.push(spawn("camera", Box::new(move || sources::run_camera(camera, w, h, shared)))?);
        }
        #[cfg(feature = "gpio")]
        if let Some(panel) = panel {
            let shared = shared.clone();
            threads.push(spawn("gpio", Box::new(move || panel::run(panel, shared)))?);
        }
        let (shared, config) = (shared.clone(), config.clone());
        shared.beat(Beat::Pipeline);
        threads.push(spawn(
            "pipeline",
            Box::new(move || match Worker::new(&config, &models, shared.clone()) {
                Ok(worker) => worker.run(),
                // The pipeline's heartbeat then stops: /healthz says so and systemd's watchdog restarts.
                Err(e) => shared.events.emit("error", json!({ "stage": "pipeline", "error": format!("{e:#}") })),
            }),
        )?);
        Ok(Pipeline { threads })
    }

    /// Stops the threads; returns whether all of them ended within `within`.
    pub fn stop(self, shared: &Shared, within: Duration) -> bool {
        shared.stop.store(true, Relaxed);
        shared.close_inbox();
        let deadline = Instant::now() + within;
        let mut all = true;
        for thread in self.threads {
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                all = false;
            }
        }
        all
    }
}

#[derive(Debug, Clone, Copy)]
enum Signal {
    Stop,
    Reload,
    PushToTalk,
}

/// Forwards signals to the main loop. While the main thread is busy loading models (`serving` off), SIGTERM and
/// SIGINT end the process at once instead: loading can take minutes on a small board, and nothing is written yet.
fn signals(serving: Arc<AtomicBool>) -> anyhow::Result<Receiver<Signal>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
    let mut incoming = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])?;
    let (send, receive) = channel();
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        for number in incoming.forever() {
            let signal = match number {
                SIGHUP => Signal::Reload,
                SIGUSR1 => Signal::PushToTalk,
                _ => Signal::Stop,
            };
            if matches!(signal, Signal::Stop) && !serving.load(Relaxed) {
                Notifier::from_env().stopping();
                eprintln!("lookout: stopped while loading");
                std::process::exit(0);
            }
            if send.send(signal).is_err() {
                break;
            }
        }
    })?;
    Ok(receive)
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn serve(ctx: &Context, config_path: &Path, board: Option<&str>) -> anyhow::Result<()> {
    let mut checked = Checked::load(ctx, config_path, board)?;
    eprintln!("{}", checked.plan);
    let serving = Arc::new(AtomicBool::new(false));
    let signals = signals(serving.clone())?;
    let threads = apply_compute(&checked.config);
    let notifier = Notifier::from_env();
    let stall_limit = notifier.watchdog_interval().unwrap_or(DEFAULT_STALL_LIMIT);
    let ping_every =
        notifier.watchdog_interval().map_or(Duration::from_secs(1), |w| (w / 4).max(Duration::from_millis(50)));

    let mut shared = checked.shared();
    shared.set_stall_limit(stall_limit);
    let current = Arc::new(Current::new(shared.clone()));
    shared.events.emit("starting", json!({ "board": checked.config.board.name, "plan_mib": checked.plan.total_mib, "budget_mib": checked.plan.budget_mib, "threads": threads }));
    notifier.status("loading models");
    let mut pipeline = Pipeline::start(&checked, &shared, SourceOptions::default())?;
    let mut http = HttpServer::start(&checked, current.clone())?;
    let mut mqtt = MqttClient::start(&checked, current.clone())?;
    shared.events.emit(
        "listening",
        json!({ "address": http.addr.to_string(), "wyoming": http.wyoming_addr.map(|a| a.to_string()) }),
    );
    // Serving from here: a SIGTERM that follows the announcement below is a clean stop, not "stopped while loading".
    serving.store(true, Relaxed);
    let rss = memory::rss();
    shared.events.emit("ready", json!({ "rss_mib": rss.map(|r| r.rss_mib), "plan_mib": checked.plan.total_mib }));
    notifier.ready(&format!("serving on {} (board {})", http.addr, checked.config.board.name));

    let mut last_status = Instant::now();
    let mut stalled_reported = false;
    loop {
        match signals.recv_timeout(ping_every) {
            Ok(Signal::Stop) | Err(RecvTimeoutError::Disconnected) => break,
            Ok(Signal::PushToTalk) => {
                let held = !shared.push_to_talk.load(Relaxed);
                shared.push_to_talk.store(held, Relaxed);
                shared.events.emit("push_to_talk", json!({ "held": held }));
            }
            Ok(Signal::Reload) => {
                notifier.reloading();
                match Checked::load(ctx, config_path, board) {
                    Err(e) => {
                        let error = crate::exit::one_line(&e);
                        shared
                            .events
                            .emit("reload_failed", json!({ "error": error, "running": "the previous configuration" }));
                        notifier.ready(&format!("reload failed, previous configuration kept: {error}"));
                    }
                    Ok(next) => {
                        serving.store(false, Relaxed);
                        shared.events.emit(
                            "reloading",
                            json!({ "board": next.config.board.name, "plan_mib": next.plan.total_mib }),
                        );
                        // The pipeline thread that proves the daemon alive is stopped or loading meanwhile.
                        let stopped =
                            with_watchdog_pings(&notifier, ping_every, || pipeline.stop(&shared, RELOAD_STOP_WITHIN));
                        if !stopped {
                            // Its models may still be held: loading the new ones beside them could break the plan.
                            let error = format!(
                                "the running pipeline did not stop within {} s; exiting so that the service restarts",
                                RELOAD_STOP_WITHIN.as_secs()
                            );
                            shared.events.emit("reload_failed", json!({ "error": error, "running": null }));
                            anyhow::bail!(error);
                        }
                        memory::release_free_memory();
                        apply_compute(&next.config);
                        let next_shared = next.shared();
                        next_shared.set_stall_limit(stall_limit);
                        let started = with_watchdog_pings(&notifier, ping_every, || {
                            Pipeline::start(&next, &next_shared, SourceOptions::default())
                        });
                        match started {
                            Ok(started) => {
                                (checked, shared, pipeline) = (next, next_shared, started);
                                current.set(shared.clone());
                                if !http.listens_as(&checked) {
                                    drop(http);
                                    http = HttpServer::start(&checked, current.clone())?;
                                } else {
                                    http.update(&checked);
                                }
                                // The broker, topics or entities may have changed: a new session announces them.
                                drop(mqtt.take());
                                mqtt = MqttClient::start(&checked, current.clone())?;
                                serving.store(true, Relaxed);
                                shared.events.emit("reloaded", json!({ "address": http.addr.to_string() }));
                                notifier.ready(&format!(
                                    "serving on {} (board {}, reloaded)",
                                    http.addr, checked.config.board.name
                                ));
                            }
                            Err(e) => {
                                // A source or model of the new configuration failed: the previous one starts again.
                                let error = crate::exit::one_line(&e);
                                memory::release_free_memory();
                                apply_compute(&checked.config);
                                shared = checked.shared();
                                shared.set_stall_limit(stall_limit);
                                current.set(shared.clone());
                                shared.events.emit(
                                    "reload_failed",
                                    json!({ "error": error, "running": "the previous configuration" }),
                                );
                                pipeline = with_watchdog_pings(&notifier, ping_every, || {
                                    Pipeline::start(&checked, &shared, SourceOptions::default())
                                })?;
                                serving.store(true, Relaxed);
                                notifier.ready(&format!("reload failed, previous configuration kept: {error}"));
                            }
                        }
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        match shared.heartbeats.stalled(shared.now_ms(), stall_limit) {
            None => {
                notifier.watchdog();
                stalled_reported = false;
            }
            Some(who) if !stalled_reported => {
                let what = format!("{who:?}").to_lowercase();
                shared
                    .events
                    .emit("stalled", json!({ "thread": what, "silent_for_more_than_s": stall_limit.as_secs_f64() }));
                notifier.status(&format!("the {what} thread is stalled; watchdog pings stopped"));
                stalled_reported = true;
            }
            Some(_) => {}
        }
        if last_status.elapsed() >= STATUS_EVERY && !stalled_reported {
            last_status = Instant::now();
            notifier.status(&status_line(&shared));
        }
    }
    notifier.stopping();
    shared.events.emit("stopping", json!({}));
    // `offline` goes out first (within a second when the broker does not answer).
    drop(mqtt);
    let clean = pipeline.stop(&shared, STOP_WITHIN);
    drop(http);
    shared.events.emit("stopped", json!({ "clean": clean }));
    Ok(())
}

/// Runs `work` while a helper thread pings the systemd watchdog every `every`.
fn with_watchdog_pings<T>(notifier: &Notifier, every: Duration, work: impl FnOnce() -> T) -> T {
    let (done, finished) = channel::<()>();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = finished.recv_timeout(every) {
                notifier.watchdog();
            }
        });
        let result = work();
        drop(done);
        result
    })
}

fn status_line(shared: &Shared) -> String {
    use self::metrics::Metrics;
    let m = &shared.metrics;
    format!(
        "{} frames, {} captions, {} answers, {} dropped frames, RSS {:.0} MiB",
        Metrics::get(&m.frames_processed),
        Metrics::get(&m.captions),
        Metrics::get(&m.answers),
        Metrics::get(&m.frames_dropped),
        memory::rss().map_or(0.0, |r| r.rss_mib)
    )
}
