//! The one list of variants: what each needs and what it promises. The client's
//! commands, the dealer, `info` on both binaries and the experiment runner read it
//! instead of matching on [`Variant`] themselves.

use shardlm_configs::Variant;

/// The one-time material a variant's sessions consume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaterialNeed {
    /// None (the plaintext engine; v3-cc, whose keys are made per session inside the
    /// attested boundary).
    None,
    /// The client's only (masks and their images under the public weights): the client
    /// may deal for itself, per session or offline, and the server gets nothing.
    ClientOnly,
    /// Both parties' (Beaver triples, tables, OTs): P0's part for the client, P1's seeds
    /// for the server. The variant's promise to the client ("the client learns only the
    /// logits") needs a dealer independent of both parties; a client that deals for
    /// itself keeps the prompt private from the server but could see every activation.
    BothParties,
}

/// One variant as the tools see it.
#[derive(Clone, Copy, Debug)]
pub struct VariantSpec {
    /// The variant.
    pub variant: Variant,
    /// Whether this build implements it.
    pub implemented: bool,
    /// Whether a server party takes part (everything but `local`).
    pub needs_server: bool,
    /// The material its sessions consume.
    pub material: MaterialNeed,
    /// Whether its logits equal the plaintext engine's up to fixed point (else: an
    /// approximation with a measured accuracy).
    pub exact: bool,
    /// What the server party learns.
    pub server_learns: &'static str,
    /// What the client party learns.
    pub client_learns: &'static str,
    /// One line on how it computes.
    pub summary: &'static str,
}

/// Every variant, in [`Variant::ALL`] order.
pub const VARIANTS: [VariantSpec; 6] = [
    VariantSpec {
        variant: Variant::Local,
        implemented: true,
        needs_server: false,
        material: MaterialNeed::None,
        exact: true,
        server_learns: "-",
        client_learns: "everything",
        summary: "the plaintext reference engine in this process",
    },
    VariantSpec {
        variant: Variant::V2,
        implemented: true,
        needs_server: true,
        material: MaterialNeed::ClientOnly,
        exact: true,
        server_learns: "nothing (uniform one-time masks)",
        client_learns: "its own activations",
        summary:
            "client-assisted: the server multiplies masked inputs by the weights, one request per linear unit",
    },
    VariantSpec {
        variant: Variant::V3,
        implemented: true,
        needs_server: true,
        material: MaterialNeed::ClientOnly,
        exact: true,
        server_learns: "nothing (uniform one-time masks)",
        client_learns: "its own activations",
        summary: "v2's protocol pipelined in chunks over several lanes, bit-identical to v2",
    },
    VariantSpec {
        variant: Variant::V3Cc,
        implemented: true,
        needs_server: true,
        material: MaterialNeed::None,
        exact: true,
        server_learns: "nothing, if the attested hardware holds",
        client_learns: "the output only",
        summary: "the plaintext engine inside attested confidential-computing hardware",
    },
    VariantSpec {
        variant: Variant::V3Mpc,
        implemented: true,
        needs_server: true,
        material: MaterialNeed::BothParties,
        exact: false,
        server_learns: "nothing",
        client_learns: "only the logits (with an independent dealer)",
        summary:
            "the whole forward pass on additive shares: Beaver products, truncation, comparisons, polynomials",
    },
    VariantSpec {
        variant: Variant::V3Ot,
        implemented: true,
        needs_server: true,
        material: MaterialNeed::BothParties,
        exact: false,
        server_learns: "nothing",
        client_learns: "only the logits (with an independent dealer)",
        summary: "v3-mpc's forward pass on shares with RMSNorm, softmax and SiLU read from one-time lookup tables: 33 rounds per layer",
    },
];

/// The spec of `variant`.
pub fn spec(variant: Variant) -> &'static VariantSpec {
    // VARIANTS lists every variant in Variant::ALL order (tested).
    let i = Variant::ALL.iter().position(|v| *v == variant).unwrap_or(0);
    &VARIANTS[i]
}

/// The variant if this build implements it, else an error that names the ones it has.
pub fn implemented(variant: Variant) -> Result<&'static VariantSpec, String> {
    let s = spec(variant);
    if s.implemented {
        return Ok(s);
    }
    let have: Vec<&str> = VARIANTS.iter().filter(|s| s.implemented).map(|s| s.variant.name()).collect();
    Err(format!("variant `{variant}` is not available in this build; available: {}", have.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_lists_every_variant_in_order() {
        for (v, s) in Variant::ALL.iter().zip(VARIANTS.iter()) {
            assert_eq!(*v, s.variant);
            assert_eq!(spec(*v).variant, *v);
        }
        assert!(implemented(Variant::V2).is_ok());
        assert!(!spec(Variant::Local).needs_server);
    }
}
