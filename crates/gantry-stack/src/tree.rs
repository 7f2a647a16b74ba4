//! The stack file as written, with the position of every key: what the
//! key checks walk (a key Gantry refuses is reported where it stands) and
//! where unset variables are looked for. Values are as written, not
//! interpolated.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A YAML node.
#[derive(Debug)]
pub(crate) enum Tree {
    /// A mapping, keys with their positions, in the file's order.
    Map(Vec<(Spanned<String>, Tree)>),
    /// A sequence.
    Seq(Vec<Tree>),
    /// A string scalar.
    Str(String),
    /// Any other scalar (number, boolean, null).
    Other,
}

impl Tree {
    /// Where the top-level keys, and the names under `services`,
    /// `volumes` and `networks`, stand: `services`, `services.web`, ...
    pub(crate) fn places(&self) -> std::collections::BTreeMap<String, serde_saphyr::Location> {
        let mut out = std::collections::BTreeMap::new();
        let Self::Map(top) = self else { return out };
        for (k, v) in top {
            out.insert(k.value.clone(), k.referenced);
            if let Self::Map(names) = v {
                for (n, _) in names {
                    out.insert(format!("{}.{}", k.value, n.value), n.referenced);
                }
            }
        }
        out
    }

    /// The key whose value stands at `line`, `column`: the last key on
    /// that line before the column, as a dotted path.
    pub(crate) fn key_at(&self, line: u64, column: u64) -> Option<String> {
        fn walk(
            t: &Tree,
            path: &mut Vec<String>,
            line: u64,
            column: u64,
            best: &mut Option<String>,
        ) {
            match t {
                Tree::Map(m) => {
                    for (k, v) in m {
                        path.push(k.value.clone());
                        let l = k.referenced;
                        if l.line() == line && l.column() < column {
                            *best = Some(path.join("."));
                        }
                        walk(v, path, line, column, best);
                        path.pop();
                    }
                }
                Tree::Seq(items) => {
                    for (i, x) in items.iter().enumerate() {
                        path.push(i.to_string());
                        walk(x, path, line, column, best);
                        path.pop();
                    }
                }
                _ => {}
            }
        }
        let mut best = None;
        walk(self, &mut Vec::new(), line, column, &mut best);
        best
    }

    /// Calls `f` on every string value (not on keys).
    pub(crate) fn strings(&self, f: &mut dyn FnMut(&str)) {
        match self {
            Self::Str(s) => f(s),
            Self::Seq(v) => v.iter().for_each(|x| x.strings(f)),
            Self::Map(m) => m.iter().for_each(|(_, x)| x.strings(f)),
            Self::Other => {}
        }
    }
}

impl<'de> Deserialize<'de> for Tree {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TreeVisitor)
    }
}

struct TreeVisitor;

impl<'de> Visitor<'de> for TreeVisitor {
    type Value = Tree;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Tree, E> {
        Ok(Tree::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Tree, E> {
        Ok(Tree::Str(v))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Tree, E> {
        Ok(Tree::Other)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Tree, E> {
        Ok(Tree::Other)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Tree, E> {
        Ok(Tree::Other)
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Tree, E> {
        Ok(Tree::Other)
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Tree, E> {
        Ok(Tree::Other)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Tree, E> {
        Ok(Tree::Other)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Tree, E> {
        Ok(Tree::Other)
    }
    fn visit_none<E: de::Error>(self) -> Result<Tree, E> {
        Ok(Tree::Other)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Tree, D::Error> {
        Tree::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tree, A::Error> {
        let mut v = Vec::new();
        while let Some(x) = seq.next_element()? {
            v.push(x);
        }
        Ok(Tree::Seq(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tree, A::Error> {
        let mut v = Vec::new();
        while let Some(k) = map.next_key::<Spanned<String>>()? {
            let x = map.next_value()?;
            v.push((k, x));
        }
        Ok(Tree::Map(v))
    }
}
