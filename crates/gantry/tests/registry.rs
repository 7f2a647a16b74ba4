//! The cluster's registry (every manager serves the OCI distribution API
//! on its port) against real clients: Gantry's own CLI with the admin
//! credential and a node pulling with its certificate, skopeo and Docker
//! Engine with a registry user's password, and curl for the distribution
//! spec's behaviour of every endpoint served (status codes, `Location`,
//! `Docker-Content-Digest`, chunked and ranged uploads, ranges, paging,
//! deletes, refusals).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::cluster::*;
use common::*;
use serde_json::Value;
use sha2::Digest as _;

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

/// An answer: status, headers (lower-case names) and body.
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }

    fn code(&self) -> String {
        let v: Value = serde_json::from_slice(&self.body).unwrap_or(Value::Null);
        v["errors"][0]["code"].as_str().unwrap_or("").to_owned()
    }
}

/// curl against the manager's port, trusting the cluster CA.
struct Http {
    base: String,
    ca: PathBuf,
    dir: tempfile::TempDir,
}

impl Http {
    /// `auth`: `user:password`, or none.
    fn call(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        headers: &[&str],
        body: Option<&[u8]>,
    ) -> Answer {
        let hfile = self.dir.path().join("h");
        let bfile = self.dir.path().join("b");
        let mut c = Command::new("curl");
        c.args(["-s", "-S", "--cacert"])
            .arg(&self.ca)
            .arg("-D")
            .arg(&hfile)
            .arg("-o")
            .arg(&bfile)
            .args(["-w", "%{http_code}"]);
        if method == "HEAD" {
            c.arg("--head");
        } else {
            c.args(["-X", method]);
        }
        if let Some(a) = auth {
            c.args(["-u", a]);
        }
        for h in headers {
            c.args(["-H", h]);
        }
        if let Some(b) = body {
            let p = self.dir.path().join("in");
            std::fs::write(&p, b).unwrap();
            c.arg("--data-binary").arg(format!("@{}", p.display()));
        }
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        };
        let o = c.arg(url).output().unwrap();
        let status = String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        let mut headers = BTreeMap::new();
        for line in std::fs::read_to_string(&hfile).unwrap_or_default().lines() {
            if let Some((k, v)) = line.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let body = std::fs::read(&bfile).unwrap_or_default();
        let _ = std::fs::remove_file(&bfile);
        Answer {
            status,
            headers,
            body,
        }
    }
}

