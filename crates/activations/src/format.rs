//! The shard file format: names, the header this crate writes, and the checks a
//! shard's header must pass before the reader maps it.

use std::fs::File;
use std::io::Read;

use safetensors::tensor::Metadata;
use safetensors::Dtype;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

/// Name of the per-row label tensor (U8, `[rows]`).
pub const LABELS_TENSOR: &str = "labels";
/// Name of the per-row dataset index tensor (U32, `[rows]`).
pub const INDEX_TENSOR: &str = "index";

pub(crate) const FORMAT_TAG: &str = "saelab-activations/1";
/// Same cap as safetensors itself; a larger length field is corruption.
const MAX_HEADER_BYTES: u64 = 100_000_000;
const LEN_PREFIX: usize = 8;

/// One layer of a shard: its tensor name and row width.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LayerInfo {
    pub name: String,
    pub width: usize,
}

/// What the writer produced for one shard; the reader checks the file against it.
/// Rows `row_start..row_end` are positions within the split, in dataset order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// File name inside the store directory, `{split}-{shard:05}.safetensors`.
    pub file: String,
    pub split: String,
    pub row_start: usize,
    pub row_end: usize,
    pub size_bytes: u64,
    /// Lower-case hex SHA-256 of the whole file.
    pub sha256: String,
    /// Layers in writer order.
    pub layers: Vec<LayerInfo>,
}

impl ShardInfo {
    pub fn rows(&self) -> usize {
        self.row_end.saturating_sub(self.row_start)
    }
}

/// `{split}-{shard:05}.safetensors`.
pub fn shard_file_name(split: &str, shard: usize) -> String {
    format!("{split}-{shard:05}.safetensors")
}

/// One tensor as the writer lays it out, in file order.
pub(crate) struct TensorSpec<'a> {
    pub name: &'a str,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub byte_len: usize,
}

#[derive(Serialize)]
struct TensorEntry<'a> {
    dtype: Dtype,
    shape: &'a [usize],
    data_offsets: [usize; 2],
}

/// Serialises entries in the given order, so the header (and the file digest)
/// never depends on hash-map iteration order.
struct OrderedHeader<'a> {
    metadata: &'a [(&'a str, String)],
    tensors: &'a [TensorSpec<'a>],
}

struct OrderedMetadata<'a>(&'a [(&'a str, String)]);

impl Serialize for OrderedMetadata<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(key, value)| (key, value)))
    }
}

impl Serialize for OrderedHeader<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.tensors.len() + 1))?;
        map.serialize_entry("__metadata__", &OrderedMetadata(self.metadata))?;
        let mut offset = 0;
        for tensor in self.tensors {
            let entry = TensorEntry {
                dtype: tensor.dtype,
                shape: &tensor.shape,
                data_offsets: [offset, offset + tensor.byte_len],
            };
            map.serialize_entry(tensor.name, &entry)?;
            offset += tensor.byte_len;
        }
        map.end()
    }
}

