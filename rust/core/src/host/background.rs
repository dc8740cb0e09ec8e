//! The threads we run beside the caller (the namespace maker, the teardown holders) and what
//! they may take of the CPU.
//!
//! On a machine with few CPUs the scheduler often wakes such a thread on the CPU of the thread
//! that woke it, and lets it preempt that thread at once: a start's interpreter thread then
//! waited ~0.6 ms, in the middle of the start, for the next network namespace to be made
//! (seen in the kernel's trace, the other CPU idle all the while). Under `SCHED_BATCH` a
//! thread never preempts on waking (it waits for its turn, or for an idle CPU to pull it)
//! and keeps its ordinary weight: unlike `SCHED_IDLE`, it is never starved while it holds a
//! kernel lock that others wait for (the namespace and mount locks of its work).

/// Puts the calling thread (only) under `SCHED_BATCH`. Best effort: any thread may lower its
/// own policy, and one that cannot keeps the default, which is correct, only less kind.
pub fn yield_on_wakeup() {
    // SAFETY: all zeroes is a valid sched_param (priority 0, the only one SCHED_BATCH takes;
    // musl's has more fields than glibc's), and the call changes the calling thread only (0).
    unsafe {
        let param: libc::sched_param = std::mem::zeroed();
        libc::sched_setscheduler(0, libc::SCHED_BATCH, &param);
    }
}
