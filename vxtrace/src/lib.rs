//! vxtrace: per-peer VXLAN encapsulation/decapsulation tracing with in-kernel
//! counters. The binary (`main.rs`) is a thin CLI over these modules; the
//! integration tests use them directly (BPF_PROG_TEST_RUN on the real
//! programs, the lab).

pub mod batch;
pub mod conntrack;
pub mod discovery;
pub mod doctor;
pub mod drops;
pub mod kernel;
pub mod lab;
pub mod metrics;
pub mod netns;
pub mod netstat;
pub mod outages;
pub mod output;
pub mod peers;
pub mod preflight;
pub mod reaper;
pub mod record;
pub mod report;
pub mod tracer;
pub mod watch;
