//! Obtaining a storage URL and token: TempAuth (v1), Keystone v2.0 and v3.

use super::SwiftError;
use super::config::SwiftAuth;
use super::error::excerpt;
use super::http::{ReqCtx, header_str, read_body, send, status_error};
use crate::storage::{RetryPolicy, Secret};
use serde_json::{Value, json};

/// A storage URL and the token that goes with it.
#[derive(Clone, Debug)]
pub(crate) struct Session {
    pub storage_url: String,
    pub token: Secret,
    /// Bumped on each authentication, so a 401 only discards the token it was for.
    pub generation: u64,
}

pub(crate) async fn authenticate(
    client: &reqwest::Client,
    retry: &RetryPolicy,
    auth: &SwiftAuth,
    destination: &str,
) -> Result<(String, Secret), SwiftError> {
    match auth {
        SwiftAuth::Token { storage_url, token } => Ok((storage_url.clone(), token.clone())),
        SwiftAuth::V1 {
            auth_url,
            user,
            key,
        } => {
            let ctx = ctx(destination, "GET", auth_url);
            let resp = send(retry, &ctx, &[], || {
                client
                    .get(auth_url)
                    .header("X-Auth-User", user)
                    .header("X-Auth-Key", key.expose())
            })
            .await?;
            let resp = check(&ctx, resp, "TempAuth user/key").await?;
            let storage_url = header_str(&resp, "x-storage-url")
                .ok_or_else(|| ctx.bad_response("no X-Storage-Url header"))?
                .to_string();
            let token = header_str(&resp, "x-auth-token")
                .or_else(|| header_str(&resp, "x-storage-token"))
                .ok_or_else(|| ctx.bad_response("no X-Auth-Token header"))?;
            Ok((storage_url, Secret::new(token)))
        }
        SwiftAuth::V2 {
            auth_url,
            tenant,
            user,
            password,
            region,
        } => {
            let url = endpoint(auth_url, "/tokens", "v2.0");
            let ctx = ctx(destination, "POST", &url);
            let body = json!({"auth": {
                "tenantName": tenant,
                "passwordCredentials": {"username": user, "password": password.expose()},
            }});
            let body = bytes::Bytes::from(body.to_string());
            let resp = send(retry, &ctx, &[], || {
                client
                    .post(&url)
                    .header("Content-Type", "application/json")
                    .header("Accept", "application/json")
                    .body(body.clone())
            })
            .await?;
            let resp = check(&ctx, resp, "Keystone v2 user/password/tenant").await?;
            let body = read_body(retry, &ctx, resp).await?;
            let v: Value = serde_json::from_slice(&body)
                .map_err(|e| ctx.bad_response(format!("invalid JSON: {e}")))?;
            let token = v
                .pointer("/access/token/id")
                .and_then(Value::as_str)
                .ok_or_else(|| ctx.bad_response("no access.token.id"))?;
            let catalog = v
                .pointer("/access/serviceCatalog")
                .and_then(Value::as_array)
                .ok_or_else(|| ctx.bad_response("no access.serviceCatalog"))?;
            let url = catalog
                .iter()
                .filter(|s| s.get("type").and_then(Value::as_str) == Some("object-store"))
                .flat_map(endpoints)
                .find(|e| region_matches(e, region.as_deref()))
                .and_then(|e| e.get("publicURL").and_then(Value::as_str))
                .ok_or_else(|| no_endpoint(&ctx, region.as_deref(), "public"))?;
            Ok((url.to_string(), Secret::new(token)))
        }
        SwiftAuth::V3 {
            auth_url,
            user,
            password,
            user_domain,
            project,
            project_domain,
            region,
            interface,
        } => {
            let url = endpoint(auth_url, "/auth/tokens", "v3");
            let ctx = ctx(destination, "POST", &url);
            let body = json!({"auth": {
                "identity": {"methods": ["password"], "password": {"user": {
                    "name": user, "domain": {"name": user_domain}, "password": password.expose(),
                }}},
                "scope": {"project": {"name": project, "domain": {"name": project_domain}}},
            }});
            let body = bytes::Bytes::from(body.to_string());
            let resp = send(retry, &ctx, &[], || {
                client
                    .post(&url)
                    .header("Content-Type", "application/json")
                    .header("Accept", "application/json")
                    .body(body.clone())
            })
            .await?;
            let resp = check(&ctx, resp, "Keystone v3 user/password/project/domains").await?;
            let token = header_str(&resp, "x-subject-token")
                .ok_or_else(|| ctx.bad_response("no X-Subject-Token header"))?
                .to_string();
            let body = read_body(retry, &ctx, resp).await?;
            let v: Value = serde_json::from_slice(&body)
                .map_err(|e| ctx.bad_response(format!("invalid JSON: {e}")))?;
            let catalog = v
                .pointer("/token/catalog")
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    ctx.bad_response("no token.catalog (is the token project-scoped?)")
                })?;
            let url = catalog
                .iter()
                .filter(|s| s.get("type").and_then(Value::as_str) == Some("object-store"))
                .flat_map(endpoints)
                .filter(|e| e.get("interface").and_then(Value::as_str) == Some(interface))
                .find(|e| region_matches(e, region.as_deref()))
                .and_then(|e| e.get("url").and_then(Value::as_str))
                .ok_or_else(|| no_endpoint(&ctx, region.as_deref(), interface))?;
            Ok((url.to_string(), Secret::new(token)))
        }
    }
}

