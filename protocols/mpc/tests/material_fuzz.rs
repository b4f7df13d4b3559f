//! Material parsing never panics: shards with random bytes changed (and the manifest's
//! hash updated so parsing gets past the blake3 check, as a malicious or buggy dealer
//! could) either open and hand out material or fail with an error.

use proptest::prelude::*;
use shardlm_mpc::material::{BundleWriter, Manifest, Material, MaterialRequest, MaterialSource, NoWeights};
use shardlm_mpc::material::{MatrixTripleRequest, TriplesRequest, TruncOtsRequest};
use shardlm_mpc::prg::Seed;
use shardlm_mpc::share::P0;
use std::path::Path;

fn bundle(dir: &Path) {
    let mut w = BundleWriter::create(dir, "m", "v3-mpc", Seed::from_u64(1)).unwrap();
    w.push(&MaterialRequest::Triples(TriplesRequest { n: 10 }), &NoWeights).unwrap();
    w.push(&MaterialRequest::MatrixTriple(MatrixTripleRequest { m: 2, k: 3, n: 2 }), &NoWeights).unwrap();
    w.push(&MaterialRequest::TruncOts(TruncOtsRequest { n: 5, bits: 16 }), &NoWeights).unwrap();
    w.finish().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

    #[test]
    fn corrupted_shards_never_panic(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6), cut in any::<Option<prop::sample::Index>>()) {
        let dir = tempfile::tempdir().unwrap();
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
        m.shards.get_mut("p0").unwrap().blake3 = blake3::hash(&bytes).to_hex().to_string();
        std::fs::write(dir.path().join("manifest.json"), serde_json::to_string(&m).unwrap()).unwrap();
        if let Ok(mut mat) = Material::<P0>::open(&dir.path().join("p0"), None) {
            let _ = mat.take(TriplesRequest { n: 10 });
            let _ = mat.take(MatrixTripleRequest { m: 2, k: 3, n: 2 });
            let _ = mat.take(TruncOtsRequest { n: 5, bits: 16 });
            let _ = mat.take(TriplesRequest { n: 1 });
        }
    }
}
