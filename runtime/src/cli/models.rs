//! `lookout models list | verify | inspect | measure | kernels | compile`: what the bundles hold, whether every file
//! matches its manifest, what a GGUF file holds and whether Lookout can use it, and the compiled graphs that load fast.

use clap::Subcommand;
use lookout_models::bundle::{Bundle, FileStatus};
use serde::Serialize;

use super::{print_json, Context};

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// List bundles and their components.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Re-hash every file of the bundle; a missing or corrupt file is reported by name.
    Verify {
        #[arg(long)]
        json: bool,
    },
    /// Measure each stage's resident and working memory on a worst-case input and record it in the manifest.
    Measure(super::measure::MeasureArgs),
    /// Which kernels each stage's graphs run on this CPU; with --stage and --runs, run that stage on fixed inputs.
    Kernels(super::kernels::KernelsArgs),
    /// Compile the decoders into graphs that load fast (tract's NNEF archive of the prepared model), next to their
    /// ONNX files, and record them in the manifest; current ones are kept unless --force.
    Compile {
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Read a GGUF file: architecture, hyperparameters, tensor types, tokenizer; checks that a decoder can be built.
    Inspect {
        /// The .gguf file.
        file: std::path::PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Serialize)]
struct GgufReport {
    file: String,
    version: u32,
    architecture: String,
    name: Option<String>,
    decoder: lookout_models::llm::gguf::LlamaConfig,
    tensors: usize,
    tensor_types: std::collections::BTreeMap<String, usize>,
    bytes: u64,
    vocabulary: usize,
    eos: u32,
    chat_template: bool,
}

fn inspect(file: &std::path::Path, json: bool) -> anyhow::Result<()> {
    use lookout_models::llm::{bpe::BpeTokenizer, gguf};
    let bad = |e: gguf::GgufError| crate::exit::BadInput(e.to_string());
    let g = gguf::Gguf::open(file).map_err(bad)?;
    let decoder = gguf::LlamaConfig::from_gguf(&g).map_err(bad)?;
    let tokenizer = BpeTokenizer::from_gguf(&g).map_err(bad)?;
    let mut tensor_types = std::collections::BTreeMap::new();
    for t in &g.tensors {
        *tensor_types.entry(gguf::type_name(t.ggml_type)).or_insert(0) += 1;
    }
    let report = GgufReport {
        file: file.display().to_string(),
        version: g.version,
        architecture: g.str("general.architecture").unwrap_or_default().to_string(),
        name: g.str("general.name").ok().map(str::to_string),
        tensors: g.tensors.len(),
        tensor_types,
        bytes: g.tensors.iter().map(|t| t.bytes).sum(),
        vocabulary: tokenizer.vocab_size(),
        eos: tokenizer.eos,
        chat_template: g.str("tokenizer.chat_template").is_ok(),
        decoder,
    };
    if json {
        return print_json(&report);
    }
    let d = &report.decoder;
    println!(
        "{}: GGUF v{}, {} ({})",
        report.file,
        report.version,
        report.architecture,
        report.name.as_deref().unwrap_or("unnamed")
    );
    println!(
        "  {} layers, width {}, {} heads ({} key/value), feed-forward {}, vocabulary {}, trained context {}",
        d.n_layers, d.d_model, d.n_heads, d.n_kv_heads, d.d_ff, d.n_vocab, d.n_ctx_train
    );
    let types: Vec<String> = report.tensor_types.iter().map(|(t, n)| format!("{n} {t}")).collect();
    println!("  {} tensors ({}), {:.1} MB of weights", report.tensors, types.join(", "), report.bytes as f64 / 1e6);
    println!(
        "  tokenizer: byte-level BPE, eos {}, chat template {}",
        report.eos,
        if report.chat_template { "present" } else { "missing" }
    );
    Ok(())
}

#[derive(Serialize)]
struct BundleReport<'a> {
    name: &'a str,
    dir: String,
    description: &'a str,
    components: Vec<ComponentReport<'a>>,
}

#[derive(Serialize)]
struct ComponentReport<'a> {
    bundle: &'a str,
    name: &'a str,
    role: &'a str,
    variant: &'a str,
    file: &'a str,
    bytes: u64,
    license: &'a str,
    /// The row is the component's compiled graph, not its own file.
    compiled: bool,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    status: Option<FileStatus>,
}

