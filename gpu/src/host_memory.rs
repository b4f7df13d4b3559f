//! The host allocator's policy for a party process: keep freed memory for reuse.
//!
//! A forward pass on shares allocates and frees buffers of a few MB many times per layer
//! (each layer's dealer material, read from the bundle; the messages; the products).
//! glibc's defaults hand such buffers back to the kernel on free (`mmap` above a
//! threshold that adapts only up to what was last freed, and heap trimming above twice
//! it), so every new buffer is page-faulted and zeroed again by the kernel: about a sixth
//! of both parties' CPU time in a v3-ot prefill (perf). Measured on the 2-core build box,
//! Qwen2.5-Coder-0.5B, 32-token v3-ot prefill over loopback QUIC, one session per run:
//! 8.54 s mean with glibc's defaults (five runs, 7.78-9.80 s), 6.69 s with the settings
//! below (six runs, 5.38-7.54 s, through `GLIBC_TUNABLES` or this function).
//!
//! [`keep_freed_memory`] sets them from inside the process (both binaries call it first
//! thing in `main`): buffers up to 32 MiB (glibc's largest `mmap` threshold) come from
//! the heap, and the heap is not trimmed below 2 GiB of free memory at its top. The cost
//! is that a process's resident size stays at its peak.

/// Applies the policy (module doc) to this process's allocator. Returns whether it
/// could: only glibc on Linux has these settings; elsewhere it does nothing.
pub fn keep_freed_memory() -> bool {
    imp::keep_freed_memory()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    /// glibc's largest `M_MMAP_THRESHOLD` on 64-bit targets (`DEFAULT_MMAP_THRESHOLD_MAX`).
    const MMAP_THRESHOLD: libc::c_int = 32 << 20;
    /// Free memory kept at the top of the heap before trimming.
    const TRIM_THRESHOLD: libc::c_int = libc::c_int::MAX;

    pub(super) fn keep_freed_memory() -> bool {
        // SAFETY: `mallopt` only changes the allocator's tuning parameters (it takes the
        // arena lock itself); it touches no memory of ours, and both values are within
        // the ranges glibc documents (it returns 0 and changes nothing otherwise).
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    pub(super) fn keep_freed_memory() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_the_settings() {
        assert!(super::keep_freed_memory());
    }
}
