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
use crate::{AttestError, Binding, Evidence, ProviderKind};
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

/// The providers a server party attests with.
#[derive(Debug, Default)]
pub struct Collector {
    kinds: Vec<ProviderKind>,
    software: Option<SoftwareProvider>,
    options: CollectOptions,
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
        for k in kinds {
            match k {
                ProviderKind::SevSnp => sev_snp::available()?,
                ProviderKind::Tdx => tdx::available(&options)?,
                ProviderKind::Nvidia => nvidia::available(options.nvidia_gpu)?,
                ProviderKind::Software if software.is_none() => {
                    return Err(AttestError::Unavailable {
                        provider: *k,
                        detail: "the software provider needs its test CA (`--cc-software-ca DIR`)".into(),
                    })
                }
                _ => {}
            }
        }
        Ok(Collector {
            kinds: kinds.iter().copied().filter(|k| *k != ProviderKind::None).collect(),
            software,
            options,
        })
    }

    /// The providers, as configured.
    pub fn kinds(&self) -> &[ProviderKind] {
        &self.kinds
    }

    /// Evidence from every provider, bound to `binding`.
    pub fn collect(&self, binding: &Binding) -> Result<Evidence, AttestError> {
        let rd = binding.report_data();
        let mut parts = Vec::with_capacity(self.kinds.len());
        for k in &self.kinds {
            parts.push(match k {
                ProviderKind::SevSnp => sev_snp::collect(&rd)?,
                ProviderKind::Tdx => tdx::collect(&rd, &self.options)?,
                ProviderKind::Nvidia => nvidia::collect(&binding.gpu_nonce(), self.options.nvidia_gpu)?,
                ProviderKind::Software => match &self.software {
                    Some(s) => s.evidence(&rd)?,
                    None => {
                        return Err(AttestError::Unavailable { provider: *k, detail: "no test CA".into() })
                    }
                },
                ProviderKind::None => continue,
            });
        }
        Ok(Evidence { parts })
    }
}
