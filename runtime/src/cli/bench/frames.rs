//! `lookout bench --suite frames`: what it costs to turn one camera frame into the frame pool's RGB image, per
//! pixel format (YUYV, NV12, RGB24, MJPEG) and frame size, and how many allocations each conversion makes once
//! warm, beside OpenCV (`cvtColor`, `imdecode`) on the very same frames, whose output is compared pixel by pixel.

use std::ffi::OsString;
use std::time::Instant;

use anyhow::{bail, Context as _};
use lookout_models::vision::image::{load_image, RgbImage};
use lookout_models::vision::pixels::{convert_frame, PixelFormat};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{heading, median, peer, peer_python, percentile, write_report, BenchArgs};
use crate::allocations::allocations;
use crate::cli::Context;

const DEFAULT_REPEATS: usize = 50;
const SIZES: [(u32, u32); 3] = [(640, 480), (1280, 720), (1920, 1080)];
const FORMATS: [(&str, PixelFormat); 4] = [
    ("YUYV", PixelFormat::Yuyv),
    ("NV12", PixelFormat::Nv12),
    ("RGB24", PixelFormat::Rgb24),
    ("MJPEG", PixelFormat::Mjpeg),
];
const WARM_UP: usize = 3;
const JPEG_QUALITY: u8 = 90;
const PEER_SCRIPT: &str = "runtime/bench/opencv_frames_peer.py";

#[derive(Debug, Serialize)]
struct Row {
    format: &'static str,
    width: u32,
    height: u32,
    frame_bytes: usize,
    ms_p50: f64,
    ms_p95: f64,
    megapixels_per_s: f64,
    allocations_per_frame: f64,
    /// Mean absolute difference from the RGB photo the frame was made from (chroma subsampling, JPEG loss).
    mean_error_vs_source: f64,
    peer_ms_p50: Option<f64>,
    peer_max_difference: Option<u8>,
    peer_mean_difference: Option<f64>,
    #[serde(skip)]
    output: Vec<u8>,
    #[serde(skip)]
    frame_path: String,
}

#[derive(Debug, Deserialize, Serialize)]
struct PeerResult {
    frame: String,
    ms_p50: f64,
    output: String,
}

#[derive(Debug, Deserialize, Serialize)]
struct PeerRun {
    engine: String,
    results: Vec<PeerResult>,
}

#[derive(Serialize)]
struct Report<'a> {
    repeats: usize,
    source: String,
    rows: &'a [Row],
    peer: Option<&'a PeerRun>,
}

pub(super) fn run(_ctx: &Context, args: &BenchArgs) -> anyhow::Result<()> {
    let repeats = args.repeats.unwrap_or(DEFAULT_REPEATS);
    let photo = args.images.first().cloned().unwrap_or_else(|| ".cache/testdata/vision/photos/kite.jpg".into());
    if !photo.is_file() {
        bail!("bench input {} not found (run models/prepare/prepare.sh, or pass --images)", photo.display());
    }
    let source = load_image(&photo).with_context(|| photo.display().to_string())?;
    let frames_dir = args.out.join("frames");
    std::fs::create_dir_all(&frames_dir).with_context(|| frames_dir.display().to_string())?;

    let mut rows = Vec::new();
    for (width, height) in SIZES {
        let rgb = stretch(&source, width, height);
        for (name, format) in FORMATS {
            let frame = encode(format, &rgb)?;
            let frame_path = frames_dir.join(format!("{name}_{width}x{height}.raw"));
            std::fs::write(&frame_path, &frame).with_context(|| frame_path.display().to_string())?;
            eprintln!("bench: {name} {width}x{height} ...");
            let mut row = measure(name, format, &frame, &rgb, repeats)?;
            row.frame_path = frame_path.display().to_string();
            rows.push(row);
        }
    }

    let peer_run = if args.no_peers {
        eprintln!("bench: peers skipped (--no-peers)");
        None
    } else if let Some(python) = peer_python(&[".cache/venv-peers/bin/python", ".cache/venv/bin/python"]) {
        eprintln!("bench: OpenCV ...");
        let mut peer_args: Vec<OsString> = vec!["--repeats".into(), repeats.to_string().into()];
        for row in &rows {
            peer_args.push(format!("{}:{}:{}:{}", row.format, row.width, row.height, row.frame_path).into());
        }
        match peer(&python, PEER_SCRIPT, &peer_args).and_then(|v: Value| Ok(serde_json::from_value::<PeerRun>(v)?)) {
            Ok(run) => Some(run),
            Err(e) => {
                eprintln!("bench: OpenCV failed: {e:#}");
                None
            }
        }
    } else {
        eprintln!("bench: no Python with OpenCV (runtime/bench/setup-peers.sh); reporting lookout alone");
        None
    };
    if let Some(run) = &peer_run {
        for row in &mut rows {
            let Some(result) = run.results.iter().find(|r| r.frame == row.frame_path) else { continue };
            let theirs = std::fs::read(&result.output).with_context(|| result.output.clone())?;
            row.peer_ms_p50 = Some(result.ms_p50);
            if theirs.len() == row.output.len() {
                row.peer_max_difference = row.output.iter().zip(&theirs).map(|(a, b)| a.abs_diff(*b)).max();
                row.peer_mean_difference = Some(mean_difference(&row.output, &theirs));
            }
        }
    }

    let markdown = report_markdown(&rows, peer_run.as_ref(), repeats, &photo.display().to_string());
    write_report(
        &args.out,
        &markdown,
        &Report { repeats, source: photo.display().to_string(), rows: &rows, peer: peer_run.as_ref() },
    )
}

