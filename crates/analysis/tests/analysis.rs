//! Tests of the analysis crate: statistics against hand-made answers and an
//! independent polars computation, tables, probes, plots, report and queries.
//!
//! Over 600 lines: the cases share one synthetic fixture and the headless
//! Chromium helpers; the report's checks read the summaries its analysis made.

use std::path::{Path, PathBuf};

use analysis::stats::{
    self, conditional_entropy_bits, mutual_information_bits, UnitCounts, CLASSES,
};
use analysis::tables::{self, SparseActs};
use analysis::{
    AnalysisConfig, Baseline, LayerData, OutputFormat, ProbeConfig, SaeMetrics, SaeRun, TableSource,
};
use polars::prelude::*;

/// Deterministic pseudo-random numbers in [0, 1) (splitmix64), so tests need no RNG crate.
struct Numbers(u64);

impl Numbers {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Synthetic fc2.pre-like data: a class-dependent mean plus noise, labels cycling
/// 0..9, random pixels, a random MLP and an untrained SAE.
struct Fixture {
    train: Vec<f32>,
    test: Vec<f32>,
    train_labels: Vec<u8>,
    test_labels: Vec<u8>,
    pixels: Vec<u8>,
    mlp: mlp::Mlp,
    sae: sae::Sae,
}

const WIDTH: usize = 128;

fn rows_of(numbers: &mut Numbers, labels: &[u8]) -> Vec<f32> {
    let mut out = Vec::with_capacity(labels.len() * WIDTH);
    for &y in labels {
        for u in 0..WIDTH {
            let centre = if u % CLASSES == y as usize { 1.5 } else { -0.3 };
            out.push(centre + numbers.next() - 0.5);
        }
    }
    out
}

fn fixture(train_rows: usize, test_rows: usize, d_sae: usize) -> Fixture {
    let mut numbers = Numbers(7);
    let train_labels: Vec<u8> = (0..train_rows)
        .map(|r| ((r * 7 + r / 10) % CLASSES) as u8)
        .collect();
    let test_labels: Vec<u8> = (0..test_rows).map(|r| (r % CLASSES) as u8).collect();
    let train = rows_of(&mut numbers, &train_labels);
    let test = rows_of(&mut numbers, &test_labels);
    let pixels = (0..train_rows * 784)
        .map(|_| (numbers.next() * 255.0) as u8)
        .collect();
    let mlp = mlp::Mlp::new(&mlp::Weights::init(1), &candle_core::Device::Cpu).unwrap();
    let cfg = sae::SaeConfig {
        d_in: WIDTH,
        d_sae,
        ..Default::default()
    };
    let sae = sae::Sae::init(&cfg, &train).unwrap();
    Fixture {
        train,
        test,
        train_labels,
        test_labels,
        pixels,
        mlp,
        sae,
    }
}

impl Fixture {
    fn layer(&self) -> LayerData<'_> {
        LayerData {
            layer: "fc2.pre",
            width: WIDTH,
            train: &self.train,
            test: &self.test,
            train_labels: &self.train_labels,
            test_labels: &self.test_labels,
            train_pixels: &self.pixels,
            mlp: &self.mlp,
        }
    }
}

fn small_config() -> AnalysisConfig {
    AnalysisConfig {
        probe: ProbeConfig {
            ks: vec![1, 4],
            iterations: 60,
            ..Default::default()
        },
        dashboards_per_criterion: 1,
        digits_per_group: 4,
        logit_effect_rows: 64,
        ..Default::default()
    }
}

fn uniform_totals(per_label: u64) -> [u64; CLASSES] {
    [per_label; CLASSES]
}

#[test]
fn mutual_information_of_hand_made_cases() {
    // A independent of Y: active on half the rows of every label.
    assert!(mutual_information_bits(&[50; CLASSES], &uniform_totals(100)).abs() < 1e-12);
    // A = [Y == 3] with uniform Y: I = H(0.1) = 0.4690 bits.
    let mut indicator = [0; CLASSES];
    indicator[3] = 100;
    let h_01 = -(0.1f64 * 0.1f64.log2() + 0.9 * 0.9f64.log2());
    assert!((mutual_information_bits(&indicator, &uniform_totals(100)) - h_01).abs() < 1e-12);
    assert!((h_01 - 0.469).abs() < 1e-3);
    assert_eq!(conditional_entropy_bits(&indicator), Some(0.0));
    // Always on or never on: no information.
    assert_eq!(
        mutual_information_bits(&uniform_totals(100), &uniform_totals(100)),
        0.0
    );
    assert_eq!(
        mutual_information_bits(&[0; CLASSES], &uniform_totals(100)),
        0.0
    );
    assert_eq!(conditional_entropy_bits(&[0; CLASSES]), None);
    // A on for every row of labels 0..4: I = H(Y) - H(Y | A) = log2 10 - log2 5 = 1 bit.
    let half: [u64; CLASSES] = std::array::from_fn(|y| if y < 5 { 100 } else { 0 });
    assert!((mutual_information_bits(&half, &uniform_totals(100)) - 1.0).abs() < 1e-12);
    assert!((conditional_entropy_bits(&half).unwrap() - 5f64.log2()).abs() < 1e-12);
}

#[test]
fn counts_match_a_naive_loop() {
    let f = fixture(3000, 10, 16);
    let counts = UnitCounts::count(&f.train, WIDTH, &f.train_labels).unwrap();
    for unit in [0, 3, 77, 127] {
        let mut active = [0u64; CLASSES];
        let (mut sum, mut max) = (0.0f64, 0.0f32);
        for (row, &y) in f.train.chunks_exact(WIDTH).zip(&f.train_labels) {
            if row[unit] > 0.0 {
                active[y as usize] += 1;
                sum += row[unit] as f64;
                max = max.max(row[unit]);
            }
        }
        assert_eq!(counts.active_of(unit), active);
        assert!((counts.sums_of(unit).iter().sum::<f64>() - sum).abs() < 1e-3 * sum.max(1.0));
        assert_eq!(counts.max[unit], max);
    }
    assert_eq!(counts.label_totals.iter().sum::<u64>(), 3000);
    let bad = UnitCounts::count(&f.train[..WIDTH * 10 - 1], WIDTH, &f.train_labels[..10]);
    assert!(bad
        .unwrap_err()
        .to_string()
        .contains("expected 10 rows x 128 units"));
}

/// Binary entropy in bits as a polars expression (0 at p = 0 and p = 1).
fn binary_entropy(p: Expr) -> Expr {
    let two = lit(2.0f64);
    when(p.clone().gt(lit(0.0)).and(p.clone().lt(lit(1.0))))
        .then(
            -(p.clone() * p.clone().log(two.clone()))
                - (lit(1.0) - p.clone()) * (lit(1.0) - p).log(two),
        )
        .otherwise(lit(0.0))
}

