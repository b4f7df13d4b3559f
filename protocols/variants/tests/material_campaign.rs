//! Issue 14: a mutation campaign over dealt bundles, per variant (v2 and v3-mpc), with
//! the real protocol running on the material afterwards.
//!
//! A bundle of 3 sessions is dealt for `testdata/tiny-bytes` (a 6-token prompt, 2 new
//! tokens) and session 0 is run correctly, once; each case starts from a byte copy of
//! that state (the bundle and the ledger), applies one random mutation (truncated
//! shard or manifest, a flipped byte in a shard, manifest, journal or ledger entry, an
//! edited manifest field, a deleted journal, lock or ledger entry, a restored pre-use
//! copy, a restored post-session-0 copy after the journal moved on, swapped shards, a
//! copy in another directory), then makes 3 attempts at the next session on both
//! parties as the binaries do (v2: the client takes its next session, the server holds
//! no material; v3-mpc: the client names its next session, the server admits it at or
//! after its own next one and the client skips forward to the server's), running the
//! real protocol and comparing with the plaintext engine (v2: greedy equal and logits
//! within 1e-2; v3-mpc: top-1 equal for every pass).
//!
//! Every take of every party is logged with the stream ranges it consumed, so each
//! attempt is classified: a clear error (a typed material error, whose message says
//! what happened), correct output on fresh material, a silent reuse (a range of this
//! bundle this party had already used, in session 0 or an earlier attempt), a wrong
//! output (a take that is not exactly one dealt request's parts, the two parties' i-th
//! takes of different dealt requests, or an output unlike the plaintext's, without an
//! error), an unclear error (only non-material errors), or a panic. One summary line
//! per variant, then the cases per mutation class and the clear errors grouped by
//! message; the test fails on any silent reuse, wrong output, unclear error or panic.
//! 20 cases per variant by default (seconds), 300 with `SHARDLM_LONG_TESTS=1`.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shardlm_configs::{FixedPoint, ModelConfig, Variant};
use shardlm_model::qwen2::forward;
use shardlm_model::sampling::argmax;
use shardlm_model::{ModelDir, PlainEngine, Rows, Weights};
use shardlm_mpc::material::{
    BundleWriter, Component, Manifest, Material, MaterialError, MaterialRequest, MaterialSource, OpenOptions,
    Request, Src,
};
use shardlm_mpc::prg::Seed;
use shardlm_mpc::share::{Role, P0, P1};
use shardlm_mpc::MpcError;
use shardlm_testkit::campaign::{self, Outcome};
use shardlm_testkit::fixtures;
use shardlm_transport::memory;
use shardlm_variants::plan::{deal_sessions, plan_session, SessionShape};
use shardlm_variants::v2::{V2Client, V2Error, V2Server};
use shardlm_variants::v3_mpc::{serve_driven, MpcParty, MpcPartyError};
use shardlm_variants::RingWeights;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const FINGERPRINT: &str = "blake3:tiny-bytes-campaign";
const SESSIONS: usize = 3;
const NEW_TOKENS: usize = 2;
const ATTEMPTS: usize = 3;

// ---------------------------------------------------------------------------------
// Tracking what each party takes.

/// One successful take: per component (layout order) its stream, the range taken and
/// whether the party holds that stream (not absent for it).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Take {
    ranges: Vec<(String, u64, u64, bool)>,
}

/// A party's material that logs every successful take.
struct Tracked<'a, R: Role> {
    m: &'a mut Material<R>,
    log: &'a mut Vec<Take>,
}

impl<R: Role> MaterialSource<R> for Tracked<'_, R> {
    fn take<Q: Request<R>>(&mut self, request: Q) -> Result<Q::Output, MaterialError> {
        let comps: Vec<Component> = request.layout()?;
        let before: Vec<u64> =
            comps.iter().map(|c| self.m.consumed().get(&c.name).copied().unwrap_or(0)).collect();
        let out = self.m.take(request)?;
        let me = R::ID as usize;
        let ranges = comps
            .iter()
            .zip(before)
            .filter(|(c, _)| c.len > 0)
            .map(|(c, b)| (c.name.clone(), b, b + c.len, c.src[me] != Src::Absent))
            .collect();
        self.log.push(Take { ranges });
        Ok(out)
    }
}

/// Ranges of the bundle each party has used so far: `(party, stream) -> [start, end)`.
type Used = BTreeMap<(u8, String), Vec<(u64, u64)>>;

