//! Multipart uploads.
//!
//! * Account mode: each part is a segment object under
//!   `{dir}/.segments/{file}/{upload id}/{part:08}` (same container, under the object's
//!   own directory so a prefix-scoped credential covers it), uploaded with its MD5 as
//!   ETag; `complete` writes a Static Large Object manifest, nested when there are more
//!   segments than the cluster allows in one manifest. Objects of any size work.
//! * Scoped (TempURL) mode: the tempurl middleware drops `multipart-manifest=put`, so
//!   the parts are streamed as the body of one chunked PUT instead (limited to the
//!   cluster's `max_file_size`, 5 GiB by default; not resumable).

use super::error::Ctx;
use super::http::header_str;
use super::{Mode, Request, SEGMENTS_DIR, SwiftStore, Target, lock, md5_hex};
use bytes::Bytes;
use futures::FutureExt;
use object_store::{MultipartUpload, PutPayload, PutResult, UploadPart};
use reqwest::Method;
use serde_json::json;
use std::sync::{Arc, Mutex};

/// One uploaded segment, as an SLO manifest lists it.
#[derive(Clone, Debug)]
struct Segment {
    path: String,
    etag: String,
    size: u64,
}

/// Where the segments of `name`'s upload `upload_id` live.
fn segment_dir(name: &str, upload_id: &str) -> String {
    match name.rsplit_once('/') {
        Some((dir, file)) => format!("{dir}/{SEGMENTS_DIR}/{file}/{upload_id}"),
        None => format!("{SEGMENTS_DIR}/{name}/{upload_id}"),
    }
}

fn new_upload_id() -> String {
    let n: u64 = rand::random();
    format!("{}-{n:016x}", chrono::Utc::now().format("%Y%m%dT%H%M%SZ"))
}

/// An SLO upload (account mode).
#[derive(Debug)]
pub(super) struct SloUpload {
    store: SwiftStore,
    name: String,
    headers: Vec<(String, String)>,
    dir: String,
    next: usize,
    segments: Arc<Mutex<Vec<Option<Segment>>>>,
}

