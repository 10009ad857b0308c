//! An SAE folder as SAELens reads it (`SAE.load_from_disk`): `sae_weights.safetensors`
//! (f32 tensors with SAELens' names and shapes) and SAELens' `cfg.json`, plus
//! saelab's own `saelab_config.json` (the training config, which `load` reads).

use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde_json::json;

use crate::{Sae, SaeConfig, SaeError, SaeLensArchitecture};

pub const WEIGHTS_FILE: &str = "sae_weights.safetensors";
/// SAELens' config (architecture, widths, hook).
pub const SAELENS_CONFIG_FILE: &str = "cfg.json";
/// saelab's training config (`SaeConfig`).
pub const CONFIG_FILE: &str = "saelab_config.json";
/// The SAELens release whose format the folder follows (6.x: `metadata` nested).
const SAELENS_FORMAT_VERSION: &str = "6.0.0";

/// Where an SAE's inputs come from, for SAELens' `metadata`.
#[derive(Clone, Debug, PartialEq)]
pub struct Origin {
    /// SAELens' `metadata.model_name`.
    pub model_name: String,
    /// The layer the SAE reads (SAELens' `metadata.hook_name`).
    pub hook_name: String,
    /// A transcoder's output layer (`metadata.hook_name_out`); `None` for an SAE.
    pub hook_name_out: Option<String>,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SaeError + '_ {
    move |source| SaeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn checkpoint_error(path: &Path, message: impl Into<String>) -> SaeError {
    SaeError::Checkpoint {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The tensors of SAELens' layout for this SAE's architecture, in file order.
fn tensors(sae: &Sae) -> Vec<(&'static str, Vec<usize>, &[f32])> {
    let (d_in, d_sae, d_out) = (sae.d_in(), sae.d_sae(), sae.d_out());
    let gated = sae.cfg.architecture.is_gated();
    let mut out = vec![
        ("W_enc", vec![d_in, d_sae], sae.w_enc.as_slice()),
        ("W_dec", vec![d_sae, d_out], &sae.w_dec),
        (
            if gated { "b_gate" } else { "b_enc" },
            vec![d_sae],
            &sae.b_enc,
        ),
        ("b_dec", vec![d_out], &sae.b_dec),
    ];
    if sae.cfg.transcoder.is_some_and(|t| t.skip) {
        out.push(("W_skip", vec![d_out, d_in], &sae.w_skip));
    }
    if sae.cfg.architecture.has_threshold() {
        out.push(("threshold", vec![d_sae], &sae.threshold));
    }
    if gated {
        out.push(("r_mag", vec![d_sae], &sae.r_mag));
        out.push(("b_mag", vec![d_sae], &sae.b_mag));
    }
    out
}

/// SAELens' `cfg.json` for `sae`: the BatchTopK family is saved as SAELens
/// saves it, as `jumprelu` with its inference threshold on every feature.
/// Transcoders take SAELens' transcoder names (`transcoder`,
/// `skip_transcoder`, `jumprelu_transcoder`, `jumprelu_skip_transcoder`);
/// SAELens has no TopK or Gated transcoder, so those keep saelab's name
/// (`topk_transcoder`, ...), which SAELens does not load.
fn saelens_config(sae: &Sae, origin: &Origin) -> serde_json::Value {
    let mut cfg = json!({
        "d_in": sae.d_in(),
        "d_sae": sae.d_sae(),
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": sae.cfg.centres_input(),
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": SAELENS_FORMAT_VERSION,
            "model_name": origin.model_name,
            "hook_name": origin.hook_name,
            "saelab_architecture": sae.cfg.architecture.kind(),
        },
    });
    let layout = sae.cfg.architecture.saelens_architecture();
    let architecture = match layout {
        SaeLensArchitecture::Standard => "standard",
        SaeLensArchitecture::Gated => "gated",
        SaeLensArchitecture::TopK { k } => {
            cfg["k"] = json!(k);
            cfg["rescale_acts_by_decoder_norm"] = json!(false);
            "topk"
        }
        SaeLensArchitecture::JumpRelu => "jumprelu",
    };
    let architecture = match sae.cfg.transcoder {
        None => architecture.to_string(),
        Some(t) => {
            cfg["d_out"] = json!(t.d_out);
            if let Some(out) = &origin.hook_name_out {
                cfg["metadata"]["hook_name_out"] = json!(out);
            }
            let kind = if t.skip {
                "skip_transcoder"
            } else {
                "transcoder"
            };
            match layout {
                SaeLensArchitecture::Standard => kind.to_string(),
                SaeLensArchitecture::JumpRelu => format!("jumprelu_{kind}"),
                SaeLensArchitecture::TopK { .. } | SaeLensArchitecture::Gated => {
                    sae.cfg.architecture_name()
                }
            }
        }
    };
    cfg["architecture"] = json!(architecture);
    cfg
}

/// Writes `dir/sae_weights.safetensors`, SAELens' `dir/cfg.json` and
/// `dir/saelab_config.json` (creating `dir`).
pub fn save(sae: &Sae, dir: &Path, origin: &Origin) -> Result<(), SaeError> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let weights_path = dir.join(WEIGHTS_FILE);
    let entries = tensors(sae);
    let bytes: Vec<Vec<u8>> = entries.iter().map(|(_, _, v)| le_bytes(v)).collect();
    let views = entries
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), data)| {
            TensorView::new(Dtype::F32, shape.clone(), data)
                .map(|view| (*name, view))
                .map_err(|e| checkpoint_error(&weights_path, e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize_to_file(views, None, &weights_path)
        .map_err(|e| checkpoint_error(&weights_path, e.to_string()))?;
    for (file, value) in [
        (
            CONFIG_FILE,
            serde_json::to_value(&sae.cfg).expect("SaeConfig serialises"),
        ),
        (SAELENS_CONFIG_FILE, saelens_config(sae, origin)),
    ] {
        let path = dir.join(file);
        let json = serde_json::to_string_pretty(&value).expect("JSON serialises");
        std::fs::write(&path, json + "\n").map_err(io_error(&path))?;
    }
    Ok(())
}

/// Reads an SAE written by [`save`]; every mismatch names the file and tensor.
pub fn load(dir: &Path) -> Result<Sae, SaeError> {
    let config_path = dir.join(CONFIG_FILE);
    let json = std::fs::read_to_string(&config_path).map_err(io_error(&config_path))?;
    let cfg: SaeConfig = serde_json::from_str(&json)
        .map_err(|e| checkpoint_error(&config_path, format!("invalid SAE config: {e}")))?;
    cfg.validate()
        .map_err(|e| checkpoint_error(&config_path, e.to_string()))?;
    let weights_path: PathBuf = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&weights_path).map_err(io_error(&weights_path))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| checkpoint_error(&weights_path, format!("not a safetensors file: {e}")))?;
    let mut sae = Sae {
        cfg,
        w_enc: Vec::new(),
        w_dec: Vec::new(),
        b_enc: Vec::new(),
        b_dec: Vec::new(),
        w_skip: Vec::new(),
        threshold: Vec::new(),
        r_mag: Vec::new(),
        b_mag: Vec::new(),
    };
    let expected = tensors(&sae);
    if let Some(extra) = st
        .names()
        .into_iter()
        .find(|name| !expected.iter().any(|(e, _, _)| e == name))
    {
        return Err(checkpoint_error(
            &weights_path,
            format!(
                "tensor `{extra}` does not belong to a {} SAE (from {CONFIG_FILE})",
                sae.cfg.architecture_name()
            ),
        ));
    }
    let mut loaded = Vec::with_capacity(expected.len());
    for (name, shape, _) in expected {
        let view = st
            .tensor(name)
            .map_err(|_| checkpoint_error(&weights_path, format!("tensor `{name}` is missing")))?;
        if view.dtype() != Dtype::F32 || view.shape() != shape.as_slice() {
            return Err(checkpoint_error(
                &weights_path,
                format!(
                    "tensor `{name}` is {:?} {:?}, expected F32 {shape:?} (from {CONFIG_FILE})",
                    view.dtype(),
                    view.shape()
                ),
            ));
        }
        loaded.push(
            view.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect::<Vec<f32>>(),
        );
    }
    let mut loaded = loaded.into_iter();
    sae.w_enc = loaded.next().unwrap_or_default();
    sae.w_dec = loaded.next().unwrap_or_default();
    sae.b_enc = loaded.next().unwrap_or_default();
    sae.b_dec = loaded.next().unwrap_or_default();
    if sae.cfg.transcoder.is_some_and(|t| t.skip) {
        sae.w_skip = loaded.next().unwrap_or_default();
    }
    if sae.cfg.architecture.has_threshold() {
        sae.threshold = loaded.next().unwrap_or_default();
    }
    if sae.cfg.architecture.is_gated() {
        sae.r_mag = loaded.next().unwrap_or_default();
        sae.b_mag = loaded.next().unwrap_or_default();
    }
    Ok(sae)
}

