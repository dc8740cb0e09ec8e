//! OCI lifecycle hooks (runtime-spec config.md, "POSIX-platform Hooks"): a program run with the
//! container's state JSON on its stdin, its own `args` and `env` (nothing inherited), and an
//! optional timeout in seconds. The runtime binary runs the hooks of the runtime namespace
//! (`createRuntime`, `prestart`, `poststart`, `poststop`); the child runs `createContainer` and
//! `startContainer` inside the container's namespaces.

use std::io::{self, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Hook {
    pub path: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<String>,
    /// Seconds; the hook is killed and counts as failed when it runs longer.
    pub timeout: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("hook {path}: {source}")]
    Start { path: String, source: io::Error },
    #[error("hook {path} exited with {how}{stderr}")]
    Failed {
        path: String,
        how: String,
        stderr: String,
    },
    #[error("hook {path} timed out after {secs}s and was killed")]
    Timeout { path: String, secs: u64 },
}

#[cfg(feature = "spec")]
impl Hook {
    pub fn from_spec(h: &oci_spec::runtime::Hook) -> Hook {
        Hook {
            path: h.path().clone(),
            args: h.args().clone().unwrap_or_default(),
            env: h.env().clone().unwrap_or_default(),
            timeout: h.timeout().map(|t| t.max(1) as u64),
        }
    }
}

/// Runs one hook to its end, `state` on its stdin. Its stdout is discarded; the tail of its
/// stderr goes into the error, so a failing hook says why.
pub fn run(hook: &Hook, state: &str) -> Result<(), HookError> {
    let path = hook.path.display().to_string();
    let mut cmd = Command::new(&hook.path);
    if let Some((first, rest)) = hook.args.split_first() {
        cmd.arg0(first).args(rest);
    }
    cmd.env_clear()
        .envs(hook.env.iter().filter_map(|kv| kv.split_once('=')))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| HookError::Start {
        path: path.clone(),
        source,
    })?;
    // Drained while the hook runs: one that writes more than a pipe holds must not block.
    let stderr = child.stderr.take().map(|mut e| {
        std::thread::spawn(move || {
            let mut out = String::new();
            let _ = e.read_to_string(&mut out);
            out
        })
    });
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is not an error (EPIPE is ignored).
        let _ = stdin.write_all(state.as_bytes());
    }
    let deadline = hook
        .timeout
        .and_then(|s| Instant::now().checked_add(Duration::from_secs(s)));
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) => {}
            Err(source) => {
                return Err(HookError::Start {
                    path: path.clone(),
                    source,
                })
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(HookError::Timeout {
                path,
                secs: hook.timeout.unwrap_or(0),
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    if status.success() {
        return Ok(());
    }
    let err = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    let err = err.trim();
    let tail: String = err
        .chars()
        .skip(err.chars().count().saturating_sub(400))
        .collect();
    Err(HookError::Failed {
        path,
        how: match (status.code(), status.signal()) {
            (Some(c), _) => format!("status {c}"),
            (_, Some(s)) => format!("signal {s}"),
            _ => "an unknown status".into(),
        },
        stderr: if tail.is_empty() {
            String::new()
        } else {
            format!(": {tail}")
        },
    })
}

/// Runs hooks in order; the first failure ends the run.
pub fn run_all(hooks: &[Hook], state: &str) -> Result<(), HookError> {
    hooks.iter().try_for_each(|h| run(h, state))
}
