//! A watchdog for clsact filters.
//!
//! tcx links die with the process; clsact filters do not. When vxtrace has
//! to use clsact (kernels before 6.6) it starts this watchdog as a child,
//! tells it over a pipe which filters it attached, and keeps the pipe open.
//! When vxtrace exits for any reason, SIGKILL included, the pipe closes and
//! the watchdog removes the filters. It runs in the same network namespace.

use std::{
    io::{BufRead as _, Write as _},
    process::{Child, ChildStdin, Command, Stdio},
};

use anyhow::{Context as _, Result};

use crate::{probes::ClsactFilter, schema::Hook};

pub struct Reaper {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Filters the watchdog knows of.
    told: Vec<ClsactFilter>,
}

impl Reaper {
    /// Starts the watchdog and hands it `filters`.
    pub fn start(filters: &[ClsactFilter]) -> Result<Self> {
        let exe = std::env::current_exe().context("finding vxtrace's own executable")?;
        let mut child = Command::new(exe)
            .arg("reap-clsact")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the clsact watchdog")?;
        let stdin = child.stdin.take().context("watchdog stdin")?;
        let mut reaper = Self {
            child,
            stdin: Some(stdin),
            told: Vec::new(),
        };
        reaper.tell(filters)?;
        Ok(reaper)
    }

    /// Hands the watchdog the filters it does not know yet (devices
    /// re-attached after they came back).
    pub fn tell(&mut self, filters: &[ClsactFilter]) -> Result<()> {
        let Some(stdin) = self.stdin.as_mut() else {
            return Ok(());
        };
        for f in filters {
            if self.told.contains(f) {
                continue;
            }
            writeln!(
                stdin,
                "{} {} {} {}",
                f.device,
                f.hook.as_str(),
                f.priority,
                f.handle
            )
            .context("talking to the clsact watchdog")?;
            self.told.push(f.clone());
        }
        stdin.flush().context("talking to the clsact watchdog")
    }

    /// Closes the pipe (the watchdog cleans up and exits) and waits for it.
    pub fn finish(mut self) {
        self.stdin.take();
        let _ = self.child.wait();
    }
}

/// The watchdog's main: read filters until EOF, then detach them.
pub fn run() -> Result<()> {
    // Ctrl-C reaches the whole process group; the watchdog must outlive
    // vxtrace to do its job, so it waits for the pipe instead.
    // SAFETY: setting signal dispositions to SIG_IGN before any thread
    // starts; no handler runs.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    let mut filters = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        filters.extend(parse_filter(&line));
    }
    for f in &filters {
        crate::probes::tc::detach_clsact(f);
    }
    Ok(())
}

/// One line of the pipe: `device hook priority handle`.
fn parse_filter(line: &str) -> Option<ClsactFilter> {
    let parts: Vec<&str> = line.split_whitespace().collect();
    let [device, hook, priority, handle] = parts[..] else {
        return None;
    };
    let hook: Hook = hook.parse().ok()?;
    Some(ClsactFilter {
        device: device.to_string(),
        hook,
        priority: priority.parse().ok()?,
        handle: handle.parse().ok()?,
    })
}
