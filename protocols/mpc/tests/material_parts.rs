//! Why each party must get only its own part of a bundle (DESIGN.md section 1), shown
//! on the first opening of a forward pass: RMSNorm's norm triple, where P0 sends P1
//! `d0 = x0 - a0` of its share `x0` of the residual stream. `d0` is uniform to P1 as
//! long as `a0` is unknown to it; a server that can read P0's part re-derives `a0` and,
//! with its own share `x1`, the secret itself (the prompt's embeddings). The server
//! therefore refuses a directory that holds P0's part, and the client P1's.

use rand::SeedableRng;
use shardlm_mpc::beaver::norm_square_start;
use shardlm_mpc::material::{
    BundleWriter, DealerRole, Material, MaterialError, MaterialSource, NoWeights, NormTriplesRequest,
    OpenOptions,
};
use shardlm_mpc::prg::Seed;
use shardlm_mpc::ring;
use shardlm_mpc::share::{share, P0, P1};

const ROWS: usize = 3;
const COLS: usize = 8;

fn dealt(dir: &std::path::Path) {
    let mut w = BundleWriter::create(dir, "blake3:model", "v3-mpc", Seed::from_u64(9))
        .unwrap()
        .dealt_by(DealerRole::Independent);
    w.start_session();
    w.push(&NormTriplesRequest { rows: ROWS, cols: COLS }.into(), &NoWeights).unwrap();
    w.finish().unwrap();
}

#[test]
fn a_server_holding_the_clients_part_learns_the_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = tempfile::tempdir().unwrap();
    dealt(dir.path());
    let opts = OpenOptions::default().ledger_in(ledger.path());

    // The secret: P0's input to the first RMSNorm (fixed point), shared as the protocol does.
    let x: Vec<u64> = (0..ROWS * COLS).map(|i| ring::encode(i as f64 * 0.25 - 2.0, 16)).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let (x0, x1) = share(&x, &mut rng);

    // P0's first message, as the protocol computes it from P0's part of the bundle.
    let mut m0 = Material::<P0>::open_with(&dir.path().join("p0"), &opts).unwrap();
    let t0 = m0.take(NormTriplesRequest { rows: ROWS, cols: COLS }).unwrap();
    let (_, d0) = norm_square_start(&x0, t0).unwrap();
    assert_ne!(ring::add(&d0, x1.as_slice()), x, "the message alone does not give the secret");

    // A server that can also read p0/ re-derives a0 from P0's seed and raw parts ...
    let a0 = {
        let other = tempfile::tempdir().unwrap();
        let mut stolen = Material::<P0>::open_with(
            &dir.path().join("p0"),
            &OpenOptions::default().ledger_in(other.path()),
        );
        // (the legitimate client holds the lock; a copy of the files works just as well)
        if stolen.is_err() {
            let copy = tempfile::tempdir().unwrap();
            for f in ["manifest.json", "p0.shard"] {
                std::fs::copy(dir.path().join("p0").join(f), copy.path().join(f)).unwrap();
            }
            stolen = Material::<P0>::open_with(copy.path(), &OpenOptions::default().ledger_in(other.path()));
        }
        stolen.unwrap().take(NormTriplesRequest { rows: ROWS, cols: COLS }).unwrap().a
    };
    // ... and with its own share x1: x0 = d0 + a0, x = x0 + x1.
    let x0_recovered = ring::add(&d0, a0.as_slice());
    assert_eq!(ring::add(&x0_recovered, x1.as_slice()), x, "P1 with P0's part learns the secret");

    // So the server refuses a directory holding P0's part, naming why; and the client
    // refuses P1's. Each opens its own part.
    let err = Material::<P1>::open_with(dir.path(), &opts).unwrap_err();
    assert!(matches!(err, MaterialError::OtherPartyPart { .. }), "{err}");
    assert!(err.to_string().contains("learns the prompt"), "{err}");
    let both = tempfile::tempdir().unwrap();
    for f in ["manifest.json", "p0.shard"] {
        std::fs::copy(dir.path().join("p0").join(f), both.path().join(f)).unwrap();
    }
    std::fs::copy(dir.path().join("p1/p1.shard"), both.path().join("p1.shard")).unwrap();
    let err = Material::<P1>::open_with(both.path(), &opts).unwrap_err();
    assert!(matches!(err, MaterialError::OtherPartyPart { .. }), "{err}");
    let err = Material::<P0>::open_with(both.path(), &opts).unwrap_err();
    assert!(err.to_string().contains("recover every intermediate activation"), "{err}");
    assert!(Material::<P1>::open_with(&dir.path().join("p1"), &opts).is_ok());

    // Parts are private to their owner on disk.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("p0")), 0o700);
        assert_eq!(mode(&dir.path().join("p1")), 0o700);
        assert_eq!(mode(&dir.path().join("p0/p0.shard")), 0o600);
        assert_eq!(mode(&dir.path().join("p1/p1.shard")), 0o600);
        assert_eq!(mode(&dir.path().join("manifest.json")), 0o600);
    }
}

/// `Debug` of material and protocol state shows lengths, never values: a log line or a
/// panic message cannot leak a share, a mask or one-time material.
#[test]
fn debug_never_prints_shares_or_masks() {
    use shardlm_mpc::material::{
        DaBitsRequest, IdealDealer, MaskedLinearRequest, RandomOtsRequest, TriplesRequest,
    };
    let (mut m0, _) = IdealDealer::new(Seed::from_u64(3))
        .with_weights(std::sync::Arc::new(|_: u32| Ok(vec![5u64; 6])))
        .split();
    let shown = [
        format!("{:?}", m0.take(TriplesRequest { n: 4 }).unwrap()),
        format!("{:?}", m0.take(DaBitsRequest { n: 4 }).unwrap()),
        format!("{:?}", m0.take(RandomOtsRequest { n_choices: 4, bits: 8, count: 4 }).unwrap()),
        format!("{:?}", m0.take(MaskedLinearRequest { n: 2, d_in: 3, d_out: 2, weight: 0 }).unwrap()),
        format!("{:?}", Seed::from_u64(3)),
    ];
    for s in &shown {
        // Values would show as long digit runs; lengths are one or two digits.
        assert!(!s.chars().collect::<Vec<_>>().windows(6).any(|w| w.iter().all(char::is_ascii_digit)), "{s}");
        assert!(!s.contains('['), "{s}");
    }
    assert!(shown[3].contains("len 6") && shown[3].contains("len 4"), "{}", shown[3]);
}
