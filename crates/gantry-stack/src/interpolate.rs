//! Variables, as the Compose specification defines them.
//!
//! Interpolation runs on parsed values, never on the file's text: the YAML
//! parser (serde-saphyr's Compose-compatible property interpolation)
//! substitutes `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
//! `${VAR:?error}`, `${VAR?error}`, `${VAR:+alternative}`,
//! `${VAR+alternative}`, nested forms and `$$` inside each scalar after
//! it was read, so a value holding `#`, `: ` or a leading `*` stays what
//! it is. Keys are never interpolated. This module holds what surrounds
//! that: the parser's options, the warnings for unset variables, and
//! `.env` files, whose values use the same engine.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use serde_saphyr::PropertySyntax;

/// The largest stack file read: far beyond any real one, small enough to
/// refuse a hostile one quickly.
pub const MAX_FILE: usize = 4 << 20;

/// The parser's options: Compose interpolation over `vars` (none: values
/// are read as written).
pub(crate) fn yaml_options(vars: Option<&BTreeMap<String, String>>) -> serde_saphyr::Options {
    let mut o = serde_saphyr::Options::default();
    if let Some(vars) = vars {
        let map: HashMap<String, String> =
            vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        o.property_map = Some(Rc::new(map));
        o.property_syntax = PropertySyntax::DockerCompose;
    }
    // The default budget bounds nodes, depth, aliases and their
    // replays, and interpolation work: a YAML bomb stops at it.
    o
}

/// An interpolation or YAML error in the user's words, without the
/// library's own position prefix.
pub(crate) fn yaml_message(e: &serde_saphyr::Error) -> String {
    use serde_saphyr::Error as E;
    match e.without_snippet() {
        E::UnresolvedProperty { name, .. } => format!("variable {name} is not set"),
        E::InvalidPropertyName { name, .. } => {
            format!("invalid interpolation {name}: a variable name is letters, digits and '_', not starting with a digit (write $$ for a literal $)")
        }
        E::PropertyRequiredButUnset { name, message, .. }
        | E::PropertyRequiredButEmpty { name, message, .. } => {
            if message.is_empty() {
                format!("required variable {name} is missing a value")
            } else {
                format!("required variable {name} is missing a value: {message}")
            }
        }
        e => {
            let first = e.to_string().lines().next().unwrap_or_default().to_owned();
            let first = in_users_words(&first);
            // The position is the error's own; not twice.
            let first = match first.rfind(" at line ") {
                Some(i) if first[i..].contains(", column ") => first[..i].to_owned(),
                _ => first,
            };
            // Drop the library's own "error: line L column C: " prefix.
            first
                .split_once(": ")
                .filter(|(p, _)| p.starts_with("error"))
                .map(|(_, rest)| {
                    rest.split_once(": ")
                        .map_or(
                            rest,
                            |(pos, m)| if pos.starts_with("line ") { m } else { rest },
                        )
                        .to_owned()
                })
                .unwrap_or(first)
        }
    }
}

/// The parser's messages about the loose shapes compose allows, said as
/// a user would: what the key takes.
fn in_users_words(msg: &str) -> String {
    const SHAPES: [(&str, &str); 9] = [
        ("StringOrList", "a string or a list of strings"),
        ("ListOrDict", "a list of KEY=VALUE strings or a mapping of KEY: VALUE"),
        ("Port", "\"[IP:][PUBLISHED:]TARGET[/PROTOCOL]\" or a mapping of target, published, protocol, mode, host_ip"),
        ("Volume", "\"[SOURCE:]TARGET[:MODE]\" or a mapping of type, source, target, read_only"),
        ("DependsOn", "a list of service names or a mapping of service: {condition}"),
        ("Scalar", "a string, a number or true/false"),
        ("External", "true or false"),
        ("Ulimit", "a number or a mapping of soft and hard"),
        ("Networks", "a list of network names or a mapping of network: {aliases, ...}"),
    ];
    match msg.split_once("did not match any variant of untagged enum ") {
        Some((before, rest)) => {
            let ty = rest
                .split(|c: char| !c.is_alphanumeric())
                .next()
                .unwrap_or_default();
            match SHAPES.iter().find(|(t, _)| *t == ty) {
                Some((_, what)) => {
                    // (serde's "data did not match": the data is the value.)
                    let before = before.trim_start_matches("data ");
                    format!("{before}expected {what}")
                }
                None => msg.to_owned(),
            }
        }
        None => msg.to_owned(),
    }
}

