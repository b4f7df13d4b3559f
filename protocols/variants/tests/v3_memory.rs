//! v3 between two parties in one process over the in-memory channel: the wavefront of
//! chunked prefills gives v2's logits bit for bit, with v2's bytes plus one 16-byte
//! header per pass and v2's rounds, for every chunk size and both `Rows::Last` and
//! `Rows::All`; a server that stops mid-pass is an error on the client, not a hang; a
//! header that breaks the declared shape is refused by the server before any work.

use shardlm_configs::FixedPoint;
use shardlm_model::qwen2::forward;
use shardlm_model::sampling::argmax;
use shardlm_model::{ModelDir, Rows, Weights};
use shardlm_mpc::material::{IdealDealer, MaterialError, MaterialSource, Request};
use shardlm_mpc::prg::Seed;
use shardlm_mpc::share::P0;
use shardlm_testkit::fixtures;
use shardlm_transport::{memory, Channel, Counters, Lane};
use shardlm_variants::plan::SessionShape;
use shardlm_variants::v2::{V2Client, V2Server};
use shardlm_variants::v3::{chunk_lane, ChunkPlan, LinkModel, Schedule, V3Client, V3Server};
use shardlm_variants::RingWeights;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Model {
    md: ModelDir,
    w: Arc<Weights>,
    ring: Arc<RingWeights>,
}

fn model() -> Model {
    let md = ModelDir::open(&fixtures::tiny_bytes()).unwrap();
    let w = Arc::new(md.load_weights().unwrap());
    let backend: Arc<dyn shardlm_gpu::Backend> = Arc::new(shardlm_gpu::CpuBackend::new());
    let ring = Arc::new(RingWeights::encode(&w, FixedPoint::default(), backend).unwrap());
    Model { md, w, ring }
}

struct Outcome {
    logits: Vec<Vec<f32>>,
    counters: Counters,
}

/// A prefill of `ids` with `rows`, then `decode` greedy steps, against a server thread.
fn run(m: &Model, ids: &[u32], rows: Rows, decode: usize, chunk_rows: Option<usize>) -> Outcome {
    let fixed = FixedPoint::default();
    let shape = SessionShape::new(ids.len(), decode + 1, rows);
    let (c_chan, mut s_chan) = memory::pair();
    let (masks, _) = IdealDealer::new(Seed([7; 32])).with_weights(m.ring.clone()).split();
    let mut logits = Vec::new();
    let c = &m.md.config;
    let counters = match chunk_rows {
        None => {
            let server = V2Server::new(m.ring.clone());
            let t = std::thread::spawn(move || server.serve_session(&mut s_chan, shape));
            let mut client = V2Client::new(m.w.clone(), fixed, c_chan, masks);
            let l = forward(&mut client, c, ids, 0, rows).unwrap().unwrap();
            let mut next = argmax(l.last());
            logits.push(l.data);
            for pos in ids.len()..ids.len() + decode {
                let l = forward(&mut client, c, &[next], pos, Rows::Last).unwrap().unwrap();
                next = argmax(l.last());
                logits.push(l.data);
            }
            let counters = client.channel().counters();
            client.finish().unwrap();
            t.join().unwrap().unwrap();
            counters
        }
        Some(chunk) => {
            let server = V3Server::new(m.ring.clone());
            let t = std::thread::spawn(move || server.serve_session(&mut s_chan, shape));
            let schedule = Schedule { chunk_rows: (chunk > 0).then_some(chunk), link: LinkModel::default() };
            let mut client = V3Client::new(m.w.clone(), fixed, c_chan, masks, schedule);
            let l = client.forward(ids, 0, rows).unwrap();
            let mut next = argmax(l.last());
            logits.push(l.data);
            for pos in ids.len()..ids.len() + decode {
                let l = client.forward(&[next], pos, Rows::Last).unwrap();
                next = argmax(l.last());
                logits.push(l.data);
            }
            let counters = client.counters();
            client.finish_with_material().unwrap();
            t.join().unwrap().unwrap();
            counters
        }
    };
    Outcome { logits, counters }
}

fn bits(l: &[Vec<f32>]) -> Vec<Vec<u32>> {
    l.iter().map(|r| r.iter().map(|v| v.to_bits()).collect()).collect()
}

#[test]
fn v3_is_v2_bit_for_bit_at_every_chunk_size() {
    let m = model();
    let ids: Vec<u32> = (0..37u32).map(|i| (i * 7 + 3) % m.md.config.vocab_size as u32).collect();
    let decode = 3;
    for rows in [Rows::Last, Rows::All] {
        let v2 = run(&m, &ids, rows, decode, None);
        // 0: the client's choice; 37: one chunk; 5 makes 8 chunks, the most allowed, and 1
        // asks for more, which the client caps at 8.
        for chunk in [0, 1, 5, 10, 19, 37] {
            let v3 = run(&m, &ids, rows, decode, Some(chunk));
            assert_eq!(
                bits(&v3.logits),
                bits(&v2.logits),
                "{rows:?}, chunks of {chunk}: logits differ in bits"
            );
            let passes = 1 + decode as u64;
            let (b2, b3) = (&v2.counters, &v3.counters);
            assert_eq!(
                b3.bytes_sent(),
                b2.bytes_sent() + 16 * passes,
                "{rows:?}/{chunk}: v2's bytes + headers"
            );
            assert_eq!(b3.bytes_received(), b2.bytes_received(), "{rows:?}/{chunk}: answers are v2's bytes");
            assert_eq!(b3.rounds, b2.rounds, "{rows:?}/{chunk}: the longest chain is v2's rounds");
            let lanes = b3.lanes.keys().filter(|l| matches!(l, Lane::Masked(_))).count();
            let head = if rows == Rows::All { ids.len() } else { 1 };
            let want = match chunk {
                0 => {
                    ChunkPlan::choose(ids.len(), head, &m.md.config, &LinkModel::default()).unwrap().chunks()
                }
                _ => ids.len().div_ceil(chunk.max(ids.len().div_ceil(8))),
            };
            assert_eq!(lanes, want, "{rows:?}/{chunk}: one lane per chunk");
        }
    }
}

