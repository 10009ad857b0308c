//! The SAE sweep: the `[sae]` table of the config (`SaeSweep`), the points it
//! expands to (each an `SaeConfig`), and the trainer that builds them on first
//! demand (`sae::SweepScheduler`, on the path and device the config names,
//! with a progress bar per point). The SAE fingerprint covers this file, and
//! only this file of the config: it decides what each SAE is trained with.
//! One file, over 600 lines, for that reason: splitting it would widen the
//! SAE fingerprint to code that does not decide a point's training.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use artifacts::StageError;
use candle_core::Device;
use sae::{SweepPoint, Trained};

use anyhow::{bail, Result};
use sae::{Architecture, SaeConfig};
use serde::{Deserialize, Serialize};

use crate::progress::Progress;

/// The sweep's points, trained on first demand by [`sae::SweepScheduler`]
/// (points of one layer and path train together), with a progress bar each.
pub struct SweepTrainer {
    scheduler: sae::SweepScheduler,
    /// Each point's params (its key's), by name.
    params: BTreeMap<String, serde_json::Value>,
    /// Reference-path points run on the first CUDA device.
    pub cuda: bool,
}

impl SweepTrainer {
    pub fn new(sweep: &SaeSweep) -> Arc<SweepTrainer> {
        let points = sweep.points();
        let params = points
            .iter()
            .map(|p| (p.name.clone(), p.params.clone()))
            .collect();
        let points = points
            .into_iter()
            .map(|p| sae::ScheduledPoint {
                group: format!("{}/{}/{}", p.layer, p.output, p.reference_path),
                point: SweepPoint {
                    name: p.name,
                    cfg: p.cfg,
                },
            })
            .collect();
        Arc::new(SweepTrainer {
            scheduler: sae::SweepScheduler::new(points),
            params,
            cuda: sweep.device == TrainerDevice::Cuda,
        })
    }

    pub fn set_pending(&self, names: BTreeSet<String>) {
        self.scheduler.set_pending(names);
    }

    /// Whether this process trained the point named `name` with an earlier
    /// point of its group and holds it.
    pub fn holds(&self, name: &str) -> bool {
        self.scheduler.holds(name)
    }

    /// The params of the point named `name`.
    pub fn params_of(&self, name: &str) -> Option<&serde_json::Value> {
        self.params.get(name)
    }

    /// The trained `point`; `on_trained` hears of each point of its group
    /// the moment it has trained (to keep it before the group is done), and
    /// `checkpoints` keeps and resumes their training states.
    pub fn trained(
        &self,
        point: &Point,
        train: sae::TrainData,
        on_trained: &(dyn Fn(&str, &Trained) + Sync),
        checkpoints: &sae::Checkpoints,
    ) -> Result<Trained, StageError> {
        let path = if point.reference_path {
            let device = if self.cuda {
                Device::new_cuda(0)?
            } else {
                Device::Cpu
            };
            sae::TrainPath::Reference { device }
        } else {
            sae::TrainPath::Fast
        };
        let bars: Mutex<BTreeMap<String, Progress>> = Mutex::new(BTreeMap::new());
        let trained = self.scheduler.trained(
            &point.name,
            train,
            &path,
            &|event| {
                let mut bars = bars.lock().expect("no panics while locked");
                let bar = bars.entry(event.point.to_string()).or_insert_with(|| {
                    Progress::new(event.point, event.steps_total as u64, "steps")
                });
                bar.set(event.step as u64, || {
                    format!(
                        "epoch {}/{} loss {:.3} L0 {:.1}",
                        event.epoch, event.epochs, event.loss, event.l0
                    )
                });
            },
            on_trained,
            Some(checkpoints),
        );
        bars.into_inner()
            .expect("no panics while locked")
            .values()
            .for_each(Progress::finish);
        Ok(trained?)
    }
}