fn ctx(destination: &str, method: &str, url: &str) -> ReqCtx {
    ReqCtx {
        destination: destination.to_string(),
        method: method.to_string(),
        // The auth URL has no secrets in its path; drop any query anyway.
        path: url.split('?').next().unwrap_or_default().to_string(),
    }
}

/// `http://k:5000/v3` -> `http://k:5000/v3/auth/tokens`; a bare host gets the version.
fn endpoint(auth_url: &str, suffix: &str, version: &str) -> String {
    let base = auth_url.trim_end_matches('/');
    if base.ends_with(suffix) {
        base.to_string()
    } else if base.rsplit('/').next() == Some(version) {
        format!("{base}{suffix}")
    } else {
        format!("{base}/{version}{suffix}")
    }
}

fn endpoints(service: &Value) -> impl Iterator<Item = &Value> {
    service
        .get("endpoints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn region_matches(endpoint: &Value, region: Option<&str>) -> bool {
    let Some(want) = region else { return true };
    ["region", "region_id"]
        .iter()
        .any(|k| endpoint.get(*k).and_then(Value::as_str) == Some(want))
}

fn no_endpoint(ctx: &ReqCtx, region: Option<&str>, interface: &str) -> SwiftError {
    ctx.bad_response(format!(
        "the catalog has no object-store endpoint (interface {interface}{})",
        region.map(|r| format!(", region {r}")).unwrap_or_default()
    ))
}

/// Success, or an error saying which credentials were refused.
async fn check(
    ctx: &ReqCtx,
    resp: reqwest::Response,
    what: &str,
) -> Result<reqwest::Response, SwiftError> {
    let status = resp.status().as_u16();
    if resp.status().is_success() {
        return Ok(resp);
    }
    if status == 401 || status == 403 {
        let body = read_body(&RetryPolicy::default(), ctx, resp)
            .await
            .unwrap_or_default();
        return Err(SwiftError::Credentials {
            destination: ctx.destination.clone(),
            method: ctx.method.clone(),
            path: ctx.path.clone(),
            status,
            what: format!("authentication with the {what} failed"),
            excerpt: excerpt(&body),
        });
    }
    Err(status_error(ctx, resp).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keystone_endpoints() {
        assert_eq!(
            endpoint("http://k:5000/v3", "/auth/tokens", "v3"),
            "http://k:5000/v3/auth/tokens"
        );
        assert_eq!(
            endpoint("http://k:5000/", "/auth/tokens", "v3"),
            "http://k:5000/v3/auth/tokens"
        );
        assert_eq!(
            endpoint("http://k/v3/auth/tokens", "/auth/tokens", "v3"),
            "http://k/v3/auth/tokens"
        );
        assert_eq!(
            endpoint("http://k/v2.0", "/tokens", "v2.0"),
            "http://k/v2.0/tokens"
        );
    }
}
