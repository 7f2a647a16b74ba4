//! Secrets and configs in services (pure): which version of each a
//! service's spec pins, and the files a task gets.
//!
//! A spec names a secret as a stack file does (version 0); when it is
//! stored, it pins the newest version. A new value of a secret or config
//! pins the new version in the spec of every service that uses it, so the
//! service rolls (health-gated, with its `update_config`), and a rollback
//! goes back to the spec that pins the old one, whose value the state
//! keeps while a spec pins it ([`gantry_state::State`]).

use std::collections::BTreeMap;

use base64::Engine;
use gantry_api::{FileData, TaskFile};
use gantry_pki::seal::DataKey;
use gantry_spec::template::{self, FileSource};
use gantry_spec::{FileRef, Service};
use gantry_state::{Command, FileKind, SecretRecord, State, TaskRecord};
use zeroize::Zeroizing;

/// The newest versions a batch puts, by kind and name.
fn batch_versions(cmds: &[Command]) -> BTreeMap<(FileKind, String), u64> {
    let mut v = BTreeMap::new();
    for c in cmds {
        match c {
            Command::PutSecret(r) => {
                v.insert((FileKind::Secret, r.meta.name.clone()), r.meta.version);
            }
            Command::PutConfig(r) => {
                v.insert((FileKind::Config, r.meta.name.clone()), r.meta.version);
            }
            _ => {}
        }
    }
    v
}

fn newest(
    state: &State,
    batch: &BTreeMap<(FileKind, String), u64>,
    kind: FileKind,
    name: &str,
) -> Option<u64> {
    batch.get(&(kind, name.to_owned())).copied().or(match kind {
        FileKind::Secret => state.secrets.get(name).map(|r| r.meta.version),
        FileKind::Config => state.configs.get(name).map(|r| r.meta.version),
    })
}

fn pin_refs(
    state: &State,
    batch: &BTreeMap<(FileKind, String), u64>,
    kind: FileKind,
    refs: &mut [FileRef],
) {
    for f in refs.iter_mut().filter(|f| f.version == 0) {
        // One that does not exist stays 0: the state refuses the spec.
        f.version = newest(state, batch, kind, &f.source).unwrap_or(0);
    }
}

/// `spec` with the references it leaves unpinned pinned to the newest
/// versions, the batch's `cmds` applied (what storing it would store).
pub fn pin_spec(state: &State, cmds: &[Command], spec: &mut Service) {
    let batch = batch_versions(cmds);
    pin_refs(state, &batch, FileKind::Secret, &mut spec.secrets);
    pin_refs(state, &batch, FileKind::Config, &mut spec.configs);
}

/// Run on every write: pins the references of the services the batch
/// puts, and for each secret or config the batch gives a new value, puts
/// the services that use it (and that the batch does not put) with the
/// new version pinned, which rolls them. Costs the services once per
/// changed value; nothing when no value changes.
pub fn pin_versions(state: &State, cmds: &mut Vec<Command>) {
    let batch = batch_versions(cmds);
    let changed: Vec<(FileKind, String, u64)> = batch
        .iter()
        .filter(|((kind, name), v)| {
            let now = match kind {
                FileKind::Secret => state.secrets.get(name).map(|r| r.meta.version),
                FileKind::Config => state.configs.get(name).map(|r| r.meta.version),
            };
            now.is_some_and(|n| n != **v)
        })
        .map(|((k, n), v)| (*k, n.clone(), *v))
        .collect();
    let mut put = std::collections::BTreeSet::new();
    for c in cmds.iter_mut() {
        if let Command::PutService { name, spec, .. } = c {
            pin_refs(state, &batch, FileKind::Secret, &mut spec.secrets);
            pin_refs(state, &batch, FileKind::Config, &mut spec.configs);
            put.insert(name.clone());
        }
    }
    if changed.is_empty() {
        return;
    }
    for rec in state.services.values().filter(|r| !put.contains(&r.name)) {
        let mut spec = rec.spec.clone();
        for (kind, name, version) in &changed {
            let refs = match kind {
                FileKind::Secret => &mut spec.secrets,
                FileKind::Config => &mut spec.configs,
            };
            for f in refs.iter_mut().filter(|f| &f.source == name) {
                f.version = *version;
            }
        }
        if spec != rec.spec {
            cmds.push(Command::PutService {
                name: rec.name.clone(),
                stack: rec.stack.clone(),
                spec: Box::new(spec),
                vip: None,
            });
        }
    }
}

/// What a task's templates read: its environment, and the values of the
/// secrets and configs its spec pins.
struct Source<'a> {
    state: &'a State,
    spec: &'a Service,
    key: Option<&'a DataKey>,
}

