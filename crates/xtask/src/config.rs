//! `saelab.toml`: the config file, its presets and `--set` overrides.
//!
//! Every key is checked against the defaults before anything runs: an unknown
//! key, a wrong type or an out-of-range value stops with one sentence that names
//! the key and where it came from.
//!
//! One file, over 600 lines: parsing, merging presets and `--set`, and the
//! checks are one pass over the same TOML table and its defaults.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use toml::{Table, Value};

use crate::sweep::{SaeSweep, TrainerDevice};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub mnist: MnistConfig,
    pub mlp: mlp::TrainConfig,
    pub extract: ExtractConfig,
    pub sae: SaeSweep,
    pub analysis: analysis::AnalysisConfig,
    /// The `circuits` stage: pruning shares (circuit-tracer's), ablations, faithfulness.
    pub circuits: circuits::CircuitsConfig,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MnistConfig {
    /// A folder holding the four MNIST files, raw or .gz; "" means not set.
    pub dir: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExtractConfig {
    pub layers: Vec<String>,
    pub rows_per_shard: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mnist: MnistConfig::default(),
            mlp: mlp::TrainConfig::default(),
            extract: ExtractConfig::default(),
            sae: SaeSweep::default(),
            analysis: analysis::AnalysisConfig::default(),
            circuits: circuits::CircuitsConfig::default(),
        }
    }
}

impl Default for ExtractConfig {
    fn default() -> Self {
        ExtractConfig {
            // Every layer but the input (784 wide), which is cached when asked for.
            layers: mlp::LAYER_NAMES
                .iter()
                .filter(|&&l| l != mlp::INPUT_LAYER)
                .map(|s| s.to_string())
                .collect(),
            rows_per_shard: 16384,
        }
    }
}

impl ExtractConfig {
    pub fn validate(&self) -> Result<()> {
        if self.layers.is_empty() {
            bail!(
                "extract.layers is empty: name at least one of {}",
                mlp::LAYER_NAMES.join(", ")
            );
        }
        for layer in &self.layers {
            if mlp::layer_width(layer).is_none() {
                bail!(
                    "extract.layers names {layer:?}, which is not a layer; layers are {}",
                    mlp::LAYER_NAMES.join(", ")
                );
            }
        }
        if self.rows_per_shard == 0 || self.rows_per_shard > 1 << 20 {
            bail!(
                "extract.rows_per_shard = {} is out of range: it must be in 1..=1048576",
                self.rows_per_shard
            );
        }
        Ok(())
    }
}

/// Where the config comes from: the file, a preset in it, and `--set` overrides.
#[derive(Clone, Debug, Default)]
pub struct ConfigSources {
    pub preset: Option<String>,
    pub overrides: Vec<String>,
}

/// The config a run uses, the file's own (no preset, no `--set`) and its
/// presets (gc keeps what any of them reaches).
pub struct Loaded {
    pub config: Config,
    pub file_default: Config,
    pub presets: BTreeMap<String, Config>,
}

