//! `fetch-model`: the hub cache lookup (library and binary, no network), the GGUF reader
//! and dequantization on hand-built files (values checked against the ggml formulas by
//! hand), malformed GGUFs (errors, never panics), the safetensors writer, the tokenizer
//! builder, and, when the real inputs are on this machine, the generated tokenizer
//! against the real checkpoint's.

use shardlm_client::fetch;
use shardlm_client::fetch::gguf::{self, f32_to_bf16, GgmlType, Gguf, Value};
use shardlm_client::fetch::tokenizer::GgufTokenizer;
use shardlm_model::hub_cache;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::Command;

// ---------------------------------------------------------------------------------------
// A tiny GGUF writer.

enum Kv {
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(&'static str),
    Strs(Vec<String>),
    I32s(Vec<i32>),
    U64(u64),
}

struct T {
    name: &'static str,
    dims: Vec<u64>,
    ty: u32,
    data: Vec<u8>,
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

fn put_kv(b: &mut Vec<u8>, key: &str, v: &Kv) {
    put_str(b, key);
    match v {
        Kv::U32(x) => {
            b.extend(4u32.to_le_bytes());
            b.extend(x.to_le_bytes());
        }
        Kv::I32(x) => {
            b.extend(5u32.to_le_bytes());
            b.extend(x.to_le_bytes());
        }
        Kv::F32(x) => {
            b.extend(6u32.to_le_bytes());
            b.extend(x.to_le_bytes());
        }
        Kv::Bool(x) => {
            b.extend(7u32.to_le_bytes());
            b.push(*x as u8);
        }
        Kv::Str(s) => {
            b.extend(8u32.to_le_bytes());
            put_str(b, s);
        }
        Kv::Strs(v) => {
            b.extend(9u32.to_le_bytes());
            b.extend(8u32.to_le_bytes());
            b.extend((v.len() as u64).to_le_bytes());
            for s in v {
                put_str(b, s);
            }
        }
        Kv::I32s(v) => {
            b.extend(9u32.to_le_bytes());
            b.extend(5u32.to_le_bytes());
            b.extend((v.len() as u64).to_le_bytes());
            for x in v {
                b.extend(x.to_le_bytes());
            }
        }
        Kv::U64(x) => {
            b.extend(10u32.to_le_bytes());
            b.extend(x.to_le_bytes());
        }
    }
}

/// A GGUF v3 file; tensor data aligned to `align` (32 unless `general.alignment` says).
fn gguf_file(kvs: &[(&str, Kv)], tensors: &[T]) -> Vec<u8> {
    let align = kvs
        .iter()
        .find_map(|(k, v)| match (k, v) {
            (&"general.alignment", Kv::U32(a)) => Some(*a as usize),
            _ => None,
        })
        .unwrap_or(32);
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((kvs.len() as u64).to_le_bytes());
    for (k, v) in kvs {
        put_kv(&mut b, k, v);
    }
    let mut off = 0usize;
    for t in tensors {
        put_str(&mut b, t.name);
        b.extend((t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(t.ty.to_le_bytes());
        b.extend((off as u64).to_le_bytes());
        off += t.data.len().div_ceil(align) * align;
    }
    b.resize(b.len().div_ceil(align) * align, 0);
    for t in tensors {
        b.extend(&t.data);
        b.resize(b.len().div_ceil(align) * align, 0);
    }
    b
}

fn f16(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_le_bytes()
}

fn read(bytes: &[u8]) -> anyhow::Result<Gguf> {
    Gguf::read(&mut Cursor::new(bytes))
}

fn dequant(g: &Gguf, bytes: &[u8], name: &str) -> Vec<f32> {
    let t = g.tensors.iter().find(|t| t.name == name).unwrap();
    let data = g.read_data(&mut Cursor::new(bytes), t).unwrap();
    let mut y = vec![0f32; t.n_elements as usize];
    gguf::dequantize(t.ty, &data, &mut y).unwrap();
    y
}

// ---------------------------------------------------------------------------------------
// Blocks with known contents, one per type.

/// Q8_0: d = 0.5, q = -16..16 -> y = q / 2.
fn q8_0_block() -> Vec<u8> {
    let mut b = f16(0.5).to_vec();
    b.extend((-16i8..16).map(|q| q as u8));
    b
}

/// Q5_0: d = 0.25; qh has bits 0, 17 and 31 set; qs[0] = 0x21, qs[1] = 0xF0, rest 0.
fn q5_0_block() -> Vec<u8> {
    let mut b = f16(0.25).to_vec();
    b.extend((1u32 | 1 << 17 | 1 << 31).to_le_bytes());
    let mut qs = [0u8; 16];
    qs[0] = 0x21;
    qs[1] = 0xF0;
    b.extend(qs);
    b
}

/// Q4_K: d = 2, dmin = 0.5; 6-bit scales/mins with top bits set for sub-block 4;
/// every qs byte 0x3A (low nibble 10, high nibble 3).
fn q4_k_block() -> Vec<u8> {
    let mut b = f16(2.0).to_vec();
    b.extend(f16(0.5));
    b.extend([0x41, 2, 3, 4, 0x85, 6, 7, 8, 0x21, 0x43, 0x65, 0x87]);
    b.extend([0x3A; 128]);
    b
}

/// Q6_K: ql all 0x21, qh all 0xE4 (2-bit fields 0, 1, 2, 3), scales 1, -1, 2, -2, ...,
/// d = 0.5.
fn q6_k_block() -> Vec<u8> {
    let mut b = vec![0x21u8; 128];
    b.extend([0xE4u8; 64]);
    b.extend((1..=8i8).flat_map(|s| [s as u8, (-s) as u8]));
    b.extend(f16(0.5));
    b
}

fn one_of_each() -> Vec<u8> {
    let f32_data: Vec<u8> = [1.5f32, -2.0, 0.0, 3.25].iter().flat_map(|x| x.to_le_bytes()).collect();
    let f16_data: Vec<u8> = [1.0f32, -0.5].iter().flat_map(|&x| f16(x)).collect();
    gguf_file(
        &[
            ("general.architecture", Kv::Str("qwen2")),
            ("general.alignment", Kv::U32(64)),
            ("some.flag", Kv::Bool(true)),
            ("some.eps", Kv::F32(1e-6)),
            ("some.list", Kv::Strs(vec!["a".into(), "b c".into(), "日本".into()])),
            ("some.ints", Kv::I32s(vec![1, -2, 3])),
            ("some.big", Kv::U64(1 << 40)),
        ],
        &[
            T { name: "f32", dims: vec![2, 2], ty: 0, data: f32_data },
            T { name: "f16", dims: vec![2], ty: 1, data: f16_data },
            T { name: "q8_0", dims: vec![32], ty: 8, data: q8_0_block() },
            T { name: "q5_0", dims: vec![32], ty: 6, data: q5_0_block() },
            T { name: "q4_k", dims: vec![256], ty: 12, data: q4_k_block() },
            T { name: "q6_k", dims: vec![256], ty: 14, data: q6_k_block() },
        ],
    )
}

#[test]
fn gguf_header_metadata_and_tensor_infos() {
    let bytes = one_of_each();
    let g = read(&bytes).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.alignment, 64);
    assert_eq!(g.data_offset % 64, 0);
    assert_eq!(g.get_str("general.architecture").unwrap(), "qwen2");
    assert_eq!(g.get("some.flag"), Some(&Value::Bool(true)));
    assert_eq!(g.get("some.eps"), Some(&Value::F32(1e-6)));
    assert_eq!(g.get("some.big").and_then(Value::as_u64), Some(1 << 40));
    let list: Vec<&str> =
        g.get("some.list").unwrap().as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(list, ["a", "b c", "日本"]);
    let ints: Vec<i64> =
        g.get("some.ints").unwrap().as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    assert_eq!(ints, [1, -2, 3]);
    let names: Vec<&str> = g.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["f32", "f16", "q8_0", "q5_0", "q4_k", "q6_k"]);
    let f32t = &g.tensors[0];
    assert_eq!((f32t.ty, f32t.n_elements, f32t.n_bytes), (GgmlType::F32, 4, 16));
    assert_eq!(f32t.file_offset, g.data_offset);
    assert_eq!(g.tensors[1].file_offset, g.data_offset + 64);
    let sizes: Vec<u64> = g.tensors.iter().map(|t| t.n_bytes).collect();
    assert_eq!(sizes, [16, 4, 34, 22, 144, 210]);
}

#[test]
fn dequantize_f32_f16_q8_0() {
    let bytes = one_of_each();
    let g = read(&bytes).unwrap();
    assert_eq!(dequant(&g, &bytes, "f32"), [1.5, -2.0, 0.0, 3.25]);
    assert_eq!(dequant(&g, &bytes, "f16"), [1.0, -0.5]);
    let want: Vec<f32> = (-16..16).map(|q| q as f32 * 0.5).collect();
    assert_eq!(dequant(&g, &bytes, "q8_0"), want);
}

#[test]
fn dequantize_q5_0() {
    let bytes = one_of_each();
    let g = read(&bytes).unwrap();
    let y = dequant(&g, &bytes, "q5_0");
    // Element j < 16: low nibble of qs[j] | bit j of qh << 4; element j + 16: high nibble
    // | bit j + 16. Minus 16, times d = 0.25.
    let mut want = [-4.0f32; 32]; // q = 0 -> (0 - 16) * 0.25
    want[0] = 0.25 * ((0x1 | 16) - 16) as f32; // qs[0] low = 1, bit 0 set: 17 - 16 = 1
    want[16] = 0.25 * (0x2 - 16) as f32; // qs[0] high = 2, bit 16 clear: -14
    want[1] = 0.25 * (0x0 - 16) as f32; // qs[1] low = 0, bit 1 clear: -16
    want[17] = 0.25 * ((0xF | 16) - 16) as f32; // qs[1] high = 15, bit 17 set: 15
    want[31] = 0.25 * (16 - 16) as f32; // qs[15] high = 0, bit 31 set: 0
    assert_eq!(y, want);
    assert_eq!((y[0], y[16], y[17], y[31]), (0.25, -3.5, 3.75, 0.0));
}

#[test]
fn dequantize_q4_k() {
    let bytes = one_of_each();
    let g = read(&bytes).unwrap();
    let y = dequant(&g, &bytes, "q4_k");
    // Sub-block j: scale sc_j, min m_j (get_scale_min_k4); q = 10 (low nibbles, even j) or
    // 3 (high nibbles, odd j); y = d * sc * q - dmin * m with d = 2, dmin = 0.5.
    // j < 4: sc = scales[j] & 63 = 1, 2, 3, 4; m = scales[j + 4] & 63 = 5, 6, 7, 8.
    // j = 4: sc = (0x21 & 15) | (0x41 >> 6) << 4 = 17; m = (0x21 >> 4) | (0x85 >> 6) << 4 = 34.
    // j = 5, 6, 7: sc = 3, 5, 7; m = 4, 6, 8 (no top bits).
    let per_sub = [
        2.0 * 1.0 * 10.0 - 0.5 * 5.0,   // 17.5
        2.0 * 2.0 * 3.0 - 0.5 * 6.0,    // 9
        2.0 * 3.0 * 10.0 - 0.5 * 7.0,   // 56.5
        2.0 * 4.0 * 3.0 - 0.5 * 8.0,    // 20
        2.0 * 17.0 * 10.0 - 0.5 * 34.0, // 323
        2.0 * 3.0 * 3.0 - 0.5 * 4.0,    // 16
        2.0 * 5.0 * 10.0 - 0.5 * 6.0,   // 97
        2.0 * 7.0 * 3.0 - 0.5 * 8.0,    // 38
    ];
    assert_eq!(per_sub, [17.5, 9.0, 56.5, 20.0, 323.0, 16.0, 97.0, 38.0]);
    for (i, v) in y.iter().enumerate() {
        assert_eq!(*v, per_sub[i / 32], "element {i}");
    }
}

#[test]
fn dequantize_q6_k() {
    let bytes = one_of_each();
    let g = read(&bytes).unwrap();
    let y = dequant(&g, &bytes, "q6_k");
    // ql = 0x21 (low 1, high 2); qh = 0xE4 (2-bit fields 0, 1, 2, 3) ->
    // q1 = 1 | 0 << 4 = 1, q2 = 1 | 1 << 4 = 17, q3 = 2 | 2 << 4 = 34, q4 = 2 | 3 << 4 = 50,
    // minus 32: -31, -15, 2, 18. Scales 1, -1, 2, -2, ..., 8, -8; d = 0.5.
    let scales = [1.0f32, -1.0, 2.0, -2.0, 3.0, -3.0, 4.0, -4.0, 5.0, -5.0, 6.0, -6.0, 7.0, -7.0, 8.0, -8.0];
    let q = [-31.0f32, -15.0, 2.0, 18.0];
    for (e, v) in y.iter().enumerate() {
        let (h, r) = (e / 128, e % 128);
        let (grp, l) = (r / 32, r % 32);
        let want = 0.5 * scales[8 * h + l / 16 + 2 * grp] * q[grp];
        assert_eq!(*v, want, "element {e}");
    }
    // A few by hand.
    assert_eq!(y[0], -15.5); // 0.5 * 1 * -31
    assert_eq!(y[16], 15.5); // 0.5 * -1 * -31
    assert_eq!(y[32], -15.0); // 0.5 * 2 * -15
    assert_eq!(y[64], 3.0); // 0.5 * 3 * 2
    assert_eq!(y[96], 36.0); // 0.5 * 4 * 18
    assert_eq!(y[128], -77.5); // 0.5 * 5 * -31
    assert_eq!(y[255], -72.0); // 0.5 * -8 * 18
}

#[test]
fn bf16_bytes_round_to_nearest_even() {
    // 1 + 2^-8 is a tie between bf16 1.0 and 1.0078125: even (1.0) wins; 1 + 3 * 2^-8 is a
    // tie that rounds up to the even 1.015625.
    let data: Vec<u8> =
        [1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -2.5f32].iter().flat_map(|x| x.to_le_bytes()).collect();
    let out = gguf::to_bf16_bytes(GgmlType::F32, &data).unwrap();
    let got: Vec<u16> = out.chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    assert_eq!(got, [0x3F80, 0x3F82, 0xC020]);
    assert_eq!(f32_to_bf16(1.0 + 1.0 / 256.0), 0x3F80);
}

// ---------------------------------------------------------------------------------------
// Malformed files.

fn header(n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(n_tensors.to_le_bytes());
    b.extend(n_kv.to_le_bytes());
    b
}

fn err(bytes: &[u8]) -> String {
    format!("{:#}", read(bytes).expect_err("must be an error"))
}

#[test]
fn malformed_headers_are_errors() {
    assert!(err(b"").contains("truncated"));
    assert!(err(b"GGU").contains("truncated"));
    assert!(err(b"GGML\x03\0\0\0").contains("not a GGUF"));
    let mut v1 = b"GGUF".to_vec();
    v1.extend(1u32.to_le_bytes());
    assert!(err(&v1).contains("version 1"));
    assert!(err(&header(u64::MAX, 0)).contains("tensor count"));
    assert!(err(&header(0, 1 << 40)).contains("metadata count"));
    // A string length past the end.
    let mut b = header(0, 1);
    b.extend(u64::MAX.to_le_bytes());
    b.extend([0u8; 16]);
    assert!(err(&b).contains("length of metadata key"));
    // An array with an absurd count.
    let mut b = header(0, 1);
    put_str(&mut b, "k");
    b.extend(9u32.to_le_bytes());
    b.extend(8u32.to_le_bytes());
    b.extend((1u64 << 62).to_le_bytes());
    assert!(err(&b).contains("element count"));
    // Unknown value type; bad bool; bad alignment.
    let mut b = header(0, 1);
    put_str(&mut b, "k");
    b.extend(99u32.to_le_bytes());
    assert!(err(&b).contains("unknown value type 99"));
    let mut b = header(0, 1);
    put_str(&mut b, "k");
    b.extend(7u32.to_le_bytes());
    b.push(2);
    assert!(err(&b).contains("bool"));
    let b = gguf_file(&[("general.alignment", Kv::I32(48))], &[]);
    assert!(err(&b).contains("alignment"));
}

fn one_tensor(dims: &[u64], ty: u32, data_len: usize) -> Vec<u8> {
    let mut b = header(1, 0);
    put_str(&mut b, "t");
    b.extend((dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend(d.to_le_bytes());
    }
    b.extend(ty.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.resize(b.len().div_ceil(32) * 32 + data_len, 0);
    b
}

#[test]
fn malformed_tensors_are_errors() {
    assert!(read(&one_tensor(&[4], 0, 16)).is_ok());
    assert!(err(&one_tensor(&[4], 0, 15)).contains("outside the file"));
    assert!(err(&one_tensor(&[u64::MAX, u64::MAX], 0, 16)).contains("dims"));
    assert!(err(&one_tensor(&[1 << 62, 4], 0, 16)).contains("dims"));
    assert!(err(&one_tensor(&[0], 0, 16)).contains("dims"));
    assert!(err(&one_tensor(&[1, 1, 1, 1, 1], 0, 16)).contains("5 dims"));
    assert!(err(&one_tensor(&[], 0, 16)).contains("0 dims"));
    assert!(err(&one_tensor(&[32], 2, 18)).contains("Q4_0"));
    assert!(err(&one_tensor(&[32], 99, 18)).contains("type 99"));
    assert!(err(&one_tensor(&[16], 8, 34)).contains("block size"));
    // A huge offset.
    let mut b = one_tensor(&[4], 0, 16);
    let off_at = 4 + 4 + 8 + 8 + 8 + 1 + 4 + 8 + 4;
    b[off_at..off_at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(err(&b).contains("outside the file"));
}

#[test]
fn every_truncation_and_many_corruptions_fail_cleanly() {
    let bytes = one_of_each();
    let g = read(&bytes).unwrap();
    let data_end = g.tensors.iter().map(|t| t.file_offset + t.n_bytes).max().unwrap() as usize;
    for cut in 0..data_end {
        assert!(read(&bytes[..cut]).is_err(), "a file cut at {cut} must not parse");
    }
    // Random byte changes: any result is fine as long as nothing panics, and a file that
    // still parses dequantizes.
    let mut s = 0x2545_F491u32;
    let mut rnd = || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        s
    };
    for _ in 0..3000 {
        let mut b = bytes.clone();
        for _ in 0..1 + rnd() % 3 {
            let i = rnd() as usize % b.len();
            b[i] = match rnd() % 3 {
                0 => rnd() as u8,
                1 => 0xFF,
                _ => b[i] ^ 0x80,
            };
        }
        if let Ok(g) = read(&b) {
            for t in &g.tensors {
                let data = g.read_data(&mut Cursor::new(&b), t).unwrap();
                gguf::to_bf16_bytes(t.ty, &data).unwrap();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// safetensors output and tokenizer.json.

#[test]
fn safetensors_file_reads_back() {
    let f32_data: Vec<u8> = (0..8).flat_map(|i| (i as f32 - 3.3).to_le_bytes()).collect();
    let bytes = gguf_file(
        &[],
        &[
            T {
                name: "token_embd.weight",
                dims: vec![32, 2],
                ty: 8,
                data: [q8_0_block(), q8_0_block()].concat(),
            },
            T { name: "blk.0.attn_q.bias", dims: vec![8], ty: 0, data: f32_data.clone() },
            T { name: "output.weight", dims: vec![256], ty: 12, data: q4_k_block() },
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, &bytes).unwrap();
    let g = read(&bytes).unwrap();
    let header = fetch::safetensors_header(&g, "m.gguf").unwrap();
    assert_eq!(header.len() % 8, 0);
    let text = String::from_utf8(header.clone()).unwrap();
    assert!(text.starts_with(
        r#"{"model.embed_tokens.weight":{"dtype":"BF16","shape":[2,32],"data_offsets":[0,128]},"#
    ));
    assert!(text.trim_end().ends_with(r#""__metadata__":{"format":"pt","source":"m.gguf"}}"#), "{text}");
    let out = dir.path().join("out.safetensors");
    fetch::write_safetensors_file(&g, &mut std::fs::File::open(&path).unwrap(), "m.gguf", &out).unwrap();
    let file = std::fs::read(&out).unwrap();
    assert_eq!(&file[8..8 + header.len()], &header[..]);
    let st = safetensors::SafeTensors::deserialize(&file).unwrap();
    let bf16 = |name: &str| -> Vec<u16> {
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::BF16);
        t.data().chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect()
    };
    assert_eq!(st.tensor("model.embed_tokens.weight").unwrap().shape(), [2, 32]);
    let want: Vec<u16> = (0..2).flat_map(|_| (-16..16).map(|q| f32_to_bf16(q as f32 * 0.5))).collect();
    assert_eq!(bf16("model.embed_tokens.weight"), want);
    let want: Vec<u16> = (0..8).map(|i| f32_to_bf16(i as f32 - 3.3)).collect();
    assert_eq!(bf16("model.layers.0.self_attn.q_proj.bias"), want);
    assert_eq!(bf16("lm_head.weight")[128], f32_to_bf16(323.0));
}

fn tiny_tokenizer_gguf() -> Vec<u8> {
    // Byte-level tokens: every byte's printable form, then merges and special tokens.
    let mut tokens: Vec<String> = byte_level_alphabet();
    let merges = ["h e", "l l", "he ll", "hell o", "Ġ w"];
    for m in merges {
        tokens.push(m.replace(' ', ""));
    }
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>"];
    let mut types = vec![1i32; tokens.len()];
    for (i, s) in specials.iter().enumerate() {
        tokens.push(s.to_string());
        types.push(if i == 3 { 4 } else { 3 });
    }
    tokens.push("[PAD0]".into());
    types.push(5);
    let n = tokens.len();
    gguf_file(
        &[
            ("tokenizer.ggml.model", Kv::Str("gpt2")),
            ("tokenizer.ggml.pre", Kv::Str("qwen2")),
            ("tokenizer.ggml.tokens", Kv::Strs(tokens)),
            ("tokenizer.ggml.token_type", Kv::I32s(types)),
            ("tokenizer.ggml.merges", Kv::Strs(merges.iter().map(|s| s.to_string()).collect())),
            ("tokenizer.ggml.eos_token_id", Kv::U32(n as u32 - 3)),
            ("tokenizer.chat_template", Kv::Str("{{ messages }}")),
        ],
        &[],
    )
}

/// GPT-2's byte-to-unicode table, in byte order.
fn byte_level_alphabet() -> Vec<String> {
    let mut out = Vec::new();
    let mut extra = 0u32;
    for b in 0u32..256 {
        let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let c = if printable {
            b
        } else {
            extra += 1;
            255 + extra
        };
        out.push(char::from_u32(c).unwrap().to_string());
    }
    out
}

#[test]
fn tokenizer_json_from_gguf_loads_and_encodes() {
    let bytes = tiny_tokenizer_gguf();
    let g = read(&bytes).unwrap();
    let tok = GgufTokenizer::from_gguf(&g).unwrap();
    assert_eq!(tok.token(tok.eos_id), Some("<|im_end|>"));
    assert_eq!(tok.chat_template.as_deref(), Some("{{ messages }}"));
    let json = tok.to_json().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let added = v["added_tokens"].as_array().unwrap();
    assert_eq!(added.len(), 4, "control and user-defined tokens only");
    assert_eq!(added[3]["content"], "<tool_call>");
    assert_eq!(added[3]["special"], false);
    assert_eq!(added[0]["special"], true);
    assert_eq!(v["model"]["vocab"].as_object().unwrap().len(), tok.tokens.len());
    assert_eq!(v["model"]["merges"][2], serde_json::json!(["he", "ll"]));
    let t = tokenizers::Tokenizer::from_bytes(&json).unwrap();
    let ids = |s: &str| t.encode(s, false).unwrap().get_ids().to_vec();
    let id = |s: &str| t.token_to_id(s).unwrap();
    assert_eq!(ids("hello"), [id("hello")]);
    assert_eq!(ids("hello world"), [id("hello"), id("Ġw"), id("o"), id("r"), id("l"), id("d")]);
    assert_eq!(ids("<|im_start|>hi<|im_end|>"), [id("<|im_start|>"), id("h"), id("i"), id("<|im_end|>")]);
    assert_eq!(t.decode(&ids("hello world"), false).unwrap(), "hello world");
}

#[test]
fn tokenizer_rejects_other_models() {
    let g = read(&gguf_file(&[("tokenizer.ggml.model", Kv::Str("llama"))], &[])).unwrap();
    assert!(format!("{:#}", GgufTokenizer::from_gguf(&g).unwrap_err()).contains("gpt2"));
    let g = read(&gguf_file(
        &[("tokenizer.ggml.model", Kv::Str("gpt2")), ("tokenizer.ggml.pre", Kv::Str("llama-bpe"))],
        &[],
    ))
    .unwrap();
    assert!(format!("{:#}", GgufTokenizer::from_gguf(&g).unwrap_err()).contains("qwen2"));
}

// ---------------------------------------------------------------------------------------
// The hub cache, through the library and the binary (no network).

const HASH: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678";

fn fake_hub_cache(cache: &Path, id: &str) -> PathBuf {
    let repo = cache.join(format!("models--{}", id.replace('/', "--")));
    let snap = repo.join("snapshots").join(HASH);
    std::fs::create_dir_all(&snap).unwrap();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::write(snap.join(f), b"{}").unwrap();
    }
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), HASH).unwrap();
    snap
}

fn client(hub_cache: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_shardlm-client"));
    c.arg("fetch-model").env("HF_HUB_CACHE", hub_cache).env_remove("HF_HOME").env("HF_HUB_OFFLINE", "1");
    c
}

fn ready_line(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "failed: {stderr}");
    stdout.lines().last().unwrap_or_default().to_string()
}

fn fails(c: &mut Command, must: &[&str]) {
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must fail: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    for m in must {
        assert!(errors[0].contains(m), "error should mention `{m}`: {stderr}");
    }
}

#[test]
fn hub_cache_lookup_without_network() {
    let dir = tempfile::tempdir().unwrap();
    let snap = fake_hub_cache(dir.path(), fetch::DEFAULT_ID);
    assert_eq!(hub_cache::resolve_in(dir.path(), fetch::DEFAULT_ID, None).unwrap(), Some(snap.clone()));
    assert_eq!(hub_cache::resolve_in(dir.path(), "Other/Model", None).unwrap(), None);
    // Through the binary, with HF_HUB_CACHE.
    let out = client(dir.path()).args(["--route", "hub-cache"]).output().unwrap();
    assert_eq!(ready_line(&out), format!("ready: {}", snap.display()));
    // The auto route stops at the cache too (and would not reach the network: offline).
    let out = client(dir.path()).output().unwrap();
    assert_eq!(ready_line(&out), format!("ready: {}", snap.display()));
    // Another id.
    let other = fake_hub_cache(dir.path(), "Org/Model-1.5");
    let out = client(dir.path()).args(["Org/Model-1.5", "--route", "hub-cache"]).output().unwrap();
    assert_eq!(ready_line(&out), format!("ready: {}", other.display()));
}

#[test]
fn hub_cache_misses_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    fails(client(dir.path()).args(["--route", "hub-cache"]), &["not in the hub cache"]);
    // Incomplete snapshot: no weights.
    let snap = fake_hub_cache(dir.path(), "Org/Model");
    std::fs::remove_file(snap.join("model.safetensors")).unwrap();
    fails(client(dir.path()).args(["Org/Model", "--route", "hub-cache"]), &["not in the hub cache"]);
    // A damaged ref.
    std::fs::write(dir.path().join("models--Org--Model/refs/main"), "garbage").unwrap();
    fails(client(dir.path()).args(["Org/Model", "--route", "hub-cache"]), &["garbage", "not a commit hash"]);
    fails(client(dir.path()).args(["not-an-id", "--route", "hub-cache"]), &["org/name"]);
    // The GGUF route exists for one model, and one revision, only.
    fails(
        client(dir.path()).args(["Org/Model", "--route", "gguf"]),
        &["only for Qwen/Qwen2.5-Coder-0.5B-Instruct"],
    );
    fails(client(dir.path()).args(["--route", "gguf", "--revision", "v1"]), &["main revision"]);
    // Auto, offline, another id: the hub is skipped and there is no fallback.
    fails(client(dir.path()).args(["Org/Other"]), &["HF_HUB_OFFLINE", "only for"]);
}

#[test]
fn existing_output_is_reused() {
    let cache = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    std::fs::write(out.path().join("model.safetensors"), b"x").unwrap();
    for route in ["gguf", "auto"] {
        let o = client(cache.path()).args(["--route", route, "--out"]).arg(out.path()).output().unwrap();
        assert_eq!(ready_line(&o), format!("ready: {}", out.path().display()));
        assert!(String::from_utf8_lossy(&o.stderr).contains("already there"));
    }
}

// ---------------------------------------------------------------------------------------
// The hub route against a local stand-in for huggingface.co (HF_ENDPOINT).

/// Serves `/api/models/<id>/revision/main` (the listing) and `/<id>/resolve/main/<file>`
/// (with `Range`, and the headers hf-hub reads: X-Repo-Commit, ETag, Content-Range) on a
/// loopback port, one request per connection, until the test process ends.
fn fake_hub(id: &'static str, files: &'static [(&'static str, &'static [u8])]) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut range = None;
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                if let Some(r) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    let (a, b) = r.trim().split_once('-').unwrap();
                    range = Some((a.parse::<usize>().unwrap(), b.parse::<usize>().ok()));
                }
            }
            let listing = format!("/api/models/{id}/revision/main");
            let resolve = format!("/{id}/resolve/main/");
            let (status, headers, body): (&str, String, Vec<u8>) = if path == listing {
                let siblings: Vec<String> =
                    files.iter().map(|(f, _)| format!("{{\"rfilename\":\"{f}\"}}")).collect();
                let body = format!("{{\"sha\":\"{HASH}\",\"siblings\":[{}]}}", siblings.join(","));
                ("200 OK", "Content-Type: application/json\r\n".into(), body.into_bytes())
            } else if let Some((_, data)) =
                path.strip_prefix(&resolve).and_then(|f| files.iter().find(|(n, _)| *n == f))
            {
                let (a, b) = range.unwrap_or((0, None));
                let b = b.unwrap_or(data.len() - 1).min(data.len() - 1);
                let headers = format!(
                    "X-Repo-Commit: {HASH}\r\nETag: \"etag-{}\"\r\nContent-Range: bytes {a}-{b}/{}\r\n",
                    data.len(),
                    data.len()
                );
                ("206 Partial Content", headers, data[a..=b].to_vec())
            } else {
                ("404 Not Found", String::new(), Vec::new())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&body);
        }
    });
    format!("http://{addr}")
}

