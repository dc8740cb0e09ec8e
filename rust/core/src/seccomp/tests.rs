//! The compiler's tests, against a small classic-BPF interpreter.

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
            JA => pc += k as usize,
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
    // Sixteen bytes that are not all hex digits (one of them outside ASCII) are refused too.
    assert!(serde_json::from_str::<Program>(r#"{"insns":"002000000000000g"}"#).is_err());
    assert!(serde_json::from_str::<Program>(r#"{"insns":"00200000000000é"}"#).is_err());
    assert!(serde_json::from_str::<Program>(r#"{"insns":"+020000000000004"}"#).is_err());
    let upper = serde_json::from_str::<Program>(r#"{"insns":"001501FFC000003E"}"#).unwrap();
    assert_eq!(upper.insns, vec![(0x15, 1, 255, 0xC000_003E)]);
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
