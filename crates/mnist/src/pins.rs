//! The four MNIST files and the SHA-256 each must hash to, uncompressed.

use sha2::{Digest, Sha256};

use crate::error::MnistError;

pub type Sha256Digest = [u8; 32];

/// One of the four canonical MNIST files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MnistFile {
    TrainImages,
    TrainLabels,
    TestImages,
    TestLabels,
}

impl MnistFile {
    /// The order the fetch chain resolves them in.
    pub const ALL: [MnistFile; 4] = [
        MnistFile::TrainImages,
        MnistFile::TrainLabels,
        MnistFile::TestImages,
        MnistFile::TestLabels,
    ];

    /// The uncompressed file name used by every mirror (plus ".gz" there).
    pub fn canonical_name(self) -> &'static str {
        match self {
            MnistFile::TrainImages => "train-images-idx3-ubyte",
            MnistFile::TrainLabels => "train-labels-idx1-ubyte",
            MnistFile::TestImages => "t10k-images-idx3-ubyte",
            MnistFile::TestLabels => "t10k-labels-idx1-ubyte",
        }
    }

    pub fn gz_name(self) -> String {
        format!("{}.gz", self.canonical_name())
    }
}

/// Expected SHA-256 of each uncompressed file. Tests build their own from
/// fixture bytes; production uses `Pins::canonical()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pins {
    pub train_images: Sha256Digest,
    pub train_labels: Sha256Digest,
    pub test_images: Sha256Digest,
    pub test_labels: Sha256Digest,
}

impl Pins {
    /// The digests of the original LeCun files (as listed in shared/mnist/SHA256SUMS).
    pub fn canonical() -> Self {
        Pins {
            train_images: hex_digest(
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            ),
            train_labels: hex_digest(
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            ),
            test_images: hex_digest(
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            ),
            test_labels: hex_digest(
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            ),
        }
    }

    pub fn digest(&self, file: MnistFile) -> &Sha256Digest {
        match file {
            MnistFile::TrainImages => &self.train_images,
            MnistFile::TrainLabels => &self.train_labels,
            MnistFile::TestImages => &self.test_images,
            MnistFile::TestLabels => &self.test_labels,
        }
    }

    /// Checks that `uncompressed` hashes to the pin of `file`; `name` says where
    /// the bytes came from in the error.
    pub fn verify(
        &self,
        file: MnistFile,
        uncompressed: &[u8],
        name: &str,
    ) -> Result<(), MnistError> {
        let actual = sha256(uncompressed);
        let expected = self.digest(file);
        if &actual == expected {
            Ok(())
        } else {
            Err(MnistError::Checksum {
                file: name.to_string(),
                expected: hex::encode(expected),
                actual: hex::encode(actual),
            })
        }
    }
}

pub fn sha256(bytes: &[u8]) -> Sha256Digest {
    Sha256::digest(bytes).into()
}

fn hex_digest(text: &str) -> Sha256Digest {
    let mut digest = [0u8; 32];
    hex::decode_to_slice(text, &mut digest).expect("pinned digests are 64 hex digits");
    digest
}
