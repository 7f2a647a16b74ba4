//! The one builder of a container's configuration from an image: the
//! image's config (entrypoint, cmd, environment, working directory, user,
//! stop signal) with what the caller overrides, by Docker's rules. `gantry
//! run` and the agent's tasks both start here, then add what is theirs
//! (network, ports, mounts, limits, labels).

use gantry_runtime::{ContainerConfig, Process};

use crate::store::{LocalImage, Store};

/// What a user (`gantry run`'s flags) or a service spec sets over an
/// image's config. Empty or `None`: the image's own.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// The container's name (empty: a generated one).
    pub name: String,
    /// Replaces the image's Entrypoint (and drops its Cmd).
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's Cmd.
    pub cmd: Vec<String>,
    /// `KEY=VALUE` over the image's environment, later ones winning.
    pub env: Vec<String>,
    /// Working directory.
    pub workdir: Option<String>,
    /// User.
    pub user: Option<String>,
    /// Host name (default: the short id).
    pub hostname: Option<String>,
    /// Stop signal, by name or number.
    pub stop_signal: Option<String>,
    /// A terminal.
    pub tty: bool,
    /// Standard input kept open.
    pub stdin: bool,
}

/// Why a container cannot be made from the image as asked.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Neither the image nor the caller gives a command.
    #[error("no command specified: the image {0} has no Cmd or Entrypoint")]
    NoCommand(String),
    /// A stop signal that is no signal.
    #[error("stop signal: {0}")]
    Signal(String),
    /// The image's layers are not all in the store.
    #[error(transparent)]
    Store(#[from] crate::StoreError),
}

/// The configuration of a container of `image` (the reference as given),
/// found in `store` as `img`, with `o` applied.
pub fn container_config(
    store: &Store,
    image: &str,
    img: &LocalImage,
    o: &Overrides,
) -> Result<ContainerConfig, ConfigError> {
    let rc = &img.config.config;
    let args = rc.argv(o.entrypoint.as_deref(), &o.cmd);
    if args.is_empty() {
        return Err(ConfigError::NoCommand(image.to_owned()));
    }
    let process = Process {
        args,
        env: rc.env_with(&o.env),
        cwd: o
            .workdir
            .clone()
            .or_else(|| rc.working_dir.clone())
            .unwrap_or_default(),
        user: o
            .user
            .clone()
            .or_else(|| rc.user.clone())
            .unwrap_or_default(),
        tty: o.tty,
        stdin: o.stdin,
    };
    let layers = store.lowerdirs(img)?;
    let mut c = ContainerConfig::new(&o.name, image, &img.record.config, layers, process);
    if let Some(h) = &o.hostname {
        c.hostname = h.clone();
    }
    if let Some(s) = o.stop_signal.as_ref().or(rc.stop_signal.as_ref()) {
        c.stop_signal = gantry_runtime::parse_signal(s).map_err(ConfigError::Signal)? as i32;
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ImageConfig;

    fn image(store: &Store, f: impl FnOnce(&mut crate::types::RunConfig)) -> LocalImage {
        let mut c = ImageConfig::default();
        c.config.entrypoint = Some(vec!["/bin/app".into()]);
        c.config.cmd = Some(vec!["serve".into()]);
        c.config.env = Some(vec!["PATH=/x".into(), "A=1".into(), "B=2".into()]);
        c.config.working_dir = Some("/w".into());
        c.config.user = Some("u".into());
        c.config.stop_signal = Some("SIGINT".into());
        f(&mut c.config);
        store.put_image(c, &[], None).unwrap()
    }

    #[test]
    fn the_image_config_is_the_default_and_each_override_replaces_its_part() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let img = image(&store, |_| {});
        let c = container_config(&store, "app:1", &img, &Overrides::default()).unwrap();
        assert_eq!(c.process.args, ["/bin/app", "serve"]);
        assert_eq!(c.process.env, ["PATH=/x", "A=1", "B=2"]);
        assert_eq!(
            (c.process.cwd.as_str(), c.process.user.as_str()),
            ("/w", "u")
        );
        assert_eq!(c.stop_signal, libc::SIGINT);
        assert_eq!(c.image, "app:1");
        assert!(c.name.starts_with("gantry_"), "{}", c.name);

        let o = Overrides {
            name: "web.1.x".into(),
            cmd: vec!["check".into()],
            env: vec!["A=9".into(), "C=3".into()],
            workdir: Some("/o".into()),
            user: Some("1000".into()),
            hostname: Some("h".into()),
            stop_signal: Some("9".into()),
            ..Overrides::default()
        };
        let c = container_config(&store, "app:1", &img, &o).unwrap();
        assert_eq!(c.process.args, ["/bin/app", "check"]);
        assert_eq!(c.process.env, ["PATH=/x", "B=2", "A=9", "C=3"]);
        assert_eq!(
            (c.process.cwd.as_str(), c.process.user.as_str()),
            ("/o", "1000")
        );
        assert_eq!((c.name.as_str(), c.hostname.as_str()), ("web.1.x", "h"));
        assert_eq!(c.stop_signal, libc::SIGKILL);

        // An entrypoint drops the image's Cmd, as Docker's --entrypoint.
        let o = Overrides {
            entrypoint: Some(vec!["/bin/sh".into()]),
            ..Overrides::default()
        };
        let c = container_config(&store, "app:1", &img, &o).unwrap();
        assert_eq!(c.process.args, ["/bin/sh"]);
    }

    #[test]
    fn no_command_or_a_bad_signal_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let bare = image(&store, |c| {
            c.entrypoint = None;
            c.cmd = None;
        });
        let e = container_config(&store, "bare:1", &bare, &Overrides::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no command specified: the image bare:1 has no Cmd or Entrypoint"
        );
        let img = image(&store, |c| c.stop_signal = Some("SIGNOPE".into()));
        let e = container_config(&store, "app:1", &img, &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("SIGNOPE"), "{e}");
    }
}
