//! Destinations: URLs to `object_store::ObjectStore`s, credentials, and a blocking
//! facade for the engine's worker threads.
//!
//! * `file:///abs/dir` (or duplicity's `file://relative/dir`): object_store's local
//!   file system.
//! * `azure://CONTAINER[/PREFIX]`: object_store's Azure Blob Storage client
//!   ([`azure`] reads the account from the environment or a connection string).
//! * `swift://CONTAINER[/PREFIX]`: our own OpenStack Swift client ([`swift`]).
//!
//! Agents normally hold no account credentials: they get a [`scoped::ScopedCredential`]
//! minted for one container and one kind of job.
//!
//! The engine is synchronous code running on its own threads (tar building, compression
//! and encryption are CPU work); [`BlockingStore`] runs the async object_store calls on
//! a tokio runtime handle from those threads. It must not be used from inside the
//! runtime's own worker threads.

pub mod azure;
mod blocking;
pub mod retry;
pub mod scoped;
pub mod secret;
pub mod swift;

pub use blocking::{BlockingStore, ListedObject, ObjectReader, ObjectWriter};
pub use retry::RetryPolicy;
pub use scoped::{Access, ScopedCredential};
pub use secret::Secret;

use object_store::ObjectStore;
use object_store::prefix::PrefixStore;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Once};
use tokio::runtime::Handle;

/// What went wrong with a destination. [`StorageError::is_retryable`] says whether
/// trying again later can help.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("bad destination URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error(
        "unsupported destination scheme {scheme:?} in {url:?} (supported: file://, azure://, swift://)"
    )]
    UnsupportedScheme { scheme: String, url: String },
    #[error("{destination}: no credentials: {hint}")]
    MissingCredentials { destination: String, hint: String },
    #[error("{destination}: unusable credentials: {reason}")]
    BadCredentials { destination: String, reason: String },
    #[error("{destination}: object {name} not found")]
    NotFound { destination: String, name: String },
    #[error("{destination}: object {name} already exists")]
    AlreadyExists { destination: String, name: String },
    #[error("{destination}: the store refused access to {name:?} (a credentials problem): {error}")]
    Denied {
        destination: String,
        name: String,
        error: Box<object_store::Error>,
    },
    #[error("{destination}: {operation} {name}: {error}")]
    Backend {
        destination: String,
        operation: &'static str,
        name: String,
        error: Box<object_store::Error>,
    },
    #[error("{destination}: {operation} {name}: {error}")]
    Io {
        destination: String,
        operation: &'static str,
        name: String,
        error: io::Error,
    },
}

impl StorageError {
    /// True when the same request may succeed later (network trouble, server errors).
    /// False for what only a person can fix: bad URLs, credentials, missing objects.
    pub fn is_retryable(&self) -> bool {
        match self {
            StorageError::Backend { error, .. } => object_store_error_is_retryable(error),
            StorageError::Io { error, .. } => io_error_is_retryable(error),
            _ => false,
        }
    }

    pub fn into_io(self) -> io::Error {
        let kind = match &self {
            StorageError::NotFound { .. } => io::ErrorKind::NotFound,
            StorageError::Denied { .. } => io::ErrorKind::PermissionDenied,
            StorageError::Io { error, .. } => error.kind(),
            e if e.is_retryable() => io::ErrorKind::TimedOut,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, self)
    }
}

fn io_error_is_retryable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::Interrupted
    )
}

/// Whether an object_store error is transient: network failures, timeouts and server
/// errors are; answers about the request itself (404, 403, 400, ...) are not.
pub fn object_store_error_is_retryable(e: &object_store::Error) -> bool {
    use object_store::Error as E;
    match e {
        E::Generic { source, .. } => {
            let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
            while let Some(err) = cur {
                if let Some(s) = err.downcast_ref::<swift::SwiftError>() {
                    return s.is_retryable();
                }
                if let Some(h) = err.downcast_ref::<object_store::client::HttpError>() {
                    use object_store::client::HttpErrorKind as K;
                    return matches!(
                        h.kind(),
                        K::Connect | K::Request | K::Timeout | K::Interrupted
                    );
                }
                if let Some(io) = err.downcast_ref::<io::Error>() {
                    return io_error_is_retryable(io);
                }
                // object_store's retry error is not nameable; its text carries the status.
                let text = err.to_string();
                if text.contains("status code: 5") || text.contains("error response: 5") {
                    return true;
                }
                cur = err.source();
            }
            false
        }
        _ => false,
    }
}