/// The `[sae]` table: lists are sweep axes (every combination is one SAE),
/// scalars are shared by every point. Defaults are the notebook's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SaeSweep {
    pub layer: Vec<String>,
    pub architecture: Vec<ArchitectureChoice>,
    /// Transcoder points read these layers ...
    pub transcoder_input: Vec<String>,
    /// ... and predict these, paired by position (fc2's sublayer by default;
    /// `["input", "fc1.post"]` and `["fc1.post", "fc2.post"]` replace both
    /// sublayers of the MLP).
    pub transcoder_output: Vec<String>,
    /// The architecture of transcoder points: any SAE architecture (a sweep axis).
    pub transcoder_architecture: Vec<sae::ArchitectureKind>,
    /// For the l1, norm_weighted_l1 and gated architectures.
    pub l1_coeff: Vec<f64>,
    /// For the topk, batchtopk and matryoshka_batchtopk architectures.
    pub k: Vec<usize>,
    /// For the jumprelu architecture: the weight of its L0 penalty.
    pub l0_coeff: Vec<f64>,
    pub d_sae: Vec<usize>,
    pub seed: Vec<u64>,
    pub lr: f64,
    pub epochs: usize,
    pub batch_size: usize,
    pub shuffle: bool,
    pub l1_reduction: sae::Reduction,
    /// "architecture" (each one's paper), "uniform" (the notebook) or "tied" (W_enc = W_dec^T).
    pub encoder_init: EncoderInitChoice,
    /// "architecture" (each one's paper), "zero" (the notebook) or "data_mean".
    pub b_dec_init: DecoderBiasInitChoice,
    /// StepLR: every `lr_step_epochs` epochs multiply the lr by `lr_gamma` (gamma 1 = constant).
    pub lr_step_epochs: usize,
    pub lr_gamma: f64,
    /// SAELens' warm-up and decay instead of StepLR (which then needs
    /// `lr_gamma = 1.0`): the lr rises linearly over the first
    /// `lr_warmup_steps` steps and falls linearly to 0 over the last
    /// `lr_decay_steps`. Both 0: StepLR.
    pub lr_warmup_steps: usize,
    pub lr_decay_steps: usize,
    /// The sparsity coefficient rises linearly over the first this-many steps (0: off).
    pub sparsity_warmup_steps: usize,
    /// Clip every gradient together to this global L2 norm before Adam
    /// (SAELens clips at 1.0); 0: off (the notebook).
    pub clip_grad_norm: f64,
    /// "none" (the notebook), or "expected_average_only_in": train on rows
    /// scaled to a mean norm of sqrt(width), folded into the saved weights.
    pub normalize_activations: sae::NormalizeActivations,
    /// Steps without firing after which a feature counts as dead.
    pub dead_window_steps: usize,
    /// The TopK family's AuxK latents; unset: `sae::default_k_aux`, half
    /// the layer's width (64 for fc2.pre), as the TopK paper.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k_aux: Option<usize>,
    pub aux_coeff: f64,
    /// Which dead pre-activations AuxK uses: "relu" (OpenAI, dictionary_learning)
    /// or "raw" (SAELens: negative ones too, so latents negative everywhere still learn).
    pub aux_input: sae::AuxInput,
    /// The BatchTopK family's running inference threshold: the weight of each
    /// batch's smallest selected activation.
    pub threshold_lr: f64,
    /// Matryoshka's nested prefixes, as fractions of d_sae (the whole is always last).
    pub prefix_fractions: Vec<f64>,
    /// JumpReLU's straight-through kernel width and its thresholds' start.
    pub bandwidth: f64,
    pub init_threshold: f64,
    /// Resample dead features every this many steps (0 = never), up to
    /// `resample_until` steps; a sweep axis, so `[0, 20000]` compares both.
    pub resample_every_steps: Vec<usize>,
    pub resample_until: usize,
    pub resample_sample_rows: usize,
    pub path: TrainerPath,
    pub device: TrainerDevice,
}

/// A value of `sae.architecture`: an SAE architecture, or a transcoder
/// (SAELens' names) of `sae.transcoder_architecture`'s architectures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchitectureChoice {
    Sae(sae::ArchitectureKind),
    /// The encoder reads `transcoder_input`, the decoder predicts `transcoder_output`.
    Transcoder,
    /// A transcoder with a learned linear skip, `x @ W_skip^T`.
    SkipTranscoder,
}

