//! The registry of material kinds: one module per kind (its correlation type, its
//! request, its layout, how the dealer deals it and how a party assembles it), and the
//! one list below that makes a kind known to [`MaterialRequest`], the planner's
//! recordings, the dealer and the bundle files. Adding a kind is a new module and one
//! line in [`registry!`].
//!
//! | kind | used by | P0 raw words | P1 raw words |
//! |---|---|---|---|
//! | [`triples`] | Beaver products | n | 0 |
//! | [`square_pairs`] | squares | n | 0 |
//! | [`matrix_triples`] | `Q K^T` | mn + 3 | 3 |
//! | [`causal_matrix_triples`] | attention's `E V` | mn + 4 | 4 |
//! | [`and_triples`] | boolean AND (64 per word) | words | 0 |
//! | [`dabits`] | bit to arithmetic | n | 0 |
//! | [`bit_triples`] | bit times value | 2n | 0 |
//! | [`norm_triples`] | RMSNorm | 2 rows cols + 2 | 2 |
//! | [`row_triples`] | row scaling | rows cols + 2 | 2 |
//! | [`carry_tables`] | comparisons | count x table words | 0 |
//! | [`power_tuples`] | polynomials | n (degree - 1) | 0 |
//! | [`trunc_ots`] | faithful truncation | n F/64 (packed) | 0 |
//! | [`random_ots`] | 1-of-N lookups | count bits/64 (packed) | 0 |
//! | [`lookup_tables`] | v3-ot's table lookups | count x reads x `2^bits` entries (packed) | 0 |
//! | [`bit_vector_triples`] | bits times a product `x y`, other bits times `y` (SiLU's line) | n (1 + 4 bits + 2 y_bits) | 0 |
//! | [`bit_product3_triples`] | a bit times three values | 12 n | 0 |
//! | [`masked_linear`] | v2/v3 linear layers | n d_out + 4 | - |
//!
//! P1's parts are seeds and public shape records only: the server's shard is a few
//! hundred bytes. The raw parts are the ones that depend on both parties' seeds, which
//! is why they cannot be seeds.

pub mod and_triples;
pub mod bit_product3_triples;
pub mod bit_triples;
pub mod bit_vector_triples;
pub mod carry_tables;
pub mod causal_matrix_triples;
pub mod dabits;
pub mod lookup_tables;
pub mod masked_linear;
pub mod matrix_triples;
pub mod norm_triples;
pub mod power_tuples;
pub mod random_ots;
pub mod row_triples;
pub mod square_pairs;
pub mod triples;
pub mod trunc_ots;

pub use and_triples::{AndTriples, AndTriplesRequest};
pub use bit_product3_triples::{BitProduct3Triples, BitProduct3TriplesRequest};
pub use bit_triples::{BitTriples, BitTriplesRequest};
pub use bit_vector_triples::{BitVectorTriples, BitVectorTriplesRequest};
pub use carry_tables::{CarryTables, CarryTablesRequest};
pub use causal_matrix_triples::CausalMatrixTripleRequest;
pub use dabits::{DaBits, DaBitsRequest};
pub use lookup_tables::{LookupRequest, Lookups, Out, Read, SiluLine, TableFn};
pub use masked_linear::{MaskedLinear, MaskedLinearRequest};
pub use matrix_triples::{MatrixTriple, MatrixTripleRequest};
pub use norm_triples::{NormTriples, NormTriplesRequest};
pub use power_tuples::{PowerTuples, PowerTuplesRequest};
pub use random_ots::{RandomOts, RandomOtsRequest};
pub use row_triples::{RowTriples, RowTriplesRequest};
pub use square_pairs::{SquarePairs, SquarePairsRequest};
pub use triples::{Triples, TriplesRequest};
pub use trunc_ots::TruncOtsRequest;

use super::kind::Kind;

/// Declares [`MaterialRequest`] with one variant per kind, its dispatch to the kind and
/// the conversions from each kind's request.
macro_rules! registry {
    ($($(#[$doc:meta])* $variant:ident($request:ty),)*) => {
        /// One step's worth of material, as a forward pass asks for it. The planner
        /// records the sequence of these; the dealer replays it into a bundle.
        #[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum MaterialRequest {
            $($(#[$doc])* $variant($request),)*
        }

        impl MaterialRequest {
            /// The kind this request is of.
            pub fn kind(&self) -> &dyn Kind {
                match self {
                    $(MaterialRequest::$variant(r) => r,)*
                }
            }
        }

        $(impl From<$request> for MaterialRequest {
            fn from(r: $request) -> Self {
                MaterialRequest::$variant(r)
            }
        })*
    };
}

registry! {
    /// Elementwise Beaver triples.
    Triples(TriplesRequest),
    /// Square pairs.
    SquarePairs(SquarePairsRequest),
    /// One matrix triple.
    MatrixTriple(MatrixTripleRequest),
    /// One matrix triple with a causal left factor.
    CausalMatrixTriple(CausalMatrixTripleRequest),
    /// 1-of-2 OTs for faithful truncation.
    TruncOts(TruncOtsRequest),
    /// Boolean AND triples, in 64-bit words.
    AndTriples(AndTriplesRequest),
    /// daBits.
    DaBits(DaBitsRequest),
    /// Bit triples.
    BitTriples(BitTriplesRequest),
    /// Carry truth tables for comparisons.
    CarryTables(CarryTablesRequest),
    /// Norm triples.
    NormTriples(NormTriplesRequest),
    /// Row-scaling triples.
    RowTriples(RowTriplesRequest),
    /// Power tuples.
    PowerTuples(PowerTuplesRequest),
    /// 1-of-N random OTs.
    RandomOts(RandomOtsRequest),
    /// Client-assisted linear layer mask and its image under a weight.
    MaskedLinear(MaskedLinearRequest),
    /// One-time truth tables of public functions (v3-ot).
    Lookups(LookupRequest),
    /// Bit-vector triples: several bits times one value (v3-ot's SiLU).
    BitVectorTriples(BitVectorTriplesRequest),
    /// Bit-weighted three-factor products (v3-ot's softmax exponential).
    BitProduct3Triples(BitProduct3TriplesRequest),
}
