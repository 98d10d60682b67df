//! `lookout bench --suite load`: the daemon under a bounded mixed load. It starts `lookout serve` on the photo
//! camera with the real default models, then `--clients` (64) loopback clients for `--seconds` (120) at once: scene
//! reads, typed and spoken questions, bad requests, connections left idle and `/healthz` probes. It reports every
//! response's status by kind of client, `/healthz` latency, the daemon's peak RSS against its memory plan, and, once
//! the load has stopped and the questions drained, the connections, body slots and queued questions left over.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;

use super::http::{photo_camera_config, read_response, Client, Daemon, PHOTO, QUIET_WAV};
use super::{median, percentile, write_report, BenchArgs};
use crate::cli::Context;

/// The kinds of client, in the order they are handed out, so every 16 clients hold each kind in this proportion.
const MIX: [Kind; 16] = [
    Kind::Scene,
    Kind::Scene,
    Kind::Scene,
    Kind::Scene,
    Kind::Scene,
    Kind::Scene,
    Kind::AskText,
    Kind::AskText,
    Kind::AskAudio,
    Kind::Bad,
    Kind::Bad,
    Kind::Bad,
    Kind::Idle,
    Kind::Idle,
    Kind::Health,
    Kind::Health,
];
/// The longest the questions still queued when the load stops may take to drain.
const DRAIN_WITHIN: Duration = Duration::from_secs(180);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    /// `GET /v1/scene` on a keep-alive connection.
    Scene,
    /// `POST /v1/ask` with a JSON question.
    AskText,
    /// `POST /v1/ask` with a WAV question.
    AskAudio,
    /// Malformed JSON, an unknown path, a wrong method, a wrong content type, a body over the limit.
    Bad,
    /// A connection that sends half a request line and waits for the server to close it.
    Idle,
    /// `GET /healthz` every 20 ms, timed.
    Health,
}

impl Kind {
    /// The statuses this kind of request may end in; anything else, or a connection that fails, is undefined.
    fn defined(self, status: u16) -> bool {
        match self {
            Kind::Scene | Kind::Health => status == 200,
            // Busy (the queue of four is full) or past the answer timeout are answers too.
            Kind::AskText => matches!(status, 200 | 503 | 504),
            Kind::AskAudio => matches!(status, 200 | 422 | 503 | 504),
            Kind::Bad => matches!(status, 400 | 404 | 405 | 413 | 415),
            // The server closes an idle connection after its header timeout, without a response.
            Kind::Idle => status == CLOSED,
        }
    }
}

/// The status recorded when the server closed the connection without a response.
const CLOSED: u16 = 0;

#[derive(Debug, Default, Serialize)]
struct KindResult {
    clients: usize,
    /// Responses by status (0: closed without one).
    statuses: BTreeMap<u16, u64>,
    undefined: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

#[derive(Debug, Serialize)]
struct Leftover {
    connections_open: f64,
    bodies_in_use: f64,
    questions_queued: f64,
    /// Seconds the questions still queued at the end took to drain.
    drained_in_s: f64,
}

#[derive(Debug, Serialize)]
struct LoadReport {
    clients: usize,
    seconds: f64,
    kinds: BTreeMap<Kind, KindResult>,
    peak_rss_mib: f64,
    plan_mib: f64,
    leftover: Leftover,
}

pub fn run(ctx: &Context, args: &BenchArgs) -> anyhow::Result<()> {
    for input in [PHOTO, QUIET_WAV] {
        if !std::path::Path::new(input).exists() {
            bail!("{input} is missing: run models/prepare/prepare.sh from the repository root");
        }
    }
    let clients = args.clients.unwrap_or(64).max(1);
    let seconds = Duration::from_secs(args.seconds.unwrap_or(120).max(1));
    // Every client connects from 127.0.0.1: the per-client share is the whole server's. Each client holds one
    // connection at a time; the headroom covers connections closed by a client but not yet by the server.
    let connections = clients + clients / 4;
    let limits = format!("max_connections = {connections}\nmax_connections_per_client = {connections}\n");
    let config = photo_camera_config(&args.out.join("load-daemon"), &limits)?;
    let exe = std::env::current_exe()?;
    let daemon = Daemon::start(ctx, &exe, &config)?;
    eprintln!("bench: {clients} clients for {} s", seconds.as_secs());
    let kinds = mixed_load(daemon.port, clients, seconds)?;
    let peak_rss_mib = daemon.rss_mib();
    let (leftover, plan_mib) = leftover(daemon.port)?;
    daemon.stop();
    let report = LoadReport { clients, seconds: seconds.as_secs_f64(), kinds, peak_rss_mib, plan_mib, leftover };
    write_report(&args.out, &markdown(&report), &report)
}

fn mixed_load(port: u16, clients: usize, seconds: Duration) -> anyhow::Result<BTreeMap<Kind, KindResult>> {
    let question = Arc::new(std::fs::read(QUIET_WAV)?);
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..clients)
        .map(|i| {
            let (kind, stop, question) = (MIX[i % MIX.len()], stop.clone(), question.clone());
            std::thread::spawn(move || (kind, client_loop(kind, i, port, &question, &stop)))
        })
        .collect();
    std::thread::sleep(seconds);
    stop.store(true, Relaxed);
    let mut kinds: BTreeMap<Kind, (KindResult, Vec<f64>)> = BTreeMap::new();
    for worker in workers {
        let Ok((kind, outcomes)) = worker.join() else { bail!("a load client panicked") };
        let (result, latencies) = kinds.entry(kind).or_default();
        result.clients += 1;
        for (status, ms) in outcomes {
            *result.statuses.entry(status).or_default() += 1;
            result.undefined += u64::from(!kind.defined(status));
            latencies.push(ms);
        }
    }
    Ok(kinds
        .into_iter()
        .map(|(kind, (mut result, latencies))| {
            result.p50_ms = median(latencies.iter().copied());
            result.p99_ms = percentile(latencies.iter().copied(), 0.99);
            result.max_ms = latencies.iter().copied().fold(0.0, f64::max);
            (kind, result)
        })
        .collect())
}

