//! Material parsing never panics, and every rejection is a typed error.
//!
//! * `corrupted_shards_never_panic` (proptest): shards with random bytes changed, the
//!   manifest's hash updated and the manifest resealed so that parsing gets past the
//!   blake3 and bundle-id checks (as a malicious or buggy dealer could), either open
//!   and hand out material or fail with an error.
//! * `material_file_mutation_campaign` (issue 14): one dealt bundle of two sessions
//!   holding every kind of material, session 0 used by both parties, kept in memory;
//!   each case mutates one file (a party's or the top manifest, a shard, a journal, a
//!   ledger entry) with byte-level or JSON-aware edits, sometimes resealing the
//!   manifest over the mutated shard or a structurally edited manifest, writes only
//!   that file into a per-thread copy in `/dev/shm` (tmpfs: the journal's fsyncs cost
//!   nothing there), runs `Manifest::read`, `Material::open_with`, `start_session` and
//!   a take of every kind the bundle holds, and restores what changed. Oracles: no
//!   panic; every failure is a `MaterialError` with a message; an unresealed edit of a
//!   manifest or shard is never accepted unless its content is unchanged; a mutated
//!   journal or ledger entry never makes used material available again. 3,000 cases by
//!   default, 10^6 with `SHARDLM_LONG_TESTS=1`.

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shardlm_mpc::material::{
    AndTriplesRequest, BitProduct3TriplesRequest, BitTriplesRequest, BitVectorTriplesRequest,
    CarryTablesRequest, CausalMatrixTripleRequest, DaBitsRequest, LookupRequest, MaskedLinearRequest,
    MatrixTripleRequest, NormTriplesRequest, PowerTuplesRequest, RandomOtsRequest, Read, RowTriplesRequest,
    SquarePairsRequest, TableFn, TriplesRequest, TruncOtsRequest,
};
use shardlm_mpc::material::{
    BundleWriter, Manifest, Material, MaterialError, MaterialRequest, MaterialSource, NoWeights, OpenOptions,
};
use shardlm_mpc::prg::Seed;
use shardlm_mpc::share::{Role, P0, P1};
use shardlm_testkit::campaign::{self, CaseResult, Outcome};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn bundle(dir: &Path) {
    let mut w = BundleWriter::create(dir, "m", "v3-mpc", Seed::from_u64(1)).unwrap();
    w.push(&MaterialRequest::Triples(TriplesRequest { n: 10 }), &NoWeights).unwrap();
    w.push(&MaterialRequest::MatrixTriple(MatrixTripleRequest { m: 2, k: 3, n: 2 }), &NoWeights).unwrap();
    w.push(&MaterialRequest::TruncOts(TruncOtsRequest { n: 5, bits: 16 }), &NoWeights).unwrap();
    w.finish().unwrap();
}

/// The manifest's hash of a shard's index (preamble and trailer, as the preamble
/// locates it), or `None` where the bytes have no such index.
fn index_hash(bytes: &[u8]) -> Option<String> {
    let word = |at: usize| Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?) as usize);
    let (off, len) = (word(16)?, word(24)?);
    let trailer = bytes.get(off..off.checked_add(len)?)?;
    let mut h = blake3::Hasher::new();
    h.update(bytes.get(..64)?);
    h.update(trailer);
    Some(h.finalize().to_hex().to_string())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

    #[test]
    fn corrupted_shards_never_panic(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6), cut in any::<Option<prop::sample::Index>>()) {
        let dir = tempfile::tempdir().unwrap();
        let ledger = tempfile::tempdir().unwrap();
        bundle(dir.path());
        let shard = dir.path().join("p0/p0.shard");
        let mut bytes = std::fs::read(&shard).unwrap();
        for (i, v) in edits {
            let i = i.index(bytes.len());
            bytes[i] = v;
        }
        if let Some(c) = cut {
            bytes.truncate(c.index(bytes.len()));
        }
        std::fs::write(&shard, &bytes).unwrap();
        let mut m = Manifest::read(dir.path()).unwrap();
        // Re-hash the index as found (the streams' chunk hashes stay as dealt, so edits
        // to stream bytes are refused when read; edits to the trailer reach the parser).
        if let Some(h) = index_hash(&bytes) {
            m.shards.get_mut("p0").unwrap().index_blake3 = h;
        }
        m.seal();
        std::fs::write(dir.path().join("p0/manifest.json"), serde_json::to_string(&m).unwrap()).unwrap();
        let opts = OpenOptions::default().ledger_in(ledger.path());
        if let Ok(mut mat) = Material::<P0>::open_with(&dir.path().join("p0"), &opts) {
            let _ = mat.take(TriplesRequest { n: 10 });
            let _ = mat.take(MatrixTripleRequest { m: 2, k: 3, n: 2 });
            let _ = mat.take(TruncOtsRequest { n: 5, bits: 16 });
            let _ = mat.take(TriplesRequest { n: 1 });
        }
    }
}

