//! Dealer bundles on disk: write, reopen, consume; one-time use across restarts;
//! corruption, exhaustion, wrong party/model and concurrent use are clear errors.

use shardlm_mpc::beaver;
use shardlm_mpc::material::{
    AndTriplesRequest, DaBitsRequest, MaskedLinearRequest, MatrixTripleRequest, RandomOtsRequest,
    SquarePairsRequest, TriplesRequest, TruncOtsRequest,
};
use shardlm_mpc::material::{
    BundleWriter, IdealDealer, Manifest, Material, MaterialError, MaterialRequest, MaterialSource, NoWeights,
    OpenOptions, Reserve,
};
use shardlm_mpc::prg::Seed;
use shardlm_mpc::ring;
use shardlm_mpc::share::{reconstruct, reconstruct_bits, share, BitShares, Shares, P0, P1};
use shardlm_testkit::two_party;
use std::path::Path;
use std::sync::Arc;

const MODEL: &str = "blake3:test-model";
const D_IN: usize = 6;
const D_OUT: usize = 5;

fn weight(id: u32) -> Result<Vec<u64>, String> {
    if id == 7 {
        Ok((0..(D_OUT * D_IN) as u64).map(|i| ring::encode((i as f64 - 14.0) / 8.0, 16)).collect())
    } else {
        Err(format!("no weight {id}"))
    }
}

fn requests() -> Vec<MaterialRequest> {
    vec![
        MaterialRequest::Triples(TriplesRequest { n: 100 }),
        MaterialRequest::MatrixTriple(MatrixTripleRequest { m: 3, k: 4, n: 5 }),
        MaterialRequest::TruncOts(TruncOtsRequest { n: 50, bits: 16 }),
        MaterialRequest::AndTriples(AndTriplesRequest { words: 10 }),
        MaterialRequest::DaBits(DaBitsRequest { n: 20 }),
        MaterialRequest::RandomOts(RandomOtsRequest { n_choices: 16, bits: 8, count: 7 }),
        MaterialRequest::SquarePairs(SquarePairsRequest { n: 30 }),
        MaterialRequest::MaskedLinear(MaskedLinearRequest { n: 4, d_in: D_IN, d_out: D_OUT, weight: 7 }),
        MaterialRequest::MatrixTriple(MatrixTripleRequest { m: 2, k: 2, n: 2 }),
    ]
}

fn write_bundle(dir: &Path, seed: u64) -> Manifest {
    let mut w = BundleWriter::create(dir, MODEL, "v3-mpc", Seed::from_u64(seed)).unwrap();
    for r in requests() {
        w.push(&r, &weight).unwrap();
    }
    w.finish().unwrap()
}

/// Takes one request of `requests()`'s kinds from P0's material.
fn take_request(m: &mut Material<P0>, r: &MaterialRequest) -> Result<(), MaterialError> {
    match *r {
        MaterialRequest::Triples(q) => m.take(q).map(drop),
        MaterialRequest::MatrixTriple(q) => m.take(q).map(drop),
        MaterialRequest::TruncOts(q) => m.take(q).map(drop),
        MaterialRequest::AndTriples(q) => m.take(q).map(drop),
        MaterialRequest::DaBits(q) => m.take(q).map(drop),
        MaterialRequest::RandomOts(q) => m.take(q).map(drop),
        MaterialRequest::SquarePairs(q) => m.take(q).map(drop),
        MaterialRequest::MaskedLinear(q) => m.take(q).map(drop),
        _ => unreachable!("requests() has no other kind"),
    }
}

