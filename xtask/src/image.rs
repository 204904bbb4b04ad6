//! `cargo xtask image`: vxtrace's container image, `vxtrace:<version>`.
//!
//! The image is built FROM scratch and holds the release binary at
//! `/vxtrace` and exactly the shared libraries it links (the loader, libc,
//! libgcc_s, ... as `ldd` names them, at those paths), nothing else. The
//! build context is assembled under `target/image/`, the image is built
//! from `deploy/container/Containerfile` with buildah (overlay storage
//! where overlay mounts work, vfs otherwise), and then checked: a
//! container made from it holds exactly the expected files, byte for byte,
//! and `/vxtrace --version` runs inside it. Where this machine cannot run
//! containers, that is said, and the binary is run chrooted into the
//! image's files instead.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context as _, Result, bail};

/// The Containerfile, relative to the workspace root.
pub const CONTAINERFILE: &str = "deploy/container/Containerfile";

/// Where the binary is in the image.
const IMAGE_BINARY: &str = "/vxtrace";

/// The image's name and tag: `vxtrace:<workspace version>`.
pub fn tag() -> String {
    format!("vxtrace:{}", env!("CARGO_PKG_VERSION"))
}

/// A file of the image: where it is in the image, and where its content
/// comes from on this machine.
#[derive(Debug)]
struct ImageFile {
    in_image: PathBuf,
    source: PathBuf,
}

/// Builds the image from the release binary (already built) and checks it.
pub fn run(root: &Path) -> Result<()> {
    if !crate::is_root() {
        bail!(
            "building the image needs root (buildah keeps images in /var/lib/containers): run `sudo -E cargo xtask image`"
        );
    }
    let bin = root.join("target/release/vxtrace");
    if !bin.exists() {
        bail!(
            "{} is missing: build it first (`cargo build --release -p vxtrace`)",
            bin.display()
        );
    }
    let files = image_files(&bin)?;
    let context = root.join("target/image/context");
    assemble(&context, &files)?;

    let buildah = Buildah::choose(&root.join("target/image"));
    eprintln!(
        "xtask image: buildah, storage driver {} ({})",
        buildah.driver, buildah.why
    );
    let tag = tag();
    let previous = buildah.image_id(&tag);
    let id = buildah.build(root, &context, &tag, &source_date(root))?;
    if let Some(old) = previous.filter(|old| bare_id(old) != bare_id(&id)) {
        // The tag moved: the image it named before is of no use any more.
        let _ = buildah.output(&["rmi", &old]);
    }
    let size = buildah
        .output(&["images", "--noheading", "--format", "{{.Size}}", &id])
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "size unknown".into());
    println!("xtask image: {tag} (image {}), {size}", short_id(&id));
    for f in &files {
        let len = fs::metadata(&f.source).map(|m| m.len()).unwrap_or(0);
        println!(
            "    {:<48} {:>12} bytes",
            f.in_image.display(),
            group_digits(len)
        );
    }

    let ctr = Container::from_image(&buildah, &id)?;
    let mount = ctr.mount()?;
    check_contents(&mount, &files)?;
    println!(
        "xtask image: contents: exactly these {} files, byte for byte: ok",
        files.len()
    );
    let want = format!("vxtrace {}", env!("CARGO_PKG_VERSION"));
    let run = format!("`{IMAGE_BINARY} --version`");
    match ctr.run_version(Isolation::Oci) {
        Ok(out) => {
            check_version(&out, &want)?;
            println!("xtask image: {run} in a container (buildah run, OCI runtime): {out}");
            return Ok(());
        }
        Err(why) => println!("xtask image: OCI containers cannot run on this machine ({why:#})"),
    }
    match ctr.run_version(Isolation::Chroot) {
        Ok(out) => {
            check_version(&out, &want)?;
            println!(
                "xtask image: {run} in a container with buildah's chroot isolation instead (namespaces, no OCI runtime): {out}"
            );
        }
        Err(why) => {
            println!("xtask image: containers cannot run on this machine at all ({why:#})");
            let out = chroot_version(&mount)?;
            check_version(&out, &want)?;
            println!(
                "xtask image: {run} chrooted into the image's files instead (its loader and libraries, this kernel): {out}"
            );
        }
    }
    Ok(())
}

