//! Home Assistant over MQTT: the entities announced by discovery (retained configs under the discovery prefix), the
//! scene's states (the caption, a count per configured label, a person in view, a JPEG snapshot), availability
//! through a retained last will, and a question topic answered like `/v1/ask`. A thread of its own runs the client
//! on a single-threaded tokio runtime: it reconnects with backoff when the broker goes away, publishes what changed
//! in the scene twice a second, and never blocks the pipeline; messages that do not fit the bounded outbox are
//! dropped and counted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use lookout_models::vision::pixels::jpeg_within;
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::metrics::Metrics;
use super::state::{Current, Origin, Question};
use super::Checked;
use crate::config::Mqtt as Settings;
use crate::fusion::{checked_question, MAX_QUESTION_BYTES};
use crate::plan::MQTT_MAX_INCOMING_BYTES;

/// How often the scene is looked at for changed states.
const STATE_EVERY: Duration = Duration::from_millis(500);
/// Pauses between attempts to reach the broker: one step longer after each failure, the last one repeated.
const BACKOFF: [Duration; 6] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(15),
    Duration::from_secs(30),
];
/// Home Assistant rejects longer states.
const MAX_STATE_CHARS: usize = 255;
/// Bytes of a message besides its payload (topic and headers), in the packet size limit.
const PACKET_OVERHEAD: usize = 1024;
/// How long a message may wait for room in the outbox before it is dropped.
const PUBLISH_WAIT: Duration = Duration::from_secs(2);
/// Notes from the network task waiting for the session (each at most a question's length).
const NETWORK_NOTES: usize = 32;

