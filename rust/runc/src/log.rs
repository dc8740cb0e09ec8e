//! `--log FILE --log-format text|json`: where errors and warnings go besides stderr. containerd's
//! shim reads the last `{"level","msg","time"}` line of its log.json to report a failure.

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

struct Sink {
    path: Option<PathBuf>,
    json: bool,
}

static SINK: OnceLock<Sink> = OnceLock::new();

pub fn init(path: Option<PathBuf>, format: &str) {
    let _ = SINK.set(Sink {
        path,
        json: format == "json",
    });
}

/// RFC 3339 in UTC with nanoseconds, from the realtime clock.
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs() as i64, d.subsec_nanos())
}

pub fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z.rem_euclid(146097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Writes one message at `level` ("error", "warning") to stderr and the log file.
pub fn write(level: &str, msg: &str) {
    eprintln!("pyrt-runc: {msg}");
    let Some(sink) = SINK.get() else { return };
    let Some(path) = &sink.path else { return };
    let line = if sink.json {
        serde_json::json!({"level": level, "msg": msg, "time": now_rfc3339()}).to_string()
    } else {
        format!("time=\"{}\" level={level} msg={msg:?}", now_rfc3339())
    };
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}
