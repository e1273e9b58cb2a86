//! Manifests (duplicity-format.md §5): per-volume index ranges and SHA-1 hashes.

use super::index::{Index, quote_path, unquote_path};
use std::collections::BTreeMap;
use std::io::Write;

/// One `Volume N:` block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    pub number: u32,
    pub start: Index,
    pub start_block: Option<u64>,
    pub end: Index,
    pub end_block: Option<u64>,
    /// Lowercase hex SHA-1 of the stored object bytes.
    pub sha1: Option<String>,
}

impl VolumeInfo {
    /// Whether this volume may hold entries at or below `prefix` (§5.4).
    pub fn may_contain(&self, prefix: &Index) -> bool {
        let depth = prefix.depth();
        self.start.truncate_components(depth) <= *prefix && *prefix <= self.end
    }
}

/// How a regular file changed in a set (the `Filelist` section).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    New,
    Changed,
    Deleted,
}

impl Change {
    pub fn word(self) -> &'static str {
        match self {
            Change::New => "new",
            Change::Changed => "changed",
            Change::Deleted => "deleted",
        }
    }
}

/// A parsed or to-be-written manifest. The `Filelist` is not kept here: it can be as
/// long as the tree, so writers stream it (see [`format_filelist_line`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    pub hostname: Option<Vec<u8>>,
    pub localdir: Option<Vec<u8>>,
    pub volumes: BTreeMap<u32, VolumeInfo>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("manifest line {line}: {reason}")]
    Syntax { line: usize, reason: String },
    #[error("manifest has no volumes")]
    NoVolumes,
    #[error("manifest volume {0} has no StartingPath or EndingPath")]
    MissingRange(u32),
}

/// A volume block being parsed: number, start, end, SHA-1.
type PartialVolume = (
    u32,
    Option<(Index, Option<u64>)>,
    Option<(Index, Option<u64>)>,
    Option<String>,
);

fn index_token(index: &Index) -> Vec<u8> {
    if index.is_root() {
        b".".to_vec()
    } else {
        quote_path(index.as_bytes())
    }
}

impl Manifest {
    /// Everything up to (not including) the `Filelist` section.
    pub fn header_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(h) = &self.hostname {
            out.extend_from_slice(b"Hostname ");
            out.extend_from_slice(h);
            out.push(b'\n');
        }
        if let Some(d) = &self.localdir {
            out.extend_from_slice(b"Localdir ");
            out.extend_from_slice(&quote_path(d));
            out.push(b'\n');
        }
        for v in self.volumes.values() {
            let block = |b: Option<u64>| b.map(|n| n.to_string()).unwrap_or_else(|| " ".into());
            let _ = write!(out, "Volume {}:\n    StartingPath   ", v.number);
            out.extend_from_slice(&index_token(&v.start));
            let _ = write!(out, " {}\n    EndingPath     ", block(v.start_block));
            out.extend_from_slice(&index_token(&v.end));
            let _ = writeln!(out, " {}", block(v.end_block));
            if let Some(h) = &v.sha1 {
                let _ = writeln!(out, "    Hash SHA1 {h}");
            }
        }
        out
    }

    /// The whole manifest with an empty file list (`Filelist 0`).
    pub fn to_bytes_without_filelist(&self) -> Vec<u8> {
        let mut out = self.header_bytes();
        out.extend_from_slice(b"Filelist 0\n");
        out
    }

    /// Parses a manifest as duplicity 0.8.22 does (§5.3).
    pub fn parse(data: &[u8]) -> Result<Manifest, ManifestError> {
        let mut p = ManifestParser::default();
        for line in data.split(|&b| b == b'\n') {
            p.line(line)?;
        }
        p.finish()
    }
}

/// [`Manifest::parse`] a line at a time, for manifests read as a stream: a manifest lists
/// every file of its set, so holding one whole would make memory grow with the number of
/// files (33 MB for a million). File list lines are skipped.
#[derive(Default)]
pub struct ManifestParser {
    m: Manifest,
    current: Option<PartialVolume>,
    in_filelist: bool,
    line_no: usize,
}

