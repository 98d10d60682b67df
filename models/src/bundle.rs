//! Model bundles: a directory with a `manifest.toml` naming every component, its file, hash, I/O and parameters.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ModelError, Result};

/// Name of the bundle used when none is given.
pub const DEFAULT_BUNDLE: &str = "default";
const MANIFEST: &str = "manifest.toml";

/// The manifest of one bundle, as written by the model preparation.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(rename = "component", default)]
    pub components: Vec<Component>,
    /// Memory each stage takes, measured on real inputs after preparation (`lookout models measure`).
    #[serde(rename = "footprint", default, skip_serializing_if = "Vec::is_empty")]
    pub footprints: Vec<Footprint>,
}

/// The resident memory one pipeline stage takes once loaded, and what one run of it adds at its peak.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Footprint {
    /// `vad`, `speech`, `vision`, `vision-ocr`, `decoder`.
    pub stage: String,
    pub variant: String,
    /// Resident set growth from loading the stage's models and running them once, MiB.
    pub resident_mib: f64,
    /// Peak resident growth while loading (parsing and optimizing the graphs), MiB.
    #[serde(default)]
    pub load_peak_mib: f64,
    /// Peak resident growth during one worst-case run beyond `resident_mib`, MiB.
    pub working_mib: f64,
    /// What the run was (for the decoder: how many tokens it held, the rest of its context is added by the plan).
    pub input: String,
    #[serde(default)]
    pub tokens: usize,
    /// For speech: the encoder window the run used, seconds.
    #[serde(default)]
    pub window_s: u32,
    /// Architecture it was measured on (`x86_64`, `aarch64`).
    pub arch: String,
}

/// One file of a bundle and everything needed to use it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    pub name: String,
    /// What the component does: `vad`, `asr-encoder`, `asr-decoder`, `asr-tokenizer`, ...
    pub role: String,
    /// `int8`, `f32`, ... (`any` where the component has one form only).
    pub variant: String,
    /// Path relative to the bundle directory.
    pub file: String,
    pub sha256: String,
    pub bytes: u64,
    #[serde(default)]
    pub license: String,
    #[serde(default)]
    pub sources: Vec<String>,
    #[serde(default)]
    pub inputs: Vec<TensorSpec>,
    #[serde(default)]
    pub outputs: Vec<TensorSpec>,
    #[serde(default)]
    pub params: BTreeMap<String, toml::Value>,
    /// The graph in a form that loads fast (`lookout models compile`), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compiled: Option<Compiled>,
}

/// A component's graph as tract's NNEF archive of the model already parsed, typed, decluttered and transformed:
/// loading it leaves only kernel selection and weight packing. It is tied to the exact source file and engine
/// version it was made from, and refused when either differs.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Compiled {
    /// Path relative to the bundle directory.
    pub file: String,
    pub sha256: String,
    pub bytes: u64,
    /// sha256 of the component's own file when it was compiled.
    pub source_sha256: String,
    /// The engine that wrote it (`tract 0.23.9`).
    pub engine: String,
}

/// A named model input or output; dimensions are numbers or symbol expressions.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<String>,
}

/// The state of one component's file on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum FileStatus {
    Ok,
    Missing,
    SizeMismatch { expected: u64, actual: u64 },
    HashMismatch { expected: String, actual: String },
    Unreadable { reason: String },
}

/// An opened bundle: its directory and manifest.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

/// Where models live when neither `--models` nor `LOOKOUT_MODELS` says: `$XDG_DATA_HOME/lookout/models`
/// (`~/.local/share/lookout/models`), else the system-wide `/var/lib/lookout/models`.
pub fn default_models_dir() -> PathBuf {
    let user = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .map(|d| d.join("lookout/models"));
    match user {
        Some(dir) if dir.exists() => dir,
        _ if Path::new("/var/lib/lookout/models").exists() => PathBuf::from("/var/lib/lookout/models"),
        Some(dir) => dir,
        None => PathBuf::from("/var/lib/lookout/models"),
    }
}

/// The models directory: the explicit flag, else `LOOKOUT_MODELS`, else [`default_models_dir`].
pub fn resolve_models_dir(flag: Option<&Path>) -> PathBuf {
    if let Some(dir) = flag {
        return dir.to_path_buf();
    }
    match std::env::var_os("LOOKOUT_MODELS") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => default_models_dir(),
    }
}

impl Bundle {
    /// Opens `dir` itself when it holds a manifest, else the bundle `name` inside it.
    pub fn locate(models_dir: &Path, name: &str) -> Result<Bundle> {
        if models_dir.join(MANIFEST).is_file() {
            return Bundle::open(models_dir);
        }
        Bundle::open(&models_dir.join(name))
    }

