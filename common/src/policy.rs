//! Fleet policies: one TOML file of destinations, keys and policies that select hosts
//! by labels (see DESIGN.md, "Policies"). Parsing validates everything a coordinator
//! needs before storing a revision, and every error names the file and line.

use crate::timespec::parse_interval;
use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

/// A problem in a policy file, located.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct PolicyError {
    pub file: String,
    /// 1-based; 0 when the problem has no single place.
    pub line: usize,
    pub message: String,
}

/// Where a policy's backups go. The container of a host is `container_prefix` + host
/// id (one container per host, so a scoped credential covers exactly one host).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum DestinationSpec {
    Azure {
        /// Storage account; its key is in the coordinator's config, never here.
        account: String,
        #[serde(default = "default_container_prefix")]
        container_prefix: String,
    },
    Swift {
        /// Names the credentials entry in the coordinator's config.
        #[serde(default)]
        account: String,
        #[serde(default = "default_container_prefix")]
        container_prefix: String,
    },
    File {
        /// Directory on the agent's host; each host gets `PATH/PREFIXHOST`.
        path: String,
        #[serde(default = "default_container_prefix")]
        container_prefix: String,
    },
}

fn default_container_prefix() -> String {
    "flotilla-".into()
}

impl DestinationSpec {
    /// The destination URL of one host.
    pub fn url_for(&self, host_id: &str) -> String {
        match self {
            DestinationSpec::Azure {
                container_prefix, ..
            } => format!("azure://{container_prefix}{host_id}"),
            DestinationSpec::Swift {
                container_prefix, ..
            } => format!("swift://{container_prefix}{host_id}"),
            DestinationSpec::File {
                path,
                container_prefix,
            } => format!(
                "file://{}/{container_prefix}{host_id}",
                path.trim_end_matches('/')
            ),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    destination: BTreeMap<String, Spanned<DestinationSpec>>,
    #[serde(default)]
    key: BTreeMap<String, Spanned<RawKey>>,
    #[serde(default)]
    policy: BTreeMap<String, Spanned<RawPolicy>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    #[serde(default)]
    public_key_file: Option<String>,
    /// The armored key inline (the CLI inlines files before sending).
    #[serde(default)]
    public_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    select: BTreeMap<String, String>,
    sources: Spanned<Vec<String>>,
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default)]
    schedule: Option<Spanned<String>>,
    #[serde(default)]
    jitter: Option<Spanned<String>>,
    #[serde(default)]
    full_if_older_than: Option<Spanned<String>>,
    #[serde(default)]
    keep_full_chains: Option<Spanned<u32>>,
    #[serde(default)]
    remove_older_than: Option<Spanned<String>>,
    #[serde(default)]
    volsize_mb: Option<Spanned<u32>>,
    destination: Spanned<String>,
    #[serde(default)]
    encrypt_to: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    max_age: Option<Spanned<String>>,
    /// e.g. 20 (MB/s); 0 or absent: unlimited.
    #[serde(default)]
    bandwidth_limit_mb: Option<Spanned<u32>>,
    /// Restore test interval, e.g. "7D".
    #[serde(default)]
    restore_test: Option<Spanned<String>>,
    /// Host id of the drill host (default: each host drills its own backups).
    #[serde(default)]
    restore_test_on: Option<Spanned<String>>,
}

/// What to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Retention {
    KeepFullChains(u32),
    RemoveOlderThanSecs(u64),
}

/// One validated policy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Policy {
    pub name: String,
    /// Line of `[policy.NAME]`.
    pub line: usize,
    /// Labels a host must all have (an empty selector matches every host).
    pub select: BTreeMap<String, String>,
    pub sources: Vec<String>,
    pub exclude: Vec<String>,
    /// Cron expression (5 fields), `None`: on demand only.
    pub schedule: Option<String>,
    pub jitter_secs: u64,
    pub full_if_older_than_secs: Option<u64>,
    pub retention: Option<Retention>,
    pub volsize_mb: u32,
    pub destination: String,
    /// Key names, resolved in [`PolicySet::keys`].
    pub encrypt_to: Vec<String>,
    pub max_age_secs: Option<u64>,
    pub bandwidth_limit_mb: Option<u32>,
    /// Scheduled restore tests (drills): at most this long between two.
    #[serde(default)]
    pub restore_test_secs: Option<u64>,
    /// The host that runs the drills; it restores with its own key (the coordinator
    /// holds none). `None`: each host drills its own backups.
    #[serde(default)]
    pub restore_test_on: Option<String>,
}

