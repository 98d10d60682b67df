//! The board's push-to-talk button and status LED (`[gpio]` in the configuration): the button holds push-to-talk
//! while pressed, the LED shows idle, listening, thinking or error. Polled every 10 ms on a thread of its own.

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use lookout_device::button_led::{open_button, open_led, ButtonEvent, GpioButton, GpioLed, LedState};
use serde_json::json;

use super::state::Shared;
use crate::config::Config;

const POLL: Duration = Duration::from_millis(10);
/// Reads in a row a button must agree on before a press or release counts (30 ms).
const STABLE_POLLS: u32 = 3;

pub struct Panel {
    button: Option<GpioButton>,
    led: Option<GpioLed>,
}

/// Opens the configured lines; `None` when the board has no GPIO (`chip = "none"`) or names no line.
pub fn open(config: &Config) -> anyhow::Result<Option<Panel>> {
    let gpio = &config.gpio;
    if gpio.chip == "none" || (gpio.button.is_none() && gpio.led.is_none()) {
        return Ok(None);
    }
    let chip = Path::new(&gpio.chip);
    let button = match gpio.button {
        Some(line) => {
            Some(open_button(chip, line, gpio.button_active_low, STABLE_POLLS).with_context(|| "gpio.button")?)
        }
        None => None,
    };
    let led = match gpio.led {
        Some(line) => Some(open_led(chip, line).with_context(|| "gpio.led")?),
        None => None,
    };
    Ok(Some(Panel { button, led }))
}

/// Polls the button and drives the LED until the daemon stops; the LED is left off.
pub fn run(mut panel: Panel, shared: Arc<Shared>) {
    let mut reported = false;
    while !shared.stopping() {
        if let Some(button) = panel.button.as_mut() {
            match button.poll() {
                Ok(Some(event)) => {
                    let held = event == ButtonEvent::Pressed;
                    shared.push_to_talk.store(held, Relaxed);
                    shared.events.emit("push_to_talk", json!({ "held": held, "from": "button" }));
                }
                Ok(None) => {}
                Err(e) if !reported => {
                    shared.events.emit("error", json!({ "stage": "gpio", "error": e.to_string() }));
                    reported = true;
                }
                Err(_) => {}
            }
        }
        if let Some(led) = panel.led.as_mut() {
            let state = if shared.heartbeats.stalled(shared.now_ms(), shared.stall_limit()).is_some() {
                LedState::Error
            } else if shared.push_to_talk.load(Relaxed) || shared.hearing.load(Relaxed) {
                LedState::Listening
            } else if shared.thinking.load(Relaxed) {
                LedState::Thinking
            } else {
                LedState::Idle
            };
            let _ = led.show(state, shared.now_ms());
        }
        std::thread::sleep(POLL);
    }
    if let Some(led) = panel.led.as_mut() {
        let _ = led.off();
    }
}
