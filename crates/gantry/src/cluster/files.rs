//! `gantry secret` and `gantry config`: named values that services' tasks
//! see as files. A secret's value is never shown again once created; a
//! config's is, by `inspect`, as Docker's.

use std::io::{BufRead, Read};

use base64::Engine;
use clap::Subcommand;

use crate::output::{self, Format};
use crate::Ctx;

use super::*;

/// `gantry secret` / `gantry config`.
#[derive(Subcommand)]
pub(crate) enum FileCmd {
    /// Create one from a file, or from standard input (`-`); one that
    /// exists gets the new value (its version goes up) or labels.
    Create {
        /// Labels (KEY=VALUE).
        #[arg(short, long = "label")]
        label: Vec<String>,
        /// `golang`: a config that is a file template, filled for each
        /// task (`{{ .Task.Slot }}`, `{{ env "X" }}`, `{{ secret "x" }}`).
        #[arg(long, value_parser = ["golang"])]
        template_driver: Option<String>,
        /// Its name.
        name: String,
        /// The file that holds the value, or `-` for standard input.
        file: String,
    },
    /// List them (never a value).
    #[command(alias = "list")]
    Ls {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        /// Names only.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show them (JSON): metadata and the services that use them; a
    /// config's value too, never a secret's.
    Inspect {
        /// Their names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove ones no service uses.
    Rm {
        /// Their names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// Which of the two.
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    Secret,
    Config,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Self::Secret => "/v1/secrets",
            Self::Config => "/v1/configs",
        }
    }
}

/// The largest value the cluster takes (as Docker's, 500 KiB): read no
/// more than one byte past it.
const MAX_VALUE: u64 = 500 * 1024;

fn read_value(file: &str) -> anyhow::Result<zeroize::Zeroizing<Vec<u8>>> {
    let mut v = zeroize::Zeroizing::new(Vec::new());
    let n = if file == "-" {
        std::io::stdin().take(MAX_VALUE + 1).read_to_end(&mut v)
    } else {
        std::fs::File::open(file).and_then(|f| f.take(MAX_VALUE + 1).read_to_end(&mut v))
    }
    .map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
    if n as u64 > MAX_VALUE {
        anyhow::bail!("{file}: larger than {MAX_VALUE} bytes");
    }
    Ok(v)
}

pub(crate) fn file(ctx: &Ctx, kind: Kind, cmd: FileCmd) -> anyhow::Result<u8> {
    let c = client(ctx)?;
    let base = kind.path();
    match cmd {
        FileCmd::Create {
            label,
            template_driver,
            name,
            file,
        } => {
            let labels = label
                .iter()
                .map(|l| crate::parse::key_value(l).map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<_>>()?;
            let value = read_value(&file)?;
            let req = gantry_api::FileCreate {
                name,
                labels,
                data: base64::engine::general_purpose::STANDARD.encode(&value[..]),
                template: template_driver.is_some(),
            };
            let v: gantry_api::FileView = call(c.post(base, &req))?;
            println!("{}", v.name);
        }
        FileCmd::Ls { format, quiet } => {
            let v: Vec<gantry_api::FileView> = call(c.get(base))?;
            if quiet {
                for f in v {
                    println!("{}", f.name);
                }
            } else if format == Format::Json {
                output::json(&v)?;
            } else {
                output::table(
                    &["NAME", "VERSION", "SERVICES", "CREATED", "UPDATED"],
                    v.into_iter()
                        .map(|f| {
                            vec![
                                f.name,
                                f.version.to_string(),
                                f.services.len().to_string(),
                                f.created,
                                f.updated,
                            ]
                        })
                        .collect(),
                );
            }
        }
        FileCmd::Inspect { names } => {
            let mut out = Vec::new();
            for n in names {
                let v: gantry_api::FileView = call(c.get(&format!("{base}/{n}")))?;
                out.push(v);
            }
            output::json(&out)?;
        }
        FileCmd::Rm { names } => {
            for n in names {
                let () = call(c.delete(&format!("{base}/{n}")))?;
                println!("{n}");
            }
        }
    }
    Ok(0)
}

/// `gantry unlock`: gives a locked manager (autolock) its unlock key, read
/// from standard input.
pub(crate) fn unlock(ctx: &Ctx) -> anyhow::Result<u8> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        eprint!("Unlock key: ");
    }
    let mut key = zeroize::Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .take(1024)
        .read_line(&mut key)
        .map_err(|e| anyhow::anyhow!("reading the unlock key: {e}"))?;
    #[derive(serde::Serialize)]
    struct Req<'a> {
        key: &'a str,
    }
    let c = client(ctx)?;
    let () = call(c.post("/v1/unlock", &Req { key: key.trim() }))?;
    eprintln!("Unlocked");
    Ok(0)
}

/// `gantry unlock-key --rotate`: a new unlock key for an autolocked
/// manager, printed once.
pub(crate) fn unlock_key(ctx: &Ctx, rotate: bool, quiet: bool) -> anyhow::Result<u8> {
    if !rotate {
        anyhow::bail!(
            "the unlock key is kept nowhere (it was shown once, when autolock was turned on): `gantry unlock-key --rotate` makes a new one"
        );
    }
    #[derive(serde::Deserialize)]
    struct View {
        key: String,
    }
    let c = client(ctx)?;
    let v: View = call(c.post("/v1/unlock-key/rotate", &()))?;
    let key = zeroize::Zeroizing::new(v.key);
    if quiet {
        println!("{}", &*key);
    } else {
        println!(
            "The new unlock key, shown this once (the old one no longer unlocks the manager):\n{}",
            &*key
        );
    }
    Ok(0)
}