/// Takes everything of `requests()` from both parties and checks the correlations.
fn consume_and_check(m0: &mut Material<P0>, m1: &mut Material<P1>) {
    let t0 = m0.take(TriplesRequest { n: 100 }).unwrap();
    let t1 = m1.take(TriplesRequest { n: 100 }).unwrap();
    let a = reconstruct(&t0.a, &t1.a).unwrap();
    let b = reconstruct(&t0.b, &t1.b).unwrap();
    assert_eq!(reconstruct(&t0.c, &t1.c).unwrap(), ring::mul(&a, &b));

    let (x0, x1) = (
        m0.take(MatrixTripleRequest { m: 3, k: 4, n: 5 }).unwrap(),
        m1.take(MatrixTripleRequest { m: 3, k: 4, n: 5 }).unwrap(),
    );
    let (a, b) = (reconstruct(&x0.a, &x1.a).unwrap(), reconstruct(&x0.b, &x1.b).unwrap());
    assert_eq!(reconstruct(&x0.c, &x1.c).unwrap(), ring::gemm(&a, &b, 3, 4, 5));

    let (o0, o1) = (
        m0.take(TruncOtsRequest { n: 50, bits: 16 }).unwrap(),
        m1.take(TruncOtsRequest { n: 50, bits: 16 }).unwrap(),
    );
    for i in 0..50 {
        let c = o0.indices()[i] as usize;
        assert!(c < 2);
        assert_eq!(o0.chosen()[i], o1.strings()[2 * i + c]);
        assert!(o0.chosen()[i] < 1 << 16);
    }

    let (g0, g1) = (
        m0.take(AndTriplesRequest { words: 10 }).unwrap(),
        m1.take(AndTriplesRequest { words: 10 }).unwrap(),
    );
    let (a, b) = (reconstruct_bits(&g0.a, &g1.a).unwrap(), reconstruct_bits(&g0.b, &g1.b).unwrap());
    let c = reconstruct_bits(&g0.c, &g1.c).unwrap();
    assert_eq!(c, a.iter().zip(&b).map(|(a, b)| a & b).collect::<Vec<_>>());
    let _: &BitShares<P0> = &g0.a;

    let (d0, d1) = (m0.take(DaBitsRequest { n: 20 }).unwrap(), m1.take(DaBitsRequest { n: 20 }).unwrap());
    let r = reconstruct(&d0.arith, &d1.arith).unwrap();
    for (i, ri) in r.iter().enumerate() {
        assert_eq!(*ri, d0.bits[i] ^ d1.bits[i]);
    }

    let (r0, r1) = (
        m0.take(RandomOtsRequest { n_choices: 16, bits: 8, count: 7 }).unwrap(),
        m1.take(RandomOtsRequest { n_choices: 16, bits: 8, count: 7 }).unwrap(),
    );
    for i in 0..7 {
        assert_eq!(r0.chosen()[i], r1.strings()[16 * i + r0.indices()[i] as usize]);
    }

    let (s0, s1) =
        (m0.take(SquarePairsRequest { n: 30 }).unwrap(), m1.take(SquarePairsRequest { n: 30 }).unwrap());
    let a = reconstruct(&s0.a, &s1.a).unwrap();
    assert_eq!(reconstruct(&s0.aa, &s1.aa).unwrap(), ring::mul(&a, &a));

    let ml = m0.take(MaskedLinearRequest { n: 4, d_in: D_IN, d_out: D_OUT, weight: 7 }).unwrap();
    assert_eq!(ml.s, ring::gemm_abt(&ml.r, &weight(7).unwrap(), 4, D_IN, D_OUT));

    let (x0, x1) = (
        m0.take(MatrixTripleRequest { m: 2, k: 2, n: 2 }).unwrap(),
        m1.take(MatrixTripleRequest { m: 2, k: 2, n: 2 }).unwrap(),
    );
    let (a, b) = (reconstruct(&x0.a, &x1.a).unwrap(), reconstruct(&x0.b, &x1.b).unwrap());
    assert_eq!(reconstruct(&x0.c, &x1.c).unwrap(), ring::gemm(&a, &b, 2, 2, 2));
}

#[test]
fn write_reopen_consume_matches_ideal_dealer() {
    let dir = tempfile::tempdir().unwrap();
    let m = write_bundle(dir.path(), 11);
    assert_eq!(m.model_fingerprint, MODEL);
    assert_eq!(m.counts["p0"]["triples"].elements, 100);
    assert_eq!(m.counts["p0"]["matrix-triples"].elements, 2);
    assert_eq!(m.counts["p0"]["masked-linear"].elements, 4);
    assert!(!m.counts["p1"].contains_key("masked-linear"));
    // P1's shard is seeds, shapes and a trailer only.
    assert!(m.shards["p1"].bytes < 4096, "p1 shard is {} bytes", m.shards["p1"].bytes);
    assert_eq!(Manifest::read(dir.path()).unwrap(), m);

    let mut f0 = Material::<P0>::open(&dir.path().join("p0"), Some(MODEL)).unwrap();
    let mut f1 = Material::<P1>::open(&dir.path().join("p1"), Some(MODEL)).unwrap();
    consume_and_check(&mut f0, &mut f1);

    // Same seed, same requests: the ideal dealer hands out the very same material.
    let dir2 = tempfile::tempdir().unwrap();
    write_bundle(dir2.path(), 12);
    let mut g0 = Material::<P0>::open(&dir2.path().join("p0"), None).unwrap();
    let weights: Arc<dyn shardlm_mpc::material::LinearWeights + Send + Sync> = Arc::new(weight);
    let (mut i0, mut i1) = IdealDealer::new(Seed::from_u64(12)).with_weights(weights).split();
    assert_eq!(g0.take(TriplesRequest { n: 100 }).unwrap().c, i0.take(TriplesRequest { n: 100 }).unwrap().c);
    assert_eq!(
        g0.take(MatrixTripleRequest { m: 3, k: 4, n: 5 }).unwrap().c,
        i0.take(MatrixTripleRequest { m: 3, k: 4, n: 5 }).unwrap().c
    );
    i1.take(TriplesRequest { n: 100 }).unwrap();
    i1.take(MatrixTripleRequest { m: 3, k: 4, n: 5 }).unwrap();
    // The rest of the ideal dealer's material is as correlated as the bundle's.
    consume_rest(&mut i0, &mut i1);
}

