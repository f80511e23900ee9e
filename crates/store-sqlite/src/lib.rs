//! SQLite implementation of [`agentbox_core::store::Store`].
//!
//! [`SqliteStore`] keeps templates, pools, slots and sandboxes (live and history) in one database
//! file: each object as a JSON document plus the columns the store filters and orders on. The
//! schema is migrated forward at open (see `schema.rs`). Durability: committed writes survive a
//! crash of the process; a power loss may lose the last few transactions (WAL with
//! `synchronous=NORMAL`).

mod error;
mod schema;
mod store;

pub use store::SqliteStore;
