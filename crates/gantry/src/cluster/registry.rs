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

/// The cluster's registry as the CLI reaches it: with the admin
/// credential, when this host has one, else with the node's own (a build
/// a manager sent to this builder node, pulling its base image); the
/// connection is made on first use only.
struct AdminTunnel {
    cfg: gantry_api::AdminConfig,
    host: Option<String>,
    made: std::sync::OnceLock<Result<gantry_agent::ClusterRegistry, String>>,
}

/// The tunnel with a node's identity (see [`AdminTunnel`]).
#[derive(Debug)]
struct NodeTunnel {
    managers: Vec<String>,
    data_dir: std::path::PathBuf,
    made: std::sync::OnceLock<Result<gantry_agent::ClusterRegistry, String>>,
}

impl gantry_image::Tunnel for NodeTunnel {
    fn serves(&self, registry: &str) -> bool {
        self.managers.iter().any(|m| m == registry)
    }

    fn send(
        &self,
        method: reqwest::Method,
        path: String,
        headers: reqwest::header::HeaderMap,
        body: Vec<u8>,
    ) -> futures::future::BoxFuture<'_, Result<reqwest::Response, String>> {
        let made = self
            .made
            .get_or_init(|| gantry_agent::ClusterRegistry::of_node(&self.data_dir));
        match made {
            Ok(t) => gantry_image::Tunnel::send(t, method, path, headers, body),
            Err(e) => {
                let e = e.clone();
                Box::pin(async move { Err(e) })
            }
        }
    }
}

impl std::fmt::Debug for AdminTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminTunnel")
            .field("manager", &self.cfg.manager)
            .finish()
    }
}

impl gantry_image::Tunnel for AdminTunnel {
    fn serves(&self, registry: &str) -> bool {
        self.cfg.manager == registry
            || self.cfg.managers.iter().any(|m| m == registry)
            || self.host.as_deref() == Some(registry)
    }

    fn send(
        &self,
        method: reqwest::Method,
        path: String,
        headers: reqwest::header::HeaderMap,
        body: Vec<u8>,
    ) -> futures::future::BoxFuture<'_, Result<reqwest::Response, String>> {
        let made = self.made.get_or_init(|| {
            Client::admin(&self.cfg, self.host.as_deref())
                .map(gantry_agent::ClusterRegistry::new)
                .map_err(|e| e.to_string())
        });
        match made {
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
/// under `data_dir`.
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
        let mut managers = id.managers.clone();
        managers.push(id.manager.clone());
        return Some(std::sync::Arc::new(NodeTunnel {
            managers,
            data_dir: data_dir.to_owned(),
            made: std::sync::OnceLock::new(),
        }));
    }
    let cfg = gantry_api::AdminConfig::load(&dir).ok()?;
    Some(std::sync::Arc::new(AdminTunnel {
        cfg,
        host: host.map(str::to_owned),
        made: std::sync::OnceLock::new(),
    }))
}