impl ManifestParser {
    /// Feeds one line (with or without its `\n`).
    pub fn line(&mut self, line: &[u8]) -> Result<(), ManifestError> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        self.line_no += 1;
        let line_no = self.line_no;
        let trimmed = trim_start(line);
        let (word, rest) = split_word(trimmed);
        let word_l = word.to_ascii_lowercase();
        match word_l.as_slice() {
            b"hostname"
                if self.current.is_none() && !self.in_filelist && self.m.hostname.is_none() =>
            {
                self.m.hostname = Some(rest.to_vec());
            }
            b"localdir"
                if self.current.is_none() && !self.in_filelist && self.m.localdir.is_none() =>
            {
                self.m.localdir = Some(unquote_path(rest));
            }
            b"volume" => {
                self.finish_volume()?;
                self.in_filelist = false;
                let num = rest.strip_suffix(b":").unwrap_or(rest);
                let n: u32 = std::str::from_utf8(trim_end(num))
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| ManifestError::Syntax {
                        line: line_no,
                        reason: format!("bad volume line {:?}", String::from_utf8_lossy(line)),
                    })?;
                self.current = Some((n, None, None, None));
            }
            b"filelist" => {
                self.in_filelist = true;
            }
            b"startingpath" | b"endingpath" if !self.in_filelist => {
                let Some(cur) = self.current.as_mut() else {
                    return Err(ManifestError::Syntax {
                        line: line_no,
                        reason: "path line outside a volume block".into(),
                    });
                };
                let mut toks = rest
                    .split(|b| b.is_ascii_whitespace())
                    .filter(|t| !t.is_empty());
                let tok = toks.next().ok_or_else(|| ManifestError::Syntax {
                    line: line_no,
                    reason: "missing path".into(),
                })?;
                let path = unquote_path(tok);
                let index = Index::parse(&path).map_err(|e| ManifestError::Syntax {
                    line: line_no,
                    reason: e.to_string(),
                })?;
                let block = toks
                    .next()
                    .and_then(|t| std::str::from_utf8(t).ok())
                    .and_then(|s| s.parse::<u64>().ok());
                if word_l == b"startingpath" {
                    cur.1 = Some((index, block));
                } else {
                    cur.2 = Some((index, block));
                }
            }
            b"hash" if !self.in_filelist => {
                if let Some(cur) = self.current.as_mut() {
                    let mut toks = rest
                        .split(|b| b.is_ascii_whitespace())
                        .filter(|t| !t.is_empty());
                    if let (Some(alg), Some(hex)) = (toks.next(), toks.next())
                        && alg.eq_ignore_ascii_case(b"sha1")
                    {
                        cur.3 = Some(String::from_utf8_lossy(hex).to_ascii_lowercase());
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Ends a volume block.
    fn finish_volume(&mut self) -> Result<(), ManifestError> {
        if let Some((n, start, end, sha1)) = self.current.take() {
            let (Some((start, start_block)), Some((end, end_block))) = (start, end) else {
                return Err(ManifestError::MissingRange(n));
            };
            // A resumed backup can repeat a volume number: later ones win and numbers
            // above it are dropped.
            let _ = self.m.volumes.split_off(&n);
            self.m.volumes.insert(
                n,
                VolumeInfo {
                    number: n,
                    start,
                    start_block,
                    end,
                    end_block,
                    sha1,
                },
            );
        }
        Ok(())
    }

    /// The manifest, once every line was fed.
    pub fn finish(mut self) -> Result<Manifest, ManifestError> {
        self.finish_volume()?;
        if self.m.volumes.is_empty() {
            return Err(ManifestError::NoVolumes);
        }
        Ok(self.m)
    }
}

/// One `Filelist` line.
pub fn format_filelist_line(change: Change, path: &Index) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.as_bytes().len() + 16);
    out.extend_from_slice(format!("    {:<7}  ", change.word()).as_bytes());
    out.extend_from_slice(&quote_path(path.as_bytes()));
    out.push(b'\n');
    out
}

fn trim_start(s: &[u8]) -> &[u8] {
    let i = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    &s[i..]
}

fn trim_end(s: &[u8]) -> &[u8] {
    let i = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map(|i| i + 1)
        .unwrap_or(0);
    &s[..i]
}

/// First whitespace-separated word and the rest of the line after the separating
/// whitespace (the rest keeps trailing bytes as they are, but loses a trailing CR).
fn split_word(s: &[u8]) -> (&[u8], &[u8]) {
    let end = s
        .iter()
        .position(|b| b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let rest = trim_start(&s[end..]);
    let rest = rest.strip_suffix(b"\r").unwrap_or(rest);
    (&s[..end], rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OBSERVED: &str = "Hostname vm\nLocaldir /srv/data\nVolume 1:\n    StartingPath   .  \n    EndingPath     big.bin 16\n    Hash SHA1 1cca3c4bb7d43b31fcbc90e675b06aedea3a9dc2\nVolume 2:\n    StartingPath   big.bin 17\n    EndingPath     big.bin 32\n    Hash SHA1 fd6b56a46a21b84127e3ec87218106f72cebb9af\nVolume 3:\n    StartingPath   big.bin 33\n    EndingPath     hl1  \n    Hash SHA1 61068c0e0ff3e34dcc0b3e7de318bbf6f873a2fa\nFilelist 2\n    new      a/b\n    new      \"name\\x20with\\x20spaces.txt\"\n";

    /// Fed a line at a time (as restores read manifests), the parser gives what `parse`
    /// gives, whatever the file list holds: its lines (even one naming a file `Hash`) are
    /// skipped, and a volume block after it still counts.
    #[test]
    fn streaming_parser_matches_parse_and_skips_the_file_list() {
        let mut text = OBSERVED.replace("Filelist 2", "Filelist 4");
        text.push_str("    new      Hash\n    changed  StartingPath\n");
        text.push_str("Volume 4:\n    StartingPath   x  \n    EndingPath     y  \n");
        let whole = Manifest::parse(text.as_bytes()).unwrap();
        let mut p = ManifestParser::default();
        for line in text.as_bytes().split_inclusive(|&b| b == b'\n') {
            p.line(line).unwrap();
        }
        let streamed = p.finish().unwrap();
        assert_eq!(streamed.volumes, whole.volumes);
        assert_eq!(streamed.volumes.len(), 4);
        assert_eq!(streamed.volumes[&3].sha1, whole.volumes[&3].sha1);
        assert!(streamed.volumes[&3].sha1.is_some());
        assert_eq!(streamed.hostname, whole.hostname);
    }

    #[test]
    fn parses_and_reproduces_observed_manifest() {
        let m = Manifest::parse(OBSERVED.as_bytes()).unwrap();
        assert_eq!(m.hostname.as_deref(), Some(&b"vm"[..]));
        assert_eq!(m.volumes.len(), 3);
        let v1 = &m.volumes[&1];
        assert!(v1.start.is_root());
        assert_eq!(v1.start_block, None);
        assert_eq!(v1.end.as_bytes(), b"big.bin");
        assert_eq!(v1.end_block, Some(16));
        assert_eq!(
            m.volumes[&3].sha1.as_deref(),
            Some("61068c0e0ff3e34dcc0b3e7de318bbf6f873a2fa")
        );
        let mut text = m.header_bytes();
        text.extend_from_slice(b"Filelist 2\n");
        text.extend(format_filelist_line(
            Change::New,
            &Index::parse(b"a/b").unwrap(),
        ));
        text.extend(format_filelist_line(
            Change::New,
            &Index::parse(b"name with spaces.txt").unwrap(),
        ));
        assert_eq!(String::from_utf8(text).unwrap(), OBSERVED);
    }

    #[test]
    fn repeated_volume_drops_later_ones() {
        let t = "Volume 1:\n StartingPath a\n EndingPath b\nVolume 2:\n StartingPath b\n EndingPath c\nVolume 3:\n StartingPath c\n EndingPath d\nVolume 2:\n StartingPath x\n EndingPath y\n";
        let m = Manifest::parse(t.as_bytes()).unwrap();
        assert_eq!(m.volumes.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(m.volumes[&2].start.as_bytes(), b"x");
    }

    #[test]
    fn errors_are_specific() {
        assert_eq!(
            Manifest::parse(b"Hostname x\n"),
            Err(ManifestError::NoVolumes)
        );
        assert_eq!(
            Manifest::parse(b"Volume 1:\n StartingPath a\n"),
            Err(ManifestError::MissingRange(1))
        );
        assert!(matches!(
            Manifest::parse(b"Volume x:\n"),
            Err(ManifestError::Syntax { line: 1, .. })
        ));
        assert!(matches!(
            Manifest::parse(b"Volume 1:\n StartingPath ../x\n EndingPath y\n"),
            Err(ManifestError::Syntax { line: 2, .. })
        ));
    }

    #[test]
    fn volume_selection_by_prefix() {
        let v = VolumeInfo {
            number: 1,
            start: Index::parse(b"a/c").unwrap(),
            start_block: None,
            end: Index::parse(b"b").unwrap(),
            end_block: None,
            sha1: None,
        };
        assert!(v.may_contain(&Index::parse(b"a").unwrap()));
        assert!(v.may_contain(&Index::parse(b"a/d").unwrap()));
        assert!(!v.may_contain(&Index::parse(b"a/b").unwrap()));
        assert!(!v.may_contain(&Index::parse(b"c").unwrap()));
        assert!(v.may_contain(&Index::root()));
    }

    #[test]
    fn random_and_mutated_input_never_panics() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..5000 {
            let mut v = OBSERVED.as_bytes().to_vec();
            for _ in 0..(next() % 8) {
                let i = (next() as usize) % v.len();
                v[i] = (next() >> 24) as u8;
            }
            let cut = (next() as usize) % (v.len() + 1);
            let _ = Manifest::parse(&v[..cut]);
            let junk: Vec<u8> = (0..(next() % 300)).map(|_| (next() >> 16) as u8).collect();
            let _ = Manifest::parse(&junk);
        }
    }
}
