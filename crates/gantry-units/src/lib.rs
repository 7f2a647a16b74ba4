//! Units as Docker users write them, parsed the same way in every part of
//! Gantry (command-line flags, Dockerfiles, stack files). Pure.

mod schedule;

pub use schedule::Schedule;

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
/// `[SOURCE:]TARGET[:MODES]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VolumeSpec {
    /// Host path or volume name; `None` for an anonymous volume.
    pub source: Option<String>,
    /// Absolute path in the container.
    pub target: String,
    /// `:ro`.
    pub read_only: bool,
    /// The source is a host path (absolute, `./relative`, `../relative`
    /// or `~/in-home`), not a name.
    pub bind: bool,
    /// `:nocopy`: a new volume is not filled from the image.
    pub nocopy: bool,
    /// A bind's propagation (`rprivate`, `shared`, ...).
    pub propagation: Option<String>,
    /// `:z` or `:Z`: SELinux relabelling asked for.
    pub selinux: Option<char>,
}

/// The bind propagation modes Docker accepts.
pub const PROPAGATIONS: [&str; 6] = [
    "rprivate", "private", "rshared", "shared", "rslave", "slave",
];

/// Docker's volume names: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`, at most 255
/// bytes (a file name on the node).
pub fn valid_volume_name(v: &str) -> bool {
    v.len() >= 2
        && v.len() <= 255
        && v.starts_with(|c: char| c.is_ascii_alphanumeric())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The local volume driver's options: Docker's `type`, `o` and `device`
/// (what is mounted, as `mount -t TYPE -o O DEVICE`), or Gantry's `size`
/// (a hard limit on a volume of its own).
pub const VOLUME_OPTIONS: [&str; 4] = ["type", "o", "device", "size"];

/// The smallest `size` a volume may have (its filesystem's own metadata
/// needs room).
pub const MIN_VOLUME_SIZE: u64 = 8 << 20;

/// Checks a volume's driver options; returns its size limit, if it has
/// one.
pub fn volume_options(
    opts: &std::collections::BTreeMap<String, String>,
) -> Result<Option<u64>, String> {
    if let Some(k) = opts.keys().find(|k| !VOLUME_OPTIONS.contains(&k.as_str())) {
        return Err(format!(
            "{k} is not an option of the local driver: use type, o and device (a mount), or size"
        ));
    }
    match opts.get("size") {
        Some(_) if opts.len() > 1 => Err(
            "size limits a volume of Gantry's own: it does not go with type, o or device".into(),
        ),
        Some(s) => match size(s)? {
            n if n < MIN_VOLUME_SIZE => Err(format!(
                "size {s} is under the smallest, {} MiB",
                MIN_VOLUME_SIZE >> 20
            )),
            n => Ok(Some(n)),
        },
        None if !opts.is_empty() && !opts.contains_key("device") => Err(
            "driver_opts needs a device (with type and o), as `mount -t TYPE -o O DEVICE`".into(),
        ),
        None => Ok(None),
    }
}

/// Parses `[SOURCE:]TARGET[:MODES]`, MODES a comma-separated list of
/// `ro`/`rw`, `z`/`Z`, `nocopy`, a propagation, or Docker Desktop's
/// `consistent`/`cached`/`delegated` (which mean nothing on Linux).
pub fn volume_spec(s: &str) -> Result<VolumeSpec, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (src, dst, modes) = match parts.as_slice() {
        [dst] => ("", *dst, ""),
        [src, dst] => (*src, *dst, ""),
        [src, dst, modes] => (*src, *dst, *modes),
        _ => return Err(format!("invalid volume {s:?}: use [SOURCE:]TARGET[:ro]")),
    };
    if !dst.starts_with('/') {
        return Err(format!(
            "invalid volume {s:?}: the target {dst:?} must be an absolute path"
        ));
    }
    let mut v = VolumeSpec {
        source: (!src.is_empty()).then(|| src.to_owned()),
        target: dst.to_owned(),
        bind: src.starts_with('/') || src.starts_with('.') || src.starts_with('~'),
        ..VolumeSpec::default()
    };
    let mut access = None;
    for m in modes.split(',').filter(|m| !m.is_empty()) {
        match m {
            "ro" | "rw" if access.is_some() => {
                return Err(format!("invalid volume {s:?}: ro and rw given together"))
            }
            "ro" | "rw" => access = Some(m == "ro"),
            "z" | "Z" => v.selinux = m.chars().next(),
            "nocopy" => v.nocopy = true,
            "consistent" | "cached" | "delegated" => {}
            p if PROPAGATIONS.contains(&p) => v.propagation = Some(p.to_owned()),
            m => {
                return Err(format!(
                    "invalid volume mode {m:?} in {s:?}: use ro, rw, z, Z, nocopy or a propagation ({})",
                    PROPAGATIONS.join(", ")
                ))
            }
        }
    }
    v.read_only = access.unwrap_or(false);
    if v.nocopy && v.bind {
        return Err(format!(
            "invalid volume {s:?}: nocopy is for volumes, not binds"
        ));
    }
    if v.propagation.is_some() && !v.bind {
        return Err(format!(
            "invalid volume {s:?}: a propagation is for binds, not volumes"
        ));
    }
    Ok(v)
}

