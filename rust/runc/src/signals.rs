//! Foreground `run` and `exec`: wait for the process, passing on the signals we get (runc
//! does the same), and turn its end into our exit status.

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use pyrt_core::spawn::Child;

use crate::error::{io_err, Result};

static PENDING: AtomicI32 = AtomicI32::new(0);

extern "C" fn note(sig: libc::c_int) {
    PENDING.store(sig, Ordering::SeqCst);
}

const FORWARDED: [libc::c_int; 7] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
];

/// Returns the exit status the shell convention gives: the code, or 128 + the signal.
pub fn wait_forwarding(child: &Child) -> Result<i32> {
    for s in FORWARDED {
        // SAFETY: installing an async-signal-safe handler that only stores an integer.
        unsafe { libc::signal(s, note as *const () as usize) };
    }
    loop {
        let sig = PENDING.swap(0, Ordering::SeqCst);
        if sig != 0 {
            let _ = child.kill(sig);
        }
        if let Some(code) = child
            .wait(Some(Duration::from_millis(50)))
            .map_err(io_err("waiting for the container"))?
        {
            return Ok(if code < 0 { 128 - code } else { code });
        }
    }
}
