//! The SAE folder (`sae_weights.safetensors`, SAELens' `cfg.json`,
//! `saelab_config.json`): round trip, damage, an independent reconstruction
//! in Python (numpy + safetensors), and SAELens loading it.

mod common;

use std::path::Path as FsPath;
use std::process::Command;

use common::*;
use sae::{
    load, reconstruct, save, train, Origin, SaeConfig, TrainData, TrainPath, Transcoder, Variant,
};

fn origin() -> Origin {
    Origin {
        model_name: "test".into(),
        hook_name: "fc2.pre".into(),
        hook_name_out: None,
    }
}

/// One variant of each architecture.
fn every_architecture() -> Vec<Variant> {
    let all = vec![
        Variant::L1 { l1_coeff: 3e-3 },
        Variant::top_k(5),
        Variant::NormWeightedL1 { l1_coeff: 3e-3 },
        Variant::batch_top_k(5),
        Variant::matryoshka_batch_top_k(5),
        Variant::jump_relu(1e-2),
        Variant::Gated { l1_coeff: 3e-3 },
    ];
    assert_eq!(all.len(), sae::Architecture::ALL.len());
    all
}

fn trained(variant: Variant) -> (sae::Sae, Vec<f32>) {
    let data = structured_data(200, 16, 41);
    let cfg = SaeConfig {
        epochs: 2,
        ..config(variant, 16, 40)
    };
    (
        train(&cfg, &data, &TrainPath::Fast, &|_| {}).unwrap().sae,
        data,
    )
}

/// A transcoder (16 -> 12 wide) trained on synthetic data: it, its inputs and its targets.
fn trained_transcoder(variant: Variant, skip: bool) -> (sae::Sae, Vec<f32>, Vec<f32>) {
    let input = structured_data(200, 16, 41);
    let target = structured_data(200, 12, 42);
    let cfg = SaeConfig {
        epochs: 2,
        transcoder: Some(Transcoder { d_out: 12, skip }),
        ..config(variant, 16, 40)
    };
    let data = TrainData::transcoding(&input, 16, &target, 12);
    let sae = sae::train_on(&cfg, data, &TrainPath::Fast, &|_| {})
        .unwrap()
        .sae;
    (sae, input, target)
}

/// Transcoders of the variants SAELens has as transcoders (ReLU, and
/// JumpReLU, which also holds the BatchTopK family), with their SAELens class.
fn saelens_transcoders() -> Vec<(Variant, bool, &'static str)> {
    vec![
        (Variant::L1 { l1_coeff: 3e-3 }, false, "Transcoder"),
        (Variant::L1 { l1_coeff: 3e-3 }, true, "SkipTranscoder"),
        (Variant::jump_relu(1e-2), false, "JumpReLUTranscoder"),
        (Variant::batch_top_k(5), true, "JumpReLUSkipTranscoder"),
    ]
}

#[test]
fn save_load_round_trip_keeps_every_bit() {
    let dir = tempfile::tempdir().unwrap();
    for variant in every_architecture() {
        let (sae, _) = trained(variant);
        save(&sae, dir.path(), &origin()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), sae);
    }
    for variant in every_architecture() {
        for skip in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let (sae, _, _) = trained_transcoder(variant.clone(), skip);
            save(&sae, dir.path(), &origin()).unwrap();
            assert_eq!(load(dir.path()).unwrap(), sae);
        }
    }
}

#[test]
fn a_skip_transcoder_without_its_skip_weights_is_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let (sae, _, _) = trained_transcoder(Variant::L1 { l1_coeff: 3e-3 }, true);
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
    let (plain, _, _) = trained_transcoder(Variant::L1 { l1_coeff: 3e-3 }, false);
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
    let (sae, _) = trained(Variant::L1 { l1_coeff: 3e-3 });
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
        .map(|variant| trained(variant))
        .chain(every_architecture().into_iter().flat_map(|variant| {
            [false, true].map(|skip| {
                let (sae, input, _) = trained_transcoder(variant.clone(), skip);
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
fn saelens_class(variant: &Variant) -> &'static str {
    match variant.architecture() {
        sae::Architecture::L1 | sae::Architecture::NormWeightedL1 => "StandardSAE",
        sae::Architecture::TopK => "TopKSAE",
        sae::Architecture::Gated => "GatedSAE",
        sae::Architecture::BatchTopK
        | sae::Architecture::MatryoshkaBatchTopK
        | sae::Architecture::JumpRelu => "JumpReLUSAE",
    }
}

#[test]
fn saelens_loads_every_architecture_and_reproduces_its_metrics() {
    let dirs: Vec<tempfile::TempDir> = every_architecture()
        .into_iter()
        .map(|variant| {
            let dir = tempfile::tempdir().unwrap();
            let (sae, data) = trained(variant.clone());
            save(&sae, dir.path(), &origin()).unwrap();
            write_f32(&dir.path().join("x.f32"), &data);
            let metrics = sae::evaluate(&sae, &data).unwrap();
            let expected = serde_json::json!({
                "class": saelens_class(&variant),
                "explained_variance": metrics.explained_variance,
                "l0": metrics.l0,
            });
            std::fs::write(dir.path().join("expected.json"), expected.to_string()).unwrap();
            dir
        })
        .chain(
            saelens_transcoders()
                .into_iter()
                .map(|(variant, skip, class)| {
                    let dir = tempfile::tempdir().unwrap();
                    let (sae, input, target) = trained_transcoder(variant, skip);
                    save(&sae, dir.path(), &origin()).unwrap();
                    write_f32(&dir.path().join("x.f32"), &input);
                    write_f32(&dir.path().join("y.f32"), &target);
                    let metrics = sae::evaluate_on(&sae, &input, &target).unwrap();
                    let expected = serde_json::json!({
                        "class": class,
                        "explained_variance": metrics.explained_variance,
                        "l0": metrics.l0,
                    });
                    std::fs::write(dir.path().join("expected.json"), expected.to_string()).unwrap();
                    dir
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
        ..config(Variant::L1 { l1_coeff: 3e-3 }, 16, 32)
    };
    let data = structured_data(200, 16, 4);
    let run = train(&cfg, &data, &TrainPath::Fast, &|_| {}).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let record = sae::TrainingRecord::of(&run);
    assert_eq!(record.curve.len(), 2);
    record.save(dir.path()).unwrap();
    assert_eq!(sae::TrainingRecord::load(dir.path()).unwrap(), record);

    let file = dir.path().join(sae::RECORD_FILE);
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