/// Records `takes` of `party` in `used`; returns the first range that was used before.
fn record(used: &mut Used, party: u8, takes: &[Take]) -> Option<String> {
    let mut reuse = None;
    for t in takes {
        for (name, a, b, own) in &t.ranges {
            if !own {
                continue;
            }
            let seen = used.entry((party, name.clone())).or_default();
            if reuse.is_none() {
                if let Some((x, y)) = seen.iter().find(|(x, y)| a < y && x < b) {
                    reuse = Some(format!("p{party} took {name}[{a}..{b}) but [{x}..{y}) was used before"));
                }
            }
            seen.push((*a, *b));
        }
    }
    reuse
}

/// Where the dealer put each request of the bundle: its ranges per stream.
struct Dealt {
    ranges: Vec<BTreeMap<String, (u64, u64)>>,
    /// `(stream, start) -> request`.
    at: HashMap<(String, u64), usize>,
}

impl Dealt {
    fn new(requests: &[MaterialRequest]) -> Dealt {
        let mut cursors: BTreeMap<String, u64> = BTreeMap::new();
        let (mut ranges, mut at) = (Vec::new(), HashMap::new());
        for (k, r) in requests.iter().enumerate() {
            let mut m = BTreeMap::new();
            for c in r.kind().layout().unwrap() {
                let a = cursors.get(&c.name).copied().unwrap_or(0);
                cursors.insert(c.name.clone(), a + c.len);
                if c.len > 0 {
                    at.insert((c.name.clone(), a), k);
                    m.insert(c.name, (a, a + c.len));
                }
            }
            ranges.push(m);
        }
        Dealt { ranges, at }
    }

    /// The dealt request whose parts a take used (on the streams its party holds).
    fn request_of(&self, t: &Take) -> Result<usize, String> {
        let own: Vec<_> = t.ranges.iter().filter(|r| r.3).collect();
        let Some((name, a, _, _)) = own.first() else { return Ok(usize::MAX) };
        let k = *self
            .at
            .get(&(name.clone(), *a))
            .ok_or_else(|| format!("{name} at {a} is no dealt request's start"))?;
        for (name, a, b, _) in own {
            if self.ranges[k].get(name) != Some(&(*a, *b)) {
                return Err(format!(
                    "{name}[{a}..{b}) is not dealt request {k}'s {:?} (misaligned)",
                    self.ranges[k].get(name)
                ));
            }
        }
        Ok(k)
    }
}

// ---------------------------------------------------------------------------------
// The model, the plaintext reference and one session of either variant.

struct Model {
    w: Arc<Weights>,
    ring: Arc<RingWeights>,
    config: ModelConfig,
    prompt: Vec<u32>,
    /// Per forward pass: the plaintext logits and the token fed to the next pass.
    want: Vec<(Vec<f32>, u32)>,
}

impl Model {
    fn load() -> Model {
        let md = ModelDir::open(&fixtures::tiny_bytes()).unwrap();
        let w = Arc::new(md.load_weights().unwrap());
        let backend: Arc<dyn shardlm_gpu::Backend> = Arc::new(shardlm_gpu::CpuBackend::new());
        let ring = Arc::new(RingWeights::encode(&w, FixedPoint::default(), backend.clone()).unwrap());
        let config = md.config.clone();
        let prompt = b"Hello!".map(u32::from).to_vec();
        let mut plain = PlainEngine::new(w.clone(), backend);
        let mut want = Vec::new();
        let mut tokens = prompt.clone();
        let mut pos = 0;
        for _ in 0..NEW_TOKENS {
            let l = forward(&mut plain, &config, &tokens, pos, Rows::Last).unwrap().unwrap();
            let next = argmax(l.last());
            want.push((l.last().to_vec(), next));
            pos += tokens.len();
            tokens = vec![next];
        }
        Model { w, ring, config, prompt, want }
    }

    fn shape(&self) -> SessionShape {
        SessionShape::new(self.prompt.len(), NEW_TOKENS, Rows::Last)
    }

    /// The token sequence of pass `i` (the plaintext's greedy tokens are fed, so every
    /// pass can be compared with the plaintext's).
    fn tokens(&self, i: usize) -> (Vec<u32>, usize) {
        if i == 0 {
            (self.prompt.clone(), 0)
        } else {
            (vec![self.want[i - 1].1], self.prompt.len() + i - 1)
        }
    }
}

/// A party's error, and whether it is a typed material error.
#[derive(Clone, Debug)]
struct PartyErr {
    material: bool,
    msg: String,
}

impl From<MaterialError> for PartyErr {
    fn from(e: MaterialError) -> Self {
        PartyErr { material: true, msg: e.to_string() }
    }
}

impl From<V2Error> for PartyErr {
    fn from(e: V2Error) -> Self {
        PartyErr { material: matches!(e, V2Error::Material(_)), msg: e.to_string() }
    }
}

impl From<MpcPartyError> for PartyErr {
    fn from(e: MpcPartyError) -> Self {
        let material = matches!(e, MpcPartyError::Material(_) | MpcPartyError::Mpc(MpcError::Material(_)));
        PartyErr { material, msg: e.to_string() }
    }
}