impl Policy {
    /// Whether the host with these labels is selected.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.select.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// A whole validated policy file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PolicySet {
    pub destinations: BTreeMap<String, DestinationSpec>,
    /// Key name → armored public key.
    pub keys: BTreeMap<String, String>,
    pub policies: BTreeMap<String, Policy>,
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

impl PolicySet {
    /// Parses and validates `text` (named `file` in errors). `load_key` reads a
    /// `public_key_file` (relative to the policy file) and returns the armored key.
    pub fn parse(
        file: &str,
        text: &str,
        load_key: impl Fn(&str) -> Result<String, String>,
    ) -> Result<PolicySet, Vec<PolicyError>> {
        let err = |offset: usize, message: String| PolicyError {
            file: file.to_string(),
            line: line_of(text, offset),
            message,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            vec![err(offset, e.message().to_string())]
        })?;
        let mut errors = Vec::new();
        let destinations: BTreeMap<String, DestinationSpec> = raw
            .destination
            .into_iter()
            .map(|(k, v)| (k, v.into_inner()))
            .collect();
        let mut keys = BTreeMap::new();
        for (name, spanned) in raw.key {
            let at = spanned.span().start;
            let k = spanned.into_inner();
            let armored = match (k.public_key, k.public_key_file) {
                (Some(inline), None) => Ok(inline),
                (None, Some(path)) => {
                    load_key(&path).map_err(|e| format!("key {name:?}: cannot read {path:?}: {e}"))
                }
                (Some(_), Some(_)) => Err(format!(
                    "key {name:?}: give public_key or public_key_file, not both"
                )),
                (None, None) => Err(format!("key {name:?}: public_key_file is missing")),
            };
            match armored {
                Ok(a) => match crate::crypto::PublicKey::from_bytes(a.as_bytes()) {
                    Ok(_) => {
                        keys.insert(name, a);
                    }
                    Err(e) => errors.push(err(
                        at,
                        format!("key {name:?}: not an OpenPGP public key: {e}"),
                    )),
                },
                Err(m) => errors.push(err(at, m)),
            }
        }
        let mut policies = BTreeMap::new();
        for (name, spanned) in raw.policy {
            let at = spanned.span().start;
            let p = spanned.into_inner();
            let interval =
                |v: &Option<Spanned<String>>, field: &str, errors: &mut Vec<PolicyError>| {
                    let v = v.as_ref()?;
                    match parse_interval(v.get_ref()) {
                        Ok(secs) if secs > 0 => Some(secs as u64),
                        Ok(_) => {
                            errors.push(err(
                                v.span().start,
                                format!("policy {name:?}: {field} must be positive"),
                            ));
                            None
                        }
                        Err(e) => {
                            errors.push(err(
                                v.span().start,
                                format!("policy {name:?}: {field}: {e}"),
                            ));
                            None
                        }
                    }
                };
            let jitter_secs = interval(&p.jitter, "jitter", &mut errors).unwrap_or(0);
            let full_if_older_than_secs =
                interval(&p.full_if_older_than, "full_if_older_than", &mut errors);
            let max_age_secs = interval(&p.max_age, "max_age", &mut errors);
            let restore_test_secs = interval(&p.restore_test, "restore_test", &mut errors);
            if let (Some(on), None) = (&p.restore_test_on, &p.restore_test) {
                errors.push(err(
                    on.span().start,
                    format!(
                        "policy {name:?}: restore_test_on needs restore_test (how often, e.g. \"7D\")"
                    ),
                ));
            }
            let remove_older = interval(&p.remove_older_than, "remove_older_than", &mut errors);
            let retention = match (&p.keep_full_chains, remove_older) {
                (Some(k), None) if *k.get_ref() == 0 => {
                    errors.push(err(
                        k.span().start,
                        format!("policy {name:?}: keep_full_chains must be at least 1"),
                    ));
                    None
                }
                (Some(k), None) => Some(Retention::KeepFullChains(*k.get_ref())),
                (None, Some(s)) => Some(Retention::RemoveOlderThanSecs(s)),
                (None, None) => None,
                (Some(k), Some(_)) => {
                    errors.push(err(
                        k.span().start,
                        format!("policy {name:?}: keep_full_chains and remove_older_than exclude each other"),
                    ));
                    None
                }
            };
            if let Some(s) = &p.schedule
                && let Err(e) = croner::parser::CronParser::new().parse(s.get_ref())
            {
                errors.push(err(
                    s.span().start,
                    format!(
                        "policy {name:?}: schedule {:?} is not a cron expression: {e}",
                        s.get_ref()
                    ),
                ));
            }
            if p.sources.get_ref().is_empty() {
                errors.push(err(
                    p.sources.span().start,
                    format!("policy {name:?}: sources is empty"),
                ));
            }
            for s in p.sources.get_ref() {
                if !s.starts_with('/') {
                    errors.push(err(
                        p.sources.span().start,
                        format!("policy {name:?}: source {s:?} is not an absolute path"),
                    ));
                }
            }
            if !destinations.contains_key(p.destination.get_ref()) {
                errors.push(err(
                    p.destination.span().start,
                    format!(
                        "policy {name:?}: unknown destination {:?} (defined: {})",
                        p.destination.get_ref(),
                        list(destinations.keys())
                    ),
                ));
            }
            let (encrypt_to, encrypt_at) = match p.encrypt_to {
                Some(e) => (e.get_ref().clone(), e.span().start),
                None => (Vec::new(), at),
            };
            for k in &encrypt_to {
                if !keys.contains_key(k)
                    && !errors
                        .iter()
                        .any(|e| e.message.starts_with(&format!("key {k:?}")))
                {
                    errors.push(err(
                        encrypt_at,
                        format!(
                            "policy {name:?}: unknown key {k:?} in encrypt_to (defined: {})",
                            list(keys.keys())
                        ),
                    ));
                }
            }
            let volsize_mb = match &p.volsize_mb {
                Some(v) if *v.get_ref() == 0 => {
                    errors.push(err(
                        v.span().start,
                        format!("policy {name:?}: volsize_mb must be at least 1"),
                    ));
                    200
                }
                Some(v) => *v.get_ref(),
                None => 200,
            };
            policies.insert(
                name.clone(),
                Policy {
                    name,
                    line: line_of(text, at),
                    select: p.select,
                    sources: p.sources.into_inner(),
                    exclude: p.exclude,
                    schedule: p.schedule.map(Spanned::into_inner),
                    jitter_secs,
                    full_if_older_than_secs,
                    retention,
                    volsize_mb,
                    destination: p.destination.into_inner(),
                    encrypt_to,
                    max_age_secs,
                    bandwidth_limit_mb: p
                        .bandwidth_limit_mb
                        .map(Spanned::into_inner)
                        .filter(|&b| b > 0),
                    restore_test_secs,
                    restore_test_on: p.restore_test_on.map(Spanned::into_inner),
                },
            );
        }
        if errors.is_empty() {
            Ok(PolicySet {
                destinations,
                keys,
                policies,
            })
        } else {
            errors.sort_by_key(|e| e.line);
            Err(errors)
        }
    }

