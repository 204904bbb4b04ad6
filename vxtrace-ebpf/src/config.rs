//! The load-time configuration ([`Config`]) and its one accessor, [`config!`].
//!
//! The loader writes `CONFIG` into the object before load
//! (`EbpfLoader::override_global`); the programs never write it. To the
//! compiler it is an immutable static holding `Config::empty()`, so a plain
//! read could be folded into that default at build time. Every read is
//! therefore volatile, and every read goes through [`config!`], which holds
//! the one `unsafe` block and its argument.

use vxtrace_common::Config;

/// The configuration. Read it only through [`config!`].
//
// Its symbol is the global the loader overrides: the name must equal
// `vxtrace_common::names::globals::CONFIG`.
#[unsafe(no_mangle)]
pub static CONFIG: Config = Config::empty();

/// Reads one field of [`CONFIG`]: `config!(filter_vni)`, `config!(ports[i])`,
/// `config!(offsets)` (a whole struct field is copied out).
///
/// An index is bounds-checked like any array index; keep loops to the
/// array's length so the check folds away.
macro_rules! config {
    ($($field:tt)+) => {{
        let field = &raw const $crate::config::CONFIG.$($field)+;
        // SAFETY: `field` points into a static, so it is non-null, aligned
        // and valid for the program's whole run. Nothing writes CONFIG while
        // programs run (the loader's value is in place before load, and the
        // map holding it is frozen), so the read races with no write.
        unsafe { ::core::ptr::read_volatile(field) }
    }};
}
pub(crate) use config;

/// Local VTEP address `i` of [`CONFIG`] as two words: two loads, where a
/// volatile copy of the 16-byte array would be sixteen byte loads and the
/// shifts to join them.
#[inline(always)]
pub fn local_addr_words(i: usize) -> [u64; 2] {
    let field = &raw const CONFIG.local_addrs[i];
    let words = field.cast::<u64>();
    // SAFETY: as in `config!`; `PeerKey` is 16 bytes aligned to 8, so both
    // words are in the field and aligned.
    unsafe {
        [
            core::ptr::read_volatile(words),
            core::ptr::read_volatile(words.add(1)),
        ]
    }
}
