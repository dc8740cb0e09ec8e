//! The network namespace's loopback interface, brought up with one ioctl (no netlink needed).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::report::{SetupError, Stage};

pub fn loopback_up() -> Result<(), SetupError> {
    let err = |what: &str, e: io::Error| {
        SetupError::io(Stage::Network, format!("bringing lo up: {what}"), &e)
    };
    // SAFETY: socket(2) has no memory arguments.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(err("socket", io::Error::last_os_error()));
    }
    // SAFETY: the kernel just gave us this descriptor.
    let sock = unsafe { OwnedFd::from_raw_fd(s) };
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: req is a valid ifreq for these ioctls.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) } < 0 {
        return Err(err("SIOCGIFFLAGS", io::Error::last_os_error()));
    }
    // SAFETY: ifru_flags is the member SIOCGIFFLAGS filled in.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) } < 0 {
        return Err(err("SIOCSIFFLAGS", io::Error::last_os_error()));
    }
    Ok(())
}
