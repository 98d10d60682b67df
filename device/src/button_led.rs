//! The push-to-talk button and the status LED, written against `embedded-hal`'s pin traits so the same code
//! drives a GPIO character-device line (`linux-embedded-hal`'s `CdevPin`, opened here by chip and line) and a test
//! pin. The button is debounced by consecutive equal reads; the LED shows one blink pattern per state.

use embedded_hal::digital::{InputPin, OutputPin};

use crate::{DeviceError, ErrorKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ButtonEvent {
    Pressed,
    Released,
}

/// A button read every poll; a change counts once it has read the same for `stable_polls` polls in a row.
pub struct Button<P: InputPin> {
    pin: P,
    active_low: bool,
    stable_polls: u32,
    pressed: bool,
    candidate_for: u32,
}

fn pin_error(what: &str, err: impl core::fmt::Debug) -> DeviceError {
    DeviceError::new(ErrorKind::Other, format!("{what}: {err:?}"))
}

impl<P: InputPin> Button<P> {
    pub fn new(pin: P, active_low: bool, stable_polls: u32) -> Button<P> {
        Button { pin, active_low, stable_polls: stable_polls.max(1), pressed: false, candidate_for: 0 }
    }

    pub fn is_pressed(&self) -> bool {
        self.pressed
    }

    /// Reads the pin once; returns the debounced edge, if this read completed one.
    pub fn poll(&mut self) -> Result<Option<ButtonEvent>, DeviceError> {
        let high = self.pin.is_high().map_err(|e| pin_error("button", e))?;
        let down = high != self.active_low;
        if down == self.pressed {
            self.candidate_for = 0;
            return Ok(None);
        }
        self.candidate_for += 1;
        if self.candidate_for < self.stable_polls {
            return Ok(None);
        }
        self.candidate_for = 0;
        self.pressed = down;
        Ok(Some(if down { ButtonEvent::Pressed } else { ButtonEvent::Released }))
    }
}

/// What the LED tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedState {
    /// A short blink every 2 s.
    Idle,
    /// Steady on while a question is being heard.
    Listening,
    /// 4 blinks a second while the models work on an answer.
    Thinking,
    /// On 1 s, off 1 s, with the pipeline stalled or a device gone.
    Error,
}

impl LedState {
    /// Whether the LED is on `ms` milliseconds into the state.
    pub fn lit(self, ms: u64) -> bool {
        match self {
            LedState::Idle => ms % 2000 < 100,
            LedState::Listening => true,
            LedState::Thinking => ms % 250 < 125,
            LedState::Error => ms % 2000 < 1000,
        }
    }
}

/// An LED showing a state's pattern; `show` is called regularly with the time, and writes the pin only on a change.
pub struct Led<P: OutputPin> {
    pin: P,
    state: LedState,
    since_ms: u64,
    lit: Option<bool>,
}

impl<P: OutputPin> Led<P> {
    pub fn new(pin: P) -> Led<P> {
        Led { pin, state: LedState::Idle, since_ms: 0, lit: None }
    }

    /// Turns the LED off (when the daemon stops).
    pub fn off(&mut self) -> Result<(), DeviceError> {
        self.pin.set_low().map_err(|e| pin_error("LED", e))?;
        self.lit = Some(false);
        Ok(())
    }

    pub fn show(&mut self, state: LedState, now_ms: u64) -> Result<(), DeviceError> {
        if state != self.state {
            self.state = state;
            self.since_ms = now_ms;
        }
        let lit = state.lit(now_ms.saturating_sub(self.since_ms));
        if self.lit != Some(lit) {
            if lit { self.pin.set_high() } else { self.pin.set_low() }.map_err(|e| pin_error("LED", e))?;
            self.lit = Some(lit);
        }
        Ok(())
    }
}

/// A button on a GPIO character-device line.
#[cfg(feature = "gpio")]
pub type GpioButton = Button<linux_embedded_hal::CdevPin>;
/// An LED on a GPIO character-device line.
#[cfg(feature = "gpio")]
pub type GpioLed = Led<linux_embedded_hal::CdevPin>;

#[cfg(feature = "gpio")]
pub fn open_button(
    chip: &std::path::Path,
    line: u32,
    active_low: bool,
    stable_polls: u32,
) -> Result<GpioButton, DeviceError> {
    Ok(Button::new(open_line(chip, line, false)?, active_low, stable_polls))
}