/// The bytes before the tensor data: the little-endian header length, then the
/// JSON header padded with spaces to a multiple of 8 (as safetensors does), so
/// the data section starts 8-byte aligned.
pub(crate) fn encode_header(
    metadata: &[(&str, String)],
    tensors: &[TensorSpec<'_>],
) -> Result<Vec<u8>, serde_json::Error> {
    let mut json = serde_json::to_vec(&OrderedHeader { metadata, tensors })?;
    json.resize(json.len().next_multiple_of(LEN_PREFIX), b' ');
    let mut bytes = Vec::with_capacity(LEN_PREFIX + json.len());
    bytes.extend_from_slice(&(json.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&json);
    Ok(bytes)
}

/// Absolute byte range of one tensor inside the file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ByteRange {
    pub start: usize,
    pub len: usize,
}

impl ByteRange {
    pub fn end(&self) -> usize {
        self.start + self.len
    }
}

/// Where each expected tensor lies in a validated shard file.
#[derive(Debug)]
pub(crate) struct ShardLayout {
    /// In the order of `ShardInfo::layers`.
    pub layers: Vec<ByteRange>,
    pub index: ByteRange,
    pub labels: ByteRange,
    pub metadata: std::collections::HashMap<String, String>,
}

/// Reads and checks a shard's header through ordinary reads (never a map) and
/// returns where its tensors lie; the `Err` is the problem, phrased to follow
/// "shard <path> is refused: ". `file_len` has already been checked against
/// `expected.size_bytes` by the caller.
pub(crate) fn read_layout(
    file: &mut File,
    file_len: u64,
    expected: &ShardInfo,
) -> Result<ShardLayout, String> {
    if file_len < LEN_PREFIX as u64 {
        return Err(format!(
            "it is {file_len} bytes long, too short for a safetensors header"
        ));
    }
    let mut prefix = [0u8; LEN_PREFIX];
    file.read_exact(&mut prefix)
        .map_err(|e| format!("its header length could not be read ({e})"))?;
    let header_len = u64::from_le_bytes(prefix);
    if header_len > MAX_HEADER_BYTES || header_len > file_len - LEN_PREFIX as u64 {
        return Err(format!(
            "its header length field says {header_len} bytes but the file is {file_len} bytes long"
        ));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)
        .map_err(|e| format!("its header could not be read ({e})"))?;
    let header =
        std::str::from_utf8(&header).map_err(|e| format!("its header is not UTF-8 ({e})"))?;
    let parsed: Metadata = serde_json::from_str(header)
        .map_err(|e| format!("its header is not a valid safetensors header ({e})"))?;

    let data_start = LEN_PREFIX + header_len as usize;
    let described = (data_start + parsed.data_len()) as u64;
    if described != file_len {
        return Err(format!(
            "its header describes {described} bytes but the file is {file_len} bytes long"
        ));
    }

    let metadata = parsed
        .metadata()
        .clone()
        .ok_or("its header has no __metadata__ section")?;
    check_metadata(&metadata, expected)?;

    let tensors = parsed.tensors();
    let rows = expected.rows();
    let expected_names: Vec<&str> = expected
        .layers
        .iter()
        .map(|l| l.name.as_str())
        .chain([INDEX_TENSOR, LABELS_TENSOR])
        .collect();
    let mut found: Vec<&String> = tensors.keys().collect();
    found.sort();
    if let Some(extra) = found.iter().find(|n| !expected_names.contains(&n.as_str())) {
        return Err(format!("it holds unexpected tensor `{extra}`"));
    }

    let locate = |name: &str, dtype: Dtype, shape: &[usize]| -> Result<ByteRange, String> {
        let info = tensors
            .get(name)
            .ok_or_else(|| format!("it lacks tensor `{name}`"))?;
        if info.dtype != dtype {
            return Err(format!(
                "tensor `{name}` has dtype {:?} but {dtype:?} is required",
                info.dtype
            ));
        }
        if info.shape != shape {
            return Err(format!(
                "tensor `{name}` has shape {:?} but {shape:?} is expected",
                info.shape
            ));
        }
        let range = ByteRange {
            start: data_start + info.data_offsets.0,
            len: info.data_offsets.1 - info.data_offsets.0,
        };
        let align = dtype.bitsize() / 8;
        if !range.start.is_multiple_of(align) {
            return Err(format!(
                "tensor `{name}` starts at byte {}, not aligned to {align} bytes",
                range.start
            ));
        }
        Ok(range)
    };

    let layers = expected
        .layers
        .iter()
        .map(|l| locate(&l.name, Dtype::F32, &[rows, l.width]))
        .collect::<Result<Vec<_>, _>>()?;
    let index = locate(INDEX_TENSOR, Dtype::U32, &[rows])?;
    let labels = locate(LABELS_TENSOR, Dtype::U8, &[rows])?;
    Ok(ShardLayout {
        layers,
        index,
        labels,
        metadata,
    })
}

fn check_metadata(
    metadata: &std::collections::HashMap<String, String>,
    expected: &ShardInfo,
) -> Result<(), String> {
    let layer_list = expected
        .layers
        .iter()
        .map(|l| l.name.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let wanted = [
        ("format", FORMAT_TAG.to_string()),
        ("split", expected.split.clone()),
        ("row_start", expected.row_start.to_string()),
        ("row_end", expected.row_end.to_string()),
        ("layers", layer_list),
    ];
    for (key, value) in wanted {
        match metadata.get(key) {
            None => return Err(format!("its __metadata__ lacks `{key}`")),
            Some(found) if *found != value => {
                return Err(format!(
                    "its __metadata__ `{key}` is `{found}` but `{value}` is expected"
                ))
            }
            Some(_) => {}
        }
    }
    for key in ["mlp_key", "dataset_digest"] {
        if !metadata.contains_key(key) {
            return Err(format!("its __metadata__ lacks `{key}`"));
        }
    }
    Ok(())
}