/// Installs rustls' ring provider as the process default once (reqwest is built
/// without a provider so that only ring is compiled in).
pub fn ensure_tls_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A parsed destination URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A local directory.
    File { path: PathBuf },
    /// A container in an Azure storage account, optionally a "directory" inside it.
    Azure { container: String, prefix: String },
    /// A Swift container, optionally a pseudo-directory inside it.
    Swift { container: String, prefix: String },
}

/// Which credentials open a destination.
#[derive(Clone, Debug, Default)]
pub enum Credentials {
    /// Account credentials from the environment (duplicity's and object_store's names;
    /// see [`azure::AzureAccount::from_lookup`] and [`swift::SwiftConfig::from_env`]).
    #[default]
    FromEnvironment,
    /// Explicit Azure account credentials.
    Azure(azure::AzureAccount),
    /// Explicit Swift credentials.
    Swift(swift::SwiftAuth),
    /// A credential minted for one container and one kind of job.
    Scoped(ScopedCredential),
}

/// How to open a destination.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    pub credentials: Credentials,
    pub retry: RetryPolicy,
}

impl Destination {
    pub fn parse(url: &str) -> Result<Destination, StorageError> {
        let bad = |reason: &str| StorageError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(bad(
                "expected SCHEME://..., e.g. file:///var/backups/host, azure://container, \
                 swift://container/prefix",
            ));
        };
        match scheme {
            "file" => {
                if rest.is_empty() {
                    return Err(bad("no directory given"));
                }
                // file:///abs → "/abs"; duplicity's file://rel/dir → "rel/dir".
                Ok(Destination::File {
                    path: PathBuf::from(rest),
                })
            }
            "azure" | "swift" => {
                let rest = rest.trim_end_matches('/');
                let (container, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if container.is_empty() {
                    return Err(bad("no container given"));
                }
                if prefix
                    .split('/')
                    .any(|p| p == "." || p == ".." || p.is_empty())
                    && !prefix.is_empty()
                {
                    return Err(bad("the prefix has an empty, '.' or '..' part"));
                }
                if scheme == "azure" {
                    check_azure_container_name(container).map_err(|r| bad(&r))?;
                    Ok(Destination::Azure {
                        container: container.to_string(),
                        prefix: prefix.to_string(),
                    })
                } else {
                    if container.len() > 256 {
                        return Err(bad("Swift container names are at most 256 bytes"));
                    }
                    Ok(Destination::Swift {
                        container: container.to_string(),
                        prefix: prefix.to_string(),
                    })
                }
            }
            other => Err(StorageError::UnsupportedScheme {
                scheme: other.to_string(),
                url: url.to_string(),
            }),
        }
    }

    /// The container of a remote destination.
    pub fn container(&self) -> Option<&str> {
        match self {
            Destination::File { .. } => None,
            Destination::Azure { container, .. } | Destination::Swift { container, .. } => {
                Some(container)
            }
        }
    }

    /// The prefix inside the container ("" for none).
    pub fn prefix(&self) -> &str {
        match self {
            Destination::File { .. } => "",
            Destination::Azure { prefix, .. } | Destination::Swift { prefix, .. } => prefix,
        }
    }

