//! Hand-written message types for envd's `process` and `filesystem` packages.
//!
//! The field numbers, names and JSON names follow E2B's envd protocol (read from the
//! message descriptors shipped in the E2B SDK). Every `oneof` member is modelled as an
//! optional field of its parent: on the protobuf wire a oneof is just a set of
//! optional fields, and in proto3 JSON each member is a plain key, so this keeps one
//! flat struct serve both codecs. Only one member must be set at a time.

pub mod filesystem;
pub mod json;
pub mod process;