impl SloUpload {
    pub(super) fn new(store: SwiftStore, name: &str, headers: Vec<(String, String)>) -> SloUpload {
        SloUpload {
            dir: segment_dir(name, &new_upload_id()),
            store,
            name: name.to_string(),
            headers,
            next: 0,
            segments: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// PUTs one manifest (`?multipart-manifest=put`) over `segments`.
    async fn put_manifest(
        &self,
        name: &str,
        segments: &[Segment],
        headers: &[(String, String)],
    ) -> object_store::Result<Segment> {
        let container = &self.store.inner.container;
        let list: Vec<_> = segments
            .iter()
            .map(|s| {
                json!({
                    "path": format!("/{container}/{}", s.path),
                    "etag": s.etag,
                    "size_bytes": s.size,
                })
            })
            .collect();
        let body = Bytes::from(serde_json::to_vec(&list).expect("manifest serializes"));
        let mut req = Request::new(Method::PUT, Target::Object(name))
            .query("multipart-manifest", "put")
            .body(body);
        req.headers.extend(headers.iter().cloned());
        let resp = self
            .store
            .execute_ok(&req)
            .await
            .map_err(|e| self.store.os_err(e, name, Ctx::Plain))?;
        // The ETag of an SLO is the MD5 of its segments' ETags, quoted.
        let etag = header_str(&resp, "etag")
            .map(|e| e.trim_matches('"').to_string())
            .unwrap_or_default();
        Ok(Segment {
            path: name.to_string(),
            etag,
            size: segments.iter().map(|s| s.size).sum(),
        })
    }
}

#[async_trait::async_trait]
impl MultipartUpload for SloUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let index = self.next;
        self.next += 1;
        lock(&self.segments).push(None);
        let path = format!("{}/{:08}", self.dir, index + 1);
        let store = self.store.clone();
        let segments = self.segments.clone();
        async move {
            let body = Bytes::from(data);
            let size = body.len() as u64;
            let etag = md5_hex(&body);
            let mut req = Request::new(Method::PUT, Target::Object(&path))
                .header("ETag", etag.clone())
                .body(body);
            // 422: the body did not match its MD5 on the way; sending it again helps.
            req.extra_retry = &[422];
            store
                .execute_ok(&req)
                .await
                .map_err(|e| store.os_err(e, &path, Ctx::Plain))?;
            lock(&segments)[index] = Some(Segment {
                path: path.clone(),
                etag,
                size,
            });
            Ok(())
        }
        .boxed()
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let segments: Vec<Segment> = {
            let parts = lock(&self.segments);
            let mut out = Vec::with_capacity(parts.len());
            for (i, p) in parts.iter().enumerate() {
                match p {
                    Some(s) => out.push(s.clone()),
                    None => {
                        return Err(object_store::Error::Generic {
                            store: "Swift",
                            source: format!(
                                "{}: upload of {}: part {} never finished",
                                self.store,
                                self.name,
                                i + 1
                            )
                            .into(),
                        });
                    }
                }
            }
            out
        };
        let max = self.store.max_manifest_segments().await;
        // Nest: sub-manifests of up to `max` entries until one manifest suffices.
        let mut level = segments;
        let mut depth = 0;
        while level.len() > max {
            depth += 1;
            let mut next = Vec::new();
            for (i, group) in level.chunks(max).enumerate() {
                let sub = format!("{}/manifest-{depth}-{:06}", self.dir, i + 1);
                next.push(self.put_manifest(&sub, group, &[]).await?);
            }
            level = next;
        }
        let top = self.put_manifest(&self.name, &level, &self.headers).await?;
        Ok(PutResult {
            e_tag: Some(top.etag),
            version: None,
            extensions: Default::default(),
        })
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        let paths: Vec<String> = lock(&self.segments)
            .iter()
            .flatten()
            .map(|s| s.path.clone())
            .collect();
        for path in paths {
            let req = Request::new(Method::DELETE, Target::Object(&path));
            if let Err(e) = self.store.execute_ok(&req).await {
                tracing::warn!(
                    "{}: could not delete segment {path} of an aborted upload: {e}",
                    self.store
                );
            }
        }
        Ok(())
    }
}

type Ack = tokio::sync::oneshot::Sender<()>;

/// One chunked PUT fed by the parts (scoped mode).
#[derive(Debug)]
pub(super) struct StreamUpload {
    store: SwiftStore,
    name: String,
    /// Parts in order, each with an acknowledgement sent when the request body has
    /// taken it (so WriteMultipart's bound on parts in flight bounds memory).
    tx: Option<tokio::sync::mpsc::UnboundedSender<(Bytes, Ack)>>,
    request: Option<tokio::task::JoinHandle<object_store::Result<PutResult>>>,
    size: Arc<std::sync::atomic::AtomicU64>,
}

