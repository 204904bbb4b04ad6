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

pub struct Reaper {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Reaper {
    /// Starts the watchdog and hands it `filters` (device, hook, program).
    pub fn start(filters: &[(String, &str, &str)]) -> Result<Self> {
        let exe = std::env::current_exe().context("finding vxtrace's own executable")?;
        let mut child = Command::new(exe)
            .arg("reap-clsact")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the clsact watchdog")?;
        let mut stdin = child.stdin.take().context("watchdog stdin")?;
        for (dev, hook, prog) in filters {
            writeln!(stdin, "{dev} {hook} {prog}").context("talking to the clsact watchdog")?;
        }
        stdin.flush()?;
        Ok(Self {
            child,
            stdin: Some(stdin),
        })
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
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    let mut filters = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let parts: Vec<&str> = line.split_whitespace().collect();
        if let [dev, hook, prog] = parts[..] {
            filters.push((dev.to_string(), hook.to_string(), prog.to_string()));
        }
    }
    for (dev, hook, prog) in filters {
        crate::tracer::detach_clsact(&dev, &hook, &prog);
    }
    Ok(())
}