impl ArchitectureChoice {
    pub fn name(self) -> &'static str {
        match self {
            ArchitectureChoice::Sae(architecture) => architecture.name(),
            ArchitectureChoice::Transcoder => "transcoder",
            ArchitectureChoice::SkipTranscoder => "skip_transcoder",
        }
    }

    fn all() -> impl Iterator<Item = ArchitectureChoice> {
        sae::ArchitectureKind::ALL
            .iter()
            .copied()
            .map(ArchitectureChoice::Sae)
            .chain([
                ArchitectureChoice::Transcoder,
                ArchitectureChoice::SkipTranscoder,
            ])
    }

    /// A transcoder's skip (`None` for an SAE).
    fn skip(self) -> Option<bool> {
        match self {
            ArchitectureChoice::Sae(_) => None,
            ArchitectureChoice::Transcoder => Some(false),
            ArchitectureChoice::SkipTranscoder => Some(true),
        }
    }
}

impl Serialize for ArchitectureChoice {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for ArchitectureChoice {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        ArchitectureChoice::all()
            .find(|choice| choice.name() == name)
            .ok_or_else(|| {
                let names: Vec<String> = ArchitectureChoice::all()
                    .map(|c| format!("`{}`", c.name()))
                    .collect();
                serde::de::Error::custom(format!(
                    "unknown architecture `{name}`, expected one of {}",
                    names.join(", ")
                ))
            })
    }
}

/// `sae.encoder_init`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EncoderInitChoice {
    /// See `sae::ArchitectureSpec::paper_init`.
    Architecture,
    Uniform,
    Tied,
}

/// `sae.b_dec_init`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecoderBiasInitChoice {
    /// See `sae::ArchitectureSpec::paper_init`.
    Architecture,
    Zero,
    DataMean,
}

/// `sae.path`: which trainer runs the points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainerPath {
    /// The fused CPU trainer.
    Fast,
    /// candle autograd (also on a GPU).
    Reference,
}

/// `sae.device`: where the reference path runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainerDevice {
    Cpu,
    /// The first CUDA GPU; needs a build with `--features cuda`.
    Cuda,
}

/// Rows of the pinned MNIST training split, which every SAE trains on.
const MNIST_TRAIN_ROWS: usize = 60_000;

/// A list axis's values as the config spells them, for refusals that name them.
fn listed<T: Serialize>(values: &[T]) -> Vec<String> {
    values
        .iter()
        .map(|v| match serde_json::to_value(v) {
            Ok(serde_json::Value::String(s)) => format!("{s:?}"),
            Ok(other) => other.to_string(),
            Err(_) => "?".to_string(),
        })
        .collect()
}

impl Default for SaeSweep {
    fn default() -> Self {
        let notebook = SaeConfig::default();
        let (lr_step_epochs, lr_gamma) = match notebook.lr_schedule {
            sae::LrSchedule::StepLr { step_epochs, gamma } => (step_epochs, gamma),
            sae::LrSchedule::Constant | sae::LrSchedule::WarmupDecay { .. } => (1, 1.0),
        };
        // Every architecture setting's default is sae's.
        let axes = sae::ArchitectureAxes::default();
        SaeSweep {
            layer: vec!["fc2.pre".into()],
            architecture: vec![ArchitectureChoice::Sae(notebook.architecture.kind())],
            transcoder_input: vec!["fc1.post".into()],
            transcoder_output: vec!["fc2.post".into()],
            transcoder_architecture: vec![notebook.architecture.kind()],
            l1_coeff: axes.l1_coeff,
            k: axes.k,
            l0_coeff: axes.l0_coeff,
            d_sae: vec![notebook.d_sae],
            seed: vec![notebook.seed],
            lr: notebook.optimizer.lr,
            epochs: notebook.epochs,
            batch_size: notebook.batch_size,
            shuffle: notebook.shuffle,
            l1_reduction: notebook.l1_reduction,
            encoder_init: EncoderInitChoice::Architecture,
            b_dec_init: DecoderBiasInitChoice::Architecture,
            lr_step_epochs,
            lr_gamma,
            lr_warmup_steps: 0,
            lr_decay_steps: 0,
            sparsity_warmup_steps: notebook.sparsity_warmup_steps,
            clip_grad_norm: notebook.clip_grad_norm,
            normalize_activations: notebook.normalize_activations,
            dead_window_steps: notebook.dead_window_steps,
            k_aux: axes.k_aux,
            aux_coeff: axes.aux_coeff,
            aux_input: axes.aux_input,
            threshold_lr: axes.threshold_lr,
            prefix_fractions: axes.prefix_fractions,
            bandwidth: axes.bandwidth,
            init_threshold: axes.init_threshold,
            resample_every_steps: vec![0],
            resample_until: 0,
            resample_sample_rows: 8192,
            path: TrainerPath::Fast,
            device: TrainerDevice::Cpu,
        }
    }
}