fn consume_rest(i0: &mut Material<P0>, i1: &mut Material<P1>) {
    let (o0, o1) = (
        i0.take(TruncOtsRequest { n: 50, bits: 16 }).unwrap(),
        i1.take(TruncOtsRequest { n: 50, bits: 16 }).unwrap(),
    );
    for i in 0..50 {
        assert_eq!(o0.chosen()[i], o1.strings()[2 * i + o0.indices()[i] as usize]);
    }
    i0.take(AndTriplesRequest { words: 10 }).unwrap();
    i0.take(DaBitsRequest { n: 20 }).unwrap();
    i0.take(RandomOtsRequest { n_choices: 16, bits: 8, count: 7 }).unwrap();
    i0.take(SquarePairsRequest { n: 30 }).unwrap();
    let ml = i0.take(MaskedLinearRequest { n: 4, d_in: D_IN, d_out: D_OUT, weight: 7 }).unwrap();
    assert_eq!(ml.s, ring::gemm_abt(&ml.r, &weight(7).unwrap(), 4, D_IN, D_OUT));
}

#[test]
fn two_parties_compute_with_bundle_material() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = BundleWriter::create(dir.path(), MODEL, "v3-mpc", Seed::from_u64(5)).unwrap();
    w.push(&MaterialRequest::Triples(TriplesRequest { n: 64 }), &NoWeights).unwrap();
    w.finish().unwrap();
    let x: Vec<u64> = (0..64).map(|i| i * 3 + 1).collect();
    let y: Vec<u64> = (0..64).map(|i| i * i).collect();
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
    let (x0, x1) = share(&x, &mut rng);
    let (y0, y1) = share(&y, &mut rng);
    let p = dir.path();
    let (z0, z1) = two_party(
        |ch| {
            let mut m = Material::<P0>::open(&p.join("p0"), Some(MODEL)).unwrap();
            beaver::mul(ch, &x0, &y0, m.take(TriplesRequest { n: 64 }).unwrap()).unwrap()
        },
        |ch| {
            let mut m = Material::<P1>::open(&p.join("p1"), Some(MODEL)).unwrap();
            beaver::mul(ch, &x1, &y1, m.take(TriplesRequest { n: 64 }).unwrap()).unwrap()
        },
    );
    assert_eq!(reconstruct(&z0, &z1).unwrap(), ring::mul(&x, &y));
}

#[test]
fn reuse_after_restart_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_bundle(dir.path(), 21);
    let first = {
        let mut m = Material::<P0>::open(&dir.path().join("p0"), None).unwrap();
        m.take(TriplesRequest { n: 60 }).unwrap().c
        // dropped: the process "exits" (or crashes) after taking.
    };
    let mut m = Material::<P0>::open(&dir.path().join("p0"), None).unwrap();
    assert_eq!(m.consumed()["triples.c"], 60);
    // Only 40 left: taking 60 again is refused, the next 40 are fresh.
    let err = m.take(TriplesRequest { n: 60 }).unwrap_err();
    assert!(matches!(err, MaterialError::Exhausted { needed: 60, left: 40, .. }), "{err}");
    let next = m.take(TriplesRequest { n: 40 }).unwrap().c;
    assert!(first.as_slice().iter().all(|v| !next.as_slice().contains(v)));
    // The ideal dealer confirms the second batch is words 60..100.
    let (mut i0, _) = IdealDealer::new(Seed::from_u64(21)).split();
    let all = i0.take(TriplesRequest { n: 100 }).unwrap().c;
    assert_eq!(first.as_slice(), &all.as_slice()[..60]);
    assert_eq!(next.as_slice(), &all.as_slice()[60..]);
}

