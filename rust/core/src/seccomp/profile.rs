//! An OCI `linux.seccomp` profile turned into rules for the compiler (actions, syscall names
//! of this architecture, argument conditions), with the compiled programs cached by profile.

use super::{
    compile, syscall_nr, Cond, Op, Program, Rule, SeccompError, RET_ALLOW, RET_ERRNO,
    RET_KILL_PROCESS, RET_KILL_THREAD, RET_LOG, RET_TRAP,
};

/// A program from the JSON of an OCI `linux.seccomp` object, cached by that exact text: an exec
/// into a container sends the same profile every time, and parsing ~15 KB of JSON showed in
/// its latency.
pub fn from_json(json: &str) -> Result<Program, String> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<String, Program>>> = OnceLock::new();
    // The last profile used, compared whole before hashing: one memcmp instead of a hash of
    // the whole text, for the common case of execs into one container.
    static LAST: Mutex<Option<(String, Program)>> = Mutex::new(None);
    if let Ok(last) = LAST.lock() {
        if let Some((_, p)) = last.as_ref().filter(|(text, _)| text == json) {
            return Ok(p.clone());
        }
    }
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let remember = |p: &Program| {
        if let Ok(mut last) = LAST.lock() {
            *last = Some((json.to_string(), p.clone()));
        }
    };
    if let Some(p) = cache.lock().ok().and_then(|c| c.get(json).cloned()) {
        remember(&p);
        return Ok(p);
    }
    let s: oci_spec::runtime::LinuxSeccomp =
        serde_json::from_str(json).map_err(|e| e.to_string())?;
    let p = from_spec(&s).map_err(|e| e.to_string())?;
    if let Ok(mut c) = cache.lock() {
        if c.len() > 64 {
            c.clear();
        }
        c.insert(json.to_string(), p.clone());
    }
    remember(&p);
    Ok(p)
}

/// Compiled programs by profile: a process starts many containers with the same one.
pub fn from_spec(s: &oci_spec::runtime::LinuxSeccomp) -> Result<Program, SeccompError> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<String, Program>>> = OnceLock::new();
    let key = serde_json::to_string(s).unwrap_or_default();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(p) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return Ok(p);
    }
    let p = compile_spec(s)?;
    if let Ok(mut c) = cache.lock() {
        if c.len() > 64 {
            c.clear();
        }
        c.insert(key, p.clone());
    }
    Ok(p)
}

fn compile_spec(s: &oci_spec::runtime::LinuxSeccomp) -> Result<Program, SeccompError> {
    use oci_spec::runtime::{LinuxSeccompAction as A, LinuxSeccompOperator as O};
    let action = |a: A, errno: Option<u32>| -> Result<u32, SeccompError> {
        Ok(match a {
            A::ScmpActAllow => RET_ALLOW,
            A::ScmpActErrno => RET_ERRNO | (errno.unwrap_or(libc::EPERM as u32) & 0xffff),
            A::ScmpActKill | A::ScmpActKillThread => RET_KILL_THREAD,
            A::ScmpActKillProcess => RET_KILL_PROCESS,
            A::ScmpActTrap => RET_TRAP,
            A::ScmpActLog => RET_LOG,
            other => return Err(SeccompError::Action(format!("{other:?}"))),
        })
    };
    let default = action(s.default_action(), s.default_errno_ret())?;
    let mut rules = Vec::new();
    let mut newest = 0u32;
    for sc in s.syscalls().iter().flatten() {
        let nrs: Vec<u32> = sc.names().iter().filter_map(|n| syscall_nr(n)).collect();
        newest = nrs.iter().copied().fold(newest, u32::max);
        let mut conds = Vec::new();
        for a in sc.args().iter().flatten() {
            let op = match a.op() {
                O::ScmpCmpEq => Op::Eq,
                O::ScmpCmpNe => Op::Ne,
                O::ScmpCmpLt => Op::Lt,
                O::ScmpCmpLe => Op::Le,
                O::ScmpCmpGt => Op::Gt,
                O::ScmpCmpGe => Op::Ge,
                O::ScmpCmpMaskedEq => Op::MaskedEq(a.value()),
            };
            let value = if matches!(op, Op::MaskedEq(_)) {
                a.value_two().unwrap_or(0)
            } else {
                a.value()
            };
            conds.push(Cond {
                index: a.index(),
                op,
                value,
            });
        }
        if nrs.is_empty() {
            continue;
        }
        rules.push(Rule {
            nrs,
            conds,
            action: action(sc.action(), sc.errno_ret())?,
        });
    }
    compile(&rules, default, newest)
}