/// What one session did: each party's takes, P0's logits per pass, and the errors.
#[derive(Default)]
struct SessionRun {
    takes: [Vec<Take>; 2],
    logits: Vec<Vec<f32>>,
    errors: Vec<(u8, PartyErr)>,
}

fn run_v2(model: &Model, m0: &mut Material<P0>) -> SessionRun {
    let mut run = SessionRun::default();
    let (c_chan, mut s_chan) = memory::pair();
    let server = V2Server::new(model.ring.clone());
    let shape = model.shape();
    let mut log0 = Vec::new();
    let (client, served) = std::thread::scope(|s| {
        let h = s.spawn(|| server.serve_session(&mut s_chan, shape));
        let tracked = Tracked { m: m0, log: &mut log0 };
        let mut client = V2Client::new(model.w.clone(), FixedPoint::default(), c_chan, tracked);
        let mut logits = Vec::new();
        let mut outcome = Ok(());
        for i in 0..NEW_TOKENS {
            let (t, pos) = model.tokens(i);
            match forward(&mut client, &model.config, &t, pos, Rows::Last) {
                Ok(Some(l)) => logits.push(l.last().to_vec()),
                Ok(None) => {
                    outcome = Err(PartyErr { material: false, msg: "v2 client got no logits".into() });
                    break;
                }
                Err(e) => {
                    outcome = Err(e.into());
                    break;
                }
            }
        }
        // Ends the session (or drops the channel after an error, which the server sees).
        let outcome = outcome.and_then(|_| client.finish().map(|_| ()).map_err(PartyErr::from));
        ((outcome, logits), h.join().expect("v2 server thread panicked"))
    });
    run.takes[0] = log0;
    let (outcome, logits) = client;
    run.logits = logits;
    if let Err(e) = outcome {
        run.errors.push((0, e));
    }
    if let Err(e) = served {
        run.errors.push((1, e.into()));
    }
    run
}

fn run_mpc(model: &Model, m0: &mut Material<P0>, m1: &mut Material<P1>, seed: u64) -> SessionRun {
    let mut run = SessionRun::default();
    let (ch0, ch1) = memory::pair();
    let shape = model.shape();
    let (mut log0, mut log1) = (Vec::new(), Vec::new());
    let (client, served) = std::thread::scope(|s| {
        let log1 = &mut log1;
        let h = s.spawn(move || {
            let tracked = Tracked { m: m1, log: log1 };
            let p1 =
                MpcParty::new(model.w.clone(), model.ring.clone(), ch1, tracked, Seed::from_u64(seed ^ 1))
                    .driven();
            serve_driven(p1, &model.config, shape).map(|_| ())
        });
        let tracked = Tracked { m: m0, log: &mut log0 };
        let mut p0 =
            MpcParty::new(model.w.clone(), model.ring.clone(), ch0, tracked, Seed::from_u64(seed)).driven();
        let mut logits = Vec::new();
        let mut outcome: Result<(), PartyErr> = Ok(());
        for i in 0..NEW_TOKENS {
            let (t, pos) = model.tokens(i);
            match forward(&mut p0, &model.config, &t, pos, Rows::Last) {
                Ok(Some(l)) => logits.push(l.last().to_vec()),
                Ok(None) => {
                    outcome = Err(PartyErr { material: false, msg: "P0 got no logits".into() });
                    break;
                }
                Err(e) => {
                    outcome = Err(e.into());
                    break;
                }
            }
        }
        let outcome = outcome.and_then(|_| {
            {
                p0.end_steps()?;
                p0.finish().map(|_| ())?;
                Ok::<(), MpcPartyError>(())
            }
            .map_err(PartyErr::from)
        });
        // After an error P0's party (and channel) is dropped here: P1 sees the peer gone.
        ((outcome, logits), h.join().expect("v3-mpc P1 thread panicked"))
    });
    run.takes = [log0, log1];
    let (outcome, logits) = client;
    run.logits = logits;
    if let Err(e) = outcome {
        run.errors.push((0, e));
    }
    if let Err(e) = served {
        run.errors.push((1, e.into()));
    }
    run
}

// ---------------------------------------------------------------------------------
// One attempt at the next session, as the binaries make it.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Clear,
    Correct,
    Reuse,
    Wrong,
    Unclear,
}

struct Attempt {
    class: Class,
    detail: String,
}

fn opts(ledger: &Path) -> OpenOptions {
    OpenOptions::for_model(FINGERPRINT).ledger_in(ledger)
}

