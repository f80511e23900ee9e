//! serde helpers implementing the proto3 JSON mapping for the field kinds prost's
//! derives do not cover: `bytes` as base64, 64-bit integers as strings, enums by name,
//! `google.protobuf.Timestamp` as RFC 3339.

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serializer};

/// `optional bytes` as standard base64 (accepting URL-safe and unpadded input).
pub mod opt_bytes {
    use super::*;

    /// Serializes present bytes as base64.
    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b)),
            None => s.serialize_none(),
        }
    }

    /// Accepts any base64 alphabet, padded or not.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        let trimmed = text.trim_end_matches('=');
        let std = base64::engine::general_purpose::STANDARD_NO_PAD.decode(trimmed);
        let out = match std {
            Ok(v) => v,
            Err(_) => {
                base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(trimmed).map_err(serde::de::Error::custom)?
            }
        };
        Ok(Some(out))
    }
}

/// `int64` as a decimal string (accepting a number on input).
pub mod i64_str {
    use super::*;

    /// Serializes as a string, as proto3 JSON requires for 64-bit integers.
    pub fn serialize<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    /// Accepts a number or a numeric string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Number(n) => n.as_i64().ok_or_else(|| serde::de::Error::custom("int64 out of range")),
            serde_json::Value::String(s) => s.parse().map_err(serde::de::Error::custom),
            serde_json::Value::Null => Ok(0),
            other => Err(serde::de::Error::custom(format!("expected int64, got {other}"))),
        }
    }
}

/// Declares a serde module for a prost enum field (`i32`) using the value names.
macro_rules! enum_json {
    ($modname:ident, $( $num:literal => $name:literal ),+ $(,)?) => {
        /// Proto3 JSON mapping of this enum: its value name, or its number on input.
        pub mod $modname {
            use serde::{Deserialize, Deserializer, Serializer};

            /// Serializes the value name (the number when unknown).
            pub fn serialize<S: Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
                match *v {
                    $( $num => s.serialize_str($name), )+
                    other => s.serialize_i32(other),
                }
            }

            /// Accepts a value name or a number.
            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
                match serde_json::Value::deserialize(d)? {
                    serde_json::Value::Number(n) => n
                        .as_i64()
                        .and_then(|n| i32::try_from(n).ok())
                        .ok_or_else(|| serde::de::Error::custom("enum value out of range")),
                    serde_json::Value::String(s) => match s.as_str() {
                        $( $name => Ok($num), )+
                        other => Err(serde::de::Error::custom(format!("unknown enum value {other}"))),
                    },
                    serde_json::Value::Null => Ok(0),
                    other => Err(serde::de::Error::custom(format!("expected an enum, got {other}"))),
                }
            }
        }
    };
}

enum_json!(signal, 0 => "SIGNAL_UNSPECIFIED", 15 => "SIGNAL_SIGTERM", 9 => "SIGNAL_SIGKILL");
enum_json!(file_type, 0 => "FILE_TYPE_UNSPECIFIED", 1 => "FILE_TYPE_FILE", 2 => "FILE_TYPE_DIRECTORY", 3 => "FILE_TYPE_SYMLINK");
enum_json!(event_type, 0 => "EVENT_TYPE_UNSPECIFIED", 1 => "EVENT_TYPE_CREATE", 2 => "EVENT_TYPE_WRITE", 3 => "EVENT_TYPE_REMOVE", 4 => "EVENT_TYPE_RENAME", 5 => "EVENT_TYPE_CHMOD");

/// `google.protobuf.Timestamp` (field 1 seconds, field 2 nanos), JSON as RFC 3339.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Timestamp {
    /// Seconds since the Unix epoch.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Sub-second nanoseconds.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl serde::Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let nanos = u32::try_from(self.nanos).unwrap_or(0);
        let dt = chrono::DateTime::from_timestamp(self.seconds, nanos).unwrap_or_default();
        s.serialize_str(&dt.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let dt = chrono::DateTime::parse_from_rfc3339(&text).map_err(serde::de::Error::custom)?;
        Ok(Timestamp { seconds: dt.timestamp(), nanos: i32::try_from(dt.timestamp_subsec_nanos()).unwrap_or(0) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct B {
        #[serde(with = "opt_bytes", default)]
        b: Option<Vec<u8>>,
        #[serde(with = "signal", default)]
        s: i32,
    }

    #[test]
    fn bytes_and_enums_follow_proto3_json() {
        let v = serde_json::to_string(&B { b: Some(b"hi\n".to_vec()), s: 9 }).unwrap();
        assert_eq!(v, r#"{"b":"aGkK","s":"SIGNAL_SIGKILL"}"#);
        let back: B = serde_json::from_str(r#"{"b":"aGkK","s":15}"#).unwrap();
        assert_eq!(back.b.unwrap(), b"hi\n");
        assert_eq!(back.s, 15);
        let named: B = serde_json::from_str(r#"{"s":"SIGNAL_SIGTERM"}"#).unwrap();
        assert_eq!(named.s, 15);
        assert!(named.b.is_none());
    }

    #[test]
    fn timestamp_is_rfc3339() {
        let t = Timestamp { seconds: 0, nanos: 0 };
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"1970-01-01T00:00:00Z\"");
    }
}