/// A crash (no clean drop) leaves the journal's reservation consumed: nothing handed
/// out before the crash is handed out again, whatever the reservation size.
#[test]
fn crash_never_reuses_material() {
    for reserve in [0u64, 7, 1 << 20] {
        let dir = tempfile::tempdir().unwrap();
        write_bundle(dir.path(), 22);
        let opts = OpenOptions::default().reserve(Reserve::Words(reserve));
        let mut m = Material::<P0>::open_with(&dir.path().join("p0"), &opts).unwrap();
        let first = m.take(TriplesRequest { n: 30 }).unwrap().c.into_raw();
        let second = m.take(TriplesRequest { n: 5 }).unwrap().c.into_raw();
        // The process dies: no clean close. The kernel would release its flock; in this
        // process the leaked lock stays held, so stand in a fresh lock file.
        std::mem::forget(m);
        std::fs::remove_file(dir.path().join("p0/p0.lock")).unwrap();
        let opts = OpenOptions::default().reserve(Reserve::Words(reserve));
        let mut m = Material::<P0>::open_with(&dir.path().join("p0"), &opts).unwrap();
        let done = m.consumed()["triples.c"];
        assert!(done >= 35, "reserve {reserve}: resumed at {done}");
        let left = 100 - done as usize;
        if left > 0 {
            let next = m.take(TriplesRequest { n: left }).unwrap().c.into_raw();
            assert!(next.iter().all(|v| !first.contains(v) && !second.contains(v)));
        }
        assert!(m.take(TriplesRequest { n: 1 }).is_err());
    }
}

#[test]
fn parties_realign_by_advancing() {
    let dir = tempfile::tempdir().unwrap();
    write_bundle(dir.path(), 23);
    let mut m0 = Material::<P0>::open(&dir.path().join("p0"), None).unwrap();
    let mut m1 = Material::<P1>::open(&dir.path().join("p1"), None).unwrap();
    m0.take(TriplesRequest { n: 10 }).unwrap();
    m1.take(TriplesRequest { n: 25 }).unwrap();
    let mut target = m0.consumed().clone();
    for (k, v) in m1.consumed() {
        let e = target.entry(k.clone()).or_insert(0);
        *e = (*e).max(*v);
    }
    m0.advance_to(&target).unwrap();
    m1.advance_to(&target).unwrap();
    let (t0, t1) = (m0.take(TriplesRequest { n: 75 }).unwrap(), m1.take(TriplesRequest { n: 75 }).unwrap());
    let (a, b) = (reconstruct(&t0.a, &t1.a).unwrap(), reconstruct(&t0.b, &t1.b).unwrap());
    assert_eq!(reconstruct(&t0.c, &t1.c).unwrap(), ring::mul(&a, &b));
}

#[test]
fn exhausted_error_names_the_dealer_flags() {
    let dir = tempfile::tempdir().unwrap();
    write_bundle(dir.path(), 31);
    let mut m = Material::<P1>::open(&dir.path().join("p1"), None).unwrap();
    let err = m.take(TriplesRequest { n: 101 }).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("--max-new-tokens") && msg.contains("--prompt-tokens") && msg.contains("--sessions"),
        "{msg}"
    );
    assert!(msg.contains("triples"), "{msg}");
    // A kind never dealt is not "exhausted, raise a flag": the bundle is for other work
    // (another variant), and the error says so.
    assert!(m.take(DaBitsRequest { n: 1 }).is_ok());
    let never = m.take(RandomOtsRequest { n_choices: 4, bits: 8, count: 1 }).unwrap_err();
    assert!(
        matches!(&never, MaterialError::Mismatch(m) if m.contains("never dealt") && m.contains("v3-mpc")),
        "{never}"
    );
    // A step asking for a different shape than was dealt is a mismatch.
    let mut m0 = Material::<P0>::open(&dir.path().join("p0"), None).unwrap();
    m0.take(TriplesRequest { n: 100 }).unwrap();
    let before = m0.consumed().clone();
    let err = m0.take(MatrixTripleRequest { m: 5, k: 4, n: 3 }).unwrap_err();
    assert!(matches!(err, MaterialError::Mismatch(_)), "{err}");
    assert_eq!(m0.consumed(), &before, "a mismatch consumes nothing");
    assert!(m0.take(MatrixTripleRequest { m: 3, k: 4, n: 5 }).is_ok());
}

