//! `lookout bench --suite http`: the daemon's HTTP server under load. It starts `lookout serve` on the photo
//! camera, keeps `--clients` (32) keep-alive connections busy for `--seconds` (30) on `/healthz` and on
//! `/v1/scene`, then times `/healthz` from one client while a spoken question is transcribed and answered. With
//! `--peer-binary` the same runs go against another `lookout` build (an earlier server) started the same way.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;

use super::{median, percentile, write_report, BenchArgs};
use crate::cli::Context;

pub(super) const PHOTO: &str = ".cache/testdata/vision/photos/kite.jpg";
pub(super) const QUIET_WAV: &str = ".cache/testdata/speech/how_many_people.wav";
/// The spoken question answered while `/healthz` is timed.
const LONG_QUESTION: &str = ".cache/testdata/speech/beckett.wav";

#[derive(Debug, Serialize)]
struct LoadResult {
    path: &'static str,
    clients: usize,
    seconds: f64,
    requests: u64,
    /// Responses other than 200, and connections that failed or were closed by the server.
    not_ok: u64,
    reconnects: u64,
    requests_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

#[derive(Debug, Serialize)]
struct BusyResult {
    /// The question's own time.
    answer_ms: f64,
    answer_status: u16,
    health_checks: usize,
    health_p50_ms: f64,
    health_p99_ms: f64,
    health_max_ms: f64,
}

#[derive(Debug, Serialize)]
struct ServerResult {
    server: String,
    load: Vec<LoadResult>,
    busy: BusyResult,
    rss_mib: f64,
}

pub fn run(ctx: &Context, args: &BenchArgs) -> anyhow::Result<()> {
    for input in [PHOTO, QUIET_WAV, LONG_QUESTION] {
        if !Path::new(input).exists() {
            bail!("{input} is missing: run models/prepare/prepare.sh from the repository root");
        }
    }
    let clients = args.clients.unwrap_or(32).max(1);
    let seconds = Duration::from_secs(args.seconds.unwrap_or(30).max(1));
    // Every client connects from 127.0.0.1: this build's per-client share is raised to let them all in (a peer
    // build may not know the setting, and is started with its defaults).
    let limits = format!("max_connections = {}\nmax_connections_per_client = {clients}\n", clients.max(64));
    let mut servers = vec![("lookout (this build)".to_string(), std::env::current_exe()?, limits)];
    if let Some(peer) = &args.peer_binary {
        servers.push((format!("peer ({})", peer.display()), peer.clone(), String::new()));
    }
    let mut results = Vec::new();
    for (name, binary, http_settings) in servers {
        eprintln!("bench: {name}");
        results.push(measure(ctx, args, (&name, &binary, &http_settings), clients, seconds)?);
    }
    let mut md =
        super::heading("http", 1, &format!("{clients} keep-alive clients for {} s per endpoint", seconds.as_secs()));
    md.push_str(
        "| server | endpoint | requests/s | p50 ms | p99 ms | not 200 | reconnects |\n|---|---|---|---|---|---|---|\n",
    );
    for r in &results {
        for l in &r.load {
            md.push_str(&format!(
                "| {} | `{}` | {:.0} | {:.2} | {:.2} | {} | {} |\n",
                r.server, l.path, l.requests_per_s, l.p50_ms, l.p99_ms, l.not_ok, l.reconnects
            ));
        }
    }
    md.push_str("\n`/healthz` from one client while a 10 s spoken question is transcribed and answered:\n\n");
    md.push_str("| server | answer ms | status | checks | p50 ms | p99 ms | max ms | daemon RSS MiB |\n|---|---|---|---|---|---|---|---|\n");
    for r in &results {
        let b = &r.busy;
        md.push_str(&format!(
            "| {} | {:.0} | {} | {} | {:.2} | {:.2} | {:.2} | {:.0} |\n",
            r.server,
            b.answer_ms,
            b.answer_status,
            b.health_checks,
            b.health_p50_ms,
            b.health_p99_ms,
            b.health_max_ms,
            r.rss_mib
        ));
    }
    write_report(&args.out, &md, &results)
}

/// Starts `binary serve` on the photo camera with `http_settings` added to its `[http]`, loads it, and stops it.
fn measure(
    ctx: &Context,
    args: &BenchArgs,
    (name, binary, http_settings): (&str, &Path, &str),
    clients: usize,
    seconds: Duration,
) -> anyhow::Result<ServerResult> {
    let config = photo_camera_config(&args.out.join("http-daemon"), http_settings)?;
    let daemon = Daemon::start(ctx, binary, &config)?;
    let port = daemon.port;
    let load = [("/healthz"), ("/v1/scene")].map(|path| run_load(port, path, clients, seconds));
    let busy = busy_health(port)?;
    let rss_mib = daemon.rss_mib();
    daemon.stop();
    Ok(ServerResult { server: name.to_string(), load: load.into_iter().collect(), busy, rss_mib })
}

/// A daemon configuration in `dir` on the photo camera and the quiet recording, listening on a free loopback port,
/// with `http_settings` added to its `[http]`.
pub(super) fn photo_camera_config(dir: &Path, http_settings: &str) -> anyhow::Result<PathBuf> {
    let frames = dir.join("frames");
    std::fs::create_dir_all(&frames)?;
    std::fs::copy(PHOTO, frames.join("photo.jpg"))?;
    let config = dir.join("lookout.toml");
    let quiet = std::fs::canonicalize(QUIET_WAV)?;
    std::fs::write(
        &config,
        format!(
            "board = \"{}\"\n[camera]\ndevice = \"dir:{}\"\n[microphone]\ndevice = \"wav:{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n{http_settings}",
            crate::board::development_profile_for_this_build(dir)?.display(),
            std::fs::canonicalize(&frames)?.display(),
            quiet.display()
        ),
    )?;
    Ok(config)
}

pub(super) struct Daemon {
    child: Child,
    pub port: u16,
}

impl Daemon {
    pub(super) fn start(ctx: &Context, binary: &Path, config: &Path) -> anyhow::Result<Daemon> {
        let mut child = Command::new(binary)
            .arg("--models")
            .arg(ctx.models_dir())
            .args(["serve", "--config"])
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child.stdout.take().context("the daemon's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut port = None;
        // Serving starts at `listening`; the load starts once the first caption is out (the scene exists).
        for line in lines.by_ref() {
            let event: serde_json::Value = serde_json::from_str(&line?).unwrap_or_default();
            if event["event"] == "listening" {
                port = event["address"].as_str().and_then(|a| a.rsplit(':').next()).and_then(|p| p.parse().ok());
            }
            if event["event"] == "caption" {
                break;
            }
        }
        let Some(port) = port else {
            let _ = child.kill();
            bail!("{} stopped before it was listening", binary.display());
        };
        // The rest of the events are read and dropped, so the daemon never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Daemon { child, port })
    }

    /// The daemon's peak resident set (VmHWM).
    pub(super) fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let kib = status.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1));
        kib.and_then(|k| k.parse::<f64>().ok()).map_or(f64::NAN, |k| k / 1024.0)
    }

    pub(super) fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One keep-alive HTTP/1.1 client: reconnects when the server closes the connection.