/// A server that answers the header and the first `answer` chunks, then goes away.
fn vanishing_server(mut chan: memory::MemoryChannel, answer: usize, d: (usize, usize)) {
    let header = chan.recv_u64s(Lane::Control, 2).unwrap();
    let (n, rows) = (header[0] as usize, header[1] as usize);
    for j in 0..answer.min(n.div_ceil(rows)) {
        let r = rows.min(n - j * rows);
        let _ = chan.recv_u64s(chunk_lane(j), r * d.0).unwrap();
        chan.send_u64s(chunk_lane(j), &vec![0; r * d.1]).unwrap();
    }
    drop(chan);
}

#[test]
fn a_server_gone_mid_pass_is_an_error_not_a_hang() {
    let m = model();
    let c = m.md.config.clone();
    let ids: Vec<u32> = (0..32u32).collect();
    let d = shardlm_model::Linear::Qkv(0).dims(&c);
    for answered in [0, 1, 3] {
        let (c_chan, s_chan) = memory::pair_with_timeout(Duration::from_secs(5));
        let (masks, _) = IdealDealer::new(Seed([1; 32])).with_weights(m.ring.clone()).split();
        let t = std::thread::spawn(move || vanishing_server(s_chan, answered, d));
        let schedule = Schedule { chunk_rows: Some(8), link: LinkModel::default() };
        let mut client = V3Client::new(m.w.clone(), FixedPoint::default(), c_chan, masks, schedule);
        let started = Instant::now();
        let e = client.forward(&ids, 0, Rows::Last).unwrap_err();
        t.join().unwrap();
        let msg = e.to_string();
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "answered {answered}: took {:?}",
            started.elapsed()
        );
        assert!(!msg.contains("aborted"), "answered {answered}: the cause is named, not 'aborted': {msg}");
        assert!(msg.contains("peer") || msg.contains("closed") || msg.contains("timed out"), "{msg}");
    }
}

#[test]
fn the_server_refuses_headers_that_break_the_declared_shape() {
    let m = model();
    let shape = SessionShape::new(32, 2, Rows::Last);
    for (header, says) in [
        ([31u64, 8], "allows 32"),
        ([32, 0], "a chunk has 1 to 32 rows"),
        ([32, 33], "a chunk has 1 to 32 rows"),
        ([32, 3], "at most 8 are allowed"),
    ] {
        let (mut c_chan, mut s_chan) = memory::pair();
        let server = V3Server::new(m.ring.clone());
        let t = std::thread::spawn(move || server.serve_session(&mut s_chan, shape));
        c_chan.send_u64s(Lane::Control, &header).unwrap();
        let e = t.join().unwrap().unwrap_err().to_string();
        assert!(e.contains(says), "{header:?}: {e}");
    }
    // A chunk of the wrong size is refused before it is multiplied.
    let (mut c_chan, mut s_chan) = memory::pair();
    let server = V3Server::new(m.ring.clone());
    let t = std::thread::spawn(move || server.serve_session(&mut s_chan, shape));
    c_chan.send_u64s(Lane::Control, &[32, 16]).unwrap();
    c_chan.send_u64s(chunk_lane(0), &[1, 2, 3]).unwrap();
    let e = t.join().unwrap().unwrap_err().to_string();
    assert!(e.contains("expected"), "{e}");
}

/// A material source that runs out after `left` requests.
struct RunsOut<M> {
    inner: M,
    left: usize,
}

impl<M: MaterialSource<P0>> MaterialSource<P0> for RunsOut<M> {
    fn take<Q: Request<P0>>(&mut self, request: Q) -> Result<Q::Output, MaterialError> {
        if self.left == 0 {
            return Err(MaterialError::Exhausted { kind: "masked-linear".into(), needed: 1, left: 0 });
        }
        self.left -= 1;
        self.inner.take(request)
    }
}

#[test]
fn a_chunk_that_fails_is_the_error_of_the_pass_not_the_others_abort() {
    let m = model();
    let ids: Vec<u32> = (0..32u32).collect();
    let shape = SessionShape::new(ids.len(), 1, Rows::Last);
    for left in [0, 3] {
        let (c_chan, mut s_chan) = memory::pair_with_timeout(Duration::from_secs(5));
        let server = V3Server::new(m.ring.clone());
        let t = std::thread::spawn(move || server.serve_session(&mut s_chan, shape));
        let (masks, _) = IdealDealer::new(Seed([2; 32])).with_weights(m.ring.clone()).split();
        let schedule = Schedule { chunk_rows: Some(8), link: LinkModel::default() };
        let mut client = V3Client::new(
            m.w.clone(),
            FixedPoint::default(),
            c_chan,
            RunsOut { inner: masks, left },
            schedule,
        );
        let e = client.forward(&ids, 0, Rows::Last).unwrap_err().to_string();
        assert!(e.contains("material exhausted"), "{left} requests of material: {e}");
        drop(client);
        assert!(t.join().unwrap().is_err(), "the server sees the client go");
    }
}