/// The image's files: the binary, and each library `ldd` names.
fn image_files(bin: &Path) -> Result<Vec<ImageFile>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("running ldd (Debian's libc-bin)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut files = vec![ImageFile {
        in_image: PathBuf::from(IMAGE_BINARY),
        source: bin.to_path_buf(),
    }];
    for lib in parse_ldd(&text)? {
        files.push(ImageFile {
            in_image: lib.clone(),
            source: lib,
        });
    }
    Ok(files)
}

/// The libraries in `ldd`'s output, by the paths it names (the loader
/// included; the vDSO, which is no file, left out). A statically linked
/// binary has none.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("not a dynamic executable") || line.contains("statically linked") {
            return Ok(Vec::new());
        }
        let path = match line.split_once("=>") {
            Some((name, target)) => {
                let target = target.trim();
                if target.starts_with("not found") {
                    bail!("ldd: {} not found", name.trim());
                }
                target.split(" (").next().unwrap_or("").trim()
            }
            None => line.split_whitespace().next().unwrap_or(""),
        };
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    libs.sort();
    libs.dedup();
    Ok(libs)
}

/// The build context: `rootfs/` holds each file at its path in the image
/// (symlinks resolved: the image holds the files themselves).
fn assemble(context: &Path, files: &[ImageFile]) -> Result<()> {
    if context.exists() {
        fs::remove_dir_all(context)
            .with_context(|| format!("removing the old build context {}", context.display()))?;
    }
    let rootfs = context.join("rootfs");
    for f in files {
        let dest = rootfs.join(f.in_image.strip_prefix("/").unwrap_or(&f.in_image));
        fs::create_dir_all(dest.parent().expect("a file has a parent"))?;
        fs::copy(&f.source, &dest)
            .with_context(|| format!("copying {} into the build context", f.source.display()))?;
    }
    Ok(())
}

