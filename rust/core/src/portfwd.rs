//! Published TCP ports: a listener on the host that, for every connection it accepts, opens a
//! connection from inside the container's network namespace and copies both ways.
//!
//! Why not the user-mode stack's own forwarding (slirp4netns `add_hostfwd`): every byte would
//! cross its TCP/IP emulation twice, which measured at 0.39x the throughput of podman's kernel
//! DNAT. Here a connection is two kernel sockets and splice(2) between them, no firewall
//! rule is touched, and the listener binds port 0 itself, so "any free port" has no race.
//!
//! The inside socket is made by the accepting thread, which joins the namespace once it has its
//! listener (a socket belongs to the namespace of the thread that creates it, and setns changes
//! only the calling thread). Each connection then gets one thread that moves both directions
//! with splice(2) through two pipes: the bytes never enter user space.

use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::thread::JoinHandle;

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

fn accept_loop(listener: TcpListener, netns: OwnedFd, stop: OwnedFd, target: u16) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    // The listener was made in the host's namespace and stays there; from now on this thread's
    // new sockets are made in the container's.
    if nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
        return;
    }
    drop(netns);
    loop {
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
            Ok(_) => {}
        }
        if fds[1].any().unwrap_or(false) {
            return;
        }
        let Ok((client, _)) = listener.accept() else {
            continue;
        };
        let Ok(inside) = TcpStream::connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, target)) else {
            // Nothing listens inside (yet): the client sees its connection closed, as with
            // Docker.
            continue;
        };
        let _ = std::thread::Builder::new()
            .name("pyrt-portfwd-conn".into())
            .spawn(move || relay(client, inside));
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

    /// Moves what it can without blocking; Err ends the whole connection.
    fn step(&mut self, from: &TcpStream, to: &TcpStream) -> Result<(), nix::errno::Errno> {
        use nix::errno::Errno;
        use nix::fcntl::{splice, SpliceFFlags};
        let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
        if self.done {
            return Ok(());
        }
        if !self.eof && self.buffered < CHUNK {
            match splice(
                from.as_fd(),
                None,
                self.w.as_fd(),
                None,
                CHUNK - self.buffered,
                flags,
            ) {
                Ok(0) => self.eof = true,
                Ok(n) => self.buffered += n,
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
        if self.buffered > 0 {
            match splice(self.r.as_fd(), None, to.as_fd(), None, self.buffered, flags) {
                Ok(n) => self.buffered -= n,
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
        Ok(())
    }
}

/// Both directions of a connection on one thread, until both are done or one fails.
fn relay(client: TcpStream, inside: TcpStream) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let _ = client.set_nodelay(true);
    let _ = inside.set_nodelay(true);
    if client.set_nonblocking(true).is_err() || inside.set_nonblocking(true).is_err() {
        return;
    }
    let (Ok(mut out), Ok(mut back)) = (Direction::new(), Direction::new()) else {
        return;
    };
    loop {
        if out.step(&client, &inside).is_err() || back.step(&inside, &client).is_err() {
            return;
        }
        if out.done && back.done {
            return;
        }
        let wants = |read: &Direction, write: &Direction| {
            let mut f = PollFlags::empty();
            if !read.done && !read.eof && read.buffered < CHUNK {
                f |= PollFlags::POLLIN;
            }
            if write.buffered > 0 {
                f |= PollFlags::POLLOUT;
            }
            f
        };
        let mut fds = [
            PollFd::new(client.as_fd(), wants(&out, &back)),
            PollFd::new(inside.as_fd(), wants(&back, &out)),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn forwards_within_the_same_namespace() {
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
    fn a_taken_port_is_an_error() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let ns: OwnedFd = std::fs::File::open("/proc/self/ns/net").unwrap().into();
        let e = Forwarder::tcp(ns.as_fd(), Ipv4Addr::LOCALHOST, port, 1)
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
    }
}