/// I(A_f; Y) for every unit from a sparse `(row, label, feature)` table with
/// polars expressions, as H(A) - H(A | Y) (a different formula from the crate's).
fn mi_with_polars(acts: &DataFrame, labels: &[u8], units: usize) -> Vec<f64> {
    let n = labels.len() as f64;
    let mut totals = [0u64; CLASSES];
    labels.iter().for_each(|&y| totals[y as usize] += 1);
    let totals =
        df!("label" => (0..CLASSES as u8).collect::<Vec<_>>(), "n_y" => totals.to_vec()).unwrap();
    let per_label = acts
        .clone()
        .lazy()
        .group_by([col("feature"), col("label")])
        .agg([len().cast(DataType::Float64).alias("c")])
        .join(
            totals.lazy(),
            [col("label")],
            [col("label")],
            JoinArgs::new(JoinType::Inner),
        )
        .with_column(
            (col("n_y").cast(DataType::Float64) / lit(n)
                * binary_entropy(col("c") / col("n_y").cast(DataType::Float64)))
            .alias("h_a_given_y"),
        )
        .group_by([col("feature")])
        .agg([col("c").sum().alias("n_on"), col("h_a_given_y").sum()])
        .with_column((binary_entropy(col("n_on") / lit(n)) - col("h_a_given_y")).alias("mi"))
        .sort(["feature"], Default::default())
        .collect()
        .unwrap();
    let mut mi = vec![0.0; units];
    let features = per_label.column("feature").unwrap().u32().unwrap().clone();
    let values = per_label.column("mi").unwrap().f64().unwrap().clone();
    for (f, v) in features.to_vec().into_iter().zip(values.to_vec()) {
        mi[f.unwrap() as usize] = v.unwrap();
    }
    mi
}

fn assert_mi_agrees(values: &[f32], width: usize, labels: &[u8]) {
    let counts = UnitCounts::count(values, width, labels).unwrap();
    let sparse = SparseActs::from_dense(values, width);
    let info = analysis::labelinfo::label_info(&sparse, labels, width, 4);
    let direct = stats::unit_stats(&counts, &counts, &info, 1);
    let table = tables::feature_acts_table("train", &sparse, labels).unwrap();
    let via_polars = mi_with_polars(&table, labels, width);
    let mut informative = 0;
    for (s, p) in direct.iter().zip(&via_polars) {
        assert!(
            (s.mi_bits - p).abs() < 1e-9,
            "unit {}: direct {} vs polars {}",
            s.unit,
            s.mi_bits,
            p
        );
        informative += (s.mi_bits > 0.1) as usize;
    }
    assert!(informative > 0, "the check should cover informative units");
}

#[test]
fn mutual_information_matches_polars_on_synthetic_data() {
    let f = fixture(5000, 10, 16);
    assert_mi_agrees(&f.train, WIDTH, &f.train_labels);
}

