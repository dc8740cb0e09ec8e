//! `init=True`: pyrt-child stays as the container's pid 1 while the command runs as its child,
//! as tini and catatonit do. It reaps every orphan that the kernel reparents to it (a pid 1 that
//! does not leaves zombies behind) and forwards the signals it receives to the command.
//!
//! A pid 1 cannot be killed by a signal from inside its namespace, so it cannot die "of" the
//! command's signal to pass it on. Instead it writes the command's raw wait status to the status
//! pipe (fd 5), which the parent reads after reaping it, and exits with 128 + the signal number
//! for anyone who only sees the exit code.
//!
//! An idle init (`idle`) has no command: it stays pid 1 of a container kept to exec into.

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::wire::STATUS_FD;

/// Blocks every signal: a pid 1 receives (through sigwait) only the signals it has a handler
/// for or blocks; an unblocked one with the default action is dropped by the kernel.
pub fn block_signals() {
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), None);
}

/// Names this process `pyrt-init` for `ps` inside the container, as docker-init and tini are
/// seen there; it would otherwise show its image's name, `memfd:pyrt-child`.
fn name_self() {
    // SAFETY: a constant name for prctl.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"pyrt-init".as_ptr(), 0, 0, 0) };
}

/// Runs as pid 1 until `child`, the command, has exited. Never returns.
pub fn run(child: Pid) -> ! {
    let all = SigSet::all();
    block_signals();
    name_self();
    // The command may have exited before the mask above: its SIGCHLD, arriving while ignored
    // by default, is gone, so look once before waiting for the next one.
    let code = reap(child).unwrap_or_else(|| loop {
        let sig = match all.wait() {
            Ok(s) => s,
            Err(_) => continue,
        };
        if sig != Signal::SIGCHLD {
            // Forward: the command decides what a SIGTERM means. (SIGKILL and SIGSTOP never
            // reach us; the parent ends the whole container with SIGKILL to pid 1.)
            let _ = nix::sys::signal::kill(child, sig);
            continue;
        }
        if let Some(raw) = reap(child) {
            break raw;
        }
    });
    // SAFETY: writing four bytes from a local to our own descriptor.
    unsafe { libc::write(STATUS_FD, (&code as *const i32).cast(), 4) };
    let exit = if libc::WIFEXITED(code) {
        libc::WEXITSTATUS(code)
    } else {
        128 + libc::WTERMSIG(code)
    };
    std::process::exit(exit)
}

/// Runs as an idle pid 1 (`Plan::idle`): no command, only orphans to reap (an exec's
/// detached processes), until a signal whose default action would end a process such as
/// `sleep`. It then ends as that process would have ended under `run`: the raw status of a
/// death by that signal on the status pipe, and 128 + its number. Never returns.
pub fn idle() -> ! {
    let all = SigSet::all();
    block_signals();
    name_self();
    let sig = loop {
        match all.wait() {
            Ok(Signal::SIGCHLD) => {
                reap(Pid::from_raw(0));
            }
            // Ignored by default, or a stop (which a pid 1 does not take from its namespace).
            Ok(
                Signal::SIGURG
                | Signal::SIGWINCH
                | Signal::SIGCONT
                | Signal::SIGTSTP
                | Signal::SIGTTIN
                | Signal::SIGTTOU,
            )
            | Err(_) => {}
            Ok(s) => break s as i32,
        }
    };
    // SAFETY: writing four bytes from a local to our own descriptor.
    unsafe { libc::write(STATUS_FD, (&sig as *const i32).cast(), 4) };
    std::process::exit(128 + sig)
}

/// Reaps every child that has exited; returns the command's raw wait status once it has.
fn reap(command: Pid) -> Option<i32> {
    let mut result = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == command => result = Some(code << 8),
            Ok(WaitStatus::Signaled(pid, sig, core)) if pid == command => {
                result = Some(sig as i32 | if core { 0x80 } else { 0 })
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return result,
            Ok(_) => {}
        }
    }
}
