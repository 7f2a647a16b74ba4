//! What a `/v2/...` path names (pure): the OCI distribution API's
//! endpoints, with repository names, tags and digests checked as the
//! spec words them.

/// An endpoint and what it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// `/v2/`: is this a registry, and may I use it.
    Base,
    /// `/v2/NAME/tags/list`.
    Tags { name: String },
    /// `/v2/NAME/manifests/REFERENCE` (a tag or a digest).
    Manifest { name: String, reference: String },
    /// `/v2/NAME/blobs/DIGEST`.
    Blob { name: String, digest: String },
    /// `/v2/NAME/blobs/uploads/`: start an upload.
    Uploads { name: String },
    /// `/v2/NAME/blobs/uploads/ID`: one under way.
    Upload { name: String, id: String },
}

/// Why a path names no endpoint: the spec's error code and words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadPath {
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

fn bad(code: &'static str, message: impl Into<String>) -> BadPath {
    BadPath {
        code,
        message: message.into(),
    }
}

/// Parses the path after `/v2/`.
pub(crate) fn parse(rest: &str) -> Result<Route, BadPath> {
    if rest.is_empty() {
        return Ok(Route::Base);
    }
    // The name may hold slashes: the endpoint is found from the end.
    let (name, route) = if let Some(n) = rest.strip_suffix("/tags/list") {
        (
            n,
            Route::Tags {
                name: String::new(),
            },
        )
    } else if let Some(n) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        (
            n,
            Route::Uploads {
                name: String::new(),
            },
        )
    } else if let Some((n, id)) = rest.rsplit_once("/blobs/uploads/") {
        if !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') || id.is_empty() {
            return Err(bad("BLOB_UPLOAD_INVALID", format!("bad upload id {id:?}")));
        }
        (
            n,
            Route::Upload {
                name: String::new(),
                id: id.to_owned(),
            },
        )
    } else if let Some((n, d)) = rest.rsplit_once("/blobs/") {
        check_digest(d)?;
        (
            n,
            Route::Blob {
                name: String::new(),
                digest: d.to_owned(),
            },
        )
    } else if let Some((n, r)) = rest.rsplit_once("/manifests/") {
        if r.contains(':') {
            check_digest(r)?;
        } else if !tag_ok(r) {
            return Err(bad("TAG_INVALID", format!("invalid tag {r:?}")));
        }
        (
            n,
            Route::Manifest {
                name: String::new(),
                reference: r.to_owned(),
            },
        )
    } else {
        return Err(bad("UNSUPPORTED", format!("no such endpoint: /v2/{rest}")));
    };
    if !name_ok(name) {
        return Err(bad(
            "NAME_INVALID",
            format!("invalid repository name {name:?}"),
        ));
    }
    let name = name.to_owned();
    Ok(match route {
        Route::Tags { .. } => Route::Tags { name },
        Route::Uploads { .. } => Route::Uploads { name },
        Route::Upload { id, .. } => Route::Upload { name, id },
        Route::Blob { digest, .. } => Route::Blob { name, digest },
        Route::Manifest { reference, .. } => Route::Manifest { name, reference },
        Route::Base => Route::Base,
    })
}

/// `sha256:` and 64 lower-case hex digits: the one algorithm served.
pub(crate) fn check_digest(d: &str) -> Result<(), BadPath> {
    match d.split_once(':') {
        Some(("sha256", hex))
            if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
        {
            Ok(())
        }
        Some(("sha256" | "sha512", _)) | None => {
            Err(bad("DIGEST_INVALID", format!("invalid digest {d:?}")))
        }
        Some((alg, _)) => Err(bad(
            "DIGEST_INVALID",
            format!("unsupported digest algorithm {alg:?}: sha256 only"),
        )),
    }
}

/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub(crate) fn tag_ok(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Path components of `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` joined by `/`,
/// at most 255 characters in all.
pub(crate) fn name_ok(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name.split('/').all(gantry_units::valid_component)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn endpoints_are_found_from_the_end_of_names_with_slashes() {
        assert_eq!(parse("").unwrap(), Route::Base);
        assert_eq!(
            parse("shop/web/tags/list").unwrap(),
            Route::Tags {
                name: "shop/web".into()
            }
        );
        assert_eq!(
            parse("a/b/c/manifests/v1.2_x").unwrap(),
            Route::Manifest {
                name: "a/b/c".into(),
                reference: "v1.2_x".into()
            }
        );
        assert_eq!(
            parse(&format!("a/manifests/{D}")).unwrap(),
            Route::Manifest {
                name: "a".into(),
                reference: D.into()
            }
        );
        assert_eq!(
            parse(&format!("x-y/blobs/{D}")).unwrap(),
            Route::Blob {
                name: "x-y".into(),
                digest: D.into()
            }
        );
        for p in ["a/blobs/uploads/", "a/blobs/uploads"] {
            assert_eq!(parse(p).unwrap(), Route::Uploads { name: "a".into() });
        }
        assert_eq!(
            parse("a/blobs/uploads/0f-aa").unwrap(),
            Route::Upload {
                name: "a".into(),
                id: "0f-aa".into()
            }
        );
        // A repository may be named like an endpoint's word.
        assert_eq!(
            parse("blobs/manifests/latest").unwrap(),
            Route::Manifest {
                name: "blobs".into(),
                reference: "latest".into()
            }
        );
    }

    #[test]
    fn bad_names_tags_and_digests_get_the_specs_codes() {
        let code = |p: &str| parse(p).unwrap_err().code;
        assert_eq!(code("Shop/manifests/v1"), "NAME_INVALID");
        assert_eq!(code("a//b/manifests/v1"), "NAME_INVALID");
        assert_eq!(code("a/../b/manifests/v1"), "NAME_INVALID");
        assert_eq!(code("-a/manifests/v1"), "NAME_INVALID");
        assert_eq!(code("a.-b/manifests/v1"), "NAME_INVALID");
        assert_eq!(code("a/manifests/.v1"), "TAG_INVALID");
        assert_eq!(
            code(&format!("a/manifests/{}", "t".repeat(129))),
            "TAG_INVALID"
        );
        assert_eq!(code("a/blobs/sha256:abc"), "DIGEST_INVALID");
        assert_eq!(
            code(&format!("a/blobs/{}", D.to_uppercase())),
            "DIGEST_INVALID"
        );
        assert_eq!(code("a/blobs/md5:00"), "DIGEST_INVALID");
        assert_eq!(code("a/blobs/uploads/../../x"), "BLOB_UPLOAD_INVALID");
        assert_eq!(code("a/catalog"), "UNSUPPORTED");
        assert!(parse("a__b.c--d/e_f/manifests/latest").is_ok());
        assert_eq!(
            code(&format!("{}/tags/list", "a".repeat(256))),
            "NAME_INVALID"
        );
    }
}
