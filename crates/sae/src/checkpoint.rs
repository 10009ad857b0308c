//! `sae.safetensors` (W_enc, W_dec, b_enc, b_dec as f32, SAELens shapes) and `cfg.json`.

use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::{Sae, SaeConfig, SaeError};

pub const WEIGHTS_FILE: &str = "sae.safetensors";
pub const CONFIG_FILE: &str = "cfg.json";

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

fn tensors(sae: &Sae) -> [(&'static str, Vec<usize>, &[f32]); 4] {
    let (d_in, d_sae) = (sae.d_in(), sae.d_sae());
    [
        ("W_enc", vec![d_in, d_sae], &sae.w_enc),
        ("W_dec", vec![d_sae, d_in], &sae.w_dec),
        ("b_enc", vec![d_sae], &sae.b_enc),
        ("b_dec", vec![d_in], &sae.b_dec),
    ]
}

/// Writes `dir/sae.safetensors` and `dir/cfg.json` (creating `dir`).
pub fn save(sae: &Sae, dir: &Path) -> Result<(), SaeError> {
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
    let config_path = dir.join(CONFIG_FILE);
    let json = serde_json::to_string_pretty(&sae.cfg).expect("SaeConfig serialises");
    std::fs::write(&config_path, json + "\n").map_err(io_error(&config_path))?;
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
    };
    let mut loaded = Vec::with_capacity(4);
    for (name, shape, _) in tensors(&sae) {
        let view = st
            .tensor(name)
            .map_err(|_| checkpoint_error(&weights_path, format!("tensor `{name}` is missing")))?;
        if view.dtype() != Dtype::F32 || view.shape() != shape.as_slice() {
            return Err(checkpoint_error(
                &weights_path,
                format!(
                    "tensor `{name}` is {:?} {:?}, expected F32 {shape:?} (from cfg.json)",
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
    Ok(sae)
}

/// `curve.json`: how a run trained, written beside the checkpoint.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingRecord {
    /// One point per epoch.
    pub curve: Vec<crate::CurvePoint>,
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