fn hub_client(hub_cache: &Path, endpoint: &str) -> Command {
    let mut c = client(hub_cache);
    c.env_remove("HF_HUB_OFFLINE").env("HF_ENDPOINT", endpoint);
    for v in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
        c.env_remove(v);
    }
    c
}

#[test]
fn hub_route_fills_the_hub_cache() {
    static FILES: &[(&str, &[u8])] = &[
        ("config.json", b"{\"model_type\": \"qwen2\"}"),
        ("tokenizer.json", b"{}"),
        ("model.safetensors", b"weights"),
        ("README.md", b"not wanted"),
    ];
    let endpoint = fake_hub("Org/Hubbed", FILES);
    let cache = tempfile::tempdir().unwrap();
    let out = hub_client(cache.path(), &endpoint).args(["Org/Hubbed", "--route", "hub"]).output().unwrap();
    let snap = cache.path().join("models--Org--Hubbed/snapshots").join(HASH);
    assert_eq!(ready_line(&out), format!("ready: {}", snap.display()));
    for (f, data) in &FILES[..3] {
        assert_eq!(std::fs::read(snap.join(f)).unwrap(), *data, "{f}");
    }
    assert!(!snap.join("README.md").exists());
    assert_eq!(
        std::fs::read_to_string(cache.path().join("models--Org--Hubbed/refs/main")).unwrap().trim(),
        HASH
    );
    // Next time the hub cache has it, with no hub at all.
    let out = client(cache.path()).args(["Org/Hubbed", "--route", "hub-cache"]).output().unwrap();
    assert_eq!(ready_line(&out), format!("ready: {}", snap.display()));
    // A repo without weights is refused.
    static NO_WEIGHTS: &[(&str, &[u8])] = &[("config.json", b"{}"), ("tokenizer.json", b"{}")];
    let endpoint = fake_hub("Org/Empty", NO_WEIGHTS);
    fails(hub_client(cache.path(), &endpoint).args(["Org/Empty", "--route", "hub"]), &["safetensors"]);
}

