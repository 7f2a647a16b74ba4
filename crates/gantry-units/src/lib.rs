//! Units as Docker users write them, parsed the same way in every part of
//! Gantry (command-line flags, Dockerfiles, stack files). Pure.

/// A size like Docker's `-m`: `512`, `64k`, `64m`, `1g`, `1.5g`, an optional
/// trailing `b` (binary units), case-insensitive.
pub fn size(s: &str) -> Result<u64, String> {
    let bad = || {
        format!("invalid size {s:?}: use a number with an optional unit b, k, m or g (e.g. 64m)")
    };
    let t = s.trim().to_ascii_lowercase();
    let t = t
        .strip_suffix('b')
        .filter(|r| !r.is_empty() && r.ends_with(|c: char| c.is_ascii_alphabetic()))
        .unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        Some('b') => (&t[..t.len() - 1], 1),
        Some(c) if c.is_ascii_digit() => (t, 1),
        _ => return Err(bad()),
    };
    let v: f64 = num.parse().map_err(|_| bad())?;
    if !(v.is_finite() && v > 0.0) {
        return Err(bad());
    }
    Ok((v * mult as f64) as u64)
}

/// `0.5` CPUs to billionths of a CPU (Docker's NanoCPUs).
pub fn nano_cpus(s: &str) -> Result<u64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("invalid CPU count {s:?}: give a number of CPUs such as 0.5"))?;
    if !(v.is_finite() && v > 0.0 && v <= 4096.0) {
        return Err(format!("invalid CPU count {s:?}: must be above 0"));
    }
    Ok((v * 1e9).round() as u64)
}

/// Go-style durations (`30s`, `1m30s`, `500ms`, `1.5h`, `0`) in nanoseconds.
pub fn duration_ns(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid duration {s:?}: use e.g. 30s, 1m30s, 500ms");
    if s.is_empty() {
        return Err(bad());
    }
    if s == "0" {
        return Ok(0);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (num, tail) = rest.split_at(n);
        let v: f64 = num.parse().map_err(|_| bad())?;
        let u = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(u);
        let mult = match unit {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total += v * mult;
        rest = tail;
    }
    Ok(total as u64)
}

/// A volume as Docker's `-v` and compose's short syntax write it:
/// `[SOURCE:]TARGET[:ro|rw]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    /// Host path or volume name; `None` for an anonymous volume.
    pub source: Option<String>,
    /// Absolute path in the container.
    pub target: String,
    /// `:ro`.
    pub read_only: bool,
    /// The source is a host path (absolute or `./relative`), not a name.
    pub bind: bool,
}

/// Parses `[SOURCE:]TARGET[:ro|rw]`.
pub fn volume_spec(s: &str) -> Result<VolumeSpec, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (src, dst, mode) = match parts.as_slice() {
        [dst] => ("", *dst, ""),
        [src, dst] => (*src, *dst, ""),
        [src, dst, mode] => (*src, *dst, *mode),
        _ => return Err(format!("invalid volume {s:?}: use [SOURCE:]TARGET[:ro]")),
    };
    if !dst.starts_with('/') {
        return Err(format!(
            "invalid volume {s:?}: the target {dst:?} must be an absolute path"
        ));
    }
    let read_only = match mode {
        "" | "rw" => false,
        "ro" => true,
        m => return Err(format!("invalid volume mode {m:?} in {s:?}: use ro or rw")),
    };
    Ok(VolumeSpec {
        source: (!src.is_empty()).then(|| src.to_owned()),
        target: dst.to_owned(),
        read_only,
        bind: src.starts_with('/') || src.starts_with('.'),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size("64m").unwrap(), 64 << 20);
        assert_eq!(size("64M").unwrap(), 64 << 20);
        assert_eq!(size("64mb").unwrap(), 64 << 20);
        assert_eq!(size("1g").unwrap(), 1 << 30);
        assert_eq!(size("1.5k").unwrap(), 1536);
        assert_eq!(size("100").unwrap(), 100);
        assert_eq!(size("100b").unwrap(), 100);
        for bad in ["", "m", "-1m", "12x", "1.2.3m", "nan", "0"] {
            assert!(size(bad).is_err(), "{bad}");
        }
        assert!(size("12x").unwrap_err().contains("invalid size"));
    }

    #[test]
    fn cpus() {
        assert_eq!(nano_cpus("0.5").unwrap(), 500_000_000);
        assert_eq!(nano_cpus("2").unwrap(), 2_000_000_000);
        assert!(nano_cpus("0").is_err());
        assert!(nano_cpus("lots").is_err());
    }

    #[test]
    fn volume_specs() {
        let v = volume_spec("data:/var/lib/data:ro").unwrap();
        assert_eq!(
            (v.source.as_deref(), v.target.as_str(), v.read_only, v.bind),
            (Some("data"), "/var/lib/data", true, false)
        );
        assert!(volume_spec("/srv:/x").unwrap().bind);
        assert!(volume_spec("./site:/x:rw").unwrap().bind);
        assert_eq!(volume_spec("/anon").unwrap().source, None);
        for bad in ["data:relative", "a:/x:rx", "a:b:c:d"] {
            assert!(volume_spec(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(duration_ns("30s").unwrap(), 30_000_000_000);
        assert_eq!(duration_ns("1m30s").unwrap(), 90_000_000_000);
        assert_eq!(duration_ns("500ms").unwrap(), 500_000_000);
        assert_eq!(duration_ns("1.5h").unwrap(), 5_400_000_000_000);
        for bad in ["", "10", "5x", "s"] {
            assert!(duration_ns(bad).is_err(), "{bad}");
        }
    }
}
