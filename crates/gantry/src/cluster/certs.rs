//! `gantry cert`: the certificates the edge proxies serve.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use crate::output::{self, Format};
use crate::Ctx;

use super::*;

/// `gantry cert`: the edge proxies' certificates.
#[derive(Subcommand)]
pub(crate) enum CertCmd {
    /// List certificates (internal, ACME and operators').
    Ls {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Add a certificate for the names it carries: a chain and its key,
    /// in one PEM file or two.
    Add {
        /// The certificate chain (PEM), with the key or without.
        cert: PathBuf,
        /// The private key (PEM), if not in the first file.
        key: Option<PathBuf>,
    },
    /// Remove a certificate.
    Rm {
        /// Its name (the first it carries).
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Print the edge CA certificate, which signs names under .test,
    /// .local and .internal: give it to clients to trust.
    Ca,
}

pub(crate) fn cert(ctx: &Ctx, cmd: CertCmd) -> anyhow::Result<u8> {
    let c = client(ctx)?;
    match cmd {
        CertCmd::Ls { format } => {
            let v: Vec<gantry_api::CertView> = call(c.get("/v1/certs"))?;
            if format == Format::Json {
                output::json(&v)?;
            } else {
                output::table(
                    &["NAME", "NAMES", "SOURCE", "EXPIRES"],
                    v.into_iter()
                        .map(|c| vec![c.name, c.names.join(","), c.source, c.not_after])
                        .collect(),
                );
            }
        }
        CertCmd::Add { cert, key } => {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))
            };
            let first = read(&cert)?;
            let key_pem = match &key {
                Some(k) => read(k)?,
                None => first.clone(),
            };
            let pick = |pem: &str, want_key: bool| {
                let mut out = String::new();
                let mut on = false;
                for line in pem.lines() {
                    if line.starts_with("-----BEGIN ") {
                        on = line.contains("PRIVATE KEY") == want_key;
                    }
                    if on {
                        out.push_str(line);
                        out.push('\n');
                    }
                    if line.starts_with("-----END ") {
                        on = false;
                    }
                }
                out
            };
            let add = gantry_api::CertAdd {
                cert_pem: pick(&first, false),
                key_pem: pick(&key_pem, true),
            };
            if add.key_pem.is_empty() {
                anyhow::bail!("no private key: give it in the file or as a second file");
            }
            let v: gantry_api::CertView = call(c.post("/v1/certs", &add))?;
            println!("{} ({}), until {}", v.name, v.names.join(", "), v.not_after);
        }
        CertCmd::Rm { names } => {
            for n in names {
                let () = call(c.delete(&format!("/v1/certs/{n}")))?;
                println!("{n}");
            }
        }
        CertCmd::Ca => {
            let pem: String = call(c.get("/v1/edge-ca"))?;
            print!("{pem}");
        }
    }
    Ok(0)
}