/// One published port as Docker's `-p` and compose's short syntax write
/// it, after ranges were expanded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSpec {
    /// The host address it listens on (none: every address).
    pub host_ip: Option<std::net::IpAddr>,
    /// The port on the host (none: not published, or chosen by the host).
    pub published: Option<u16>,
    /// The port in the container.
    pub target: u16,
    /// `udp` rather than `tcp`.
    pub udp: bool,
}

/// The most ports one range may publish.
pub const MAX_PORT_RANGE: usize = 1024;

/// Parses `[[IP:][PUBLISHED[-END]]:]TARGET[-END][/tcp|/udp]`: IPv6 hosts
/// in brackets (`[::1]:80:80`), ranges of the same length on both sides
/// expanded port by port, an empty IP or published port as unset.
pub fn port_spec(s: &str) -> Result<Vec<PortSpec>, String> {
    let bad = |why: &str| {
        format!("invalid port {s:?}: {why}; use [IP:][HOST:]CONTAINER[/tcp|udp], ranges as 3000-3002:3000-3002")
    };
    let (spec, udp) = match s.rsplit_once('/') {
        Some((a, "tcp")) => (a, false),
        Some((a, "udp")) => (a, true),
        Some((_, p)) => return Err(bad(&format!("protocol {p:?} is not tcp or udp"))),
        None => (s, false),
    };
    // An IPv6 address is bracketed; an IPv4 one is the first of three parts.
    let (ip, rest) = if let Some(r) = spec.strip_prefix('[') {
        let (ip, rest) = r.split_once("]:").ok_or_else(|| bad("unclosed ["))?;
        (Some(ip), rest)
    } else {
        let parts: Vec<&str> = spec.split(':').collect();
        match parts.len() {
            1 | 2 => (None, spec),
            3 => {
                let (ip, rest) = spec.split_once(':').unwrap_or_default();
                (Some(ip), rest)
            }
            _ => return Err(bad("too many ':'")),
        }
    };
    let host_ip = match ip {
        None | Some("") => None,
        Some(ip) => Some(
            ip.parse::<std::net::IpAddr>()
                .map_err(|_| bad(&format!("{ip:?} is not an IP address")))?,
        ),
    };
    let (published, target) = match rest.split_once(':') {
        Some((p, t)) => (Some(p).filter(|p| !p.is_empty()), t),
        None => (None, rest),
    };
    let range = |r: &str| -> Result<(u16, u16), String> {
        let port = |p: &str| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| bad(&format!("{p:?} is not a port (1-65535)")))
        };
        match r.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (port(a)?, port(b)?);
                if b < a {
                    return Err(bad(&format!("the range {r} ends before it starts")));
                }
                Ok((a, b))
            }
            None => port(r).map(|p| (p, p)),
        }
    };
    let (t0, t1) = range(target)?;
    let published = published.map(range).transpose()?;
    let n = usize::from(t1 - t0) + 1;
    if n > MAX_PORT_RANGE {
        return Err(bad(&format!(
            "a range publishes at most {MAX_PORT_RANGE} ports"
        )));
    }
    if let Some((p0, p1)) = published {
        if usize::from(p1 - p0) + 1 != n {
            return Err(bad(
                "the host range and the container range must have the same length",
            ));
        }
    }
    Ok((0..n as u16)
        .map(|i| PortSpec {
            host_ip,
            published: published.map(|(p0, _)| p0 + i),
            target: t0 + i,
            udp,
        })
        .collect())
}

