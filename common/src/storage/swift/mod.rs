//! OpenStack Swift as an `object_store::ObjectStore`.
//!
//! Two modes:
//! * **account mode** ([`SwiftStore::new`]): TempAuth (v1), Keystone v2.0/v3 or a
//!   pre-authenticated token; re-authenticates once when a token is refused (401).
//! * **scoped mode** ([`SwiftStore::from_temp_url_grant`]): no token, every request is
//!   a prefix-based TempURL. The server enforces the grant's methods; requests outside
//!   its prefix are refused locally. TempURLs cannot list a container, so listings come
//!   from the grant's snapshot plus what this store wrote itself.
//!
//! Large objects: in account mode multipart uploads become Static Large Objects whose
//! segments live in `{dir}/.segments/{file}/{upload id}/` (hidden from listings), with
//! nested manifests above the cluster's `max_manifest_segments`. Swift 2.30's tempurl
//! middleware rewrites the query string to its own parameters (so
//! `?multipart-manifest=put` is dropped and the manifest would be stored as a plain
//! JSON object) and refuses `X-Object-Manifest` and `X-Copy-From`; scoped multipart
//! uploads are therefore one streamed (chunked) PUT, limited to the cluster's
//! `max_file_size` (5 GiB by default) and not resumable.

mod auth;
mod config;
mod error;
mod http;
mod multipart;
mod tempurl;

pub use config::{SwiftAuth, SwiftConfig};
pub use error::SwiftError;
pub use tempurl::{GrantedObject, TempUrlGrant, prefix_hmac_body, sign as sign_temp_url};

use crate::storage::{RetryPolicy, Secret};
use auth::Session;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use error::{Ctx, to_os};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use http::{ReqCtx, describe, header_str, read_body, status_error};
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, CopyMode, CopyOptions, GetOptions, GetRange, GetResult,
    GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use reqwest::Method;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// The segment area's directory name; any name with this component is hidden.
pub(crate) const SEGMENTS_DIR: &str = ".segments";
const DEFAULT_PAGE_SIZE: usize = 10_000;
const DEFAULT_MAX_SEGMENTS: usize = 1000;

/// Path bytes kept as they are: unreserved characters and '/'.
const PATH_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');
/// Query values: unreserved characters only.
const QUERY_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A Swift container as an object store. Cheap to clone.
#[derive(Clone)]
pub struct SwiftStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    container: String,
    destination: String,
    retry: RetryPolicy,
    mode: Mode,
    list_page_size: AtomicUsize,
    /// 0: use the cluster's limit.
    max_segments_override: AtomicUsize,
    info: tokio::sync::OnceCell<ClusterInfo>,
}

enum Mode {
    Account {
        auth: SwiftAuth,
        storage_url_override: Option<String>,
        session: Mutex<Option<Session>>,
        /// Held while authenticating, so concurrent requests share one login.
        auth_lock: tokio::sync::Mutex<()>,
        generation: AtomicU64,
    },
    Scoped {
        grant: TempUrlGrant,
        /// Objects written (Some) or deleted (None) through this store since the grant.
        written: Mutex<BTreeMap<String, Option<GrantedObject>>>,
    },
}

#[derive(Clone, Debug)]
struct ClusterInfo {
    max_manifest_segments: usize,
    allowed_digests: Vec<String>,
}

impl fmt::Debug for SwiftStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match &self.inner.mode {
            Mode::Account { .. } => "account",
            Mode::Scoped { .. } => "temp-url grant",
        };
        f.debug_struct("SwiftStore")
            .field("container", &self.inner.container)
            .field("mode", &mode)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for SwiftStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.destination)
    }
}

/// Where a request goes.
#[derive(Clone, Copy, Debug)]
enum Target<'a> {
    Account,
    Container,
    Object(&'a str),
}

/// One request, rebuildable for each attempt.
struct Request<'a> {
    method: Method,
    target: Target<'a>,
    query: Vec<(&'static str, String)>,
    headers: Vec<(String, String)>,
    body: Option<Bytes>,
    /// Statuses retried in addition to 5xx/408/429.
    extra_retry: &'static [u16],
}

impl<'a> Request<'a> {
    fn new(method: Method, target: Target<'a>) -> Self {
        Request {
            method,
            target,
            query: Vec::new(),
            headers: Vec::new(),
            body: None,
            extra_retry: &[],
        }
    }
    fn query(mut self, k: &'static str, v: impl Into<String>) -> Self {
        self.query.push((k, v.into()));
        self
    }
    fn header(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
    fn body(mut self, b: Bytes) -> Self {
        self.body = Some(b);
        self
    }
}

fn build_client(retry: &RetryPolicy) -> Result<reqwest::Client, SwiftError> {
    // reqwest is built without a default crypto provider; ring is the workspace's.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(retry.connect_timeout)
        .read_timeout(retry.read_timeout)
        // A redirect would carry X-Auth-Token to wherever it points.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| SwiftError::Config(format!("HTTP client: {}", describe(&e))))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn enc_path(s: &str) -> String {
    utf8_percent_encode(s, PATH_SET).to_string()
}

fn enc_query(s: &str) -> String {
    utf8_percent_encode(s, QUERY_SET).to_string()
}

pub(crate) fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    tempurl::hex(&md5::Md5::digest(data))
}

fn hidden(name: &str) -> bool {
    name.split('/').any(|c| c == SEGMENTS_DIR)
}

