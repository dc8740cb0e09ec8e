//! The device cgroup on v2: a BPF program of type `BPF_PROG_TYPE_CGROUP_DEVICE`, attached to the
//! container's cgroup, that the kernel asks at every open and mknod of a device node.
//!
//! v1 keeps an allow-list that ordered `devices.allow`/`devices.deny` writes edit; the program
//! answers the same question from the same ordered rules: the *last* rule that matches the
//! request decides, and with none, the device is allowed (v1's list starts as "a *:* rwm", and
//! a spec that wants less starts with a deny-all rule, which then matches everything). An
//! allow rule matches when it grants every access asked for; a deny rule when it takes any.
//! The program is written here instruction by instruction (no compiler, no libbpf): it is a
//! chain of compares on the three fields of `struct bpf_cgroup_dev_ctx`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::DeviceRule;

/// `struct bpf_insn`: opcode, registers (dst low nibble, src high), offset, immediate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

// Opcodes (linux/bpf_common.h, linux/bpf.h).
const LDX_MEM_W: u8 = 0x61; // dst = *(u32 *)(src + off)
const MOV64_X: u8 = 0xbf; // dst = src
const MOV64_K: u8 = 0xb7; // dst = imm
const AND32_K: u8 = 0x54; // dst &= imm (32 bits)
const RSH32_K: u8 = 0x74; // dst >>= imm (32 bits)
const JNE_K: u8 = 0x55; // if dst != imm: pc += off
const JEQ_K: u8 = 0x15; // if dst == imm: pc += off
const EXIT: u8 = 0x95;

// The request, as loaded into registers: type (1 block, 2 char), access bits (1 mknod,
// 2 read, 4 write), major, minor; r7 is scratch, r0 the verdict (1 allow, 0 deny).
const CTX: u8 = 1;
const TYPE: u8 = 2;
const ACCESS: u8 = 3;
const MAJOR: u8 = 4;
const MINOR: u8 = 5;
const SCRATCH: u8 = 7;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

fn access_bits(access: &str) -> i32 {
    access.chars().fold(0, |bits, ch| {
        bits | match ch {
            'm' => 1,
            'r' => 2,
            'w' => 4,
            _ => 0,
        }
    })
}

/// The checks of one rule, jumping past its verdict when the request does not match; the
/// jump offsets are filled in once the block's length is known.
fn rule_block(rule: &DeviceRule) -> Vec<Insn> {
    let mut skips = Vec::new(); // the conditional jumps to the next block
    let mut b = Vec::new();
    let kind = match rule.kind {
        'b' => Some(1),
        'c' => Some(2),
        _ => None, // 'a': any type
    };
    if let Some(t) = kind {
        skips.push(b.len());
        b.push(insn(JNE_K, TYPE, 0, 0, t));
    }
    if rule.kind != 'a' {
        for (reg, v) in [(MAJOR, rule.major), (MINOR, rule.minor)] {
            if let Some(n) = v {
                skips.push(b.len());
                // (Device numbers fit 32 bits: the plan refuses larger ones.)
                b.push(insn(JNE_K, reg, 0, 0, n as u32 as i32));
            }
        }
    }
    let bits = access_bits(&rule.access);
    b.push(insn(MOV64_X, SCRATCH, ACCESS, 0, 0));
    if rule.allow {
        // Every access asked for is granted: nothing is left outside the rule's bits.
        b.push(insn(AND32_K, SCRATCH, 0, 0, !bits & 7));
        skips.push(b.len());
        b.push(insn(JNE_K, SCRATCH, 0, 0, 0));
    } else {
        // Some access asked for is taken.
        b.push(insn(AND32_K, SCRATCH, 0, 0, bits));
        skips.push(b.len());
        b.push(insn(JEQ_K, SCRATCH, 0, 0, 0));
    }
    b.push(insn(MOV64_K, 0, 0, 0, i32::from(rule.allow)));
    b.push(insn(EXIT, 0, 0, 0, 0));
    let end = b.len();
    for at in skips {
        b[at].off = (end - at - 1) as i16;
    }
    b
}

/// The program for `rules` (in the order the spec gives them).
pub fn program(rules: &[DeviceRule]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_MEM_W, TYPE, CTX, 0, 0), // access_type
        insn(MOV64_X, ACCESS, TYPE, 0, 0),
        insn(AND32_K, TYPE, 0, 0, 0xffff),
        insn(RSH32_K, ACCESS, 0, 0, 16),
        insn(LDX_MEM_W, MAJOR, CTX, 4, 0),
        insn(LDX_MEM_W, MINOR, CTX, 8, 0),
    ];
    for rule in rules.iter().rev() {
        p.extend(rule_block(rule));
    }
    p.push(insn(MOV64_K, 0, 0, 0, 1));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

fn encode(p: &[Insn]) -> Vec<u8> {
    let mut out = Vec::with_capacity(p.len() * 8);
    for i in p {
        out.push(i.code);
        out.push(i.regs);
        out.extend_from_slice(&i.off.to_le_bytes());
        out.extend_from_slice(&i.imm.to_le_bytes());
    }
    out
}

