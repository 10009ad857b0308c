//! Counting over dense activation matrices: firing, per-label counts, information.
//!
//! A unit (SAE feature or MLP neuron) is *active* on a row where its value is
//! strictly positive. For a pre-ReLU neuron that is exactly "post-ReLU > 0", and
//! the positive values are the post-ReLU values, so features and neurons share
//! one code path.

use serde::{Deserialize, Serialize};

use crate::labelinfo::{Detector, LabelInfo};
use crate::AnalysisError;

/// Number of digit classes.
pub const CLASSES: usize = 10;

/// Per-unit, per-label counts over one split.
#[derive(Clone, Debug, PartialEq)]
pub struct UnitCounts {
    pub rows: usize,
    pub width: usize,
    /// Rows of each label.
    pub label_totals: [u64; CLASSES],
    /// `[CLASSES, width]`, label-major: rows where the unit is active and the label is y.
    pub active_by_label: Vec<u64>,
    /// `[CLASSES, width]`, label-major: sum of the unit's positive values on those rows.
    pub sum_by_label: Vec<f64>,
    /// `[width]`: the largest value over all rows, 0 where never active.
    pub max: Vec<f32>,
}

/// Checks that `values` is `[labels.len(), width]` and every label is a digit.
pub(crate) fn check_matrix(
    what: &str,
    values: &[f32],
    width: usize,
    labels: &[u8],
) -> Result<(), AnalysisError> {
    if width == 0 || values.len() != labels.len() * width {
        return Err(AnalysisError::Input(format!(
            "{what} has {} values, expected {} rows x {width} units",
            values.len(),
            labels.len()
        )));
    }
    check_labels(what, labels)
}

fn check_labels(what: &str, labels: &[u8]) -> Result<(), AnalysisError> {
    match labels.iter().find(|&&l| l as usize >= CLASSES) {
        Some(bad) => Err(AnalysisError::Input(format!(
            "{what} has label {bad}, outside 0..{CLASSES}"
        ))),
        None => Ok(()),
    }
}

impl UnitCounts {
    /// Counts over row-major `values` `[labels.len(), width]` (through its
    /// non-zeros: one counting path for dense and sparse data).
    pub fn count(values: &[f32], width: usize, labels: &[u8]) -> Result<UnitCounts, AnalysisError> {
        check_matrix("activation matrix", values, width, labels)?;
        UnitCounts::from_sparse(
            &crate::tables::SparseActs::from_dense(values, width),
            width,
            labels,
        )
    }

    /// Counts from the non-zeros of a `[labels.len(), width]` matrix (sums in f64).
    pub fn from_sparse(
        acts: &crate::tables::SparseActs,
        width: usize,
        labels: &[u8],
    ) -> Result<UnitCounts, AnalysisError> {
        check_labels("activation matrix", labels)?;
        let mut label_totals = [0u64; CLASSES];
        for &y in labels {
            label_totals[y as usize] += 1;
        }
        let mut active_by_label = vec![0u64; CLASSES * width];
        let mut sum_by_label = vec![0.0f64; CLASSES * width];
        let mut max = vec![0.0f32; width];
        for ((&r, &u), &v) in acts.row.iter().zip(&acts.unit).zip(&acts.value) {
            let (y, u) = (labels[r as usize] as usize, u as usize);
            if u >= width {
                return Err(AnalysisError::Input(format!(
                    "sparse activations name unit {u} of a matrix {width} wide"
                )));
            }
            active_by_label[y * width + u] += 1;
            sum_by_label[y * width + u] += v as f64;
            max[u] = max[u].max(v);
        }
        Ok(UnitCounts {
            rows: labels.len(),
            width,
            label_totals,
            active_by_label,
            sum_by_label,
            max,
        })
    }

    /// Rows on which `unit` is active, per label.
    pub fn active_of(&self, unit: usize) -> [u64; CLASSES] {
        std::array::from_fn(|y| self.active_by_label[y * self.width + unit])
    }