/// One client's requests until `stop`: each one's status (0: closed without a response) and milliseconds.
fn client_loop(kind: Kind, index: usize, port: u16, question: &[u8], stop: &AtomicBool) -> Vec<(u16, f64)> {
    let mut client = Client::new(port);
    let mut outcomes = Vec::new();
    let mut round = index;
    while !stop.load(Relaxed) {
        let started = Instant::now();
        let status = match kind {
            Kind::Scene => client.call("GET", "/v1/scene", "text/plain", b""),
            Kind::Health => {
                std::thread::sleep(Duration::from_millis(20));
                let started = Instant::now();
                let status = client.call("GET", "/healthz", "text/plain", b"");
                outcomes.push((status.unwrap_or(CLOSED), started.elapsed().as_secs_f64() * 1e3));
                continue;
            }
            Kind::AskText => {
                client.call("POST", "/v1/ask", "application/json", br#"{"question": "How many people are outside?"}"#)
            }
            Kind::AskAudio => client.call("POST", "/v1/ask", "audio/wav", question),
            Kind::Bad => {
                round += 1;
                bad_request(&mut client, port, round)
            }
            Kind::Idle => idle_connection(port, stop),
        };
        outcomes.push((status.unwrap_or(CLOSED), started.elapsed().as_secs_f64() * 1e3));
        if kind != Kind::Scene && status.is_some_and(|s| s == 503) {
            // Refused for now: a client that respects Retry-After comes back a little later.
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    outcomes
}

fn bad_request(client: &mut Client, port: u16, round: usize) -> Option<u16> {
    match round % 5 {
        0 => client.call("POST", "/v1/ask", "application/json", b"{\"question\": "),
        1 => client.call("GET", "/v1/nothing-here", "text/plain", b""),
        2 => client.call("DELETE", "/v1/scene", "text/plain", b""),
        3 => client.call("POST", "/v1/ask", "image/gif", b"GIF89a"),
        _ => {
            // On a connection of its own, which the refusal closes: the kept-alive one is closed first.
            client.disconnect();
            oversized_body(port)
        }
    }
}

/// A request that declares a body over the configured limit (2 MiB by default) and waits for the refusal before
/// sending any of it, as a client that sends `Expect: 100-continue` would.
fn oversized_body(port: u16) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let head = "POST /v1/ask HTTP/1.1\r\nHost: localhost\r\nContent-Type: audio/wav\r\nContent-Length: 3145728\r\n\
                Expect: 100-continue\r\n\r\n";
    stream.write_all(head.as_bytes()).ok()?;
    read_response(&mut stream, &mut Vec::new()).map(|(status, _)| status)
}

/// Opens a connection, sends half a request line and waits until the server closes it (its header timeout) or the
/// load stops; `None` when the server closed it without a response, as it should.
fn idle_connection(port: u16, stop: &AtomicBool) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_millis(250))).ok()?;
    stream.write_all(b"GET /healthz HT").ok()?;
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return None,
            Ok(_) => return Some(1),
            Err(_) if stop.load(Relaxed) => return None,
            Err(_) => {}
        }
    }
}

/// What is left once the load has stopped and the queued questions have drained: the server's connections (this
/// client's own included), body slots and queued questions; and the memory plan.
fn leftover(port: u16) -> anyhow::Result<(Leftover, f64)> {
    let mut client = Client::new(port);
    let started = Instant::now();
    loop {
        if client.call("GET", "/metrics", "text/plain", b"") != Some(200) {
            bail!("/metrics did not answer after the load");
        }
        let text = String::from_utf8_lossy(&client.body).into_owned();
        let metric = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(f64::NAN)
        };
        let left = Leftover {
            connections_open: metric("lookout_http_connections_open"),
            bodies_in_use: metric("lookout_http_bodies_in_use"),
            questions_queued: metric("lookout_question_queue_depth"),
            drained_in_s: started.elapsed().as_secs_f64(),
        };
        let settled = left.questions_queued == 0.0 && left.bodies_in_use == 0.0 && left.connections_open <= 1.0;
        if settled || started.elapsed() > DRAIN_WITHIN {
            return Ok((left, metric("lookout_memory_plan_bytes") / 1048576.0));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn markdown(r: &LoadReport) -> String {
    let mut md = super::heading("load", 1, &format!("{} clients at once for {} s, on loopback", r.clients, r.seconds));
    md.push_str(
        "| clients | kind | responses by status (0: closed by the server) | undefined | p50 ms | p99 ms | max ms |\n",
    );
    md.push_str("|---|---|---|---|---|---|---|\n");
    for (kind, k) in &r.kinds {
        let statuses: Vec<String> = k.statuses.iter().map(|(s, n)| format!("{s}: {n}")).collect();
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.2} | {:.2} | {:.2} |\n",
            k.clients,
            serde_json::to_value(kind).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
            statuses.join(", "),
            k.undefined,
            k.p50_ms,
            k.p99_ms,
            k.max_ms
        ));
    }
    let l = &r.leftover;
    md.push_str(&format!(
        "\nDaemon peak RSS {:.0} MiB against a plan of {:.0} MiB. After the load (queued questions drained in {:.1} s): \
         {} connections open (this report's own included), {} body slots held, {} questions queued.\n",
        r.peak_rss_mib, r.plan_mib, l.drained_in_s, l.connections_open, l.bodies_in_use, l.questions_queued
    ));
    md
}
