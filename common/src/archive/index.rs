//! Paths inside a backed-up tree ("indexes", duplicity-format.md §2).
//!
//! An index is a tuple of byte-string components; the root is the empty tuple.
//! We store it joined with `/` (components never contain `/` or NUL) and compare it
//! component by component, which is the same as comparing the joined bytes with `/`
//! sorting below every other byte. That is duplicity's order (a depth-first pre-order
//! walk with each directory sorted bytewise): `a`, `a/b`, `a-b`, `a.txt`.

use std::cmp::Ordering;
use std::fmt;

/// A path inside the backed-up tree, as raw bytes joined by `/`; empty for the root.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Index(Vec<u8>);

/// Why a path from an archive or a user cannot be an index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    #[error("path {0:?} has a '..' component")]
    ParentComponent(String),
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
}

impl Index {
    /// The root directory, `()`.
    pub fn root() -> Self {
        Index(Vec::new())
    }

    /// Builds an index from a relative path as found in a tar name or typed by a user:
    /// leading/trailing/duplicate `/` and `.` components are dropped; `..` is refused.
    pub fn parse(path: &[u8]) -> Result<Self, IndexError> {
        let mut out = Vec::with_capacity(path.len());
        for comp in path.split(|&b| b == b'/') {
            match comp {
                b"" | b"." => continue,
                b".." => return Err(IndexError::ParentComponent(lossy(path))),
                _ => {
                    if comp.contains(&0) {
                        return Err(IndexError::Nul(lossy(path)));
                    }
                    if !out.is_empty() {
                        out.push(b'/');
                    }
                    out.extend_from_slice(comp);
                }
            }
        }
        Ok(Index(out))
    }

    /// Wraps bytes that are already a clean joined index (no empty, `.` or `..`
    /// components). Used on hot paths where the components come from a directory walk.
    pub fn from_clean(bytes: Vec<u8>) -> Self {
        debug_assert!(Index::parse(&bytes).map(|i| i.0 == bytes).unwrap_or(false));
        Index(bytes)
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The joined bytes (`a/b/c`), empty for the root.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    pub fn components(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split(|&b| b == b'/').filter(|c| !c.is_empty())
    }

    pub fn depth(&self) -> usize {
        if self.0.is_empty() {
            0
        } else {
            self.0.iter().filter(|&&b| b == b'/').count() + 1
        }
    }

    /// The child `name` of this index.
    pub fn join(&self, name: &[u8]) -> Index {
        let mut v = Vec::with_capacity(self.0.len() + 1 + name.len());
        v.extend_from_slice(&self.0);
        if !v.is_empty() {
            v.push(b'/');
        }
        v.extend_from_slice(name);
        Index(v)
    }

    /// The parent index; `None` for the root.
    pub fn parent(&self) -> Option<Index> {
        if self.0.is_empty() {
            return None;
        }
        match self.0.iter().rposition(|&b| b == b'/') {
            Some(p) => Some(Index(self.0[..p].to_vec())),
            None => Some(Index::root()),
        }
    }

    /// The last component (empty for the root).
    pub fn file_name(&self) -> &[u8] {
        match self.0.iter().rposition(|&b| b == b'/') {
            Some(p) => &self.0[p + 1..],
            None => &self.0,
        }
    }

    /// True if `self` equals `prefix` or lies below it (component-wise).
    pub fn starts_with(&self, prefix: &Index) -> bool {
        if prefix.0.is_empty() {
            return true;
        }
        self.0.starts_with(&prefix.0)
            && (self.0.len() == prefix.0.len() || self.0[prefix.0.len()] == b'/')
    }

    /// `self` with the leading `prefix` removed (`self` must start with it).
    pub fn strip_prefix(&self, prefix: &Index) -> Option<Index> {
        if !self.starts_with(prefix) {
            return None;
        }
        if prefix.0.is_empty() {
            return Some(self.clone());
        }
        let rest = &self.0[prefix.0.len()..];
        Some(Index(rest.strip_prefix(b"/").unwrap_or(rest).to_vec()))
    }

    /// The first `n` components of `self`.
    pub fn truncate_components(&self, n: usize) -> Index {
        if n == 0 {
            return Index::root();
        }
        let mut seen = 0;
        for (i, &b) in self.0.iter().enumerate() {
            if b == b'/' {
                seen += 1;
                if seen == n {
                    return Index(self.0[..i].to_vec());
                }
            }
        }
        self.clone()
    }

    /// Lossy display string, `.` for the root.
    pub fn display(&self) -> String {
        if self.0.is_empty() {
            ".".to_string()
        } else {
            String::from_utf8_lossy(&self.0).into_owned()
        }
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Component-wise order of joined index bytes: `/` sorts below every other byte.
pub fn cmp_index_bytes(a: &[u8], b: &[u8]) -> Ordering {
    let n = a.len().min(b.len());
    for i in 0..n {
        let (x, y) = (a[i], b[i]);
        if x != y {
            return match (x == b'/', y == b'/') {
                (true, false) => Ordering::Less,
                (false, true) => Ordering::Greater,
                _ => x.cmp(&y),
            };
        }
    }
    a.len().cmp(&b.len())
}

impl Ord for Index {
    fn cmp(&self, other: &Self) -> Ordering {
        cmp_index_bytes(&self.0, &other.0)
    }
}

impl PartialOrd for Index {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Index({:?})", self.display())
    }
}

impl fmt::Display for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display())
    }
}

