//! Reading a whole map in a few syscalls (BPF_MAP_LOOKUP_BATCH, kernels
//! from 5.6 on) instead of two per key: with
//! 10,000 peers this is the difference between ~80 ms and a few ms of CPU
//! per interval. Callers fall back to per-key iteration where the kernel
//! refuses.

use std::{io, mem::size_of, os::fd::RawFd};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Most elements asked for per syscall.
const MOST_PER_CALL: usize = 1024;
/// The value buffer's size at most, whatever the number of possible CPUs:
/// a value has a copy per possible CPU, and on a node with 64 of them 1,024
/// peers' values would be 29 MB to allocate and clear on every read.
const VALUE_BUFFER_BYTES: usize = 1 << 20;

/// Elements per syscall: as many as fit the value buffer, at least 16.
fn per_call(value_size: usize, values_per_key: usize) -> usize {
    (VALUE_BUFFER_BYTES / (value_size * values_per_key).max(1)).clamp(16, MOST_PER_CALL)
}

#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every key of a hash map with its values summed by `sum` (called with
/// each of the key's values in turn, starting from the default):
/// `values_per_key` is the possible CPUs for a per-CPU map, 1 for a plain
/// one. `V` must be a multiple of 8 bytes (the kernel's value stride).
/// `expected` is how many keys the caller expects (the last read's count):
/// with 10,000 peers, growing the vector as it fills moved megabytes of
/// values every interval.
pub fn lookup_summed<K: Copy + Default, V: Copy + Default>(
    fd: RawFd,
    values_per_key: usize,
    expected: usize,
    mut sum: impl FnMut(&mut V, &V),
) -> io::Result<Vec<(K, V)>> {
    let mut out: Vec<(K, V)> = Vec::with_capacity(expected + expected / 8);
    lookup_each(fd, values_per_key, |key: &K, values: &[V]| {
        // Summed where it is kept, not in a temporary copied in after.
        out.push((*key, V::default()));
        let total = &mut out.last_mut().expect("just pushed").1;
        for v in values {
            sum(total, v);
        }
    })?;
    Ok(out)
}

/// Every key of a map (hash or array) with its values handed to `each`:
/// `values_per_key` is the possible CPUs for a per-CPU map (a value for
/// each), 1 for a plain one. `V` must be a multiple of 8 bytes (the
/// kernel's value stride).
pub fn lookup_each<K: Copy + Default, V: Copy + Default>(
    fd: RawFd,
    values_per_key: usize,
    mut each: impl FnMut(&K, &[V]),
) -> io::Result<()> {
    assert_eq!(size_of::<V>() % 8, 0, "per-CPU values are 8-byte strided");
    let mut chunk = per_call(size_of::<V>(), values_per_key);
    let mut keys = vec![K::default(); chunk];
    let mut values = vec![V::default(); chunk * values_per_key];
    // Hash maps use a u32 bucket index as the batch token, arrays the u32
    // index.
    let mut token_in: u64 = 0;
    let mut token_out: u64 = 0;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &mut token_in as *mut u64 as u64
            },
            out_batch: &mut token_out as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        // SAFETY: the buffers hold `chunk` keys and `chunk * values_per_key`
        // values, as `count` tells the kernel.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as u32,
            )
        };
        let err = (rc < 0).then(io::Error::last_os_error);
        if err.as_ref().and_then(io::Error::raw_os_error) == Some(libc::ENOSPC)
            && chunk < MOST_PER_CALL * 64
        {
            // One hash bucket holds more elements than asked for: ask again
            // from the same bucket with room for it.
            chunk *= 2;
            keys.resize(chunk, K::default());
            values.resize(chunk * values_per_key, V::default());
            continue;
        }
        if let Some(e) = &err
            && e.raw_os_error() != Some(libc::ENOENT)
        {
            return Err(io::Error::new(
                e.kind(),
                format!("BPF_MAP_LOOKUP_BATCH: {e}"),
            ));
        }
        for i in 0..attr.count as usize {
            each(
                &keys[i],
                &values[i * values_per_key..(i + 1) * values_per_key],
            );
        }
        // ENOENT: that was the last batch.
        if err.is_some() {
            return Ok(());
        }
        token_in = token_out;
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value buffer stays within its bound as possible CPUs grow; a
    /// few CPUs get the most elements per call.
    #[test]
    fn elements_per_call_follow_the_possible_cpus() {
        let peer_value = 440;
        assert_eq!(per_call(peer_value, 2), MOST_PER_CALL);
        assert_eq!(per_call(peer_value, 64), (1 << 20) / (440 * 64));
        assert!(per_call(peer_value, 64) * peer_value * 64 <= VALUE_BUFFER_BYTES);
        assert_eq!(per_call(peer_value, 8192), 16);
        assert_eq!(per_call(8, 1), MOST_PER_CALL);
    }
}