/// The client's thread; stopping it publishes `offline` and disconnects.
pub struct MqttClient {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl MqttClient {
    /// Starts the client when `[mqtt]` is on; the broker is tried in the background.
    pub fn start(checked: &Checked, current: Arc<Current>) -> anyhow::Result<Option<MqttClient>> {
        let settings = &checked.config.mqtt;
        if !settings.enabled {
            return Ok(None);
        }
        let topics = Topics::new(settings);
        let mut options = MqttOptions::new(client_id(settings), settings.host.clone(), settings.port);
        options.set_keep_alive(Duration::from_secs(u64::from(settings.keep_alive_s)));
        options.set_clean_session(true);
        options.set_last_will(LastWill::new(&topics.availability, "offline", QoS::AtLeastOnce, true));
        let max_packet = settings.snapshot_max_kib as usize * 1024 + PACKET_OVERHEAD;
        // A larger incoming message ends the connection, which is then made again.
        options.set_max_packet_size(MQTT_MAX_INCOMING_BYTES, max_packet);
        if let Some(username) = &settings.username {
            options.set_credentials(username.clone(), checked.mqtt_password.clone().unwrap_or_default());
        }
        let (client, events) = AsyncClient::new(options, settings.outbox as usize);
        let session = Session {
            client,
            topics,
            discovery: discovery(checked),
            settings: settings.clone(),
            current,
            shown: Shown::default(),
            online: false,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .max_blocking_threads(1)
            .thread_name("mqtt-blocking")
            .build()
            .context("starting the MQTT client's runtime")?;
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("mqtt".into())
            .spawn(move || runtime.block_on(session.run(events, stopped)))
            .context("starting the MQTT client's thread")?;
        Ok(Some(MqttClient { stop: Some(stop), thread: Some(thread) }))
    }
}

impl Drop for MqttClient {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn client_id(settings: &Settings) -> String {
    match settings.client_id.is_empty() {
        true => format!("lookout-{}", settings.node_id),
        false => settings.client_id.clone(),
    }
}

/// A label as an MQTT topic level and an entity's object id: `sports ball` → `sports_ball`.
fn object_id(label: &str) -> String {
    label.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect()
}

struct Topics {
    availability: String,
    caption: String,
    attributes: String,
    occupancy: String,
    snapshot: String,
    counts: BTreeMap<String, String>,
    ask: String,
    answer: String,
    homeassistant_status: String,
}

impl Topics {
    fn new(settings: &Settings) -> Topics {
        let base = &settings.base_topic;
        Topics {
            availability: format!("{base}/availability"),
            caption: format!("{base}/caption"),
            attributes: format!("{base}/caption/attributes"),
            occupancy: format!("{base}/occupancy"),
            snapshot: format!("{base}/snapshot"),
            counts: settings.labels.iter().map(|l| (l.clone(), format!("{base}/count/{}", object_id(l)))).collect(),
            ask: format!("{base}/ask"),
            answer: format!("{base}/answer"),
            homeassistant_status: format!("{}/status", settings.discovery_prefix),
        }
    }
}

/// The retained discovery configs: (topic, payload) for the caption sensor, a count sensor per label, the
/// occupancy binary sensor and the snapshot image, all on one device and one availability topic.
fn discovery(checked: &Checked) -> Vec<(String, String)> {
    let settings = &checked.config.mqtt;
    let topics = Topics::new(settings);
    let (prefix, node) = (&settings.discovery_prefix, &settings.node_id);
    let version = env!("CARGO_PKG_VERSION");
    let device = json!({
        "identifiers": [format!("lookout_{node}")],
        "name": format!("Lookout {node}"),
        "manufacturer": "Lookout",
        "model": checked.config.board.description,
        "sw_version": version,
    });
    let origin = json!({ "name": "Lookout", "sw_version": version, "support_url": env!("CARGO_PKG_REPOSITORY") });
    let entity = |component: &str, object: &str, fields: Value| {
        let mut config = json!({
            "unique_id": format!("{node}_{object}"),
            "object_id": format!("{node}_{object}"),
            "device": device,
            "origin": origin,
            "availability_topic": topics.availability,
            "payload_available": "online",
            "payload_not_available": "offline",
        });
        config.as_object_mut().expect("an object").extend(fields.as_object().expect("an object").clone());
        (format!("{prefix}/{component}/{node}/{object}/config"), config.to_string())
    };
    let mut configs = vec![entity(
        "sensor",
        "caption",
        json!({ "name": "Caption", "icon": "mdi:eye", "state_topic": topics.caption,
                "json_attributes_topic": topics.attributes }),
    )];
    for (label, topic) in &topics.counts {
        let object = format!("{}_count", object_id(label));
        configs.push(entity(
            "sensor",
            &object,
            json!({ "name": format!("{label} count"), "state_topic": topic, "state_class": "measurement",
                    "icon": "mdi:counter" }),
        ));
    }
    configs.push(entity(
        "binary_sensor",
        "occupancy",
        json!({ "name": "Person in view", "device_class": "occupancy", "state_topic": topics.occupancy,
                "payload_on": "ON", "payload_off": "OFF" }),
    ));
    if settings.snapshot {
        configs.push(entity(
            "image",
            "snapshot",
            json!({ "name": "Snapshot", "image_topic": topics.snapshot, "content_type": "image/jpeg" }),
        ));
    }
    configs
}

/// What was last published, so that only changes go out.
#[derive(Default)]
struct Shown {
    /// The caption's frame and text.
    caption: Option<(u64, String)>,
    counts: BTreeMap<String, usize>,
    occupied: Option<bool>,
    person_seen_at: Option<Instant>,
    snapshot_frame: Option<u64>,
    snapshot_at: Option<Instant>,
}

struct Session {
    client: AsyncClient,
    topics: Topics,
    discovery: Vec<(String, String)>,
    settings: Settings,
    current: Arc<Current>,
    shown: Shown,
    /// Connected to the broker: states are published only then (all of them again after each connection).
    online: bool,
}

/// What the network task tells the session.
enum Net {
    Connected,
    Lost(String),
    /// A message on a subscribed topic; a payload too long for a question comes as its length only.
    Message(String, Result<Vec<u8>, usize>),
    Disconnected,
}

/// Drives the client's event loop (never cancelled mid-poll): connections, incoming messages, and a pause from
/// `BACKOFF` after each failure before the next attempt.
async fn drive(mut events: EventLoop, to_session: mpsc::Sender<Net>) {
    let mut failures = 0usize;
    loop {
        let note = match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                failures = 0;
                Net::Connected
            }
            Ok(Event::Incoming(Packet::Publish(message))) => {
                let payload = match message.payload.len() {
                    n if n > MAX_QUESTION_BYTES + 64 => Err(n),
                    _ => Ok(message.payload.to_vec()),
                };
                Net::Message(message.topic, payload)
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => Net::Disconnected,
            Ok(_) => continue,
            Err(error) => {
                let pause = BACKOFF[failures.min(BACKOFF.len() - 1)];
                failures += 1;
                let _ = to_session.try_send(Net::Lost(error.to_string()));
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        // A full channel drops the note (a flood of questions); the session's own state is refreshed anyway.
        if to_session.try_send(note).is_err() && to_session.is_closed() {
            return;
        }
    }
}

impl Session {
    async fn run(mut self, events: EventLoop, mut stopped: oneshot::Receiver<()>) {
        let (to_session, mut from_network) = mpsc::channel(NETWORK_NOTES);
        let network = tokio::spawn(drive(events, to_session));
        let mut tick = tokio::time::interval(STATE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut connected_before = false;
        let mut last_error: Option<String> = None;
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                _ = tick.tick() => self.publish_states().await,
                note = from_network.recv() => match note {
                    Some(Net::Connected) => {
                        let shared = self.current.get();
                        if connected_before {
                            Metrics::add(&shared.metrics.mqtt_reconnects, 1);
                        }
                        shared.events.emit("mqtt_connected", json!({ "broker": self.broker() }));
                        drop(shared);
                        (connected_before, last_error) = (true, None);
                        self.online = true;
                        self.connected().await;
                    }
                    Some(Net::Lost(error)) => {
                        // Reported once, and again only when the reason changes, not on every retry.
                        if last_error.as_ref() != Some(&error) {
                            self.current.get().events.emit("mqtt_disconnected", json!({ "broker": self.broker(), "error": error }));
                        }
                        (last_error, self.online) = (Some(error), false);
                    }
                    Some(Net::Message(topic, payload)) => self.received(&topic, payload).await,
                    Some(Net::Disconnected) | None => {}
                },
            }
        }
        // A clean goodbye: `offline` retained, then a disconnect (after which the broker does not send the will).
        let _ = self.client.try_publish(&self.topics.availability, QoS::AtLeastOnce, true, "offline");
        let _ = self.client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(note) = from_network.recv().await {
                if matches!(note, Net::Disconnected) {
                    break;
                }
            }
        })
        .await;
        network.abort();
    }