/// True for the bytes duplicity escapes in manifests (§5.2).
fn needs_escape(b: u8) -> bool {
    matches!(
        b,
        b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c | b'\\' | b'"' | b'\''
    )
}

/// Quotes a path for a manifest line (§5.2): unchanged unless it contains whitespace,
/// a backslash or a quote; then wrapped in `"` with those bytes as `\xHH`.
pub fn quote_path(path: &[u8]) -> Vec<u8> {
    if !path.iter().any(|&b| needs_escape(b)) {
        return path.to_vec();
    }
    let mut out = Vec::with_capacity(path.len() + 8);
    out.push(b'"');
    for &b in path {
        if needs_escape(b) {
            out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
        } else {
            out.push(b);
        }
    }
    out.push(b'"');
    out
}

/// Reverses [`quote_path`]. Tolerant like duplicity: a token starting with `"` has its
/// first and last byte dropped and each `\xHH` decoded.
pub fn unquote_path(token: &[u8]) -> Vec<u8> {
    if token.first() != Some(&b'"') || token.len() < 2 {
        return token.to_vec();
    }
    let inner = &token[1..token.len() - 1];
    let mut out = Vec::with_capacity(inner.len());
    let mut i = 0;
    while i < inner.len() {
        if inner[i] == b'\\'
            && i + 3 < inner.len()
            && inner[i + 1] == b'x'
            && let Some(v) = std::str::from_utf8(&inner[i + 2..i + 4])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(inner[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_component_wise() {
        let mut v: Vec<Index> = ["a.txt", "a-b", "a/b", "a", ""]
            .iter()
            .map(|s| Index::parse(s.as_bytes()).unwrap())
            .collect();
        v.sort();
        let names: Vec<String> = v.iter().map(|i| i.display()).collect();
        assert_eq!(names, vec![".", "a", "a/b", "a-b", "a.txt"]);
    }

    #[test]
    fn parse_cleans_and_refuses_parent() {
        assert_eq!(Index::parse(b"./a//b/").unwrap().as_bytes(), b"a/b");
        assert_eq!(Index::parse(b"/etc/x").unwrap().as_bytes(), b"etc/x");
        assert!(Index::parse(b"a/../b").is_err());
        assert!(Index::parse(b"..").is_err());
        assert!(Index::parse(b".").unwrap().is_root());
    }

    #[test]
    fn prefix_relations() {
        let a = Index::parse(b"a/b").unwrap();
        assert!(a.starts_with(&Index::parse(b"a").unwrap()));
        assert!(
            !Index::parse(b"ab")
                .unwrap()
                .starts_with(&Index::parse(b"a").unwrap())
        );
        assert!(a.starts_with(&Index::root()));
        assert_eq!(
            a.strip_prefix(&Index::parse(b"a").unwrap())
                .unwrap()
                .as_bytes(),
            b"b"
        );
        assert_eq!(a.parent().unwrap().as_bytes(), b"a");
        assert_eq!(Index::parse(b"a").unwrap().parent().unwrap(), Index::root());
        assert_eq!(a.truncate_components(1).as_bytes(), b"a");
        assert_eq!(a.depth(), 2);
    }

    #[test]
    fn quoting_matches_duplicity() {
        assert_eq!(quote_path(b"a/b"), b"a/b");
        assert_eq!(
            quote_path(b"name with spaces.txt"),
            b"\"name\\x20with\\x20spaces.txt\""
        );
        assert_eq!(
            quote_path(b"quote'and\\back.txt"),
            b"\"quote\\x27and\\x5cback.txt\""
        );
        assert_eq!(quote_path(b"latin1-\xe9.txt"), b"latin1-\xe9.txt");
        for p in [&b"x y"[..], b"\"'\\\t", b"plain", b"\xff \xfe"] {
            assert_eq!(unquote_path(&quote_path(p)), p);
        }
    }
}
