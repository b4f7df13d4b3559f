//! `bundle`: what a dealt bundle holds and how much of it is left, per party part found
//! in the directory; `--verify` reads and checks every unspent session's material.
//!
//! Opening a part is what a party does before a session: it takes the part's lock (so
//! a part in use by a running party is reported as such) and reads its consumption
//! records (the journal beside the shard and the ledger in the user's state
//! directory), but records nothing.

use crate::lab::experiment::report::fmt_bytes;
use anyhow::{bail, Context, Result};
use clap::Args;
use shardlm_mpc::material::{Manifest, Material, MaterialError};
use shardlm_mpc::share::{Role, P0, P1};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Flags of `bundle`.
#[derive(Args, Debug)]
pub struct BundleArgs {
    /// A bundle as `dealer --out` wrote it (both parts), or one party's part of it
    /// (`DIR/p0` on the client's host, `DIR/p1` on the server's).
    pub dir: PathBuf,
    /// Also read the material of every unspent session and check it against its
    /// blake3 (what a session does when it starts), reporting the first bad chunk.
    #[arg(long)]
    pub verify: bool,
}

/// The party parts under `dir`: its `p0/` and `p1/` subdirectories, or `dir` itself.
fn parts(dir: &Path) -> Vec<(usize, PathBuf)> {
    let subdirs: Vec<(usize, PathBuf)> =
        [0, 1].into_iter().map(|p| (p, dir.join(format!("p{p}")))).filter(|(_, d)| d.is_dir()).collect();
    if !subdirs.is_empty() {
        return subdirs;
    }
    (0..2).filter(|p| dir.join(format!("p{p}.shard")).exists()).map(|p| (p, dir.to_path_buf())).collect()
}

/// Runs `bundle`.
pub fn run(a: BundleArgs) -> Result<()> {
    let parts = parts(&a.dir);
    let Some((_, first)) = parts.first() else {
        bail!(
            "{}: no bundle part here (no p0/ or p1/, no p0.shard or p1.shard): pass a directory written by `shardlm-client dealer --out`, or one party's part of it",
            a.dir.display()
        );
    };
    let m = Manifest::read(first)?;
    let both = m.shards.len() == 2;
    println!(
        "bundle {} (format {}): {} for {}, dealt by {} ({})",
        m.bundle_id.get(..16).unwrap_or(&m.bundle_id),
        m.format_version,
        m.variant,
        m.model_fingerprint,
        m.dealer.host,
        m.dealer.role.promise(both)
    );
    let shape =
        m.session_shape.as_ref().map_or_else(|| "shape not recorded".to_string(), ToString::to_string);
    let bound = match (both, m.bound_clients.len()) {
        (false, _) => String::new(),
        (true, 0) => "; the server's part serves any client the server allows".to_string(),
        (true, n) => {
            format!("; the server's part serves {n} bound client(s): {}", m.bound_clients.join(", "))
        }
    };
    println!("  {} session(s) of {shape}{bound}", m.sessions.len());
    for (p, dir) in &parts {
        let line = match p {
            0 => part::<P0>(dir, &m, a.verify),
            _ => part::<P1>(dir, &m, a.verify),
        }
        .with_context(|| format!("p{p} part {}", dir.display()))?;
        println!("  {line}");
    }
    Ok(())
}

/// One part's line: size, sessions left and (with `verify`) what was checked.
fn part<R: Role>(dir: &Path, m: &Manifest, verify: bool) -> Result<String> {
    let party = format!("p{}", R::ID);
    let who = if R::ID == 0 { "client" } else { "server" };
    let size = m.shards.get(&party).map_or(0, |s| s.bytes);
    let total = m.sessions.len();
    let mut line = format!("{party} ({who}, {}): {}, ", dir.display(), fmt_bytes(size));
    let mat = match Material::<R>::open(dir, None) {
        Ok(mat) => mat,
        Err(MaterialError::Locked { .. }) => {
            line += "in use by a running party (its lock is held): ask again when it is done";
            return Ok(line);
        }
        Err(e) => return Err(e.into()),
    };
    let Some(next) = mat.next_session() else {
        line += &format!("every one of its {total} session(s) spent");
        return Ok(line);
    };
    line += &format!("{} of {total} session(s) left (next: {next})", total - next);
    if verify {
        let t = Instant::now();
        for i in next..total {
            mat.verify_session(i)?;
        }
        line += &format!(
            "; sessions {next}..{} checked against their blake3 in {:.1} s",
            total - 1,
            t.elapsed().as_secs_f64()
        );
    }
    Ok(line)
}
