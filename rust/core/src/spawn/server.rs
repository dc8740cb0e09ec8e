//! The caller's side of a container's exec server (`child::serve`): started once per
//! container, then asked for each exec over a unix socket. An exec made through it is the
//! caller's child like any other (`Child`), with the same plan, pipes and report as one the
//! spawner makes (`spawn`); only the way it comes to exist differs.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};

use super::{
    child_fds, clone_child, dup_high, encode, release, spawn_err, write_available, Child,
    ChildImage,
};
use super::{Pending, Pipes, Placement};
use crate::cgroups::Cgroup;
use crate::plan::{ExecPlan, Request, ServePlan};
use crate::report::{SetupError, Stage};
use crate::seccomp::Program;

/// A running exec server and the socket to it. Dropping it ends the server.
#[derive(Debug)]
pub struct ExecServer {
    /// One exec at a time: a request and its answer are not interleaved with another's.
    socket: Mutex<OwnedFd>,
    server: Child,
    /// The seccomp filter the server installed on itself, which its forks inherit.
    filter: Option<Program>,
    /// What the server's bounding set (cut to the container's, and inherited by its forks)
    /// lacks of the caller's: an exec that names one of these gets it only the ordinary way.
    beyond: u64,
    /// The server's setup, which `start` does not wait for: the first exec reads its report
    /// (others wait for that).
    setup: Mutex<Setup>,
}

#[derive(Debug)]
enum Setup {
    /// Its report not read yet.
    Pending(Pending),
    Up,
    Failed,
}

impl ExecServer {
    /// Starts the server of the container whose first process is `target`, in whose `cgroup`
    /// its execs are born. Returns once it is cloned: it joins the container's namespaces
    /// (and installs `filter` on itself, the container's seccomp filter, which only execs that
    /// have this one go through it with: see `exec`) while the caller goes on, and the first
    /// exec waits for that (a pool's thread had waited ~1 ms for it at every reset).
    pub fn start(
        image: &ChildImage,
        target: i32,
        cgroup: Option<&Cgroup>,
        filter: Option<Program>,
    ) -> Result<ExecServer, SetupError> {
        fn err(what: &'static str) -> impl Fn(io::Error) -> SetupError {
            move |e| spawn_err(what, e)
        }
        let pidfd = crate::syscall::pidfd_open(target).map_err(|e| {
            SetupError::io(
                Stage::Namespaces,
                format!("the container's first process (pid {target})"),
                &e,
            )
        })?;
        let pidfd = dup_high(pidfd.as_raw_fd()).map_err(err("dup of a pidfd"))?;
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| spawn_err("socketpair", e.into()))?;
        let theirs = dup_high(theirs.as_raw_fd()).map_err(err("dup of a socket"))?;
        let tasks = |home: bool| -> Result<Vec<OwnedFd>, SetupError> {
            let files = match cgroup {
                Some(c) => c
                    .tasks_files(home)
                    .map_err(|e| SetupError::new(Stage::Cgroup, e.errno(), e.to_string()))?,
                None => Vec::new(),
            };
            files
                .iter()
                .map(|f| dup_high(f.as_raw_fd()).map_err(err("dup of a tasks file")))
                .collect()
        };
        let (enter, leave) = (tasks(false)?, tasks(true)?);
        let plan = ServePlan {
            target,
            pidfd: pidfd.as_raw_fd(),
            socket: theirs.as_raw_fd(),
            enter: enter.iter().map(AsRawFd::as_raw_fd).collect(),
            leave: leave.iter().map(AsRawFd::as_raw_fd).collect(),
            seccomp: filter.clone(),
            bounding: bounding_of(&target.to_string()),
        };
        // (Unknown: the server keeps the bounding set it is born with, the caller's.)
        let beyond = plan
            .bounding
            .map_or(0, |b| bounding_of("thread-self").unwrap_or(0) & !b);
        let null = std::fs::File::open("/dev/null").map_err(err("/dev/null"))?;
        let stdio = [null.as_raw_fd(); 3];
        let (server, setup) = clone_child(
            image,
            &Request::Serve(plan),
            stdio,
            Placement::default(),
            false,
        )?;
        Ok(ExecServer {
            socket: Mutex::new(ours),
            beyond,
            server,
            filter,
            setup: Mutex::new(Setup::Pending(setup)),
        })
    }

    /// Signals the server to end (SIGKILL) without waiting; dropping it reaps it.
    pub fn kill(&self) {
        let _ = self.server.kill(libc::SIGKILL);
    }

    /// The server's pid (a helper of the caller's, outside the container).
    pub fn pid(&self) -> i32 {
        self.server.pid
    }

    /// Starts `plan`'s process through the server; returns once its command runs, or its
    /// setup error, as `spawn` does. Err(None): the server could not be asked (it has ended):
    /// the caller spawns the exec the ordinary way instead.
    pub fn exec(&self, plan: ExecPlan, stdio: [RawFd; 3]) -> Result<Child, Option<SetupError>> {
        let mut plan = plan;
        // The server's forks carry its filter: an exec with that one has it already, and one
        // with any other (or none) would get the two stacked, so it goes the ordinary way.
        if plan.seccomp != self.filter {
            return Err(None);
        }
        // Likewise its bounding set (see `within_bounding`).
        if !within_bounding(self.beyond, plan.process.capabilities.as_ref()) {
            return Err(None);
        }
        // Its setup's outcome, the first time: a server that did not come up is not asked
        // (its error was its own; the ordinary way reports the exec's).
        let mut setup = self.setup.lock().unwrap_or_else(|e| e.into_inner());
        *setup = match std::mem::replace(&mut *setup, Setup::Failed) {
            Setup::Pending(pending) => match release(&self.server, pending) {
                Ok(()) => Setup::Up,
                Err(_) => Setup::Failed,
            },
            known => known,
        };
        if matches!(*setup, Setup::Failed) {
            return Err(None);
        }
        drop(setup);
        plan.seccomp = None;
        // Born in the pid namespace and joined to every other one by the server already.
        plan.fork_into_pidns = false;
        plan.pidfd = None;
        plan.joined = true;
        let request_bytes = encode(&Request::Exec(plan))?;
        let pipes = Pipes::new()?;
        let (plan_r, plan_w, err_r) = (pipes.plan_r, pipes.plan_w, pipes.err_r);
        let (err_w, status_r, status_w) = (pipes.err_w, pipes.status_r, pipes.status_w);
        let sent = write_available(&plan_w, &request_bytes);
        let fds = child_fds(stdio, &plan_r, &err_w, &status_w);
        // Asked and unanswered, the server may have forked the exec already, and its plan is
        // in the pipe: spawning it again would run the command twice (and leave the first one
        // a zombie of ours in the container's pid namespace, which then cannot end). So only
        // a request that never reached the server falls back to the ordinary way.
        let (pid, pidfd) = self.ask(&fds).map_err(|(e, delivered)| {
            delivered.then(|| SetupError::io(Stage::Spawn, "the exec server's answer", &e))
        })?;
        drop((plan_r, err_w, status_w));
        let (pid, pidfd) = match (pid, pidfd) {
            (p, Some(fd)) if p > 0 => (p, fd),
            (p, _) => {
                let errno = if p < 0 { -p } else { libc::EIO };
                return Err(Some(SetupError::new(
                    Stage::Namespaces,
                    errno,
                    format!("the exec server's fork: {}", crate::report::strerror(errno)),
                )));
            }
        };
        let child = Child::new(pid, pidfd, plan_w, status_r);
        let pending = Pending {
            request: request_bytes,
            sent,
            report: err_r,
        };
        release(&child, pending).map_err(Some)?;
        Ok(child)
    }

    /// One request and its answer: the pid (or a negative errno) and the pidfd. A failure
    /// says whether the request was delivered. A signal to the caller (EINTR) is no failure:
    /// the calls are made again.
    fn ask(&self, fds: &[RawFd]) -> Result<(i32, Option<OwnedFd>), (io::Error, bool)> {
        let socket = self.socket.lock().unwrap_or_else(|e| e.into_inner());
        let fd = socket.as_raw_fd();
        let one = [1u8];
        let cmsg = [ControlMessage::ScmRights(fds)];
        loop {
            match sendmsg::<()>(
                fd,
                &[IoSlice::new(&one)],
                &cmsg,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err((e.into(), false)),
                Ok(_) => break,
            }
        }
        let delivered = |e: io::Error| (e, true);
        let mut word = [0u8; 4];
        let mut got = 0;
        let mut pidfd = None;
        while got < word.len() {
            let mut iov = [IoSliceMut::new(&mut word[got..])];
            let mut space = nix::cmsg_space!([RawFd; 1]);
            let msg =
                match recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(delivered(e.into())),
                    Ok(m) => m,
                };
            if msg.bytes == 0 {
                return Err(delivered(io::ErrorKind::UnexpectedEof.into()));
            }
            for c in msg.cmsgs().map_err(|e| delivered(e.into()))? {
                if let ControlMessageOwned::ScmRights(r) = c {
                    for f in r {
                        // SAFETY: a descriptor the kernel just gave us.
                        let f = unsafe { OwnedFd::from_raw_fd(f) };
                        pidfd.get_or_insert(f);
                    }
                }
            }
            got += msg.bytes;
        }
        Ok((i32::from_le_bytes(word), pidfd))
    }
}

