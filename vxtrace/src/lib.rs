//! vxtrace: per-peer VXLAN encapsulation/decapsulation tracing with in-kernel
//! counters. The binary (`main.rs`) is a thin CLI over these modules; the
//! integration tests use them directly (BPF_PROG_TEST_RUN on the real
//! programs, the lab, the schema of every line vxtrace writes).

pub mod conntrack;
pub mod diagnosis;
pub mod discovery;
pub mod doctor;
pub mod drops;
pub mod kernel;
pub mod lab;
pub mod mac;
pub mod netns;
pub mod netstat;
pub mod outages;
pub mod peers;
pub mod preflight;
pub mod probes;
pub mod procs;
pub mod reaper;
pub mod reasons;
pub mod report;
pub mod schema;
pub mod side_counts;
pub mod sinks;
pub mod watch;
