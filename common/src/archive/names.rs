//! Object names (duplicity-format.md §1): what kind of object, which set, which volume.
//!
//! We always write the long names of §1.1; we read long, short (`--short-filenames`) and
//! old (`--old-filenames`) names as duplicity 0.8.22 does (§1.4). Names that match no
//! pattern, or whose time does not parse, are not ours: callers ignore them.

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use std::fmt;

/// The times that identify a set: a full set has one time; an incremental a start
/// (the previous set's end) and an end (the time of the run). Epoch seconds, UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SetTimes {
    Full { time: i64 },
    Incremental { start: i64, end: i64 },
}

impl SetTimes {
    pub fn is_full(&self) -> bool {
        matches!(self, SetTimes::Full { .. })
    }
    /// The time the set was made (a full's time, an incremental's end time).
    pub fn end(&self) -> i64 {
        match *self {
            SetTimes::Full { time } => time,
            SetTimes::Incremental { end, .. } => end,
        }
    }
    /// For a full its time; for an incremental the end of the set it builds on.
    pub fn start(&self) -> i64 {
        match *self {
            SetTimes::Full { time } => time,
            SetTimes::Incremental { start, .. } => start,
        }
    }
}

impl fmt::Display for SetTimes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SetTimes::Full { time } => write!(f, "full {}", format_time(time)),
            SetTimes::Incremental { start, end } => {
                write!(
                    f,
                    "incremental {} to {}",
                    format_time(start),
                    format_time(end)
                )
            }
        }
    }
}

/// Which object of a set a name denotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    /// A difftar volume, numbered from 1.
    Volume(u32),
    Manifest,
    /// The set's signature file (`full-signatures` / `new-signatures`).
    Signatures,
}

/// A parsed (or to be written) object name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectName {
    pub set: SetTimes,
    pub kind: ObjectKind,
    /// `.gpg`: an OpenPGP message.
    pub encrypted: bool,
    /// `.gz`: a gzip member (only without encryption; never for manifests).
    pub compressed: bool,
    /// `.part`: duplicity's local in-progress marker; never a complete object.
    pub partial: bool,
}

impl ObjectName {
    pub fn new(set: SetTimes, kind: ObjectKind, encrypted: bool) -> Self {
        // duplicity gzips unencrypted volumes and signature files, never manifests.
        let compressed = !encrypted && kind != ObjectKind::Manifest;
        ObjectName {
            set,
            kind,
            encrypted,
            compressed,
            partial: false,
        }
    }

    /// The long name of §1.1.
    pub fn format(&self) -> String {
        let suffix = if self.encrypted {
            ".gpg"
        } else if self.compressed && self.kind != ObjectKind::Manifest {
            ".gz"
        } else {
            ""
        };
        let part = if self.partial { ".part" } else { "" };
        match (self.set, self.kind) {
            (SetTimes::Full { time }, ObjectKind::Volume(n)) => {
                format!(
                    "duplicity-full.{}.vol{n}.difftar{suffix}",
                    format_time(time)
                )
            }
            (SetTimes::Full { time }, ObjectKind::Manifest) => {
                format!(
                    "duplicity-full.{}.manifest{part}{suffix}",
                    format_time(time)
                )
            }
            (SetTimes::Full { time }, ObjectKind::Signatures) => format!(
                "duplicity-full-signatures.{}.sigtar{part}{suffix}",
                format_time(time)
            ),
            (SetTimes::Incremental { start, end }, ObjectKind::Volume(n)) => format!(
                "duplicity-inc.{}.to.{}.vol{n}.difftar{suffix}",
                format_time(start),
                format_time(end)
            ),
            (SetTimes::Incremental { start, end }, ObjectKind::Manifest) => format!(
                "duplicity-inc.{}.to.{}.manifest{part}{suffix}",
                format_time(start),
                format_time(end)
            ),
            (SetTimes::Incremental { start, end }, ObjectKind::Signatures) => format!(
                "duplicity-new-signatures.{}.to.{}.sigtar{part}{suffix}",
                format_time(start),
                format_time(end)
            ),
        }
    }