    /// Lists the bundles in a models directory (or the one bundle it is).
    pub fn list(models_dir: &Path) -> Result<Vec<Bundle>> {
        if models_dir.join(MANIFEST).is_file() {
            return Ok(vec![Bundle::open(models_dir)?]);
        }
        let entries = fs::read_dir(models_dir).map_err(|_| ModelError::BundleNotFound(models_dir.to_path_buf()))?;
        let mut bundles = Vec::new();
        for entry in entries.flatten() {
            if entry.path().join(MANIFEST).is_file() {
                bundles.push(Bundle::open(&entry.path())?);
            }
        }
        bundles.sort_by(|a, b| a.manifest.name.cmp(&b.manifest.name));
        Ok(bundles)
    }

    pub fn open(dir: &Path) -> Result<Bundle> {
        let path = dir.join(MANIFEST);
        if !path.is_file() {
            return Err(ModelError::BundleNotFound(dir.to_path_buf()));
        }
        let text = fs::read_to_string(&path).map_err(|source| ModelError::Io { path: path.clone(), source })?;
        let manifest: Manifest = toml::from_str(&text)
            .map_err(|e| ModelError::BadManifest { path: path.clone(), reason: e.message().to_string() })?;
        if manifest.format != 1 {
            return Err(ModelError::BadManifest { path, reason: format!("unsupported format {}", manifest.format) });
        }
        for c in &manifest.components {
            let relative = Path::new(&c.file);
            if relative.is_absolute() || relative.components().any(|p| matches!(p, std::path::Component::ParentDir)) {
                return Err(ModelError::BadManifest {
                    path,
                    reason: format!("component `{}`: file `{}` must stay inside the bundle", c.name, c.file),
                });
            }
        }
        Ok(Bundle { dir: dir.to_path_buf(), manifest })
    }

    /// Replaces the bundle's measured footprints and rewrites its manifest.
    pub fn write_footprints(&mut self, footprints: Vec<Footprint>) -> Result<()> {
        self.manifest.footprints = footprints;
        self.write_manifest()
    }

    /// Rewrites the manifest from `self.manifest` atomically: a new file, written and synced, renamed over it. When
    /// any step fails (a full disk, say) the manifest is left as it was and the new file is removed.
    pub fn write_manifest(&self) -> Result<()> {
        use std::io::Write as _;
        let path = self.dir.join(MANIFEST);
        let text = toml::to_string_pretty(&self.manifest)
            .map_err(|e| ModelError::BadManifest { path: path.clone(), reason: e.to_string() })?;
        let temporary = self.dir.join(format!("{MANIFEST}.new"));
        let written = fs::File::create(&temporary)
            .and_then(|mut file| file.write_all(text.as_bytes()).and_then(|()| file.sync_all()))
            .and_then(|()| fs::rename(&temporary, &path));
        written.map_err(|source| {
            let _ = fs::remove_file(&temporary);
            ModelError::Io { path, source }
        })
    }

    /// The measured footprints of a stage in a variant.
    pub fn footprints(&self, stage: &str, variant: &str) -> Vec<&Footprint> {
        self.manifest.footprints.iter().filter(|f| f.stage == stage && f.variant == variant).collect()
    }

    pub fn path_of(&self, component: &Component) -> PathBuf {
        self.dir.join(&component.file)
    }

    /// The variants offered for a role, in manifest order.
    pub fn variants(&self, role: &str) -> Vec<&str> {
        self.manifest.components.iter().filter(|c| c.role == role).map(|c| c.variant.as_str()).collect()
    }

    /// The component with this role, of this variant when one is asked for, else the first listed.
    pub fn component(&self, role: &str, variant: Option<&str>) -> Result<&Component> {
        let mut with_role = self.manifest.components.iter().filter(|c| c.role == role);
        let found = match variant {
            Some(v) => with_role.find(|c| c.variant == v || c.variant == "any"),
            None => with_role.next(),
        };
        found.ok_or_else(|| ModelError::NoComponent {
            role: role.to_string(),
            variant: variant.map(str::to_string),
            available: self.variants(role).join(", "),
        })
    }

    /// Re-hashes a component's file against the manifest.
    pub fn check_file(&self, component: &Component) -> FileStatus {
        check_file_at(&self.path_of(component), &component.sha256, component.bytes)
    }

