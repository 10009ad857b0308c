//! The SAE folder (`sae_weights.safetensors`, SAELens' `cfg.json`,
//! `saelab_config.json`): round trip, damage, an independent reconstruction
//! in Python (numpy + safetensors), and SAELens loading it.

mod common;

use std::path::Path as FsPath;
use std::process::Command;

use common::*;
use sae::{
    load, reconstruct, save, Architecture, Origin, SaeConfig, TrainData, TrainPath, Transcoder,
};

fn origin() -> Origin {
    Origin {
        model_name: "test".into(),
        hook_name: "fc2.pre".into(),
        hook_name_out: None,
    }
}

/// One architecture of each architecture.
fn every_architecture() -> Vec<Architecture> {
    let all = vec![
        Architecture::l1(3e-3),
        Architecture::top_k(5),
        Architecture::norm_weighted_l1(3e-3),
        Architecture::batch_top_k(5),
        Architecture::matryoshka_batch_top_k(5),
        Architecture::jump_relu(1e-2),
        Architecture::gated(3e-3),
    ];
    assert_eq!(all.len(), sae::ArchitectureKind::ALL.len());
    all
}

fn trained(architecture: Architecture) -> (sae::Sae, Vec<f32>) {
    let data = structured_data(200, 16, 41);
    let cfg = SaeConfig {
        epochs: 2,
        ..config(architecture, 16, 40)
    };
    (
        train(&cfg, &data, &TrainPath::Fast, &|_| {}).unwrap().sae,
        data,
    )
}

/// A transcoder (16 -> 12 wide) trained on synthetic data: it, its inputs and its targets.
fn trained_transcoder(architecture: Architecture, skip: bool) -> (sae::Sae, Vec<f32>, Vec<f32>) {
    let input = structured_data(200, 16, 41);
    let target = structured_data(200, 12, 42);
    let cfg = SaeConfig {
        epochs: 2,
        transcoder: Some(Transcoder { d_out: 12, skip }),
        ..config(architecture, 16, 40)
    };
    let data = TrainData::transcoding(&input, 16, &target, 12);
    let sae = train_on(&cfg, data, &TrainPath::Fast, &|_| {}).unwrap().sae;
    (sae, input, target)
}

/// Transcoders of the architectures SAELens has as transcoders (ReLU, and
/// JumpReLU, which also holds the BatchTopK family), with their SAELens class.
fn saelens_transcoders() -> Vec<(Architecture, bool, &'static str)> {
    vec![
        (Architecture::l1(3e-3), false, "Transcoder"),
        (Architecture::l1(3e-3), true, "SkipTranscoder"),
        (Architecture::jump_relu(1e-2), false, "JumpReLUTranscoder"),
        (Architecture::batch_top_k(5), true, "JumpReLUSkipTranscoder"),
    ]
}

#[test]
fn save_load_round_trip_keeps_every_bit() {
    let dir = tempfile::tempdir().unwrap();
    for architecture in every_architecture() {
        let (sae, _) = trained(architecture);
        save(&sae, dir.path(), &origin()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), sae);
    }
    for architecture in every_architecture() {
        for skip in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let (sae, _, _) = trained_transcoder(architecture.clone(), skip);
            save(&sae, dir.path(), &origin()).unwrap();
            assert_eq!(load(dir.path()).unwrap(), sae);
        }
    }
}

#[test]
fn a_skip_transcoder_without_its_skip_weights_is_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let (sae, _, _) = trained_transcoder(Architecture::l1(3e-3), true);
    save(&sae, dir.path(), &origin()).unwrap();
    let cfg_path = dir.path().join(sae::CONFIG_FILE);
    let json = std::fs::read_to_string(&cfg_path).unwrap();
    // The same weights read as a plain transcoder: W_skip does not belong.
    std::fs::write(&cfg_path, json.replace("\"skip\": true", "\"skip\": false")).unwrap();
    let message = load(dir.path()).unwrap_err().to_string();
    assert!(
        message.contains(sae::WEIGHTS_FILE)
            && message.contains("`W_skip`")
            && message.contains("transcoder"),
        "{message}"
    );
    // A skip transcoder whose file lacks W_skip.
    let (plain, _, _) = trained_transcoder(Architecture::l1(3e-3), false);
    save(&plain, dir.path(), &origin()).unwrap();
    std::fs::write(&cfg_path, &json).unwrap();
    let message = load(dir.path()).unwrap_err().to_string();
    assert!(
        message.contains(sae::WEIGHTS_FILE) && message.contains("`W_skip` is missing"),
        "{message}"
    );
}

