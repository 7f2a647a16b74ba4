//! Swarm's service templates: `{{.Service.Name}}`, `{{.Task.Slot}}`,
//! `{{.Node.Hostname}}`... in a service's hostname, environment values
//! and mount sources, filled in for each task where it is started. The
//! subset Swarm's users write: field references, with spaces allowed
//! inside the braces; anything else is refused when the stack is read.
//!
//! A config with `template_driver: golang` is a file template
//! ([`render_file`]): the fields, and `{{ env "NAME" }}` (the task's
//! environment), `{{ secret "NAME" }}` and `{{ config "NAME" }}` (the
//! value of one the service uses, by its name in the cluster), so that a
//! config can embed a password without holding it.

/// What a task's templates are filled with.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The service's id (Gantry's services are known by name).
    pub service_id: String,
    /// `STACK_SERVICE`.
    pub service_name: String,
    /// The node's id.
    pub node_id: String,
    /// The node's host name.
    pub node_hostname: String,
    /// The node's architecture (`x86_64`).
    pub node_arch: String,
    /// The task's id.
    pub task_id: String,
    /// `SERVICE.SLOT.TASKID`, as Swarm names tasks.
    pub task_name: String,
    /// The task's slot (replicated) or empty (global).
    pub task_slot: String,
}

impl Context {
    /// The context of task `task_id` of service `service` in `slot` (0 for
    /// a global service's task) on a node.
    pub fn for_task(
        service: &str,
        task_id: &str,
        slot: u32,
        node_id: &str,
        hostname: &str,
    ) -> Self {
        let slot_name = if slot == 0 {
            node_id.to_owned()
        } else {
            slot.to_string()
        };
        Context {
            service_id: service.to_owned(),
            service_name: service.to_owned(),
            node_id: node_id.to_owned(),
            node_hostname: hostname.to_owned(),
            node_arch: std::env::consts::ARCH.to_owned(),
            task_id: task_id.to_owned(),
            task_name: format!("{service}.{slot_name}.{task_id}"),
            task_slot: if slot == 0 {
                String::new()
            } else {
                slot.to_string()
            },
        }
    }
}

/// The fields a template may name.
pub const FIELDS: [&str; 9] = [
    ".Service.ID",
    ".Service.Name",
    ".Node.ID",
    ".Node.Hostname",
    ".Node.Platform.Architecture",
    ".Node.Platform.OS",
    ".Task.ID",
    ".Task.Name",
    ".Task.Slot",
];

fn value<'a>(field: &str, c: &'a Context) -> Option<&'a str> {
    Some(match field {
        ".Service.ID" => &c.service_id,
        ".Service.Name" => &c.service_name,
        ".Node.ID" => &c.node_id,
        ".Node.Hostname" => &c.node_hostname,
        ".Node.Platform.Architecture" => &c.node_arch,
        ".Node.Platform.OS" => "linux",
        ".Task.ID" => &c.task_id,
        ".Task.Name" => &c.task_name,
        ".Task.Slot" => &c.task_slot,
        _ => return None,
    })
}

/// Whether `s` holds a template.
pub fn has_template(s: &str) -> bool {
    s.contains("{{")
}

/// Fills `s`'s templates from `c`; an action that is not a known field
/// stays as written (the stack's checks refused it already).
pub fn expand(s: &str, c: &Context) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let field = after[..end].trim();
        match value(field, c) {
            Some(v) => out.push_str(v),
            None => out.push_str(&rest[start..start + 4 + end]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Checks that every action of `s` is a known field reference.
pub fn check(s: &str) -> Result<(), String> {
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("template {s:?}: {{{{ without }}}}"))?;
        let field = after[..end].trim();
        if !FIELDS.contains(&field) {
            return Err(format!(
                "template {s:?}: {{{{{field}}}}} is not supported: use {}",
                FIELDS.map(|f| format!("{{{{{f}}}}}")).join(", ")
            ));
        }
        rest = &after[end + 2..];
    }
    Ok(())
}

/// What a file template's functions read: the task's environment and
/// the values of the secrets and configs its service uses.
pub trait FileSource {
    /// The task's environment variable `name`.
    fn env(&self, name: &str) -> Option<String>;
    /// The value of secret `name`, if the service uses it.
    fn secret(&self, name: &str) -> Result<zeroize::Zeroizing<Vec<u8>>, String>;
    /// The value of config `name`, if the service uses it.
    fn config(&self, name: &str) -> Result<Vec<u8>, String>;
}

/// One action of a file template: a field, or a function with its quoted
/// argument.
enum Action<'a> {
    Field(&'a str),
    Env(String),
    Secret(String),
    Config(String),
}

fn action(a: &str) -> Result<Action<'_>, String> {
    if FIELDS.contains(&a) {
        return Ok(Action::Field(a));
    }
    let (func, arg) = a
        .split_once(char::is_whitespace)
        .ok_or_else(|| unsupported(a))?;
    let arg = arg.trim();
    let name = arg
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .filter(|n| !n.is_empty() && !n.contains(['"', '\\']))
        .ok_or_else(|| format!("{{{{{a}}}}}: the argument must be one quoted name"))?
        .to_owned();
    match func {
        "env" => Ok(Action::Env(name)),
        "secret" => Ok(Action::Secret(name)),
        "config" => Ok(Action::Config(name)),
        _ => Err(unsupported(a)),
    }
}

