//! Issue 14: "Deleting the journal or restoring a copy of a bundle, then reusing it:
//! refused, with the message saying why." A bundle of two dealt sessions; session 0 is
//! used through `Material::open_with` + `start_session` and the material dropped; then
//! the journal is deleted, or a byte copy of the bundle made before the first use is
//! restored over it, or that copy is opened from another directory. Each time the
//! reopened part shows session 0 as spent (`next_session() == Some(1)`) and refuses
//! `start_session(0)` with `MaterialError::Spent`, whose message says the session is
//! spent and what to do. Both parties (P0 the client, P1 the server).

use shardlm_mpc::material::{
    BundleWriter, Manifest, Material, MaterialError, MaterialRequest, MaterialSource, NoWeights, OpenOptions,
    TriplesRequest, TruncOtsRequest,
};
use shardlm_mpc::prg::Seed;
use shardlm_mpc::share::{Role, P0, P1};
use std::path::Path;

const MODEL: &str = "blake3:reuse-test-model";

fn session_requests() -> Vec<MaterialRequest> {
    vec![
        MaterialRequest::Triples(TriplesRequest { n: 16 }),
        MaterialRequest::TruncOts(TruncOtsRequest { n: 8, bits: 16 }),
    ]
}

/// Deals two sessions of [`session_requests`] into `dir`.
fn deal(dir: &Path, seed: u64) -> Manifest {
    let mut w = BundleWriter::create(dir, MODEL, "v3-mpc", Seed::from_u64(seed)).unwrap();
    for _ in 0..2 {
        w.start_session();
        for r in session_requests() {
            w.push(&r, &NoWeights).unwrap();
        }
    }
    w.finish().unwrap()
}

/// A byte copy of the directory tree `src` at `dst`.
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

fn part<R: Role>(bundle: &Path) -> std::path::PathBuf {
    bundle.join(format!("p{}", R::ID))
}

/// Uses session 0 of party `R` (start, one take) and drops the material; returns what
/// the take handed out.
fn use_session_0<R: Role>(bundle: &Path, opts: &OpenOptions) -> Vec<u64> {
    let mut m = Material::<R>::open_with(&part::<R>(bundle), opts).unwrap();
    assert_eq!(m.next_session(), Some(0));
    m.start_session(0).unwrap();
    m.take(TriplesRequest { n: 16 }).unwrap().a.as_slice().to_vec()
}

/// Reopens party `R`'s part of `bundle` and checks that session 0 is refused as spent,
/// with a message that says so and what to do, and that session 1 is fresh material.
fn assert_session_0_spent<R: Role>(bundle: &Path, opts: &OpenOptions, used: &[u64], what: &str) {
    let id = Manifest::read(&part::<R>(bundle)).unwrap().bundle_id;
    let mut m = Material::<R>::open_with(&part::<R>(bundle), opts).unwrap();
    assert_eq!(m.next_session(), Some(1), "{what}: p{}: session 0 must show as spent", R::ID);
    let err = m.start_session(0).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, MaterialError::Spent { session: 0, next: Some(1), sessions: 2, bundle } if *bundle == id),
        "{what}: p{}: {msg}",
        R::ID
    );
    for want in [
        format!("session 0 of bundle {id} is already spent"),
        "the next unspent session is 1 of 2".into(),
        "material is never used twice".into(),
        "deal a new bundle with `shardlm-client dealer`".into(),
    ] {
        assert!(msg.contains(&want), "{what}: p{}: message lacks {want:?}: {msg}", R::ID);
    }
    // The refusal consumed nothing; session 1 is still there, and is other material.
    m.start_session(1).unwrap();
    let next = m.take(TriplesRequest { n: 16 }).unwrap().a.as_slice().to_vec();
    assert_ne!(next, used, "{what}: p{}: session 1 hands out session 0's material", R::ID);
    drop(m);
    // And now both are spent.
    let mut m = Material::<R>::open_with(&part::<R>(bundle), opts).unwrap();
    assert_eq!(m.next_session(), None, "{what}: p{}", R::ID);
    let msg = m.start_session(1).unwrap_err().to_string();
    assert!(msg.contains("all 2 sessions are spent"), "{what}: p{}: {msg}", R::ID);
}

enum Reuse {
    /// Delete `pX/pX.journal`.
    DeleteJournal,
    /// Restore the pre-use copy over the bundle directory.
    RestoreCopy,
    /// Open the pre-use copy from another directory (same bundle id).
    CopyElsewhere,
}

