//! The MLP's parameters in PyTorch's layout (`fcN.weight` is `[out, in]`), the
//! seeded initialisation, and `model.safetensors`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

use crate::{MlpError, CLASSES, HIDDEN, INPUT};

#[derive(Clone, Debug, PartialEq)]
pub struct Weights {
    pub fc1_weight: Vec<f32>,
    pub fc1_bias: Vec<f32>,
    pub fc2_weight: Vec<f32>,
    pub fc2_bias: Vec<f32>,
    pub fc3_weight: Vec<f32>,
    pub fc3_bias: Vec<f32>,
}

/// (name, [out, in]) of each linear layer.
pub const LINEARS: [(&str, usize, usize); 3] = [
    ("fc1", HIDDEN, INPUT),
    ("fc2", HIDDEN, HIDDEN),
    ("fc3", CLASSES, HIDDEN),
];

impl Weights {
    /// PyTorch's `nn.Linear` default: weight and bias uniform in ±1/sqrt(fan_in),
    /// drawn from a ChaCha8 stream seeded by `seed`.
    pub fn init(seed: u64) -> Weights {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut uniform = |n: usize, fan_in: usize| -> Vec<f32> {
            let bound = 1.0 / (fan_in as f32).sqrt();
            (0..n).map(|_| rng.random_range(-bound..bound)).collect()
        };
        let fc1_weight = uniform(HIDDEN * INPUT, INPUT);
        let fc1_bias = uniform(HIDDEN, INPUT);
        let fc2_weight = uniform(HIDDEN * HIDDEN, HIDDEN);
        let fc2_bias = uniform(HIDDEN, HIDDEN);
        let fc3_weight = uniform(CLASSES * HIDDEN, HIDDEN);
        let fc3_bias = uniform(CLASSES, HIDDEN);
        Weights {
            fc1_weight,
            fc1_bias,
            fc2_weight,
            fc2_bias,
            fc3_weight,
            fc3_bias,
        }
    }

    /// (weight, bias) of each linear layer, in network order.
    pub fn linears(&self) -> [(&[f32], &[f32]); 3] {
        [
            (&self.fc1_weight, &self.fc1_bias),
            (&self.fc2_weight, &self.fc2_bias),
            (&self.fc3_weight, &self.fc3_bias),
        ]
    }

    pub fn to_tensors(&self, device: &Device) -> Result<HashMap<String, Tensor>, MlpError> {
        let mut out = HashMap::new();
        for ((name, rows, cols), (w, b)) in LINEARS.iter().zip(self.linears()) {
            out.insert(
                format!("{name}.weight"),
                Tensor::from_slice(w, (*rows, *cols), device)?,
            );
            out.insert(
                format!("{name}.bias"),
                Tensor::from_slice(b, *rows, device)?,
            );
        }
        Ok(out)
    }

    pub fn from_tensors(
        tensors: &HashMap<String, Tensor>,
        file: &str,
    ) -> Result<Weights, MlpError> {
        let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>, MlpError> {
            let problem = |p: String| MlpError::File {
                file: file.to_string(),
                problem: p,
            };
            let t = tensors
                .get(name)
                .ok_or_else(|| problem(format!("tensor {name} is missing")))?;
            if t.dims() != shape {
                return Err(problem(format!(
                    "tensor {name} has shape {:?}, expected {shape:?}",
                    t.dims()
                )));
            }
            if t.dtype() != candle_core::DType::F32 {
                return Err(problem(format!(
                    "tensor {name} is {:?}, expected f32",
                    t.dtype()
                )));
            }
            Ok(t.flatten_all()?.to_vec1::<f32>()?)
        };
        Ok(Weights {
            fc1_weight: get("fc1.weight", &[HIDDEN, INPUT])?,
            fc1_bias: get("fc1.bias", &[HIDDEN])?,
            fc2_weight: get("fc2.weight", &[HIDDEN, HIDDEN])?,
            fc2_bias: get("fc2.bias", &[HIDDEN])?,
            fc3_weight: get("fc3.weight", &[CLASSES, HIDDEN])?,
            fc3_bias: get("fc3.bias", &[CLASSES])?,
        })
    }

    /// Writes `fc1.weight`, `fc1.bias`, ... as PyTorch's `state_dict` names them.
    pub fn save(&self, path: &Path) -> Result<(), MlpError> {
        candle_core::safetensors::save(&self.to_tensors(&Device::Cpu)?, path).map_err(|e| {
            MlpError::File {
                file: path.display().to_string(),
                problem: format!("cannot write it: {e}"),
            }
        })
    }

    pub fn load(path: &Path) -> Result<Weights, MlpError> {
        let file = path.display().to_string();
        let tensors =
            candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| MlpError::File {
                file: file.clone(),
                problem: format!("not a readable safetensors file: {e}"),
            })?;
        Weights::from_tensors(&tensors, &file)
    }
}
