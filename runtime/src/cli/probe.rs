//! `lookout probe [--json]`: the cameras with their formats, sizes and frame rates, the ALSA capture devices with
//! their rates, channels and sample formats, and the GPIO chips with their lines.

#[cfg(feature = "alsa")]
use lookout_device::alsa_capture::list_capture_devices;
use lookout_device::gpio::{chip_lines, list_chips};
#[cfg(feature = "v4l2")]
use lookout_device::v4l2::list_cameras;
use serde_json::{json, Value};

use super::print_json;

#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    #[arg(long)]
    json: bool,
}

pub fn run(args: ProbeArgs) -> anyhow::Result<()> {
    let (cameras, microphones) = (cameras(), microphones());
    let gpio: Vec<Value> = list_chips()
        .into_iter()
        .map(|chip| match chip {
            Ok(c) => {
                let lines: Vec<Value> = chip_lines(&c.path)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|l| json!({ "offset": l.offset, "name": l.name, "consumer": l.consumer, "used": l.used,
                                     "direction": if l.output { "output" } else { "input" }, "active_low": l.active_low }))
                    .collect();
                json!({ "path": c.path, "name": c.name, "label": c.label, "lines": c.lines, "line_info": lines })
            }
            Err(e) => json!({ "error": e.to_string() }),
        })
        .collect();
    if args.json {
        return print_json(
            &json!({ "cameras": cameras, "microphones": microphones, "gpio": gpio, "built_without": BUILT_WITHOUT }),
        );
    }
    println!("cameras (V4L2):");
    if !cfg!(feature = "v4l2") {
        println!("  not listed: this lookout was built without V4L2 (cargo feature `v4l2`)");
    } else if cameras.is_empty() {
        println!("  none: no /dev/video* capture device");
    }
    for c in &cameras {
        println!(
            "  {}  {}  (driver {}, {})",
            c["path"].as_str().unwrap_or_default(),
            c["card"].as_str().unwrap_or_default(),
            c["driver"].as_str().unwrap_or_default(),
            c["bus"].as_str().unwrap_or_default()
        );
        for f in c["formats"].as_array().into_iter().flatten() {
            let sizes: Vec<String> = f["sizes"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    let rates: Vec<String> = s["fps"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_f64)
                        .map(|r| format!("{r:.0}"))
                        .collect();
                    format!("{}x{}@{}", s["width"], s["height"], rates.join("/"))
                })
                .collect();
            let mark = if f["supported"] == true { "" } else { " (not read by Lookout)" };
            println!(
                "    {:<4} {}{mark}: {}",
                f["fourcc"].as_str().unwrap_or_default(),
                f["description"].as_str().unwrap_or_default(),
                sizes.join(", ")
            );
        }
    }
    println!("microphones (ALSA capture):");
    if !cfg!(feature = "alsa") {
        println!("  not listed: this lookout was built without ALSA (cargo feature `alsa`)");
    } else if microphones.is_empty() {
        println!("  none: no sound card with a capture device");
    }
    for m in &microphones {
        let range =
            |v: &Value, unit: &str| v.as_array().map_or("?".to_string(), |r| format!("{}-{}{unit}", r[0], r[1]));
        let formats: Vec<&str> = m["formats"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let note = m["note"].as_str().map(|n| format!(" ({n})")).unwrap_or_default();
        println!(
            "  {}  {}: {}  {}, {} channels, {}{note}",
            m["name"].as_str().unwrap_or_default(),
            m["card"].as_str().unwrap_or_default(),
            m["description"].as_str().unwrap_or_default(),
            range(&m["rates"], " Hz"),
            range(&m["channels"], ""),
            formats.join(" ")
        );
    }
    println!("GPIO chips:");
    if gpio.is_empty() {
        println!("  none: no /dev/gpiochip*");
    }
    for g in &gpio {
        match g["error"].as_str() {
            Some(e) => println!("  {e}"),
            None => {
                println!(
                    "  {}  {} ({}), {} lines",
                    g["path"].as_str().unwrap_or_default(),
                    g["name"].as_str().unwrap_or_default(),
                    g["label"].as_str().unwrap_or_default(),
                    g["lines"]
                );
                for l in g["line_info"].as_array().into_iter().flatten() {
                    let user = l["consumer"]
                        .as_str()
                        .filter(|c| !c.is_empty())
                        .map(|c| format!("  used by {c}"))
                        .unwrap_or_default();
                    let low = if l["active_low"] == true { " active-low" } else { "" };
                    println!(
                        "    {:>3} {:<20} {}{low}{user}",
                        l["offset"],
                        l["name"].as_str().filter(|n| !n.is_empty()).unwrap_or("-"),
                        l["direction"].as_str().unwrap_or_default()
                    );
                }
            }
        }
    }
    Ok(())
}

/// The drivers this binary was built without (`probe --json` lists them; their devices are not listed).
const BUILT_WITHOUT: &[&str] = &[
    #[cfg(not(feature = "v4l2"))]
    "v4l2",
    #[cfg(not(feature = "alsa"))]
    "alsa",
];

#[cfg(feature = "v4l2")]
fn cameras() -> Vec<Value> {
    list_cameras()
        .into_iter()
        .map(|c| {
            let formats: Vec<Value> = c
                .formats
                .iter()
                .map(|f| {
                    let sizes: Vec<Value> = f.sizes.iter().map(|(w, h, fps)| json!({ "width": w, "height": h, "fps": fps })).collect();
                    json!({ "fourcc": f.fourcc, "description": f.description, "supported": f.supported, "sizes": sizes })
                })
                .collect();
            json!({ "path": c.path, "card": c.card, "driver": c.driver, "bus": c.bus, "formats": formats })
        })
        .collect()
}

#[cfg(not(feature = "v4l2"))]
fn cameras() -> Vec<Value> {
    Vec::new()
}

#[cfg(feature = "alsa")]
fn microphones() -> Vec<Value> {
    list_capture_devices()
        .into_iter()
        .map(|m| {
            json!({ "name": m.name, "card": m.card, "description": m.description,
                    "rates": m.rates.map(|(lo, hi)| [lo, hi]), "channels": m.channels.map(|(lo, hi)| [lo, hi]),
                    "formats": m.formats, "note": m.note })
        })
        .collect()
}

#[cfg(not(feature = "alsa"))]
fn microphones() -> Vec<Value> {
    Vec::new()
}
