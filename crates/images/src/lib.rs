//! The image store of the local backend.
//!
//! [`ImageStore`] resolves image references to unpacked, read-only layer directories that the
//! container runtime stacks with overlayfs (bottom layer first in [`ResolvedImage::layers`]).
//! Images come from three places:
//! - built-ins created at [`ImageStore::open`]: `host` (the host's `/usr`, `/etc`, … bind-mounted
//!   read-only over a small skeleton) and `pause` (a static PID-1 `/pause`);
//! - [`ImageStore::import`] of an OCI image layout or a `docker save` archive;
//! - [`ImageStore::ensure`] pulling from an OCI registry (plain HTTP for loopback registries).
//!
//! Everything is cached by digest under the root directory and written crash-safely (built in
//! `tmp/`, then renamed). Layer whiteouts are stored in overlayfs form (0/0 character devices and
//! `trusted.overlay.opaque=y`), so unpacking needs root.

mod builtin;
mod error;
mod import;
mod model;
mod pull;
mod reference;
mod store;
mod unpack;

pub use error::ImageError;
pub use model::{HostBind, ImageConfig, ImageSummary, ResolvedImage};
pub use reference::{Builtin, ImageRef, NamedRef};
pub use store::{ImageStore, StoreStats};
pub use unpack::{UnpackStats, unpack_layer};
