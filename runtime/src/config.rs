//! The daemon's configuration: a board's defaults (board-configs/) with the user's file laid over them, parsed
//! strictly (unknown keys are errors) and checked field by field; every error names its field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use lookout_models::audio::AudioLimit;
use lookout_models::vision::detections::LabelFilter;

use crate::board::{self, BoardSource};
use crate::scene_change::GateSettings;
use crate::tracker::TrackerSettings;

/// The whole configuration the daemon runs with.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub board: Board,
    pub budget: Budget,
    pub compute: Compute,
    pub camera: Camera,
    pub microphone: Microphone,
    pub gpio: Gpio,
    pub models: Models,
    #[serde(default)]
    pub http: Http,
    #[serde(default)]
    pub caption: Caption,
    #[serde(default)]
    pub objects: Objects,
    #[serde(default)]
    pub scene_change: SceneChange,
    #[serde(default)]
    pub wyoming: Wyoming,
    #[serde(default)]
    pub mqtt: Mqtt,
}

/// What the hardware is and how to recognize it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Board {
    /// Short name used with `--board` and `board = "..."`.
    pub name: String,
    pub description: String,
    /// Rust target triple of the binary this board runs.
    pub target: String,
    /// Installed RAM of the smallest model this profile is for, MiB.
    pub ram_mib: u32,
    #[serde(default)]
    pub detect: Detect,
}

/// How the board is recognized from `/proc/device-tree/model` and `/proc/cpuinfo`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Detect {
    /// Substrings of the device-tree model (or of cpuinfo's `Model` line).
    #[serde(default)]
    pub model: Vec<String>,
    /// Values of cpuinfo's `vendor_id` (machines without a device tree).
    #[serde(default)]
    pub vendor_id: Vec<String>,
}

