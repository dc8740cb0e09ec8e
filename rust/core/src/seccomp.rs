//! seccomp: the spec's `linux.seccomp` compiled to a classic BPF program by the parent (before
//! clone, where errors can still be reported cleanly), and installed by the child as the very
//! last step before `execve`, so that none of the setup's own syscalls are filtered.
//!
//! The program is a straight list of rules, first match wins, as libseccomp's semantics are:
//! a foreign architecture (and x32) gets ENOSYS; each rule is `nr == N` plus its argument
//! conditions (ANDed) and returns its action; a syscall newer than every one the profile names
//! gets ENOSYS, so that programs fall back as they would on an older kernel (runc's behaviour);
//! everything else gets the default action. Syscall numbers come from the `syscalls` crate's
//! tables for the architecture we run on; names a profile gives for other architectures are
//! skipped, as libseccomp skips them.
//!
//! Why not seccompiler: it has one action for all matching rules, and profiles need several
//! (EPERM for one call, ENOSYS for clone3, ALLOW for the rest).

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use syscalls::Sysno;

/// One classic BPF instruction: (code, jt, jf, k), as `struct sock_filter`.
pub type Insn = (u16, u8, u8, u32);

/// A classic BPF program: (code, jt, jf, k) instructions, as `struct sock_filter`. It travels
/// to the child inside the plan as one hex string (16 digits an instruction): decoding a JSON
/// array of ~800 arrays cost the child a measurable part of its start.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Program {
    #[serde(with = "hex_insns")]
    pub insns: Vec<Insn>,
}

mod hex_insns {
    use super::Insn;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[Insn], s: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(v.len() * 16);
        for (code, jt, jf, k) in v {
            out.push_str(&format!("{code:04x}{jt:02x}{jf:02x}{k:08x}"));
        }
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Insn>, D::Error> {
        let s = String::deserialize(d)?;
        let bad = || serde::de::Error::custom("malformed seccomp program");
        if s.len() % 16 != 0 || !s.is_ascii() {
            return Err(bad());
        }
        let num = |a: usize, b: usize| u32::from_str_radix(&s[a..b], 16).map_err(|_| bad());
        (0..s.len() / 16)
            .map(|i| {
                let o = i * 16;
                Ok((
                    num(o, o + 4)? as u16,
                    num(o + 4, o + 6)? as u8,
                    num(o + 6, o + 8)? as u8,
                    num(o + 8, o + 16)?,
                ))
            })
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp action {0} is not supported")]
    Action(String),
    #[error("seccomp operator {0} is not supported")]
    Operator(String),
    #[error("seccomp argument index {0} is out of range (0-5)")]
    ArgIndex(usize),
    #[error("the seccomp program has {0} instructions, more than the kernel's 4096")]
    TooLong(usize),
    #[error("a seccomp rule's conditions are too many to jump over")]
    TooComplex,
}

// Classic BPF opcodes (linux/filter.h) and seccomp return values (linux/seccomp.h).
// BPF_LD | BPF_W | BPF_ABS (the first two are zero).
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x05 | 0x10;
const JGT_K: u16 = 0x05 | 0x20;
const JGE_K: u16 = 0x05 | 0x30;
const AND_K: u16 = 0x04 | 0x50;
const RET_K: u16 = 0x06;

pub const RET_KILL_PROCESS: u32 = 0x8000_0000;
pub const RET_KILL_THREAD: u32 = 0;
pub const RET_TRAP: u32 = 0x0003_0000;
pub const RET_ERRNO: u32 = 0x0005_0000;
pub const RET_LOG: u32 = 0x7ffc_0000;
pub const RET_ALLOW: u32 = 0x7fff_0000;

const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
fn off_arg(i: usize, high: bool) -> u32 {
    // seccomp_data.args[i] is a u64 at 16 + 8i; little-endian: the low word first.
    16 + 8 * i as u32 + if high { 4 } else { 0 }
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const AUDIT_ARCH: u32 = 0;

/// One rule: syscall numbers, conditions on their arguments, the action when all hold.
#[derive(Debug, Clone)]
pub struct Rule {
    pub nrs: Vec<u32>,
    pub conds: Vec<Cond>,
    pub action: u32,
}

#[derive(Debug, Clone, Copy)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// (arg & mask) == value
    MaskedEq(u64),
}

#[derive(Debug, Clone, Copy)]
pub struct Cond {
    pub index: usize,
    pub op: Op,
    pub value: u64,
}

/// A jump target inside a rule's block, resolved once the block is complete.
#[derive(Clone, Copy)]
enum To {
    Next,
    Skip(u8),
    Fail,
}

struct Block {
    insns: Vec<(u16, To, To, u32)>,
}

impl Block {
    fn op(&mut self, code: u16, jt: To, jf: To, k: u32) {
        self.insns.push((code, jt, jf, k));
    }