/// `curve.json`: how a run trained, written beside the checkpoint.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingRecord {
    /// One point per epoch.
    pub curve: Vec<crate::CurvePoint>,
    /// Per latent: when it last fired, and its encoder at a few epochs
    /// (absent from records written before it existed).
    #[serde(default)]
    pub latents: crate::LatentHistory,
    pub resamples: Vec<crate::ResampleEvent>,
    pub steps: usize,
    /// Wall time of the run's sweep group.
    pub seconds: f64,
}

pub const RECORD_FILE: &str = "curve.json";

impl TrainingRecord {
    pub fn of(trained: &crate::Trained) -> TrainingRecord {
        TrainingRecord {
            curve: trained.curve.clone(),
            latents: trained.latents.clone(),
            resamples: trained.resamples.clone(),
            steps: trained.steps,
            seconds: trained.seconds,
        }
    }

    /// Writes `dir/curve.json`.
    pub fn save(&self, dir: &Path) -> Result<(), SaeError> {
        let path = dir.join(RECORD_FILE);
        let json = serde_json::to_string_pretty(self).expect("a training record serialises");
        std::fs::write(&path, json + "\n").map_err(io_error(&path))
    }

    /// Reads `dir/curve.json`; a file that does not parse is an error naming it.
    pub fn load(dir: &Path) -> Result<TrainingRecord, SaeError> {
        let path = dir.join(RECORD_FILE);
        let json = std::fs::read_to_string(&path).map_err(io_error(&path))?;
        serde_json::from_str(&json)
            .map_err(|e| checkpoint_error(&path, format!("not a training record: {e}")))
    }
}