    /// Checks a component's file before it is loaded and returns its path; any mismatch is an error naming it.
    pub fn checked_path(&self, component: &Component) -> Result<PathBuf> {
        self.checked(&component.name, &component.file, &component.sha256, component.bytes)
    }

    /// The component's compiled graph, checked like a component file and against the source it was made from
    /// and the engine that reads it; `None` when the bundle has no compiled form of it.
    pub fn checked_compiled_path(&self, component: &Component, engine: &str) -> Result<Option<PathBuf>> {
        let Some(compiled) = &component.compiled else { return Ok(None) };
        let path = self.checked(&component.name, &compiled.file, &compiled.sha256, compiled.bytes)?;
        let stale = |reason: String| ModelError::StaleCompiled {
            component: component.name.clone(),
            path: path.clone(),
            reason,
        };
        if compiled.engine != engine {
            return Err(stale(format!("it was written by {} and this is {engine}", compiled.engine)));
        }
        if !compiled.source_sha256.eq_ignore_ascii_case(&component.sha256) {
            return Err(stale(format!(
                "it was compiled from another {} (sha256 {})",
                component.file, compiled.source_sha256
            )));
        }
        Ok(Some(path))
    }

    fn checked(&self, name: &str, file: &str, sha256: &str, bytes: u64) -> Result<PathBuf> {
        let path = self.dir.join(file);
        let name = name.to_string();
        match self.check_before_load(file, sha256, bytes) {
            FileStatus::Ok => Ok(path),
            FileStatus::Missing => Err(ModelError::MissingFile { component: name, path }),
            FileStatus::SizeMismatch { expected, actual } => {
                Err(ModelError::SizeMismatch { component: name, path, expected, actual })
            }
            FileStatus::HashMismatch { expected, actual } => {
                Err(ModelError::HashMismatch { component: name, path, expected, actual })
            }
            FileStatus::Unreadable { reason } => Err(ModelError::Io { path, source: std::io::Error::other(reason) }),
        }
    }
}

impl Component {
    pub fn param_f64(&self, key: &str) -> Result<f64> {
        match self.params.get(key) {
            Some(toml::Value::Integer(i)) => Ok(*i as f64),
            Some(toml::Value::Float(f)) => Ok(*f),
            _ => Err(self.bad_param(key)),
        }
    }

    pub fn param_usize(&self, key: &str) -> Result<usize> {
        match self.params.get(key) {
            // A value past the address space (2^32 and up on a 32-bit board) is refused, never truncated.
            Some(toml::Value::Integer(i)) => usize::try_from(*i).map_err(|_| self.bad_param(key)),
            _ => Err(self.bad_param(key)),
        }
    }

    pub fn param_ids(&self, key: &str) -> Result<Vec<u32>> {
        match self.params.get(key) {
            Some(toml::Value::Array(items)) => items
                .iter()
                .map(|v| v.as_integer().and_then(|i| u32::try_from(i).ok()).ok_or_else(|| self.bad_param(key)))
                .collect(),
            None => Ok(Vec::new()),
            _ => Err(self.bad_param(key)),
        }
    }

    pub fn param_str(&self, key: &str) -> Result<&str> {
        self.params.get(key).and_then(|v| v.as_str()).ok_or_else(|| self.bad_param(key))
    }

    /// Three numbers, one per colour channel.
    pub fn param_rgb(&self, key: &str) -> Result<[f32; 3]> {
        self.param_numbers(key)
    }

    /// An array of exactly `N` numbers (integers or floats).
    pub fn param_numbers<const N: usize>(&self, key: &str) -> Result<[f32; N]> {
        let values: Vec<f32> = match self.params.get(key) {
            Some(toml::Value::Array(items)) => items
                .iter()
                .map(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)).map(|f| f as f32))
                .collect::<Option<_>>()
                .ok_or_else(|| self.bad_param(key))?,
            _ => return Err(self.bad_param(key)),
        };
        values.try_into().map_err(|_| self.bad_param(key))
    }

    fn bad_param(&self, key: &str) -> ModelError {
        ModelError::BadParam { component: self.name.clone(), param: key.to_string() }
    }
}

/// What a file looked like when its sha256 was last checked in full: a file whose size, modification time and
/// inode still match it is not hashed again before loading (`sha256sum` takes 1.4 s over the q4 decoder's files on a
/// 2-core machine). `lookout models verify` always hashes in full.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
struct Checked {
    sha256: String,
    bytes: u64,
    modified_ns: u128,
    inode: u64,
}

/// The record of full checks, one per bundle, next to its manifest.
const CHECKED: &str = ".checked.json";