/// An image reference's parts, normalised as Docker does: `busybox` is
/// registry `docker.io`, repository `library/busybox`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageReference {
    /// The registry host (`docker.io`, `localhost:5000`).
    pub registry: String,
    /// The repository path.
    pub repository: String,
    /// The tag as written (none when not written).
    pub tag: Option<String>,
    /// The digest (`sha256:...`).
    pub digest: Option<String>,
}

/// Parses an image reference with Docker's grammar:
/// `[registry[:port]/]path[:tag][@algorithm:hex]`, the path lowercase.
pub fn image_reference(s: &str) -> Result<ImageReference, String> {
    let bad = |why: &str| why.to_owned();
    if s.is_empty() {
        return Err(bad("empty reference"));
    }
    let (rest, digest) = match s.split_once('@') {
        Some((n, d)) => {
            let (algo, hex) = d
                .split_once(':')
                .ok_or_else(|| bad("digest must be algorithm:hex"))?;
            let len = match algo {
                "sha256" => 64,
                "sha384" => 96,
                "sha512" => 128,
                _ => return Err(bad("unsupported digest algorithm")),
            };
            if hex.len() != len
                || !hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(bad("invalid digest"));
            }
            (n, Some(d.to_owned()))
        }
        None => (s, None),
    };
    // A tag is a ':' after the last '/'.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && t.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !ok {
            return Err(bad("invalid tag"));
        }
    }
    let (registry, path) = match name.split_once('/') {
        Some((first, more)) if first.contains(['.', ':']) || first == "localhost" => {
            if !valid_domain(first) {
                return Err(bad("invalid registry host"));
            }
            (first.to_owned(), more.to_owned())
        }
        Some(_) => ("docker.io".to_owned(), name.to_owned()),
        None => ("docker.io".to_owned(), format!("library/{name}")),
    };
    if path.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(bad("repository name must be lowercase"));
    }
    if path.len() > 255 || !path.split('/').all(valid_component) {
        return Err(bad("invalid repository name"));
    }
    Ok(ImageReference {
        registry,
        repository: path,
        tag: tag.map(str::to_owned),
        digest,
    })
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, Docker's path component (of a
/// repository name, as the distribution spec words it).
pub fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