impl StreamUpload {
    pub(super) fn start(
        store: SwiftStore,
        name: &str,
        headers: Vec<(String, String)>,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let Mode::Scoped { grant, .. } = &store.inner.mode else {
            unreachable!("StreamUpload is for scoped mode");
        };
        let map = |e| store.os_err(e, name, Ctx::Plain);
        if !name.starts_with(&grant.prefix) {
            return Err(map(super::SwiftError::OutOfScope {
                destination: store.inner.destination.clone(),
                method: "PUT".into(),
                path: name.to_string(),
                reason: format!(
                    "outside the prefix {:?} the scoped credential covers",
                    grant.prefix
                ),
            }));
        }
        let sig = grant
            .signatures
            .get("PUT")
            .or_else(|| grant.signatures.values().next())
            .map(|s| s.expose().to_string())
            .unwrap_or_default();
        let extra = [
            ("temp_url_sig", sig),
            ("temp_url_expires", grant.expires.to_string()),
            ("temp_url_prefix", grant.prefix.clone()),
        ];
        let req = Request::new(Method::PUT, Target::Object(name));
        let url = store.url(&grant.storage_url, &req, &extra);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Bytes, Ack)>();
        let size = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = size.clone();
        let body = futures::stream::poll_fn(move |cx| {
            rx.poll_recv(cx).map(|item| {
                item.map(|(bytes, ack): (Bytes, Ack)| {
                    counted.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    let _ = ack.send(());
                    Ok::<Bytes, std::io::Error>(bytes)
                })
            })
        });
        let task_store = store.clone();
        let task_name = name.to_string();
        let task_size = size.clone();
        let request = tokio::spawn(async move {
            let store = task_store;
            let mut b = store
                .inner
                .client
                .put(&url)
                .body(reqwest::Body::wrap_stream(body));
            for (k, v) in &headers {
                b = b.header(k.as_str(), v.as_str());
            }
            let req = Request::new(Method::PUT, Target::Object(&task_name));
            let map = |e| store.os_err(e, &task_name, Ctx::Plain);
            let resp = b.send().await.map_err(|e| {
                map(super::SwiftError::Transport {
                    destination: store.inner.destination.clone(),
                    method: "PUT".into(),
                    path: task_name.clone(),
                    message: e.without_url().to_string(),
                })
            })?;
            if !resp.status().is_success() {
                return Err(map(store.status_error(&req, resp).await));
            }
            let e_tag = header_str(&resp, "etag").map(String::from);
            store.record_write(
                &task_name,
                task_size.load(std::sync::atomic::Ordering::Relaxed),
                e_tag.clone(),
            );
            Ok(PutResult {
                e_tag,
                version: None,
                extensions: Default::default(),
            })
        });
        Ok(Box::new(StreamUpload {
            store,
            name: name.to_string(),
            tx: Some(tx),
            request: Some(request),
            size,
        }))
    }

    async fn request_result(&mut self) -> object_store::Result<PutResult> {
        let Some(handle) = self.request.take() else {
            return Err(object_store::Error::Generic {
                store: "Swift",
                source: format!("{}: upload of {} already finished", self.store, self.name).into(),
            });
        };
        match handle.await {
            Ok(r) => r,
            Err(e) => Err(object_store::Error::Generic {
                store: "Swift",
                source: Box::new(e),
            }),
        }
    }
}

#[async_trait::async_trait]
impl MultipartUpload for StreamUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let (ack, taken) = tokio::sync::oneshot::channel();
        let sent = self
            .tx
            .as_ref()
            .is_some_and(|tx| tx.send((Bytes::from(data), ack)).is_ok());
        let label = format!("{}: upload of {}", self.store, self.name);
        async move {
            // The request ended early (refused, connection lost): complete() reports why.
            if !sent || taken.await.is_err() {
                return Err(object_store::Error::Generic {
                    store: "Swift",
                    source: format!("{label}: the upload request ended before this part").into(),
                });
            }
            Ok(())
        }
        .boxed()
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        // Closing the channel ends the chunked body.
        self.tx.take();
        let r = self.request_result().await;
        tracing::debug!(
            "{}: streamed {} bytes to {}",
            self.store,
            self.size.load(std::sync::atomic::Ordering::Relaxed),
            self.name
        );
        r
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        // Cutting the connection mid-body: Swift stores nothing.
        self.tx.take();
        if let Some(h) = self.request.take() {
            h.abort();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_live_under_the_objects_directory() {
        assert_eq!(
            segment_dir("host/vol1.difftar.gpg", "u1"),
            "host/.segments/vol1.difftar.gpg/u1"
        );
        assert_eq!(segment_dir("vol1", "u1"), ".segments/vol1/u1");
        assert!(super::super::hidden(&segment_dir("a/b", "u")));
    }
}
