//! Credentials scoped to one container and one kind of job, minted from account
//! credentials (by the coordinator) so that agents never hold account keys.
//!
//! * Azure: a container service SAS. Backup: read, create, write, list (no delete).
//!   Restore: read, list. Prune: read, list, delete.
//! * Swift: prefix-scoped TempURL signatures for exactly the HTTP methods the job
//!   needs. TempURLs cannot list a container, so the grant carries a snapshot of the
//!   listing taken when it was minted; the engine only lists when a job starts.

use super::azure::AzureAccount;
use super::swift::{SwiftStore, TempUrlGrant};
use super::{Destination, Secret, StorageError};
use chrono::{DateTime, Utc};

/// What a scoped credential allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Create new objects, read and list (a backup reads its chain's manifests and
    /// signatures when its cache is lost). No delete.
    Backup,
    /// Read and list.
    Restore,
    /// Read, list and delete (retention, cleanup).
    Prune,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Backup => "backup",
            Access::Restore => "restore",
            Access::Prune => "prune",
        }
    }

    /// Azure SAS permission letters, in Azure's required order.
    fn azure_permissions(self) -> &'static str {
        match self {
            // `w` is needed for Put Block / Put Block List (multipart uploads): a SAS
            // cannot express create-only for block uploads. Protect against overwrites
            // with blob versioning or an immutability policy on the account.
            Access::Backup => "rcwl",
            Access::Restore => "rl",
            Access::Prune => "rdl",
        }
    }
}

impl std::str::FromStr for Access {
    type Err = String;
    fn from_str(s: &str) -> Result<Access, String> {
        match s {
            "backup" => Ok(Access::Backup),
            "restore" => Ok(Access::Restore),
            "prune" => Ok(Access::Prune),
            other => Err(format!(
                "unknown access {other:?} (backup, restore or prune)"
            )),
        }
    }
}

/// A short-lived credential for one container. Serialized as JSON to hand it to an
/// agent (in a job, or a file for `flotilla-agent --credentials`); it is a secret.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScopedCredential {
    Azure {
        access: Access,
        account: String,
        /// Blob service endpoint (with the account for path-style endpoints).
        endpoint: String,
        container: String,
        expires: DateTime<Utc>,
        sas: Secret,
    },
    Swift {
        access: Access,
        /// Signatures for the job's HTTP methods under the destination's prefix, and
        /// the listing at mint time.
        grant: TempUrlGrant,
    },
}

impl ScopedCredential {
    pub fn access(&self) -> Access {
        match self {
            ScopedCredential::Azure { access, .. } | ScopedCredential::Swift { access, .. } => {
                *access
            }
        }
    }

    pub fn expires(&self) -> DateTime<Utc> {
        match self {
            ScopedCredential::Azure { expires, .. } => *expires,
            ScopedCredential::Swift { grant, .. } => {
                DateTime::from_timestamp(grant.expires as i64, 0).unwrap_or_default()
            }
        }
    }

    /// The destination this credential is for (without a prefix).
    pub fn scope(&self) -> String {
        match self {
            ScopedCredential::Azure { container, .. } => format!("azure://{container}"),
            ScopedCredential::Swift { grant, .. } => {
                let prefix = grant.prefix.trim_end_matches('/');
                if prefix.is_empty() {
                    format!("swift://{}", grant.container)
                } else {
                    format!("swift://{}/{prefix}", grant.container)
                }
            }
        }
    }

    pub fn from_json(text: &str) -> Result<ScopedCredential, StorageError> {
        serde_json::from_str(text).map_err(|e| StorageError::BadCredentials {
            destination: "scoped credential".into(),
            reason: format!("not a Flotilla scoped credential: {e}"),
        })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("credential serializes")
    }