    fn broker(&self) -> String {
        format!("{}:{}", self.settings.host, self.settings.port)
    }

    /// After each connection: the subscriptions, `online`, the discovery configs, and every state again.
    async fn connected(&mut self) {
        let _ = self.client.subscribe(&self.topics.homeassistant_status, QoS::AtLeastOnce).await;
        let _ = self.client.subscribe(&self.topics.ask, QoS::AtLeastOnce).await;
        self.publish(&self.topics.availability, true, b"online".to_vec()).await;
        self.announce().await;
    }

    /// The discovery configs, and the states after them (Home Assistant reads states of entities it knows).
    async fn announce(&mut self) {
        for (topic, config) in &self.discovery {
            self.publish(topic, true, config.clone().into_bytes()).await;
        }
        self.shown = Shown { person_seen_at: self.shown.person_seen_at, ..Shown::default() };
    }

    async fn received(&mut self, topic: &str, payload: Result<Vec<u8>, usize>) {
        if topic == self.topics.homeassistant_status && payload.as_deref() == Ok(b"online") {
            // Home Assistant restarted: it forgets entities whose configs it did not see again.
            self.announce().await;
        } else if topic == self.topics.ask {
            match payload {
                Ok(payload) => self.ask(&payload).await,
                Err(n) => {
                    let reason = format!("the question has {n} bytes; the limit is {MAX_QUESTION_BYTES}");
                    self.publish(&self.topics.answer, false, error_answer(&reason)).await;
                }
            }
        }
    }

