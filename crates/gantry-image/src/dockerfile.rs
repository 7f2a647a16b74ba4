//! Dockerfile parsing and word expansion. Pure: no I/O.
//!
//! [`parse`] turns the text into [`Instruction`]s with their line numbers,
//! honouring the `# escape=` directive, comments and line continuations.
//! Variables are not expanded here: the builder expands each instruction
//! with [`process_word`] / [`process_words`] against the ARG and ENV values in
//! force at that step, as Docker does.

use std::fmt;

/// A Dockerfile that cannot be built, with the line it failed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerfileError {
    /// 1-based line of the instruction.
    pub line: usize,
    /// What is wrong.
    pub msg: String,
}

impl fmt::Display for DockerfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dockerfile line {}: {}", self.line, self.msg)
    }
}

impl std::error::Error for DockerfileError {}

/// Shell form (run through the image's shell) or exec form (JSON array).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `RUN echo hi`.
    Shell(String),
    /// `RUN ["echo", "hi"]`.
    Exec(Vec<String>),
}

/// `HEALTHCHECK` options and command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSpec {
    /// The check.
    pub cmd: Command,
    /// `--interval`, nanoseconds.
    pub interval: Option<u64>,
    /// `--timeout`, nanoseconds.
    pub timeout: Option<u64>,
    /// `--start-period`, nanoseconds.
    pub start_period: Option<u64>,
    /// `--retries`.
    pub retries: Option<u64>,
}

/// One instruction, unexpanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `FROM image [AS name]`.
    From {
        /// The base image or `scratch`.
        image: String,
        /// The stage name.
        alias: Option<String>,
    },
    /// `RUN`.
    Run(Command),
    /// `CMD`.
    Cmd(Command),
    /// `ENTRYPOINT`.
    Entrypoint(Command),
    /// `COPY` (`add` false) or `ADD` (`add` true).
    Copy {
        /// Sources, relative to the context.
        srcs: Vec<String>,
        /// Destination in the image.
        dest: String,
        /// `--chown=user[:group]`.
        chown: Option<String>,
        /// `--chmod=octal`.
        chmod: Option<String>,
        /// ADD's archive extraction and URL rules apply.
        add: bool,
        /// `COPY --from=`: a stage (by name or index) or an image, whose
        /// filesystem the sources are taken from instead of the context.
        from: Option<String>,
    },
    /// `ENV k=v ...` (raw words, expanded at build time).
    Env(Vec<(String, String)>),
    /// `ARG name[=default]`.
    Arg {
        /// The name.
        name: String,
        /// The raw default.
        default: Option<String>,
    },
    /// `WORKDIR`.
    Workdir(String),
    /// `USER`.
    User(String),
    /// `EXPOSE` (raw words).
    Expose(Vec<String>),
    /// `LABEL k=v ...`.
    Label(Vec<(String, String)>),
    /// `VOLUME`.
    Volume(Vec<String>),
    /// `STOPSIGNAL`.
    StopSignal(String),
    /// `SHELL ["sh", "-c"]`.
    Shell(Vec<String>),
    /// `HEALTHCHECK ...`; `None` for `HEALTHCHECK NONE`.
    Healthcheck(Option<HealthSpec>),
    /// `MAINTAINER` (deprecated; becomes a label).
    Maintainer(String),
}

/// One parsed instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// 1-based line where it starts.
    pub line: usize,
    /// The instruction text as written (continuations joined).
    pub text: String,
    /// What it says.
    pub kind: Kind,
}

