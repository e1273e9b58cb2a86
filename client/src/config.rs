//! `agent.toml`: settings of `flotilla-agent` that belong in a file rather than on the
//! command line of a systemd unit (`flotilla-agent --config /etc/flotilla/agent.toml
//! run`). Every field is optional; a flag given on the command line wins.
//!
//! No storage credentials live here: the coordinator sends a credential scoped to the
//! host's container with each job. The passphrase, when policies use symmetric
//! encryption, is in its own file (`passphrase_file`, mode 0600), never in this one.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// State directory: identity, policy cache, signature cache, undelivered results
    /// (default /var/lib/flotilla-agent as root, else $XDG_STATE_HOME/flotilla-agent).
    pub state_dir: Option<PathBuf>,
    /// File holding the passphrase for symmetric encryption and for reading adopted
    /// duplicity chains (default: FLOTILLA_PASSPHRASE / PASSPHRASE from the
    /// environment, if set).
    pub passphrase_file: Option<PathBuf>,
    /// Log filter when neither RUST_LOG nor -v is given, e.g. "info" or
    /// "info,flotilla_client=debug" (default "warn"; the unit's example config says
    /// "info" so that the journal shows each job).
    pub log: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl AgentConfig {
    /// Reads and checks a config file; errors name the file and the line.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<AgentConfig, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let config: AgentConfig = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            invalid(match line {
                Some(l) => format!("line {l}: {}", e.message()),
                None => e.message().to_string(),
            })
        })?;
        if let Some(filter) = &config.log {
            tracing_subscriber::EnvFilter::try_new(filter)
                .map_err(|e| invalid(format!("log = {filter:?}: {e}")))?;
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_optional_and_mistakes_name_the_line() {
        let p = Path::new("/etc/flotilla/agent.toml");
        assert_eq!(AgentConfig::parse(p, "").unwrap(), AgentConfig::default());
        let c = AgentConfig::parse(
            p,
            "state_dir = \"/srv/agent\"\npassphrase_file = \"/etc/flotilla/pass\"\nlog = \"info\"\n",
        )
        .unwrap();
        assert_eq!(c.state_dir.as_deref(), Some(Path::new("/srv/agent")));
        assert_eq!(c.log.as_deref(), Some("info"));
        let e = AgentConfig::parse(p, "# x\nstate_dir = \"/a\"\nstatedir = \"/b\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/etc/flotilla/agent.toml: line 3") && e.contains("statedir"),
            "{e}"
        );
        let e = AgentConfig::parse(p, "log = \"info,=[\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("log = "), "{e}");
    }
}
