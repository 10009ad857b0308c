//! SAE training speed on activation-like data at the notebook's shapes.
//!
//! `cargo run --release -p sae --example bench [-- --quick] [fast=N] [reference=N] [sweep=N]`
//! (epochs per part; 0 skips a part).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut cfg = sae::bench::BenchConfig::default();
    for arg in std::env::args().skip(1) {
        match arg.split_once('=') {
            None if arg == "--quick" => {
                cfg.fast_epochs = 2;
                cfg.reference_epochs = 0;
                cfg.sweep_epochs = 2;
            }
            Some(("fast", n)) => cfg.fast_epochs = n.parse()?,
            Some(("reference", n)) => cfg.reference_epochs = n.parse()?,
            Some(("sweep", n)) => cfg.sweep_epochs = n.parse()?,
            _ => return Err(format!("unknown argument `{arg}`").into()),
        }
    }
    print!("{}", sae::bench::run(&cfg)?);
    Ok(())
}
