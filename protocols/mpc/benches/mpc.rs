//! Two-party primitive throughput and traffic: Beaver multiplications, faithful
//! truncations, boolean AND gates and 1-of-N random-OT lookups per second, over the
//! in-memory pair and over QUIC on loopback, and the bytes each party sends per element
//! as the channel counters record them.
//!
//! Not a timed test: run
//!
//! ```text
//! cargo bench -p shardlm-protocols --bench mpc
//! ```
//!
//! and read the table. P0 runs on the main thread and P1 on a second one, as in the
//! two-party tests. Material comes from [`IdealDealer`] and is taken, with random input
//! shares, before the clock starts; then both parties exchange one sync message on the
//! control lane, run one untimed warm-up batch, and run `reps` batches back to back. A
//! batch's time is the slower party's wall time over `reps`; the counters are read
//! around the timed batches only.
//!
//! Elements: a multiplication or truncation is one `u64`; an AND batch of `n` is `n`
//! words of 64 gates each, so its rate is in gates; a lookup is one 1-of-64 OT on 16-bit
//! table entries (limited to 2^16 per batch: P1's tables hold 64 words per lookup).
//!
//! Environment: `SHARDLM_MPC_BATCHES` (comma-separated log2 batch sizes, default
//! `16,20`), `SHARDLM_MPC_TRANSPORTS` (`memory,quic` by default), `SHARDLM_MPC_OPS`
//! (`mul,trunc,and,ot` by default).

use shardlm_mpc::material::{AndTriplesRequest, RandomOtsRequest, TriplesRequest, TruncOtsRequest};
use shardlm_mpc::material::{IdealDealer, Material, MaterialSource};
use shardlm_mpc::prg::{Prg, Seed};
use shardlm_mpc::share::{BitShares, Role, Shares, P0, P1};
use shardlm_mpc::{beaver, boolean, ot, trunc};
use shardlm_transport::{Channel, Counters, Identity, Lane, QuicClient, QuicConfig, QuicServer};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Fractional bits the truncation removes (the default `F`).
const F: u32 = 16;
/// Choices of the benchmarked lookup.
const OT_CHOICES: usize = 64;
/// Bits of each table entry of the benchmarked lookup.
const OT_BITS: u32 = 16;
/// Largest lookup batch (P1's tables hold `OT_CHOICES` words per lookup).
const OT_MAX_BATCH: usize = 1 << 16;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Mul,
    Trunc,
    And,
    Ot,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Mul => "beaver mul",
            Op::Trunc => "faithful trunc",
            Op::And => "AND (64/word)",
            Op::Ot => "1-of-64 OT, 16b",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Op::And => "gates",
            Op::Ot => "lookups",
            _ => "elements",
        }
    }

    /// Counted elements per batch of `n`.
    fn elements(self, n: usize) -> usize {
        match self {
            Op::And => 64 * n,
            _ => n,
        }
    }
}

/// One party's view of a measured case.
struct Side {
    elapsed: Duration,
    counters: Counters,
}

/// Prepares `reps + 1` batches (material and inputs), syncs with the peer, runs one
/// untimed batch, then times the rest.
fn timed<C: Channel + ?Sized, S>(
    ch: &mut C,
    reps: usize,
    mut prep: impl FnMut() -> S,
    mut run: impl FnMut(&mut C, S),
) -> Side {
    let mut states: Vec<S> = (0..reps + 1).map(|_| prep()).collect();
    ch.send_u64s(Lane::Control, &[0]).expect("sync send");
    ch.recv_u64s(Lane::Control, 1).expect("sync recv");
    run(ch, states.remove(0));
    let before = ch.counters();
    let t0 = Instant::now();
    for s in states {
        run(ch, s);
    }
    let elapsed = t0.elapsed();
    Side { elapsed, counters: ch.counters().since(&before) }
}

fn random_shares<R: Role>(prg: &mut Prg, n: usize) -> Shares<R> {
    Shares::from_raw(prg.u64s(n))
}