#[test]
fn damaged_checkpoints_name_the_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let (sae, _) = trained(Architecture::l1(3e-3));
    save(&sae, dir.path(), &origin()).unwrap();
    // A config whose d_sae disagrees with the tensors.
    let cfg_path = dir.path().join(sae::CONFIG_FILE);
    let json = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(&cfg_path, json.replace("\"d_sae\": 40", "\"d_sae\": 41")).unwrap();
    let message = load(dir.path()).unwrap_err().to_string();
    assert!(
        message.contains(sae::WEIGHTS_FILE) && message.contains("`W_enc`"),
        "{message}"
    );
    // A config with an out-of-range value.
    std::fs::write(
        &cfg_path,
        json.replace("\"batch_size\": 64", "\"batch_size\": 0"),
    )
    .unwrap();
    let message = load(dir.path()).unwrap_err().to_string();
    assert!(
        message.contains(sae::CONFIG_FILE) && message.contains("`batch_size`"),
        "{message}"
    );
    // A truncated weights file.
    std::fs::write(&cfg_path, &json).unwrap();
    let weights = dir.path().join(sae::WEIGHTS_FILE);
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let message = load(dir.path()).unwrap_err().to_string();
    assert!(message.contains(sae::WEIGHTS_FILE), "{message}");
}

fn write_f32(path: &FsPath, values: &[f32]) {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

/// Runs `script DIR`; `None` (after a note) where Python or its packages
/// are missing outside CI (exit 3), a failure inside CI.
fn run_python(script: &str, dirs: &[&FsPath]) -> Option<String> {
    let script = FsPath::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(script);
    let output = match Command::new("python3").arg(&script).args(dirs).output() {
        Ok(output) => output,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!(
                "note: skipping {}, python3 did not start: {e}",
                script.display()
            );
            return None;
        }
        Err(e) => panic!("python3 did not start: {e}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() == Some(3) {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but Python lacks packages: {stdout}"
        );
        eprintln!("note: skipping {}: {stdout}", script.display());
        return None;
    }
    assert!(
        output.status.success(),
        "{} failed: {stdout}{stderr}",
        script.display()
    );
    Some(stdout)
}

#[test]
fn python_reconstruction_matches_rust() {
    let saes = every_architecture()
        .into_iter()
        .map(|architecture| trained(architecture))
        .chain(every_architecture().into_iter().flat_map(|architecture| {
            [false, true].map(|skip| {
                let (sae, input, _) = trained_transcoder(architecture.clone(), skip);
                (sae, input)
            })
        }));
    for (sae, input) in saes {
        let dir = tempfile::tempdir().unwrap();
        save(&sae, dir.path(), &origin()).unwrap();
        write_f32(&dir.path().join("x.f32"), &input);
        write_f32(
            &dir.path().join("x_hat.f32"),
            &reconstruct(&sae, &input).unwrap(),
        );
        match run_python("check_sae.py", &[dir.path()]) {
            Some(stdout) => eprintln!("{stdout}"),
            None => return,
        }
    }
}

/// SAELens' class for each architecture's folder (the BatchTopK family is
/// saved for inference as JumpReLU, as SAELens saves it).
fn saelens_class(architecture: &Architecture) -> &'static str {
    match architecture.kind() {
        sae::ArchitectureKind::L1 | sae::ArchitectureKind::NormWeightedL1 => "StandardSAE",
        sae::ArchitectureKind::TopK => "TopKSAE",
        sae::ArchitectureKind::Gated => "GatedSAE",
        sae::ArchitectureKind::BatchTopK
        | sae::ArchitectureKind::MatryoshkaBatchTopK
        | sae::ArchitectureKind::JumpRelu => "JumpReLUSAE",
    }
}

/// A folder SAELens reads: `sae` saved, its input (and a transcoder's target)
/// and what saelab measures on them, for `check_saelens.py`.
fn saelens_folder(
    sae: &sae::Sae,
    input: &[f32],
    target: Option<&[f32]>,
    class: &str,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    save(sae, dir.path(), &origin()).unwrap();
    write_f32(&dir.path().join("x.f32"), input);
    if let Some(target) = target {
        write_f32(&dir.path().join("y.f32"), target);
    }
    let metrics = sae::evaluate_on(sae, input, target.unwrap_or(input)).unwrap();
    let expected = serde_json::json!({
        "class": class,
        "explained_variance": metrics.explained_variance,
        "l0": metrics.l0,
    });
    std::fs::write(dir.path().join("expected.json"), expected.to_string()).unwrap();
    dir
}

