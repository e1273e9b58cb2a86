//! File selection: `--include` / `--exclude` glob patterns, duplicity style.
//!
//! Patterns are tried in the order given; the first that matches a path decides, and a
//! path no pattern matches is included. A pattern that matches a directory also matches
//! everything below it. An include pattern also matches the directories leading to what
//! it could match, so `--include /srv/www --exclude '**'` backs up `/srv/www` (and the
//! bare directories `/` and `/srv` that contain it) and nothing else.
//!
//! Patterns starting with `/` are absolute paths; patterns starting with `**` match
//! anywhere; any other pattern is relative to the source directory. `*` and `?` do not
//! match `/`; `**` matches across directories; `[...]` classes work as in globs.

use globset::{Glob, GlobBuilder, GlobMatcher};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    Include,
    Exclude,
}

#[derive(Clone, Debug)]
struct Pattern {
    rule: Rule,
    text: String,
    /// Matches the path itself.
    exact: GlobMatcher,
    /// Matches paths below a matched directory.
    below: GlobMatcher,
    /// One matcher per pattern component, to tell whether a directory leads to a match.
    components: Vec<Option<GlobMatcher>>,
}

/// The ordered include/exclude rules of a backup.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    patterns: Vec<Pattern>,
}

#[derive(Debug, thiserror::Error)]
#[error("bad {rule} pattern {pattern:?}: {reason}")]
pub struct PatternError {
    pub rule: &'static str,
    pub pattern: String,
    pub reason: String,
}

fn glob(text: &str) -> Result<GlobMatcher, globset::Error> {
    Ok(GlobBuilder::new(text)
        .literal_separator(true)
        .backslash_escape(true)
        .build()?
        .compile_matcher())
}

impl Selection {
    /// Builds the rules; relative patterns are anchored at `source` (absolute).
    pub fn new(rules: &[(Rule, String)], source: &Path) -> Result<Self, PatternError> {
        let mut patterns = Vec::new();
        for (rule, text) in rules {
            let err = |reason: String| PatternError {
                rule: if *rule == Rule::Include {
                    "--include"
                } else {
                    "--exclude"
                },
                pattern: text.clone(),
                reason,
            };
            if text.is_empty() {
                return Err(err("empty pattern".into()));
            }
            let anchored = if text.starts_with('/') || text.starts_with("**") {
                text.trim_end_matches('/').to_string()
            } else {
                format!("{}/{}", source.display(), text.trim_end_matches('/'))
            };
            let anchored = if anchored.is_empty() {
                "/".to_string()
            } else {
                anchored
            };
            let exact = glob(&anchored).map_err(|e| err(e.to_string()))?;
            let below_text = if anchored == "/" {
                "/**".to_string()
            } else {
                format!("{anchored}/**")
            };
            let below = glob(&below_text).map_err(|e| err(e.to_string()))?;
            let components = anchored
                .split('/')
                .skip(1)
                .map(|c| {
                    if c == "**" {
                        None
                    } else {
                        Glob::new(c).ok().map(|g| g.compile_matcher())
                    }
                })
                .collect();
            patterns.push(Pattern {
                rule: *rule,
                text: text.clone(),
                exact,
                below,
                components,
            });
        }
        Ok(Selection { patterns })
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether `path` (absolute) is backed up. `is_dir` allows an include pattern to
    /// match the directories that lead to it.
    pub fn includes(&self, path: &Path, is_dir: bool) -> bool {
        for p in &self.patterns {
            if p.exact.is_match(path) || p.below.is_match(path) {
                return p.rule == Rule::Include;
            }
            if p.rule == Rule::Include && is_dir && leads_to(&p.components, path) {
                return true;
            }
        }
        true
    }

    /// The patterns as given (for messages).
    pub fn describe(&self) -> Vec<String> {
        self.patterns
            .iter()
            .map(|p| {
                format!(
                    "{} {}",
                    if p.rule == Rule::Include {
                        "include"
                    } else {
                        "exclude"
                    },
                    p.text
                )
            })
            .collect()
    }
}

/// True if directory `path` could contain something the pattern matches: its components
/// match the pattern's leading components (a `**` component matches any rest).
fn leads_to(components: &[Option<GlobMatcher>], path: &Path) -> bool {
    let parts: Vec<&std::ffi::OsStr> = path
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(s) => Some(s),
            _ => None,
        })
        .collect();
    if parts.len() >= components.len() {
        return false;
    }
    for (i, part) in parts.iter().enumerate() {
        match &components[i] {
            None => return true,
            Some(m) => {
                if !m.is_match(Path::new(part)) {
                    return false;
                }
            }
        }
    }
    true
}

/// Absolute form of a path for matching (no symlink resolution beyond `canonicalize` of
/// the source root done by the caller).
pub fn absolute(root: &Path, rel: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(std::ffi::OsStr::from_bytes(rel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(rules: &[(Rule, &str)]) -> Selection {
        let r: Vec<(Rule, String)> = rules.iter().map(|(r, s)| (*r, s.to_string())).collect();
        Selection::new(&r, Path::new("/src")).unwrap()
    }

    #[test]
    fn exclude_dir_excludes_contents() {
        let s = sel(&[(Rule::Exclude, "/src/cache")]);
        assert!(!s.includes(Path::new("/src/cache"), true));
        assert!(!s.includes(Path::new("/src/cache/a/b"), false));
        assert!(s.includes(Path::new("/src/cachex"), false));
        assert!(s.includes(Path::new("/src"), true));
    }

    #[test]
    fn relative_and_anywhere_patterns() {
        let s = sel(&[(Rule::Exclude, "tmp"), (Rule::Exclude, "**/*.tmp")]);
        assert!(!s.includes(Path::new("/src/tmp/x"), false));
        assert!(!s.includes(Path::new("/src/a/b/c.tmp"), false));
        assert!(s.includes(Path::new("/src/a/b/c.txt"), false));
    }

    #[test]
    fn include_then_exclude_everything() {
        let s = sel(&[(Rule::Include, "/src/www/html"), (Rule::Exclude, "**")]);
        assert!(s.includes(Path::new("/src"), true));
        assert!(s.includes(Path::new("/src/www"), true));
        assert!(s.includes(Path::new("/src/www/html"), true));
        assert!(s.includes(Path::new("/src/www/html/index.html"), false));
        assert!(!s.includes(Path::new("/src/www/other"), true));
        assert!(!s.includes(Path::new("/src/etc"), true));
        assert!(!s.includes(Path::new("/src/file"), false));
    }

    #[test]
    fn first_match_wins() {
        let s = sel(&[(Rule::Exclude, "/src/a/secret"), (Rule::Include, "/src/a")]);
        assert!(!s.includes(Path::new("/src/a/secret"), false));
        assert!(s.includes(Path::new("/src/a/public"), false));
    }

    #[test]
    fn bad_pattern_is_reported() {
        let r = vec![(Rule::Exclude, "[".to_string())];
        let e = Selection::new(&r, Path::new("/src")).unwrap_err();
        assert!(e.to_string().contains("--exclude"));
    }
}