/// Memory Lookout may use, and what the operating system keeps beside it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub memory_mib: u32,
    pub os_reserve_mib: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Compute {
    /// Threads for model inference.
    pub threads: u32,
    /// tract's aarch64 kernel family (`TRACT_CPU_AARCH64_KIND`: a53, a55, a72, a73, a75, neoverse, generic);
    /// unset lets tract read `/proc/cpuinfo`.
    #[serde(default)]
    pub tract_cpu_kind: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Camera {
    /// A V4L2 device (`/dev/video0`), or `dir:PATH` to play a directory of images as a camera.
    pub device: Source<Photos>,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Frames preallocated in the pool between capture and the encoders.
    pub pool_frames: u32,
    /// Seconds the daemon waits at start or reload for an absent or busy camera device (a USB camera still
    /// appearing at boot), retrying with backoff, before it gives up with exit 1.
    #[serde(default = "device_wait_s")]
    pub wait_s: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Microphone {
    /// An ALSA PCM name (`default`, `plughw:CARD=Device,DEV=0`), or `wav:PATH` to play a recording in real time.
    pub device: Source<Recording>,
    /// Capture rate in Hz; audio is resampled to 16 kHz.
    pub rate: u32,
    /// Seconds of audio the ring holds (the longest query heard).
    pub ring_s: u32,
    /// Seconds the daemon waits at start or reload for an absent or busy ALSA device, as `camera.wait_s`.
    #[serde(default = "device_wait_s")]
    pub wait_s: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Gpio {
    /// GPIO character device, or `none` for a board used without button and LED.
    pub chip: String,
    /// Line offset of the push-to-talk button.
    #[serde(default)]
    pub button: Option<u32>,
    /// Line offset of the status LED.
    #[serde(default)]
    pub led: Option<u32>,
    #[serde(default = "yes")]
    pub button_active_low: bool,
}

/// A value chosen from fixed names, parsed once: it reads and writes as its name (`int8`, `off`), and an unknown
/// name is an error naming the field and the names it takes.
macro_rules! named_choice {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named_choice!(
    /// Whisper's variant in the bundle, or no speech recognition.
    SpeechModel { Int8 = "int8", F32 = "f32", Off = "off" }
);
named_choice!(
    /// Whisper's encoder window: the audio plus 1 s (at least 5 s), or always 30 s.
    SpeechWindow { Fit = "fit", Full = "full" }
);
named_choice!(
    /// The object detector's variant in the bundle, or no vision.
    DetectorModel {
        Centernet = "centernet",
        Nanodet = "nanodet",
        /// The name from when the bundle had one detector: the bundle's default.
        BundleDefault = "f32",
        Off = "off",
    }
);
named_choice!(
    /// Text reading (PP-OCRv4), on or off.
    OcrModel { F32 = "f32", Off = "off" }
);
named_choice!(
    /// The language decoder's variant in the bundle, or none (captions and answers then come from the scene facts).
    DecoderModel { Q4 = "q4", F32 = "f32", Off = "off" }
);

/// Which models run, in which variant, and which are loaded only while needed.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Models {
    /// Models directory; unset: `LOOKOUT_MODELS`, then the per-user and system directories.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    #[serde(default = "default_bundle")]
    pub bundle: String,
    pub speech: SpeechModel,
    pub speech_window: SpeechWindow,
    pub detector: DetectorModel,
    pub ocr: OcrModel,
    pub decoder: DecoderModel,
    /// Tokens the decoder's KV cache holds.
    pub context: u32,
    /// Seconds reading one frame's text may take; lines past it are left unread, and the answer says so.
    #[serde(default = "default_text_budget_s")]
    pub text_budget_s: f32,
    /// Stages loaded when needed and released afterwards instead of staying resident.
    #[serde(default)]
    pub on_demand: Vec<String>,
    /// What this profile gives up, and why.
    #[serde(default)]
    pub leaves_out: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Address the API listens on; anything but loopback needs `token`.
    pub listen: String,
    /// Bearer token required on every request (except `/healthz`) when set; never written out (`check-config
    /// --json` shows only that it is set).
    #[serde(default, serialize_with = "redacted")]
    pub token: Option<String>,
    pub max_body_kib: u32,
    /// Time a client has to send a request's headers; an idle keep-alive connection is closed after it too.
    pub header_timeout_ms: u32,
    /// Time a client has to send a request's body once its headers arrived (408 after it).
    pub timeout_ms: u32,
    /// Longest wait for an answer before the request fails with 504.
    pub answer_timeout_s: u32,
    /// Connections open at once, from all clients; more are answered 503 and closed.
    pub max_connections: u32,
    /// Connections open at once from one client address.
    pub max_connections_per_client: u32,
    /// Largest image a chat request may send (width x height); the memory plan counts one decoded.
    pub max_image_pixels: u32,
}

/// The Wyoming speech-to-text server, for Home Assistant's voice pipeline (`[wyoming]`). The protocol has no
/// authentication: anyone who reaches the address can have speech transcribed.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Wyoming {
    pub enabled: bool,
    /// Address it listens on (Home Assistant on another machine needs one it can reach, such as 0.0.0.0:10300).
    pub listen: String,
    /// Clients served at once; more get an error event and are closed.
    pub max_sessions: u32,
    /// Time a client has to send its next message (a client that stops sending is closed after it).
    pub idle_timeout_ms: u32,
}

impl Default for Wyoming {
    fn default() -> Wyoming {
        Wyoming { enabled: false, listen: "127.0.0.1:10300".into(), max_sessions: 2, idle_timeout_ms: 10_000 }
    }
}

/// Home Assistant over MQTT (`[mqtt]`): entities announced by discovery, the scene's states, a snapshot, and a
/// question topic answered like `/v1/ask`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mqtt {
    pub enabled: bool,
    /// The broker.
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    /// A file whose first line is the password (relative to the configuration file); it must not be readable by
    /// others. The password itself never goes in the configuration.
    pub password_file: Option<PathBuf>,
    /// The client id at the broker; empty: `lookout-<node_id>`.
    pub client_id: String,
    /// Where Home Assistant looks for discovery configs.
    pub discovery_prefix: String,
    /// Under which the states, the snapshot, availability and the question topics go.
    pub base_topic: String,
    /// This device's id in Home Assistant (letters, digits, `_` and `-`).
    pub node_id: String,
    /// Object labels that get a count sensor each.
    pub labels: Vec<String>,
    /// Seconds without a person in view before occupancy turns off (so that it does not flap).
    pub occupancy_off_delay_s: u32,
    /// Publish a JPEG of the frame behind the newest caption, at most every `snapshot_interval_s`.
    pub snapshot: bool,
    pub snapshot_interval_s: u32,
    /// Largest snapshot; a frame whose JPEG is larger is sent smaller.
    pub snapshot_max_kib: u32,
    pub keep_alive_s: u32,
    /// Messages waiting for the broker at most; what does not fit is dropped and counted.
    pub outbox: u32,
}

impl Default for Mqtt {
    fn default() -> Mqtt {
        Mqtt {
            enabled: false,
            host: "127.0.0.1".into(),
            port: 1883,
            username: None,
            password_file: None,
            client_id: String::new(),
            discovery_prefix: "homeassistant".into(),
            base_topic: "lookout".into(),
            node_id: "lookout".into(),
            labels: ["person", "car", "dog", "cat"].map(String::from).to_vec(),
            occupancy_off_delay_s: 30,
            snapshot: true,
            snapshot_interval_s: 10,
            snapshot_max_kib: 512,
            keep_alive_s: 30,
            outbox: 64,
        }
    }
}

impl Mqtt {
    /// The password: the first line of `password_file` (relative to `config_path`'s folder), which must not be
    /// readable by others; none without a password file or when MQTT is off.
    pub fn password(&self, config_path: &Path) -> Result<Option<String>, ConfigError> {
        use std::os::unix::fs::PermissionsExt as _;
        let Some(file) = self.password_file.as_ref().filter(|_| self.enabled) else { return Ok(None) };
        let path = config_path.parent().unwrap_or(Path::new(".")).join(file);
        let refused = |reason: String| ConfigError::Field {
            path: config_path.to_path_buf(),
            field: "mqtt.password_file".into(),
            reason: format!("{}: {reason}", path.display()),
        };
        let meta = std::fs::metadata(&path).map_err(|e| refused(e.to_string()))?;
        if meta.permissions().mode() & 0o004 != 0 {
            return Err(refused("readable by everyone; `chmod o-r` it (0640 root:lookout, or 0600)".into()));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| refused(e.to_string()))?;
        match text.lines().next().map(str::trim_end) {
            Some(line) if !line.is_empty() => Ok(Some(line.to_string())),
            _ => Err(refused("empty".into())),
        }
    }
}

/// 4096x3072: a 12-megapixel photo.
const DEFAULT_IMAGE_PIXELS: u32 = 4096 * 3072;

impl Default for Http {
    fn default() -> Http {
        Http {
            listen: "127.0.0.1:8470".into(),
            token: None,
            max_body_kib: 2048,
            header_timeout_ms: 5_000,
            timeout_ms: 10_000,
            answer_timeout_s: 120,
            max_connections: 64,
            max_connections_per_client: 16,
            max_image_pixels: DEFAULT_IMAGE_PIXELS,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Caption {
    /// Seconds between periodic captions (0: only when the scene changes).
    pub interval_s: u32,
    /// Caption as soon as the detected objects change.
    pub on_change: bool,
}

impl Default for Caption {
    fn default() -> Caption {
        Caption { interval_s: 60, on_change: true }
    }
}

/// How the daemon confirms detected objects over frames, and what each label's detections need (`[objects]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Objects {
    /// Follow objects over the analysed frames and report only confirmed ones (the CLI on a photo never does).
    pub track: bool,
    /// An object is reported once seen in `confirm_frames` of the last `window_frames` analysed frames.
    pub confirm_frames: u32,
    pub window_frames: u32,
    /// Missed frames after which a reported object that moved is forgotten...
    pub forget_after_frames: u32,
    /// ...and one that stayed where it was confirmed (a parked car).
    pub remember_stationary_frames: u32,
    /// Most objects followed at once.
    pub max_tracks: u32,
    /// Look at a large frame's tiles too, for far people and vehicles (one more detector run per tile: 6 for 1280x720);
    /// on unless the board's profile turns it off.
    pub tiles: bool,
    /// Per COCO label (`[objects.filters.person]`, `[objects.filters."sports ball"]`): Lookout's defaults replaced
    /// field by field.
    pub filters: BTreeMap<String, LabelFilterConfig>,
}

impl Default for Objects {
    fn default() -> Objects {
        let t = TrackerSettings::default();
        Objects {
            track: true,
            confirm_frames: t.confirm_frames,
            window_frames: t.window_frames,
            forget_after_frames: t.forget_after_frames,
            remember_stationary_frames: t.remember_stationary_frames,
            max_tracks: t.max_tracks as u32,
            tiles: true,
            filters: BTreeMap::new(),
        }
    }
}

impl Objects {
    pub fn tracker_settings(&self) -> TrackerSettings {
        TrackerSettings {
            confirm_frames: self.confirm_frames,
            window_frames: self.window_frames,
            forget_after_frames: self.forget_after_frames,
            remember_stationary_frames: self.remember_stationary_frames,
            max_tracks: self.max_tracks as usize,
            ..TrackerSettings::default()
        }
    }
}

/// Which camera frames the encoders run on (`[scene_change]`): a frame too like the last analysed one keeps its
/// scene, which `/v1/scene` reports as checked but not re-analysed.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SceneChange {
    /// Skip frames that have not changed; off: every frame is analysed.
    pub skip_unchanged: bool,
    /// A block of the frame's 32x24 grid changed when its mean luma (0-255) moved by more than this, beyond the
    /// whole frame's change.
    pub block_luma: f32,
    /// The frame changed when at least this many blocks did...
    pub changed_blocks: u32,
    /// ...or when its mean luma moved by more than this since the last analysed frame.
    pub mean_luma: f32,
    /// A frame is analysed when the last analysis is this old, changed or not.
    pub max_interval_s: u32,
}

impl Default for SceneChange {
    fn default() -> SceneChange {
        let g = GateSettings::default();
        SceneChange {
            skip_unchanged: g.enabled,
            block_luma: g.block_luma,
            changed_blocks: g.changed_blocks as u32,
            mean_luma: g.mean_luma,
            max_interval_s: g.max_interval.as_secs() as u32,
        }
    }
}

impl SceneChange {
    pub fn gate_settings(&self) -> GateSettings {
        GateSettings {
            enabled: self.skip_unchanged,
            block_luma: self.block_luma,
            changed_blocks: self.changed_blocks as usize,
            mean_luma: self.mean_luma,
            max_interval: Duration::from_secs(u64::from(self.max_interval_s)),
        }
    }
}

/// One label's filter as configured; a field left out keeps Lookout's default for the label.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LabelFilterConfig {
    /// Least score of one frame's detection.
    pub min_score: Option<f32>,
    /// Least score of a detection the daemon's tracker follows and reports only once it has moved.
    pub moving_min_score: Option<f32>,
    /// Least median score over a followed object's frames before it is reported.
    pub threshold: Option<f32>,
    /// Box area bounds, as fractions of the frame's area.
    pub min_area: Option<f32>,
    pub max_area: Option<f32>,
}

impl LabelFilterConfig {
    /// `default` with this configuration's fields laid over it.
    pub fn over(&self, default: LabelFilter) -> LabelFilter {
        LabelFilter {
            min_score: self.min_score.unwrap_or(default.min_score),
            moving_min_score: self.moving_min_score.unwrap_or(default.moving_min_score),
            threshold: self.threshold.unwrap_or(default.threshold),
            min_area: self.min_area.unwrap_or(default.min_area),
            max_area: self.max_area.unwrap_or(default.max_area),
        }
    }
}

fn device_wait_s() -> u32 {
    60
}

fn yes() -> bool {
    true
}

/// Seconds `models.text_budget_s` and `--text-budget` may give reading one image's text.
pub const TEXT_BUDGET_LIMITS_S: std::ops::RangeInclusive<f32> = 0.1..=600.0;

fn default_text_budget_s() -> f32 {
    lookout_models::vision::TEXT_READ_BUDGET.as_secs_f32()
}

fn default_bundle() -> String {
    lookout_models::bundle::DEFAULT_BUNDLE.to_string()
}

/// Every stage name `on_demand` may list.
pub const STAGES: [&str; 3] = ["speech", "vision", "decoder"];
/// Targets the project builds for.
pub const TARGETS: [&str; 3] =
    ["x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu", "armv7-unknown-linux-gnueabihf"];

/// The Debian architecture and the cross build of a target, for telling the user which build to install.
fn build_of(target: &str) -> (&'static str, &'static str) {
    match target {
        "aarch64-unknown-linux-gnu" => ("arm64", "cross/build.sh aarch64"),
        "armv7-unknown-linux-gnueabihf" => ("armhf", "cross/build.sh armv7"),
        _ => ("amd64", "cargo build --release"),
    }
}

/// A configuration that cannot be used; `field` is the dotted path of the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("{path}: {field}: {reason}")]
    Field { path: PathBuf, field: String, reason: String },
    #[error("{path}: {reason}")]
    Board { path: PathBuf, reason: String },
}

