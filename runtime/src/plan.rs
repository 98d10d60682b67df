//! The memory plan: what a configuration will hold at its peak — the process itself, each stage's models, the
//! largest run's working memory, frame pool, audio ring and request buffers — from the bundle's measured
//! footprints, checked against the board's budget before anything is loaded.

use anyhow::anyhow;
use lookout_models::bundle::{Bundle, Footprint};
use lookout_models::vision::detections::DetectionFilter;
use serde::Serialize;

use crate::config::{Config, OcrModel, SpeechWindow};

/// A configuration whose memory plan exceeds its budget.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OverBudget(pub String);

const MIB: f64 = 1024.0 * 1024.0;
/// HTTP request bodies held at once; each may be `http.max_body_kib`, and one at a time decodes audio.
pub const REQUEST_BODIES: u32 = 4;
/// Bytes of buffers one open HTTP connection holds at most (its read buffer, which bounds a request's headers,
/// and as much again for writing).
pub const CONNECTION_BUFFER_BYTES: u64 = 2 * 16 * 1024;
/// Questions that may wait for the pipeline at once; a spoken one holds its 16 kHz samples while it waits.
pub const QUESTION_QUEUE: usize = 4;

/// Largest Wyoming message parts a client may send: the JSON header line, its data block and a payload.
pub const WYOMING_MAX_HEADER_BYTES: usize = 8 * 1024;
pub const WYOMING_MAX_DATA_BYTES: usize = 64 * 1024;
pub const WYOMING_MAX_PAYLOAD_BYTES: usize = 256 * 1024;
/// Highest sample rate a Wyoming client may stream; a session holds its audio as mono f32 at that rate.
pub const WYOMING_MAX_RATE: u32 = 48_000;

/// Bytes one Wyoming session holds at most: `seconds` of mono f32 audio at the highest rate, and one message.
pub fn wyoming_session_bytes(seconds: u32) -> u64 {
    u64::from(seconds) * u64::from(WYOMING_MAX_RATE) * 4
        + (WYOMING_MAX_HEADER_BYTES + WYOMING_MAX_DATA_BYTES + 2 * WYOMING_MAX_PAYLOAD_BYTES) as u64
}

/// Bytes an MQTT message holds besides its payload, and the largest message taken from the broker.
const MQTT_MESSAGE_BYTES: u64 = 4 * 1024;
pub const MQTT_MAX_INCOMING_BYTES: usize = 1024 * 1024;

/// The MQTT client: the outbox of small messages, the largest incoming message, and with snapshots on the kept
/// frame, its scaled copy while encoding, and two JPEGs (one encoded, one on its way).
fn mqtt_item(config: &Config) -> Item {
    let m = &config.mqtt;
    let mut bytes = u64::from(m.outbox) * MQTT_MESSAGE_BYTES + MQTT_MAX_INCOMING_BYTES as u64;
    let mut basis = format!("an outbox of {} messages, one incoming message of up to 1 MiB", m.outbox);
    if m.snapshot {
        let frame = u64::from(config.camera.width) * u64::from(config.camera.height) * 3;
        bytes += 2 * frame + 2 * u64::from(m.snapshot_max_kib) * 1024;
        basis.push_str(&format!(", a kept frame and its JPEGs of up to {} KiB", m.snapshot_max_kib));
    }
    Item { name: "mqtt".into(), mib: bytes as f64 / MIB, basis }
}

/// One line of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub name: String,
    pub mib: f64,
    /// How the figure was obtained.
    pub basis: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub board: String,
    pub budget_mib: f64,
    /// Held for the whole run.
    pub resident: Vec<Item>,
    /// The largest of what comes and goes: one stage's run, or an on-demand stage loaded and running.
    pub peak_extra: Item,
    pub total_mib: f64,
    /// Architecture the footprints were measured on.
    pub measured_on: String,
}

impl Plan {
    pub fn fits(&self) -> bool {
        self.total_mib <= self.budget_mib
    }

