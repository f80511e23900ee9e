//! Durations on the wire: `"30s"`, `"2m"`, `"1h30m"`, `"250ms"`, or integer seconds.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration that reads `"30s"`, `"2m"`, `"1h"`, `"1h30m"`, `"500ms"` or a bare integer (seconds), and
/// writes itself back in the shortest exact form (`"90s"` → `"1m30s"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct WireDuration(pub Duration);

impl WireDuration {
    pub fn from_secs(s: u64) -> Self {
        WireDuration(Duration::from_secs(s))
    }
    pub fn as_duration(&self) -> Duration {
        self.0
    }
    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }
}

/// The longest duration the API accepts (366 days): timeouts beyond it are typos, and every
/// deadline computed from a wire duration stays far from `Instant` overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 86400);

fn bounded(d: Duration, input: &dyn fmt::Display) -> Result<Duration, String> {
    if d > MAX_DURATION {
        return Err(format!("duration {input} is too long: at most 366d"));
    }
    Ok(d)
}

/// Parse a duration string. Accepts units `ms`, `s`, `m`, `h`, `d` in sequence (`"1h30m"`), a bare
/// non-negative integer (seconds) and `"0"`; at most [`MAX_DURATION`].
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let d = parse_unbounded(input)?;
    bounded(d, &format_args!("{input:?}"))
}

fn parse_unbounded(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty duration: use a value like \"30s\", \"2m\" or \"1h\"".into());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let bad = || format!("invalid duration {input:?}: use a value like \"30s\", \"2m\", \"1h30m\" or integer seconds");
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(bad)?),
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(bad)?),
            "d" => Duration::from_secs(n.checked_mul(86400).ok_or_else(bad)?),
            _ => return Err(bad()),
        };
        total = total.checked_add(d).ok_or_else(bad)?;
    }
    Ok(total)
}

/// Format a duration in the shortest exact `1h2m3s` / `500ms` form; zero is `"0s"`.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let mut secs = d.as_secs();
    let mut out = String::new();
    for (unit, size) in [("h", 3600u64), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

impl fmt::Display for WireDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl std::str::FromStr for WireDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s).map(WireDuration)
    }
}

impl Serialize for WireDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for WireDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => bounded(Duration::from_secs(n), &n).map(WireDuration).map_err(serde::de::Error::custom),
            Raw::Str(s) => parse_duration(&s).map(WireDuration).map_err(serde::de::Error::custom),
        }
    }
}

impl utoipa::PartialSchema for WireDuration {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::SchemaType::new(utoipa::openapi::schema::Type::String))
            .description(Some("duration such as \"30s\", \"2m\", \"1h30m\" (integer seconds also accepted)"))
            .examples([serde_json::json!("30s")])
            .into()
    }
}
impl utoipa::ToSchema for WireDuration {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_durations_beyond_the_maximum() {
        assert!(parse_duration("366d").is_ok());
        assert!(parse_duration("367d").unwrap_err().contains("too long"));
        assert!(parse_duration("18446744073709551615").is_err());
        assert!(serde_json::from_str::<WireDuration>("18446744073709551615").is_err());
        assert!(serde_json::from_str::<WireDuration>("31622400").is_ok());
    }

    #[test]
    fn parses_units_and_integers() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
    }

    #[test]
    fn rejects_garbage_with_a_hint() {
        for bad in ["", "abc", "10x", "-5s", "s", "1.5h", "99999999999999999999h"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("duration"), "{bad}: {err}");
        }
    }

    #[test]
    fn formats_round_trip() {
        for s in ["30s", "2m", "1h30m", "250ms", "1h0m5s"] {
            let d = parse_duration(s).unwrap();
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn serde_accepts_int_and_string() {
        let a: WireDuration = serde_json::from_str("\"2m\"").unwrap();
        let b: WireDuration = serde_json::from_str("120").unwrap();
        assert_eq!(a, b);
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"2m\"");
        assert!(serde_json::from_str::<WireDuration>("\"soon\"").is_err());
    }
}
