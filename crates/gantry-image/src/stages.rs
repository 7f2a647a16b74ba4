//! The stages of a Dockerfile and what depends on what, as BuildKit reads
//! them. Pure: no I/O.
//!
//! ARGs before the first FROM are the global (meta) args: they may be used
//! in FROM lines and redeclared in a stage. Each FROM starts a stage, named
//! by `AS name` and numbered from 0. A stage depends on the stage its FROM
//! names and on those its `COPY --from=` name (by name or number); only the
//! target (the last stage, or `--target`) and what it depends on are
//! built, so a stage the target does not need is never run.

use std::collections::BTreeSet;

use crate::dockerfile::{DockerfileError, Instruction, Kind, RunMount};

/// One stage: its FROM and the instructions after it.
#[derive(Debug, Clone)]
pub struct Stage {
    /// Its number (0 for the first FROM).
    pub index: usize,
    /// `AS name`, lowercased.
    pub name: Option<String>,
    /// The FROM instruction.
    pub from: Instruction,
    /// What follows it, up to the next FROM.
    pub body: Vec<Instruction>,
}

/// A Dockerfile cut into its global args and stages.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The ARGs before the first FROM.
    pub meta_args: Vec<Instruction>,
    /// The stages in order.
    pub stages: Vec<Stage>,
}

/// What a FROM or `COPY --from` refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An earlier stage.
    Stage(usize),
    /// An image (or `scratch`).
    Image(String),
}

fn err(line: usize, msg: impl Into<String>) -> DockerfileError {
    DockerfileError {
        line,
        msg: msg.into(),
    }
}

/// Cuts the instructions into stages.
pub fn split(instructions: Vec<Instruction>) -> Result<Plan, DockerfileError> {
    let mut meta_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for ins in instructions {
        match (&ins.kind, stages.last_mut()) {
            (Kind::From { alias, .. }, _) => {
                if let Some(a) = alias {
                    if a.parse::<usize>().is_ok() {
                        return Err(err(
                            ins.line,
                            format!("stage name {a:?} cannot be a number"),
                        ));
                    }
                    if stages.iter().any(|s| s.name.as_deref() == Some(a.as_str())) {
                        return Err(err(ins.line, format!("duplicate stage name {a:?}")));
                    }
                }
                stages.push(Stage {
                    index: stages.len(),
                    name: alias.clone(),
                    from: ins.clone(),
                    body: Vec::new(),
                });
            }
            (Kind::Arg { .. }, None) => meta_args.push(ins),
            (_, None) => {
                return Err(err(
                    ins.line,
                    "the first instruction must be FROM (only ARG may come before it)",
                ))
            }
            (_, Some(stage)) => stage.body.push(ins),
        }
    }
    if stages.is_empty() {
        return Err(err(1, "no FROM instruction"));
    }
    Ok(Plan { meta_args, stages })
}

