//! Label information that does justice to sparse units.
//!
//! I(A; Y) of the binary "active" variable is small by construction for a unit
//! that fires rarely, however pure: a feature that fires on 90 eights out of
//! 92 rows carries ~0.005 bits. Two measures that do not punish rarity:
//! - I(B; Y) where B bins the activation's magnitude: bin 0 is "inactive"
//!   (value <= 0), bins 1..=`bins` split the unit's positive train values into
//!   equal-count quantile bins (equal values never straddle two bins).
//! - The unit's best one-vs-rest *detector*: for each class c, "active => c"
//!   has precision TP/active and recall TP/rows of c; the class with the best
//!   F1 is the unit's, reported with its precision, recall, F1 and the AUROC of
//!   the raw activation value as a score for c (ties count one half).

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::stats::CLASSES;
use crate::tables::SparseActs;

/// A unit's best one-vs-rest detector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Detector {
    pub class: u8,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub auroc: f64,
}

/// What one unit says about the label beyond on/off.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabelInfo {
    /// I(B; Y) in bits, B = zero or one of the quantile bins of the positive values.
    pub mi_binned_bits: f64,
    /// `None` for a unit that never fires.
    pub detector: Option<Detector>,
}

/// Per unit of `acts` (the non-zeros of a `[labels.len(), width]` matrix):
/// its binned MI with `bins` quantile bins and its best detector.
pub fn label_info(acts: &SparseActs, labels: &[u8], width: usize, bins: usize) -> Vec<LabelInfo> {
    let mut totals = [0u64; CLASSES];
    for &y in labels {
        totals[y as usize] += 1;
    }
    // Group the non-zeros by unit (a counting sort keeps each unit's rows in order).
    let mut starts = vec![0usize; width + 1];
    for &u in &acts.unit {
        starts[u as usize + 1] += 1;
    }
    for u in 0..width {
        starts[u + 1] += starts[u];
    }
    let mut fill = starts.clone();
    let mut by_unit = vec![(0f32, 0u8); acts.len()];
    for ((&u, &r), &v) in acts.unit.iter().zip(&acts.row).zip(&acts.value) {
        by_unit[fill[u as usize]] = (v, labels[r as usize]);
        fill[u as usize] += 1;
    }
    (0..width)
        .into_par_iter()
        .map(|u| {
            let mut values = by_unit[starts[u]..starts[u + 1]].to_vec();
            values.sort_by(|a, b| a.0.total_cmp(&b.0));
            unit_info(&values, &totals, bins)
        })
        .collect()
}

/// One unit from its positive values sorted ascending, each with its label.
pub fn unit_info(sorted: &[(f32, u8)], totals: &[u64; CLASSES], bins: usize) -> LabelInfo {
    let on = sorted.len();
    let mut active = [0u64; CLASSES];
    for &(_, y) in sorted {
        active[y as usize] += 1;
    }
    // Bin 0: the rows where the unit is off.
    let mut joint: Vec<[u64; CLASSES]> = vec![std::array::from_fn(|y| totals[y] - active[y])];
    let bins = bins.max(1);
    let mut bin = 0;
    for (rank, &(value, y)) in sorted.iter().enumerate() {
        let due = (rank * bins / on.max(1)) + 1;
        let tied = rank > 0 && sorted[rank - 1].0 == value;
        if due > bin && !tied {
            joint.push([0; CLASSES]);
            bin = due;
        }
        joint.last_mut().expect("a bin was opened at rank 0")[y as usize] += 1;
    }
    LabelInfo {
        mi_binned_bits: mutual_information(&joint),
        detector: (on > 0).then(|| best_detector(sorted, &active, totals)),
    }
}

/// I(B; Y) in bits from a joint count table `[b][y]`.
pub fn mutual_information(joint: &[[u64; CLASSES]]) -> f64 {
    let n: u64 = joint.iter().flatten().sum();
    if n == 0 {
        return 0.0;
    }
    let n = n as f64;
    let p_y: [f64; CLASSES] =
        std::array::from_fn(|y| joint.iter().map(|row| row[y]).sum::<u64>() as f64 / n);
    let mut mi = 0.0;
    for row in joint {
        let p_b = row.iter().sum::<u64>() as f64 / n;
        for (y, &count) in row.iter().enumerate() {
            if count > 0 {
                let p = count as f64 / n;
                mi += p * (p / (p_b * p_y[y])).log2();
            }
        }
    }
    mi.max(0.0)
}