    /// Parses a name as duplicity 0.8.22 does (§1.4); `None` if it is not a duplicity
    /// object (other objects may share the container and are ignored).
    pub fn parse(name: &str) -> Option<Self> {
        // Staging files of object stores (`x#1`) and similar are never objects.
        if name.contains('#') || name.contains('/') {
            return None;
        }
        parse_short(name).or_else(|| parse_long(name))
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.format())
    }
}

/// After the fixed part of a name, the name must end or continue with `.` (§1.4).
fn ends_ok(rest: &str) -> bool {
    rest.is_empty() || rest.starts_with('.')
}

/// Splits the optional `.part` marker off `rest` (the text after a fixed word).
fn take_partial<'a>(rest: &'a str, marker: &str) -> (bool, &'a str) {
    match rest.strip_prefix(marker) {
        Some(r) if ends_ok(r) => (true, r),
        _ => (false, rest),
    }
}

fn flags_long(name: &str) -> (bool, bool) {
    (name.ends_with(".gpg"), name.ends_with("gz"))
}

fn parse_long(name: &str) -> Option<ObjectName> {
    let (encrypted, compressed) = flags_long(name);
    let make = |set, kind, partial| {
        Some(ObjectName {
            set,
            kind,
            encrypted,
            compressed: compressed && !encrypted,
            partial,
        })
    };
    if let Some(rest) = name.strip_prefix("duplicity-full-signatures.") {
        let (t, rest) = rest.split_once('.')?;
        let rest = rest.strip_prefix("sigtar")?;
        let (partial, rest) = take_partial(rest, ".part");
        if !ends_ok(rest) {
            return None;
        }
        return make(
            SetTimes::Full {
                time: parse_name_time(t)?,
            },
            ObjectKind::Signatures,
            partial,
        );
    }
    if let Some(rest) = name.strip_prefix("duplicity-new-signatures.") {
        let (start, end, rest) = split_two_times(rest)?;
        let rest = rest.strip_prefix("sigtar")?;
        let (partial, rest) = take_partial(rest, ".part");
        if !ends_ok(rest) {
            return None;
        }
        return make(inc(start, end)?, ObjectKind::Signatures, partial);
    }
    if let Some(rest) = name.strip_prefix("duplicity-full.") {
        let (t, rest) = rest.split_once('.')?;
        let set = SetTimes::Full {
            time: parse_name_time(t)?,
        };
        return vol_or_manifest(rest, set).and_then(|(kind, partial)| make(set, kind, partial));
    }
    if let Some(rest) = name.strip_prefix("duplicity-inc.") {
        let (start, end, rest) = split_two_times(rest)?;
        let set = inc(start, end)?;
        return vol_or_manifest(rest, set).and_then(|(kind, partial)| make(set, kind, partial));
    }
    None
}

fn inc(start: i64, end: i64) -> Option<SetTimes> {
    Some(SetTimes::Incremental { start, end })
}

/// `T0.to.T1.<rest>` → (T0, T1, rest)
fn split_two_times(s: &str) -> Option<(i64, i64, &str)> {
    let (t0, rest) = s.split_once(".to.")?;
    let (t1, rest) = rest.split_once('.')?;
    Some((parse_name_time(t0)?, parse_name_time(t1)?, rest))
}

fn vol_or_manifest(rest: &str, _set: SetTimes) -> Option<(ObjectKind, bool)> {
    if let Some(r) = rest.strip_prefix("vol") {
        let digits = r.bytes().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        let n: u32 = r[..digits].parse().ok()?;
        let r = r[digits..].strip_prefix(".difftar")?;
        let (partial, r) = take_partial(r, ".part");
        if !ends_ok(r) || n == 0 {
            return None;
        }
        return Some((ObjectKind::Volume(n), partial));
    }
    let r = rest.strip_prefix("manifest")?;
    let (partial, r) = take_partial(r, ".part");
    if !ends_ok(r) {
        return None;
    }
    Some((ObjectKind::Manifest, partial))
}

