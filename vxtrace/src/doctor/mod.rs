//! `vxtrace doctor`: static checks of the overlay's kernel state: FDB,
//! neighbours, routes, MTU, firewall and NAT rules, sysctls. Each finding
//! names its check, the device, the evidence and a concrete fix.
//!
//! Exit codes: 0 clean, 1 findings, 2 the checks could not run.

use std::{net::IpAddr, process::Command};

use anyhow::{Result, bail};
use serde_json::Value;

use crate::{
    discovery::{self, Snapshot, VxlanDevice},
    schema::{Check, DoctorFinding, DoctorReport, Evidence, Severity},
};

#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// One JSON object (`{"findings":[…],"notes":[…]}`) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Check only this VXLAN device (repeatable; default: all).
    #[arg(long = "vxlan-dev", value_name = "DEV")]
    pub vxlan_devs: Vec<String>,
}

/// A finding of a check (the type every output of vxtrace carries).
pub type Finding = DoctorFinding;

/// Named values seen by a check: `evidence!({"mac": &mac, "dst": dst})`.
macro_rules! evidence {
    ({ $($k:literal : $v:expr),* $(,)? }) => {{
        let mut e = Evidence::new();
        $( e.insert($k.to_string(), EvidenceValue::from($v)); )*
        e
    }};
}

mod firewall;
#[cfg(test)]
mod fixtures;
mod mtu;
mod sysctls;
mod tables;

fn finding(
    check: Check,
    severity: Severity,
    dev: &str,
    message: String,
    evidence: Evidence,
    fix: String,
) -> Finding {
    Finding {
        check,
        severity,
        device: dev.to_string(),
        message,
        evidence,
        fix,
    }
}

fn link_name(snap: &Snapshot, ifindex: u32) -> String {
    snap.links
        .get(&ifindex)
        .map(|l| l.name.clone())
        .unwrap_or_else(|| format!("ifindex {ifindex}"))
}

/// Runs every check on this namespace. Errors only when nothing can be checked.
pub async fn check(only: &[String]) -> Result<(Vec<Finding>, Vec<String>)> {
    let snap = discovery::snapshot().await?;
    let all = snap.vxlan_devices();
    let devs: Vec<VxlanDevice> = if only.is_empty() {
        all
    } else {
        all.into_iter().filter(|d| only.contains(&d.name)).collect()
    };
    if devs.is_empty() {
        bail!(
            "no VXLAN device to check in this network namespace; run it where the overlay is (ip netns exec NS vxtrace doctor) or name one with --vxlan-dev"
        );
    }
    Ok(check_snapshot(&snap, &devs))
}

pub fn check_snapshot(snap: &Snapshot, devs: &[VxlanDevice]) -> (Vec<Finding>, Vec<String>) {
    let mut out = Vec::new();
    let mut notes = Vec::new();
    let mut underlays = Vec::new();
    for dev in devs {
        let underlay = snap.named_underlay(dev).map(|l| l.ifindex);
        // Several VXLAN devices (an EVPN node's, one per VNI) often share
        // an underlay: its settings are checked once.
        if let Some(u) = underlay
            && !underlays.contains(&u)
        {
            underlays.push(u);
        }
        tables::check(snap, dev, underlay, &mut out);
        mtu::check(snap, dev, underlay, &mut out);
    }
    // Pod networks: the overlay routes plus this node's own (the subnets of
    // bridges that carry pods are not known generically; overlay routes
    // widened to /16 cover flannel's per-node /24s).
    let mut pod_nets: Vec<(IpAddr, u8)> = snap
        .routes
        .iter()
        .map(|r| {
            (
                r.dst,
                r.prefix_len.min(if r.dst.is_ipv4() { 16 } else { 64 }),
            )
        })
        .collect();
    pod_nets.sort();
    pod_nets.dedup();
    let mut nat_present = false;
    match Command::new("nft").args(["-j", "list", "ruleset"]).output() {
        Ok(o) if o.status.success() => match serde_json::from_slice::<Value>(&o.stdout) {
            Ok(v) => {
                let rules = firewall::from_nft(&v);
                nat_present |= firewall::rewrites_addresses(&rules);
                firewall::check(&rules, devs, &pod_nets, &mut out);
            }
            Err(e) => notes.push(format!(
                "nft -j output not understood ({e}): nftables checks skipped"
            )),
        },
        Ok(o) => notes.push(format!(
            "nft failed ({}): nftables checks skipped",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(_) => notes.push("nft not installed: nftables checks skipped".into()),
    }
    // Legacy iptables rules are invisible to nft; with the nft backend they
    // are already covered above.
    if let Ok(o) = Command::new("iptables-legacy-save").output()
        && o.status.success()
    {
        let rules = firewall::from_iptables(&String::from_utf8_lossy(&o.stdout));
        nat_present |= firewall::rewrites_addresses(&rules);
        firewall::check(&rules, devs, &pod_nets, &mut out);
    }
    sysctls::check(
        snap,
        devs,
        &underlays,
        nat_present,
        &sysctls::read,
        &mut out,
    );
    out.dedup();
    (out, notes)
}

pub fn print_text(findings: &[Finding], notes: &[String]) {
    for n in notes {
        println!("note: {n}");
    }
    if findings.is_empty() {
        println!("no problems found");
        return;
    }
    for f in findings {
        println!(
            "[{}] {} ({}): {}\n    evidence: {}\n    fix: {}",
            f.severity,
            f.check,
            f.device,
            f.message,
            crate::schema::evidence_text(&f.evidence),
            f.fix
        );
    }
}

/// `vxtrace doctor`: returns the exit code.
pub fn run(args: DoctorArgs) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vxtrace: error: starting the async runtime: {e}");
            return 2;
        }
    };
    match rt.block_on(check(&args.vxlan_devs)) {
        Ok((findings, notes)) => {
            let clean = findings.is_empty();
            if args.json {
                let report = DoctorReport { findings, notes };
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
            } else {
                print_text(&findings, &notes);
            }
            if clean { 0 } else { 1 }
        }
        Err(e) => {
            eprintln!("vxtrace: error: {e:#}");
            2
        }
    }
}