/// Parses a whole Dockerfile.
pub fn parse(src: &str) -> Result<Vec<Instruction>, DockerfileError> {
    let mut escape = '\\';
    let mut lines = src.lines().enumerate().peekable();
    // Parser directives: only at the very top, before anything else.
    while let Some((_, l)) = lines.peek() {
        let t = l.trim();
        let Some(rest) = t.strip_prefix('#') else {
            break;
        };
        let Some((k, v)) = rest.split_once('=') else {
            break;
        };
        match k.trim().to_ascii_lowercase().as_str() {
            "escape" => {
                escape = match v.trim() {
                    "`" => '`',
                    "\\" => '\\',
                    other => {
                        return Err(DockerfileError {
                            line: 1,
                            msg: format!("invalid escape directive {other:?}: use \\ or `"),
                        })
                    }
                }
            }
            "syntax" | "check" => {}
            _ => break,
        }
        lines.next();
    }
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut start = 0;
    for (i, raw) in lines {
        let trimmed = raw.trim_start();
        if trimmed.starts_with('#') {
            continue; // comments, even inside a continuation
        }
        if cur.is_empty() {
            if trimmed.is_empty() {
                continue;
            }
            start = i + 1;
        }
        let t = raw.trim_end();
        if let Some(body) = t.strip_suffix(escape) {
            cur.push_str(body);
            cur.push(' ');
            continue;
        }
        cur.push_str(t);
        out.push(instruction(start, cur.trim(), escape)?);
        cur.clear();
    }
    if !cur.trim().is_empty() {
        out.push(instruction(start, cur.trim(), escape)?);
    }
    if let Some(first) = out.iter().find(|i| !matches!(i.kind, Kind::Arg { .. })) {
        if !matches!(first.kind, Kind::From { .. }) {
            return Err(DockerfileError {
                line: first.line,
                msg: "the first instruction must be FROM (only ARG may come before it)".into(),
            });
        }
    } else {
        return Err(DockerfileError {
            line: 1,
            msg: "no FROM instruction: the file has nothing to build".into(),
        });
    }
    Ok(out)
}

