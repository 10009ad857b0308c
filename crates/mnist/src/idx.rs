//! IDX files of unsigned bytes: images (rank 3) and labels (rank 1), raw or
//! gzip-compressed. Gzip is recognised by its magic bytes, never by name.

use std::borrow::Cow;
use std::io::{Read, Write};
use std::path::Path;

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;

use crate::error::MnistError;

pub const IMAGES_MAGIC: u32 = 0x0000_0803;
pub const LABELS_MAGIC: u32 = 0x0000_0801;
const IMAGES_HEADER_LEN: usize = 16;
const LABELS_HEADER_LEN: usize = 8;
/// The IDX data-type code for unsigned bytes (third magic byte).
const UNSIGNED_BYTE_TYPE: u8 = 0x08;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Largest decompressed file accepted; MNIST's biggest is 47 MB, so this only
/// stops a corrupt or hostile stream from exhausting memory.
pub const MAX_DECODED_BYTES: u64 = 1 << 30;
pub const MAX_LABEL: u8 = 9;

/// Greyscale images stored row-major, one byte per pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    pub count: usize,
    pub rows: usize,
    pub cols: usize,
    pub pixels: Vec<u8>,
}

impl Images {
    pub fn pixels_per_image(&self) -> usize {
        self.rows * self.cols
    }

    /// The pixels of image `index`; panics when out of range like slice indexing.
    pub fn image(&self, index: usize) -> &[u8] {
        let size = self.pixels_per_image();
        &self.pixels[index * size..(index + 1) * size]
    }
}

/// Digit labels, each in `0..=9`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    pub labels: Vec<u8>,
}

/// How `write_images_as` / `write_labels_as` store the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Raw,
    Gzip,
}

pub fn read_images(path: &Path) -> Result<Images, MnistError> {
    let bytes = read_file(path)?;
    let name = path.display().to_string();
    images_from_raw(gunzip_if_compressed(bytes, &name)?, &name)
}

pub fn read_labels(path: &Path) -> Result<Labels, MnistError> {
    let bytes = read_file(path)?;
    let name = path.display().to_string();
    labels_from_raw(gunzip_if_compressed(bytes, &name)?, &name)
}

/// Parses image IDX bytes (raw or gzip); `name` is used in error messages.
pub fn parse_images(bytes: &[u8], name: &str) -> Result<Images, MnistError> {
    images_from_raw(decompress(bytes, name)?.into_owned(), name)
}

/// Parses label IDX bytes (raw or gzip); `name` is used in error messages.
pub fn parse_labels(bytes: &[u8], name: &str) -> Result<Labels, MnistError> {
    labels_from_raw(decompress(bytes, name)?.into_owned(), name)
}

/// Writes uncompressed IDX, the canonical form the pins describe.
pub fn write_images(path: &Path, images: &Images) -> Result<(), MnistError> {
    write_images_as(path, images, Compression::Raw)
}

pub fn write_labels(path: &Path, labels: &Labels) -> Result<(), MnistError> {
    write_labels_as(path, labels, Compression::Raw)
}

pub fn write_images_as(
    path: &Path,
    images: &Images,
    compression: Compression,
) -> Result<(), MnistError> {
    let name = path.display().to_string();
    let raw = encode_images(images, &name)?;
    write_atomically(path, &compress(&raw, compression))
}

pub fn write_labels_as(
    path: &Path,
    labels: &Labels,
    compression: Compression,
) -> Result<(), MnistError> {
    let name = path.display().to_string();
    let raw = encode_labels(labels, &name)?;
    write_atomically(path, &compress(&raw, compression))
}