/// The code both parties run for the symmetric primitives (and their own side of the
/// asymmetric ones).
fn party<R: Role, C: Channel + ?Sized>(
    ch: &mut C,
    m: &mut Material<R>,
    op: Op,
    n: usize,
    reps: usize,
) -> Side {
    let mut prg = Prg::new(&Seed::from_u64(0xbe9c_0000 + u64::from(R::ID)));
    match op {
        Op::Mul => timed(
            ch,
            reps,
            || {
                let x = random_shares::<R>(&mut prg, n);
                let y = random_shares::<R>(&mut prg, n);
                (x, y, m.take(TriplesRequest { n }).expect("triples"))
            },
            |ch, (x, y, t)| {
                std::hint::black_box(beaver::mul(ch, &x, &y, t).expect("mul"));
            },
        ),
        Op::Trunc => {
            timed(
                ch,
                reps,
                || {
                    // |x| < 2^62: P0 holds x - r, P1 holds r, for a public small x here
                    // (the cost does not depend on the values).
                    let r = prg.u64s(n);
                    let share =
                        if R::ID == 0 { r.iter().map(|v| 12345u64.wrapping_sub(*v)).collect() } else { r };
                    (Shares::<R>::from_raw(share), m.take(TruncOtsRequest { n, bits: F }).expect("trunc OTs"))
                },
                |ch, (x, ots)| {
                    std::hint::black_box(trunc::truncate(ch, x, F, ots).expect("trunc"));
                },
            )
        }
        Op::And => timed(
            ch,
            reps,
            || {
                let x = BitShares::<R>::from_raw(prg.u64s(n));
                let y = BitShares::<R>::from_raw(prg.u64s(n));
                (x, y, m.take(AndTriplesRequest { words: n }).expect("AND triples"))
            },
            |ch, (x, y, t)| {
                std::hint::black_box(boolean::and(ch, &x, &y, t).expect("and"));
            },
        ),
        Op::Ot => unreachable!("lookups are role-typed: ot_receiver / ot_sender"),
    }
}

/// P0's side of the lookup benchmark: the OT receiver.
fn ot_receiver<C: Channel + ?Sized>(ch: &mut C, m: &mut Material<P0>, n: usize, reps: usize) -> Side {
    let mut prg = Prg::new(&Seed::from_u64(0x07_0000));
    timed(
        ch,
        reps,
        || {
            let ots = m
                .take(RandomOtsRequest { n_choices: OT_CHOICES, bits: OT_BITS, count: n })
                .expect("random OTs");
            let choices: Vec<u64> = prg.u64s(n).iter().map(|v| v % OT_CHOICES as u64).collect();
            (choices, ots)
        },
        |ch, (choices, ots)| {
            std::hint::black_box(ot::receive(ch, &choices, ots).expect("OT receive"));
        },
    )
}

/// P1's side of the lookup benchmark: the OT sender with one random table per lookup.
fn ot_sender<C: Channel + ?Sized>(ch: &mut C, m: &mut Material<P1>, n: usize, reps: usize) -> Side {
    let mut prg = Prg::new(&Seed::from_u64(0x07_0001));
    let mask = (1u64 << OT_BITS) - 1;
    timed(
        ch,
        reps,
        || {
            let ots = m
                .take(RandomOtsRequest { n_choices: OT_CHOICES, bits: OT_BITS, count: n })
                .expect("random OTs");
            let tables: Vec<u64> = prg.u64s(n * OT_CHOICES).iter().map(|v| v & mask).collect();
            (tables, ots)
        },
        |ch, (tables, ots)| ot::send(ch, &tables, &ots).expect("OT send"),
    )
}

/// Runs one case with P0 on this thread and P1 on another.
fn case<C: Channel + Send>(
    c0: &mut C,
    c1: &mut C,
    m0: &mut Material<P0>,
    m1: &mut Material<P1>,
    op: Op,
    n: usize,
    reps: usize,
) -> (Side, Side) {
    std::thread::scope(|s| {
        if op == Op::Ot {
            let h = s.spawn(|| ot_sender(c1, m1, n, reps));
            let a = ot_receiver(c0, m0, n, reps);
            return (a, h.join().expect("P1 panicked"));
        }
        let h = s.spawn(|| party(c1, m1, op, n, reps));
        let a = party(c0, m0, op, n, reps);
        (a, h.join().expect("P1 panicked"))
    })
}