/// One SAE (or transcoder) of the sweep.
#[derive(Clone, Debug)]
pub struct Point {
    pub name: String,
    /// The layer the encoder reads.
    pub layer: String,
    /// The layer the decoder predicts: `layer` for an SAE.
    pub output: String,
    pub cfg: SaeConfig,
    pub reference_path: bool,
    /// The `[sae]` keys that shape this point, with its values, as the user
    /// writes them: the stage's params, so `status` and `explain` speak in
    /// config keys. `cfg` is a function of these and the code.
    pub params: serde_json::Value,
}

impl SaeSweep {
    pub fn validate(&self) -> Result<()> {
        // Every list axis: at least one value, and no value twice (two
        // points that would be one artifact).
        let axes: [(&str, Vec<String>); 9] = [
            ("layer", listed(&self.layer)),
            ("architecture", listed(&self.architecture)),
            (
                "transcoder_architecture",
                listed(&self.transcoder_architecture),
            ),
            ("l1_coeff", listed(&self.l1_coeff)),
            ("k", listed(&self.k)),
            ("l0_coeff", listed(&self.l0_coeff)),
            ("d_sae", listed(&self.d_sae)),
            ("seed", listed(&self.seed)),
            ("resample_every_steps", listed(&self.resample_every_steps)),
        ];
        for (key, values) in axes {
            if values.is_empty() {
                bail!("sae.{key} is an empty list: a sweep axis needs at least one value");
            }
            if let Some((i, twice)) = values
                .iter()
                .enumerate()
                .find(|(i, v)| values[..*i].contains(v))
            {
                bail!(
                    "sae.{key} lists {twice} twice (entries {} and {}): each value of a sweep axis makes its own points",
                    values.iter().position(|v| v == twice).expect("listed before") + 1,
                    i + 1
                );
            }
        }
        if self.prefix_fractions.is_empty() {
            bail!("sae.prefix_fractions is an empty list: Matryoshka needs at least one nested prefix (the whole dictionary is always the last)");
        }
        if self.batch_size > MNIST_TRAIN_ROWS {
            bail!(
                "sae.batch_size = {} is more than the {MNIST_TRAIN_ROWS} training rows: a batch cannot hold more rows than there are",
                self.batch_size
            );
        }
        let named = self
            .layer
            .iter()
            .map(|l| ("layer", l))
            .chain(self.transcoder_layers());
        for (key, layer) in named {
            if mlp::layer_width(layer).is_none() {
                bail!(
                    "sae.{key} names {layer:?}, which is not a layer; layers are {}",
                    mlp::LAYER_NAMES.join(", ")
                );
            }
        }
        let pairs = self.transcoder_input.len();
        if pairs == 0 || self.transcoder_output.len() != pairs {
            bail!(
                "sae.transcoder_input = {:?} and sae.transcoder_output = {:?} must pair up: as many outputs as inputs, at least one",
                self.transcoder_input,
                self.transcoder_output
            );
        }
        // One pair names its keys plainly; several, with the pair's index.
        let key = |name: &str, i: usize| {
            if pairs == 1 {
                format!("sae.{name}")
            } else {
                format!("sae.{name}[{i}]")
            }
        };
        let position = |layer: &str| mlp::LAYER_NAMES.iter().position(|l| *l == layer);
        for (i, (input, output)) in self.transcoder_pairs().enumerate() {
            let (input_key, output_key) = (key("transcoder_input", i), key("transcoder_output", i));
            if input == output {
                bail!(
                    "{output_key} = {output:?} is {input_key}: a transcoder predicts another layer than it reads"
                );
            }
            if position(output) < position(input) {
                bail!(
                    "{output_key} = {output:?} comes before {input_key} = {input:?} in the network ({}): a transcoder predicts a later layer from an earlier one",
                    mlp::LAYER_NAMES.join(" -> ")
                );
            }
        }
        if self.warms_up_or_decays() && self.lr_gamma != 1.0 {
            bail!(
                "sae.lr_warmup_steps = {} and sae.lr_decay_steps = {} replace StepLR, but sae.lr_gamma = {}: set sae.lr_gamma = 1.0 with them",
                self.lr_warmup_steps,
                self.lr_decay_steps,
                self.lr_gamma
            );
        }
        if self.device == TrainerDevice::Cuda && self.path != TrainerPath::Reference {
            bail!(
                "sae.device = \"cuda\" needs sae.path = \"reference\": the fast path is CPU-only"
            );
        }
        if let Some(&every) = self
            .resample_every_steps
            .iter()
            .find(|&&every| every > 0 && self.resample_until < every)
        {
            bail!("sae.resample_until = {} is below sae.resample_every_steps = {every}: no resampling would happen", self.resample_until);
        }
        let points = self.points();
        if points.len() > 256 {
            bail!(
                "the sae sweep has {} points; at most 256 are allowed in one config",
                points.len()
            );
        }
        for point in points {
            point.cfg.validate().map_err(|e| match e {
                sae::SaeError::InvalidKey { key, rule, value } => anyhow::anyhow!(
                    "sae.{} = {value} is out of range: it must be {rule} (in sweep point {})",
                    sweep_key(&key),
                    point.name
                ),
                other => anyhow::anyhow!("sae point {}: {other}", point.name),
            })?;
        }
        Ok(())
    }