/// Real `fc2.pre` activations of the train split, in dataset order, from an
/// MLP trained here for one epoch of the notebook's config on the genuine
/// MNIST files (through `testkit`, so the test runs wherever the suite does).
fn real_fc2_pre() -> (Vec<f32>, Vec<u8>) {
    let data = testkit::mnist();
    let examples = mlp::Examples {
        pixels: &data.train.images.pixels,
        labels: &data.train.labels.labels,
    };
    let cfg = mlp::TrainConfig {
        epochs: 1,
        ..mlp::TrainConfig::default()
    };
    let (weights, _) = mlp::train(&cfg, examples, &mlp::TrainPath::Fast, &mut |_, _| {}).unwrap();
    let model = mlp::Mlp::new(&weights, &candle_core::Device::Cpu).unwrap();
    let layers = model
        .forward_all(&model.input(examples.pixels).unwrap())
        .unwrap();
    let fc2_pre = layers["fc2.pre"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    (fc2_pre, data.train.labels.labels.clone())
}

#[test]
fn mutual_information_matches_polars_on_real_activations() {
    let (fc2_pre, labels) = real_fc2_pre();
    assert_eq!(fc2_pre.len(), 60000 * mlp::HIDDEN);
    assert_mi_agrees(&fc2_pre, mlp::HIDDEN, &labels);
}

#[test]
fn tables_agree_with_statistics_and_round_trip_through_parquet() {
    let f = fixture(2000, 500, 64);
    let layer = f.layer();
    let cfg = small_config();
    let baseline = Baseline::compute(&layer, &cfg).unwrap();
    let acts_train = sae::encode(&f.sae, &f.train).unwrap();
    let acts_test = sae::encode(&f.sae, &f.test).unwrap();
    // The sparse codes hold exactly the dense encoding's non-zeros.
    let (sparse_train, sparse_test) = (
        SparseActs::from_codes(&sae::encode_sparse(&f.sae, &f.train).unwrap()),
        SparseActs::from_codes(&sae::encode_sparse(&f.sae, &f.test).unwrap()),
    );
    let dense = SparseActs::from_dense(&acts_train, f.sae.d_sae());
    assert_eq!(
        (&sparse_train.row, &sparse_train.unit, &sparse_train.value),
        (&dense.row, &dense.unit, &dense.value)
    );
    let counts_sparse =
        UnitCounts::from_sparse(&sparse_train, f.sae.d_sae(), &f.train_labels).unwrap();
    let counts_dense = UnitCounts::count(&acts_train, f.sae.d_sae(), &f.train_labels).unwrap();
    assert_eq!(
        (
            &counts_sparse.active_by_label,
            &counts_sparse.max,
            counts_sparse.label_totals
        ),
        (
            &counts_dense.active_by_label,
            &counts_dense.max,
            counts_dense.label_totals
        )
    );
    for (a, b) in counts_sparse
        .sum_by_label
        .iter()
        .zip(&counts_dense.sum_by_label)
    {
        assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{a} vs {b}");
    }
    let built = analysis::FeatureTables::build(
        &f.sae,
        &baseline,
        &layer,
        &sparse_train,
        &sparse_test,
        &cfg,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    built.frames.write(dir.path()).unwrap();

    let features = tables::read_parquet(&dir.path().join("features.parquet")).unwrap();
    assert_eq!(features.height(), 64);
    let freq = features.column("freq_train").unwrap().f64().unwrap();
    let nonzeros_train = acts_train.iter().filter(|&&v| v > 0.0).count();
    let freq_sum: f64 = freq.to_vec().into_iter().map(|v| v.unwrap()).sum();
    assert!((freq_sum * 2000.0 - nonzeros_train as f64).abs() < 1e-6);

    let acts = tables::read_parquet(&dir.path().join("feature_acts.parquet")).unwrap();
    let nonzeros_test = acts_test.iter().filter(|&&v| v > 0.0).count();
    assert_eq!(acts.height(), nonzeros_train + nonzeros_test);
    let values = acts.column("value").unwrap().f32().unwrap();
    let total: f64 = values.to_vec().into_iter().map(|v| v.unwrap() as f64).sum();
    let dense_total: f64 = acts_train
        .iter()
        .chain(&acts_test)
        .filter(|&&v| v > 0.0)
        .map(|&v| v as f64)
        .sum();
    assert!((total - dense_total).abs() < 1e-6 * dense_total);

    let labels = tables::read_parquet(&dir.path().join("feature_labels.parquet")).unwrap();
    assert_eq!(labels.height(), 64 * CLASSES);
    let counts = labels.column("count").unwrap().u64().unwrap();
    assert_eq!(
        counts.to_vec().into_iter().map(|c| c.unwrap()).sum::<u64>() as usize,
        nonzeros_train
    );

    let neurons = tables::read_parquet(&dir.path().join("neurons.parquet")).unwrap();
    assert_eq!(neurons.height(), WIDTH);
    // Neuron u's centre is high for label u % 10, so its top label is that digit.
    let top = neurons.column("top_label").unwrap().u8().unwrap();
    assert_eq!(top.get(13), Some(3));
}

#[test]
fn probes_find_label_information() {
    let f = fixture(3000, 1000, 16);
    let cfg = ProbeConfig {
        ks: vec![1, 10],
        iterations: 200,
        ..Default::default()
    };
    let data = analysis::probe::ProbeData {
        train: analysis::probe::Columns::Dense {
            values: &f.train,
            width: WIDTH,
        },
        test: analysis::probe::Columns::Dense {
            values: &f.test,
            width: WIDTH,
        },
        train_labels: &f.train_labels,
        test_labels: &f.test_labels,
    };
    // Neurons 0..9 each mark one digit: one of them identifies ~1/10 of rows plus
    // the "none of them" class; all ten separate the classes almost perfectly.
    let results =
        analysis::probe::k_sparse_probes(&data, &(0..WIDTH).collect::<Vec<_>>(), &cfg).unwrap();
    assert_eq!(results.len(), 2);
    assert!(
        results[0].test_accuracy > 0.15 && results[0].test_accuracy < 0.3,
        "{results:?}"
    );
    assert!(results[1].test_accuracy > 0.95, "{results:?}");
    // Out of steps: it says it did not converge.
    let short = ProbeConfig {
        ks: vec![10],
        iterations: 3,
        ..Default::default()
    };
    let stopped =
        analysis::probe::k_sparse_probes(&data, &(0..WIDTH).collect::<Vec<_>>(), &short).unwrap();
    assert!(
        !stopped[0].converged && stopped[0].steps == 3,
        "{stopped:?}"
    );

    // Given room, it stops when the gradient is flat, and says so.
    let roomy = ProbeConfig {
        ks: vec![10],
        iterations: 5000,
        tolerance: 1e-3,
        ..Default::default()
    };
    let converged =
        analysis::probe::k_sparse_probes(&data, &(0..WIDTH).collect::<Vec<_>>(), &roomy).unwrap();
    assert!(
        converged[0].converged && converged[0].steps < 5000,
        "{converged:?}"
    );
    assert!(
        converged[0].train_loss.is_finite() && converged[0].train_loss < 0.01,
        "{converged:?}"
    );

    // Inputs out of range are an error naming the probe, not a score.
    let mut wild = f.train.clone();
    wild[3 * WIDTH + 2] = f32::INFINITY;
    let data = analysis::probe::ProbeData {
        train: analysis::probe::Columns::Dense {
            values: &wild,
            width: WIDTH,
        },
        ..data
    };
    let err = analysis::probe::k_sparse_probes(&data, &(0..WIDTH).collect::<Vec<_>>(), &roomy)
        .unwrap_err()
        .to_string();
    assert!(err.contains("the k = 10 probe's loss became"), "{err}");
}

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Renders `report` headless with scripts that count console errors and failed
/// loads (from the start of <head>) and record every image's natural width;
/// returns the dumped DOM and the browser's stderr.
fn render_in_chromium(browser: &Path, report: &Path, width: u32) -> (String, String) {
    let html = std::fs::read_to_string(report).unwrap();
    let hook = "<script>window.__errors = 0; const __error = console.error; \
console.error = (...a) => { window.__errors++; __error(...a); }; \
window.addEventListener('error', () => { window.__errors++; }, true);</script>";
    // Lazy images load when scrolled to: the check makes them eager first.
    let eager = "<script>document.addEventListener('DOMContentLoaded', () => \
document.querySelectorAll('img').forEach(i => { i.loading = 'eager'; }));</script>";
    let probe =
        "<script>window.addEventListener('load', () => setTimeout(() => { const imgs = [...document.images]; \
const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length; \
const charts = [...document.querySelectorAll('.chart')].filter(c => c.querySelector('svg.marks g.mark-symbol path')).length; \
const remote = performance.getEntriesByType('resource').filter(r => !r.name.startsWith('file:')).length; \
const out = document.createElement('pre'); out.id = 'image-check'; \
const wide = [...document.body.querySelectorAll('*')].filter(e => !e.closest('.scroll, .chart') \
&& e.getBoundingClientRect().right > window.innerWidth + 1).length; \
const page = document.documentElement.scrollWidth > window.innerWidth ? 'overflows' : 'fits'; \
const table = document.getElementById('verdict-table'); \
const first = table ? String(table.getBoundingClientRect().top < window.innerHeight) : 'none'; \
out.textContent = 'images=' + imgs.length + ' broken=' + broken + ' errors=' + window.__errors \
+ ' page=' + page + ' wide=' + wide + ' charts=' + charts + ' remote=' + remote + ' first=' + first; \
document.body.appendChild(out); }, 500));</script>";
    let test_copy = report.with_file_name("report_check.html");
    let html = html
        .replacen("<head>", &format!("<head>{hook}{eager}"), 1)
        .replace("</body>", &format!("{probe}</body>"));
    std::fs::write(&test_copy, html).unwrap();
    dump_dom(browser, &test_copy, width)
}

/// Headless Chromium's DOM of `page` after its scripts ran, in a `width` px
/// window, and the browser's log.
fn dump_dom(browser: &Path, page: &Path, width: u32) -> (String, String) {
    let profile = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
            &format!("--window-size={width},1000"),
            &format!("--user-data-dir={}", profile.path().display()),
            "--dump-dom",
        ])
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn analysis_writes_tables_plots_and_a_report_that_renders() {
    let f = fixture(1500, 400, 48);
    let layer = f.layer();
    let cfg = small_config();
    let curve: Vec<sae::CurvePoint> = (1..=3)
        .map(|epoch| sae::CurvePoint {
            epoch,
            mse: 1.0 / epoch as f64,
            l2_sum: 10.0 / epoch as f64,
            l1: 2.0 + epoch as f64,
            aux: 0.0,
            l0: 10.0,
            dead: 0,
            explained_variance: 0.5,
            lr: 1e-3,
            loss: 12.0,
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let saes: Vec<(&str, f64, sae::Sae)> = [("l1_small", 0.001), ("l1_large", 0.01)]
        .into_iter()
        .map(|(name, l1)| {
            let mut sae = f.sae.clone();
            sae.cfg.architecture = sae::Architecture::l1(l1);
            (name, l1, sae)
        })
        .collect();
    let runs: Vec<SaeRun> = saes
        .iter()
        .map(|&(name, l1, ref sae)| SaeRun {
            name,
            sae,
            reads: &layer,
            writes: layer.layer,
            curve: &curve,
            latents: None,
            downstream: None,
            dashboard_command: String::new(),
            metrics: SaeMetrics {
                l0: 1000.0 * l1,
                mse: l1,
                ..Default::default()
            },
        })
        .collect();
    let run_info = analysis::RunInfo {
        reproduce: "cargo xtask all --preset test".into(),
        version: "0.0.0-test".into(),
        built: "2026-12-06 12:00 UTC".into(),
        mlp_losses: vec![2.3, 1.0, 0.5, 0.4],
        mlp_test: Some((0.31, 0.9123)),
        circuits: Vec::new(),
    };
    let heard = std::sync::Mutex::new(Vec::new());
    let baseline = Baseline::compute(&layer, &cfg).unwrap();
    // A baseline of another layer is refused before anything is written.
    let elsewhere = Baseline {
        layer: "fc1.pre".into(),
        ..baseline.clone()
    };
    let refused = analysis::analyse_sweep(
        &layer,
        &elsewhere,
        &runs,
        &run_info,
        &cfg,
        &dir.path().join("refused"),
        &|_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        refused.contains("the neuron baseline is of fc1.pre, not of"),
        "{refused}"
    );
    assert!(!dir.path().join("refused").exists());
    let (report, summaries) = analysis::analyse_sweep(
        &layer,
        &baseline,
        &runs,
        &run_info,
        &cfg,
        dir.path(),
        &|done, s| heard.lock().unwrap().push((done, s.name.clone())),
    )
    .unwrap();
    assert_eq!(
        heard.into_inner().unwrap(),
        [(1, "l1_small".to_string()), (2, "l1_large".to_string())]
    );
    // serde_json may round the last bit of an f64, so compare what the report reads.
    let loaded = analysis::SaeSummary::load(&dir.path().join("l1_large")).unwrap();
    assert_eq!(
        (&loaded.name, &loaded.tables, &loaded.plots),
        (
            &summaries[1].name,
            &summaries[1].tables,
            &summaries[1].plots
        )
    );
    assert_eq!(loaded.dashboards.len(), summaries[1].dashboards.len());
    assert!((loaded.features.mean_mi_bits - summaries[1].features.mean_mi_bits).abs() < 1e-12);
    let s = &summaries[0];
    for table in analysis::TABLES {
        assert!(s.dir.join(format!("{table}.parquet")).is_file(), "{table}");
    }
    for png in &s.plots {
        let path = s.dir.join(png);
        assert!(
            std::fs::metadata(&path).unwrap().len() > 1000,
            "{}",
            path.display()
        );
        assert!(path.with_extension("svg").is_file());
    }
    // One per criterion, none twice, each saying why it was picked.
    assert_eq!(s.dashboards.len(), 5);
    let reasons: Vec<&str> = s.dashboards.iter().map(|d| d.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "top binary MI",
            "top binned MI",
            "best detector F1",
            "purest (with support)",
            "most frequent"
        ]
    );
    let mut shown: Vec<usize> = s.dashboards.iter().map(|d| d.feature).collect();
    shown.dedup();
    assert_eq!(shown.len(), 5);
    assert_eq!(s.dashboards[0].logit_effect.len(), CLASSES);
    // Each dashboard's top activations and its detector's misses, recomputed
    // from feature_acts.parquet.
    let acts = tables::read_parquet(&s.dir.join("feature_acts.parquet")).unwrap();
    let mut checked_misses = 0;
    for d in &s.dashboards {
        let mine = acts
            .clone()
            .lazy()
            .filter(
                col("split")
                    .eq(lit("train"))
                    .and(col("feature").eq(lit(d.feature as u32))),
            )
            .sort(
                ["value"],
                SortMultipleOptions::default().with_order_descending(true),
            )
            .collect()
            .unwrap();
        let rows: Vec<u32> = mine
            .column("row")
            .unwrap()
            .u32()
            .unwrap()
            .into_no_null_iter()
            .collect();
        let values: Vec<f32> = mine
            .column("value")
            .unwrap()
            .f32()
            .unwrap()
            .into_no_null_iter()
            .collect();
        let mut expected: Vec<(usize, f32)> = rows
            .iter()
            .zip(&values)
            .map(|(&r, &v)| (r as usize, v))
            .collect();
        expected.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let shown: Vec<(usize, f32)> = d.top_rows.iter().map(|&(r, v, _)| (r, v)).collect();
        assert_eq!(shown, expected[..shown.len().min(expected.len())].to_vec());
        assert!(d.top_rows.iter().all(|&(r, _, y)| f.train_labels[r] == y));
        let (Some((missed, of, first)), Some(det)) = (&d.misses, &d.detector) else {
            continue;
        };
        let class_rows = f.train_labels.iter().filter(|&&y| y == det.class).count();
        let fired_in_class = rows
            .iter()
            .filter(|&&r| f.train_labels[r as usize] == det.class)
            .count();
        assert_eq!((*of, *missed), (class_rows, class_rows - fired_in_class));
        assert!((1.0 - *missed as f64 / *of as f64 - det.recall).abs() < 1e-12);
        assert!(first
            .iter()
            .all(|&r| f.train_labels[r] == det.class && !rows.contains(&(r as u32))));
        checked_misses += 1;
    }
    assert!(checked_misses > 0, "no dashboard had a detector");
    let probes = tables::read_parquet(&s.dir.join("probes.parquet")).unwrap();
    assert_eq!(probes.height(), 4);

    let sweep = tables::read_parquet(&dir.path().join("sweep.parquet")).unwrap();
    assert_eq!(sweep.height(), 2);
    // Typed columns from each SAE's own config: floats, integers, booleans,
    // text, and nulls where a key does not apply (no "null" strings).
    let column = |name: &str| sweep.column(name).unwrap().clone();
    assert_eq!(column("param_l1_coeff").f64().unwrap().get(1), Some(0.01));
    assert_eq!(
        column("param_architecture").str().unwrap().get(0),
        Some("l1")
    );
    assert_eq!(
        column("d_sae").u32().unwrap().get(0),
        Some(f.sae.d_sae() as u32)
    );
    // Metrics (with their split) before the params, every header once.
    let names: Vec<String> = sweep
        .get_column_names()
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(names[..3], ["name", "l0_test", "ev_test"]);
    let first_param = names.iter().position(|n| n.starts_with("param_")).unwrap();
    assert!(
        names[first_param..].iter().all(|n| n.starts_with("param_")),
        "{names:?}"
    );
    assert!(names.contains(&"dead_train".to_string()) && !names.contains(&"layer".to_string()));
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "{names:?}");
    assert_eq!(column("param_resample").bool().unwrap().get(0), Some(false));
    let k = column("param_k");
    assert_eq!((k.null_count(), k.dtype()), (2, &DataType::Int64));
    let html = std::fs::read_to_string(&report).unwrap();
    // One frontier per measure, each architecture its own colour.
    for stem in ["frontier_ev", "frontier_ce", "frontier_dead", "frontier_mi"] {
        assert!(
            report.with_file_name(format!("{stem}.png")).is_file(),
            "{stem}"
        );
        assert!(
            html.contains(&format!("{stem}.")),
            "{stem} is not in the report"
        );
    }
    // The index opens with one sentence and one table, written from the numbers.
    let verdict_at = html
        .find("<p class=\"verdict\">")
        .expect("a verdict sentence");
    let table_at = html
        .find("<table id=\"verdict-table\">")
        .expect("a verdict table");
    assert!(verdict_at < table_at && table_at < html.find("id=\"figures\"").unwrap());
    let sentence = analysis::run_verdict(&summaries);
    assert!(html.contains(&escape(&sentence)), "{sentence}");
    let first = analysis::verdict(&summaries[0], &cfg);
    assert!(first[0].starts_with("One unit at a time, "), "{first:?}");
    // SAEBench's per-digit probes, at k = 1, 2, 5, read into the answer.
    let digit = &summaries[0].feature_digit_probes;
    assert!(!digit.is_empty() && !summaries[0].neuron_digit_probes.is_empty());
    for k in analysis::digit_probe::DIGIT_PROBE_KS {
        assert!(digit.iter().any(|p| p.k == k && p.units.len() == k));
    }
    let saebench = first
        .iter()
        .find(|l| l.starts_with("SAEBench's k-sparse probing"))
        .expect("a SAEBench line");
    let k1 = analysis::digit_probe::mean_accuracy(digit, 1);
    let n1 = analysis::digit_probe::mean_accuracy(&summaries[0].neuron_digit_probes, 1);
    assert!(
        saebench.contains(&format!("k=1: {k1:.3} vs {n1:.3}")),
        "{saebench}"
    );
    // TPP for an SAE of the report's layer, at 2, 5, 10 and 20 latents.
    let tpp = &summaries[0].tpp;
    assert_eq!(
        tpp.iter().map(|t| t.latents).collect::<Vec<_>>(),
        analysis::tpp::TPP_LATENTS
    );
    let line = first
        .iter()
        .find(|l| l.starts_with("SAEBench's targeted probe perturbation"))
        .expect("a TPP line");
    assert!(
        line.contains(&format!(
            "2 latents: {:.3} and {:.3} (TPP {:.3})",
            tpp[0].intended,
            tpp[0].unintended,
            tpp[0].score()
        )),
        "{line}"
    );
    assert!(
        first[0].contains(&format!(
            "{:.3} bits for a feature",
            summaries[0].features.max_mi_bits
        )),
        "{first:?}"
    );
    // Each SAE's page holds its answer and links back to the index.
    for summary in &summaries {
        let page = std::fs::read_to_string(summary.dir.join(analysis::SAE_PAGE)).unwrap();
        for line in analysis::verdict(summary, &cfg) {
            assert!(page.contains(&escape(&line)), "{}: {line}", summary.name);
        }
        assert!(
            page.contains("href=\"../report.html\"") && page.contains("href=\"features.parquet\"")
        );
        let (best, _) = summary.features.best_detector.as_ref().unwrap();
        assert!(
            page.contains(&format!(
                "<a href=\"{}/{best}.html\">{best}</a>",
                analysis::FEATURE_DIR
            )),
            "the best detector opens its page"
        );
        assert!(
            html.contains(&format!(
                "<a href=\"{}/{}/{best}.html\" title=\"feature {best}\">",
                summary.name,
                analysis::FEATURE_DIR
            )),
            "the index's best detector opens its page"
        );
        assert!(html.contains(&format!("href=\"{}/{}\"", summary.name, analysis::SAE_PAGE)));
    }
    // Over the sweep: the best feature of any SAE, recomputed here, against the best neuron.
    let over = analysis::sweep_verdict(&summaries).expect("two SAEs");
    let best_binary = summaries
        .iter()
        .max_by(|a, b| a.features.max_mi_bits.total_cmp(&b.features.max_mi_bits))
        .unwrap();
    let neuron = summaries[0].neurons.max_mi_bits;
    assert!(
        over.starts_with(&format!(
            "Over all {} SAEs, the best feature of any against the best neuron: binary MI {:.3} ({}) vs {neuron:.3};",
            summaries.len(),
            best_binary.features.max_mi_bits,
            best_binary.name
        )),
        "{over}"
    );
    let binary_side = if best_binary.features.max_mi_bits > neuron {
        "Features win on binary MI"
    } else {
        "neurons on binary MI"
    };
    assert!(over.contains(binary_side), "{over}");
    assert!(html.contains(&escape(&over)));
    assert!(analysis::sweep_verdict(&summaries[..1]).is_none());
    // One architecture: no comparison across architectures.
    assert!(analysis::family_verdict(&summaries).is_empty());
    assert!(!html.contains("Dead latents by architecture"));
    let mut family = summaries.clone();
    family[1]
        .params
        .insert("architecture".into(), "topk".into());
    family[0].features.dead = family[0].features.units / 2;
    family[1].features.dead = 0;
    let lines = analysis::family_verdict(&family);
    assert!(
        lines[0].starts_with(&format!(
            "Dead latents by architecture, fewest first (train split; test EV, CE recovered and L0; each architecture's SAE with the fewest): topk 0% (0 of {}; EV {:.3}",
            family[1].features.units, family[1].metrics.explained_variance
        )) && lines[0].contains(&format!("; l1 50% ({} of", family[0].features.dead)),
        "{lines:?}"
    );
    let ev_gap = family[1].metrics.explained_variance - family[0].metrics.explained_variance;
    assert!(
        lines[1].starts_with("Under 10% dead: topk; the others: l1.")
            && lines[1].contains(&format!(
                "a {} of {:.3} in the best explained variance",
                if ev_gap >= 0.0 { "gain" } else { "cost" },
                ev_gap.abs()
            )),
        "{lines:?}"
    );
    check_who_wins(&summaries);
    check_pages(&report, &summaries);
}

#[test]
fn interactive_log_axes_tick_at_one_two_five() {
    assert_eq!(analysis::log_ticks(14.5, 45.1), [20.0, 50.0]);
    assert_eq!(
        analysis::log_ticks(0.9, 45.1),
        [1.0, 2.0, 5.0, 10.0, 20.0, 50.0]
    );
    assert_eq!(analysis::log_ticks(0.15, 0.3), [0.2]);
    assert!(analysis::log_ticks(0.0, 5.0).is_empty());
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// "Who wins", recomputed: the measures are counted from the summary's own
/// numbers, an SAE with under 10% live latents is left out, and the run's
/// sentence names the best binned MI of those counted.
fn check_who_wins(summaries: &[analysis::SaeSummary]) {
    let s = &summaries[0];
    let (f, n) = (&s.features, &s.neurons);
    let mut expected = vec![
        (f.max_mi_bits, n.max_mi_bits),
        (f.max_mi_binned_bits, n.max_mi_binned_bits),
        (f.live_mean_mi_binned_bits, n.live_mean_mi_binned_bits),
    ];
    let d = |m: &analysis::MiSummary| m.best_detector.as_ref().unwrap().1.clone();
    expected.push((d(f).f1, d(n).f1));
    expected.push((d(f).auroc, d(n).auroc));
    for (p, q) in s.feature_probes.iter().zip(&s.neuron_probes) {
        assert_eq!(p.k, q.k);
        expected.push((p.test_accuracy, q.test_accuracy));
    }
    expected.push((
        analysis::digit_probe::mean_accuracy(&s.feature_digit_probes, 1),
        analysis::digit_probe::mean_accuracy(&s.neuron_digit_probes, 1),
    ));
    let contests: Vec<(f64, f64)> = analysis::contests(s)
        .iter()
        .map(|c| (c.features, c.neurons))
        .collect();
    assert_eq!(contests, expected);
    let wins = expected.iter().filter(|(a, b)| a > b).count();
    assert_eq!(analysis::feature_wins(s), Some((wins, expected.len())));
    // The live-only mean, against the features table.
    let features = tables::read_parquet(&s.dir.join("features.parquet")).unwrap();
    let live_mean = features
        .lazy()
        .filter(col("dead").not())
        .select([col("mi_binned_bits").mean()])
        .collect()
        .unwrap();
    let live_mean = live_mean
        .column("mi_binned_bits")
        .unwrap()
        .f64()
        .unwrap()
        .get(0)
        .unwrap();
    assert!(
        (live_mean - f.live_mean_mi_binned_bits).abs() < 1e-12,
        "{live_mean}"
    );
    // Under 10% live: marked and left out.
    let mut few = summaries.to_vec();
    few[1].features.dead = few[1].features.units - few[1].features.units / 20;
    assert_eq!(analysis::feature_wins(&few[1]), None);
    let sentence = analysis::run_verdict(&few);
    assert!(
        sentence.contains("(1 SAE with under 10% live latents left out)"),
        "{sentence}"
    );
    assert!(
        sentence.ends_with(&format!(
            "the best feature carries {:.3} bits of binned MI about the digit ({}, train split) against {:.3} for the best neuron.",
            few[0].features.max_mi_binned_bits, few[0].name, n.max_mi_binned_bits
        )),
        "{sentence}"
    );
    few[0].features.dead = few[0].features.units;
    assert!(
        analysis::run_verdict(&few).starts_with("No SAE of this run has 10% of its latents live")
    );
}

/// The site: the index small and every page under 2 MB, images as files
/// beside the pages; in Chromium, at a narrow and a wide window, the index
/// and each SAE page load every image and figure with no console error, no
/// request leaves the folder, and nothing but the scroll boxes is wider than
/// the window.
fn check_pages(report: &Path, summaries: &[analysis::SaeSummary]) {
    let html = std::fs::read_to_string(report).unwrap();
    assert!(html.len() < 1 << 20, "index {} bytes", html.len());
    assert!(
        !html.contains("data:image"),
        "images are files, not data URIs"
    );
    for s in summaries {
        let page = s.dir.join(analysis::SAE_PAGE);
        assert!(std::fs::metadata(&page).unwrap().len() < 2 << 20);
    }
    for file in ["vega.min.js", "vega-lite.min.js", "vega-embed.min.js"] {
        assert!(
            report
                .with_file_name(analysis::VENDOR_DIR)
                .join(file)
                .is_file(),
            "{file}"
        );
    }
    let charts = html.matches("class=\"chart\"").count();
    assert_eq!(charts, 4);
    let Some(browser) = chromium() else {
        if std::env::var_os("CI").is_some() {
            panic!("CI is set but chromium is missing: apt-get install chromium")
        }
        eprintln!("note: chromium not found; skipped rendering the report");
        return;
    };
    // The index's verdict table starts on the first screen (1000 px high).
    let pages: Vec<(PathBuf, usize, &str)> =
        std::iter::once((report.to_path_buf(), charts, "true"))
            .chain(
                summaries
                    .iter()
                    .map(|s| (s.dir.join(analysis::SAE_PAGE), 0, "none")),
            )
            .collect();
    for (page, charts, first) in &pages {
        let images = std::fs::read_to_string(page)
            .unwrap()
            .matches("<img ")
            .count();
        for width in [900, 1400] {
            let (dom, log) = render_in_chromium(&browser, page, width);
            let check = format!(
                "images={images} broken=0 errors=0 page=fits wide=0 charts={charts} remote=0 first={first}"
            );
            assert!(
                dom.contains(&check),
                "{} at {width} px: expected {check}: {}",
                page.display(),
                dom.lines().last().unwrap_or("")
            );
            // Chromium logs console.error as INFO:CONSOLE.
            let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
            assert!(console.is_empty(), "console output: {console:?}");
        }
    }
    eprintln!(
        "chromium rendered the index and {} SAE pages at 900 and 1400 px",
        summaries.len()
    );
    check_feature_browser(&browser, &summaries[0]);
    check_feature_pages(&browser, summaries);
}

/// A page for every live feature and none for a dead one; a page's top
/// activations recomputed from `feature_acts.parquet`; its best match in the
/// other SAE (the same weights under another L1 coefficient) is itself; in
/// Chromium it loads every image with no error or remote request and fits
/// a narrow window.
fn check_feature_pages(browser: &Path, summaries: &[analysis::SaeSummary]) {
    for s in summaries {
        let features = tables::read_parquet(&s.dir.join("features.parquet")).unwrap();
        let dead = features.column("dead").unwrap().bool().unwrap();
        let live: Vec<usize> = (0..features.height())
            .filter(|&f| !dead.get(f).unwrap())
            .collect();
        let mut pages: Vec<usize> = std::fs::read_dir(s.dir.join(analysis::FEATURE_DIR))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                assert!(
                    e.metadata().unwrap().len() < 200 << 10,
                    "{e:?} is over 200 kB"
                );
                let name = e.file_name().into_string().unwrap();
                name.strip_suffix(".html").unwrap().parse().unwrap()
            })
            .collect();
        pages.sort();
        assert_eq!(pages, live, "{}: a page per live feature", s.name);
    }
    let s = &summaries[0];
    let acts = tables::read_parquet(&s.dir.join("feature_acts.parquet")).unwrap();
    let feature = s.dashboards[0].feature;
    let mine = acts
        .lazy()
        .filter(
            col("split")
                .eq(lit("train"))
                .and(col("feature").eq(lit(feature as u32))),
        )
        .sort(
            ["value", "row"],
            SortMultipleOptions::default().with_order_descending_multi([true, false]),
        )
        .limit(analysis::atlas::TOP as u32)
        .collect()
        .unwrap();
    let rows = mine.column("row").unwrap().u32().unwrap();
    let labels = mine.column("label").unwrap().u8().unwrap();
    let page_path = s
        .dir
        .join(analysis::FEATURE_DIR)
        .join(format!("{feature}.html"));
    let page = std::fs::read_to_string(&page_path).unwrap();
    let mut at = 0;
    for i in 0..rows.len() {
        let caption = format!("#{} · {} · ", rows.get(i).unwrap(), labels.get(i).unwrap());
        let found = page[at..]
            .find(&caption)
            .unwrap_or_else(|| panic!("{caption} is not on the page after the one before"));
        at += found + caption.len();
    }
    // The page's logit effects (from every train row's reconstruction, in a
    // batch of features) against the dashboard's (from its rows decoded
    // alone), as printed: 4 decimals, or 3 significant digits under 1e-3.
    let dashboard = &s.dashboards[0];
    for (c, &want) in dashboard.logit_effect.iter().enumerate() {
        let key = format!("<title>logit {c}: ");
        let at = page.find(&key).expect("a bar per class") + key.len();
        let got: f64 = page[at..page[at..].find('<').unwrap() + at]
            .parse()
            .unwrap();
        assert!(
            (got - want).abs() <= 1e-4 + 1e-3 * want.abs(),
            "logit {c}: page {got}, dashboard {want}"
        );
    }
    let other = &summaries[1].name;
    assert!(
        page.contains(&format!(
            "href=\"../../{other}/{}/{feature}.html\">feature {feature}</a>",
            analysis::FEATURE_DIR
        )),
        "the best match in {other} is the same feature"
    );
    assert!(page.contains("href=\"../sae.html\"") && page.contains("href=\"../features.html\""));
    let images = page.matches("<img ").count();
    assert!(images > analysis::atlas::TOP, "{images} images");
    for width in [900, 1400] {
        let (dom, log) = render_in_chromium(browser, &page_path, width);
        let check = format!(
            "images={images} broken=0 errors=0 page=fits wide=0 charts=0 remote=0 first=none"
        );
        assert!(
            dom.contains(&check),
            "{} at {width} px: expected {check}: {}",
            page_path.display(),
            dom.lines().last().unwrap_or("")
        );
        let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
        assert!(console.is_empty(), "console output: {console:?}");
    }
}

