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
//!
//! Here: the program, the compiler and `install`; `profile.rs` turns an OCI profile into rules
//! (and caches the programs); `tests.rs` runs the programs on a small BPF interpreter.

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
        use std::fmt::Write;
        // Written in place: a string formatted per instruction was ~270 allocations a spawn.
        let mut out = String::with_capacity(v.len() * 16);
        for (code, jt, jf, k) in v {
            let _ = write!(out, "{code:04x}{jt:02x}{jf:02x}{k:08x}");
        }
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Insn>, D::Error> {
        let s = String::deserialize(d)?;
        let bad = || serde::de::Error::custom("malformed seccomp program");
        if s.len() % 16 != 0 {
            return Err(bad());
        }
        // Digit by digit (the child decodes this at every start: a parse of each field as a
        // string took a thousand calls).
        let num = |digits: &[u8]| {
            digits.iter().try_fold(0u32, |n, &c| {
                let v = match c {
                    b'0'..=b'9' => c - b'0',
                    b'a'..=b'f' => c - b'a' + 10,
                    b'A'..=b'F' => c - b'A' + 10,
                    _ => return Err(bad()),
                };
                Ok((n << 4) | u32::from(v))
            })
        };
        s.as_bytes()
            .chunks_exact(16)
            .map(|i| {
                Ok((
                    num(&i[..4])? as u16,
                    num(&i[4..6])? as u8,
                    num(&i[6..8])? as u8,
                    num(&i[8..])?,
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
/// BPF_JMP | BPF_JA: an unconditional jump, with a 32-bit offset.
const JA: u16 = 0x05;

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
/// rules up to its first unconditional one, and that one's action (or the default). The
/// syscalls decided outright become runs of consecutive numbers with one action, found by a
/// binary search; a syscall with conditions is a run of its own in the search, which jumps to
/// its chain of conditional blocks after the tree (Docker's profile has a dozen). Docker's
/// default profile was ~800 instructions as a straight list, walked halfway on average at
/// every system call of the container, and JIT-compiled by the kernel at every start; as runs
/// it is about a quarter of that, and a system call takes a dozen comparisons. The blocks come
/// after the search rather than before it: the kernel emulates the program for every syscall
/// number when it installs it (to cache what is always allowed), and a dozen blocks walked
/// first for each number were half of the install's 0.15 ms.
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
    // The conditional rules of each syscall, in rule order, that come before its first
    // unconditional one.
    let mut chains: std::collections::BTreeMap<u32, Vec<&Rule>> = Default::default();
    for rule in rules {
        for &nr in &rule.nrs {
            if decided.contains_key(&nr) {
                continue; // an earlier unconditional rule always matches first
            }
            if rule.conds.is_empty() {
                decided.insert(nr, rule.action);
            } else {
                chains.entry(nr).or_default().push(rule);
            }
        }
    }
    // A syscall whose conditions all fail gets its unconditional rule's action, or what a
    // syscall the profile does not name gets.
    let mut outcome: std::collections::BTreeMap<u32, Leaf> =
        decided.iter().map(|(&nr, &a)| (nr, Leaf::Ret(a))).collect();
    let mut blocks = Vec::new();
    for (i, (&nr, chain)) in chains.iter().enumerate() {
        outcome.insert(nr, Leaf::Chain(i));
        let unnamed = if nr > newest { enosys } else { default };
        let fallback = decided.get(&nr).copied().unwrap_or(unnamed);
        blocks.push(chain_blocks(chain, fallback)?);
    }
    let mut runs: Vec<Run> = Vec::new();
    for (&nr, &leaf) in &outcome {
        match runs.last_mut() {
            Some(r) if r.hi + 1 == nr && r.leaf == leaf && matches!(leaf, Leaf::Ret(_)) => {
                r.hi = nr
            }
            _ => runs.push(Run {
                lo: nr,
                hi: nr,
                leaf,
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
    let search = search_tree(&runs, &miss).unwrap_or_else(|| run_checks(&runs, &miss));
    let base = p.insns.len();
    p.insns.extend(search);
    let mut starts = Vec::with_capacity(blocks.len());
    for b in blocks {
        starts.push(p.insns.len());
        p.insns.extend(b);
    }
    // The jumps to the chains, now that their places are known (JA's offset is 32 bits).
    for pc in base..p.insns.len() {
        if let (JA, _, _, chain) = p.insns[pc] {
            p.insns[pc].3 = (starts[chain as usize] - pc - 1) as u32;
        }
    }
    if p.insns.len() > 4096 {
        return Err(SeccompError::TooLong(p.insns.len()));
    }
    Ok(p)
}

/// How the search ends for a run of syscalls: an action, or the chain of conditional blocks
/// of one syscall (its index among the chains).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Leaf {
    Ret(u32),
    Chain(usize),
}

/// Syscall numbers `lo..=hi`, all ending the same way.
struct Run {
    lo: u32,
    hi: u32,
    leaf: Leaf,
}

impl Run {
    /// Its last instruction: the action, or a jump to its chain (resolved by `compile`).
    fn end(&self) -> Insn {
        match self.leaf {
            Leaf::Ret(action) => (RET_K, 0, 0, action),
            Leaf::Chain(i) => (JA, 0, 0, i as u32),
        }
    }
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
        out.push(r.end());
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

/// One syscall's conditional rules, each its conditions (ANDed) returning its action, tried in
/// order; when all fail, `fallback`.
fn chain_blocks(chain: &[&Rule], fallback: u32) -> Result<Vec<Insn>, SeccompError> {
    let mut out = Vec::new();
    for rule in chain {
        conditional_block(&mut out, rule)?;
    }
    out.push((RET_K, 0, 0, fallback));
    Ok(out)
}

/// The rule's conditions (ANDed), returning its action; on any failure the program goes on
/// after the block.
fn conditional_block(out: &mut Vec<Insn>, rule: &Rule) -> Result<(), SeccompError> {
    let mut b = Block { insns: Vec::new() };
    for c in &rule.conds {
        b.cond(c)?;
    }
    b.op(RET_K, To::Next, To::Next, rule.action);
    // The Fail label: what follows the block.
    let fail_at = b.insns.len();
    for (i, (code, jt, jf, k)) in b.insns.iter().enumerate() {
        let resolve = |t: To| -> Result<u8, SeccompError> {
            let off = match t {
                To::Next => 0,
                To::Skip(n) => n as usize,
                To::Fail => fail_at - i - 1,
            };
            u8::try_from(off).map_err(|_| SeccompError::TooComplex)
        };
        out.push((*code, resolve(*jt)?, resolve(*jf)?, *k));
    }
    Ok(())
}

/// The number of a syscall by name on this architecture, if it has one.
pub fn syscall_nr(name: &str) -> Option<u32> {
    Sysno::from_str(name).ok().map(|s| s.id() as u32)
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

#[cfg(feature = "spec")]
mod profile;
#[cfg(feature = "spec")]
pub use profile::{from_json, from_spec};

#[cfg(test)]
mod tests;
