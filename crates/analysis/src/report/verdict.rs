//! The report's answer, written from the numbers: per SAE (`verdict`), over
//! the sweep (`sweep_verdict`), across architectures (`family_verdict`), and
//! the index's one sentence and one table (`run_verdict`, `VerdictRow`).

use crate::stats::MiSummary;
use crate::types::{AnalysisConfig, SaeSummary};

/// Which side wins a comparison, in words.
fn more(features: f64, neurons: f64) -> &'static str {
    if features > neurons {
        "SAE features"
    } else if neurons > features {
        "MLP neurons"
    } else {
        "neither"
    }
}

/// The answer to the notebook's question for one SAE, written from its numbers.
pub fn verdict(s: &SaeSummary, cfg: &AnalysisConfig) -> Vec<String> {
    let (f, n) = (&s.features, &s.neurons);
    let mut lines = vec![format!(
        "One unit at a time, {} carry more label information: the best binary I(active; Y) is {:.3} bits for a feature vs {:.3} for a neuron; with the magnitude in {} quantile bins, {:.3} vs {:.3} bits (mean over live units {:.3} vs {:.3}; train split).",
        more(f.max_mi_binned_bits, n.max_mi_binned_bits),
        f.max_mi_bits,
        n.max_mi_bits,
        cfg.mi_bins,
        f.max_mi_binned_bits,
        n.max_mi_binned_bits,
        f.live_mean_mi_binned_bits,
        n.live_mean_mi_binned_bits
    )];
    if let (Some((fu, fd)), Some((nu, nd))) = (&f.best_detector, &n.best_detector) {
        lines.push(format!(
            "As single-class detectors, {} win: feature {fu} detects {} with F1 {:.3} (precision {:.3}, recall {:.3}, AUROC {:.3}); the best neuron, {nu}, detects {} with F1 {:.3} (precision {:.3}, recall {:.3}, AUROC {:.3}).",
            more(fd.f1, nd.f1),
            fd.class,
            fd.f1,
            fd.precision,
            fd.recall,
            fd.auroc,
            nd.class,
            nd.f1,
            nd.precision,
            nd.recall,
            nd.auroc
        ));
    }
    let (mut feature_wins, mut neuron_wins) = (Vec::new(), Vec::new());
    for p in &s.feature_probes {
        if let Some(q) = s.neuron_probes.iter().find(|q| q.k == p.k) {
            if p.test_accuracy > q.test_accuracy {
                feature_wins.push(format!(
                    "k={} ({:.3} vs {:.3})",
                    p.k, p.test_accuracy, q.test_accuracy
                ));
            } else {
                neuron_wins.push(format!(
                    "k={} ({:.3} vs {:.3})",
                    p.k, q.test_accuracy, p.test_accuracy
                ));
            }
        }
    }
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    lines.push(format!(
        "Sparse probes on the k most informative units (test accuracy): SAE features win at {}; neurons at {}.",
        list(&feature_wins),
        list(&neuron_wins)
    ));
    if !s.feature_digit_probes.is_empty() && !s.neuron_digit_probes.is_empty() {
        let at: Vec<String> = crate::digit_probe::DIGIT_PROBE_KS
            .iter()
            .map(|&k| {
                let (f, n) = (
                    crate::digit_probe::mean_accuracy(&s.feature_digit_probes, k),
                    crate::digit_probe::mean_accuracy(&s.neuron_digit_probes, k),
                );
                format!("k={k}: {f:.3} vs {n:.3} ({} ahead)", more(f, n))
            })
            .collect();
        lines.push(format!(
            "SAEBench's k-sparse probing, one digit against the rest on balanced rows, the k units whose means differ most (mean test accuracy over digits, features vs neurons): {}.",
            at.join("; ")
        ));
    }
    if !s.tpp.is_empty() {
        let at: Vec<String> = s
            .tpp
            .iter()
            .map(|t| {
                format!(
                    "{} latents: {:.3} and {:.3} (TPP {:.3})",
                    t.latents,
                    t.intended,
                    t.unintended,
                    t.score()
                )
            })
            .collect();
        lines.push(format!(
            "SAEBench's targeted probe perturbation: ablating the latents that most push a digit's probe lowers that digit's probe accuracy, and the other digits' (mean over digits): {}.",
            at.join("; ")
        ));
    }
    let unconverged = s
        .feature_probes
        .iter()
        .chain(&s.neuron_probes)
        .filter(|p| !p.converged)
        .count();
    if unconverged > 0 {
        lines.push(format!(
            "{unconverged} of {} probes stopped at the step limit before converging (see probes.parquet: steps, converged).",
            s.feature_probes.len() + s.neuron_probes.len()
        ));
    }
    let live = f.units - f.dead;
    lines.push(format!(
        "Dead features: {} of {} ({:.0}%) never fire on the train split, so the comparison is between {live} live features and {} neurons ({} of them never active). Test split: L0 {:.1}, explained variance {:.3}, CE recovered {:.3} against zero-ablation{}.",
        f.dead,
        f.units,
        100.0 * f.dead as f64 / f.units.max(1) as f64,
        n.units,
        n.dead,
        s.metrics.l0,
        s.metrics.explained_variance,
        s.metrics.ce_recovered,
        s.downstream.map_or(String::new(), |d| format!(
            "; spliced into the MLP, cross-entropy {:.4} nats against {:.4} clean ({:+.4}) and accuracy {:.4} against {:.4} ({:+.4})",
            d.spliced_loss,
            d.clean_loss,
            d.spliced_loss - d.clean_loss,
            s.metrics.spliced_accuracy,
            d.clean_accuracy,
            s.metrics.spliced_accuracy - d.clean_accuracy
        )),
    ));
    lines
}

