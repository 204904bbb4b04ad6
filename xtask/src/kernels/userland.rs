//! What every guest gets besides its kernel's modules: a root file system
//! skeleton, busybox, the real network tools and kmod, vxtrace and the test
//! binaries, the shared libraries they all load, and /init.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::{
    initramfs::{FileSource, Image, image_path},
    payload::Payload,
};

/// Busybox applets the guest gets. Not all of them: busybox also has `ip`,
/// `tc`, `modprobe` and others, which must not stand in for the real tools.
const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "[", "test", "true", "false", "mount", "umount", "mkdir", "rm", "ln", "cat", "echo",
    "printf", "poweroff", "reboot", "sync", "sleep", "timeout", "zcat", "grep", "sed", "awk",
    "head", "tail", "cut", "tr", "wc", "sort", "ls", "stat", "readlink", "dmesg", "uname", "ps",
    "kill", "env", "tee", "id", "date", "hostname", "cp", "mv", "touch", "chmod", "find", "xargs",
];

/// Real tools the tests and vxtrace run: (name, required).
const HOST_TOOLS: &[(&str, bool)] = &[
    ("ip", true),
    ("tc", true),
    ("bridge", true),
    ("nft", true),
    ("conntrack", true),
    // The TCP tests wait for a socket's state with it.
    ("ss", true),
    // The lifecycle tests list loaded programs with it.
    ("bpftool", true),
];

/// kmod's names: the kernel runs /sbin/modprobe to load a module on demand
/// (a qdisc, a classifier, a netfilter expression), as on a real node.
const KMOD_LINKS: &[&str] = &["modprobe", "insmod", "rmmod", "lsmod", "depmod", "modinfo"];

/// Everything but the kernel's modules: tools, libraries, vxtrace, tests,
/// and /init (the script `init`).
pub fn base_image(payload: &Payload, init: String) -> Result<Image> {
    let mut img = skeleton();
    // Every binary added, for the libraries they load.
    let mut binaries = add_tools(&mut img)?;
    img.host_file("usr/bin/vxtrace", &payload.vxtrace)?;
    binaries.push(payload.vxtrace.clone());
    for (target, exe) in &payload.tests {
        img.host_file(&format!("tests/{target}"), exe)?;
        binaries.push(exe.clone());
    }
    let mut libs = BTreeSet::new();
    for b in &binaries {
        libs.extend(shared_libraries(b)?);
    }
    for lib in libs {
        img.host_file(&image_path(&lib), Path::new(&lib))?;
    }
    img.file("init", FileSource::Bytes(init.into_bytes()), 0o755);
    Ok(img)
}

/// The directories, links, device nodes and /etc files of a root file
/// system.
fn skeleton() -> Image {
    let mut img = Image::default();
    for d in [
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "root",
        "etc",
        "mnt",
        "usr/bin",
        "usr/sbin",
        "usr/lib",
        "usr/lib64",
        "tests",
    ] {
        img.dir(d);
    }
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
        ("var/run", "../run"),
    ] {
        img.symlink(link, target);
    }
    // The kernel opens /dev/console for /init before anything is mounted.
    img.char_dev("dev/console", 5, 1);
    img.char_dev("dev/null", 1, 3);
    img.file(
        "etc/passwd",
        FileSource::Bytes(b"root:x:0:0:root:/root:/bin/sh\n".to_vec()),
        0o644,
    );
    img.file(
        "etc/group",
        FileSource::Bytes(b"root:x:0:\n".to_vec()),
        0o644,
    );
    img
}

/// Adds busybox (with its applets), the real network tools and kmod (with
/// its names); returns the host binaries added.
fn add_tools(img: &mut Image) -> Result<Vec<PathBuf>> {
    let mut added = Vec::new();
    let busybox = ["/usr/bin/busybox", "/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("busybox is not installed: apt-get install busybox-static")?;
    img.host_file("usr/bin/busybox", &busybox)?;
    added.push(busybox);
    for applet in BUSYBOX_APPLETS {
        img.symlink(&format!("usr/bin/{applet}"), "busybox");
    }
    for (tool, required) in HOST_TOOLS {
        match find_tool(tool) {
            Some(p) => {
                img.host_file(&image_path(&p.to_string_lossy()), &p)?;
                added.push(p);
            }
            None if *required => {
                bail!("`{tool}` is not installed on this machine: run `cargo xtask setup`")
            }
            None => {}
        }
    }
    let kmod = find_tool("kmod").context("kmod is not installed: apt-get install kmod")?;
    img.host_file("usr/bin/kmod", &kmod)?;
    added.push(kmod);
    for l in KMOD_LINKS {
        img.symlink(&format!("usr/sbin/{l}"), "../bin/kmod");
    }
    Ok(added)
}

/// Where `name` is found on this machine's PATH (the sbin directories
/// first, as root's PATH has them).
fn find_tool(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// The shared libraries `binary` loads, with the dynamic loader; none for a
/// static binary.
fn shared_libraries(binary: &Path) -> Result<Vec<String>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // "not a dynamic executable": nothing to add.
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some((_, rest)) = line.split_once("=> ") {
            if rest.starts_with("not found") {
                bail!(
                    "{} needs {line}: install the package that has it",
                    binary.display()
                );
            }
            if let Some(p) = rest.split(" (").next().filter(|p| p.starts_with('/')) {
                libs.push(p.to_string());
            }
        } else if line.starts_with('/')
            && let Some(p) = line.split(" (").next()
        {
            libs.push(p.to_string());
        }
    }
    Ok(libs)
}