// ---------------------------------------------------------------------------------
// The file-mutation campaign.

const MODEL: &str = "blake3:fuzz-model";
const D_IN: usize = 3;
const D_OUT: usize = 2;

fn weight(id: u32) -> Result<Vec<u64>, String> {
    match id {
        4 => Ok((0..(D_OUT * D_IN) as u64).map(|i| i * 7 + 1).collect()),
        _ => Err(format!("no weight {id}")),
    }
}

/// One request of every kind, small.
fn session_requests() -> Vec<MaterialRequest> {
    vec![
        TriplesRequest { n: 4 }.into(),
        SquarePairsRequest { n: 3 }.into(),
        MatrixTripleRequest { m: 2, k: 3, n: 2 }.into(),
        CausalMatrixTripleRequest { m: 3, k: 3, n: 2, start: 0 }.into(),
        TruncOtsRequest { n: 5, bits: 16 }.into(),
        AndTriplesRequest { words: 2 }.into(),
        DaBitsRequest { n: 3 }.into(),
        BitTriplesRequest { n: 3 }.into(),
        CarryTablesRequest { count: 3, chunk: 3 }.into(),
        NormTriplesRequest { rows: 2, cols: 3 }.into(),
        RowTriplesRequest { rows: 2, cols: 3 }.into(),
        PowerTuplesRequest { n: 3, degree: 3 }.into(),
        RandomOtsRequest { n_choices: 4, bits: 13, count: 3 }.into(),
        MaskedLinearRequest { n: 2, d_in: D_IN, d_out: D_OUT, weight: 4 }.into(),
        LookupRequest {
            count: 3,
            k: 6,
            reads: vec![Read { func: TableFn::Relu, bits: 6 }, Read { func: TableFn::IsZero, bits: 4 }],
        }
        .into(),
        BitVectorTriplesRequest { n: 3, bits: 5, y_bits: 2 }.into(),
        BitProduct3TriplesRequest { n: 3 }.into(),
    ]
}

/// Takes `req` (any kind but masked-linear, which only P0 takes: `None`).
fn take_common<R: Role>(m: &mut Material<R>, req: &MaterialRequest) -> Option<Result<(), MaterialError>> {
    use MaterialRequest as Q;
    Some(match req.clone() {
        Q::Triples(r) => m.take(r).map(drop),
        Q::SquarePairs(r) => m.take(r).map(drop),
        Q::MatrixTriple(r) => m.take(r).map(drop),
        Q::CausalMatrixTriple(r) => m.take(r).map(drop),
        Q::TruncOts(r) => m.take(r).map(drop),
        Q::AndTriples(r) => m.take(r).map(drop),
        Q::DaBits(r) => m.take(r).map(drop),
        Q::BitTriples(r) => m.take(r).map(drop),
        Q::CarryTables(r) => m.take(r).map(drop),
        Q::NormTriples(r) => m.take(r).map(drop),
        Q::RowTriples(r) => m.take(r).map(drop),
        Q::PowerTuples(r) => m.take(r).map(drop),
        Q::RandomOts(r) => m.take(r).map(drop),
        Q::Lookups(r) => m.take(r).map(drop),
        Q::BitVectorTriples(r) => m.take(r).map(drop),
        Q::BitProduct3Triples(r) => m.take(r).map(drop),
        Q::MaskedLinear(_) => return None,
    })
}

fn take_p0(m: &mut Material<P0>, req: &MaterialRequest) -> Result<(), MaterialError> {
    match req {
        MaterialRequest::MaskedLinear(r) => m.take(*r).map(drop),
        _ => take_common(m, req).unwrap_or(Ok(())),
    }
}

fn take_p1(m: &mut Material<P1>, req: &MaterialRequest) -> Result<(), MaterialError> {
    take_common(m, req).unwrap_or(Ok(()))
}

/// The dealt bundle after session 0, in memory.
struct Base {
    /// Every file, by path relative to a workspace (`b/...` the bundle, `l/...` the
    /// ledger).
    files: BTreeMap<String, Vec<u8>>,
    manifest: Manifest,
    /// What each party had consumed after session 0.
    consumed: [BTreeMap<String, u64>; 2],
}

