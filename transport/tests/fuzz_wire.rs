//! Fuzz/property campaigns over what a peer controls on the wire (issue 14): the frame
//! decoder and the application handshake. The default suite runs a short seeded
//! campaign; `SHARDLM_LONG_TESTS=1` runs 10^7 frame streams and 10^6 hellos, e.g.
//!
//! ```text
//! SHARDLM_LONG_TESTS=1 cargo test --release -p shardlm-transport --test fuzz_wire -- --nocapture
//! ```
//!
//! Each case derives its input from its number alone; a failure prints the number.

#[path = "../../testdata/testkit/src/campaign.rs"]
mod campaign;

use campaign::{kind, CaseResult, Outcome, PeakAlloc};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shardlm_transport::frame::{
    FrameDecoder, FrameEncoder, FrameHeader, FrameLimits, Reassembler, HEADER_LEN,
};
use shardlm_transport::handshake::{
    check_hello, client_handshake, server_handshake, ClientHello, MaterialBinding, Mismatch, Request,
    ServerHello, ServerInfo, SessionParams, SessionSlots, PROTOCOL_VERSION,
};
use shardlm_transport::{memory, Channel, Lane, TransportError};
use std::time::Duration;

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

fn rng_for(campaign: u64, case: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(campaign.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ case)
}

fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    if n == 0 {
        0
    } else {
        rng.next_u64() % n
    }
}

fn chance(rng: &mut ChaCha8Rng, percent: u64) -> bool {
    below(rng, 100) < percent
}

fn random_bytes(rng: &mut ChaCha8Rng, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill_bytes(&mut v);
    v
}

// ---------------------------------------------------------------------------------------
// Frame decoder
// ---------------------------------------------------------------------------------------

