//! Hands pyrt-runc the pyrt-child image to embed. pyrt's build (`rust/python/build.rs`) builds
//! pyrt-child first and names it in `PYRT_CHILD_BIN`; a build of this crate alone (the linters'
//! `cargo clippy` of the workspace) has none, and pyrt-runc then uses its own image as the
//! child, as it did before it embedded one (it still contains the child's code).

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=PYRT_CHILD_BIN");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("pyrt-child");
    match env::var_os("PYRT_CHILD_BIN") {
        Some(bin) => {
            println!("cargo:rerun-if-changed={}", PathBuf::from(&bin).display());
            std::fs::copy(&bin, &out).expect("copying the pyrt-child image");
        }
        None => std::fs::write(&out, b"").expect("writing an empty pyrt-child image"),
    }
}