    /// A question on the ask topic: JSON `{"question": "..."}` or plain text; the answer (or the reason there is
    /// none) goes to the answer topic as `/v1/ask` gives it.
    async fn ask(&mut self, payload: &[u8]) {
        let question = match question_text(payload) {
            Ok(question) => question,
            Err(reason) => return self.publish(&self.topics.answer, false, error_answer(&reason)).await,
        };
        let reply = self.current.get().ask(Question::Text(question), Origin::Mqtt);
        let (client, topic) = (self.client.clone(), self.topics.answer.clone());
        let metrics_of = self.current.clone();
        tokio::spawn(async move {
            let body = match reply {
                Err(e) => error_answer(&e.to_string()),
                Ok(reply) => match reply.await {
                    Ok(Ok(answer)) => serde_json::to_vec(&answer).unwrap_or_default(),
                    Ok(Err(e)) => error_answer(&e.to_string()),
                    Err(_) => error_answer("the pipeline dropped the question"),
                },
            };
            let metrics = &metrics_of.get().metrics;
            match client.try_publish(topic, QoS::AtLeastOnce, false, body) {
                Ok(()) => Metrics::add(&metrics.mqtt_messages, 1),
                Err(_) => Metrics::add(&metrics.mqtt_dropped, 1),
            }
        });
    }

    /// Queues a message, waiting up to `PUBLISH_WAIT` for room in the outbox; after that it is dropped and counted.
    async fn publish(&self, topic: &str, retain: bool, payload: Vec<u8>) {
        let queued = tokio::time::timeout(PUBLISH_WAIT, self.client.publish(topic, QoS::AtLeastOnce, retain, payload));
        let metrics = &self.current.get().metrics;
        match queued.await {
            Ok(Ok(())) => Metrics::add(&metrics.mqtt_messages, 1),
            _ => Metrics::add(&metrics.mqtt_dropped, 1),
        }
    }

    /// Publishes the states that changed since they were last published.
    async fn publish_states(&mut self) {
        if !self.online {
            return;
        }
        let Some(latest) = self.current.get().latest() else { return };
        let now = Instant::now();
        if let Some(caption) = &latest.caption {
            if self.shown.caption.as_ref().is_none_or(|(frame, text)| (*frame, text) != (caption.frame, &caption.text))
            {
                let captured = SystemTime::now().checked_sub(caption.at.elapsed()).unwrap_or(UNIX_EPOCH);
                let attributes = json!({
                    "caption": caption.text,
                    "source": caption.source,
                    "text": latest.scene.text.iter().map(|t| &t.text).collect::<Vec<_>>(),
                    "counts": latest.scene.counts,
                    "frame": caption.frame,
                    "time": captured.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
                });
                let state = cut_to_chars(&caption.text, MAX_STATE_CHARS);
                self.publish(&self.topics.caption, true, state.into_bytes()).await;
                self.publish(&self.topics.attributes, true, attributes.to_string().into_bytes()).await;
                self.shown.caption = Some((caption.frame, caption.text.clone()));
            }
            if self.settings.snapshot && self.snapshot_due(caption.frame, now) {
                self.publish_snapshot(caption.frame, now).await;
            }
        }
        for (label, topic) in &self.topics.counts {
            let count = latest.scene.counts.get(label).copied().unwrap_or(0);
            if self.shown.counts.get(label) != Some(&count) {
                self.publish(topic, true, count.to_string().into_bytes()).await;
                self.shown.counts.insert(label.clone(), count);
            }
        }
        if latest.scene.counts.get("person").copied().unwrap_or(0) > 0 {
            self.shown.person_seen_at = Some(now);
        }
        let hold = Duration::from_secs(u64::from(self.settings.occupancy_off_delay_s));
        let occupied = self.shown.person_seen_at.is_some_and(|seen| now.duration_since(seen) <= hold);
        if self.shown.occupied != Some(occupied) {
            let state = if occupied { "ON" } else { "OFF" };
            self.publish(&self.topics.occupancy, true, state.as_bytes().to_vec()).await;
            self.shown.occupied = Some(occupied);
        }
    }

