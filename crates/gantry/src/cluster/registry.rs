//! `gantry registry`: the cluster's own registry, which every manager
//! serves on its port (the OCI distribution API). `ls` shows what it
//! holds; `user add/ls/rm` manage the users that push and pull with a
//! password (`gantry login MANAGER`, `docker login MANAGER`); the admin
//! credential and nodes need none.

use clap::Subcommand;

use crate::output::{self, Format};
use crate::Ctx;

use super::*;

/// `gantry registry`.
#[derive(Subcommand)]
pub(crate) enum RegistryCmd {
    /// List its repositories and their tags.
    #[command(alias = "list")]
    Ls {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Its password users.
    #[command(subcommand)]
    User(UserCmd),
}

/// `gantry registry user`.
#[derive(Subcommand)]
pub(crate) enum UserCmd {
    /// Make a user (or give one a new password), and print its password
    /// once.
    Add {
        /// May pull only (not push or delete).
        #[arg(long)]
        pull_only: bool,
        /// Print the password only.
        #[arg(short, long)]
        quiet: bool,
        /// Its name.
        name: String,
    },
    /// List the users.
    #[command(alias = "list")]
    Ls {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Remove users.
    Rm {
        /// Their names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

pub(crate) fn registry(ctx: &Ctx, cmd: RegistryCmd) -> anyhow::Result<u8> {
    let c = client(ctx)?;
    match cmd {
        RegistryCmd::Ls { format } => {
            let v: Vec<gantry_api::RepoView> = call(c.get("/v1/registry"))?;
            if format == Format::Json {
                output::json(&v)?;
            } else {
                let at = c.current();
                output::table(
                    &["REPOSITORY", "TAGS", "MANIFESTS", "SIZE", "PUSHED"],
                    v.into_iter()
                        .map(|r| {
                            vec![
                                format!("{at}/{}", r.name),
                                r.tags.keys().cloned().collect::<Vec<_>>().join(","),
                                r.manifests.to_string(),
                                output::size(r.size),
                                r.pushed,
                            ]
                        })
                        .collect(),
                );
            }
        }
        RegistryCmd::User(UserCmd::Add {
            pull_only,
            quiet,
            name,
        }) => {
            let req = gantry_api::RegistryUserCreate {
                name,
                push: !pull_only,
            };
            let v: gantry_api::RegistryUserView = call(c.post("/v1/registry/users", &req))?;
            let password = v.password.unwrap_or_default();
            if quiet {
                println!("{password}");
            } else {
                println!(
                    "User {} ({}), password shown this once:\n{password}\n\nLog in with: gantry login {} -u {} --password-stdin",
                    v.name,
                    if v.push { "push and pull" } else { "pull only" },
                    c.current(),
                    v.name
                );
            }
        }
        RegistryCmd::User(UserCmd::Ls { format }) => {
            let v: Vec<gantry_api::RegistryUserView> = call(c.get("/v1/registry/users"))?;
            if format == Format::Json {
                output::json(&v)?;
            } else {
                output::table(
                    &["NAME", "ACCESS", "CREATED"],
                    v.into_iter()
                        .map(|u| {
                            vec![
                                u.name,
                                if u.push { "push" } else { "pull" }.to_owned(),
                                u.created,
                            ]
                        })
                        .collect(),
                );
            }
        }
        RegistryCmd::User(UserCmd::Rm { names }) => {
            for n in names {
                let _: serde_json::Value = call(c.delete(&format!("/v1/registry/users/{n}")))?;
                println!("{n}");
            }
        }
    }
    Ok(0)
}

/// The cluster's registry as the CLI reaches it (see [`registry_tunnel`]):
/// through the managers named `serves`, the connection made on first use
/// only.
struct LazyTunnel {
    serves: Vec<String>,
    make: Box<dyn Fn() -> Result<gantry_agent::ClusterRegistry, String> + Send + Sync>,
    made: std::sync::OnceLock<Result<gantry_agent::ClusterRegistry, String>>,
}

impl std::fmt::Debug for LazyTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyTunnel")
            .field("serves", &self.serves)
            .finish()
    }
}

impl gantry_image::Tunnel for LazyTunnel {
    fn serves(&self, registry: &str) -> bool {
        self.serves.iter().any(|m| m == registry)
    }

    fn send(
        &self,
        method: reqwest::Method,
        path: String,
        headers: reqwest::header::HeaderMap,
        body: Vec<u8>,
    ) -> futures::future::BoxFuture<'_, Result<reqwest::Response, String>> {
        match self.made.get_or_init(&self.make) {
            Ok(t) => gantry_image::Tunnel::send(t, method, path, headers, body),
            Err(e) => {
                let e = e.clone();
                Box::pin(async move { Err(e) })
            }
        }
    }
}

/// The tunnel to the cluster's registry, when this host holds the admin
/// credential, or, in a build an agent runs, with the node's identity
/// under `data_dir` (pulls only).
pub(crate) fn registry_tunnel(
    config_dir: Option<&std::path::Path>,
    host: Option<&str>,
    data_dir: &std::path::Path,
) -> Option<std::sync::Arc<dyn gantry_image::Tunnel>> {
    let dir = config_dir.map_or_else(gantry_api::AdminConfig::dir, std::path::Path::to_path_buf);
    if !gantry_api::AdminConfig::path_in(&dir).exists() {
        // Only for a build an agent runs (it says so): elsewhere a user's
        // `gantry login` credential is what reaches the registry.
        std::env::var_os(gantry_image::job::NODE_REGISTRY_ENV)?;
        let id = gantry_agent::Identity::load(data_dir)?;
        let mut serves = id.managers.clone();
        serves.push(id.manager.clone());
        let data_dir = data_dir.to_owned();
        return Some(std::sync::Arc::new(LazyTunnel {
            serves,
            make: Box::new(move || gantry_agent::ClusterRegistry::of_node(&data_dir)),
            made: std::sync::OnceLock::new(),
        }));
    }
    let cfg = gantry_api::AdminConfig::load(&dir).ok()?;
    let mut serves = cfg.managers.clone();
    serves.push(cfg.manager.clone());
    serves.extend(host.map(str::to_owned));
    let host = host.map(str::to_owned);
    Some(std::sync::Arc::new(LazyTunnel {
        serves,
        make: Box::new(move || {
            Client::admin(&cfg, host.as_deref())
                .map(gantry_agent::ClusterRegistry::new)
                .map_err(|e| e.to_string())
        }),
        made: std::sync::OnceLock::new(),
    }))
}
