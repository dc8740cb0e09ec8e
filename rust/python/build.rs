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

    // pyrt-runc, the OCI runtime, by a second call: features unify across the packages of one
    // call, and pyrt-child must stay without the spec parser. maturin ships it as a script
    // of the wheel (`[tool.maturin] data`), so that installing pyrt puts it on PATH.
    let mut runc = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    let child_manifest = child_dir.join("Cargo.toml");
    let runc_manifest = manifest_dir.join("../runc/Cargo.toml");
    runc.args(cmd.get_args().map(|a| {
        if a == "pyrt-child" {
            std::ffi::OsStr::new("pyrt-runc")
        } else if a == child_manifest.as_os_str() {
            runc_manifest.as_os_str()
        } else {
            a
        }
    }));
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => runc.env(k, v),
            None => runc.env_remove(k),
        };
    }
    let status = runc.status().expect("running cargo to build pyrt-runc");
    assert!(status.success(), "building pyrt-runc failed");
    let scripts = manifest_dir.join("../../python/pyrt.data/scripts");
    std::fs::create_dir_all(&scripts).expect("creating python/pyrt.data/scripts");
    let built = target_dir.join(&target).join("child").join("pyrt-runc");
    // A rename over the old file: a running pyrt-runc keeps its own image.
    let tmp = scripts.join(".pyrt-runc.tmp");
    std::fs::copy(&built, &tmp).expect("copying pyrt-runc");
    std::fs::rename(&tmp, scripts.join("pyrt-runc")).expect("placing pyrt-runc");

    let bin = target_dir.join(&target).join("child").join("pyrt-child");
    println!("cargo:rustc-env=PYRT_CHILD_BIN={}", bin.display());
    for d in [
        manifest_dir.join("../runc/src"),
        manifest_dir.join("../runc/Cargo.toml"),
        child_dir.join("src"),
        core_dir.join("src"),
        child_dir.join("Cargo.toml"),
        core_dir.join("Cargo.toml"),
    ] {
        println!("cargo:rerun-if-changed={}", d.display());
    }
}
