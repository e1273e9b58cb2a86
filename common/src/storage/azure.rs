//! Azure Blob Storage: account settings from the environment or a connection string,
//! object_store's Azure client, and container SAS tokens for scoped credentials.

use super::{RetryPolicy, Secret, StorageError};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use object_store::ClientOptions;
use object_store::azure::{MicrosoftAzure, MicrosoftAzureBuilder};
use sha2::Sha256;
use std::time::Duration;

/// Azurite's well-known development account (the same on every machine).
pub const EMULATOR_ACCOUNT: &str = "devstoreaccount1";
const EMULATOR_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// SAS version we sign with (supported by Azure and Azurite 3.x).
const SAS_VERSION: &str = "2022-11-02";

/// How to reach and authenticate to one storage account.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureAccount {
    /// Storage account name.
    pub account: String,
    /// Account key (base64). Full access to the account: coordinator side only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Secret>,
    /// A SAS token (query string) instead of the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sas: Option<Secret>,
    /// Blob service endpoint; default `https://ACCOUNT.blob.core.windows.net`. For
    /// Azurite and other path-style endpoints include the account:
    /// `http://127.0.0.1:10000/devstoreaccount1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

impl AzureAccount {
    /// Reads the account from the environment; see [`AzureAccount::from_lookup`].
    pub fn from_env() -> Result<AzureAccount, StorageError> {
        Self::from_lookup(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// Reads the account from variables, in this order:
    /// 1. a connection string: `AZURE_STORAGE_CONNECTION_STRING`, or duplicity's
    ///    `AZURE_CONNECTION_STRING`;
    /// 2. `AZURE_STORAGE_USE_EMULATOR=true`: Azurite's development account at
    ///    `AZURITE_BLOB_STORAGE_URL` (default `http://127.0.0.1:10000`);
    /// 3. an account name (`AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT`, or
    ///    duplicity's `AZURE_ACCOUNT_NAME`) with a key (`AZURE_STORAGE_ACCOUNT_KEY`,
    ///    `AZURE_STORAGE_ACCESS_KEY`, `AZURE_ACCOUNT_KEY`) or a SAS token
    ///    (`AZURE_STORAGE_SAS_TOKEN`, `AZURE_STORAGE_SAS_KEY`,
    ///    `AZURE_SHARED_ACCESS_SIGNATURE`); the endpoint from `AZURE_STORAGE_ENDPOINT`
    ///    or `AZURE_ENDPOINT`.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<AzureAccount, StorageError> {
        let first = |names: &[&str]| names.iter().find_map(|n| get(n));
        if let Some(cs) = first(&["AZURE_STORAGE_CONNECTION_STRING", "AZURE_CONNECTION_STRING"]) {
            return Self::from_connection_string(&cs);
        }
        if first(&["AZURE_STORAGE_USE_EMULATOR", "AZURE_USE_EMULATOR"])
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
        {
            let base = get("AZURITE_BLOB_STORAGE_URL")
                .unwrap_or_else(|| "http://127.0.0.1:10000".to_string());
            return Ok(Self::emulator(&base));
        }
        let account = first(&[
            "AZURE_STORAGE_ACCOUNT_NAME",
            "AZURE_STORAGE_ACCOUNT",
            "AZURE_ACCOUNT_NAME",
        ]);
        let key = first(&[
            "AZURE_STORAGE_ACCOUNT_KEY",
            "AZURE_STORAGE_ACCESS_KEY",
            "AZURE_ACCOUNT_KEY",
        ]);
        let sas = first(&[
            "AZURE_STORAGE_SAS_TOKEN",
            "AZURE_STORAGE_SAS_KEY",
            "AZURE_SHARED_ACCESS_SIGNATURE",
        ]);
        let endpoint = first(&["AZURE_STORAGE_ENDPOINT", "AZURE_ENDPOINT"]);
        let Some(account) = account else {
            return Err(StorageError::MissingCredentials {
                destination: "azure://".into(),
                hint: "set AZURE_STORAGE_CONNECTION_STRING (or AZURE_CONNECTION_STRING), or \
                       AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY or \
                       AZURE_STORAGE_SAS_TOKEN"
                    .into(),
            });
        };
        if key.is_none() && sas.is_none() {
            return Err(StorageError::MissingCredentials {
                destination: "azure://".into(),
                hint: format!(
                    "account {account} has no key or SAS: set AZURE_STORAGE_ACCOUNT_KEY or \
                     AZURE_STORAGE_SAS_TOKEN"
                ),
            });
        }
        let acc = AzureAccount {
            account,
            key: key.map(Secret::new),
            sas: sas.map(Secret::new),
            endpoint,
        };
        acc.check()?;
        Ok(acc)
    }

    /// Azurite's development account at `base` (e.g. `http://127.0.0.1:10000`).
    pub fn emulator(base: &str) -> AzureAccount {
        AzureAccount {
            account: EMULATOR_ACCOUNT.into(),
            key: Some(Secret::new(EMULATOR_KEY)),
            sas: None,
            endpoint: Some(format!("{}/{EMULATOR_ACCOUNT}", base.trim_end_matches('/'))),
        }
    }

    /// Parses an Azure Storage connection string (`AccountName=...;AccountKey=...;
    /// BlobEndpoint=...`, `SharedAccessSignature=...`, `UseDevelopmentStorage=true`).
    pub fn from_connection_string(cs: &str) -> Result<AzureAccount, StorageError> {
        let bad = |reason: String| StorageError::BadCredentials {
            destination: "azure://".into(),
            reason: format!("connection string: {reason}"),
        };
        let mut account = None;
        let mut key = None;
        let mut sas = None;
        let mut blob_endpoint = None;
        let mut protocol = "https".to_string();
        let mut suffix = "core.windows.net".to_string();
        let mut dev = false;
        let mut dev_proxy = None;
        for part in cs.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((k, v)) = part.split_once('=') else {
                // Never echo the part: it may be a key.
                return Err(bad("a part is not KEY=VALUE".into()));
            };
            match k.trim() {
                "AccountName" => account = Some(v.to_string()),
                "AccountKey" => key = Some(v.to_string()),
                "SharedAccessSignature" => sas = Some(v.to_string()),
                "BlobEndpoint" => blob_endpoint = Some(v.trim_end_matches('/').to_string()),
                "DefaultEndpointsProtocol" => protocol = v.to_string(),
                "EndpointSuffix" => suffix = v.to_string(),
                "UseDevelopmentStorage" => dev = v.eq_ignore_ascii_case("true"),
                "DevelopmentStorageProxyUri" => {
                    dev_proxy = Some(v.trim_end_matches('/').to_string())
                }
                // Other services' endpoints do not concern us.
                _ => {}
            }
        }
        if dev {
            let base = dev_proxy.unwrap_or_else(|| "http://127.0.0.1:10000".to_string());
            return Ok(Self::emulator(&base));
        }
        let account = match (account, &blob_endpoint) {
            (Some(a), _) => a,
            // A SAS connection string may carry only the endpoint.
            (None, Some(ep)) => account_from_endpoint(ep)
                .ok_or_else(|| bad("no AccountName and none in BlobEndpoint".into()))?,
            (None, None) => return Err(bad("no AccountName".into())),
        };
        if key.is_none() && sas.is_none() {
            return Err(bad("neither AccountKey nor SharedAccessSignature".into()));
        }
        let endpoint = blob_endpoint.or_else(|| {
            (protocol != "https" || suffix != "core.windows.net")
                .then(|| format!("{protocol}://{account}.blob.{suffix}"))
        });
        let acc = AzureAccount {
            account,
            key: key.map(Secret::new),
            sas: sas.map(Secret::new),
            endpoint,
        };
        acc.check()?;
        Ok(acc)
    }