/// Swift's prefix for object_store's segment-wise prefix (`a/b` matches `a/b/x`).
fn list_prefix(prefix: Option<&Path>) -> String {
    match prefix.map(|p| p.as_ref()) {
        None | Some("") => String::new(),
        Some(p) => format!("{p}/"),
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An entry of a container listing.
enum Entry {
    Object(GrantedObject),
    Subdir(String),
}

impl GrantedObject {
    fn to_meta(&self) -> Option<ObjectMeta> {
        match Path::parse(&self.name) {
            Ok(location) => Some(ObjectMeta {
                location,
                last_modified: self.last_modified,
                size: self.size,
                e_tag: self.e_tag.clone(),
                version: None,
            }),
            Err(e) => {
                // A foreign name object_store cannot represent ("a//b"): skip it.
                tracing::warn!("Swift: skipping object {:?} in listing: {e}", self.name);
                None
            }
        }
    }
}

impl SwiftStore {
    /// A store for `config.container`; authenticates lazily on the first request.
    pub fn new(config: SwiftConfig) -> Result<SwiftStore, SwiftError> {
        config::validate_container(&config.container)?;
        let client = build_client(&config.retry)?;
        Ok(SwiftStore::with_mode(
            client,
            config.container,
            config.retry,
            Mode::Account {
                auth: config.auth,
                storage_url_override: config.storage_url_override,
                session: Mutex::new(None),
                auth_lock: tokio::sync::Mutex::new(()),
                generation: AtomicU64::new(0),
            },
        ))
    }

    /// A store limited to what a TempURL grant allows.
    pub fn from_temp_url_grant(
        grant: TempUrlGrant,
        retry: RetryPolicy,
    ) -> Result<SwiftStore, SwiftError> {
        config::validate_container(&grant.container)?;
        if grant.signatures.is_empty() {
            return Err(SwiftError::Config(
                "the TempURL grant has no signatures".into(),
            ));
        }
        url::Url::parse(&grant.storage_url).map_err(|e| {
            SwiftError::Config(format!("the grant's storage URL is not a URL: {e}"))
        })?;
        let client = build_client(&retry)?;
        Ok(SwiftStore::with_mode(
            client,
            grant.container.clone(),
            retry,
            Mode::Scoped {
                grant,
                written: Mutex::new(BTreeMap::new()),
            },
        ))
    }

    fn with_mode(
        client: reqwest::Client,
        container: String,
        retry: RetryPolicy,
        mode: Mode,
    ) -> SwiftStore {
        SwiftStore {
            inner: Arc::new(Inner {
                client,
                destination: format!("swift://{container}"),
                container,
                retry,
                mode,
                list_page_size: AtomicUsize::new(DEFAULT_PAGE_SIZE),
                max_segments_override: AtomicUsize::new(0),
                info: tokio::sync::OnceCell::new(),
            }),
        }
    }

    /// Listing page size (for tests of pagination).
    #[doc(hidden)]
    pub fn with_list_page_size(self, n: usize) -> Self {
        self.inner.list_page_size.store(n.max(1), Ordering::Relaxed);
        self
    }

    /// Overrides the cluster's `slo.max_manifest_segments` (for tests of nesting).
    #[doc(hidden)]
    pub fn with_max_manifest_segments(self, n: usize) -> Self {
        self.inner
            .max_segments_override
            .store(n.max(2), Ordering::Relaxed);
        self
    }

    /// Replaces the cached token with a bogus one (for tests of re-authentication).
    /// Does nothing before the first request has authenticated.
    #[doc(hidden)]
    pub fn poison_token_for_tests(&self) {
        if let Mode::Account { session, .. } = &self.inner.mode
            && let Some(s) = lock(session).as_mut()
        {
            s.token = Secret::new("AUTH_tk00000000000000000000000000000000");
        }
    }

    fn ctx(&self, method: &Method, path: &str) -> ReqCtx {
        ReqCtx {
            destination: self.inner.destination.clone(),
            method: method.to_string(),
            path: path.to_string(),
        }
    }

    fn target_path(&self, target: Target<'_>) -> String {
        match target {
            Target::Account => "(account)".into(),
            Target::Container => format!("(container {})", self.inner.container),
            Target::Object(name) => name.to_string(),
        }
    }

    /// The cached session, or a new one.
    async fn session(&self) -> Result<Session, SwiftError> {
        let Mode::Account {
            auth,
            storage_url_override,
            session,
            auth_lock,
            generation,
        } = &self.inner.mode
        else {
            return Err(self.scoped_unsupported("authentication"));
        };
        if let Some(s) = lock(session).clone() {
            return Ok(s);
        }
        let _guard = auth_lock.lock().await;
        if let Some(s) = lock(session).clone() {
            return Ok(s);
        }
        let (url, token) = auth::authenticate(
            &self.inner.client,
            &self.inner.retry,
            auth,
            &self.inner.destination,
        )
        .await?;
        let s = Session {
            storage_url: storage_url_override.clone().unwrap_or(url),
            token,
            generation: generation.fetch_add(1, Ordering::Relaxed) + 1,
        };
        *lock(session) = Some(s.clone());
        Ok(s)
    }

    fn invalidate(&self, generation: u64) {
        if let Mode::Account { session, .. } = &self.inner.mode {
            let mut s = lock(session);
            if s.as_ref().map(|s| s.generation) == Some(generation) {
                *s = None;
            }
        }
    }

    fn scoped_unsupported(&self, operation: &str) -> SwiftError {
        SwiftError::Unsupported {
            destination: self.inner.destination.clone(),
            operation: operation.to_string(),
            reason: "a TempURL grant only covers object requests".into(),
        }
    }

    fn url(&self, storage_url: &str, req: &Request<'_>, extra_query: &[(&str, String)]) -> String {
        let mut url = storage_url.trim_end_matches('/').to_string();
        match req.target {
            Target::Account => {}
            Target::Container => {
                url.push('/');
                url.push_str(&enc_path(&self.inner.container));
            }
            Target::Object(name) => {
                url.push('/');
                url.push_str(&enc_path(&self.inner.container));
                url.push('/');
                url.push_str(&enc_path(name));
            }
        }
        let mut sep = '?';
        for (k, v) in req
            .query
            .iter()
            .map(|(k, v)| (*k, v))
            .chain(extra_query.iter().map(|(k, v)| (*k, v)))
        {
            url.push(sep);
            url.push_str(k);
            url.push('=');
            url.push_str(&enc_query(v));
            sep = '&';
        }
        url
    }

    fn builder(
        &self,
        url: &str,
        token: Option<&Secret>,
        req: &Request<'_>,
    ) -> reqwest::RequestBuilder {
        let mut b = self.inner.client.request(req.method.clone(), url);
        if let Some(t) = token {
            b = b.header("X-Auth-Token", t.expose());
        }
        for (k, v) in &req.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        match &req.body {
            // Swift wants a length on PUT/POST even when empty; reqwest sends none
            // for an empty body.
            Some(body) if body.is_empty() => b.header("Content-Length", "0").body(Bytes::new()),
            Some(body) => b.body(body.clone()),
            None if matches!(req.method, Method::PUT | Method::POST) => {
                b.header("Content-Length", "0").body(Bytes::new())
            }
            None => b,
        }
    }

    /// Sends `req` with retries and (account mode) one re-authentication on 401.
    /// Returns the response whatever its status.
    async fn execute(&self, req: &Request<'_>) -> Result<reqwest::Response, SwiftError> {
        let ctx = self.ctx(&req.method, &self.target_path(req.target));
        match &self.inner.mode {
            Mode::Scoped { grant, .. } => {
                let Target::Object(name) = req.target else {
                    return Err(self.scoped_unsupported(&format!("{} {}", req.method, ctx.path)));
                };
                if !name.starts_with(&grant.prefix) {
                    return Err(SwiftError::OutOfScope {
                        destination: self.inner.destination.clone(),
                        method: req.method.to_string(),
                        path: name.to_string(),
                        reason: format!(
                            "outside the prefix {:?} the scoped credential covers",
                            grant.prefix
                        ),
                    });
                }
                // A method without its own signature still goes to the server, signed
                // for another method, so the refusal is the server's.
                let sig = grant
                    .signatures
                    .get(req.method.as_str())
                    .or_else(|| grant.signatures.values().next())
                    .map(|s| s.expose().to_string())
                    .unwrap_or_default();
                let extra = [
                    ("temp_url_sig", sig),
                    ("temp_url_expires", grant.expires.to_string()),
                    ("temp_url_prefix", grant.prefix.clone()),
                ];
                let url = self.url(&grant.storage_url, req, &extra);
                http::send(&self.inner.retry, &ctx, req.extra_retry, || {
                    self.builder(&url, None, req)
                })
                .await
            }
            Mode::Account { auth, .. } => {
                let mut reauthenticated = false;
                loop {
                    let s = self.session().await?;
                    let url = self.url(&s.storage_url, req, &[]);
                    let resp = http::send(&self.inner.retry, &ctx, req.extra_retry, || {
                        self.builder(&url, Some(&s.token), req)
                    })
                    .await?;
                    if resp.status().as_u16() == 401
                        && auth.can_reauthenticate()
                        && !reauthenticated
                    {
                        // The token expired or was revoked: log in again, once.
                        tracing::debug!("{}: token refused; re-authenticating", ctx.destination);
                        self.invalidate(s.generation);
                        reauthenticated = true;
                        continue;
                    }
                    return Ok(resp);
                }
            }
        }
    }

    /// `execute`, then turn a non-success status into an error.
    async fn execute_ok(&self, req: &Request<'_>) -> Result<reqwest::Response, SwiftError> {
        let resp = self.execute(req).await?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(self.status_error(req, resp).await)
    }

    async fn status_error(&self, req: &Request<'_>, resp: reqwest::Response) -> SwiftError {
        let path = self.target_path(req.target);
        let ctx = self.ctx(&req.method, &path);
        let status = resp.status().as_u16();
        let err = status_error(&ctx, resp).await;
        let excerpt = match &err {
            SwiftError::Http { excerpt, .. } => excerpt.clone(),
            _ => String::new(),
        };
        match (&self.inner.mode, status) {
            (Mode::Scoped { .. }, 401 | 403) => SwiftError::OutOfScope {
                destination: self.inner.destination.clone(),
                method: req.method.to_string(),
                path,
                reason: format!(
                    "HTTP {status}: the scoped credential does not allow {} on {} \
                     (or it has expired){excerpt}",
                    req.method, self.inner.destination
                ),
            },
            (Mode::Account { auth, .. }, 401) => SwiftError::Credentials {
                destination: self.inner.destination.clone(),
                method: req.method.to_string(),
                path,
                status,
                what: if auth.can_reauthenticate() {
                    "a fresh token was refused too; check the account's credentials".into()
                } else {
                    "the pre-authenticated token is invalid or expired".into()
                },
                excerpt,
            },
            (Mode::Account { .. }, 403) => SwiftError::Credentials {
                destination: self.inner.destination.clone(),
                method: req.method.to_string(),
                path,
                status,
                what: "the credentials do not grant access to this container".into(),
                excerpt,
            },
            _ => err,
        }
    }

    fn os_err(&self, e: SwiftError, path: &str, ctx: Ctx) -> object_store::Error {
        to_os(e, path, ctx)
    }

    /// The cluster's `/info` (cached); defaults when it is unavailable.
    async fn info(&self) -> ClusterInfo {
        self.inner
            .info
            .get_or_init(|| async {
                let defaults = ClusterInfo {
                    max_manifest_segments: DEFAULT_MAX_SEGMENTS,
                    allowed_digests: vec!["sha1".into(), "sha256".into(), "sha512".into()],
                };
                match self.fetch_info().await {
                    Ok(v) => ClusterInfo {
                        max_manifest_segments: v
                            .pointer("/slo/max_manifest_segments")
                            .and_then(Value::as_u64)
                            .map(|n| n as usize)
                            .unwrap_or(defaults.max_manifest_segments),
                        allowed_digests: v
                            .pointer("/tempurl/allowed_digests")
                            .and_then(Value::as_array)
                            .map(|a| {
                                a.iter()
                                    .filter_map(|d| d.as_str().map(String::from))
                                    .collect()
                            })
                            .unwrap_or(defaults.allowed_digests),
                    },
                    Err(e) => {
                        tracing::warn!("{}: cluster /info unavailable ({e}); using defaults", self);
                        defaults
                    }
                }
            })
            .await
            .clone()
    }

    async fn fetch_info(&self) -> Result<Value, SwiftError> {
        let storage_url = match &self.inner.mode {
            Mode::Scoped { grant, .. } => grant.storage_url.clone(),
            Mode::Account { .. } => self.session().await?.storage_url,
        };
        // /info sits at the proxy root, before the /v1/ of the account URL.
        let base = match storage_url.find("/v1/") {
            Some(i) => &storage_url[..i],
            None => storage_url.trim_end_matches('/'),
        };
        let url = format!("{base}/info");
        let ctx = self.ctx(&Method::GET, "/info");
        let resp = http::send(&self.inner.retry, &ctx, &[], || self.inner.client.get(&url)).await?;
        if !resp.status().is_success() {
            return Err(status_error(&ctx, resp).await);
        }
        let body = read_body(&self.inner.retry, &ctx, resp).await?;
        serde_json::from_slice(&body).map_err(|e| ctx.bad_response(format!("invalid JSON: {e}")))
    }

    async fn max_manifest_segments(&self) -> usize {
        match self.inner.max_segments_override.load(Ordering::Relaxed) {
            0 => self.info().await.max_manifest_segments.max(2),
            n => n,
        }
    }

    /// PUT the container; fine if it exists.
    pub async fn ensure_container(&self) -> object_store::Result<()> {
        let req = Request::new(Method::PUT, Target::Container);
        self.execute_ok(&req)
            .await
            .map(|_| ())
            .map_err(|e| self.os_err(e, "", Ctx::Plain))
    }

    /// Deletes every object (segments included) and then the container (for tests).
    pub async fn delete_container(&self) -> object_store::Result<()> {
        for attempt in 0..5 {
            let mut marker = String::new();
            loop {
                let (entries, next) = self
                    .list_page("", &marker, false, true)
                    .await
                    .map_err(|e| self.os_err(e, "", Ctx::Plain))?;
                for entry in entries {
                    if let Entry::Object(o) = entry {
                        let req = Request::new(Method::DELETE, Target::Object(&o.name));
                        match self.execute_ok(&req).await {
                            Ok(_) | Err(SwiftError::Http { status: 404, .. }) => {}
                            Err(e) => return Err(self.os_err(e, &o.name, Ctx::Plain)),
                        }
                    }
                }
                match next {
                    Some(m) => marker = m,
                    None => break,
                }
            }
            let req = Request::new(Method::DELETE, Target::Container);
            match self.execute_ok(&req).await {
                Ok(_) | Err(SwiftError::Http { status: 404, .. }) => return Ok(()),
                // 409: listing not yet updated (or a concurrent writer); try again.
                Err(SwiftError::Http { status: 409, .. }) if attempt < 4 => {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(e) => return Err(self.os_err(e, "", Ctx::Plain)),
            }
        }
        Ok(())
    }

    /// The account's TempURL key, setting a random one if it has none (needs a token
    /// that may change account metadata).
    pub async fn temp_url_key(&self) -> object_store::Result<Secret> {
        let map = |e| self.os_err(e, "", Ctx::Plain);
        let resp = self
            .execute_ok(&Request::new(Method::HEAD, Target::Account))
            .await
            .map_err(map)?;
        if let Some(k) = header_str(&resp, "x-account-meta-temp-url-key").filter(|k| !k.is_empty())
        {
            return Ok(Secret::new(k));
        }
        let key: [u8; 32] = rand::random();
        let key = Secret::new(tempurl::hex(&key));
        let req = Request::new(Method::POST, Target::Account)
            .header("X-Account-Meta-Temp-URL-Key", key.expose());
        self.execute_ok(&req).await.map_err(map)?;
        Ok(key)
    }

    /// A prefix-scoped TempURL grant for this container: one signature per method in
    /// `methods`, valid until `expires`, over `prefix` (a plain string prefix of
    /// object names, e.g. `backups/host1/`). With `with_listing`, the objects under
    /// `prefix` now (listed with this store's credentials) go into the grant.
    pub async fn mint_temp_url_grant(
        &self,
        prefix: &str,
        methods: &[&str],
        expires: SystemTime,
        with_listing: bool,
    ) -> object_store::Result<TempUrlGrant> {
        let map = |e| self.os_err(e, prefix, Ctx::Plain);
        if matches!(self.inner.mode, Mode::Scoped { .. }) {
            return Err(map(self.scoped_unsupported("minting a TempURL grant")));
        }
        let key = self.temp_url_key().await?;
        let session = self.session().await.map_err(map)?;
        let allowed = self.info().await.allowed_digests;
        let digest = tempurl::PREFERRED_DIGESTS
            .iter()
            .find(|d| allowed.iter().any(|a| a == *d))
            .ok_or_else(|| {
                map(SwiftError::Config(format!(
                    "the cluster allows no TempURL digest this client knows ({allowed:?})"
                )))
            })?
            .to_string();
        let account_path = url::Url::parse(&session.storage_url)
            .map_err(|e| map(SwiftError::Config(format!("storage URL: {e}"))))?
            .path()
            .to_string();
        let account_path = percent_decode_str(&account_path)
            .decode_utf8_lossy()
            .into_owned();
        let expires = unix_secs(expires);
        let mut signatures = BTreeMap::new();
        for m in methods {
            let m = m.to_ascii_uppercase();
            let body = tempurl::prefix_hmac_body(
                &m,
                expires,
                &account_path,
                &self.inner.container,
                prefix,
            );
            let sig = tempurl::sign(&digest, key.expose().as_bytes(), &body)
                .ok_or_else(|| map(SwiftError::Config(format!("unknown digest {digest}"))))?;
            signatures.insert(m, Secret::new(sig));
        }
        let listing = if with_listing {
            let mut all = Vec::new();
            let mut marker = String::new();
            loop {
                let (entries, next) = self
                    .list_page(prefix, &marker, false, false)
                    .await
                    .map_err(map)?;
                all.extend(entries.into_iter().filter_map(|e| match e {
                    Entry::Object(o) => Some(o),
                    Entry::Subdir(_) => None,
                }));
                match next {
                    Some(m) => marker = m,
                    None => break,
                }
            }
            Some(all)
        } else {
            None
        };
        Ok(TempUrlGrant {
            storage_url: session.storage_url,
            container: self.inner.container.clone(),
            prefix: prefix.to_string(),
            expires,
            digest,
            signatures,
            listing,
        })
    }

    /// One page of the container listing under the raw `prefix`, after `marker`.
    /// Returns the entries and the marker of the next page (None after a short page).
    async fn list_page(
        &self,
        prefix: &str,
        marker: &str,
        delimiter: bool,
        include_hidden: bool,
    ) -> Result<(Vec<Entry>, Option<String>), SwiftError> {
        let limit = self.inner.list_page_size.load(Ordering::Relaxed);
        let mut req = Request::new(Method::GET, Target::Container)
            .query("format", "json")
            .query("limit", limit.to_string())
            .header("Accept", "application/json");
        if !prefix.is_empty() {
            req = req.query("prefix", prefix);
        }
        if !marker.is_empty() {
            req = req.query("marker", marker);
        }
        if delimiter {
            req = req.query("delimiter", "/");
        }
        let ctx = self.ctx(&Method::GET, &format!("(listing {prefix:?})"));
        let resp = match self.execute_ok(&req).await {
            Ok(r) => r,
            Err(SwiftError::Http { status: 404, .. }) => {
                return Err(ctx.http(404, b"container not found"));
            }
            Err(e) => return Err(e),
        };
        if resp.status().as_u16() == 204 {
            return Ok((Vec::new(), None));
        }
        let body = read_body(&self.inner.retry, &ctx, resp).await?;
        let items: Vec<Value> = serde_json::from_slice(&body)
            .map_err(|e| ctx.bad_response(format!("invalid listing JSON: {e}")))?;
        let full = items.len() >= limit;
        let mut last = None;
        let mut out = Vec::with_capacity(items.len());
        for item in &items {
            if let Some(sub) = item.get("subdir").and_then(Value::as_str) {
                // Resume after everything under this subdir, as Swift itself does.
                let mut m = sub.to_string();
                if m.ends_with('/') {
                    m.pop();
                    m.push('0');
                }
                last = Some(m);
                if include_hidden || !hidden(sub.trim_end_matches('/')) {
                    out.push(Entry::Subdir(sub.to_string()));
                }
                continue;
            }
            let name = item
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| ctx.bad_response("listing entry without a name"))?;
            last = Some(name.to_string());
            if !include_hidden && hidden(name) {
                continue;
            }
            let size = item.get("bytes").and_then(Value::as_u64).unwrap_or(0);
            let last_modified = item
                .get("last_modified")
                .and_then(Value::as_str)
                .and_then(parse_listing_time)
                .unwrap_or_else(|| DateTime::<Utc>::from(SystemTime::UNIX_EPOCH));
            let e_tag = item.get("hash").and_then(Value::as_str).map(String::from);
            out.push(Entry::Object(GrantedObject {
                name: name.to_string(),
                size,
                last_modified,
                e_tag,
            }));
        }
        Ok((out, if full { last } else { None }))
    }

    /// All objects under the raw prefix, after `offset` (exclusive).
    fn list_stream(
        &self,
        prefix: String,
        offset: String,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        if let Mode::Scoped { .. } = &self.inner.mode {
            let this = self.clone();
            return stream::once(async move { this.scoped_listing(&prefix) })
                .map_ok(move |v| {
                    let offset = offset.clone();
                    stream::iter(
                        v.into_iter()
                            .filter(move |o| o.name > offset)
                            .filter_map(|o| o.to_meta())
                            .map(Ok),
                    )
                })
                .try_flatten()
                .boxed();
        }
        let this = self.clone();
        stream::try_unfold(Some(offset), move |marker| {
            let this = this.clone();
            let prefix = prefix.clone();
            async move {
                let Some(marker) = marker else {
                    return Ok::<_, object_store::Error>(None);
                };
                let (entries, next) = this
                    .list_page(&prefix, &marker, false, false)
                    .await
                    .map_err(|e| this.os_err(e, &prefix, Ctx::Plain))?;
                let metas: Vec<_> = entries
                    .into_iter()
                    .filter_map(|e| match e {
                        Entry::Object(o) => o.to_meta().map(Ok),
                        Entry::Subdir(_) => None,
                    })
                    .collect();
                Ok(Some((stream::iter(metas), next)))
            }
        })
        .try_flatten()
        .boxed()
    }

    /// Scoped mode: the grant's snapshot merged with this store's own writes.
    fn scoped_listing(&self, prefix: &str) -> object_store::Result<Vec<GrantedObject>> {
        let Mode::Scoped { grant, written } = &self.inner.mode else {
            return Ok(Vec::new());
        };
        let Some(listing) = &grant.listing else {
            return Err(self.os_err(
                SwiftError::OutOfScope {
                    destination: self.inner.destination.clone(),
                    method: "LIST".into(),
                    path: prefix.to_string(),
                    reason: "the TempURL grant carries no listing (TempURLs cannot list a \
                             container; mint the grant with a listing)"
                        .into(),
                },
                prefix,
                Ctx::Plain,
            ));
        };
        let mut all: BTreeMap<String, GrantedObject> = listing
            .iter()
            .map(|o| (o.name.clone(), o.clone()))
            .collect();
        for (name, o) in lock(written).iter() {
            match o {
                Some(o) => all.insert(name.clone(), o.clone()),
                None => all.remove(name),
            };
        }
        Ok(all
            .into_values()
            .filter(|o| o.name.starts_with(prefix) && !hidden(&o.name))
            .collect())
    }

    fn record_write(&self, name: &str, size: u64, e_tag: Option<String>) {
        if let Mode::Scoped { written, .. } = &self.inner.mode {
            lock(written).insert(
                name.to_string(),
                Some(GrantedObject {
                    name: name.to_string(),
                    size,
                    last_modified: Utc::now(),
                    e_tag,
                }),
            );
        }
    }

    fn is_scoped(&self) -> bool {
        matches!(self.inner.mode, Mode::Scoped { .. })
    }

    async fn delete_one(&self, location: &Path) -> object_store::Result<()> {
        let name = location.as_ref();
        let map = |e| self.os_err(e, name, Ctx::Plain);
        if !self.is_scoped() {
            // Deletes an SLO's segments too; a plain object answers "Not an SLO
            // manifest" (200, nothing deleted) and is then deleted plainly below.
            let req = Request::new(Method::DELETE, Target::Object(name))
                .query("multipart-manifest", "delete")
                .header("Accept", "application/json");
            let resp = self.execute_ok(&req).await.map_err(map)?;
            let ctx = self.ctx(&Method::DELETE, name);
            let body = read_body(&self.inner.retry, &ctx, resp)
                .await
                .map_err(map)?;
            if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                let num = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
                let errors = v
                    .get("Errors")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let not_slo = errors
                    .iter()
                    .any(|e| e.to_string().contains("Not an SLO manifest"));
                if !not_slo {
                    if num("Number Deleted") == 0 && num("Number Not Found") > 0 {
                        return Err(map(ctx.http(404, b"")));
                    }
                    let status = v
                        .get("Response Status")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    if !status.starts_with('2') {
                        let code = status
                            .split_whitespace()
                            .next()
                            .and_then(|c| c.parse().ok())
                            .unwrap_or(500);
                        return Err(map(
                            ctx.http(code, Value::Array(errors).to_string().as_bytes())
                        ));
                    }
                    return Ok(());
                }
            } else {
                // Not the bulk-delete report (older middleware?): the DELETE succeeded.
                return Ok(());
            }
        }
        let req = Request::new(Method::DELETE, Target::Object(name));
        self.execute_ok(&req).await.map_err(map)?;
        if let Mode::Scoped { written, .. } = &self.inner.mode {
            lock(written).insert(name.to_string(), None);
        }
        Ok(())
    }
}

/// Swift listing times: `2026-11-22T09:02:21.865100`, UTC without a zone.
fn parse_listing_time(s: &str) -> Option<DateTime<Utc>> {
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc())
}