/// Opens the parts, picks the session as client and server do, runs it and classifies
/// it. `used` accumulates the ranges each party used (session 0 included).
fn attempt(
    variant: Variant,
    model: &Model,
    dealt: &Dealt,
    bundle: &Path,
    ledger: &Path,
    used: &mut Used,
    seed: u64,
) -> Attempt {
    let clear = |e: PartyErr| Attempt { class: Class::Clear, detail: e.msg };
    let o = opts(ledger);
    let mut m0 = match Material::<P0>::open_with(&bundle.join("p0"), &o) {
        Ok(m) => m,
        Err(e) => return clear(e.into()),
    };
    // The client checks the bundle's variant (shardlm-client's session_material).
    let manifest0 = m0.manifest().cloned().expect("a bundle has a manifest");
    if manifest0.variant != variant.name() {
        return clear(PartyErr {
            material: true,
            msg: format!("the bundle was dealt for {}, this session is {variant}", manifest0.variant),
        });
    }
    // With no session left, asking for the last one gives the library's Spent error.
    let last = manifest0.sessions.len().saturating_sub(1);
    let run = if variant == Variant::V2 {
        // The server holds nothing of a v2 bundle: the client takes its next session.
        let next = m0.next_session().unwrap_or(last);
        if let Err(e) = m0.start_session(next) {
            return clear(e.into());
        }
        run_v2(model, &mut m0)
    } else {
        let mut m1 = match Material::<P1>::open_with(&bundle.join("p1"), &o) {
            Ok(m) => m,
            Err(e) => return clear(e.into()),
        };
        let manifest1 = m1.manifest().cloned().expect("a bundle has a manifest");
        // The server's admission (server.rs check_binding): same bundle, at or after its
        // next session; a client behind it skips forward to it and retries once.
        if manifest1.bundle_id != manifest0.bundle_id {
            return clear(PartyErr {
                material: true,
                msg: "bundle mismatch: the two parties hold parts of different bundles".into(),
            });
        }
        let Some(n0) = m0.next_session() else {
            return clear(m0.start_session(last).expect_err("no session left").into());
        };
        let Some(n1) = m1.next_session() else {
            let last = manifest1.sessions.len().saturating_sub(1);
            return clear(m1.start_session(last).expect_err("no session left").into());
        };
        let index = n0.max(n1);
        if let Err(e) = m1.start_session(index) {
            return clear(e.into());
        }
        if let Err(e) = m0.start_session(index) {
            return clear(e.into());
        }
        run_mpc(model, &mut m0, &mut m1, seed)
    };
    classify(variant, model, dealt, used, run)
}

fn classify(variant: Variant, model: &Model, dealt: &Dealt, used: &mut Used, run: SessionRun) -> Attempt {
    // Reuse first: material handed out twice is a leak whatever happened afterwards.
    let mut reuse = None;
    for (p, takes) in run.takes.iter().enumerate() {
        let r = record(used, p as u8, takes);
        reuse = reuse.or(r);
    }
    if let Some(detail) = reuse {
        return Attempt { class: Class::Reuse, detail };
    }
    if !run.errors.is_empty() {
        let msgs: Vec<String> = run.errors.iter().map(|(p, e)| format!("p{p}: {}", e.msg)).collect();
        let class = if run.errors.iter().any(|(_, e)| e.material) { Class::Clear } else { Class::Unclear };
        return Attempt { class, detail: msgs.join(" | ") };
    }
    // Every take must be exactly the parts of one dealt request, and the two parties'
    // i-th takes the same request.
    let mut seqs = Vec::new();
    for (p, takes) in run.takes.iter().enumerate() {
        let mut seq = Vec::new();
        for (i, t) in takes.iter().enumerate() {
            match dealt.request_of(t) {
                Ok(k) => seq.push(k),
                Err(e) => return Attempt { class: Class::Wrong, detail: format!("p{p} take {i}: {e}") },
            }
        }
        seqs.push(seq);
    }
    if variant == Variant::V3Mpc {
        let (s0, s1) = (&seqs[0], &seqs[1]);
        if let Some(i) = (0..s0.len().max(s1.len())).find(|&i| s0.get(i) != s1.get(i)) {
            return Attempt {
                class: Class::Wrong,
                detail: format!(
                    "take {i}: p0 took dealt request {:?}, p1 {:?} (out of step)",
                    s0.get(i),
                    s1.get(i)
                ),
            };
        }
    }
    if run.logits.len() != NEW_TOKENS {
        return Attempt { class: Class::Wrong, detail: format!("{} passes of logits", run.logits.len()) };
    }
    for (i, (got, (want, _))) in run.logits.iter().zip(&model.want).enumerate() {
        if argmax(got) != argmax(want) {
            return Attempt {
                class: Class::Wrong,
                detail: format!("pass {i}: top-1 {} but the plaintext's is {}", argmax(got), argmax(want)),
            };
        }
        if variant == Variant::V2 {
            let diff = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            if diff >= 1e-2 {
                return Attempt { class: Class::Wrong, detail: format!("pass {i}: max |logit diff| {diff}") };
            }
        }
    }
    Attempt { class: Class::Correct, detail: String::new() }
}

