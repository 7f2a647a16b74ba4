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
        let r = gantry_units::image_reference(s).map_err(|why| BadReference {
            input: s.to_owned(),
            why,
        })?;
        let (registry, path, tag, digest) = (r.registry, r.repository, r.tag, r.digest);
        let tag = tag.or_else(|| digest.is_none().then(|| "latest".to_owned()));
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