impl Source<'_> {
    fn secret_of(&self, f: &FileRef) -> Result<Zeroizing<Vec<u8>>, String> {
        let key = self.key.ok_or_else(|| {
            format!(
                "secret {} cannot be opened: the manager is locked (gantry unlock)",
                f.source
            )
        })?;
        let sealed = self
            .state
            .secrets
            .get(&f.source)
            .and_then(|r| r.at(f.version))
            .ok_or_else(|| format!("secret {} v{} is gone", f.source, f.version))?;
        key.open(sealed, &SecretRecord::aad(&f.source, f.version))
            .map_err(|_| format!("secret {} does not open with the data key", f.source))
    }

    fn config_of(&self, f: &FileRef) -> Result<(Vec<u8>, bool), String> {
        let v = self
            .state
            .configs
            .get(&f.source)
            .and_then(|r| r.at(f.version))
            .ok_or_else(|| format!("config {} v{} is gone", f.source, f.version))?;
        let data = base64::engine::general_purpose::STANDARD
            .decode(&v.data)
            .map_err(|_| format!("config {} is not base64", f.source))?;
        Ok((data, v.template))
    }
}

/// The reference a template names: by its target, as Swarm's templates
/// name them (so that a stack's own key works), else by its name in the
/// cluster.
fn by_name<'a>(refs: &'a [FileRef], name: &str) -> Option<&'a FileRef> {
    refs.iter()
        .find(|f| f.target == name)
        .or_else(|| refs.iter().find(|f| f.source == name))
}

impl FileSource for Source<'_> {
    fn env(&self, name: &str) -> Option<String> {
        self.spec.environment.get(name).cloned()
    }

    fn secret(&self, name: &str) -> Result<Zeroizing<Vec<u8>>, String> {
        let f = by_name(&self.spec.secrets, name).ok_or_else(|| {
            format!("the template reads secret {name}, which the service does not use")
        })?;
        self.secret_of(f)
    }

    fn config(&self, name: &str) -> Result<Vec<u8>, String> {
        let f = by_name(&self.spec.configs, name).ok_or_else(|| {
            format!("the template reads config {name}, which the service does not use")
        })?;
        match self.config_of(f)? {
            (_, true) => Err(format!(
                "config {name} is a template: a template cannot read one"
            )),
            (data, false) => Ok(data),
        }
    }
}

