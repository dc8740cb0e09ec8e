//! The calling process's mount table (/proc/self/mountinfo), read again only when its set of
//! mounts changed. `listmount(2)` (Linux 6.8) lists the namespace's mounts by their unique ids,
//! which are never reused: one call, a few microseconds, says whether anything was mounted or
//! unmounted since the last read, which took ~0.1 ms in a new container's namespace. (A poll
//! of a held descriptor of the file would say it too, but pyrt keeps no descriptor of its own
//! open between calls; the containers' mounts happen in namespaces of their own and do not
//! count.) Before 6.8, the table is read at every call.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};

struct Cached {
    pid: u32,
    ids: Vec<u64>,
    text: Arc<String>,
}

/// The last table read, with what it was read for.
static CACHE: Mutex<Option<Cached>> = Mutex::new(None);

/// The mount table as it is now.
pub fn current() -> io::Result<Arc<String>> {
    let ids = mount_ids();
    let pid = std::process::id();
    // Never waited for (a start that finds it taken reads the table itself): a process forked
    // while another of its threads held it would otherwise hang at its first start.
    let mut cache = match CACHE.try_lock() {
        Ok(c) => Some(c),
        Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    };
    if let (Some(Some(c)), Some(now)) = (cache.as_deref(), ids.as_ref()) {
        // (A forked child may have a namespace of its own, whose ids are other ones.)
        if c.pid == pid && &c.ids == now {
            return Ok(c.text.clone());
        }
    }
    let mut text = String::with_capacity(64 * 1024);
    std::fs::File::open("/proc/self/mountinfo")?.read_to_string(&mut text)?;
    let text = Arc::new(text);
    // Listed before the read: a mount between the two shows as a change at the next call.
    if let Some(cache) = cache.as_deref_mut() {
        *cache = ids.map(|ids| Cached {
            pid,
            ids,
            text: text.clone(),
        });
    }
    Ok(text)
}

/// The unique ids of the mounts of the caller's namespace, or None before Linux 6.8 (or with
/// more mounts than are looked at).
fn mount_ids() -> Option<Vec<u64>> {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        /// `struct mnt_id_req`, its first version: the namespace is the caller's.
        #[repr(C)]
        struct Req {
            size: u32,
            spare: u32,
            mnt_id: u64,
            param: u64,
        }
        const SYS_LISTMOUNT: libc::c_long = 458;
        const LSMT_ROOT: u64 = u64::MAX;
        let req = Req {
            size: std::mem::size_of::<Req>() as u32,
            spare: 0,
            mnt_id: LSMT_ROOT,
            param: 0,
        };
        let mut ids = vec![0u64; 4096];
        // SAFETY: the request and a buffer of `ids.len()` ids, both ours, for the call.
        let n = unsafe { libc::syscall(SYS_LISTMOUNT, &req, ids.as_mut_ptr(), ids.len(), 0) };
        let n = usize::try_from(n).ok().filter(|&n| n < ids.len())?;
        ids.truncate(n);
        Some(ids)
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_read_once_until_it_changes() {
        let a = current().unwrap();
        let b = current().unwrap();
        assert!(a.contains(" / "), "{a}");
        if mount_ids().is_some() {
            assert!(Arc::ptr_eq(&a, &b), "read again without a change");
        }
        // A caller that finds the cache in use reads the table itself. (Here, not in a test of
        // its own: held in a parallel test, the lock would make the reads above miss the
        // cache. Held as a thread of a forked parent would have left it: waiting would hang.)
        let held = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        let c = current().unwrap();
        drop(held);
        assert!(c.contains(" / ") && !Arc::ptr_eq(&a, &c), "{c}");
    }
}
