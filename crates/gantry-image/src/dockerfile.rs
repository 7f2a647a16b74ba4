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

/// What a RUN mounts for its command alone: nothing of it is in the
/// layer (`RUN --mount=...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunMount {
    /// `type=cache`: a directory kept between builds.
    Cache {
        /// Where.
        target: String,
        /// Which cache (default: the target).
        id: Option<String>,
        /// Read-only.
        read_only: bool,
        /// The directory's mode when it is made (default 0755).
        mode: Option<u32>,
        /// Its owner when it is made.
        uid: u32,
        /// Its group when it is made.
        gid: u32,
        /// `sharing=`: how builds that use it at once share it.
        sharing: CacheSharing,
    },
    /// `type=secret`: a file given to the build (`--secret id=...`),
    /// never written to a layer.
    Secret {
        /// The secret's id.
        id: String,
        /// Where (default `/run/secrets/<id>`).
        target: String,
        /// Fail when the build was given no such secret.
        required: bool,
        /// The file's mode (default 0400).
        mode: u32,
        /// Its owner.
        uid: u32,
        /// Its group.
        gid: u32,
    },
    /// `type=bind`: a path of the context, or of a stage or image
    /// (`from=`), read-only.
    Bind {
        /// Where.
        target: String,
        /// What (default the whole context or filesystem).
        source: String,
        /// A stage or image instead of the context.
        from: Option<String>,
        /// `rw`: the step may write there; what it writes is thrown away
        /// when it ends (as BuildKit's).
        rw: bool,
    },
    /// `type=tmpfs`.
    Tmpfs {
        /// Where.
        target: String,
        /// Its size, bytes.
        size: Option<u64>,
    },
}

/// How RUN steps that use one cache mount at the same time share it
/// (BuildKit's `sharing=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CacheSharing {
    /// All of them at once (the default).
    #[default]
    Shared,
    /// One at a time: the others wait.
    Locked,
    /// One uses it; the others get an empty directory of their own.
    Private,
}

impl RunMount {
    /// Where it is mounted.
    pub fn target(&self) -> &str {
        match self {
            Self::Cache { target, .. }
            | Self::Secret { target, .. }
            | Self::Bind { target, .. }
            | Self::Tmpfs { target, .. } => target,
        }
    }
}

/// RUN's flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// `--mount`s.
    pub mounts: Vec<RunMount>,
    /// `--network=none`: no network at all (the default is the host's).
    pub no_network: bool,
}