    /// Opens the destination, creating a local directory if needed. Remote containers
    /// must exist (see [`Destination::create_container`]).
    pub fn open(&self, options: &OpenOptions) -> Result<Arc<dyn ObjectStore>, StorageError> {
        ensure_tls_provider();
        let label = self.to_string();
        let store: Arc<dyn ObjectStore> = match self {
            Destination::File { path } => {
                std::fs::create_dir_all(path).map_err(|source| StorageError::Io {
                    destination: label.clone(),
                    operation: "create directory",
                    name: path.display().to_string(),
                    error: source,
                })?;
                let abs = std::fs::canonicalize(path).map_err(|source| StorageError::Io {
                    destination: label.clone(),
                    operation: "open",
                    name: path.display().to_string(),
                    error: source,
                })?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&abs).map_err(
                    |source| StorageError::Backend {
                        destination: label,
                        operation: "open",
                        name: abs.display().to_string(),
                        error: Box::new(source),
                    },
                )?;
                return Ok(Arc::new(fs));
            }
            Destination::Azure { container, .. } => {
                let account = match &options.credentials {
                    Credentials::FromEnvironment => azure::AzureAccount::from_env()?,
                    Credentials::Azure(a) => a.clone(),
                    Credentials::Scoped(c) => c.azure_account_for(self)?,
                    Credentials::Swift(_) => return Err(self.wrong_credentials("Swift")),
                };
                Arc::new(account.open(container, &options.retry)?)
            }
            Destination::Swift { .. } => swift_open(self, options)?,
        };
        let prefix = self.prefix();
        Ok(if prefix.is_empty() {
            store
        } else {
            Arc::new(PrefixStore::new(store, prefix))
        })
    }

    /// Creates the container of a remote destination if it does not exist, with
    /// account credentials (a scoped credential cannot). Returns whether it was created.
    pub async fn create_container(&self, options: &OpenOptions) -> Result<bool, StorageError> {
        ensure_tls_provider();
        match self {
            Destination::File { .. } => Ok(false),
            Destination::Azure { container, .. } => {
                let account = match &options.credentials {
                    Credentials::FromEnvironment => azure::AzureAccount::from_env()?,
                    Credentials::Azure(a) => a.clone(),
                    _ => return Ok(false),
                };
                account.create_container(container).await
            }
            Destination::Swift { .. } => swift_create_container(self, options).await,
        }
    }

    fn wrong_credentials(&self, kind: &str) -> StorageError {
        StorageError::BadCredentials {
            destination: self.to_string(),
            reason: format!("{kind} credentials given for this destination"),
        }
    }
}