/// The build's timestamp: the last commit's time, so that the same sources
/// give the same image (and a rebuild leaves nothing behind).
fn source_date(root: &Path) -> String {
    Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["log", "-1", "--format=%ct"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or_else(|| "0".into())
}

/// buildah with the storage driver this machine can use.
struct Buildah {
    driver: String,
    why: String,
}

impl Buildah {
    /// overlay where the storage already uses it or overlay mounts work
    /// here; vfs otherwise (slower, and each layer a full copy, but it
    /// works anywhere). STORAGE_DRIVER, when set, decides.
    fn choose(scratch: &Path) -> Self {
        let (driver, why) = if let Ok(d) = std::env::var("STORAGE_DRIVER") {
            (d, "STORAGE_DRIVER".to_string())
        } else if Path::new("/var/lib/containers/storage/overlay-images").exists() {
            ("overlay".into(), "the storage already uses it".into())
        } else if Path::new("/var/lib/containers/storage/vfs-images").exists() {
            ("vfs".into(), "the storage already uses it".into())
        } else {
            match overlay_mounts(scratch) {
                Ok(()) => ("overlay".into(), "overlay mounts work here".into()),
                Err(e) => ("vfs".into(), format!("overlay unavailable: {e:#}")),
            }
        };
        Self { driver, why }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("buildah");
        c.args(["--storage-driver", &self.driver]);
        c
    }

    /// Runs buildah; its stdout, or an error with its stderr.
    fn output(&self, args: &[&str]) -> Result<String> {
        let out = self
            .cmd()
            .args(args)
            .output()
            .context("running buildah (cargo xtask setup installs it)")?;
        ok_stdout(&format!("buildah {}", args.join(" ")), out)
    }

    /// The ID of the image `tag` names, if there is one.
    fn image_id(&self, tag: &str) -> Option<String> {
        self.output(&[
            "images",
            "--noheading",
            "--no-trunc",
            "--format",
            "{{.ID}}",
            tag,
        ])
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
        .filter(|s| !s.is_empty())
    }

    /// Builds the image; returns its ID.
    fn build(&self, root: &Path, context: &Path, tag: &str, timestamp: &str) -> Result<String> {
        let containerfile = root.join(CONTAINERFILE);
        let args = [
            "bud",
            "--quiet",
            "--layers=false",
            "--timestamp",
            timestamp,
            "--file",
            path_str(&containerfile)?,
            "--tag",
            tag,
            path_str(context)?,
        ];
        eprintln!("xtask: buildah {}", args.join(" "));
        let out = self.output(&args)?;
        let id = out
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .context("buildah bud printed no image ID")?;
        Ok(id.to_string())
    }
}

/// Whether overlay mounts work here: one tried in `scratch`.
fn overlay_mounts(scratch: &Path) -> Result<()> {
    let dir = scratch.join("overlay-probe");
    let _ = fs::remove_dir_all(&dir);
    for d in ["lower", "upper", "work", "merged"] {
        fs::create_dir_all(dir.join(d))?;
    }
    let p = |d: &str| dir.join(d).display().to_string();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        p("lower"),
        p("upper"),
        p("work")
    );
    let out = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts, &p("merged")])
        .output()
        .context("running mount")?;
    let mounted = ok_stdout("mount -t overlay", out);
    if mounted.is_ok() {
        let _ = Command::new("umount").arg(p("merged")).status();
    }
    let _ = fs::remove_dir_all(&dir);
    mounted.map(|_| ())
}

/// A working container made from the image, removed when dropped.
struct Container<'a> {
    buildah: &'a Buildah,
    name: String,
}

impl<'a> Container<'a> {
    fn from_image(buildah: &'a Buildah, image: &str) -> Result<Self> {
        let name = format!("vxtrace-image-check-{}", std::process::id());
        buildah.output(&["from", "--name", &name, image])?;
        Ok(Self { buildah, name })
    }

    /// Its files, mounted; the mount point.
    fn mount(&self) -> Result<PathBuf> {
        let out = self.buildah.output(&["mount", &self.name])?;
        Ok(PathBuf::from(out.trim()))
    }

    /// `/vxtrace --version` in the container; the error says why it
    /// cannot run.
    fn run_version(&self, isolation: Isolation) -> Result<String> {
        let mut args = vec!["run"];
        match isolation {
            Isolation::Oci => args.extend(["--network", "none"]),
            // The chroot isolation shares the host's network namespace.
            Isolation::Chroot => args.extend(["--isolation", "chroot"]),
        }
        args.extend([self.name.as_str(), "--", IMAGE_BINARY, "--version"]);
        Ok(self.buildah.output(&args)?.trim().to_string())
    }
}

/// How `buildah run` isolates the container.
#[derive(Clone, Copy)]
enum Isolation {
    /// An OCI runtime (crun): what a node runs.
    Oci,
    /// buildah's own: chroot and namespaces, no runtime, no cgroups.
    Chroot,
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self.buildah.output(&["umount", &self.name]);
        let _ = self.buildah.output(&["rm", &self.name]);
    }
}