// ---------------------------------------------------------------------------------
// The dealt bundle, session 0, and the snapshots every case starts from.

struct Fixture {
    variant: Variant,
    model: Model,
    parties: Vec<&'static str>,
    _root: tempfile::TempDir,
    /// The bundle as dealt (journal-free).
    pre_use: PathBuf,
    /// The bundle and the ledger after session 0.
    post0: PathBuf,
    post0_ledger: PathBuf,
    /// What session 0 used.
    used0: Used,
    dealt: Dealt,
    bundle_id: String,
}

fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

impl Fixture {
    fn new(variant: Variant) -> Fixture {
        let model = Model::load();
        let plan = plan_session(variant, &model.w, &model.ring, model.shape()).unwrap();
        let root = tempfile::tempdir().unwrap();
        let pre_use = root.path().join("pre-use");
        let mut w = BundleWriter::create(&pre_use, FINGERPRINT, variant.name(), Seed::from_u64(99)).unwrap();
        deal_sessions(&mut w, &plan, &model.ring, SESSIONS, |_, _| {}).unwrap();
        let manifest = w.finish().unwrap();
        let post0 = root.path().join("post0");
        let post0_ledger = root.path().join("post0-ledger");
        copy_tree(&pre_use, &post0);
        let all: Vec<MaterialRequest> = (0..SESSIONS).flat_map(|_| plan.requests.iter().cloned()).collect();
        let dealt = Dealt::new(&all);
        let mut used0 = Used::new();
        let a = attempt(variant, &model, &dealt, &post0, &post0_ledger, &mut used0, 1);
        assert_eq!(a.class, Class::Correct, "session 0 on the dealt bundle: {}", a.detail);
        let parties = if variant == Variant::V2 { vec!["p0"] } else { vec!["p0", "p1"] };
        let sizes: Vec<String> =
            manifest.shards.iter().map(|(p, s)| format!("{p}.shard {} bytes", s.bytes)).collect();
        eprintln!(
            "{variant}: {} requests per session, {SESSIONS} sessions, {}",
            plan.requests.len(),
            sizes.join(", ")
        );
        Fixture {
            variant,
            model,
            parties,
            _root: root,
            pre_use,
            post0,
            post0_ledger,
            used0,
            dealt,
            bundle_id: manifest.bundle_id,
        }
    }
}

// ---------------------------------------------------------------------------------
// Mutations.

/// A mutation class and what it did.
struct Applied {
    class: &'static str,
    what: String,
    /// Where the parties open the bundle afterwards.
    bundle: PathBuf,
}

fn pick<'a, T>(rng: &mut ChaCha8Rng, xs: &'a [T]) -> &'a T {
    &xs[rng.gen_range(0..xs.len())]
}

fn flip(rng: &mut ChaCha8Rng, path: &Path) -> String {
    let mut bytes = std::fs::read(path).unwrap();
    let i = rng.gen_range(0..bytes.len());
    let old = bytes[i];
    // Half single-bit flips (in JSON: a digit becomes another digit), half any byte.
    bytes[i] ^= if rng.gen_bool(0.5) { 1 << rng.gen_range(0..8) } else { rng.gen_range(1..=255u8) };
    std::fs::write(path, &bytes).unwrap();
    format!("{}[{i}] {old:#04x} -> {:#04x}", path.file_name().unwrap().to_string_lossy(), bytes[i])
}

fn edit_manifest(rng: &mut ChaCha8Rng, path: &Path) -> String {
    let mut m: Manifest = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let field = *pick(rng, &["bundle_id", "model_fingerprint", "variant", "sessions", "shard hash"]);
    let hex = |rng: &mut ChaCha8Rng| (0..32).map(|_| format!("{:02x}", rng.gen::<u8>())).collect::<String>();
    let what = match field {
        "bundle_id" => {
            m.bundle_id = hex(rng);
            "bundle_id".to_string()
        }
        "model_fingerprint" => {
            m.model_fingerprint = format!("blake3:{}", hex(rng));
            "model_fingerprint".into()
        }
        "variant" => {
            m.variant = pick(rng, &["v2", "v3", "v3-mpc", "local"]).to_string();
            format!("variant = {}", m.variant)
        }
        "shard hash" => {
            let p = pick(rng, &m.shards.keys().cloned().collect::<Vec<_>>()).clone();
            m.shards.get_mut(&p).unwrap().index_blake3 = hex(rng);
            format!("shards.{p}.index_blake3")
        }
        _ => {
            let s = rng.gen_range(0..m.sessions.len());
            match rng.gen_range(0..4) {
                0 if !m.sessions[s].is_empty() => {
                    let keys: Vec<String> = m.sessions[s].keys().cloned().collect();
                    let k = pick(rng, &keys).clone();
                    let v = m.sessions[s][&k];
                    let d = rng.gen_range(1..=64u64);
                    let nv = if rng.gen_bool(0.5) { v + d } else { v.saturating_sub(d) };
                    m.sessions[s].insert(k.clone(), nv);
                    format!("sessions[{s}].{k} {v} -> {nv}")
                }
                1 => {
                    m.sessions.remove(s);
                    format!("sessions[{s}] removed")
                }
                2 => {
                    let other = rng.gen_range(0..m.sessions.len());
                    m.sessions.swap(s, other);
                    format!("sessions[{s}] <-> sessions[{other}]")
                }
                _ => {
                    let dup = m.sessions[s].clone();
                    m.sessions.insert(s, dup);
                    format!("sessions[{s}] duplicated")
                }
            }
        }
    };
    std::fs::write(path, serde_json::to_string_pretty(&m).unwrap()).unwrap();
    format!("{}: {what}", path.display())
}

