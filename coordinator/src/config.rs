//! `coordinator.toml`: every field has a documented default, so an empty file (or none)
//! runs a coordinator on 127.0.0.1:7443 with its state in /var/lib/flotilla.
//!
//! Storage account credentials are never in this file: an `[account.NAME]` table names
//! a file of `KEY=VALUE` lines (the same variables `flotilla-agent` and duplicity read,
//! e.g. `AZURE_STORAGE_CONNECTION_STRING`, `SWIFT_AUTHURL`…) or says to use the
//! coordinator's environment. Policies name accounts; agents only ever receive
//! short-lived credentials scoped to their own container.

use flotilla_common::policy::DestinationSpec;
use flotilla_common::storage::{Credentials, OpenOptions, StorageError, azure, swift};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// gRPC listen address (default 127.0.0.1:7443).
    pub listen: SocketAddr,
    /// Prometheus metrics over plain HTTP at `/metrics` (default: off). Keep it on a
    /// private address: it names every host and its backup state.
    pub metrics_listen: Option<SocketAddr>,
    /// State directory: pki/ (from `flotilla init`) and catalog/ (default /var/lib/flotilla).
    pub state_dir: PathBuf,
    /// Seconds between agent heartbeats (default 15).
    pub heartbeat_secs: u32,
    /// Lifetime of the storage credential minted for one job (default 12h: a job that
    /// runs longer fails its last uploads and is retried).
    pub job_credential_ttl_secs: u64,
    /// Lifetime of the backup credential an agent keeps for scheduled backups while the
    /// coordinator is unreachable (default 7 days). Refreshed on every policy push.
    pub offline_credential_ttl_secs: u64,
    /// How often a failed job is tried in all (default 3).
    pub job_max_attempts: u32,
    /// Seconds before the first retry of a failed job; doubles with each attempt
    /// (default 60).
    pub job_retry_delay_secs: u64,
    /// A running job of an agent that has been disconnected this long is failed (and
    /// retried when the agent returns): the agent died or lost its state (default 600).
    pub lost_job_grace_secs: u64,
    /// How often the coordinator looks for restore tests (policy `restore_test`) that
    /// are due (default 60).
    pub drill_check_secs: u64,
    /// `flotilla report` calls a host offline when it is not connected and has not been
    /// seen for this long (default 3600).
    pub offline_after_secs: u64,
    /// Finished jobs (and processed-result markers) older than this many days are
    /// pruned from the catalog once an hour (default 90; 0 keeps them forever). Sets,
    /// restore evidence, the audit log and the job counters in `/metrics` are kept.
    pub job_history_days: u32,
    /// Storage accounts by the name policies use in `account = "..."`.
    pub account: BTreeMap<String, AccountConfig>,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            listen: "127.0.0.1:7443".parse().expect("literal address"),
            metrics_listen: None,
            state_dir: PathBuf::from("/var/lib/flotilla"),
            heartbeat_secs: 15,
            job_credential_ttl_secs: 12 * 3600,
            offline_credential_ttl_secs: 7 * 86400,
            job_max_attempts: 3,
            job_retry_delay_secs: 60,
            lost_job_grace_secs: 600,
            drill_check_secs: 60,
            offline_after_secs: 3600,
            job_history_days: 90,
            account: BTreeMap::new(),
        }
    }
}

/// Where one storage account's credentials come from.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    /// A file of `KEY=VALUE` lines (mode 0600 recommended) with the account's variables.
    /// Absent: the coordinator's own environment.
    pub env_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("account {account:?}: {error}")]
    Account {
        account: String,
        error: StorageError,
    },
}

impl CoordinatorConfig {
    pub fn load(path: &Path) -> Result<CoordinatorConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            line: e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(1),
            message: e.message().to_string(),
        })
    }

    /// The account credentials for a policy destination (file destinations need none).
    pub fn credentials_for(&self, spec: &DestinationSpec) -> Result<OpenOptions, ConfigError> {
        let (account, kind) = match spec {
            DestinationSpec::File { .. } => return Ok(OpenOptions::default()),
            DestinationSpec::Azure { account, .. } => (account, "azure"),
            DestinationSpec::Swift { account, .. } => (account, "swift"),
        };
        self.credentials_for_account(account, kind)
    }

    /// The credentials of `account` for a destination of `kind` ("azure" or "swift").
    pub fn credentials_for_account(
        &self,
        account: &str,
        kind: &str,
    ) -> Result<OpenOptions, ConfigError> {
        let vars = match self.account.get(account).and_then(|a| a.env_file.as_ref()) {
            Some(path) => Some(read_env_file(path)?),
            None => None,
        };
        let lookup = |name: &str| match &vars {
            Some(v) => v.get(name).cloned(),
            None => std::env::var(name).ok(),
        };
        let wrap = |error| ConfigError::Account {
            account: account.to_string(),
            error,
        };
        let credentials = match kind {
            "azure" => Credentials::Azure(azure::AzureAccount::from_lookup(lookup).map_err(wrap)?),
            _ => Credentials::Swift(
                // The container is checked later, per host; any valid name works here.
                swift::SwiftConfig::from_lookup("flotilla", lookup)
                    .map_err(|e| {
                        wrap(StorageError::MissingCredentials {
                            destination: "swift://".into(),
                            hint: e.to_string(),
                        })
                    })?
                    .auth,
            ),
        };
        Ok(OpenOptions {
            credentials,
            ..OpenOptions::default()
        })
    }
}

/// `KEY=VALUE` lines; `#` comments, blank lines and an optional `export ` are allowed,
/// values may be quoted. Values are secrets: errors name lines, never values.
fn read_env_file(path: &Path) -> Result<BTreeMap<String, String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            return Err(ConfigError::Syntax {
                path: path.to_path_buf(),
                line: i + 1,
                message: "expected KEY=VALUE".into(),
            });
        };
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(v);
        out.insert(k.trim().to_string(), v.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_env_files() {
        let dir = tempfile::tempdir().unwrap();
        let env = dir.path().join("azure.env");
        std::fs::write(
            &env,
            "# Azurite\nexport AZURE_STORAGE_CONNECTION_STRING=\"UseDevelopmentStorage=true\"\n",
        )
        .unwrap();
        let cfg_path = dir.path().join("coordinator.toml");
        std::fs::write(
            &cfg_path,
            format!(
                "listen = \"127.0.0.1:9443\"\n[account.main]\nenv_file = {:?}\n",
                env.display().to_string()
            ),
        )
        .unwrap();
        let cfg = CoordinatorConfig::load(&cfg_path).unwrap();
        assert_eq!(cfg.listen.port(), 9443);
        assert_eq!(cfg.heartbeat_secs, 15);
        let spec = DestinationSpec::Azure {
            account: "main".into(),
            container_prefix: "flotilla-".into(),
        };
        let o = cfg.credentials_for(&spec).unwrap();
        assert!(matches!(o.credentials, Credentials::Azure(_)));

        std::fs::write(&cfg_path, "listen = \"127.0.0.1:9443\"\nlisten_typo = 1\n").unwrap();
        let e = CoordinatorConfig::load(&cfg_path).unwrap_err().to_string();
        assert!(e.contains(":2:") && e.contains("listen_typo"), "{e}");

        std::fs::write(&env, "AZURE_STORAGE_CONNECTION_STRING\n").unwrap();
        let e = cfg.credentials_for(&spec).unwrap_err().to_string();
        assert!(e.contains("azure.env:1"), "{e}");
    }
}