/// Azure's container naming rules, checked up front for a clear message.
fn check_azure_container_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !(3..=63).contains(&name.len())
        || !ok_chars
        || name.starts_with('-')
        || name.ends_with('-')
        || name.contains("--")
    {
        return Err(format!(
            "Azure container name {name:?} must be 3-63 characters of lowercase letters, \
             digits and single hyphens, starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

impl std::fmt::Display for Destination {
    /// The URL without secrets (safe for logs).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::File { path } => write!(f, "file://{}", path.display()),
            Destination::Azure { container, prefix } if prefix.is_empty() => {
                write!(f, "azure://{container}")
            }
            Destination::Azure { container, prefix } => write!(f, "azure://{container}/{prefix}"),
            Destination::Swift { container, prefix } if prefix.is_empty() => {
                write!(f, "swift://{container}")
            }
            Destination::Swift { container, prefix } => write!(f, "swift://{container}/{prefix}"),
        }
    }
}

fn swift_open(
    dest: &Destination,
    options: &OpenOptions,
) -> Result<Arc<dyn ObjectStore>, StorageError> {
    Ok(Arc::new(swift_store(dest, options)?))
}

/// The Swift client for a `swift://` destination (container level; `open` adds the
/// prefix).
pub(crate) fn swift_store(
    dest: &Destination,
    options: &OpenOptions,
) -> Result<swift::SwiftStore, StorageError> {
    let Destination::Swift { container, .. } = dest else {
        unreachable!("swift_store called for {dest}");
    };
    let config_err = |e: swift::SwiftError| StorageError::MissingCredentials {
        destination: dest.to_string(),
        hint: e.to_string(),
    };
    let store = match &options.credentials {
        Credentials::FromEnvironment => {
            let mut config = swift::SwiftConfig::from_env(container).map_err(config_err)?;
            config.retry = options.retry.clone();
            swift::SwiftStore::new(config)
        }
        Credentials::Swift(auth) => swift::SwiftStore::new(swift::SwiftConfig {
            auth: auth.clone(),
            container: container.clone(),
            storage_url_override: None,
            retry: options.retry.clone(),
        }),
        Credentials::Scoped(c) => {
            let grant = c.swift_grant_for(dest)?;
            swift::SwiftStore::from_temp_url_grant(grant, options.retry.clone())
        }
        Credentials::Azure(_) => return Err(dest.wrong_credentials("Azure")),
    };
    store.map_err(|e| StorageError::BadCredentials {
        destination: dest.to_string(),
        reason: e.to_string(),
    })
}

async fn swift_create_container(
    dest: &Destination,
    options: &OpenOptions,
) -> Result<bool, StorageError> {
    if matches!(options.credentials, Credentials::Scoped(_)) {
        return Ok(false);
    }
    let store = swift_store(dest, options)?;
    store
        .ensure_container()
        .await
        .map_err(|e| StorageError::Backend {
            destination: dest.to_string(),
            operation: "create container",
            name: dest.container().unwrap_or_default().to_string(),
            error: Box::new(e),
        })?;
    // Swift answers 201 or 202 alike for new and existing containers.
    Ok(false)
}

/// Opens a destination URL for blocking use with credentials from the environment.
pub fn open_blocking(url: &str, rt: Handle) -> Result<BlockingStore, StorageError> {
    open_blocking_with(url, &OpenOptions::default(), rt)
}

/// Opens a destination URL for blocking use.
pub fn open_blocking_with(
    url: &str,
    options: &OpenOptions,
    rt: Handle,
) -> Result<BlockingStore, StorageError> {
    let dest = Destination::parse(url)?;
    let store = dest.open(options)?;
    let mut b = BlockingStore::new(store, rt, dest.to_string());
    b.set_retry(options.retry.clone());
    if let Destination::File { path } = &dest {
        b.set_local_dir(std::fs::canonicalize(path).unwrap_or_else(|_| path.clone()));
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn parses_urls() {
        assert_eq!(
            Destination::parse("file:///var/b").unwrap(),
            Destination::File {
                path: "/var/b".into()
            }
        );
        assert_eq!(
            Destination::parse("file://rel/dir").unwrap(),
            Destination::File {
                path: "rel/dir".into()
            }
        );
        assert_eq!(
            Destination::parse("azure://host-a").unwrap(),
            Destination::Azure {
                container: "host-a".into(),
                prefix: "".into()
            }
        );
        let d = Destination::parse("swift://backups/web 01/etc/").unwrap();
        assert_eq!(
            d,
            Destination::Swift {
                container: "backups".into(),
                prefix: "web 01/etc".into()
            }
        );
        assert_eq!(d.to_string(), "swift://backups/web 01/etc");
        for bad in [
            "azure://",
            "azure://UPPER",
            "azure://ab",
            "azure://a--b",
            "swift://",
            "swift://c/../x",
            "swift://c/a//b",
        ] {
            let e = Destination::parse(bad).unwrap_err();
            assert!(matches!(e, StorageError::BadUrl { .. }), "{bad}: {e}");
        }
        assert!(matches!(
            Destination::parse("s3://x"),
            Err(StorageError::UnsupportedScheme { .. })
        ));
        assert!(matches!(
            Destination::parse("/plain/path"),
            Err(StorageError::BadUrl { .. })
        ));
    }

    #[test]
    fn round_trip_on_local_store() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let url = format!("file://{}", dir.path().join("store").display());
        let s = open_blocking(&url, rt.handle().clone()).unwrap();
        let mut w = s.put_writer("big");
        let data: Vec<u8> = (0..20_000_000u32).map(|i| (i % 251) as u8).collect();
        w.write_all(&data).unwrap();
        assert_eq!(w.finish().unwrap(), data.len() as u64);
        let mut w = s.put_writer("aborted");
        w.write_all(b"partial").unwrap();
        drop(w);
        s.put_bytes("small", b"abc".to_vec()).unwrap();
        let mut names: Vec<String> = s.list().unwrap().into_iter().map(|o| o.name).collect();
        names.sort();
        assert_eq!(names, vec!["big", "small"]);
        assert_eq!(s.get_bytes("big").unwrap(), data);
        assert!(matches!(s.get("nope"), Err(StorageError::NotFound { .. })));
        s.delete("small").unwrap();
        assert_eq!(s.list().unwrap().len(), 1);
    }
}
