//! The reference trainer: candle autograd and a hand-written Adam on candle
//! tensors (so resampling can reset moments). Device-agnostic: no CPU-only
//! tricks, so it is also the GPU path.

use candle_core::{DType, Device, Tensor, Var, D};

use crate::arch::{Activation, AuxInput, Penalty};
use crate::config::SaeConfig;
use crate::duo::Exec;
use crate::trainer::{
    AuxScale, FeatureReset, FiringTracker, Gradients, RunningThreshold, StepStats, Trainer,
    TrainerState,
};
use crate::{Sae, SaeError};

pub(crate) struct ReferenceTrainer {
    cfg: SaeConfig,
    device: Device,
    /// W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae], b_dec [d_in],
    /// then JumpReLU's log-thresholds [d_sae], or Gated's r_mag and b_mag [d_sae].
    params: Vec<Var>,
    /// Adam's (m, v) per parameter.
    moments: Vec<(Var, Var)>,
    grads: Option<Vec<Tensor>>,
    adam_t: usize,
    aux_scale: AuxScale,
    batch_threshold: Option<RunningThreshold>,
    /// The sparsity warm-up's share of the penalty this step (1 once warm).
    penalty_factor: f64,
    /// A skip transcoder's `W_skip` `[d_out, d_in]`, the last parameter.
    skip: Option<usize>,
}

const W_ENC: usize = 0;
const W_DEC: usize = 1;
const B_ENC: usize = 2;
const B_DEC: usize = 3;
/// JumpReLU's extra parameter.
const LOG_THRESHOLD: usize = 4;
/// Gated's extra parameters.
const R_MAG: usize = 4;
const B_MAG: usize = 5;

/// 1.0 at the `k` largest entries of each row of `x` (`[rows, cols]`), else 0.
fn top_k_mask(x: &Tensor, k: usize) -> candle_core::Result<Tensor> {
    let idx = x
        .contiguous()?
        .arg_sort_last_dim(false)?
        .narrow(D::Minus1, 0, k)?
        .contiguous()?;
    let ones = Tensor::ones(idx.shape(), DType::F32, x.device())?;
    x.zeros_like()?.scatter_add(&idx, &ones, D::Minus1)
}

/// 1.0 at the `k` largest entries of the whole of `x`, else 0.
fn batch_top_k_mask(x: &Tensor, k: usize) -> candle_core::Result<Tensor> {
    let flat = x.flatten_all()?.unsqueeze(0)?;
    top_k_mask(&flat, k.min(flat.elem_count()))?.reshape(x.shape())
}