    /// Whether the lr follows SAELens' warm-up and decay rather than StepLR.
    fn warms_up_or_decays(&self) -> bool {
        self.lr_warmup_steps > 0 || self.lr_decay_steps > 0
    }

    /// Whether any point is a transcoder (its layers must be extracted).
    /// Every layer the transcoder keys name, with its key.
    pub fn transcoder_layers(&self) -> impl Iterator<Item = (&'static str, &String)> {
        let inputs = self
            .transcoder_input
            .iter()
            .map(|l| ("transcoder_input", l));
        inputs.chain(
            self.transcoder_output
                .iter()
                .map(|l| ("transcoder_output", l)),
        )
    }

    /// Each transcoder's (input, output) layers.
    pub fn transcoder_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.transcoder_input
            .iter()
            .zip(&self.transcoder_output)
            .map(|(i, o)| (i.as_str(), o.as_str()))
    }

    pub fn has_transcoders(&self) -> bool {
        self.architecture.iter().any(|v| v.skip().is_some())
    }

    /// Every combination of the list-valued keys: SAE architectures over
    /// `layer`, transcoders over `transcoder_architecture` on their own two layers.
    /// (See [`sweep_key`] for how a point's `SaeConfig` keys map back to these.)
    pub fn points(&self) -> Vec<Point> {
        let mut units = Vec::new();
        for layer in &self.layer {
            for &choice in &self.architecture {
                if let ArchitectureChoice::Sae(kind) = choice {
                    units.push(Unit {
                        input: layer,
                        output: layer,
                        choice,
                        kind,
                    });
                }
            }
        }
        for (input, output) in self.transcoder_pairs() {
            for &choice in self.architecture.iter().filter(|c| c.skip().is_some()) {
                for &kind in &self.transcoder_architecture {
                    units.push(Unit {
                        input,
                        output,
                        choice,
                        kind,
                    });
                }
            }
        }
        let mut out = Vec::new();
        for unit in &units {
            let axes = sae::ArchitectureAxes {
                l1_coeff: self.l1_coeff.clone(),
                k: self.k.clone(),
                l0_coeff: self.l0_coeff.clone(),
                k_aux: self.k_aux,
                aux_coeff: self.aux_coeff,
                aux_input: self.aux_input,
                threshold_lr: self.threshold_lr,
                prefix_fractions: self.prefix_fractions.clone(),
                bandwidth: self.bandwidth,
                init_threshold: self.init_threshold,
            };
            let transcoder = unit.choice.skip().map(|skip| sae::Transcoder {
                d_out: mlp::layer_width(unit.output).unwrap_or(0),
                skip,
            });
            let (input, output) = (unit.input, unit.output);
            let (folder, kind) = match transcoder {
                None => (input.to_string(), String::new()),
                Some(_) => (
                    format!("{input}_to_{output}"),
                    format!("{}-", unit.choice.name()),
                ),
            };
            for architecture in unit.kind.architectures(&axes) {
                let label = format!("{kind}{}", architecture.label());
                for &d_sae in &self.d_sae {
                    for &seed in &self.seed {
                        for &every in &self.resample_every_steps {
                            let resampled = if every > 0 {
                                format!("/rs{every}")
                            } else {
                                String::new()
                            };
                            let cfg = self.config(
                                input,
                                transcoder,
                                architecture.clone(),
                                d_sae,
                                seed,
                                every,
                            );
                            out.push(Point {
                                name: format!("sae/{folder}/{label}/d{d_sae}/s{seed}{resampled}"),
                                layer: input.to_string(),
                                output: output.to_string(),
                                params: self.point_params(&cfg, unit, every),
                                cfg,
                                reference_path: self.path == TrainerPath::Reference,
                            });
                        }
                    }
                }
            }
        }
        out
    }

    /// A point's `[sae]` keys and values: the shared keys, its sweep
    /// coordinates, and its architecture's own params (named as in the config).
    fn point_params(
        &self,
        cfg: &SaeConfig,
        unit: &Unit,
        resample_every_steps: usize,
    ) -> serde_json::Value {
        let mut params = serde_json::json!({
            "layer": unit.input,
            "architecture": unit.choice,
            "d_sae": cfg.d_sae,
            "seed": cfg.seed,
            "lr": self.lr,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "l1_reduction": self.l1_reduction,
            "encoder_init": cfg.encoder_init,
            "b_dec_init": cfg.b_dec_init,
            "lr_step_epochs": self.lr_step_epochs,
            "lr_gamma": self.lr_gamma,
            "dead_window_steps": self.dead_window_steps,
            "resample_every_steps": resample_every_steps,
            "path": self.path,
            "device": self.device,
        });
        if cfg.transcoder.is_some() {
            params["transcoder_architecture"] = serde_json::json!(unit.kind);
            params["transcoder_output"] = serde_json::json!(unit.output);
        }
        if self.warms_up_or_decays() {
            params["lr_warmup_steps"] = self.lr_warmup_steps.into();
            params["lr_decay_steps"] = self.lr_decay_steps.into();
        }
        if self.sparsity_warmup_steps > 0 {
            params["sparsity_warmup_steps"] = self.sparsity_warmup_steps.into();
        }
        if self.clip_grad_norm != 0.0 {
            params["clip_grad_norm"] = self.clip_grad_norm.into();
        }
        if self.normalize_activations != sae::NormalizeActivations::None {
            params["normalize_activations"] = serde_json::json!(self.normalize_activations);
        }
        if resample_every_steps > 0 {
            params["resample_until"] = self.resample_until.into();
            params["resample_sample_rows"] = self.resample_sample_rows.into();
        }
        // The architecture's own fields carry their config names (l1_coeff, k, k_aux,
        // aux_coeff, aux_input, l0_coeff, threshold_lr, prefix_fractions, bandwidth, init_threshold).
        if let serde_json::Value::Object(fields) =
            serde_json::to_value(&cfg.architecture).expect("an architecture serialises")
        {
            for (key, value) in fields.into_iter().filter(|(key, _)| key != "kind") {
                params[key] = value;
            }
        }
        params
    }

    /// The init a point of `architecture` from `d_in` to `d_out` starts from.
    /// A paper's tied encoder needs equal widths: between unequal ones the
    /// default falls back to an independent encoder (an explicit "tied" is
    /// refused by `SaeConfig::validate`).
    fn init(
        &self,
        architecture: &Architecture,
        d_in: usize,
        d_out: usize,
    ) -> (sae::EncoderInit, sae::DecoderBiasInit) {
        let (paper_encoder, paper_b_dec) = architecture.paper_init();
        let encoder = match self.encoder_init {
            EncoderInitChoice::Architecture if d_in != d_out => sae::EncoderInit::Uniform,
            EncoderInitChoice::Architecture => paper_encoder,
            EncoderInitChoice::Uniform => sae::EncoderInit::Uniform,
            EncoderInitChoice::Tied => sae::EncoderInit::Tied,
        };
        let b_dec = match self.b_dec_init {
            DecoderBiasInitChoice::Architecture => paper_b_dec,
            DecoderBiasInitChoice::Zero => sae::DecoderBiasInit::Zero,
            DecoderBiasInitChoice::DataMean => sae::DecoderBiasInit::DataMean,
        };
        (encoder, b_dec)
    }

    fn config(
        &self,
        layer: &str,
        transcoder: Option<sae::Transcoder>,
        architecture: Architecture,
        d_sae: usize,
        seed: u64,
        resample_every_steps: usize,
    ) -> SaeConfig {
        let resample = (resample_every_steps > 0).then(|| sae::ResampleConfig {
            schedule: sae::ResampleSchedule::Every {
                every_steps: resample_every_steps,
                until: self.resample_until,
            },
            sample_rows: self.resample_sample_rows,
        });
        let d_in = mlp::layer_width(layer).unwrap_or(0);
        let d_out = transcoder.map_or(d_in, |t| t.d_out);
        let (encoder_init, b_dec_init) = self.init(&architecture, d_in, d_out);
        SaeConfig {
            d_in,
            transcoder,
            d_sae,
            architecture,
            l1_reduction: self.l1_reduction,
            encoder_init,
            b_dec_init,
            optimizer: sae::AdamConfig {
                lr: self.lr,
                ..sae::AdamConfig::default()
            },
            lr_schedule: if self.warms_up_or_decays() {
                sae::LrSchedule::WarmupDecay {
                    warmup_steps: self.lr_warmup_steps,
                    decay_steps: self.lr_decay_steps,
                }
            } else {
                sae::LrSchedule::StepLr {
                    step_epochs: self.lr_step_epochs,
                    gamma: self.lr_gamma,
                }
            },
            sparsity_warmup_steps: self.sparsity_warmup_steps,
            clip_grad_norm: self.clip_grad_norm,
            normalize_activations: self.normalize_activations,
            batch_size: self.batch_size,
            epochs: self.epochs,
            shuffle: self.shuffle,
            dead_window_steps: self.dead_window_steps,
            resample,
            seed,
        }
    }
}

/// A kind of point before its sweep coordinates: the layers it reads and
/// writes, its `sae.architecture` value and the architecture it trains.
struct Unit<'a> {
    input: &'a str,
    output: &'a str,
    choice: ArchitectureChoice,
    kind: sae::ArchitectureKind,
}

/// The `[sae]` key a `SaeConfig` key comes from: an architecture's own
/// params keep their names (`architecture.k` is `k`), the rest are spelt flat.
fn sweep_key(cfg_key: &str) -> String {
    match cfg_key {
        "optimizer.lr" => "lr".into(),
        "lr_schedule.step_epochs" => "lr_step_epochs".into(),
        "lr_schedule.gamma" => "lr_gamma".into(),
        "resample.sample_rows" => "resample_sample_rows".into(),
        "resample.schedule.every_steps" => "resample_every_steps".into(),
        other => other.strip_prefix("architecture.").unwrap_or(other).into(),
    }
}
