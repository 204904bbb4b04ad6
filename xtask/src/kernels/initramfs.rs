//! The initramfs as a file tree in memory ([`Image`]), written as the newc
//! cpio archive the kernel unpacks at boot.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufWriter, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

/// The name of the entry that ends a cpio archive.
const TRAILER: &str = "TRAILER!!!";

/// A file tree written as a newc cpio archive (what the kernel unpacks as
/// its initramfs). Paths are relative, without a leading slash.
#[derive(Clone, Default)]
pub struct Image {
    /// Sorted by path, so a directory comes before what it holds.
    nodes: BTreeMap<String, Node>,
}

#[derive(Clone)]
enum Node {
    Dir,
    File { src: FileSource, mode: u32 },
    Symlink(String),
    CharDev(u32, u32),
}

/// Where a file's contents come from.
#[derive(Clone)]
pub enum FileSource {
    /// A file on this machine, read when the archive is written.
    Host(PathBuf),
    Bytes(Vec<u8>),
}

/// Where a host path goes in the image: its /bin, /sbin, /lib and /lib64 are
/// links into /usr, as on this machine.
pub fn image_path(host: &str) -> String {
    let p = host.trim_start_matches('/');
    for top in ["bin/", "sbin/", "lib/", "lib64/"] {
        if p.starts_with(top) {
            return format!("usr/{p}");
        }
    }
    p.to_string()
}

impl Image {
    fn add_dirs_for(&mut self, path: &str) {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            let dir = &path[..at + i];
            self.nodes.entry(dir.to_string()).or_insert(Node::Dir);
            at += i + 1;
        }
    }

    pub fn dir(&mut self, path: &str) {
        self.add_dirs_for(path);
        self.nodes.entry(path.to_string()).or_insert(Node::Dir);
    }

    pub fn file(&mut self, path: &str, src: FileSource, mode: u32) {
        self.add_dirs_for(path);
        self.nodes
            .insert(path.to_string(), Node::File { src, mode });
    }

    /// Adds the file at `host` (links followed) with its permissions.
    pub fn host_file(&mut self, path: &str, host: &Path) -> Result<()> {
        let real =
            std::fs::canonicalize(host).with_context(|| format!("resolving {}", host.display()))?;
        let mode = std::fs::metadata(&real)
            .with_context(|| format!("reading {}", real.display()))?
            .permissions()
            .mode()
            & 0o7777;
        self.file(path, FileSource::Host(real), mode);
        Ok(())
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.add_dirs_for(path);
        self.nodes
            .insert(path.to_string(), Node::Symlink(target.to_string()));
    }

    /// A character device node, in a directory that must exist already.
    pub fn char_dev(&mut self, path: &str, major: u32, minor: u32) {
        self.nodes
            .insert(path.to_string(), Node::CharDev(major, minor));
    }

    /// Copies directory `src` (files and directories) to `dest`.
    pub fn add_tree(&mut self, src: &Path, dest: &str) -> Result<()> {
        self.dir(dest);
        let rd = std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))?;
        for e in rd {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let to = format!("{dest}/{name}");
            if e.file_type()?.is_dir() {
                self.add_tree(&e.path(), &to)?;
            } else {
                self.host_file(&to, &e.path())?;
            }
        }
        Ok(())
    }

    /// Writes the archive (uncompressed: the emulated kernel unpacks it
    /// faster than it would decompress it); returns its size.
    pub fn write_newc(&self, out: &Path) -> Result<u64> {
        // Written aside, then moved into place: a broken run leaves no
        // archive that looks whole.
        let tmp = out.with_extension("cpio.tmp");
        let mut w = Newc {
            w: BufWriter::new(
                File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
            ),
            written: 0,
            ino: 0,
        };
        for (path, node) in &self.nodes {
            match node {
                Node::Dir => w.entry(path, 0o040755, (0, 0), &[])?,
                Node::Symlink(target) => w.entry(path, 0o120777, (0, 0), target.as_bytes())?,
                Node::CharDev(major, minor) => w.entry(path, 0o020600, (*major, *minor), &[])?,
                Node::File { src, mode } => {
                    let data = match src {
                        FileSource::Bytes(b) => b.clone(),
                        FileSource::Host(p) => {
                            std::fs::read(p).with_context(|| format!("reading {}", p.display()))?
                        }
                    };
                    w.entry(path, 0o100000 | mode, (0, 0), &data)?
                }
            }
        }
        w.entry(TRAILER, 0, (0, 0), &[])?;
        w.w.flush()?;
        drop(w.w);
        std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
        Ok(std::fs::metadata(out)?.len())
    }
}

/// A newc cpio writer: a header in ASCII hex, the name and the data, each
/// padded to four bytes.
struct Newc {
    w: BufWriter<File>,
    written: u64,
    ino: u32,
}

impl Newc {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> Result<()> {
        self.ino += 1;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let header = format!(
            "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            if name == TRAILER { 0 } else { self.ino },
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            data.len(),
            0, // dev major
            0, // dev minor
            rdev.0,
            rdev.1,
            name.len() + 1,
            0, // checksum (none in newc)
        );
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.w.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<()> {
        let n = (4 - self.written % 4) % 4;
        self.put(&[0u8; 3][..n as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_paths_follow_usr_merge() {
        assert_eq!(
            image_path("/lib/x86_64-linux-gnu/libc.so.6"),
            "usr/lib/x86_64-linux-gnu/libc.so.6"
        );
        assert_eq!(
            image_path("/lib64/ld-linux-x86-64.so.2"),
            "usr/lib64/ld-linux-x86-64.so.2"
        );
        assert_eq!(image_path("/usr/sbin/ip"), "usr/sbin/ip");
    }

    #[test]
    fn newc_entries_are_aligned() {
        let mut img = Image::default();
        img.file("a/b", FileSource::Bytes(b"hello".to_vec()), 0o644);
        img.symlink("c", "a/b");
        let dir = std::env::temp_dir().join(format!("xtask-newc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("t.cpio");
        let size = img.write_newc(&out).unwrap();
        let data = std::fs::read(&out).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(size as usize, data.len());
        assert_eq!(data.len() % 4, 0);
        assert!(data.starts_with(b"070701"));
        // Directory "a" comes before the file in it.
        let text = String::from_utf8_lossy(&data);
        assert!(text.find("a\0").unwrap() < text.find("a/b\0").unwrap());
        assert!(text.contains(TRAILER));
    }
}
