//! A started process, its pidfd and its exit status.
//!
//! Its three descriptors are closed as soon as it is reaped, not when the `Child` is dropped:
//! a caller may keep the handles of many ended containers (a list of them, a test's results),
//! and three descriptors each would run it out of its 1024. Each user takes its own reference
//! to a descriptor (an `Arc`) for as long as it uses the number, so that a reap by another
//! thread never closes a descriptor under a `poll` or a `pidfd_send_signal`, which could then
//! reach whatever the number was given to next.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A started process: a container's first process, or one exec'd into a container.
#[derive(Debug)]
pub struct Child {
    pub pid: i32,
    /// Until it is reaped.
    fds: Mutex<Option<Fds>>,
    /// The return code once reaped. Behind a lock, so that a `Child` can be waited for,
    /// signalled and asked from several threads at once (the reap itself is made under it).
    status: Mutex<Option<i32>>,
    /// The mount namespace it made, held until it is reaped (`teardown`).
    mount_ns: Mutex<Option<super::teardown::Hold>>,
}

#[derive(Debug)]
struct Fds {
    pidfd: Arc<OwnedFd>,
    /// The write end of the plan pipe, kept open: the child checks it to learn whether we died.
    lifeline: Arc<OwnedFd>,
    /// Where an init (pid 1) reports the command's real wait status.
    status_pipe: OwnedFd,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a use of a reaped process's descriptor gets: it has none left.
fn reaped() -> io::Error {
    io::Error::from_raw_os_error(libc::ESRCH)
}

impl Child {
    pub(super) fn new(pid: i32, pidfd: OwnedFd, lifeline: OwnedFd, status_pipe: OwnedFd) -> Child {
        Child {
            pid,
            fds: Mutex::new(Some(Fds {
                pidfd: Arc::new(pidfd),
                lifeline: Arc::new(lifeline),
                status_pipe,
            })),
            status: Mutex::new(None),
            mount_ns: Mutex::new(None),
        }
    }

    /// Its pidfd, for as long as the returned reference is held (ESRCH once reaped).
    pub fn pidfd(&self) -> io::Result<Arc<OwnedFd>> {
        locked(&self.fds)
            .as_ref()
            .map(|f| Arc::clone(&f.pidfd))
            .ok_or_else(reaped)
    }

    /// Holds the mount namespace the process made, so that its unmounting happens after the
    /// process is reaped, on a thread of ours, rather than in its exit (`teardown`).
    pub(super) fn hold_mount_ns(&self) {
        let Ok(pidfd) = self.pidfd() else { return };
        let hold = super::teardown::hold_mount_ns(self.pid, &pidfd);
        *locked(&self.mount_ns) = hold;
    }

    fn release_mount_ns(&self) {
        // (Dropped outside the lock: the holder thread ends on its own time.)
        let hold = locked(&self.mount_ns).take();
        drop(hold);
    }

    /// The plan pipe's write end, which the plan is sent on (ESRCH once reaped).
    pub(super) fn lifeline(&self) -> io::Result<Arc<OwnedFd>> {
        locked(&self.fds)
            .as_ref()
            .map(|f| Arc::clone(&f.lifeline))
            .ok_or_else(reaped)
    }

    /// Waits for the process to end, at most `timeout`. Returns its return code (the exit status,
    /// or -SIGNUM when a signal ended it), or None when the time ran out.
    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<Option<i32>> {
        if let Some(s) = self.returncode() {
            return Ok(Some(s));
        }
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let pidfd = match self.pidfd() {
            Ok(fd) => fd,
            // Reaped by another thread since the look above.
            Err(_) => return Ok(self.returncode()),
        };
        loop {
            let left = match deadline {
                None => -1,
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        0
                    } else {
                        (d - now).as_millis().min(i32::MAX as u128).max(1) as i32
                    }
                }
            };
            let mut pfd = [nix::poll::PollFd::new(
                pidfd.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let t = if left < 0 {
                nix::poll::PollTimeout::NONE
            } else {
                nix::poll::PollTimeout::try_from(left).unwrap_or(nix::poll::PollTimeout::MAX)
            };
            match nix::poll::poll(&mut pfd, t) {
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
                Ok(0) if left == 0 => return Ok(None),
                Ok(0) => continue,
                Ok(_) => {}
            }
            if let Some(s) = self.try_reap()? {
                return Ok(Some(s));
            }
        }
    }

    fn try_reap(&self) -> io::Result<Option<i32>> {
        let mut done = locked(&self.status);
        if let Some(s) = *done {
            // Another thread reaped it while this one polled.
            return Ok(Some(s));
        }
        // (Not reaped, so still there: the status lock is held.)
        let mut fds = locked(&self.fds);
        let Some(f) = fds.as_ref() else {
            return Ok(None);
        };
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on our pidfd with a valid out-parameter.
        let r = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                f.pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::__WALL,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: si_pid/si_status are valid for a CLD_* siginfo; 0 pid means "not yet".
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return Ok(None);
        }
        let mut code = match info.si_code {
            libc::CLD_EXITED => status,
            _ => -status,
        };
        // An init reports the command's own status: prefer it to its exit code.
        let mut raw = [0u8; 4];
        // SAFETY: reading into a local buffer; the writer is gone, so this cannot block long.
        let n = unsafe { libc::read(f.status_pipe.as_raw_fd(), raw.as_mut_ptr().cast(), 4) };
        if n == 4 {
            let w = i32::from_ne_bytes(raw);
            code = if libc::WIFEXITED(w) {
                libc::WEXITSTATUS(w)
            } else {
                -libc::WTERMSIG(w)
            };
        }
        *done = Some(code);
        // Closed as each user lets go of its reference (most often here).
        let gone = fds.take();
        drop((fds, done, gone));
        self.release_mount_ns();
        Ok(Some(code))
    }

    /// Sends a signal through the pidfd: never to a recycled pid.
    pub fn kill(&self, sig: i32) -> io::Result<()> {
        if self.returncode().is_some() {
            return Ok(());
        }
        let Ok(pidfd) = self.pidfd() else {
            return Ok(()); // reaped meanwhile
        };
        // SAFETY: pidfd_send_signal with no siginfo.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            // ESRCH: it has exited and not been reaped yet; nothing to signal.
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(e);
            }
        }
        Ok(())
    }

    pub fn returncode(&self) -> Option<i32> {
        *locked(&self.status)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.release_mount_ns();
    }
}
