//! Placement constraints as compose files write them:
//! `node.labels.zone == east`, `node.hostname != web-1`,
//! `node.role == manager`, `node.id == abc`, `node.platform.arch == x86_64`,
//! `node.platform.os == linux`. As in Swarm, the field's name is read
//! without regard to case (`node.Labels.zone`, `node.Role`) and values are
//! compared without regard to case; a label's key is exact. Architectures
//! match under Go's names as well as the kernel's (`amd64` is `x86_64`,
//! `arm64` is `aarch64`).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Node;

/// A constraint that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid placement constraint {input:?}: {why}")]
pub struct BadConstraint {
    /// What was given.
    pub input: String,
    /// Why it is refused.
    pub why: &'static str,
}

/// What a constraint looks at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Field {
    /// `node.labels.KEY`.
    Label(String),
    /// `node.hostname`.
    Hostname,
    /// `node.role`.
    Role,
    /// `node.id`.
    Id,
    /// `node.platform.arch`.
    Arch,
    /// `node.platform.os` (every Gantry node is `linux`).
    Os,
}

/// One `field == value` or `field != value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Constraint {
    /// The node attribute.
    pub field: Field,
    /// `==` when true, `!=` when false.
    pub equal: bool,
    /// The value compared with.
    pub value: String,
}

impl Constraint {
    /// Parses one constraint expression.
    pub fn parse(s: &str) -> Result<Self, BadConstraint> {
        let bad = |why| BadConstraint {
            input: s.to_owned(),
            why,
        };
        let (lhs, rhs, equal) = if let Some((l, r)) = s.split_once("==") {
            (l, r, true)
        } else if let Some((l, r)) = s.split_once("!=") {
            (l, r, false)
        } else {
            return Err(bad("expected == or !="));
        };
        let (lhs, value) = (lhs.trim(), rhs.trim());
        if value.is_empty() {
            return Err(bad("the value is empty"));
        }
        if value.contains("==") || value.contains("!=") {
            return Err(bad("more than one operator"));
        }
        let lower = lhs.to_ascii_lowercase();
        let field = match lower.as_str() {
            "node.hostname" => Field::Hostname,
            "node.role" => {
                if !value.eq_ignore_ascii_case("manager") && !value.eq_ignore_ascii_case("worker") {
                    return Err(bad("node.role is manager or worker"));
                }
                Field::Role
            }
            "node.id" => Field::Id,
            "node.platform.arch" => Field::Arch,
            "node.platform.os" => Field::Os,
            l if l.starts_with("engine.labels.") => {
                return Err(bad("Gantry's nodes have one set of labels: write node.labels.KEY"))
            }
            l => match l.strip_prefix("node.labels.") {
                // The key as written: labels are case-sensitive.
                Some(k) if !k.is_empty() => Field::Label(lhs["node.labels.".len()..].to_owned()),
                _ => return Err(bad("expected node.labels.KEY, node.hostname, node.role, node.id, node.platform.arch or node.platform.os")),
            },
        };
        Ok(Self {
            field,
            equal,
            value: value.to_owned(),
        })
    }

    /// Whether a node satisfies it. A missing label never equals a value.
    pub fn matches(&self, n: &Node) -> bool {
        let actual: Option<&str> = match &self.field {
            Field::Label(k) => n.labels.get(k).map(String::as_str),
            Field::Hostname => Some(&n.hostname),
            Field::Role => Some(if n.manager { "manager" } else { "worker" }),
            Field::Id => Some(&n.id),
            Field::Arch => Some(&n.arch),
            Field::Os => Some("linux"),
        };
        let same = actual.is_some_and(|a| match self.field {
            Field::Arch => arch_name(a) == arch_name(&self.value),
            _ => a.eq_ignore_ascii_case(&self.value),
        });
        same == self.equal
    }
}

/// An architecture under the kernel's name, whichever name it was given.
fn arch_name(a: &str) -> String {
    match a.to_ascii_lowercase().as_str() {
        "amd64" | "x86-64" => "x86_64".into(),
        "arm64" => "aarch64".into(),
        other => other.to_owned(),
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field = match &self.field {
            Field::Label(k) => format!("node.labels.{k}"),
            Field::Hostname => "node.hostname".into(),
            Field::Role => "node.role".into(),
            Field::Id => "node.id".into(),
            Field::Arch => "node.platform.arch".into(),
            Field::Os => "node.platform.os".into(),
        };
        write!(
            f,
            "{field}{}{}",
            if self.equal { "==" } else { "!=" },
            self.value
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_swarm_constraints() {
        let c = Constraint::parse("node.labels.zone == east").unwrap();
        assert_eq!(c.field, Field::Label("zone".into()));
        assert!(c.equal);
        assert_eq!(c.to_string(), "node.labels.zone==east");
        let c = Constraint::parse("node.role!=manager").unwrap();
        assert_eq!((c.field, c.equal), (Field::Role, false));
        for bad in [
            "node.labels.zone",
            "node.labels. == x",
            "node.cpu == 2",
            "node.role == boss",
            "node.id ==",
            "a == b == c",
        ] {
            assert!(Constraint::parse(bad).is_err(), "{bad}");
        }
    }
}