fn unsupported(a: &str) -> String {
    format!(
        "{{{{{a}}}}} is not supported in a file template: use {}, {{{{ env \"NAME\" }}}}, {{{{ secret \"NAME\" }}}} or {{{{ config \"NAME\" }}}}",
        FIELDS.map(|f| format!("{{{{{f}}}}}")).join(", ")
    )
}

/// Checks a file template without filling it: every action known, every
/// `{{` closed. Returns the secrets and configs it reads, so that a
/// service that uses it can be required to use them too.
pub fn check_file(s: &[u8]) -> Result<(Vec<String>, Vec<String>), String> {
    let s = std::str::from_utf8(s).map_err(|_| "a template must be UTF-8 text".to_owned())?;
    let (mut secrets, mut configs) = (Vec::new(), Vec::new());
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| "{{ without }}".to_owned())?;
        match action(after[..end].trim())? {
            Action::Secret(n) => secrets.push(n),
            Action::Config(n) => configs.push(n),
            Action::Field(_) | Action::Env(_) => {}
        }
        rest = &after[end + 2..];
    }
    Ok((secrets, configs))
}

/// Fills a file template for a task. The result may hold secrets: it is
/// zeroed when dropped.
pub fn render_file(
    s: &[u8],
    c: &Context,
    src: &dyn FileSource,
) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    let text = std::str::from_utf8(s).map_err(|_| "a template must be UTF-8 text".to_owned())?;
    let mut out = zeroize::Zeroizing::new(Vec::with_capacity(s.len()));
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.extend_from_slice(&rest.as_bytes()[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| "{{ without }}".to_owned())?;
        match action(after[..end].trim())? {
            Action::Field(f) => out.extend_from_slice(value(f, c).unwrap_or("").as_bytes()),
            Action::Env(n) => out.extend_from_slice(src.env(&n).unwrap_or_default().as_bytes()),
            Action::Secret(n) => out.extend_from_slice(&src.secret(&n)?),
            Action::Config(n) => out.extend_from_slice(&src.config(&n)?),
        }
        rest = &after[end + 2..];
    }
    out.extend_from_slice(rest.as_bytes());
    Ok(out)
}

/// A context with plausible values, for checking what a template gives.
pub fn sample() -> Context {
    Context {
        service_id: "s_web".into(),
        service_name: "s_web".into(),
        node_id: "abcdefghijklmnopqrstuvwxy".into(),
        node_hostname: "node-1".into(),
        node_arch: "x86_64".into(),
        task_id: "abcdefghijklmnopqrstuvwxy".into(),
        task_name: "s_web.1.abcdefghijklmnopqrstuvwxy".into(),
        task_slot: "1".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_fill_in_and_others_are_refused() {
        let c = sample();
        assert_eq!(expand("{{.Service.Name}}-{{ .Task.Slot }}", &c), "s_web-1");
        assert_eq!(expand("on {{.Node.Hostname}}", &c), "on node-1");
        assert_eq!(expand("no template", &c), "no template");
        assert_eq!(expand("{{.Unknown}} and {{", &c), "{{.Unknown}} and {{");
        assert!(check("{{.Task.Name}}").is_ok());
        assert!(check("{{.Service.Labels}}")
            .unwrap_err()
            .contains("not supported"));
        assert!(check("{{ printf \"%s\" .Task.ID }}").is_err());
        assert!(check("{{.Task.ID").is_err());
    }

    struct Src;

    impl FileSource for Src {
        fn env(&self, name: &str) -> Option<String> {
            (name == "PORT").then(|| "8080".into())
        }
        fn secret(&self, name: &str) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
            match name {
                "db_password" => Ok(zeroize::Zeroizing::new(b"s3cr\xffet".to_vec())),
                _ => Err(format!("the service does not use secret {name}")),
            }
        }
        fn config(&self, name: &str) -> Result<Vec<u8>, String> {
            Err(format!("the service does not use config {name}"))
        }
    }

    #[test]
    fn file_templates_fill_fields_env_and_secrets() {
        let t = b"host={{ .Node.Hostname }} port={{env \"PORT\"}} pw={{ secret \"db_password\" }} x={{ env \"NONE\" }}";
        let out = render_file(t, &sample(), &Src).unwrap();
        assert_eq!(&out[..], b"host=node-1 port=8080 pw=s3cr\xffet x=");
        assert_eq!(
            check_file(t).unwrap(),
            (vec!["db_password".to_owned()], vec![])
        );
        assert!(render_file(b"{{ secret \"other\" }}", &sample(), &Src)
            .unwrap_err()
            .contains("does not use"));
        for bad in [
            &b"{{ secret other }}"[..],
            b"{{ printf \"x\" }}",
            b"{{ env \"A\" \"B\" }}",
            b"{{ .Task.Slot",
            b"\xff{{ .Task.Slot }}",
        ] {
            assert!(
                check_file(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            &render_file(b"plain", &sample(), &Src).unwrap()[..],
            b"plain"
        );
    }
}
