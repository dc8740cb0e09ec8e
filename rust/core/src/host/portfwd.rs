//! Published TCP ports: a listener on the host that, for every connection it accepts, opens a
//! connection from inside the container's network namespace and copies both ways.
//!
//! Why not the user-mode stack's own forwarding (slirp4netns `add_hostfwd`): every byte would
//! cross its TCP/IP emulation twice, which measured at 0.39x the throughput of podman's kernel
//! DNAT. Here a connection is two kernel sockets and splice(2) between them, no firewall
//! rule is touched, and the listener binds port 0 itself, so "any free port" has no race.
//!
//! The inside socket is made by the forwarder's thread, which joins the namespace once it has its
//! listener (a socket belongs to the namespace of the thread that creates it, and setns changes
//! only the calling thread). That one thread is an event loop over every connection: each moves
//! both directions with splice(2) through two pipes, so the bytes never enter user space.
//!
//! A rootless container's namespace belongs to a user namespace of its own (or of its
//! network's), which a thread of the caller cannot enter (a multithreaded process cannot change
//! user namespace). Its forwarder is the same loop in a process of its own: pyrt-child given a
//! `ForwardPlan` (`run_helper`), started like an exec by `runtime::forwarder`. It enters the
//! user namespace (the caller's own, so no privilege is needed), then the network namespace,
//! drops every capability, and serves until its lifeline (the plan pipe) closes.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::thread::JoinHandle;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

use crate::plan::ForwardPlan;
use crate::report::{SetupError, Stage};

/// A running forwarder; dropping it (or `close`) stops accepting. Connections already made run
/// until either side closes.
pub struct Forwarder {
    port: u16,
    stop: OwnedFd,
    acceptor: Option<JoinHandle<()>>,
}