fn parse_short(name: &str) -> Option<ObjectName> {
    let encrypted = name.ends_with(".g") || name.ends_with(".gpg");
    let compressed = !encrypted && (name.ends_with(".z") || name.ends_with("gz"));
    let make = |set, kind, partial| {
        Some(ObjectName {
            set,
            kind,
            encrypted,
            compressed,
            partial,
        })
    };
    let b36 = |s: &str| -> Option<i64> {
        if s.is_empty()
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        {
            return None;
        }
        i64::from_str_radix(s, 36).ok().filter(|&t| t > 0)
    };
    let mut parts = name.split('.');
    let head = parts.next()?;
    let rest: Vec<&str> = parts.collect();
    // `rest` holds the fields after the head, then the fixed word, then suffixes.
    let find_word = |start: usize, word: &str| -> Option<(usize, bool)> {
        let w = *rest.get(start)?;
        if w != word {
            return None;
        }
        let partial = rest.get(start + 1) == Some(&"p");
        Some((start, partial))
    };
    match head {
        "df" => {
            let t = b36(rest.first()?)?;
            let set = SetTimes::Full { time: t };
            if let Some((_, p)) = find_word(1, "m") {
                return make(set, ObjectKind::Manifest, p);
            }
            let n = b36(rest.get(1)?)?;
            let (_, p) = find_word(2, "dt")?;
            make(set, ObjectKind::Volume(u32::try_from(n).ok()?), p)
        }
        "di" => {
            let set = inc(b36(rest.first()?)?, b36(rest.get(1)?)?)?;
            if let Some((_, p)) = find_word(2, "m") {
                return make(set, ObjectKind::Manifest, p);
            }
            let n = b36(rest.get(2)?)?;
            let (_, p) = find_word(3, "dt")?;
            make(set, ObjectKind::Volume(u32::try_from(n).ok()?), p)
        }
        "dfs" => {
            let set = SetTimes::Full {
                time: b36(rest.first()?)?,
            };
            let (_, p) = find_word(1, "st")?;
            make(set, ObjectKind::Signatures, p)
        }
        "dns" => {
            let set = inc(b36(rest.first()?)?, b36(rest.get(1)?)?)?;
            let (_, p) = find_word(2, "st")?;
            make(set, ObjectKind::Signatures, p)
        }
        _ => None,
    }
}

/// `YYYYMMDDTHHMMSSZ` for epoch seconds (UTC).
pub fn format_time(t: i64) -> String {
    match Utc.timestamp_opt(t, 0).single() {
        Some(dt) => dt.format("%Y%m%dT%H%M%SZ").to_string(),
        None => format!("{t}"),
    }
}

/// A time field of a name, parsed leniently as duplicity does: the 16-character UTC
/// form, the old `YYYY-MM-DDTHH:MM:SS+HH:MM` form (any separator in place of `:`),
/// or epoch seconds. Zero or unparseable → `None`.
pub fn parse_name_time(s: &str) -> Option<i64> {
    let s = s.to_ascii_uppercase();
    let t = if let Ok(dt) = NaiveDateTime::parse_from_str(&s, "%Y%m%dT%H%M%SZ") {
        dt.and_utc().timestamp()
    } else if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()?
    } else {
        parse_old_time(&s)?
    };
    (t > 0).then_some(t)
}