/// Interpolates one value as the stack file's scalars are.
pub fn expand(value: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    if !value.contains('$') {
        return Ok(value.to_owned());
    }
    let doc = serde_saphyr::to_string(&value).map_err(|e| e.to_string())?;
    serde_saphyr::from_str_with_options::<String>(&doc, yaml_options(Some(vars)))
        .map_err(|e| yaml_message(&e))
}

/// The variables a value substitutes without a default that are not in
/// `vars`: Compose warns of each and substitutes an empty string.
pub(crate) fn unset_references(
    value: &str,
    vars: &BTreeMap<String, String>,
    out: &mut Vec<String>,
) {
    let b = value.as_bytes();
    let name_at = |i: usize| {
        let start = i;
        let mut j = i;
        while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
            j += 1;
        }
        let ok = j > start && !b[start].is_ascii_digit();
        ok.then(|| (&value[start..j], j))
    };
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' {
            i += 1;
            continue;
        }
        match b.get(i + 1) {
            Some(b'$') => i += 2,
            Some(b'{') => match name_at(i + 2) {
                Some((name, end)) => {
                    if b.get(end) == Some(&b'}') && !vars.contains_key(name) {
                        out.push(name.to_owned());
                    }
                    // Operator text after the name may nest more references.
                    i = end;
                }
                None => i += 2,
            },
            Some(_) => match name_at(i + 1) {
                Some((name, end)) => {
                    if !vars.contains_key(name) {
                        out.push(name.to_owned());
                    }
                    i = end;
                }
                None => i += 1,
            },
            None => i += 1,
        }
    }
}

/// Parses an env file (`.env`, `--env-file` or a service's `env_file`)
/// as Compose does: `KEY=VALUE` lines, `#` comments, an optional
/// `export `; a value in single quotes is taken as written, one in double
/// quotes has its escapes (`\n`, `\t`, `\"`, `\\`) read; both may span
/// lines. Unquoted and double-quoted values are interpolated, from `vars`
/// first and then the file's earlier values; an unquoted value ends at
/// ` #`. A `KEY` alone takes the value from `vars` when it has one.
pub fn parse_env_file(
    text: &str,
    vars: &BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut n = 0;
    while n < lines.len() {
        let line_no = n + 1;
        let raw = lines[n];
        n += 1;
        let l = raw.trim_start();
        if l.trim().is_empty() || l.starts_with('#') {
            continue;
        }
        let l = l.strip_prefix("export ").unwrap_or(l).trim_start();
        let Some((k, v)) = l.split_once('=') else {
            let k = l.trim();
            if valid_name(k) {
                if let Some(v) = vars.get(k) {
                    seen.insert(k.to_owned(), v.clone());
                    out.push((k.to_owned(), v.clone()));
                }
                continue;
            }
            return Err((line_no, format!("expected KEY=VALUE, got {raw:?}")));
        };
        let k = k.trim();
        if !valid_name(k) {
            return Err((
                line_no,
                format!("invalid variable name {k:?}: letters, digits and '_', not starting with a digit"),
            ));
        }
        let v = v.trim_start();
        let (value, interpolate) = match v.chars().next() {
            Some(q @ ('\'' | '"')) => {
                // The value runs to the matching quote, across lines.
                let mut body = v[1..].to_owned();
                let close = loop {
                    if let Some(c) = closing(&body, q) {
                        break c;
                    }
                    let Some(next) = lines.get(n) else {
                        return Err((line_no, format!("unterminated {q}-quoted value of {k}")));
                    };
                    body.push('\n');
                    body.push_str(next);
                    n += 1;
                };
                let rest = body[close + 1..].trim();
                if !rest.is_empty() && !rest.starts_with('#') {
                    return Err((
                        line_no,
                        format!("unexpected {rest:?} after the quoted value of {k}"),
                    ));
                }
                let inner = &body[..close];
                if q == '\'' {
                    (inner.to_owned(), false)
                } else {
                    (unescape(inner), true)
                }
            }
            _ => {
                let v = match v.find(" #") {
                    Some(i) => &v[..i],
                    None => v,
                };
                (v.trim_end().to_owned(), true)
            }
        };
        let value = if interpolate {
            let mut scope = seen.clone();
            for (k, v) in vars {
                scope.insert(k.clone(), v.clone());
            }
            expand(&value, &scope).map_err(|e| (line_no, format!("{k}: {e}")))?
        } else {
            value
        };
        seen.insert(k.to_owned(), value.clone());
        out.push((k.to_owned(), value));
    }
    Ok(out)
}

