//! Kubernetes-style quantities: CPU (`"500m"`, `"2"`, `"0.5"`) and memory (`"512Mi"`, `"1G"`, bytes).

/// The largest CPU quantity accepted (one million cores): sums and multipliers stay far from overflow.
pub const MAX_CPU_MILLIS: u64 = 1_000_000_000;
/// The largest memory quantity accepted (1 PiB).
pub const MAX_MEMORY_BYTES: u64 = 1 << 50;

/// CPU quantity → millicores.
pub fn parse_cpu_millis(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let bad = || format!("invalid cpu quantity {s:?}: use millicores like \"500m\" or cores like \"2\" or \"0.5\"");
    if let Some(m) = s.strip_suffix('m') {
        let m = m.parse::<u64>().map_err(|_| bad())?;
        return if m <= MAX_CPU_MILLIS { Ok(m) } else { Err(bad()) };
    }
    let cores: f64 = s.parse().map_err(|_| bad())?;
    if !cores.is_finite() || !(0.0..=1.0e6).contains(&cores) {
        return Err(bad());
    }
    Ok((cores * 1000.0).round() as u64)
}

/// Memory quantity → bytes.
pub fn parse_memory_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let bad = || format!("invalid memory quantity {s:?}: use a value like \"512Mi\", \"2Gi\" or \"1G\"");
    let units: [(&str, u64); 10] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("K", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("", 1),
    ];
    for (suffix, mult) in units {
        if let Some(num) = s.strip_suffix(suffix)
            && (suffix.is_empty() || !num.is_empty())
        {
            let n: u64 = num.parse().map_err(|_| bad())?;
            return n.checked_mul(mult).filter(|b| *b <= MAX_MEMORY_BYTES).ok_or_else(bad);
        }
    }
    Err(bad())
}

/// Format millicores the way Kubernetes prints them (`"500m"`, `"2"`).
pub fn format_cpu_millis(m: u64) -> String {
    if m.is_multiple_of(1000) { format!("{}", m / 1000) } else { format!("{m}m") }
}

/// Format bytes with the largest exact binary unit (`"512Mi"`).
pub fn format_memory_bytes(b: u64) -> String {
    for (suffix, mult) in [("Ti", 1u64 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if b >= mult && b.is_multiple_of(mult) {
            return format!("{}{suffix}", b / mult);
        }
    }
    b.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu() {
        assert_eq!(parse_cpu_millis("500m").unwrap(), 500);
        assert_eq!(parse_cpu_millis("2").unwrap(), 2000);
        assert_eq!(parse_cpu_millis("0.25").unwrap(), 250);
        assert!(parse_cpu_millis("lots").is_err());
        assert!(parse_cpu_millis("-1").is_err());
        assert_eq!(format_cpu_millis(1500), "1500m");
        assert_eq!(format_cpu_millis(2000), "2");
    }

    #[test]
    fn memory() {
        assert_eq!(parse_memory_bytes("64Mi").unwrap(), 64 << 20);
        assert_eq!(parse_memory_bytes("1G").unwrap(), 1_000_000_000);
        assert_eq!(parse_memory_bytes("4096").unwrap(), 4096);
        assert!(parse_memory_bytes("Mi").is_err());
        assert!(parse_memory_bytes("12XB").is_err());
        assert!(parse_memory_bytes("99999999999Ti").is_err());
        assert_eq!(format_memory_bytes(512 << 20), "512Mi");
    }
}
