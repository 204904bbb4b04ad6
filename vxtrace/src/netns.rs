//! Running code inside a named network namespace (`ip netns add NAME`).
//!
//! `setns(CLONE_NEWNET)` changes only the calling thread, so each call runs
//! on a fresh thread; sockets it creates stay in that namespace.

use std::{fs::File, os::fd::AsRawFd as _};

use anyhow::{Context as _, Result, anyhow, bail};

/// Runs `f` on a new thread inside network namespace `name` (`ip netns`).
pub fn run_in<R: Send>(name: &str, f: impl FnOnce() -> Result<R> + Send) -> Result<R> {
    run_in_path(&format!("/run/netns/{name}"), f)
}

/// Like [`run_in`], for a name or a path (`/proc/PID/ns/net`, `self`).
pub fn run_in_path<R: Send>(spec: &str, f: impl FnOnce() -> Result<R> + Send) -> Result<R> {
    let path = if spec == "self" {
        "/proc/self/ns/net".to_string()
    } else if spec.contains('/') {
        spec.to_string()
    } else {
        format!("/run/netns/{spec}")
    };
    let name = spec;
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(&path)
                .with_context(|| format!("network namespace {name} not found ({path})"))?;
            // SAFETY: a valid fd and a namespace type; affects this thread only.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!(
                    "entering network namespace {name}: {}",
                    std::io::Error::last_os_error()
                );
            }
            f()
        })
        .join()
        .map_err(|_| anyhow!("thread in namespace {name} panicked"))?
    })
}