#[cfg(feature = "gpio")]
pub fn open_led(chip: &std::path::Path, line: u32) -> Result<GpioLed, DeviceError> {
    Ok(Led::new(open_line(chip, line, true)?))
}

/// Requests `line` of the GPIO chip at `chip` as an input (the button) or an output (the LED, starting off).
#[cfg(feature = "gpio")]
fn open_line(chip: &std::path::Path, line: u32, output: bool) -> Result<linux_embedded_hal::CdevPin, DeviceError> {
    use linux_embedded_hal::gpio_cdev::{Chip, LineRequestFlags};
    let what = format!("{} line {line}", chip.display());
    let cdev = |e: linux_embedded_hal::gpio_cdev::Error| {
        let kind = if chip.exists() { ErrorKind::Other } else { ErrorKind::NotFound };
        DeviceError::new(kind, format!("{what}: {e}"))
    };
    let mut chip_handle = Chip::new(chip).map_err(cdev)?;
    let handle = if output {
        chip_handle.get_line(line).map_err(cdev)?.request(LineRequestFlags::OUTPUT, 0, "lookout-led")
    } else {
        chip_handle.get_line(line).map_err(cdev)?.request(LineRequestFlags::INPUT, 0, "lookout-button")
    }
    .map_err(cdev)?;
    linux_embedded_hal::CdevPin::new(handle).map_err(cdev)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use embedded_hal::digital::{ErrorType, InputPin, OutputPin};

    use super::*;

    /// A pin whose level the test sets, and which records what is written to it.
    #[derive(Clone, Default)]
    struct TestPin(Rc<RefCell<(bool, Vec<bool>)>>);

    impl ErrorType for TestPin {
        type Error = core::convert::Infallible;
    }

    impl InputPin for TestPin {
        fn is_high(&mut self) -> Result<bool, Self::Error> {
            Ok(self.0.borrow().0)
        }
        fn is_low(&mut self) -> Result<bool, Self::Error> {
            Ok(!self.0.borrow().0)
        }
    }

    impl OutputPin for TestPin {
        fn set_high(&mut self) -> Result<(), Self::Error> {
            self.0.borrow_mut().1.push(true);
            Ok(())
        }
        fn set_low(&mut self) -> Result<(), Self::Error> {
            self.0.borrow_mut().1.push(false);
            Ok(())
        }
    }

    #[test]
    fn an_active_low_button_reports_each_edge_once_after_bounces_settle() {
        let pin = TestPin::default();
        pin.0.borrow_mut().0 = true; // released: pulled up
        let mut button = Button::new(pin.clone(), true, 3);
        let mut events = Vec::new();
        // Contact bounce, then held down for a while, then bounce on release.
        for level in
            [false, true, false, false, true, false, false, false, false, false, true, false, true, true, true, true]
        {
            pin.0.borrow_mut().0 = level;
            if let Some(e) = button.poll().unwrap() {
                events.push(e);
            }
        }
        assert_eq!(events, [ButtonEvent::Pressed, ButtonEvent::Released]);
        assert!(!button.is_pressed());
    }

    #[test]
    fn the_led_shows_each_states_pattern_and_writes_only_changes() {
        let pin = TestPin::default();
        let mut led = Led::new(pin.clone());
        for ms in (0..2000).step_by(50) {
            led.show(LedState::Idle, ms).unwrap();
        }
        assert_eq!(pin.0.borrow().1, [true, false], "one short blink in 2 s of idling");
        pin.0.borrow_mut().1.clear();
        for ms in (2000..3000).step_by(25) {
            led.show(LedState::Thinking, ms).unwrap();
        }
        assert_eq!(pin.0.borrow().1.iter().filter(|&&on| on).count(), 4, "4 blinks a second while thinking");
        pin.0.borrow_mut().1.clear();
        for ms in (3000..4000).step_by(100) {
            led.show(LedState::Listening, ms).unwrap();
        }
        assert_eq!(pin.0.borrow().1, [true], "steady on while listening");
        assert!(LedState::Error.lit(500) && !LedState::Error.lit(1500));
    }

    #[cfg(feature = "gpio")]
    #[test]
    fn a_missing_chip_is_not_found() {
        let err = open_line(std::path::Path::new("/dev/gpiochip-missing"), 4, false).err().unwrap();
        assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
    }
}