fn instruction(line: usize, text: &str, escape: char) -> Result<Instruction, DockerfileError> {
    let err = |msg: String| DockerfileError { line, msg };
    let (word, rest) = match text.split_once(char::is_whitespace) {
        Some((w, r)) => (w, r.trim()),
        None => (text, ""),
    };
    let upper = word.to_ascii_uppercase();
    let need_args = |what: &str| -> Result<(), DockerfileError> {
        if rest.is_empty() {
            Err(err(format!("{what} requires at least one argument")))
        } else {
            Ok(())
        }
    };
    let kind = match upper.as_str() {
        "FROM" => {
            need_args("FROM")?;
            let (flags, rest) = flags(rest);
            if let Some(f) = flags.iter().find(|(k, _)| k != "platform") {
                return Err(err(format!("FROM does not take --{}", f.0)));
            }
            let parts: Vec<&str> = rest.split_whitespace().collect();
            match parts.as_slice() {
                [image] => Kind::From {
                    image: (*image).to_owned(),
                    alias: None,
                },
                [image, as_, name] if as_.eq_ignore_ascii_case("as") => Kind::From {
                    image: (*image).to_owned(),
                    alias: Some((*name).to_ascii_lowercase()),
                },
                _ => return Err(err("FROM takes an image and optionally AS name".into())),
            }
        }
        "RUN" => {
            need_args("RUN")?;
            let (flags, rest) = flags(rest);
            if let Some(f) = flags.first() {
                return Err(err(format!("RUN --{} is not supported", f.0)));
            }
            Kind::Run(command(rest).map_err(err)?)
        }
        "CMD" => {
            need_args("CMD")?;
            Kind::Cmd(command(rest).map_err(err)?)
        }
        "ENTRYPOINT" => {
            need_args("ENTRYPOINT")?;
            Kind::Entrypoint(command(rest).map_err(err)?)
        }
        "COPY" | "ADD" => {
            let add = upper == "ADD";
            let (flags, rest) = flags(rest);
            let mut chown = None;
            let mut chmod = None;
            let mut from = None;
            for (k, v) in flags {
                match k.as_str() {
                    "chown" => chown = Some(v),
                    "chmod" => {
                        if u32::from_str_radix(&v, 8).is_err() {
                            return Err(err(format!("invalid --chmod {v:?}: give an octal mode")));
                        }
                        chmod = Some(v)
                    }
                    "from" if !add => {
                        if v.is_empty() {
                            return Err(err("COPY --from needs a stage or an image".into()));
                        }
                        from = Some(v)
                    }
                    // Layers are independent of what lies under them
                    // already (each is a diff of its own files): --link
                    // changes nothing here.
                    "link" if v.is_empty() || v == "true" => {}
                    other => return Err(err(format!("{upper} does not take --{other}"))),
                }
            }
            let mut words = if rest.starts_with('[') {
                json_array(rest).map_err(err)?
            } else {
                split_raw(rest, escape)
            };
            if words.len() < 2 {
                return Err(err(format!(
                    "{upper} requires at least two arguments: source(s) and destination"
                )));
            }
            let dest = words.pop().unwrap_or_default();
            Kind::Copy {
                srcs: words,
                dest,
                chown,
                chmod,
                add,
                from,
            }
        }
        "ENV" => {
            need_args("ENV")?;
            Kind::Env(pairs(rest, escape, "ENV").map_err(err)?)
        }
        "LABEL" => {
            need_args("LABEL")?;
            Kind::Label(pairs(rest, escape, "LABEL").map_err(err)?)
        }
        "ARG" => {
            need_args("ARG")?;
            let words = split_raw(rest, escape);
            if words.len() != 1 {
                return Err(err("ARG takes exactly one name[=default]".into()));
            }
            let (name, default) = match words[0].split_once('=') {
                Some((n, d)) => (n.to_owned(), Some(d.to_owned())),
                None => (words[0].clone(), None),
            };
            if !valid_name(&name) {
                return Err(err(format!("invalid ARG name {name:?}")));
            }
            Kind::Arg { name, default }
        }
        "WORKDIR" => {
            need_args("WORKDIR")?;
            Kind::Workdir(rest.to_owned())
        }
        "USER" => {
            need_args("USER")?;
            Kind::User(rest.to_owned())
        }
        "EXPOSE" => {
            need_args("EXPOSE")?;
            Kind::Expose(split_raw(rest, escape))
        }
        "VOLUME" => {
            need_args("VOLUME")?;
            Kind::Volume(if rest.starts_with('[') {
                json_array(rest).map_err(err)?
            } else {
                split_raw(rest, escape)
            })
        }
        "STOPSIGNAL" => {
            need_args("STOPSIGNAL")?;
            Kind::StopSignal(rest.to_owned())
        }
        "SHELL" => match command(rest).map_err(err)? {
            Command::Exec(v) if !v.is_empty() => Kind::Shell(v),
            _ => return Err(err("SHELL requires the exec (JSON array) form".into())),
        },
        "HEALTHCHECK" => {
            need_args("HEALTHCHECK")?;
            healthcheck(rest).map_err(err)?
        }
        "MAINTAINER" => {
            need_args("MAINTAINER")?;
            Kind::Maintainer(rest.to_owned())
        }
        "ONBUILD" => return Err(err("ONBUILD is not supported".into())),
        _ => return Err(err(format!("unknown instruction: {word}"))),
    };
    Ok(Instruction {
        line,
        text: text.to_owned(),
        kind,
    })
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && !n.starts_with(|c: char| c.is_ascii_digit())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// Splits leading `--flag=value` words off.
fn flags(rest: &str) -> (Vec<(String, String)>, &str) {
    let mut out = Vec::new();
    let mut r = rest;
    while let Some(f) = r.strip_prefix("--") {
        let end = f.find(char::is_whitespace).unwrap_or(f.len());
        let (flag, tail) = f.split_at(end);
        let (k, v) = flag.split_once('=').unwrap_or((flag, ""));
        out.push((k.to_ascii_lowercase(), v.to_owned()));
        r = tail.trim_start();
    }
    (out, r)
}

fn command(rest: &str) -> Result<Command, String> {
    if rest.starts_with('[') {
        if let Ok(v) = json_array(rest) {
            return Ok(Command::Exec(v));
        }
    }
    // Docker falls back to the shell form for text that is not a JSON array.
    Ok(Command::Shell(rest.to_owned()))
}

fn json_array(s: &str) -> Result<Vec<String>, String> {
    serde_json::from_str::<Vec<String>>(s).map_err(|e| format!("invalid JSON array {s:?}: {e}"))
}

fn healthcheck(rest: &str) -> Result<Kind, String> {
    let (flags, rest) = flags(rest);
    if rest.eq_ignore_ascii_case("NONE") {
        return Ok(Kind::Healthcheck(None));
    }
    let (word, cmd) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    if !word.eq_ignore_ascii_case("CMD") || cmd.trim().is_empty() {
        return Err("HEALTHCHECK takes NONE or [OPTIONS] CMD command".into());
    }
    let mut spec = HealthSpec {
        cmd: command(cmd.trim())?,
        interval: None,
        timeout: None,
        start_period: None,
        retries: None,
    };
    for (k, v) in flags {
        match k.as_str() {
            "interval" => spec.interval = Some(duration_ns(&v)?),
            "timeout" => spec.timeout = Some(duration_ns(&v)?),
            "start-period" => spec.start_period = Some(duration_ns(&v)?),
            "start-interval" => {}
            "retries" => {
                spec.retries = Some(v.parse().map_err(|_| format!("invalid --retries {v:?}"))?)
            }
            other => return Err(format!("HEALTHCHECK does not take --{other}")),
        }
    }
    Ok(Kind::Healthcheck(Some(spec)))
}

/// Go-style durations in nanoseconds (see `gantry_units::duration_ns`).
pub fn duration_ns(s: &str) -> Result<u64, String> {
    gantry_units::duration_ns(s)
}

/// Splits on unquoted whitespace, keeping quotes and escapes for later
/// processing by [`process_word`].
fn split_raw(s: &str, escape: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (_, c) if c == escape => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            (None, '"' | '\'') => {
                quote = Some(c);
                cur.push(c);
            }
            (Some(q), c) if c == q => {
                quote = None;
                cur.push(c);
            }
            (None, c) if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn pairs(rest: &str, escape: char, what: &str) -> Result<Vec<(String, String)>, String> {
    let words = split_raw(rest, escape);
    if !words[0].contains('=') {
        // Legacy form: `ENV key value with spaces`.
        let (k, v) = rest
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("{what} {rest} needs a value"))?;
        return Ok(vec![(k.to_owned(), v.trim().to_owned())]);
    }
    words
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(format!("{what} expects key=value pairs, got {w:?}")),
        })
        .collect()
}