/// Converts `frame` `repeats` times into one reused image, after a warm-up that lets the image reach its size;
/// allocations are counted over the timed conversions only.
fn measure(
    name: &'static str,
    format: PixelFormat,
    frame: &[u8],
    source: &RgbImage,
    repeats: usize,
) -> anyhow::Result<Row> {
    let (width, height) = (source.width, source.height);
    let mut image = RgbImage::default();
    for _ in 0..WARM_UP {
        convert_frame(format, frame, width, height, &mut image).with_context(|| format!("{name} {width}x{height}"))?;
    }
    let mut times: Vec<f64> = Vec::with_capacity(repeats);
    let before = allocations();
    for _ in 0..repeats {
        let started = Instant::now();
        convert_frame(format, frame, width, height, &mut image)?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let allocations_per_frame = (allocations() - before) as f64 / repeats as f64;
    let ms_p50 = median(times.iter().copied());
    let ms_p95 = percentile(times.iter().copied(), 0.95);
    Ok(Row {
        format: name,
        width,
        height,
        frame_bytes: frame.len(),
        ms_p50,
        ms_p95,
        megapixels_per_s: f64::from(width) * f64::from(height) / 1e6 / (ms_p50 / 1e3),
        allocations_per_frame,
        mean_error_vs_source: mean_difference(&image.data, &source.data),
        peer_ms_p50: None,
        peer_max_difference: None,
        peer_mean_difference: None,
        output: image.data,
        frame_path: String::new(),
    })
}

fn mean_difference(a: &[u8], b: &[u8]) -> f64 {
    a.iter().zip(b).map(|(x, y)| f64::from(x.abs_diff(*y))).sum::<f64>() / a.len().max(1) as f64
}

/// The photo stretched to exactly `width`×`height` by nearest neighbour, as a camera frame's content.
fn stretch(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let mut out = RgbImage::new(width, height);
    let (sw, sh) = (image.width as usize, image.height as usize);
    for y in 0..height as usize {
        let sy = y * sh / height as usize;
        for x in 0..width as usize {
            let sx = x * sw / width as usize;
            let at = (y * width as usize + x) * 3;
            out.data[at..at + 3].copy_from_slice(&image.data[(sy * sw + sx) * 3..(sy * sw + sx) * 3 + 3]);
        }
    }
    out
}

/// BT.601 limited range, the inverse of what the converters read.
fn rgb_to_yuv(rgb: &[u8]) -> [i32; 3] {
    let (r, g, b) = (i32::from(rgb[0]), i32::from(rgb[1]), i32::from(rgb[2]));
    [
        ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16,
        ((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128,
        ((112 * r - 94 * g - 18 * b + 128) >> 8) + 128,
    ]
}

/// The frame a camera delivering `format` would hand over for `rgb`.
fn encode(format: PixelFormat, rgb: &RgbImage) -> anyhow::Result<Vec<u8>> {
    let (w, h) = (rgb.width as usize, rgb.height as usize);
    let px = |x: usize, y: usize| rgb_to_yuv(&rgb.data[(y * w + x) * 3..]);
    Ok(match format {
        PixelFormat::Rgb24 => rgb.data.clone(),
        PixelFormat::Yuyv => {
            let mut out = Vec::with_capacity(w * h * 2);
            for y in 0..h {
                for x in (0..w).step_by(2) {
                    let (a, b) = (px(x, y), px(x + 1, y));
                    out.extend([a[0], (a[1] + b[1] + 1) / 2, b[0], (a[2] + b[2] + 1) / 2].map(|v| v as u8));
                }
            }
            out
        }
        PixelFormat::Nv12 => {
            let mut out: Vec<u8> =
                (0..h).flat_map(|y| (0..w).map(move |x| (y, x))).map(|(y, x)| px(x, y)[0] as u8).collect();
            for y in (0..h).step_by(2) {
                for x in (0..w).step_by(2) {
                    let quad = [px(x, y), px(x + 1, y), px(x, y + 1), px(x + 1, y + 1)];
                    let average = |c: usize| ((quad.iter().map(|p| p[c]).sum::<i32>() + 2) / 4) as u8;
                    out.extend([average(1), average(2)]);
                }
            }
            out
        }
        PixelFormat::Mjpeg => {
            let mut out = Vec::new();
            jpeg_encoder::Encoder::new(&mut out, JPEG_QUALITY).encode(
                &rgb.data,
                w as u16,
                h as u16,
                jpeg_encoder::ColorType::Rgb,
            )?;
            out
        }
    })
}

fn report_markdown(rows: &[Row], peer: Option<&PeerRun>, repeats: usize, source: &str) -> String {
    let engine = peer.map_or("no peer".to_string(), |p| format!("{} with one thread", p.engine));
    let mut md = heading("frames", repeats, &format!("frames made from {source}, one thread; peer: {engine}"));
    md.push_str("| format | size | frame | ms p50 | ms p95 | Mpx/s | allocations/frame | error vs photo | OpenCV ms p50 | Lookout / OpenCV | max (mean) difference from OpenCV |\n");
    md.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        let peer_ms = r.peer_ms_p50.map_or("-".into(), |ms| format!("{ms:.3}"));
        let ratio = r.peer_ms_p50.filter(|&ms| ms > 0.0).map_or("-".into(), |ms| format!("{:.2}", r.ms_p50 / ms));
        let difference = match (r.peer_max_difference, r.peer_mean_difference) {
            (Some(max), Some(mean)) => format!("{max} ({mean:.3})"),
            _ => "-".into(),
        };
        md.push_str(&format!(
            "| {} | {}x{} | {:.0} KiB | {:.3} | {:.3} | {:.0} | {} | {:.2} | {peer_ms} | {ratio} | {difference} |\n",
            r.format,
            r.width,
            r.height,
            r.frame_bytes as f64 / 1024.0,
            r.ms_p50,
            r.ms_p95,
            r.megapixels_per_s,
            r.allocations_per_frame,
            r.mean_error_vs_source
        ));
    }
    md.push_str(
        "\nAllocations are counted on the converting thread over the timed runs, after a warm-up of 3 conversions \
         into the same image. The error column is the mean absolute difference (0-255 per channel) from the photo \
         the frame was made from; the last column compares Lookout's RGB with OpenCV's on the same frame.\n",
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_made_from_a_photo_convert_back_close_to_it() {
        let mut photo = RgbImage::new(64, 48);
        for (i, px) in photo.data.chunks_exact_mut(3).enumerate() {
            px.copy_from_slice(&[(i % 64 * 4) as u8, (i / 64 * 5) as u8, 128]);
        }
        for (name, format) in FORMATS {
            let frame = encode(format, &photo).unwrap();
            let row = measure(name, format, &frame, &photo, 3).unwrap();
            assert!(row.mean_error_vs_source < 3.0, "{name}: {}", row.mean_error_vs_source);
            if format != PixelFormat::Mjpeg {
                assert_eq!(row.allocations_per_frame, 0.0, "{name}");
            }
        }
    }
}
