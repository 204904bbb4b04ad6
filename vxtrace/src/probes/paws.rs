//! The PAWS kprobe fallbacks (`vxtrace_paws_established`,
//! `vxtrace_paws_time_wait`): on kernels whose drops carry no RFC 7323
//! reason, they redo the kernel's timestamp check and record rejects as
//! drops under the names newer kernels use.

use anyhow::{Context as _, Result};
use aya::programs::KProbe;
use vxtrace_common::names::programs;

use super::{Tracer, explain_bpf_error};
use crate::schema::{KprobeStatus, ProbeState};

/// One PAWS kprobe: its program, the kernel function it goes on, and the
/// drop reason that makes it unnecessary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PawsKprobe {
    pub program: &'static str,
    pub target: &'static str,
    pub reason: &'static str,
}

/// Kernels gained `TCP_RFC7323_PAWS` (5.18) long before
/// `TCP_RFC7323_TW_PAWS` (6.15), so on most nodes only the TIME_WAIT probe
/// is needed.
pub const PAWS_KPROBES: [PawsKprobe; 2] = [
    PawsKprobe {
        program: programs::PAWS_ESTABLISHED,
        target: "tcp_validate_incoming",
        reason: crate::reasons::PAWS_ESTABLISHED,
    },
    PawsKprobe {
        program: programs::PAWS_TIME_WAIT,
        target: "tcp_timewait_state_process",
        reason: crate::reasons::PAWS_TIME_WAIT,
    },
];

/// When to use the PAWS kprobes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PawsKprobes {
    /// Only where the kernel's drops carry no PAWS reasons.
    Auto,
    /// Always try (they fail where the kernel has no kprobes).
    Always,
    Never,
}

impl Tracer {
    /// Loads one PAWS kprobe (the verifier checks it here whatever the
    /// kernel) without attaching.
    pub fn load_paws_kprobe(&mut self, prog: &str) -> Result<()> {
        let p: &mut KProbe = self.program_mut(prog)?;
        p.load()
            .map_err(|e| explain_bpf_error(anyhow::anyhow!(e)))
            .with_context(|| format!("loading {prog}"))
    }

    /// Loads and, where wanted and possible, attaches the PAWS kprobes;
    /// `has_reason` says whether the kernel names a drop reason.
    pub fn attach_paws_kprobes(
        &mut self,
        mode: PawsKprobes,
        has_reason: impl Fn(&str) -> bool,
    ) -> Vec<KprobeStatus> {
        PAWS_KPROBES
            .iter()
            .map(|k| KprobeStatus {
                program: k.program.to_string(),
                target: k.target.to_string(),
                status: self.paws_kprobe_state(k, mode, &has_reason),
            })
            .collect()
    }

    fn paws_kprobe_state(
        &mut self,
        k: &PawsKprobe,
        mode: PawsKprobes,
        has_reason: impl Fn(&str) -> bool,
    ) -> ProbeState {
        match mode {
            PawsKprobes::Never => ProbeState::Skipped("--paws-kprobes never".into()),
            PawsKprobes::Auto if has_reason(k.reason) => ProbeState::Skipped(format!(
                "this kernel reports these rejects as drop reason {}",
                k.reason
            )),
            // Verifying takes most of a second (the option walk): only
            // done for a probe that will be attached.
            _ => match self.load_paws_kprobe(k.program) {
                Err(e) => ProbeState::NotLoaded(format!("{e:#}")),
                Ok(()) => match self.attach_kprobe(k.program, k.target) {
                    Ok(()) => ProbeState::Attached,
                    Err(e) => ProbeState::NotAvailable(format!("{e:#}")),
                },
            },
        }
    }

    fn attach_kprobe(&mut self, prog: &str, target: &str) -> Result<()> {
        let p: &mut KProbe = self.program_mut(prog)?;
        p.attach(target, 0)?;
        Ok(())
    }
}
