//! One tar entry's metadata, with its PAX records applied (uid, gid, fractional mtime, xattrs)
//! and the caller's overrides (owner, set-id bits).

use std::io::{self, Read};

use tar::EntryType;

use crate::options::Options;

/// One entry's metadata, with its PAX records applied (uid, gid, fractional mtime, xattrs).
pub(crate) struct Meta {
    pub(crate) kind: EntryType,
    pub(crate) name: Vec<u8>,
    pub(crate) link: Option<Vec<u8>>,
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) mtime_ns: i128,
    pub(crate) size: u64,
    pub(crate) dev: (u32, u32),
    pub(crate) xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

pub(crate) fn meta_of<R: Read>(e: &mut tar::Entry<'_, R>, opts: &Options) -> io::Result<Meta> {
    let h = e.header();
    let mut m = Meta {
        kind: h.entry_type(),
        name: e.path_bytes().into_owned(),
        link: e.link_name_bytes().map(|l| l.into_owned()),
        mode: h.mode().unwrap_or(0o644),
        uid: h.uid().unwrap_or(0) as u32,
        gid: h.gid().unwrap_or(0) as u32,
        mtime_ns: i128::from(h.mtime().unwrap_or(0)) * 1_000_000_000,
        size: e.size(),
        dev: (
            h.device_major().ok().flatten().unwrap_or(0),
            h.device_minor().ok().flatten().unwrap_or(0),
        ),
        xattrs: Vec::new(),
    };
    if let Some(pax) = e.pax_extensions()? {
        for ext in pax.flatten() {
            let (Ok(key), value) = (ext.key(), ext.value_bytes()) else {
                continue;
            };
            let text = std::str::from_utf8(value).unwrap_or("");
            match key {
                "uid" => m.uid = text.parse().unwrap_or(m.uid),
                "gid" => m.gid = text.parse().unwrap_or(m.gid),
                "mtime" => m.mtime_ns = pax_time(text).unwrap_or(m.mtime_ns),
                _ => {
                    if let Some(attr) = key.strip_prefix("SCHILY.xattr.") {
                        m.xattrs.push((attr.as_bytes().to_vec(), value.to_vec()));
                    }
                }
            }
        }
    }
    if let Some((uid, gid)) = opts.owner {
        (m.uid, m.gid) = (uid, gid);
    }
    if opts.to_host {
        m.mode &= !0o6000;
    }
    Ok(m)
}

/// A PAX time ("1700000000.123456789", maybe negative) in nanoseconds.
pub(crate) fn pax_time(text: &str) -> Option<i128> {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs: i128 = whole.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let mut ns: i128 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    for _ in digits.len()..9 {
        ns *= 10;
    }
    Some(if whole.starts_with('-') {
        secs * 1_000_000_000 - ns
    } else {
        secs * 1_000_000_000 + ns
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        assert_eq!(pax_time("1.5"), Some(1_500_000_000));
        assert_eq!(pax_time("-1.25"), Some(-1_250_000_000));
        assert_eq!(pax_time("12"), Some(12_000_000_000));
        assert_eq!(pax_time("x"), None);
    }
}
