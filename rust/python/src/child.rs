//! The embedded pyrt-child: the process image every container start executes, kept in a
//! memfd made once per process.

use std::sync::OnceLock;

use pyrt_core::report::{SetupError, Stage};
use pyrt_core::spawn::ChildImage;

pub(crate) static CHILD_BIN: &[u8] = include_bytes!(env!("PYRT_CHILD_BIN"));

pub(crate) fn child_image() -> Result<&'static ChildImage, SetupError> {
    static IMAGE: OnceLock<Result<ChildImage, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| ChildImage::from_bytes(CHILD_BIN).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| {
            SetupError::new(
                Stage::Spawn,
                libc::EIO,
                format!("preparing the pyrt-child memfd: {e}"),
            )
        })
}
