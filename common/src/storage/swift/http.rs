//! One HTTP exchange with retries: backoff with jitter on transport errors, timeouts
//! and retryable statuses, bounded by the [`RetryPolicy`].

use super::error::{SwiftError, excerpt, retryable_status};
use crate::storage::RetryPolicy;
use bytes::Bytes;
use std::time::Instant;

/// What a request is about, for error messages (never a URL with its query).
#[derive(Clone, Debug)]
pub(crate) struct ReqCtx {
    pub destination: String,
    pub method: String,
    pub path: String,
}

impl ReqCtx {
    pub fn transport(&self, message: String) -> SwiftError {
        SwiftError::Transport {
            destination: self.destination.clone(),
            method: self.method.clone(),
            path: self.path.clone(),
            message,
        }
    }

    pub fn bad_response(&self, reason: impl Into<String>) -> SwiftError {
        SwiftError::BadResponse {
            destination: self.destination.clone(),
            method: self.method.clone(),
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    pub fn http(&self, status: u16, body: &[u8]) -> SwiftError {
        SwiftError::Http {
            destination: self.destination.clone(),
            method: self.method.clone(),
            path: self.path.clone(),
            status,
            excerpt: excerpt(body),
            retryable: retryable_status(status),
        }
    }
}

/// reqwest's message without the URL (it may carry a signature).
pub(crate) fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "transfer interrupted"
    } else {
        "request failed"
    };
    let mut msg = String::from(kind);
    // The source chain (hyper/io) says e.g. "connection reset"; it carries no URL.
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// Sends the request built by `build` (called again for each attempt, so bodies must
/// be `Bytes`) and retries what may succeed later. Returns the first response that is
/// not retried; a retryable status that persists is returned as the response, so
/// the caller maps it with its own context. `extra_retry` adds statuses to retry
/// (422 for uploads: the body was corrupted in transit).
pub(crate) async fn send(
    retry: &RetryPolicy,
    ctx: &ReqCtx,
    extra_retry: &[u16],
    build: impl Fn() -> reqwest::RequestBuilder,
) -> Result<reqwest::Response, SwiftError> {
    let start = Instant::now();
    let mut attempt: u32 = 0;
    loop {
        let outcome = tokio::time::timeout(retry.request_timeout, build().send()).await;
        let failure = match outcome {
            Ok(Ok(resp)) => {
                let status = resp.status().as_u16();
                if !(retryable_status(status) || extra_retry.contains(&status)) {
                    return Ok(resp);
                }
                Failure::Status(resp)
            }
            Ok(Err(e)) if e.is_builder() => return Err(ctx.transport(describe(&e))),
            Ok(Err(e)) => Failure::Transport(describe(&e)),
            Err(_) => Failure::Transport(format!(
                "no response within {:?} (request timeout)",
                retry.request_timeout
            )),
        };
        attempt += 1;
        if !retry.may_retry(attempt, start.elapsed()) {
            return match failure {
                Failure::Status(resp) => Ok(resp),
                Failure::Transport(m) => Err(ctx.transport(m)),
            };
        }
        let wait = retry.backoff(attempt);
        match &failure {
            Failure::Status(resp) => tracing::debug!(
                "{} {} {}: HTTP {}; retry {attempt} in {wait:?}",
                ctx.destination,
                ctx.method,
                ctx.path,
                resp.status().as_u16()
            ),
            Failure::Transport(m) => tracing::debug!(
                "{} {} {}: {m}; retry {attempt} in {wait:?}",
                ctx.destination,
                ctx.method,
                ctx.path
            ),
        }
        drop(failure);
        tokio::time::sleep(wait).await;
    }
}

enum Failure {
    Status(reqwest::Response),
    Transport(String),
}

/// Reads a (small) response body within the request timeout.
pub(crate) async fn read_body(
    retry: &RetryPolicy,
    ctx: &ReqCtx,
    resp: reqwest::Response,
) -> Result<Bytes, SwiftError> {
    match tokio::time::timeout(retry.request_timeout, resp.bytes()).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => Err(ctx.transport(describe(&e))),
        Err(_) => Err(ctx.transport("response body timed out".into())),
    }
}

/// The error for a non-success response, with a body excerpt (read briefly).
pub(crate) async fn status_error(ctx: &ReqCtx, resp: reqwest::Response) -> SwiftError {
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(std::time::Duration::from_secs(5), resp.bytes())
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default();
    ctx.http(status, &body)
}

pub(crate) fn header_str<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}