#[test]
fn corrupted_byte_is_detected() {
    // A flipped byte in a stream: the index (preamble and trailer) is intact, so the
    // bundle opens; the first take of material in the bad chunk is refused, naming the
    // stream, and nothing is recorded.
    let dir = tempfile::tempdir().unwrap();
    let ledger = tempfile::tempdir().unwrap();
    let opts = OpenOptions::default().ledger_in(ledger.path());
    write_bundle(dir.path(), 41);
    let shard = dir.path().join("p0/p0.shard");
    let mut bytes = std::fs::read(&shard).unwrap();
    let pristine = bytes.clone();
    // The last stream byte that is not padding (the trailer starts at `t_off`).
    let t_off = u64::from_le_bytes(bytes[16..24].try_into().unwrap()) as usize;
    let at = (0..t_off).rev().find(|&i| bytes[i] != 0).unwrap();
    bytes[at] ^= 1;
    std::fs::write(&shard, &bytes).unwrap();
    let mut m = Material::<P0>::open_with(&dir.path().join("p0"), &opts).unwrap();
    let (mut taken, mut refused) = (Vec::new(), None);
    for r in requests() {
        let before = m.consumed().clone();
        match take_request(&mut m, &r) {
            Ok(()) => taken.push(r),
            Err(e) => {
                assert_eq!(m.consumed(), &before, "a refused step consumes nothing");
                refused = Some(e);
                break;
            }
        }
    }
    let err = refused.expect("the flipped byte is read by some step");
    let msg = err.to_string();
    assert!(matches!(err, MaterialError::Corrupted { .. }), "{msg}");
    assert!(msg.contains("p0.shard bytes ") && msg.contains("fail their blake3"), "{msg}");
    assert!(msg.contains("shardlm-client dealer"), "{msg}");
    let consumed = m.consumed().clone();
    drop(m);
    // Nothing of the refused step was recorded: with the byte restored, a reopen
    // resumes at it and the rest of the bundle is usable.
    std::fs::write(&shard, &pristine).unwrap();
    let mut m = Material::<P0>::open_with(&dir.path().join("p0"), &opts).unwrap();
    assert_eq!(m.consumed(), &consumed);
    for r in requests().iter().skip(taken.len()) {
        take_request(&mut m, r).unwrap();
    }

    // A changed index (preamble or trailer) or a truncated file is refused on open.
    let dir = tempfile::tempdir().unwrap();
    write_bundle(dir.path(), 43);
    let shard = dir.path().join("p0/p0.shard");
    let bytes = std::fs::read(&shard).unwrap();
    for at in [20, bytes.len() - 3] {
        let mut b = bytes.clone();
        b[at] ^= 0x10;
        std::fs::write(&shard, &b).unwrap();
        let err = Material::<P0>::open(&dir.path().join("p0"), None).unwrap_err();
        assert!(matches!(err, MaterialError::Corrupted { .. }), "byte {at}: {err}");
    }
    let mut b = bytes.clone();
    b[bytes.len() - 3] ^= 0x10;
    std::fs::write(&shard, &b).unwrap();
    let msg = Material::<P0>::open(&dir.path().join("p0"), None).unwrap_err().to_string();
    assert!(msg.contains("p0.shard index blake3 mismatch") && msg.contains("shardlm-client dealer"), "{msg}");
    let mut b = bytes.clone();
    b.truncate(40);
    std::fs::write(&shard, &b).unwrap();
    assert!(matches!(
        Material::<P0>::open(&dir.path().join("p0"), None),
        Err(MaterialError::Corrupted { .. })
    ));
    // P1 is unaffected.
    assert!(Material::<P1>::open(&dir.path().join("p1"), None).is_ok());

    // A flipped byte in P1's (seed-only, few hundred bytes) shard is caught just the same.
    let dir = tempfile::tempdir().unwrap();
    write_bundle(dir.path(), 42);
    let shard = dir.path().join("p1/p1.shard");
    let mut bytes = std::fs::read(&shard).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x80;
    std::fs::write(&shard, &bytes).unwrap();
    let msg = Material::<P1>::open(&dir.path().join("p1"), None).unwrap_err().to_string();
    assert!(msg.contains("p1.shard index blake3 mismatch"), "{msg}");
    assert!(Material::<P0>::open(&dir.path().join("p0"), None).is_ok());
}