/// The architecture (`sae.architecture`) an SAE of the sweep has.
pub(crate) fn architecture(s: &SaeSummary) -> &str {
    s.params
        .get("architecture")
        .and_then(|v| v.as_str())
        .unwrap_or("unknown")
}

/// Share of latents dead on the train split under which an architecture
/// counts as keeping its latents alive.
pub(crate) const ALIVE_BELOW: f64 = 0.1;

/// The notebook's question over every SAE of the sweep (two or more): the
/// best feature of any SAE against the best neuron, per measure.
pub fn sweep_verdict(summaries: &[SaeSummary]) -> Option<String> {
    let first = summaries.get(1).and(summaries.first())?;
    let measures: [(&str, fn(&MiSummary) -> f64); 3] = [
        ("binary MI", |m| m.max_mi_bits),
        ("binned MI", |m| m.max_mi_binned_bits),
        ("detector F1", |m| {
            m.best_detector.as_ref().map_or(0.0, |(_, d)| d.f1)
        }),
    ];
    let (mut parts, mut feature_wins, mut neuron_wins) = (Vec::new(), Vec::new(), Vec::new());
    for (measure, of) in measures {
        let best = summaries
            .iter()
            .max_by(|a, b| of(&a.features).total_cmp(&of(&b.features)))
            .expect("two or more SAEs");
        let (feature, neuron) = (of(&best.features), of(&first.neurons));
        parts.push(format!(
            "{measure} {feature:.3} ({}) vs {neuron:.3}",
            best.name
        ));
        if feature > neuron {
            feature_wins.push(measure);
        } else {
            neuron_wins.push(measure);
        }
    }
    let list = |v: &[&str]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    Some(format!(
        "Over all {} SAEs, the best feature of any against the best neuron: {}. Features win on {}; neurons on {}.",
        summaries.len(),
        parts.join("; "),
        list(&feature_wins),
        list(&neuron_wins)
    ))
}