    fn check(&self) -> Result<(), StorageError> {
        if let Some(key) = &self.key
            && BASE64.decode(key.expose()).is_err()
        {
            return Err(StorageError::BadCredentials {
                destination: format!("azure:// (account {})", self.account),
                reason: "the account key is not valid base64".into(),
            });
        }
        if let Some(ep) = &self.endpoint
            && url::Url::parse(ep).is_err()
        {
            return Err(StorageError::BadCredentials {
                destination: format!("azure:// (account {})", self.account),
                reason: format!("endpoint {ep:?} is not a URL"),
            });
        }
        Ok(())
    }

    /// The blob service URL, including the account for path-style endpoints.
    pub fn blob_endpoint(&self) -> String {
        self.endpoint
            .clone()
            .unwrap_or_else(|| format!("https://{}.blob.core.windows.net", self.account))
    }

    /// object_store's client for one container.
    pub fn open(
        &self,
        container: &str,
        retry: &RetryPolicy,
    ) -> Result<MicrosoftAzure, StorageError> {
        let endpoint = self.blob_endpoint();
        let options = ClientOptions::new()
            .with_allow_http(endpoint.starts_with("http://"))
            .with_connect_timeout(retry.connect_timeout)
            .with_timeout(retry.request_timeout.max(Duration::from_secs(1)));
        let mut b = MicrosoftAzureBuilder::new()
            .with_account(&self.account)
            .with_container_name(container)
            .with_endpoint(endpoint)
            .with_client_options(options)
            .with_retry(retry.to_object_store());
        if let Some(sas) = &self.sas {
            b = b.with_sas_authorization(parse_sas(sas.expose()));
        } else if let Some(key) = &self.key {
            b = b.with_access_key(key.expose());
        }
        b.build().map_err(|e| StorageError::BadCredentials {
            destination: format!("azure://{container}"),
            reason: e.to_string(),
        })
    }