/// Applies mutation class `k` (of [`CLASSES`]) to the case's copy in `dir` (`dir/b`,
/// the bundle; `dir/l`, the ledger). May run a session first (the stale-journal class).
fn mutate(fx: &Fixture, rng: &mut ChaCha8Rng, dir: &Path, used: &mut Used) -> Result<Applied, String> {
    let b = dir.join("b");
    let l = dir.join("l");
    let party = *pick(rng, &fx.parties);
    let manifests = {
        let mut v = vec![b.join("manifest.json")];
        v.extend(fx.parties.iter().map(|p| b.join(p).join("manifest.json")));
        v
    };
    let class = *pick(rng, CLASSES);
    let at = |p: &str, f: &str| b.join(p).join(f.replace("X", &p[1..]));
    let mut bundle = b.clone();
    let what = match class {
        "truncate-shard" => {
            let f = at(party, "pX.shard");
            let len = std::fs::metadata(&f).unwrap().len();
            let to = rng.gen_range(0..len);
            std::fs::OpenOptions::new().write(true).open(&f).unwrap().set_len(to).unwrap();
            format!("{party}.shard {len} -> {to} bytes")
        }
        "truncate-manifest" => {
            let f = pick(rng, &manifests).clone();
            let len = std::fs::metadata(&f).unwrap().len();
            let to = rng.gen_range(0..len);
            std::fs::OpenOptions::new().write(true).open(&f).unwrap().set_len(to).unwrap();
            format!("{} {len} -> {to} bytes", f.display())
        }
        "flip-shard" => flip(rng, &at(party, "pX.shard")),
        "flip-manifest" => {
            let f = pick(rng, &manifests).clone();
            flip(rng, &f)
        }
        "flip-journal" => flip(rng, &at(party, "pX.journal")),
        "flip-ledger" => flip(rng, &l.join(format!("{}.{party}.json", fx.bundle_id))),
        "edit-manifest" => {
            let f = pick(rng, &manifests).clone();
            edit_manifest(rng, &f)
        }
        "delete-journal" => {
            std::fs::remove_file(at(party, "pX.journal")).unwrap();
            format!("{party}.journal deleted")
        }
        "delete-lock" => {
            std::fs::remove_file(at(party, "pX.lock")).unwrap();
            format!("{party}.lock deleted")
        }
        "delete-ledger" => {
            std::fs::remove_file(l.join(format!("{}.{party}.json", fx.bundle_id))).unwrap();
            format!("ledger entry of {party} deleted")
        }
        "restore-pre-use" => {
            std::fs::remove_dir_all(&b).unwrap();
            copy_tree(&fx.pre_use, &b);
            "the pre-use copy restored".into()
        }
        "restore-stale-journal" => {
            // Session 1 runs; then the copy taken after session 0 is put back.
            let a = attempt(fx.variant, &fx.model, &fx.dealt, &b, &l, used, rng.gen());
            if a.class != Class::Correct {
                return Err(format!("setup session 1 was {:?}: {}", a.class, a.detail));
            }
            std::fs::remove_dir_all(&b).unwrap();
            copy_tree(&fx.post0, &b);
            "session 1 run, then the post-session-0 copy restored (stale journal)".into()
        }
        "swap-shards" => {
            if fx.parties.len() == 2 {
                let (s0, s1) = (at("p0", "pX.shard"), at("p1", "pX.shard"));
                let tmp = dir.join("swap");
                std::fs::rename(&s0, &tmp).unwrap();
                std::fs::rename(&s1, &s0).unwrap();
                std::fs::rename(&tmp, &s1).unwrap();
                "p0.shard <-> p1.shard".into()
            } else {
                // v2's server has no part: the client's shard goes to a p1 directory.
                std::fs::create_dir_all(b.join("p1")).unwrap();
                std::fs::rename(at("p0", "pX.shard"), b.join("p1/p1.shard")).unwrap();
                "p0.shard moved to p1/p1.shard".into()
            }
        }
        "copy-elsewhere" => {
            bundle = dir.join("elsewhere/bundle");
            let from: PathBuf = pick(rng, &[fx.pre_use.clone(), b.clone()]).clone();
            copy_tree(&from, &bundle);
            for p in &fx.parties {
                let _ = std::fs::remove_file(bundle.join(p).join(format!("{p}.journal")));
            }
            "a journal-free copy in another directory".into()
        }
        other => unreachable!("{other}"),
    };
    Ok(Applied { class, what, bundle })
}