/// Where the closing quote `q` of a value is (a `\"` does not close).
fn closing(body: &str, q: char) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        if q == '"' && c == '\\' && !escaped {
            escaped = true;
            continue;
        }
        if c == q && !escaped {
            return Some(i);
        }
        escaped = false;
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some(c @ ('"' | '\\')) => out.push(c),
            Some(c) => {
                out.push('\\');
                out.push(c);
            }
            None => out.push('\\'),
        }
    }
    out
}

fn valid_name(n: &str) -> bool {
    n.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<String, String> {
        [("TAG", "1.2"), ("EMPTY", ""), ("PW", "s3cret #42")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn every_compose_form() {
        let v = vars();
        let i = |s: &str| expand(s, &v).unwrap();
        assert_eq!(i("app:${TAG}"), "app:1.2");
        assert_eq!(i("app:$TAG"), "app:1.2");
        assert_eq!(i("${NOPE:-3}"), "3");
        assert_eq!(i("${EMPTY:-3}|${EMPTY-3}"), "3|");
        assert_eq!(i("${TAG:+set}|${NOPE:+set}|${EMPTY+set}"), "set||set");
        assert_eq!(i("$$5"), "$5");
        assert_eq!(i("${NOPE:-${ALSO:-x}}"), "x");
        assert_eq!(i("${NOPE}"), "");
        assert_eq!(i("a $PW"), "a s3cret #42");
        assert!(expand("${NOPE:?set it}", &v)
            .unwrap_err()
            .contains("set it"));
        assert!(expand("${EMPTY:?}", &v).is_err());
        assert_eq!(i("${EMPTY?}"), "");
    }

    #[test]
    fn unset_references_are_found_plain_or_nested() {
        let mut out = Vec::new();
        unset_references("$A ${B} ${C:-${D}} $$E ${TAG} ${F:-x}", &vars(), &mut out);
        assert_eq!(out, vec!["A", "B", "D"]);
    }

    #[test]
    fn env_files_quote_and_interpolate_as_compose() {
        let text = "# c\nexport A=1\nB=\"two words\"\nC='x#y $A'\nD=plain # comment\n\
                    E=${A}-${TAG}\nF=\"line1\nline2\"\nG=\"tab\\there\"\nH=${NOPE:-$A}\n";
        let v = parse_env_file(text, &vars()).unwrap();
        let got: BTreeMap<_, _> = v.into_iter().collect();
        assert_eq!(got["A"], "1");
        assert_eq!(got["B"], "two words");
        assert_eq!(got["C"], "x#y $A");
        assert_eq!(got["D"], "plain");
        assert_eq!(got["E"], "1-1.2");
        assert_eq!(got["F"], "line1\nline2");
        assert_eq!(got["G"], "tab\there");
        assert_eq!(got["H"], "1");
        assert_eq!(
            parse_env_file("ok=1\nnot a pair\n", &vars()).unwrap_err().0,
            2
        );
        assert_eq!(parse_env_file("A=\"open\n", &vars()).unwrap_err().0, 1);
        assert_eq!(parse_env_file("1A=x\n", &vars()).unwrap_err().0, 1);
    }
}