    /// A service SAS for one container, signed with the account key: `permissions` in
    /// Azure's letters and order (`r` read, `c` create, `w` write, `d` delete, `l` list),
    /// valid from a little before now (clock skew) until `expires`.
    pub fn container_sas(
        &self,
        container: &str,
        permissions: &str,
        expires: DateTime<Utc>,
    ) -> Result<Secret, StorageError> {
        let Some(key) = &self.key else {
            return Err(StorageError::MissingCredentials {
                destination: format!("azure://{container}"),
                hint: "minting a SAS needs the account key".into(),
            });
        };
        let start = Utc::now() - chrono::Duration::minutes(5);
        sign_container_sas(
            &self.account,
            key.expose(),
            container,
            permissions,
            start,
            expires,
            SAS_VERSION,
        )
        .map_err(|reason| StorageError::BadCredentials {
            destination: format!("azure://{container}"),
            reason,
        })
    }
}

impl AzureAccount {
    /// Creates `container` if it does not exist (object_store never creates
    /// containers). Returns whether it was created.
    pub async fn create_container(&self, container: &str) -> Result<bool, StorageError> {
        let status = self
            .container_request(reqwest::Method::PUT, container)
            .await?;
        match status.as_u16() {
            201 => Ok(true),
            409 => Ok(false),
            _ => Err(self.container_error(container, "create container", status)),
        }
    }

    /// Deletes `container` and everything in it.
    pub async fn delete_container(&self, container: &str) -> Result<(), StorageError> {
        let status = self
            .container_request(reqwest::Method::DELETE, container)
            .await?;
        match status.as_u16() {
            200..=299 | 404 => Ok(()),
            _ => Err(self.container_error(container, "delete container", status)),
        }
    }

    fn container_error(
        &self,
        container: &str,
        operation: &'static str,
        status: reqwest::StatusCode,
    ) -> StorageError {
        let destination = format!("azure://{container}");
        if matches!(status.as_u16(), 401 | 403) {
            StorageError::BadCredentials {
                destination,
                reason: format!(
                    "{operation}: the account refused ({status}): check the key or SAS"
                ),
            }
        } else {
            StorageError::Io {
                destination,
                operation,
                name: container.to_string(),
                error: std::io::Error::other(format!("HTTP {status}")),
            }
        }
    }