#[test]
fn unreachable_hub_fails_fast_with_one_line() {
    let cache = tempfile::tempdir().unwrap();
    // Nothing listens on the discard port of loopback: connection refused.
    let t = std::time::Instant::now();
    fails(
        hub_client(cache.path(), "http://127.0.0.1:9").args(["Org/Model", "--route", "hub"]),
        &["cannot reach"],
    );
    assert!(t.elapsed().as_secs() < 30);
}

// ---------------------------------------------------------------------------------------
// The real tokenizer (only where the real inputs are on this machine).

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

const SAMPLES: &[&str] = &[
    "Hello, world!",
    "  leading spaces and trailing   ",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "fn main() { println!(\"{}\", 1_000_000u64 >> 3); }\r\n\t// done",
    "请用Python写一个快速排序。",
    "日本語のテキストと한국어 텍스트",
    "emoji: 🦀🚀👍🏽 and ZWJ 👨‍👩‍👧",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|fim_prefix|>def f(<|fim_suffix|>)<|fim_middle|><tool_call>{\"a\": 1}</tool_call><|endoftext|>",
    "I'm sure they'll say it's 12345.678 — isn't it?",
    "caf\u{e9} vs cafe\u{301}",
];

fn same_ids(a: &tokenizers::Tokenizer, b: &tokenizers::Tokenizer, what: &str) {
    for s in SAMPLES {
        for special in [false, true] {
            let x = a.encode(*s, special).unwrap();
            let y = b.encode(*s, special).unwrap();
            assert_eq!(x.get_ids(), y.get_ids(), "{what}: `{s}` (add_special_tokens {special})");
        }
        let ids = a.encode(*s, false).unwrap().get_ids().to_vec();
        assert_eq!(a.decode(&ids, false).unwrap(), b.decode(&ids, false).unwrap(), "{what}: decode `{s}`");
    }
}

#[test]
fn real_tokenizer_matches_the_checkpoint() {
    let reference = shared().join("models/qwen2.5-coder-0.5b-instruct/tokenizer.json");
    let Ok(model_dir) = std::env::var("SHARDLM_REAL_MODEL_DIR") else {
        eprintln!("skipped: set SHARDLM_REAL_MODEL_DIR (and have ../shared) to compare tokenizers");
        return;
    };
    if !reference.is_file() {
        eprintln!("skipped: no {}", reference.display());
        return;
    }
    let want = tokenizers::Tokenizer::from_file(&reference).unwrap();
    let got = tokenizers::Tokenizer::from_file(Path::new(&model_dir).join("tokenizer.json")).unwrap();
    same_ids(&want, &got, "SHARDLM_REAL_MODEL_DIR/tokenizer.json");
    // And a tokenizer.json built here from the GGUF, if fetch-model has it in its work dir.
    let gguf_path = fetch::shardlm_cache_dir().unwrap().join("gguf-work").join(fetch::GGUF_NAME);
    if !gguf_path.is_file() {
        eprintln!("skipped: no {} to build a tokenizer from", gguf_path.display());
        return;
    }
    let g = Gguf::read(&mut std::io::BufReader::new(std::fs::File::open(&gguf_path).unwrap())).unwrap();
    let json = GgufTokenizer::from_gguf(&g).unwrap().to_json().unwrap();
    let built = tokenizers::Tokenizer::from_bytes(&json).unwrap();
    same_ids(&want, &built, "tokenizer.json built from the GGUF");
    let a: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let b: serde_json::Value = serde_json::from_slice(&std::fs::read(&reference).unwrap()).unwrap();
    assert!(a == b, "tokenizer.json built from the GGUF is not JSON-equal to the checkpoint's");
}
