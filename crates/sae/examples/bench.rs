//! `cargo run --release -p sae --example bench [-- --quick]`: SAE training speed.

fn main() -> Result<(), sae::SaeError> {
    let mut cfg = sae::bench::BenchConfig::default();
    if std::env::args().any(|a| a == "--quick") {
        cfg.fast_epochs = 2;
        cfg.reference_epochs = 0;
        cfg.sweep_epochs = 2;
    }
    print!("{}", sae::bench::run(&cfg)?);
    Ok(())
}