fn to_host(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// Each row scaled to unit L2 norm (times the reciprocal norm, as the fast path does).
fn normalise_rows(w: &Tensor) -> candle_core::Result<Tensor> {
    w.broadcast_mul(&w.sqr()?.sum_keepdim(1)?.sqrt()?.recip()?)
}

impl ReferenceTrainer {
    pub fn new(sae: &Sae, device: &Device, aux_scale: AuxScale) -> Result<Self, SaeError> {
        let (d_in, d_sae, d_out) = (sae.d_in(), sae.d_sae(), sae.d_out());
        let var = |data: &[f32], shape: &[usize]| -> candle_core::Result<Var> {
            Var::from_tensor(&Tensor::from_slice(data, shape, device)?)
        };
        let mut params = vec![
            var(&sae.w_enc, &[d_in, d_sae])?,
            var(&sae.w_dec, &[d_sae, d_out])?,
            var(&sae.b_enc, &[d_sae])?,
            var(&sae.b_dec, &[d_out])?,
        ];
        if sae.cfg.architecture.learned_threshold().is_some() {
            let log_threshold: Vec<f32> = sae.threshold.iter().map(|t| t.ln()).collect();
            params.push(var(&log_threshold, &[d_sae])?);
        }
        if sae.cfg.architecture.is_gated() {
            params.push(var(&sae.r_mag, &[d_sae])?);
            params.push(var(&sae.b_mag, &[d_sae])?);
        }
        let skip = (!sae.w_skip.is_empty()).then_some(params.len());
        if skip.is_some() {
            params.push(var(&sae.w_skip, &[d_out, d_in])?);
        }
        let moments = params
            .iter()
            .map(|p| {
                Ok((
                    Var::zeros(p.shape(), DType::F32, device)?,
                    Var::zeros(p.shape(), DType::F32, device)?,
                ))
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(ReferenceTrainer {
            cfg: sae.cfg.clone(),
            device: device.clone(),
            params,
            moments,
            grads: None,
            adam_t: 0,
            aux_scale,
            batch_threshold: RunningThreshold::of(sae),
            penalty_factor: 1.0,
            skip,
        })
    }

    fn compute_inner(
        &mut self,
        x: &[f32],
        target: &[f32],
        rows: usize,
        tracker: &mut FiringTracker,
    ) -> candle_core::Result<StepStats> {
        let (d_in, d_sae, d_out) = (self.cfg.d_in, self.cfg.d_sae, self.cfg.d_out());
        let device = self.device.clone();
        let dev = &device;
        let [w_enc, w_dec, b_enc, b_dec] =
            [W_ENC, W_DEC, B_ENC, B_DEC].map(|i| self.params[i].as_tensor().clone());
        let x = Tensor::from_slice(&x[..rows * d_in], (rows, d_in), dev)?;
        let y = if self.cfg.transcoder.is_some() {
            Tensor::from_slice(&target[..rows * d_out], (rows, d_out), dev)?
        } else {
            x.clone()
        };
        // The output before any feature: b_dec, plus a skip transcoder's x @ W_skip^T.
        let skip_out = match self.skip {
            Some(i) => Some(x.matmul(&self.params[i].as_tensor().t()?)?),
            None => None,
        };
        let with_skip = |t: Tensor, detach: bool| -> candle_core::Result<Tensor> {
            match &skip_out {
                Some(s) if detach => t + s.detach(),
                Some(s) => t + s,
                None => Ok(t),
            }
        };
        let x_cent = if self.cfg.centres_input() {
            x.broadcast_sub(&b_dec)?
        } else {
            x.clone()
        };
        let enc = x_cent.matmul(&w_enc)?;
        let pre = enc.broadcast_add(&b_enc)?;
        let pre_detached = pre.detach();
        // ReLU as a detached 0/1 mask: the gradient at exactly 0 is 0, as in PyTorch.
        let positive = pre_detached.gt(0.0)?.to_dtype(DType::F32)?;
        let mut gate_reconstruction = None;
        // What an L1 penalty is on (Gated: its gate's ReLU), and the active
        // count an L0 penalty reads (with JumpReLU's pseudo-derivative).
        let mut penalised = None;
        let mut l0 = None;
        let (mask, acts) = match self.cfg.architecture.activation() {
            Activation::TopK { k } => {
                let mask = (&positive * top_k_mask(&pre_detached, k)?)?;
                (mask.clone(), (&pre * &mask)?)
            }
            Activation::BatchTopK { k, .. } => {
                let mask = (&positive * batch_top_k_mask(&pre_detached.relu()?, k * rows)?)?;
                (mask.clone(), (&pre * &mask)?)
            }
            Activation::JumpRelu { bandwidth, .. } => {
                // JumpReLU's straight-through estimator (SAELens, GDM): the
                // output's gradient reaches the threshold only where the
                // pre-activation is within bandwidth / 2 of it. `moving` is
                // zero-valued and carries that gradient.
                let theta = self.params[LOG_THRESHOLD].as_tensor().exp()?;
                let theta_fixed = theta.detach();
                let moving = (&theta - &theta_fixed)?.unsqueeze(0)?;
                let mask = pre_detached
                    .broadcast_gt(&theta_fixed.unsqueeze(0)?)?
                    .to_dtype(DType::F32)?;
                let window = pre_detached
                    .broadcast_sub(&theta_fixed.unsqueeze(0)?)?
                    .abs()?
                    .lt(bandwidth / 2.0)?
                    .to_dtype(DType::F32)?;
                let jump_slope =
                    (window.broadcast_mul(&theta_fixed.unsqueeze(0)?)? * (-1.0 / bandwidth))?;
                let acts = ((&pre * &mask)? + moving.broadcast_mul(&jump_slope)?)?;
                let step_slope = (&window * (-1.0 / bandwidth))?;
                l0 = Some((mask.sum_all()? + moving.broadcast_mul(&step_slope)?.sum_all()?)?);
                (mask, acts)
            }
            Activation::Gated => {
                // `pre` is the gate; the magnitude path shares its directions.
                let scale = self.params[R_MAG].as_tensor().exp()?.unsqueeze(0)?;
                let b_mag = self.params[B_MAG].as_tensor().unsqueeze(0)?;
                let magnitude = enc.broadcast_mul(&scale)?.broadcast_add(&b_mag)?;
                let mask = (&positive * magnitude.detach().gt(0.0)?.to_dtype(DType::F32)?)?;
                let gate_relu = (&pre * &positive)?;
                // The gate's ReLU reconstructs through the frozen decoder (the paper's L_aux).
                let gate_hat = with_skip(
                    gate_relu
                        .matmul(&w_dec.detach())?
                        .broadcast_add(&b_dec.detach())?,
                    true,
                )?;
                gate_reconstruction = Some((gate_hat - &y)?.sqr()?.sum(1)?.mean(0)?);
                penalised = Some(gate_relu);
                (mask.clone(), (&magnitude * &mask)?)
            }
            Activation::Relu => (positive.clone(), (&pre * &positive)?),
        };
        let fired: Vec<bool> = mask
            .max(0)?
            .to_vec1::<f32>()?
            .iter()
            .map(|&m| m > 0.0)
            .collect();
        tracker.record(&fired);
        let active = mask.sum_all()?.to_scalar::<f32>()? as u64;
        if let Some(threshold) = &mut self.batch_threshold {
            let unselected = Tensor::full(f32::INFINITY, pre_detached.shape(), dev)?;
            let smallest = mask
                .ne(0.0)?
                .where_cond(&pre_detached, &unselected)?
                .flatten_all()?
                .min(0)?
                .to_scalar::<f32>()?;
            threshold.observe(smallest as f64);
        }

        let x_hat = with_skip(acts.matmul(&w_dec)?.broadcast_add(&b_dec)?, false)?;
        let row_sq = (&x_hat - &y)?.sqr()?.sum(1)?;
        let sq_err_sum = row_sq.sum_all()?.to_scalar::<f32>()? as f64;
        let l2 = row_sq.mean(0)?;
        // Every activation's acts are >= 0, so |acts| = acts.
        let penalised = penalised.as_ref().unwrap_or(&acts);
        let l1_scale = self.cfg.l1_scale(rows) * self.penalty_factor;
        let sparsity = match self.cfg.architecture.penalty() {
            Penalty::None => Tensor::zeros((), DType::F32, dev)?,
            Penalty::L1 { .. } => (penalised.sum_all()? * l1_scale)?,
            Penalty::NormWeightedL1 { .. } => {
                let norms = w_dec.sqr()?.sum(1)?.sqrt()?.unsqueeze(0)?;
                (penalised.broadcast_mul(&norms)?.sum_all()? * l1_scale)?
            }
            Penalty::L0 { coeff } => match &l0 {
                Some(l0) => (l0 * (coeff / rows as f64 * self.penalty_factor))?,
                None => (mask.sum_all()? * (coeff / rows as f64 * self.penalty_factor))?,
            },
        };
        let mut loss = (&l2 + &sparsity)?;
        let mut aux_total = match gate_reconstruction {
            Some(term) => term,
            None => Tensor::zeros((), DType::F32, dev)?,
        };
        // Matryoshka: each prefix of the dictionary reconstructs on its own.
        for width in self.cfg.architecture.prefix_widths(d_sae) {
            let prefix_hat = with_skip(
                acts.narrow(1, 0, width)?
                    .matmul(&w_dec.narrow(0, 0, width)?)?
                    .broadcast_add(&b_dec)?,
                false,
            )?;
            aux_total = (aux_total + (prefix_hat - &y)?.sqr()?.sum(1)?.mean(0)?)?;
        }
        if let Some((k_aux, aux_coeff, aux_input)) = self.cfg.aux_k() {
            let dead = tracker.dead_mask();
            let n_dead = dead.iter().filter(|&&d| d).count();
            if n_dead > 0 {
                let dead_u8: Vec<u8> = dead.iter().map(|&d| d as u8).collect();
                let dead_t = Tensor::from_vec(dead_u8, (1, d_sae), dev)?
                    .broadcast_as((rows, d_sae))?
                    .contiguous()?;
                let never = Tensor::full(f32::NEG_INFINITY, (rows, d_sae), dev)?;
                let dead_pre = dead_t.where_cond(&pre_detached, &never)?;
                let chosen = top_k_mask(&dead_pre, k_aux.min(n_dead))?;
                let aux_mask = match aux_input {
                    AuxInput::Relu => (chosen * &positive)?,
                    AuxInput::Raw => chosen,
                };
                let aux_acts = (&pre * &aux_mask)?;
                let residual = (&y - &x_hat)?.detach();
                let spread = crate::model::total_variance(&to_host(&residual)?, d_out);
                let factor = self.aux_scale.factor(aux_coeff, spread);
                let aux = ((residual - aux_acts.matmul(&w_dec)?)?.sqr()?.sum_all()? * factor)?;
                aux_total = (aux_total + aux)?;
            }
        }
        let aux_value = aux_total.to_scalar::<f32>()? as f64;
        loss = (loss + aux_total)?;
        let loss_value = loss.to_scalar::<f32>()? as f64;
        let grads = loss.backward()?;
        self.grads = Some(
            self.params
                .iter()
                .map(|p| match grads.get(p.as_tensor()) {
                    Some(g) => Ok(g.detach()),
                    None => p.zeros_like(),
                })
                .collect::<candle_core::Result<_>>()?,
        );
        Ok(StepStats {
            loss: loss_value,
            l2: l2.to_scalar::<f32>()? as f64,
            sq_err_sum,
            l1: sparsity.to_scalar::<f32>()? as f64,
            aux: aux_value,
            active,
        })
    }

    fn apply_inner(&mut self, lr: f64) -> candle_core::Result<()> {
        let Some(mut grads) = self.grads.take() else {
            candle_core::bail!("apply called without compute");
        };
        let unit_norm = self.cfg.architecture.unit_norm_decoder();
        if unit_norm {
            let unit = normalise_rows(self.params[W_DEC].as_tensor())?;
            let along = (&grads[W_DEC] * &unit)?.sum_keepdim(1)?;
            grads[W_DEC] = (&grads[W_DEC] - along.broadcast_mul(&unit)?)?;
        }
        if self.cfg.clip_grad_norm > 0.0 {
            // The global norm in f64 on the host, as the fast path sums it.
            let mut norm_sq = 0.0f64;
            for g in &grads {
                norm_sq += to_host(g)?
                    .iter()
                    .map(|&x| x as f64 * x as f64)
                    .sum::<f64>();
            }
            let factor = self.cfg.clip_factor(norm_sq.sqrt()) as f32;
            if factor != 1.0 {
                for g in grads.iter_mut() {
                    *g = (&*g * factor as f64)?;
                }
            }
        }
        self.adam_t += 1;
        let o = &self.cfg.optimizer;
        let bias_correction1 = 1.0 - o.beta1.powi(self.adam_t as i32);
        let inv_bias_correction2_sqrt = 1.0 / (1.0 - o.beta2.powi(self.adam_t as i32)).sqrt();
        let step_size = lr / bias_correction1;
        for ((p, (m, v)), g) in self.params.iter().zip(&self.moments).zip(&grads) {
            let m_next = ((m.as_tensor() * o.beta1)? + (g * (1.0 - o.beta1))?)?;
            let v_next = ((v.as_tensor() * o.beta2)? + (g.sqr()? * (1.0 - o.beta2))?)?;
            let denom = ((v_next.sqrt()? * inv_bias_correction2_sqrt)? + o.eps)?;
            let p_next = (p.as_tensor() - ((&m_next / denom)? * step_size)?)?;
            m.set(&m_next)?;
            v.set(&v_next)?;
            p.set(&p_next)?;
        }
        if unit_norm {
            let w_dec = &self.params[W_DEC];
            w_dec.set(&normalise_rows(w_dec.as_tensor())?)?;
        }
        Ok(())
    }

    fn reset_inner(&mut self, resets: &[FeatureReset]) -> candle_core::Result<()> {
        let (d_in, d_sae, d_out) = (self.cfg.d_in, self.cfg.d_sae, self.cfg.d_out());
        let mut host: Vec<Vec<f32>> = self
            .params
            .iter()
            .map(|p| to_host(p.as_tensor()))
            .collect::<candle_core::Result<_>>()?;
        let mut moments: Vec<(Vec<f32>, Vec<f32>)> = self
            .moments
            .iter()
            .map(|(m, v)| Ok((to_host(m.as_tensor())?, to_host(v.as_tensor())?)))
            .collect::<candle_core::Result<_>>()?;
        for reset in resets {
            let f = reset.feature;
            for d in 0..d_in {
                host[W_ENC][d * d_sae + f] = reset.encoder_column[d];
                moments[W_ENC].0[d * d_sae + f] = 0.0;
                moments[W_ENC].1[d * d_sae + f] = 0.0;
            }
            host[W_DEC][f * d_out..(f + 1) * d_out].copy_from_slice(&reset.decoder_row);
            moments[W_DEC].0[f * d_out..(f + 1) * d_out].fill(0.0);
            moments[W_DEC].1[f * d_out..(f + 1) * d_out].fill(0.0);
            host[B_ENC][f] = 0.0;
            moments[B_ENC].0[f] = 0.0;
            moments[B_ENC].1[f] = 0.0;
        }
        let mut touched = vec![W_ENC, W_DEC, B_ENC];
        if let Some(init_threshold) = self.cfg.architecture.learned_threshold() {
            for reset in resets {
                host[LOG_THRESHOLD][reset.feature] = (init_threshold as f32).ln();
                moments[LOG_THRESHOLD].0[reset.feature] = 0.0;
                moments[LOG_THRESHOLD].1[reset.feature] = 0.0;
            }
            touched.push(LOG_THRESHOLD);
        }
        if self.cfg.architecture.is_gated() {
            for reset in resets {
                for i in [R_MAG, B_MAG] {
                    host[i][reset.feature] = 0.0;
                    moments[i].0[reset.feature] = 0.0;
                    moments[i].1[reset.feature] = 0.0;
                }
            }
            touched.extend([R_MAG, B_MAG]);
        }
        for i in touched {
            let shape = self.params[i].shape().clone();
            let upload = |data: &[f32]| Tensor::from_slice(data, &shape, &self.device);
            self.params[i].set(&upload(&host[i])?)?;
            self.moments[i].0.set(&upload(&moments[i].0)?)?;
            self.moments[i].1.set(&upload(&moments[i].1)?)?;
        }
        Ok(())
    }
}

impl Trainer for ReferenceTrainer {
    fn compute(
        &mut self,
        x: &[f32],
        target: &[f32],
        rows: usize,
        tracker: &mut FiringTracker,
        _exec: Exec,
    ) -> Result<StepStats, SaeError> {
        Ok(self.compute_inner(x, target, rows, tracker)?)
    }

    fn set_penalty_factor(&mut self, factor: f64) {
        self.penalty_factor = factor;
    }

    fn apply(&mut self, lr: f64, _exec: Exec) -> Result<(), SaeError> {
        Ok(self.apply_inner(lr)?)
    }

    fn state(&self) -> Result<TrainerState, SaeError> {
        let layout = |of: &dyn Fn(usize) -> candle_core::Result<Vec<f32>>| {
            let extra = |i: usize, wanted: bool| if wanted { of(i) } else { Ok(Vec::new()) };
            let jump = self.cfg.architecture.learned_threshold().is_some();
            let gated = self.cfg.architecture.is_gated();
            Ok::<_, candle_core::Error>(Gradients {
                w_enc: of(W_ENC)?,
                w_dec: of(W_DEC)?,
                b_enc: of(B_ENC)?,
                b_dec: of(B_DEC)?,
                w_skip: match self.skip {
                    Some(i) => of(i)?,
                    None => Vec::new(),
                },
                threshold: extra(LOG_THRESHOLD, jump)?,
                r_mag: extra(R_MAG, gated)?,
                b_mag: extra(B_MAG, gated)?,
            })
        };
        Ok(TrainerState {
            params: layout(&|i| to_host(self.params[i].as_tensor()))?,
            m: layout(&|i| to_host(self.moments[i].0.as_tensor()))?,
            v: layout(&|i| to_host(self.moments[i].1.as_tensor()))?,
        })
    }

    fn gradients(&mut self) -> Result<Gradients, SaeError> {
        let gated = self.cfg.architecture.is_gated();
        let Some(grads) = &self.grads else {
            return Err(SaeError::Candle(candle_core::Error::Msg(
                "no gradients: compute has not run".into(),
            )));
        };
        Ok(Gradients {
            w_enc: to_host(&grads[W_ENC])?,
            w_dec: to_host(&grads[W_DEC])?,
            b_enc: to_host(&grads[B_ENC])?,
            b_dec: to_host(&grads[B_DEC])?,
            w_skip: match self.skip {
                Some(i) => to_host(&grads[i])?,
                None => Vec::new(),
            },
            threshold: if self.cfg.architecture.learned_threshold().is_some() {
                to_host(&grads[LOG_THRESHOLD])?
            } else {
                Vec::new()
            },
            r_mag: if gated {
                to_host(&grads[R_MAG])?
            } else {
                Vec::new()
            },
            b_mag: if gated {
                to_host(&grads[B_MAG])?
            } else {
                Vec::new()
            },
        })
    }

    fn export(&self) -> Result<Sae, SaeError> {
        let host = |i: usize| to_host(self.params[i].as_tensor());
        let gated = self.cfg.architecture.is_gated();
        let threshold = if self.cfg.architecture.learned_threshold().is_some() {
            host(LOG_THRESHOLD)?.iter().map(|t| t.exp()).collect()
        } else {
            match &self.batch_threshold {
                Some(threshold) => threshold.per_feature(self.cfg.d_sae),
                None => Vec::new(),
            }
        };
        Ok(Sae {
            cfg: self.cfg.clone(),
            w_enc: host(W_ENC)?,
            w_dec: host(W_DEC)?,
            b_enc: host(B_ENC)?,
            b_dec: host(B_DEC)?,
            w_skip: match self.skip {
                Some(i) => host(i)?,
                None => Vec::new(),
            },
            threshold,
            r_mag: if gated { host(R_MAG)? } else { Vec::new() },
            b_mag: if gated { host(B_MAG)? } else { Vec::new() },
        })
    }

    fn reset_features(&mut self, resets: &[FeatureReset]) -> Result<(), SaeError> {
        Ok(self.reset_inner(resets)?)
    }
}