/// A checked configuration and where its board came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub board_source: BoardSource,
}

impl Config {
    /// Reads and checks a configuration file. `board_override` (`--board`) replaces the file's `board` key.
    pub fn load(path: &Path, board_override: Option<&str>) -> Result<Loaded, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Unreadable { path: path.to_path_buf(), reason: e.to_string() })?;
        Config::parse(&text, path, board_override, &board::Probe::this_machine())
    }

    /// Parses configuration text; `probe` answers `board = "auto"`.
    pub fn parse(
        text: &str,
        path: &Path,
        board_override: Option<&str>,
        probe: &board::Probe,
    ) -> Result<Loaded, ConfigError> {
        let field_error = |field: &str, reason: String| ConfigError::Field {
            path: path.to_path_buf(),
            field: field.to_string(),
            reason,
        };
        let mut user: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Unreadable {
            path: path.to_path_buf(),
            reason: format!("not valid TOML: {}", e.message()),
        })?;
        let reference = match (board_override, user.get("board")) {
            (Some(name), _) => Some(name.to_string()),
            (None, Some(toml::Value::String(name))) => Some(name.clone()),
            (None, Some(toml::Value::Table(_))) => None,
            (None, Some(_)) => {
                return Err(field_error("board", "must be a board name, \"auto\", a path or a [board] table".into()))
            }
            (None, None) => {
                return Err(field_error("board", "missing: name a board (rpi5, ...), \"auto\" or a board file".into()))
            }
        };
        let (merged, board_source) = match reference {
            None => (user, BoardSource::File),
            Some(reference) => {
                user.remove("board");
                let (base_text, source) = board::resolve(&reference, path, probe)
                    .map_err(|reason| ConfigError::Board { path: path.to_path_buf(), reason })?;
                let mut base: toml::Table = base_text.parse().map_err(|e: toml::de::Error| ConfigError::Board {
                    path: path.to_path_buf(),
                    reason: format!("board `{reference}` is not valid TOML: {}", e.message()),
                })?;
                merge(&mut base, user);
                (base, source)
            }
        };
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(merged)).map_err(|e| {
            let field = e.path().to_string();
            field_error(if field == "." { "(top level)" } else { &field }, e.into_inner().message().to_string())
        })?;
        config.check().map_err(|(field, reason)| field_error(field, reason))?;
        Ok(Loaded { config, board_source })
    }

    /// Refuses a board whose profile is for another build than this binary: a profile describes one install (a
    /// 64-bit or a 32-bit OS on the board, its threads, devices and model variants), and running it on the other
    /// means the wrong package or the wrong profile was picked.
    pub fn check_build(&self, path: &Path) -> Result<(), ConfigError> {
        let target = self.board.target.as_str();
        if target == board::BUILD_TARGET {
            return Ok(());
        }
        let (arch, build) = build_of(target);
        Err(ConfigError::Board {
            path: path.to_path_buf(),
            reason: format!(
                "board {} is for {target} builds, and this lookout is built for {}: install the {arch} \
                 package (lookout_*_{arch}.deb) or build it with {build}; a profile can be checked for another \
                 build with `check-config --any-target`",
                self.board.name,
                board::BUILD_TARGET
            ),
        })
    }

    /// Checks the values serde cannot: ranges, names, addresses and how the pieces fit together.
    fn check(&self) -> Result<(), (&'static str, String)> {
        let b = &self.board;
        if !TARGETS.contains(&b.target.as_str()) {
            return Err(("board.target", format!("`{}` is not one of {}", b.target, TARGETS.join(", "))));
        }
        let budget = &self.budget;
        if budget.memory_mib < 64 {
            return Err(("budget.memory_mib", format!("{} MiB is too small to hold any model", budget.memory_mib)));
        }
        if u64::from(budget.memory_mib) + u64::from(budget.os_reserve_mib) > u64::from(b.ram_mib) {
            return Err((
                "budget.memory_mib",
                format!(
                    "{} MiB plus the {} MiB kept for the OS exceeds the board's {} MiB of RAM",
                    budget.memory_mib, budget.os_reserve_mib, b.ram_mib
                ),
            ));
        }
        within("compute.threads", self.compute.threads, 1..=64)?;
        if let Some(kind) = &self.compute.tract_cpu_kind {
            const KINDS: [&str; 7] = ["a53", "a55", "a72", "a73", "a75", "neoverse", "generic"];
            if !KINDS.contains(&kind.as_str()) {
                return Err(("compute.tract_cpu_kind", format!("`{kind}` is not one of {}", KINDS.join(", "))));
            }
        }
        let cam = &self.camera;
        for (field, side) in [("camera.width", cam.width), ("camera.height", cam.height)] {
            within(field, side, 16..=4096)?;
            if side % 2 != 0 {
                return Err((field, format!("{side} must be even")));
            }
        }
        within("camera.fps", cam.fps, 1..=60)?;
        within("camera.pool_frames", cam.pool_frames, 2..=64)?;
        within("camera.wait_s", cam.wait_s, 0..=3600)?;
        let mic = &self.microphone;
        within("microphone.rate", mic.rate, 8_000..=192_000)?;
        // Whisper hears at most 30 s at once.
        within("microphone.ring_s", mic.ring_s, 1..=30)?;
        within("microphone.wait_s", mic.wait_s, 0..=3600)?;
        let gpio = &self.gpio;
        if gpio.chip != "none" && !gpio.chip.starts_with("/dev/") {
            return Err(("gpio.chip", format!("`{}` must be a /dev path or `none`", gpio.chip)));
        }
        if gpio.button.is_some() && gpio.button == gpio.led {
            return Err(("gpio.led", "the LED and the button cannot share a line".into()));
        }
        self.check_models()?;
        self.check_http()?;
        self.check_wyoming()?;
        self.check_mqtt()?;
        if self.caption.interval_s > 86_400 {
            return Err(("caption.interval_s", format!("{} s is more than a day", self.caption.interval_s)));
        }
        self.check_objects()?;
        let g = &self.scene_change;
        for (field, value) in [("scene_change.block_luma", g.block_luma), ("scene_change.mean_luma", g.mean_luma)] {
            if !(0.0..=255.0).contains(&value) {
                return Err((field, format!("{value} is outside 0..=255")));
            }
        }
        within("scene_change.changed_blocks", g.changed_blocks, 1..=768)?;
        within("scene_change.max_interval_s", g.max_interval_s, 1..=3600)
    }

    fn check_objects(&self) -> Result<(), (&'static str, String)> {
        let o = &self.objects;
        within("objects.window_frames", o.window_frames, 1..=32)?;
        within("objects.confirm_frames", o.confirm_frames, 1..=o.window_frames)?;
        within("objects.forget_after_frames", o.forget_after_frames, 0..=3600)?;
        within("objects.remember_stationary_frames", o.remember_stationary_frames, 0..=86_400)?;
        within("objects.max_tracks", o.max_tracks, 1..=1024)?;
        for (label, filter) in &o.filters {
            let fields = [
                ("min_score", filter.min_score),
                ("moving_min_score", filter.moving_min_score),
                ("threshold", filter.threshold),
                ("min_area", filter.min_area),
                ("max_area", filter.max_area),
            ];
            for (name, value) in fields {
                if let Some(v) = value.filter(|v| !(0.0..=1.0).contains(v)) {
                    return Err(("objects.filters", format!("{label}.{name}: {v} is outside 0..=1")));
                }
            }
            if let (Some(min), Some(max)) = (filter.min_area, filter.max_area) {
                if min > max {
                    return Err(("objects.filters", format!("{label}: min_area {min} is above max_area {max}")));
                }
            }
        }
        Ok(())
    }

    fn check_models(&self) -> Result<(), (&'static str, String)> {
        let m = &self.models;
        if m.ocr != OcrModel::Off && m.detector == DetectorModel::Off {
            return Err(("models.ocr", "reading text needs the detector's stage (`models.detector`)".into()));
        }
        within("models.context", m.context, 64..=8192)?;
        if !TEXT_BUDGET_LIMITS_S.contains(&m.text_budget_s) {
            let (low, high) = TEXT_BUDGET_LIMITS_S.into_inner();
            return Err(("models.text_budget_s", format!("{} s is outside {low}..={high}", m.text_budget_s)));
        }
        for stage in &m.on_demand {
            if !STAGES.contains(&stage.as_str()) {
                return Err(("models.on_demand", format!("`{stage}` is not one of {}", STAGES.join(", "))));
            }
            if !self.stage_enabled(stage) {
                return Err(("models.on_demand", format!("`{stage}` is off, so it cannot be loaded on demand")));
            }
        }
        Ok(())
    }

    fn check_http(&self) -> Result<(), (&'static str, String)> {
        let http = &self.http;
        let addr: SocketAddr = http.listen.parse().map_err(|_| {
            ("http.listen", format!("`{}` is not an address with a port (127.0.0.1:8470)", http.listen))
        })?;
        match &http.token {
            Some(token) if token.len() < 16 => return Err(("http.token", "must be at least 16 characters".into())),
            None if !addr.ip().is_loopback() => {
                return Err(("http.token", format!("required when listening on {} (not loopback)", addr.ip())));
            }
            _ => {}
        }
        within("http.max_body_kib", http.max_body_kib, 1..=65_536)?;
        within("http.header_timeout_ms", http.header_timeout_ms, 100..=60_000)?;
        within("http.timeout_ms", http.timeout_ms, 100..=600_000)?;
        within("http.max_connections", http.max_connections, 1..=1024)?;
        within("http.max_connections_per_client", http.max_connections_per_client, 1..=http.max_connections)?;
        within("http.max_image_pixels", http.max_image_pixels, 64 * 64..=8192 * 8192)?;
        within("http.answer_timeout_s", http.answer_timeout_s, 1..=3600)?;
        Ok(())
    }

    fn check_wyoming(&self) -> Result<(), (&'static str, String)> {
        let wyoming = &self.wyoming;
        if !wyoming.enabled {
            return Ok(());
        }
        wyoming.listen.parse::<SocketAddr>().map_err(|_| {
            ("wyoming.listen", format!("`{}` is not an address with a port (127.0.0.1:10300)", wyoming.listen))
        })?;
        if !self.stage_enabled("speech") {
            return Err(("wyoming.enabled", "the Wyoming server transcribes speech, and models.speech is off".into()));
        }
        within("wyoming.max_sessions", wyoming.max_sessions, 1..=16)?;
        within("wyoming.idle_timeout_ms", wyoming.idle_timeout_ms, 100..=600_000)?;
        Ok(())
    }

    fn check_mqtt(&self) -> Result<(), (&'static str, String)> {
        let mqtt = &self.mqtt;
        if !mqtt.enabled {
            return Ok(());
        }
        if mqtt.host.trim().is_empty() {
            return Err(("mqtt.host", "is empty".into()));
        }
        if mqtt.port == 0 {
            return Err(("mqtt.port", "must not be 0".into()));
        }
        let id_chars =
            |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !id_chars(&mqtt.node_id) {
            return Err(("mqtt.node_id", format!("`{}` must be letters, digits, `_` and `-`", mqtt.node_id)));
        }
        for (field, topic) in [("mqtt.discovery_prefix", &mqtt.discovery_prefix), ("mqtt.base_topic", &mqtt.base_topic)]
        {
            if topic.is_empty() || topic.starts_with('/') || topic.ends_with('/') || topic.contains(['+', '#', '\0']) {
                return Err((
                    field,
                    format!("`{topic}` is not a topic prefix (no wildcards, no leading or trailing /)"),
                ));
            }
        }
        if mqtt.client_id.len() > 64 {
            return Err(("mqtt.client_id", "is longer than 64 characters".into()));
        }
        if mqtt.password_file.is_some() && mqtt.username.is_none() {
            return Err(("mqtt.password_file", "is set without mqtt.username".into()));
        }
        if mqtt.labels.len() > 80 || mqtt.labels.iter().any(|l| l.trim().is_empty() || l.len() > 64) {
            return Err(("mqtt.labels", "at most 80 labels, each a COCO label name".into()));
        }
        within("mqtt.occupancy_off_delay_s", mqtt.occupancy_off_delay_s, 0..=3600)?;
        within("mqtt.snapshot_interval_s", mqtt.snapshot_interval_s, 1..=86_400)?;
        within("mqtt.snapshot_max_kib", mqtt.snapshot_max_kib, 16..=4096)?;
        within("mqtt.keep_alive_s", mqtt.keep_alive_s, 5..=3600)?;
        within("mqtt.outbox", mqtt.outbox, 4..=1024)?;
        Ok(())
    }

    /// Whether a stage (`speech`, `vision`, `decoder`) runs at all in this configuration.
    pub fn stage_enabled(&self, stage: &str) -> bool {
        let m = &self.models;
        match stage {
            "speech" => m.speech != SpeechModel::Off,
            "vision" => m.detector != DetectorModel::Off,
            "decoder" => m.decoder != DecoderModel::Off,
            _ => false,
        }
    }

    /// The bundle variant of the object detector this configuration names; `None` for the bundle's default.
    pub fn detector_variant(&self) -> Option<&str> {
        match self.models.detector {
            DetectorModel::Centernet | DetectorModel::Nanodet => Some(self.models.detector.as_str()),
            DetectorModel::BundleDefault | DetectorModel::Off => None,
        }
    }

    pub fn on_demand(&self, stage: &str) -> bool {
        self.models.on_demand.iter().any(|s| s == stage)
    }

    /// How long a spoken question may be: as long as the microphone's ring holds, whether heard or posted; none
    /// are taken when speech recognition is off.
    pub fn question_audio(&self) -> Option<AudioLimit> {
        self.stage_enabled("speech").then(|| AudioLimit::seconds(self.microphone.ring_s))
    }
}