/// The files of task `t`, of spec `spec`, on a node of that host name:
/// its secrets (opened with `key`, none when the manager is locked) then
/// its configs (templates filled for the task). An error says why the
/// task cannot have them.
pub fn task_files(
    state: &State,
    t: &TaskRecord,
    spec: &Service,
    hostname: &str,
    key: Option<&DataKey>,
) -> Result<Vec<TaskFile>, String> {
    let src = Source { state, spec, key };
    let file = |f: &FileRef, target: String, data: Zeroizing<Vec<u8>>| TaskFile {
        target,
        uid: f.uid,
        gid: f.gid,
        mode: f.mode,
        data: FileData(data),
    };
    let mut out = Vec::with_capacity(spec.secrets.len() + spec.configs.len());
    for f in &spec.secrets {
        out.push(file(f, f.secret_path(), src.secret_of(f)?));
    }
    for f in &spec.configs {
        let (data, is_template) = src.config_of(f)?;
        let data = if is_template {
            let node = t.node.as_deref().unwrap_or_default();
            let c = template::Context::for_task(&t.service, &t.id, t.slot, node, hostname);
            template::render_file(&data, &c, &src)
                .map_err(|e| format!("config {}: {e}", f.source))?
        } else {
            Zeroizing::new(data)
        };
        out.push(file(f, f.config_path(), data));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_state::{ConfigRecord, ConfigValue, FileMeta, TaskState};

    fn meta(name: &str, version: u64) -> FileMeta {
        FileMeta {
            name: name.into(),
            labels: BTreeMap::new(),
            version,
            created_ms: 1,
            updated_ms: 1,
        }
    }

    fn secret(key: &DataKey, name: &str, version: u64, value: &[u8]) -> Command {
        Command::PutSecret(SecretRecord {
            meta: meta(name, version),
            value: key.seal(value, &SecretRecord::aad(name, version)),
            older: BTreeMap::new(),
        })
    }

    fn config(name: &str, version: u64, value: &str, template: bool) -> Command {
        Command::PutConfig(ConfigRecord {
            meta: meta(name, version),
            value: ConfigValue {
                data: base64::engine::general_purpose::STANDARD.encode(value),
                template,
            },
            older: BTreeMap::new(),
        })
    }

    fn uses(source: &str) -> FileRef {
        FileRef {
            source: source.into(),
            target: String::new(),
            uid: 999,
            gid: 998,
            mode: 0o400,
            version: 0,
        }
    }

    fn service(name: &str, secrets: &[&str]) -> Command {
        let mut spec = Service::new("db:1");
        spec.secrets = secrets.iter().map(|s| uses(s)).collect();
        Command::PutService {
            name: name.into(),
            stack: "s".into(),
            spec: Box::new(spec),
            vip: None,
        }
    }

    /// Applies a batch as the server does: pinned first.
    fn write(s: &mut State, mut cmds: Vec<Command>) {
        pin_versions(s, &mut cmds);
        for c in &cmds {
            s.apply(c).unwrap();
        }
    }

    fn task(service: &str, version: u64) -> TaskRecord {
        TaskRecord {
            id: "t1".into(),
            service: service.into(),
            version,
            slot: 2,
            node: Some("n1".into()),
            desired: TaskState::Running,
            state: TaskState::Running,
            message: String::new(),
            exit_code: None,
            attempt: 0,
            updated_ms: 0,
            addr: None,
        }
    }

    #[test]
    fn a_new_value_rolls_its_users_and_rollback_finds_the_old_one() {
        let key = DataKey::generate();
        let mut s = State::default();
        write(
            &mut s,
            vec![
                secret(&key, "pw", 1, b"one"),
                service("s_db", &["pw"]),
                service("s_other", &[]),
            ],
        );
        assert_eq!(s.services["s_db"].spec.secrets[0].version, 1);
        assert_eq!(s.services["s_db"].version, 1);
        // The same spec again, as a deploy sends it (unpinned), changes
        // nothing.
        let mut again = match service("s_db", &["pw"]) {
            Command::PutService { spec, .. } => *spec,
            _ => unreachable!(),
        };
        pin_spec(&s, &[], &mut again);
        assert_eq!(again, s.services["s_db"].spec);
        write(&mut s, vec![service("s_db", &["pw"])]);
        assert_eq!(s.services["s_db"].version, 1);
        // A new value: the user rolls to it, the other service does not.
        write(&mut s, vec![secret(&key, "pw", 2, b"two")]);
        let db = &s.services["s_db"];
        assert_eq!((db.version, db.spec.secrets[0].version), (2, 2));
        assert_eq!(s.services["s_other"].version, 1);
        // The old value is kept for the previous spec...
        assert!(s.secrets["pw"].older.contains_key(&1));
        let files = task_files(
            &s,
            &task("s_db", 1),
            &db.previous.as_ref().unwrap().1,
            "h",
            Some(&key),
        )
        .unwrap();
        assert_eq!(&files[0].data.0[..], b"one");
        assert_eq!(
            (
                files[0].target.as_str(),
                files[0].uid,
                files[0].gid,
                files[0].mode
            ),
            ("/run/secrets/pw", 999, 998, 0o400)
        );
        let files = task_files(&s, &task("s_db", 2), &db.spec, "h", Some(&key)).unwrap();
        assert_eq!(&files[0].data.0[..], b"two");
        // ... and goes with a later value, once no spec pins it (when a
        // value is put, its users still pin the one before).
        write(&mut s, vec![secret(&key, "pw", 3, b"three")]);
        write(&mut s, vec![secret(&key, "pw", 4, b"four")]);
        assert_eq!(s.secrets["pw"].older.keys().collect::<Vec<_>>(), [&2, &3]);
        // Locked: the task cannot have it, and is told why.
        let e = task_files(&s, &task("s_db", 4), &s.services["s_db"].spec, "h", None).unwrap_err();
        assert!(e.contains("locked"), "{e}");
        // A value bound to another version does not open.
        let mut forged = s.clone();
        let r = forged.secrets.get_mut("pw").unwrap();
        r.value = r.older[&3].clone();
        assert!(task_files(
            &forged,
            &task("s_db", 4),
            &s.services["s_db"].spec,
            "h",
            Some(&key)
        )
        .is_err());
    }

    #[test]
    fn config_templates_fill_for_the_task_and_read_only_its_secrets() {
        let key = DataKey::generate();
        let mut s = State::default();
        let mut spec = Service::new("app:1");
        spec.environment.insert("PORT".into(), "8080".into());
        spec.secrets = vec![uses("pw")];
        spec.configs = vec![FileRef {
            target: "/etc/app.conf".into(),
            ..uses("app")
        }];
        write(
            &mut s,
            vec![
                secret(&key, "pw", 1, b"hunter2"),
                config(
                    "app",
                    1,
                    "slot={{ .Task.Slot }} host={{.Node.Hostname}} port={{ env \"PORT\" }} pw={{ secret \"pw\" }}",
                    true,
                ),
                config("other", 1, "x", false),
                Command::PutService {
                    name: "s_app".into(),
                    stack: "s".into(),
                    spec: Box::new(spec.clone()),
                    vip: None,
                },
            ],
        );
        let spec = &s.services["s_app"].spec;
        let files = task_files(&s, &task("s_app", 1), spec, "node-7", Some(&key)).unwrap();
        assert_eq!(files[1].target, "/etc/app.conf");
        assert_eq!(
            std::str::from_utf8(&files[1].data.0).unwrap(),
            "slot=2 host=node-7 port=8080 pw=hunter2"
        );
        // A template that reads a secret the service does not use.
        write(
            &mut s,
            vec![config("app", 2, "{{ config \"other\" }}", true)],
        );
        let spec = &s.services["s_app"].spec;
        assert_eq!(spec.configs[0].version, 2);
        let e = task_files(&s, &task("s_app", 2), spec, "n", Some(&key)).unwrap_err();
        assert!(
            e.contains("config other, which the service does not use"),
            "{e}"
        );
    }
}