/// A bundle of several sessions is checked session by session: a corrupted byte in
/// session 1's material leaves session 0 usable; session 1 is refused when it starts,
/// before anything is recorded, so it is not spent.
#[test]
fn corruption_refuses_only_the_session_that_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = tempfile::tempdir().unwrap();
    let opts = OpenOptions::default().ledger_in(ledger.path());
    // Two sessions of 200k triples: each session's `triples.c` stream spans more than
    // one 1 MiB chunk of P0's shard.
    const N: usize = 200_000;
    let mut w = BundleWriter::create(dir.path(), MODEL, "v3-mpc", Seed::from_u64(44)).unwrap();
    for _ in 0..2 {
        w.start_session();
        w.push(&MaterialRequest::Triples(TriplesRequest { n: N }), &NoWeights).unwrap();
    }
    w.finish().unwrap();
    // The last byte of the last stream section before the trailer: in session 1.
    let shard = dir.path().join("p0/p0.shard");
    let mut bytes = std::fs::read(&shard).unwrap();
    let t_off = u64::from_le_bytes(bytes[16..24].try_into().unwrap()) as usize;
    let at = (0..t_off).rev().find(|&i| bytes[i] != 0).unwrap();
    let pristine = bytes.clone();
    bytes[at] ^= 1;
    std::fs::write(&shard, &bytes).unwrap();
    let mut m = Material::<P0>::open_with(&dir.path().join("p0"), &opts).unwrap();
    m.verify_session(0).unwrap();
    m.start_session(0).unwrap();
    m.take(TriplesRequest { n: N }).unwrap();
    let after_0 = m.consumed().clone();
    // Checked ahead of the session (as a client does before it connects), then at its
    // start: refused both times, nothing recorded.
    let err = m.verify_session(1).unwrap_err();
    assert!(matches!(err, MaterialError::Corrupted { .. }), "{err}");
    assert_eq!(m.consumed(), &after_0);
    let err = m.start_session(1).unwrap_err();
    assert!(matches!(err, MaterialError::Corrupted { .. }), "{err}");
    assert!(err.to_string().contains("fail their blake3"), "{err}");
    drop(m);
    // Restored (say, copied again from the dealer's output), session 1 is still there.
    std::fs::write(&shard, &pristine).unwrap();
    let mut m = Material::<P0>::open_with(&dir.path().join("p0"), &opts).unwrap();
    assert_eq!(m.consumed(), &after_0, "the refused session was not recorded");
    m.start_session(1).unwrap();
    m.take(TriplesRequest { n: N }).unwrap();
}

#[test]
fn concurrent_open_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_bundle(dir.path(), 51);
    let held = Material::<P0>::open(&dir.path().join("p0"), None).unwrap();
    let err = Material::<P0>::open(&dir.path().join("p0"), None).unwrap_err();
    assert!(matches!(err, MaterialError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("p0.lock"), "{err}");
    // The other party's lock is separate.
    let _p1 = Material::<P1>::open(&dir.path().join("p1"), None).unwrap();
    drop(held);
    assert!(Material::<P0>::open(&dir.path().join("p0"), None).is_ok());
}

#[test]
fn wrong_party_model_and_missing_files_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    write_bundle(dir.path(), 61);
    let err = Material::<P0>::open(&dir.path().join("p0"), Some("blake3:other")).unwrap_err();
    assert!(matches!(err, MaterialError::WrongModel { .. }), "{err}");
    // A P1 shard in P0's place.
    std::fs::copy(dir.path().join("p1/p1.shard"), dir.path().join("p0/p0.shard")).unwrap();
    let err = Material::<P0>::open(&dir.path().join("p0"), None).unwrap_err();
    assert!(matches!(err, MaterialError::WrongParty { .. }), "{err}");
    // The server's copy of the bundle has no p0.shard.
    std::fs::remove_file(dir.path().join("p0/p0.shard")).unwrap();
    let err = Material::<P0>::open(&dir.path().join("p0"), None).unwrap_err();
    assert!(err.to_string().contains("no p0 material"), "{err}");
    // Not a bundle at all.
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(Material::<P1>::open(empty.path(), None), Err(MaterialError::Format { .. })));
    // Writing over an existing bundle is refused.
    assert!(BundleWriter::create(dir.path(), MODEL, "v2", Seed::from_u64(1)).is_err());
    // A dealer without the weights cannot deal masked-linear material.
    let d = tempfile::tempdir().unwrap();
    let mut w = BundleWriter::create(d.path(), MODEL, "v2", Seed::from_u64(1)).unwrap();
    let req = MaterialRequest::MaskedLinear(MaskedLinearRequest { n: 1, d_in: 2, d_out: 2, weight: 3 });
    assert!(matches!(w.push(&req, &NoWeights), Err(MaterialError::Weights { id: 3, .. })));
    let _ = Shares::<P0>::default();
}

