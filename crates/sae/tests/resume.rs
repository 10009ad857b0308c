//! Resuming: a run continued from the state kept at an epoch's end (written
//! to disk and read back) ends with the same bits as a run never stopped,
//! for every architecture, SAE and skip transcoder, with resampling,
//! shuffling, warm-up, clipping and normalised inputs; keeping states
//! changes no bit; a state that does not fit is not used; a damaged folder
//! is refused naming its file.

use std::sync::Mutex;
use std::time::Duration;

use sae::{
    synthetic, ArchitectureAxes, ArchitectureKind, Checkpoints, NormalizeActivations,
    ResampleConfig, ResampleSchedule, ResumePoint, SaeConfig, SweepPoint, TrainData, TrainPath,
    Trained, Transcoder,
};

const EPOCHS: usize = 60;
/// Where the resumed runs pick up (that a snapshot with features at rest is
/// the dense state is `fast::tests`').
const CUT: usize = 45;

fn every_architecture() -> Vec<sae::Architecture> {
    let axes = ArchitectureAxes {
        l1_coeff: vec![3e-2],
        k: vec![3],
        l0_coeff: vec![0.3],
        k_aux: Some(8),
        ..ArchitectureAxes::default()
    };
    ArchitectureKind::ALL
        .iter()
        .flat_map(|kind| kind.architectures(&axes))
        .collect()
}

fn config(architecture: sae::Architecture, transcoder: Option<Transcoder>) -> SaeConfig {
    SaeConfig {
        d_in: 16,
        d_sae: 96,
        architecture,
        transcoder,
        batch_size: 16,
        // 32 steps an epoch.
        epochs: EPOCHS,
        shuffle: true,
        dead_window_steps: 40,
        // Resampling draws decoder rows from the input: SAEs only.
        resample: transcoder.is_none().then(|| ResampleConfig {
            schedule: ResampleSchedule::Every {
                every_steps: 50,
                until: 150,
            },
            sample_rows: 128,
        }),
        sparsity_warmup_steps: 20,
        clip_grad_norm: 0.5,
        normalize_activations: NormalizeActivations::ExpectedAverageOnlyIn,
        ..SaeConfig::default()
    }
}

/// Trains `points`, keeping every epoch's states and resuming from `resume`.
fn run(
    points: &[SweepPoint],
    data: TrainData,
    resume: &(dyn Fn(&str) -> Option<ResumePoint> + Sync),
) -> (Vec<Trained>, Vec<ResumePoint>) {
    let kept = Mutex::new(Vec::new());
    let save = |point: &ResumePoint| kept.lock().unwrap().push(point.clone());
    let checkpoints = Checkpoints {
        resume,
        save: &save,
        every: Duration::ZERO,
    };
    let trained = sae::train_sweep_resuming(
        points,
        data,
        &TrainPath::Fast,
        &|_| {},
        &|_, _| {},
        Some(&checkpoints),
    )
    .into_iter()
    .map(|r| r.unwrap())
    .collect();
    (trained, kept.into_inner().unwrap())
}

fn bits(t: &Trained) -> Vec<Vec<u32>> {
    let s = &t.sae;
    [
        &s.w_enc,
        &s.w_dec,
        &s.b_enc,
        &s.b_dec,
        &s.w_skip,
        &s.threshold,
        &s.r_mag,
        &s.b_mag,
    ]
    .iter()
    .map(|v| v.iter().map(|x| x.to_bits()).collect())
    .collect()
}

fn assert_same(a: &Trained, b: &Trained, what: &str) {
    assert!(bits(a) == bits(b), "{what}: weights differ");
    assert_eq!(a.curve, b.curve, "{what}: curve");
    assert_eq!(a.latents, b.latents, "{what}: latents");
    assert_eq!(a.resamples, b.resamples, "{what}: resamples");
    assert_eq!(a.steps, b.steps, "{what}: steps");
}

