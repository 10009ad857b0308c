//! The reference trainer: candle autograd and candle-nn's optimisers. It runs
//! on any device and is what the fast trainer is tested against.

use std::collections::HashMap;

use candle_core::{Device, Tensor, Var};
use candle_nn::optim::{AdamW, Optimizer as _, ParamsAdamW, SGD};

use crate::{
    epoch_order, Examples, Mlp, MlpError, Optimizer, TrainConfig, TrainLog, Weights, INPUT,
};

enum Opt {
    Sgd(SGD),
    Adam(AdamW),
}

pub(crate) fn train(
    cfg: &TrainConfig,
    init: Weights,
    data: Examples<'_>,
    device: &Device,
    on_step: &mut (dyn FnMut(usize, f32) + Send),
) -> Result<(Weights, TrainLog), MlpError> {
    let vars: HashMap<String, Var> = init
        .to_tensors(device)?
        .into_iter()
        .map(|(k, t)| Ok((k, Var::from_tensor(&t)?)))
        .collect::<Result<_, MlpError>>()?;
    let all: Vec<Var> = vars.values().cloned().collect();
    let mut opt = match cfg.optimizer {
        Optimizer::Sgd => Opt::Sgd(SGD::new(all, cfg.lr)?),
        Optimizer::Adam => Opt::Adam(AdamW::new(
            all,
            ParamsAdamW {
                lr: cfg.lr,
                weight_decay: 0.0,
                ..Default::default()
            },
        )?),
    };
    let inputs = Tensor::from_vec(mnist::normalise(data.pixels), (data.len(), INPUT), device)?;
    let labels = Tensor::from_iter(data.labels.iter().map(|&l| l as u32), device)?;
    let mut log = TrainLog::default();
    for epoch in 0..cfg.epochs {
        let order = epoch_order(cfg, data.len(), epoch);
        for batch in order.chunks(cfg.batch_size) {
            let index = Tensor::from_iter(batch.iter().map(|&i| i as u32), device)?;
            let (x, y) = (
                inputs.index_select(&index, 0)?,
                labels.index_select(&index, 0)?,
            );
            // Linear holds the Vars' own tensors, so the gradients reach them.
            let model = Mlp::from_tensors(|name| vars[name].as_tensor().clone(), device);
            let loss = candle_nn::loss::cross_entropy(&model.logits(&x)?, &y)?;
            match &mut opt {
                Opt::Sgd(o) => o.backward_step(&loss)?,
                Opt::Adam(o) => o.backward_step(&loss)?,
            }
            let loss = loss.to_scalar::<f32>()?;
            if !loss.is_finite() {
                return Err(MlpError::Diverged {
                    step: log.step_losses.len(),
                    loss,
                });
            }
            log.step_losses.push(loss);
            on_step(log.step_losses.len(), loss);
        }
    }
    let last: HashMap<String, Tensor> = vars
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    Ok((Weights::from_tensors(&last, "reference")?, log))
}
