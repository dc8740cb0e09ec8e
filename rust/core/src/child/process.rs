//! The process's own attributes, set last: rlimits, user and groups, capabilities, working
//! directory, no_new_privs, signal state, and finally the executable's lookup and execve.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::capabilities;
use crate::plan::Process;
use crate::report::{SetupError, Stage};
use crate::syscall::cstring;

type Result<T> = std::result::Result<T, SetupError>;

fn errno_err(stage: Stage, what: String) -> impl FnOnce(nix::Error) -> SetupError {
    move |e| SetupError::io(stage, what, &io::Error::from(e))
}

pub fn rlimits(p: &Process) -> Result<()> {
    for r in &p.rlimits {
        let lim = libc::rlimit {
            rlim_cur: r.soft,
            rlim_max: r.hard,
        };
        // SAFETY: lim is a valid rlimit.
        if unsafe { libc::setrlimit(r.resource as _, &lim) } != 0 {
            let e = io::Error::last_os_error();
            let hint = if e.raw_os_error() == Some(libc::EPERM) {
                " (raising a hard limit needs CAP_SYS_RESOURCE)"
            } else {
                ""
            };
            return Err(SetupError::io(
                Stage::Rlimits,
                format!(
                    "setrlimit resource {} to {}:{}{hint}",
                    r.resource, r.soft, r.hard
                ),
                &e,
            ));
        }
    }
    if let Some(adj) = p.oom_score_adj {
        write_proc("/proc/self/oom_score_adj", &adj.to_string())
            .map_err(|e| SetupError::io(Stage::Rlimits, "write to /proc/self/oom_score_adj", &e))?;
    }
    Ok(())
}

/// Writes a /proc file, after checking that the file really is on a procfs: a bind mount or a
/// symlink planted over /proc must not turn the write into one elsewhere (CVE-2025-52881).
pub fn write_proc(path: &str, value: &str) -> io::Result<()> {
    use std::io::Write;
    const PROC_SUPER_MAGIC: u64 = 0x9fa0;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let st = nix::sys::statfs::fstatfs(&f).map_err(io::Error::from)?;
    // The magic's integer type differs between glibc and musl: compare as u64.
    if st.filesystem_type().0 as u64 != PROC_SUPER_MAGIC {
        // EXDEV: "not the filesystem expected"; the caller's message names the file.
        return Err(io::Error::from_raw_os_error(libc::EXDEV));
    }
    f.write_all(value.as_bytes())
}

/// Switches to the spec's user. The bounding set is cut first (that needs CAP_SETPCAP, which a
/// non-root user no longer has), and PR_SET_KEEPCAPS keeps the permitted set across setuid so that
/// `capabilities::apply` can then set exactly the spec's sets.
pub fn switch_user(p: &Process, setgroups_allowed: bool) -> Result<()> {
    if let Some(c) = &p.capabilities {
        capabilities::drop_bounding(c.bounding).map_err(|e| {
            SetupError::new(
                Stage::Capabilities,
                libc::EPERM,
                format!("dropping bounding capabilities: {e}"),
            )
        })?;
    }
    nix::sys::prctl::set_keepcaps(true)
        .map_err(errno_err(Stage::User, "PR_SET_KEEPCAPS".into()))?;
    if setgroups_allowed {
        let groups: Vec<nix::unistd::Gid> = p
            .additional_gids
            .iter()
            .map(|g| nix::unistd::Gid::from_raw(*g))
            .collect();
        match nix::unistd::setgroups(&groups) {
            // A user namespace whose setgroups is "deny" refuses even an empty list; when we
            // could not tell (an exec outside the container's pid namespace cannot read its
            // /proc/self), having no groups to set is no loss.
            Err(nix::errno::Errno::EPERM) if groups.is_empty() => {}
            r => r.map_err(errno_err(
                Stage::User,
                format!("setgroups {:?}", p.additional_gids),
            ))?,
        }
    }
    let gid = nix::unistd::Gid::from_raw(p.gid);
    nix::unistd::setresgid(gid, gid, gid)
        .map_err(errno_err(Stage::User, format!("setgid {}", p.gid)))?;
    let uid = nix::unistd::Uid::from_raw(p.uid);
    nix::unistd::setresuid(uid, uid, uid)
        .map_err(errno_err(Stage::User, format!("setuid {}", p.uid)))?;
    nix::sys::prctl::set_keepcaps(false)
        .map_err(errno_err(Stage::User, "PR_SET_KEEPCAPS".into()))?;
    if let Some(c) = &p.capabilities {
        capabilities::apply(c).map_err(|e| {
            SetupError::new(
                Stage::Capabilities,
                libc::EPERM,
                format!("setting capabilities: {e}"),
            )
        })?;
    }
    let m = p.umask.unwrap_or(0o022);
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(m as libc::mode_t));
    Ok(())
}

/// chdir into the working directory, then check that the kernel agrees it is inside our root:
/// a directory reached through a leaked descriptor reads as "(unreachable)" (CVE-2024-21626).
pub fn enter_cwd(p: &Process) -> Result<()> {
    nix::unistd::chdir(&p.cwd).map_err(|e| {
        let e = io::Error::from(e);
        let msg = match e.raw_os_error() {
            Some(libc::ENOENT) => format!("working directory does not exist: {}", p.cwd.display()),
            Some(libc::ENOTDIR) => {
                format!("working directory is not a directory: {}", p.cwd.display())
            }
            _ => format!("chdir {}", p.cwd.display()),
        };
        if msg.starts_with("chdir") {
            SetupError::io(Stage::Cwd, msg, &e)
        } else {
            SetupError::new(Stage::Cwd, e.raw_os_error().unwrap_or(libc::EIO), msg)
        }
    })?;
    match nix::unistd::getcwd() {
        Ok(d) if d.is_absolute() => Ok(()),
        _ => Err(SetupError::new(
            Stage::Cwd,
            libc::EPERM,
            format!(
                "working directory {} is outside the container's root",
                p.cwd.display()
            ),
        )),
    }
}