fn http_date(t: &DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// object_store attributes as Swift object headers.
fn attribute_headers(attrs: &Attributes) -> object_store::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (k, v) in attrs {
        let name = match k {
            Attribute::ContentType => "Content-Type".to_string(),
            Attribute::ContentEncoding => "Content-Encoding".to_string(),
            Attribute::ContentDisposition => "Content-Disposition".to_string(),
            Attribute::ContentLanguage => "Content-Language".to_string(),
            Attribute::CacheControl => "Cache-Control".to_string(),
            Attribute::Metadata(m) => format!("X-Object-Meta-{m}"),
            other => {
                return Err(object_store::Error::NotImplemented {
                    operation: format!("attribute {other:?}"),
                    implementer: "Swift".into(),
                });
            }
        };
        out.push((name, v.as_ref().to_string()));
    }
    Ok(out)
}

/// ObjectMeta and the returned byte range from GET/HEAD response headers.
fn meta_from_response(
    location: &Path,
    resp: &reqwest::Response,
    ctx: &ReqCtx,
) -> Result<(ObjectMeta, std::ops::Range<u64>), SwiftError> {
    let content_length =
        header_str(resp, "content-length").and_then(|v| v.trim().parse::<u64>().ok());
    let (size, range) = match header_str(resp, "content-range") {
        Some(cr) if resp.status().as_u16() == 206 => {
            // bytes START-END/TOTAL
            let parsed = cr.trim().strip_prefix("bytes ").and_then(|r| {
                let (span, total) = r.split_once('/')?;
                let (a, b) = span.split_once('-')?;
                Some((
                    total.trim().parse::<u64>().ok()?,
                    a.trim().parse::<u64>().ok()?,
                    b.trim().parse::<u64>().ok()?,
                ))
            });
            let (total, a, b) =
                parsed.ok_or_else(|| ctx.bad_response(format!("bad Content-Range {cr:?}")))?;
            (total, a..b.saturating_add(1))
        }
        _ => {
            let len = content_length.ok_or_else(|| ctx.bad_response("no Content-Length"))?;
            (len, 0..len)
        }
    };
    let last_modified = header_str(resp, "last-modified")
        .and_then(|v| DateTime::parse_from_rfc2822(v).ok())
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| ctx.bad_response("no or bad Last-Modified"))?;
    let e_tag = header_str(resp, "etag").map(String::from);
    Ok((
        ObjectMeta {
            location: location.clone(),
            last_modified,
            size,
            e_tag,
            version: None,
        },
        range,
    ))
}

