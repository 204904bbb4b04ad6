//! The kernels themselves: Debian's cloud kernel packages, found through
//! apt (this machine's sources, or an older release's through private
//! lists), downloaded once into the cache, unpacked and indexed by depmod.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// A kernel ready to boot: unpacked, its modules indexed.
pub struct Kernel {
    /// The kernel release (`uname -r`), e.g. 6.1.0-56-cloud-amd64.
    pub release: String,
    /// The unpacked package, with modules.dep.
    pub tree: PathBuf,
    pub vmlinuz: PathBuf,
    /// Whether the package was already in the cache.
    pub cached: bool,
}

/// Why a kernel series cannot be had here (no package, no source that
/// serves it): the series is skipped, not failed.
pub type Unavailable = String;

/// The newest kernel of `series`, downloaded (once) and unpacked.
/// `Ok(Err(why))` when the package registry does not serve it; `older` is
/// the older Debian release to look in when this machine's sources lack it.
pub fn fetch_kernel(
    series: &str,
    older: Option<&str>,
    cache: &Path,
) -> Result<std::result::Result<Kernel, Unavailable>> {
    let (apt, found) = match find_package(series, older, cache)? {
        Ok(found) => found,
        Err(why) => return Ok(Err(why)),
    };
    let Deb {
        package,
        path: deb,
        cached,
    } = download_once(&apt, series, found, cache)?;
    let release = package.name.trim_start_matches("linux-image-").to_string();
    let tree = cache.join(package.file_stem());
    unpack(&deb, &tree, &release)?;
    prune_older_packages(cache, series, &deb, &tree);
    let vmlinuz = tree.join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        bail!("{} is missing from the package", vmlinuz.display());
    }
    eprintln!(
        "xtask: kernel {series}: {} {}{}",
        package.name,
        package.version,
        if cached { " (cached)" } else { "" }
    );
    Ok(Ok(Kernel {
        release,
        tree,
        vmlinuz,
        cached,
    }))
}

/// A package that apt offers.
struct Package {
    name: String,
    version: String,
}

impl Package {
    /// The package's name and version as a file name (apt's way: no colon).
    fn file_stem(&self) -> String {
        format!("{}_{}", self.name, self.version.replace(':', "%3a"))
    }

    /// Where the package's .deb is kept in `cache`.
    fn deb_path(&self, cache: &Path) -> PathBuf {
        cache.join(format!("{}_amd64.deb", self.file_stem()))
    }
}

/// A package's .deb in the cache.
struct Deb {
    package: Package,
    path: PathBuf,
    /// Whether it was there before this run.
    cached: bool,
}

/// The apt that serves `series`, and its newest package there: this
/// machine's apt first, else the older release's.
fn find_package(
    series: &str,
    older: Option<&str>,
    cache: &Path,
) -> Result<std::result::Result<(Apt, Package), Unavailable>> {
    let system = Apt::system();
    if let Some(found) = newest_package(&system, series)? {
        return Ok(Ok((system, found)));
    }
    let Some(suite) = older else {
        return Ok(Err(format!(
            "no linux-image-{series}*-cloud-amd64 package in this machine's apt sources"
        )));
    };
    let apt = match Apt::older_release(cache, suite)? {
        Ok(apt) => apt,
        Err(why) => return Ok(Err(why)),
    };
    match newest_package(&apt, series)? {
        Some(found) => Ok(Ok((apt, found))),
        None => Ok(Err(format!(
            "Debian {suite} has no linux-image-{series}*-cloud-amd64 package"
        ))),
    }
}