fn read_tree(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            read_tree(root, &e.path(), out);
        } else {
            let rel = e.path().strip_prefix(root).unwrap().to_string_lossy().into_owned();
            out.insert(rel, std::fs::read(e.path()).unwrap());
        }
    }
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| {
        let root = tempfile::tempdir().unwrap();
        let (b, l) = (root.path().join("b"), root.path().join("l"));
        let mut w = BundleWriter::create(&b, MODEL, "v3-mpc", Seed::from_u64(3)).unwrap();
        for _ in 0..2 {
            w.start_session();
            for r in session_requests() {
                w.push(&r, &weight).unwrap();
            }
        }
        let manifest = w.finish().unwrap();
        let opts = OpenOptions::for_model(MODEL).ledger_in(&l);
        let mut m0 = Material::<P0>::open_with(&b.join("p0"), &opts).unwrap();
        let mut m1 = Material::<P1>::open_with(&b.join("p1"), &opts).unwrap();
        m0.start_session(0).unwrap();
        m1.start_session(0).unwrap();
        for r in session_requests() {
            take_p0(&mut m0, &r).unwrap();
            take_p1(&mut m1, &r).unwrap();
        }
        drop((m0, m1));
        // Consumption as a reopen sees it (own streams only).
        let consumed = [
            Material::<P0>::open_with(&b.join("p0"), &opts).unwrap().consumed().clone(),
            Material::<P1>::open_with(&b.join("p1"), &opts).unwrap().consumed().clone(),
        ];
        let mut files = BTreeMap::new();
        read_tree(root.path(), root.path(), &mut files);
        files.retain(|k, _| !k.ends_with(".lock"));
        eprintln!(
            "fuzz bundle: {} files, p0.shard {} bytes, p1.shard {} bytes",
            files.len(),
            manifest.shards["p0"].bytes,
            manifest.shards["p1"].bytes
        );
        Base { files, manifest, consumed }
    })
}

thread_local! {
    /// This thread's copy of the base files (tmpfs when there is one).
    static WORKSPACE: RefCell<Option<tempfile::TempDir>> = const { RefCell::new(None) };
}

fn with_workspace<T>(f: impl FnOnce(&Path) -> T) -> T {
    WORKSPACE.with(|w| {
        let mut w = w.borrow_mut();
        let dir = w.get_or_insert_with(|| {
            let shm = Path::new("/dev/shm");
            let d = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.unwrap();
            for (rel, bytes) in &base().files {
                let p = d.path().join(rel);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, bytes).unwrap();
            }
            d
        });
        f(dir.path())
    })
}

/// Numbers worth trying where a JSON number was.
const NUMBERS: &[&str] = &[
    "0",
    "1",
    "2",
    "63",
    "64",
    "65",
    "4294967295",
    "4294967296",
    "9007199254740993",
    "18446744073709551615",
    "18446744073709551616",
    "-1",
    "1e3",
    "0.5",
    "99999999999999999999999999",
];

