//! `gantry ca`: the cluster CA and its rotation.

use std::time::Duration;

use gantry_api::CaStatus;

use super::{call, client, renew_credential};
use crate::output::{self, Format};
use crate::Ctx;

/// `gantry ca`.
#[derive(clap::Subcommand)]
pub(crate) enum CaCmd {
    /// Show the cluster CA, the roots trusted and a rotation under way.
    Inspect {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        /// Print the roots to trust (PEM) instead, as a registry client
        /// wants them (`/etc/docker/certs.d/MANAGER:PORT/ca.crt`).
        #[arg(long, conflicts_with = "format")]
        pem: bool,
    },
    /// Replace the cluster CA with no downtime, as `docker swarm ca
    /// --rotate`: every node and manager gets a certificate of a new CA,
    /// then the old CA is trusted no more. The join tokens change.
    Rotate {
        /// Start the rotation and return (`gantry ca inspect` follows it).
        #[arg(short, long)]
        detach: bool,
        /// Only the new CA's fingerprint.
        #[arg(short, long)]
        quiet: bool,
    },
}

pub(crate) fn ca(ctx: &Ctx, cmd: CaCmd) -> anyhow::Result<u8> {
    let mut c = client(ctx)?;
    match cmd {
        CaCmd::Inspect { pem: true, .. } => {
            let roots: String = call(c.get("/v1/ca"))?;
            print!("{roots}");
            if !roots.ends_with('\n') {
                println!();
            }
        }
        CaCmd::Inspect { format, .. } => {
            let s: CaStatus = call(c.get("/v1/ca/status"))?;
            if format == Format::Json {
                return output::json(&s).map(|()| 0);
            }
            println!("CA:       {}", s.fingerprint);
            println!("Trusted:  {}", s.trusted.join(", "));
            match &s.rotation {
                None => println!("Rotation: none under way"),
                Some(r) => {
                    println!(
                        "Rotation: from {}, {} of {} renewed",
                        r.from, r.renewed, r.total
                    );
                    if !r.waiting.is_empty() {
                        println!("Waiting:  {}", r.waiting.join(", "));
                    }
                }
            }
        }
        CaCmd::Rotate { detach, quiet } => {
            let s: CaStatus = call(c.post("/v1/ca/rotate", &()))?;
            // The admin credential is renewed now: the old CA's stops
            // working when the rotation ends.
            if let Some(renewed) = renew_credential(ctx)? {
                c = renewed;
            }
            if !quiet {
                eprintln!("Rotating the cluster CA to {}", s.fingerprint);
            }
            if !detach {
                let mut last = String::new();
                loop {
                    let now: CaStatus = call(c.get("/v1/ca/status"))?;
                    let Some(r) = now.rotation else { break };
                    let line = if r.waiting.is_empty() {
                        format!("{}/{} renewed", r.renewed, r.total)
                    } else {
                        format!(
                            "{}/{} renewed; waiting for {}",
                            r.renewed,
                            r.total,
                            r.waiting.join(", ")
                        )
                    };
                    if line != last && !quiet {
                        eprintln!("{line}");
                    }
                    last = line;
                    std::thread::sleep(Duration::from_millis(500));
                }
                if !quiet {
                    eprintln!(
                        "The rotation is complete: the old CA is trusted no more. The join tokens changed (gantry join-token)."
                    );
                }
            }
            println!("{}", s.fingerprint);
        }
    }
    Ok(0)
}
