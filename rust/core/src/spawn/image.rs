//! The `pyrt-child` image every container is executed from: a sealed memfd.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::clone::dup_high;

/// The `pyrt-child` binary, in a sealed memfd that every container is started from.
pub struct ChildImage {
    fd: OwnedFd,
}

const MFD_EXEC: libc::c_uint = 0x10;
const F_SEAL_EXEC: libc::c_int = 0x20;

impl ChildImage {
    pub fn from_bytes(bytes: &[u8]) -> io::Result<ChildImage> {
        let name = c"pyrt-child";
        let base = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
        // MFD_EXEC (Linux 6.3) asks for an executable memfd explicitly, which a system with
        // vm.memfd_noexec=1 would otherwise refuse; older kernels reject the flag: retry without.
        // The raw syscall, not glibc's wrapper (glibc 2.27): the wheel promises glibc 2.17.
        let memfd = |flags: libc::c_uint| -> i32 {
            // SAFETY: memfd_create with a valid NUL-terminated name.
            unsafe { libc::syscall(libc::SYS_memfd_create, name.as_ptr(), flags) as i32 }
        };
        let mut fd = memfd(base | MFD_EXEC);
        if fd < 0 {
            fd = memfd(base);
        }
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just gave us this descriptor.
        let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
        file.write_all(bytes)?;
        let seals =
            libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
        // SAFETY: fcntl on our descriptor.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals | F_SEAL_EXEC) } != 0
            && unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0
        {
            return Err(io::Error::last_os_error());
        }
        // Above FD_FLOOR, like every descriptor the clone child reads: its dup2 into 0..=5 must
        // not overwrite the image it is about to execute.
        let fd = dup_high(file.as_raw_fd())?;
        Ok(ChildImage { fd })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