/// Expands variables and removes quotes in one word, as Docker's shell
/// lexer does for ENV, LABEL, COPY, WORKDIR, USER, EXPOSE...:
/// `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR:+alternative}`; nothing is
/// expanded inside single quotes; `\$` is a literal dollar.
pub fn process_word(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    Ok(process(s, lookup, false)?.concat())
}

/// As [`process_word`], then splits on unquoted whitespace.
pub fn process_words(
    s: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<String>, String> {
    process(s, lookup, true)
}

fn process(
    s: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    split: bool,
) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut started = false;
    let mut quote: Option<char> = None;
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match (quote, c) {
            (Some('\''), '\'') => quote = None,
            (Some('\''), c) => cur.push(c),
            (None, '\'') | (None, '"') => {
                quote = Some(c);
                started = true;
            }
            (Some('"'), '"') => quote = None,
            (_, '\\') => {
                if i < chars.len() {
                    let n = chars[i];
                    // In double quotes only a few characters are escapable.
                    if quote == Some('"') && !matches!(n, '"' | '\\' | '$') {
                        cur.push('\\');
                    }
                    cur.push(n);
                    i += 1;
                }
            }
            (_, '$') => {
                let (val, used) = variable(&chars[i..], lookup)?;
                i += used;
                cur.push_str(&val);
            }
            (None, c) if split && c.is_whitespace() => {
                if !cur.is_empty() || started {
                    words.push(std::mem::take(&mut cur));
                    started = false;
                }
            }
            (_, c) => cur.push(c),
        }
    }
    if quote.is_some() {
        return Err(format!("unterminated quote in {s:?}"));
    }
    if !cur.is_empty() || started || !split {
        words.push(cur);
    }
    Ok(words)
}