fn best_detector(
    sorted: &[(f32, u8)],
    active: &[u64; CLASSES],
    totals: &[u64; CLASSES],
) -> Detector {
    let on = sorted.len() as f64;
    let f1 = |c: usize| {
        let tp = active[c] as f64;
        if tp == 0.0 {
            0.0
        } else {
            2.0 * tp / (on + totals[c] as f64)
        }
    };
    let class = (0..CLASSES).fold(0, |best, c| if f1(c) > f1(best) { c } else { best });
    Detector {
        class: class as u8,
        precision: active[class] as f64 / on,
        recall: active[class] as f64 / totals[class].max(1) as f64,
        f1: f1(class),
        auroc: auroc(sorted, class as u8, active[class], totals),
    }
}

/// AUROC of the activation (0 where off) as a score for `class`.
fn auroc(sorted: &[(f32, u8)], class: u8, active_pos: u64, totals: &[u64; CLASSES]) -> f64 {
    let n: u64 = totals.iter().sum();
    let pos = totals[class as usize];
    let neg = n - pos;
    if pos == 0 || neg == 0 {
        return f64::NAN;
    }
    let active_neg = sorted.len() as u64 - active_pos;
    // Rows that are off tie at 0: each positive among them beats half the negatives there.
    let mut neg_below = (neg - active_neg) as f64;
    let mut wins = (pos - active_pos) as f64 * 0.5 * neg_below;
    let mut i = 0;
    while i < sorted.len() {
        let value = sorted[i].0;
        let (mut pos_here, mut neg_here) = (0.0, 0.0);
        while i < sorted.len() && sorted[i].0 == value {
            if sorted[i].1 == class {
                pos_here += 1.0;
            } else {
                neg_here += 1.0;
            }
            i += 1;
        }
        wins += pos_here * (neg_below + 0.5 * neg_here);
        neg_below += neg_here;
    }
    wins / (pos as f64 * neg as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(per_class: u64) -> [u64; CLASSES] {
        [per_class; CLASSES]
    }

    #[test]
    fn a_perfect_detector_of_one_class() {
        // 100 rows per class; the unit fires on exactly the 100 sevens.
        let sorted: Vec<(f32, u8)> = (0..100).map(|i| (1.0 + i as f32, 7)).collect();
        let info = unit_info(&sorted, &totals(100), 4);
        let d = info.detector.unwrap();
        assert_eq!(
            (d.class, d.precision, d.recall, d.f1, d.auroc),
            (7, 1.0, 1.0, 1.0, 1.0)
        );
        // Knowing the bin (0 = not seven) tells 7 vs the rest: H(1/10) bits,
        // and the magnitude bins within the sevens add nothing.
        let h = -(0.1f64 * 0.1f64.log2() + 0.9 * 0.9f64.log2());
        assert!(
            (info.mi_binned_bits - h).abs() < 1e-12,
            "{}",
            info.mi_binned_bits
        );
    }

    #[test]
    fn magnitude_bins_carry_what_on_off_cannot() {
        // Fires on every row; its value is the label: binary MI is 0, but 10
        // equal-count bins of the value recover the label (log2 10 bits).
        let sorted: Vec<(f32, u8)> = (0..10u8)
            .flat_map(|y| std::iter::repeat_n((y as f32 + 1.0, y), 50))
            .collect();
        let info = unit_info(&sorted, &totals(50), 10);
        assert!((info.mi_binned_bits - 10f64.log2()).abs() < 1e-12);
        // Fewer bins than values: ties stay together, so 5 bins pair the labels.
        let five = unit_info(&sorted, &totals(50), 5);
        assert!(
            (five.mi_binned_bits - 5f64.log2()).abs() < 1e-12,
            "{}",
            five.mi_binned_bits
        );
        // As a detector for its best class it is weak in precision, perfect in AUROC.
        let d = info.detector.unwrap();
        assert_eq!(d.class, 0);
        assert!((d.precision - 0.1).abs() < 1e-12 && d.recall == 1.0);
        assert!(
            (d.auroc - 0.0).abs() < 1e-12,
            "class 0 has the lowest values: {}",
            d.auroc
        );
    }

    #[test]
    fn auroc_counts_ties_as_half_and_matches_a_brute_force_count() {
        // 3 classes' worth of rows, values with ties, some rows off.
        let t: [u64; CLASSES] = [6, 4, 0, 0, 0, 0, 0, 0, 0, 0];
        let sorted = vec![(0.5, 1), (0.5, 0), (1.0, 0), (2.0, 0), (2.0, 0), (3.0, 1)];
        let info = unit_info(&sorted, &t, 2);
        let d = info.detector.unwrap();
        assert_eq!(d.class, 0);
        // Brute force over every (positive, negative) pair, off rows scoring 0.
        let mut scores_pos = vec![0.0f32; 2];
        let mut scores_neg = vec![0.0f32; 2];
        for &(v, y) in &sorted {
            if y == 0 {
                scores_pos.push(v)
            } else {
                scores_neg.push(v)
            }
        }
        let mut wins = 0.0;
        for &p in &scores_pos {
            for &n in &scores_neg {
                wins += if p > n {
                    1.0
                } else if p == n {
                    0.5
                } else {
                    0.0
                };
            }
        }
        let expected = wins / (scores_pos.len() * scores_neg.len()) as f64;
        assert!(
            (d.auroc - expected).abs() < 1e-12,
            "{} vs {expected}",
            d.auroc
        );
        assert!((d.precision - 4.0 / 6.0).abs() < 1e-12 && (d.recall - 4.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn a_dead_unit_carries_nothing_and_has_no_detector() {
        let info = unit_info(&[], &totals(10), 4);
        assert_eq!(
            info,
            LabelInfo {
                mi_binned_bits: 0.0,
                detector: None
            }
        );
    }

    #[test]
    fn grouping_by_unit_keeps_each_units_values() {
        // Two units over four rows; unit 1 fires on rows 1 and 3 (labels 1, 3).
        let acts = SparseActs {
            row: vec![0, 1, 1, 3],
            unit: vec![0, 0, 1, 1],
            value: vec![1.0, 2.0, 5.0, 4.0],
        };
        let labels = [0u8, 1, 2, 3];
        let infos = label_info(&acts, &labels, 2, 4);
        let mut t = [0u64; CLASSES];
        t[..4].fill(1);
        assert_eq!(infos[1], unit_info(&[(4.0, 3), (5.0, 1)], &t, 4));
        assert_eq!(infos[0], unit_info(&[(1.0, 0), (2.0, 1)], &t, 4));
    }

    #[test]
    fn purity_and_conditional_entropy_need_the_minimum_support() {
        use crate::stats::{unit_stats, UnitCounts};
        // Unit 0 fires once (on a seven), unit 1 on every row.
        let labels: Vec<u8> = (0..20).map(|r| (r % 10) as u8).collect();
        let values: Vec<f32> = (0..20)
            .flat_map(|r| [if r == 7 { 1.0 } else { 0.0 }, 1.0 + r as f32])
            .collect();
        let counts = UnitCounts::count(&values, 2, &labels).unwrap();
        let info = label_info(&SparseActs::from_dense(&values, 2), &labels, 2, 4);
        let strict = unit_stats(&counts, &counts, &info, 2);
        assert_eq!(
            (
                strict[0].purity,
                strict[0].top_label,
                strict[0].h_y_given_on_bits
            ),
            (None, None, None)
        );
        assert!(
            strict[0].detector.is_some(),
            "the detector is reported whatever the support"
        );
        assert_eq!(strict[1].purity, Some(0.1));
        let lax = unit_stats(&counts, &counts, &info, 1);
        assert_eq!(
            (lax[0].purity, lax[0].top_label, lax[0].h_y_given_on_bits),
            (Some(1.0), Some(7), Some(0.0))
        );
    }
}
