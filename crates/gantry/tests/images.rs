//! Images end to end: build, push to and pull from a real loopback
//! registry (Debian's docker-registry), images made by a third-party client
//! (skopeo), hostile layers, auth, and failures that must leave nothing.

mod common;

use std::process::Command;

use common::*;
use sha2::{Digest as _, Sha256};

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn curl(args: &[&str]) -> std::process::Output {
    Command::new("curl").args(args).output().expect("curl")
}

/// Uploads a blob with the registry API (monolithic upload).
fn upload_blob(reg: &Registry, repo: &str, data: &[u8]) -> String {
    let digest = sha(data);
    let out = curl(&[
        "-s",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-X",
        "POST",
        &format!("http://{}/v2/{repo}/blobs/uploads/", reg.addr),
    ]);
    let headers = text(&out);
    let loc = headers
        .lines()
        .find_map(|l| {
            l.strip_prefix("Location: ")
                .or_else(|| l.strip_prefix("location: "))
        })
        .expect("upload location")
        .trim()
        .to_owned();
    let url = if loc.starts_with("http") {
        loc
    } else {
        format!("http://{}{loc}", reg.addr)
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), data).unwrap();
    let put = curl(&[
        "-sf",
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        &format!("@{}", f.path().display()),
        &format!("{url}{sep}digest={digest}"),
    ]);
    assert!(put.status.success(), "blob upload: {}", errtext(&put));
    digest
}

/// Pushes an image made by hand (not by Gantry) with the raw registry API.
fn push_raw(reg: &Registry, repo: &str, tag: &str, layers: &[Vec<u8>], diff_ids: &[String]) {
    push_raw_cmd(reg, repo, tag, layers, diff_ids, &["/bin/busybox", "true"]);
}

/// As `push_raw` with a Cmd; returns the manifest's digest and size.
fn push_raw_cmd(
    reg: &Registry,
    repo: &str,
    tag: &str,
    layers: &[Vec<u8>],
    diff_ids: &[String],
    cmd: &[&str],
) -> (String, usize) {
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": cmd},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let cd = upload_blob(reg, repo, &config);
    let ls: Vec<_> = layers
        .iter()
        .map(|l| {
            let d = upload_blob(reg, repo, l);
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": l.len()})
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": ls,
    });
    let body = serde_json::to_vec(&manifest).unwrap();
    put_manifest(
        reg,
        repo,
        tag,
        &body,
        "application/vnd.oci.image.manifest.v1+json",
    );
    (sha(&body), body.len())
}

fn put_manifest(reg: &Registry, repo: &str, tag: &str, body: &[u8], media: &str) {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), body).unwrap();
    let put = curl(&[
        "-sf",
        "-X",
        "PUT",
        "-H",
        &format!("Content-Type: {media}"),
        "--data-binary",
        &format!("@{}", f.path().display()),
        &format!("http://{}/v2/{repo}/manifests/{tag}", reg.addr),
    ]);
    assert!(put.status.success(), "manifest upload: {}", errtext(&put));
}