/// Random edits of `bytes`; JSON-aware ones when `json`.
fn mutate(rng: &mut ChaCha8Rng, bytes: &[u8], json: bool) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let ops = if json { 11 } else { 8 };
    let at = |rng: &mut ChaCha8Rng, len: usize| if len == 0 { 0 } else { rng.gen_range(0..len) };
    match rng.gen_range(0..ops) {
        0 if !b.is_empty() => {
            let i = at(rng, b.len());
            b[i] ^= rng.gen_range(1..=255u8);
        }
        1 if !b.is_empty() => {
            let i = at(rng, b.len());
            b[i] ^= 1 << rng.gen_range(0..8);
        }
        2 => {
            for _ in 0..rng.gen_range(2..8) {
                if !b.is_empty() {
                    let i = at(rng, b.len());
                    b[i] = rng.gen();
                }
            }
        }
        3 => {
            let to = at(rng, b.len());
            b.truncate(to);
        }
        4 => {
            let i = at(rng, b.len() + 1);
            let n = rng.gen_range(1..16);
            let ins: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
            b.splice(i..i, ins);
        }
        5 if !b.is_empty() => {
            let i = at(rng, b.len());
            let end = (i + rng.gen_range(1..64)).min(b.len());
            b.drain(i..end);
        }
        6 if !b.is_empty() => {
            let i = at(rng, b.len());
            let end = (i + rng.gen_range(1..32)).min(b.len());
            let v = *[0u8, 0xff, rng.gen()].get(rng.gen_range(0..3)).unwrap_or(&0);
            b[i..end].iter_mut().for_each(|x| *x = v);
        }
        7 if b.len() >= 8 => {
            // A little-endian word somewhere set to an edge value.
            let i = at(rng, b.len() - 7);
            let v: u64 = *[0, 1, u64::MAX, u64::MAX / 2, 1 << 32, 64, b.len() as u64]
                .get(rng.gen_range(0..7))
                .unwrap_or(&0);
            b[i..i + 8].copy_from_slice(&v.to_le_bytes());
        }
        8 => {
            // A number replaced.
            let runs = digit_runs(&b);
            if !runs.is_empty() {
                let (s, e) = runs[at(rng, runs.len())];
                let old: u64 = std::str::from_utf8(&b[s..e]).ok().and_then(|t| t.parse().ok()).unwrap_or(0);
                let new = match rng.gen_range(0..3) {
                    0 => old.wrapping_add(1).to_string(),
                    1 => old.wrapping_sub(1).to_string(),
                    _ => NUMBERS[at(rng, NUMBERS.len())].to_string(),
                };
                b.splice(s..e, new.into_bytes());
            }
        }
        9 => {
            // A character inside a string changed.
            let quotes: Vec<usize> =
                b.iter().enumerate().filter(|(_, c)| **c == b'"').map(|(i, _)| i).collect();
            if quotes.len() >= 2 {
                let q = at(rng, quotes.len() - 1);
                let (s, e) = (quotes[q] + 1, quotes[q + 1]);
                if e > s {
                    let i = rng.gen_range(s..e);
                    b[i] = *b"0af:.-_p1x".get(rng.gen_range(0..10)).unwrap_or(&b'x');
                }
            }
        }
        _ => {
            // A span duplicated.
            if !b.is_empty() {
                let i = at(rng, b.len());
                let end = (i + rng.gen_range(1..48)).min(b.len());
                let span = b[i..end].to_vec();
                let j = at(rng, b.len() + 1);
                b.splice(j..j, span);
            }
        }
    }
    b
}

fn digit_runs(b: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let s = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            out.push((s, i));
        } else {
            i += 1;
        }
    }
    out
}

/// A structural edit of a manifest a buggy dealer could write (then resealed).
fn edit_manifest(rng: &mut ChaCha8Rng, m: &mut Manifest, party: &str) -> &'static str {
    let big = |rng: &mut ChaCha8Rng| {
        *[0u64, 1, u64::MAX, u64::MAX - 1, 1 << 40].get(rng.gen_range(0..5)).unwrap_or(&0)
    };
    match rng.gen_range(0..8) {
        0 => {
            let s = rng.gen_range(0..m.sessions.len());
            let keys: Vec<String> = m.sessions[s].keys().cloned().collect();
            if let Some(k) = keys.get(rng.gen_range(0..keys.len().max(1))) {
                let v = big(rng);
                m.sessions[s].insert(k.clone(), v);
            }
            "session start"
        }
        1 => {
            m.sessions.push(BTreeMap::from([("triples.c".to_string(), big(rng))]));
            "extra session"
        }
        2 => {
            m.sessions.clear();
            "no sessions"
        }
        3 => {
            m.sessions.reverse();
            "sessions reversed"
        }
        4 => {
            m.shards.remove(party);
            "own shard removed"
        }
        5 => {
            m.format_version = rng.gen();
            "format version"
        }
        6 => {
            m.model_fingerprint = "blake3:other".into();
            "model"
        }
        _ => {
            m.sessions.iter_mut().for_each(|s| {
                s.insert("not-a-stream.x".into(), 1);
            });
            "unknown stream"
        }
    }
}

/// Which variant of `MaterialError`: the rejection's type.
fn variant(e: &MaterialError) -> &'static str {
    match e {
        MaterialError::Exhausted { .. } => "Exhausted",
        MaterialError::Mismatch(_) => "Mismatch",
        MaterialError::InvalidRequest(_) => "InvalidRequest",
        MaterialError::Corrupted { .. } => "Corrupted",
        MaterialError::OtherPartyPart { .. } => "OtherPartyPart",
        MaterialError::Spent { .. } => "Spent",
        MaterialError::Locked { .. } => "Locked",
        MaterialError::WrongParty { .. } => "WrongParty",
        MaterialError::WrongModel { .. } => "WrongModel",
        MaterialError::Format { .. } => "Format",
        MaterialError::Weights { .. } => "Weights",
        MaterialError::Io { .. } => "Io",
    }
}

