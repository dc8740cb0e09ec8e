//! The little of D-Bus that `--systemd-cgroup` needs: one method call at a time to systemd on
//! its private socket, a peer-to-peer connection (no bus daemon, no `Hello`).
//!
//! Hand-written rather than zbus: zbus 5 panics in its executor thread on the replies systemd
//! sends there (their sender is systemd's well-known name, which zbus accepts only as a unique
//! one), and a panic aborts pyrt-runc. The subset is small: EXTERNAL authentication, a
//! METHOD_CALL whose body is marshalled from `Arg`s, and the reply's type and error text.
//! Little-endian throughout, as the wire format allows either.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// A value to marshal, with the D-Bus type it is sent as.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Str(String),
    Bool(bool),
    U64(u64),
    U32Array(Vec<u32>),
    /// `a(sv)`: properties, each a name and a variant.
    Props(Vec<(String, Arg)>),
    /// `a(sa(sv))`: systemd's auxiliary units (always empty here).
    AuxUnits,
}

impl Arg {
    fn signature(&self) -> &'static str {
        match self {
            Arg::Str(_) => "s",
            Arg::Bool(_) => "b",
            Arg::U64(_) => "t",
            Arg::U32Array(_) => "au",
            Arg::Props(_) => "a(sv)",
            Arg::AuxUnits => "a(sa(sv))",
        }
    }
}

/// A marshalling buffer: every value is aligned from the start of the message.
struct Buf(Vec<u8>);