/// A tar with raw entry names, as a hostile archive would carry.
fn raw_tar(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, data, link) in entries {
        let mut h = tar::Header::new_gnu();
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

const APP_DOCKERFILE: &str = r#"FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ARG VERSION=dev
ENV APP_VERSION=$VERSION GREETING="hello there"
WORKDIR /app
COPY site/ /app/site/
RUN echo "built $APP_VERSION" > /app/built.txt && mkdir -p /app/tmp && echo junk > /app/tmp/junk
LABEL org.opencontainers.image.title="demo app"
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=2s --retries=3 CMD wget -q -O /dev/null http://localhost:8080/ || exit 1
CMD ["sh", "-c", "cat /app/built.txt /app/site/index.html; echo $GREETING"]
"#;

fn app_context(g: &G) -> tempfile::TempDir {
    let ctx = g.context(APP_DOCKERFILE);
    std::fs::create_dir(ctx.path().join("site")).unwrap();
    std::fs::write(ctx.path().join("site/index.html"), "<h1>site</h1>\n").unwrap();
    std::fs::write(ctx.path().join("site/secret.key"), "do not ship").unwrap();
    std::fs::write(ctx.path().join(".dockerignore"), "site/*.key\n").unwrap();
    ctx
}

#[test]
fn build_push_delete_pull_run() {
    let Some(g) = G::new("build_push_delete_pull_run") else {
        return;
    };
    let reg = Registry::start();
    let ctx = app_context(&g);
    let tag = format!("{}/team/app:v1", reg.addr);
    let out = g.ok(&[
        "build",
        "-t",
        &tag,
        "--build-arg",
        "VERSION=1.2",
        ctx.path().to_str().unwrap(),
    ]);
    assert!(out.contains("Step 12/12"), "{out}");
    let first = g.inspect_image(&tag);
    // The image config carries what the Dockerfile said.
    let cfg = &first["Config"]["config"];
    assert_eq!(cfg["WorkingDir"], "/app");
    assert_eq!(cfg["Labels"]["org.opencontainers.image.title"], "demo app");
    assert!(cfg["ExposedPorts"].get("8080/tcp").is_some());
    assert_eq!(cfg["Healthcheck"]["Test"][0], "CMD-SHELL");
    assert_eq!(cfg["Healthcheck"]["Interval"], 5_000_000_000u64);
    assert!(cfg["Env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e == "APP_VERSION=1.2"));
    assert_eq!(
        first["Manifest"]["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    // An unchanged rebuild adds no layer and gives the same image.
    let again = g.ok(&[
        "build",
        "-t",
        &tag,
        "--build-arg",
        "VERSION=1.2",
        ctx.path().to_str().unwrap(),
    ]);
    assert_eq!(again.matches("Using cache").count(), 4, "{again}");
    assert_eq!(g.inspect_image(&tag)["Id"], first["Id"]);
    // .dockerignore kept the key out.
    g.fails(&["run", "--rm", &tag, "ls", "/app/site/secret.key"], 1);

    let pushed = g.ok(&["push", &tag]);
    assert!(pushed.contains("digest: sha256:"), "{pushed}");
    g.ok(&["rmi", &tag]);
    assert!(g.ok(&["images", "-q"]).trim().is_empty());
    g.ok(&["image", "prune"]);
    g.ok(&["pull", &tag]);
    assert_eq!(
        g.inspect_image(&tag)["Id"],
        first["Id"],
        "the same image came back"
    );
    assert_eq!(
        g.ok(&["run", "--rm", &tag]),
        "built 1.2\n<h1>site</h1>\nhello there\n"
    );

    // A fresh Gantry elsewhere pulls it too, layers verified and unpacked.
    let g2 = G::new("build_push_delete_pull_run").unwrap();
    assert_eq!(
        g2.ok(&["run", "--rm", &tag, "cat", "/app/built.txt"]),
        "built 1.2\n"
    );
    // Pushing to another repository of the same registry mounts the blobs.
    let other = format!("{}/other/app:v1", reg.addr);
    g.ok(&["tag", &tag, &other]);
    let out = g.cmd().args(["push", &other]).output().unwrap();
    assert!(out.status.success());
    let progress = errtext(&out);
    assert!(
        progress.contains("mounted from another repository") || progress.contains("already exists"),
        "{progress}"
    );
    // skopeo, a third-party client, accepts what Gantry built and pushed.
    let insp = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", &format!("docker://{tag}")])
        .output()
        .unwrap();
    assert!(insp.status.success(), "{}", errtext(&insp));
    let v: serde_json::Value = serde_json::from_slice(&insp.stdout).unwrap();
    assert_eq!(v["Architecture"], "amd64");
    assert_eq!(v["Layers"].as_array().unwrap().len(), 4);
    let dir = tempfile::tempdir().unwrap();
    let copy = Command::new("skopeo")
        .args([
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{tag}"),
            &format!("oci:{}:v1", dir.path().display()),
        ])
        .output()
        .unwrap();
    assert!(copy.status.success(), "skopeo copy: {}", errtext(&copy));
}

#[test]
fn image_pushed_by_skopeo_pulls_and_runs() {
    let Some(g) = G::new("image_pushed_by_skopeo_pulls_and_runs") else {
        return;
    };
    let reg = Registry::start();
    // A docker-archive (docker save format) made by hand; skopeo pushes it
    // as a Docker schema 2 image with its own compression.
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy(busybox(), root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/echo")).unwrap();
    let st = Command::new("tar")
        .args([
            "-C",
            root.to_str().unwrap(),
            "-cf",
            work.path().join("layer.tar").to_str().unwrap(),
            "bin",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let layer = std::fs::read(work.path().join("layer.tar")).unwrap();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["sh", "-c", "echo made by skopeo; echo $FROM_SKOPEO"], "Env": ["PATH=/bin", "FROM_SKOPEO=yes"]},
        "rootfs": {"type": "layers", "diff_ids": [sha(&layer)]},
    });
    std::fs::write(
        work.path().join("config.json"),
        serde_json::to_vec(&config).unwrap(),
    )
    .unwrap();
    std::fs::write(
        work.path().join("manifest.json"),
        r#"[{"Config":"config.json","RepoTags":["handmade:latest"],"Layers":["layer.tar"]}]"#,
    )
    .unwrap();
    let archive = work.path().join("archive.tar");
    let st = Command::new("tar")
        .args([
            "-C",
            work.path().to_str().unwrap(),
            "-cf",
            archive.to_str().unwrap(),
            "manifest.json",
            "config.json",
            "layer.tar",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let dest = format!("{}/handmade:latest", reg.addr);
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--dest-tls-verify=false",
            &format!("docker-archive:{}", archive.display()),
            &format!("docker://{dest}"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo push: {}", errtext(&out));
    g.ok(&["pull", &dest]);
    let img = g.inspect_image(&dest);
    assert_eq!(
        img["Manifest"]["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(g.ok(&["run", "--rm", &dest]), "made by skopeo\nyes\n");
}

#[test]
fn whiteouts_hide_lower_files_locally_and_after_a_round_trip() {
    let Some(g) = G::new("whiteouts_hide_lower_files_locally_and_after_a_round_trip") else {
        return;
    };
    let reg = Registry::start();
    let ctx = g.context(
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         RUN mkdir -p /d/sub /keep && echo a > /gone && echo b > /d/sub/old && echo c > /keep/stays\n\
         RUN rm /gone && rm -rf /d && mkdir -p /d && echo new > /d/fresh\n",
    );
    let tag = format!("{}/wh:1", reg.addr);
    g.ok(&["build", "-q", "-t", &tag, ctx.path().to_str().unwrap()]);
    let check = |g: &G| {
        let out = g.ok(&[
            "run",
            "--rm",
            &tag,
            "sh",
            "-c",
            "ls /gone 2>&1; ls /d; cat /keep/stays",
        ]);
        assert!(out.contains("No such file"), "{out}");
        assert!(
            out.contains("fresh") && !out.contains("sub"),
            "opaque dir hides the old content: {out}"
        );
        assert!(out.ends_with("c\n"), "{out}");
    };
    check(&g);
    g.ok(&["push", &tag]);
    let g2 = G::new("whiteouts_hide_lower_files_locally_and_after_a_round_trip").unwrap();
    g2.ok(&["pull", &tag]);
    check(&g2);
}

#[test]
fn malicious_layers_are_refused_and_nothing_is_written() {
    let Some(g) = G::new("malicious_layers_are_refused_and_nothing_is_written") else {
        return;
    };
    let reg = Registry::start();
    let victim = tempfile::tempdir().unwrap();
    let target = victim.path().join("pwned");
    let rel_escape = format!("../../../../../../../../..{}", target.display());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            raw_tar(&[(rel_escape.as_str(), tar::EntryType::Regular, b"x", None)]),
            "'..'",
        ),
        (
            "absolute",
            raw_tar(&[(
                target.to_str().unwrap(),
                tar::EntryType::Regular,
                b"x",
                None,
            )]),
            "absolute path",
        ),
        (
            "symlink",
            raw_tar(&[
                (
                    "esc",
                    tar::EntryType::Symlink,
                    b"",
                    Some(victim.path().to_str().unwrap()),
                ),
                ("esc/pwned", tar::EntryType::Regular, b"x", None),
            ]),
            "symlink",
        ),
        (
            "hardlink",
            raw_tar(&[("pw", tar::EntryType::Link, b"", Some("/etc/passwd"))]),
            "hard link",
        ),
    ];
    for (name, layer, why) in cases {
        let gz = gzip(&layer);
        push_raw(
            &reg,
            &format!("evil/{name}"),
            "latest",
            &[gz],
            &[sha(&layer)],
        );
        let r = format!("{}/evil/{name}:latest", reg.addr);
        let e = g.fails(&["pull", &r], 1);
        assert!(e.contains("refused") && e.contains(why), "{name}: {e}");
        assert_eq!(
            e.lines().filter(|l| l.starts_with("Error")).count(),
            1,
            "one error line: {e}"
        );
        assert!(!target.exists(), "{name} wrote outside the layer");
        assert!(g.store_tmp_is_empty(), "{name} left temp files");
        assert!(
            g.ok(&["images", "-q"]).trim().is_empty(),
            "{name} left an image"
        );
        let layers = std::fs::read_dir(g.data.path().join("images/layers"))
            .unwrap()
            .count();
        assert_eq!(layers, 0, "{name} left an unpacked layer");
    }
}

#[test]
fn registry_credentials_work_like_docker_login() {
    let Some(g) = G::new("registry_credentials_work_like_docker_login") else {
        return;
    };
    let reg = Registry::start_with_auth("alice", "s3cret");
    g.busybox_image("bb");
    let tag = format!("{}/private/bb:1", reg.addr);
    g.ok(&["tag", "bb", &tag]);
    let e = g.fails(&["push", &tag], 1);
    assert!(
        e.contains("refused the credentials") && e.contains("gantry login"),
        "{e}"
    );
    let e = g.fails(&["login", "-u", "alice", "-p", "wrong", &reg.addr], 1);
    assert!(e.contains("refused"), "{e}");
    let o = g.with_stdin(
        &["login", "-u", "alice", "--password-stdin", &reg.addr],
        b"s3cret\n",
    );
    assert!(o.status.success(), "{}", errtext(&o));
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(g.home.path().join(".docker/config.json")).unwrap())
            .unwrap();
    assert!(
        cfg["auths"][&reg.addr]["auth"].is_string(),
        "Docker's format: {cfg}"
    );
    g.ok(&["push", &tag]);
    g.ok(&["rmi", &tag]);
    g.ok(&["pull", &tag]);
    g.ok(&["logout", &reg.addr]);
    g.ok(&["rmi", &tag]);
    let e = g.fails(&["pull", &tag], 1);
    assert!(e.contains("refused"), "{e}");
}

#[test]
fn failures_are_one_clear_line_and_leave_nothing() {
    let Some(g) = G::new("failures_are_one_clear_line_and_leave_nothing") else {
        return;
    };
    let reg = Registry::start();
    let one_line = |e: &str| {
        assert_eq!(
            e.lines().filter(|l| l.starts_with("Error")).count(),
            1,
            "one error line: {e}"
        );
        assert!(
            e.trim_end().lines().last().unwrap().starts_with("Error: "),
            "the error comes last: {e}"
        );
    };
    // Unknown image on a registry.
    let e = g.fails(&["pull", &format!("{}/nothing:here", reg.addr)], 1);
    assert!(e.contains("not found"), "{e}");
    one_line(&e);
    // Bad reference.
    let e = g.fails(&["pull", "Bad/UPPER:case"], 1);
    assert!(e.contains("invalid reference format"), "{e}");
    one_line(&e);
    // Registry unreachable.
    let port = gantry_testkit::free_port();
    let e = g.fails(&["pull", &format!("127.0.0.1:{port}/x")], 1);
    assert!(e.contains("unreachable"), "{e}");
    one_line(&e);
    // run of an unknown image: Docker's 125.
    let e = g.fails(&["run", "--rm", &format!("127.0.0.1:{port}/x")], 125);
    assert!(e.contains("unreachable"), "{e}");
    // Bad Dockerfile lines name their line.
    let ctx = g.context("FROM scratch\nCOPY busybox /bin/busybox\nFROBNICATE now\n");
    let e = g.fails(&["build", ctx.path().to_str().unwrap()], 1);
    assert!(
        e.contains("Dockerfile line 3: unknown instruction: FROBNICATE"),
        "{e}"
    );
    one_line(&e);
    // A failing RUN: its line and code, and no container, temp dir or image left.
    let ctx = g.context("FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"exit 3\"]\n");
    let e = g.fails(&["build", "-t", "broken", ctx.path().to_str().unwrap()], 1);
    assert!(
        e.contains("Dockerfile line 3") && e.contains("non-zero code: 3"),
        "{e}"
    );
    assert!(
        g.ok(&["ps", "-aq"]).trim().is_empty(),
        "the RUN container is gone"
    );
    assert!(g.store_tmp_is_empty());
    assert!(g.out(&["image", "inspect", "broken"]).status.code() == Some(1));
    assert_eq!(
        std::fs::read_dir(g.data.path().join("containers"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().len() == 64)
            .count(),
        0
    );
    // Missing COPY source.
    let ctx = g.context("FROM scratch\nCOPY nothere /x\n");
    let e = g.fails(&["build", ctx.path().to_str().unwrap()], 1);
    assert!(
        e.contains("line 2") && e.contains("not found in build context"),
        "{e}"
    );
    // A corrupted blob in the registry: digest mismatch, nothing kept.
    g.busybox_image("bb");
    let tag = format!("{}/corrupt:1", reg.addr);
    g.ok(&["tag", "bb", &tag]);
    g.ok(&["push", &tag]);
    let layer = g.inspect_image(&tag)["Manifest"]["layers"][1]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_owned();
    let blob = reg
        .storage()
        .join("docker/registry/v2/blobs/sha256")
        .join(&layer[..2])
        .join(&layer)
        .join("data");
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let g2 = G::new("failures_are_one_clear_line_and_leave_nothing").unwrap();
    let e = g2.fails(&["pull", &tag], 1);
    assert!(e.to_lowercase().contains("digest"), "{e}");
    assert!(g2.store_tmp_is_empty());
    assert!(g2.ok(&["images", "-q"]).trim().is_empty());
    assert!(!g2
        .data
        .path()
        .join("images/blobs/sha256")
        .join(&layer)
        .exists());
    // No such container / invalid size.
    let e = g.fails(&["logs", "ghost"], 1);
    assert!(e.contains("no such container: ghost"), "{e}");
    let e = g.fails(&["run", "--rm", "-m", "12q", "bb", "true"], 125);
    assert!(e.contains("invalid size"), "{e}");
    one_line(&e);
    // A failed start leaves no cgroup, veth or mount behind...
    g.fails(&["run", "--name", "failed", "bb", "/no/such/program"], 127);
    let id = g.inspect_container("failed")["Id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_nothing_left(&id);
    g.ok(&["rm", "failed"]);
    // ...and with --rm, no container either.
    let e = g.fails(&["run", "--rm", "bb", "/no/such/program"], 127);
    one_line(&e);
    assert!(g.ok(&["ps", "-aq"]).trim().is_empty());
}

#[test]
fn image_management_commands() {
    let Some(g) = G::new("image_management_commands") else {
        return;
    };
    g.busybox_image("bb");
    g.ok(&["tag", "bb", "bb:second"]);
    let ls = g.ok(&["images"]);
    assert!(
        ls.contains("REPOSITORY") && ls.contains("second") && ls.contains("latest"),
        "{ls}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&g.ok(&["image", "ls", "--format", "json"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 1);
    assert_eq!(json[0]["tags"].as_array().unwrap().len(), 2);
    // In use by a container: rm refused without --force.
    g.ok(&["run", "--name", "user", "bb", "true"]);
    assert_eq!(
        g.ok(&["rmi", "bb:second"]),
        "Untagged: docker.io/library/bb:second\n"
    );
    let e = g.fails(&["rmi", "bb"], 1);
    assert!(e.contains("in use by container user"), "{e}");
    g.ok(&["rmi", "-f", "bb"]);
    // The container still runs from its untagged image.
    g.ok(&["start", "user"]);
    assert_eq!(g.ok(&["wait", "user"]), "0\n");
    g.ok(&["rm", "user"]);
    let pruned = g.ok(&["image", "prune"]);
    assert!(pruned.contains("Total: 1 image(s) removed"), "{pruned}");
    let layers = || {
        std::fs::read_dir(g.data.path().join("images/layers"))
            .unwrap()
            .count()
    };
    // The build cache keeps the layers its steps made, as Docker's, until
    // `builder prune`.
    assert!(layers() > 0);
    g.ok(&["builder", "prune"]);
    assert_eq!(layers(), 0);
    assert_eq!(
        std::fs::read_dir(g.data.path().join("images/blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
}

impl G {
    fn inspect_container(&self, name: &str) -> serde_json::Value {
        self.inspect(name)
    }

    fn inspect_image(&self, name: &str) -> serde_json::Value {
        let v: serde_json::Value =
            serde_json::from_str(&self.ok(&["image", "inspect", name])).unwrap();
        v[0].clone()
    }
}

#[test]
fn build_instructions_add_chown_chmod_user() {
    let Some(g) = G::new("build_instructions_add_chown_chmod_user") else {
        return;
    };
    let ctx = g.context(
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         RUN mkdir -p /etc && mkdir -m 1777 /tmp && echo 'app:x:1000:1000::/home/app:/bin/sh' > /etc/passwd && echo 'app:x:1000:' > /etc/group\n\
         ADD bundle.tar.gz /opt/\n\
         COPY --chown=app:app conf.txt /etc/conf.txt\n\
         COPY --chmod=600 conf.txt /etc/conf600.txt\n\
         USER app\n\
         RUN id -u > /tmp/whoami\n\
         CMD [\"sh\", \"-c\", \"cat /opt/bundle/file; stat -c '%u:%g' /etc/conf.txt; stat -c '%a' /etc/conf600.txt; cat /tmp/whoami; id -un\"]\n",
    );
    std::fs::write(ctx.path().join("conf.txt"), "conf").unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_path("bundle/file").unwrap();
    h.set_size(8);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, &b"bundled\n"[..]).unwrap();
    std::fs::write(
        ctx.path().join("bundle.tar.gz"),
        gzip(&b.into_inner().unwrap()),
    )
    .unwrap();
    g.ok(&["build", "-q", "-t", "instr", ctx.path().to_str().unwrap()]);
    assert_eq!(
        g.ok(&["run", "--rm", "instr"]),
        "bundled\n1000:1000\n600\n1000\napp\n"
    );
    let cfg = g.inspect_image("instr");
    assert_eq!(cfg["Config"]["config"]["User"], "app");
    // Owners and modes survive packing, a registry round trip and unpacking.
    let reg = Registry::start();
    let remote = format!("{}/instr:1", reg.addr);
    g.ok(&["tag", "instr", &remote]);
    g.ok(&["push", "-q", &remote]);
    let g2 = G::new("build_instructions_add_chown_chmod_user").unwrap();
    assert_eq!(
        g2.ok(&["run", "--rm", &remote]),
        "bundled\n1000:1000\n600\n1000\napp\n"
    );
    // A changed context file invalidates the cache from that step on.
    std::fs::write(ctx.path().join("conf.txt"), "changed").unwrap();
    let out = g.ok(&["build", "-t", "instr", ctx.path().to_str().unwrap()]);
    assert_eq!(
        out.matches("Using cache").count(),
        4,
        "the steps before the changed COPY: {out}"
    );
}

#[test]
fn pulls_survive_crashes_and_run_concurrently() {
    let Some(g) = G::new("pulls_survive_crashes_and_run_concurrently") else {
        return;
    };
    let reg = Registry::start();
    let ctx = g.context(&format!(
        "{BUSYBOX_DOCKERFILE}RUN head -c 40m /dev/urandom > /big\n"
    ));
    let tag = format!("{}/big:1", reg.addr);
    g.ok(&["build", "-q", "-t", &tag, ctx.path().to_str().unwrap()]);
    g.ok(&["push", "-q", &tag]);
    // Every stored blob must hash to its name, whenever a pull dies.
    let check_blobs = |g: &G| {
        let dir = g.data.path().join("images/blobs/sha256");
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let data = std::fs::read(e.path()).unwrap();
            assert_eq!(
                sha(&data),
                format!("sha256:{}", e.file_name().to_string_lossy()),
                "a half-written blob is in use"
            );
        }
    };
    let g2 = G::new("pulls_survive_crashes_and_run_concurrently").unwrap();
    for delay in [30u64, 120, 300] {
        let mut child = g2.cmd().args(["pull", "-q", &tag]).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay));
        let _ = child.kill();
        let _ = child.wait();
        check_blobs(&g2);
        // A tag only ever points at a complete image.
        if g2.out(&["image", "inspect", &tag]).status.success() {
            g2.ok(&["run", "--rm", &tag, "true"]);
        }
        let _ = g2.out(&["rmi", "-f", &tag]);
    }
    g2.ok(&["pull", "-q", &tag]);
    assert!(
        g2.store_tmp_is_empty(),
        "a new pull cleans up after crashed ones"
    );
    assert_eq!(
        g2.ok(&["run", "--rm", &tag, "sh", "-c", "wc -c < /big"])
            .trim(),
        "41943040"
    );
    // Three pulls of the same image at once, into one store.
    let g3 = G::new("pulls_survive_crashes_and_run_concurrently").unwrap();
    let pulls: Vec<_> = (0..3)
        .map(|_| {
            g3.cmd()
                .args(["pull", "-q", &tag])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for p in pulls {
        let o = p.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", errtext(&o));
    }
    check_blobs(&g3);
    assert!(g3.store_tmp_is_empty());
    assert_eq!(g3.ok(&["images", "-q"]).lines().count(), 1);
    g3.ok(&["run", "--rm", &tag, "true"]);
}

#[test]
fn manifest_lists_pick_linux_amd64() {
    let Some(g) = G::new("manifest_lists_pick_linux_amd64") else {
        return;
    };
    let reg = Registry::start();
    let bb = std::fs::read(busybox()).unwrap();
    let layer = raw_tar(&[
        ("bin/", tar::EntryType::Directory, b"", None),
        ("bin/busybox", tar::EntryType::Regular, &bb, None),
    ]);
    let gz = gzip(&layer);
    let diff = vec![sha(&layer)];
    let arm = push_raw_cmd(
        &reg,
        "multi",
        "arm",
        std::slice::from_ref(&gz),
        &diff,
        &["/bin/busybox", "echo", "arm64"],
    );
    let amd = push_raw_cmd(
        &reg,
        "multi",
        "amd",
        &[gz],
        &diff,
        &["/bin/busybox", "echo", "amd64"],
    );
    let entry = |(d, n): &(String, usize), arch: &str| {
        serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d, "size": n,
                           "platform": {"architecture": arch, "os": "linux"}})
    };
    for (media, tag, entries) in [
        (
            "application/vnd.oci.image.index.v1+json",
            "oci",
            vec![entry(&arm, "arm64"), entry(&amd, "amd64")],
        ),
        (
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "docker",
            vec![entry(&arm, "arm64"), entry(&amd, "amd64")],
        ),
        (
            "application/vnd.oci.image.index.v1+json",
            "armonly",
            vec![entry(&arm, "arm64")],
        ),
    ] {
        let index =
            serde_json::json!({"schemaVersion": 2, "mediaType": media, "manifests": entries});
        put_manifest(
            &reg,
            "multi",
            tag,
            &serde_json::to_vec(&index).unwrap(),
            media,
        );
    }
    for tag in ["oci", "docker"] {
        let r = format!("{}/multi:{tag}", reg.addr);
        assert_eq!(g.ok(&["run", "--rm", &r]), "amd64\n", "{tag}");
        assert_eq!(g.inspect_image(&r)["ManifestDigest"], amd.0.as_str());
    }
    let e = g.fails(&["pull", &format!("{}/multi:armonly", reg.addr)], 1);
    assert!(e.contains("no linux/amd64 variant"), "{e}");
}

#[test]
fn remote_registries_need_an_explicit_insecure_setting() {
    let Some(g) = G::new("remote_registries_need_an_explicit_insecure_setting") else {
        return;
    };
    // Two simulated hosts: the registry on one, Gantry on the other.
    let lan = Lan::new(2);
    let reg = Registry::start_on(&lan.hosts[0]);
    g.busybox_image("bb");
    let tag = format!("{}/remote/bb:1", reg.addr);
    g.ok(&["tag", "bb", &tag]);
    let on_h1 = |args: &[&str]| g.cmd_on(&lan.hosts[1]).args(args).output().unwrap();
    let o = on_h1(&["push", &tag]);
    assert_eq!(o.status.code(), Some(1));
    let e = errtext(&o);
    assert!(
        e.contains(&format!("--insecure-registry {}", reg.addr)),
        "{e}"
    );
    let o = on_h1(&["--insecure-registry", &reg.addr, "push", &tag]);
    assert!(o.status.success(), "{}", errtext(&o));
    g.ok(&["rmi", &tag]);
    g.ok(&["rmi", "bb"]);
    let o = on_h1(&[
        "--insecure-registry",
        &reg.addr,
        "run",
        "--rm",
        &tag,
        "sh",
        "-c",
        "echo pulled from another host",
    ]);
    assert!(o.status.success(), "{}", errtext(&o));
    assert_eq!(text(&o), "pulled from another host\n");
    // The environment variable works as the flag does.
    g.ok(&["rmi", &tag]);
    let o = g
        .cmd_on(&lan.hosts[1])
        .env("GANTRY_INSECURE_REGISTRIES", &reg.addr)
        .args(["pull", "-q", &tag])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", errtext(&o));
    drop(reg);
}

#[test]
fn docker_engine_pulls_and_runs_what_gantry_built() {
    let Some(g) = G::new("docker_engine_pulls_and_runs_what_gantry_built") else {
        return;
    };
    let reg = Registry::start();
    let ctx = app_context(&g);
    let tag = format!("{}/team/app:v2", reg.addr);
    g.ok(&[
        "build",
        "-q",
        "-t",
        &tag,
        "--build-arg",
        "VERSION=2.0",
        ctx.path().to_str().unwrap(),
    ]);
    g.ok(&["push", "-q", &tag]);
    let docker = DockerEngine::start();
    let pull = docker.docker(&["pull", "-q", &tag]).unwrap();
    assert!(pull.status.success(), "docker pull: {}", errtext(&pull));
    let run = docker
        .docker(&["run", "--rm", "--network", "none", &tag])
        .unwrap();
    assert!(run.status.success(), "docker run: {}", errtext(&run));
    assert_eq!(text(&run), "built 2.0\n<h1>site</h1>\nhello there\n");
    let insp = docker
        .docker(&[
            "image",
            "inspect",
            "--format",
            "{{.Config.WorkingDir}} {{json .Config.Healthcheck.Test}}",
            &tag,
        ])
        .unwrap();
    assert_eq!(
        text(&insp).trim(),
        r#"/app ["CMD-SHELL","wget -q -O /dev/null http://localhost:8080/ || exit 1"]"#
    );
}

#[test]
fn bearer_token_registries_work() {
    let Some(g) = G::new("bearer_token_registries_work") else {
        return;
    };
    let reg = Registry::start_with_token_auth("bob", "t0ken-pass");
    g.busybox_image("bb");
    let tag = format!("{}/secure/bb:1", reg.addr);
    g.ok(&["tag", "bb", &tag]);
    let e = g.fails(&["push", &tag], 1);
    assert!(e.contains("refused the credentials"), "{e}");
    let e = g.fails(&["login", "-u", "bob", "-p", "nope", &reg.addr], 1);
    assert!(e.contains("refused"), "{e}");
    g.ok(&["login", "-u", "bob", "-p", "t0ken-pass", &reg.addr]);
    g.ok(&["push", &tag]);
    let g2 = G::new("bearer_token_registries_work").unwrap();
    let e = g2.fails(&["pull", &tag], 1);
    assert!(e.contains("refused"), "anonymous pull is refused: {e}");
    std::fs::create_dir_all(g2.home.path().join(".docker")).unwrap();
    std::fs::copy(
        g.home.path().join(".docker/config.json"),
        g2.home.path().join(".docker/config.json"),
    )
    .unwrap();
    assert_eq!(
        g2.ok(&["run", "--rm", &tag, "echo", "via token"]),
        "via token\n"
    );
}

#[test]
fn build_from_a_registry_image_pulls_it() {
    let Some(g) = G::new("build_from_a_registry_image_pulls_it") else {
        return;
    };
    let reg = Registry::start();
    g.busybox_image("bb");
    let base = format!("{}/base/bb:1", reg.addr);
    g.ok(&["tag", "bb", &base]);
    g.ok(&["push", "-q", &base]);
    // A fresh store: the base comes from the registry during the build.
    let g2 = G::new("build_from_a_registry_image_pulls_it").unwrap();
    let ctx = g2.context(&format!("ARG BASE={base}\nFROM $BASE\nENV FROM_BASE=yes\nRUN echo derived > /derived\nCMD [\"sh\", \"-c\", \"cat /derived; echo $FROM_BASE\"]\n"));
    g2.ok(&["build", "-q", "-t", "derived", ctx.path().to_str().unwrap()]);
    assert_eq!(g2.ok(&["run", "--rm", "derived"]), "derived\nyes\n");
    let img = g2.inspect_image("derived");
    assert_eq!(
        img["Manifest"]["layers"].as_array().unwrap().len(),
        3,
        "the base's two layers and one more"
    );
    assert!(
        g2.ok(&["images"]).contains("base/bb"),
        "the base image is kept, tagged"
    );
}

#[test]
fn multi_stage_builds_copy_between_stages_and_skip_what_the_target_does_not_need() {
    let Some(g) = G::new("multi_stage_builds") else {
        return;
    };
    let ctx = g.context(
        "ARG GREETING=built\n\
         FROM scratch AS base\n\
         COPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         \n\
         FROM base AS build\n\
         ARG GREETING\n\
         RUN mkdir -p /out && echo \"$GREETING\" > /out/artifact && echo helper > /out/helper.txt && echo extra > /out/extra.txt\n\
         \n\
         FROM base AS broken\n\
         RUN echo 'this stage must not run' && exit 3\n\
         \n\
         FROM scratch AS final\n\
         COPY --from=build /out/artifact /artifact\n\
         COPY --from=0 /bin/sh /bin/busybox\n\
         COPY --from=build /out/*.txt /txt/\n\
         CMD [\"/bin/busybox\", \"cat\", \"/artifact\", \"/txt/helper.txt\", \"/txt/extra.txt\"]\n",
    );
    let dir = ctx.path().to_str().unwrap();
    let out = g.ok(&["build", "-t", "ms", dir]);
    assert!(!out.contains("this stage must not run"), "{out}");
    assert!(
        !out.contains("exit 3"),
        "the unneeded stage was built: {out}"
    );
    // With several stages, each line names its stage.
    assert!(out.contains("[build] Step"), "{out}");
    assert!(!out.contains("[broken]"), "{out}");
    assert_eq!(g.ok(&["run", "--rm", "ms"]), "built\nhelper\nextra\n");
    // Only the final stage's layers: scratch and three COPYs (the base's
    // busybox came through a symlink, resolved inside the stage).
    let cfg = g.inspect_image("ms");
    assert_eq!(
        cfg["Config"]["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .len(),
        3,
        "{cfg}"
    );
    // Unchanged: every step from the cache, the same image.
    let id = cfg["Id"].clone();
    assert!(id.is_string(), "{cfg}");
    let again = g.ok(&["build", "-t", "ms", dir]);
    assert_eq!(again.matches("Using cache").count(), 6, "{again}");
    assert_eq!(g.inspect_image("ms")["Id"], id);
    // A global ARG's value reaches the stage that declares it again.
    g.ok(&[
        "build",
        "-q",
        "-t",
        "ms2",
        "--build-arg",
        "GREETING=other",
        dir,
    ]);
    assert_eq!(g.ok(&["run", "--rm", "ms2"]), "other\nhelper\nextra\n");
    // --target builds that stage (and what it needs) only.
    g.ok(&["build", "-q", "-t", "ms-build", "--target", "build", dir]);
    assert_eq!(
        g.ok(&["run", "--rm", "ms-build", "cat", "/out/artifact"]),
        "built\n"
    );
    let e = g.fails(&["build", "--target", "broken", dir], 1);
    assert!(
        e.contains("line 11: RUN") && e.contains("non-zero code: 3"),
        "{e}"
    );
    let e = g.fails(&["build", "--target", "nope", dir], 1);
    assert!(
        e.contains("target stage \"nope\" could not be found"),
        "{e}"
    );
    // COPY --from an image (the one just built, found locally).
    let ctx2 = g.context(
        "FROM scratch\nCOPY --from=ms /artifact /copied\nCOPY --from=ms /bin/busybox /bin/busybox\nCMD [\"/bin/busybox\", \"cat\", \"/copied\"]\n",
    );
    g.ok(&[
        "build",
        "-q",
        "-t",
        "fromimage",
        ctx2.path().to_str().unwrap(),
    ]);
    assert_eq!(g.ok(&["run", "--rm", "fromimage"]), "built\n");
    // A reference to a later stage, or to nothing, is a clear error.
    let ctx3 =
        g.context("FROM scratch AS a\nCOPY --from=1 /x /x\nFROM scratch\nCOPY --from=a /x /y\n");
    let e = g.fails(&["build", ctx3.path().to_str().unwrap()], 1);
    assert!(e.contains("not defined before"), "{e}");
    // Removing an image (a store collection) keeps what the cache names,
    // an intermediate stage's layers too; `builder prune` drops it all.
    g.ok(&["image", "rm", "ms2"]);
    let again = g.ok(&["build", "-t", "ms", dir]);
    assert_eq!(again.matches("Using cache").count(), 6, "{again}");
    let pruned = g.ok(&["builder", "prune", "-f"]);
    assert!(pruned.starts_with("Total reclaimed space: "), "{pruned}");
    assert!(!pruned.contains(": 0 B"), "{pruned}");
    let cold = g.ok(&["build", "-t", "ms", dir]);
    assert_eq!(cold.matches("Using cache").count(), 0, "{cold}");
    // --cache-from: an image built by Gantry records its steps, which
    // serve a build whose own cache does not have them (here: pruned).
    // Its stages before the last are not in the image, so they build
    // again; the last stage's steps come from the image, which is the
    // same image again. A source that cannot be had is a warning.
    let id = g.inspect_image("ms")["Id"].clone();
    g.ok(&["builder", "prune", "-f"]);
    let warm = g.ok(&[
        "build",
        "-t",
        "ms-again",
        "--cache-from",
        "ms",
        "--cache-from",
        "type=registry,ref=127.0.0.1:9/nowhere:1",
        dir,
    ]);
    assert!(
        warm.contains("Cache from docker.io/library/ms:latest: 4 step(s) recorded"),
        "{warm}"
    );
    assert!(
        warm.contains("[Warning] cache source 127.0.0.1:9/nowhere:1 is not used"),
        "{warm}"
    );
    assert_eq!(warm.matches("Using cache").count(), 3, "{warm}");
    assert_eq!(g.inspect_image("ms-again")["Id"], id);
    // Taken into this host's cache: the next build needs no source.
    let again = g.ok(&["build", "-t", "ms", dir]);
    assert_eq!(again.matches("Using cache").count(), 6, "{again}");
    let e = g.fails(&["build", "--cache-from", "type=gha", dir], 1);
    assert!(e.contains("type=gha is not supported"), "{e}");
    let ctx4 = g.context("FROM scratch AS a\nFROM scratch\nCOPY --from=a /missing /x\n");
    let e = g.fails(&["build", ctx4.path().to_str().unwrap()], 1);
    assert!(e.contains("not found"), "{e}");
}

/// Whether `needle` appears in any file under `dir` (symlinks not
/// followed).
fn found_under(dir: &std::path::Path, needle: &[u8]) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let ft = e.file_type().ok()?;
        if ft.is_dir() {
            if let Some(p) = found_under(&e.path(), needle) {
                return Some(p);
            }
        } else if ft.is_file() {
            if let Ok(b) = std::fs::read(e.path()) {
                if b.windows(needle.len()).any(|w| w == needle) {
                    return Some(e.path());
                }
            }
        }
    }
    None
}

#[test]
fn run_mounts_and_here_documents() {
    let Some(g) = G::new("run_mounts_and_here_documents") else {
        return;
    };
    let ctx = g.context(
        "FROM scratch AS base\n\
         COPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         FROM base AS tools\n\
         RUN mkdir -p /tools && echo tool-v1 > /tools/version\n\
         FROM base\n\
         RUN --mount=type=cache,target=/cache echo run >> /cache/log && wc -l < /cache/log > /count\n\
         RUN --mount=type=secret,id=token,required test \"$(tr a-z A-Z < /run/secrets/token)\" = S3CRET-7F3A9 && echo secret-seen > /secret-seen\n\
         RUN --mount=type=bind,source=data,target=/data cp /data/input /copied-input\n\
         RUN --mount=type=bind,from=tools,source=/tools,target=/t cp /t/version /tool-version\n\
         RUN --mount=type=bind,source=data,target=/data,rw echo scribbled >> /data/input && cat /data/input > /rw-seen\n\
         RUN --mount=type=bind,from=tools,source=/tools,target=/t,rw rm /t/version && test ! -e /t/version && echo rw-from > /rw-from\n\
         RUN --mount=type=bind,source=data/input,target=/one,rw echo more >> /one && test \"$(wc -l < /one)\" = 2\n\
         RUN --mount=type=tmpfs,target=/scratchpad echo x > /scratchpad/y && test -f /scratchpad/y\n\
         RUN <<EOF\n\
         echo heredoc-one > /heredoc\n\
         echo heredoc-two >> /heredoc\n\
         EOF\n\
         COPY <<greeting.txt /etc/\n\
         hello from a heredoc\n\
         greeting.txt\n\
         CMD [\"sh\", \"-c\", \"cat /count /secret-seen /copied-input /tool-version /rw-seen /rw-from /heredoc /etc/greeting.txt; for p in /run/secrets /cache /data /t /scratchpad; do test -e $p && echo left $p; done; true\"]\n",
    );
    std::fs::create_dir(ctx.path().join("data")).unwrap();
    std::fs::write(ctx.path().join("data/input"), "from the context\n").unwrap();
    let secret = ctx.path().join("token.txt");
    std::fs::write(&secret, "s3cret-7f3a9").unwrap();
    let dir = ctx.path().to_str().unwrap();
    let with_secret = format!("id=token,src={}", secret.display());
    // A required secret that was not given: a clear error.
    let e = g.fails(&["build", "-t", "mounts", dir], 1);
    assert!(e.contains("secret token is required"), "{e}");
    g.ok(&["build", "-q", "-t", "mounts", "--secret", &with_secret, dir]);
    assert_eq!(
        g.ok(&["run", "--rm", "mounts"]),
        "1\nsecret-seen\nfrom the context\ntool-v1\nfrom the context\nscribbled\nrw-from\nheredoc-one\nheredoc-two\nhello from a heredoc\n",
        "the mounts' targets must not be left in the image"
    );
    // Steps that changed nothing made the same (empty) layer twice; the
    // image runs and builds on all the same (overlayfs names each once).
    let diffs = g.inspect_image("mounts")["Config"]["rootfs"]["diff_ids"].clone();
    let diffs: Vec<&str> = diffs
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    let distinct: std::collections::BTreeSet<&str> = diffs.iter().copied().collect();
    assert!(distinct.len() < diffs.len(), "{diffs:?}");
    // What a rw bind mount's step wrote went with the step: the context,
    // the stage and the store's scratch are as they were.
    assert_eq!(
        std::fs::read_to_string(ctx.path().join("data/input")).unwrap(),
        "from the context\n"
    );
    assert_eq!(
        g.ok(&[
            "run",
            "--rm",
            "mounts",
            "sh",
            "-c",
            "ls /data /t /one 2>&1; true"
        ])
        .matches("No such file")
        .count(),
        3
    );
    let tmp: Vec<_> = std::fs::read_dir(g.data.path().join("images/tmp"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        !tmp.iter().any(|n| n.to_string_lossy().contains("bind-rw")),
        "{tmp:?}"
    );
    // The secret is in no layer and nowhere in the store.
    let images = g.data.path().join("images");
    assert_eq!(found_under(&images, b"s3cret-7f3a9"), None);
    // The cache mount keeps its content between builds (the step runs
    // again without the layer cache, and finds the first run's line).
    g.ok(&[
        "build",
        "-q",
        "-t",
        "mounts2",
        "--no-cache",
        "--secret",
        &with_secret,
        dir,
    ]);
    assert!(
        g.ok(&["run", "--rm", "mounts2"]).starts_with("2\n"),
        "the cache mount was not kept"
    );
    // A changed file under a bind mount's source runs the step again.
    std::fs::write(ctx.path().join("data/input"), "changed\n").unwrap();
    let out = g.ok(&["build", "-t", "mounts3", "--secret", &with_secret, dir]);
    assert!(
        g.ok(&["run", "--rm", "mounts3"]).contains("changed\n"),
        "{out}"
    );
}

/// Serves `body` at `/files/data.tar.gz` (404 elsewhere) over HTTP/1.1 on
/// 127.0.0.1, one request per connection, until the process ends; returns
/// the port.
fn serve_file(body: Vec<u8>) -> u16 {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&req);
            let ok = head.starts_with("GET /files/data.tar.gz ");
            let (status, payload): (&str, &[u8]) = if ok {
                ("200 OK", &body)
            } else {
                ("404 Not Found", b"no")
            };
            let _ = write!(
                c,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                payload.len()
            );
            let _ = c.write_all(payload);
        }
    });
    port
}

#[test]
fn add_downloads_urls_and_checks_their_checksum() {
    let Some(g) = G::new("add_downloads_urls") else {
        return;
    };
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_path("inside").unwrap();
    h.set_size(3);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, &b"abc"[..]).unwrap();
    let archive = gzip(&b.into_inner().unwrap());
    let sum = sha(&archive);
    let port = serve_file(archive.clone());
    let url = format!("http://127.0.0.1:{port}/files/data.tar.gz");
    let ctx = g.context(&format!(
        "FROM scratch\n\
         COPY busybox /bin/busybox\n\
         ADD {url} /dl/\n\
         ADD --checksum={sum} {url} /dl2/renamed.tgz\n\
         CMD [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox stat -c '%a %s' /dl/data.tar.gz /dl2/renamed.tgz; /bin/busybox sha256sum /dl/data.tar.gz | /bin/busybox cut -c1-64; test -e /dl/inside || echo not-extracted\"]\n"
    ));
    let dir = ctx.path().to_str().unwrap();
    g.ok(&["build", "-q", "-t", "dl", dir]);
    let n = archive.len();
    assert_eq!(
        g.ok(&["run", "--rm", "dl"]),
        format!(
            "600 {n}\n600 {n}\n{}\nnot-extracted\n",
            sum.trim_start_matches("sha256:")
        )
    );
    // A wrong checksum fails the build, and says what it got.
    let bad = format!("sha256:{}", "0".repeat(64));
    let ctx2 = g.context(&format!("FROM scratch\nADD --checksum={bad} {url} /x\n"));
    let e = g.fails(&["build", ctx2.path().to_str().unwrap()], 1);
    assert!(e.contains(&format!("checksum is {sum}, not {bad}")), "{e}");
    for (df, want) in [
        (
            format!("FROM scratch\nCOPY {url} /x\n"),
            "use ADD".to_owned(),
        ),
        (
            format!("FROM scratch\nADD http://127.0.0.1:{port}/missing /x\n"),
            "answered 404".to_owned(),
        ),
        (
            format!("FROM scratch\nADD --checksum={sum} {url} busybox /x/\n"),
            "single URL".to_owned(),
        ),
        (
            "FROM scratch\nADD --checksum=md5:abc http://x/y /x\n".to_owned(),
            "invalid --checksum".to_owned(),
        ),
    ] {
        let c = g.context(&df);
        let e = g.fails(&["build", c.path().to_str().unwrap()], 1);
        assert!(e.contains(&want), "{df}: {e}");
    }
}

#[test]
fn onbuild_triggers_run_in_the_build_that_uses_the_image() {
    let Some(g) = G::new("onbuild_triggers") else {
        return;
    };
    // A trigger may read an image, which the child's build then finds.
    let src = g.context("FROM scratch\nCOPY src.txt /src.txt\n");
    std::fs::write(src.path().join("src.txt"), "from an image\n").unwrap();
    g.ok(&["build", "-q", "-t", "onb-src", src.path().to_str().unwrap()]);
    let base = g.context(
        "FROM scratch\n\
         COPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         ONBUILD COPY app.txt /app/\n\
         ONBUILD RUN echo triggered > /triggered\n\
         ONBUILD COPY --from=onb-src /src.txt /from-image.txt\n",
    );
    g.ok(&["build", "-q", "-t", "onb", base.path().to_str().unwrap()]);
    let cfg = g.inspect_image("onb");
    assert_eq!(
        cfg["Config"]["config"]["OnBuild"],
        serde_json::json!([
            "COPY app.txt /app/",
            "RUN echo triggered > /triggered",
            "COPY --from=onb-src /src.txt /from-image.txt"
        ]),
        "{cfg}"
    );
    let child = g.context(
        "FROM onb\nCMD [\"sh\", \"-c\", \"cat /app/app.txt /triggered /from-image.txt\"]\n",
    );
    std::fs::write(child.path().join("app.txt"), "the child's file\n").unwrap();
    let out = g.ok(&["build", "-t", "onb-child", child.path().to_str().unwrap()]);
    assert!(
        out.contains("Executing ONBUILD trigger: COPY app.txt /app/"),
        "{out}"
    );
    assert_eq!(
        g.ok(&["run", "--rm", "onb-child"]),
        "the child's file\ntriggered\nfrom an image\n"
    );
    // The triggers ran once: the child does not pass them on.
    assert!(g.inspect_image("onb-child")["Config"]["config"]["OnBuild"].is_null());
}

#[test]
fn independent_stages_build_side_by_side() {
    let Some(g) = G::new("independent_stages_in_parallel") else {
        return;
    };
    // Each of the two stages waits (up to 20 s) for the other to have
    // started, through a cache mount both see: built one after the other,
    // the first would wait in vain and fail.
    let wait_for = |me: &str, other: &str| {
        format!(
            "RUN --mount=type=cache,target=/sync,id=sync touch /sync/{me} && \
             i=0; while [ ! -f /sync/{other} ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done; \
             test -f /sync/{other} && echo {me} > /done && echo {me} saw {other}\n"
        )
    };
    let ctx = g.context(&format!(
        "FROM scratch AS base\n\
         COPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         FROM base AS left\n{}\
         FROM base AS right\n{}\
         FROM scratch\n\
         COPY --from=left /done /left\n\
         COPY --from=right /done /right\n\
         COPY busybox /bin/busybox\n\
         CMD [\"/bin/busybox\", \"cat\", \"/left\", \"/right\"]\n",
        wait_for("left", "right"),
        wait_for("right", "left"),
    ));
    let out = g.ok(&["build", "-t", "par", ctx.path().to_str().unwrap()]);
    // Log lines name their stage, the RUN output too.
    assert!(out.contains("[left] left saw right"), "{out}");
    assert!(out.contains("[right] right saw left"), "{out}");
    assert_eq!(g.ok(&["run", "--rm", "par"]), "left\nright\n");
    // A RUN that fails in a stage built beside another fails the build,
    // with its line and code.
    let bad = g.context(
        "FROM scratch AS base\nCOPY busybox /bin/busybox\n\
         FROM base AS a\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"exit 7\"]\n\
         FROM base AS b\nRUN [\"/bin/busybox\", \"true\"]\n\
         FROM scratch\nCOPY --from=a /bin/busybox /a\nCOPY --from=b /bin/busybox /b\n",
    );
    let e = g.fails(&["build", bad.path().to_str().unwrap()], 1);
    assert!(
        e.contains("line 4: RUN") && e.contains("non-zero code: 7"),
        "{e}"
    );
}

#[test]
fn images_built_by_buildkit_run_on_gantry_and_the_reverse() {
    let Some(g) = G::new("buildkit_images_run_on_gantry") else {
        return;
    };
    let reg = Registry::start();
    let docker = DockerEngine::start();
    let dockerfile = "# syntax=docker/dockerfile:1\n\
        FROM scratch AS base\n\
        COPY busybox /bin/busybox\n\
        RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
        FROM base AS build\n\
        RUN --mount=type=cache,target=/cache mkdir -p /out && echo made-by-$BUILDER > /out/artifact\n\
        FROM scratch\n\
        COPY --from=base /bin/busybox /bin/busybox\n\
        COPY --from=build /out/artifact /artifact\n\
        CMD [\"/bin/busybox\", \"cat\", \"/artifact\"]\n";
    // BuildKit builds it (without the syntax line: no frontend image can
    // be fetched here) and pushes it; Gantry pulls and runs it.
    let ctx = g.context(
        &dockerfile
            .replace("# syntax=docker/dockerfile:1\n", "")
            .replace("$BUILDER", "buildkit"),
    );
    let bk = format!("{}/exchange/buildkit:1", reg.addr);
    let o = docker
        .buildkit(&["--network", "host", "-t", &bk, ctx.path().to_str().unwrap()])
        .unwrap();
    assert!(o.status.success(), "docker build: {}", errtext(&o));
    let o = docker.docker(&["push", &bk]).unwrap();
    assert!(o.status.success(), "docker push: {}", errtext(&o));
    assert_eq!(g.ok(&["run", "--rm", &bk]), "made-by-buildkit\n");
    // Gantry builds the same Dockerfile (its syntax line accepted) and
    // pushes it; Docker Engine pulls and runs it.
    let ctx = g.context(&dockerfile.replace("$BUILDER", "gantry"));
    let ours = format!("{}/exchange/gantry:1", reg.addr);
    let e = g.fails(&["build", "--push", ctx.path().to_str().unwrap()], 1);
    assert!(e.contains("--push needs a name"), "{e}");
    g.ok(&[
        "build",
        "-q",
        "--push",
        "-t",
        &ours,
        ctx.path().to_str().unwrap(),
    ]);
    let o = docker.docker(&["pull", "-q", &ours]).unwrap();
    assert!(o.status.success(), "docker pull: {}", errtext(&o));
    let o = docker
        .docker(&["run", "--rm", "--network", "none", &ours])
        .unwrap();
    assert!(o.status.success(), "docker run: {}", errtext(&o));
    assert_eq!(text(&o), "made-by-gantry\n");
}

#[test]
fn cache_mounts_shared_locked_and_private() {
    let Some(g) = G::new("cache_mount_sharing") else {
        return;
    };
    // Two stages built side by side use one cache mount. Locked: one at a
    // time, so neither sees the other's mark. Private: the second gets an
    // empty directory of its own, so each finds its own file intact.
    // Shared (the default): the marking steps overlap, and one fails.
    let step = |sharing: &str, me: &str| {
        match sharing {
        "private" => format!(
            "RUN --mount=type=cache,target=/c,id=private,sharing=private \
             echo {me} > /c/mine && sleep 1 && test \"$(cat /c/mine)\" = {me} && echo {me} > /done\n"
        ),
        _ => format!(
            "RUN --mount=type=cache,target=/c,id={sharing},sharing={sharing} \
             test ! -e /c/busy && touch /c/busy && sleep 1 && rm /c/busy && echo {me} > /done\n"
        ),
    }
    };
    for (sharing, ok) in [("locked", true), ("private", true), ("shared", false)] {
        let ctx = g.context(&format!(
            "FROM scratch AS base\n\
             COPY busybox /bin/busybox\n\
             RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
             FROM base AS a\n{}\
             FROM base AS b\n{}\
             FROM scratch\n\
             COPY --from=a /done /a\n\
             COPY --from=b /done /b\n",
            step(sharing, "a"),
            step(sharing, "b"),
        ));
        let dir = ctx.path().to_str().unwrap();
        if ok {
            g.ok(&["build", "-q", "--no-cache", dir]);
        } else {
            g.fails(&["build", "-q", "--no-cache", dir], 1);
        }
    }
}
