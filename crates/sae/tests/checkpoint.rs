//! `sae.safetensors` + `cfg.json`: round trip, damage, and an independent
//! reconstruction in Python (numpy + safetensors).

mod common;

use std::path::Path as FsPath;
use std::process::Command;

use common::*;
use sae::{load, reconstruct, save, train, SaeConfig, TrainPath, Variant};

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

#[test]
fn save_load_round_trip_keeps_every_bit() {
    let dir = tempfile::tempdir().unwrap();
    for variant in [Variant::L1 { l1_coeff: 3e-3 }, Variant::top_k(5)] {
        let (sae, _) = trained(variant);
        save(&sae, dir.path()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), sae);
    }
}

#[test]
fn damaged_checkpoints_name_the_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let (sae, _) = trained(Variant::L1 { l1_coeff: 3e-3 });
    save(&sae, dir.path()).unwrap();
    // A config whose d_sae disagrees with the tensors.
    let cfg_path = dir.path().join(sae::CONFIG_FILE);
    let json = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(&cfg_path, json.replace("\"d_sae\": 40", "\"d_sae\": 41")).unwrap();
    let message = load(dir.path()).unwrap_err().to_string();
    assert!(
        message.contains("sae.safetensors") && message.contains("`W_enc`"),
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
        message.contains("cfg.json") && message.contains("`batch_size`"),
        "{message}"
    );
    // A truncated weights file.
    std::fs::write(&cfg_path, &json).unwrap();
    let weights = dir.path().join(sae::WEIGHTS_FILE);
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let message = load(dir.path()).unwrap_err().to_string();
    assert!(message.contains("sae.safetensors"), "{message}");
}

fn write_f32(path: &FsPath, values: &[f32]) {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn python_reconstruction_matches_rust() {
    let script = FsPath::new(env!("CARGO_MANIFEST_DIR")).join("tests/check_sae.py");
    for variant in [Variant::L1 { l1_coeff: 3e-3 }, Variant::top_k(5)] {
        let dir = tempfile::tempdir().unwrap();
        let (sae, data) = trained(variant);
        save(&sae, dir.path()).unwrap();
        write_f32(&dir.path().join("x.f32"), &data);
        write_f32(
            &dir.path().join("x_hat.f32"),
            &reconstruct(&sae, &data).unwrap(),
        );
        let output = match Command::new("python3")
            .arg(&script)
            .arg(dir.path())
            .output()
        {
            Ok(output) => output,
            Err(e) if std::env::var_os("CI").is_none() => {
                eprintln!("note: skipping the Python check, python3 did not start: {e}");
                return;
            }
            Err(e) => panic!("python3 did not start: {e}"),
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.code() == Some(3) {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but Python lacks packages: {stdout}"
            );
            eprintln!("note: skipping the Python check: {stdout}");
            return;
        }
        assert!(
            output.status.success(),
            "check_sae.py failed: {stdout}{stderr}"
        );
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