fn refused<R: Role>(how: Reuse) {
    let root = tempfile::tempdir().unwrap();
    let ledger = tempfile::tempdir().unwrap();
    let opts = OpenOptions::default().ledger_in(ledger.path());
    let bundle = root.path().join("bundle");
    deal(&bundle, 7 + R::ID as u64);
    let pristine = root.path().join("pristine");
    copy_tree(&bundle, &pristine);
    assert!(!pristine.join(format!("p{0}/p{0}.journal", R::ID)).exists(), "the copy is as dealt");

    let used = use_session_0::<R>(&bundle, &opts);
    let journal = bundle.join(format!("p{0}/p{0}.journal", R::ID));
    assert!(journal.exists());
    let (target, what) = match how {
        Reuse::DeleteJournal => {
            std::fs::remove_file(&journal).unwrap();
            (bundle.clone(), "journal deleted")
        }
        Reuse::RestoreCopy => {
            std::fs::remove_dir_all(&bundle).unwrap();
            copy_tree(&pristine, &bundle);
            assert!(!journal.exists());
            (bundle.clone(), "pre-use copy restored")
        }
        Reuse::CopyElsewhere => {
            let elsewhere = root.path().join("elsewhere/bundle-copy");
            copy_tree(&pristine, &elsewhere);
            (elsewhere, "copy in another directory")
        }
    };
    assert_session_0_spent::<R>(&target, &opts, &used, what);
}

#[test]
fn deleted_journal_is_refused_client_and_server() {
    refused::<P0>(Reuse::DeleteJournal);
    refused::<P1>(Reuse::DeleteJournal);
}

#[test]
fn restored_pre_use_copy_is_refused_client_and_server() {
    refused::<P0>(Reuse::RestoreCopy);
    refused::<P1>(Reuse::RestoreCopy);
}

#[test]
fn copy_in_another_directory_is_refused_client_and_server() {
    refused::<P0>(Reuse::CopyElsewhere);
    refused::<P1>(Reuse::CopyElsewhere);
}

/// The other record alone: with the ledger entries deleted, the journal still refuses.
#[test]
fn deleted_ledger_entry_is_refused_by_the_journal() {
    let root = tempfile::tempdir().unwrap();
    let ledger = tempfile::tempdir().unwrap();
    let opts = OpenOptions::default().ledger_in(ledger.path());
    let id = deal(root.path(), 9).bundle_id;
    let used0 = use_session_0::<P0>(root.path(), &opts);
    let used1 = use_session_0::<P1>(root.path(), &opts);
    for p in ["p0", "p1"] {
        let entry = ledger.path().join(format!("{id}.{p}.json"));
        assert!(entry.exists(), "{}", entry.display());
        std::fs::remove_file(entry).unwrap();
    }
    assert_session_0_spent::<P0>(root.path(), &opts, &used0, "ledger entry deleted");
    assert_session_0_spent::<P1>(root.path(), &opts, &used1, "ledger entry deleted");
}

/// The boundary of what one host can check: with both records gone (the journal-free
/// copy opened against another state directory, as on another host or after the state
/// directory was wiped) the copy looks as dealt. This is why a server with material
/// admits a bundle session only at or after its own next unspent session, and why a
/// bundle is handed to one host per party.
#[test]
fn both_records_gone_is_outside_what_one_host_can_detect() {
    let root = tempfile::tempdir().unwrap();
    let ledger = tempfile::tempdir().unwrap();
    let bundle = root.path().join("bundle");
    deal(&bundle, 10);
    let pristine = root.path().join("pristine");
    copy_tree(&bundle, &pristine);
    use_session_0::<P0>(&bundle, &OpenOptions::default().ledger_in(ledger.path()));
    let other_host = tempfile::tempdir().unwrap();
    let m = Material::<P0>::open_with(
        &part::<P0>(&pristine),
        &OpenOptions::default().ledger_in(other_host.path()),
    )
    .unwrap();
    assert_eq!(m.next_session(), Some(0));
}

/// A consumption record naming a stream the party does not hold, or more words than
/// were dealt, is corrupted: refused saying so (it used to read as "all sessions are
/// spent", which is not what happened).
#[test]
fn corrupted_consumption_record_says_so() {
    let root = tempfile::tempdir().unwrap();
    let ledger = tempfile::tempdir().unwrap();
    let opts = OpenOptions::default().ledger_in(ledger.path());
    deal(root.path(), 11);
    use_session_0::<P0>(root.path(), &opts);
    let journal = root.path().join("p0/p0.journal");
    let original = std::fs::read_to_string(&journal).unwrap();
    assert!(original.contains("\"triples.c\""), "{original}");
    for (edit, want) in [
        (original.replace("\"triples.c\"", "\"triplfs.c\""), "names stream \"triplfs.c\", which this part"),
        (
            original.replace("\"triples.c\":16", "\"triples.c\":99999"),
            "99999 words of triples.c consumed but only 32",
        ),
    ] {
        assert_ne!(edit, original);
        std::fs::write(&journal, edit).unwrap();
        let err = Material::<P0>::open_with(&root.path().join("p0"), &opts).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, MaterialError::Format { .. }), "{msg}");
        assert!(msg.contains("p0.journal: corrupted consumption record") && msg.contains(want), "{msg}");
        assert!(msg.contains("deal a new bundle"), "{msg}");
    }
}
