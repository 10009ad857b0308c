//! The fast path's own invariants: dormancy, two threads and a snapshot change no bit.

use super::*;
use crate::duo::Duo;
use crate::{synthetic, Architecture};

/// Steps `steps` batches of `data` predicting `target` with `exec`; returns the parameters.
fn run(cfg: &SaeConfig, data: &[f32], target: &[f32], steps: usize, exec: Exec) -> Sae {
    let sae = Sae::init(cfg, target).unwrap();
    let trainer = FastTrainer::new(&sae, AuxScale::of(target, cfg.d_out()));
    run_trainer(trainer, cfg, data, target, steps, exec).0
}

/// [`run`] with `trainer`, which also settles after each step; returns
/// the parameters and the trainer.
fn run_trainer(
    mut trainer: FastTrainer,
    cfg: &SaeConfig,
    data: &[f32],
    target: &[f32],
    steps: usize,
    exec: Exec,
) -> (Sae, FastTrainer) {
    let mut tracker = FiringTracker::new(cfg.d_sae, cfg.dead_window_steps);
    for (i, (batch, batch_target)) in data
        .chunks(cfg.batch_size * cfg.d_in)
        .zip(target.chunks(cfg.batch_size * cfg.d_out()))
        .cycle()
        .take(steps)
        .enumerate()
    {
        let rows = batch.len() / cfg.d_in;
        let stats = trainer
            .compute(batch, batch_target, rows, &mut tracker, exec)
            .unwrap();
        assert!(stats.loss.is_finite(), "step {i}");
        // The rate rises once, at three quarters, which ends every rest.
        let lr = match i.cmp(&(steps * 3 / 4)) {
            std::cmp::Ordering::Less => 1e-3,
            std::cmp::Ordering::Equal => 2e-3,
            std::cmp::Ordering::Greater => 1.5e-3,
        };
        trainer.apply(lr, exec).unwrap();
        trainer.settle(data, exec);
    }
    (trainer.export().unwrap(), trainer)
}

/// Every architecture, with an L1 coefficient, a k and a JumpReLU L0 coefficient.
fn every_architecture(l1_coeff: f64, k: usize, l0_coeff: f64) -> Vec<Architecture> {
    let axes = crate::ArchitectureAxes {
        l1_coeff: vec![l1_coeff],
        k: vec![k],
        l0_coeff: vec![l0_coeff],
        k_aux: Some(256),
        ..crate::ArchitectureAxes::default()
    };
    crate::ArchitectureKind::ALL
        .iter()
        .flat_map(|kind| kind.architectures(&axes))
        .collect()
}

#[test]
fn dormancy_changes_no_bit() {
    let mut woken = 0;
    let data = synthetic::sparse_directions(256, 16, 12, 2, 0.05, 5);
    let target = synthetic::sparse_directions(256, 12, 12, 2, 0.05, 6);
    // Clipped or not: clipping holds every gradient before stepping.
    for (architecture, clip_grad_norm) in every_architecture(3e-2, 3, 0.3)
        .into_iter()
        .flat_map(|a| [(a.clone(), 0.0), (a, 0.1)])
    {
        for transcoder in [
            None,
            Some(crate::Transcoder {
                d_out: 12,
                skip: true,
            }),
        ] {
            let cfg = SaeConfig {
                clip_grad_norm,
                d_in: 16,
                d_sae: 96,
                architecture: architecture.clone(),
                batch_size: 32,
                dead_window_steps: 50,
                transcoder,
                ..SaeConfig::default()
            };
            let target = if transcoder.is_some() { &target } else { &data };
            let sae = Sae::init(&cfg, target).unwrap();
            let aux = AuxScale::of(target, cfg.d_out());
            let steps = 6000;
            let (dense, _) = run_trainer(
                FastTrainer::new(&sae, aux).without_dormancy(),
                &cfg,
                &data,
                target,
                steps,
                Exec::Serial,
            );
            let (sparse, trainer) = run_trainer(
                FastTrainer::new(&sae, aux),
                &cfg,
                &data,
                target,
                steps,
                Exec::Serial,
            );
            assert!(
                dense == sparse,
                "{architecture:?}, transcoder {transcoder:?}, clip {clip_grad_norm}"
            );
            let d = &trainer.dormancy;
            if let Architecture::L1(_) | Architecture::JumpRelu(_) | Architecture::Gated(_) =
                architecture
            {
                // The comparison above covered rests, sleep and wakes
                // (these three put features to sleep on this data).
                assert!(
                    d.rested > 0 && d.slept > 0,
                    "{architecture:?}: {} {}",
                    d.rested,
                    d.slept
                );
            }
            woken += d.woken;
        }
    }
    assert!(woken > 0);
}