    fn ld(&mut self, off: u32) {
        self.op(LD_W_ABS, To::Next, To::Next, off);
    }

    /// Emits one condition; on failure it jumps to the block's Fail label.
    fn cond(&mut self, c: &Cond) -> Result<(), SeccompError> {
        if c.index > 5 {
            return Err(SeccompError::ArgIndex(c.index));
        }
        let (hi, lo) = ((c.value >> 32) as u32, c.value as u32);
        let (ahi, alo) = (off_arg(c.index, true), off_arg(c.index, false));
        match c.op {
            Op::Eq => {
                self.ld(ahi);
                self.op(JEQ_K, To::Next, To::Fail, hi);
                self.ld(alo);
                self.op(JEQ_K, To::Next, To::Fail, lo);
            }
            Op::Ne => {
                // Holds when either word differs.
                self.ld(ahi);
                self.op(JEQ_K, To::Next, To::Skip(2), hi);
                self.ld(alo);
                self.op(JEQ_K, To::Fail, To::Next, lo);
            }
            Op::MaskedEq(mask) => {
                self.ld(ahi);
                self.op(AND_K, To::Next, To::Next, (mask >> 32) as u32);
                self.op(JEQ_K, To::Next, To::Fail, hi);
                self.ld(alo);
                self.op(AND_K, To::Next, To::Next, mask as u32);
                self.op(JEQ_K, To::Next, To::Fail, lo);
            }
            Op::Gt | Op::Ge => {
                // Unsigned 64-bit: the high words decide unless equal.
                self.ld(ahi);
                self.op(JGT_K, To::Skip(3), To::Next, hi);
                self.op(JEQ_K, To::Next, To::Fail, hi);
                self.ld(alo);
                let code = if matches!(c.op, Op::Gt) { JGT_K } else { JGE_K };
                self.op(code, To::Next, To::Fail, lo);
            }
            Op::Lt | Op::Le => {
                self.ld(ahi);
                self.op(JGT_K, To::Fail, To::Next, hi);
                self.op(JEQ_K, To::Next, To::Skip(2), hi);
                self.ld(alo);
                // a < v  <=>  !(a >= v);  a <= v  <=>  !(a > v)
                let code = if matches!(c.op, Op::Lt) { JGE_K } else { JGT_K };
                self.op(code, To::Fail, To::Next, lo);
            }
        }
        Ok(())
    }
}

/// Compiles rules (first match wins) with a default action into a program.
///
/// The rules are first reduced to what can still match: for each syscall, its conditional
/// rules up to its first unconditional one, and that one's action. The conditional blocks
/// come first, in rule order (Docker's profile has a dozen); the syscalls decided outright
/// follow as runs of consecutive numbers with one action, found by a binary search. Docker's
/// default profile was ~800 instructions as a straight list, walked halfway on average at
/// every system call of the container, and JIT-compiled by the kernel at every start; as runs
/// it is about a quarter of that, and a system call takes a dozen comparisons.
pub fn compile(rules: &[Rule], default: u32, newest: u32) -> Result<Program, SeccompError> {
    let mut p = Program::default();
    let enosys = RET_ERRNO | libc::ENOSYS as u32;
    p.insns.push((LD_W_ABS, 0, 0, OFF_ARCH));
    p.insns.push((JEQ_K, 1, 0, AUDIT_ARCH));
    p.insns.push((RET_K, 0, 0, enosys));
    p.insns.push((LD_W_ABS, 0, 0, OFF_NR));
    if cfg!(target_arch = "x86_64") {
        // x32 system calls carry bit 30; a profile for x86_64 does not cover them.
        p.insns.push((JGE_K, 0, 1, 0x4000_0000));
        p.insns.push((RET_K, 0, 0, enosys));
    }
    let mut decided = std::collections::BTreeMap::new();
    for rule in rules {
        for &nr in &rule.nrs {
            if decided.contains_key(&nr) {
                continue; // an earlier unconditional rule always matches first
            }
            if rule.conds.is_empty() {
                decided.insert(nr, rule.action);
            } else {
                conditional_block(&mut p, nr, rule)?;
            }
        }
    }
    let mut runs: Vec<Run> = Vec::new();
    for (&nr, &action) in &decided {
        match runs.last_mut() {
            Some(r) if r.hi + 1 == nr && r.action == action => r.hi = nr,
            _ => runs.push(Run {
                lo: nr,
                hi: nr,
                action,
            }),
        }
    }
    let miss = [
        (JGT_K, 0, 1, newest),
        (RET_K, 0, 0, enosys),
        (RET_K, 0, 0, default),
    ];
    // A search tree's forward jumps are 8 bits: a profile too large for one falls back to the
    // runs in a row (jumps of at most two instructions), still far shorter than a list.
    match search_tree(&runs, &miss) {
        Some(tree) => p.insns.extend(tree),
        None => p.insns.extend(run_checks(&runs, &miss)),
    }
    if p.insns.len() > 4096 {
        return Err(SeccompError::TooLong(p.insns.len()));
    }
    Ok(p)
}

/// Syscall numbers `lo..=hi`, all with `action`.
struct Run {
    lo: u32,
    hi: u32,
    action: u32,
}

/// Runs this many or fewer are checked in a row at a leaf of the search tree.
const LEAF_RUNS: usize = 4;

/// The runs checked one after the other (the accumulator holds the syscall number), then
/// `miss` for a number in none of them.
fn run_checks(runs: &[Run], miss: &[Insn]) -> Vec<Insn> {
    let mut out = Vec::with_capacity(runs.len() * 3 + miss.len());
    for r in runs {
        if r.lo == r.hi {
            out.push((JEQ_K, 0, 1, r.lo));
        } else {
            out.push((JGE_K, 0, 2, r.lo));
            out.push((JGT_K, 1, 0, r.hi));
        }
        out.push((RET_K, 0, 0, r.action));
    }
    out.extend_from_slice(miss);
    out
}

/// A binary search over the runs (sorted, disjoint): each node sends numbers at or above its
/// right half's first run to that half. None when a jump would be longer than 255.
fn search_tree(runs: &[Run], miss: &[Insn]) -> Option<Vec<Insn>> {
    if runs.len() <= LEAF_RUNS {
        return Some(run_checks(runs, miss));
    }
    let mid = runs.len() / 2;
    let left = search_tree(&runs[..mid], miss)?;
    let right = search_tree(&runs[mid..], miss)?;
    let jump = u8::try_from(left.len()).ok()?;
    let mut out = Vec::with_capacity(1 + left.len() + right.len());
    out.push((JGE_K, jump, 0, runs[mid].lo));
    out.extend(left);
    out.extend(right);
    Some(out)
}

/// `nr == N` and the rule's conditions (ANDed), returning its action; on any failure the
/// syscall number is loaded again and the program goes on.
fn conditional_block(p: &mut Program, nr: u32, rule: &Rule) -> Result<(), SeccompError> {
    let mut b = Block { insns: Vec::new() };
    b.op(JEQ_K, To::Next, To::Fail, nr);
    for c in &rule.conds {
        b.cond(c)?;
    }
    b.op(RET_K, To::Next, To::Next, rule.action);
    // The Fail label: reload the syscall number for the rules that follow.
    let fail_at = b.insns.len();
    b.ld(OFF_NR);
    for (i, (code, jt, jf, k)) in b.insns.iter().enumerate() {
        let resolve = |t: To| -> Result<u8, SeccompError> {
            let off = match t {
                To::Next => 0,
                To::Skip(n) => n as usize,
                To::Fail => fail_at - i - 1,
            };
            u8::try_from(off).map_err(|_| SeccompError::TooComplex)
        };
        p.insns.push((*code, resolve(*jt)?, resolve(*jf)?, *k));
    }
    Ok(())
}

/// The number of a syscall by name on this architecture, if it has one.
pub fn syscall_nr(name: &str) -> Option<u32> {
    Sysno::from_str(name).ok().map(|s| s.id() as u32)
}

/// A program from the JSON of an OCI `linux.seccomp` object, cached by that exact text: an exec
/// into a container sends the same profile every time, and parsing ~15 KB of JSON showed in
/// its latency.
#[cfg(feature = "spec")]
pub fn from_json(json: &str) -> Result<Program, String> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<String, Program>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(p) = cache.lock().ok().and_then(|c| c.get(json).cloned()) {
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
    Ok(p)
}

/// Compiled programs by profile: a process starts many containers with the same one.
#[cfg(feature = "spec")]
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

#[cfg(feature = "spec")]
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

/// Installs the program on the calling thread (the child, just before execve). Needs
/// no_new_privs or CAP_SYS_ADMIN.
pub fn install(p: &Program) -> std::io::Result<()> {
    let filter: Vec<libc::sock_filter> = p
        .insns
        .iter()
        .map(|&(code, jt, jf, k)| libc::sock_filter { code, jt, jf, k })
        .collect();
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prog points at `filter`, alive for the call.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny classic-BPF interpreter, enough for these programs: the fake syscall layer that
    /// lets the compiler be tested without installing anything.
    fn run(p: &Program, arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let (mut acc, mut pc) = (0u32, 0usize);
        loop {
            let (code, jt, jf, k) = p.insns[pc];
            pc += 1;
            match code {
                LD_W_ABS => {
                    acc = u32::from_le_bytes(data[k as usize..k as usize + 4].try_into().unwrap())
                }
                AND_K => acc &= k,
                RET_K => return k,
                JEQ_K | JGT_K | JGE_K => {
                    let t = match code {
                        JEQ_K => acc == k,
                        JGT_K => acc > k,
                        _ => acc >= k,
                    };
                    pc += if t { jt } else { jf } as usize;
                }
                _ => panic!("unknown opcode {code:#x}"),
            }
        }
    }

    fn nr(n: &str) -> u32 {
        syscall_nr(n).unwrap()
    }

    #[test]
    fn allow_list_default_and_newer_syscalls() {
        let rules = vec![Rule {
            nrs: vec![nr("read"), nr("write")],
            conds: vec![],
            action: RET_ALLOW,
        }];
        let p = compile(&rules, RET_ERRNO | 1, 400).unwrap();
        assert_eq!(run(&p, AUDIT_ARCH, nr("read"), [0; 6]), RET_ALLOW);
        assert_eq!(run(&p, AUDIT_ARCH, nr("getpid"), [0; 6]), RET_ERRNO | 1);
        assert_eq!(
            run(&p, AUDIT_ARCH, 1000, [0; 6]),
            RET_ERRNO | libc::ENOSYS as u32
        );
        assert_eq!(
            run(&p, 0x4000_0003, nr("read"), [0; 6]),
            RET_ERRNO | libc::ENOSYS as u32
        );
    }

    #[test]
    fn argument_conditions() {
        let c = |op, value| Cond {
            index: 0,
            op,
            value,
        };
        let big = 0x1_0000_0005u64;
        for (op, value, yes, no) in [
            (Op::Eq, 8u64, 8u64, 9u64),
            (Op::Eq, big, big, 5),
            (Op::Ne, 40, 2, 40),
            (Op::Ne, big, 5, big),
            (Op::Gt, big, big + 1, big),
            (Op::Ge, big, big, big - 1),
            (Op::Lt, big, 5, big),
            (Op::Le, big, big, big + 1),
            (Op::MaskedEq(0x7E02_0000), 0, 0x11, 0x1000_0000),
        ] {
            let rules = vec![Rule {
                nrs: vec![nr("personality")],
                conds: vec![c(op, value)],
                action: RET_ALLOW,
            }];
            let p = compile(&rules, RET_ERRNO | 1, 500).unwrap();
            let mut a = [0u64; 6];
            a[0] = yes;
            assert_eq!(
                run(&p, AUDIT_ARCH, nr("personality"), a),
                RET_ALLOW,
                "{op:?} {value:#x} {yes:#x}"
            );
            a[0] = no;
            assert_eq!(
                run(&p, AUDIT_ARCH, nr("personality"), a),
                RET_ERRNO | 1,
                "{op:?} {value:#x} {no:#x}"
            );
        }
    }

    #[test]
    fn programs_travel_as_hex() {
        let p = Program {
            insns: vec![
                (0x20, 0, 0, 4),
                (0x15, 1, 255, 0xC000_003E),
                (6, 0, 0, RET_ALLOW),
            ],
        };
        let j = serde_json::to_string(&p).unwrap();
        assert_eq!(
            j,
            r#"{"insns":"0020000000000004001501ffc000003e000600007fff0000"}"#
        );
        assert_eq!(serde_json::from_str::<Program>(&j).unwrap(), p);
        assert!(serde_json::from_str::<Program>(r#"{"insns":"zz"}"#).is_err());
    }

    #[test]
    fn a_failed_condition_falls_through_to_later_rules() {
        let rules = vec![
            Rule {
                nrs: vec![nr("ioctl")],
                conds: vec![Cond {
                    index: 1,
                    op: Op::Eq,
                    value: 0x5412,
                }],
                action: RET_ERRNO | 1,
            },
            Rule {
                nrs: vec![nr("ioctl"), nr("read")],
                conds: vec![],
                action: RET_ALLOW,
            },
        ];
        let p = compile(&rules, RET_KILL_PROCESS, 500).unwrap();
        assert_eq!(
            run(&p, AUDIT_ARCH, nr("ioctl"), [0, 0x5412, 0, 0, 0, 0]),
            RET_ERRNO | 1
        );
        assert_eq!(
            run(&p, AUDIT_ARCH, nr("ioctl"), [0, 0x5413, 0, 0, 0, 0]),
            RET_ALLOW
        );
        assert_eq!(run(&p, AUDIT_ARCH, nr("read"), [0; 6]), RET_ALLOW);
    }

    /// What the rules say for one call, evaluated directly (first match wins).
    fn reference(rules: &[Rule], default: u32, newest: u32, nr: u32, args: [u64; 6]) -> u32 {
        for r in rules {
            if !r.nrs.contains(&nr) {
                continue;
            }
            let holds = r.conds.iter().all(|c| {
                let a = args[c.index];
                match c.op {
                    Op::Eq => a == c.value,
                    Op::Ne => a != c.value,
                    Op::Gt => a > c.value,
                    Op::Ge => a >= c.value,
                    Op::Lt => a < c.value,
                    Op::Le => a <= c.value,
                    Op::MaskedEq(m) => a & m == c.value,
                }
            });
            if holds {
                return r.action;
            }
        }
        if nr > newest {
            RET_ERRNO | libc::ENOSYS as u32
        } else {
            default
        }
    }

    mod compiled_like_the_rules {
        use super::*;
        use proptest::prelude::*;

        fn rule() -> impl Strategy<Value = Rule> {
            let cond = (0usize..3, 0u64..4).prop_map(|(index, value)| Cond {
                index,
                op: Op::Eq,
                value,
            });
            (
                proptest::collection::vec(0u32..120, 1..40),
                proptest::collection::vec(cond, 0..2),
                prop_oneof![Just(RET_ALLOW), Just(RET_ERRNO | 1), Just(RET_LOG)],
            )
                .prop_map(|(nrs, conds, action)| Rule { nrs, conds, action })
        }

        proptest! {
            #[test]
            fn every_syscall_gets_the_first_matching_rule(
                rules in proptest::collection::vec(rule(), 0..25),
                args in proptest::array::uniform6(0u64..4),
            ) {
                let p = compile(&rules, RET_ERRNO | 1, 110).unwrap();
                for nr in 0..130 {
                    prop_assert_eq!(
                        run(&p, AUDIT_ARCH, nr, args),
                        reference(&rules, RET_ERRNO | 1, 110, nr, args),
                        "syscall {}", nr
                    );
                }
            }
        }
    }

    /// Every even number below `upto` allowed, the rest the default, above `upto` ENOSYS: the
    /// program compiled from that list must answer so for each of `nrs`.
    fn check_every_other(upto: u32, nrs: impl Iterator<Item = u32>) -> Result<(), SeccompError> {
        let rules = vec![Rule {
            nrs: (0..upto).step_by(2).collect(),
            conds: vec![],
            action: RET_ALLOW,
        }];
        let p = compile(&rules, RET_ERRNO | 1, upto)?;
        for nr in nrs {
            let want = if nr < upto && nr % 2 == 0 {
                RET_ALLOW
            } else if nr > upto {
                RET_ERRNO | libc::ENOSYS as u32
            } else {
                RET_ERRNO | 1
            };
            assert_eq!(run(&p, AUDIT_ARCH, nr, [0; 6]), want, "syscall {nr}");
        }
        Ok(())
    }

    #[test]
    fn a_long_allow_list_becomes_a_short_search() {
        // Every other number (no runs to merge): a search tree of 300 runs.
        check_every_other(600, 0..610).unwrap();
        // Consecutive numbers with one action are one run: a handful of instructions.
        let rules = vec![Rule {
            nrs: (0..400).collect(),
            conds: vec![],
            action: RET_ALLOW,
        }];
        assert!(compile(&rules, RET_ERRNO | 1, 400).unwrap().insns.len() < 16);
    }

    #[test]
    fn a_search_tree_too_wide_for_short_jumps_falls_back_to_a_row() {
        // 1000 runs: too wide for 8-bit jumps, short enough in a row.
        check_every_other(2000, [0, 1, 998, 999, 1998, 1999, 2001].into_iter()).unwrap();
        // 3000 runs: too long either way, refused by name.
        let e = check_every_other(6000, std::iter::empty()).unwrap_err();
        assert!(matches!(e, SeccompError::TooLong(_)), "{e:?}");
    }
}