const CLASSES: &[&str] = &[
    "truncate-shard",
    "truncate-manifest",
    "flip-shard",
    "flip-manifest",
    "flip-journal",
    "flip-ledger",
    "edit-manifest",
    "delete-journal",
    "delete-lock",
    "delete-ledger",
    "restore-pre-use",
    "restore-stale-journal",
    "swap-shards",
    "copy-elsewhere",
];

// ---------------------------------------------------------------------------------
// The campaign.

#[derive(Default)]
struct Tally {
    cases: AtomicU64,
    attempts: AtomicU64,
    by_class: Mutex<BTreeMap<&'static str, [u64; 6]>>,
    /// Clear errors by kind of message (paths, ids and numbers stripped).
    kinds: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    fn add(&self, class: &'static str, c: Class) {
        let i = match c {
            Class::Clear => 1,
            Class::Correct => 2,
            Class::Reuse => 3,
            Class::Wrong => 4,
            Class::Unclear => 5,
        };
        let mut m = self.by_class.lock().unwrap();
        let e = m.entry(class).or_default();
        e[i] += 1;
        self.attempts.fetch_add(1, Ordering::Relaxed);
    }
}

/// Prints the summary line when dropped (also while the campaign's assert unwinds).
struct Summary<'a> {
    variant: Variant,
    tally: &'a Tally,
    start: std::time::Instant,
}

impl Drop for Summary<'_> {
    fn drop(&mut self) {
        let m = self.tally.by_class.lock().unwrap();
        let mut tot = [0u64; 6];
        for v in m.values() {
            for i in 1..6 {
                tot[i] += v[i];
            }
        }
        let cases = self.tally.cases.load(Ordering::Relaxed);
        let panics = cases - m.values().map(|v| v[0]).sum::<u64>();
        println!(
            "material campaign {}: cases={cases} attempts={} clear_errors={} correct={} silent_reuses={} wrong_outputs={} unclear_errors={} panics={panics} time={:.1}s long={}",
            self.variant,
            self.tally.attempts.load(Ordering::Relaxed),
            tot[1],
            tot[2],
            tot[3],
            tot[4],
            tot[5],
            self.start.elapsed().as_secs_f64(),
            campaign::long(),
        );
        let per: Vec<String> = m
            .iter()
            .map(|(k, v)| {
                format!("{k}: {} cases, {} clear, {} correct, {} bad", v[0], v[1], v[2], v[3] + v[4] + v[5])
            })
            .collect();
        println!("  by mutation: {}", per.join("; "));
        let kinds = self.tally.kinds.lock().unwrap();
        println!("  {} kinds of clear error:", kinds.len());
        for (k, n) in kinds.iter() {
            println!("    {n}x {k}");
        }
    }
}

/// A clear error's message with paths cut to their file name, 64-hex ids replaced and
/// digit runs folded to `N` (as [`campaign::kind`] does, but cut later), so that
/// messages group by what they say.
fn message_kind(msg: &str) -> String {
    let words: Vec<String> = msg
        .split(' ')
        .map(|w| {
            let (dir, w) = match w.strip_prefix('/') {
                Some(path) => ("<dir>/", path.rsplit('/').next().unwrap_or("")),
                None => ("", w),
            };
            if w.len() >= 64 && w.chars().take(64).all(|c| c.is_ascii_hexdigit()) {
                format!("{dir}<id>{}", &w[64..])
            } else {
                format!("{dir}{w}")
            }
        })
        .collect();
    // Quoted names (a corrupted stream name) fold too.
    let joined = words.join(" ");
    let mut unquoted = String::new();
    for (i, part) in joined.split('"').enumerate() {
        unquoted.push_str(if i % 2 == 1 { "\"<s>\"" } else { part });
    }
    let mut full = String::new();
    let mut digits = false;
    for ch in unquoted.chars() {
        if ch.is_ascii_digit() {
            if !digits {
                full.push('N');
            }
            digits = true;
        } else {
            digits = false;
            full.push(ch);
        }
    }
    if full.len() > 160 {
        let cut = (0..=160).rev().find(|&i| full.is_char_boundary(i)).unwrap_or(0);
        full.truncate(cut);
        full.push_str("...");
    }
    full
}

