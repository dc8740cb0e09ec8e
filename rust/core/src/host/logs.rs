//! Containers' logs: one thread for all of them copies each container's output pipe (stdout and
//! stderr share it, so their order is kept) into its log file, and rotates the file when it
//! reaches its cap, keeping one previous file. A chatty container thus costs a bounded amount of
//! disk, and no memory: nothing is buffered beyond one read.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::{mpsc, Mutex, OnceLock};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

struct Sink {
    pipe: OwnedFd,
    path: PathBuf,
    file: File,
    written: u64,
    cap: u64,
    /// Closed (with the sink) once everything is in the file: a reader waits for its EOF.
    _done: Option<OwnedFd>,
}

impl Sink {
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        if self.written + data.len() as u64 > self.cap {
            // Keep the previous file as log.1; start a fresh one.
            let old = self.path.with_extension("1");
            std::fs::rename(&self.path, old)?;
            self.file = open_log(&self.path)?;
            self.written = 0;
        }
        self.file.write_all(data)?;
        self.written += data.len() as u64;
        Ok(())
    }
}

fn open_log(path: &PathBuf) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

struct Pump {
    epoll: Epoll,
    add: Mutex<mpsc::Sender<Sink>>,
}

fn pump() -> io::Result<&'static Pump> {
    static PUMP: OnceLock<Result<Pump, String>> = OnceLock::new();
    PUMP.get_or_init(|| {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(|e| e.to_string())?;
        let waiter = epoll.0.try_clone().map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::channel::<Sink>();
        std::thread::Builder::new()
            .name("pyrt-logs".into())
            .spawn(move || run(Epoll(waiter), rx))
            .map_err(|e| e.to_string())?;
        Ok(Pump {
            epoll,
            add: Mutex::new(tx),
        })
    })
    .as_ref()
    .map_err(|e| io::Error::other(e.clone()))
}

fn run(epoll: Epoll, new: mpsc::Receiver<Sink>) {
    let mut sinks: HashMap<RawFd, Sink> = HashMap::new();
    let mut events = [EpollEvent::empty(); 64];
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while let Ok(s) = new.try_recv() {
            sinks.insert(s.pipe.as_raw_fd(), s);
        }
        let n = match epoll.wait(&mut events, EpollTimeout::from(100u16)) {
            Ok(n) => n,
            Err(_) => continue,
        };
        for ev in &events[..n] {
            let fd = ev.data() as RawFd;
            let Some(sink) = sinks.get_mut(&fd) else {
                continue;
            };
            // SAFETY: reading into our buffer from a descriptor the sink owns.
            let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if r > 0 {
                let _ = sink.write(&buf[..r as usize]);
            } else if r == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN) {
                // EOF: every process of the container that held the pipe is gone.
                if let Some(s) = sinks.remove(&fd) {
                    let _ = epoll.delete(s.pipe.as_fd());
                }
            }
        }
    }
}

/// Copies everything readable from `pipe` into `path` until EOF, keeping the file below `cap`
/// bytes (with one rotated predecessor). The pipe is taken over, and so is `done`, which is
/// closed once the last byte is in the file.
pub fn follow_into(
    pipe: OwnedFd,
    path: PathBuf,
    cap: u64,
    done: Option<OwnedFd>,
) -> io::Result<()> {
    let p = pump()?;
    let file = open_log(&path)?;
    let written = file.metadata().map(|m| m.len()).unwrap_or(0);
    let fd = pipe.as_raw_fd();
    // SAFETY: fcntl on the pipe we now own.
    unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) };
    let sink = Sink {
        pipe,
        path,
        file,
        written,
        cap: cap.max(4096),
        _done: done,
    };
    let ev = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP, fd as u64);
    // Hand the sink over first so that the pump knows the descriptor when its first event comes.
    let tx = p
        .add
        .lock()
        .map_err(|_| io::Error::other("log pump poisoned"))?;
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    tx.send(sink)
        .map_err(|_| io::Error::other("the pyrt-logs thread is gone"))?;
    p.epoll.add(borrowed, ev).map_err(io::Error::from)
}