    /// The policy of each host (`None`: unprotected). A host selected by two policies
    /// is an error naming both and their lines.
    pub fn assign<'a>(
        &self,
        file: &str,
        hosts: impl IntoIterator<Item = (&'a str, &'a BTreeMap<String, String>)>,
    ) -> Result<BTreeMap<String, Option<String>>, Vec<PolicyError>> {
        let mut out = BTreeMap::new();
        let mut errors = Vec::new();
        for (host, labels) in hosts {
            let matching: Vec<&Policy> = self
                .policies
                .values()
                .filter(|p| p.selects(labels))
                .collect();
            match matching.as_slice() {
                [] => {
                    out.insert(host.to_string(), None);
                }
                [one] => {
                    out.insert(host.to_string(), Some(one.name.clone()));
                }
                [a, b, ..] => errors.push(PolicyError {
                    file: file.to_string(),
                    line: b.line,
                    message: format!(
                        "host {host} is selected by policy {:?} (line {}) and policy {:?} (line {}): \
                         make the selectors exclusive",
                        a.name, a.line, b.name, b.line
                    ),
                }),
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }
}

fn list<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = names.map(String::as_str).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = include_str!("../testdata/crypto/ed.pub.asc");

    fn load(_: &str) -> Result<String, String> {
        Ok(KEY.to_string())
    }

    const GOOD: &str = r#"
[destination.azure-main]
kind = "azure"
account = "mystorageaccount"

[key.fleet-2026]
public_key_file = "keys/fleet-2026.asc"

[policy.web]
select = { role = "web", env = "prod" }
sources = ["/etc", "/var/www"]
exclude = ["/var/www/cache", "**/*.tmp"]
schedule = "5 0 * * *"
jitter = "30m"
full_if_older_than = "7D"
keep_full_chains = 4
volsize_mb = 200
destination = "azure-main"
encrypt_to = ["fleet-2026"]
max_age = "26h"

[policy.db]
select = { role = "db" }
sources = ["/var/lib/postgresql"]
schedule = "*/15 * * * *"
remove_older_than = "90D"
destination = "azure-main"
encrypt_to = ["fleet-2026"]
"#;

    #[test]
    fn parses_the_design_example() {
        let set = PolicySet::parse("p.toml", GOOD, load).unwrap();
        let web = &set.policies["web"];
        assert_eq!(web.line, 9);
        assert_eq!(web.jitter_secs, 1800);
        assert_eq!(web.full_if_older_than_secs, Some(7 * 86400));
        assert_eq!(web.retention, Some(Retention::KeepFullChains(4)));
        assert_eq!(web.max_age_secs, Some(26 * 3600));
        assert_eq!(
            set.policies["db"].retention,
            Some(Retention::RemoveOlderThanSecs(90 * 86400))
        );
        assert_eq!(
            set.destinations["azure-main"].url_for("web-01"),
            "azure://flotilla-web-01"
        );
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let text = include_str!("../../deploy/policies.example.toml");
        let set = PolicySet::parse("policies.example.toml", text, load)
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            set.policies.keys().map(String::as_str).collect::<Vec<_>>(),
            ["db", "web"]
        );
    }

    #[test]
    fn errors_name_the_line() {
        let bad = GOOD
            .replace(r#"schedule = "5 0 * * *""#, r#"schedule = "61 0 * * *""#)
            .replace(
                r#"destination = "azure-main"
encrypt_to = ["fleet-2026"]
max_age"#,
                r#"destination = "nowhere"
encrypt_to = ["fleet-2025"]
max_age"#,
            );
        let errors = PolicySet::parse("p.toml", &bad, load).unwrap_err();
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 3, "{text:?}");
        assert!(
            text[0].starts_with("p.toml:13: ") && text[0].contains("cron"),
            "{text:?}"
        );
        assert!(
            text[1].starts_with("p.toml:18: ")
                && text[1].contains("unknown destination \"nowhere\""),
            "{text:?}"
        );
        assert!(
            text[2].starts_with("p.toml:19: ") && text[2].contains("unknown key \"fleet-2025\""),
            "{text:?}"
        );
        let e = PolicySet::parse("p.toml", "[policy.x]\nsources = [\"/\"]\nbogus = 1\n", load)
            .unwrap_err();
        assert!(e[0].to_string().starts_with("p.toml:"), "{e:?}");
        assert!(e[0].message.contains("bogus"), "{e:?}");
    }

    #[test]
    fn a_host_in_two_policies_is_refused() {
        let two = GOOD.replace(
            r#"select = { role = "db" }"#,
            r#"select = { env = "prod" }"#,
        );
        let set = PolicySet::parse("p.toml", &two, load).unwrap();
        let web: BTreeMap<String, String> =
            [("role".into(), "web".into()), ("env".into(), "prod".into())].into();
        let other: BTreeMap<String, String> = [("role".into(), "mail".into())].into();
        let e = set.assign("p.toml", [("web-01", &web)]).unwrap_err();
        assert!(
            e[0].message.contains("web-01") && e[0].message.contains("\"db\""),
            "{e:?}"
        );
        let ok = set.assign("p.toml", [("mail-01", &other)]).unwrap();
        assert_eq!(ok["mail-01"], None);
    }
}