    /// Ok when the plan fits its budget; else the error for the configuration at `path`, naming the largest items.
    pub fn check_fits(&self, path: &std::path::Path) -> Result<(), OverBudget> {
        match self.fits() {
            true => Ok(()),
            false => Err(OverBudget(format!("{}: {}", path.display(), self.over_budget_message()))),
        }
    }

    /// Why a plan is over budget, naming the largest items.
    pub fn over_budget_message(&self) -> String {
        let mut items: Vec<&Item> = self.resident.iter().chain(std::iter::once(&self.peak_extra)).collect();
        items.sort_by(|a, b| b.mib.total_cmp(&a.mib));
        let largest: Vec<String> = items.iter().take(3).map(|i| format!("{} {:.0} MiB", i.name, i.mib)).collect();
        format!(
            "the memory plan needs {:.0} MiB but board {} allows {:.0} MiB; largest: {}. Turn a stage off, load it \
             on demand (models.on_demand), or pick smaller variants",
            self.total_mib,
            self.board,
            self.budget_mib,
            largest.join(", ")
        )
    }
}

/// A stage of the configuration and the footprint it runs with.
struct StagePlan<'b> {
    label: String,
    footprint: &'b Footprint,
    on_demand: bool,
    working_mib: f64,
}

/// Builds the plan of `config` from the footprints measured into `bundle`.
pub fn plan(config: &Config, bundle: &Bundle) -> anyhow::Result<Plan> {
    let m = &config.models;
    // Speech is measured at a few encoder windows: the smallest one that holds the longest query is used. The
    // decoder is measured at a few contexts: the shortest that holds the configured one, else the longest.
    let window_s = if m.speech_window == SpeechWindow::Full { 30 } else { (config.microphone.ring_s + 1).clamp(5, 30) };
    let context = m.context as usize;
    let find = |stage: &str, variant: &str| {
        let measured = bundle.footprints(stage, variant);
        let holding = |f: &&&Footprint| match stage {
            "speech" => f.window_s >= window_s,
            "decoder" => f.tokens >= context,
            _ => true,
        };
        let size = |f: &&&Footprint| (f.window_s, f.tokens);
        measured
            .iter()
            .filter(holding)
            .min_by_key(size)
            .or_else(|| measured.iter().filter(|_| stage == "decoder").max_by_key(size))
            .copied()
            .ok_or_else(|| {
                anyhow!(
                    "bundle {} has no measured footprint for {stage} ({variant}); run `lookout models measure`",
                    bundle.dir.display()
                )
            })
    };
    let runtime = find("runtime", "any")?;
    let mut stages = Vec::new();
    if config.stage_enabled("speech") {
        let vad = find("vad", "f32")?;
        stages.push(StagePlan { label: "vad".into(), footprint: vad, on_demand: false, working_mib: vad.working_mib });
        let speech = find("speech", m.speech.as_str())?;
        let on_demand = config.on_demand("speech");
        stages.push(StagePlan {
            label: format!("speech {}", m.speech),
            footprint: speech,
            on_demand,
            working_mib: speech.working_mib,
        });
    }
    if config.stage_enabled("vision") {
        let (stage, label) =
            if m.ocr == OcrModel::Off { ("vision", "detector") } else { ("vision-ocr", "detector + ocr") };
        let variant = match config.detector_variant() {
            Some(named) => named,
            None => bundle.component("object-detector", None)?.variant.as_str(),
        };
        let vision = find(stage, variant)?;
        let on_demand = config.on_demand("vision");
        stages.push(StagePlan {
            label: format!("{label} {variant}"),
            footprint: vision,
            on_demand,
            working_mib: vision.working_mib,
        });
    }
    if config.stage_enabled("decoder") {
        let decoder = find("decoder", m.decoder.as_str())?;
        // Past the longest context measured, the KV cache grows with the configured one.
        let scale = if decoder.tokens > 0 { (m.context as f64 / decoder.tokens as f64).max(1.0) } else { 1.0 };
        let on_demand = config.on_demand("decoder");
        stages.push(StagePlan {
            label: format!("decoder {} ({} tokens)", m.decoder, m.context),
            footprint: decoder,
            on_demand,
            working_mib: decoder.working_mib * scale,
        });
    }

    let mut resident =
        vec![Item { name: "process".into(), mib: runtime.resident_mib, basis: "measured at start-up".into() }];
    for s in stages.iter().filter(|s| !s.on_demand) {
        resident.push(Item {
            name: s.label.clone(),
            mib: s.footprint.resident_mib,
            basis: "measured after loading".into(),
        });
    }
    if config.stage_enabled("vision") {
        let cam = &config.camera;
        let frame_bytes = f64::from(cam.width) * f64::from(cam.height) * 3.0;
        resident.push(Item {
            name: "frame pool".into(),
            mib: f64::from(cam.pool_frames) * frame_bytes / MIB,
            basis: format!("{} RGB frames of {}x{}", cam.pool_frames, cam.width, cam.height),
        });
    }
    if config.stage_enabled("vision") && config.objects.track {
        // The detector keeps at most its `max_detections` a frame (the engine's default when the bundle says none).
        let max_detections = bundle
            .component("object-detector", config.detector_variant())
            .and_then(|c| c.param_usize("max_detections"))
            .unwrap_or(DetectionFilter::default().max_detections);
        let tracks = config.objects.tracker_settings();
        resident.push(Item {
            name: "object tracks".into(),
            mib: tracks.table_bytes(max_detections) as f64 / MIB,
            basis: format!("{} tracks, matched against up to {max_detections} detections a frame", tracks.max_tracks),
        });
    }
    if config.stage_enabled("speech") {
        let mic = &config.microphone;
        resident.push(Item {
            name: "audio ring".into(),
            // The ring holds 16 kHz samples; the device's own period buffers are a few kilobytes.
            mib: f64::from(mic.ring_s) * 16_000.0 * 4.0 / MIB,
            basis: format!("{} s at 16 kHz, f32", mic.ring_s),
        });
    }
    let mut bodies = format!(
        "{REQUEST_BODIES} request bodies of at most {} KiB, {} connections' buffers",
        config.http.max_body_kib, config.http.max_connections
    );
    let mut bodies_bytes = f64::from(REQUEST_BODIES) * f64::from(config.http.max_body_kib) * 1024.0
        + f64::from(config.http.max_connections) * CONNECTION_BUFFER_BYTES as f64;
    if config.stage_enabled("vision") {
        // An image sent with a question is decoded on the pipeline thread, one at a time.
        let pixels = f64::from(config.http.max_image_pixels);
        bodies_bytes += pixels * 3.0;
        bodies.push_str(&format!(", one image of {:.1} megapixels decoded", pixels / 1e6));
    }
    match config.question_audio() {
        Some(limit) => {
            let seconds = limit.max_seconds();
            resident.push(Item {
                name: "questions waiting".into(),
                mib: QUESTION_QUEUE as f64 * f64::from(seconds) * 16_000.0 * 4.0 / MIB,
                basis: format!("{QUESTION_QUEUE} spoken questions of {seconds} s at 16 kHz, f32"),
            });
            resident.push(Item {
                name: "requests".into(),
                mib: (bodies_bytes + limit.max_decoding_bytes() as f64) / MIB,
                basis: format!("{bodies}, one at a time decoding at most {seconds} s of audio"),
            });
            if config.wyoming.enabled {
                let sessions = config.wyoming.max_sessions;
                resident.push(Item {
                    name: "wyoming sessions".into(),
                    mib: f64::from(sessions) * wyoming_session_bytes(seconds) as f64 / MIB,
                    basis: format!(
                        "{sessions} sessions, each {seconds} s of audio at up to {} kHz (mono f32) and one message",
                        WYOMING_MAX_RATE / 1000
                    ),
                });
            }
        }
        None => resident.push(Item { name: "requests".into(), mib: bodies_bytes / MIB, basis: bodies }),
    }
    if config.mqtt.enabled {
        resident.push(mqtt_item(config));
    }

    // One stage runs or loads at a time: the peak adds the largest of one run, the transient of loading a
    // resident stage at start-up, or an on-demand stage loading and then running.
    let peak_extra = stages
        .iter()
        .flat_map(|s| {
            let f = s.footprint;
            if s.on_demand {
                let (mib, basis) = if f.load_peak_mib > f.resident_mib + s.working_mib {
                    (f.load_peak_mib, "loaded on demand (loading peak)".to_string())
                } else {
                    (f.resident_mib + s.working_mib, format!("loaded on demand and run on {}", f.input))
                };
                vec![Item { name: format!("{} on demand", s.label), mib, basis }]
            } else {
                vec![
                    Item {
                        name: format!("{} run", s.label),
                        mib: s.working_mib,
                        basis: format!("one run on {}", f.input),
                    },
                    Item {
                        name: format!("{} loading", s.label),
                        mib: (f.load_peak_mib - f.resident_mib).max(0.0),
                        basis: "parsing and optimizing at start-up".into(),
                    },
                ]
            }
        })
        .max_by(|a, b| a.mib.total_cmp(&b.mib))
        .unwrap_or(Item { name: "no stage".into(), mib: 0.0, basis: "every stage is off".into() });

    let total_mib = resident.iter().map(|i| i.mib).sum::<f64>() + peak_extra.mib;
    Ok(Plan {
        board: config.board.name.clone(),
        budget_mib: f64::from(config.budget.memory_mib),
        resident,
        peak_extra,
        total_mib,
        measured_on: runtime.arch.clone(),
    })
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "memory plan for {} (footprints measured on {}):", self.board, self.measured_on)?;
        for item in &self.resident {
            writeln!(f, "  {:<32} {:>7.1} MiB  {}", item.name, item.mib, item.basis)?;
        }
        let p = &self.peak_extra;
        writeln!(f, "  {:<32} {:>7.1} MiB  {} (the largest)", p.name, p.mib, p.basis)?;
        let verdict = if self.fits() { "fits" } else { "OVER BUDGET" };
        write!(
            f,
            "  {:<32} {:>7.1} MiB  of {:.0} MiB budget: {}",
            "total at peak", self.total_mib, self.budget_mib, verdict
        )
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use lookout_models::bundle::Manifest;

    use super::*;
    use crate::board::Probe;
    use crate::tracker::TrackerSettings;

    fn footprint(stage: &str, variant: &str, resident: f64, load_peak: f64, working: f64, window_s: u32) -> Footprint {
        Footprint {
            stage: stage.into(),
            variant: variant.into(),
            resident_mib: resident,
            load_peak_mib: load_peak,
            working_mib: working,
            input: "test".into(),
            tokens: if stage == "decoder" { 1024 } else { 0 },
            window_s,
            arch: "x86_64".into(),
        }
    }

    fn bundle() -> Bundle {
        let manifest = Manifest {
            format: 1,
            name: "test".into(),
            description: String::new(),
            components: Vec::new(),
            footprints: vec![
                footprint("runtime", "any", 10.0, 0.0, 0.0, 0),
                footprint("vad", "f32", 10.0, 12.0, 2.0, 0),
                footprint("speech", "int8", 160.0, 260.0, 40.0, 12),
                footprint("speech", "int8", 160.0, 260.0, 110.0, 30),
                footprint("vision", "centernet", 20.0, 30.0, 70.0, 0),
                footprint("vision-ocr", "centernet", 40.0, 50.0, 80.0, 0),
                footprint("decoder", "q4", 170.0, 380.0, 150.0, 0),
            ],
        };
        Bundle { dir: PathBuf::from("/nonexistent"), manifest }
    }

    fn config(overrides: &str) -> Config {
        Config::parse(&format!("board = \"rpi4\"\n{overrides}"), Path::new("t.toml"), None, &Probe::default())
            .unwrap()
            .config
    }

    #[test]
    fn resident_stages_add_up_and_the_largest_transient_is_added_once() {
        let plan = plan(&config(""), &bundle()).unwrap();
        let resident: f64 = plan.resident.iter().map(|i| i.mib).sum();
        // process, vad, speech, detector + ocr, decoder, then frame pool, object tracks, audio ring, spoken
        // questions waiting, and requests: their bodies, 64 connections' 32 KiB of buffers, the audio one of them
        // decodes (30 s of 48 kHz stereo as f32, and as much again while it becomes 16 kHz mono) and the image one
        // of them sends (12.6 megapixels of RGB).
        let models = 10.0 + 10.0 + 160.0 + 40.0 + 170.0;
        let tracks = TrackerSettings::default().table_bytes(100) as f64 / MIB;
        let ring = 30.0 * 16_000.0 * 4.0 / MIB;
        let requests = 4.0 * 2.0 + 2.0 + 2.0 * 30.0 * 96_000.0 * 4.0 / MIB + 36.0;
        let buffers = 4.0 * 1280.0 * 720.0 * 3.0 / MIB + tracks + ring + 4.0 * ring + requests;
        assert!((resident - (models + buffers)).abs() < 1e-9, "{resident}");
        // Loading the decoder at start-up (380 - 170) outweighs every run.
        assert_eq!(plan.peak_extra.name, "decoder q4 (1024 tokens) loading");
        assert!((plan.peak_extra.mib - 210.0).abs() < 1e-9);
        assert!((plan.total_mib - (resident + 210.0)).abs() < 1e-9);
        assert!(plan.fits());
    }

    #[test]
    fn without_speech_no_audio_is_planned_for() {
        let plan = plan(&config("[models]\nspeech = \"off\"\n"), &bundle()).unwrap();
        assert!(!plan.resident.iter().any(|i| i.name == "questions waiting" || i.name == "audio ring"));
        let requests = plan.resident.iter().find(|i| i.name == "requests").unwrap();
        assert!((requests.mib - (8.0 + 2.0 + 36.0)).abs() < 1e-9, "bodies, buffers and an image: {requests:?}");
    }

    #[test]
    fn a_short_query_window_uses_the_short_speech_measurement() {
        let short = plan(&config("[models]\ndecoder = \"off\"\nocr = \"off\"\n[microphone]\nring_s = 10\n"), &bundle())
            .unwrap();
        let long =
            plan(&config("[models]\ndecoder = \"off\"\nocr = \"off\"\nspeech_window = \"full\"\n"), &bundle()).unwrap();
        assert_eq!(short.peak_extra.name, "speech int8 loading");
        assert_eq!(long.peak_extra.name, "speech int8 run");
        assert!((long.peak_extra.mib - 110.0).abs() < 1e-9);
    }

    #[test]
    fn an_on_demand_stage_counts_only_while_loaded() {
        let plan = plan(&config("[models]\non_demand = [\"decoder\"]\n"), &bundle()).unwrap();
        assert!(!plan.resident.iter().any(|i| i.name.starts_with("decoder")));
        assert_eq!(plan.peak_extra.name, "decoder q4 (1024 tokens) on demand");
        assert!((plan.peak_extra.mib - 380.0).abs() < 1e-9);
    }

    #[test]
    fn a_longer_context_scales_the_decoders_working_memory() {
        let plan = plan(&config("[models]\ncontext = 4096\n[budget]\nmemory_mib = 1400\n"), &bundle()).unwrap();
        assert_eq!(plan.peak_extra.name, "decoder q4 (4096 tokens) run");
        assert!((plan.peak_extra.mib - 600.0).abs() < 1e-9);
    }

    #[test]
    fn over_budget_names_the_largest_items() {
        let plan = plan(&config("[budget]\nmemory_mib = 300\n"), &bundle()).unwrap();
        assert!(!plan.fits());
        let message = plan.over_budget_message();
        assert!(
            message.contains("allows 300 MiB") && message.contains("decoder q4 (1024 tokens) loading 210 MiB"),
            "{message}"
        );
    }

    #[test]
    fn a_missing_measurement_says_how_to_make_it() {
        let mut b = bundle();
        b.manifest.footprints.retain(|f| f.stage != "decoder");
        let err = plan(&config(""), &b).unwrap_err().to_string();
        assert!(err.contains("decoder (q4)") && err.contains("lookout models measure"), "{err}");
    }
}
