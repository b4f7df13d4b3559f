//! Collecting evidence on the server party, and the hardware providers' verifiers.
//!
//! A server is started with the providers that attest it (`serve --cc-provider ...`);
//! for each session it makes a fresh key and asks every provider for evidence bound to
//! the session ([`Collector::collect`]). Hardware providers talk to their platform
//! (`/dev/sev-guest`, TDX's report interface, NVML): where the platform is absent they
//! refuse with [`AttestError::Unavailable`], saying so.

pub mod nvidia;
pub mod sev_snp;
pub mod tdx;

use crate::software::SoftwareProvider;
use crate::{AttestError, Binding, Evidence, Part, ProviderKind};
use std::path::PathBuf;

/// What hardware collection needs beyond the platform itself.
#[derive(Clone, Debug, Default)]
pub struct CollectOptions {
    /// The TDX collateral for this platform (`QuoteCollateralV3` JSON from the
    /// provider's PCCS), read at every collection so that a refresh needs no restart
    /// (`serve --cc-tdx-collateral FILE`).
    pub tdx_collateral: Option<PathBuf>,
    /// The NVIDIA GPU (NVML index) that attests (`serve --cc-nvidia-gpu N`, default 0).
    pub nvidia_gpu: u32,
}

/// One source of evidence on the server party. Made only where its platform answers
/// (so a server that cannot attest says so at start); asked for one part per session,
/// bound to the session's [`Binding`]. The client side is [`crate::verify`], which
/// dispatches on the part it received.
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// Which provider this is.
    fn kind(&self) -> ProviderKind;
    /// Evidence bound to `binding`.
    fn collect(&self, binding: &Binding) -> Result<Part, AttestError>;
}

/// AMD SEV-SNP: the guest's report through `/dev/sev-guest`, with its VCEK.
#[derive(Debug)]
struct SevSnp;

impl Provider for SevSnp {
    fn kind(&self) -> ProviderKind {
        ProviderKind::SevSnp
    }
    fn collect(&self, binding: &Binding) -> Result<Part, AttestError> {
        sev_snp::collect(&binding.report_data())
    }
}

/// Intel TDX: a quote through configfs-tsm, with the platform's collateral.
#[derive(Debug)]
struct Tdx(CollectOptions);

impl Provider for Tdx {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Tdx
    }
    fn collect(&self, binding: &Binding) -> Result<Part, AttestError> {
        tdx::collect(&binding.report_data(), &self.0)
    }
}

/// An NVIDIA GPU in CC mode: its SPDM report through NVML, for the session's GPU nonce.
#[derive(Debug)]
struct Nvidia(u32);

impl Provider for Nvidia {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Nvidia
    }
    fn collect(&self, binding: &Binding) -> Result<Part, AttestError> {
        nvidia::collect(&binding.gpu_nonce(), self.0)
    }
}

impl Provider for SoftwareProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Software
    }
    fn collect(&self, binding: &Binding) -> Result<Part, AttestError> {
        self.evidence(&binding.report_data())
    }
}

/// The providers a server party attests with.
#[derive(Debug, Default)]
pub struct Collector {
    kinds: Vec<ProviderKind>,
    providers: Vec<Box<dyn Provider>>,
}

impl Collector {
    /// A collector for `kinds` (`software` needs `software`, the provider with its CA).
    /// Checks now that every hardware platform is reachable, so a server that cannot
    /// attest says so at start rather than at its first session.
    pub fn new(kinds: &[ProviderKind], software: Option<SoftwareProvider>) -> Result<Collector, AttestError> {
        Collector::with_options(kinds, software, CollectOptions::default())
    }

    /// [`Collector::new`] with what hardware collection needs beyond the platform.
    pub fn with_options(
        kinds: &[ProviderKind],
        software: Option<SoftwareProvider>,
        options: CollectOptions,
    ) -> Result<Collector, AttestError> {
        if let Some(k) = kinds.iter().enumerate().find_map(|(i, k)| kinds[..i].contains(k).then_some(k)) {
            return Err(AttestError::Malformed {
                what: "provider list",
                detail: format!("{k} is named twice; each provider attests once per session"),
            });
        }
        let mut software = software;
        let mut providers: Vec<Box<dyn Provider>> = Vec::new();
        for k in kinds {
            match k {
                ProviderKind::SevSnp => {
                    sev_snp::available()?;
                    providers.push(Box::new(SevSnp));
                }
                ProviderKind::Tdx => {
                    tdx::available(&options)?;
                    providers.push(Box::new(Tdx(options.clone())));
                }
                ProviderKind::Nvidia => {
                    nvidia::available(options.nvidia_gpu)?;
                    providers.push(Box::new(Nvidia(options.nvidia_gpu)));
                }
                ProviderKind::Software => match software.take() {
                    Some(s) => providers.push(Box::new(s)),
                    None => {
                        return Err(AttestError::Unavailable {
                            provider: *k,
                            detail: "the software provider needs its test CA (`--cc-software-ca DIR`)".into(),
                        })
                    }
                },
                ProviderKind::None => {}
            }
        }
        Ok(Collector { kinds: providers.iter().map(|p| p.kind()).collect(), providers })
    }

    /// A collector over providers made elsewhere (tests, other platforms).
    pub fn from_providers(providers: Vec<Box<dyn Provider>>) -> Collector {
        Collector { kinds: providers.iter().map(|p| p.kind()).collect(), providers }
    }

    /// The providers, as configured.
    pub fn kinds(&self) -> &[ProviderKind] {
        &self.kinds
    }

    /// Evidence from every provider, bound to `binding`.
    pub fn collect(&self, binding: &Binding) -> Result<Evidence, AttestError> {
        let parts = self.providers.iter().map(|p| p.collect(binding)).collect::<Result<Vec<_>, _>>()?;
        Ok(Evidence { parts })
    }
}