    fn snapshot_due(&self, frame: u64, now: Instant) -> bool {
        let interval = Duration::from_secs(u64::from(self.settings.snapshot_interval_s));
        self.shown.snapshot_frame != Some(frame)
            && self.shown.snapshot_at.is_none_or(|at| now.duration_since(at) >= interval)
    }

    /// The JPEG of the frame the newest caption describes, within `snapshot_max_kib`, encoded off this thread.
    async fn publish_snapshot(&mut self, frame: u64, now: Instant) {
        let shared = self.current.get();
        let max_bytes = self.settings.snapshot_max_kib as usize * 1024;
        let encoded = tokio::task::spawn_blocking(move || {
            let kept = shared.snapshot.lock().unwrap_or_else(|p| p.into_inner());
            kept.as_ref()
                .filter(|(kept_frame, _)| *kept_frame == frame)
                .and_then(|(_, image)| jpeg_within(image, max_bytes))
        })
        .await;
        if let Ok(Some((jpeg, _, _))) = encoded {
            self.publish(&self.topics.snapshot, true, jpeg).await;
        }
        self.shown.snapshot_frame = Some(frame);
        self.shown.snapshot_at = Some(now);
    }
}

/// The question in an ask message: JSON `{"question": "..."}`, or the payload itself as text.
fn question_text(payload: &[u8]) -> Result<String, String> {
    if payload.len() > MAX_QUESTION_BYTES + 64 {
        return Err(format!("the question has {} bytes; the limit is {MAX_QUESTION_BYTES}", payload.len()));
    }
    let text = std::str::from_utf8(payload).map_err(|_| "the question is not UTF-8 text".to_string())?;
    let question = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(body)) => match body.get("question") {
            Some(Value::String(question)) => question.clone(),
            _ => return Err("expected {\"question\": \"...\"} or the question as plain text".into()),
        },
        _ => text.to_string(),
    };
    Ok(checked_question(&question, "the question")?.to_string())
}

fn error_answer(reason: &str) -> Vec<u8> {
    json!({ "error": reason }).to_string().into_bytes()
}

/// At most `max` characters of `text`, the last one `…` when it was cut.
fn cut_to_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some(_) => text.chars().take(max - 1).chain(std::iter::once('…')).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_come_as_json_or_text_within_the_limit() {
        assert_eq!(question_text(br#"{"question": " Is the door open? "}"#), Ok("Is the door open?".into()));
        assert_eq!(question_text(b"how many people are outside"), Ok("how many people are outside".into()));
        assert!(question_text(b"   ").unwrap_err().contains("empty"));
        assert!(question_text(br#"{"q": "x"}"#).unwrap_err().contains("expected"));
        assert!(question_text(&[0xff, 0xfe]).unwrap_err().contains("UTF-8"));
        assert!(question_text(&vec![b'a'; MAX_QUESTION_BYTES + 1]).unwrap_err().contains("limit"));
        assert!(question_text(&vec![b'a'; 1 << 20]).unwrap_err().contains("limit"), "refused before it is read");
    }

    #[test]
    fn states_are_cut_to_what_home_assistant_takes() {
        assert_eq!(cut_to_chars("short", 255), "short");
        let long = "é".repeat(300);
        let cut = cut_to_chars(&long, 255);
        assert_eq!((cut.chars().count(), cut.ends_with('…')), (255, true));
        assert_eq!(cut_to_chars(&"a".repeat(255), 255).len(), 255, "exactly the limit is kept whole");
        assert_eq!(object_id("sports ball"), "sports_ball");
    }
}