fn run_campaign(variant: Variant) {
    let fx = Fixture::new(variant);
    let n = campaign::cases(20, 300);
    let tally = Tally::default();
    let _summary = Summary { variant, tally: &tally, start: std::time::Instant::now() };
    campaign::run(&format!("material-{variant}"), n, |i| {
        tally.cases.fetch_add(1, Ordering::Relaxed);
        let mut rng = ChaCha8Rng::seed_from_u64(0x6d61_7400 ^ i ^ ((variant == Variant::V2) as u64) << 32);
        let dir = tempfile::tempdir().unwrap();
        copy_tree(&fx.post0, &dir.path().join("b"));
        copy_tree(&fx.post0_ledger, &dir.path().join("l"));
        let mut used = fx.used0.clone();
        let applied = mutate(&fx, &mut rng, dir.path(), &mut used)?;
        tally.by_class.lock().unwrap().entry(applied.class).or_default()[0] += 1;
        let mut bad = Vec::new();
        for k in 0..ATTEMPTS {
            let a = attempt(
                variant,
                &fx.model,
                &fx.dealt,
                &applied.bundle,
                &dir.path().join("l"),
                &mut used,
                rng.gen(),
            );
            tally.add(applied.class, a.class);
            match a.class {
                Class::Clear => {
                    *tally.kinds.lock().unwrap().entry(message_kind(&a.detail)).or_default() += 1;
                }
                Class::Correct => {}
                c => bad.push(format!("attempt {k}: {c:?}: {}", a.detail)),
            }
        }
        if bad.is_empty() {
            Ok(Outcome::Accepted)
        } else {
            Err(format!("{} ({}): {}", applied.class, applied.what, bad.join("; ")))
        }
    });
}

#[test]
fn v2_material_mutation_campaign() {
    run_campaign(Variant::V2);
}

#[test]
fn v3_mpc_material_mutation_campaign() {
    run_campaign(Variant::V3Mpc);
}

/// Regression (found by this campaign's oracle): a session start edited in a party's
/// manifest (here one stream of session 1 moved up by one word) used to start that
/// party at the wrong place of its streams without an error: v2's mask `R` no longer
/// matched its image `S` (wrong logits), v3-mpc's parties fell out of step. The
/// manifest is now sealed by its bundle id, so the edit is a clear error at open.
#[test]
fn edited_session_start_is_a_clear_error() {
    for (variant, party, stream) in
        [(Variant::V2, "p0", "masked-linear.s"), (Variant::V3Mpc, "p1", "triples.a")]
    {
        let fx = Fixture::new(variant);
        let dir = tempfile::tempdir().unwrap();
        let (b, l) = (dir.path().join("b"), dir.path().join("l"));
        copy_tree(&fx.post0, &b);
        copy_tree(&fx.post0_ledger, &l);
        let path = b.join(party).join("manifest.json");
        let mut m: Manifest = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        *m.sessions[1].get_mut(stream).expect("the plan takes this stream") += 1;
        std::fs::write(&path, serde_json::to_string_pretty(&m).unwrap()).unwrap();
        let mut used = fx.used0.clone();
        let a = attempt(variant, &fx.model, &fx.dealt, &b, &l, &mut used, 5);
        eprintln!("{variant}: {:?}: {}", a.class, a.detail);
        assert_eq!(a.class, Class::Clear, "{variant}: {}", a.detail);
        assert!(a.detail.contains("manifest.json"), "{variant}: {}", a.detail);
    }
}

/// The oracle itself: with both records gone (journals deleted and a fresh state
/// directory, which no single host can tell from a new bundle) session 0 runs again,
/// and the campaign's tracking calls it a silent reuse.
#[test]
fn the_oracle_sees_reuse_when_both_records_are_gone() {
    for variant in [Variant::V2, Variant::V3Mpc] {
        let fx = Fixture::new(variant);
        let dir = tempfile::tempdir().unwrap();
        let b = dir.path().join("b");
        copy_tree(&fx.post0, &b);
        for p in &fx.parties {
            std::fs::remove_file(b.join(p).join(format!("{p}.journal"))).unwrap();
        }
        let mut used = fx.used0.clone();
        let a = attempt(variant, &fx.model, &fx.dealt, &b, &dir.path().join("fresh-state"), &mut used, 3);
        assert_eq!(a.class, Class::Reuse, "{variant}: {}", a.detail);
        assert!(a.detail.contains("was used before"), "{variant}: {}", a.detail);
    }
}
