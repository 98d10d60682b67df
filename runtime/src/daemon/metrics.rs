//! The daemon's metrics: a fixed set of atomic counters and latency histograms, updated without locks or
//! allocation from every stage, rendered as Prometheus text for `GET /metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS_S: [f64; 13] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS_S.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        if let Some(i) = BUCKETS_S.iter().position(|&bound| seconds <= bound) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(took.as_micros() as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, stage: &str) {
        let mut cumulative = 0;
        for (bound, bucket) in BUCKETS_S.iter().zip(&self.buckets) {
            cumulative += bucket.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{stage=\"{stage}\",le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{stage=\"{stage}\",le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{{stage=\"{stage}\"}} {}", self.sum_us.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count{{stage=\"{stage}\"}} {count}");
    }
}

/// Latency of each stage.
#[derive(Default)]
pub struct Latencies {
    /// Decoding and scaling a camera frame into the pool.
    pub capture: Histogram,
    /// Detector and text reader on one frame.
    pub vision: Histogram,
    pub transcribe: Histogram,
    pub caption: Histogram,
    pub answer: Histogram,
    pub http: Histogram,
}

impl Latencies {
    fn stages(&self) -> [(&'static str, &Histogram); 6] {
        [
            ("capture", &self.capture),
            ("vision", &self.vision),
            ("transcribe", &self.transcribe),
            ("caption", &self.caption),
            ("answer", &self.answer),
            ("http", &self.http),
        ]
    }
}

#[derive(Default)]
pub struct Metrics {
    pub latency: Latencies,
    pub frames_captured: AtomicU64,
    pub frames_processed: AtomicU64,
    /// Frames too like the last analysed one to run the encoders on (`[scene_change]`).
    pub frames_skipped_unchanged: AtomicU64,
    /// Frames replaced in the queue by a newer one before vision took them.
    pub frames_dropped: AtomicU64,
    /// Frames that could not be decoded.
    pub frames_bad: AtomicU64,
    /// Frames that waited in the queue longer than the pool covers (vision falls behind the camera).
    pub frame_deadline_misses: AtomicU64,
    pub camera_errors: AtomicU64,
    pub microphone_errors: AtomicU64,
    /// Samples lost from the audio ring before they were read.
    pub audio_overwritten: AtomicU64,
    pub utterances: AtomicU64,
    pub captions: AtomicU64,
    /// Captions stopped between decode steps because a question was waiting.
    pub captions_preempted: AtomicU64,
    pub answers: AtomicU64,
    /// Questions whose answer timeout passed: dropped if still waiting, stopped at the next window or token if not.
    pub answer_deadline_misses: AtomicU64,
    /// Questions refused because the question queue was full.
    pub questions_rejected: AtomicU64,
    pub pipeline_errors: AtomicU64,
    pub http_requests: AtomicU64,
    pub http_client_errors: AtomicU64,
    pub http_server_errors: AtomicU64,
    /// Connections refused: over `http.max_connections`, or over one client's share.
    pub http_connections_refused: AtomicU64,
    /// Open HTTP connections and request bodies held, set by the server when the metrics are read.
    pub http_connections_open: AtomicU64,
    pub http_bodies_in_use: AtomicU64,
    /// Wyoming clients served, refused over `wyoming.max_sessions`, sessions ended by an error event (or a client
    /// that left mid-transcription), transcripts sent, and sessions open (set when the metrics are read).
    pub wyoming_sessions: AtomicU64,
    pub wyoming_refused: AtomicU64,
    pub wyoming_errors: AtomicU64,
    pub wyoming_transcripts: AtomicU64,
    pub wyoming_sessions_open: AtomicU64,
    /// MQTT messages queued for the broker, dropped because the outbox was full, and connections made again.
    pub mqtt_messages: AtomicU64,
    pub mqtt_dropped: AtomicU64,
    pub mqtt_reconnects: AtomicU64,
    pub frame_queue_depth: AtomicU64,
    pub question_queue_depth: AtomicU64,
    pub budget_bytes: AtomicU64,
    pub plan_bytes: AtomicU64,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }

    /// Prometheus text exposition (version 0.0.4).
    pub fn render(&self, rss: Option<crate::memory::Rss>) -> String {
        let mut out = String::with_capacity(8192);
        let counters: [(&str, &str, &AtomicU64); 31] = [
            ("frames_captured_total", "Frames delivered by the camera", &self.frames_captured),
            ("frames_processed_total", "Frames the vision stage ran on", &self.frames_processed),
            (
                "frames_skipped_unchanged_total",
                "Frames that kept the last analysed scene, too like its frame to analyse",
                &self.frames_skipped_unchanged,
            ),
            ("frames_dropped_total", "Frames replaced by a newer one before vision took them", &self.frames_dropped),
            ("frames_bad_total", "Frames that could not be decoded", &self.frames_bad),
            (
                "frame_deadline_misses_total",
                "Frames that waited longer than the pool covers",
                &self.frame_deadline_misses,
            ),
            ("camera_errors_total", "Camera read errors", &self.camera_errors),
            ("microphone_errors_total", "Microphone read errors", &self.microphone_errors),
            ("audio_overwritten_samples_total", "Audio samples lost from the ring", &self.audio_overwritten),
            ("utterances_total", "Spoken questions found by the VAD or push-to-talk", &self.utterances),
            ("captions_total", "Captions published", &self.captions),
            ("captions_preempted_total", "Captions stopped for a waiting question", &self.captions_preempted),
            ("answers_total", "Questions answered", &self.answers),
            (
                "answer_deadline_misses_total",
                "Questions dropped or stopped when their answer timeout passed",
                &self.answer_deadline_misses,
            ),
            ("questions_rejected_total", "Questions refused because the queue was full", &self.questions_rejected),
            ("pipeline_errors_total", "Stage runs that failed", &self.pipeline_errors),
            ("http_requests_total", "HTTP requests served", &self.http_requests),
            ("http_client_errors_total", "HTTP responses with a 4xx status", &self.http_client_errors),
            ("http_server_errors_total", "HTTP responses with a 5xx status", &self.http_server_errors),
            (
                "http_connections_refused_total",
                "Connections refused over the total or per-client limit",
                &self.http_connections_refused,
            ),
            ("http_connections_open", "HTTP connections open", &self.http_connections_open),
            ("http_bodies_in_use", "HTTP request bodies held in memory", &self.http_bodies_in_use),
            ("wyoming_sessions_total", "Wyoming clients served", &self.wyoming_sessions),
            ("wyoming_refused_total", "Wyoming clients refused over wyoming.max_sessions", &self.wyoming_refused),
            ("wyoming_errors_total", "Wyoming sessions ended by an error", &self.wyoming_errors),
            ("wyoming_transcripts_total", "Wyoming transcripts sent", &self.wyoming_transcripts),
            ("wyoming_sessions_open", "Wyoming sessions open", &self.wyoming_sessions_open),
            ("mqtt_messages_total", "MQTT messages queued for the broker", &self.mqtt_messages),
            ("mqtt_dropped_total", "MQTT messages dropped because the outbox was full", &self.mqtt_dropped),
            (
                "mqtt_reconnects_total",
                "Connections to the MQTT broker made again after losing it",
                &self.mqtt_reconnects,
            ),
            ("question_queue_depth", "Questions waiting for the pipeline", &self.question_queue_depth),
        ];
        for (name, help, value) in counters {
            let kind = if name.ends_with("_total") { "counter" } else { "gauge" };
            let _ = writeln!(
                out,
                "# HELP lookout_{name} {help}\n# TYPE lookout_{name} {kind}\nlookout_{name} {}",
                value.load(Relaxed)
            );
        }
        let gauges = [
            ("frame_queue_depth", "Frames waiting for the vision stage", self.frame_queue_depth.load(Relaxed) as f64),
            ("memory_budget_bytes", "Memory budget of the board", self.budget_bytes.load(Relaxed) as f64),
            ("memory_plan_bytes", "Peak memory the start-up plan expects", self.plan_bytes.load(Relaxed) as f64),
            ("resident_memory_bytes", "Resident set size", rss.map_or(f64::NAN, |r| r.rss_mib * 1048576.0)),
            ("resident_memory_peak_bytes", "Peak resident set size", rss.map_or(f64::NAN, |r| r.peak_mib * 1048576.0)),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP lookout_{name} {help}\n# TYPE lookout_{name} gauge\nlookout_{name} {value}");
        }
        let name = "lookout_stage_latency_seconds";
        let _ = writeln!(out, "# HELP {name} Time each stage took\n# TYPE {name} histogram");
        for (stage, histogram) in self.latency.stages() {
            histogram.render(&mut out, name, stage);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets_and_counters_their_values() {
        let metrics = Metrics::default();
        metrics.latency.vision.observe(Duration::from_millis(40));
        metrics.latency.vision.observe(Duration::from_millis(300));
        metrics.latency.vision.observe(Duration::from_secs(100));
        Metrics::add(&metrics.frames_dropped, 3);
        let text = metrics.render(None);
        assert!(text.contains("lookout_stage_latency_seconds_bucket{stage=\"vision\",le=\"0.05\"} 1\n"), "{text}");
        assert!(text.contains("lookout_stage_latency_seconds_bucket{stage=\"vision\",le=\"0.5\"} 2\n"));
        assert!(text.contains("lookout_stage_latency_seconds_bucket{stage=\"vision\",le=\"+Inf\"} 3\n"));
        assert!(text.contains("lookout_stage_latency_seconds_sum{stage=\"vision\"} 100.34\n"));
        assert!(text.contains("lookout_frames_dropped_total 3\n"));
        assert!(text.contains("# TYPE lookout_question_queue_depth gauge\n"));
    }
}