/// A host name or address with an optional port.
fn valid_domain(d: &str) -> bool {
    let (host, port) = if d.starts_with('[') {
        match d.find(']') {
            Some(i) => (&d[..=i], d[i + 1..].strip_prefix(':')),
            None => return false,
        }
    } else {
        match d.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    if host.starts_with('[') {
        return host.len() > 2;
    }
    !host.is_empty()
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Linux's capabilities, by their names without `CAP_`.
pub const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// A capability as Docker writes it (`NET_ADMIN`, `CAP_NET_ADMIN`, any
/// case, or `ALL`), in its canonical form (`NET_ADMIN`, `ALL`).
pub fn capability(name: &str) -> Result<String, String> {
    let up = name.to_ascii_uppercase();
    let short = up.strip_prefix("CAP_").unwrap_or(&up);
    if short == "ALL" || CAPABILITIES.contains(&short) {
        Ok(short.to_owned())
    } else {
        Err(format!("unknown capability {name:?}"))
    }
}

/// Whether a container may set kernel parameter `key`: those of the
/// namespaces it has of its own (IPC, UTS and, off the host's network,
/// network), as Docker allows.
pub fn namespaced_sysctl(key: &str, host_network: bool) -> Result<(), String> {
    const IPC: [&str; 8] = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    let ok = IPC.contains(&key)
        || key.starts_with("fs.mqueue.")
        || key == "kernel.domainname"
        || (key.starts_with("net.") && !host_network);
    let sane = key.split('.').all(|p| {
        !p.is_empty()
            && p.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
    });
    if ok && sane {
        Ok(())
    } else {
        Err(format!("sysctl {key:?} is not namespaced: a container may set net.* (not on the host's network), kernel.shm*, kernel.msg*, kernel.sem, kernel.domainname and fs.mqueue.*"))
    }
}

/// The resource limits `ulimits` may set.
pub const ULIMITS: [&str; 16] = [
    "as",
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

#[cfg(test)]
mod tests {
    #[test]
    fn capabilities_and_sysctls() {
        assert_eq!(capability("cap_net_admin").unwrap(), "NET_ADMIN");
        assert_eq!(capability("all").unwrap(), "ALL");
        assert!(capability("NOPE").is_err());
        assert!(namespaced_sysctl("net.core.somaxconn", false).is_ok());
        assert!(namespaced_sysctl("net.core.somaxconn", true).is_err());
        assert!(namespaced_sysctl("kernel.shmmax", false).is_ok());
        assert!(namespaced_sysctl("kernel.panic", false).is_err());
        assert!(namespaced_sysctl("net.../../x", false).is_err());
    }

    use super::*;

    #[test]
    fn port_specs() {
        let one = |s: &str| {
            let v = port_spec(s).unwrap();
            assert_eq!(v.len(), 1, "{s}");
            v[0]
        };
        let p = one("8080:80");
        assert_eq!(
            (p.host_ip, p.published, p.target, p.udp),
            (None, Some(8080), 80, false)
        );
        let p = one("127.0.0.1:5432:5432");
        assert_eq!(p.host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(p.published, Some(5432));
        let p = one("[::1]:53:53/udp");
        assert_eq!((p.host_ip, p.udp), (Some("::1".parse().unwrap()), true));
        let p = one("127.0.0.1::80");
        assert_eq!((p.published, p.target), (None, 80));
        assert_eq!(one("80").published, None);
        assert_eq!(one(":80").published, None);
        let r = port_spec("3000-3002:4000-4002/udp").unwrap();
        assert_eq!(
            r.iter()
                .map(|p| (p.published, p.target))
                .collect::<Vec<_>>(),
            [(Some(3000), 4000), (Some(3001), 4001), (Some(3002), 4002)]
        );
        assert_eq!(port_spec("9000-9001").unwrap().len(), 2);
        for bad in [
            "80:http",
            "0:80",
            "a.b.c.d:80:80",
            "1:2:3:4",
            "80/sctp",
            "3000-3002:80",
            "3002-3000:3002-3000",
            "1-65535:1-65535",
            "[::1:80:80",
            "",
        ] {
            assert!(port_spec(bad).is_err(), "{bad}");
        }
        assert!(port_spec("80/sctp").unwrap_err().contains("tcp or udp"));
    }

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
    fn volume_options_are_a_mount_or_a_size() {
        let o = |kv: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(volume_options(&o(&[])), Ok(None));
        assert_eq!(volume_options(&o(&[("size", "10G")])), Ok(Some(10 << 30)));
        assert_eq!(
            volume_options(&o(&[("type", "nfs"), ("o", "addr=x"), ("device", ":/e")])),
            Ok(None)
        );
        for (bad, says) in [
            (o(&[("size", "1G"), ("device", "/srv")]), "does not go with"),
            (o(&[("size", "1m")]), "under the smallest"),
            (o(&[("size", "lots")]), "invalid size"),
            (o(&[("type", "nfs")]), "needs a device"),
            (o(&[("colour", "red")]), "not an option"),
        ] {
            let e = volume_options(&bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
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
        assert!(volume_spec("~/site:/x").unwrap().bind);
        assert!(volume_spec("../site:/x").unwrap().bind);
        let v = volume_spec("/srv:/x:ro,Z,rshared").unwrap();
        assert_eq!(
            (v.read_only, v.selinux, v.propagation.as_deref()),
            (true, Some('Z'), Some("rshared"))
        );
        assert!(volume_spec("data:/x:nocopy").unwrap().nocopy);
        for bad in [
            "data:relative",
            "a:/x:rx",
            "a:b:c:d",
            "/a:/x:ro,rw",
            "/a:/x:nocopy",
            "a:/x:shared",
        ] {
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
