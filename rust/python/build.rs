//! Builds `pyrt-child` (a static binary) and hands its path to the extension, which embeds it
//! with `include_bytes!` and executes it from a sealed memfd. Embedding beats shipping a file
//! next to the extension: there is no path to find, to tamper with, or to lose in packaging.
//!
//! The nested cargo gets its own target directory (no lock shared with the outer build) and a
//! clean environment: the outer build's per-package variables and flags are not for it.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let child_dir = manifest_dir.join("../child");
    let core_dir = manifest_dir.join("../core");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target = env::var("TARGET").expect("cargo sets TARGET");
    let target_dir = out.join("child-target");

    let mut cmd = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.arg("build")
        .args(["--profile", "child", "--bin", "pyrt-child"])
        .arg("--manifest-path")
        .arg(child_dir.join("Cargo.toml"))
        .args(["--target", &target, "--locked"])
        .arg("--target-dir")
        .arg(&target_dir);
    for (k, _) in env::vars() {
        let keep = matches!(
            k.as_str(),
            "CARGO_HOME"
                | "CARGO_NET_OFFLINE"
                | "CARGO_MAKEFLAGS"
                | "CARGO_REGISTRIES_CRATES_IO_PROTOCOL"
        ) || k.starts_with("CARGO_REGISTRIES_")
            || k.starts_with("CARGO_SOURCE_")
            || k.starts_with("CARGO_HTTP_");
        if (k.starts_with("CARGO_") && !keep) || k == "RUSTFLAGS" || k == "RUSTC_WORKSPACE_WRAPPER"
        {
            cmd.env_remove(&k);
        }
    }
    // A static-pie binary: no dynamic loader to run at each container start, and nothing to
    // resolve on the host's library path. With --target, these flags reach only target code,
    // never build scripts or proc macros.
    cmd.env("RUSTFLAGS", "-C target-feature=+crt-static");
    let status = cmd.status().expect("running cargo to build pyrt-child");
    assert!(status.success(), "building pyrt-child failed");

    let bin = target_dir.join(&target).join("child").join("pyrt-child");
    println!("cargo:rustc-env=PYRT_CHILD_BIN={}", bin.display());
    for d in [
        child_dir.join("src"),
        core_dir.join("src"),
        child_dir.join("Cargo.toml"),
        core_dir.join("Cargo.toml"),
    ] {
        println!("cargo:rerun-if-changed={}", d.display());
    }
}