/// The image's files are exactly `files` (same bytes), in directories
/// that hold nothing else.
fn check_contents(mount: &Path, files: &[ImageFile]) -> Result<()> {
    let mut found = Vec::new();
    walk(mount, Path::new("/"), &mut found)?;
    let expected: BTreeSet<PathBuf> = files.iter().map(|f| f.in_image.clone()).collect();
    let mut dirs = BTreeSet::new();
    for f in &expected {
        dirs.extend(f.ancestors().skip(1).map(Path::to_path_buf));
    }
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for (path, kind) in &found {
        match kind {
            EntryKind::Dir if dirs.contains(path) => {}
            EntryKind::File if expected.contains(path) => {
                seen.insert(path.clone());
            }
            kind => problems.push(format!("unexpected {kind:?} {}", path.display())),
        }
    }
    for missing in expected.difference(&seen) {
        problems.push(format!("missing {}", missing.display()));
    }
    for f in files.iter().filter(|f| seen.contains(&f.in_image)) {
        let rel = f.in_image.strip_prefix("/").unwrap_or(&f.in_image);
        let (a, b) = (fs::read(mount.join(rel))?, fs::read(&f.source)?);
        if a != b {
            problems.push(format!(
                "{} differs from {}",
                f.in_image.display(),
                f.source.display()
            ));
        }
    }
    if !problems.is_empty() {
        bail!(
            "the image's contents are wrong:\n  {}",
            problems.join("\n  ")
        );
    }
    Ok(())
}

#[derive(Debug)]
enum EntryKind {
    Dir,
    File,
    Symlink,
    Other,
}

/// Every entry below `dir` (shown as `shown`), without following symlinks.
fn walk(dir: &Path, shown: &Path, out: &mut Vec<(PathBuf, EntryKind)>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let ty = entry.file_type()?;
        let name = shown.join(entry.file_name());
        if ty.is_dir() {
            out.push((name.clone(), EntryKind::Dir));
            walk(&entry.path(), &name, out)?;
        } else if ty.is_file() {
            out.push((name, EntryKind::File));
        } else if ty.is_symlink() {
            out.push((name, EntryKind::Symlink));
        } else {
            out.push((name, EntryKind::Other));
        }
    }
    Ok(())
}

/// `/vxtrace --version` chrooted into the image's files.
fn chroot_version(mount: &Path) -> Result<String> {
    let out = Command::new("chroot")
        .arg(mount)
        .args([IMAGE_BINARY, "--version"])
        .output()
        .context("running chroot")?;
    Ok(ok_stdout("chroot", out)?.trim().to_string())
}

fn check_version(out: &str, want: &str) -> Result<()> {
    if out.trim() != want {
        bail!("`{IMAGE_BINARY} --version` in the image printed {out:?}, not {want:?}");
    }
    Ok(())
}

fn ok_stdout(what: &str, out: Output) -> Result<String> {
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let mut said: String = err
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        if said.chars().count() > 400 {
            said = said.chars().take(400).collect::<String>() + "...";
        }
        bail!("{what} failed with {}: {said}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

/// An image ID without its digest algorithm (buildah prints both forms).
fn bare_id(id: &str) -> &str {
    id.strip_prefix("sha256:").unwrap_or(id)
}

fn short_id(id: &str) -> &str {
    let id = bare_id(id);
    &id[..id.len().min(12)]
}

fn group_digits(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_the_libraries_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd0c5f2000)\n\
            \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f024b2c3000)\n\
            \tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f024a920000)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f024a73e000)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f024b2f6000)\n";
        let libs = parse_ldd(text).unwrap();
        let libs: Vec<&str> = libs.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(
            libs,
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libm.so.6",
                "/lib64/ld-linux-x86-64.so.2",
            ]
        );
    }

    #[test]
    fn a_static_binary_has_no_libraries_and_a_missing_one_is_an_error() {
        assert!(
            parse_ldd("\tnot a dynamic executable\n")
                .unwrap()
                .is_empty()
        );
        assert!(parse_ldd("\tstatically linked\n").unwrap().is_empty());
        let err = parse_ldd("\tlibfoo.so.1 => not found\n").unwrap_err();
        assert!(err.to_string().contains("libfoo.so.1"), "{err}");
    }

    #[test]
    fn digits_grouped() {
        assert_eq!(group_digits(0), "0");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(10_820_496), "10,820,496");
    }
}
