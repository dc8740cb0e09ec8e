//! The wire between the parent (`spawn`) and `pyrt-child` (`child`): which descriptor carries
//! what, and the fixed records that are not JSON. Both sides import this module and nothing of
//! each other.
//!
//! - fd 3, the plan pipe: the parent writes the request (length first); it stays open as the
//!   child's lifeline, and carries the state JSON answering a sync record;
//! - fd 4, the report pipe (close-on-exec): a `report::SetupError` record, a sync record, or an
//!   exec-failure record; EOF with nothing on it means the command runs. A two-stage start (a
//!   user namespace joined by path) first writes a stage-pid record;
//! - fd 5, the status pipe of `init = true`: the command's wait status, four bytes.

use std::os::fd::RawFd;

pub const PLAN_FD: RawFd = 3;
pub const ERROR_FD: RawFd = 4;
pub const STATUS_FD: RawFd = 5;

/// What a child writes on the report pipe when it stops before pivot_root for the parent's
/// hooks (`plan.hooks.sync`); the parent answers on the plan pipe with the state JSON.
pub const SYNC_RECORD: &[u8; 8] = b"PYRTSYNC";

/// The head of the record the clone child writes when executing `pyrt-child` failed (before
/// any Rust of the child ran, so not JSON): the magic, then the errno in native byte order.
pub const EXEC_FAILED: &[u8; 8] = b"PYRTEXEC";
pub const EXEC_FAILED_LEN: usize = 12;

/// A fixed record: `magic`, then `value` in native byte order (a constant-size array, written
/// with one raw write).
const fn tagged(magic: &[u8; 8], value: i32) -> [u8; 12] {
    let e = value.to_ne_bytes();
    let m = magic;
    [
        m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7], e[0], e[1], e[2], e[3],
    ]
}

/// The value of a fixed record of `magic`, or None when `report` is something else.
fn tag_value(magic: &[u8; 8], report: &[u8]) -> Option<i32> {
    match report.strip_prefix(magic.as_slice()) {
        Some(&[a, b, c, d]) => Some(i32::from_ne_bytes([a, b, c, d])),
        _ => None,
    }
}

/// The exec-failure record for `errno`.
pub const fn exec_failed_record(errno: i32) -> [u8; EXEC_FAILED_LEN] {
    tagged(EXEC_FAILED, errno)
}

/// The head of the record a first stage writes once it has cloned the container's process
/// (`child::stage1`): the magic, then that process's pid in native byte order.
pub const STAGE_PID: &[u8; 8] = b"PYRTPID1";
pub const STAGE_PID_LEN: usize = 12;

/// The first stage's record for `pid`.
pub const fn stage_pid_record(pid: i32) -> [u8; STAGE_PID_LEN] {
    tagged(STAGE_PID, pid)
}

/// The pid of a first stage's record, or None when `report` is something else.
pub fn stage_pid(report: &[u8]) -> Option<i32> {
    tag_value(STAGE_PID, report)
}

/// The errno of an exec-failure record, or None when `report` is something else.
pub fn exec_failed_errno(report: &[u8]) -> Option<i32> {
    tag_value(EXEC_FAILED, report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_failure_records_round_trip() {
        for errno in [0, 1, 2, 13, 40, i32::MAX] {
            assert_eq!(exec_failed_errno(&exec_failed_record(errno)), Some(errno));
        }
    }

    #[test]
    fn other_reports_are_not_exec_failures() {
        assert_eq!(exec_failed_errno(b"PYRTEXEC"), None); // too short
        assert_eq!(exec_failed_errno(b"PYRTSYNC\0\0\0\0"), None);
        assert_eq!(exec_failed_errno(b"{\"stage\":\"x\"}"), None);
        let mut long = exec_failed_record(2).to_vec();
        long.push(0);
        assert_eq!(exec_failed_errno(&long), None);
    }

    #[test]
    fn stage_pid_records_round_trip() {
        for pid in [1, 2, 4_194_304, i32::MAX] {
            assert_eq!(stage_pid(&stage_pid_record(pid)), Some(pid));
        }
        assert_eq!(stage_pid(b"PYRTPID1"), None);
        assert_eq!(stage_pid(&exec_failed_record(3)), None);
    }

    #[test]
    fn descriptors_are_distinct_and_above_stdio() {
        let fds = [PLAN_FD, ERROR_FD, STATUS_FD];
        assert!(fds.iter().all(|&fd| fd > 2));
        assert!(fds[0] != fds[1] && fds[1] != fds[2] && fds[0] != fds[2]);
    }
}
