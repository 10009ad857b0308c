//! `extract`: runs the trained MLP over both splits in dataset order and caches
//! the configured layers as safetensors shards. Keyed by the MLP and these
//! params only, so every SAE and analysis reads the same shards.

use std::path::Path;
use std::time::Instant;

use activations::{LayerValues, ShardConfig, ShardMeta};
use artifacts::{Stage, StageError, StageInputs};
use mlp::Mlp;
use serde_json::{json, Value};

use super::mlp::{load_mnist, load_weights};
use crate::config::ExtractConfig;

pub struct ExtractStage {
    pub cfg: ExtractConfig,
}

pub const SPLITS: [&str; 2] = ["train", "test"];

impl Stage for ExtractStage {
    fn name(&self) -> &str {
        "extract"
    }
    fn kind(&self) -> &str {
        "activations"
    }
    fn fingerprint(&self) -> String {
        env!("SAELAB_FP_EXTRACT").into()
    }
    fn params(&self) -> Value {
        serde_json::json!({ "extract": self.cfg })
    }
    fn inputs(&self) -> Vec<(String, String)> {
        vec![
            ("mnist".into(), "mnist".into()),
            ("mlp".into(), "mlp".into()),
        ]
    }
    fn run(&self, inputs: &StageInputs, out: &Path) -> Result<Value, StageError> {
        let data = load_mnist(inputs.dir("mnist"))?;
        let model = Mlp::new(&load_weights(inputs.dir("mlp"))?, &candle_core::Device::Cpu)?;
        let started = Instant::now();
        let mut shards = Vec::new();
        let mut bytes = 0u64;
        for (name, split) in SPLITS.iter().zip([&data.train, &data.test]) {
            let layers = model.layers_in_chunks(&split.images.pixels, &self.cfg.layers)?;
            let layer_data: Vec<LayerValues<'_>> = self
                .cfg
                .layers
                .iter()
                .zip(&layers)
                .map(|(layer, values)| LayerValues {
                    name: layer,
                    width: mlp::layer_width(layer).expect("validated"),
                    data: values,
                })
                .collect();
            let index: Vec<u32> = (0..split.len() as u32).collect();
            let meta = ShardMeta {
                mlp_key: inputs.manifest("mlp").key.to_string(),
                dataset_digest: dataset_digest(inputs.manifest("mnist")),
            };
            let written = activations::write_split(
                out,
                name,
                &layer_data,
                &split.labels.labels,
                &index,
                &ShardConfig {
                    rows_per_shard: self.cfg.rows_per_shard,
                },
                &meta,
            )?;
            bytes += written.iter().map(|s| s.size_bytes).sum::<u64>();
            shards.extend(written);
        }
        let seconds = started.elapsed().as_secs_f64();
        activations::write_shard_list(out, &shards)?;
        Ok(json!({
            "rows": data.train.len() + data.test.len(),
            "layers": self.cfg.layers,
            "shards": shards.len(),
            "bytes": bytes,
            "extract_seconds": seconds,
            "headline": format!("{} rows x {} layers, {:.0} MB in {seconds:.2} s", data.train.len() + data.test.len(), self.cfg.layers.len(), bytes as f64 / 1e6),
        }))
    }
}

fn dataset_digest(mnist: &artifacts::Manifest) -> String {
    // The mnist artifact's key names its verified content (the files are pinned).
    format!("mnist:{}", mnist.key)
}
