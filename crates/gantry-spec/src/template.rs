//! Swarm's service templates: `{{.Service.Name}}`, `{{.Task.Slot}}`,
//! `{{.Node.Hostname}}`... in a service's hostname, environment values
//! and mount sources, filled in for each task where it is started. The
//! subset Swarm's users write: field references, with spaces allowed
//! inside the braces; anything else is refused when the stack is read.

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
}
