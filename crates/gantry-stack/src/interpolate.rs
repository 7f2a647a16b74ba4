//! Compose variable interpolation, done on the file's text line by line so
//! that errors and YAML positions keep their line numbers:
//! `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`,
//! `${VAR?error}`, `${VAR:+alternative}`, `${VAR+alternative}`, and `$$`
//! for a literal `$`. Comment lines are left alone.

/// An interpolation that failed: 1-based line and column, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterpolationError {
    /// Line of the `$`.
    pub line: usize,
    /// Column of the `$`.
    pub column: usize,
    /// What is wrong.
    pub msg: String,
}

/// Interpolates a whole file.
pub fn interpolate(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, InterpolationError> {
    let mut out = String::with_capacity(text.len());
    for (n, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        out.push_str(&interpolate_line(line, lookup).map_err(|(column, msg)| {
            InterpolationError {
                line: n + 1,
                column,
                msg,
            }
        })?);
    }
    Ok(out)
}

fn interpolate_line(
    line: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, (usize, String)> {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c != '$' {
            out.push(c);
            i += 1;
            continue;
        }
        let col = i + 1;
        match chars.get(i + 1) {
            Some('$') => {
                out.push('$');
                i += 2;
            }
            Some('{') => {
                let close = chars[i + 2..]
                    .iter()
                    .position(|&c| c == '}')
                    .ok_or((col, "unterminated ${ (no closing })".to_owned()))?;
                let inner: String = chars[i + 2..i + 2 + close].iter().collect();
                out.push_str(&braced(&inner, lookup).map_err(|m| (col, m))?);
                i += 3 + close;
            }
            Some(c) if c.is_ascii_alphabetic() || *c == '_' => {
                let end = chars[i + 1..]
                    .iter()
                    .position(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
                    .map_or(chars.len(), |p| i + 1 + p);
                let name: String = chars[i + 1..end].iter().collect();
                out.push_str(&lookup(&name).unwrap_or_default());
                i = end;
            }
            _ => {
                out.push('$');
                i += 1;
            }
        }
    }
    Ok(out)
}

fn valid_name(n: &str) -> bool {
    n.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn braced(inner: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let split = inner.find([':', '-', '?', '+']).unwrap_or(inner.len());
    let (name, rest) = inner.split_at(split);
    if !valid_name(name) {
        return Err(format!("invalid variable name in ${{{inner}}}"));
    }
    let val = lookup(name);
    let (op, word) = if let Some(w) = rest.strip_prefix(":-") {
        (":-", w)
    } else if let Some(w) = rest.strip_prefix(":?") {
        (":?", w)
    } else if let Some(w) = rest.strip_prefix(":+") {
        (":+", w)
    } else if rest.is_empty() {
        ("", "")
    } else {
        rest.split_at(1)
    };
    let set_nonempty = val.as_deref().is_some_and(|v| !v.is_empty());
    Ok(match op {
        "" => val.unwrap_or_default(),
        ":-" => {
            if set_nonempty {
                val.unwrap_or_default()
            } else {
                word.to_owned()
            }
        }
        "-" => val.unwrap_or_else(|| word.to_owned()),
        ":+" => {
            if set_nonempty {
                word.to_owned()
            } else {
                String::new()
            }
        }
        "+" => {
            if val.is_some() {
                word.to_owned()
            } else {
                String::new()
            }
        }
        ":?" if set_nonempty => val.unwrap_or_default(),
        "?" if val.is_some() => val.unwrap_or_default(),
        ":?" | "?" => {
            let why = if word.is_empty() {
                format!("required variable {name} is missing a value")
            } else {
                format!("required variable {name}: {word}")
            };
            return Err(why);
        }
        _ => return Err(format!("invalid interpolation format ${{{inner}}}")),
    })
}

/// Parses a `.env` file: `KEY=VALUE` lines, `#` comments, optional
/// `export `, single or double quotes around the value.
pub fn parse_env_file(text: &str) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let l = l.strip_prefix("export ").unwrap_or(l);
        let (k, v) = l
            .split_once('=')
            .ok_or((n + 1, format!("expected KEY=VALUE, got {raw:?}")))?;
        let k = k.trim();
        if !valid_name(k) {
            return Err((n + 1, format!("invalid variable name {k:?}")));
        }
        let v = v.trim();
        let v = if v.len() >= 2
            && ((v.starts_with('"') && v.ends_with('"'))
                || (v.starts_with('\'') && v.ends_with('\'')))
        {
            &v[1..v.len() - 1]
        } else {
            v.split(" #").next().unwrap_or(v).trim_end()
        };
        out.push((k.to_owned(), v.to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "TAG" => Some("1.2".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn compose_forms() {
        let i = |s: &str| interpolate(s, &env).unwrap();
        assert_eq!(i("image: app:${TAG}\n"), "image: app:1.2\n");
        assert_eq!(i("image: app:$TAG\n"), "image: app:1.2\n");
        assert_eq!(i("r: ${REPLICAS:-3}"), "r: 3");
        assert_eq!(i("r: ${EMPTY:-3} ${EMPTY-3}"), "r: 3 ");
        assert_eq!(i("a: ${TAG:+set} ${NOPE:+set}."), "a: set .");
        assert_eq!(i("cost: $$5"), "cost: $5");
        assert_eq!(
            i("# ${NOPE:?never checked in comments}\n"),
            "# ${NOPE:?never checked in comments}\n"
        );
        assert_eq!(i("x: a$"), "x: a$");
    }

    #[test]
    fn errors_have_positions() {
        let e = interpolate("a: 1\nb: ${DB_PASSWORD:?set it in .env}\n", &env).unwrap_err();
        assert_eq!((e.line, e.column), (2, 4));
        assert_eq!(e.msg, "required variable DB_PASSWORD: set it in .env");
        let e = interpolate("x: ${oops\n", &env).unwrap_err();
        assert!(e.msg.contains("unterminated"));
        assert!(interpolate("x: ${1BAD}\n", &env).is_err());
    }

    #[test]
    fn env_files() {
        let v = parse_env_file("# c\nexport A=1\nB=\"two words\"\nC='x#y'\nD=plain # comment\n")
            .unwrap();
        assert_eq!(
            v,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "x#y".into()),
                ("D".into(), "plain".into())
            ]
        );
        assert_eq!(parse_env_file("ok=1\nnot a pair\n").unwrap_err().0, 2);
    }
}
