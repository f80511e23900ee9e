//! Messages of envd's `process` package (service `process.Process`).
#![allow(missing_docs)]

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

macro_rules! msg {
    ($(#[$m:meta])* pub struct $name:ident { $($body:tt)* }) => {
        $(#[$m])*
        #[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase", default)]
        pub struct $name { $($body)* }
    };
}

msg!(
    pub struct PtySize {
        #[prost(uint32, tag = "1")]
        pub cols: u32,
        #[prost(uint32, tag = "2")]
        pub rows: u32,
    }
);

msg!(
    pub struct Pty {
        #[prost(message, optional, tag = "1")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub size: Option<PtySize>,
    }
);

msg!(
    pub struct ProcessConfig {
        #[prost(string, tag = "1")]
        pub cmd: String,
        #[prost(string, repeated, tag = "2")]
        pub args: Vec<String>,
        #[prost(map = "string, string", tag = "3")]
        pub envs: HashMap<String, String>,
        #[prost(string, optional, tag = "4")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub cwd: Option<String>,
    }
);

msg!(
    pub struct ListRequest {}
);

msg!(
    pub struct ProcessInfo {
        #[prost(message, optional, tag = "1")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub config: Option<ProcessConfig>,
        #[prost(uint32, tag = "2")]
        pub pid: u32,
        #[prost(string, optional, tag = "3")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub tag: Option<String>,
    }
);

msg!(
    pub struct ListResponse {
        #[prost(message, repeated, tag = "1")]
        pub processes: Vec<ProcessInfo>,
    }
);

msg!(
    pub struct StartRequest {
        #[prost(message, optional, tag = "1")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub process: Option<ProcessConfig>,
        #[prost(message, optional, tag = "2")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub pty: Option<Pty>,
        #[prost(string, optional, tag = "3")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub tag: Option<String>,
        #[prost(bool, optional, tag = "4")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub stdin: Option<bool>,
    }
);

msg!(
    pub struct UpdateRequest {
        #[prost(message, optional, tag = "1")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub process: Option<ProcessSelector>,
        #[prost(message, optional, tag = "2")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub pty: Option<Pty>,
    }
);

msg!(
    pub struct UpdateResponse {}
);

msg!(
    /// `ProcessEvent`: exactly one of start, data, end, keepalive is set.
    pub struct ProcessEvent {
        #[prost(message, optional, tag = "1")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub start: Option<StartEvent>,
        #[prost(message, optional, tag = "2")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub data: Option<DataEvent>,
        #[prost(message, optional, tag = "3")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub end: Option<EndEvent>,
        #[prost(message, optional, tag = "4")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub keepalive: Option<KeepAlive>,
    }
);

msg!(
    pub struct StartEvent {
        #[prost(uint32, tag = "1")]
        pub pid: u32,
    }
);

msg!(
    /// Output chunk: exactly one of stdout, stderr, pty is set.
    pub struct DataEvent {
        #[prost(bytes = "vec", optional, tag = "1")]
        #[serde(with = "super::json::opt_bytes", skip_serializing_if = "Option::is_none")]
        pub stdout: Option<Vec<u8>>,
        #[prost(bytes = "vec", optional, tag = "2")]
        #[serde(with = "super::json::opt_bytes", skip_serializing_if = "Option::is_none")]
        pub stderr: Option<Vec<u8>>,
        #[prost(bytes = "vec", optional, tag = "3")]
        #[serde(with = "super::json::opt_bytes", skip_serializing_if = "Option::is_none")]
        pub pty: Option<Vec<u8>>,
    }
);

msg!(
    pub struct EndEvent {
        #[prost(sint32, tag = "1")]
        #[serde(alias = "exit_code")]
        pub exit_code: i32,
        #[prost(bool, tag = "2")]
        pub exited: bool,
        #[prost(string, tag = "3")]
        pub status: String,
        #[prost(string, optional, tag = "4")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub error: Option<String>,
    }
);

msg!(
    pub struct KeepAlive {}
);

msg!(
    pub struct StartResponse {
        #[prost(message, optional, tag = "1")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub event: Option<ProcessEvent>,
    }
);

msg!(
    pub struct ConnectResponse {
        #[prost(message, optional, tag = "1")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub event: Option<ProcessEvent>,
    }
);

msg!(
    pub struct SendInputRequest {
        #[prost(message, optional, tag = "1")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub process: Option<ProcessSelector>,
        #[prost(message, optional, tag = "2")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub input: Option<ProcessInput>,
    }
);

msg!(
    pub struct SendInputResponse {}
);

msg!(
    /// Input chunk: exactly one of stdin, pty is set.
    pub struct ProcessInput {
        #[prost(bytes = "vec", optional, tag = "1")]
        #[serde(with = "super::json::opt_bytes", skip_serializing_if = "Option::is_none")]
        pub stdin: Option<Vec<u8>>,
        #[prost(bytes = "vec", optional, tag = "2")]
        #[serde(with = "super::json::opt_bytes", skip_serializing_if = "Option::is_none")]
        pub pty: Option<Vec<u8>>,
    }
);

msg!(
    /// Client-stream item: exactly one of start, data, keepalive is set.
    pub struct StreamInputRequest {
        #[prost(message, optional, tag = "1")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub start: Option<StreamInputStart>,
        #[prost(message, optional, tag = "2")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub data: Option<StreamInputData>,
        #[prost(message, optional, tag = "3")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub keepalive: Option<KeepAlive>,
    }
);

msg!(
    pub struct StreamInputStart {
        #[prost(message, optional, tag = "1")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub process: Option<ProcessSelector>,
    }
);

msg!(
    pub struct StreamInputData {
        #[prost(message, optional, tag = "2")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub input: Option<ProcessInput>,
    }
);

msg!(
    pub struct StreamInputResponse {}
);

msg!(
    pub struct SendSignalRequest {
        #[prost(message, optional, tag = "1")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub process: Option<ProcessSelector>,
        #[prost(enumeration = "Signal", tag = "2")]
        #[serde(with = "super::json::signal")]
        pub signal: i32,
    }
);

msg!(
    pub struct SendSignalResponse {}
);

msg!(
    pub struct CloseStdinRequest {
        #[prost(message, optional, tag = "1")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub process: Option<ProcessSelector>,
    }
);

msg!(
    pub struct CloseStdinResponse {}
);

msg!(
    pub struct ConnectRequest {
        #[prost(message, optional, tag = "1")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub process: Option<ProcessSelector>,
    }
);

msg!(
    /// Names a process: exactly one of pid, tag is set.
    pub struct ProcessSelector {
        #[prost(uint32, optional, tag = "1")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub pid: Option<u32>,
        #[prost(string, optional, tag = "2")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub tag: Option<String>,
    }
);

/// Signals a client may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Signal {
    Unspecified = 0,
    Sigterm = 15,
    Sigkill = 9,
}

impl ProcessEvent {
    /// A data event carrying one chunk on the given stream.
    pub fn data(kind: OutputKind, chunk: Vec<u8>) -> Self {
        let mut d = DataEvent::default();
        match kind {
            OutputKind::Stdout => d.stdout = Some(chunk),
            OutputKind::Stderr => d.stderr = Some(chunk),
            OutputKind::Pty => d.pty = Some(chunk),
        }
        ProcessEvent { data: Some(d), ..Default::default() }
    }
}

/// Which output stream a chunk came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    Stdout,
    Stderr,
    Pty,
}