pub fn load(path: &Path, sources: &ConfigSources) -> Result<Loaded> {
    let name = path.display().to_string();
    let mut table = if path.exists() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{name}: cannot read the config file"))?;
        text.parse::<Table>().map_err(|e| {
            let at = e.span().map_or(String::new(), |span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let line_start = before.rfind('\n').map_or(0, |n| n + 1);
                let column = before[line_start..].chars().count() + 1;
                format!(" at line {line}, column {column}")
            });
            let message = e.message().trim_end().replace('\n', "; ");
            anyhow::anyhow!("{name}: not valid TOML{at}: {message}")
        })?
    } else {
        Table::new()
    };
    let presets_table = match table.remove("presets") {
        None => Table::new(),
        Some(Value::Table(t)) => t,
        Some(_) => bail!("{name}: presets must be a table of tables, as [presets.NAME]"),
    };
    let defaults = known_keys();
    check_against(&defaults, &mut table, "", &name)?;
    let file_default = finish(table.clone(), &name)?;
    for (preset, body) in &presets_table {
        if !body.is_table() {
            bail!("{name}: presets.{preset} must be a table")
        }
    }
    let mut presets = BTreeMap::new();
    let mut resolved = BTreeMap::new();
    for preset in presets_table.keys() {
        let source = format!("{name} [presets.{preset}]");
        let mut body = resolve_preset(&presets_table, preset, &name)?;
        check_against(&defaults, &mut body, "", &source)?;
        let mut merged = table.clone();
        merge(&mut merged, &body);
        presets.insert(preset.clone(), finish(merged, &source)?);
        resolved.insert(preset.clone(), body);
    }
    if let Some(preset) = &sources.preset {
        let Some(body) = resolved.get(preset) else {
            let known: Vec<&String> = presets_table.keys().collect();
            bail!("--preset {preset}: {name} has no preset of that name; it has {known:?}");
        };
        merge(&mut table, body);
    }
    for assignment in &sources.overrides {
        let source = format!("--set {assignment}");
        let (key, text) = assignment
            .split_once('=')
            .with_context(|| format!("{source}: expected KEY=VALUE, e.g. mlp.lr=0.01"))?;
        if key.trim().split('.').any(str::is_empty) {
            bail!("{source}: {:?} is not a key: expected KEY=VALUE with a dotted key before the '=', e.g. mlp.lr=0.01", key.trim());
        }
        let value = parse_value(text.trim());
        let mut patch = Table::new();
        insert_path(&mut patch, key.trim(), value);
        check_against(&defaults, &mut patch, "", &source)?;
        merge(&mut table, &patch);
    }
    let mut applied: Vec<String> = sources
        .preset
        .iter()
        .map(|p| format!("--preset {p}"))
        .collect();
    applied.extend(sources.overrides.iter().map(|o| format!("--set {o}")));
    let source = if applied.is_empty() {
        name
    } else {
        format!("{name} with {}", applied.join(" "))
    };
    let config = finish(table, &source)?;
    Ok(Loaded {
        config,
        file_default,
        presets,
    })
}

/// Every key a config may set, with a value of its type: the defaults, and
/// the keys whose default is "unset" (sae's own: `sae.k_aux`, half the
/// layer's width), which the defaults' TOML leaves out.
fn known_keys() -> Value {
    let mut defaults = Value::try_from(Config::default()).expect("the default config serialises");
    if let Some(Value::Table(sae)) = defaults.get_mut("sae") {
        sae.entry("k_aux").or_insert(Value::Integer(1));
    }
    defaults
}

/// Turns a checked table into a validated config.
fn finish(mut table: Table, source: &str) -> Result<Config> {
    let defaults = known_keys();
    widen_integers(&defaults, &mut table);
    let config: Config = serde_path_to_error::deserialize(Value::Table(table)).map_err(
        |e: serde_path_to_error::Error<toml::de::Error>| {
            anyhow::anyhow!("{source}: {}: {}", e.path(), e.inner().message())
        },
    )?;
    config
        .mlp
        .validate()
        .map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
    config
        .extract
        .validate()
        .map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
    config
        .sae
        .validate()
        .map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
    validate_analysis(&config.analysis).map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
    config
        .circuits
        .validate()
        .map_err(|e| anyhow::anyhow!("{source}: circuits.{e}"))?;
    check_across_sections(&config).map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
    Ok(config)
}

/// What one section's values mean for another's, checked before any stage
/// runs rather than after the stages that precede the one that would fail.
fn check_across_sections(config: &Config) -> Result<()> {
    let sae = &config.sae;
    let transcoder_layers = sae.transcoder_layers();
    let read = sae
        .layer
        .iter()
        .map(|l| ("layer", l))
        .chain(transcoder_layers.filter(|_| sae.has_transcoders()));
    for (key, layer) in read {
        if !config.extract.layers.contains(layer) {
            bail!(
                "sae.{key} names {layer:?}, but extract.layers = {:?} does not cache it: add it to extract.layers",
                config.extract.layers
            );
        }
    }
    if config.sae.device == TrainerDevice::Cuda && !cfg!(feature = "cuda") {
        bail!("sae.device = \"cuda\" needs an xtask built with CUDA, and this one was built without it: run `cargo run --release -p xtask --features cuda -- ...`");
    }
    Ok(())
}