/// Across architectures (only when the sweep has two or more): which keep
/// their latents alive, and at what cost in explained variance and CE
/// recovered. Each architecture is represented by its SAE with the fewest
/// dead latents (the best EV among ties).
pub fn family_verdict(summaries: &[SaeSummary]) -> Vec<String> {
    let dead = |s: &SaeSummary| s.features.dead as f64 / s.features.units.max(1) as f64;
    let mut best: Vec<&SaeSummary> = Vec::new();
    for s in summaries {
        match best.iter_mut().find(|b| architecture(b) == architecture(s)) {
            Some(b) => {
                if (dead(s), -s.metrics.explained_variance)
                    < (dead(b), -b.metrics.explained_variance)
                {
                    *b = s;
                }
            }
            None => best.push(s),
        }
    }
    if best.len() < 2 {
        return Vec::new();
    }
    best.sort_by(|a, b| {
        dead(a).total_cmp(&dead(b)).then(
            b.metrics
                .explained_variance
                .total_cmp(&a.metrics.explained_variance),
        )
    });
    let listed: Vec<String> = best
        .iter()
        .map(|s| {
            format!(
                "{} {:.0}% ({} of {}; EV {:.3}, CE recovered {:.3}, L0 {:.1})",
                architecture(s),
                100.0 * dead(s),
                s.features.dead,
                s.features.units,
                s.metrics.explained_variance,
                s.metrics.ce_recovered,
                s.metrics.l0
            )
        })
        .collect();
    let mut lines = vec![format!(
        "Dead latents by architecture, fewest first (train split; test EV, CE recovered and L0; each architecture's SAE with the fewest): {}.",
        listed.join("; ")
    )];
    let (alive, dying): (Vec<&SaeSummary>, Vec<&SaeSummary>) =
        best.iter().partition(|s| dead(s) < ALIVE_BELOW);
    let names = |v: &[&SaeSummary]| {
        v.iter()
            .map(|s| architecture(s))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let top = |v: &[&SaeSummary], f: fn(&SaeSummary) -> f64| {
        v.iter().map(|s| f(s)).fold(f64::NEG_INFINITY, f64::max)
    };
    lines.push(if alive.is_empty() {
        format!("No architecture keeps {:.0}% of its latents alive.", 100.0 * (1.0 - ALIVE_BELOW))
    } else if dying.is_empty() {
        format!("Every architecture keeps over {:.0}% of its latents alive.", 100.0 * (1.0 - ALIVE_BELOW))
    } else {
        let ev = top(&alive, |s| s.metrics.explained_variance) - top(&dying, |s| s.metrics.explained_variance);
        let ce = top(&alive, |s| s.metrics.ce_recovered) - top(&dying, |s| s.metrics.ce_recovered);
        let word = |d: f64| if d >= 0.0 { "gain" } else { "cost" };
        format!(
            "Under {:.0}% dead: {}; the others: {}. Keeping latents alive comes at a {} of {:.3} in the best explained variance and a {} of {:.3} in the best CE recovered.",
            100.0 * ALIVE_BELOW,
            names(&alive),
            names(&dying),
            word(ev),
            ev.abs(),
            word(ce),
            ce.abs()
        )
    });
    lines
}

/// Share of live latents under which an SAE is marked in the index's table
/// and left out of "who wins": a few live latents of many are no dictionary.
pub const FEW_LIVE: f64 = 0.1;

/// The share of an SAE's latents that fire on some train row.
pub fn live_fraction(s: &SaeSummary) -> f64 {
    (s.features.units - s.features.dead) as f64 / s.features.units.max(1) as f64
}

/// One measure on which features meet neurons; higher is better for both.
#[derive(Clone, Debug, PartialEq)]
pub struct Contest {
    /// Its name with its split, e.g. `best binned MI (train)`.
    pub measure: String,
    pub features: f64,
    pub neurons: f64,
}

/// Every measure the index's "who wins" counts, for one SAE: the best and
/// live-mean binned MI, the best binary MI, the best detector's F1 and AUROC,
/// each sparse probe's test accuracy and SAEBench's per-digit probe at k = 1.
pub fn contests(s: &SaeSummary) -> Vec<Contest> {
    let (f, n) = (&s.features, &s.neurons);
    let detector = |m: &MiSummary, of: fn(&crate::labelinfo::Detector) -> f64| {
        m.best_detector.as_ref().map_or(0.0, |(_, d)| of(d))
    };
    let mut out = vec![
        Contest {
            measure: "best binary MI (train)".into(),
            features: f.max_mi_bits,
            neurons: n.max_mi_bits,
        },
        Contest {
            measure: "best binned MI (train)".into(),
            features: f.max_mi_binned_bits,
            neurons: n.max_mi_binned_bits,
        },
        Contest {
            measure: "live-mean binned MI (train)".into(),
            features: f.live_mean_mi_binned_bits,
            neurons: n.live_mean_mi_binned_bits,
        },
        Contest {
            measure: "best detector F1 (train)".into(),
            features: detector(f, |d| d.f1),
            neurons: detector(n, |d| d.f1),
        },
        Contest {
            measure: "best detector AUROC (train)".into(),
            features: detector(f, |d| d.auroc),
            neurons: detector(n, |d| d.auroc),
        },
    ];
    for p in &s.feature_probes {
        if let Some(q) = s.neuron_probes.iter().find(|q| q.k == p.k) {
            out.push(Contest {
                measure: format!("probe k={} (test)", p.k),
                features: p.test_accuracy,
                neurons: q.test_accuracy,
            });
        }
    }
    if !s.feature_digit_probes.is_empty() && !s.neuron_digit_probes.is_empty() {
        out.push(Contest {
            measure: "per-digit probe k=1 (test)".into(),
            features: crate::digit_probe::mean_accuracy(&s.feature_digit_probes, 1),
            neurons: crate::digit_probe::mean_accuracy(&s.neuron_digit_probes, 1),
        });
    }
    out
}

/// Who wins for one SAE: the measures features win, of how many; `None`
/// for an SAE with under [`FEW_LIVE`] of its latents live.
pub fn feature_wins(s: &SaeSummary) -> Option<(usize, usize)> {
    if live_fraction(s) < FEW_LIVE {
        return None;
    }
    let all = contests(s);
    Some((
        all.iter().filter(|c| c.features > c.neurons).count(),
        all.len(),
    ))
}

/// The index's first sentence: across every SAE of the run, who carries more
/// label information, and the best feature of any SAE against the best neuron.
pub fn run_verdict(summaries: &[SaeSummary]) -> String {
    let Some(first) = summaries.first() else {
        return "This run has no SAE to compare with the neurons.".into();
    };
    let counted: Vec<(&SaeSummary, (usize, usize))> = summaries
        .iter()
        .filter_map(|s| feature_wins(s).map(|w| (s, w)))
        .collect();
    let left_out = summaries.len() - counted.len();
    let left_out = match left_out {
        0 => String::new(),
        1 => format!(
            " (1 SAE with under {:.0}% live latents left out)",
            100.0 * FEW_LIVE
        ),
        n => format!(
            " ({n} SAEs with under {:.0}% live latents left out)",
            100.0 * FEW_LIVE
        ),
    };
    if counted.is_empty() {
        return format!(
            "No SAE of this run has {:.0}% of its latents live, so none is compared with the MLP's neurons.",
            100.0 * FEW_LIVE
        );
    }
    let features_ahead = counted.iter().filter(|(_, (w, n))| 2 * w > *n).count();
    let best = counted
        .iter()
        .map(|(s, _)| *s)
        .max_by(|a, b| {
            a.features
                .max_mi_binned_bits
                .total_cmp(&b.features.max_mi_binned_bits)
        })
        .expect("one or more counted");
    let who = if counted.len() == 1 {
        let (s, (w, n)) = counted[0];
        if 2 * w > n {
            format!(
                "SAE features beat the MLP's neurons on {w} of {n} measures in {}",
                s.name
            )
        } else {
            format!(
                "The MLP's neurons match or beat SAE features on {} of {n} measures in {}",
                n - w,
                s.name
            )
        }
    } else if 2 * features_ahead > counted.len() {
        format!(
            "SAE features beat the MLP's neurons on most measures in {features_ahead} of the {} SAEs compared",
            counted.len()
        )
    } else {
        format!(
            "The MLP's neurons match or beat SAE features on most measures in {} of the {} SAEs compared",
            counted.len() - features_ahead,
            counted.len()
        )
    };
    format!(
        "{who}{left_out}: the best feature carries {:.3} bits of binned MI about the digit ({}, train split) against {:.3} for the best neuron.",
        best.features.max_mi_binned_bits, best.name, first.neurons.max_mi_binned_bits
    )
}