#[test]
fn saelens_loads_every_architecture_and_reproduces_its_metrics() {
    let dirs: Vec<tempfile::TempDir> = every_architecture()
        .into_iter()
        .map(|architecture| {
            let (sae, data) = trained(architecture.clone());
            saelens_folder(&sae, &data, None, saelens_class(&architecture))
        })
        .chain(
            saelens_transcoders()
                .into_iter()
                .map(|(architecture, skip, class)| {
                    let (sae, input, target) = trained_transcoder(architecture, skip);
                    saelens_folder(&sae, &input, Some(&target), class)
                }),
        )
        .chain(
            // Trained on normalised rows (the scale folded into the weights),
            // read by SAELens on raw rows far from a mean norm of sqrt(d_in).
            [
                Architecture::l1(3e-3),
                Architecture::top_k(5),
                Architecture::jump_relu(1e-2),
            ]
            .into_iter()
            .map(|architecture| {
                let data: Vec<f32> = structured_data(200, 16, 43)
                    .iter()
                    .map(|v| v * 7.5)
                    .collect();
                let cfg = SaeConfig {
                    epochs: 2,
                    normalize_activations: sae::NormalizeActivations::ExpectedAverageOnlyIn,
                    ..config(architecture.clone(), 16, 40)
                };
                let sae = train(&cfg, &data, &TrainPath::Fast, &|_| {}).unwrap().sae;
                saelens_folder(&sae, &data, None, saelens_class(&architecture))
            }),
        )
        .collect();
    let paths: Vec<&FsPath> = dirs.iter().map(|d| d.path()).collect();
    if let Some(stdout) = run_python("check_saelens.py", &paths) {
        eprintln!("{stdout}");
    }
}

#[test]
fn the_training_record_round_trips_and_a_damaged_one_names_its_file() {
    let cfg = SaeConfig {
        epochs: 2,
        ..config(Architecture::l1(3e-3), 16, 32)
    };
    let data = structured_data(200, 16, 4);
    let run = train(&cfg, &data, &TrainPath::Fast, &|_| {}).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let record = sae::TrainingRecord::of(&run);
    assert_eq!(record.curve.len(), 2);
    record.save(dir.path()).unwrap();
    assert_eq!(sae::TrainingRecord::load(dir.path()).unwrap(), record);

    let file = dir.path().join(sae::RECORD_FILE);
    // A record written before latents were recorded still loads, without them.
    let mut older: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    older.as_object_mut().unwrap().remove("latents");
    std::fs::write(&file, older.to_string()).unwrap();
    let loaded = sae::TrainingRecord::load(dir.path()).unwrap();
    assert_eq!(loaded.latents, sae::LatentHistory::default());
    assert_eq!(loaded.curve, record.curve);
    for damage in ["{\"curve\": []}", "not json", ""] {
        std::fs::write(&file, damage).unwrap();
        let message = sae::TrainingRecord::load(dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with(&file.display().to_string()) && !message.contains('\n'),
            "{damage:?}: {message}"
        );
    }
    std::fs::remove_file(&file).unwrap();
    let missing = sae::TrainingRecord::load(dir.path())
        .unwrap_err()
        .to_string();
    assert!(missing.contains(&file.display().to_string()), "{missing}");
}

/// The latents' history agrees with the run's own dead count and steps:
/// snapshots at epochs 1, 2, 5 and the last, each the f64 margin of the SAE
/// as it stood (the last one: the SAE trained), and as many latents silent
/// for the dead window as the curve's last point counts dead.
#[test]
fn the_latent_history_agrees_with_the_run() {
    let cfg = SaeConfig {
        epochs: 6,
        batch_size: 20,
        dead_window_steps: 30,
        ..config(Architecture::l1(3e-2), 16, 48)
    };
    // Few directions, so many latents have nothing to fire on.
    let data = sae::synthetic::sparse_directions(400, 16, 6, 2, 0.05, 9);
    let run = train(&cfg, &data, &TrainPath::Fast, &|_| {}).unwrap();
    let h = &run.latents;
    let epochs: Vec<usize> = h.snapshots.iter().map(|s| s.epoch).collect();
    assert_eq!(epochs, [1, 2, 5, 6]);
    assert_eq!(h.steps_per_epoch, 20);
    assert_eq!(h.last_fired_step.len(), 48);
    let steps = run.steps as u64;
    assert!(h.last_fired_step.iter().all(|&s| s <= steps));
    let silent = h
        .last_fired_step
        .iter()
        .filter(|&&s| s == 0 || steps - s >= 30)
        .count();
    assert_eq!(silent, run.curve.last().unwrap().dead);
    assert!(
        silent > 0 && silent < 48,
        "{silent} dead: the check needs both kinds"
    );
    // The last snapshot is the trained SAE's: recompute its margins in f64.
    let last = h.snapshots.last().unwrap();
    let sae = &run.sae;
    for f in 0..48 {
        let margin = data
            .chunks_exact(16)
            .map(|x| {
                (0..16)
                    .map(|i| (x[i] - sae.b_dec[i]) as f64 * sae.w_enc[i * 48 + f] as f64)
                    .sum::<f64>()
                    + sae.b_enc[f] as f64
            })
            .fold(f64::NEG_INFINITY, f64::max);
        assert!(
            (last.margin[f] as f64 - margin).abs() < 1e-4 * (1.0 + margin.abs()),
            "latent {f}: {} vs {margin}",
            last.margin[f]
        );
    }
}