fn bpf(cmd: libc::c_long, attr: &mut [u8]) -> io::Result<i64> {
    // SAFETY: bpf(2) with an attribute buffer of the length given, zeroed where unused.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

fn load(code: &[u8], log: Option<&mut Vec<u8>>) -> io::Result<OwnedFd> {
    let license = c"Apache-2.0";
    // union bpf_attr, BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, log_level, log_size,
    // log_buf (offsets 0, 4, 8, 16, 24, 28, 32).
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_CGROUP_DEVICE.to_ne_bytes());
    attr[4..8].copy_from_slice(&((code.len() / 8) as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(code.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    if let Some(log) = log {
        attr[24..28].copy_from_slice(&1u32.to_ne_bytes());
        attr[28..32].copy_from_slice(&(log.len() as u32).to_ne_bytes());
        attr[32..40].copy_from_slice(&(log.as_mut_ptr() as u64).to_ne_bytes());
    }
    let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: the kernel just gave us this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Loads the program for `rules` and attaches it to the cgroup directory `dir`. The
/// attachment keeps the program alive; it goes with the cgroup.
pub fn attach(dir: &Path, rules: &[DeviceRule]) -> io::Result<()> {
    let code = encode(&program(rules));
    let prog = load(&code, None).or_else(|e| {
        // Again with the verifier's log, for the reason (a log too small fails the load).
        let mut log = vec![0u8; 1 << 16];
        match load(&code, Some(&mut log)) {
            Ok(fd) => Ok(fd),
            Err(_) => {
                let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
                let why = String::from_utf8_lossy(&log[..end]).trim().to_string();
                Err(io::Error::new(
                    e.kind(),
                    format!("loading the device filter: {e} {why}"),
                ))
            }
        }
    })?;
    let cgroup = std::fs::File::open(dir)?;
    // BPF_PROG_ATTACH: target_fd, attach_bpf_fd, attach_type, attach_flags.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(cgroup.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
    attr[8..12].copy_from_slice(&BPF_CGROUP_DEVICE.to_ne_bytes());
    attr[12..16].copy_from_slice(&BPF_F_ALLOW_MULTI.to_ne_bytes());
    bpf(BPF_PROG_ATTACH, &mut attr)
        .map_err(|e| io::Error::new(e.kind(), format!("attaching the device filter: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program on a request, as the kernel would: a small interpreter of the few
    /// instructions it uses.
    fn verdict(p: &[Insn], kind: u32, access: u32, major: u32, minor: u32) -> u64 {
        let ctx = [(access << 16) | kind, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_MEM_W => r[dst] = u64::from(ctx[i.off as usize / 4]),
                MOV64_X => r[dst] = r[src],
                MOV64_K => r[dst] = i.imm as u64,
                AND32_K => r[dst] = (r[dst] as u32 & i.imm as u32) as u64,
                RSH32_K => r[dst] = ((r[dst] as u32) >> i.imm) as u64,
                JNE_K if r[dst] != i.imm as u32 as u64 => pc += i.off as usize,
                JEQ_K if r[dst] == i.imm as u32 as u64 => pc += i.off as usize,
                JNE_K | JEQ_K => {}
                EXIT => return r[0],
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    fn rule(
        allow: bool,
        kind: char,
        major: Option<i64>,
        minor: Option<i64>,
        a: &str,
    ) -> DeviceRule {
        DeviceRule {
            allow,
            kind,
            major,
            minor,
            access: a.into(),
        }
    }

    #[test]
    fn the_last_matching_rule_decides() {
        let p = program(&[
            rule(false, 'a', None, None, "rwm"),
            rule(true, 'c', Some(1), Some(3), "rwm"),
            rule(true, 'c', Some(10), Some(237), "r"),
            rule(true, 'c', None, None, "m"),
            rule(false, 'c', Some(1), Some(3), "w"),
        ]);
        const R: u32 = 2;
        const W: u32 = 4;
        const M: u32 = 1;
        assert_eq!(verdict(&p, 2, R, 1, 3), 1); // null: read still allowed
        assert_eq!(verdict(&p, 2, W, 1, 3), 0); // its write denied by the last rule
        assert_eq!(verdict(&p, 2, R, 10, 237), 1);
        assert_eq!(verdict(&p, 2, R | W, 10, 237), 0); // the rule grants only read
        assert_eq!(verdict(&p, 2, M, 8, 8), 1); // mknod of any char device
        assert_eq!(verdict(&p, 1, M, 8, 0), 0); // but not of a block device
        assert_eq!(verdict(&p, 2, R, 4, 1), 0); // anything else: the deny-all
    }

    #[test]
    fn without_rules_everything_is_allowed_as_in_v1() {
        let p = program(&[]);
        assert_eq!(verdict(&p, 1, 7, 8, 0), 1);
        let p = program(&[rule(true, 'c', Some(1), Some(3), "rwm")]);
        assert_eq!(verdict(&p, 1, 2, 8, 0), 1);
    }
}
