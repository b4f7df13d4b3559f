//! A GGUF (v2/v3) reader and the dequantization of the tensor types Qwen2.5 GGUFs use.
//!
//! Layout (little endian), after ggml's `docs/gguf.md`:
//!
//! ```text
//! "GGUF" u32:version u64:n_tensors u64:n_kv
//! n_kv x (string:key u32:value_type value)
//! n_tensors x (string:name u32:n_dims n_dims x u64:ne u32:ggml_type u64:offset)
//! padding to `general.alignment` (default 32), then the tensor data; each offset is
//! relative to the start of the data
//! ```
//!
//! where a string is `u64:len` + UTF-8 bytes and an array value is `u32:type u64:n` + n
//! values. `ne[0]` is the fastest-varying dimension, so a Hugging Face shape is the dims
//! reversed.
//!
//! Every count and size read from the file is checked against the bytes left in the file
//! before anything is allocated, so a truncated or malformed file is an error, not a
//! panic or a huge allocation.

use anyhow::{bail, ensure, Context, Result};
use std::io::{Read, Seek, SeekFrom};

/// The magic bytes at the start of a GGUF file.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// The alignment of the data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The most dimensions a ggml tensor has.
pub const MAX_DIMS: usize = 4;
/// Elements per block of the k-quants.
pub const QK_K: usize = 256;
const MAX_ARRAY_DEPTH: usize = 3;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `u8`
    U8(u8),
    /// `i8`
    I8(i8),
    /// `u16`
    U16(u16),
    /// `i16`
    I16(i16),
    /// `u32`
    U32(u32),
    /// `i32`
    I32(i32),
    /// `f32`
    F32(f32),
    /// `bool`
    Bool(bool),
    /// A UTF-8 string.
    String(String),
    /// An array (its elements all have one type).
    Array(Vec<Value>),
    /// `u64`
    U64(u64),
    /// `i64`
    I64(i64),
    /// `f64`
    F64(f64),
}

impl Value {
    /// The value as a `u64` if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as an `i64` if it is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a string slice.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// The ggml tensor types this reader can dequantize.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// 32 elements: `f16 d`, 4 bytes of high bits, 16 bytes of low nibbles.
    Q5_0,
    /// 32 elements: `f16 d`, 32 x `i8`.
    Q8_0,
    /// 256 elements: `f16 d`, `f16 dmin`, 12 bytes of 6-bit scales and mins, 128 bytes of nibbles.
    Q4K,
    /// 256 elements: 128 bytes low nibbles, 64 bytes high 2-bit pairs, 16 x `i8` scales, `f16 d`.
    Q6K,
}

impl GgmlType {
    /// The type for a ggml type id, or an error naming the (unsupported) type.
    pub fn from_id(id: u32) -> Result<Self> {
        Ok(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            6 => GgmlType::Q5_0,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4K,
            14 => GgmlType::Q6K,
            _ => bail!(
                "ggml tensor type {id} ({}) is not supported (supported: F32, F16, Q5_0, Q8_0, Q4_K, Q6_K)",
                ggml_type_name(id)
            ),
        })
    }

    /// ggml's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q6K => "Q6_K",
        }
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 => 1,
            GgmlType::Q5_0 | GgmlType::Q8_0 => 32,
            GgmlType::Q4K | GgmlType::Q6K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 => 2,
            GgmlType::Q5_0 => 2 + 4 + 16,
            GgmlType::Q8_0 => 2 + 32,
            GgmlType::Q4K => 2 + 2 + 12 + QK_K / 2,
            GgmlType::Q6K => QK_K / 2 + QK_K / 4 + QK_K / 16 + 2,
        }
    }
}

fn ggml_type_name(id: u32) -> &'static str {
    const NAMES: [&str; 31] = [
        "F32", "F16", "Q4_0", "Q4_1", "?", "?", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K",
        "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S",
        "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16",
    ];
    usize::try_from(id).ok().and_then(|i| NAMES.get(i)).copied().unwrap_or("unknown")
}