fn parse_old_time(s: &str) -> Option<i64> {
    // 2026-11-22T04:38:25+01:00 / ...Z, where ':' may be another separator character.
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    let sep = b[13] as char;
    let norm: String = s
        .chars()
        .enumerate()
        .map(|(i, c)| if i > 10 && c == sep { ':' } else { c })
        .collect();
    if let Ok(dt) = DateTime::parse_from_rfc3339(&norm) {
        return Some(dt.timestamp());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: i64 = 1_700_000_000;
    const T2: i64 = 1_700_003_600;

    #[test]
    fn formats_long_names() {
        let full = SetTimes::Full { time: T1 };
        let inc = SetTimes::Incremental { start: T1, end: T2 };
        let cases = [
            (
                ObjectName::new(full, ObjectKind::Volume(1), true),
                "duplicity-full.20231114T221320Z.vol1.difftar.gpg",
            ),
            (
                ObjectName::new(full, ObjectKind::Manifest, true),
                "duplicity-full.20231114T221320Z.manifest.gpg",
            ),
            (
                ObjectName::new(full, ObjectKind::Signatures, true),
                "duplicity-full-signatures.20231114T221320Z.sigtar.gpg",
            ),
            (
                ObjectName::new(inc, ObjectKind::Volume(12), false),
                "duplicity-inc.20231114T221320Z.to.20231114T231320Z.vol12.difftar.gz",
            ),
            (
                ObjectName::new(inc, ObjectKind::Manifest, false),
                "duplicity-inc.20231114T221320Z.to.20231114T231320Z.manifest",
            ),
            (
                ObjectName::new(inc, ObjectKind::Signatures, false),
                "duplicity-new-signatures.20231114T221320Z.to.20231114T231320Z.sigtar.gz",
            ),
        ];
        for (name, text) in cases {
            assert_eq!(name.format(), text);
            assert_eq!(ObjectName::parse(text).as_ref(), Some(&name), "{text}");
        }
    }

    #[test]
    fn parses_variants_and_ignores_others() {
        let n = ObjectName::parse("duplicity-full.20231114T221320Z.vol3.difftar").unwrap();
        assert_eq!(n.kind, ObjectKind::Volume(3));
        assert!(!n.encrypted && !n.compressed);
        let n = ObjectName::parse("duplicity-full.20231114t221320z.manifest.part").unwrap();
        assert!(n.partial);
        // Unknown extra suffixes still match, as in duplicity.
        assert!(ObjectName::parse("duplicity-full.20231114T221320Z.vol1.difftar.gpg.x").is_some());
        for other in [
            "README",
            "duplicity-full.garbage.vol1.difftar.gpg",
            "duplicity-full.20231114T221320Z.vol.difftar.gpg",
            "duplicity-full.20231114T221320Z.volume1.difftar",
            "duplicity-full.20231114T221320Z.manifestx",
            "duplicity-full.20231114T221320Z.vol1.difftar.gpg#3",
            "flotilla/meta.json",
        ] {
            assert_eq!(ObjectName::parse(other), None, "{other}");
        }
        // epoch seconds and old-style times
        let n = ObjectName::parse("duplicity-full.1700000000.manifest").unwrap();
        assert_eq!(n.set, SetTimes::Full { time: T1 });
        let n = ObjectName::parse("duplicity-full.2023-11-14T23:13:20+01:00.manifest").unwrap();
        assert_eq!(n.set, SetTimes::Full { time: T1 });
    }

    #[test]
    fn parses_short_names() {
        let n = ObjectName::parse("df.tovwrw.1.dt.g").unwrap();
        assert_eq!(n.kind, ObjectKind::Volume(1));
        assert!(n.encrypted);
        let t = i64::from_str_radix("tovwrw", 36).unwrap();
        assert_eq!(n.set, SetTimes::Full { time: t });
        let n = ObjectName::parse("dns.tovwrw.tovwrz.st.g").unwrap();
        assert_eq!(n.kind, ObjectKind::Signatures);
        assert!(!n.set.is_full());
        let n = ObjectName::parse("di.tovwrw.tovwrz.m.g").unwrap();
        assert_eq!(n.kind, ObjectKind::Manifest);
    }

    #[test]
    fn arbitrary_names_never_panic() {
        let pieces = [
            "duplicity-",
            "full",
            "inc",
            ".",
            "to",
            "vol",
            "difftar",
            "manifest",
            "sigtar",
            "signatures",
            "new-",
            "gpg",
            "gz",
            "part",
            "20231114T221320Z",
            "0",
            "99999999999999999999",
            "df",
            "di",
            "dfs",
            "dns",
            "dt",
            "st",
            "m",
            "g",
            "z",
            "p",
            "-",
            "T",
            "é",
            "#",
        ];
        let mut seed = 42u64;
        for _ in 0..20_000 {
            let mut name = String::new();
            for _ in 0..(seed % 9) {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                name.push_str(pieces[(seed >> 33) as usize % pieces.len()]);
            }
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            if let Some(n) = ObjectName::parse(&name) {
                // whatever parses formats to a name that parses to the same set and kind
                let again = ObjectName::parse(&n.format()).expect("formatted names parse");
                assert_eq!((again.set, again.kind), (n.set, n.kind), "{name}");
            }
        }
    }
}