/// The admin credential's manager address and CA (written to a file).
fn admin(cfg: &Path) -> (String, String) {
    let v: Value = serde_json::from_slice(&std::fs::read(cfg.join("admin.json")).unwrap()).unwrap();
    (
        v["manager"].as_str().unwrap().to_owned(),
        v["ca_pem"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn the_cluster_registry_serves_gantry_skopeo_and_docker_as_the_spec_says() {
    let test = "the_cluster_registry_serves_gantry_skopeo_and_docker_as_the_spec_says";
    let Some(d) = Dev::start(test) else {
        return;
    };
    let (mgr, ca_pem) = admin(d.config_dir());
    // What a registry client is told to trust is the cluster's CA.
    let o = d.cli(&["ca", "inspect", "--pem"]);
    assert!(o.status.success(), "{}", errtext(&o));
    assert_eq!(text(&o).trim(), ca_pem.trim());
    let certs = tempfile::tempdir().unwrap();
    std::fs::write(certs.path().join("ca.crt"), &ca_pem).unwrap();
    let http = Http {
        base: format!("https://{mgr}"),
        ca: certs.path().join("ca.crt"),
        dir: tempfile::tempdir().unwrap(),
    };

    // Users: one that pushes, one that only pulls.
    let user = |extra: &[&str], name: &str| {
        let mut args = vec!["registry", "user", "add", "-q"];
        args.extend_from_slice(extra);
        args.push(name);
        let o = d.cli(&args);
        assert!(o.status.success(), "{}", errtext(&o));
        format!("{name}:{}", text(&o).trim())
    };
    let ci = user(&[], "ci");
    let viewer = user(&["--pull-only"], "viewer");
    let users = d.cli(&["registry", "user", "ls", "--format", "json"]);
    let v: Value = serde_json::from_slice(&users.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    assert!(
        v[0].get("password").is_none(),
        "a password is shown once: {v}"
    );

    // --- the base endpoint and who may use it
    let a = http.call("GET", "/v2/", None, &[], None);
    assert_eq!(a.status, 401);
    assert!(
        a.header("www-authenticate").starts_with("Basic"),
        "{:?}",
        a.headers
    );
    assert_eq!(a.code(), "UNAUTHORIZED");
    let a = http.call("GET", "/v2/", Some("ci:wrong"), &[], None);
    assert_eq!(a.status, 401);
    let a = http.call("GET", "/v2/", Some(&ci), &[], None);
    assert_eq!(a.status, 200);
    assert_eq!(a.header("docker-distribution-api-version"), "registry/2.0");

    // --- a chunked upload, with the spec's ranges
    let a = http.call("POST", "/v2/conf/app/blobs/uploads/", Some(&ci), &[], None);
    assert_eq!(a.status, 202, "{}", String::from_utf8_lossy(&a.body));
    let loc = a.header("location").to_owned();
    assert!(loc.starts_with("/v2/conf/app/blobs/uploads/"), "{loc}");
    assert_eq!(a.header("range"), "0-0");
    assert!(!a.header("docker-upload-uuid").is_empty());
    let octet = "Content-Type: application/octet-stream";
    let a = http.call(
        "PATCH",
        &loc,
        Some(&ci),
        &[octet, "Content-Range: 0-5"],
        Some(b"hello "),
    );
    assert_eq!(a.status, 202);
    assert_eq!(a.header("range"), "0-5");
    let loc = a.header("location").to_owned();
    let a = http.call(
        "PATCH",
        &loc,
        Some(&ci),
        &[octet, "Content-Range: 0-2"],
        Some(b"hel"),
    );
    assert_eq!(a.status, 416, "a chunk out of order");
    assert_eq!(a.header("range"), "0-5");
    let a = http.call(
        "PATCH",
        &loc,
        Some(&ci),
        &[octet, "Content-Range: 6-10"],
        Some(b"world"),
    );
    assert_eq!(a.status, 202);
    assert_eq!(a.header("range"), "0-10");
    let a = http.call("GET", &loc, Some(&ci), &[], None);
    assert_eq!(a.status, 204);
    assert_eq!(a.header("range"), "0-10");
    let blob = b"hello world";
    let digest = sha(blob);
    let wrong = sha(b"something else");
    let sep = |l: &str| if l.contains('?') { '&' } else { '?' };
    let a = http.call(
        "PUT",
        &format!("{loc}{}digest={wrong}", sep(&loc)),
        Some(&ci),
        &[octet],
        None,
    );
    assert_eq!(a.status, 400);
    assert_eq!(a.code(), "DIGEST_INVALID");
    let a = http.call("GET", &loc, Some(&ci), &[], None);
    assert_eq!(a.status, 404, "a failed upload is gone");
    assert_eq!(a.code(), "BLOB_UPLOAD_UNKNOWN");
    // Again, the last chunk with the PUT.
    let a = http.call("POST", "/v2/conf/app/blobs/uploads/", Some(&ci), &[], None);
    let loc = a.header("location").to_owned();
    let a = http.call("PATCH", &loc, Some(&ci), &[octet], Some(b"hello "));
    assert_eq!(a.status, 202);
    let a = http.call(
        "PUT",
        &format!("{loc}{}digest={digest}", sep(&loc)),
        Some(&ci),
        &[octet],
        Some(b"world"),
    );
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.header("location"), format!("/v2/conf/app/blobs/{digest}"));
    assert_eq!(a.header("docker-content-digest"), digest);

    // --- blobs: HEAD, GET, ranges
    let path = format!("/v2/conf/app/blobs/{digest}");
    let a = http.call("HEAD", &path, Some(&viewer), &[], None);
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-length"), "11");
    assert_eq!(a.header("docker-content-digest"), digest);
    let a = http.call("GET", &path, Some(&viewer), &[], None);
    assert_eq!(a.body, blob);
    let a = http.call("GET", &path, Some(&viewer), &["Range: bytes=6-10"], None);
    assert_eq!(a.status, 206);
    assert_eq!(a.body, b"world");
    assert_eq!(a.header("content-range"), "bytes 6-10/11");
    let a = http.call("GET", &path, Some(&viewer), &["Range: bytes=50-"], None);
    assert_eq!(a.status, 416);
    let a = http.call(
        "GET",
        &format!("/v2/conf/app/blobs/{wrong}"),
        Some(&viewer),
        &[],
        None,
    );
    assert_eq!(a.status, 404);
    assert_eq!(a.code(), "BLOB_UNKNOWN");

    // --- monolithic upload, and a mount from another repository
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{}}"#;
    let config_digest = sha(config);
    let a = http.call(
        "POST",
        &format!("/v2/conf/app/blobs/uploads/?digest={config_digest}"),
        Some(&ci),
        &[octet],
        Some(config),
    );
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.header("docker-content-digest"), config_digest);
    let a = http.call(
        "POST",
        &format!("/v2/other/blobs/uploads/?mount={digest}&from=conf/app"),
        Some(&ci),
        &[],
        None,
    );
    assert_eq!(a.status, 201);
    assert_eq!(a.header("location"), format!("/v2/other/blobs/{digest}"));
    // A viewer may not upload.
    let a = http.call(
        "POST",
        "/v2/conf/app/blobs/uploads/",
        Some(&viewer),
        &[],
        None,
    );
    assert_eq!(a.status, 403);
    assert_eq!(a.code(), "DENIED");

    // --- manifests
    let oci = "application/vnd.oci.image.manifest.v1+json";
    let manifest_with = |layer: &str, size: usize| {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{oci}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":{size}}}]}}"#,
            config.len()
        )
    };
    let ct = format!("Content-Type: {oci}");
    let missing = manifest_with(&wrong, 3);
    let a = http.call(
        "PUT",
        "/v2/conf/app/manifests/v1",
        Some(&ci),
        &[&ct],
        Some(missing.as_bytes()),
    );
    assert_eq!(a.status, 400);
    assert_eq!(a.code(), "MANIFEST_BLOB_UNKNOWN");
    let bad_size = manifest_with(&digest, 12);
    let a = http.call(
        "PUT",
        "/v2/conf/app/manifests/v1",
        Some(&ci),
        &[&ct],
        Some(bad_size.as_bytes()),
    );
    assert_eq!(a.status, 400, "a size that is not the blob's");
    let a = http.call(
        "PUT",
        "/v2/conf/app/manifests/v1",
        Some(&ci),
        &[&ct],
        Some(b"not json"),
    );
    assert_eq!(a.status, 400);
    assert_eq!(a.code(), "MANIFEST_INVALID");
    let m = manifest_with(&digest, blob.len());
    let md = sha(m.as_bytes());
    let a = http.call(
        "PUT",
        &format!("/v2/conf/app/manifests/{wrong}"),
        Some(&ci),
        &[&ct],
        Some(m.as_bytes()),
    );
    assert_eq!(a.status, 400);
    assert_eq!(a.code(), "DIGEST_INVALID");
    for tag in ["v1", "v2", "v3"] {
        let a = http.call(
            "PUT",
            &format!("/v2/conf/app/manifests/{tag}"),
            Some(&ci),
            &[&ct],
            Some(m.as_bytes()),
        );
        assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
        assert_eq!(a.header("location"), format!("/v2/conf/app/manifests/{md}"));
        assert_eq!(a.header("docker-content-digest"), md);
    }
    let a = http.call("GET", "/v2/conf/app/manifests/v2", Some(&viewer), &[], None);
    assert_eq!(a.status, 200);
    assert_eq!(a.body, m.as_bytes(), "byte for byte as pushed");
    assert_eq!(a.header("content-type"), oci);
    assert_eq!(a.header("docker-content-digest"), md);
    let a = http.call(
        "HEAD",
        &format!("/v2/conf/app/manifests/{md}"),
        Some(&viewer),
        &[],
        None,
    );
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-length"), m.len().to_string());
    let a = http.call(
        "PUT",
        "/v2/conf/app/manifests/v4",
        Some(&viewer),
        &[&ct],
        Some(m.as_bytes()),
    );
    assert_eq!(a.status, 403);
    let a = http.call(
        "GET",
        "/v2/conf/app/manifests/nope",
        Some(&viewer),
        &[],
        None,
    );
    assert_eq!(a.status, 404);
    assert_eq!(a.code(), "MANIFEST_UNKNOWN");
    let a = http.call("GET", "/v2/Bad/manifests/v1", Some(&viewer), &[], None);
    assert_eq!(a.status, 400);
    assert_eq!(a.code(), "NAME_INVALID");

    // --- tags, paged
    let a = http.call(
        "GET",
        "/v2/conf/app/tags/list?n=2",
        Some(&viewer),
        &[],
        None,
    );
    assert_eq!(a.status, 200);
    let v: Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(v["tags"], serde_json::json!(["v1", "v2"]));
    assert!(a.header("link").contains("last=v2"), "{:?}", a.headers);
    let a = http.call(
        "GET",
        "/v2/conf/app/tags/list?n=2&last=v2",
        Some(&viewer),
        &[],
        None,
    );
    let v: Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(v["tags"], serde_json::json!(["v3"]));
    assert_eq!(a.header("link"), "");
    let a = http.call("GET", "/v2/nothing/tags/list", Some(&viewer), &[], None);
    assert_eq!(a.status, 404);
    assert_eq!(a.code(), "NAME_UNKNOWN");

    // --- deletes
    let a = http.call("DELETE", "/v2/conf/app/manifests/v3", Some(&ci), &[], None);
    assert_eq!(a.status, 202);
    let a = http.call("GET", "/v2/conf/app/manifests/v3", Some(&viewer), &[], None);
    assert_eq!(a.status, 404);
    let a = http.call("DELETE", &path, Some(&ci), &[], None);
    assert_eq!(a.status, 409, "a blob an image uses stays");
    let a = http.call(
        "DELETE",
        &format!("/v2/conf/app/manifests/{md}"),
        Some(&ci),
        &[],
        None,
    );
    assert_eq!(a.status, 202);
    let a = http.call("GET", "/v2/conf/app/manifests/v1", Some(&viewer), &[], None);
    assert_eq!(a.status, 404, "its tags went with it");
    let a = http.call("DELETE", &path, Some(&ci), &[], None);
    assert_eq!(a.status, 202);
    let a = http.call("HEAD", &path, Some(&viewer), &[], None);
    assert_eq!(a.status, 404);

    // --- Gantry's CLI (admin credential) pushes; a task's node pulls
    // with its certificate.
    let reg = gantry_testkit::Registry::start();
    let src = format!("{}/test/bb:1", reg.addr);
    d.g.busybox_image(&src);
    d.g.ok(&["push", "-q", &src]);
    let target = format!("{mgr}/shop/bb:1");
    d.g.ok(&["tag", &src, &target]);
    let o = d.cli(&["push", "-q", &target]);
    assert!(o.status.success(), "{}", errtext(&o));
    let ls: Value =
        serde_json::from_slice(&d.cli(&["registry", "ls", "--format", "json"]).stdout).unwrap();
    assert_eq!(ls[0]["name"], "shop/bb", "{ls}");
    assert!(ls[0]["tags"].get("1").is_some(), "{ls}");
    // The node's store must not have it already.
    d.g.ok(&["rmi", &target]);
    d.g.ok(&["rmi", &src]);
    let stack = d.g.data.path().join("reg-stack.yml");
    std::fs::write(
        &stack,
        format!("services:\n  app:\n    image: {target}\n    command: [sleep, '100000']\n    stop_grace_period: 1s\n"),
    )
    .unwrap();
    let o = d.cli(&["deploy", "-d", "-f", stack.to_str().unwrap(), "reg"]);
    assert!(o.status.success(), "{}", errtext(&o));
    wait_for(
        "the task to run from the cluster's registry",
        Duration::from_secs(60),
        || {
            let v: Value = serde_json::from_slice(
                &d.cli(&["service", "ps", "reg_app", "--format", "json"])
                    .stdout,
            )
            .map_err(|e| e.to_string())?;
            match v[0]["state"].as_str() {
                Some("running") => Ok(()),
                _ => Err(v.to_string()),
            }
        },
    );

    // --- Gantry's CLI on a host without the admin credential: gantry
    // login with a user's password, the cluster CA in a certs.d folder as
    // Docker keeps them.
    let certs_d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(certs_d.path().join(&mgr)).unwrap();
    std::fs::write(certs_d.path().join(&mgr).join("ca.crt"), &ca_pem).unwrap();
    let ci_home = tempfile::tempdir().unwrap();
    let as_ci = |args: &[&str], input: Option<&str>| {
        use std::io::Write;
        let mut child =
            d.g.cmd()
                .env("GANTRY_CONFIG_DIR", ci_home.path().join("gantry"))
                .env("DOCKER_CONFIG", ci_home.path().join("docker"))
                .env("GANTRY_REGISTRY_CERTS", certs_d.path())
                .args(args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        if let Some(i) = input {
            stdin.write_all(i.as_bytes()).unwrap();
        }
        drop(stdin);
        child.wait_with_output().unwrap()
    };
    let (ci_user, ci_pw) = ci.split_once(':').unwrap();
    let o = as_ci(
        &["login", &mgr, "-u", ci_user, "--password-stdin"],
        Some("wrong"),
    );
    assert!(!o.status.success(), "a wrong password logged in");
    let o = as_ci(
        &["login", &mgr, "-u", ci_user, "--password-stdin"],
        Some(ci_pw),
    );
    assert!(o.status.success(), "gantry login: {}", errtext(&o));
    let ci_image = format!("{mgr}/ci/bb:7");
    let o = d.cli(&["pull", "-q", &target]);
    assert!(o.status.success(), "{}", errtext(&o));
    d.g.ok(&["tag", &target, &ci_image]);
    let o = as_ci(&["push", "-q", &ci_image], None);
    assert!(o.status.success(), "push as ci: {}", errtext(&o));
    let ls: Value =
        serde_json::from_slice(&d.cli(&["registry", "ls", "--format", "json"]).stdout).unwrap();
    assert!(
        ls.as_array().unwrap().iter().any(|r| r["name"] == "ci/bb"),
        "{ls}"
    );

    // --- skopeo, with a user's password and the cluster CA
    let skopeo = |args: &[&str]| Command::new("skopeo").args(args).output().unwrap();
    let cert_dir = certs.path().to_str().unwrap();
    let o = skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--dest-cert-dir",
        cert_dir,
        "--dest-creds",
        &ci,
        &format!("docker://{src}"),
        &format!("docker://{mgr}/sk/bb:2"),
    ]);
    assert!(o.status.success(), "skopeo copy in: {}", errtext(&o));
    let o = skopeo(&[
        "inspect",
        "--cert-dir",
        cert_dir,
        "--creds",
        &viewer,
        &format!("docker://{mgr}/sk/bb:2"),
    ]);
    assert!(o.status.success(), "skopeo inspect: {}", errtext(&o));
    let out = tempfile::tempdir().unwrap();
    let o = skopeo(&[
        "copy",
        "--src-cert-dir",
        cert_dir,
        "--src-creds",
        &viewer,
        &format!("docker://{mgr}/sk/bb:2"),
        &format!("dir:{}", out.path().display()),
    ]);
    assert!(o.status.success(), "skopeo copy out: {}", errtext(&o));
    let o = skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--dest-cert-dir",
        cert_dir,
        "--dest-creds",
        &viewer,
        &format!("docker://{src}"),
        &format!("docker://{mgr}/sk/bb:3"),
    ]);
    assert!(!o.status.success(), "a pull-only user pushed");
    let o = skopeo(&[
        "inspect",
        "--cert-dir",
        cert_dir,
        &format!("docker://{mgr}/sk/bb:2"),
    ]);
    assert!(!o.status.success(), "anonymous inspect worked");

    // --- Docker Engine (a loopback registry: TLS without verification,
    // as dockerd treats 127.0.0.0/8), with docker login.
    let engine = gantry_testkit::DockerEngine::start();
    let dcfg = tempfile::tempdir().unwrap();
    let dc = dcfg.path().to_str().unwrap();
    let docker = |args: &[&str]| {
        let mut all = vec!["--config", dc];
        all.extend_from_slice(args);
        engine.docker(&all).unwrap()
    };
    let (user, pw) = ci.split_once(':').unwrap();
    let o = docker(&["login", &mgr, "-u", user, "-p", pw]);
    assert!(o.status.success(), "docker login: {}", errtext(&o));
    let o = docker(&["pull", &format!("{mgr}/sk/bb:2")]);
    assert!(o.status.success(), "docker pull: {}", errtext(&o));
    let o = docker(&["tag", &format!("{mgr}/sk/bb:2"), &format!("{mgr}/dk/bb:3")]);
    assert!(o.status.success(), "{}", errtext(&o));
    let o = docker(&["push", &format!("{mgr}/dk/bb:3")]);
    assert!(
        o.status.success(),
        "docker push: {}\n{}",
        text(&o),
        errtext(&o)
    );
    // What Docker pushed, Gantry pulls and runs.
    let o = d.cli(&["pull", "-q", &format!("{mgr}/dk/bb:3")]);
    assert!(o.status.success(), "{}", errtext(&o));
    let o = d.cli(&[
        "run",
        "--rm",
        &format!("{mgr}/dk/bb:3"),
        "echo",
        "from-docker",
    ]);
    assert!(
        text(&o).contains("from-docker"),
        "{}{}",
        text(&o),
        errtext(&o)
    );
    let o = docker(&["logout", &mgr]);
    assert!(o.status.success());
    let o = docker(&["push", &format!("{mgr}/dk/bb:3")]);
    assert!(!o.status.success(), "docker pushed after logout");

    // Removed users are refused at once.
    let o = d.cli(&["registry", "user", "rm", "ci"]);
    assert!(o.status.success(), "{}", errtext(&o));
    let a = http.call("GET", "/v2/", Some(&ci), &[], None);
    assert_eq!(a.status, 401);
}