pub fn run(ctx: &Context, command: ModelsCommand) -> anyhow::Result<()> {
    match command {
        ModelsCommand::Inspect { file, json } => inspect(&file, json),
        ModelsCommand::Measure(args) => super::measure::run(ctx, args),
        ModelsCommand::Kernels(args) => super::kernels::run(ctx, args),
        ModelsCommand::Compile { force, json } => {
            let mut bundle = ctx.open_bundle()?;
            let reports = lookout_models::compile::compile_bundle(&mut bundle, force)?;
            if json {
                return print_json(&reports);
            }
            for r in &reports {
                println!(
                    "{:<40} {:<45} {:>7.1} MiB  {} ({:.1} s)",
                    r.component,
                    r.file,
                    r.bytes as f64 / 1048576.0,
                    r.status,
                    r.ms / 1e3
                );
            }
            if reports.iter().any(|r| r.status == "compiled") {
                eprintln!("the memory plan needs the footprints measured again: run `lookout models measure`");
            }
            Ok(())
        }
        ModelsCommand::List { json } => {
            let bundles = Bundle::list(ctx.models_dir())?;
            if bundles.is_empty() {
                anyhow::bail!("no bundles in {}", ctx.models_dir().display());
            }
            if json {
                let listing: Vec<BundleReport> = bundles
                    .iter()
                    .map(|b| BundleReport {
                        name: &b.manifest.name,
                        dir: b.dir.display().to_string(),
                        description: &b.manifest.description,
                        components: report(b, false),
                    })
                    .collect();
                return print_json(&listing);
            }
            let rows: Vec<ComponentReport> = bundles.iter().flat_map(|b| report(b, false)).collect();
            for b in &bundles {
                println!("{} ({})  {}", b.manifest.name, b.dir.display(), b.manifest.description);
            }
            print_table(&rows);
            Ok(())
        }
        ModelsCommand::Verify { json } => {
            let bundle = ctx.open_bundle()?;
            let rows = report(&bundle, true);
            let bad: Vec<&ComponentReport> = rows.iter().filter(|r| r.status != Some(FileStatus::Ok)).collect();
            if json {
                print_json(&rows)?;
            } else {
                print_table(&rows);
            }
            if let Some(first) = bad.first() {
                let component =
                    bundle.manifest.components.iter().find(|c| c.name == first.name).expect("row of this bundle");
                let cause = if first.compiled {
                    bundle.checked_compiled_path(component, lookout_models::engine::ENGINE).err()
                } else {
                    bundle.checked_path(component).err()
                };
                let cause = cause
                    .map(anyhow::Error::new)
                    .unwrap_or_else(|| anyhow::anyhow!("{} changed during verification", first.file));
                return Err(cause.context(format!(
                    "bundle {}: {} of {} files failed verification",
                    bundle.manifest.name,
                    bad.len(),
                    rows.len()
                )));
            }
            Ok(())
        }
    }
}

fn report(bundle: &Bundle, check: bool) -> Vec<ComponentReport<'_>> {
    bundle
        .manifest
        .components
        .iter()
        .flat_map(|c| {
            let own = ComponentReport {
                bundle: &bundle.manifest.name,
                name: &c.name,
                role: &c.role,
                variant: &c.variant,
                file: &c.file,
                bytes: c.bytes,
                license: &c.license,
                compiled: false,
                status: check.then(|| bundle.check_file(c)),
            };
            let compiled = c.compiled.as_ref().map(|k| ComponentReport {
                file: &k.file,
                bytes: k.bytes,
                compiled: true,
                status: check
                    .then(|| lookout_models::bundle::check_file_at(&bundle.dir.join(&k.file), &k.sha256, k.bytes)),
                ..own
            });
            std::iter::once(own).chain(compiled)
        })
        .collect()
}

fn describe(status: Option<&FileStatus>, file: &str) -> String {
    match status {
        None | Some(FileStatus::Ok) => format!("{file}: ok"),
        Some(FileStatus::Missing) => format!("{file}: missing"),
        Some(FileStatus::SizeMismatch { expected, actual }) => format!("{file}: {actual} bytes, expected {expected}"),
        Some(FileStatus::HashMismatch { expected, actual }) => format!("{file}: sha256 {actual}, expected {expected}"),
        Some(FileStatus::Unreadable { reason }) => format!("{file}: unreadable: {reason}"),
    }
}

fn print_table(rows: &[ComponentReport]) {
    println!("{:<32} {:<14} {:<8} {:>12}  {:<10} status", "component", "role", "variant", "bytes", "license");
    for r in rows {
        let status = match &r.status {
            None => String::new(),
            Some(FileStatus::Ok) => "ok".into(),
            Some(other) => describe(Some(other), r.file),
        };
        let role = if r.compiled { "compiled" } else { r.role };
        println!("{:<32} {:<14} {:<8} {:>12}  {:<10} {}", r.name, role, r.variant, r.bytes, r.license, status);
    }
}
