//! The model in candle-nn: forward passes for evaluation, extraction and splicing.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Linear, Module};

use crate::{Examples, MlpError, Weights, CLASSES, INPUT, LAYER_NAMES};

/// fc1's 784 inputs are summed in blocks of this many, in order: gemm splits
/// a sum over more than 512 terms into blocks sized from the L1 cache it
/// detects (392 + 392 on a 32 KiB 8-way L1, one block of 784 on a 48 KiB
/// 12-way one), so one matmul over all 784 gives bits that follow the
/// machine. Blocks under 512 are never split: every machine adds the same
/// partial sums in the same order (on the 32 KiB machines, the bits of the
/// single matmul).
const FC1_BLOCK: usize = INPUT / 2;

pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
    device: Device,
}

/// Every intermediate of a forward pass, by layer name (`fc1.pre` ... `logits`).
pub type Layers = BTreeMap<&'static str, Tensor>;

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Evaluation {
    pub loss: f64,
    pub accuracy: f64,
}

/// A black pixel's normalised value: what the `input` layer is measured from.
fn black_pixel() -> f32 {
    mnist::normalise(&[0])[0]
}

impl Mlp {
    pub fn new(weights: &Weights, device: &Device) -> Result<Mlp, MlpError> {
        let tensors = weights.to_tensors(device)?;
        Ok(Mlp::from_tensors(|name| tensors[name].clone(), device))
    }