/// One tensor's header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// The GGUF name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// The dims, fastest-varying first (`ne[0]` = row length).
    pub dims: Vec<u64>,
    /// The element type.
    pub ty: GgmlType,
    /// Absolute offset of the data in the file.
    pub file_offset: u64,
    /// Number of elements.
    pub n_elements: u64,
    /// Bytes of data.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// The shape as Hugging Face writes it (the dims reversed).
    pub fn hf_shape(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }
}

/// A parsed GGUF header: metadata and tensor infos (the data stays in the file).
#[derive(Debug, Clone)]
pub struct Gguf {
    /// The format version (2 or 3).
    pub version: u32,
    /// The metadata, in file order.
    pub metadata: Vec<(String, Value)>,
    /// The tensors, in file order.
    pub tensors: Vec<TensorInfo>,
    /// The alignment of the data section.
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    /// Length of the file.
    pub file_len: u64,
}

/// Reads little-endian fields and knows how many bytes are left.
struct Cursor<'a, R> {
    r: &'a mut R,
    pos: u64,
    len: u64,
}

impl<R: Read> Cursor<'_, R> {
    fn left(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        ensure!(self.left() >= N as u64, "truncated GGUF: file ends at byte {} inside {what}", self.len);
        self.r.read_exact(&mut b).with_context(|| format!("reading {what} at byte {}", self.pos))?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes(what)?))
    }

    /// A count that must fit in the rest of the file at `min_size` bytes per item.
    fn count(&mut self, min_size: u64, what: &str) -> Result<usize> {
        let n = self.u64(what)?;
        ensure!(
            n.checked_mul(min_size).is_some_and(|b| b <= self.left()),
            "malformed GGUF: {what} is {n}, more than the {} bytes left in the file can hold",
            self.left()
        );
        usize::try_from(n).with_context(|| format!("{what} {n} does not fit in memory"))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.count(1, &format!("length of {what}"))?;
        let mut buf = vec![0u8; n];
        self.r.read_exact(&mut buf).with_context(|| format!("reading {what} at byte {}", self.pos))?;
        self.pos += n as u64;
        String::from_utf8(buf).map_err(|_| anyhow::anyhow!("malformed GGUF: {what} is not UTF-8"))
    }

    fn value(&mut self, ty: u32, what: &str, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(u8::from_le_bytes(self.bytes(what)?)),
            1 => Value::I8(i8::from_le_bytes(self.bytes(what)?)),
            2 => Value::U16(u16::from_le_bytes(self.bytes(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.bytes(what)?)),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(i32::from_le_bytes(self.bytes(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.bytes(what)?)),
            7 => match u8::from_le_bytes(self.bytes(what)?) {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => bail!("malformed GGUF: {what} is a bool with byte {b}"),
            },
            8 => Value::String(self.string(what)?),
            9 => {
                ensure!(depth < MAX_ARRAY_DEPTH, "malformed GGUF: {what} nests arrays too deeply");
                let elem = self.u32(what)?;
                let min = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    t => bail!("malformed GGUF: {what} is an array of unknown value type {t}"),
                };
                let n = self.count(min, &format!("element count of {what}"))?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(elem, what, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(i64::from_le_bytes(self.bytes(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.bytes(what)?)),
            t => bail!("malformed GGUF: {what} has unknown value type {t}"),
        })
    }
}

impl Gguf {
    /// Reads the header (metadata and tensor infos) from the start of `r`, checking that
    /// every tensor's data lies inside the file.
    pub fn read<R: Read + Seek>(r: &mut R) -> Result<Self> {
        let len = r.seek(SeekFrom::End(0)).context("seeking to the end of the GGUF")?;
        r.seek(SeekFrom::Start(0)).context("seeking to the start of the GGUF")?;
        let mut c = Cursor { r, pos: 0, len };
        let magic: [u8; 4] = c.bytes("the magic")?;
        ensure!(&magic == MAGIC, "not a GGUF file: it starts with {magic:02x?}, not \"GGUF\"");
        let version = c.u32("the version")?;
        ensure!(version == 2 || version == 3, "GGUF version {version} is not supported (2 and 3 are)");
        // The smallest tensor info is 8 (name len) + 4 (n_dims) + 4 (type) + 8 (offset);
        // the smallest key/value is 8 (key len) + 4 (type) + 1.
        let n_tensors = c.count(24, "the tensor count")?;
        let n_kv = c.count(13, "the metadata count")?;
        let mut metadata: Vec<(String, Value)> = Vec::with_capacity(n_kv);
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key #{i}"))?;
            ensure!(
                !metadata.iter().any(|(k, _)| *k == key),
                "malformed GGUF: metadata key `{key}` appears twice"
            );
            let ty = c.u32(&key)?;
            let v = c.value(ty, &key, 0)?;
            metadata.push((key, v));
        }
        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= 1 << 20 => a,
                _ => bail!("malformed GGUF: general.alignment is {v:?}, not a power of two"),
            },
        };
        let mut raw = Vec::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = c.string(&format!("the name of tensor #{i}"))?;
            let n_dims = c.u32(&name)?;
            ensure!(
                (1..=MAX_DIMS as u32).contains(&n_dims),
                "malformed GGUF: tensor `{name}` has {n_dims} dims (1 to {MAX_DIMS} allowed)"
            );
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64(&name)?);
            }
            let ty_id = c.u32(&name)?;
            let ty = GgmlType::from_id(ty_id).with_context(|| format!("tensor `{name}`"))?;
            let offset = c.u64(&name)?;
            raw.push((name, dims, ty, offset));
        }
        let data_offset = c.pos.div_ceil(alignment) * alignment;
        let mut tensors = Vec::with_capacity(raw.len());
        for (name, dims, ty, offset) in raw {
            let n_elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| if d == 0 { None } else { acc.checked_mul(d) })
                .filter(|&n| n <= i64::MAX as u64)
                .with_context(|| format!("malformed GGUF: tensor `{name}` has dims {dims:?}"))?;
            let bs = ty.block_size() as u64;
            ensure!(
                dims[0] % bs == 0,
                "malformed GGUF: tensor `{name}` ({}) has rows of {} elements, not a multiple of the block size {bs}",
                ty.name(),
                dims[0]
            );
            let n_bytes = (n_elements / bs)
                .checked_mul(ty.type_size() as u64)
                .with_context(|| format!("malformed GGUF: tensor `{name}` is too large"))?;
            let file_offset = data_offset.checked_add(offset);
            ensure!(
                file_offset.and_then(|o| o.checked_add(n_bytes)).is_some_and(|end| end <= len),
                "malformed GGUF: tensor `{name}` ({n_bytes} bytes at data offset {offset}) lies outside the file ({len} bytes); the file may be truncated"
            );
            let file_offset = data_offset + offset;
            tensors.push(TensorInfo { name, dims, ty, file_offset, n_elements, n_bytes });
        }
        Ok(Gguf { version, metadata, tensors, alignment, data_offset, file_len: len })
    }

    /// The metadata value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The metadata string of `key`, or an error naming the key.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.get(key)
            .with_context(|| format!("the GGUF has no `{key}`"))?
            .as_str()
            .with_context(|| format!("GGUF `{key}` is not a string"))
    }

    /// Reads one tensor's raw data.
    pub fn read_data<R: Read + Seek>(&self, r: &mut R, t: &TensorInfo) -> Result<Vec<u8>> {
        let n = usize::try_from(t.n_bytes)
            .with_context(|| format!("tensor `{}` does not fit in memory", t.name))?;
        r.seek(SeekFrom::Start(t.file_offset)).with_context(|| format!("seeking to tensor `{}`", t.name))?;
        let mut buf = vec![0u8; n];
        r.read_exact(&mut buf).with_context(|| format!("reading tensor `{}`", t.name))?;
        Ok(buf)
    }
}

