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
    let target = child_target(&env::var("TARGET").expect("cargo sets TARGET"));
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
    // pyrt-runc embeds the child just built (its build script reads this), rather than
    // copying its own, larger image into a memfd at every create.
    runc.env("PYRT_CHILD_BIN", &bin);
    let status = runc.status().expect("running cargo to build pyrt-runc");
    assert!(status.success(), "building pyrt-runc failed");
    let scripts = manifest_dir.join("../../python/pyrt.data/scripts");
    std::fs::create_dir_all(&scripts).expect("creating python/pyrt.data/scripts");
    let built = target_dir.join(&target).join("child").join("pyrt-runc");
    // A rename over the old file: a running pyrt-runc keeps its own image.
    let tmp = scripts.join(".pyrt-runc.tmp");
    std::fs::copy(&built, &tmp).expect("copying pyrt-runc");
    std::fs::rename(&tmp, scripts.join("pyrt-runc")).expect("placing pyrt-runc");

    println!("cargo:rustc-env=PYRT_CHILD_BIN={}", bin.display());
    for d in [
        manifest_dir.join("../runc/src"),
        manifest_dir.join("../runc/Cargo.toml"),
        manifest_dir.join("../runc/build.rs"),
        child_dir.join("src"),
        core_dir.join("src"),
        child_dir.join("Cargo.toml"),
        core_dir.join("Cargo.toml"),
    ] {
        println!("cargo:rerun-if-changed={}", d.display());
    }
}

/// The target the two static binaries are built for: musl where the toolchain has it. A static
/// glibc binary runs glibc's CPU feature probing at every start, a few dozen `cpuid`
/// instructions; in a virtual machine each one traps to the hypervisor (9 us apiece measured
/// on the development VM), which made executing pyrt-child cost 0.65 ms more than the same
/// program on musl, at every container start. Without the musl target (`rustup target add
/// x86_64-unknown-linux-musl`; `scripts/setup` adds it) the build falls back to glibc and says so.
fn child_target(host_target: &str) -> String {
    let Some(arch) = host_target.strip_suffix("-unknown-linux-gnu") else {
        return host_target.to_string();
    };
    let musl = format!("{arch}-unknown-linux-musl");
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let libdir = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", &musl])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let installed = libdir
        .and_then(|d| std::fs::read_dir(d).ok())
        .is_some_and(|mut entries| {
            entries.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("libstd-")))
        });
    if installed {
        musl
    } else {
        println!(
            "cargo:warning=the {musl} target is not installed: pyrt-child is built for \
             {host_target} (about 0.6 ms slower to start per container in a VM); \
             `rustup target add {musl}` fixes that"
        );
        host_target.to_string()
    }
}