/// A TOML literal if it parses as one (`0.01`, `true`, `[1, 2]`, `"x"`), else a bare string.
fn parse_value(text: &str) -> Value {
    // TOML spells these in lower case only; a user typing NaN means the float.
    let lower = text.to_ascii_lowercase();
    if ["nan", "+nan", "-nan", "inf", "+inf", "-inf"].contains(&lower.as_str()) {
        return Value::Float(lower.parse().expect("Rust parses nan and inf"));
    }
    format!("v = {text}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(text.to_string()))
}

fn insert_path(table: &mut Table, dotted: &str, value: Value) {
    match dotted.split_once('.') {
        None => {
            table.insert(dotted.to_string(), value);
        }
        Some((head, rest)) => {
            let sub = table
                .entry(head.to_string())
                .or_insert_with(|| Value::Table(Table::new()));
            if let Value::Table(sub) = sub {
                insert_path(sub, rest, value);
            }
        }
    }
}

/// A preset's keys with its `extends = "OTHER"` chain applied, the
/// furthest ancestor first (so the preset's own keys win).
fn resolve_preset(presets: &Table, preset: &str, file: &str) -> Result<Table> {
    let mut chain: Vec<&str> = Vec::new();
    let mut current = preset;
    loop {
        if chain.contains(&current) {
            chain.push(current);
            bail!(
                "{file}: presets.{preset} extends itself ({})",
                chain.join(" -> ")
            );
        }
        let Some(Value::Table(body)) = presets.get(current) else {
            let known: Vec<&String> = presets.keys().collect();
            bail!(
                "{file}: presets.{}.extends = {current:?} names no preset; the presets are {known:?}",
                chain.last().unwrap_or(&preset)
            );
        };
        chain.push(current);
        match body.get("extends") {
            None => break,
            Some(Value::String(parent)) => current = parent,
            Some(other) => bail!(
                "{file}: presets.{current}.extends must be the name of another preset, got {other}"
            ),
        }
    }
    let mut merged = Table::new();
    for name in chain.iter().rev() {
        let mut body = presets[*name].as_table().expect("checked above").clone();
        body.remove("extends");
        merge(&mut merged, &body);
    }
    Ok(merged)
}

fn merge(base: &mut Table, patch: &Table) {
    for (key, value) in patch {
        match (base.get_mut(key), value) {
            (Some(Value::Table(b)), Value::Table(p)) => merge(b, p),
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

/// Keys an earlier saelab read, and what they are called now.
const RENAMED_KEYS: [(&str, &str); 2] = [
    ("sae.variant", "sae.architecture"),
    ("sae.transcoder_variant", "sae.transcoder_architecture"),
];

/// Every key must exist in the defaults with a compatible type.
/// A single value where a list is expected (`--set sae.l1_coeff=0.01`) becomes a
/// one-element list.
fn check_against(defaults: &Value, table: &mut Table, prefix: &str, source: &str) -> Result<()> {
    let Value::Table(known) = defaults else {
        unreachable!("checked tables only")
    };
    for (key, value) in table.iter_mut() {
        if let (Some(Value::Array(d)), false) =
            (known.get(key), value.is_array() || value.is_table())
        {
            if d.first().is_some_and(|first| same_type(first, value)) {
                *value = Value::Array(vec![value.clone()]);
            }
        }
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let Some(default) = known.get(key) else {
            if let Some((_, new)) = RENAMED_KEYS.iter().find(|(old, _)| *old == path) {
                bail!("{source}: {path} was renamed {new}; it takes the same values");
            }
            let names: Vec<&String> = known.keys().collect();
            let place = if prefix.is_empty() {
                "at the top level".to_string()
            } else {
                format!("in [{prefix}]")
            };
            bail!(
                "{source}: unknown key {path}; the keys {place} are {}",
                names
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        match (default, value) {
            (Value::Table(_), Value::Table(sub)) => check_against(default, sub, &path, source)?,
            (Value::Array(d), Value::Array(v)) => {
                if let Some(first) = d.first() {
                    if let Some(bad) = v.iter().find(|item| !same_type(first, item)) {
                        bail!(
                            "{source}: {path} must be a list of {}s, but holds {bad}",
                            first.type_str()
                        );
                    }
                    if let (Value::Integer(_), Some(bad)) = (
                        first,
                        v.iter()
                            .find(|item| item.as_integer().is_some_and(|i| i < 0)),
                    ) {
                        bail!("{source}: {path} holds {bad}, which is out of range: every value must be a whole number >= 0");
                    }
                }
            }
            (Value::Array(d), v) if !v.is_table() => {
                let item = d
                    .first()
                    .map_or("value".to_string(), |f| f.type_str().to_string());
                bail!(
                    "{source}: {path} must be {} or a list of {item}s, got {v}",
                    with_article(&item)
                )
            }
            (d, v) if !same_type(d, v) => {
                bail!(
                    "{source}: {path} must be {}, got {v}",
                    with_article(d.type_str())
                )
            }
            // Every integer saelab reads is a count, a size or a seed.
            (Value::Integer(_), Value::Integer(i)) if *i < 0 => {
                bail!("{source}: {path} = {i} is out of range: it must be a whole number >= 0")
            }
            _ => {}
        }
    }
    Ok(())
}

fn with_article(noun: &str) -> String {
    let article = if noun.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {noun}")
}

fn same_type(default: &Value, value: &Value) -> bool {
    matches!((default, value), (Value::Float(_), Value::Integer(_)))
        || default.type_str() == value.type_str()
}

/// `lr = 1` means 1.0 where the default is a float.
fn widen_integers(defaults: &Value, table: &mut Table) {
    let Value::Table(known) = defaults else {
        return;
    };
    for (key, value) in table.iter_mut() {
        match (known.get(key), value) {
            (Some(d @ Value::Table(_)), Value::Table(sub)) => widen_integers(d, sub),
            (Some(Value::Float(_)), v @ Value::Integer(_)) => {
                *v = Value::Float(v.as_integer().unwrap() as f64)
            }
            (Some(Value::Array(d)), Value::Array(items))
                if matches!(d.first(), Some(Value::Float(_))) =>
            {
                for item in items.iter_mut() {
                    if let Value::Integer(i) = item {
                        *item = Value::Float(*i as f64);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Params of `actual` that differ from `default`, as `key=value` strings.
pub fn differences(
    default: &serde_json::Value,
    actual: &serde_json::Value,
    prefix: &str,
    out: &mut Vec<String>,
) {
    match (default, actual) {
        (serde_json::Value::Object(d), serde_json::Value::Object(a)) => {
            for (key, value) in a {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                differences(
                    d.get(key).unwrap_or(&serde_json::Value::Null),
                    value,
                    &path,
                    out,
                );
            }
        }
        (d, a) if d != a => out.push(format!("{prefix}={a}")),
        _ => {}
    }
}

fn validate_analysis(cfg: &analysis::AnalysisConfig) -> Result<()> {
    let probe = &cfg.probe;
    if probe.ks.is_empty() || probe.ks.iter().any(|&k| k == 0 || k > 4096) {
        bail!(
            "analysis.probe.ks = {:?} is out of range: it must list k values in 1..=4096",
            probe.ks
        );
    }
    if probe.train_rows < 10 {
        bail!(
            "analysis.probe.train_rows = {} is out of range: it must be at least 10",
            probe.train_rows
        );
    }
    if probe.iterations == 0 {
        bail!("analysis.probe.iterations = 0 is out of range: it must be at least 1");
    }
    if !(probe.tolerance > 0.0 && probe.tolerance.is_finite()) {
        bail!(
            "analysis.probe.tolerance = {} is out of range: it must be a positive number",
            probe.tolerance
        );
    }
    if cfg.dashboards_per_criterion > 12 {
        bail!("analysis.dashboards_per_criterion = {} is out of range: at most 12 (5 criteria, 60 dashboards)", cfg.dashboards_per_criterion);
    }
    if !(1..=64).contains(&cfg.mi_bins) {
        bail!(
            "analysis.mi_bins = {} is out of range: it must be in 1..=64",
            cfg.mi_bins
        );
    }
    if cfg.min_support == 0 {
        bail!("analysis.min_support = 0 is out of range: it must be at least 1 row");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads `toml` (written to a temporary file) with `--preset`/`--set` sources.
    fn load_text(toml: &str, preset: Option<&str>, overrides: &[&str]) -> Result<Loaded> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("saelab.toml");
        std::fs::write(&path, toml).unwrap();
        load(
            &path,
            &ConfigSources {
                preset: preset.map(str::to_string),
                overrides: overrides.iter().map(|s| s.to_string()).collect(),
            },
        )
    }

    fn refusal(toml: &str, overrides: &[&str]) -> String {
        match load_text(toml, None, overrides) {
            Ok(_) => panic!("{toml:?} {overrides:?} was accepted"),
            Err(e) => format!("{e:#}"),
        }
    }

    /// A sweep's settings other than its architectures.
    fn sae_points_regime(sweep: &crate::sweep::SaeSweep) -> crate::sweep::SaeSweep {
        crate::sweep::SaeSweep {
            architecture: Vec::new(),
            ..sweep.clone()
        }
    }

    #[test]
    fn the_shipped_saelab_toml_without_presets_is_the_built_in_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../saelab.toml");
        let loaded = load(&path, &ConfigSources::default()).unwrap();
        assert_eq!(loaded.config, Config::default());
        // Every preset loads and differs from the defaults.
        let names: Vec<&String> = loaded.presets.keys().collect();
        assert_eq!(
            names,
            [
                "adam",
                "circuits",
                "dead-features",
                "family",
                "l1-sweep",
                "living-family",
                "living-zoo",
                "matched",
                "practitioner",
                "resample",
                "topk",
                "zoo"
            ]
        );
        // circuits: a transcoder per sublayer, the first from the cached pixels.
        let circuits = &loaded.presets["circuits"];
        assert!(circuits
            .extract
            .layers
            .iter()
            .any(|l| l == mlp::INPUT_LAYER));
        assert!(!loaded
            .config
            .extract
            .layers
            .iter()
            .any(|l| l == mlp::INPUT_LAYER));
        let points = circuits.sae.points();
        assert_eq!(
            points.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            [
                "sae/input_to_fc1.post/transcoder-topk-k32/d256/s0",
                "sae/fc1.post_to_fc2.post/transcoder-topk-k32/d256/s0"
            ]
        );
        let widths: Vec<(usize, usize)> =
            points.iter().map(|p| (p.cfg.d_in, p.cfg.d_out())).collect();
        assert_eq!(widths, [(784, 128), (128, 128)]);
        // living-zoo is practitioner's regime with every architecture.
        let (zoo, regime) = (
            &loaded.presets["living-zoo"].sae,
            &loaded.presets["practitioner"].sae,
        );
        assert_eq!(zoo.architecture.len(), 9);
        assert_eq!(
            sae_points_regime(zoo),
            sae_points_regime(regime),
            "living-zoo's regime is practitioner's"
        );
        for (name, preset) in &loaded.presets {
            assert_ne!(preset, &Config::default(), "preset {name}");
        }
    }

    #[test]
    fn an_empty_file_and_partial_tables_take_the_defaults() {
        assert_eq!(load_text("", None, &[]).unwrap().config, Config::default());
        let partial = load_text("[mlp]\nlr = 0.01\n", None, &[]).unwrap().config;
        assert_eq!(
            partial.mlp,
            mlp::TrainConfig {
                lr: 0.01,
                ..mlp::TrainConfig::default()
            }
        );
        assert_eq!(partial.sae, Config::default().sae);
    }

    #[test]
    fn warmup_keys_make_saelens_schedule_and_name_themselves_in_the_params() {
        let overrides = [
            "sae.lr_warmup_steps=100",
            "sae.lr_decay_steps=200",
            "sae.lr_gamma=1.0",
            "sae.sparsity_warmup_steps=50",
            "sae.clip_grad_norm=1.0",
            "sae.normalize_activations=\"expected_average_only_in\"",
        ];
        let config = load_text("", None, &overrides).unwrap().config;
        let point = &config.sae.points()[0];
        assert_eq!(
            point.cfg.lr_schedule,
            sae::LrSchedule::WarmupDecay {
                warmup_steps: 100,
                decay_steps: 200
            }
        );
        assert_eq!(point.cfg.sparsity_warmup_steps, 50);
        assert_eq!(point.cfg.clip_grad_norm, 1.0);
        assert_eq!(point.params["clip_grad_norm"], 1.0);
        assert_eq!(
            point.cfg.normalize_activations,
            sae::NormalizeActivations::ExpectedAverageOnlyIn
        );
        assert_eq!(
            point.params["normalize_activations"],
            "expected_average_only_in"
        );
        assert_eq!(point.params["lr_warmup_steps"], 100);
        assert_eq!(point.params["sparsity_warmup_steps"], 50);
        // The default point names none of them (its params, and so its key, are unchanged).
        let default = &load_text("", None, &[]).unwrap().config.sae.points()[0];
        assert!(default.params.get("lr_warmup_steps").is_none());
        assert!(default.params.get("sparsity_warmup_steps").is_none());
        assert!(default.params.get("clip_grad_norm").is_none());
        assert!(default.params.get("normalize_activations").is_none());
        assert_eq!(default.cfg.lr_schedule, sae::LrSchedule::default());
    }

    #[test]
    fn topk_aux_latents_default_to_half_the_layer_width() {
        let k_aux = |overrides: &[&str]| -> Vec<usize> {
            let config = load_text("", None, overrides).unwrap().config;
            config
                .sae
                .points()
                .iter()
                .map(|p| p.cfg.aux_k().expect("a topk point").0)
                .collect()
        };
        let topk = "sae.architecture=[\"topk\"]";
        assert_eq!(k_aux(&[topk]), [64]);
        let layers = "sae.layer=[\"fc2.pre\", \"logits\"]";
        assert_eq!(k_aux(&[topk, layers]), [64, 5]);
        assert_eq!(k_aux(&[topk, "sae.k_aux=256"]), [256]);
    }

    #[test]
    fn transcoder_points_read_one_layer_and_write_another_once_whatever_the_layer_axis() {
        let points =
            |overrides: &[&str]| load_text("", None, overrides).unwrap().config.sae.points();
        let both = points(&[
            "sae.architecture=[\"l1\", \"transcoder\", \"skip_transcoder\"]",
            "sae.layer=[\"fc2.pre\", \"fc1.pre\"]",
        ]);
        let summary: Vec<(&str, &str, &str, Option<sae::Transcoder>)> = both
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.layer.as_str(),
                    p.output.as_str(),
                    p.cfg.transcoder,
                )
            })
            .collect();
        let transcoder = |skip| Some(sae::Transcoder { d_out: 128, skip });
        assert_eq!(
            summary,
            [
                ("sae/fc2.pre/l1-0.003/d1024/s0", "fc2.pre", "fc2.pre", None),
                ("sae/fc1.pre/l1-0.003/d1024/s0", "fc1.pre", "fc1.pre", None),
                (
                    "sae/fc1.post_to_fc2.post/transcoder-l1-0.003/d1024/s0",
                    "fc1.post",
                    "fc2.post",
                    transcoder(false)
                ),
                (
                    "sae/fc1.post_to_fc2.post/skip_transcoder-l1-0.003/d1024/s0",
                    "fc1.post",
                    "fc2.post",
                    transcoder(true)
                ),
            ]
        );
        assert_eq!(both[3].params["architecture"], "skip_transcoder");
        assert_eq!(both[3].params["transcoder_architecture"], "l1");
        // A TopK transcoder starts as TopK does where the widths allow a tied encoder ...
        let topk = |output: &str| {
            let point = points(&[
                "sae.architecture=[\"transcoder\"]",
                "sae.transcoder_architecture=[\"topk\"]",
                &format!("sae.transcoder_output=\"{output}\""),
            ])
            .remove(0);
            (point.cfg.encoder_init, point.cfg.b_dec_init)
        };
        assert_eq!(
            topk("fc2.post"),
            (sae::EncoderInit::Tied, sae::DecoderBiasInit::DataMean)
        );
        // ... and from an independent encoder where they differ.
        assert_eq!(
            topk("logits"),
            (sae::EncoderInit::Uniform, sae::DecoderBiasInit::DataMean)
        );
    }

    #[test]
    fn presets_and_overrides_apply_in_order() {
        let toml = "[presets.fast.mlp]\nepochs = 2\nlr = 0.5\n";
        let loaded = load_text(toml, Some("fast"), &["mlp.lr=0.25", "sae.k=[8, 16]"]).unwrap();
        assert_eq!(loaded.config.mlp.epochs, 2);
        assert_eq!(loaded.config.mlp.lr, 0.25);
        assert_eq!(loaded.config.sae.k, [8, 16]);
        // An integer where a float is expected widens; a scalar where a list is expected is one point.
        let widened = load_text("", None, &["mlp.lr=1", "sae.l1_coeff=0.01"]).unwrap();
        assert_eq!(widened.config.mlp.lr, 1.0);
        assert_eq!(widened.config.sae.l1_coeff, [0.01]);
    }

    #[test]
    fn a_preset_extends_another_whose_keys_its_own_override() {
        let toml = "[presets.base.mlp]\nepochs = 2\nlr = 0.5\n[presets.base.sae]\nepochs = 7\n\
                    [presets.more]\nextends = \"base\"\n[presets.more.mlp]\nlr = 0.25\n\
                    [presets.most]\nextends = \"more\"\n[presets.most.sae]\nd_sae = [64]\n";
        let most = load_text(toml, Some("most"), &[]).unwrap();
        assert_eq!(most.config.mlp.epochs, 2);
        assert_eq!(most.config.mlp.lr, 0.25);
        assert_eq!(most.config.sae.epochs, 7);
        assert_eq!(most.config.sae.d_sae, [64]);
        assert_eq!(most.presets["most"], most.config);
        assert_eq!(most.presets["more"].sae.d_sae, Config::default().sae.d_sae);
        for (toml, wanted) in [
            (
                "[presets.a]\nextends = \"nothing\"\n",
                "presets.a.extends = \"nothing\" names no preset; the presets are [\"a\"]",
            ),
            (
                "[presets.a]\nextends = \"b\"\n[presets.b]\nextends = \"a\"\n",
                "presets.a extends itself (a -> b -> a)",
            ),
            (
                "[presets.a]\nextends = 3\n",
                "presets.a.extends must be the name of another preset, got 3",
            ),
        ] {
            let Err(error) = load_text(toml, None, &[]) else {
                panic!("{toml} was accepted")
            };
            let message = format!("{error:#}");
            assert!(message.contains(wanted), "{message}");
            assert!(!message.contains('\n'), "{message}");
        }
    }

    #[test]
    fn bad_values_are_refused_naming_the_key_and_the_source() {
        let cases: [(&str, &[&str], &[&str]); 6] = [
            (
                "[mlp]\nlearning_rate = 0.1\n",
                &[],
                &["unknown key mlp.learning_rate", "the keys in [mlp] are"],
            ),
            (
                "",
                &["mlp.lr=\"fast\""],
                &["--set mlp.lr=\"fast\"", "mlp.lr must be a float"],
            ),
            (
                "",
                &["sae.d_sae=[1024, \"x\"]"],
                &["sae.d_sae must be a list of integers"],
            ),
            (
                "",
                &["sae.architecture=[\"relu\"]"],
                &["sae.architecture", "relu"],
            ),
            (
                "",
                &["extract.layers=[\"fc9\"]"],
                &["extract.layers", "fc9"],
            ),
            (
                "[presets.x]\nmlp = 3\n",
                &[],
                &["[presets.x]", "mlp must be a table"],
            ),
        ];
        for (toml, overrides, needles) in cases {
            let message = refusal(toml, overrides);
            assert!(!message.contains('\n'), "{message:?}");
            for needle in needles {
                assert!(message.contains(needle), "{needle:?} not in {message:?}");
            }
        }
        // Each refusal is one sentence naming the key as written and the value.
        let exact: [(&str, &[&str], &str); 21] = [
            ("[mlp]\nepochs = -3\n", &[], "mlp.epochs = -3 is out of range: it must be a whole number >= 0"),
            ("", &["sae.seed=[0, -1]"], "sae.seed holds -1, which is out of range: every value must be a whole number >= 0"),
            ("", &["sae.clip_grad_norm=-1"], "sae.clip_grad_norm = -1 is out of range: it must be a finite number >= 0 (0: off) (in sweep point sae/fc2.pre/l1-0.003/d1024/s0)"),
            ("", &["sae.l1_coeff=NaN"], "sae.l1_coeff = NaN is out of range: it must be a finite number >= 0 (in sweep point sae/fc2.pre/l1-NaN/d1024/s0)"),
            ("", &["sae.l1_coeff=\"x\""], "sae.l1_coeff must be a float or a list of floats, got \"x\""),
            ("", &["=3"], "\"\" is not a key: expected KEY=VALUE with a dotted key before the '=', e.g. mlp.lr=0.01"),
            ("[sae]\narchitecture = [\"topk\"]\nk = [2000]\n", &[], "sae.k = 2000 is out of range: it must be between 1 and d_sae = 1024 (in sweep point sae/fc2.pre/topk-k2000/d1024/s0)"),
            ("[sae]\narchitecture = [\"topk\"]\nk_aux = 0\n", &[], "sae.k_aux = 0 is out of range: it must be at least 1 (in sweep point sae/fc2.pre/topk-k32/d1024/s0)"),
            ("[sae]\nlr_warmup_steps = 100\n", &[], "sae.lr_warmup_steps = 100 and sae.lr_decay_steps = 0 replace StepLR, but sae.lr_gamma = 0.99: set sae.lr_gamma = 1.0 with them"),
            ("[sae]\nvariant = [\"topk\"]\n", &[], "sae.variant was renamed sae.architecture; it takes the same values"),
            ("", &["sae.transcoder_variant=[\"topk\"]"], "sae.transcoder_variant was renamed sae.transcoder_architecture; it takes the same values"),
            ("[sae]\nd_sae = [0]\n", &[], "sae.d_sae = 0 is out of range: it must be at least 1 (in sweep point sae/fc2.pre/l1-0.003/d0/s0)"),
            ("[mlp]\noptimizer = \"lion\"\n", &[], "mlp.optimizer: unknown variant `lion`, expected `sgd` or `adam`"),
            // Checked before any stage runs: the SAE reads a layer extract does not cache.
            ("[extract]\nlayers = [\"fc1.pre\"]\n", &[], "sae.layer names \"fc2.pre\", but extract.layers = [\"fc1.pre\"] does not cache it: add it to extract.layers"),
            // Transcoders: their layers, their architecture and their init.
            ("", &["sae.architecture=[\"skip\"]"], "sae.architecture[0]: unknown architecture `skip`, expected one of `l1`, `topk`, `norm_weighted_l1`, `batchtopk`, `matryoshka_batchtopk`, `jumprelu`, `gated`, `transcoder`, `skip_transcoder`"),
            ("", &["sae.transcoder_output=\"fc9\""], "sae.transcoder_output names \"fc9\", which is not a layer; layers are input, fc1.pre, fc1.post, fc2.pre, fc2.post, logits"),
            ("", &["sae.transcoder_output=\"fc1.post\""], "sae.transcoder_output = \"fc1.post\" is sae.transcoder_input: a transcoder predicts another layer than it reads"),
            ("", &["sae.transcoder_input=[\"input\", \"fc1.post\"]"], "sae.transcoder_input = [\"input\", \"fc1.post\"] and sae.transcoder_output = [\"fc2.post\"] must pair up: as many outputs as inputs, at least one"),
            ("", &["sae.transcoder_input=[\"input\", \"fc2.post\"]", "sae.transcoder_output=[\"fc1.post\", \"fc1.pre\"]"], "sae.transcoder_output[1] = \"fc1.pre\" comes before sae.transcoder_input[1] = \"fc2.post\" in the network (input -> fc1.pre -> fc1.post -> fc2.pre -> fc2.post -> logits): a transcoder predicts a later layer from an earlier one"),
            ("[extract]\nlayers = [\"fc2.pre\", \"fc2.post\"]\n[sae]\narchitecture = [\"transcoder\"]\n", &[], "sae.transcoder_input names \"fc1.post\", but extract.layers = [\"fc2.pre\", \"fc2.post\"] does not cache it: add it to extract.layers"),
            ("[sae]\narchitecture = [\"transcoder\"]\ntranscoder_output = \"logits\"\nencoder_init = \"tied\"\n", &[], "sae.encoder_init = \"tied\" is out of range: it must be \"uniform\" for a transcoder whose widths differ (d_in 128, d_out 10): a tied encoder is the decoder transposed (in sweep point sae/fc1.post_to_logits/transcoder-l1-0.003/d1024/s0)"),
        ];
        for (toml, overrides, expected) in exact {
            let message = refusal(toml, overrides);
            assert!(
                message.ends_with(expected),
                "{toml:?} {overrides:?}: {message}"
            );
        }
        if !cfg!(feature = "cuda") {
            let cuda = refusal("[sae]\npath = \"reference\"\ndevice = \"cuda\"\n", &[]);
            assert!(
                cuda.contains("sae.device = \"cuda\" needs an xtask built with CUDA"),
                "{cuda}"
            );
        }
        let missing_preset = match load_text("", Some("nope"), &[]) {
            Ok(_) => panic!("an unknown preset was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            missing_preset.contains("--preset nope") && missing_preset.contains("no preset"),
            "{missing_preset}"
        );
    }
}