fn f16(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantizes `src` (whole blocks of `ty`) into `dst` (`src.len() / type_size *
/// block_size` values).
///
/// The formulas are ggml's reference dequantization (`dequantize_row_*` in
/// `ggml/src/ggml-quants.c` of ggml / llama.cpp), with the same f32 operations in the same
/// order as gguf-py's `gguf.quants` (`d * q`, `(d * sc) * q`, `(d * sc) * q - dmin * m`),
/// so the results are bit-identical to both:
///
/// - `Q8_0`: `y[i] = d * qs[i]` (`qs` signed bytes).
/// - `Q5_0`: `q = (qs[j] & 0xF | bit j of qh << 4) - 16` for `j < 16` and
///   `(qs[j] >> 4 | bit j+16 of qh << 4) - 16` for element `j + 16`; `y = d * q`.
/// - `Q4_K`: 8 sub-blocks of 32 with 6-bit scale `sc` and min `m` (`get_scale_min_k4`);
///   each 64 elements use 32 bytes of `qs`, low nibbles first:
///   `y = (d * sc) * (q & 0xF) - dmin * m`.
/// - `Q6_K`: two halves of 128 elements; in each, for `l < 32`,
///   `q1 = (ql[l] & 0xF | (qh[l] & 3) << 4) - 32` (element `l`),
///   `q2 = (ql[l+32] & 0xF | (qh[l] >> 2 & 3) << 4) - 32` (`l + 32`),
///   `q3 = (ql[l] >> 4 | (qh[l] >> 4 & 3) << 4) - 32` (`l + 64`),
///   `q4 = (ql[l+32] >> 4 | (qh[l] >> 6) << 4) - 32` (`l + 96`), each times
///   `d * scales[l / 16 + 2k]` for `q(k+1)`.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    let (bs, ts) = (ty.block_size(), ty.type_size());
    ensure!(
        src.len().is_multiple_of(ts) && src.len() / ts * bs == dst.len(),
        "dequantize {}: {} bytes do not make {} values",
        ty.name(),
        src.len(),
        dst.len()
    );
    let blocks = src.chunks_exact(ts).zip(dst.chunks_exact_mut(bs));
    match ty {
        GgmlType::F32 => blocks.for_each(|(b, y)| dequantize_f32(b, y)),
        GgmlType::F16 => blocks.for_each(|(b, y)| dequantize_f16(b, y)),
        GgmlType::Q8_0 => blocks.for_each(|(b, y)| dequantize_q8_0(b, y)),
        GgmlType::Q5_0 => blocks.for_each(|(b, y)| dequantize_q5_0(b, y)),
        GgmlType::Q4K => blocks.for_each(|(b, y)| dequantize_q4_k(b, y)),
        GgmlType::Q6K => blocks.for_each(|(b, y)| dequantize_q6_k(b, y)),
    }
    Ok(())
}