impl Forwarder {
    /// Listens on `addr:port` (0: a free port) and forwards to 127.0.0.1:`target` inside the
    /// network namespace `netns` (a descriptor; duplicated, so the caller keeps its own).
    pub fn tcp(netns: BorrowedFd<'_>, addr: Ipv4Addr, port: u16, target: u16) -> io::Result<Self> {
        let listener = TcpListener::bind(SocketAddrV4::new(addr, port))?;
        listener.set_nonblocking(true)?;
        let bound = listener.local_addr()?.port();
        let netns = netns.try_clone_to_owned()?;
        let stop = nix::sys::eventfd::EventFd::from_flags(
            nix::sys::eventfd::EfdFlags::EFD_CLOEXEC | nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
        )
        .map_err(io::Error::from)?;
        let stop_fd: OwnedFd = stop.into();
        let watch = stop_fd.try_clone()?;
        let acceptor = std::thread::Builder::new()
            .name("pyrt-portfwd".into())
            .spawn(move || accept_loop(listener, netns, watch, target))?;
        Ok(Forwarder {
            port: bound,
            stop: stop_fd,
            acceptor: Some(acceptor),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn close(&mut self) {
        let one: u64 = 1;
        // SAFETY: an eventfd takes an 8-byte counter increment.
        unsafe { libc::write(self.stop.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.close();
    }
}

/// The forwarder's one thread: an event loop over the listener, the stop eventfd and every
/// connection's two sockets (edge-triggered; each event moves what can be moved in both
/// directions of its connection). No thread per connection: a request costs an accept, a
/// connect and a few splices, with no thread to start or to wake on another CPU.
fn accept_loop(listener: TcpListener, netns: OwnedFd, stop: OwnedFd, target: u16) {
    // The listener was made in the host's namespace and stays there; from now on this thread's
    // new sockets are made in the container's.
    if nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
        return;
    }
    drop(netns);
    let _ = Relay::new(listener, stop, target).map(|mut r| r.run());
}

/// A rootless container's forwarder, in pyrt-child (see the module's text). Returns only an
/// error of the setup; once serving, it exits when its lifeline closes.
pub fn run_helper(f: &ForwardPlan) -> Result<std::convert::Infallible, SetupError> {
    use std::os::fd::FromRawFd;
    let failed = |what: &str| {
        let e = io::Error::last_os_error();
        SetupError::io(Stage::Namespaces, what, &e)
    };
    // SAFETY: setns and close on the descriptors we were handed (this process is
    // single-threaded, as entering a user namespace needs).
    unsafe {
        if libc::setns(f.userns, libc::CLONE_NEWUSER) != 0 {
            return Err(failed("joining the container's user namespace"));
        }
        if libc::setns(f.netns, libc::CLONE_NEWNET) != 0 {
            return Err(failed("joining the container's network namespace"));
        }
        libc::close(f.userns);
        libc::close(f.netns);
        // Sockets need no privilege: none is kept.
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    }
    for set in [
        caps::CapSet::Ambient,
        caps::CapSet::Effective,
        caps::CapSet::Inheritable,
        caps::CapSet::Permitted,
    ] {
        caps::clear(None, set).map_err(|e| {
            SetupError::new(
                Stage::Capabilities,
                libc::EPERM,
                format!("dropping capabilities: {e}"),
            )
        })?;
    }
    // SAFETY: the listener and the lifeline (the plan pipe's read end) are ours.
    let listener = unsafe { TcpListener::from_raw_fd(f.listener) };
    let lifeline = unsafe { OwnedFd::from_raw_fd(crate::wire::PLAN_FD) };
    listener
        .set_nonblocking(true)
        .map_err(|e| SetupError::io(Stage::Spawn, "the forwarder's listener", &e))?;
    let mut relay = Relay::new(listener, lifeline, f.target)
        .map_err(|e| SetupError::io(Stage::Spawn, "the forwarder's event loop", &e))?;
    // Serving: the parent's wait for a report ends at this EOF.
    // SAFETY: closing our copy of the report pipe.
    unsafe { libc::close(crate::wire::ERROR_FD) };
    relay.run();
    std::process::exit(0)
}

const LISTENER: u64 = u64::MAX;
const STOP: u64 = u64::MAX - 1;

/// A forwarded connection: the host's client, the socket made inside, and a direction each way.
struct Conn {
    client: TcpStream,
    inside: TcpStream,
    out: Direction,
    back: Direction,
}

struct Relay {
    epoll: Epoll,
    listener: TcpListener,
    _stop: OwnedFd,
    target: u16,
    conns: HashMap<u64, Conn>,
    next: u64,
    /// Empty pipes of finished connections, for the next ones (two pipe2 and two fcntl saved).
    spare: Vec<Direction>,
}

impl Relay {
    fn new(listener: TcpListener, stop: OwnedFd, target: u16) -> io::Result<Relay> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(io::Error::from)?;
        epoll
            .add(&listener, EpollEvent::new(EpollFlags::EPOLLIN, LISTENER))
            .map_err(io::Error::from)?;
        epoll
            .add(&stop, EpollEvent::new(EpollFlags::EPOLLIN, STOP))
            .map_err(io::Error::from)?;
        Ok(Relay {
            epoll,
            listener,
            _stop: stop,
            target,
            conns: HashMap::new(),
            next: 0,
            spare: Vec::new(),
        })
    }

    fn run(&mut self) {
        let mut events = [EpollEvent::empty(); 64];
        loop {
            let n = match self.epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return,
            };
            for ev in &events[..n] {
                match ev.data() {
                    STOP => return,
                    LISTENER => self.accept_all(),
                    id => self.pump(id),
                }
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            let client = match self.listener.accept() {
                Ok((c, _)) => c,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A connection that failed before we took it (ECONNABORTED) or a lack of
                // descriptors: drop this one, keep serving.
                Err(_) => return,
            };
            let Ok(inside) =
                TcpStream::connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.target))
            else {
                // Nothing listens inside (yet): the client sees its connection closed, as
                // with Docker.
                continue;
            };
            let _ = self.add(client, inside);
        }
    }

    fn direction(&mut self) -> io::Result<Direction> {
        match self.spare.pop() {
            Some(d) => Ok(d),
            None => Direction::new(),
        }
    }

    fn add(&mut self, client: TcpStream, inside: TcpStream) -> io::Result<()> {
        for s in [&client, &inside] {
            s.set_nodelay(true)?;
            s.set_nonblocking(true)?;
        }
        let (out, back) = (self.direction()?, self.direction()?);
        let id = self.next;
        self.next += 1;
        let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT | EpollFlags::EPOLLET;
        self.epoll
            .add(&client, EpollEvent::new(flags, id))
            .map_err(io::Error::from)?;
        if let Err(e) = self.epoll.add(&inside, EpollEvent::new(flags, id)) {
            let _ = self.epoll.delete(&client);
            return Err(e.into());
        }
        self.conns.insert(
            id,
            Conn {
                client,
                inside,
                out,
                back,
            },
        );
        // Data may have come before the registration: move it now.
        self.pump(id);
        Ok(())
    }

    /// Moves what can be moved both ways (until neither direction gets further: the events
    /// are edge-triggered); a finished or failed connection is closed.
    fn pump(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let finished = loop {
            let a = c.out.step(&c.client, &c.inside);
            let b = c.back.step(&c.inside, &c.client);
            match (a, b) {
                (Err(_), _) | (_, Err(_)) => break true,
                _ if c.out.done && c.back.done => break true,
                (Ok(false), Ok(false)) => break false,
                _ => {}
            }
        };
        if finished {
            if let Some(c) = self.conns.remove(&id) {
                let _ = self.epoll.delete(&c.client);
                let _ = self.epoll.delete(&c.inside);
                for d in [c.out, c.back] {
                    if d.buffered == 0 && self.spare.len() < 64 {
                        self.spare.push(d.reused());
                    }
                }
            }
        }
    }
}

/// One direction of a connection: bytes move from `from` into a pipe and on to `to` with
/// splice(2), never entering user space.
struct Direction {
    r: OwnedFd,
    w: OwnedFd,
    buffered: usize,
    eof: bool,
    done: bool,
}

const CHUNK: usize = 1 << 20;

impl Direction {
    fn new() -> io::Result<Self> {
        let (r, w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(io::Error::from)?;
        // A bigger pipe moves more per call (the default holds 64 KiB).
        let _ = nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_SETPIPE_SZ(CHUNK as i32));
        Ok(Direction {
            r,
            w,
            buffered: 0,
            eof: false,
            done: false,
        })
    }