impl Checked {
    fn of(path: &Path, sha256: &str) -> Option<Checked> {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(path).ok()?;
        let modified_ns = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos();
        Some(Checked { sha256: sha256.to_ascii_lowercase(), bytes: meta.len(), modified_ns, inode: meta.ino() })
    }
}

impl Bundle {
    fn checked_record(&self) -> BTreeMap<String, Checked> {
        fs::read_to_string(self.dir.join(CHECKED)).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default()
    }

    /// A file's status before it is loaded: `Ok` at once when it is unchanged since a full check found it right,
    /// else a full check, recorded when it passes (where the bundle directory is writable; else just checked).
    fn check_before_load(&self, file: &str, sha256: &str, bytes: u64) -> FileStatus {
        let path = self.dir.join(file);
        let now = Checked::of(&path, sha256);
        if now.is_some() && self.checked_record().get(file) == now.as_ref() {
            return FileStatus::Ok;
        }
        let status = check_file_at(&path, sha256, bytes);
        if let (FileStatus::Ok, Some(now)) = (&status, now) {
            // Components load on several threads: the record is read again and rewritten under one lock, so no
            // thread's entry is lost.
            static RECORD: std::sync::Mutex<()> = std::sync::Mutex::new(());
            let _held = RECORD.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut record = self.checked_record();
            record.insert(file.to_string(), now);
            let temporary = self.dir.join(format!("{CHECKED}.{}", std::process::id()));
            if let Ok(text) = serde_json::to_string_pretty(&record) {
                if fs::write(&temporary, text).is_ok() && fs::rename(&temporary, self.dir.join(CHECKED)).is_err() {
                    let _ = fs::remove_file(&temporary);
                }
            }
        }
        status
    }
}

/// Checks a file's size, then its sha256.
pub fn check_file_at(path: &Path, sha256: &str, bytes: u64) -> FileStatus {
    let meta = match fs::metadata(path) {
        Ok(m) if m.is_file() => m,
        Ok(_) | Err(_) => return FileStatus::Missing,
    };
    if meta.len() != bytes {
        return FileStatus::SizeMismatch { expected: bytes, actual: meta.len() };
    }
    match sha256_file(path) {
        Ok(actual) if actual.eq_ignore_ascii_case(sha256) => FileStatus::Ok,
        Ok(actual) => FileStatus::HashMismatch { expected: sha256.to_string(), actual },
        Err(e) => FileStatus::Unreadable { reason: e.to_string() },
    }
}

/// Lower-case hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_size_parameter_is_refused_rather_than_truncated() {
        let component: Component = toml::from_str(
            "name = \"c\"\nrole = \"r\"\nvariant = \"any\"\nfile = \"f\"\nsha256 = \"\"\nbytes = 0\n\
             [params]\nsmall = 640\nnegative = -1\nhuge = 4294967936\n",
        )
        .unwrap();
        assert_eq!(component.param_usize("small").unwrap(), 640);
        assert!(component.param_usize("negative").is_err());
        // 2^32 + 640: 640 once cut to 32 bits.
        assert_eq!(component.param_usize("huge").ok(), usize::try_from(4_294_967_936u64).ok());
    }

    /// The disk filling up while the manifest is rewritten: the error names the manifest, which is left whole, and
    /// no partial file stays behind. `/dev/full` stands in for the full disk: every write to it fails with ENOSPC.
    #[test]
    fn a_manifest_written_to_a_full_disk_is_left_as_it_was() {
        let dir = std::env::temp_dir().join(format!("lookout-manifest-full-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let original = "format = 1\nname = \"test\"\ndescription = \"before\"\n";
        fs::write(dir.join(MANIFEST), original).unwrap();
        let mut bundle = Bundle::open(&dir).unwrap();
        bundle.manifest.description = "after".into();
        let temporary = dir.join(format!("{MANIFEST}.new"));
        std::os::unix::fs::symlink("/dev/full", &temporary).unwrap();
        let err = bundle.write_manifest().unwrap_err();
        const ENOSPC: i32 = 28;
        assert!(
            matches!(&err, ModelError::Io { path, source } if path.ends_with(MANIFEST) && source.raw_os_error() == Some(ENOSPC)),
            "{err}"
        );
        assert_eq!(fs::read_to_string(dir.join(MANIFEST)).unwrap(), original);
        assert!(fs::symlink_metadata(&temporary).is_err(), "the new file was left behind");
        // With room on the disk the same write goes through.
        bundle.write_manifest().unwrap();
        assert!(fs::read_to_string(dir.join(MANIFEST)).unwrap().contains("after"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