/// One `F32` value: its 4 little-endian bytes.
fn dequantize_f32(b: &[u8], y: &mut [f32]) {
    y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
}

/// One `F16` value, widened.
fn dequantize_f16(b: &[u8], y: &mut [f32]) {
    y[0] = f16(b, 0);
}

/// One `Q8_0` block (32 values): `y[i] = d * qs[i]`.
fn dequantize_q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16(b, 0);
    for (yi, &q) in y.iter_mut().zip(&b[2..34]) {
        *yi = (q as i8) as f32 * d;
    }
}

/// One `Q5_0` block (32 values): low nibbles plus a high bit each, minus 16, times `d`.
fn dequantize_q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for j in 0..16 {
        let h0 = ((qh >> j) & 1) as u8;
        let h1 = ((qh >> (j + 16)) & 1) as u8;
        let x0 = ((qs[j] & 0x0F) | (h0 << 4)) as i32 - 16;
        let x1 = ((qs[j] >> 4) | (h1 << 4)) as i32 - 16;
        y[j] = d * x0 as f32;
        y[j + 16] = d * x1 as f32;
    }
}

/// One `Q4_K` block (256 values): 8 sub-blocks with a 6-bit scale and min each.
fn dequantize_q4_k(b: &[u8], y: &mut [f32]) {
    let d = f16(b, 0);
    let dmin = f16(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (k, (q, y)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * k, scales);
        let (sc2, m2) = scale_min_k4(2 * k + 1, scales);
        let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
        for l in 0..32 {
            y[l] = d1 * (q[l] & 0x0F) as f32 - min1;
            y[l + 32] = d2 * (q[l] >> 4) as f32 - min2;
        }
    }
}

