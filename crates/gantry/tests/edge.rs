//! The edge proxy end to end on simulated hosts: routes from labels and
//! from docker-flow-proxy's API, internal and ACME certificates (against
//! a real Pebble), metrics, edge nodes.

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;

#[test]
fn the_edge_proxy_routes_by_labels_and_the_dfp_api() {
    let Some(mut cl) = Cluster::new("the_edge_proxy_routes_by_labels_and_the_dfp_api", 3) else {
        return;
    };
    for i in 0..3 {
        cl.start_agent(i);
    }
    let stack = r#"services:
  web:
    image: IMAGE
    command: ["sh", "-c", "mkdir -p /w/demo && echo $$HOSTNAME > /w/index.html && cp /w/index.html /w/demo/ && exec httpd -f -p 8080 -h /w"]
    stop_grace_period: 1s
    healthcheck:
      test: ["HTTP", "8080", "/index.html"]
      interval: 1s
      retries: 2
    deploy:
      replicas: 3
      labels:
        gantry.http.host: www.shop.test
        gantry.http.port: "8080"
  api:
    image: IMAGE
    command: ["sh", "-c", "mkdir -p /w/api && echo api > /w/api/index.html && exec httpd -f -p 8080 -h /w"]
    stop_grace_period: 1s
    deploy:
      labels:
        com.df.notify: "true"
        com.df.serviceDomain: www.shop.test
        com.df.servicePath: /api
        com.df.port: "8080"
"#
    .replace("IMAGE", &cl.image);
    let o = cl.deploy("shop", &stack);
    assert!(o.status.success(), "{}", errtext(&o));
    cl.wait_running(
        "shop_web",
        &[("node-1", 1), ("node-2", 1), ("node-3", 1)],
        Duration::from_secs(40),
    );
    cl.wait_total("shop_api", 1, Duration::from_secs(20));
    let client = &cl.lan.hosts[0];
    let node = |i: usize| cl.lan.hosts[i].addr.clone();
    // The edge CA signed www.shop.test at once; clients trust it.
    let ca = cl.logs.path().join("edge-ca.pem");
    std::fs::write(&ca, cl.admin_ok(&["cert", "ca"])).unwrap();
    let ca = ca.to_str().unwrap().to_owned();
    wait_for("the internal certificate", Duration::from_secs(10), || {
        let ls = cl.admin_ok(&["cert", "ls"]);
        if ls.contains("www.shop.test") && ls.contains("internal") {
            Ok(())
        } else {
            Err(ls)
        }
    });
    // HTTPS from another host through node-1's proxy, over HTTP/2,
    // balanced over the three replicas on three hosts.
    let https = |i: usize, path: &str| {
        curl_on(
            client,
            &[
                "--http2",
                "--cacert",
                &ca,
                "--resolve",
                &format!("www.shop.test:443:{}", node(i)),
                &format!("https://www.shop.test{path}"),
            ],
        )
    };
    let mut seen = BTreeMap::new();
    wait_for("HTTPS through the proxy", Duration::from_secs(10), || {
        let (s, out) = https(1, "/index.html");
        if s == 200 {
            Ok(())
        } else {
            Err(out)
        }
    });
    for _ in 0..6 {
        let (s, out) = https(1, "/index.html");
        assert_eq!(s, 200, "{out}");
        assert!(out.starts_with("HTTP/2 200"), "{out}");
        *seen.entry(who(&out)).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 3, "three replicas answer in turn: {seen:?}");
    assert!(seen.values().all(|n| *n == 2), "{seen:?}");
    // Any node's proxy serves it; DFP's labels route /api to the api.
    let (s, out) = https(3, "/api/index.html");
    assert_eq!((s, who(&out).as_str()), (200, "api"), "{out}");
    // Plain HTTP redirects to HTTPS once the certificate exists.
    let (s, out) = curl_on(
        client,
        &[
            "-H",
            "Host: www.shop.test",
            &format!("http://{}/x?y=1", node(2)),
        ],
    );
    assert_eq!(s, 301, "{out}");
    assert!(
        out.contains("location: https://www.shop.test/x?y=1"),
        "{out}"
    );

    // The docker-flow-proxy API on node-1 (loopback there), with DFP's
    // documented example.
    let dfp = |i: usize, q: &str| {
        curl_on(
            &cl.lan.hosts[i],
            &[&format!("http://127.0.0.1:8080/v1/docker-flow-proxy/{q}")],
        )
    };
    let (s, out) = dfp(1, "reconfigure?serviceName=web&servicePath=/demo&port=8080");
    assert_eq!(s, 200, "{out}");
    assert!(out.contains(r#""Status":"OK""#), "{out}");
    let plain = |i: usize, path: &str| curl_on(client, &[&format!("http://{}{path}", node(i))]);
    wait_for("the DFP route on node-1", Duration::from_secs(2), || {
        let (s, out) = plain(1, "/demo/index.html");
        if s == 200 {
            Ok(())
        } else {
            Err(out)
        }
    });
    // Not distributed: only node-1's proxy has it.
    let (s, out) = plain(2, "/demo/index.html");
    assert_eq!(s, 404, "{out}");
    assert!(out.contains("no route"), "{out}");
    let (s, out) = dfp(
        1,
        "reconfigure?serviceName=web&servicePath=/demo&port=8080&distribute=true",
    );
    assert_eq!(s, 200, "{out}");
    let t0 = Instant::now();
    wait_for(
        "the distributed route on node-2",
        Duration::from_secs(2),
        || {
            let (s, out) = plain(2, "/demo/index.html");
            if s == 200 {
                Ok(())
            } else {
                Err(out)
            }
        },
    );
    eprintln!(
        "DFP distribute: live on another node after {:?}",
        t0.elapsed()
    );
    // DFP's errors, with its status codes.
    for (q, want) in [
        ("reconfigure?servicePath=/x&port=80", 400),
        ("reconfigure?serviceName=web&port=8080", 409),
        ("reconfigure?serviceName=web&servicePath=/x", 400),
        (
            "reconfigure?serviceName=web&servicePath=/x&port=80&pathType=bogus",
            400,
        ),
        ("remove", 400),
    ] {
        let (s, out) = dfp(1, q);
        assert_eq!(s, want, "{q}: {out}");
        assert!(out.contains(r#""Status":"NOK""#), "{q}: {out}");
    }
    let (_, out) = dfp(1, "reconfigure?port=80");
    assert!(out.contains("serviceName parameter is mandatory."), "{out}");
    assert_eq!(dfp(1, "ping").0, 200);
    let (s, out) = dfp(1, "config");
    assert_eq!(s, 200);
    assert!(
        out.contains("/demo") && out.contains("www.shop.test"),
        "{out}"
    );
    let (s, out) = dfp(1, "certs");
    assert_eq!(s, 200);
    assert!(out.contains("www.shop.test"), "{out}");
    // A TCP route (reqMode=tcp): node-1 forwards its port 5433 to the
    // service's tasks.
    let (s, out) = dfp(
        1,
        "reconfigure?serviceName=web&reqMode=tcp&srcPort=5433&port=8080",
    );
    assert_eq!(s, 200, "{out}");
    wait_for("the TCP route", Duration::from_secs(3), || {
        let (s, out) = curl_on(client, &[&format!("http://{}:5433/index.html", node(1))]);
        if s == 200 {
            Ok(())
        } else {
            Err(out)
        }
    });
    // DFP's `cert`: PUT a PEM bundle (chain and key).
    self_signed_cert(
        cl.logs.path(),
        "own",
        "own.example.org",
        30,
        &["-addext", "subjectAltName=DNS:own.example.org"],
    );
    let bundle = cl.logs.path().join("bundle.pem");
    std::fs::write(
        &bundle,
        std::fs::read_to_string(cl.logs.path().join("own.pem")).unwrap()
            + &std::fs::read_to_string(cl.logs.path().join("own.key")).unwrap(),
    )
    .unwrap();
    let (s, out) = curl_on(
        &cl.lan.hosts[1],
        &[
            "-X",
            "PUT",
            "--data-binary",
            &format!("@{}", bundle.display()),
            "http://127.0.0.1:8080/v1/docker-flow-proxy/cert?certName=own",
        ],
    );
    assert_eq!(s, 200, "{out}");
    let ls = cl.admin_ok(&["cert", "ls"]);
    assert!(
        ls.contains("own.example.org") && ls.contains("user"),
        "{ls}"
    );
    // A route to a service with no running task: 503 with Retry-After.
    let (s, _) = dfp(
        1,
        "reconfigure?serviceName=ghost&servicePath=/ghost&port=80&distribute=true",
    );
    assert_eq!(s, 200);
    wait_for("the ghost route", Duration::from_secs(2), || {
        let (s, out) = plain(3, "/ghost");
        if s == 503 && out.to_ascii_lowercase().contains("retry-after") {
            Ok(())
        } else {
            Err(out)
        }
    });

    // Routes change under load: not one request fails.
    let wrk = cl.lan.hosts[0]
        .command("wrk")
        .args([
            "-t1",
            "-c8",
            "-d4s",
            &format!("http://{}/demo/index.html", node(1)),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for i in 0..15 {
        // Another service's routes come and go: the table is swapped
        // whole every time.
        let (s, out) = dfp(
            1,
            &format!(
                "reconfigure?serviceName=churn{i}&servicePath=/churn{i}&port=8080&distribute=true"
            ),
        );
        assert_eq!(s, 200, "{out}");
        std::thread::sleep(Duration::from_millis(100));
        let (s, out) = dfp(1, &format!("remove?serviceName=churn{i}&distribute=true"));
        assert_eq!(s, 200, "{out}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = wrk.wait_with_output().unwrap();
    let report = text(&o);
    eprintln!("{report}");
    assert!(report.contains("requests in"), "{report}");
    assert!(
        !report.contains("Non-2xx"),
        "requests failed while routes changed: {report}"
    );
    assert!(!report.contains("Socket errors"), "{report}");

    // The proxy's metrics on node-1's /metrics: per route and status
    // class, and an exposition promtool finds nothing wrong with.
    let (s, out) = curl_on(&cl.lan.hosts[1], &["http://127.0.0.1:9323/metrics"]);
    assert_eq!(s, 200, "{out}");
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    let served: f64 = body
        .lines()
        .find(|l| {
            l.starts_with("gantry_proxy_requests_total{")
                && l.contains(r#"route="*/demo""#)
                && l.contains(r#"code="2xx""#)
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no 2xx count for /demo: {body}"));
    assert!(served >= 1000.0, "{served}");
    assert!(
        body.contains("gantry_proxy_request_duration_seconds_bucket{"),
        "{body}"
    );
    promtool_ok(&body);
    // remove: the path is gone again.
    let (s, _) = dfp(1, "remove?serviceName=web&distribute=true");
    assert_eq!(s, 200);
    wait_for("the route removed", Duration::from_secs(2), || {
        let (s, out) = plain(1, "/demo/index.html");
        if s == 404 {
            Ok(())
        } else {
            Err(out)
        }
    });
    // Edge nodes: once a node carries gantry.edge=true, only such nodes
    // run the proxy; without the label anywhere, every node does again.
    cl.admin_ok(&[
        "node",
        "update",
        "--label-add",
        "gantry.edge=true",
        "node-1",
    ]);
    wait_for("node-2's proxy to stop", Duration::from_secs(5), || {
        let (s, out) = plain(2, "/");
        if s == 0 {
            Ok(())
        } else {
            Err(out)
        }
    });
    let (s, out) = curl_on(
        client,
        &["-H", "Host: www.shop.test", &format!("http://{}/", node(1))],
    );
    assert_eq!(s, 301, "node-1 is an edge node: {out}");
    cl.admin_ok(&["node", "update", "--label-rm", "gantry.edge", "node-1"]);
    wait_for("node-2's proxy back", Duration::from_secs(5), || {
        let (s, out) = plain(2, "/nothing-here");
        if s == 404 {
            Ok(())
        } else {
            Err(out)
        }
    });
    // Bad labels are refused at deploy, with the label named.
    let bad = stack.replace("gantry.http.port: \"8080\"", "gantry.http.port: eighty");
    let o = cl.deploy("shop", &bad);
    assert!(!o.status.success());
    assert!(errtext(&o).contains("gantry.http.port"), "{}", errtext(&o));
}

#[test]
fn certificates_come_from_acme_by_http01_and_tls_alpn01_and_renew() {
    let Some(mut cl) = Cluster::new_with(
        "certificates_come_from_acme_by_http01_and_tls_alpn01_and_renew",
        2,
        |lan| {
            // Pebble on host 0; its DNS sends every name to node-1.
            let pebble = Pebble::start_on(&lan.hosts[0], &lan.hosts[1].addr);
            let args = vec![
                "--acme-directory".to_owned(),
                pebble.directory.clone(),
                "--acme-ca-root".to_owned(),
                pebble.api_ca.to_string_lossy().into_owned(),
                "--acme-email".to_owned(),
                "ops@example.org".to_owned(),
            ];
            (args, Some(pebble))
        },
    ) else {
        return;
    };
    cl.start_agent(0);
    cl.start_agent(1);
    // A certificate for www.renew.example that expires in 10 days: ACME
    // renews it (30 days before expiry).
    let dir = cl.logs.path().to_owned();
    self_signed_cert(
        &dir,
        "short",
        "www.renew.example",
        10,
        &["-addext", "subjectAltName=DNS:www.renew.example"],
    );
    let short = dir.join("short.pem");
    let key = dir.join("short.key");
    cl.admin_ok(&[
        "cert",
        "add",
        short.to_str().unwrap(),
        key.to_str().unwrap(),
    ]);
    let stack = r#"services:
  a:
    image: IMAGE
    command: ["sh", "-c", "echo a > /index.html && exec httpd -f -p 8080 -h /"]
    stop_grace_period: 1s
    deploy:
      placement:
        constraints: ["node.hostname == node-1"]
      labels:
        gantry.http.host: www.acme-a.example
        gantry.http.port: "8080"
  b:
    image: IMAGE
    command: ["sh", "-c", "echo b > /index.html && exec httpd -f -p 8080 -h /"]
    stop_grace_period: 1s
    deploy:
      labels:
        gantry.http.host: www.acme-b.example
        gantry.http.port: "8080"
        gantry.http.acme: tls-alpn-01
  r:
    image: IMAGE
    command: ["sh", "-c", "echo r > /index.html && exec httpd -f -p 8080 -h /"]
    stop_grace_period: 1s
    deploy:
      labels:
        gantry.http.host: www.renew.example
        gantry.http.port: "8080"
"#
    .replace("IMAGE", &cl.image);
    let o = cl.deploy("site", &stack);
    assert!(o.status.success(), "{}", errtext(&o));
    let certs = |cl: &Cluster| -> BTreeMap<String, String> {
        cl.json_map(&["cert", "ls", "--format", "json"], "name", "source")
    };
    let t0 = Instant::now();
    wait_for(
        "three certificates from ACME",
        Duration::from_secs(60),
        || {
            let c = certs(&cl);
            let acme = [
                "www.acme-a.example",
                "www.acme-b.example",
                "www.renew.example",
            ]
            .iter()
            .all(|n| c.get(*n).map(String::as_str) == Some("acme"));
            if acme {
                Ok(())
            } else {
                Err(format!(
                    "{c:?}\n{}\n{}",
                    cl.tail("manager.log"),
                    cl.pebble.as_ref().unwrap().logs()
                ))
            }
        },
    );
    eprintln!(
        "ACME: three certificates (HTTP-01, TLS-ALPN-01, a renewal) in {:?}",
        t0.elapsed()
    );
    // Events record the issues and the renewal.
    let events = cl.admin_ok(&[
        "events",
        "--since",
        "10m",
        "--no-follow",
        "--filter",
        "type=certificate",
    ]);
    assert!(
        events.contains("renew") && events.contains("www.renew.example"),
        "{events}"
    );
    // curl trusting Pebble's root gets a valid HTTPS answer, from any node.
    let root = cl.logs.path().join("pebble-root.pem");
    std::fs::write(&root, cl.pebble.as_ref().unwrap().issuing_root()).unwrap();
    for (name, body, node) in [
        ("www.acme-a.example", "a", 1),
        ("www.acme-b.example", "b", 2),
        ("www.renew.example", "r", 1),
    ] {
        let resolve = format!("{name}:443:{}", cl.lan.hosts[node].addr);
        let url = format!("https://{name}/index.html");
        wait_for(
            &format!("HTTPS for {name}"),
            Duration::from_secs(15),
            || {
                let (s, out) = curl_on(
                    &cl.lan.hosts[0],
                    &[
                        "--cacert",
                        root.to_str().unwrap(),
                        "--resolve",
                        &resolve,
                        &url,
                    ],
                );
                if s == 200 && who(&out) == body {
                    Ok(())
                } else {
                    Err(out)
                }
            },
        );
    }
}