/// The rejection kind: the error's variant and its message without the workspace path.
fn rejection(e: &MaterialError, ws: &Path) -> Result<Outcome, String> {
    let msg = e.to_string();
    if msg.trim().is_empty() {
        return Err(format!("{} error with an empty message", variant(e)));
    }
    let msg = fold_ids(&msg.replace(&ws.display().to_string(), ""));
    // Group by the first words: serde's positions and the numbers vary.
    let head: String = msg.split(['(', ';']).next().unwrap_or("").chars().take(60).collect();
    Ok(Outcome::Rejected(format!("{}: {}", variant(e), campaign::kind(&head))))
}

/// Runs of 32 or more hex digits (bundle ids) as `<id>`.
fn fold_ids(msg: &str) -> String {
    let mut out = String::new();
    let mut run = String::new();
    for ch in msg.chars().chain(std::iter::once(' ')) {
        if ch.is_ascii_hexdigit() {
            run.push(ch);
            continue;
        }
        out.push_str(if run.len() >= 32 { "<id>" } else { &run });
        run.clear();
        out.push(ch);
    }
    out.pop();
    out
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    PartyManifest,
    TopManifest,
    Shard,
    Journal,
    Ledger,
}

/// One case: mutate a file of party `p`, open, take, restore.
fn case(i: u64) -> CaseResult {
    let base = base();
    let mut rng = ChaCha8Rng::seed_from_u64(i ^ 0x6675_7a7a_0000_0000);
    let p = rng.gen_range(0..2usize);
    let party = ["p0", "p1"][p];
    let target = match rng.gen_range(0..100) {
        0..=29 => Target::PartyManifest,
        30..=34 => Target::TopManifest,
        35..=69 => Target::Shard,
        70..=84 => Target::Journal,
        _ => Target::Ledger,
    };
    let id = &base.manifest.bundle_id;
    let rel = match target {
        Target::PartyManifest => format!("b/{party}/manifest.json"),
        Target::TopManifest => "b/manifest.json".to_string(),
        Target::Shard => format!("b/{party}/{party}.shard"),
        Target::Journal => format!("b/{party}/{party}.journal"),
        Target::Ledger => format!("l/{id}.{party}.json"),
    };
    let original = &base.files[&rel];
    let reseal = matches!(target, Target::Shard | Target::PartyManifest) && rng.gen_bool(0.3);
    // (relative path, bytes) to write; the journal/ledger the run may rewrite.
    let mut writes: Vec<(String, Vec<u8>)> = Vec::new();
    let mut what = String::new();
    let mut resealed_id = None;
    if reseal && target == Target::PartyManifest {
        // A lying but sealed manifest: the campaign then runs on it.
        let mut m = base.manifest.clone();
        what = edit_manifest(&mut rng, &mut m, party).to_string();
        m.seal();
        resealed_id = Some(m.bundle_id.clone());
        writes.push((rel.clone(), serde_json::to_vec_pretty(&m).unwrap()));
    } else {
        let json = target != Target::Shard || rng.gen_bool(0.2);
        let mutated = mutate(&mut rng, original, json);
        if reseal {
            // The shard's hash updated in a resealed manifest (a buggy dealer).
            let mut m = base.manifest.clone();
            if let (Some(s), Some(h)) = (m.shards.get_mut(party), index_hash(&mutated)) {
                s.index_blake3 = h;
            }
            m.seal();
            resealed_id = Some(m.bundle_id.clone());
            writes.push((format!("b/{party}/manifest.json"), serde_json::to_vec_pretty(&m).unwrap()));
        }
        writes.push((rel.clone(), mutated));
    }
    with_workspace(|ws| {
        let journal = ws.join(format!("b/{party}/{party}.journal"));
        for (r, bytes) in &writes {
            std::fs::write(ws.join(r), bytes).unwrap();
        }
        if resealed_id.is_some() {
            // The journal names the old id: without it the resealed bundle opens fresh.
            std::fs::remove_file(&journal).unwrap();
        }
        let result = run(ws, p, target, reseal, &writes, base);
        // Restore what the case changed.
        for (r, _) in &writes {
            std::fs::write(ws.join(r), &base.files[r]).unwrap();
        }
        for r in [format!("b/{party}/{party}.journal"), format!("l/{id}.{party}.json")] {
            std::fs::write(ws.join(&r), &base.files[&r]).unwrap();
        }
        // A resealed manifest got a new id, and with it a new ledger entry (unless the
        // edit changed nothing: then the id and the entry are the base's, restored above).
        if let Some(new) = resealed_id.as_ref().filter(|new| *new != id) {
            let _ = std::fs::remove_file(ws.join(format!("l/{new}.{party}.json")));
        }
        // Two cases in every 32 (both threads), check the workspace is back to the base
        // (cases must not leak state into each other).
        if i % 32 < 2 {
            for (r, bytes) in &base.files {
                if std::fs::read(ws.join(r)).ok().as_ref() != Some(bytes) {
                    return Err(format!("the harness left {r} changed after {target:?} {what}"));
                }
            }
        }
        result.map_err(|e| format!("{target:?} {what} (reseal {reseal}): {e}"))
    })
}