impl Buf {
    fn pad(&mut self, align: usize) {
        while self.0.len() % align != 0 {
            self.0.push(0);
        }
    }
    fn u32(&mut self, v: u32) {
        self.pad(4);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn string(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
    }
    fn signature(&mut self, s: &str) {
        self.0.push(s.len() as u8);
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
    }
    /// An array: its byte length (patched once known), padding to the elements' alignment
    /// (not counted in the length), then the elements.
    fn array(&mut self, elem_align: usize, fill: impl FnOnce(&mut Buf)) {
        self.u32(0);
        let at = self.0.len() - 4;
        self.pad(elem_align);
        let start = self.0.len();
        fill(self);
        let len = (self.0.len() - start) as u32;
        self.0[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }
    fn arg(&mut self, a: &Arg) {
        match a {
            Arg::Str(s) => self.string(s),
            Arg::Bool(b) => self.u32(u32::from(*b)),
            Arg::U64(v) => {
                self.pad(8);
                self.0.extend_from_slice(&v.to_le_bytes());
            }
            Arg::U32Array(v) => self.array(4, |b| v.iter().for_each(|x| b.u32(*x))),
            Arg::Props(props) => self.array(8, |b| {
                for (name, value) in props {
                    b.pad(8);
                    b.string(name);
                    b.signature(value.signature());
                    b.arg(value);
                }
            }),
            Arg::AuxUnits => self.array(8, |_| {}),
        }
    }
}

/// A METHOD_CALL message with serial `serial`.
pub fn method_call(serial: u32, path: &str, iface: &str, member: &str, args: &[Arg]) -> Vec<u8> {
    // The body is aligned as if it began at offset 0, which the header's padding to 8 makes
    // true; marshal it alone first for its length.
    let mut body = Buf(Vec::new());
    args.iter().for_each(|a| body.arg(a));
    let sig: String = args.iter().map(Arg::signature).collect();
    let mut m = Buf(vec![b'l', 1, 0, 1]);
    m.u32(body.0.len() as u32);
    m.u32(serial);
    m.array(8, |b| {
        let field = |b: &mut Buf, code: u8, typ: &str, put: &dyn Fn(&mut Buf)| {
            b.pad(8);
            b.0.push(code);
            b.signature(typ);
            put(b);
        };
        field(b, 1, "o", &|b| b.string(path));
        field(b, 2, "s", &|b| b.string(iface));
        field(b, 3, "s", &|b| b.string(member));
        if !sig.is_empty() {
            field(b, 8, "g", &|b| b.signature(&sig));
        }
    });
    m.pad(8);
    m.0.extend_from_slice(&body.0);
    m.0
}

/// What came back for a call: Ok, or the error's name and message.
#[derive(Debug, PartialEq)]
pub enum Reply {
    Return,
    Error { name: String, message: String },
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("D-Bus: {what}"))
}

/// Reads one message; returns (type, reply serial, error name, body).
fn read_message(r: &mut impl Read) -> io::Result<(u8, u32, String, Vec<u8>)> {
    let mut fixed = [0u8; 16];
    r.read_exact(&mut fixed)?;
    if fixed[0] != b'l' {
        return Err(bad("a big-endian reply (not expected from systemd)"));
    }
    let le = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let (body_len, fields_len) = (le(&fixed[4..8]) as usize, le(&fixed[12..16]) as usize);
    // A message is at most 128 MiB by the spec; systemd's replies are tiny.
    if body_len > 1 << 20 || fields_len > 1 << 16 {
        return Err(bad("an oversized reply"));
    }
    let header_end = (16 + fields_len).div_ceil(8) * 8;
    let mut rest = vec![0u8; header_end - 16 + body_len];
    r.read_exact(&mut rest)?;
    let fields = &rest[..fields_len];
    let (mut reply_serial, mut error_name) = (0u32, String::new());
    // Offsets below are from the message's start (fields begin at 16).
    let mut i = 0usize;
    let at = |i: usize| 16 + i;
    while i < fields.len() {
        i += (8 - at(i) % 8) % 8;
        let code = *fields.get(i).ok_or_else(|| bad("a truncated header"))?;
        let sig_len = *fields.get(i + 1).ok_or_else(|| bad("a truncated header"))? as usize;
        let sig = fields
            .get(i + 2..i + 2 + sig_len)
            .ok_or_else(|| bad("a truncated header"))?
            .to_vec();
        i += 3 + sig_len;
        match sig.as_slice() {
            b"u" => {
                i += (4 - at(i) % 4) % 4;
                let v = fields
                    .get(i..i + 4)
                    .ok_or_else(|| bad("a truncated header"))?;
                if code == 5 {
                    reply_serial = le(v);
                }
                i += 4;
            }
            b"s" | b"o" => {
                i += (4 - at(i) % 4) % 4;
                let n = le(fields
                    .get(i..i + 4)
                    .ok_or_else(|| bad("a truncated header"))?) as usize;
                let s = fields
                    .get(i + 4..i + 4 + n)
                    .ok_or_else(|| bad("a truncated header"))?;
                if code == 4 {
                    error_name = String::from_utf8_lossy(s).into_owned();
                }
                i += 4 + n + 1;
            }
            b"g" => {
                let n = *fields.get(i).ok_or_else(|| bad("a truncated header"))? as usize;
                i += 1 + n + 1;
            }
            _ => return Err(bad("a header field of an unexpected type")),
        }
    }
    Ok((
        fixed[1],
        reply_serial,
        error_name,
        rest[header_end - 16..].to_vec(),
    ))
}

/// A connection to a D-Bus peer (systemd's private socket), authenticated.
pub struct Peer {
    stream: BufReader<UnixStream>,
    serial: u32,
}

impl Peer {
    /// Connects and authenticates; a reply that takes longer than `timeout` is an error.
    pub fn connect(path: &Path, timeout: Duration) -> io::Result<Peer> {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(timeout))?;
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        let hex: String = uid
            .to_string()
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect();
        (&s).write_all(format!("\0AUTH EXTERNAL {hex}\r\n").as_bytes())?;
        let mut stream = BufReader::new(s);
        // One line, and a short one: a peer that never ends it cannot grow our memory.
        let mut line = String::new();
        (&mut stream).take(512).read_line(&mut line)?;
        if !line.starts_with("OK ") {
            return Err(bad(&format!("authentication refused: {}", line.trim())));
        }
        stream.get_ref().write_all(b"BEGIN\r\n")?;
        Ok(Peer { stream, serial: 0 })
    }

