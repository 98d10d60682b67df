//! The daemon's events as JSON lines on stdout (one object per line, journald keeps them whole): what was seen,
//! heard, captioned and answered, and the daemon's own state changes.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

#[derive(Default)]
pub struct Events {
    out: Mutex<()>,
    quiet: AtomicBool,
}

impl Events {
    /// Stops writing events (the soak command prints its own report).
    pub fn silence(&self) {
        self.quiet.store(true, Relaxed);
    }

    /// Writes `{"ts": …, "event": kind, …fields}`; `fields` must be a JSON object.
    pub fn emit(&self, kind: &str, fields: Value) {
        if self.quiet.load(Relaxed) {
            return;
        }
        let mut line = Map::new();
        let ts = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        line.insert("ts".into(), Value::from((ts * 1e3).round() / 1e3));
        line.insert("event".into(), Value::from(kind));
        if let Value::Object(fields) = fields {
            line.extend(fields);
        }
        let text = Value::Object(line).to_string();
        let _guard = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let mut stdout = std::io::stdout().lock();
        // A closed stdout (the reader went away) must not stop the daemon.
        let _ = writeln!(stdout, "{text}");
        let _ = stdout.flush();
    }
}
