//! Other vxtrace processes, found by scanning /proc: a leaf module, so that
//! attaching (`probes::tc`) and the clsact watchdog (`reaper`) need not
//! import each other.

/// Whether another vxtrace process runs in this network namespace (its
/// clsact filters look like a dead run's leftovers, but are not).
pub fn other_vxtrace_in_this_netns() -> bool {
    let Ok(own_ns) = std::fs::read_link("/proc/self/ns/net") else {
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