    /// Builds from tensors named as in PyTorch's state dict (`fc1.weight`, ...).
    pub fn from_tensors(tensor: impl Fn(&str) -> Tensor, device: &Device) -> Mlp {
        let linear = |name: &str| {
            Linear::new(
                tensor(&format!("{name}.weight")),
                Some(tensor(&format!("{name}.bias"))),
            )
        };
        Mlp {
            fc1: linear("fc1"),
            fc2: linear("fc2"),
            fc3: linear("fc3"),
            device: device.clone(),
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Normalises raw pixels as the notebook does: `[rows, 784]` f32.
    pub fn input(&self, pixels: &[u8]) -> Result<Tensor, MlpError> {
        let rows = pixels.len() / INPUT;
        Ok(Tensor::from_vec(
            mnist::normalise(pixels),
            (rows, INPUT),
            &self.device,
        )?)
    }

    pub fn logits(&self, x: &Tensor) -> Result<Tensor, MlpError> {
        Ok(self
            .fc3
            .forward(&self.fc2.forward(&self.fc1(x)?.relu()?)?.relu()?)?)
    }

    /// fc1's pre-activations `[rows, 128]`, summed in [`FC1_BLOCK`]s (the
    /// same bits on every machine), then the bias.
    fn fc1(&self, x: &Tensor) -> Result<Tensor, MlpError> {
        let w = self.fc1.weight();
        let mut sum: Option<Tensor> = None;
        for start in (0..INPUT).step_by(FC1_BLOCK) {
            let block = x
                .narrow(1, start, FC1_BLOCK)?
                .matmul(&w.narrow(1, start, FC1_BLOCK)?.t()?)?;
            sum = Some(match sum {
                None => block,
                Some(sum) => (sum + block)?,
            });
        }
        let sum = sum.expect("784 inputs make two blocks");
        Ok(match self.fc1.bias() {
            Some(bias) => sum.broadcast_add(bias)?,
            None => sum,
        })
    }

    /// The forward pass, keeping every named intermediate.
    pub fn forward_all(&self, x: &Tensor) -> Result<Layers, MlpError> {
        let input = x.affine(1.0, -(black_pixel() as f64))?;
        let fc1_pre = self.fc1(x)?;
        let fc1_post = fc1_pre.relu()?;
        let fc2_pre = self.fc2.forward(&fc1_post)?;
        let fc2_post = fc2_pre.relu()?;
        let logits = self.fc3.forward(&fc2_post)?;
        Ok([input, fc1_pre, fc1_post, fc2_pre, fc2_post, logits]
            .into_iter()
            .enumerate()
            .map(|(i, t)| (LAYER_NAMES[i], t))
            .collect())
    }

    /// `layers` of a forward pass over raw `pixels`, in chunks of rows on
    /// every core; each layer is one row-major buffer in the pixels' row order.
    pub fn layers_in_chunks(
        &self,
        pixels: &[u8],
        layers: &[String],
    ) -> Result<Vec<Vec<f32>>, MlpError> {
        use rayon::prelude::*;
        const CHUNK_ROWS: usize = 2048;
        let chunks: Vec<Vec<Vec<f32>>> = pixels
            .par_chunks(CHUNK_ROWS * INPUT)
            .map(|chunk| -> Result<Vec<Vec<f32>>, MlpError> {
                let all = self.forward_all(&self.input(chunk)?)?;
                layers
                    .iter()
                    .map(|l| {
                        let tensor = all.get(l.as_str()).ok_or_else(|| {
                            MlpError::Input(format!("{l:?} is not a layer of the MLP"))
                        })?;
                        Ok(tensor.flatten_all()?.to_vec1::<f32>()?)
                    })
                    .collect()
            })
            .collect::<Result<_, _>>()?;
        Ok((0..layers.len())
            .map(|l| chunks.iter().flat_map(|c| c[l].iter().copied()).collect())
            .collect())
    }

    /// Logits computed from a replacement for layer `name` (e.g. an SAE's
    /// reconstruction spliced in place of `fc2.pre`).
    pub fn logits_from(&self, name: &str, value: &Tensor) -> Result<Tensor, MlpError> {
        let out = match name {
            crate::INPUT_LAYER => {
                let x = value.affine(1.0, black_pixel() as f64)?;
                self.logits_from("fc1.pre", &self.fc1(&x)?)?
            }
            "fc1.pre" => self.logits_from("fc1.post", &value.relu()?)?,
            "fc1.post" => self.logits_from("fc2.pre", &self.fc2.forward(value)?)?,
            "fc2.pre" => self.logits_from("fc2.post", &value.relu()?)?,
            "fc2.post" => self.fc3.forward(value)?,
            "logits" => value.clone(),
            other => {
                return Err(MlpError::Config(format!(
                    "unknown layer {other}; layers are {}",
                    LAYER_NAMES.join(", ")
                )))
            }
        };
        Ok(out)
    }

    /// Per row r of raw `pixels`, the gradient with respect to its normalised
    /// input of `site(x_r) . directions[r]`: which pixels push layer `site`
    /// along that direction at that image (the ReLU gates of the image held).
    /// `directions` is `[rows, width of site]`; returns `[rows, 784]`.
    pub fn input_gradients(
        &self,
        pixels: &[u8],
        site: &str,
        directions: &[f32],
    ) -> Result<Vec<f32>, MlpError> {
        let rows = pixels.len() / INPUT;
        let width = crate::layer_width(site).ok_or_else(|| {
            MlpError::Input(format!(
                "unknown layer {site}; layers are {}",
                LAYER_NAMES.join(", ")
            ))
        })?;
        if pixels.len() != rows * INPUT || directions.len() != rows * width {
            return Err(MlpError::Input(format!(
                "input gradients: {} pixels and {} direction values for {rows} rows of {site} (width {width})",
                pixels.len(),
                directions.len()
            )));
        }
        if rows == 0 {
            return Ok(Vec::new());
        }
        let x = candle_core::Var::from_tensor(&self.input(pixels)?)?;
        let layers = self.forward_all(x.as_tensor())?;
        let along = Tensor::from_slice(directions, (rows, width), &self.device)?;
        let grads = (&layers[site] * along)?.sum_all()?.backward()?;
        let grad = grads
            .get(x.as_tensor())
            .expect("the input is a variable of the objective");
        Ok(grad.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Mean cross-entropy and accuracy of `logits` [rows, 10] against `labels`.
    pub fn score(logits: &Tensor, labels: &[u8]) -> Result<Evaluation, MlpError> {
        let device = logits.device();
        let targets = Tensor::from_iter(labels.iter().map(|&l| l as u32), device)?;
        let loss = candle_nn::loss::cross_entropy(logits, &targets)?.to_scalar::<f32>()? as f64;
        let hits = logits
            .argmax(D::Minus1)?
            .eq(&targets)?
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()? as f64;
        Ok(Evaluation {
            loss,
            accuracy: hits / labels.len().max(1) as f64,
        })
    }

    pub fn evaluate(&self, data: Examples<'_>) -> Result<Evaluation, MlpError> {
        let logits = self.logits(&self.input(data.pixels)?)?;
        debug_assert_eq!(logits.dims(), &[data.len(), CLASSES]);
        Mlp::score(&logits, data.labels)
    }
}