    fn check_scope(&self, dest: &Destination) -> Result<(), StorageError> {
        let ok = match (self, dest) {
            (
                ScopedCredential::Azure { container, .. },
                Destination::Azure { container: c, .. },
            ) => container == c,
            (ScopedCredential::Swift { grant, .. }, Destination::Swift { container, prefix }) => {
                // Every object of the destination must fall under the grant's prefix.
                let objects = if prefix.is_empty() {
                    String::new()
                } else {
                    format!("{prefix}/")
                };
                &grant.container == container && objects.starts_with(&grant.prefix)
            }
            _ => false,
        };
        if !ok {
            return Err(StorageError::BadCredentials {
                destination: dest.to_string(),
                reason: format!("the scoped credential is for {}", self.scope()),
            });
        }
        if self.expires() <= Utc::now() {
            return Err(StorageError::BadCredentials {
                destination: dest.to_string(),
                reason: format!("the scoped credential expired at {}", self.expires()),
            });
        }
        Ok(())
    }

    /// The account settings to open `dest` with this credential.
    pub(super) fn azure_account_for(
        &self,
        dest: &Destination,
    ) -> Result<AzureAccount, StorageError> {
        self.check_scope(dest)?;
        match self {
            ScopedCredential::Azure {
                account,
                endpoint,
                sas,
                ..
            } => Ok(AzureAccount {
                account: account.clone(),
                key: None,
                sas: Some(sas.clone()),
                endpoint: Some(endpoint.clone()),
            }),
            ScopedCredential::Swift { .. } => unreachable!("checked by check_scope"),
        }
    }

    /// The TempURL grant to open `dest` with this credential.
    pub(super) fn swift_grant_for(&self, dest: &Destination) -> Result<TempUrlGrant, StorageError> {
        self.check_scope(dest)?;
        match self {
            ScopedCredential::Swift { grant, .. } => Ok(grant.clone()),
            ScopedCredential::Azure { .. } => unreachable!("checked by check_scope"),
        }
    }
}

/// Mints a credential for `dest`'s container from account credentials, valid for `ttl`.
pub async fn mint(
    dest: &Destination,
    credentials: &super::Credentials,
    access: Access,
    ttl: std::time::Duration,
) -> Result<ScopedCredential, StorageError> {
    let expires = Utc::now()
        + chrono::Duration::from_std(ttl).map_err(|_| StorageError::BadCredentials {
            destination: dest.to_string(),
            reason: "lifetime out of range".into(),
        })?;
    match dest {
        Destination::Azure { container, .. } => {
            let account = match credentials {
                super::Credentials::FromEnvironment => AzureAccount::from_env()?,
                super::Credentials::Azure(a) => a.clone(),
                _ => return Err(not_account(dest)),
            };
            let sas = account.container_sas(container, access.azure_permissions(), expires)?;
            Ok(ScopedCredential::Azure {
                access,
                account: account.account.clone(),
                endpoint: account.blob_endpoint(),
                container: container.clone(),
                expires,
                sas,
            })
        }
        Destination::Swift { container, prefix } => {
            let options = super::OpenOptions {
                credentials: match credentials {
                    super::Credentials::FromEnvironment | super::Credentials::Swift(_) => {
                        credentials.clone()
                    }
                    _ => return Err(not_account(dest)),
                },
                ..Default::default()
            };
            let store: SwiftStore = super::swift_store(dest, &options)?;
            let grant_prefix = if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            };
            let methods: &[&str] = match access {
                Access::Backup => &["GET", "HEAD", "PUT"],
                Access::Restore => &["GET", "HEAD"],
                Access::Prune => &["GET", "HEAD", "DELETE"],
            };
            let grant = store
                .mint_temp_url_grant(&grant_prefix, methods, expires.into(), true)
                .await
                .map_err(|e| StorageError::Backend {
                    destination: dest.to_string(),
                    operation: "mint TempURL grant",
                    name: container.clone(),
                    error: Box::new(e),
                })?;
            Ok(ScopedCredential::Swift { access, grant })
        }
        Destination::File { .. } => Err(StorageError::BadCredentials {
            destination: dest.to_string(),
            reason: "local directories have no scoped credentials".into(),
        }),
    }
}

fn not_account(dest: &Destination) -> StorageError {
    StorageError::BadCredentials {
        destination: dest.to_string(),
        reason: "minting needs the account credentials for this destination".into(),
    }
}