/// `features.html` of one SAE: every live feature listed, a header click sorts,
/// the filter keeps what it names, and dashboards link into the report.
fn check_feature_browser(browser: &Path, s: &analysis::SaeSummary) {
    let page = s.dir.join(analysis::browser::BROWSER_FILE);
    let html = std::fs::read_to_string(&page).unwrap();
    let features = tables::read_parquet(&s.dir.join("features.parquet")).unwrap();
    let mut live_freqs: Vec<f64> = features
        .column("freq_train")
        .unwrap()
        .f64()
        .unwrap()
        .to_vec()
        .into_iter()
        .flatten()
        .filter(|&f| f > 0.0)
        .collect();
    live_freqs.sort_by(f64::total_cmp);
    let threshold = live_freqs[live_freqs.len() / 2];
    let above = live_freqs.iter().filter(|&&f| f > threshold).count();
    assert!(above > 0);
    let probe = "<script>window.addEventListener('load', () => { \
const rows = () => [...document.querySelectorAll('#rows tr')]; \
const col = (r, i) => parseFloat(r.children[i].textContent); \
const all = rows().length; \
document.querySelector('th[data-col=\"1\"]').click(); \
const freqs = rows().map(r => col(r, 1)); \
const sorted = freqs.every((f, i) => i === 0 || freqs[i - 1] >= f); \
const f = document.getElementById('filter'); f.value = 'freq_train>THRESHOLD'; f.dispatchEvent(new Event('input')); \
const kept = rows().map(r => col(r, 1)); \
f.value = 'nope>1'; f.dispatchEvent(new Event('input')); \
const unknown = document.getElementById('error').textContent.startsWith('unknown column \"nope\"'); \
f.value = 'freq_train>x'; f.dispatchEvent(new Event('input')); \
const nan = document.getElementById('error').textContent.includes('is not a number'); \
f.value = '#ID'; f.dispatchEvent(new Event('input')); \
const exact = rows().map(r => r.children[0].textContent).join(','); \
f.value = ''; f.dispatchEvent(new Event('input')); \
const d = document.getElementById('dead'); d.checked = true; d.dispatchEvent(new Event('change')); \
const every = rows().length; \
const out = document.createElement('pre'); out.id = 'browser-check'; \
out.textContent = 'rows=' + all + ' sorted=' + sorted + ' kept=' + kept.length + ' keptok=' + kept.every(v => v > THRESHOLD) \
+ ' unknown=' + unknown + ' nan=' + nan + ' exact=' + exact + ' every=' + every; \
document.body.appendChild(out); });</script>";
    // A live one-digit feature, whose id is inside other ids (4 in 14, 40, ...):
    // `#id` finds it alone.
    let freqs = features.column("freq_train").unwrap().f64().unwrap();
    let id = (1..10)
        .find(|&f| freqs.get(f).unwrap() > 0.0)
        .expect("a live feature among 1..10");
    let probe = probe
        .replace("THRESHOLD", &format!("{threshold:e}"))
        .replace("#ID", &format!("#{id}"));
    let copy = page.with_file_name("features_check.html");
    std::fs::write(&copy, html.replace("</body>", &format!("{probe}</body>"))).unwrap();
    let (dom, _) = dump_dom(browser, &copy, 1400);
    let live = s.features.units - s.features.dead;
    let expected = format!(
        "rows={live} sorted=true kept={above} keptok=true unknown=true nan=true exact={id} every={}",
        s.features.units
    );
    assert!(
        dom.contains(&expected),
        "expected {expected}: {}",
        dom.lines().last().unwrap_or("")
    );
    assert!(
        html.contains(&format!("href=\"{}\"", analysis::SAE_PAGE)),
        "the browser links back to its SAE's page"
    );
}