#[async_trait::async_trait]
impl ObjectStore for SwiftStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let name = location.as_ref();
        let ctx_kind = match opts.mode {
            PutMode::Overwrite => Ctx::Plain,
            PutMode::Create => Ctx::CreateOnly,
            PutMode::Update(_) => {
                return Err(object_store::Error::NotImplemented {
                    operation: "put_opts with PutMode::Update".into(),
                    implementer: "Swift".into(),
                });
            }
        };
        let body = Bytes::from(payload);
        let size = body.len() as u64;
        let etag = md5_hex(&body);
        let mut req = Request::new(Method::PUT, Target::Object(name))
            // Swift checks the body against this MD5 and answers 422 on a mismatch.
            .header("ETag", etag.clone())
            .body(body);
        req.extra_retry = &[422];
        if ctx_kind == Ctx::CreateOnly {
            req = req.header("If-None-Match", "*");
        }
        req.headers.extend(attribute_headers(&opts.attributes)?);
        let resp = self
            .execute_ok(&req)
            .await
            .map_err(|e| self.os_err(e, name, ctx_kind))?;
        let e_tag = header_str(&resp, "etag").map(String::from).or(Some(etag));
        self.record_write(name, size, e_tag.clone());
        Ok(PutResult {
            e_tag,
            version: None,
            extensions: Default::default(),
        })
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let headers = attribute_headers(&opts.attributes)?;
        if self.is_scoped() {
            multipart::StreamUpload::start(self.clone(), location.as_ref(), headers)
        } else {
            Ok(Box::new(multipart::SloUpload::new(
                self.clone(),
                location.as_ref(),
                headers,
            )))
        }
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let name = location.as_ref();
        let method = if options.head {
            Method::HEAD
        } else {
            Method::GET
        };
        let mut req = Request::new(method.clone(), Target::Object(name));
        if let Some(r) = &options.range {
            r.is_valid().map_err(|e| object_store::Error::Generic {
                store: "Swift",
                source: Box::new(e),
            })?;
            req = req.header("Range", r.to_string());
        }
        if let Some(v) = &options.if_match {
            req = req.header("If-Match", v.clone());
        }
        if let Some(v) = &options.if_none_match {
            req = req.header("If-None-Match", v.clone());
        }
        if let Some(t) = &options.if_modified_since {
            req = req.header("If-Modified-Since", http_date(t));
        }
        if let Some(t) = &options.if_unmodified_since {
            req = req.header("If-Unmodified-Since", http_date(t));
        }
        let map = |e| self.os_err(e, name, Ctx::Plain);
        let resp = self.execute(&req).await.map_err(map)?;
        if !resp.status().is_success() {
            // 304 is not a success but is how Swift answers If-None-Match/-Modified-Since.
            return Err(map(self.status_error(&req, resp).await));
        }
        let ctx = self.ctx(&method, name);
        let (meta, mut range) = meta_from_response(location, &resp, &ctx).map_err(map)?;
        let payload = if options.head {
            range = 0..meta.size;
            GetResultPayload::Stream(stream::empty().boxed())
        } else {
            let ctx = ctx.clone();
            GetResultPayload::Stream(
                resp.bytes_stream()
                    .map_err(move |e| object_store::Error::Generic {
                        store: "Swift",
                        source: Box::new(ctx.transport(describe(&e))),
                    })
                    .boxed(),
            )
        };
        // A Range the server ignored (200) still yields the whole object: say so.
        if matches!(
            options.range,
            Some(GetRange::Suffix(_)) | Some(GetRange::Offset(_)) | Some(GetRange::Bounded(_))
        ) && range == (0..meta.size)
        {
            tracing::trace!("{self}: full object returned for a ranged GET of {name}");
        }
        Ok(GetResult {
            payload,
            meta,
            range,
            attributes: Attributes::new(),
            extensions: Default::default(),
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let this = self.clone();
        locations
            .map(move |p| {
                let this = this.clone();
                async move {
                    let p = p?;
                    this.delete_one(&p).await.map(|_| p)
                }
            })
            .buffered(8)
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.list_stream(list_prefix(prefix), String::new())
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        // Swift's marker is exactly an exclusive offset.
        self.list_stream(list_prefix(prefix), offset.as_ref().to_string())
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let swift_prefix = list_prefix(prefix);
        let mut objects = Vec::new();
        let mut common_prefixes = Vec::new();
        let mut add_prefix = |p: &str| -> Option<()> {
            let path = Path::parse(p.trim_end_matches('/')).ok()?;
            if common_prefixes.last() != Some(&path) {
                common_prefixes.push(path);
            }
            Some(())
        };
        if self.is_scoped() {
            for o in self.scoped_listing(&swift_prefix)? {
                let rest = &o.name[swift_prefix.len()..];
                match rest.split_once('/') {
                    Some((dir, _)) => {
                        add_prefix(&format!("{swift_prefix}{dir}"));
                    }
                    None => objects.extend(o.to_meta()),
                }
            }
        } else {
            let mut marker = String::new();
            loop {
                let (entries, next) = self
                    .list_page(&swift_prefix, &marker, true, false)
                    .await
                    .map_err(|e| self.os_err(e, &swift_prefix, Ctx::Plain))?;
                for e in entries {
                    match e {
                        Entry::Object(o) => objects.extend(o.to_meta()),
                        Entry::Subdir(s) => {
                            add_prefix(&s);
                        }
                    }
                }
                match next {
                    Some(m) => marker = m,
                    None => break,
                }
            }
        }
        Ok(ListResult {
            common_prefixes,
            objects,
            extensions: Default::default(),
        })
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        if self.is_scoped() {
            // The tempurl middleware refuses X-Copy-From.
            return Err(self.os_err(
                self.scoped_unsupported("server-side copy"),
                to.as_ref(),
                Ctx::Plain,
            ));
        }
        if options.mode == CopyMode::Create {
            // Swift applies If-None-Match of a copy to the *source* (304), so check the
            // destination first; not atomic against a concurrent writer.
            let head = Request::new(Method::HEAD, Target::Object(to.as_ref()));
            match self.execute_ok(&head).await {
                Ok(_) => {
                    return Err(object_store::Error::AlreadyExists {
                        path: to.to_string(),
                        source: format!("{self}: {to} already exists").into(),
                    });
                }
                Err(SwiftError::Http { status: 404, .. }) => {}
                Err(e) => return Err(self.os_err(e, to.as_ref(), Ctx::Plain)),
            }
        }
        let source = format!(
            "/{}/{}",
            enc_path(&self.inner.container),
            enc_path(from.as_ref())
        );
        let req =
            Request::new(Method::PUT, Target::Object(to.as_ref())).header("X-Copy-From", source);
        match self.execute_ok(&req).await {
            Ok(_) => Ok(()),
            // A 404 is about the source.
            Err(e @ SwiftError::Http { status: 404, .. }) => {
                Err(self.os_err(e, from.as_ref(), Ctx::Plain))
            }
            Err(e) => Err(self.os_err(e, to.as_ref(), Ctx::Plain)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_names() {
        assert_eq!(enc_path("a b/c%d/ü?#"), "a%20b/c%25d/%C3%BC%3F%23");
        assert_eq!(enc_query("p/q r&s"), "p%2Fq%20r%26s");
    }

    #[test]
    fn hides_segments() {
        assert!(hidden(".segments/x/1/00000000"));
        assert!(hidden("a/b/.segments/x/1/00000000"));
        assert!(!hidden("a/b/x.segments"));
    }

    #[test]
    fn parses_listing_times() {
        let t = parse_listing_time("2026-11-22T09:02:21.865100").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-22T09:02:21.865100+00:00");
        assert!(parse_listing_time("garbage").is_none());
        assert_eq!(http_date(&t), "Sun, 22 Nov 2026 09:02:21 GMT");
    }

    #[test]
    fn list_prefixes() {
        assert_eq!(list_prefix(None), "");
        assert_eq!(list_prefix(Some(&Path::from("a/b"))), "a/b/");
    }
}
