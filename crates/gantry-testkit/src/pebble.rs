//! A real ACME CA: Debian's `pebble`, with `pebble-challtestsrv` as its
//! DNS server, on a simulated host.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::token::openssl;
use crate::{wait_for, Host};

/// Pebble and its DNS server; killed on drop.
pub struct Pebble {
    children: Vec<Child>,
    dir: tempfile::TempDir,
    host_addr: String,
    netns: PathBuf,
    /// The ACME directory URL.
    pub directory: String,
    /// The CA that signed Pebble's own HTTPS certificate (for the ACME
    /// client: `--acme-ca-root`).
    pub api_ca: PathBuf,
}

/// A self-signed ECDSA certificate (`NAME.pem`, `NAME.key` in `dir`) for
/// `cn`, valid `days`, with `extra` openssl arguments (`-addext ...`).
pub fn self_signed_cert(dir: &Path, name: &str, cn: &str, days: u32, extra: &[&str]) {
    let (days, subj) = (days.to_string(), format!("/CN={cn}"));
    let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
    let mut args = vec![
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        &days,
        "-subj",
        &subj,
        "-keyout",
        &key,
        "-out",
        &pem,
    ];
    args.extend(extra);
    openssl(dir, &args);
}

impl Pebble {
    /// Starts Pebble on `host`, validating challenges on ports 80 and 443
    /// of whatever address `resolve_to` is: its DNS answers every name
    /// with it.
    pub fn start_on(host: &Host, resolve_to: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let a = &host.addr;
        self_signed_cert(d, "ca", "pebble test API CA", 2, &[]);
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                "/CN=pebble",
                "-keyout",
                "key.pem",
                "-out",
                "req.csr",
            ],
        );
        std::fs::write(
            d.join("ext.cnf"),
            format!("subjectAltName=IP:{a},DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
        )
        .expect("write ext.cnf");
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "req.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                "cert.pem",
                "-extfile",
                "ext.cnf",
            ],
        );
        let cfg = format!(
            r#"{{"pebble": {{"listenAddress": "{a}:14000", "managementListenAddress": "{a}:15000", "certificate": "{}", "privateKey": "{}", "httpPort": 80, "tlsPort": 443, "ocspResponderURL": "", "externalAccountBindingRequired": false}}}}"#,
            d.join("cert.pem").display(),
            d.join("key.pem").display()
        );
        std::fs::write(d.join("pebble.json"), cfg).expect("write pebble.json");
        let log = |name: &str| std::fs::File::create(d.join(name)).expect("log file");
        let dns = format!("{a}:8053");
        let chall = host
            .command("pebble-challtestsrv")
            .args([
                "-dns01",
                &dns,
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
            ])
            .args([
                "-management",
                &format!("{a}:8055"),
                "-defaultIPv4",
                resolve_to,
                "-defaultIPv6",
                "",
            ])
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn()
            .expect("start pebble-challtestsrv (apt install pebble)");
        let pebble = host
            .command("pebble")
            .args([
                "-config",
                &d.join("pebble.json").to_string_lossy(),
                "-dnsserver",
                &dns,
            ])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .expect("start pebble (apt install pebble)");
        let p = Self {
            children: vec![chall, pebble],
            host_addr: a.clone(),
            netns: host.netns_path(),
            directory: format!("https://{a}:14000/dir"),
            api_ca: d.join("ca.pem"),
            dir,
        };
        wait_for("pebble to answer", Duration::from_secs(15), || {
            let o = p.curl(&format!("https://{a}:14000/dir"));
            if o.contains("newOrder") {
                Ok(())
            } else {
                Err(o)
            }
        });
        p
    }

    fn curl(&self, url: &str) -> String {
        let o = std::process::Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .args(["curl", "-sS", "--max-time", "5", "--cacert"])
            .arg(&self.api_ca)
            .arg(url)
            .stdin(Stdio::null())
            .output()
            .expect("run curl");
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }

    /// The root that signs the certificates Pebble issues (PEM), for
    /// clients to trust; it changes with every Pebble start.
    pub fn issuing_root(&self) -> String {
        self.curl(&format!("https://{}:15000/roots/0", self.host_addr))
    }

    /// Pebble's logs, for a failing test's message.
    pub fn logs(&self) -> String {
        [
            "pebble.log",
            "pebble.err",
            "challtestsrv.log",
            "challtestsrv.err",
        ]
        .iter()
        .map(|f| {
            format!(
                "--- {f}\n{}",
                std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default()
            )
        })
        .collect()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
