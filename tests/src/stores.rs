//! Real storage services for the tests: a unique, empty container per test on
//! Azurite or Swift (started by `deploy/test.sh` through `deploy/services/up.sh`,
//! connection settings from `deploy/services/env.sh`), or a scratch directory.
//!
//! A test that needs a service fails (never skips) when its settings are missing.

use flotilla_common::storage::azure::AzureAccount;
use flotilla_common::storage::swift::{SwiftConfig, SwiftStore};
use flotilla_common::storage::{Credentials, Destination, OpenOptions};
use object_store::ObjectStore;
use std::sync::Arc;

/// Which store a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    File,
    Azurite,
    Swift,
}

fn require(var: &str, service: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{service} is not configured ({var} is unset): run the tests with \
             `bash deploy/test.sh`, or `bash deploy/services/up.sh && . deploy/services/env.sh` first"
        )
    })
}

/// A unique lowercase name usable as an Azure or Swift container.
pub fn unique_container(tag: &str) -> String {
    let n: u64 = rand::random();
    format!("t-{tag}-{n:016x}")
}

/// One empty container (or directory) that is removed again on drop.
pub struct TestStore {
    pub service: Service,
    pub destination: Destination,
    /// Environment for an agent process to reach the store with account credentials.
    pub env: Vec<(String, String)>,
    _dir: Option<tempfile::TempDir>,
    pub rt: tokio::runtime::Runtime,
}

impl TestStore {
    /// A fresh store on `service`; `tag` goes into the container name for debugging.
    pub fn new(service: Service, tag: &str) -> TestStore {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        match service {
            Service::File => {
                let dir = tempfile::Builder::new()
                    .prefix("flotilla-store-")
                    .tempdir()
                    .expect("tempdir");
                let destination = Destination::File {
                    path: dir.path().join("store"),
                };
                TestStore {
                    service,
                    destination,
                    env: vec![],
                    _dir: Some(dir),
                    rt,
                }
            }
            Service::Azurite => {
                let cs = require("AZURE_STORAGE_CONNECTION_STRING", "Azurite");
                let account = AzureAccount::from_connection_string(&cs).expect("connection string");
                let container = unique_container(tag);
                rt.block_on(account.create_container(&container))
                    .expect("create Azurite container");
                TestStore {
                    service,
                    destination: Destination::Azure {
                        container,
                        prefix: String::new(),
                    },
                    env: vec![("AZURE_STORAGE_CONNECTION_STRING".into(), cs)],
                    _dir: None,
                    rt,
                }
            }
            Service::Swift => swift_store(rt, tag),
        }
    }

    /// The destination URL.
    pub fn url(&self) -> String {
        self.destination.to_string()
    }

    /// The store opened with the account credentials.
    pub fn open(&self) -> Arc<dyn ObjectStore> {
        let _guard = self.rt.enter();
        if self.service == Service::Swift {
            // Small listing pages, so that pagination is exercised with few objects.
            let container = self.destination.container().expect("container");
            return Arc::new(
                SwiftStore::new(swift_config(container))
                    .expect("Swift store")
                    .with_list_page_size(7),
            );
        }
        self.destination
            .open(&self.account_options())
            .expect("open test store")
    }

    /// Options with this service's account credentials.
    pub fn account_options(&self) -> OpenOptions {
        let credentials = match self.service {
            Service::File => Credentials::FromEnvironment,
            Service::Azurite => Credentials::Azure(
                AzureAccount::from_connection_string(&self.env[0].1).expect("connection string"),
            ),
            Service::Swift => swift_credentials(),
        };
        OpenOptions {
            credentials,
            ..OpenOptions::default()
        }
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Keep the evidence.
            return;
        }
        if let Some(container) = self.destination.container() {
            let container = container.to_string();
            match self.service {
                Service::Azurite => {
                    let account = AzureAccount::from_connection_string(&self.env[0].1).expect("cs");
                    let _ = self.rt.block_on(account.delete_container(&container));
                }
                Service::Swift => swift_delete_container(&self.rt, &container),
                Service::File => {}
            }
        }
    }
}

/// Account credentials for Swift from the environment (duplicity's variable names,
/// exported by deploy/services/env.sh).
fn swift_config(container: &str) -> SwiftConfig {
    require("SWIFT_AUTHURL", "Swift");
    SwiftConfig::from_env(container).expect("Swift settings from the environment")
}

/// The variables an agent (and stock duplicity) needs for the test Swift account.
fn swift_env() -> Vec<(String, String)> {
    let mut env = vec![];
    for var in [
        "SWIFT_AUTHURL",
        "SWIFT_AUTHVERSION",
        "SWIFT_USERNAME",
        "SWIFT_PASSWORD",
        // duplicity's swiftclient service uses v1 auth only with these set too.
        "ST_AUTH",
        "ST_USER",
        "ST_KEY",
    ] {
        env.push((var.to_string(), require(var, "Swift")));
    }
    env
}

fn swift_store(rt: tokio::runtime::Runtime, tag: &str) -> TestStore {
    let container = unique_container(tag);
    let destination = Destination::Swift {
        container: container.clone(),
        prefix: String::new(),
    };
    let options = OpenOptions {
        credentials: swift_credentials(),
        ..OpenOptions::default()
    };
    rt.block_on(destination.create_container(&options))
        .expect("create Swift container");
    TestStore {
        service: Service::Swift,
        destination,
        env: swift_env(),
        _dir: None,
        rt,
    }
}

fn swift_credentials() -> Credentials {
    Credentials::Swift(swift_config("unused").auth)
}

fn swift_delete_container(rt: &tokio::runtime::Runtime, container: &str) {
    if let Ok(store) = SwiftStore::new(swift_config(container)) {
        let _ = rt.block_on(store.delete_container());
    }
}