    pub fn sums_of(&self, unit: usize) -> [f64; CLASSES] {
        std::array::from_fn(|y| self.sum_by_label[y * self.width + unit])
    }

    /// Rows on which `unit` is active.
    pub fn active_total(&self, unit: usize) -> u64 {
        self.active_of(unit).iter().sum()
    }

    pub fn frequency(&self, unit: usize) -> f64 {
        self.active_total(unit) as f64 / self.rows.max(1) as f64
    }
}

/// I(A; Y) in bits for a binary A: `active[y]` rows with A = 1 and label y,
/// `totals[y]` rows with label y.
pub fn mutual_information_bits(active: &[u64; CLASSES], totals: &[u64; CLASSES]) -> f64 {
    let n: u64 = totals.iter().sum();
    let on: u64 = active.iter().sum();
    if n == 0 || on == 0 || on == n {
        return 0.0;
    }
    let n = n as f64;
    let p_on = on as f64 / n;
    let mut mi = 0.0;
    for y in 0..CLASSES {
        let p_y = totals[y] as f64 / n;
        for (count, p_a) in [(active[y], p_on), (totals[y] - active[y], 1.0 - p_on)] {
            if count > 0 {
                let p_ay = count as f64 / n;
                mi += p_ay * (p_ay / (p_a * p_y)).log2();
            }
        }
    }
    // Rounding can leave -1e-17 for independent variables.
    mi.max(0.0)
}

/// H(Y | A = 1) in bits; `None` when A is never 1.
pub fn conditional_entropy_bits(active: &[u64; CLASSES]) -> Option<f64> {
    let on: u64 = active.iter().sum();
    (on > 0).then(|| {
        active
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| {
                let p = c as f64 / on as f64;
                -p * p.log2()
            })
            .sum::<f64>()
            .max(0.0)
    })
}

/// The statistics of one unit on the train split (frequency on test too).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnitStats {
    pub unit: usize,
    pub freq_train: f64,
    pub freq_test: f64,
    /// Never active on the train split.
    pub dead: bool,
    /// Mean of the positive values over train rows where active.
    pub mean_act: Option<f64>,
    /// Largest train value (rows where active).
    pub max_act: Option<f64>,
    /// I(A; Y) of the binary "active" variable.
    pub mi_bits: f64,
    /// I(B; Y) with the magnitude binned ([`crate::labelinfo`]).
    pub mi_binned_bits: f64,
    /// H(Y | A = 1); null below the minimum support.
    pub h_y_given_on_bits: Option<f64>,
    /// max_y P(y | A = 1); null below the minimum support.
    pub purity: Option<f64>,
    /// argmax_y P(y | A = 1); null below the minimum support.
    pub top_label: Option<u8>,
    /// The best one-vs-rest detector; null when dead.
    pub detector: Option<Detector>,
}

/// Per-unit statistics from the train and test counts and the units' label
/// information; purity, its label and H(Y | on) need `min_support` active train rows.
pub fn unit_stats(
    train: &UnitCounts,
    test: &UnitCounts,
    info: &[LabelInfo],
    min_support: usize,
) -> Vec<UnitStats> {
    (0..train.width)
        .map(|unit| {
            let active = train.active_of(unit);
            let on: u64 = active.iter().sum();
            let supported = on > 0 && on >= min_support as u64;
            let (top, top_count) =
                active.iter().enumerate().fold(
                    (0, 0),
                    |best, (y, &c)| if c > best.1 { (y, c) } else { best },
                );
            UnitStats {
                unit,
                freq_train: train.frequency(unit),
                freq_test: test.frequency(unit),
                dead: on == 0,
                mean_act: (on > 0).then(|| train.sums_of(unit).iter().sum::<f64>() / on as f64),
                max_act: (on > 0).then(|| train.max[unit] as f64),
                mi_bits: mutual_information_bits(&active, &train.label_totals),
                mi_binned_bits: info[unit].mi_binned_bits,
                h_y_given_on_bits: conditional_entropy_bits(&active).filter(|_| supported),
                purity: supported.then(|| top_count as f64 / on as f64),
                top_label: supported.then_some(top as u8),
                detector: info[unit].detector.clone(),
            }
        })
        .collect()
}

