//! The attacks of the security review, each tried again against the real
//! binary: a hostile image, a local user of a node, a task, a worker node,
//! and requests sent straight to the APIs.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::cluster::*;
use common::*;

/// Every file below `dir` (not following links).
fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            files_under(&e.path(), out);
        } else {
            out.push(e.path());
        }
    }
}

/// The paths of `paths` that uid/gid 65534 (`nobody`) can open for reading.
fn readable_by_nobody(paths: &[std::path::PathBuf]) -> Vec<String> {
    use std::io::Write;
    let mut c = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c"])
        .arg("while IFS= read -r f; do cat -- \"$f\" >/dev/null 2>&1 </dev/null && echo \"$f\"; done")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("setpriv");
    let mut list = String::new();
    for p in paths {
        list.push_str(&p.to_string_lossy());
        list.push('\n');
    }
    c.stdin.take().unwrap().write_all(list.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    text(&o).lines().map(str::to_owned).collect()
}

/// A data dir under a directory every user can enter, as `/var/lib` is:
/// Gantry's own directories must close themselves.
fn open_parent() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::Builder::new()
        .prefix("gantry-open")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// A credential from a JSON file that holds one (`admin.json`,
/// `identity.json`), written out as PEM files for curl. `None` for the
/// key and certificate: a client without a certificate.
struct Cred {
    ca: std::path::PathBuf,
    cert_key: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

fn cred_from(json: &Path, dir: &Path, name: &str, anonymous: bool) -> Cred {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap();
    let file = |k: &str, ext: &str| {
        let f = dir.join(format!("{name}.{k}.{ext}"));
        std::fs::write(&f, v[k].as_str().unwrap()).unwrap();
        f
    };
    Cred {
        ca: file("ca_pem", "pem"),
        cert_key: (!anonymous).then(|| (file("cert_pem", "pem"), file("key_pem", "key"))),
    }
}

/// A request straight to the manager's API (curl on host `from`, not the
/// CLI): the status and the body.
fn call_manager(
    cl: &Cluster,
    from: usize,
    cred: &Cred,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let mut c = cl.lan.hosts[from].command("curl");
    c.args(["-sS", "-w", "\n%{http_code}", "-X", method, "--cacert"])
        .arg(&cred.ca);
    if let Some((cert, key)) = &cred.cert_key {
        c.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    let o = c
        .args([
            "--resolve",
            &format!("gantry-manager:{}:{}", cl.port, cl.lan.hosts[0].addr),
            "-H",
            "content-type: application/json",
            "--data-binary",
            body,
        ])
        .arg(format!("https://gantry-manager:{}{path}", cl.port))
        .output()
        .unwrap();
    let out = text(&o);
    let (body, code) = out.rsplit_once('\n').unwrap_or_default();
    (code.parse().unwrap_or(0), body.to_owned())
}

/// A RUN step that makes a block device node (the host's loop 0, mode
/// 0666) gives an image without it: neither a user of the host (through
/// the layer directory) nor a task (in its root) gets the node.
#[test]
fn device_nodes_from_layers_reach_no_one() {
    let Some(g) = G::new("device_nodes_from_layers_reach_no_one") else {
        return;
    };
    let parent = open_parent();
    let data = parent.path().join("gantry");
    let run = |args: &[&str]| {
        let o = g
            .cmd()
            .env("GANTRY_DATA_DIR", &data)
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{args:?}: {}", errtext(&o));
        text(&o)
    };
    let ctx = g.context(&format!(
        "{BUSYBOX_DOCKERFILE}RUN mknod /probe b 7 0 && chmod 666 /probe && mkfifo /pipe\n"
    ));
    run(&["build", "-q", "-t", "probe", ctx.path().to_str().unwrap()]);
    let out = run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "probe",
        "sh",
        "-c",
        "ls -l /probe 2>&1; test -p /pipe && echo fifo",
    ]);
    assert!(out.contains("No such file"), "{out}");
    assert!(out.contains("fifo"), "other special files stay: {out}");
    let mut files = Vec::new();
    files_under(&data, &mut files);
    use std::os::unix::fs::FileTypeExt;
    let devices: Vec<_> = files
        .iter()
        .filter(|f| {
            std::fs::symlink_metadata(f).is_ok_and(|m| {
                use std::os::unix::fs::MetadataExt;
                m.file_type().is_block_device() || (m.file_type().is_char_device() && m.rdev() != 0)
            })
        })
        .collect();
    assert!(
        devices.is_empty(),
        "device nodes in the data dir: {devices:?}"
    );
    assert!(files.len() > 5, "the walk saw the store: {files:?}");
    assert_eq!(readable_by_nobody(&files), Vec::<String>::new());
}

/// A local user of the manager's host and of a node (uid 65534) reads
/// nothing of Gantry's data: not the store with the CA keys, not a node's
/// key, not a task's environment or log; the store keeps only the join
/// token's hash; and `ps` shows no token, even for an agent started with
/// `--token`.
#[test]
fn local_users_read_no_keys_tokens_or_environments() {
    let Some(mut cl) = Cluster::new("local_users_read_no_keys_tokens_or_environments", 1) else {
        return;
    };
    // The data dirs' parents are open to all, as /var/lib is.
    use std::os::unix::fs::PermissionsExt;
    for d in [cl.g.data.path(), cl.agents[0].data.path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    cl.start_agent(0);
    let yaml = web(1, "").replace("IMAGE", &cl.image).replace(
        "    stop_grace_period",
        "    environment:\n      DB_PASSWORD: hunter2-secret\n    stop_grace_period",
    );
    let o = cl.deploy("s", &yaml);
    assert!(o.status.success(), "{}", errtext(&o));
    cl.wait_running("s_web", &[("node-1", 1)], Duration::from_secs(30));
    let token = cl.token();
    let secret = token.rsplit('-').next().unwrap().to_owned();
    // The token is nowhere on disk: the store holds its hash.
    let store = std::fs::read(cl.g.data.path().join("manager/state.redb")).unwrap();
    let find = |hay: &[u8], needle: &str| hay.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(
        !find(&store, &secret),
        "the join token's secret is in the store"
    );
    let mut files = Vec::new();
    for d in [cl.g.data.path(), cl.agents[0].data.path()] {
        files_under(d, &mut files);
    }
    let env_files: Vec<_> = files
        .iter()
        .filter(|f| std::fs::read(f).is_ok_and(|b| find(&b, "hunter2-secret")))
        .collect();
    assert!(!env_files.is_empty(), "the walk found the task's config");
    assert!(files.iter().any(|f| f.ends_with("state.redb")));
    assert!(files.iter().any(|f| f.ends_with("identity.json")));
    assert_eq!(readable_by_nobody(&files), Vec::<String>::new());
    // No process shows a token on its command line (the agent was started
    // with `--token`).
    let mut shown = Vec::new();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(c) = std::fs::read(p.path().join("cmdline")) {
            if find(&c, "GTKN-") {
                shown.push(String::from_utf8_lossy(&c).replace('\0', " "));
            }
        }
    }
    assert_eq!(shown, Vec::<String>::new());
    // A token in a file joins too.
    let f = cl.logs.path().join("token");
    std::fs::write(&f, format!("{token}\n")).unwrap();
    cl.kill_agent(0);
    std::fs::remove_file(cl.agents[0].data.path().join("agent/identity.json")).unwrap();
    let child = cl
        .agent_command(0, "")
        .args(["--token-file", f.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(cl.log("agent0-file.log"))
        .spawn()
        .unwrap();
    cl.agents[0].child = Some(child);
    wait_for(
        "a second node-1 joined with the file",
        Duration::from_secs(15),
        || {
            let n = cl.json(&["node", "ls", "--format", "json"]);
            let count = n
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["hostname"] == "node-1")
                .count();
            if count == 2 {
                Ok(())
            } else {
                Err(n.to_string())
            }
        },
    );
}

/// Runs `f` on a thread inside the network namespace at `ns` (a
/// `/proc/PID/ns/net` or `/run/netns/NAME`): its sockets are that
/// namespace's, as a process there would have them.
fn in_netns<T: Send + 'static>(
    ns: std::path::PathBuf,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        let file = std::fs::File::open(&ns).unwrap();
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
}

fn task_netns(cl: &Cluster, agent: usize, id: &str) -> std::path::PathBuf {
    let v: serde_json::Value =
        serde_json::from_str(&text(&cl.on_agent(agent, &["inspect", id]))).unwrap();
    let pid = v[0]["State"]["Pid"].as_i64().unwrap();
    assert!(pid > 0, "{v}");
    format!("/proc/{pid}/ns/net").into()
}

/// A VXLAN payload (VNI 1): an Ethernet frame to `dmac` holding an IPv4
/// UDP datagram from `src` to `dst`:9999 carrying `body`.
fn vxlan_frame(
    dmac: [u8; 6],
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    body: &[u8],
) -> Vec<u8> {
    let mut p = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    p.extend(dmac);
    p.extend([0x02, 0x42, 0xde, 0xad, 0xbe, 0xef]);
    p.extend([0x08, 0x00]);
    let total = (20 + 8 + body.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend(src.octets());
    ip.extend(dst.octets());
    let sum = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend(ip);
    p.extend(40000u16.to_be_bytes());
    p.extend(9999u16.to_be_bytes());
    p.extend((8 + body.len() as u16).to_be_bytes());
    p.extend([0, 0]);
    p.extend(body);
    p
}

/// Forged VXLAN is not delivered, on the fast path (node-2) and on the
/// nftables path (node-3, `--no-fast-path`): from a task (whose packets a
/// node would masquerade behind its own address), from a machine that is
/// not a node, or from a node for a source outside its block. The same
/// frame from the node it claims to come from is delivered, so the frame
/// itself is right.
#[test]
fn vxlan_is_taken_only_from_nodes_for_their_own_blocks() {
    let Some(mut cl) = Cluster::new("vxlan_is_taken_only_from_nodes_for_their_own_blocks", 3)
    else {
        return;
    };
    cl.start_agent(0);
    cl.start_agent(1);
    cl.start_agent_with(2, &["--no-fast-path"]);
    let global = web(1, "")
        .replace("IMAGE", &cl.image)
        .replace("      replicas: 1\n", "      mode: global\n");
    let o = cl.deploy("blue", &global);
    assert!(o.status.success(), "{}", errtext(&o));
    let red = web(
        1,
        "      placement:\n        constraints: [\"node.hostname == node-1\"]\n",
    )
    .replace("IMAGE", &cl.image);
    let o = cl.deploy("red", &red);
    assert!(o.status.success(), "{}", errtext(&o));
    cl.wait_running(
        "blue_web",
        &[("node-1", 1), ("node-2", 1), ("node-3", 1)],
        Duration::from_secs(30),
    );
    cl.wait_running("red_web", &[("node-1", 1)], Duration::from_secs(30));
    let ip =
        |svc: &str, host: &str| -> std::net::Ipv4Addr { cl.task_addr(svc, host).parse().unwrap() };
    let nodes = cl.json(&["node", "ls", "--format", "json"]);
    let mac_of = |host: &str| -> [u8; 6] {
        let n = nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["hostname"] == host)
            .unwrap();
        let v: Vec<u8> = n["vtep_mac"]
            .as_str()
            .unwrap()
            .split(':')
            .map(|h| u8::from_str_radix(h, 16).unwrap())
            .collect();
        v.try_into().unwrap()
    };
    // The rules stay readable to an operator's nft.
    for host in [2, 3] {
        let o = cl.lan.hosts[host]
            .command("nft")
            .args(["list", "table", "inet", "gantry"])
            .output()
            .unwrap();
        assert!(o.status.success(), "nft list: {}", errtext(&o));
        assert!(text(&o).contains("vxlan_peers"), "{}", text(&o));
    }
    let red1 = task_netns(&cl, 0, &cl.container_of(0, "red_web"));
    let node1 = cl.lan.hosts[1].netns_path();
    let stranger = cl.lan.hosts[0].netns_path();
    for (agent, target, other) in [(1, "node-2", "node-3"), (2, "node-3", "node-2")] {
        let to_addr: std::net::SocketAddr = format!("{}:4789", cl.lan.hosts[agent + 1].addr)
            .parse()
            .unwrap();
        let dst = ip("blue_web", target);
        let receiver = in_netns(
            task_netns(&cl, agent, &cl.container_of(agent, "blue_web")),
            || {
                let s = std::net::UdpSocket::bind("0.0.0.0:9999").unwrap();
                s.set_read_timeout(Some(Duration::from_secs(4))).unwrap();
                let mut got = Vec::new();
                let mut buf = [0u8; 2048];
                while let Ok(n) = s.recv(&mut buf) {
                    got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
                got
            },
        );
        std::thread::sleep(Duration::from_millis(300));
        let send = |from: std::path::PathBuf, frame: Vec<u8>| {
            in_netns(from, move || {
                let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
                for _ in 0..3 {
                    let _ = s.send_to(&frame, to_addr);
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
            .join()
            .unwrap();
        };
        let frame = |src: std::net::Ipv4Addr, body: &str| {
            vxlan_frame(mac_of(target), src, dst, body.as_bytes())
        };
        let blue1 = ip("blue_web", "node-1");
        send(node1.clone(), frame(blue1, "control"));
        send(red1.clone(), frame(blue1, "from-a-task"));
        send(stranger.clone(), frame(blue1, "from-a-stranger"));
        send(
            node1.clone(),
            frame(ip("blue_web", other), "outside-its-block"),
        );
        let mut got = receiver.join().unwrap();
        got.dedup();
        assert_eq!(
            got,
            vec!["control".to_owned()],
            "delivered to blue on {target}"
        );
    }
}

/// A self-signed certificate for `name` and its key, as one PEM bundle
/// (written under `dir`), and the JSON `POST /v1/certs` takes.
fn cert_for(dir: &Path, name: &str) -> (std::path::PathBuf, String) {
    self_signed_cert(
        dir,
        name,
        name,
        30,
        &["-addext", &format!("subjectAltName=DNS:{name}")],
    );
    let cert = std::fs::read_to_string(dir.join(format!("{name}.pem"))).unwrap();
    let key = std::fs::read_to_string(dir.join(format!("{name}.key"))).unwrap();
    let bundle = dir.join(format!("{name}.bundle"));
    std::fs::write(&bundle, format!("{cert}{key}")).unwrap();
    let body = serde_json::json!({ "cert_pem": cert, "key_pem": key }).to_string();
    (bundle, body)
}

/// A worker node's certificate cannot set the cluster's certificates, and
/// a node's DFP API can neither take a path a service's labels route nor
/// set the certificate of a name they route; with `--dfp-token` it wants
/// the token (which `ps` does not show).
#[test]
fn workers_and_dfp_cannot_take_sites_or_their_certificates() {
    let Some(mut cl) = Cluster::new("workers_and_dfp_cannot_take_sites_or_their_certificates", 2)
    else {
        return;
    };
    cl.start_agent(0);
    cl.start_agent_with(1, &["--dfp-token", "s3cret-dfp"]);
    let stack = r#"services:
  web:
    image: IMAGE
    command: ["sh", "-c", "mkdir -p /w && echo web > /w/index.html && exec httpd -f -p 8080 -h /w"]
    deploy:
      labels:
        gantry.http.host: www.shop.test
        gantry.http.port: "8080"
  api:
    image: IMAGE
    command: ["sh", "-c", "mkdir -p /w/api && echo api > /w/api/index.html && exec httpd -f -p 8080 -h /w"]
    deploy:
      labels:
        com.df.notify: "true"
        com.df.serviceDomain: www.shop.test
        com.df.servicePath: /api
        com.df.port: "8080"
  evil:
    image: IMAGE
    command: ["sh", "-c", "mkdir -p /w/api && echo evil > /w/api/index.html && exec httpd -f -p 8080 -h /w"]
"#
    .replace("IMAGE", &cl.image);
    let o = cl.deploy("shop", &stack);
    assert!(o.status.success(), "{}", errtext(&o));
    for svc in ["shop_web", "shop_api", "shop_evil"] {
        cl.wait_total(svc, 1, Duration::from_secs(30));
    }
    let site = |path: &str| {
        curl_on(
            &cl.lan.hosts[0],
            &[
                "-k",
                "--resolve",
                &format!("www.shop.test:443:{}", cl.lan.hosts[1].addr),
                &format!("https://www.shop.test{path}"),
            ],
        )
    };
    wait_for("the api's route", Duration::from_secs(10), || {
        let (s, out) = site("/api/index.html");
        if s == 200 && out.ends_with("api\n") {
            Ok(())
        } else {
            Err(out)
        }
    });
    // A worker's certificate, straight to the API.
    let dir = cl.logs.path();
    let worker = cred_from(
        &cl.agents[0].data.path().join("agent/identity.json"),
        dir,
        "node",
        false,
    );
    let (bundle, body) = cert_for(dir, "www.shop.test");
    let as_worker =
        |method: &str, path: &str, body: &str| call_manager(&cl, 1, &worker, method, path, body).0;
    assert_eq!(as_worker("POST", "/v1/certs", &body), 403);
    assert_eq!(as_worker("DELETE", "/v1/certs/www.shop.test", ""), 403);
    assert_eq!(as_worker("POST", "/v1/join-token/rotate", ""), 403);
    assert_eq!(as_worker("GET", "/v1/services", ""), 403);
    // The DFP API on node-1 (loopback there).
    let dfp = |args: &[&str]| {
        let mut a = vec!["-X", "PUT"];
        a.extend(args);
        curl_on(&cl.lan.hosts[1], &a)
    };
    let (s, out) = dfp(&[
        "http://127.0.0.1:8080/v1/docker-flow-proxy/reconfigure?serviceName=evil&serviceDomain=www.shop.test&servicePath=/api/&port=8080&distribute=true",
    ]);
    assert_eq!(s, 403, "{out}");
    assert!(out.contains("labels of service shop_api"), "{out}");
    let (s, out) = dfp(&[
        "http://127.0.0.1:8080/v1/docker-flow-proxy/reconfigure?serviceName=evil&serviceDomain=www.shop.test&servicePath=/&port=8080&distribute=true",
    ]);
    assert_eq!(s, 403, "the site's root is web's: {out}");
    let (s, out) = dfp(&[
        "--data-binary",
        &format!("@{}", bundle.display()),
        "http://127.0.0.1:8080/v1/docker-flow-proxy/cert?certName=www",
    ]);
    assert_eq!(s, 403, "{out}");
    // What no label routes stays DFP's.
    let (s, out) = dfp(&[
        "http://127.0.0.1:8080/v1/docker-flow-proxy/reconfigure?serviceName=evil&serviceDomain=evil.test&servicePath=/&port=8080&distribute=true",
    ]);
    assert_eq!(s, 200, "{out}");
    let (other, _) = cert_for(dir, "evil.test");
    let (s, out) = dfp(&[
        "--data-binary",
        &format!("@{}", other.display()),
        "http://127.0.0.1:8080/v1/docker-flow-proxy/cert?certName=evil",
    ]);
    assert_eq!(s, 200, "{out}");
    let certs = cl.admin_ok(&["cert", "ls"]);
    assert!(
        certs.contains("evil.test") && !certs.contains("user    www.shop.test"),
        "{certs}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let (s, out) = site("/api/index.html");
    assert!(
        s == 200 && out.ends_with("api\n"),
        "the api keeps its path: {out}"
    );
    // node-2's DFP API wants its token; ps does not show it.
    let ping = |auth: Option<&str>| {
        let mut a = vec!["http://127.0.0.1:8080/v1/docker-flow-proxy/ping".to_owned()];
        if let Some(t) = auth {
            a.extend(["-H".into(), format!("Authorization: Bearer {t}")]);
        }
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        curl_on(&cl.lan.hosts[2], &a).0
    };
    assert_eq!(ping(None), 401);
    assert_eq!(ping(Some("wrong")), 401);
    assert_eq!(ping(Some("s3cret-dfp")), 200);
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(c) = std::fs::read(p.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c);
            assert!(!c.contains("s3cret-dfp"), "{c}");
        }
    }
}

/// A normalised service spec, as the CLI sends it.
fn spec_json() -> serde_json::Value {
    let yaml = "services:\n  web:\n    image: busybox\n    hostname: web\n    volumes:\n      - type: tmpfs\n        target: /t\n";
    let p = gantry_stack::parse(
        "s.yml",
        yaml,
        &Default::default(),
        &|_| Err("none".into()),
        &Default::default(),
    )
    .unwrap();
    serde_json::to_value(&p.stack.services["web"]).unwrap()
}

/// Requests sent straight to the API, without the CLI, are checked by the
/// manager with the CLI's own checks: bad names, unknown mount types and
/// hostnames with newlines are refused, and nothing of a refused deploy
/// is stored (a good service beside a bad one included).
#[test]
fn the_api_refuses_what_the_cli_would() {
    let Some(cl) = Cluster::new("the_api_refuses_what_the_cli_would", 0) else {
        return;
    };
    let admin = cred_from(
        &cl.cfg.path().join("admin.json"),
        cl.logs.path(),
        "admin",
        false,
    );
    let api = |method: &str, path: &str, body: &serde_json::Value| {
        call_manager(&cl, 0, &admin, method, path, &body.to_string())
    };
    let good = spec_json();
    let deploy = |stack: &str, services: Vec<(String, serde_json::Value)>| {
        let services: serde_json::Map<String, serde_json::Value> = services.into_iter().collect();
        api(
            "POST",
            &format!("/v1/stacks/{stack}"),
            &serde_json::json!({ "services": services, "prune": false }),
        )
    };
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut s = good.clone();
        f(&mut s);
        s
    };
    let long = "a".repeat(5000);
    for name in [
        "../../x",
        "a\nb",
        "\u{1b}[2Jx",
        "",
        long.as_str(),
        "dot.ted",
    ] {
        let (code, out) = deploy("s", vec![(name.to_owned(), good.clone())]);
        assert_eq!(code, 400, "service name {name:?}: {out}");
        // A good service beside it is not stored either.
        let (code, _) = deploy(
            "s",
            vec![(name.to_owned(), good.clone()), ("ok".into(), good.clone())],
        );
        assert_eq!(code, 400);
    }
    for stack in ["..%2F..%2Fx", "a%0Ab", "%1B%5B2J", &"s".repeat(64)] {
        let (code, out) = deploy(stack, vec![("web".into(), good.clone())]);
        assert!(
            code == 400 || code == 404,
            "stack name {stack:?}: {code} {out}"
        );
    }
    let bad_specs = [
        with(&|s| s["volumes"][0]["type"] = "weird".into()),
        with(&|s| s["volumes"][0]["target"] = "/../etc".into()),
        with(&|s| s["hostname"] = "web\n1.2.3.4 evil".into()),
        with(&|s| s["environment"] = serde_json::json!({"A=B": "x"})),
        with(&|s| s["image"] = "busybox\nx".into()),
        with(&|s| s["constraints"] = serde_json::json!(["node.role ="])),
        with(&|s| s["labels"] = serde_json::json!({"x\u{1b}[31m": "y"})),
    ];
    for spec in bad_specs {
        let (code, out) = deploy("s", vec![("web".into(), spec.clone())]);
        assert_eq!(code, 400, "{spec}: {out}");
    }
    // A spec is an object: JSON inside a string (what releases before the
    // typed model sent), or a field of the wrong type, is refused and says
    // where.
    for (spec, at) in [
        (serde_json::Value::String(good.to_string()), "services.web"),
        (with(&|s| s["mode"] = "lots".into()), "services.web.mode"),
    ] {
        let (code, out) = deploy("s", vec![("web".into(), spec)]);
        assert_eq!(code, 400, "{out}");
        assert!(out.contains(at), "{out}");
    }
    assert_eq!(
        cl.json(&["service", "ls", "--format", "json"]),
        serde_json::json!([])
    );
    // The control: the good spec deploys, and a bad update of it is refused.
    let (code, out) = deploy("s", vec![("web".into(), good.clone())]);
    assert_eq!(code, 200, "{out}");
    let (code, out) = api(
        "POST",
        "/v1/services/s_web/update",
        &serde_json::json!({ "env_add": { "": "x" } }),
    );
    assert_eq!(code, 400, "{out}");
    let (code, out) = api(
        "POST",
        "/v1/services/s_web/update",
        &serde_json::json!({ "image": "a b" }),
    );
    assert_eq!(code, 400, "{out}");
    let (code, _) = api(
        "POST",
        "/v1/services/s_web/update",
        &serde_json::json!({ "image": "busybox:2" }),
    );
    assert_eq!(code, 200);
}

/// Guessing join tokens from one address is slowed to a crawl (429 after
/// a few failures) while a node elsewhere still joins; a client that holds
/// a TLS connection open without finishing a request is let go.
#[test]
fn joins_are_rate_limited_and_slow_clients_are_closed() {
    let Some(mut cl) = Cluster::new("joins_are_rate_limited_and_slow_clients_are_closed", 1) else {
        return;
    };
    let anonymous = cred_from(
        &cl.cfg.path().join("admin.json"),
        cl.logs.path(),
        "anon",
        true,
    );
    let token = cl.token();
    let wrong = format!("{}{}", &token[..token.len() - 32], "0".repeat(32));
    let body = serde_json::json!({
        "token": wrong,
        "csr_pem": "",
        "info": { "hostname": "guesser", "addr": "192.168.1.1", "arch": "x86_64",
                  "nano_cpus": 1, "memory": 1, "disk": 1, "labels": {} },
    })
    .to_string();
    let codes: Vec<u16> = (0..12)
        .map(|_| call_manager(&cl, 0, &anonymous, "POST", "/v1/join", &body).0)
        .collect();
    assert_eq!(&codes[..5], [403; 5], "{codes:?}");
    assert!(
        codes[5..].iter().all(|c| *c == 403 || *c == 429),
        "{codes:?}"
    );
    assert!(
        codes[6..].iter().filter(|c| **c == 429).count() >= 4,
        "{codes:?}"
    );
    // A node on another address joins all the same.
    cl.start_agent(0);

    // Slow clients: one that says nothing after the handshake, one that
    // sends a head a line a second and never ends it.
    let s_client = |slow: bool| {
        let mut c = cl.lan.hosts[1]
            .command("openssl")
            .args(["s_client", "-quiet", "-connect"])
            .arg(format!("{}:{}", cl.lan.hosts[0].addr, cl.port))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = c.stdin.take().unwrap();
        let feeder = std::thread::spawn(move || {
            use std::io::Write;
            for line in 0..45 {
                std::thread::sleep(Duration::from_secs(1));
                let head = match line {
                    // The idle one keeps its stdin open and says nothing.
                    _ if !slow => continue,
                    0 => "GET /v1/ca HTTP/1.1\r\n".to_owned(),
                    n => format!("X-Slow-{n}: x\r\n"),
                };
                if stdin
                    .write_all(head.as_bytes())
                    .and_then(|_| stdin.flush())
                    .is_err()
                {
                    return;
                }
            }
        });
        (c, feeder)
    };
    let started = std::time::Instant::now();
    let mut clients = vec![s_client(false), s_client(true)];
    for (c, _) in &mut clients {
        let deadline = started + Duration::from_secs(40);
        loop {
            if c.try_wait().unwrap().is_some() {
                break;
            }
            if std::time::Instant::now() > deadline {
                let _ = c.kill();
                panic!("a slow client was still connected after 40 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let took = started.elapsed();
    eprintln!("SLOW CLIENTS: both closed after {took:?}");
    assert!(took < Duration::from_secs(35), "{took:?}");
    // (The feeders end at their next write, or within 45 s for the idle
    // one; they are not waited for.)
    drop(clients);
}

/// A task cannot reach the instance-metadata address (a cloud host's
/// credentials); a service with `x-gantry: {metadata: true}` can.
#[test]
fn tasks_reach_the_metadata_address_only_when_allowed() {
    let Some(mut cl) = Cluster::new("tasks_reach_the_metadata_address_only_when_allowed", 1) else {
        return;
    };
    cl.start_agent(0);
    // Host 0 plays the cloud's metadata server, node-1 routes to it.
    let md = cl.logs.path().join("md");
    std::fs::create_dir_all(md.join("latest")).unwrap();
    std::fs::write(md.join("latest/index.html"), "secret-credentials\n").unwrap();
    let ip = |host: usize, args: &[&str]| {
        let o = Command::new("ip")
            .args(["-n", &cl.lan.hosts[host].name])
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "ip {args:?}: {}", errtext(&o));
    };
    ip(0, &["addr", "add", "169.254.169.254/32", "dev", "eth0"]);
    ip(
        1,
        &[
            "route",
            "add",
            "169.254.169.254/32",
            "via",
            &cl.lan.hosts[0].addr,
        ],
    );
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Kill(
        cl.lan.hosts[0]
            .command("busybox")
            .args(["httpd", "-f", "-p", "169.254.169.254:80", "-h"])
            .arg(&md)
            .spawn()
            .unwrap(),
    );
    let stack = format!(
        "{}{}",
        web(1, ""),
        web(1, "")
            .replace("services:\n  web:", "  cloudy:")
            .replace(
                "    stop_grace_period",
                "    x-gantry:\n      metadata: true\n    stop_grace_period"
            )
    )
    .replace("IMAGE", &cl.image);
    let o = cl.deploy("m", &stack);
    assert!(o.status.success(), "{}", errtext(&o));
    cl.wait_running("m_web", &[("node-1", 1)], Duration::from_secs(30));
    cl.wait_running("m_cloudy", &[("node-1", 1)], Duration::from_secs(30));
    let fetch = |svc: &str| {
        let id = cl.container_of(0, svc);
        let o = cl.on_agent(
            0,
            &[
                "exec",
                &id,
                "sh",
                "-c",
                "printf 'GET /latest/index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 169.254.169.254 80 2>&1",
            ],
        );
        format!("{}{}", text(&o), errtext(&o))
    };
    let out = fetch("m_cloudy");
    assert!(
        out.contains("secret-credentials"),
        "the allowed task reaches it: {out}"
    );
    let out = fetch("m_web");
    assert!(!out.contains("secret-credentials"), "{out}");
}

/// `gantry server --dfp-override-labels`: the operator lets DFP's API take
/// what labels route (here as the admin calls the manager's DFP route).
#[test]
fn the_operator_can_let_dfp_take_label_routes() {
    let Some(cl) = Cluster::new_with("the_operator_can_let_dfp_take_label_routes", 0, |_| {
        (vec!["--dfp-override-labels".into()], None)
    }) else {
        return;
    };
    let o = cl.deploy(
        "shop",
        "services:\n  web:\n    image: busybox\n    deploy:\n      labels:\n        gantry.http.host: www.shop.test\n",
    );
    assert!(o.status.success(), "{}", errtext(&o));
    let admin = cred_from(
        &cl.cfg.path().join("admin.json"),
        cl.logs.path(),
        "admin",
        false,
    );
    let query = serde_json::json!({ "query": {
        "serviceName": "other", "serviceDomain": "www.shop.test", "servicePath": "/",
        "port": "80", "distribute": "true",
    }});
    let (code, out) = call_manager(
        &cl,
        0,
        &admin,
        "POST",
        "/v1/dfp/reconfigure",
        &query.to_string(),
    );
    assert_eq!(code, 200, "{out}");
}