/// Reads a variable reference after `$`; returns its value and the number of
/// characters used.
fn variable(
    rest: &[char],
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, usize), String> {
    if rest.first() == Some(&'{') {
        let end = rest
            .iter()
            .position(|&c| c == '}')
            .ok_or("unterminated ${ in word")?;
        let inner: String = rest[1..end].iter().collect();
        let (name, op, word) = match inner.find([':', '-', '+']) {
            Some(p) => {
                let (n, tail) = inner.split_at(p);
                let op_len = if tail.starts_with(':') { 2 } else { 1 };
                if tail.len() < op_len {
                    return Err(format!("bad substitution ${{{inner}}}"));
                }
                (
                    n.to_owned(),
                    tail[..op_len].to_owned(),
                    tail[op_len..].to_owned(),
                )
            }
            None => (inner.clone(), String::new(), String::new()),
        };
        if !valid_name(&name) {
            return Err(format!("bad substitution ${{{inner}}}"));
        }
        let val = lookup(&name);
        let out = match op.as_str() {
            "" => val.unwrap_or_default(),
            ":-" => val
                .filter(|v| !v.is_empty())
                .unwrap_or(process_word(&word, lookup)?),
            "-" => val.unwrap_or(process_word(&word, lookup)?),
            ":+" => {
                if val.is_some_and(|v| !v.is_empty()) {
                    process_word(&word, lookup)?
                } else {
                    String::new()
                }
            }
            "+" => {
                if val.is_some() {
                    process_word(&word, lookup)?
                } else {
                    String::new()
                }
            }
            _ => return Err(format!("unsupported modifier in ${{{inner}}}")),
        };
        return Ok((out, end + 1));
    }
    let n = rest
        .iter()
        .position(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
        .unwrap_or(rest.len());
    if n == 0 {
        return Ok(("$".into(), 0));
    }
    let name: String = rest[..n].iter().collect();
    Ok((lookup(&name).unwrap_or_default(), n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(src: &str) -> Vec<Kind> {
        parse(src).unwrap().into_iter().map(|i| i.kind).collect()
    }

    #[test]
    fn full_file_parses() {
        let src = r#"# a comment
ARG BASE=scratch
FROM ${BASE} AS build
COPY --chown=1000:1000 busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN echo hello \
    && echo world
ENV A=1 B="two words" C=${A}
ENV LEGACY value with spaces
WORKDIR /app
USER nobody
EXPOSE 8080/tcp 53/udp
LABEL org.example.title="demo app" version=1
HEALTHCHECK --interval=5s --retries=3 CMD wget -q -O- http://localhost/ || exit 1
STOPSIGNAL SIGINT
ENTRYPOINT ["/bin/sh", "-c"]
CMD httpd -f
"#;
        let ins = parse(src).unwrap();
        assert_eq!(ins[0].line, 2);
        assert_eq!(ins[4].line, 6, "continuation starts at its first line");
        assert_eq!(
            ins[1].kind,
            Kind::From {
                image: "${BASE}".into(),
                alias: Some("build".into())
            }
        );
        assert_eq!(
            ins[4].kind,
            Kind::Run(Command::Shell("echo hello      && echo world".into()))
        );
        assert_eq!(
            ins[5].kind,
            Kind::Env(vec![
                ("A".into(), "1".into()),
                ("B".into(), "\"two words\"".into()),
                ("C".into(), "${A}".into())
            ])
        );
        assert_eq!(
            ins[6].kind,
            Kind::Env(vec![("LEGACY".into(), "value with spaces".into())])
        );
        match &ins[11].kind {
            Kind::Healthcheck(Some(h)) => {
                assert_eq!(h.interval, Some(5_000_000_000));
                assert_eq!(h.retries, Some(3));
                assert_eq!(
                    h.cmd,
                    Command::Shell("wget -q -O- http://localhost/ || exit 1".into())
                );
            }
            k => panic!("{k:?}"),
        }
        assert_eq!(
            ins[13].kind,
            Kind::Entrypoint(Command::Exec(vec!["/bin/sh".into(), "-c".into()]))
        );
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("FROM scratch\n\nFROBNICATE x\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert_eq!(
            e.to_string(),
            "Dockerfile line 3: unknown instruction: FROBNICATE"
        );
        let e = parse("RUN true\n").unwrap_err();
        assert!(e.msg.contains("first instruction must be FROM"));
        let e = parse("FROM scratch\nCOPY onlyone\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.msg.contains("at least two"));
        assert!(parse("").unwrap_err().msg.contains("no FROM"));
        assert!(parse("FROM scratch\nENV =x\n").is_err());
        assert!(parse("FROM scratch\nARG 9bad\n").is_err());
        assert!(parse("FROM scratch\nHEALTHCHECK --interval=soon CMD true\n").is_err());
        assert!(parse("FROM scratch\nCOPY --from= a b\n")
            .unwrap_err()
            .msg
            .contains("needs a stage"));
        assert!(parse("FROM scratch\nADD --from=x a b\n").is_err());
        let ok = parse("FROM scratch\nCOPY --from=build --link a b\n").unwrap();
        assert!(matches!(&ok[1].kind, Kind::Copy { from: Some(f), .. } if f == "build"));
        assert!(parse("FROM scratch\nSHELL sh -c\n").is_err());
    }

    #[test]
    fn escape_directive_and_comments_in_continuations() {
        let k = kinds("# escape=`\nFROM scratch\nRUN echo a `\n# inner comment\n  b\n");
        assert_eq!(k[1], Kind::Run(Command::Shell("echo a    b".into())));
    }

    #[test]
    fn non_json_brackets_fall_back_to_shell() {
        assert_eq!(
            kinds("FROM x\nCMD [not json\n")[1],
            Kind::Cmd(Command::Shell("[not json".into()))
        );
    }

    #[test]
    fn words_expand_like_docker() {
        let env = |k: &str| match k {
            "A" => Some("1".to_owned()),
            "EMPTY" => Some(String::new()),
            "SP" => Some("x y".to_owned()),
            _ => None,
        };
        let w = |s: &str| process_word(s, &env).unwrap();
        assert_eq!(w("$A"), "1");
        assert_eq!(w("${A}b"), "1b");
        assert_eq!(w("${NOPE:-dflt}"), "dflt");
        assert_eq!(w("${EMPTY:-dflt}"), "dflt");
        assert_eq!(w("${EMPTY-dflt}"), "");
        assert_eq!(w("${A:+alt}"), "alt");
        assert_eq!(w("${NOPE:+alt}"), "");
        assert_eq!(w("'$A'"), "$A");
        assert_eq!(w("\"$A and ${A}\""), "1 and 1");
        assert_eq!(w("\\$A"), "$A");
        assert_eq!(w("cost$"), "cost$");
        assert_eq!(
            process_words("a \"b c\" $SP", &env).unwrap(),
            vec!["a", "b c", "x y"]
        );
        assert!(process_word("\"open", &env).is_err());
        assert!(process_word("${A", &env).is_err());
        assert!(process_word("${}", &env).is_err());
    }
}
