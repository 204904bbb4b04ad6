//! Empty: the library target exists so the build script's dependency
//! tracking works; the programs are in the `vxtrace` binary (src/main.rs).
#![no_std]