impl Drop for ExecServer {
    fn drop(&mut self) {
        let _ = self.server.kill(libc::SIGKILL);
        let _ = self.server.wait(None);
    }
}

/// The bounding set of the process `/proc/{which}` names (its status's CapBnd), or None when
/// unreadable.
fn bounding_of(which: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{which}/status")).ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapBnd:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Whether an exec with capabilities `caps` gets from the server's forks what the ordinary way
/// would give it, `beyond` being what the server's bounding set lacks of the caller's. One that
/// names a capability of `beyond` (one the container's own process was not given) would not:
/// it goes the ordinary way, as it went before the server cut its set. One that names none
/// keeps the set it is born with (the caller's, the ordinary way).
fn within_bounding(beyond: u64, caps: Option<&crate::capabilities::CapSets>) -> bool {
    caps.map_or(beyond == 0, |c| c.bounding & beyond == 0)
}

#[cfg(test)]
mod tests {
    use super::within_bounding;
    use crate::capabilities::CapSets;

    #[test]
    fn an_exec_is_served_unless_it_names_what_the_server_lacks_of_the_caller() {
        const NET_RAW: u64 = 1 << 13;
        let all = CapSets {
            bounding: (1 << 41) - 1,
            ..CapSets::default()
        };
        let container = CapSets {
            bounding: 0x5fb,
            ..CapSets::default()
        };
        // A privileged container on a host without CAP_SYS_RESOURCE: the server lacks
        // nothing of the caller's, and its execs are served although they name it.
        assert!(within_bounding(0, Some(&all)));
        // The container's own set, with NET_RAW dropped from the container.
        assert!(within_bounding(NET_RAW, Some(&container)));
        // An exec that asks for NET_RAW, which the caller holds and the server does not.
        let wider = CapSets {
            bounding: 0x5fb | NET_RAW,
            ..CapSets::default()
        };
        assert!(!within_bounding(NET_RAW, Some(&wider)));
        // One that names no capabilities keeps the caller's set.
        assert!(within_bounding(0, None));
        assert!(!within_bounding(NET_RAW, None));
    }
}