#[test]
fn queries_run_sql_and_explain_bad_ones() {
    let f = fixture(300, 100, 8);
    let counts = UnitCounts::count(&f.train, WIDTH, &f.train_labels).unwrap();
    let info = analysis::labelinfo::label_info(
        &SparseActs::from_dense(&f.train, WIDTH),
        &f.train_labels,
        WIDTH,
        4,
    );
    let stats = stats::unit_stats(&counts, &counts, &info, 1);
    let neurons = tables::unit_table("neuron", &stats, None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("neurons.parquet");
    tables::write_parquet(&mut neurons.clone(), &path).unwrap();
    let tables = vec![("neurons".to_string(), TableSource::Parquet(path))];

    let csv = analysis::query(
        "SELECT top_label, COUNT(*) AS n FROM neurons GROUP BY top_label ORDER BY top_label",
        &tables,
        &OutputFormat::Csv,
    )
    .unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "top_label,n");
    // 128 neurons, neuron u favours digit u % 10: 13 each for 0..7, 12 for 8 and 9.
    assert_eq!(lines[1], "0,13");
    assert_eq!(lines[10], "9,12");

    let out = dir.path().join("best.parquet");
    let text = analysis::query(
        "SELECT neuron, mi_bits FROM neurons ORDER BY mi_bits DESC LIMIT 5",
        &tables,
        &OutputFormat::Parquet(out.clone()),
    )
    .unwrap();
    assert!(text.starts_with("wrote 5 rows"));
    assert_eq!(tables::read_parquet(&out).unwrap().height(), 5);
    assert!(analysis::query(
        "SELECT COUNT(*) FROM neurons",
        &tables,
        &OutputFormat::Table
    )
    .unwrap()
    .contains("128"));

    let err = analysis::query("SELECT nope FROM neurons", &tables, &OutputFormat::Table)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nope") && err.contains("neurons(neuron: u32"),
        "{err}"
    );
}

