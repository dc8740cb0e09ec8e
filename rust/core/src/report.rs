//! The error record a child sends back over its close-on-exec pipe (crun's approach): the stage
//! that failed, the errno, and a message that names the path or value at fault. A successful
//! `execve` closes the pipe, so the parent reading EOF with no record means "the command runs".

use serde::{Deserialize, Serialize};

/// Where in the setup a failure happened. The names are part of pyrt's Python API
/// (`SpawnError.stage`), so they only ever grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Spec,
    Spawn,
    Plan,
    Namespaces,
    Cgroup,
    Rootfs,
    Mount,
    Devices,
    PivotRoot,
    MaskedPaths,
    Hostname,
    Network,
    Sysctl,
    Rlimits,
    User,
    Capabilities,
    Cwd,
    Seccomp,
    /// The spec's hooks (createRuntime, createContainer, startContainer): a stage of their
    /// own, so that a failing hook is not taken for a failing command.
    Hooks,
    Exec,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Spec => "spec",
            Stage::Spawn => "spawn",
            Stage::Plan => "plan",
            Stage::Namespaces => "namespaces",
            Stage::Cgroup => "cgroup",
            Stage::Rootfs => "rootfs",
            Stage::Mount => "mount",
            Stage::Devices => "devices",
            Stage::PivotRoot => "pivot_root",
            Stage::MaskedPaths => "masked_paths",
            Stage::Hostname => "hostname",
            Stage::Network => "network",
            Stage::Sysctl => "sysctl",
            Stage::Rlimits => "rlimits",
            Stage::User => "user",
            Stage::Capabilities => "capabilities",
            Stage::Cwd => "cwd",
            Stage::Seccomp => "seccomp",
            Stage::Hooks => "hooks",
            Stage::Exec => "exec",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct SetupError {
    pub stage: Stage,
    pub errno: i32,
    pub message: String,
}

impl SetupError {
    pub fn new(stage: Stage, errno: i32, message: impl Into<String>) -> Self {
        SetupError {
            stage,
            errno,
            message: message.into(),
        }
    }

    /// An I/O error at `stage`, with `what` naming the operation and its path.
    pub fn io(stage: Stage, what: impl std::fmt::Display, e: &std::io::Error) -> Self {
        let errno = e.raw_os_error().unwrap_or(libc::EIO);
        SetupError::new(stage, errno, format!("{what}: {}", strerror(errno)))
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec())
    }

    pub fn decode(b: &[u8]) -> SetupError {
        serde_json::from_slice(b).unwrap_or_else(|_| {
            SetupError::new(
                Stage::Spawn,
                libc::EPROTO,
                format!(
                    "unreadable error report from the container: {:?}",
                    String::from_utf8_lossy(b)
                ),
            )
        })
    }
}

/// The C library's message for an errno, without the " (os error N)" that io::Error appends.
pub fn strerror(errno: i32) -> String {
    let s = std::io::Error::from_raw_os_error(errno).to_string();
    match s.rfind(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let e = SetupError::new(Stage::Exec, 2, "executable file not found: /bin/nope");
        assert_eq!(SetupError::decode(&e.encode()), e);
        assert_eq!(Stage::PivotRoot.name(), "pivot_root");
        assert_eq!(Stage::Hooks.name(), "hooks");
    }

    #[test]
    fn garbage_is_reported_not_panicked() {
        let e = SetupError::decode(b"\xff\x00");
        assert_eq!(e.stage, Stage::Spawn);
    }

    #[test]
    fn io_message_names_the_path() {
        let e = SetupError::io(
            Stage::Cwd,
            "chdir /nope",
            &std::io::Error::from_raw_os_error(2),
        );
        assert_eq!(e.message, "chdir /nope: No such file or directory");
        assert_eq!(e.errno, 2);
    }
}
