//! The kernel modules a guest gets: the fetched kernel's network modules and
//! everything they depend on, indexed by depmod for just that set.

use std::{
    collections::{BTreeSet, HashMap},
    path::Path,
    process::Command,
};

use anyhow::{Context as _, Result};

use super::{initramfs::Image, packages::Kernel};

/// The parts of a kernel's modules tree that go into the guest. The tests
/// exercise the network stack only (vxlan, veth, bridge, qdiscs and
/// classifiers, netfilter, conntrack, NAT) and the library and crypto code
/// those modules use; storage, filesystems, graphics and sound cannot be
/// reached by them. Leaving those out makes the image much smaller, which
/// matters because the emulated kernel unpacks it at every boot. Every
/// dependency of a kept module is kept too, wherever it lives.
const MODULE_DIRS: &[&str] = &[
    "kernel/net/",
    "kernel/drivers/net/",
    "kernel/lib/",
    "kernel/crypto/",
    "kernel/arch/",
];

/// The module lists depmod reads besides the modules themselves.
const MODULE_LISTS: &[&str] = &[
    "modules.builtin",
    "modules.builtin.modinfo",
    "modules.order",
];

/// Adds the kernel's network modules (and all they depend on), with their
/// own modules.dep, under /lib/modules/<release>. `staging` is a scratch
/// directory. Returns how many modules went in.
pub fn add_modules(image: &mut Image, kernel: &Kernel, staging: &Path) -> Result<usize> {
    let moddir = kernel.tree.join("lib/modules").join(&kernel.release);
    let dep_text = std::fs::read_to_string(moddir.join("modules.dep"))
        .with_context(|| format!("reading {}/modules.dep", moddir.display()))?;
    let soft_text = std::fs::read_to_string(moddir.join("modules.softdep")).unwrap_or_default();
    let keep = modules_to_keep(&dep_text, &soft_text);

    // Staged on disk for depmod, which writes indexes for just these.
    if staging.exists() {
        std::fs::remove_dir_all(staging)
            .with_context(|| format!("removing {}", staging.display()))?;
    }
    let stage_mods = staging.join("lib/modules").join(&kernel.release);
    for p in &keep {
        let to = stage_mods.join(p);
        std::fs::create_dir_all(to.parent().expect("module paths have a directory"))?;
        std::fs::copy(moddir.join(p), &to).with_context(|| format!("copying module {p}"))?;
    }
    for f in MODULE_LISTS {
        if moddir.join(f).exists() {
            std::fs::copy(moddir.join(f), stage_mods.join(f))
                .with_context(|| format!("copying {f}"))?;
        }
    }
    crate::run(
        Command::new("depmod")
            .arg("-b")
            .arg(staging)
            .arg(&kernel.release),
    )
    .context("running depmod on the image's modules")?;
    image.add_tree(&stage_mods, &format!("usr/lib/modules/{}", kernel.release))?;
    Ok(keep.len())
}

/// The paths of the modules under [`MODULE_DIRS`] and of all they depend
/// on, through symbols (modules.dep) or softly (modules.softdep).
fn modules_to_keep<'a>(dep_text: &'a str, soft_text: &str) -> BTreeSet<&'a str> {
    let mut deps: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut by_name: HashMap<String, &str> = HashMap::new();
    for line in dep_text.lines() {
        let Some((path, rest)) = line.split_once(':') else {
            continue;
        };
        deps.insert(path, rest.split_whitespace().collect());
        by_name.insert(module_name(path), path);
    }
    let soft = soft_dependencies(soft_text);
    let mut keep: BTreeSet<&str> = BTreeSet::new();
    let mut todo: Vec<&str> = deps
        .keys()
        .copied()
        .filter(|p| MODULE_DIRS.iter().any(|d| p.starts_with(d)))
        .collect();
    while let Some(p) = todo.pop() {
        if !keep.insert(p) {
            continue;
        }
        todo.extend(deps.get(p).into_iter().flatten().copied());
        for s in soft.get(&module_name(p)).into_iter().flatten() {
            if let Some(q) = by_name.get(s) {
                todo.push(q);
            }
        }
    }
    keep
}

/// Soft dependencies (loaded with a module, without a symbol link), by
/// module name.
fn soft_dependencies(text: &str) -> HashMap<String, Vec<String>> {
    let mut soft: HashMap<String, Vec<String>> = HashMap::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        if w.next() != Some("softdep") {
            continue;
        }
        let Some(m) = w.next() else { continue };
        soft.entry(m.replace('-', "_"))
            .or_default()
            .extend(w.filter(|x| !x.ends_with(':')).map(|x| x.replace('-', "_")));
    }
    soft
}

/// A module's name as modprobe knows it: kernel/net/ipv4/ip_gre.ko.xz -> ip_gre.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names() {
        assert_eq!(module_name("kernel/net/ipv4/ip_gre.ko"), "ip_gre");
        assert_eq!(module_name("kernel/drivers/net/vxlan/vxlan.ko.xz"), "vxlan");
        assert_eq!(module_name("kernel/net/sched/sch-x.ko.zst"), "sch_x");
    }

    #[test]
    fn network_modules_keep_their_dependencies() {
        let dep = "kernel/drivers/net/vxlan/vxlan.ko.xz: kernel/net/ipv4/udp_tunnel.ko.xz kernel/fs/x.ko.xz\n\
                   kernel/net/ipv4/udp_tunnel.ko.xz:\n\
                   kernel/fs/x.ko.xz:\n\
                   kernel/fs/y.ko.xz:\n\
                   kernel/sound/z.ko.xz:\n\
                   kernel/net/sched/cls-bpf.ko.xz:\n";
        let soft = "softdep cls_bpf pre: z\n";
        let keep: Vec<&str> = modules_to_keep(dep, soft).into_iter().collect();
        assert_eq!(
            keep,
            [
                "kernel/drivers/net/vxlan/vxlan.ko.xz",
                "kernel/fs/x.ko.xz",
                "kernel/net/ipv4/udp_tunnel.ko.xz",
                "kernel/net/sched/cls-bpf.ko.xz",
                "kernel/sound/z.ko.xz",
            ]
        );
    }
}
