//! The verified train and test splits, loaded from a directory.

use std::path::Path;

use crate::error::MnistError;
use crate::fetch::read_verified_file;
use crate::idx::{images_from_raw, labels_from_raw, Images, Labels};
use crate::pins::{MnistFile, Pins};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub images: Images,
    pub labels: Labels,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.labels.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mnist {
    pub train: Split,
    pub test: Split,
}

/// Loads the four canonical files from `dir` (raw or .gz), refusing any
/// whose uncompressed bytes do not match `pins`.
pub fn load_verified(dir: &Path, pins: &Pins) -> Result<Mnist, MnistError> {
    let load_split = |images_file: MnistFile, labels_file: MnistFile| {
        let (images_path, raw) = read_verified_file(dir, images_file, pins)?;
        let images = images_from_raw(raw, &images_path.display().to_string())?;
        let (labels_path, raw) = read_verified_file(dir, labels_file, pins)?;
        let labels = labels_from_raw(raw, &labels_path.display().to_string())?;
        if images.count != labels.labels.len() {
            return Err(MnistError::Format {
                file: images_path.display().to_string(),
                problem: format!(
                    "holds {} images but {} holds {} labels",
                    images.count,
                    labels_path.display(),
                    labels.labels.len()
                ),
            });
        }
        Ok(Split { images, labels })
    };
    Ok(Mnist {
        train: load_split(MnistFile::TrainImages, MnistFile::TrainLabels)?,
        test: load_split(MnistFile::TestImages, MnistFile::TestLabels)?,
    })
}
