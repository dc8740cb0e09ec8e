//! pyrt's image layers: a blob (gzip, zstd or plain tar) read once, streaming, in constant
//! memory: decompressed, digested (the blob and its uncompressed stream) and unpacked into a
//! directory under the rules of `unpack`. Used by the Python package for every layer, rootfs
//! tarball and archive put into a container.

mod entry;
pub mod error;
mod fsops;
pub mod inflate;
mod meta;
pub mod options;
mod tree;
pub mod unpack;
mod whiteout;

pub use error::LayerError;
pub use options::{Options, Stats, Whiteouts};
pub use unpack::unpack;