fn run(
    ws: &Path,
    p: usize,
    target: Target,
    reseal: bool,
    writes: &[(String, Vec<u8>)],
    base: &Base,
) -> CaseResult {
    let party = ["p0", "p1"][p];
    let part: PathBuf = ws.join("b").join(party);
    let changed = |rel: &str| writes.iter().any(|(r, b)| r == rel && *b != base.files[r]);
    // The manifest alone (the top one too, which only `Manifest::read` of the bundle
    // directory reads).
    let dir = if target == Target::TopManifest { ws.join("b") } else { part.clone() };
    match Manifest::read(&dir) {
        Ok(m) => {
            if !reseal && matches!(target, Target::PartyManifest | Target::TopManifest) && m != base.manifest
            {
                return Err("an edited manifest was read as valid".into());
            }
            if target == Target::TopManifest {
                return Ok(Outcome::Accepted);
            }
        }
        Err(e) => {
            if target == Target::TopManifest {
                return rejection(&e, ws);
            }
        }
    }
    let opts = OpenOptions::for_model(MODEL).ledger_in(&ws.join("l"));
    let outcome = if p == 0 {
        open_and_take::<P0>(&part, &opts, base, target, take_p0)
    } else {
        open_and_take::<P1>(&part, &opts, base, target, take_p1)
    };
    match outcome {
        Ok(Ok(())) => {
            if !reseal && target == Target::Shard && changed(&format!("b/{party}/{party}.shard")) {
                return Err("a changed shard was accepted without its hash updated".into());
            }
            Ok(Outcome::Accepted)
        }
        Ok(Err(e)) | Err(e) => match e {
            Failure::Material(e) => rejection(&e, ws),
            Failure::Oracle(v) => Err(v),
        },
    }
}

enum Failure {
    Material(MaterialError),
    Oracle(String),
}

impl From<MaterialError> for Failure {
    fn from(e: MaterialError) -> Self {
        Failure::Material(e)
    }
}

/// Opens party `R`'s part and takes a session of every kind. `Err`: the open failed;
/// `Ok(Err)`: a later step failed or an oracle was broken.
fn open_and_take<R: Role>(
    part: &Path,
    opts: &OpenOptions,
    base: &Base,
    target: Target,
    take: fn(&mut Material<R>, &MaterialRequest) -> Result<(), MaterialError>,
) -> Result<Result<(), Failure>, Failure> {
    let mut m = Material::<R>::open_with(part, opts)?;
    if matches!(target, Target::Journal | Target::Ledger) {
        // The other record still holds session 0: it stays spent.
        let done = &base.consumed[R::ID as usize];
        for (k, &v) in done {
            let now = m.consumed().get(k).copied().unwrap_or(0);
            if now < v {
                return Ok(Err(Failure::Oracle(format!(
                    "a mutated record moved {k} back from {v} to {now}: used material is available again"
                ))));
            }
        }
        if m.next_session() == Some(0) {
            return Ok(Err(Failure::Oracle("session 0 is available again".into())));
        }
    }
    Ok((|| {
        match m.next_session() {
            Some(n) => m.start_session(n)?,
            None => {
                let e = m
                    .start_session(0)
                    .err()
                    .ok_or_else(|| Failure::Oracle("a spent session started".into()))?;
                return Err(e.into());
            }
        }
        for r in session_requests() {
            take(&mut m, &r)?;
        }
        Ok(())
    })())
}

#[test]
fn material_file_mutation_campaign() {
    let n = campaign::cases(3_000, 1_000_000);
    let start = std::time::Instant::now();
    base();
    campaign::run("material-files", n, case);
    let secs = start.elapsed().as_secs_f64();
    println!("material-files: {n} mutated files in {secs:.1} s ({:.0} files/s)", n as f64 / secs);
}