    /// The same (empty) pipe, for a new connection.
    fn reused(self) -> Self {
        Direction {
            eof: false,
            done: false,
            ..self
        }
    }

    /// Moves what it can without blocking; whether anything moved. Err ends the connection.
    fn step(&mut self, from: &TcpStream, to: &TcpStream) -> Result<bool, nix::errno::Errno> {
        use nix::errno::Errno;
        use nix::fcntl::{splice, SpliceFFlags};
        let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
        if self.done {
            return Ok(false);
        }
        let mut moved = false;
        if !self.eof && self.buffered < CHUNK {
            match splice(
                from.as_fd(),
                None,
                self.w.as_fd(),
                None,
                CHUNK - self.buffered,
                flags,
            ) {
                Ok(0) => (self.eof, moved) = (true, true),
                Ok(n) => (self.buffered, moved) = (self.buffered + n, true),
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
        if self.buffered > 0 {
            match splice(self.r.as_fd(), None, to.as_fd(), None, self.buffered, flags) {
                Ok(n) => (self.buffered, moved) = (self.buffered - n, moved || n > 0),
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
        if self.eof && self.buffered == 0 {
            // Half-close: the other side learns that this direction is done, as it would on
            // a direct connection.
            let _ = to.shutdown(Shutdown::Write);
            self.done = true;
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::Mutex;

    /// One test at a time: a port one test's forwarder has just closed (and checks is closed)
    /// can be the next ephemeral port another test's listener is given.
    static PORTS: Mutex<()> = Mutex::new(());

    fn ports() -> std::sync::MutexGuard<'static, ()> {
        PORTS.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[test]
    fn forwards_within_the_same_namespace() {
        let _one = ports();
        // The process's own namespace stands in for a container's: the path through the
        // forwarder is the same.
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = server.local_addr().unwrap().port();
        let ns: OwnedFd = std::fs::File::open("/proc/self/ns/net").unwrap().into();
        let mut fwd = Forwarder::tcp(ns.as_fd(), Ipv4Addr::LOCALHOST, 0, target).unwrap();
        let echo = std::thread::spawn(move || {
            let (mut s, _) = server.accept().unwrap();
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).unwrap();
            s.write_all(&buf).unwrap();
        });
        let mut c = TcpStream::connect(("127.0.0.1", fwd.port())).unwrap();
        c.write_all(b"hello through the forwarder").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"hello through the forwarder");
        echo.join().unwrap();
        fwd.close();
        assert!(TcpStream::connect(("127.0.0.1", fwd.port())).is_err());
    }

    #[test]
    fn many_connections_at_once_each_get_all_their_bytes_back() {
        let _one = ports();
        // One event loop serves them all: big transfers in both directions at once, with the
        // pipes full and the sockets pushing back, must neither stall nor mix connections.
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = server.local_addr().unwrap().port();
        let ns: OwnedFd = std::fs::File::open("/proc/self/ns/net").unwrap().into();
        let mut fwd = Forwarder::tcp(ns.as_fd(), Ipv4Addr::LOCALHOST, 0, target).unwrap();
        const CLIENTS: usize = 8;
        const SIZE: usize = 3 << 20;
        let echo = std::thread::spawn(move || {
            let mut handlers = Vec::new();
            for _ in 0..CLIENTS {
                let (mut s, _) = server.accept().unwrap();
                handlers.push(std::thread::spawn(move || {
                    let mut r = s.try_clone().unwrap();
                    let copy = std::thread::spawn(move || {
                        std::io::copy(&mut r, &mut s).unwrap();
                        s.shutdown(Shutdown::Write).unwrap();
                    });
                    copy.join().unwrap();
                }));
            }
            for h in handlers {
                h.join().unwrap();
            }
        });
        let port = fwd.port();
        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| {
                std::thread::spawn(move || {
                    let data: Vec<u8> = (0..SIZE).map(|j| (i * 31 + j * 7) as u8).collect();
                    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
                    let mut w = c.try_clone().unwrap();
                    let sent = data.clone();
                    let writer = std::thread::spawn(move || {
                        w.write_all(&sent).unwrap();
                        w.shutdown(Shutdown::Write).unwrap();
                    });
                    let mut got = Vec::new();
                    c.read_to_end(&mut got).unwrap();
                    writer.join().unwrap();
                    assert!(got == data, "connection {i} got other bytes back");
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        echo.join().unwrap();
        fwd.close();
    }

    #[test]
    fn a_taken_port_is_an_error() {
        let _one = ports();
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let ns: OwnedFd = std::fs::File::open("/proc/self/ns/net").unwrap().into();
        let e = Forwarder::tcp(ns.as_fd(), Ipv4Addr::LOCALHOST, port, 1)
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
    }
}
