//! A folder as a backup keeps it: its entries, sorted by name, with what
//! a restore sets (mode, owner, modification time) and what tells a
//! later backup the file is unchanged (size, times, inode).

use serde::{Deserialize, Serialize};

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    /// A regular file: its chunks' ids, in order.
    File {
        /// Chunk ids.
        chunks: Vec<String>,
    },
    /// A folder: its tree's id.
    Dir {
        /// Tree id.
        tree: String,
    },
    /// A symbolic link: its target (hex of the bytes).
    Symlink {
        /// Target, hex.
        target: String,
    },
}

/// One entry of a folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Node {
    /// Its name, hex of the bytes (names need not be UTF-8).
    pub(crate) name: String,
    /// What it is.
    pub(crate) kind: Kind,
    /// Permission bits (with setuid, setgid, sticky).
    pub(crate) mode: u32,
    /// Owner.
    pub(crate) uid: u32,
    /// Group.
    pub(crate) gid: u32,
    /// Size in bytes.
    pub(crate) size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub(crate) mtime_ns: i64,
    /// Status change time, nanoseconds (for the next backup's check only).
    pub(crate) ctime_ns: i64,
    /// Inode (for the next backup's check only).
    pub(crate) inode: u64,
}

/// A folder's entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Tree {
    /// Sorted by name.
    pub(crate) nodes: Vec<Node>,
}

impl Node {
    /// Its name's bytes, if the name is a safe single path component
    /// (a repository is not trusted to name `..` or `a/b`).
    pub(crate) fn safe_name(&self) -> Option<Vec<u8>> {
        let n = hex::decode(&self.name).ok()?;
        let ok = !n.is_empty() && n != b"." && n != b".." && !n.contains(&b'/') && !n.contains(&0);
        ok.then_some(n)
    }

    /// Whether `other` (this node's entry in the previous snapshot)
    /// describes the same unchanged file.
    pub(crate) fn unchanged(&self, other: &Node) -> bool {
        matches!(other.kind, Kind::File { .. })
            && self.size == other.size
            && self.mtime_ns == other.mtime_ns
            && self.ctime_ns == other.ctime_ns
            && self.inode == other.inode
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &[u8]) -> Node {
        Node {
            name: hex::encode(name),
            kind: Kind::File { chunks: vec![] },
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 1,
            mtime_ns: 2,
            ctime_ns: 3,
            inode: 4,
        }
    }

    #[test]
    fn only_single_components_are_safe() {
        assert_eq!(node(b"a.txt").safe_name().unwrap(), b"a.txt");
        assert!(node(b"\xffodd").safe_name().is_some());
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0"] {
            assert!(node(bad).safe_name().is_none(), "{bad:?}");
        }
        let mut n = node(b"x");
        n.name = "zz".into();
        assert!(n.safe_name().is_none());
    }

    #[test]
    fn unchanged_means_same_size_times_and_inode() {
        let a = node(b"f");
        assert!(a.unchanged(&a.clone()));
        for change in [
            |n: &mut Node| n.size += 1,
            |n: &mut Node| n.mtime_ns += 1,
            |n: &mut Node| n.ctime_ns += 1,
            |n: &mut Node| n.inode += 1,
        ] {
            let mut b = a.clone();
            change(&mut b);
            assert!(!a.unchanged(&b));
        }
    }
}