#[test]
fn recorder_records_what_a_pass_takes_and_the_writer_replays_it() {
    use shardlm_mpc::material::Recorder;
    // A "forward pass" generic over the material source.
    fn pass<S: MaterialSource<P0>>(m: &mut S) {
        m.take(MaskedLinearRequest { n: 4, d_in: D_IN, d_out: D_OUT, weight: 7 }).unwrap();
        m.take(TriplesRequest { n: 12 }).unwrap();
        m.take(TruncOtsRequest { n: 12, bits: 16 }).unwrap();
        m.take(MatrixTripleRequest { m: 2, k: 3, n: 4 }).unwrap();
    }
    let mut rec = Recorder::<P0>::new();
    pass(&mut rec);
    let reqs = rec.into_requests();
    assert_eq!(reqs.len(), 4);
    assert_eq!(reqs[0].raw_bytes(0).unwrap(), 8.0 * (4 + 4 * D_OUT) as f64);
    assert_eq!(reqs[1].raw_bytes(1).unwrap(), 0.0);
    assert_eq!(reqs[2].raw_bytes(0).unwrap(), 24.0); // 12 packed 16-bit strings
    let dir = tempfile::tempdir().unwrap();
    let mut w = BundleWriter::create(dir.path(), MODEL, "v2", Seed::from_u64(8)).unwrap();
    for r in &reqs {
        w.push(r, &weight).unwrap();
    }
    w.finish().unwrap();
    let mut m = Material::<P0>::open(&dir.path().join("p0"), Some(MODEL)).unwrap();
    pass(&mut m);
    assert!(m.take(TriplesRequest { n: 1 }).is_err(), "the bundle holds exactly what the pass takes");
}

/// v2 linear layer end to end: dealer bundle for P0, server holds only the public
/// weight; exact `enc(X) enc(W)^T`, traffic exactly `8 n (d_in + d_out)` bytes.
#[test]
fn client_assisted_linear_layer_is_exact() {
    use shardlm_mpc::masked_linear;
    use shardlm_transport::{Channel, Lane};
    let dir = tempfile::tempdir().unwrap();
    let n = 3;
    let mut w = BundleWriter::create(dir.path(), MODEL, "v2", Seed::from_u64(4)).unwrap();
    w.push(
        &MaterialRequest::MaskedLinear(MaskedLinearRequest { n, d_in: D_IN, d_out: D_OUT, weight: 7 }),
        &weight,
    )
    .unwrap();
    w.finish().unwrap();
    let xs: Vec<f64> = (0..n * D_IN).map(|i| (i as f64 * 0.7).cos() * 40.0).collect();
    let x = ring::encode_vec_f64(&xs, 16);
    let wt = weight(7).unwrap();
    let p = dir.path();
    let ((y, c0), c1) = shardlm_testkit::two_party(
        |ch| {
            let mut m = Material::<P0>::open(&p.join("p0"), Some(MODEL)).unwrap();
            let ml = m.take(MaskedLinearRequest { n, d_in: D_IN, d_out: D_OUT, weight: 7 }).unwrap();
            (masked_linear::client(ch, Lane::Masked(0), &x, ml).unwrap(), ch.counters())
        },
        |ch| {
            masked_linear::server(ch, Lane::Masked(0), &wt, n, D_IN, D_OUT).unwrap();
            ch.counters()
        },
    );
    assert_eq!(y, ring::gemm_abt(&x, &wt, n, D_IN, D_OUT));
    let bytes = c0.bytes_sent() + c1.bytes_sent();
    assert_eq!(bytes, 8 * (n * (D_IN + D_OUT)) as u64);
    assert_eq!(c0.rounds, 1);
}