fn quic_pair() -> (shardlm_transport::QuicChannel, shardlm_transport::QuicChannel) {
    let server_id = Identity::generate("bench-p1").expect("keygen");
    let client_id = Identity::generate("bench-p0").expect("keygen");
    let addr = SocketAddr::from(([127, 0, 0, 1], 0));
    let server =
        QuicServer::bind(addr, &server_id, &[client_id.fingerprint()], QuicConfig::default()).expect("bind");
    let client =
        QuicClient::connect(server.local_addr(), &client_id, server.fingerprint(), QuicConfig::default())
            .expect("connect");
    let srv = server.accept().expect("server open").expect("accept");
    (client, srv)
}

fn list(var: &str, default: &str) -> Vec<String> {
    std::env::var(var)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

fn run_transport<C: Channel + Send>(name: &str, mut c0: C, mut c1: C, ops: &[Op], batches: &[usize]) {
    let (mut m0, mut m1) = IdealDealer::new(Seed::from_u64(0xbe9c)).split();
    for &op in ops {
        for &n in batches {
            if op == Op::Ot && n > OT_MAX_BATCH {
                continue;
            }
            // About 2^22 counted elements per case, at least 3 batches.
            let reps = ((1usize << 22) / op.elements(n)).clamp(3, 64);
            let (a, b) = case(&mut c0, &mut c1, &mut m0, &mut m1, op, n, reps);
            let t = a.elapsed.max(b.elapsed);
            let per_batch = t / reps as u32;
            let elems = (op.elements(n) * reps) as f64;
            let rate = elems / t.as_secs_f64();
            println!(
                "| {:<6} | {:<16} | {:<5} | {:>10.2} M {:<8} | {:>9.2} | {:>8.3} | {:>8.3} | {:>6.1} | {:>4} |",
                name,
                op.name(),
                format!("2^{}", n.trailing_zeros()),
                rate / 1e6,
                format!("{}/s", op.unit()),
                per_batch.as_secs_f64() * 1e3,
                a.counters.bytes_sent() as f64 / elems,
                b.counters.bytes_sent() as f64 / elems,
                a.counters.rounds.max(b.counters.rounds) as f64 / reps as f64,
                reps,
            );
        }
    }
}

fn main() {
    let batches: Vec<usize> = list("SHARDLM_MPC_BATCHES", "16,20")
        .iter()
        .filter_map(|s| s.parse::<u32>().ok())
        .map(|k| 1usize << k)
        .collect();
    let ops: Vec<Op> = list("SHARDLM_MPC_OPS", "mul,trunc,and,ot")
        .iter()
        .filter_map(|s| match s.as_str() {
            "mul" => Some(Op::Mul),
            "trunc" => Some(Op::Trunc),
            "and" => Some(Op::And),
            "ot" => Some(Op::Ot),
            _ => None,
        })
        .collect();
    let transports = list("SHARDLM_MPC_TRANSPORTS", "memory,quic");
    println!(
        "two-party primitives, P0 and P1 on two threads, {} CPUs; F = {F}; bytes are payload bytes each party sends per counted element (channel counters)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!();
    println!(
        "| {:<6} | {:<16} | {:<5} | {:>21} | {:>9} | {:>8} | {:>8} | {:>6} | {:>4} |",
        "link", "primitive", "batch", "rate", "ms/batch", "P0 B/el", "P1 B/el", "rounds", "reps"
    );
    println!(
        "|{:-<8}|{:-<18}|{:-<7}|{:-<23}|{:-<11}|{:-<10}|{:-<10}|{:-<8}|{:-<6}|",
        "", "", "", "", "", "", "", "", ""
    );
    for t in &transports {
        match t.as_str() {
            "memory" => {
                let (c0, c1) = shardlm_transport::memory::pair();
                run_transport("memory", c0, c1, &ops, &batches);
            }
            "quic" => {
                let (c0, c1) = quic_pair();
                run_transport("quic", c0, c1, &ops, &batches);
            }
            other => eprintln!("unknown transport {other:?} (memory, quic)"),
        }
    }
}
