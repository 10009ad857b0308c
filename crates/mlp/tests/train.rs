//! The MLP against independent computations: the fast trainer against candle
//! autograd, saved weights against a reload, accuracy against the bar.

use candle_core::Device;
use mlp::{train, Examples, Mlp, Optimizer, TrainConfig, TrainPath, Weights};

struct Data {
    train: &'static mnist::Split,
    test: &'static mnist::Split,
}

/// The genuine MNIST files, through the fetch chain (`testkit`).
fn mnist_data() -> Data {
    let m = testkit::mnist();
    Data {
        train: &m.train,
        test: &m.test,
    }
}

fn examples(split: &mnist::Split, rows: usize) -> Examples<'_> {
    let rows = rows.min(split.len());
    Examples {
        pixels: &split.images.pixels[..rows * 784],
        labels: &split.labels.labels[..rows],
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn compare_paths(optimizer: Optimizer, lr: f64, update_tolerance: f64) {
    let data = mnist_data();
    let cfg = TrainConfig {
        optimizer,
        lr,
        epochs: 1,
        ..TrainConfig::default()
    };
    let subset = examples(&data.train, 64 * 300);
    let (fast_w, fast) = train(&cfg, subset, &TrainPath::Fast, &mut |_, _| {}).unwrap();
    let (ref_w, reference) = train(
        &cfg,
        subset,
        &TrainPath::Reference(Device::Cpu),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(fast.step_losses.len(), 300);
    for (step, (f, r)) in fast
        .step_losses
        .iter()
        .zip(&reference.step_losses)
        .enumerate()
    {
        // Summation order differs, and Adam amplifies that over hundreds of steps.
        assert!(
            (f - r).abs() <= 1e-2 * r.abs().max(1.0),
            "{optimizer:?} step {step}: fast {f} vs reference {r}"
        );
    }
    // The trajectories moved: the loss fell well below its start.
    assert!(fast.step_losses[299] < 0.8 * fast.step_losses[0]);
    // Compare what training changed: || delta_fast - delta_ref || / || delta_ref ||.
    let init = Weights::init(cfg.seed);
    for ((fast, reference), start) in fast_w
        .linears()
        .iter()
        .zip(ref_w.linears())
        .zip(init.linears())
    {
        let (mut off, mut moved) = (0.0f64, 0.0f64);
        for ((f, r), s) in fast.0.iter().zip(reference.0).zip(start.0) {
            off += ((f - r) as f64).powi(2);
            moved += ((r - s) as f64).powi(2);
        }
        let relative = (off / moved).sqrt();
        assert!(
            relative < update_tolerance,
            "{optimizer:?}: updates differ by {relative:.2e} relative"
        );
    }
}

#[test]
fn fast_sgd_follows_candle_autograd_for_300_steps() {
    compare_paths(Optimizer::Sgd, 0.05, 1e-3);
}

#[test]
fn fast_adam_follows_candle_autograd_for_300_steps() {
    // Adam moves every weight by about lr per step whatever the gradient's size,
    // so rounding differences in tiny gradients grow into visible steps.
    compare_paths(Optimizer::Adam, 1e-3, 5e-2);
}

#[test]
fn adam_preset_reaches_97_5_percent_and_the_file_round_trips() {
    let data = mnist_data();
    // saelab.toml's `adam` preset.
    let cfg = TrainConfig {
        optimizer: Optimizer::Adam,
        lr: 5e-4,
        epochs: 8,
        ..TrainConfig::default()
    };
    let (weights, log) = train(
        &cfg,
        examples(&data.train, 60_000),
        &TrainPath::Fast,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(log.step_losses.len(), 8 * 938);
    let model = Mlp::new(&weights, &Device::Cpu).unwrap();
    let eval = model.evaluate(examples(&data.test, 10_000)).unwrap();
    assert!(
        eval.accuracy >= 0.975,
        "Adam preset reached {}",
        eval.accuracy
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    weights.save(&path).unwrap();
    assert_eq!(Weights::load(&path).unwrap(), weights);
    // Same seed, same weights.
    let (again, _) = train(
        &cfg,
        examples(&data.train, 60_000),
        &TrainPath::Fast,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(again, weights);
}

#[test]
fn forward_layers_agree_with_a_hand_computation() {
    let data = mnist_data();
    let weights = Weights::init(7);
    let model = Mlp::new(&weights, &Device::Cpu).unwrap();
    let x = model.input(&data.test.images.pixels[..2 * 784]).unwrap();
    let layers = model.forward_all(&x).unwrap();
    let input = mnist::normalise(&data.test.images.pixels[784..2 * 784]);
    let fc1: Vec<f32> = (0..128)
        .map(|o| {
            weights.fc1_bias[o]
                + (0..784)
                    .map(|i| weights.fc1_weight[o * 784 + i] * input[i])
                    .sum::<f32>()
        })
        .collect();
    let got = layers["fc1.pre"].get(1).unwrap().to_vec1::<f32>().unwrap();
    assert!(max_abs_diff(&got, &fc1) < 1e-4);
    let post = layers["fc1.post"].get(1).unwrap().to_vec1::<f32>().unwrap();
    assert!(post.iter().zip(&got).all(|(p, f)| *p == f.max(0.0)));
    // Splicing a layer's own value back in gives the same logits.
    let spliced = model.logits_from("fc2.pre", &layers["fc2.pre"]).unwrap();
    let diff = (spliced - &layers["logits"])
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(diff, 0.0);
    assert!(model
        .logits_from("fc9", &layers["fc2.pre"])
        .unwrap_err()
        .to_string()
        .contains("unknown layer fc9"));
}

#[test]
fn bad_config_and_bad_files_are_refused_by_name() {
    let data = mnist_data();
    let bad = TrainConfig {
        lr: -1.0,
        ..TrainConfig::default()
    };
    let err = train(
        &bad,
        examples(&data.train, 64),
        &TrainPath::Fast,
        &mut |_, _| {},
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "mlp.lr = -1 is out of range: it must be in (0, 10]"
    );
    let zero = TrainConfig {
        batch_size: 0,
        ..TrainConfig::default()
    };
    assert!(train(
        &zero,
        examples(&data.train, 64),
        &TrainPath::Fast,
        &mut |_, _| {}
    )
    .unwrap_err()
    .to_string()
    .starts_with("mlp.batch_size = 0"));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, b"not a safetensors file").unwrap();
    let err = Weights::load(&path).unwrap_err().to_string();
    assert!(err.starts_with(&path.display().to_string()), "{err}");
    let mut tensors = Weights::init(0).to_tensors(&Device::Cpu).unwrap();
    tensors.remove("fc2.bias");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    assert!(Weights::load(&path)
        .unwrap_err()
        .to_string()
        .ends_with("tensor fc2.bias is missing"));
}

/// Python with numpy and safetensors, or a skip note (a failure under CI).
fn python_with_safetensors() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import numpy, safetensors.numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    assert!(
        ok || !ci,
        "CI is set but python3 lacks numpy or safetensors"
    );
    if !ok {
        eprintln!("skipping: python3 with numpy and safetensors is not available");
    }
    ok
}

#[test]
fn the_saved_model_loads_with_pytorch_names_and_gives_the_same_logits_in_numpy() {
    if !python_with_safetensors() {
        return;
    }
    let data = mnist_data();
    let weights = Weights::init(3);
    let model = Mlp::new(&weights, &Device::Cpu).unwrap();
    let x = model.input(&data.test.images.pixels[..8 * 784]).unwrap();
    let logits = model.logits(&x).unwrap();
    let dir = tempfile::tempdir().unwrap();
    weights.save(&dir.path().join("model.safetensors")).unwrap();
    let probe =
        std::collections::HashMap::from([("x".to_string(), x), ("logits".to_string(), logits)]);
    candle_core::safetensors::save(&probe, dir.path().join("probe.safetensors")).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/check_model.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(dir.path().join("model.safetensors"))
        .arg(dir.path().join("probe.safetensors"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("OK 8 rows"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