/// The package's .deb in the cache, downloaded unless it is there already.
/// This machine's lists may be older than what the registry serves now: if
/// the download fails, they are refreshed and the newest package fetched.
fn download_once(apt: &Apt, series: &str, found: Package, cache: &Path) -> Result<Deb> {
    let path = found.deb_path(cache);
    let cached = path.is_file();
    if cached {
        return Ok(Deb {
            package: found,
            path,
            cached,
        });
    }
    let Err(first) = download(apt, &found, cache, &path) else {
        return Ok(Deb {
            package: found,
            path,
            cached,
        });
    };
    if apt.is_private() {
        return Err(first);
    }
    eprintln!("xtask: {first:#}; refreshing apt's lists and trying again");
    crate::run(Command::new("apt-get").args(["update", "-qq"]))?;
    let found = newest_package(apt, series)?
        .with_context(|| format!("no linux-image-{series} package after apt-get update"))?;
    let path = found.deb_path(cache);
    if !path.is_file() {
        download(apt, &found, cache, &path)?;
    }
    Ok(Deb {
        package: found,
        path,
        cached,
    })
}

fn download(apt: &Apt, package: &Package, cache: &Path, deb: &Path) -> Result<()> {
    let Package { name, version } = package;
    // Into a directory of its own, then into place: an interrupted download
    // never looks like a cached package.
    let tmp = cache.join(".download");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    crate::run(
        apt.command("apt-get")
            .current_dir(&tmp)
            // Root downloads into root's cache directory.
            .args(["-o", "APT::Sandbox::User=root", "download", "-qq"])
            .arg(format!("{name}={version}")),
    )
    .with_context(|| format!("downloading {name} {version} with apt-get"))?;
    let got = std::fs::read_dir(&tmp)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", tmp.display()))?;
    std::fs::rename(&got, deb).with_context(|| format!("moving {} into place", got.display()))?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// Unpacks `deb` into `tree` and indexes its modules, unless an earlier run
/// finished doing so (a partial tree is started over).
fn unpack(deb: &Path, tree: &Path, release: &str) -> Result<()> {
    let ready = tree.join(".vxtrace-ready");
    if ready.exists() {
        return Ok(());
    }
    if tree.exists() {
        std::fs::remove_dir_all(tree)
            .with_context(|| format!("removing the partial {}", tree.display()))?;
    }
    crate::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(tree))
        .with_context(|| format!("unpacking {}", deb.display()))?;
    if !tree.join("lib/modules").join(release).is_dir() {
        bail!(
            "{} has no lib/modules/{release}: not the kernel package expected",
            deb.display()
        );
    }
    crate::run(Command::new("depmod").arg("-b").arg(tree).arg(release))
        .with_context(|| format!("running depmod for {release}"))?;
    std::fs::write(&ready, "")?;
    Ok(())
}

/// Removes the cache's older packages of the series (and their trees):
/// they are not needed any more.
fn prune_older_packages(cache: &Path, series: &str, deb: &Path, tree: &Path) {
    let Ok(rd) = std::fs::read_dir(cache) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p != deb && p != tree && in_series(&name, series) {
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}

/// Whether package or cache entry `name` belongs to kernel series `series`
/// (linux-image-6.1.0-56-cloud-amd64 to 6.1, not to 6.12).
fn in_series(name: &str, series: &str) -> bool {
    let Some(rest) = name
        .strip_prefix("linux-image-")
        .and_then(|r| r.strip_prefix(series))
    else {
        return false;
    };
    let mut chars = rest.chars();
    matches!(chars.next(), Some('.' | '-')) && chars.next().is_some_and(|c| c.is_ascii_digit())
}

/// The newest signed cloud image package of `series`.
fn newest_package(apt: &Apt, series: &str) -> Result<Option<Package>> {
    let names = package_names(apt, series)?;
    if names.is_empty() {
        return Ok(None);
    }
    let mut best: Option<Package> = None;
    for c in candidates(apt, &names)? {
        let newer = match &best {
            None => true,
            Some(b) => crate::succeeds(Command::new("dpkg").args([
                "--compare-versions",
                &c.version,
                "gt",
                &b.version,
            ])),
        };
        if newer {
            best = Some(c);
        }
    }
    Ok(best)
}

/// The names of the cloud image packages of `series` that apt knows.
fn package_names(apt: &Apt, series: &str) -> Result<Vec<String>> {
    let pattern = format!(
        "^linux-image-{}[.-][0-9].*-cloud-amd64$",
        series.replace('.', "\\.")
    );
    let out = apt
        .command("apt-cache")
        .args(["search", "--names-only", &pattern])
        .output()
        .context("running apt-cache search")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        // Not the -dbg or -unsigned ones.
        .filter(|n| n.ends_with("-cloud-amd64") && in_series(n, series))
        .map(str::to_string)
        .collect())
}

