//! Image references, normalised as Docker does: `busybox` is
//! `docker.io/library/busybox:latest`; `localhost:5000/app` keeps its
//! registry.

use std::fmt;

use oci_client::Reference;

/// A reference that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid reference format {input:?}: {why} (expected [registry/]repository[:tag][@digest], lowercase)")]
pub struct BadReference {
    /// What the user gave.
    pub input: String,
    /// The parser's reason.
    pub why: String,
}

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef(Reference);

impl ImageRef {
    /// Parses and normalises a reference with Docker's grammar. (Written
    /// out by hand: the regex behind oci-spec's parser takes tens of
    /// milliseconds to compile, and every `gantry run` parses references.)
    pub fn parse(s: &str) -> Result<Self, BadReference> {
        let bad = |why: &str| BadReference {
            input: s.to_owned(),
            why: why.to_owned(),
        };
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
        let tag = tag
            .map(str::to_owned)
            .or_else(|| digest.is_none().then(|| "latest".to_owned()));
        let r = match (tag, digest) {
            (Some(t), Some(d)) => Reference::with_tag_and_digest(registry, path, t, d),
            (Some(t), None) => Reference::with_tag(registry, path, t),
            (None, Some(d)) => Reference::with_digest(registry, path, d),
            (None, None) => unreachable!("a reference without a digest gets the latest tag"),
        };
        Ok(Self(r))
    }

    /// The registry host (`docker.io`, `localhost:5000`).
    pub fn registry(&self) -> &str {
        self.0.registry()
    }

    /// The repository path (`library/busybox`).
    pub fn repository(&self) -> &str {
        self.0.repository()
    }

    /// The tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.0.tag()
    }

    /// The digest, if any.
    pub fn digest(&self) -> Option<&str> {
        self.0.digest()
    }

    /// The same repository at another digest.
    pub fn with_digest(&self, digest: &str) -> Self {
        Self(Reference::with_digest(
            self.0.registry().to_owned(),
            self.0.repository().to_owned(),
            digest.to_owned(),
        ))
    }

    /// The underlying client reference.
    pub fn inner(&self) -> &Reference {
        &self.0
    }

    /// The name without registry and `library/` for Docker Hub, as
    /// `docker images` shows it (`busybox`, `localhost:5000/app`).
    pub fn short_repository(&self) -> String {
        if self.registry() == "docker.io" {
            self.repository()
                .strip_prefix("library/")
                .unwrap_or(self.repository())
                .to_owned()
        } else {
            format!("{}/{}", self.registry(), self.repository())
        }
    }

    /// Whether the registry is on this machine, reached over plain HTTP as
    /// Docker does.
    pub fn is_loopback(&self) -> bool {
        let host = self
            .registry()
            .rsplit_once(':')
            .map_or(self.registry(), |(h, p)| {
                if p.chars().all(|c| c.is_ascii_digit()) {
                    h
                } else {
                    self.registry()
                }
            });
        host == "localhost" || host.starts_with("127.") || host == "[::1]" || host == "::1"
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, Docker's path component.
fn valid_component(c: &str) -> bool {
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

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.short_repository(), "busybox");
        let r = ImageRef::parse("localhost:5000/team/app:v1").unwrap();
        assert_eq!(r.registry(), "localhost:5000");
        assert_eq!(r.repository(), "team/app");
        assert_eq!(r.tag(), Some("v1"));
        assert!(r.is_loopback());
        assert!(ImageRef::parse("127.0.0.1:5000/a").unwrap().is_loopback());
        assert!(!ImageRef::parse("registry.example.com/a")
            .unwrap()
            .is_loopback());
        assert_eq!(
            ImageRef::parse("localhost:5000/app")
                .unwrap()
                .short_repository(),
            "localhost:5000/app"
        );
    }

    #[test]
    fn agrees_with_the_oci_spec_parser() {
        for ok in [
            "busybox",
            "busybox:1.36",
            "library/busybox",
            "team/app:v1",
            "localhost/app",
            "localhost:5000/a/b/c:tag_1.2-x",
            "127.0.0.1:5000/app",
            "registry.example.com/x__y/a-b--c:latest",
            "ghcr.io/owner/img@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "img:tag@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            let ours = ImageRef::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            let theirs = Reference::try_from(ok).unwrap();
            assert_eq!(ours.inner(), &theirs, "{ok}");
        }
    }

    #[test]
    fn refuses_bad_references() {
        for bad in [
            "",
            "UPPER/case",
            "a:b:c",
            "bad@sha256:123",
            "x y",
            "-lead",
            "a/../b",
            "a//b",
            "a:",
            "a@md5:00",
            "host:port/x",
            "a/b_",
            "a._b",
        ] {
            let e = ImageRef::parse(bad).unwrap_err().to_string();
            assert!(e.contains("invalid reference format"), "{bad}: {e}");
        }
    }
}