    async fn container_request(
        &self,
        method: reqwest::Method,
        container: &str,
    ) -> Result<reqwest::StatusCode, StorageError> {
        super::ensure_tls_provider();
        let destination = format!("azure://{container}");
        // An account SAS for container operations, or the SAS we were given.
        let sas = match &self.key {
            Some(key) => {
                let now = Utc::now();
                sign_account_sas(
                    &self.account,
                    key.expose(),
                    "cd",
                    now - chrono::Duration::minutes(5),
                    now + chrono::Duration::minutes(30),
                )
                .map_err(|reason| StorageError::BadCredentials {
                    destination: destination.clone(),
                    reason,
                })?
            }
            None => self
                .sas
                .clone()
                .ok_or_else(|| StorageError::MissingCredentials {
                    destination: destination.clone(),
                    hint: "no account key or SAS".into(),
                })?,
        };
        let mut url =
            url::Url::parse(&self.blob_endpoint()).map_err(|e| StorageError::BadCredentials {
                destination: destination.clone(),
                reason: format!("endpoint: {e}"),
            })?;
        url.path_segments_mut()
            .map_err(|_| StorageError::BadCredentials {
                destination: destination.clone(),
                reason: "endpoint cannot have a path".into(),
            })?
            .pop_if_empty()
            .push(container);
        url.query_pairs_mut()
            .append_pair("restype", "container")
            .extend_pairs(parse_sas(sas.expose()));
        let io = |e: reqwest::Error| StorageError::Io {
            destination: destination.clone(),
            operation: "container request",
            name: container.to_string(),
            // Without the URL: it carries the signature.
            error: std::io::Error::other(e.without_url()),
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(io)?;
        let resp = client
            .request(method, url)
            .header("x-ms-version", SAS_VERSION)
            .header("content-length", "0")
            .send()
            .await
            .map_err(io)?;
        Ok(resp.status())
    }
}

/// Signs an account SAS for the blob service's container-level operations.
fn sign_account_sas(
    account: &str,
    key_b64: &str,
    permissions: &str,
    start: DateTime<Utc>,
    expires: DateTime<Utc>,
) -> Result<Secret, String> {
    let key = BASE64
        .decode(key_b64)
        .map_err(|_| "the account key is not valid base64".to_string())?;
    let st = start.to_rfc3339_opts(SecondsFormat::Secs, true);
    let se = expires.to_rfc3339_opts(SecondsFormat::Secs, true);
    // account, sp, ss, srt, st, se, sip, spr, sv, ses, then a final newline.
    let string_to_sign =
        format!("{account}\n{permissions}\nb\nc\n{st}\n{se}\n\nhttps,http\n{SAS_VERSION}\n\n");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
    mac.update(string_to_sign.as_bytes());
    let sig = BASE64.encode(mac.finalize().into_bytes());
    Ok(Secret::new(
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("sv", SAS_VERSION)
            .append_pair("ss", "b")
            .append_pair("srt", "c")
            .append_pair("sp", permissions)
            .append_pair("st", &st)
            .append_pair("se", &se)
            .append_pair("spr", "https,http")
            .append_pair("sig", &sig)
            .finish(),
    ))
}

/// `https://acct.blob.core.windows.net` → `acct`; `http://host:port/acct` → `acct`.
fn account_from_endpoint(endpoint: &str) -> Option<String> {
    let u = url::Url::parse(endpoint).ok()?;
    let first_path = u.path_segments()?.find(|s| !s.is_empty());
    if let Some(p) = first_path {
        return Some(p.to_string());
    }
    let host = u.host_str()?;
    host.split_once(".blob.").map(|(a, _)| a.to_string())
}

/// The decoded query pairs of a SAS token (with or without a leading `?`).
pub fn parse_sas(sas: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(sas.trim_start_matches('?').as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Signs a container service SAS (string-to-sign of versions 2020-12-06 and later).
fn sign_container_sas(
    account: &str,
    key_b64: &str,
    container: &str,
    permissions: &str,
    start: DateTime<Utc>,
    expires: DateTime<Utc>,
    version: &str,
) -> Result<Secret, String> {
    let key = BASE64
        .decode(key_b64)
        .map_err(|_| "the account key is not valid base64".to_string())?;
    let st = start.to_rfc3339_opts(SecondsFormat::Secs, true);
    let se = expires.to_rfc3339_opts(SecondsFormat::Secs, true);
    let protocols = "https,http";
    let resource = format!("/blob/{account}/{container}");
    // sp, st, se, resource, si, sip, spr, sv, sr, snapshot time, ses, rscc, rscd, rsce,
    // rscl, rsct.
    let fields = [
        permissions,
        &st,
        &se,
        &resource,
        "",
        "",
        protocols,
        version,
        "c",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
    ];
    let string_to_sign = fields.join("\n");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
    mac.update(string_to_sign.as_bytes());
    let sig = BASE64.encode(mac.finalize().into_bytes());
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("st", &st)
        .append_pair("se", &se)
        .append_pair("sp", permissions)
        .append_pair("spr", protocols)
        .append_pair("sv", version)
        .append_pair("sr", "c")
        .append_pair("sig", &sig)
        .finish();
    Ok(Secret::new(query))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sas_matches_the_azure_sdk() {
        // Reference from azure-storage-blob 12.x:
        // generate_container_sas('devstoreaccount1', 'host-a', account_key=EMULATOR_KEY,
        //   permission=ContainerSasPermissions(read=True, create=True, list=True),
        //   start=2026-11-22T10:00:00Z, expiry=2026-11-22T22:00:00Z, protocol='https,http')
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let sas = sign_container_sas(
            EMULATOR_ACCOUNT,
            EMULATOR_KEY,
            "host-a",
            "rcl",
            t("2026-11-22T10:00:00Z"),
            t("2026-11-22T22:00:00Z"),
            "2026-10-06",
        )
        .unwrap();
        let pairs = parse_sas(sas.expose());
        let sig = pairs.iter().find(|(k, _)| k == "sig").unwrap();
        assert_eq!(sig.1, "UNpj7MwGOMNICi4zw+TMnlvJQTl9AzIQXqLAXWWD2PQ=");
    }

    #[test]
    fn connection_strings() {
        let a = AzureAccount::from_connection_string(&format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={EMULATOR_KEY};\
             BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
        ))
        .unwrap();
        assert_eq!(a.blob_endpoint(), "http://127.0.0.1:10000/devstoreaccount1");
        assert_eq!(a.account, "devstoreaccount1");
        let a = AzureAccount::from_connection_string(
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=AAAA;EndpointSuffix=core.chinacloudapi.cn",
        )
        .unwrap();
        assert_eq!(a.blob_endpoint(), "https://acct.blob.core.chinacloudapi.cn");
        let a = AzureAccount::from_connection_string(
            "BlobEndpoint=https://acct.blob.core.windows.net/;SharedAccessSignature=sv=2022-11-02&sig=x",
        )
        .unwrap();
        assert_eq!(a.account, "acct");
        assert!(a.sas.is_some());
        let a = AzureAccount::from_connection_string("UseDevelopmentStorage=true").unwrap();
        assert_eq!(a.blob_endpoint(), "http://127.0.0.1:10000/devstoreaccount1");
        for bad in [
            "AccountName=a",
            "AccountKey=AAAA",
            "garbage",
            "AccountName=a;AccountKey=not base64!",
        ] {
            let e = AzureAccount::from_connection_string(bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains("azure://"), "{e}");
            assert!(!e.contains("not base64!"), "key echoed: {e}");
        }
    }

    #[test]
    fn environment_names() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |n: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == n)
                    .map(|(_, v)| v.to_string())
            }
        };
        let a = AzureAccount::from_lookup(env(&[
            ("AZURE_ACCOUNT_NAME", "acct"),
            ("AZURE_ACCOUNT_KEY", "AAAA"),
        ]))
        .unwrap();
        assert_eq!(a.account, "acct");
        assert_eq!(a.blob_endpoint(), "https://acct.blob.core.windows.net");
        let a = AzureAccount::from_lookup(env(&[
            ("AZURE_STORAGE_ACCOUNT_NAME", "acct"),
            ("AZURE_STORAGE_SAS_TOKEN", "?sv=1&sig=a%2Bb"),
            ("AZURE_STORAGE_ENDPOINT", "http://127.0.0.1:1/acct"),
        ]))
        .unwrap();
        assert_eq!(parse_sas(a.sas.as_ref().unwrap().expose())[1].1, "a+b");
        let e = AzureAccount::from_lookup(env(&[("AZURE_STORAGE_ACCOUNT_NAME", "acct")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("AZURE_STORAGE_ACCOUNT_KEY"), "{e}");
        let e = AzureAccount::from_lookup(env(&[])).unwrap_err().to_string();
        assert!(e.contains("AZURE_STORAGE_CONNECTION_STRING"), "{e}");
        let a = AzureAccount::from_lookup(env(&[
            ("AZURE_STORAGE_USE_EMULATOR", "true"),
            ("AZURITE_BLOB_STORAGE_URL", "http://127.0.0.1:10999/"),
        ]))
        .unwrap();
        assert_eq!(a.blob_endpoint(), "http://127.0.0.1:10999/devstoreaccount1");
    }
}
