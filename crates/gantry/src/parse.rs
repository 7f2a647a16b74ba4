//! Parsing of Docker-style command-line values: sizes, CPU counts, mounts,
//! port mappings, signals, env files. Pure functions with tests.

use std::path::PathBuf;

use gantry_runtime::{Mount, MountKind, PortMapping};

/// A size like Docker's `-m` (see `gantry_units::size`).
pub(crate) fn size(s: &str) -> Result<u64, String> {
    gantry_units::size(s)
}

/// `--cpus 0.5` to NanoCPUs.
pub(crate) fn cpus(s: &str) -> Result<u64, String> {
    gantry_units::nano_cpus(s)
}

/// `-v SRC:DST[:ro|rw]`: an absolute SRC is a bind mount, anything else a
/// named volume.
pub(crate) fn volume(s: &str) -> Result<Mount, String> {
    let v = gantry_units::volume_spec(s)?;
    let (src, dst, read_only) = match &v.source {
        Some(src) => (src.as_str(), v.target.as_str(), v.read_only),
        None => return Err(format!("invalid volume {s:?}: use SRC:DST[:ro]")),
    };
    if src.starts_with('/') || src.starts_with('.') {
        let p = std::path::absolute(src).map_err(|e| format!("bind source {src}: {e}"))?;
        if !p.exists() {
            return Err(format!("bind source path does not exist: {}", p.display()));
        }
        return Ok(Mount {
            kind: MountKind::Bind,
            source: p,
            destination: dst.to_owned(),
            read_only,
            options: Default::default(),
        });
    }
    if !gantry_runtime::valid_volume_name(src) {
        return Err(format!(
            "invalid volume name {src:?}: use letters, digits, '_', '.' and '-', or an absolute path for a bind mount"
        ));
    }
    Ok(Mount {
        kind: MountKind::Volume {
            name: src.to_owned(),
        },
        source: PathBuf::new(),
        destination: dst.to_owned(),
        read_only,
        options: Default::default(),
    })
}

/// `-p [IP:]HOST:CTR[/tcp]`, ranges of the same length on both sides.
pub(crate) fn port(s: &str) -> Result<Vec<PortMapping>, String> {
    let specs = gantry_units::port_spec(s)?;
    specs
        .into_iter()
        .map(|p| {
            if p.udp {
                return Err(format!(
                    "{s}: `gantry run` publishes TCP ports only (a service publishes UDP too)"
                ));
            }
            let Some(host_port) = p.published else {
                return Err(format!(
                    "invalid port mapping {s:?}: give the host port, e.g. 8080:80"
                ));
            };
            Ok(PortMapping {
                host_ip: p.host_ip,
                host_port,
                container_port: p.target,
            })
        })
        .collect()
}

/// A signal by name (`TERM`, `SIGTERM`) or number.
pub(crate) fn signal(s: &str) -> Result<nix::sys::signal::Signal, String> {
    gantry_runtime::parse_signal(s)
}

/// Lines of an env file: `K=V`, `K` (taken from our environment), comments
/// and blank lines skipped.
pub(crate) fn env_file(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// `K=V` pairs for `--build-arg` and `--label`.
pub(crate) fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => match std::env::var(s) {
            Ok(v) if !s.is_empty() => Ok((s.to_owned(), v)),
            _ => Err(format!("invalid {s:?}: use KEY=VALUE")),
        },
    }
}

/// A `--secret-add` or `--config-add` value, as Docker's: `NAME`, or
/// `source=NAME[,target=PATH][,uid=N][,gid=N][,mode=OCTAL]`.
pub(crate) fn file_ref(s: &str) -> Result<gantry_stack::FileRef, String> {
    let mut f = gantry_stack::FileRef {
        source: String::new(),
        target: String::new(),
        uid: 0,
        gid: 0,
        mode: 0o444,
        version: 0,
    };
    if !s.contains('=') {
        f.source = s.to_owned();
    } else {
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("invalid {part:?} in {s:?}: use KEY=VALUE"))?;
            let num = |v: &str| {
                v.parse::<u32>()
                    .map_err(|_| format!("invalid {k} {v:?}: a number"))
            };
            match k {
                "source" | "src" => f.source = v.to_owned(),
                "target" => f.target = v.to_owned(),
                "uid" => f.uid = num(v)?,
                "gid" => f.gid = num(v)?,
                "mode" => {
                    f.mode = u32::from_str_radix(v.trim_start_matches("0o"), 8)
                        .ok()
                        .filter(|m| *m <= 0o7777)
                        .ok_or_else(|| format!("invalid mode {v:?}: octal, such as 0400"))?
                }
                _ => {
                    return Err(format!(
                        "unknown option {k:?} in {s:?}: use source, target, uid, gid, mode"
                    ))
                }
            }
        }
    }
    if f.source.is_empty() {
        return Err(format!("{s:?} names no source"));
    }
    if f.target.is_empty() {
        f.target = f.source.clone();
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_refs_read_as_docker_writes_them() {
        let f = file_ref("db_pw").unwrap();
        assert_eq!(
            (f.source.as_str(), f.target.as_str(), f.mode),
            ("db_pw", "db_pw", 0o444)
        );
        let f = file_ref("source=app,target=/etc/app.conf,uid=999,gid=998,mode=0440").unwrap();
        assert_eq!(
            (f.source.as_str(), f.target.as_str(), f.uid, f.gid, f.mode),
            ("app", "/etc/app.conf", 999, 998, 0o440)
        );
        for bad in [
            "target=/x",
            "source=a,mode=9",
            "source=a,uid=-1",
            "source=a,colour=red",
            "source=a,mode",
        ] {
            assert!(file_ref(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn volumes() {
        let m = volume("data:/var/lib/data:ro").unwrap();
        assert_eq!(
            m.kind,
            MountKind::Volume {
                name: "data".into()
            }
        );
        assert!(m.read_only);
        let m = volume("/tmp:/host").unwrap();
        assert_eq!(m.kind, MountKind::Bind);
        assert!(volume("/definitely/not/here:/x")
            .unwrap_err()
            .contains("does not exist"));
        assert!(volume("data:relative").is_err());
        assert!(volume("data:/x:rx").is_err());
        assert!(volume("a/b:/x").is_err());
        assert!(volume("justone").is_err());
    }

    #[test]
    fn ports() {
        assert_eq!(
            port("8080:80").unwrap(),
            [PortMapping {
                host_ip: None,
                host_port: 8080,
                container_port: 80
            }]
        );
        assert_eq!(port("0.0.0.0:8080:80/tcp").unwrap()[0].host_port, 8080);
        let local = port("127.0.0.1:8080:80").unwrap();
        assert_eq!(local[0].host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(port("8000-8001:80-81").unwrap().len(), 2);
        for bad in ["80", "a:b", "0:80", "70000:80", "1.2.3:1:2", "53:53/udp"] {
            assert!(port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn signals() {
        use nix::sys::signal::Signal;
        assert_eq!(signal("TERM").unwrap(), Signal::SIGTERM);
        assert_eq!(signal("sigkill").unwrap(), Signal::SIGKILL);
        assert_eq!(signal("9").unwrap(), Signal::SIGKILL);
        assert!(signal("NOPE").is_err());
    }

    #[test]
    fn env_files() {
        assert_eq!(
            env_file("# c\nA=1\n\n B=two words \n"),
            vec!["A=1", "B=two words"]
        );
    }
}