/// One `Q6_K` block (256 values): two halves of 128, 6-bit values with `i8` scales.
fn dequantize_q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16(b, 208);
    for half in 0..2 {
        let ql = &b[64 * half..64 * half + 64];
        let qh = &b[128 + 32 * half..128 + 32 * half + 32];
        let sc = &b[192 + 8 * half..192 + 8 * half + 8];
        let y = &mut y[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | ((qh[l] >> 6) << 4)) as i32 - 32;
            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` (0..8) of a
/// `Q4_K`/`Q5_K` block.
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// f32 to bf16 bits with round-to-nearest-even, exactly as the reference converter
/// (`gguf_to_safetensors.py`, numpy `uint32` arithmetic, wrapping):
/// `(u + ((u >> 16) & 1) + 0x7FFF) >> 16`. NaNs are not special-cased (a NaN whose
/// payload is only in the low bits can round to infinity, as in the Python).
pub fn f32_to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    (u.wrapping_add(((u >> 16) & 1) + 0x7FFF) >> 16) as u16
}

/// Dequantizes a whole tensor's data and returns it as little-endian bf16 bytes.
pub fn to_bf16_bytes(ty: GgmlType, src: &[u8]) -> Result<Vec<u8>> {
    const CHUNK_BLOCKS: usize = 1024;
    let (bs, ts) = (ty.block_size(), ty.type_size());
    ensure!(src.len().is_multiple_of(ts), "{} data of {} bytes is not whole blocks", ty.name(), src.len());
    let mut out = Vec::with_capacity(src.len() / ts * bs * 2);
    let mut buf = vec![0f32; CHUNK_BLOCKS * bs];
    for chunk in src.chunks(CHUNK_BLOCKS * ts) {
        let y = &mut buf[..chunk.len() / ts * bs];
        dequantize(ty, chunk, y)?;
        out.extend(y.iter().flat_map(|&v| f32_to_bf16(v).to_le_bytes()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Python formula evaluated with u64 and masked, as numpy's uint32 wraps.
    fn python(u: u32) -> u16 {
        let u = u as u64;
        let r = ((u >> 16) & 1) + 0x7FFF;
        (((u + r) & 0xFFFF_FFFF) >> 16) as u16
    }

    #[test]
    fn bf16_rounding_matches_python() {
        let cases: &[(u32, u16)] = &[
            (0x0000_0000, 0x0000),
            (0x8000_0000, 0x8000),
            (0x3F80_0000, 0x3F80), // 1.0
            (0x3F80_7FFF, 0x3F80), // below half: down
            (0x3F80_8000, 0x3F80), // tie, even: stays
            (0x3F81_8000, 0x3F82), // tie, odd: up to even
            (0x3F80_8001, 0x3F81), // above half: up
            (0x7F7F_FFFF, 0x7F80), // max finite rounds to inf
            (0x7F80_0000, 0x7F80), // inf
            (0xFF80_0000, 0xFF80), // -inf
            (0x7FC0_0000, 0x7FC0), // qNaN
            (0x0000_0001, 0x0000), // smallest subnormal
            (0x0000_8000, 0x0000), // tie at zero: even
            (0x0001_8000, 0x0002), // tie, odd
            (0xFFFF_FFFF, 0x0000), // wraps, as numpy uint32 does
        ];
        for &(u, want) in cases {
            assert_eq!(f32_to_bf16(f32::from_bits(u)), want, "{u:#010x}");
            assert_eq!(python(u), want, "{u:#010x}");
        }
        let mut s = 0x9E37_79B9u32;
        for _ in 0..100_000 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            assert_eq!(f32_to_bf16(f32::from_bits(s)), python(s), "{s:#010x}");
        }
    }

    #[test]
    fn scale_min_unpacking() {
        // Sub-blocks 0..4: low 6 bits of bytes 0..4 (scales) and 4..8 (mins); 4..8: nibbles of
        // bytes 8..12 plus the top two bits of bytes 0..8.
        let q = [0xC1, 0x02, 0x03, 0x04, 0x45, 0x06, 0x07, 0x08, 0x9A, 0x0B, 0x0C, 0x0D];
        assert_eq!(scale_min_k4(0, &q), (1, 5));
        assert_eq!(scale_min_k4(3, &q), (4, 8));
        // j = 4: sc = (0x9A & 0xF) | (0xC1 >> 6) << 4 = 0xA | 0x30; m = 0x9 | (0x45 >> 6) << 4 = 0x19.
        assert_eq!(scale_min_k4(4, &q), (0x3A, 0x19));
    }
}
