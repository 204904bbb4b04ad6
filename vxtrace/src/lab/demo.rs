//! `vxtrace lab demo`: a lab, steady traffic with a blackhole for a while,
//! and `vxtrace watch` running in node 1 until the time is up.

use std::{
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Lab, LabOpts,
    build::{down, ipn},
};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// The embedded default: a lab, traffic, and `vxtrace watch` in node 1.
pub(super) fn demo(opts: &LabOpts, duration: Duration) -> Result<()> {
    if opts.nodes < 3 {
        bail!("the demo needs at least 3 nodes");
    }
    let lab = Lab::from(opts);
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    eprintln!(
        "vxtrace demo: building a {}-node VXLAN lab ({})",
        lab.nodes, lab.name
    );
    lab.up()?;
    let result = demo_inner(&lab, duration);
    eprintln!("vxtrace demo: removing the lab");
    down(&lab.name)?;
    result
}

fn demo_inner(lab: &Lab, duration: Duration) -> Result<()> {
    let exe = std::env::current_exe()?;
    let mut watcher = Command::new("ip")
        .args(["netns", "exec", &lab.node_ns(1)])
        .arg(&exe)
        // The lab's nodes share one kernel: count node 1's own drops only.
        .args(["watch", "--netns", "self", "--duration"])
        .arg(humantime::format_duration(duration).to_string())
        .spawn()
        .context("starting vxtrace watch in node 1")?;
    std::thread::sleep(Duration::from_millis(1500));
    let start = Instant::now();
    let traffic_until = duration.saturating_sub(Duration::from_secs(2));
    let running = || start.elapsed() < traffic_until && !STOP.load(Ordering::SeqCst);
    let route = format!("{}/{}", lab.underlay_ip(1), if lab.ipv6 { 128 } else { 32 });
    std::thread::scope(|s| {
        // Steady flows, each paced on its own so a timeout stalls no other.
        s.spawn(|| {
            while running() {
                let _ = lab.ping(1, 2, 10, Duration::from_millis(10));
            }
        });
        s.spawn(|| {
            while running() {
                let _ = lab.udp(1, 3, 5, 1200);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        s.spawn(|| {
            while running() {
                let _ = lab.ping(1, 3, 1, Duration::from_millis(100));
            }
        });
        // Incident 2 in miniature: for a while node 3's packets to node 1
        // vanish on the way, so node 1 keeps sending and hears nothing back.
        s.spawn(|| {
            let mut blackholed = false;
            while running() {
                let t = start.elapsed().as_secs_f64() / duration.as_secs_f64();
                let want = (0.35..0.75).contains(&t);
                if want != blackholed {
                    let verb = if want { "add" } else { "del" };
                    let _ = ipn(&lab.node_ns(3), &["route", verb, "blackhole", &route]);
                    blackholed = want;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if blackholed {
                let _ = ipn(&lab.node_ns(3), &["route", "del", "blackhole", &route]);
            }
        });
    });
    if STOP.load(Ordering::SeqCst) {
        unsafe { libc::kill(watcher.id() as i32, libc::SIGTERM) };
    }
    let status = watcher.wait()?;
    if !status.success() {
        bail!("vxtrace watch exited with {status}");
    }
    Ok(())
}
