//! Exit codes by failure kind, so scripts and systemd can tell bad input from broken models from faults.

use lookout_models::audio::AudioError;
use lookout_models::vision::image::ImageError;
use lookout_models::ModelError;

use crate::config::ConfigError;
use crate::plan::OverBudget;

/// The command ran and failed for a reason not listed below.
pub const FAILURE: u8 = 1;
/// The input given (audio, image, text) cannot be used.
pub const BAD_INPUT: u8 = 3;
/// The model bundle is missing, incomplete or corrupt.
pub const BAD_MODELS: u8 = 4;
/// The configuration is invalid or its memory plan exceeds the budget (sysexits' EX_CONFIG; the systemd unit
/// does not restart on it).
pub const BAD_CONFIG: u8 = 78;

/// The error and its causes on one line; a part repeated inside a later cause is left out.
pub fn one_line(err: &anyhow::Error) -> String {
    let parts: Vec<String> = err.chain().map(|c| c.to_string().replace('\n', " ")).collect();
    let kept: Vec<&str> = parts
        .iter()
        .enumerate()
        .filter(|(i, p)| !parts[i + 1..].iter().any(|later| later.contains(p.as_str())))
        .map(|(_, p)| p.as_str())
        .collect();
    kept.join(": ")
}

/// A request the command refuses as given (an empty question, a sampling setting out of range).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

pub fn code_for(err: &anyhow::Error) -> u8 {
    let bad_input = |c: &(dyn std::error::Error + 'static)| {
        c.downcast_ref::<AudioError>().is_some()
            || c.downcast_ref::<ImageError>().is_some()
            || c.downcast_ref::<BadInput>().is_some()
    };
    if err.chain().any(bad_input) {
        return BAD_INPUT;
    }
    let bad_config = |c: &(dyn std::error::Error + 'static)| {
        c.downcast_ref::<ConfigError>().is_some() || c.downcast_ref::<OverBudget>().is_some()
    };
    if err.chain().any(bad_config) {
        return BAD_CONFIG;
    }
    match err.chain().find_map(|c| c.downcast_ref::<ModelError>()) {
        Some(ModelError::Audio(_))
        | Some(ModelError::UnknownLanguage(_))
        | Some(ModelError::PromptTooLong { .. })
        | Some(ModelError::BadRequest(_)) => BAD_INPUT,
        Some(ModelError::Run { .. }) | Some(ModelError::InvalidToken { .. }) | Some(ModelError::Cancelled) | None => {
            FAILURE
        }
        Some(_) => BAD_MODELS,
    }
}