/// Parses one `--mount=` value (BuildKit's CSV of `key=value`).
fn run_mount(v: &str) -> Result<RunMount, String> {
    let mut kv: Vec<(String, String)> = Vec::new();
    for f in v.split(',').filter(|f| !f.is_empty()) {
        let (k, val) = f.split_once('=').unwrap_or((f, "true"));
        kv.push((k.trim().to_ascii_lowercase(), val.trim().to_owned()));
    }
    let get = |names: &[&str]| {
        kv.iter()
            .rev()
            .find(|(k, _)| names.contains(&k.as_str()))
            .map(|(_, v)| v.clone())
    };
    let flag = |names: &[&str]| -> Result<bool, String> {
        match get(names).as_deref() {
            None => Ok(false),
            Some("true" | "1" | "") => Ok(true),
            Some("false" | "0") => Ok(false),
            Some(other) => Err(format!("--mount {}={other}: give true or false", names[0])),
        }
    };
    let num = |name: &str, radix: u32| -> Result<Option<u32>, String> {
        get(&[name])
            .map(|v| {
                u32::from_str_radix(&v, radix)
                    .map_err(|_| format!("--mount {name}={v} is not a number"))
            })
            .transpose()
    };
    let target = get(&["target", "dst", "destination"]);
    let known: &[&str] = &[
        "type",
        "target",
        "dst",
        "destination",
        "source",
        "src",
        "from",
        "id",
        "sharing",
        "mode",
        "uid",
        "gid",
        "ro",
        "readonly",
        "rw",
        "readwrite",
        "required",
        "size",
    ];
    if let Some((k, _)) = kv.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        return Err(format!("--mount does not take {k}"));
    }
    let need_target = || {
        target
            .clone()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| "--mount needs target=PATH".to_owned())
    };
    match get(&["type"]).as_deref().unwrap_or("bind") {
        "cache" => Ok(RunMount::Cache {
            target: need_target()?,
            id: get(&["id"]).filter(|i| !i.is_empty()),
            read_only: flag(&["ro", "readonly"])?,
            mode: num("mode", 8)?,
            uid: num("uid", 10)?.unwrap_or(0),
            gid: num("gid", 10)?.unwrap_or(0),
            sharing: match get(&["sharing"]).as_deref() {
                None | Some("shared") => CacheSharing::Shared,
                Some("locked") => CacheSharing::Locked,
                Some("private") => CacheSharing::Private,
                Some(other) => {
                    return Err(format!(
                        "--mount sharing={other}: give shared, private or locked"
                    ))
                }
            },
        }),
        "secret" => {
            let id = get(&["id"])
                .filter(|i| !i.is_empty())
                .or_else(|| {
                    target
                        .as_deref()
                        .and_then(|t| t.rsplit('/').next())
                        .map(str::to_owned)
                })
                .ok_or("--mount type=secret needs id=ID or target=PATH")?;
            Ok(RunMount::Secret {
                target: target.unwrap_or_else(|| format!("/run/secrets/{id}")),
                id,
                required: flag(&["required"])?,
                mode: num("mode", 8)?.unwrap_or(0o400),
                uid: num("uid", 10)?.unwrap_or(0),
                gid: num("gid", 10)?.unwrap_or(0),
            })
        }
        "bind" => Ok(RunMount::Bind {
            target: need_target()?,
            source: get(&["source", "src"]).unwrap_or_default(),
            from: get(&["from"]).filter(|f| !f.is_empty()),
            rw: flag(&["rw", "readwrite"])?,
        }),
        "tmpfs" => Ok(RunMount::Tmpfs {
            target: need_target()?,
            size: get(&["size"])
                .map(|v| {
                    v.parse()
                        .map_err(|_| format!("--mount size={v} is not a number of bytes"))
                })
                .transpose()?,
        }),
        "ssh" => Err("--mount type=ssh is not supported".into()),
        other => Err(format!(
            "unknown --mount type {other:?} (cache, secret, bind, tmpfs)"
        )),
    }
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
    /// `RUN`, with its `--mount`s and `--network`.
    Run(Command, RunOptions),
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
        /// Here-documents among the sources: the source as written
        /// (`<<EOF`), the file's name (`EOF`) and its content.
        inline: Vec<(String, String, String)>,
        /// `ADD --checksum=sha256:<hex>` of a URL's content.
        checksum: Option<String>,
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
    /// `ONBUILD INSTRUCTION`: a trigger kept in the image, run by a build
    /// that starts FROM it.
    Onbuild(String),
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
    while let Some((i, raw)) = lines.next() {
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
        // Here-documents (RUN, COPY, ADD): the lines after the
        // instruction up to each marker's word belong to it.
        let docs = heredoc_markers(cur.trim());
        let mut text = cur.trim().to_owned();
        let mut contents = Vec::new();
        for (word, strip_tabs) in docs {
            let mut body = String::new();
            let mut closed = false;
            for (_, l) in lines.by_ref() {
                let l = if strip_tabs {
                    l.trim_start_matches('\t')
                } else {
                    l
                };
                if l == word {
                    closed = true;
                    break;
                }
                body.push_str(l);
                body.push('\n');
            }
            if !closed {
                return Err(DockerfileError {
                    line: start,
                    msg: format!("here-document <<{word} is not closed by a line {word}"),
                });
            }
            text.push('\n');
            text.push_str(&body);
            text.push_str(&word);
            contents.push((word, body));
        }
        let mut ins = instruction(start, cur.trim(), escape)?;
        if !contents.is_empty() {
            ins.kind = with_heredocs(ins.kind, &contents)
                .map_err(|msg| DockerfileError { line: start, msg })?;
            ins.text = text;
        }
        out.push(ins);
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

/// One trigger of an `ONBUILD` as the image keeps it, parsed as an
/// instruction of the build that runs it.
pub fn trigger(text: &str) -> Result<Instruction, DockerfileError> {
    instruction(0, text, '\\')
}

/// The here-document markers of a RUN, COPY or ADD line, in order: each
/// word and whether its body's leading tabs go (`<<-`).
fn heredoc_markers(text: &str) -> Vec<(String, bool)> {
    let (word, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    if !["RUN", "COPY", "ADD"].contains(&word.to_ascii_uppercase().as_str()) {
        return Vec::new();
    }
    let mut out = Vec::new();
    let b = rest.as_bytes();
    let mut i = 0;
    let mut quote: Option<u8> = None;
    while i + 2 < b.len() + 1 && i < b.len() {
        match (quote, b[i]) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, c @ (b'"' | b'\'')) => quote = Some(c),
            (None, b'<') if b.get(i + 1) == Some(&b'<') && b.get(i + 2) != Some(&b'<') => {
                let mut j = i + 2;
                let strip = b.get(j) == Some(&b'-');
                if strip {
                    j += 1;
                }
                let q = match b.get(j) {
                    Some(&c @ (b'"' | b'\'')) => {
                        j += 1;
                        Some(c)
                    }
                    _ => None,
                };
                let w0 = j;
                while j < b.len()
                    && (b[j].is_ascii_alphanumeric() || matches!(b[j], b'_' | b'.' | b'-'))
                {
                    j += 1;
                }
                if j > w0 {
                    out.push((rest[w0..j].to_owned(), strip));
                    if q.is_some() && b.get(j) == q.as_ref() {
                        j += 1;
                    }
                    i = j;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Puts the here-documents into what the instruction says: a RUN that is
/// only a here-document runs its body as a shell script; a RUN with a
/// command keeps them for the shell (which reads here-documents itself);
/// COPY and ADD make a file of each.
fn with_heredocs(mut kind: Kind, docs: &[(String, String)]) -> Result<Kind, String> {
    if let Kind::Copy { srcs, inline, .. } = &mut kind {
        for src in srcs.iter() {
            let Some(word) = src.strip_prefix("<<") else {
                continue;
            };
            let word = word
                .trim_start_matches('-')
                .trim_matches(|c| c == '"' || c == '\'');
            let body = docs
                .iter()
                .find(|(w, _)| w == word)
                .map(|(_, b)| b.clone())
                .ok_or_else(|| format!("no here-document {word}"))?;
            inline.push((src.clone(), word.to_owned(), body));
        }
        return Ok(kind);
    }
    match kind {
        Kind::Run(Command::Shell(cmd), opts) => {
            let bare = cmd.trim().trim_start_matches("<<").trim_start_matches('-');
            let bare = bare.trim_matches(|c| c == '"' || c == '\'');
            if docs.len() == 1 && bare == docs[0].0 {
                return Ok(Kind::Run(Command::Shell(docs[0].1.clone()), opts));
            }
            let mut full = cmd;
            for (word, body) in docs {
                full.push('\n');
                full.push_str(body);
                full.push_str(word);
            }
            Ok(Kind::Run(Command::Shell(full), opts))
        }
        Kind::Run(Command::Exec(_), _) => Err("a here-document needs the shell form of RUN".into()),
        other => Ok(other),
    }
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
            let mut opts = RunOptions::default();
            for (k, v) in flags {
                match k.as_str() {
                    "mount" => opts.mounts.push(run_mount(&v).map_err(err)?),
                    "network" => match v.as_str() {
                        "none" => opts.no_network = true,
                        "default" | "host" => {}
                        other => {
                            return Err(err(format!(
                                "RUN --network={other}: give default, host or none"
                            )))
                        }
                    },
                    "security" => {
                        return Err(err("RUN --security is not supported".into()));
                    }
                    other => return Err(err(format!("RUN does not take --{other}"))),
                }
            }
            Kind::Run(command(rest).map_err(err)?, opts)
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
            let mut checksum = None;
            for (k, v) in flags {
                match k.as_str() {
                    "chown" => chown = Some(v),
                    "checksum" if add => {
                        let ok = v.strip_prefix("sha256:").is_some_and(|h| {
                            h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())
                        });
                        if !ok {
                            return Err(err(format!(
                                "invalid --checksum {v:?}: give sha256:<64 hex digits>"
                            )));
                        }
                        checksum = Some(v.to_ascii_lowercase())
                    }
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
                inline: Vec::new(),
                checksum,
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
        "ONBUILD" => {
            need_args("ONBUILD")?;
            let inner = rest
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            if ["ONBUILD", "FROM", "MAINTAINER"].contains(&inner.as_str()) {
                return Err(err(format!("ONBUILD cannot trigger {inner}")));
            }
            // Checked now, run later.
            instruction(line, rest, escape)?;
            Kind::Onbuild(rest.to_owned())
        }
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
            Kind::Run(
                Command::Shell("echo hello      && echo world".into()),
                RunOptions::default()
            )
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
        assert_eq!(
            k[1],
            Kind::Run(Command::Shell("echo a    b".into()), RunOptions::default())
        );
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

    #[test]
    fn here_documents() {
        let d = parse(
            "FROM scratch\nRUN <<EOF\necho one\necho two\nEOF\n\
             RUN cat <<-A > /x && cat <<'B' >> /x\n\tindented $HOME\n\tA\nliteral $HOME\nB\n\
             COPY --chmod=755 <<run.sh <<conf /app/\n#!/bin/sh\nexec true\nrun.sh\nk=v\nconf\n\
             ENV A=b\n",
        )
        .unwrap();
        assert_eq!(d.len(), 5);
        assert_eq!(
            d[1].kind,
            Kind::Run(
                Command::Shell("echo one\necho two\n".into()),
                RunOptions::default()
            )
        );
        assert_eq!(d[1].line, 2);
        // With a command, the shell reads the here-documents itself.
        assert_eq!(
            d[2].kind,
            Kind::Run(
                Command::Shell(
                    "cat <<-A > /x && cat <<'B' >> /x\nindented $HOME\nA\nliteral $HOME\nB".into()
                ),
                RunOptions::default()
            )
        );
        match &d[3].kind {
            Kind::Copy {
                srcs, inline, dest, ..
            } => {
                assert_eq!(srcs, &["<<run.sh", "<<conf"]);
                assert_eq!(dest, "/app/");
                assert_eq!(inline[0].1, "run.sh");
                assert_eq!(inline.len(), 2);
            }
            k => panic!("{k:?}"),
        }
        // The text (the cache key's part) holds the bodies.
        assert!(d[1].text.contains("echo two"), "{}", d[1].text);
        assert_eq!(d[4].kind, Kind::Env(vec![("A".into(), "b".into())]));
        let e = parse("FROM scratch\nRUN <<EOF\necho\n").unwrap_err();
        assert!(e.msg.contains("not closed"), "{e}");
        // << inside quotes is not a here-document.
        let d = parse("FROM scratch\nRUN echo '<<EOF'\nENV A=b\n").unwrap();
        assert_eq!(d.len(), 3);
    }

    #[test]
    fn bind_mounts_may_be_writable() {
        for (v, rw) in [
            ("type=bind,target=/x", false),
            ("type=bind,target=/x,rw", true),
            ("type=bind,target=/x,readwrite=true", true),
            ("target=/x,rw=false", false),
        ] {
            match run_mount(v).unwrap() {
                RunMount::Bind { rw: got, .. } => assert_eq!(got, rw, "{v}"),
                other => panic!("{v}: {other:?}"),
            }
        }
    }

    #[test]
    fn run_mounts() {
        let d = parse(
            "FROM scratch\n\
             RUN --mount=type=cache,target=/root/.cache,id=pip,mode=0700,uid=1000 \\\n\
             --mount=type=secret,id=token,required \\\n\
             --mount=type=secret,target=/etc/api.key \\\n\
             --mount=target=/src,source=app,from=build \\\n\
             --mount=type=tmpfs,dst=/tmp,size=1048576 --network=none make\n",
        )
        .unwrap();
        let Kind::Run(Command::Shell(cmd), opts) = &d[1].kind else {
            panic!("{:?}", d[1].kind)
        };
        assert_eq!(cmd, "make");
        assert!(opts.no_network);
        assert_eq!(
            opts.mounts,
            vec![
                RunMount::Cache {
                    target: "/root/.cache".into(),
                    id: Some("pip".into()),
                    read_only: false,
                    mode: Some(0o700),
                    uid: 1000,
                    gid: 0,
                    sharing: CacheSharing::Shared
                },
                RunMount::Secret {
                    id: "token".into(),
                    target: "/run/secrets/token".into(),
                    required: true,
                    mode: 0o400,
                    uid: 0,
                    gid: 0
                },
                RunMount::Secret {
                    id: "api.key".into(),
                    target: "/etc/api.key".into(),
                    required: false,
                    mode: 0o400,
                    uid: 0,
                    gid: 0
                },
                RunMount::Bind {
                    target: "/src".into(),
                    source: "app".into(),
                    from: Some("build".into()),
                    rw: false,
                },
                RunMount::Tmpfs {
                    target: "/tmp".into(),
                    size: Some(1 << 20)
                },
            ]
        );
        for (bad, want) in [
            ("--mount=type=cache x", "needs target"),
            ("--mount=type=ssh x", "not supported"),
            ("--mount=type=nfs,target=/x x", "unknown --mount type"),
            ("--mount=type=cache,target=/x,uid=me x", "not a number"),
            (
                "--mount=type=cache,target=/x,colour=red x",
                "does not take colour",
            ),
            ("--network=bridge x", "give default, host or none"),
            (
                "--mount=type=cache,target=/x,sharing=maybe x",
                "give shared, private or locked",
            ),
            ("--privileged x", "does not take --privileged"),
        ] {
            let e = parse(&format!("FROM scratch\nRUN {bad}\n")).unwrap_err();
            assert!(e.msg.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn onbuild_triggers() {
        let d = parse("FROM scratch\nONBUILD COPY . /app\nONBUILD RUN make\n").unwrap();
        assert_eq!(d[1].kind, Kind::Onbuild("COPY . /app".into()));
        assert!(matches!(trigger("RUN make").unwrap().kind, Kind::Run(..)));
        for bad in [
            "ONBUILD ONBUILD RUN x",
            "ONBUILD FROM x",
            "ONBUILD FROBNICATE",
            "ONBUILD",
        ] {
            assert!(parse(&format!("FROM scratch\n{bad}\n")).is_err(), "{bad}");
        }
    }
}