fn redacted<S: serde::Serializer>(secret: &Option<String>, serializer: S) -> Result<S::Ok, S::Error> {
    match secret {
        Some(_) => serializer.serialize_str("(set)"),
        None => serializer.serialize_none(),
    }
}

fn within(field: &'static str, value: u32, range: std::ops::RangeInclusive<u32>) -> Result<(), (&'static str, String)> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err((field, format!("{value} is outside {}..={}", range.start(), range.end())))
    }
}

/// A device is a `/dev` path (camera), an ALSA name (microphone), or a file source with `prefix`.
/// The kind of file a capture source can play instead of its device, named by the prefix of its value.
pub trait FileSource {
    const PREFIX: &'static str;
}

/// A directory of photos played as a camera (`dir:PATH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Photos;

impl FileSource for Photos {
    const PREFIX: &'static str = "dir:";
}

/// A recording played as a microphone (`wav:PATH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recording;

impl FileSource for Recording {
    const PREFIX: &'static str = "wav:";
}

/// Where a capture stage reads from, parsed once: the device itself (a `/dev` path, an ALSA name), or a file
/// source of kind `K` with its path as written (relative to the configuration file). It reads and writes as the
/// configured string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source<K> {
    Device(String),
    File(String, std::marker::PhantomData<K>),
}

