//! Transcoders and skip transcoders: behaviour a wrong implementation would
//! fail (the skip learns a linear map, the encoder reads the input as it is,
//! the output is what gets measured), and their bad configs and data.

mod common;

use common::*;
use sae::{
    encode, evaluate, evaluate_on, Architecture, SaeConfig, TrainData, TrainPath, Transcoder,
};

const D_IN: usize = 24;
const D_OUT: usize = 16;

fn transcoder_config(architecture: Architecture, skip: bool, epochs: usize) -> SaeConfig {
    SaeConfig {
        epochs,
        transcoder: Some(Transcoder { d_out: D_OUT, skip }),
        ..config(architecture, D_IN, 64)
    }
}

/// Inputs and a target that is a linear map `A` of them (negative values
/// too), and `A` `[D_OUT, D_IN]`.
fn linear_task(rows: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let input = structured_data(rows, D_IN, 7);
    let a: Vec<f32> = structured_data(D_OUT, D_IN, 8)
        .iter()
        .map(|v| 0.5 * v)
        .collect();
    let target = input
        .chunks_exact(D_IN)
        .flat_map(|x| {
            a.chunks_exact(D_IN)
                .map(|row| row.iter().zip(x).map(|(w, v)| w * v).sum::<f32>())
                .collect::<Vec<f32>>()
        })
        .collect();
    (input, target, a)
}

#[test]
fn a_skip_transcoder_learns_a_linear_map_that_a_plain_one_only_approximates() {
    let (input, target, _) = linear_task(64 * 40);
    let data = TrainData::transcoding(&input, D_IN, &target, D_OUT);
    let ev = |skip: bool| {
        let cfg = transcoder_config(Architecture::top_k(4), skip, 100);
        let run = train_on(&cfg, data, &TrainPath::Fast, &|_| {}).unwrap();
        let ev = evaluate_on(&run.sae, &input, &target)
            .unwrap()
            .explained_variance;
        (ev, run.sae)
    };
    let (plain, _) = ev(false);
    let (skip, sae) = ev(true);
    assert!(skip > 0.999, "skip transcoder EV {skip}");
    assert!(
        1.0 - plain > 3.0 * (1.0 - skip),
        "plain transcoder EV {plain} vs skip {skip}"
    );
    // The skip carries most of the map: b_dec + x @ W_skip^T alone, without a feature.
    let skip_only: Vec<f32> = input
        .chunks_exact(D_IN)
        .flat_map(|x| sae::decode_row(&sae, x, &[], &[]))
        .collect();
    let alone = sae::explained_variance(&target, &skip_only, D_OUT).unwrap();
    // (Measured 0.83: TopK's 4 features per row take the rest; an unlearned W_skip gives <= 0.)
    assert!(alone > 0.5, "b_dec + x @ W_skip^T alone: EV {alone}");
}

#[test]
fn a_transcoder_encodes_its_input_as_it_is_and_an_sae_centres_it() {
    let (input, target, _) = linear_task(64 * 4);
    let cfg = transcoder_config(Architecture::l1(1e-3), false, 2);
    let data = TrainData::transcoding(&input, D_IN, &target, D_OUT);
    let mut sae = train_on(&cfg, data, &TrainPath::Fast, &|_| {}).unwrap().sae;
    assert_eq!(sae.b_dec.len(), D_OUT);
    sae.b_dec.iter_mut().for_each(|b| *b += 1.0);
    let codes = encode(&sae, &input).unwrap();
    let d_sae = sae.d_sae();
    for (r, x) in input.chunks_exact(D_IN).enumerate().take(20) {
        for f in 0..d_sae {
            let pre: f32 = sae.b_enc[f]
                + (0..D_IN)
                    .map(|i| x[i] * sae.w_enc[i * d_sae + f])
                    .sum::<f32>();
            let got = codes[r * d_sae + f];
            assert!((got - pre.max(0.0)).abs() < 1e-5, "row {r} feature {f}");
        }
    }
    // An SAE's encoder reads x - b_dec: moving b_dec moves its codes.
    let sae_cfg = config(Architecture::l1(1e-3), D_IN, 64);
    let mut autoencoder = sae::Sae::init(&sae_cfg, &input).unwrap();
    let before = encode(&autoencoder, &input).unwrap();
    autoencoder.b_dec.iter_mut().for_each(|b| *b += 1.0);
    assert_ne!(before, encode(&autoencoder, &input).unwrap());
}

#[test]
fn transcoder_bad_configs_and_data_are_refused_naming_the_key() {
    let refusal = |cfg: SaeConfig| cfg.validate().unwrap_err().to_string();
    let tied_message = refusal(tied(transcoder_config(Architecture::l1(1e-3), false, 1)));
    assert!(
        tied_message.contains("`encoder_init`") && tied_message.contains("d_out 16"),
        "{tied_message}"
    );
    let resampled = SaeConfig {
        resample: Some(sae::ResampleConfig {
            schedule: sae::ResampleSchedule::Every {
                every_steps: 10,
                until: 20,
            },
            sample_rows: 100,
        }),
        ..transcoder_config(Architecture::l1(1e-3), false, 1)
    };
    assert!(refusal(resampled).contains("`resample`"));
    let empty = SaeConfig {
        transcoder: Some(Transcoder {
            d_out: 0,
            skip: false,
        }),
        ..config(Architecture::l1(1e-3), D_IN, 64)
    };
    assert!(refusal(empty).contains("`transcoder.d_out`"));
    // A tied transcoder between layers of one width is fine.
    let square = SaeConfig {
        transcoder: Some(Transcoder {
            d_out: D_IN,
            skip: true,
        }),
        ..tied(config(Architecture::l1(1e-3), D_IN, 64))
    };
    square.validate().unwrap();

    let (input, target, _) = linear_task(64);
    let cfg = transcoder_config(Architecture::l1(1e-3), true, 1);
    // The target of the wrong width: the message names the key and both widths.
    let narrow = &target[..64 * (D_OUT - 1)];
    let refusal = |data: TrainData| {
        train_on(&cfg, data, &TrainPath::Fast, &|_| {})
            .unwrap_err()
            .to_string()
    };
    let message = refusal(TrainData::transcoding(&input, D_IN, narrow, D_OUT - 1));
    assert!(
        message.contains("`transcoder.d_out`") && message.contains("15"),
        "{message}"
    );
    // Fewer target rows than input rows.
    let message = refusal(TrainData::transcoding(
        &input,
        D_IN,
        &target[..32 * D_OUT],
        D_OUT,
    ));
    assert!(
        message.contains("training target") && message.contains("64 rows"),
        "{message}"
    );
    let sae = sae::Sae::init(&cfg, &target).unwrap();
    let message = evaluate(&sae, &input).unwrap_err().to_string();
    assert!(message.contains("evaluate_on"), "{message}");
    let message = evaluate_on(&sae, &input, &target[..D_OUT])
        .unwrap_err()
        .to_string();
    assert!(message.contains("target"), "{message}");
}