/// Where a frame sits in the encoded stream.
#[derive(Clone, Copy)]
struct FrameAt {
    header: usize,
    end: usize,
    message: usize,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mutation {
    None,
    HeaderBitFlip,
    WrongSeq,
    OversizedLen,
    MoreToggle,
    UnknownFlags,
    Truncate,
    Garbage,
    PayloadBitFlip,
    GarbageTail,
    Random,
}

/// What a decoder made of a stream: the messages, and how it stopped.
#[derive(Debug, PartialEq)]
struct Decoded {
    messages: Vec<Vec<u8>>,
    error: Option<String>,
}

/// Feeds `wire` in the given pieces to a [`FrameDecoder`], taking every message out
/// after each piece, until the end or the first error.
fn decode_pieces(
    wire: &[u8],
    cuts: &[usize],
    lane: Lane,
    limits: FrameLimits,
) -> Result<(Decoded, bool), String> {
    let mut dec = FrameDecoder::new(lane, limits);
    let mut messages = Vec::new();
    let mut from = 0;
    for &to in cuts.iter().chain(std::iter::once(&wire.len())) {
        dec.push(&wire[from..to]);
        from = to;
        loop {
            match dec.next_message() {
                Ok(Some(m)) => messages.push(m),
                Ok(None) => break,
                Err(TransportError::Malformed { lane: l, problem }) if l == lane => {
                    return Ok((Decoded { messages, error: Some(problem) }, false));
                }
                Err(e) => return Err(format!("untyped or wrong-lane rejection: {e:?}")),
            }
        }
    }
    Ok((Decoded { messages, error: None }, dec.at_message_boundary()))
}

/// The QUIC reader's way (`read_lane`): header, `begin_frame` (which reserves the frame
/// before its payload arrives), payload, `finish_frame`. Must agree with the decoder.
fn decode_like_quic(wire: &[u8], lane: Lane, limits: FrameLimits) -> Result<Decoded, String> {
    let mut r = Reassembler::new(lane, limits);
    let mut messages = Vec::new();
    let mut pos = 0;
    while let Some(raw) = wire.get(pos..pos + HEADER_LEN) {
        let h = FrameHeader::decode(raw.try_into().expect("HEADER_LEN bytes"));
        pos += HEADER_LEN;
        match r.begin_frame(&h) {
            Ok(()) => {}
            Err(TransportError::Malformed { lane: l, problem }) if l == lane => {
                return Ok(Decoded { messages, error: Some(problem) })
            }
            Err(e) => return Err(format!("untyped or wrong-lane rejection: {e:?}")),
        }
        let take = r.frame_remaining().min(wire.len() - pos);
        let took = r.extend(&wire[pos..pos + take]);
        if took != take {
            return Err(format!("extend took {took} of {take} bytes"));
        }
        pos += take;
        if r.frame_remaining() > 0 {
            break; // truncated inside the payload
        }
        if let Some(m) = r.finish_frame() {
            messages.push(m);
        }
    }
    Ok(Decoded { messages, error: None })
}

fn frame_case(i: u64) -> CaseResult {
    let mut rng = rng_for(1, i);
    let lane = match below(&mut rng, 4) {
        0 => Lane::Control,
        1 => Lane::Openings,
        2 => Lane::Ot,
        _ => Lane::Masked(below(&mut rng, 256) as u8),
    };
    let frame_range = if chance(&mut rng, 80) { 48 } else { 300 };
    let enc_max_frame = 1 + below(&mut rng, frame_range) as u32;
    // The receiver may allow larger frames than the sender cuts (never smaller).
    let max_frame = enc_max_frame + if chance(&mut rng, 30) { below(&mut rng, 64) as u32 } else { 0 };
    let max_message = 1 + below(&mut rng, 1024);
    let limits = FrameLimits { max_frame, max_message };

    // Messages within the message cap; sizes biased to 0 and frame multiples.
    let n_messages = below(&mut rng, 6) as usize;
    let mut sent = Vec::with_capacity(n_messages);
    for _ in 0..n_messages {
        let cap = max_message.min(200);
        let n = match below(&mut rng, 4) {
            0 => 0,
            1 => ((1 + below(&mut rng, 4)) * u64::from(enc_max_frame)).min(cap),
            _ => below(&mut rng, cap + 1),
        } as usize;
        sent.push(random_bytes(&mut rng, n));
    }
    let mut enc = FrameEncoder::new(enc_max_frame);
    let mut wire = Vec::new();
    let mut frames = Vec::new();
    for (m, payload) in sent.iter().enumerate() {
        let bytes = enc.encode_to_vec(payload);
        let mut at = wire.len();
        let end = at + bytes.len();
        while at < end {
            let len =
                u32::from_le_bytes(bytes[at - wire.len() + 8..at - wire.len() + 12].try_into().unwrap());
            frames.push(FrameAt { header: at, end: at + HEADER_LEN + len as usize, message: m });
            at += HEADER_LEN + len as usize;
        }
        wire.extend_from_slice(&bytes);
    }
    let original = wire.clone();

    let mutation = if frames.is_empty() {
        if chance(&mut rng, 50) {
            Mutation::None
        } else {
            Mutation::Random
        }
    } else {
        match below(&mut rng, 20) {
            0..=4 => Mutation::None,
            5 => Mutation::HeaderBitFlip,
            6 => Mutation::WrongSeq,
            7 | 8 => Mutation::OversizedLen,
            9 => Mutation::MoreToggle,
            10 => Mutation::UnknownFlags,
            11 | 12 => Mutation::Truncate,
            13 | 14 => Mutation::Garbage,
            15 => Mutation::PayloadBitFlip,
            16 => Mutation::GarbageTail,
            _ => Mutation::Random,
        }
    };
    let k = below(&mut rng, frames.len() as u64) as usize;
    let frame = frames.get(k).copied();
    match (mutation, frame) {
        (Mutation::None, _) => {}
        (Mutation::HeaderBitFlip, Some(f)) => {
            let bit = below(&mut rng, (HEADER_LEN * 8) as u64) as usize;
            wire[f.header + bit / 8] ^= 1 << (bit % 8);
        }
        (Mutation::WrongSeq, Some(f)) => {
            let seq = u64::from_le_bytes(wire[f.header..f.header + 8].try_into().unwrap());
            let wrong = match below(&mut rng, 3) {
                0 => seq + 1 + below(&mut rng, 4),
                1 => seq.wrapping_sub(1 + below(&mut rng, 4)),
                _ => rng.next_u64(),
            };
            let wrong = if wrong == seq { seq ^ 1 } else { wrong };
            wire[f.header..f.header + 8].copy_from_slice(&wrong.to_le_bytes());
        }
        (Mutation::OversizedLen, Some(f)) => {
            let len = match below(&mut rng, 4) {
                0 => u32::MAX,
                1 => max_frame + 1,
                2 => 1 << (20 + below(&mut rng, 12)),
                _ => max_frame + 1 + (rng.next_u32() % (u32::MAX - max_frame)),
            };
            wire[f.header + 8..f.header + 12].copy_from_slice(&len.to_le_bytes());
        }
        (Mutation::MoreToggle, Some(f)) => wire[f.header + 12] ^= 1,
        (Mutation::UnknownFlags, Some(f)) => wire[f.header + 12] |= 2 << below(&mut rng, 7),
        (Mutation::Truncate, _) => {
            let at = below(&mut rng, wire.len() as u64) as usize;
            wire.truncate(at);
        }
        (Mutation::Garbage, _) => {
            let at = below(&mut rng, wire.len() as u64 + 1) as usize;
            let n = 1 + below(&mut rng, 32) as usize;
            let junk = random_bytes(&mut rng, n);
            match below(&mut rng, 3) {
                0 => {
                    let end = (at + n).min(wire.len());
                    wire.splice(at..end, junk);
                }
                1 => {
                    wire.splice(at..at, junk);
                }
                _ => {
                    let end = (at + n).min(wire.len());
                    wire.drain(at..end);
                }
            }
        }
        (Mutation::PayloadBitFlip, Some(f)) => {
            if f.end > f.header + HEADER_LEN {
                let at =
                    f.header + HEADER_LEN + below(&mut rng, (f.end - f.header - HEADER_LEN) as u64) as usize;
                wire[at] ^= 1 << below(&mut rng, 8);
            }
        }
        (Mutation::GarbageTail, _) => {
            let n = 1 + below(&mut rng, 64) as usize;
            wire.extend(random_bytes(&mut rng, n));
        }
        (Mutation::Random, _) => {
            let n = below(&mut rng, 256) as usize;
            wire = random_bytes(&mut rng, n);
            // Sometimes a plausible first header: seq 0, small length.
            if n >= HEADER_LEN && chance(&mut rng, 50) {
                wire[..8].copy_from_slice(&0u64.to_le_bytes());
                wire[9..12].fill(0);
                wire[12] &= 1;
            }
        }
        (_, None) => unreachable!("frame mutations need a frame"),
    }

    // Random split points: single bytes, small pieces, or everything at once.
    let mut cuts = Vec::new();
    match below(&mut rng, 4) {
        0 => {}
        1 => cuts.extend(1..wire.len()),
        _ => {
            let mut at = 0;
            loop {
                at += 1 + below(&mut rng, 40) as usize;
                if at >= wire.len() {
                    break;
                }
                cuts.push(at);
            }
        }
    }

    campaign::reset_peak();
    let (got, boundary) = decode_pieces(&wire, &cuts, lane, limits)?;
    let peak = campaign::peak();
    // Bound: the decoder buffers what it was given (amortized doubling) and reserves a
    // frame only once its payload is in; nothing is sized by a header alone.
    let bound = 2 * wire.len() + 4096;
    if peak > bound {
        return Err(format!("{mutation:?}: allocated {peak} bytes for a {}-byte stream", wire.len()));
    }
    let quic = decode_like_quic(&wire, lane, limits)?;
    if quic != got {
        return Err(format!("{mutation:?}: the decoder and the QUIC reader disagree: {got:?} vs {quic:?}"));
    }

    // Oracle. Messages whose frames lie entirely before the first changed byte decode
    // exactly; nothing exceeds the message cap or the bytes received.
    let first_diff =
        wire.iter().zip(&original).position(|(a, b)| a != b).unwrap_or(wire.len().min(original.len()));
    let intact =
        frames.iter().take_while(|f| f.end <= first_diff).filter(|f| frame_is_last(&frames, f)).count();
    let intact = intact.min(sent.len());
    if got.messages.len() < intact || got.messages[..intact] != sent[..intact] {
        return Err(format!(
            "{mutation:?}: first {intact} messages not decoded exactly ({} decoded)",
            got.messages.len()
        ));
    }
    if let Some(m) = got.messages.iter().find(|m| m.len() as u64 > max_message) {
        return Err(format!("{mutation:?}: a {}-byte message passed the cap of {max_message}", m.len()));
    }
    let total: usize = got.messages.iter().map(Vec::len).sum();
    if total > wire.len() {
        return Err(format!("{mutation:?}: {total} message bytes out of a {}-byte stream", wire.len()));
    }
    let expect_error = |needle: &str| -> Result<(), String> {
        match &got.error {
            Some(e) if e.contains(needle) && got.messages == sent[..frames[k].message] => Ok(()),
            other => Err(format!(
                "{mutation:?} at frame {k}: expected `{needle}` after {} messages, got {other:?} after {}",
                frames[k].message,
                got.messages.len()
            )),
        }
    };
    match mutation {
        Mutation::None if got.messages != sent || got.error.is_some() || !boundary => {
            return Err(format!("valid stream: {got:?}, boundary {boundary}"));
        }
        Mutation::WrongSeq => expect_error("sequence gap")?,
        Mutation::OversizedLen => expect_error("above the frame cap")?,
        Mutation::UnknownFlags => expect_error("unknown flags")?,
        Mutation::Truncate => {
            let whole = frames.iter().filter(|f| f.end <= wire.len() && frame_is_last(&frames, f)).count();
            let at_boundary =
                wire.is_empty() || frames.iter().any(|f| f.end == wire.len() && frame_is_last(&frames, f));
            if got.error.is_some() || got.messages != sent[..whole] || boundary != at_boundary {
                return Err(format!("truncated to {}: {got:?}, boundary {boundary}", wire.len()));
            }
        }
        _ => {}
    }
    Ok(match got.error {
        None => Outcome::Accepted,
        Some(e) => {
            let known = [
                "sequence gap",
                "above the frame cap",
                "unknown flags",
                "empty continued chunk",
                "above the message cap",
            ];
            Outcome::Rejected(
                known.iter().find(|k| e.contains(**k)).map_or_else(|| kind(&e), |k| k.to_string()),
            )
        }
    })
}

fn frame_is_last(frames: &[FrameAt], f: &FrameAt) -> bool {
    frames.iter().rev().find(|g| g.message == f.message).map(|g| g.header) == Some(f.header)
}

/// >= 10^7 generated frame streams in the long run.
#[test]
fn frame_decoder_campaign() {
    campaign::run("frame-decoder", campaign::cases(20_000, 10_000_000), frame_case);
}

/// A header claiming more than the caps is refused before its payload arrives, and the
/// decoder allocates nothing for it.
#[test]
fn huge_frame_header_is_refused_before_allocation() {
    for (len, limits, needle) in [
        (u32::MAX, FrameLimits::default(), "above the frame cap"),
        (1 << 20, FrameLimits { max_frame: 1 << 20, max_message: 1000 }, "above the message cap"),
    ] {
        let mut dec = FrameDecoder::new(Lane::Ot, limits);
        campaign::reset_peak();
        let mut header = [0u8; HEADER_LEN];
        header[8..12].copy_from_slice(&len.to_le_bytes());
        dec.push(&header);
        let err = dec.next_message().unwrap_err().to_string();
        assert!(err.contains(needle) && err.contains("Ot"), "{err}");
        assert!(campaign::peak() < 4096, "allocated {} bytes", campaign::peak());
    }
}

// ---------------------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------------------

fn server_info() -> ServerInfo {
    ServerInfo {
        model: "tiny".into(),
        architecture: "Qwen2ForCausalLM".into(),
        fingerprint: "blake3:aaaa".into(),
        variants: vec!["v2".into(), "v3-mpc".into()],
        devices: vec!["cpu".into()],
        version: "0.1.0".into(),
        protocol_version: PROTOCOL_VERSION,
        attestation: vec![],
        ring_gemm: None,
    }
}

fn random_string(rng: &mut ChaCha8Rng) -> String {
    let n = below(rng, 12) as usize;
    (0..n).map(|_| char::from(b'a' + below(rng, 26) as u8)).collect()
}

fn pick(rng: &mut ChaCha8Rng, choices: &[&str]) -> String {
    if chance(rng, 20) {
        random_string(rng)
    } else {
        choices[below(rng, choices.len() as u64) as usize].to_string()
    }
}

fn random_hello(rng: &mut ChaCha8Rng) -> ClientHello {
    let request = match below(rng, 4) {
        0 => Request::Info,
        1 => Request::Health,
        _ => {
            let mut session_id = [0u8; 16];
            rng.fill_bytes(&mut session_id);
            let params = SessionParams {
                prompt_tokens: rng.next_u32(),
                max_new_tokens: rng.next_u32(),
                all_rows: chance(rng, 50),
            };
            let material = chance(rng, 50)
                .then(|| MaterialBinding { bundle_id: random_string(rng), session: rng.next_u64() });
            Request::Session {
                variant: pick(rng, &["v2", "v3-mpc", "v3-ot"]),
                model_fingerprint: pick(rng, &["blake3:aaaa", "blake3:bbbb"]),
                session_id,
                params,
                material,
            }
        }
    };
    let protocol_version = if chance(rng, 90) { PROTOCOL_VERSION } else { rng.next_u32() };
    ClientHello { protocol_version, request }
}

fn random_answer(rng: &mut ChaCha8Rng, hello: &ClientHello) -> ServerHello {
    if chance(rng, 5) {
        return ServerHello::Busy { active: rng.next_u32(), max: rng.next_u32() };
    }
    if chance(rng, 25) {
        return ServerHello::Rejected(Mismatch {
            field: pick(rng, &["variant", "protocol version", "model fingerprint"]),
            server: random_string(rng),
            client: random_string(rng),
            hint: random_string(rng),
        });
    }
    let mut info = server_info();
    if let Request::Session { variant, model_fingerprint, .. } = &hello.request {
        if chance(rng, 70) {
            info.variants.push(variant.clone());
            info.fingerprint = model_fingerprint.clone();
        }
    }
    if chance(rng, 10) {
        info.protocol_version = rng.next_u32();
    }
    let extra = below(rng, 3);
    for _ in 0..extra {
        info.devices.push(random_string(rng));
    }
    ServerHello::Accepted(info)
}

/// Mutates a bincode encoding: bit flips, overwritten bytes, huge length prefixes,
/// truncation, insertion, deletion; or replaces it with random bytes.
fn mutate(rng: &mut ChaCha8Rng, bytes: &mut Vec<u8>) {
    let rounds = 1 + below(rng, 3);
    for _ in 0..rounds {
        let at = below(rng, bytes.len() as u64) as usize;
        match below(rng, 8) {
            0 | 1 if !bytes.is_empty() => bytes[at] ^= 1 << below(rng, 8),
            2 if !bytes.is_empty() => bytes[at] = rng.next_u32() as u8,
            3 | 4 if bytes.len() >= at + 8 => {
                // A length prefix (u64 in bincode's fixint format) claiming a lot.
                let huge: u64 = match below(rng, 5) {
                    0 => u64::MAX,
                    1 => 1 << 40,
                    2 => 1 << 32,
                    3 => 1 << 20,
                    _ => rng.next_u64(),
                };
                bytes[at..at + 8].copy_from_slice(&huge.to_le_bytes());
            }
            5 => bytes.truncate(at),
            6 => {
                let n = 1 + below(rng, 16) as usize;
                let junk = random_bytes(rng, n);
                bytes.splice(at..at, junk);
            }
            _ => {
                let end = (at + 1 + below(rng, 8) as usize).min(bytes.len());
                bytes.drain(at.min(end)..end);
            }
        }
    }
}

fn handshake_error(e: TransportError) -> CaseResult {
    match e {
        TransportError::Protocol { problem, .. } => {
            // "cannot decode the client's hello (io error: ...); is it ..." groups as
            // "client's hello: io error".
            let what = problem.trim_start_matches("cannot decode the ").split(" (").next().unwrap_or("");
            let why = problem.split(" (").nth(1).unwrap_or("").split([':', ')', ',']).next().unwrap_or("");
            Ok(Outcome::Rejected(format!("protocol: {what}: {}", kind(why))))
        }
        TransportError::Handshake(m) => {
            let known = ["protocol version", "variant", "model fingerprint"];
            let field = m.message.split(" differs").next().unwrap_or("");
            let field = known.iter().find(|k| **k == field).copied().unwrap_or("other field (server's text)");
            Ok(Outcome::Rejected(format!("handshake: {field} differs")))
        }
        TransportError::Busy { .. } => Ok(Outcome::Rejected("busy".into())),
        other => Err(format!("not a protocol or handshake error: {other:?}")),
    }
}

/// Decoding allocates at most what the message holds, plus serde's cautious
/// preallocation of a sequence (at most 1 MiB, whatever its length prefix claims).
const HELLO_ALLOC_BOUND: usize = (1 << 20) + (64 << 10);

fn handshake_case(i: u64) -> CaseResult {
    let mut rng = rng_for(2, i);
    let t = Duration::from_secs(5);
    let hello = random_hello(&mut rng);
    let to_server = chance(&mut rng, 50);
    let valid = if to_server {
        bincode::serialize(&hello)
    } else {
        bincode::serialize(&random_answer(&mut rng, &hello))
    }
    .expect("a hello serializes");
    let mut bytes = valid.clone();
    match below(&mut rng, 10) {
        0..=1 => {}
        2 => {
            let n = below(&mut rng, 96) as usize;
            bytes = random_bytes(&mut rng, n);
        }
        _ => mutate(&mut rng, &mut bytes),
    }
    let (mut c, mut s) = memory::pair_with_timeout(t);
    campaign::reset_peak();
    let outcome = if to_server {
        c.send_bytes(Lane::Control, &bytes).map_err(|e| e.to_string())?;
        match server_handshake(&mut s, &server_info(), t, &SessionSlots::new(4), &|_| Ok(())) {
            Ok((got, _slot)) => {
                check_hello(&got, &server_info()).map_err(|m| format!("accepted a mismatched hello: {m}"))?;
                if bytes == valid && got != hello {
                    return Err(format!("decoded {got:?}, sent {hello:?}"));
                }
                Outcome::Accepted
            }
            Err(e) => handshake_error(e)?,
        }
    } else {
        s.send_bytes(Lane::Control, &bytes).map_err(|e| e.to_string())?;
        match client_handshake(&mut c, &hello, t) {
            Ok(info) => {
                check_hello(&hello, &info).map_err(|m| format!("accepted a mismatched server: {m}"))?;
                Outcome::Accepted
            }
            Err(e) => handshake_error(e)?,
        }
    };
    let peak = campaign::peak();
    if peak > HELLO_ALLOC_BOUND.max(2 * bytes.len()) {
        return Err(format!("decoding {} bytes allocated {peak} bytes", bytes.len()));
    }
    Ok(outcome)
}

/// >= 10^6 random and mutated hellos through both drivers in the long run.
#[test]
fn handshake_campaign() {
    campaign::run("handshake", campaign::cases(20_000, 1_000_000), handshake_case);
}

/// A hello whose strings claim 2^40 and u64::MAX bytes is refused without allocating
/// them.
#[test]
fn huge_length_prefix_in_hello_is_refused_cheaply() {
    let hello = ClientHello::new(Request::Session {
        variant: "v2".into(),
        model_fingerprint: "blake3:aaaa".into(),
        session_id: [1; 16],
        params: SessionParams { prompt_tokens: 3, max_new_tokens: 2, all_rows: false },
        material: None,
    });
    let valid = bincode::serialize(&hello).unwrap();
    // protocol_version (4) + variant index (4), then the variant's u64 length.
    for huge in [1u64 << 40, u64::MAX, valid.len() as u64] {
        let mut bytes = valid.clone();
        bytes[8..16].copy_from_slice(&huge.to_le_bytes());
        let (mut c, mut s) = memory::pair();
        c.send_bytes(Lane::Control, &bytes).unwrap();
        campaign::reset_peak();
        let err =
            server_handshake(&mut s, &server_info(), Duration::from_secs(5), &SessionSlots::new(4), &|_| {
                Ok(())
            })
            .unwrap_err();
        assert!(matches!(err, TransportError::Protocol { .. }), "{err:?}");
        assert!(err.to_string().contains("a length inside it claims more than it holds"), "{err}");
        assert!(campaign::peak() < 64 << 10, "allocated {} bytes", campaign::peak());
    }
}