pub fn no_new_privs(p: &Process) -> Result<()> {
    if p.no_new_privs {
        nix::sys::prctl::set_no_new_privs()
            .map_err(errno_err(Stage::Capabilities, "PR_SET_NO_NEW_PRIVS".into()))?;
    }
    Ok(())
}

/// Set in an exec server (`serve`) once its own dispositions are the defaults but SIGPIPE's
/// (`server_signals`): its forks then inherit only that one to undo.
static ONLY_SIGPIPE_IGNORED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// The parent (Python) ignores SIGPIPE and may block signals; the container's command must start
/// with every disposition at its default and nothing blocked, as after a fresh boot. (A handler
/// is undone by the exec itself: only what is ignored must be, and the mask.)
pub fn reset_signals() {
    if ONLY_SIGPIPE_IGNORED.load(std::sync::atomic::Ordering::Relaxed) {
        // SAFETY: as below.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    } else {
        set_all_default_but(0);
    }
    let empty = nix::sys::signal::SigSet::empty();
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&empty),
        None,
    );
}

/// Every disposition to its default, but signal `keep`'s (0: none).
fn set_all_default_but(keep: libc::c_int) {
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP || sig == keep {
            continue;
        }
        // SAFETY: restoring the default disposition has no memory effects.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
}

/// An exec server's dispositions, set once: the defaults but SIGPIPE's (ignored, as the Rust
/// runtime has it), so that each exec it forks resets one disposition instead of 62, ~60
/// system calls of every exec. (It needs no handler: it is in a session of its own and is
/// only ever signalled to end.)
pub fn server_signals() {
    set_all_default_but(libc::SIGPIPE);
    // SAFETY: ignoring SIGPIPE has no memory effects.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    ONLY_SIGPIPE_IGNORED.store(true, std::sync::atomic::Ordering::Relaxed);
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn is_executable_file(p: &Path) -> io::Result<bool> {
    let m = std::fs::metadata(p)?;
    Ok(m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds the command as a shell would: a name with a slash is taken as it is (relative to the
/// working directory), anything else is searched in the container's own $PATH.
pub fn lookup(p: &Process) -> Result<PathBuf> {
    let arg0 = &p.args[0];
    if arg0.contains('/') {
        let path = PathBuf::from(arg0);
        return match is_executable_file(&path) {
            Ok(true) => Ok(path),
            Ok(false) => Err(SetupError::new(
                Stage::Exec,
                libc::EACCES,
                format!("permission denied: {arg0} is not an executable file"),
            )),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
                Err(SetupError::new(
                    Stage::Exec,
                    libc::ENOENT,
                    format!("executable file not found: {arg0}"),
                ))
            }
            Err(e) => Err(SetupError::io(Stage::Exec, format!("stat {arg0}"), &e)),
        };
    }
    let path_var = p
        .env
        .iter()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let mut denied = None;
    for dir in path_var.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let cand = Path::new(dir).join(arg0);
        match is_executable_file(&cand) {
            Ok(true) => return Ok(cand),
            Ok(false) => denied = denied.or(Some(cand)),
            Err(_) => {}
        }
    }
    Err(match denied {
        Some(c) => SetupError::new(
            Stage::Exec,
            libc::EACCES,
            format!(
                "permission denied: {} is not an executable file",
                c.display()
            ),
        ),
        None => SetupError::new(
            Stage::Exec,
            libc::ENOENT,
            format!("executable file not found in $PATH: {arg0} (PATH={path_var})"),
        ),
    })
}

/// execve; returns only on failure.
pub fn exec(p: &Process, path: &Path) -> SetupError {
    let to_c = |v: &[String]| -> std::result::Result<Vec<CString>, io::Error> {
        v.iter().map(cstring).collect()
    };
    let (args, env) = match (to_c(&p.args), to_c(&p.env)) {
        (Ok(a), Ok(e)) => (a, e),
        _ => {
            return SetupError::new(
                Stage::Exec,
                libc::EINVAL,
                "argument or environment contains a NUL byte",
            )
        }
    };
    let cpath = match cstring(path.as_os_str().as_bytes()) {
        Ok(c) => c,
        Err(e) => return SetupError::io(Stage::Exec, "executable path", &e),
    };
    let e = nix::unistd::execve(&cpath, &args, &env).unwrap_err();
    let e = io::Error::from(e);
    let msg = match e.raw_os_error() {
        Some(libc::ENOEXEC) => format!(
            "exec {}: not a binary this kernel can run (exec format error)",
            path.display()
        ),
        Some(libc::ENOENT) => format!(
            "exec {}: its interpreter or a library it needs was not found",
            path.display()
        ),
        _ => format!("exec {}", path.display()),
    };
    if msg.starts_with("exec ") && !msg.contains(':') {
        SetupError::io(Stage::Exec, msg, &e)
    } else {
        SetupError::new(Stage::Exec, e.raw_os_error().unwrap_or(libc::EIO), msg)
    }
}
