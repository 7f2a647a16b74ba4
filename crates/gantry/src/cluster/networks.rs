//! `gantry network`: the cluster's networks, which stacks share by naming
//! them `external` in their files.

use clap::Subcommand;

use crate::output::{self, Format};
use crate::Ctx;

use super::*;

/// `gantry network`: networks several stacks share.
#[derive(Subcommand)]
pub(crate) enum NetworkCmd {
    /// Create a network that stacks join with `external: true`.
    Create {
        /// Labels (KEY=VALUE).
        #[arg(short, long = "label")]
        label: Vec<String>,
        /// Its name.
        name: String,
    },
    /// List networks.
    #[command(alias = "list")]
    Ls {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show networks (JSON), with the services on them.
    Inspect {
        /// Their names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove networks no service is on.
    Rm {
        /// Their names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

pub(crate) fn network(ctx: &Ctx, cmd: NetworkCmd) -> anyhow::Result<u8> {
    let c = client(ctx)?;
    match cmd {
        NetworkCmd::Create { label, name } => {
            let labels = label
                .iter()
                .map(|l| crate::parse::key_value(l).map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<_>>()?;
            let v: gantry_api::NetworkView =
                call(c.post("/v1/networks", &gantry_api::NetworkCreate { name, labels }))?;
            println!("{}", v.name);
        }
        NetworkCmd::Ls { format } => {
            let v: Vec<gantry_api::NetworkView> = call(c.get("/v1/networks"))?;
            if format == Format::Json {
                output::json(&v)?;
            } else {
                output::table(
                    &["NAME", "SERVICES", "CREATED"],
                    v.into_iter()
                        .map(|n| vec![n.name, n.services.len().to_string(), n.created])
                        .collect(),
                );
            }
        }
        NetworkCmd::Inspect { names } => {
            let mut out = Vec::new();
            for n in names {
                let v: gantry_api::NetworkView = call(c.get(&format!("/v1/networks/{n}")))?;
                out.push(v);
            }
            output::json(&out)?;
        }
        NetworkCmd::Rm { names } => {
            for n in names {
                let () = call(c.delete(&format!("/v1/networks/{n}")))?;
                println!("{n}");
            }
        }
    }
    Ok(0)
}