/// Uncompressed IDX bytes of `images`; `name` is used in error messages.
pub fn encode_images(images: &Images, name: &str) -> Result<Vec<u8>, MnistError> {
    let expected = images
        .count
        .checked_mul(images.rows)
        .and_then(|n| n.checked_mul(images.cols));
    if expected != Some(images.pixels.len()) {
        return Err(MnistError::format(
            name,
            format!(
                "cannot write: {}x{}x{} images need {} pixel bytes, got {}",
                images.count,
                images.rows,
                images.cols,
                expected.map_or("more than usize".to_string(), |n| n.to_string()),
                images.pixels.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(IMAGES_HEADER_LEN + images.pixels.len());
    out.extend_from_slice(&IMAGES_MAGIC.to_be_bytes());
    for (what, dim) in [
        ("count", images.count),
        ("rows", images.rows),
        ("cols", images.cols),
    ] {
        let dim = u32::try_from(dim).map_err(|_| {
            MnistError::format(name, format!("cannot write: {what} {dim} exceeds u32"))
        })?;
        out.extend_from_slice(&dim.to_be_bytes());
    }
    out.extend_from_slice(&images.pixels);
    Ok(out)
}

/// Uncompressed IDX bytes of `labels`; `name` is used in error messages.
pub fn encode_labels(labels: &Labels, name: &str) -> Result<Vec<u8>, MnistError> {
    check_label_range(&labels.labels, name).map_err(|e| match e {
        MnistError::Format { file, problem } => MnistError::Format {
            file,
            problem: format!("cannot write: {problem}"),
        },
        other => other,
    })?;
    let count = u32::try_from(labels.labels.len()).map_err(|_| {
        MnistError::format(
            name,
            format!("cannot write: {} labels exceed u32", labels.labels.len()),
        )
    })?;
    let mut out = Vec::with_capacity(LABELS_HEADER_LEN + labels.labels.len());
    out.extend_from_slice(&LABELS_MAGIC.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(&labels.labels);
    Ok(out)
}

pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&GZIP_MAGIC)
}

/// The uncompressed bytes: decoded when they start with the gzip magic,
/// borrowed unchanged otherwise.
pub fn decompress<'a>(bytes: &'a [u8], name: &str) -> Result<Cow<'a, [u8]>, MnistError> {
    if !is_gzip(bytes) {
        return Ok(Cow::Borrowed(bytes));
    }
    let mut out = Vec::new();
    let read = MultiGzDecoder::new(bytes)
        .take(MAX_DECODED_BYTES + 1)
        .read_to_end(&mut out);
    match read {
        Err(err) => Err(MnistError::format(
            name,
            format!("corrupt gzip stream: {err}"),
        )),
        Ok(n) if n as u64 > MAX_DECODED_BYTES => Err(MnistError::format(
            name,
            format!("gzip stream decompresses to more than {MAX_DECODED_BYTES} bytes"),
        )),
        Ok(_) => Ok(Cow::Owned(out)),
    }
}

/// Like `decompress`, but keeps the buffer when it is not compressed.
pub(crate) fn gunzip_if_compressed(bytes: Vec<u8>, name: &str) -> Result<Vec<u8>, MnistError> {
    if is_gzip(&bytes) {
        Ok(decompress(&bytes, name)?.into_owned())
    } else {
        Ok(bytes)
    }
}

pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, MnistError> {
    std::fs::read(path).map_err(|e| MnistError::io(path, "read", e))
}

/// Writes through a temporary file in the same directory and renames it, so
/// a reader never sees a half-written file.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), MnistError> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut temp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| MnistError::io(dir, "create a temporary file in", e))?;
    temp.write_all(bytes)
        .and_then(|_| temp.as_file().sync_all())
        .map_err(|e| MnistError::io(temp.path(), "write", e))?;
    temp.persist(path)
        .map_err(|e| MnistError::io(path, "rename a temporary file onto", e.error))?;
    Ok(())
}

fn compress(raw: &[u8], compression: Compression) -> Cow<'_, [u8]> {
    match compression {
        Compression::Raw => Cow::Borrowed(raw),
        Compression::Gzip => {
            let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder
                .write_all(raw)
                .expect("writing into a Vec cannot fail");
            Cow::Owned(encoder.finish().expect("writing into a Vec cannot fail"))
        }
    }
}