/// Packed OT strings (P0 stores 16-bit strings in 2 bytes) read back exactly, in pieces
/// that straddle words, across a reopen; the shard holds 2 bytes per truncation.
#[test]
fn packed_ot_strings_read_back_in_any_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = BundleWriter::create(dir.path(), MODEL, "v3-mpc", Seed::from_u64(77)).unwrap();
    for n in [3usize, 5, 64, 1, 1000, 7] {
        w.push(&MaterialRequest::TruncOts(TruncOtsRequest { n, bits: 16 }), &NoWeights).unwrap();
        w.push(
            &MaterialRequest::RandomOts(RandomOtsRequest { n_choices: 8, bits: 13, count: n }),
            &NoWeights,
        )
        .unwrap();
    }
    let m = w.finish().unwrap();
    // 1080 strings of 16 bits and 1080 of 13 bits, plus preamble, alignment and trailer.
    assert!(m.shards["p0"].bytes < 64 + 2160 + 1760 + 128 + 2048, "p0 shard {} bytes", m.shards["p0"].bytes);
    let (mut i0, _) = IdealDealer::new(Seed::from_u64(77)).split();
    let want_t = i0.take(TruncOtsRequest { n: 1080, bits: 16 }).unwrap();
    let want_r = i0.take(RandomOtsRequest { n_choices: 8, bits: 13, count: 1080 }).unwrap();
    let (mut got_t, mut got_r) = (Vec::new(), Vec::new());
    let mut at = 0;
    for piece in [1usize, 2, 61, 3, 500, 13, 500] {
        let mut f = Material::<P0>::open(&dir.path().join("p0"), Some(MODEL)).unwrap();
        got_t.extend_from_slice(f.take(TruncOtsRequest { n: piece, bits: 16 }).unwrap().chosen());
        got_r.extend_from_slice(
            f.take(RandomOtsRequest { n_choices: 8, bits: 13, count: piece }).unwrap().chosen(),
        );
        at += piece;
    }
    assert_eq!(at, 1080);
    assert_eq!(got_t, want_t.chosen());
    assert_eq!(got_r, want_r.chosen());
}

/// Regression (issue 14 campaign): a manifest edited after dealing used to be read as
/// is, and a moved session start made a party start at the wrong place of its streams
/// without an error (v2: the mask no longer matched its image, wrong logits; v3-mpc: the
/// parties out of step). The bundle id now seals the manifest: any edited field is
/// refused on read, saying so; the same content in other whitespace is still read.
#[test]
fn edited_manifest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = tempfile::tempdir().unwrap();
    let opts = OpenOptions::default().ledger_in(ledger.path());
    let mut w = BundleWriter::create(dir.path(), MODEL, "v3-mpc", Seed::from_u64(91)).unwrap();
    for _ in 0..2 {
        w.start_session();
        w.push(&MaterialRequest::Triples(TriplesRequest { n: 8 }), &NoWeights).unwrap();
    }
    let dealt = w.finish().unwrap();
    assert_eq!(dealt.bundle_id, dealt.sealed_id());
    type Edit = fn(&mut Manifest);
    let edits: [(&str, Edit); 7] = [
        ("session start", |m| *m.sessions[1].get_mut("triples.c").unwrap() += 1),
        ("sessions", |m| m.sessions.swap(0, 1)),
        ("shard hash", |m| m.shards.get_mut("p0").unwrap().index_blake3 = "00".repeat(32)),
        ("model", |m| m.model_fingerprint = "blake3:other".into()),
        ("variant", |m| m.variant = "v2".into()),
        ("bundle id", |m| m.bundle_id = "ab".repeat(32)),
        ("nonce", |m| m.nonce = "00".repeat(16)),
    ];
    for p in ["p0", "p1"] {
        let path = dir.path().join(p).join("manifest.json");
        let original = std::fs::read(&path).unwrap();
        for (what, edit) in &edits {
            let mut m = dealt.clone();
            edit(&mut m);
            std::fs::write(&path, serde_json::to_string_pretty(&m).unwrap()).unwrap();
            let err = Manifest::read(&dir.path().join(p)).unwrap_err();
            assert!(matches!(err, MaterialError::Format { .. }), "{p} {what}: {err}");
            let msg = err.to_string();
            assert!(msg.contains("manifest.json: does not match its bundle id"), "{p} {what}: {msg}");
            assert!(msg.contains("edited or corrupted"), "{p} {what}: {msg}");
            let err = if p == "p0" {
                Material::<P0>::open_with(&dir.path().join(p), &opts).map(|_| ()).unwrap_err()
            } else {
                Material::<P1>::open_with(&dir.path().join(p), &opts).map(|_| ()).unwrap_err()
            };
            assert!(err.to_string().contains("does not match its bundle id"), "{p} {what}: {err}");
        }
        // Other whitespace, same content: read as dealt.
        std::fs::write(&path, serde_json::to_string(&dealt).unwrap()).unwrap();
        assert_eq!(Manifest::read(&dir.path().join(p)).unwrap(), dealt);
        std::fs::write(&path, original).unwrap();
    }
    // A dealer may seal what it writes (the check is against edits, not the dealer).
    let mut m = dealt.clone();
    m.created_at += 1;
    m.seal();
    assert_ne!(m.bundle_id, dealt.bundle_id);
    std::fs::write(dir.path().join("p1/manifest.json"), serde_json::to_string(&m).unwrap()).unwrap();
    assert!(Material::<P1>::open_with(&dir.path().join("p1"), &opts).is_ok());
}
