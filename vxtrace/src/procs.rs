//! Other vxtrace runs in a network namespace: a leaf module, so that
//! attaching (`probes::tc`) and the clsact watchdog (`reaper`) need not
//! import each other. A run's clsact filters outlive it when it is killed
//! with its watchdog, and the next run removes them; it must not remove
//! the filters of a run that is alive.

use std::{
    fs::File,
    io,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
};

/// This run's claim on a network namespace where it has clsact filters: a
/// shared lock on the namespace's file, held while the run lives. Every
/// run in the namespace holds one, whatever its PID namespace (a pod's
/// run cannot see a run started by hand on the node in its /proc, but it
/// sees its lock), and a killed run's lock goes with its last file
/// descriptor, so a dead run's filters are never mistaken for a live one's.
pub struct NetnsClaim {
    file: File,
    /// The namespace file's device and inode: which namespace this is.
    pub id: (u64, u64),
}

impl NetnsClaim {
    /// Claims the calling thread's network namespace.
    pub fn take() -> io::Result<Self> {
        let file = File::open("/proc/thread-self/ns/net")?;
        let meta = file.metadata()?;
        let claim = NetnsClaim {
            id: (meta.dev(), meta.ino()),
            file,
        };
        claim.lock(libc::F_OFD_SETLKW, libc::F_RDLCK as i16)?;
        Ok(claim)
    }

    /// The calling thread's network namespace (as [`NetnsClaim::id`]).
    pub fn current_id() -> io::Result<(u64, u64)> {
        let meta = std::fs::metadata("/proc/thread-self/ns/net")?;
        Ok((meta.dev(), meta.ino()))
    }

    /// Whether another run claims the same namespace. Asked through this
    /// claim's own open file, whose lock does not conflict with itself:
    /// only other runs' locks answer.
    pub fn shared(&self) -> bool {
        match self.lock(libc::F_OFD_GETLK, libc::F_WRLCK as i16) {
            Ok(lock) => lock.l_type != libc::F_UNLCK as i16,
            // Unknown: as if shared, so that nothing is removed.
            Err(_) => true,
        }
    }

    /// One open-file-description lock request over the whole file.
    fn lock(&self, cmd: libc::c_int, kind: i16) -> io::Result<libc::flock> {
        // SAFETY: all-zero is a valid flock (l_pid must be 0 for OFD locks).
        let mut lock: libc::flock = unsafe { std::mem::zeroed() };
        lock.l_type = kind;
        lock.l_whence = libc::SEEK_SET as i16;
        // SAFETY: an open file's descriptor and a flock that outlives the call.
        let rc = unsafe { libc::fcntl(self.file.as_raw_fd(), cmd, &mut lock) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(lock)
    }
}

/// Whether another vxtrace process of this PID namespace runs in this
/// network namespace (found in /proc: runs of versions that claim no lock).
pub fn other_vxtrace_in_this_netns() -> bool {
    let Ok(own_ns) = std::fs::read_link("/proc/thread-self/ns/net") else {
        return false;
    };
    let own_pid = std::process::id().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs.flatten().any(|entry| {
        let pid = entry.file_name();
        let Some(pid) = pid.to_str() else {
            return false;
        };
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == own_pid {
            return false;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        comm.trim_end() == "vxtrace"
            && std::fs::read_link(format!("/proc/{pid}/ns/net"))
                .ok()
                .as_ref()
                == Some(&own_ns)
    })
}
