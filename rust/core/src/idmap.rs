//! A new user namespace's uid and gid maps, written by the parent between clone and sending the
//! plan: the child blocks on reading its plan, so it does nothing before its ids mean something.
//!
//! The kernel lets a process write a map itself when it is root in the parent namespace, or
//! when the map is its own id alone (and, for gids, after "deny" in `setgroups`). Anything
//! else (a subordinate range from /etc/subuid) goes through Debian's newuidmap/newgidmap,
//! setuid helpers that check those files: pyrt has no setuid helper of its own.

use std::io;
use std::process::Command;

use crate::plan::IdMaps;

type Ranges = [(u32, u32, u32)];

fn text(ranges: &Ranges) -> String {
    ranges
        .iter()
        .map(|(inside, outside, n)| format!("{inside} {outside} {n}\n"))
        .collect()
}

fn write_proc(pid: i32, file: &str, data: &str) -> io::Result<()> {
    std::fs::write(format!("/proc/{pid}/{file}"), data)
        .map_err(|e| io::Error::new(e.kind(), format!("writing /proc/{pid}/{file}: {e}")))
}

/// Starts newuidmap or newgidmap; `finish` waits for it. Both run at once when both are
/// needed: each is a setuid process costing 1-2 ms, the largest part of a rootless start.
fn helper(tool: &'static str, pid: i32, ranges: &Ranges) -> io::Result<Helper> {
    let mut cmd = Command::new(tool);
    cmd.arg(pid.to_string());
    for (inside, outside, n) in ranges {
        cmd.args([inside.to_string(), outside.to_string(), n.to_string()]);
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("{tool} (Debian package uidmap) is needed for this map: {e}"),
        )
    })?;
    Ok(Helper { tool, child })
}

struct Helper {
    tool: &'static str,
    child: std::process::Child,
}

fn finish(h: Helper) -> io::Result<()> {
    let tool = h.tool;
    let out = h.child.wait_with_output()?;
    if !out.status.success() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{tool} refused the map (is it in /etc/sub{}id?): {}",
                if tool == "newuidmap" { "u" } else { "g" },
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(())
}

pub fn write(pid: i32, maps: &IdMaps) -> io::Result<()> {
    // SAFETY: geteuid/getegid cannot fail.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let own = |r: &Ranges, id: u32| r.len() == 1 && r[0].1 == id && r[0].2 == 1;
    let uid_helper = if euid == 0 || own(&maps.uid, euid) {
        write_proc(pid, "uid_map", &text(&maps.uid))?;
        None
    } else {
        Some(helper("newuidmap", pid, &maps.uid)?)
    };
    let gids = if euid == 0 {
        write_proc(pid, "gid_map", &text(&maps.gid))
    } else if own(&maps.gid, egid) {
        // Without this, an unprivileged process may not write a gid map: setgroups could
        // otherwise drop a group that denies it access.
        write_proc(pid, "setgroups", "deny")
            .and_then(|_| write_proc(pid, "gid_map", &text(&maps.gid)))
    } else {
        helper("newgidmap", pid, &maps.gid).and_then(finish)
    };
    let uids = uid_helper.map_or(Ok(()), finish);
    uids.and(gids)
}
