//! Where a command or the daemon finds its model bundle: the command line's models directory and bundle name, or
//! what a configuration names instead.

use std::path::{Path, PathBuf};

use lookout_models::bundle::{self, Bundle};

use crate::config::{Config, ConfigError};

/// Where the command finds its models.
pub struct Context {
    pub models_dir: PathBuf,
    pub bundle: String,
}

impl Context {
    pub fn open_bundle(&self) -> anyhow::Result<Bundle> {
        Ok(Bundle::locate(&self.models_dir, &self.bundle)?)
    }

    pub fn models_dir(&self) -> &Path {
        &self.models_dir
    }
}

/// The bundle the configuration names (its `models.dir`, else the command line's or the default directory).
pub fn open_config_bundle(ctx: &Context, config: &Config) -> anyhow::Result<Bundle> {
    let dir = match &config.models.dir {
        Some(dir) => dir.clone(),
        None => ctx.models_dir.clone(),
    };
    let name = if config.models.bundle != bundle::DEFAULT_BUNDLE { &config.models.bundle } else { &ctx.bundle };
    Ok(Bundle::locate(&dir, name)?)
}

/// Checks that every label `[objects.filters]` names is one the bundle's detector reports.
pub fn check_label_filters(config: &Config, bundle: &Bundle, path: &Path) -> anyhow::Result<()> {
    if config.objects.filters.is_empty() || !config.stage_enabled("vision") {
        return Ok(());
    }
    let labels_file = bundle.checked_path(bundle.component("object-labels", None)?)?;
    let labels = std::fs::read_to_string(&labels_file)?;
    let known: Vec<&str> = labels.lines().map(str::trim).collect();
    match config.objects.filters.keys().find(|l| !known.contains(&l.as_str())) {
        Some(unknown) => Err(ConfigError::Field {
            path: path.to_path_buf(),
            field: "objects.filters".into(),
            reason: format!("`{unknown}` is not one of the detector's labels ({})", labels_file.display()),
        }
        .into()),
        None => Ok(()),
    }
}