/// A stack with `build:` on three simulated hosts and no registry of its
/// own: the manager builds it (context after .dockerignore, build args),
/// pushes it to the cluster's registry, and every node runs it by
/// digest; a build that fails deploys nothing and the running version
/// stays.
#[test]
fn a_stack_with_build_deploys_from_the_cluster_registry_and_a_failed_build_changes_nothing() {
    let Some(mut cl) = Cluster::new("a_stack_with_build_deploys", 3) else {
        return;
    };
    for i in 0..3 {
        cl.start_agent(i);
    }
    // Builds go to the builder node while there is one.
    let o = cl.admin(&[
        "node",
        "update",
        "--label-add",
        "gantry.builder=true",
        "node-1",
    ]);
    assert!(o.status.success(), "{}", errtext(&o));
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    std::fs::create_dir_all(app.join("src")).unwrap();
    std::fs::write(app.join("src/msg.txt"), "built on the cluster\n").unwrap();
    std::fs::write(app.join("secret.txt"), "never sent\n").unwrap();
    // The Dockerfile is not copied: a change to it leaves COPY's key.
    std::fs::write(app.join(".dockerignore"), "secret.txt\nDockerfile\n").unwrap();
    // The base image is in the cluster's registry: the builder node pulls
    // it with its own certificate.
    let base = format!("{}/base/bb:1", cl.manager_addr());
    cl.g.ok(&["tag", &cl.image, &base]);
    let o = cl.admin(&["push", "-q", &base]);
    assert!(o.status.success(), "{}", errtext(&o));
    let dockerfile = |extra: &str| {
        format!(
            "FROM {base}\nARG GREETING\nCOPY . /ctx\nRUN test ! -e /ctx/secret.txt && echo \"$GREETING\" > /greeting\n{extra}CMD [\"sleep\", \"100000\"]\n"
        )
    };
    std::fs::write(app.join("Dockerfile"), dockerfile("")).unwrap();
    let stack = dir.path().join("stack.yml");
    std::fs::write(
        &stack,
        "services:\n  web:\n    build:\n      context: ./app\n      cache_from: [shop/web:1]\n      args:\n        GREETING: hello-from-build\n    image: shop/web:1\n    stop_grace_period: 1s\n    deploy:\n      mode: global\n",
    )
    .unwrap();
    let o = cl.admin(&["deploy", "-d", "-f", stack.to_str().unwrap(), "shop"]);
    assert!(
        o.status.success(),
        "{}{}\n{}",
        text(&o),
        errtext(&o),
        cl.tail("manager.log")
    );
    assert!(
        errtext(&o).contains("[web] building on node node-1"),
        "the build ran on the builder node, its output streamed: {}",
        errtext(&o)
    );
    cl.wait_total("shop_web", 3, Duration::from_secs(90));
    let services = cl.json(&["service", "ls", "--format", "json"]);
    let image = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "shop_web")
        .map(|s| s["image"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    assert!(
        image.starts_with(&format!("{}/shop/web@sha256:", cl.manager_addr())),
        "deployed by digest from the cluster's registry: {image} ({services})"
    );
    let repos = cl.json(&["registry", "ls", "--format", "json"]);
    assert!(
        repos
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "shop/web"),
        "{repos}"
    );
    // The build's output is in the image every node runs.
    let c = cl.container_of(0, "shop_web");
    let o = cl.on_agent(0, &["exec", &c, "cat", "/greeting", "/ctx/src/msg.txt"]);
    assert!(
        text(&o).contains("hello-from-build"),
        "{}{}",
        text(&o),
        errtext(&o)
    );
    assert!(text(&o).contains("built on the cluster"), "{}", text(&o));
    let before = cl.containers(0);

    // A build that fails: nothing is deployed, the service keeps its
    // image and its tasks.
    std::fs::write(
        app.join("Dockerfile"),
        dockerfile("RUN echo about to fail && exit 3\n"),
    )
    .unwrap();
    let image_of = || {
        let services = cl.json(&["service", "ls", "--format", "json"]);
        services
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "shop_web")
            .map(|s| s["image"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default()
    };
    // On the builder node, then (no builder left) on the manager.
    for builder in ["node node-1", "manager"] {
        let o = cl.admin(&["deploy", "-d", "-f", stack.to_str().unwrap(), "shop"]);
        assert!(!o.status.success(), "a failed build deployed: {}", text(&o));
        let err = errtext(&o);
        assert!(err.contains("nothing was deployed"), "{builder}: {err}");
        assert!(
            err.contains("about to fail"),
            "{builder}: its output streamed: {err}"
        );
        assert_eq!(
            err.contains("building on node node-1"),
            builder != "manager",
            "{err}"
        );
        // The manager never built this: the image node-1 built, in the
        // cluster's registry, serves COPY and the first RUN.
        if builder == "manager" {
            let from = format!("Cache from {}/shop/web:1: ", cl.manager_addr());
            assert!(err.contains(&from), "{err}");
            assert_eq!(err.matches("Using cache").count(), 2, "{err}");
        }
        assert_eq!(image_of(), image);
        let o = cl.admin(&["node", "update", "--label-rm", "gantry.builder", "node-1"]);
        assert!(o.status.success(), "{}", errtext(&o));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(cl.containers(0), before, "the running tasks stayed");

    // Built on the manager this time, and rolled out.
    std::fs::write(app.join("Dockerfile"), dockerfile("")).unwrap();
    std::fs::write(app.join("src/msg.txt"), "built on the manager\n").unwrap();
    let o = cl.admin(&["deploy", "-d", "-f", stack.to_str().unwrap(), "shop"]);
    assert!(o.status.success(), "{}", errtext(&o));
    assert!(!errtext(&o).contains("building on node"), "{}", errtext(&o));
    let rebuilt = image_of();
    assert_ne!(rebuilt, image, "a new build is a new digest");
    wait_for(
        "the rebuilt image to run on node 0",
        Duration::from_secs(90),
        || {
            let c = cl.container_of(0, "shop_web");
            let o = cl.on_agent(0, &["exec", &c, "cat", "/ctx/src/msg.txt"]);
            if text(&o).contains("built on the manager") {
                Ok(())
            } else {
                let ps = cl.admin(&["service", "ps", "shop_web"]);
                Err(format!(
                    "{}\n{}\n{}",
                    text(&o),
                    text(&ps),
                    cl.tail("manager.log")
                ))
            }
        },
    );
}

/// A node that pulls a blob another node already fetched gets it from
/// that node (the manager sends it there), checked by digest; a node that
/// no longer has it costs one failed request, and the blob comes from
/// the manager. Nodes asking at once read it from one still getting it.
#[test]
fn nodes_fetch_layers_from_the_nodes_that_have_them() {
    let Some(mut cl) = Cluster::new("nodes_fetch_layers_from_the_nodes", 3) else {
        return;
    };
    for i in 0..3 {
        cl.start_agent(i);
    }
    let image = format!("{}/p2p/bb:1", cl.manager_addr());
    cl.g.ok(&["tag", &cl.image, &image]);
    let o = cl.admin(&["push", "-q", &image]);
    assert!(o.status.success(), "{}", errtext(&o));
    let dir = tempfile::tempdir().unwrap();
    let deploy_on = |stack: &str, host: usize| {
        let f = dir.path().join(format!("{stack}.yml"));
        std::fs::write(
            &f,
            format!("services:\n  app:\n    image: {image}\n    command: [sleep, '100000']\n    stop_grace_period: 1s\n    deploy:\n      placement: {{constraints: [node.hostname == node-{host}]}}\n"),
        )
        .unwrap();
        let o = cl.admin(&["deploy", "-d", "-f", f.to_str().unwrap(), stack]);
        assert!(o.status.success(), "{}", errtext(&o));
        cl.wait_total(&format!("{stack}_app"), 1, Duration::from_secs(60));
    };
    let log = |i: usize| {
        std::fs::read_to_string(cl.logs.path().join(format!("agent{i}.log"))).unwrap_or_default()
    };
    // The first node gets it from the manager.
    deploy_on("first", 1);
    assert!(!log(0).contains("a blob from a peer"), "{}", log(0));
    // The second from the first.
    deploy_on("second", 2);
    assert!(
        log(1).contains("a blob from a peer"),
        "{}",
        cl.tail("agent1.log")
    );
    // Both forget it: the third is sent to one of them, fails there, and
    // gets it from the manager.
    for (stack, i) in [("first", 0), ("second", 1)] {
        cl.admin_ok(&["stack", "rm", stack]);
        wait_for("the containers to go", Duration::from_secs(30), || {
            if cl.on_agent(i, &["ps", "-aq"]).stdout.is_empty() {
                Ok(())
            } else {
                Err("still there".into())
            }
        });
        let o = cl.on_agent(i, &["rmi", &image]);
        assert!(o.status.success(), "{}", errtext(&o));
    }
    deploy_on("third", 3);
    assert!(
        log(2).contains("a peer failed"),
        "{}",
        cl.tail("agent2.log")
    );

    // Three nodes asking at once for a layer none has: the manager sends
    // it to one, and the others read it from a node that is still getting
    // it. Every node runs the image (each checked every digest).
    let ctx = dir.path().join("big");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::copy("/bin/busybox", ctx.join("busybox")).unwrap();
    let mut big = vec![0u8; 16 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in big.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(ctx.join("big.bin"), &big).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY big.bin /big.bin\nCMD [\"/bin/busybox\", \"sleep\", \"100000\"]\n",
    )
    .unwrap();
    let bigimage = format!("{}/p2p/big:1", cl.manager_addr());
    cl.g.ok(&["build", "-q", "-t", &bigimage, ctx.to_str().unwrap()]);
    let o = cl.admin(&["push", "-q", &bigimage]);
    assert!(o.status.success(), "{}", errtext(&o));
    let f = dir.path().join("all.yml");
    std::fs::write(
        &f,
        format!("services:\n  app:\n    image: {bigimage}\n    stop_grace_period: 1s\n    deploy:\n      mode: global\n"),
    )
    .unwrap();
    let o = cl.admin(&["deploy", "-d", "-f", f.to_str().unwrap(), "all"]);
    assert!(o.status.success(), "{}", errtext(&o));
    cl.wait_total("all_app", 3, Duration::from_secs(90));
    let tailed = (0..3).any(|i| log(i).contains("serving a blob that is still arriving"));
    assert!(
        tailed,
        "no node served a blob while it arrived: {}{}{}",
        cl.tail("agent0.log"),
        cl.tail("agent1.log"),
        cl.tail("agent2.log")
    );
    for i in 0..3 {
        let c = cl.container_of(i, "all_app");
        let o = cl.on_agent(i, &["exec", &c, "/bin/busybox", "wc", "-c", "/big.bin"]);
        assert!(
            text(&o).contains(&(16u64 << 20).to_string()),
            "{}",
            text(&o)
        );
    }
}
