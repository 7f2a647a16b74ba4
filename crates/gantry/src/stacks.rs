//! `gantry stack ...`. For now `config`: the stack file after interpolation
//! and validation, normalised, as `docker compose config` prints it; it
//! fails on whatever a deploy would refuse.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;

#[derive(Subcommand)]
pub(crate) enum StackCmd {
    /// Print the normalised stack without deploying it.
    Config {
        /// The stack file.
        #[arg(short = 'f', long = "file", alias = "compose-file", short_alias = 'c')]
        file: PathBuf,
        /// Variables for interpolation (default: .env beside the file, if any).
        #[arg(long = "env-file")]
        env_file: Option<PathBuf>,
        /// Include the services of this profile (repeatable; also
        /// COMPOSE_PROFILES, comma-separated).
        #[arg(long = "profile")]
        profile: Vec<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "yaml")]
        format: ConfigFormat,
    },
    #[command(flatten)]
    Cluster(crate::cluster::ClusterStackCmd),
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum ConfigFormat {
    Yaml,
    Json,
}

/// Reads and validates a stack file, printing its warnings.
pub(crate) fn load(
    file: &Path,
    env_file: Option<&Path>,
    profiles: &[String],
) -> anyhow::Result<gantry_stack::Stack> {
    Ok(load_with_env(file, env_file, profiles)?.0)
}

/// [`load`], and the variables it was read with (`environment:` secrets
/// and configs take their values from them).
pub(crate) fn load_with_env(
    file: &Path,
    env_file: Option<&Path>,
    profiles: &[String],
) -> anyhow::Result<(gantry_stack::Stack, BTreeMap<String, String>)> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("read stack file {}", file.display()))?;
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    // As docker compose: .env fills in, the shell's environment wins.
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let dotenv = env_file
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.join(".env"));
    if env_file.is_some() || dotenv.exists() {
        let t = std::fs::read_to_string(&dotenv)
            .with_context(|| format!("read env file {}", dotenv.display()))?;
        let process: BTreeMap<String, String> = std::env::vars().collect();
        let pairs = gantry_stack::parse_env_file(&t, &process)
            .map_err(|(line, e)| anyhow::anyhow!("{}:{line}: {e}", dotenv.display()))?;
        env.extend(pairs);
    }
    env.extend(std::env::vars());
    let load = |name: &str| std::fs::read_to_string(dir.join(name)).map_err(|e| e.to_string());
    // Relative binds resolve against the stack file's folder, on this
    // machine, as docker compose does.
    let paths = gantry_stack::ParseOptions {
        dir: std::path::absolute(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            &dir
        })
        .ok(),
        home: std::env::var_os("HOME").map(PathBuf::from),
        profiles: profiles
            .iter()
            .cloned()
            .chain(
                env.get("COMPOSE_PROFILES")
                    .into_iter()
                    .flat_map(|p| p.split(','))
                    .map(|p| p.trim().to_owned())
                    .filter(|p| !p.is_empty()),
            )
            .collect(),
    };
    let parsed = gantry_stack::parse(&file.display().to_string(), &text, &env, &load, &paths)?;
    for w in &parsed.warnings {
        eprintln!("Warning: {w}");
    }
    Ok((parsed.stack, env))
}

/// The secrets and configs a stack deployed as `stack` makes, with their
/// values read (files, variables, content), labelled with the stack.
pub(crate) fn file_values(
    stack: &str,
    s: &gantry_stack::Stack,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<(Vec<gantry_api::FileCreate>, Vec<gantry_api::FileCreate>)> {
    use base64::Engine;
    use gantry_stack::FileSource;
    let read = |kind: &str, decls: &BTreeMap<String, gantry_stack::FileDecl>| {
        let mut out = Vec::new();
        for (key, d) in decls {
            let value: zeroize::Zeroizing<Vec<u8>> = match &d.source {
                FileSource::External => continue,
                FileSource::File(p) => zeroize::Zeroizing::new(
                    std::fs::read(p)
                        .with_context(|| format!("{kind} {key}: read {}", p.display()))?,
                ),
                FileSource::Environment(v) => zeroize::Zeroizing::new(
                    env.get(v)
                        .ok_or_else(|| {
                            anyhow::anyhow!("{kind} {key}: the {v} variable is not set")
                        })?
                        .clone()
                        .into_bytes(),
                ),
                FileSource::Content(c) => zeroize::Zeroizing::new(c.clone().into_bytes()),
            };
            let mut labels = d.labels.clone();
            labels.insert(STACK_NAMESPACE.to_owned(), stack.to_owned());
            out.push(gantry_api::FileCreate {
                name: d.cluster_name(stack, key),
                labels,
                data: base64::engine::general_purpose::STANDARD.encode(&value[..]),
                template: d.template,
            });
        }
        anyhow::Ok(out)
    };
    Ok((read("secret", &s.secrets)?, read("config", &s.configs)?))
}

/// The label of the secrets and configs a stack made, as Docker's (the
/// manager removes them with the stack).
const STACK_NAMESPACE: &str = "com.docker.stack.namespace";

pub(crate) fn run(cmd: StackCmd) -> anyhow::Result<u8> {
    match cmd {
        StackCmd::Config {
            file,
            env_file,
            profile,
            format,
        } => {
            let stack = load(&file, env_file.as_deref(), &profile)?;
            match format {
                ConfigFormat::Yaml => print!("{}", stack.to_yaml()),
                ConfigFormat::Json => crate::output::json(&stack.to_compose())?,
            }
        }
        StackCmd::Cluster(_) => unreachable!("dispatched by main"),
    }
    Ok(0)
}
