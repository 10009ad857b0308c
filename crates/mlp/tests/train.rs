//! The MLP against independent computations: the fast trainer's steps and
//! the candle reference's gradient against f64, saved weights against a
//! reload, accuracy against the bar.
//!
//! Just over 600 lines: every case shares the MNIST fixture and the f64
//! helpers above them; a split would only move those.

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

/// [`max_abs_diff`] of two tensors of the same shape.
fn largest_gap(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    let values = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    max_abs_diff(&values(a), &values(b))
}

/// One f32 dot product's worst-case rounding, relative to the sum of its
/// terms' magnitudes: (n + 2) units in the last place, for n products summed in
/// any order and the bias (Higham's gamma_n; it holds for any summation order,
/// vector width or FMA use, so on any machine).
fn dot_rounding_bound(n: usize, magnitude: f64) -> f64 {
    (n + 2) as f64 * f64::from(f32::EPSILON) / 2.0 * magnitude
}

/// The MLP's mean cross-entropy and gradients on some rows, in f64 from the
/// f32 weights, and the rows where a ReLU unit's pre-activation lies within
/// f32 rounding of its kink: there an f32 computation may fairly put it on
/// either side, and its whole contribution with it.
struct Host {
    loss: f64,
    /// fc1.weight, fc1.bias, fc2.weight, fc2.bias, fc3.weight, fc3.bias.
    grads: [Vec<f64>; 6],
    kinked_rows: Vec<usize>,
}

fn host_gradients(w: &Weights, split: &mnist::Split, rows: &[usize]) -> Host {
    const I: usize = 784;
    const H: usize = 128;
    const C: usize = 10;
    let n = rows.len() as f64;
    let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    let (w1, b1, w2, b2, w3, b3) = (
        f(&w.fc1_weight),
        f(&w.fc1_bias),
        f(&w.fc2_weight),
        f(&w.fc2_bias),
        f(&w.fc3_weight),
        f(&w.fc3_bias),
    );
    let mut grads: [Vec<f64>; 6] = [
        vec![0.0; H * I],
        vec![0.0; H],
        vec![0.0; H * H],
        vec![0.0; H],
        vec![0.0; C * H],
        vec![0.0; C],
    ];
    let mut kinked_rows = Vec::new();
    let mut loss = 0.0;
    // (pre-activation, its kink margin) of a layer.
    let linear = |w: &[f64], b: &[f64], x: &[f64], x_margin: &[f64], out: usize| {
        let fan_in = x.len();
        (0..out)
            .map(|o| {
                let row = &w[o * fan_in..(o + 1) * fan_in];
                let value = b[o] + row.iter().zip(x).map(|(w, x)| w * x).sum::<f64>();
                let magnitude =
                    b[o].abs() + row.iter().zip(x).map(|(w, x)| (w * x).abs()).sum::<f64>();
                let carried: f64 = row.iter().zip(x_margin).map(|(w, m)| w.abs() * m).sum();
                (value, dot_rounding_bound(fan_in, magnitude) + carried)
            })
            .collect::<Vec<(f64, f64)>>()
    };
    for &r in rows {
        let x = f(&mnist::normalise(&split.images.pixels[r * I..(r + 1) * I]));
        // The fast path adds each pixel as base + (value - base): one more rounding of x.
        let x_margin: Vec<f64> = x
            .iter()
            .map(|v| v.abs() * f64::from(f32::EPSILON))
            .collect();
        let h1 = linear(&w1, &b1, &x, &x_margin, H);
        let a1: Vec<f64> = h1.iter().map(|&(v, _)| v.max(0.0)).collect();
        let m1: Vec<f64> = h1
            .iter()
            .map(|&(v, m)| if v > 0.0 { m } else { 0.0 })
            .collect();
        let h2 = linear(&w2, &b2, &a1, &m1, H);
        let a2: Vec<f64> = h2.iter().map(|&(v, _)| v.max(0.0)).collect();
        let z: Vec<f64> = (0..C)
            .map(|c| b3[c] + (0..H).map(|k| w3[c * H + k] * a2[k]).sum::<f64>())
            .collect();
        let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
        let label = split.labels.labels[r] as usize;
        loss += (lse - z[label]) / n;
        let dz: Vec<f64> = (0..C)
            .map(|c| ((z[c] - lse).exp() - (c == label) as u8 as f64) / n)
            .collect();
        let mut da2 = vec![0.0; H];
        for c in 0..C {
            grads[5][c] += dz[c];
            for k in 0..H {
                grads[4][c * H + k] += dz[c] * a2[k];
                da2[k] += dz[c] * w3[c * H + k];
            }
        }
        if h1
            .iter()
            .chain(&h2)
            .any(|&(value, margin)| value.abs() <= margin)
        {
            kinked_rows.push(r);
        }
        let mut da1 = vec![0.0; H];
        for k in 0..H {
            let (value, _) = h2[k];
            if value <= 0.0 {
                continue;
            }
            grads[3][k] += da2[k];
            for i in 0..H {
                grads[2][k * H + i] += da2[k] * a1[i];
                da1[i] += da2[k] * w2[k * H + i];
            }
        }
        for i in 0..H {
            let (value, _) = h1[i];
            if value <= 0.0 {
                continue;
            }
            grads[1][i] += da1[i];
            for j in 0..I {
                grads[0][i * I + j] += da1[i] * x[j];
            }
        }
    }
    Host {
        loss,
        grads,
        kinked_rows,
    }
}

