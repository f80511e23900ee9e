//! Validation of client input, done once at the edge. Every error message names the field and says
//! what a valid value looks like.

use crate::error::AppError;
use crate::model::{ContainerSpec, Resources, SandboxSpec};
use crate::quantity::{parse_cpu_millis, parse_memory_bytes};

/// A DNS label: `^[a-z]([a-z0-9-]*[a-z0-9])?$`, 1–63 characters.
pub fn dns_label(field: &str, v: &str) -> Result<(), AppError> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.starts_with(|c: char| c.is_ascii_lowercase())
        && !v.ends_with('-')
        && v.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(AppError::bad_request(format!(
            "{field} {v:?} is not valid: use 1-63 lowercase letters, digits and '-', starting with a letter and not ending with '-'"
        )))
    }
}

/// `x.y.z` with digits only.
pub fn version(v: &str) -> Result<semver::Version, AppError> {
    let parts: Vec<&str> = v.split('.').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_digit())) {
        return Err(AppError::bad_request(format!("version {v:?} must be in x.y.z format, e.g. \"1.0.0\"")));
    }
    semver::Version::parse(v).map_err(|e| AppError::bad_request(format!("version {v:?}: {e}")))
}

/// An image reference: a built-in name (`host`, `pause`) or `[registry/]repo[:tag][@digest]`.
pub fn image_ref(field: &str, v: &str) -> Result<(), AppError> {
    let bad = |why: &str| AppError::bad_request(format!("{field} {v:?} is not a valid image reference: {why}"));
    if v.is_empty() {
        return Err(bad("it is empty; use e.g. \"host\" or \"127.0.0.1:5000/team/app:1.0\""));
    }
    if v.len() > 512 {
        return Err(bad("longer than 512 characters"));
    }
    if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("contains whitespace"));
    }
    if !v.chars().all(|c| c.is_ascii_alphanumeric() || "._-/:@+".contains(c)) {
        return Err(bad("only letters, digits and . _ - / : @ are allowed"));
    }
    if v.starts_with(['/', ':', '@', '.', '-']) || v.ends_with(['/', ':', '@']) || v.contains("//") {
        return Err(bad("malformed"));
    }
    Ok(())
}

/// Sum of the containers' limits as slot resources; falls back to requests when a limit is unset.
pub fn slot_resources(containers: &[ContainerSpec]) -> Result<Resources, AppError> {
    let too_much = || AppError::bad_request("the containers' resources add up to more than a slot can have");
    let mut r = Resources::default();
    for c in containers {
        let q = |lim: &Option<String>, req: &Option<String>| lim.clone().or_else(|| req.clone());
        if let Some(cpu) = q(&c.resources.limits.cpu, &c.resources.requests.cpu) {
            let m = parse_cpu_millis(&cpu).map_err(|e| AppError::bad_request(format!("container {}: {e}", c.name)))?;
            r.cpu_millis = Some(r.cpu_millis.unwrap_or(0).checked_add(m).ok_or_else(too_much)?);
        }
        if let Some(mem) = q(&c.resources.limits.memory, &c.resources.requests.memory) {
            let b =
                parse_memory_bytes(&mem).map_err(|e| AppError::bad_request(format!("container {}: {e}", c.name)))?;
            r.memory_bytes = Some(r.memory_bytes.unwrap_or(0).checked_add(b).ok_or_else(too_much)?);
        }
        if let Some(p) = c.resources.limits.pids.or(c.resources.requests.pids) {
            r.pids = Some(r.pids.unwrap_or(0).checked_add(p).ok_or_else(too_much)?);
        }
    }
    Ok(r)
}

/// Validate what a template or pool says its slots run.
pub fn sandbox_spec(s: &SandboxSpec) -> Result<(), AppError> {
    if s.containers.is_empty() {
        return Err(AppError::bad_request("containers must list at least one container"));
    }
    image_ref("idleImage", &s.idle_image)?;
    let mut names = std::collections::BTreeSet::new();
    for (i, c) in s.containers.iter().enumerate() {
        dns_label(&format!("containers[{i}].name"), &c.name)?;
        if !names.insert(c.name.as_str()) {
            return Err(AppError::bad_request(format!("container name {:?} is used twice", c.name)));
        }
        image_ref(&format!("containers[{i}].image"), &c.image)?;
    }
    if s.containers[0].image == s.idle_image {
        return Err(AppError::bad_request(format!(
            "idleImage ({}) must differ from the image of container 0; pick a different idle image such as \"pause\"",
            s.idle_image
        )));
    }
    let mut rt = std::collections::BTreeSet::new();
    for r in &s.runtimes {
        if r.name.is_empty() || !rt.insert(r.name.as_str()) {
            return Err(AppError::bad_request(format!("runtime name {:?} is empty or used twice", r.name)));
        }
    }
    slot_resources(&s.containers)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert!(dns_label("name", "pool-1").is_ok());
        for bad in ["", "Pool", "1pool", "pool-", "po_ol", &"a".repeat(64)] {
            let e = dns_label("name", bad).unwrap_err();
            assert!(e.message.contains("lowercase"), "{bad}");
        }
    }

    #[test]
    fn versions() {
        assert!(version("1.2.3").unwrap() > version("1.2.0").unwrap());
        assert!(version("1.2").is_err());
        assert!(version("1.2.3-rc1").is_err());
    }

    #[test]
    fn images() {
        for ok in ["host", "pause", "127.0.0.1:5000/a/b:1.0", "x@sha256:abcd"] {
            image_ref("image", ok).unwrap();
        }
        for bad in ["", "a b", "/abs", "x:", "a//b", "ünïcode"] {
            assert!(image_ref("image", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn idle_image_must_differ() {
        let s = SandboxSpec {
            idle_image: "host".into(),
            idle_command: vec![],
            containers: vec![ContainerSpec { name: "main".into(), image: "host".into(), ..Default::default() }],
            runtimes: vec![],
            runtime_class: Default::default(),
            egress: true,
        };
        assert!(sandbox_spec(&s).unwrap_err().message.contains("must differ"));
    }

    #[test]
    fn resources_are_summed() {
        let mut c = ContainerSpec { name: "a".into(), image: "host".into(), ..Default::default() };
        c.resources.limits.memory = Some("64Mi".into());
        c.resources.requests.cpu = Some("500m".into());
        let mut d = c.clone();
        d.name = "b".into();
        let r = slot_resources(&[c, d]).unwrap();
        assert_eq!(r.memory_bytes, Some(128 << 20));
        assert_eq!(r.cpu_millis, Some(1000));
    }
}