/// The sources an instruction names (`COPY --from`, `RUN
/// --mount=type=bind,from=`), unexpanded.
fn froms(ins: &Instruction) -> Vec<&String> {
    match &ins.kind {
        Kind::Copy {
            from: Some(from), ..
        } => vec![from],
        Kind::Run(_, opts) => opts
            .mounts
            .iter()
            .filter_map(|m| match m {
                RunMount::Bind {
                    from: Some(from), ..
                } => Some(from),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

impl Plan {
    /// The stage `--target` names (the last one without it).
    pub fn target(&self, name: Option<&str>) -> Result<usize, DockerfileError> {
        match name {
            None => Ok(self.stages.len() - 1),
            Some(n) => {
                let n = n.to_ascii_lowercase();
                self.stages
                    .iter()
                    .position(|s| s.name.as_deref() == Some(n.as_str()))
                    .ok_or_else(|| err(1, format!("target stage {n:?} could not be found")))
            }
        }
    }

    /// What `reference` (a FROM's image or a `COPY --from`, expanded)
    /// means in stage `at`: a stage before it by name or number, else an
    /// image. A number that is not an earlier stage is an error, as is a
    /// stage's own name.
    pub fn resolve(
        &self,
        at: usize,
        reference: &str,
        line: usize,
    ) -> Result<Source, DockerfileError> {
        let r = reference.to_ascii_lowercase();
        if let Ok(i) = r.parse::<usize>() {
            return if i < at {
                Ok(Source::Stage(i))
            } else if i == at {
                Err(err(line, format!("stage {i} refers to itself")))
            } else {
                Err(err(
                    line,
                    format!("stage {i} is not defined before stage {at}"),
                ))
            };
        }
        match self.stages[..at]
            .iter()
            .rev()
            .find(|s| s.name.as_deref() == Some(r.as_str()))
        {
            Some(s) => Ok(Source::Stage(s.index)),
            None if self.stages[at].name.as_deref() == Some(r.as_str()) => {
                Err(err(line, format!("stage {r:?} refers to itself")))
            }
            None => Ok(Source::Image(reference.to_owned())),
        }
    }

    /// Every stage `stage` reads: its FROM's and its `COPY --from`s'.
    /// `expand` expands a word with the global args.
    pub fn reads(
        &self,
        stage: usize,
        expand: &dyn Fn(&str) -> Result<String, String>,
    ) -> Result<Vec<Source>, DockerfileError> {
        let s = &self.stages[stage];
        let mut out = Vec::new();
        if let Kind::From { image, .. } = &s.from.kind {
            let image = expand(image).map_err(|e| err(s.from.line, e))?;
            out.push(self.resolve(stage, &image, s.from.line)?);
        }
        for ins in &s.body {
            for from in froms(ins) {
                let from = expand(from).map_err(|e| err(ins.line, e))?;
                out.push(self.resolve(stage, &from, ins.line)?);
            }
        }
        Ok(out)
    }

    /// What the ONBUILD `triggers` of stage `stage`'s base image read
    /// (`COPY --from`, `RUN --mount=from=`), resolved from that stage.
    pub fn trigger_reads(
        &self,
        stage: usize,
        triggers: &[String],
        expand: &dyn Fn(&str) -> Result<String, String>,
    ) -> Result<Vec<Source>, DockerfileError> {
        let line = self.stages[stage].from.line;
        let mut out = Vec::new();
        for t in triggers {
            let ins = crate::dockerfile::trigger(t)?;
            for from in froms(&ins) {
                let from = expand(from).map_err(|e| err(line, e))?;
                out.push(self.resolve(stage, &from, line)?);
            }
        }
        Ok(out)
    }

    /// The stages to build for `target`: it and every stage it reads,
    /// directly or not, in order.
    pub fn needed(
        &self,
        target: usize,
        expand: &dyn Fn(&str) -> Result<String, String>,
    ) -> Result<BTreeSet<usize>, DockerfileError> {
        let mut need = BTreeSet::new();
        let mut todo = vec![target];
        while let Some(i) = todo.pop() {
            if !need.insert(i) {
                continue;
            }
            for src in self.reads(i, expand)? {
                if let Source::Stage(j) = src {
                    todo.push(j);
                }
            }
        }
        Ok(need)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerfile::parse;

    fn plan(src: &str) -> Plan {
        split(parse(src).unwrap()).unwrap()
    }

    fn same(s: &str) -> Result<String, String> {
        Ok(s.to_owned())
    }

    #[test]
    fn stages_and_global_args() {
        let p = plan(
            "ARG BASE=alpine\nFROM $BASE AS build\nRUN make\nFROM scratch\nCOPY --from=build /a /a\n",
        );
        assert_eq!(p.meta_args.len(), 1);
        assert_eq!(p.stages.len(), 2);
        assert_eq!(p.stages[0].name.as_deref(), Some("build"));
        assert_eq!(p.stages[0].body.len(), 1);
        assert_eq!(p.stages[1].name, None);
        assert_eq!(p.target(None).unwrap(), 1);
        assert_eq!(p.target(Some("BUILD")).unwrap(), 0);
        assert!(p
            .target(Some("nope"))
            .unwrap_err()
            .msg
            .contains("could not be found"));
    }

    #[test]
    fn only_what_the_target_reads_is_built() {
        let p = plan(
            "FROM busybox AS base\n\
             FROM base AS build\nRUN make\n\
             FROM base AS tests\nRUN exit 1\n\
             FROM alpine AS other\n\
             FROM scratch\nCOPY --from=build /out /out\nCOPY --from=0 /bin/sh /sh\nCOPY --from=nginx:1 /etc/nginx /etc/nginx\n",
        );
        let last = p.target(None).unwrap();
        assert_eq!(p.needed(last, &same).unwrap(), BTreeSet::from([0, 1, 4]));
        // A RUN's bind mount from a stage needs that stage too.
        let q = plan("FROM busybox AS tools\nFROM busybox AS unused\nFROM busybox\nRUN --mount=from=tools,target=/t true\n");
        assert_eq!(q.needed(2, &same).unwrap(), BTreeSet::from([0, 2]));
        assert_eq!(
            p.needed(p.target(Some("tests")).unwrap(), &same).unwrap(),
            BTreeSet::from([0, 2])
        );
        assert_eq!(
            p.reads(4, &same).unwrap(),
            vec![
                Source::Image("scratch".into()),
                Source::Stage(1),
                Source::Stage(0),
                Source::Image("nginx:1".into()),
            ]
        );
    }

    #[test]
    fn references_forward_or_to_itself_are_refused() {
        let p = plan("FROM scratch AS a\nCOPY --from=1 /x /x\nFROM scratch AS b\n");
        assert!(p
            .needed(0, &same)
            .unwrap_err()
            .msg
            .contains("not defined before"));
        let p = plan("FROM scratch AS a\nCOPY --from=a /x /x\n");
        assert!(p.needed(0, &same).unwrap_err().msg.contains("itself"));
        let p = plan("FROM scratch\nCOPY --from=0 /x /x\n");
        assert!(p.needed(0, &same).unwrap_err().msg.contains("itself"));
        // A later stage's name, used before it is defined, is an image.
        let p = plan("FROM later AS a\nFROM scratch AS later\n");
        assert_eq!(
            p.reads(0, &same).unwrap(),
            vec![Source::Image("later".into())]
        );
    }

    #[test]
    fn bad_layouts_are_refused() {
        for (src, want) in [
            ("RUN x\nFROM scratch\n", "first instruction must be FROM"),
            ("ARG A\n", "no FROM"),
            (
                "FROM scratch AS a\nFROM scratch AS A\n",
                "duplicate stage name",
            ),
            ("FROM scratch AS 1\n", "cannot be a number"),
        ] {
            let e = parse(src).and_then(split).unwrap_err();
            assert!(e.msg.contains(want), "{src:?}: {e}");
        }
    }

    #[test]
    fn global_args_expand_in_references() {
        let p =
            plan("ARG STAGE=one\nFROM scratch AS one\nFROM scratch\nCOPY --from=$STAGE /x /x\n");
        let expand = |w: &str| -> Result<String, String> { Ok(w.replace("$STAGE", "one")) };
        assert_eq!(p.needed(1, &expand).unwrap(), BTreeSet::from([0, 1]));
    }

    proptest::proptest! {
        /// Whatever the references, the stages needed are the target and
        /// earlier stages only, and every stage needed reads only stages
        /// that are needed too.
        #[test]
        fn needed_is_closed_and_backward(refs in proptest::collection::vec(proptest::collection::vec(0usize..8, 0..3), 1..8)) {
            let mut src = String::new();
            for (i, r) in refs.iter().enumerate() {
                src.push_str(&format!("FROM scratch AS s{i}\n"));
                for j in r.iter().filter(|j| **j < i) {
                    src.push_str(&format!("COPY --from=s{j} /x /x\n"));
                }
            }
            let p = plan(&src);
            let target = refs.len() - 1;
            let need = p.needed(target, &same).unwrap();
            proptest::prop_assert!(need.contains(&target));
            for &i in &need {
                proptest::prop_assert!(i <= target);
                for s in p.reads(i, &same).unwrap() {
                    if let Source::Stage(j) = s {
                        proptest::prop_assert!(need.contains(&j));
                    }
                }
            }
        }
    }
}
