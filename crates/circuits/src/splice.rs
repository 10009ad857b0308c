//! Splicing: the MLP with T1, T2 or both in place of their sublayers, with
//! and without their errors, scored against the labels and the real MLP.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::network::{Codes, Replacement, Trace};
use crate::CircuitError;

/// One way of running the MLP, over a set of images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpliceRow {
    /// `mlp`, `T1`, `T2`, `T1+T2`.
    pub replaced: String,
    /// Whether each replaced layer's error is added back (exact by construction).
    pub with_errors: bool,
    pub accuracy: f64,
    /// Mean cross-entropy against the labels.
    pub ce: f64,
    /// Mean KL(real MLP || this), in nats.
    pub kl: f64,
    /// Share of images whose top class is the real MLP's.
    pub top1_agreement: f64,
}

fn log_softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let log_sum = logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln() + max;
    logits.iter().map(|l| l - log_sum).collect()
}

pub(crate) fn argmax(v: &[f64]) -> usize {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best })
}

fn score(
    replaced: &str,
    with_errors: bool,
    real: &[Vec<f64>],
    spliced: &[Vec<f64>],
    labels: &[u8],
) -> SpliceRow {
    let n = labels.len() as f64;
    let (mut correct, mut ce, mut kl, mut agree) = (0.0, 0.0, 0.0, 0.0);
    for ((r, s), &y) in real.iter().zip(spliced).zip(labels) {
        let (lr, ls) = (log_softmax(r), log_softmax(s));
        correct += (argmax(s) == y as usize) as u8 as f64;
        agree += (argmax(s) == argmax(r)) as u8 as f64;
        ce -= ls[y as usize];
        kl += lr
            .iter()
            .zip(&ls)
            .map(|(a, b)| a.exp() * (a - b))
            .sum::<f64>();
    }
    SpliceRow {
        replaced: replaced.to_string(),
        with_errors,
        accuracy: correct / n,
        ce: ce / n,
        kl: kl / n,
        top1_agreement: agree / n,
    }
}

fn add(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

/// The real MLP, T1, T2 and both, each with and without errors, over `traces`
/// (their images' `labels`).
pub fn splice_metrics(
    r: &Replacement,
    traces: &[Trace],
    labels: &[u8],
) -> Result<Vec<SpliceRow>, CircuitError> {
    if traces.len() != labels.len() || traces.is_empty() {
        return Err(CircuitError::Input(format!(
            "splicing needs one label per traced image and at least one image; got {} images and {} labels",
            traces.len(),
            labels.len()
        )));
    }
    let net = &r.network;
    let real: Vec<Vec<f64>> = traces.iter().map(|t| t.real.logits.clone()).collect();
    let from_h1 = |h1: &[f64]| net.logits_from_h2(&net.fc2_post(h1));
    let t1_out: Vec<Vec<f64>> = traces
        .par_iter()
        .map(|t| r.t1_output(&t.input, &t.t1))
        .collect();
    // T2 on T1's output: its own active features there.
    let t2_on_t1: Vec<Codes> = r.codes_on_h1(&t1_out)?;
    let mut rows = vec![score("mlp", false, &real, &real, labels)];
    for with_errors in [false, true] {
        let t1: Vec<Vec<f64>> = traces
            .par_iter()
            .zip(&t1_out)
            .map(|(t, out)| {
                from_h1(&if with_errors {
                    add(out, &t.e1)
                } else {
                    out.clone()
                })
            })
            .collect();
        let t2: Vec<Vec<f64>> = traces
            .par_iter()
            .map(|t| {
                let out = r.t2_output(&t.real.h1, &t.t2);
                net.logits_from_h2(&if with_errors { add(&out, &t.e2) } else { out })
            })
            .collect();
        let both: Vec<Vec<f64>> = traces
            .par_iter()
            .zip(t1_out.par_iter().zip(&t2_on_t1))
            .map(|(t, (h1, codes))| {
                if with_errors {
                    let h1 = add(h1, &t.e1);
                    net.logits_from_h2(&add(&r.t2_output(&h1, &t.t2), &t.e2))
                } else {
                    net.logits_from_h2(&r.t2_output(h1, codes))
                }
            })
            .collect();
        rows.push(score("T1", with_errors, &real, &t1, labels));
        rows.push(score("T2", with_errors, &real, &t2, labels));
        rows.push(score("T1+T2", with_errors, &real, &both, labels));
    }
    Ok(rows)
}