/// Data, an L1 config and its initial SAE on which features come to rest
/// within 4000 of [`run_trainer`]'s steps.
fn resting_setup() -> (Vec<f32>, SaeConfig, Sae) {
    let data = synthetic::sparse_directions(256, 16, 12, 2, 0.05, 5);
    let cfg = SaeConfig {
        d_in: 16,
        d_sae: 96,
        architecture: Architecture::l1(3e-2),
        batch_size: 32,
        ..SaeConfig::default()
    };
    let sae = Sae::init(&cfg, &data).unwrap();
    (data, cfg, sae)
}

fn resting(t: &FastTrainer) -> usize {
    t.halves.iter().map(|h| h.rest.resting_count()).sum()
}

#[test]
fn a_larger_step_ends_every_rest_even_before_its_certificate() {
    let (data, cfg, sae) = resting_setup();
    let trainer = FastTrainer::new(&sae, AuxScale::of(&data, cfg.d_in));
    // 4000 steps; the helper's rate rises at 3000, then settles at 1.5e-3.
    let (_, mut trainer) = run_trainer(trainer, &cfg, &data, &data, 4000, Exec::Serial);
    assert!(resting(&trainer) > 0);
    // Rests whose reach is still waiting for its batch have no certificate.
    trainer.halves.iter_mut().for_each(|h| {
        for j in 0..h.n() {
            h.rest.wake(j);
        }
        h.rest.drop_certificates();
        h.rest.refresh_awake();
    });
    trainer.apply(2e-3, Exec::Serial).unwrap();
    assert_eq!(resting(&trainer), 0);
}

#[test]
fn two_threads_and_one_give_the_same_bits() {
    let data = synthetic::sparse_directions(200, 24, 60, 4, 0.05, 3);
    let target = synthetic::sparse_directions(200, 20, 60, 4, 0.05, 4);
    for architecture in every_architecture(3e-3, 5, 0.01) {
        let cfg = SaeConfig {
            d_in: 24,
            d_sae: 77,
            architecture,
            dead_window_steps: 3,
            ..SaeConfig::default()
        };
        let serial = run(&cfg, &data, &data, 20, Exec::Serial);
        let parallel = Duo::scope(|duo| run(&cfg, &data, &data, 20, Exec::Duo(duo)));
        assert_eq!(serial, parallel);
        // The same as a skip transcoder predicting another layer.
        let cfg = SaeConfig {
            transcoder: Some(crate::Transcoder {
                d_out: 20,
                skip: true,
            }),
            ..cfg
        };
        let serial = run(&cfg, &data, &target, 20, Exec::Serial);
        let parallel = Duo::scope(|duo| run(&cfg, &data, &target, 20, Exec::Duo(duo)));
        assert_eq!(serial, parallel);
    }
}

#[test]
fn a_snapshot_with_features_at_rest_is_the_dense_state() {
    let (data, cfg, sae) = resting_setup();
    let aux = AuxScale::of(&data, cfg.d_in);
    let steps = 4000;
    let (_, mut dense) = run_trainer(
        FastTrainer::new(&sae, aux).without_dormancy(),
        &cfg,
        &data,
        &data,
        steps,
        Exec::Serial,
    );
    let (_, mut sparse) = run_trainer(
        FastTrainer::new(&sae, aux),
        &cfg,
        &data,
        &data,
        steps,
        Exec::Serial,
    );
    assert!(
        resting(&sparse) > 0,
        "features rest, their second moments lagging"
    );
    assert!(dense.take_snapshot() == sparse.take_snapshot());
    // And a trainer restored from it steps on with the same bits.
    let snapshot = sparse.take_snapshot();
    let mut restored = FastTrainer::new(&sae, aux);
    restored.restore_snapshot(&snapshot).unwrap();
    let (after_restore, _) = run_trainer(restored, &cfg, &data, &data, 300, Exec::Serial);
    let (after_dense, _) = run_trainer(dense, &cfg, &data, &data, 300, Exec::Serial);
    assert_eq!(after_restore, after_dense);
}