    /// Calls `member` and waits for its reply (other messages, such as signals, are skipped).
    pub fn call(
        &mut self,
        path: &str,
        iface: &str,
        member: &str,
        args: &[Arg],
    ) -> io::Result<Reply> {
        self.serial += 1;
        let serial = self.serial;
        self.stream
            .get_ref()
            .write_all(&method_call(serial, path, iface, member, args))?;
        loop {
            let (kind, reply_to, name, body) = read_message(&mut self.stream)?;
            if reply_to != serial {
                continue;
            }
            return Ok(match kind {
                2 => Reply::Return,
                3 => {
                    // An error's body starts with its message, a string.
                    let message = body
                        .get(0..4)
                        .map(|n| u32::from_le_bytes([n[0], n[1], n[2], n[3]]) as usize)
                        .and_then(|n| body.get(4..4 + n))
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .unwrap_or_default();
                    Reply::Error { name, message }
                }
                _ => continue,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_is_marshalled_as_the_spec_says() {
        let m = method_call(
            7,
            "/o",
            "i.f",
            "M",
            &[Arg::Str("ab".into()), Arg::Bool(true)],
        );
        assert_eq!(&m[..4], b"l\x01\x00\x01");
        let body_len = u32::from_le_bytes(m[4..8].try_into().unwrap()) as usize;
        assert_eq!(
            body_len,
            4 + 3 + 1 + 4,
            "\"ab\" (len, bytes, NUL), pad, bool"
        );
        assert_eq!(u32::from_le_bytes(m[8..12].try_into().unwrap()), 7);
        assert_eq!(m.len() % 8, body_len % 8, "the body starts 8-aligned");
        let body = &m[m.len() - body_len..];
        assert_eq!(body, b"\x02\x00\x00\x00ab\x00\x00\x01\x00\x00\x00");
        let fields = String::from_utf8_lossy(&m);
        assert!(
            fields.contains("sb"),
            "the body's signature is in the header"
        );
    }

    #[test]
    fn properties_are_structs_of_name_and_variant() {
        let mut b = Buf(Vec::new());
        b.arg(&Arg::Props(vec![("PIDs".into(), Arg::U32Array(vec![5]))]));
        // length, pad to 8, then "PIDs" (len 4, bytes, NUL), signature "au", pad, array of one u32.
        let expect: &[u8] = b"\x18\x00\x00\x00\x00\x00\x00\x00\x04\x00\x00\x00PIDs\x00\x02au\x00\x00\x00\x00\x04\x00\x00\x00\x05\x00\x00\x00";
        assert_eq!(b.0, expect);
    }

    #[test]
    fn an_error_reply_is_read_and_a_garbled_one_refused() {
        // A reply as systemd sends it: ERROR (3), REPLY_SERIAL 1, ERROR_NAME, SIGNATURE "s".
        let mut fields = Buf(vec![b'l', 3, 1, 1]);
        let body = {
            let mut b = Buf(Vec::new());
            b.string("no such unit");
            b.0
        };
        fields.u32(body.len() as u32);
        fields.u32(9);
        fields.array(8, |b| {
            b.pad(8);
            b.0.push(5);
            b.signature("u");
            b.u32(1);
            b.pad(8);
            b.0.push(4);
            b.signature("s");
            b.string("org.freedesktop.systemd1.NoSuchUnit");
            b.pad(8);
            b.0.push(8);
            b.signature("g");
            b.signature("s");
        });
        fields.pad(8);
        fields.0.extend_from_slice(&body);
        let (kind, serial, name, got) = read_message(&mut &fields.0[..]).unwrap();
        assert_eq!(
            (kind, serial, name.as_str()),
            (3, 1, "org.freedesktop.systemd1.NoSuchUnit")
        );
        assert_eq!(&got[4..16], b"no such unit");
        for cut in 0..fields.0.len() {
            assert!(read_message(&mut &fields.0[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = fields.0.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_message(&mut &huge[..]).is_err());
    }
}
