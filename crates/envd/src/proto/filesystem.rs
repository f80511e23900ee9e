//! Messages of envd's `filesystem` package (service `filesystem.Filesystem`).
#![allow(missing_docs)]

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::json::Timestamp;

macro_rules! msg {
    ($(#[$m:meta])* pub struct $name:ident { $($body:tt)* }) => {
        $(#[$m])*
        #[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase", default)]
        pub struct $name { $($body)* }
    };
}

msg!(
    pub struct MoveRequest {
        #[prost(string, tag = "1")]
        pub source: String,
        #[prost(string, tag = "2")]
        pub destination: String,
    }
);

msg!(
    pub struct EntryResponse {
        #[prost(message, optional, tag = "1")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub entry: Option<EntryInfo>,
    }
);

msg!(
    pub struct PathRequest {
        #[prost(string, tag = "1")]
        pub path: String,
    }
);

msg!(
    pub struct Empty {}
);

msg!(
    pub struct EntryInfo {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(enumeration = "FileType", tag = "2")]
        #[serde(rename = "type", with = "super::json::file_type")]
        pub r#type: i32,
        #[prost(string, tag = "3")]
        pub path: String,
        #[prost(int64, tag = "4")]
        #[serde(with = "super::json::i64_str")]
        pub size: i64,
        #[prost(uint32, tag = "5")]
        pub mode: u32,
        #[prost(string, tag = "6")]
        pub permissions: String,
        #[prost(string, tag = "7")]
        pub owner: String,
        #[prost(string, tag = "8")]
        pub group: String,
        #[prost(message, optional, tag = "9")]
        #[serde(alias = "modified_time", skip_serializing_if = "Option::is_none")]
        pub modified_time: Option<Timestamp>,
        #[prost(string, optional, tag = "10")]
        #[serde(alias = "symlink_target", skip_serializing_if = "Option::is_none")]
        pub symlink_target: Option<String>,
        #[prost(map = "string, string", tag = "11")]
        pub metadata: HashMap<String, String>,
    }
);

msg!(
    pub struct ListDirRequest {
        #[prost(string, tag = "1")]
        pub path: String,
        #[prost(uint32, tag = "2")]
        pub depth: u32,
    }
);

msg!(
    pub struct ListDirResponse {
        #[prost(message, repeated, tag = "1")]
        pub entries: Vec<EntryInfo>,
    }
);

msg!(
    /// Request of `WatchDir` and `CreateWatcher` (same fields).
    pub struct WatchDirRequest {
        #[prost(string, tag = "1")]
        pub path: String,
        #[prost(bool, tag = "2")]
        pub recursive: bool,
        #[prost(bool, tag = "3")]
        #[serde(alias = "include_entry")]
        pub include_entry: bool,
        #[prost(bool, tag = "4")]
        #[serde(alias = "allow_network_mounts")]
        pub allow_network_mounts: bool,
    }
);

msg!(
    pub struct FilesystemEvent {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(enumeration = "EventType", tag = "2")]
        #[serde(rename = "type", with = "super::json::event_type")]
        pub r#type: i32,
        #[prost(message, optional, tag = "3")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub entry: Option<EntryInfo>,
    }
);

msg!(
    /// Stream item: exactly one of start, filesystem, keepalive is set.
    pub struct WatchDirResponse {
        #[prost(message, optional, tag = "1")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub start: Option<Empty>,
        #[prost(message, optional, tag = "2")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub filesystem: Option<FilesystemEvent>,
        #[prost(message, optional, tag = "3")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub keepalive: Option<Empty>,
    }
);

msg!(
    /// `CreateWatcherResponse`, `GetWatcherEventsRequest` and `RemoveWatcherRequest`.
    pub struct WatcherId {
        #[prost(string, tag = "1")]
        #[serde(alias = "watcher_id")]
        pub watcher_id: String,
    }
);

msg!(
    pub struct GetWatcherEventsResponse {
        #[prost(message, repeated, tag = "1")]
        pub events: Vec<FilesystemEvent>,
    }
);

/// Kind of a filesystem entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum FileType {
    Unspecified = 0,
    File = 1,
    Directory = 2,
    Symlink = 3,
}

/// Kind of a watcher event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum EventType {
    Unspecified = 0,
    Create = 1,
    Write = 2,
    Remove = 3,
    Rename = 4,
    Chmod = 5,
}