/// `rows` without those that have a unit at a ReLU kink (see [`Host`]).
fn rows_clear_of_kinks(w: &Weights, split: &mnist::Split, rows: &[usize]) -> Vec<usize> {
    let kinked = host_gradients(w, split, rows).kinked_rows;
    rows.iter()
        .copied()
        .filter(|r| !kinked.contains(r))
        .collect()
}

const TENSORS: [&str; 6] = [
    "fc1.weight",
    "fc1.bias",
    "fc2.weight",
    "fc2.bias",
    "fc3.weight",
    "fc3.bias",
];

fn tensors(w: &Weights) -> [&[f32]; 6] {
    [
        &w.fc1_weight,
        &w.fc1_bias,
        &w.fc2_weight,
        &w.fc2_bias,
        &w.fc3_weight,
        &w.fc3_bias,
    ]
}

/// Asserts an f32 gradient against the f64 host's on rows clear of kinks:
/// per tensor, the distance in the 2-norm is at most 1e-5 of the host's norm
/// (f32 sums over at most 786 terms, then 64 rows: their worst case is about
/// 5e-5 and their typical rounding a few 1e-7).
fn assert_gradients_match(label: &str, loss: f32, got: &Weights, host: &Host) {
    assert!(
        host.kinked_rows.is_empty(),
        "{label}: compare rows clear of kinks"
    );
    assert!(
        ((loss as f64 - host.loss) / host.loss).abs() < 1e-5,
        "{label}: loss {loss} vs f64 {}",
        host.loss
    );
    for (t, got) in tensors(got).into_iter().enumerate() {
        let want = &host.grads[t];
        let off = got
            .iter()
            .zip(want)
            .map(|(&g, w)| (g as f64 - w).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm = want.iter().map(|w| w * w).sum::<f64>().sqrt();
        let allowed = 1e-5 * norm;

        assert!(
            off <= allowed,
            "{label}: {} gradient off by {off:e} (norm {norm:e}, allowed {allowed:e})",
            TENSORS[t]
        );
    }
}

/// Asserts one step's new parameters (and Adam's moments) against the update
/// computed in f64 from the same parameters, moments and f32 gradient, with
/// the trainer's f32 hyperparameters. Elementwise, each within a few f32
/// roundings of the terms it is made of.
fn assert_update_matches(
    label: &str,
    cfg: &TrainConfig,
    step: i32,
    before: (&Weights, Option<&(Weights, Weights)>),
    gradient: &Weights,
    after: (&Weights, Option<&(Weights, Weights)>),
) {
    let (beta1, beta2, eps) = (0.9f32 as f64, 0.999f32 as f64, 1e-8f32 as f64);
    let lr = cfg.lr as f32 as f64;
    let ulp = f64::from(f32::EPSILON);
    // `slack`: the rounding carried in from the terms; a value below f32's
    // normal range may be flushed to zero.
    let close = |got: f32, want: f64, slack: f64| {
        (got as f64 - want).abs() <= ulp * want.abs() + slack + 1e-37
    };
    for t in 0..6 {
        let (w0, g, w1) = (
            tensors(before.0)[t],
            tensors(gradient)[t],
            tensors(after.0)[t],
        );
        for e in 0..w0.len() {
            let (w, g) = (w0[e] as f64, g[e] as f64);
            let (update, update_slack) = match (before.1, after.1) {
                (None, None) => (lr * g, 2.0 * ulp * (lr * g).abs()),
                (Some((m0, v0)), Some((m1, v1))) => {
                    let (m0, v0) = (tensors(m0)[t][e] as f64, tensors(v0)[t][e] as f64);
                    let m = beta1 * m0 + (1.0 - beta1) * g;
                    let m_terms = beta1 * m0.abs() + (1.0 - beta1) * g.abs();
                    let v = beta2 * v0 + (1.0 - beta2) * g * g;
                    let (got_m, got_v) = (tensors(m1)[t][e], tensors(v1)[t][e]);
                    assert!(
                        close(got_m, m, 2.0 * ulp * m_terms) && close(got_v, v, 4.0 * ulp * v),
                        "{label}: {}[{e}] moments ({got_m:e}, {got_v:e}) vs f64 ({m:e}, {v:e})",
                        TENSORS[t]
                    );
                    let step_size = lr / (1.0 - beta1.powi(step));
                    let denominator = v.sqrt() / (1.0 - beta2.powi(step)).sqrt() + eps;
                    let update = step_size * m / denominator;
                    let from_m = step_size * 2.0 * ulp * m_terms / denominator;
                    // The trainer forms 1 - beta^t in f32: beta^t carries up
                    // to t roundings, which the subtraction magnifies.
                    let correction = |beta: f64| {
                        (step + 1) as f64 * ulp * beta.powi(step) / (1.0 - beta.powi(step))
                    };
                    let from_corrections =
                        (correction(beta1) + correction(beta2) / 2.0) * update.abs();
                    (update, 8.0 * ulp * update.abs() + from_m + from_corrections)
                }
                _ => unreachable!("moments before and after, or neither"),
            };
            let want = w - update;
            assert!(
                close(w1[e], want, update_slack),
                "{label}: {}[{e}] became {:e}, f64 says {want:e} (from {w:e}, gradient {g:e})",
                TENSORS[t],
                w1[e]
            );
        }
    }
}

/// Trains 300 steps on the fast path; every 50 steps, checks that step's
/// gradient against f64 from the same weights, and the update it makes
/// against f64 from the same weights, moments and gradient. Unlike comparing
/// two 300-step trajectories, no check depends on rounding carried over from
/// earlier steps, so none depends on the machine.
fn check_fast_steps(optimizer: Optimizer, lr: f64) {
    let data = mnist_data();
    let cfg = TrainConfig {
        optimizer,
        lr,
        epochs: 1,
        ..TrainConfig::default()
    };
    let subset = examples(data.train, 64 * 300);
    let mut stepper = mlp::Stepper::new(&cfg, Weights::init(cfg.seed), subset).unwrap();
    let order = mlp::epoch_order(&cfg, subset.len(), 0);
    let mut losses = Vec::new();
    for (step, batch) in order.chunks(cfg.batch_size).enumerate() {
        let label = format!("{optimizer:?} step {}", step + 1);
        if step % 50 == 0 || step == 299 {
            let before = stepper.weights();
            let moments = stepper.moments();
            let clear = rows_clear_of_kinks(&before, data.train, batch);
            // Most of the batch: the worst-case rounding bound sets aside a few rows.
            assert!(
                2 * clear.len() >= batch.len(),
                "{label}: {} rows clear",
                clear.len()
            );
            let (loss, gradient) = stepper.gradients(&clear);
            let host = host_gradients(&before, data.train, &clear);
            assert_gradients_match(&label, loss, &gradient, &host);
            // The step's own gradient, on the whole batch; taking it changes nothing.
            let (loss, gradient) = stepper.gradients(batch);
            assert_eq!(stepper.weights(), before, "{label}");
            let step_loss = stepper.step(batch);
            assert_eq!(step_loss, loss, "{label}: the step saw another loss");
            assert_update_matches(
                &label,
                &cfg,
                step as i32 + 1,
                (&before, moments.as_ref()),
                &gradient,
                (&stepper.weights(), stepper.moments().as_ref()),
            );
            losses.push(loss);
        } else {
            losses.push(stepper.step(batch));
        }
    }
    assert_eq!(losses.len(), 300);
    // The checks ran along a trajectory that learned.
    assert!(
        losses[299] < 0.5 * losses[0],
        "{optimizer:?}: {} -> {}",
        losses[0],
        losses[299]
    );
    // The stepper is the trainer: the same 300 steps through `train` give the same bits.
    let (trained, log) = train(&cfg, subset, &TrainPath::Fast, &mut |_, _| {}).unwrap();
    assert_eq!(trained, stepper.weights(), "{optimizer:?}");
    assert_eq!(log.step_losses, losses, "{optimizer:?}");
}

#[test]
fn fast_sgd_steps_match_f64_gradients_and_updates_along_300_steps() {
    check_fast_steps(Optimizer::Sgd, 0.05);
}

#[test]
fn fast_adam_steps_match_f64_gradients_and_updates_along_300_steps() {
    check_fast_steps(Optimizer::Adam, 1e-3);
}

#[test]
fn reference_gradient_matches_f64() {
    // One SGD step at lr 1 from the initial weights, on one batch of rows
    // clear of kinks: the change is the gradient (up to one rounding of each
    // weight, far below the tolerance).
    let data = mnist_data();
    let init = Weights::init(0);
    // Random initial weights put more units near their kinks than trained
    // ones: about half the rows are clear.
    let mut rows = rows_clear_of_kinks(&init, data.train, &(0..256).collect::<Vec<_>>());
    assert!(
        rows.len() >= 64,
        "{} of 256 rows clear of kinks",
        rows.len()
    );
    rows.truncate(64);
    let pixels: Vec<u8> = rows
        .iter()
        .flat_map(|&r| {
            data.train.images.pixels[r * 784..(r + 1) * 784]
                .iter()
                .copied()
        })
        .collect();
    let labels: Vec<u8> = rows.iter().map(|&r| data.train.labels.labels[r]).collect();
    let cfg = TrainConfig {
        lr: 1.0,
        epochs: 1,
        seed: 0,
        ..TrainConfig::default()
    };
    let batch = Examples {
        pixels: &pixels,
        labels: &labels,
    };
    let (after, log) = train(
        &cfg,
        batch,
        &TrainPath::Reference(Device::Cpu),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(log.step_losses.len(), 1, "one batch");
    let change = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(a, b)| a - b).collect::<Vec<f32>>();
    let gradient = Weights {
        fc1_weight: change(&init.fc1_weight, &after.fc1_weight),
        fc1_bias: change(&init.fc1_bias, &after.fc1_bias),
        fc2_weight: change(&init.fc2_weight, &after.fc2_weight),
        fc2_bias: change(&init.fc2_bias, &after.fc2_bias),
        fc3_weight: change(&init.fc3_weight, &after.fc3_weight),
        fc3_bias: change(&init.fc3_bias, &after.fc3_bias),
    };
    let host = host_gradients(&init, data.train, &rows);
    assert_gradients_match("reference", log.step_losses[0], &gradient, &host);
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
    let diff = largest_gap(&spliced, &layers["logits"]);
    assert_eq!(diff, 0.0);
    assert!(model
        .logits_from("fc9", &layers["fc2.pre"])
        .unwrap_err()
        .to_string()
        .contains("unknown layer fc9"));

    // The input layer: the normalised pixels less a black pixel's value, so
    // zero wherever the image is black; spliced back, it gives the logits.
    let black = mnist::normalise(&[0])[0];
    let pixels = &data.test.images.pixels[784..2 * 784];
    let got = layers["input"].get(1).unwrap().to_vec1::<f32>().unwrap();
    for ((&g, &x), &p) in got.iter().zip(&input).zip(pixels) {
        assert_eq!(g, x - black);
        assert_eq!(p == 0, g == 0.0);
    }
    let spliced = model.logits_from("input", &layers["input"]).unwrap();
    let diff = largest_gap(&spliced, &layers["logits"]);
    assert!(diff < 1e-4, "{diff}");
    // The gradient of d . input with respect to the normalised pixels is d.
    let direction: Vec<f32> = (0..2 * 784).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
    let grads = model
        .input_gradients(&data.test.images.pixels[..2 * 784], "input", &direction)
        .unwrap();
    assert_eq!(grads, direction);
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
