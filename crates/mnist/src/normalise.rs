//! The notebook's input transform: `ToTensor` then `Normalize((0.1307,), (0.3081,))`.

/// Mean of MNIST training pixels scaled to [0, 1].
pub const MEAN: f32 = 0.1307;
/// Standard deviation of MNIST training pixels scaled to [0, 1].
pub const STD: f32 = 0.3081;

/// `(x / 255 - MEAN) / STD` per byte, in f32 as torchvision computes it.
pub fn normalise(pixels: &[u8]) -> Vec<f32> {
    // 256 possible inputs: a table computes each value once.
    let table: [f32; 256] = std::array::from_fn(|x| normalise_byte(x as u8));
    pixels.iter().map(|&x| table[x as usize]).collect()
}

pub fn normalise_byte(x: u8) -> f32 {
    (x as f32 / 255.0 - MEAN) / STD
}