/// The version apt would install of each of `names`, for those it can.
fn candidates(apt: &Apt, names: &[String]) -> Result<Vec<Package>> {
    let out = apt
        .command("apt-cache")
        .arg("policy")
        .args(names)
        .output()
        .context("running apt-cache policy")?;
    let mut candidates = Vec::new();
    let mut current = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            current = Some(line.trim_end_matches(':').to_string());
        } else if let (Some(v), Some(name)) = (
            line.trim().strip_prefix("Candidate:").map(str::trim),
            &current,
        ) && v != "(none)"
        {
            candidates.push(Package {
                name: name.clone(),
                version: v.to_string(),
            });
        }
    }
    Ok(candidates)
}

/// apt, either as configured on this machine or pointed at an older
/// release's suites through private lists (the machine's are not touched).
struct Apt {
    /// Options that point apt at the private configuration; none for the
    /// machine's own.
    opts: Vec<String>,
}

impl Apt {
    fn system() -> Self {
        Self { opts: Vec::new() }
    }

    /// Whether this apt reads private lists rather than the machine's.
    fn is_private(&self) -> bool {
        !self.opts.is_empty()
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(&self.opts);
        cmd
    }

    /// apt reading `suite` and `suite`-security from the servers that this
    /// machine's own release comes from. `Ok(Err(why))` when they do not
    /// serve it.
    fn older_release(cache: &Path, suite: &str) -> Result<std::result::Result<Self, Unavailable>> {
        let sources = match older_sources(suite)? {
            Ok(sources) => sources,
            Err(why) => return Ok(Err(why)),
        };
        let dir = cache.join(format!("apt-{suite}"));
        let apt = Self::private(&dir, &sources)?;
        let out = apt
            .command("apt-get")
            .args(["update", "-qq"])
            .output()
            .context("running apt-get update for the older release")?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            if !has_package_lists(&dir.join("lists")) {
                return Ok(Err(format!(
                    "the package registry does not serve Debian {suite} ({})",
                    last.trim()
                )));
            }
            eprintln!(
                "xtask: apt-get update for {suite} failed ({last}); using its lists from an earlier run"
            );
        }
        Ok(Ok(apt))
    }

    /// apt with its sources, lists and cache in `dir`.
    fn private(dir: &Path, sources: &str) -> Result<Self> {
        for d in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(dir.join(d))
                .with_context(|| format!("creating {}", dir.join(d).display()))?;
        }
        std::fs::write(dir.join("sources.list"), sources)?;
        // The machine's apt.conf.d stays in force (proxies, validity
        // checks); its hooks after `update` act on the machine's own
        // caches, and the app metadata is not needed here.
        std::fs::write(
            dir.join("apt.conf"),
            "#clear APT::Update::Post-Invoke;\n\
             #clear APT::Update::Post-Invoke-Success;\n\
             Acquire::IndexTargets::deb::DEP-11::DefaultEnabled \"false\";\n",
        )?;
        let d = dir.display();
        Ok(Self {
            opts: vec![
                "-c".into(),
                format!("{d}/apt.conf"),
                "-o".into(),
                format!("Dir::Etc::SourceList={d}/sources.list"),
                "-o".into(),
                "Dir::Etc::SourceParts=/dev/null".into(),
                "-o".into(),
                format!("Dir::State::Lists={d}/lists"),
                "-o".into(),
                format!("Dir::Cache={d}/cache"),
            ],
        })
    }
}