impl<K: FileSource> Source<K> {
    /// The prefix of this source's file form (`dir:`, `wav:`).
    pub fn file_prefix(&self) -> &'static str {
        K::PREFIX
    }
}

impl<K: FileSource> std::str::FromStr for Source<K> {
    type Err = String;

    fn from_str(text: &str) -> Result<Source<K>, String> {
        match text.strip_prefix(K::PREFIX) {
            Some("") => Err(format!("`{text}` names no path")),
            Some(path) => Ok(Source::File(path.to_string(), std::marker::PhantomData)),
            None if text.is_empty() || text.chars().any(char::is_whitespace) => {
                Err(format!("`{text}` is not a device name"))
            }
            None => Ok(Source::Device(text.to_string())),
        }
    }
}

impl<K: FileSource> std::fmt::Display for Source<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Device(device) => f.write_str(device),
            Source::File(path, _) => write!(f, "{}{path}", self.file_prefix()),
        }
    }
}

impl<'de, K: FileSource> Deserialize<'de> for Source<K> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Source<K>, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

impl<K: FileSource> Serialize for Source<K> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Lays `over` onto `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe() -> board::Probe {
        board::Probe { device_tree_model: Some("Raspberry Pi 4 Model B Rev 1.4".into()), cpuinfo: String::new() }
    }

    fn parse(text: &str) -> Result<Loaded, ConfigError> {
        Config::parse(text, Path::new("test.toml"), None, &probe())
    }

    fn error_of(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn every_built_in_board_is_a_valid_config_on_its_own() {
        for (name, text) in board::BUILT_IN {
            let loaded = Config::parse(text, Path::new(name), None, &probe()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(&loaded.config.board.name, name);
        }
    }

    #[test]
    fn a_user_file_overrides_the_named_board_key_by_key() {
        let loaded = parse("board = \"rpi5\"\n[camera]\nfps = 2\n[models]\ndecoder = \"off\"\n").unwrap();
        assert_eq!(loaded.config.board.name, "rpi5");
        assert_eq!(loaded.config.camera.fps, 2);
        assert_eq!(loaded.config.camera.device, Source::Device("/dev/video0".into()));
        assert_eq!(loaded.config.models.decoder, DecoderModel::Off);
        assert!(matches!(loaded.board_source, BoardSource::Named(ref n) if n == "rpi5"));
    }

    #[test]
    fn the_detector_is_named_by_its_bundle_variant_and_the_old_f32_means_the_default() {
        let variant = |name: &str| {
            let text = format!("board = \"rpi4\"\n[models]\ndetector = \"{name}\"\n");
            parse(&text).map(|l| l.config.detector_variant().map(str::to_string))
        };
        assert_eq!(variant("nanodet").unwrap().as_deref(), Some("nanodet"));
        assert_eq!(variant("centernet").unwrap().as_deref(), Some("centernet"));
        assert_eq!(variant("f32").unwrap(), None);
        let refused = variant("yolo").unwrap_err().to_string();
        assert!(refused.contains("models.detector") && refused.contains("nanodet"), "{refused}");
    }

    #[test]
    fn capture_sources_are_parsed_once_and_written_back_as_configured() {
        let loaded =
            parse("board = \"rpi4\"\n[camera]\ndevice = \"dir:photos\"\n[microphone]\ndevice = \"wav:q.wav\"\n")
                .unwrap()
                .config;
        assert_eq!(loaded.camera.device, Source::File("photos".into(), std::marker::PhantomData));
        assert_eq!(loaded.microphone.device, Source::File("q.wav".into(), std::marker::PhantomData));
        let written = toml::to_string(&loaded).unwrap();
        assert!(written.contains("device = \"dir:photos\"") && written.contains("device = \"wav:q.wav\""), "{written}");
        // Each source knows only its own file prefix: a camera named `wav:...` is a device name.
        let odd = parse("board = \"rpi4\"\n[camera]\ndevice = \"wav:x\"\n").unwrap().config;
        assert_eq!(odd.camera.device, Source::Device("wav:x".into()));
        assert!(
            error_of("board = \"rpi4\"\n[camera]\ndevice = \"dir:\"\n").contains("camera.device: `dir:` names no path")
        );
        let spaced = error_of("board = \"rpi4\"\n[microphone]\ndevice = \"hw 0\"\n");
        assert!(spaced.contains("microphone.device: `hw 0` is not a device name"), "{spaced}");
    }

    #[test]
    fn auto_detects_the_board_from_the_probe() {
        let loaded = parse("board = \"auto\"\n").unwrap();
        assert_eq!(loaded.config.board.name, "rpi4");
        assert!(matches!(loaded.board_source, BoardSource::Detected(_)));
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_path() {
        assert!(
            error_of("board = \"rpi5\"\n[camera]\nfsp = 2\n").contains("test.toml: camera.fsp: unknown field `fsp`")
        );
        assert!(error_of("board = \"rpi5\"\nverbose = true\n").contains("test.toml: verbose: unknown field `verbose`"));
    }

    #[test]
    fn bad_values_name_their_field() {
        assert!(error_of("board = \"rpi5\"\n[camera]\nfps = \"fast\"\n").contains("camera.fps: invalid type"));
        assert!(error_of("board = \"rpi5\"\n[camera]\nfps = 0\n").contains("camera.fps: 0 is outside"));
        let speech = error_of("board = \"rpi5\"\n[models]\nspeech = \"int4\"\n");
        assert!(
            speech.contains("models.speech: unknown variant `int4`, expected one of `int8`, `f32`, `off`"),
            "{speech}"
        );
        assert!(error_of("board = \"rpi5\"\n[models]\non_demand = [\"ears\"]\n").contains("models.on_demand"));
        for budget in ["0", "nan", "-1", "601"] {
            let error = error_of(&format!("board = \"rpi5\"\n[models]\ntext_budget_s = {budget}\n"));
            assert!(error.contains("models.text_budget_s"), "{budget}: {error}");
        }
        assert_eq!(parse("board = \"rpi5\"\n").unwrap().config.models.text_budget_s, 4.0);
        assert_eq!(
            parse("board = \"rpi5\"\n[models]\ntext_budget_s = 12.5\n").unwrap().config.models.text_budget_s,
            12.5
        );
        assert!(error_of("board = \"rpi0-2w\"\n[budget]\nmemory_mib = 500\n").contains("budget.memory_mib"));
        assert!(error_of("board = \"rpi0-2w\"\n[budget]\nos_reserve_mib = 4294967295\n").contains("budget.memory_mib"));
        assert!(error_of("board = \"rpi5\"\n[microphone]\nrate = 4000\n").contains("microphone.rate"));
        assert!(error_of("board = \"rpi5\"\n[gpio]\nled = 17\nbutton = 17\n").contains("gpio.led"));
        assert!(error_of("board = 5\n").contains("test.toml: board: must be"));
        assert!(error_of("[camera]\nfps = 2\n").contains("board: missing"));
        assert!(error_of("board = \"rpi9\"\n").contains("rpi9"));
        assert!(error_of("board = \"rpi5\"\n[camera\n").contains("not valid TOML"));
    }

    #[test]
    fn the_mqtt_password_comes_from_a_file_only_its_owner_and_group_read() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("lookout-mqtt-password-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config_path = dir.join("lookout.toml");
        let mqtt = |file: &str| Mqtt {
            enabled: true,
            username: Some("lookout".into()),
            password_file: Some(file.into()),
            ..Mqtt::default()
        };
        std::fs::write(dir.join("secret"), "s3cret\nignored\n").unwrap();
        std::fs::set_permissions(dir.join("secret"), std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(mqtt("secret").password(&config_path).unwrap().as_deref(), Some("s3cret"), "relative to the file");
        std::fs::set_permissions(dir.join("secret"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let open = mqtt("secret").password(&config_path).unwrap_err().to_string();
        assert!(open.contains("mqtt.password_file") && open.contains("readable by everyone"), "{open}");
        assert!(mqtt("absent").password(&config_path).unwrap_err().to_string().contains("mqtt.password_file"));
        std::fs::write(dir.join("empty"), "").unwrap();
        std::fs::set_permissions(dir.join("empty"), std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(mqtt("empty").password(&config_path).unwrap_err().to_string().contains("empty"));
        assert_eq!(Mqtt { enabled: false, ..mqtt("absent") }.password(&config_path).unwrap(), None, "MQTT off");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mqtt_settings_are_checked_when_it_is_on() {
        let on = |extra: &str| format!("board = \"rpi5\"\n[mqtt]\nenabled = true\n{extra}");
        assert!(parse(&on("")).is_ok());
        assert!(error_of(&on("node_id = \"a b\"")).contains("mqtt.node_id"));
        assert!(error_of(&on("base_topic = \"lookout/#\"")).contains("mqtt.base_topic"));
        assert!(error_of(&on("discovery_prefix = \"/ha\"")).contains("mqtt.discovery_prefix"));
        assert!(error_of(&on("password_file = \"p\"")).contains("without mqtt.username"));
        assert!(error_of(&on("snapshot_max_kib = 8")).contains("mqtt.snapshot_max_kib"));
        assert!(error_of(&on("password = \"inline\"")).contains("password"), "no inline password field");
        assert!(parse("board = \"rpi5\"\n[mqtt]\nnode_id = \"a b\"\n").is_ok(), "not checked while off");
    }

    #[test]
    fn the_token_is_never_written_out() {
        let text = "board = \"rpi5\"\n[http]\nlisten = \"0.0.0.0:8470\"\ntoken = \"s3cret-token-0123456789\"\n";
        let config = parse(text).unwrap().config;
        assert_eq!(config.http.token.as_deref(), Some("s3cret-token-0123456789"));
        let json = serde_json::to_string(&config).unwrap();
        assert!(!json.contains("s3cret"), "{json}");
        assert!(json.contains(r#""token":"(set)""#), "{json}");
    }

    #[test]
    fn listening_beyond_loopback_needs_a_token() {
        assert!(error_of("board = \"rpi5\"\n[http]\nlisten = \"0.0.0.0:8470\"\n").contains("http.token: required"));
        assert!(
            error_of("board = \"rpi5\"\n[http]\nlisten = \"0.0.0.0:8470\"\ntoken = \"short\"\n").contains("http.token")
        );
        let ok = parse("board = \"rpi5\"\n[http]\nlisten = \"0.0.0.0:8470\"\ntoken = \"0123456789abcdef0123\"\n");
        assert!(ok.is_ok());
        assert!(error_of("board = \"rpi5\"\n[http]\nlisten = \"localhost\"\n").contains("http.listen"));
    }
}