#[test]
fn activation_tables_expose_cached_layers() {
    let f = fixture(50, 20, 8);
    let dir = tempfile::tempdir().unwrap();
    let meta = activations::ShardMeta::default();
    let shard_cfg = activations::ShardConfig { rows_per_shard: 30 };
    let mut shards = Vec::new();
    for (split, values, labels) in [
        ("train", &f.train, &f.train_labels),
        ("test", &f.test, &f.test_labels),
    ] {
        let index: Vec<u32> = (0..labels.len() as u32).map(|i| i + 1000).collect();
        let layers = [activations::LayerValues {
            name: "fc2.pre",
            width: WIDTH,
            data: values,
        }];
        shards.extend(
            activations::write_split(
                dir.path(),
                split,
                &layers,
                labels,
                &index,
                &shard_cfg,
                &meta,
            )
            .unwrap(),
        );
    }
    let store =
        activations::ActivationStore::open(dir.path(), &shards, activations::VerifyMode::Sizes)
            .unwrap();
    let tables = analysis::activation_tables(&store).unwrap();
    assert_eq!(tables.len(), 2);
    let csv = analysis::query(
        "SELECT dataset_index, label, u5 FROM act_train_fc2_pre WHERE dataset_index = 1037",
        &tables,
        &OutputFormat::Csv,
    )
    .unwrap();
    let expected = format!("1037,{},{}", f.train_labels[37], f.train[37 * WIDTH + 5]);
    assert_eq!(csv.lines().nth(1), Some(expected.as_str()), "{csv}");
}