/// A set of units' label information at a glance: how many carry more than
/// each threshold, the best and mean of each measure, and the best detector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MiSummary {
    pub units: usize,
    pub dead: usize,
    /// Units with binary I(A; Y) > 0.1 and 0.5 bit (it cannot exceed 1 bit).
    pub above_0_1_bits: usize,
    pub above_0_5_bits: usize,
    pub max_mi_bits: f64,
    /// Mean over all units, dead ones included (they carry 0 bits).
    pub mean_mi_bits: f64,
    /// Units with binned I(B; Y) > 0.5 bit.
    pub binned_above_0_5_bits: usize,
    pub max_mi_binned_bits: f64,
    pub mean_mi_binned_bits: f64,
    /// Means over live units only (active on some train row): what a unit
    /// that fires carries, whatever share of the dictionary is dead.
    #[serde(default)]
    pub live_mean_mi_bits: f64,
    #[serde(default)]
    pub live_mean_mi_binned_bits: f64,
    /// The unit whose detector has the best F1, and that detector.
    pub best_detector: Option<(usize, Detector)>,
}

impl MiSummary {
    pub fn of(stats: &[UnitStats]) -> MiSummary {
        let above = |t: f64| stats.iter().filter(|s| s.mi_bits > t).count();
        let mean =
            |f: fn(&UnitStats) -> f64| stats.iter().map(f).sum::<f64>() / stats.len().max(1) as f64;
        let live = stats.iter().filter(|s| !s.dead).count();
        let live_mean = |f: fn(&UnitStats) -> f64| {
            stats.iter().filter(|s| !s.dead).map(f).sum::<f64>() / live.max(1) as f64
        };
        let best_detector = stats
            .iter()
            .filter_map(|s| s.detector.as_ref().map(|d| (s.unit, d)))
            .fold(None::<(usize, &Detector)>, |best, (unit, d)| match best {
                Some((_, b)) if b.f1 >= d.f1 => best,
                _ => Some((unit, d)),
            })
            .map(|(unit, d)| (unit, d.clone()));
        MiSummary {
            units: stats.len(),
            dead: stats.iter().filter(|s| s.dead).count(),
            above_0_1_bits: above(0.1),
            above_0_5_bits: above(0.5),
            max_mi_bits: stats.iter().map(|s| s.mi_bits).fold(0.0, f64::max),
            mean_mi_bits: mean(|s| s.mi_bits),
            binned_above_0_5_bits: stats.iter().filter(|s| s.mi_binned_bits > 0.5).count(),
            max_mi_binned_bits: stats.iter().map(|s| s.mi_binned_bits).fold(0.0, f64::max),
            mean_mi_binned_bits: mean(|s| s.mi_binned_bits),
            live_mean_mi_bits: live_mean(|s| s.mi_bits),
            live_mean_mi_binned_bits: live_mean(|s| s.mi_binned_bits),
            best_detector,
        }
    }
}

/// Unit ids sorted by decreasing MI (ties by id), the probes' and dashboards' ranking.
pub fn rank_by_mi(stats: &[UnitStats]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..stats.len()).collect();
    order.sort_by(|&a, &b| {
        stats[b]
            .mi_bits
            .total_cmp(&stats[a].mi_bits)
            .then(a.cmp(&b))
    });
    order
}

/// Unit ids sorted by decreasing train frequency (ties by id).
pub fn rank_by_frequency(stats: &[UnitStats]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..stats.len()).collect();
    order.sort_by(|&a, &b| {
        stats[b]
            .freq_train
            .total_cmp(&stats[a].freq_train)
            .then(a.cmp(&b))
    });
    order
}
