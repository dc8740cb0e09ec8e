//! Timeouts given in seconds from Python, checked: no value can make a conversion panic.

use std::time::{Duration, Instant};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// A timeout in seconds as a duration: NaN and negative numbers are refused, and one too large
/// for a `Duration` (or infinity) means no limit, so no conversion can panic.
pub(crate) fn timeout_of(t: Option<f64>) -> PyResult<Option<Duration>> {
    match t {
        None => Ok(None),
        Some(s) if s.is_nan() || s < 0.0 => Err(PyValueError::new_err(format!(
            "timeout must be a non-negative number, not {s}"
        ))),
        Some(s) => Ok(Duration::try_from_secs_f64(s).ok()),
    }
}

/// The instant `timeout` seconds from now; None (no limit) when that lies beyond what an
/// `Instant` can hold.
pub(crate) fn deadline_of(t: Option<f64>) -> PyResult<Option<Instant>> {
    Ok(timeout_of(t)?.and_then(|d| Instant::now().checked_add(d)))
}