#[test]
fn png_encoder_writes_a_valid_stream() {
    // 2x1 RGB: red, white.
    let png = analysis::plots::encode_png(&[255, 0, 0, 255, 255, 255], (2, 1));
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(&png[12..16], b"IHDR");
    assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 2);
    // Every PNG ends with the same IEND chunk (its CRC is the well-known AE426082).
    assert_eq!(
        &png[png.len() - 12..],
        &[0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82]
    );
    let idat_len = u32::from_be_bytes(png[33..37].try_into().unwrap()) as usize;
    assert_eq!(&png[37..41], b"IDAT");
    let mut raw = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::ZlibDecoder::new(&png[41..41 + idat_len]),
        &mut raw,
    )
    .unwrap();
    assert_eq!(raw, vec![2, 255, 0, 0, 255, 255, 255]);
}

#[test]
fn mismatched_inputs_get_one_clear_sentence() {
    let f = fixture(100, 20, 8);
    let cfg = small_config();
    let mut layer = f.layer();
    let short_pixels = vec![0u8; 784 * 99];
    layer.train_pixels = &short_pixels;
    let err = Baseline::compute(&layer, &cfg).unwrap_err().to_string();
    assert!(
        err.contains("train pixels have 77616 bytes, expected 100 rows x 784"),
        "{err}"
    );

    let layer = f.layer();
    let baseline = Baseline::compute(&layer, &cfg).unwrap();
    let narrow = sae::Sae::init(
        &sae::SaeConfig {
            d_in: 64,
            d_sae: 8,
            ..Default::default()
        },
        &[],
    )
    .unwrap();
    let run = SaeRun {
        name: "narrow",
        sae: &narrow,
        reads: &layer,
        writes: layer.layer,
        curve: &[],
        latents: None,
        downstream: None,
        dashboard_command: String::new(),
        metrics: SaeMetrics::default(),
    };
    let dir = tempfile::tempdir().unwrap();
    let err = analysis::analyse_sae(&layer, &baseline, &run, &cfg, dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("SAE narrow reads 64 inputs but layer fc2.pre has width 128"),
        "{err}"
    );
}
