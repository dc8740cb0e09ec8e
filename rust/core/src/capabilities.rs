//! Capability sets: named in the spec, applied in the child just before exec.

#[cfg(feature = "spec")]
use std::str::FromStr;

#[cfg(feature = "spec")]
use caps::Capability;
use std::sync::atomic::{AtomicU64, Ordering};

use caps::{CapSet, CapsHashSet};
#[cfg(feature = "spec")]
use oci_spec::runtime::{Capabilities, LinuxCapabilities};
use serde::{Deserialize, Serialize};

/// A capability the spec names that the kernel's list does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown capability {name}")]
pub struct CapabilityError {
    /// The name as the spec gave it, with the "CAP_" prefix.
    pub name: String,
}

/// The five sets as bit masks (bit n = capability number n).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct CapSets {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
}

#[cfg(feature = "spec")]
fn mask(set: &Option<Capabilities>) -> Result<u64, CapabilityError> {
    let mut m = 0u64;
    for c in set.iter().flatten() {
        // oci-spec prints "CHOWN"; the caps crate knows "CAP_CHOWN".
        let name = format!("CAP_{c}");
        let cap = Capability::from_str(&name).map_err(|_| CapabilityError { name })?;
        m |= cap.bitmask();
    }
    Ok(m)
}

#[cfg(feature = "spec")]
pub fn from_spec(c: &LinuxCapabilities) -> Result<CapSets, CapabilityError> {
    Ok(CapSets {
        bounding: mask(c.bounding())?,
        effective: mask(c.effective())?,
        permitted: mask(c.permitted())?,
        inheritable: mask(c.inheritable())?,
        ambient: mask(c.ambient())?,
    })
}

fn hashset(m: u64) -> CapsHashSet {
    caps::all()
        .into_iter()
        .filter(|c| m & c.bitmask() != 0)
        .collect()
}

/// This process's bounding set when it is known without asking the kernel (`u64::MAX`: not
/// known). An exec server learns its own once (`narrow_bounding`) and its forks inherit the
/// value with the rest of its memory: an exec then drops nothing it lacks already and reads
/// nothing back, where it made 41 `prctl` calls (~3% of an exec here).
static KNOWN_BOUNDING: AtomicU64 = AtomicU64::new(u64::MAX);

fn known_bounding() -> Option<u64> {
    Some(KNOWN_BOUNDING.load(Ordering::Relaxed)).filter(|b| *b != u64::MAX)
}

/// The bounding set, read from the kernel one capability at a time.
fn read_bounding() -> u64 {
    caps::all()
        .into_iter()
        .filter(|c| caps::has_cap(None, CapSet::Bounding, *c).unwrap_or(false))
        .fold(0, |m, c| m | c.bitmask())
}

/// Cuts the bounding set to `keep` (an exec server's, to its container's) and remembers what
/// it is then, for this process and its forks (see `KNOWN_BOUNDING`).
pub fn narrow_bounding(keep: u64) -> Result<u64, caps::errors::CapsError> {
    drop_bounding(keep)?;
    let now = read_bounding();
    KNOWN_BOUNDING.store(now, Ordering::Relaxed);
    Ok(now)
}

/// Drops every capability outside `keep` from the bounding set. Needs CAP_SETPCAP, so it runs
/// before the process changes its user. Dropping is idempotent, so there is no read before each
/// drop (the caps crate's `drop` reads first: 41 system calls more at every start); a
/// capability this kernel does not know (EINVAL) is not in the set to begin with. Where the
/// set is known (`KNOWN_BOUNDING`), only what it holds outside `keep` is dropped.
pub fn drop_bounding(keep: u64) -> Result<(), caps::errors::CapsError> {
    let known = known_bounding();
    for cap in caps::all() {
        if keep & cap.bitmask() != 0 || known.is_some_and(|b| b & cap.bitmask() == 0) {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        let r =
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap.index() as libc::c_ulong, 0, 0, 0) };
        if r != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return Err(caps::errors::CapsError::from(format!(
                "PR_CAPBSET_DROP {cap}: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    if let Some(b) = known {
        KNOWN_BOUNDING.store(b & keep, Ordering::Relaxed);
    }
    Ok(())
}

/// Sets effective, permitted, inheritable and ambient, in an order the kernel accepts whether
/// the sets grow or shrink: effective must stay within permitted, ambient within both permitted
/// and inheritable.
pub fn apply(s: &CapSets) -> Result<(), caps::errors::CapsError> {
    // A capability the runtime itself lacks (this VM has no CAP_SYS_RESOURCE, for one) cannot
    // be given: "all capabilities" means all that we hold. Only those the sets name are asked
    // about, one system call each (a read of the whole bounding set is 41, at every start).
    let named = s.bounding | s.effective | s.permitted | s.inheritable | s.ambient;
    let mut held = known_bounding().unwrap_or(0);
    for cap in caps::all() {
        // (An error is a capability this kernel does not know: not held.)
        if known_bounding().is_none()
            && named & cap.bitmask() != 0
            && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false)
        {
            held |= cap.bitmask();
        }
    }
    let s = CapSets {
        bounding: s.bounding & held,
        effective: s.effective & held,
        permitted: s.permitted & held,
        inheritable: s.inheritable & held,
        // The kernel keeps ambient within permitted and inheritable; a spec that asks for more
        // (`runc spec` lists ambient capabilities but no inheritable ones) gets what can be
        // had, as runc gives it, rather than a failed start.
        ambient: s.ambient & held & s.permitted & s.inheritable,
    };
    caps::clear(None, CapSet::Ambient)?;
    caps::set(None, CapSet::Effective, &hashset(s.effective & s.permitted))?;
    caps::set(None, CapSet::Permitted, &hashset(s.permitted))?;
    caps::set(None, CapSet::Inheritable, &hashset(s.inheritable))?;
    caps::set(None, CapSet::Effective, &hashset(s.effective))?;
    for cap in caps::all() {
        if s.ambient & cap.bitmask() != 0 {
            caps::raise(None, CapSet::Ambient, cap)?;
        }
    }
    Ok(())
}

#[cfg(all(test, feature = "spec"))]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_bits() {
        let c: LinuxCapabilities = serde_json::from_str(
            r#"{"bounding":["CAP_CHOWN","CAP_KILL"],"effective":["CAP_KILL"]}"#,
        )
        .unwrap();
        let s = from_spec(&c).unwrap();
        assert_eq!(s.bounding, (1 << 0) | (1 << 5));
        assert_eq!(s.effective, 1 << 5);
        assert_eq!(s.ambient, 0);
    }
}
