//! Health probes: CMD and CMD-SHELL run in the container through the
//! helper; Gantry's HTTP and TCP checks connect to the container's address
//! from the node.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A check, normalised from the service's (or the image's) health check.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Check {
    pub(crate) test: Vec<String>,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) start_period: Duration,
    /// Between checks during the start period (none: Gantry's pace).
    pub(crate) start_interval: Option<Duration>,
    pub(crate) retries: u32,
}

impl Check {
    /// The service's check, else the image's; none for `NONE` or neither.
    pub(crate) fn of(
        svc: Option<&gantry_spec::Healthcheck>,
        image: Option<&gantry_image::types::Healthcheck>,
    ) -> Option<Self> {
        let ns = |v: u64, d: u64| Duration::from_nanos(if v == 0 { d } else { v });
        const S30: u64 = 30_000_000_000;
        let c = match (svc, image) {
            (Some(h), _) => Self {
                test: h.test.clone(),
                interval: ns(h.interval_ns, S30),
                timeout: ns(h.timeout_ns, S30),
                start_period: Duration::from_nanos(h.start_period_ns),
                start_interval: (h.start_interval_ns > 0)
                    .then(|| Duration::from_nanos(h.start_interval_ns)),
                retries: if h.retries == 0 { 3 } else { h.retries },
            },
            (None, Some(h)) => Self {
                test: h.test.clone(),
                interval: ns(h.interval.unwrap_or(0), S30),
                timeout: ns(h.timeout.unwrap_or(0), S30),
                start_period: Duration::from_nanos(h.start_period.unwrap_or(0)),
                start_interval: None,
                retries: h.retries.map_or(3, |r| r.max(1) as u32),
            },
            (None, None) => return None,
        };
        match c.test.first().map(String::as_str) {
            Some("CMD" | "CMD-SHELL" | "HTTP" | "TCP") if c.test.len() > 1 => Some(c),
            _ => None,
        }
    }

    /// Runs the probe once: Ok when healthy, else what went wrong.
    pub(crate) async fn probe(
        &self,
        helper: &Path,
        data_dir: &Path,
        container: &str,
        ip: Option<Ipv4Addr>,
    ) -> Result<(), String> {
        let port = || -> Result<u16, String> {
            self.test[1]
                .parse()
                .map_err(|_| format!("bad port {:?}", self.test[1]))
        };
        let ip = || ip.ok_or_else(|| "the container has no address".to_owned());
        match self.test[0].as_str() {
            "CMD" | "CMD-SHELL" => {
                let mut args = vec!["exec", container];
                if self.test[0] == "CMD-SHELL" {
                    args.extend(["/bin/sh", "-c"]);
                }
                args.extend(self.test[1..].iter().map(String::as_str));
                match crate::helper::call(helper, data_dir, &args, None, self.timeout).await? {
                    (0, _) => Ok(()),
                    (code, err) => Err(format!("exit {code} {err}").trim().to_owned()),
                }
            }
            "TCP" => {
                let addr = (ip()?, port()?);
                match tokio::time::timeout(self.timeout, TcpStream::connect(addr)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!("tcp {}:{}: {e}", addr.0, addr.1)),
                    Err(_) => Err(format!("tcp {}:{}: timed out", addr.0, addr.1)),
                }
            }
            "HTTP" => {
                let (ip, port) = (ip()?, port()?);
                let path = self.test.get(2).map_or("/", String::as_str);
                let f = async {
                    let mut s = TcpStream::connect((ip, port))
                        .await
                        .map_err(|e| e.to_string())?;
                    let req = format!(
                        "GET {path} HTTP/1.0\r\nHost: {ip}:{port}\r\nUser-Agent: gantry-health\r\n\r\n"
                    );
                    s.write_all(req.as_bytes())
                        .await
                        .map_err(|e| e.to_string())?;
                    let mut buf = vec![0u8; 64];
                    let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
                    let line = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let code: u16 = line
                        .split_whitespace()
                        .nth(1)
                        .and_then(|c| c.parse().ok())
                        .ok_or_else(|| format!("not an HTTP answer: {line:?}"))?;
                    if (200..400).contains(&code) {
                        Ok(())
                    } else {
                        Err(format!("HTTP {code}"))
                    }
                };
                match tokio::time::timeout(self.timeout, f).await {
                    Ok(r) => r.map_err(|e| format!("http://{ip}:{port}{path}: {e}")),
                    Err(_) => Err(format!("http://{ip}:{port}{path}: timed out")),
                }
            }
            other => Err(format!("unknown health check {other}")),
        }
    }
}