/// Checks the 4-byte magic: two zero bytes, the unsigned-byte type, the rank.
fn check_magic(raw: &[u8], expected: u32, what: &str, name: &str) -> Result<(), MnistError> {
    let magic = u32::from_be_bytes(raw[..4].try_into().expect("caller checked length"));
    if magic == expected {
        return Ok(());
    }
    let expected_rank = expected & 0xff;
    let problem = if raw[..3] == [0, 0, UNSIGNED_BYTE_TYPE] {
        format!(
            "wrong rank: magic 0x{magic:08x} declares rank {}, {what} files have rank {expected_rank}",
            raw[3]
        )
    } else if raw[..2] == [0, 0] {
        format!(
            "wrong data type: magic 0x{magic:08x} declares type 0x{:02x}, expected unsigned bytes (0x08)",
            raw[2]
        )
    } else {
        format!("bad magic 0x{magic:08x}, expected 0x{expected:08x} ({what})")
    };
    Err(MnistError::format(name, problem))
}

fn check_header_present(
    raw: &[u8],
    header_len: usize,
    what: &str,
    name: &str,
) -> Result<(), MnistError> {
    if raw.is_empty() {
        return Err(MnistError::format(
            name,
            format!("empty file, expected an IDX {what} header"),
        ));
    }
    if raw.len() < header_len {
        return Err(MnistError::format(
            name,
            format!(
                "truncated: {} bytes is shorter than the {header_len}-byte IDX {what} header",
                raw.len()
            ),
        ));
    }
    Ok(())
}

/// `promise` describes what the header promises, e.g. "60000x28x28 = 47040000 pixel bytes".
fn check_body_length(
    actual: usize,
    promised: usize,
    promise: &str,
    name: &str,
) -> Result<(), MnistError> {
    if actual < promised {
        Err(MnistError::format(
            name,
            format!("truncated: header promises {promise}, file holds {actual}"),
        ))
    } else if actual > promised {
        Err(MnistError::format(
            name,
            format!(
                "trailing bytes: header promises {promise}, file holds {actual} ({} extra)",
                actual - promised
            ),
        ))
    } else {
        Ok(())
    }
}

fn read_dim(raw: &[u8], index: usize) -> usize {
    let start = 4 + 4 * index;
    u32::from_be_bytes(
        raw[start..start + 4]
            .try_into()
            .expect("caller checked length"),
    ) as usize
}

pub(crate) fn images_from_raw(mut raw: Vec<u8>, name: &str) -> Result<Images, MnistError> {
    check_header_present(&raw, IMAGES_HEADER_LEN, "image", name)?;
    check_magic(&raw, IMAGES_MAGIC, "IDX u8 images", name)?;
    let (count, rows, cols) = (read_dim(&raw, 0), read_dim(&raw, 1), read_dim(&raw, 2));
    let shape = format!("{count}x{rows}x{cols}");
    let promised = count
        .checked_mul(rows)
        .and_then(|n| n.checked_mul(cols))
        .ok_or_else(|| MnistError::format(name, format!("header shape {shape} overflows usize")))?;
    let promise = format!("{shape} = {promised} pixel bytes");
    check_body_length(raw.len() - IMAGES_HEADER_LEN, promised, &promise, name)?;
    // Drop the header in place rather than copying the (large) body.
    raw.drain(..IMAGES_HEADER_LEN);
    Ok(Images {
        count,
        rows,
        cols,
        pixels: raw,
    })
}

pub(crate) fn labels_from_raw(mut raw: Vec<u8>, name: &str) -> Result<Labels, MnistError> {
    check_header_present(&raw, LABELS_HEADER_LEN, "label", name)?;
    check_magic(&raw, LABELS_MAGIC, "IDX u8 labels", name)?;
    let count = read_dim(&raw, 0);
    let promise = format!("{count} label bytes");
    check_body_length(raw.len() - LABELS_HEADER_LEN, count, &promise, name)?;
    raw.drain(..LABELS_HEADER_LEN);
    check_label_range(&raw, name)?;
    Ok(Labels { labels: raw })
}

fn check_label_range(labels: &[u8], name: &str) -> Result<(), MnistError> {
    match labels.iter().position(|&label| label > MAX_LABEL) {
        None => Ok(()),
        Some(index) => Err(MnistError::format(
            name,
            format!(
                "label {} at index {index} is outside 0..={MAX_LABEL}",
                labels[index]
            ),
        )),
    }
}