#[test]
fn a_run_resumed_from_a_kept_state_ends_with_the_bits_of_one_never_stopped() {
    let input = synthetic::sparse_directions(512, 16, 12, 2, 0.05, 5);
    let target = synthetic::sparse_directions(512, 12, 12, 2, 0.05, 6);
    let dir = tempfile::tempdir().unwrap();
    let mut resampled = 0;
    for transcoder in [
        None,
        Some(Transcoder {
            d_out: 12,
            skip: true,
        }),
    ] {
        let data = match transcoder {
            None => TrainData::autoencoding(&input, 16),
            Some(_) => TrainData::transcoding(&input, 16, &target, 12),
        };
        let points: Vec<SweepPoint> = every_architecture()
            .into_iter()
            .map(|a| SweepPoint {
                name: a.label(),
                cfg: config(a, transcoder),
            })
            .collect();
        let plain = sae::train_sweep(&points, data, &TrainPath::Fast, &|_| {});
        let (whole, kept) = run(&points, data, &|_| None);
        for (p, (plain, whole)) in points.iter().zip(plain.iter().zip(&whole)) {
            // Keeping states (which wakes resting features) changes no bit.
            assert_same(plain.as_ref().unwrap(), whole, &format!("{} kept", p.name));
            assert_eq!(whole.resumed_after_epoch, None);
            resampled += whole
                .resamples
                .iter()
                .filter(|r| !r.features.is_empty())
                .count();
        }
        assert_eq!(
            kept.len(),
            points.len() * (EPOCHS - 1),
            "never after the last epoch"
        );
        // Each point resumes from its state after epoch CUT, written and read back.
        for point in &points {
            let state = kept
                .iter()
                .find(|k| k.point() == point.name && k.epochs_done() == CUT)
                .unwrap();
            state.save(&dir.path().join(&point.name)).unwrap();
        }
        let read = |name: &str| Some(ResumePoint::load(&dir.path().join(name)).unwrap());
        let (resumed, _) = run(&points, data, &read);
        for (p, (whole, resumed)) in points.iter().zip(whole.iter().zip(&resumed)) {
            assert_eq!(resumed.resumed_after_epoch, Some(CUT), "{}", p.name);
            assert_same(whole, resumed, &format!("{} resumed", p.name));
        }
    }
    assert!(resampled > 0, "resampling ran in these runs");
}

#[test]
fn a_state_that_does_not_fit_the_point_is_not_used_and_a_damaged_one_is_refused() {
    let data = synthetic::sparse_directions(512, 16, 12, 2, 0.05, 5);
    let data = TrainData::autoencoding(&data, 16);
    let axes = ArchitectureAxes::default();
    let l1 = ArchitectureKind::ALL[0].architectures(&axes).remove(0);
    let point = |seed| SweepPoint {
        name: "p".into(),
        cfg: SaeConfig {
            seed,
            ..config(l1.clone(), None)
        },
    };
    let (_, kept) = run(&[point(1)], data, &|_| None);
    let state = kept[2].clone();
    // Another seed: the state is of another run, which trains from the start.
    let (fresh, _) = run(&[point(2)], data, &|_| None);
    let (offered, _) = run(&[point(2)], data, &|_| Some(state.clone()));
    assert_eq!(offered[0].resumed_after_epoch, None);
    assert_same(&fresh[0], &offered[0], "a state of another seed");

    let dir = tempfile::tempdir().unwrap();
    state.save(dir.path()).unwrap();
    let buffers = dir.path().join(sae::RESUME_BUFFERS_FILE);
    let bytes = std::fs::read(&buffers).unwrap();
    std::fs::write(&buffers, &bytes[..bytes.len() / 2]).unwrap();
    let err = ResumePoint::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains(sae::RESUME_BUFFERS_FILE), "{err}");
    let json = dir.path().join(sae::RESUME_STATE_FILE);
    std::fs::write(&json, "{\"format\": 1}").unwrap();
    let err = ResumePoint::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains(sae::RESUME_STATE_FILE), "{err}");
}