/// Whether an earlier `apt-get update` left package lists in `lists`.
fn has_package_lists(lists: &Path) -> bool {
    std::fs::read_dir(lists)
        .map(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
        .unwrap_or(false)
}

/// The machine's release codename (bookworm, ...).
fn codename() -> Result<String> {
    let text = std::fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
        .context("/etc/os-release names no VERSION_CODENAME: not a Debian release?")
}

/// One `deb` source of this machine's apt configuration.
struct Source {
    uris: Vec<String>,
    suites: Vec<String>,
    signed_by: Option<String>,
}

/// The `deb` sources in /etc/apt (one-line and deb822 formats).
fn system_sources() -> Vec<Source> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    let mut sources = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let name = file.to_string_lossy();
        if name.ends_with(".sources") {
            sources.extend(deb822_sources(&text));
        } else if name.ends_with(".list") {
            sources.extend(one_line_sources(&text));
        }
    }
    sources
}

/// The enabled `deb` sources of a deb822 `.sources` file.
fn deb822_sources(text: &str) -> Vec<Source> {
    let mut sources = Vec::new();
    for para in text.split("\n\n") {
        let mut fields: HashMap<String, String> = HashMap::new();
        for line in para.lines() {
            if line.starts_with('#') || line.starts_with(' ') || line.starts_with('\t') {
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                fields.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let types = fields.get("types").cloned().unwrap_or_default();
        let enabled = fields.get("enabled").is_none_or(|v| v != "no");
        if !enabled || !types.split_whitespace().any(|t| t == "deb") {
            continue;
        }
        let words = |k: &str| -> Vec<String> {
            fields
                .get(k)
                .map(|v| v.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default()
        };
        sources.push(Source {
            uris: words("uris"),
            suites: words("suites"),
            signed_by: fields
                .get("signed-by")
                .filter(|v| v.starts_with('/'))
                .cloned(),
        });
    }
    sources
}

/// The `deb` lines of a one-line `.list` file.
fn one_line_sources(text: &str) -> Vec<Source> {
    let mut sources = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let mut rest = rest.trim();
        let mut signed_by = None;
        if let Some(r) = rest.strip_prefix('[') {
            let Some((options, after)) = r.split_once(']') else {
                continue;
            };
            signed_by = options
                .split_whitespace()
                .find_map(|o| o.strip_prefix("signed-by="))
                .map(str::to_string);
            rest = after.trim();
        }
        let mut words = rest.split_whitespace();
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            sources.push(Source {
                uris: vec![uri.to_string()],
                suites: vec![suite.to_string()],
                signed_by,
            });
        }
    }
    sources
}

/// A sources.list for `suite` and `suite`-security on the servers this
/// machine's release comes from, or why there is none.
fn older_sources(suite: &str) -> Result<std::result::Result<String, Unavailable>> {
    let own = codename()?;
    let sources = system_sources();
    let mut out = String::new();
    for (own_suite, target) in [
        (own.clone(), suite.to_string()),
        (format!("{own}-security"), format!("{suite}-security")),
    ] {
        for s in sources.iter().filter(|s| s.suites.contains(&own_suite)) {
            for uri in &s.uris {
                let opts = s
                    .signed_by
                    .as_ref()
                    .map(|k| format!("[signed-by={k}] "))
                    .unwrap_or_default();
                out.push_str(&format!("deb {opts}{uri} {target} main\n"));
            }
        }
    }
    if out.is_empty() {
        return Ok(Err(format!(
            "no apt source in /etc/apt serves {own}, so where {suite} lives is unknown"
        )));
    }
    Ok(Ok(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_membership() {
        assert!(in_series("linux-image-6.1.0-56-cloud-amd64", "6.1"));
        assert!(!in_series("linux-image-6.12.117+deb12-cloud-amd64", "6.1"));
        assert!(in_series("linux-image-6.12.117+deb12-cloud-amd64", "6.12"));
        assert!(!in_series("linux-image-6.12-cloud-amd64", "6.12"));
        assert!(in_series(
            "linux-image-5.10.0-46-cloud-amd64_5.10.262-1",
            "5.10"
        ));
    }
}
