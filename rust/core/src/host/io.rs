//! Feeding a container's stdin and collecting its stdout and stderr at the same time, as
//! `subprocess.communicate` does, so that tens of megabytes on both streams cannot deadlock,
//! and no more of each than the caller's limit is kept in memory.

use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, RawFd};
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};

#[derive(Debug, Default)]
pub struct Outputs {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The deadline passed before both streams reached EOF.
    pub timed_out: bool,
    /// The stream (0: stdout, 1: stderr) that had more to give than the limit: the reading
    /// stopped there, with `limit` bytes of it kept.
    pub over_limit: Option<usize>,
}

/// One stream being read: its descriptor, or None once it reached EOF.
struct Reader<'a> {
    fd: Option<BorrowedFd<'a>>,
    buf: &'a mut Vec<u8>,
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller owns.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if fl < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Writes `input` to `stdin` and then closes it, so that the command sees EOF; reads `stdout`
/// and `stderr` to EOF, until `deadline`, or until one of them has more than `limit` bytes
/// (`Outputs::over_limit`: a process that writes without end cannot exhaust our memory).
/// `stdin` is taken over (closed by the time this returns); `stdout` and `stderr` stay the
/// caller's. Pass -1 for a stream that is not ours. On a timeout the caller kills the
/// container and calls again, with the outputs so far, to drain what is left.
pub fn communicate(
    stdin: RawFd,
    input: &[u8],
    stdout: RawFd,
    stderr: RawFd,
    deadline: Option<Instant>,
    limit: Option<usize>,
    out: &mut Outputs,
) -> io::Result<()> {
    // SAFETY: the caller hands `stdin` over to us; it is closed exactly once, when dropped.
    let stdin_owned = (stdin >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(stdin) });
    let mut stdin_owned = stdin_owned;
    // SAFETY: the caller keeps these descriptors open for the duration of the call.
    let borrow = |fd: RawFd| (fd >= 0).then(|| unsafe { BorrowedFd::borrow_raw(fd) });
    let mut input_left = if stdin >= 0 { Some(input) } else { None };
    if let Some(fd) = borrow(stdin) {
        set_nonblocking(std::os::fd::AsRawFd::as_raw_fd(&fd))?;
    }
    let mut readers = [
        Reader {
            fd: borrow(stdout),
            buf: &mut out.stdout,
        },
        Reader {
            fd: borrow(stderr),
            buf: &mut out.stderr,
        },
    ];
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let mut pfds = Vec::with_capacity(3);
        if input_left.is_some_and(|i| i.is_empty()) || input_left.is_none() {
            // All written (or not wanted): EOF for the command.
            stdin_owned = None;
        }
        let writing = stdin_owned.is_some() && input_left.is_some_and(|i| !i.is_empty());
        if writing {
            pfds.push(PollFd::new(borrow(stdin).unwrap(), PollFlags::POLLOUT));
        }
        for r in readers.iter() {
            if let Some(fd) = r.fd {
                pfds.push(PollFd::new(fd, PollFlags::POLLIN));
            }
        }
        if pfds.is_empty() {
            return Ok(());
        }
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    out.timed_out = true;
                    return Ok(());
                }
                PollTimeout::try_from((d - now).as_millis().clamp(1, i32::MAX as u128) as i32)
                    .unwrap_or(PollTimeout::MAX)
            }
        };
        match nix::poll::poll(&mut pfds, timeout) {
            Err(Errno::EINTR) | Ok(0) => continue,
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        let ready: Vec<PollFlags> = pfds
            .iter()
            .map(|p| p.revents().unwrap_or(PollFlags::empty()))
            .collect();
        let mut i = 0;
        if writing {
            let ev = ready[0];
            i = 1;
            if ev.intersects(PollFlags::POLLOUT | PollFlags::POLLERR | PollFlags::POLLHUP) {
                let data = input_left.unwrap();
                let n = data.len().min(64 * 1024);
                match nix::unistd::write(borrow(stdin).unwrap(), &data[..n]) {
                    Ok(w) => input_left = Some(&data[w..]),
                    Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
                    // The command closed its stdin or exited: the rest is not wanted.
                    Err(Errno::EPIPE) => input_left = None,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        for (k, r) in readers.iter_mut().enumerate() {
            let Some(fd) = r.fd else { continue };
            let ev = ready[i];
            i += 1;
            if !ev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                continue;
            }
            match nix::unistd::read(fd, &mut chunk) {
                Ok(0) => r.fd = None,
                Ok(n) => {
                    let room = limit.map_or(n, |l| l.saturating_sub(r.buf.len()));
                    r.buf.extend_from_slice(&chunk[..n.min(room)]);
                    if n > room {
                        out.over_limit = Some(k);
                        return Ok(());
                    }
                }
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// What `communicate` keeps of `data` written to a pipe's stdout, under `limit`.
    fn read_through(data: &[u8], limit: Option<usize>) -> Outputs {
        let (r, w) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&w, data).unwrap();
        drop(w);
        let mut out = Outputs::default();
        communicate(-1, b"", r.as_raw_fd(), -1, None, limit, &mut out).unwrap();
        out
    }

    #[test]
    fn a_stream_longer_than_the_limit_is_cut_and_named() {
        let out = read_through(&[b'y'; 1000], Some(100));
        assert_eq!(out.stdout.len(), 100);
        assert_eq!(out.over_limit, Some(0));
    }

    #[test]
    fn a_stream_of_exactly_the_limit_is_whole() {
        let out = read_through(&[b'y'; 100], Some(100));
        assert_eq!(out.stdout.len(), 100);
        assert_eq!(out.over_limit, None);
        let out = read_through(&[b'y'; 100], None);
        assert_eq!((out.stdout.len(), out.over_limit), (100, None));
    }
}
