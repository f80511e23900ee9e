//! agentbox server: the lifecycle engine and the native HTTP API.

pub mod agent;
pub mod auth;
pub mod authn;
pub mod e2b;
pub mod engine;
pub mod gateway;
pub mod http;
pub mod keys;
pub mod proxy;
