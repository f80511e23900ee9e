//! agentbox core: the domain model and lifecycle logic, free of IO.
//!
//! Everything that decides (claim order, phase transitions, reconcile actions, validation) lives
//! here; everything that acts (containers, SQLite, HTTP) lives in other crates behind the
//! [`backend::Backend`] and [`store::Store`] traits.

pub mod autoscale;
pub mod backend;
pub mod claim;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod duration;
pub mod error;
pub mod identity;
pub mod model;
pub mod quantity;
pub mod reconcile;
pub mod store;
pub mod validate;

#[cfg(any(test, feature = "fake"))]
pub mod fake_backend;
#[cfg(any(test, feature = "fake"))]
pub mod fake_store;