pub(super) struct Client {
    port: u16,
    stream: Option<TcpStream>,
    pub reconnects: u64,
    /// The last response's body.
    pub body: Vec<u8>,
}

impl Client {
    pub(super) fn new(port: u16) -> Client {
        Client { port, stream: None, reconnects: 0, body: Vec::new() }
    }

    /// Closes the keep-alive connection; the next call opens another.
    pub(super) fn disconnect(&mut self) {
        self.stream = None;
    }

    /// Sends one request and reads its response; the status, or None when the connection failed.
    pub(super) fn call(&mut self, method: &str, path: &str, content_type: &str, body: &[u8]) -> Option<u16> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
            stream.set_read_timeout(Some(Duration::from_secs(600))).ok()?;
            let _ = stream.set_nodelay(true);
            self.stream = Some(stream);
            self.reconnects += 1;
        }
        let stream = self.stream.as_mut()?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let sent = stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(body));
        let response = sent.ok().and_then(|_| read_response(stream, &mut self.body));
        match response {
            Some((status, keep)) => {
                if !keep {
                    self.stream = None;
                }
                Some(status)
            }
            None => {
                self.stream = None;
                None
            }
        }
    }
}

/// Reads one response with a Content-Length body into `body`: its status, and whether the connection stays open.
pub(super) fn read_response(stream: &mut TcpStream, body: &mut Vec<u8>) -> Option<(u16, bool)> {
    let mut raw = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).ok().filter(|&n| n > 0)?;
        raw.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    body.clear();
    body.extend_from_slice(&raw[head_end..]);
    while body.len() < length {
        let n = stream.read(&mut chunk).ok().filter(|&n| n > 0)?;
        body.extend_from_slice(&chunk[..n]);
    }
    Some((status, !head.contains("connection: close")))
}

fn run_load(port: u16, path: &'static str, clients: usize, seconds: Duration) -> LoadResult {
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut client = Client::new(port);
                let (mut latencies, mut not_ok) = (Vec::new(), 0u64);
                while !stop.load(Relaxed) {
                    let started = Instant::now();
                    match client.call("GET", path, "text/plain", b"") {
                        Some(200) => latencies.push(started.elapsed().as_secs_f64() * 1e3),
                        _ => {
                            not_ok += 1;
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                }
                (latencies, not_ok, client.reconnects)
            })
        })
        .collect();
    std::thread::sleep(seconds);
    stop.store(true, Relaxed);
    let (mut latencies, mut not_ok, mut reconnects) = (Vec::new(), 0, 0);
    for worker in workers {
        if let Ok((l, n, r)) = worker.join() {
            latencies.extend(l);
            not_ok += n;
            reconnects += r;
        }
    }
    let ok = latencies.len() as u64;
    LoadResult {
        path,
        clients,
        seconds: seconds.as_secs_f64(),
        requests: ok + not_ok,
        not_ok,
        reconnects,
        requests_per_s: ok as f64 / seconds.as_secs_f64(),
        p50_ms: median(latencies.iter().copied()),
        p99_ms: percentile(latencies.iter().copied(), 0.99),
    }
}

fn busy_health(port: u16) -> anyhow::Result<BusyResult> {
    let question = std::fs::read(PathBuf::from(LONG_QUESTION))?;
    let asked = Instant::now();
    let asking = std::thread::spawn(move || Client::new(port).call("POST", "/v1/ask", "audio/wav", &question));
    let mut client = Client::new(port);
    let mut latencies = Vec::new();
    while !asking.is_finished() {
        let started = Instant::now();
        if client.call("GET", "/healthz", "text/plain", b"") == Some(200) {
            latencies.push(started.elapsed().as_secs_f64() * 1e3);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let answer_ms = asked.elapsed().as_secs_f64() * 1e3;
    let answer_status = asking.join().ok().flatten().unwrap_or(0);
    Ok(BusyResult {
        answer_ms,
        answer_status,
        health_checks: latencies.len(),
        health_p50_ms: median(latencies.iter().copied()),
        health_p99_ms: percentile(latencies.iter().copied(), 0.99),
        health_max_ms: latencies.iter().copied().fold(0.0, f64::max),
    })
}
