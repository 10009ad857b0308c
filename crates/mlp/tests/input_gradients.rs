//! `Mlp::input_gradients` (candle autograd) against the chain rule written out
//! in f64 from the same weights.

use candle_core::Device;
use mlp::{Mlp, Weights};

const I: usize = 784;
const H: usize = 128;

/// Row `x`'s gradient of `site . d` in f64 (`site` is `fc1.pre` or
/// `fc2.post`), and whether a ReLU unit lies so near its kink that f32 may
/// put it on either side.
fn oracle(w: &Weights, x: &[f32], site: &str, d: &[f32]) -> (Vec<f64>, bool) {
    let matvec = |m: &[f32], b: &[f32], v: &[f64], rows: usize, cols: usize| -> Vec<f64> {
        (0..rows)
            .map(|o| {
                b[o] as f64
                    + (0..cols)
                        .map(|i| m[o * cols + i] as f64 * v[i])
                        .sum::<f64>()
            })
            .collect()
    };
    // v -> m^T v, for m [rows, cols].
    let back = |m: &[f32], v: &[f64], rows: usize, cols: usize| -> Vec<f64> {
        (0..cols)
            .map(|i| {
                (0..rows)
                    .map(|o| m[o * cols + i] as f64 * v[o])
                    .sum::<f64>()
            })
            .collect()
    };
    let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let d: Vec<f64> = d.iter().map(|&v| v as f64).collect();
    if site == "fc1.pre" {
        return (back(&w.fc1_weight, &d, H, I), false);
    }
    let pre1 = matvec(&w.fc1_weight, &w.fc1_bias, &x, H, I);
    let post1: Vec<f64> = pre1.iter().map(|v| v.max(0.0)).collect();
    let pre2 = matvec(&w.fc2_weight, &w.fc2_bias, &post1, H, H);
    let kinked = pre1.iter().chain(&pre2).any(|v| v.abs() < 1e-3);
    let gate = |pre: &[f64], v: Vec<f64>| -> Vec<f64> {
        v.iter()
            .zip(pre)
            .map(|(g, p)| if *p > 0.0 { *g } else { 0.0 })
            .collect()
    };
    let at_post1 = back(&w.fc2_weight, &gate(&pre2, d), H, H);
    (back(&w.fc1_weight, &gate(&pre1, at_post1), H, I), kinked)
}

#[test]
fn input_gradients_follow_the_chain_rule_in_f64() {
    let data = testkit::mnist();
    let weights = Weights::init(7);
    let model = Mlp::new(&weights, &Device::Cpu).unwrap();
    let rows = 12;
    let pixels = &data.test.images.pixels[..rows * I];
    let inputs = mnist::normalise(pixels);
    // A different direction per row, with both signs.
    let directions: Vec<f32> = (0..rows * H)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
        .collect();
    let mut compared = 0;
    for site in ["fc1.pre", "fc2.post"] {
        let got = model.input_gradients(pixels, site, &directions).unwrap();
        assert_eq!(got.len(), rows * I);
        for r in 0..rows {
            let (want, kinked) = oracle(
                &weights,
                &inputs[r * I..(r + 1) * I],
                site,
                &directions[r * H..(r + 1) * H],
            );
            if kinked {
                continue;
            }
            let norm = want.iter().map(|v| v * v).sum::<f64>().sqrt();
            let err = want
                .iter()
                .zip(&got[r * I..(r + 1) * I])
                .map(|(w, &g)| (w - g as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            // f32 sums of at most 784 terms: far under 1e-4 relative on any machine.
            assert!(
                err <= 1e-4 * norm,
                "{site} row {r}: error {err} against norm {norm}"
            );
            assert!(norm > 0.0);
            compared += 1;
        }
    }
    assert!(
        compared >= 18,
        "only {compared} rows were clear of ReLU kinks"
    );
}

#[test]
fn input_gradients_refuse_an_unknown_layer_and_a_wrong_shape() {
    let model = Mlp::new(&Weights::init(7), &Device::Cpu).unwrap();
    let pixels = vec![0u8; 2 * I];
    let err = model
        .input_gradients(&pixels, "fc9", &[0.0; 2 * H])
        .unwrap_err();
    assert!(err.to_string().contains("unknown layer fc9"), "{err}");
    let err = model
        .input_gradients(&pixels, "fc2.pre", &[0.0; H])
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("128 direction values for 2 rows of fc2.pre"),
        "{err}"
    );
}
