//! Credentials and settings, read the way duplicity 0.8.22's swift backend reads them.

use super::SwiftError;
use crate::storage::{RetryPolicy, Secret};

/// How to obtain a storage URL and token.
#[derive(Clone, Debug)]
pub enum SwiftAuth {
    /// TempAuth/swauth: GET `auth_url` with `X-Auth-User`/`X-Auth-Key`.
    V1 {
        auth_url: String,
        user: String,
        key: Secret,
    },
    /// Keystone v2.0 password authentication.
    V2 {
        auth_url: String,
        tenant: String,
        user: String,
        password: Secret,
        region: Option<String>,
    },
    /// Keystone v3 password authentication, project-scoped; the storage URL comes
    /// from the catalog's `object-store` endpoint.
    V3 {
        auth_url: String,
        user: String,
        password: Secret,
        user_domain: String,
        project: String,
        project_domain: String,
        region: Option<String>,
        interface: String,
    },
    /// Pre-authenticated: no re-authentication is possible.
    Token { storage_url: String, token: Secret },
}

impl SwiftAuth {
    /// Whether a refused token can be replaced by authenticating again.
    pub fn can_reauthenticate(&self) -> bool {
        !matches!(self, SwiftAuth::Token { .. })
    }
}

/// Everything [`super::SwiftStore::new`] needs.
#[derive(Clone, Debug)]
pub struct SwiftConfig {
    pub auth: SwiftAuth,
    pub container: String,
    /// Use this account URL instead of the one the auth service returns.
    pub storage_url_override: Option<String>,
    pub retry: RetryPolicy,
}

impl SwiftConfig {
    /// From the process environment; see [`SwiftConfig::from_lookup`].
    pub fn from_env(container: &str) -> Result<SwiftConfig, SwiftError> {
        SwiftConfig::from_lookup(container, |k| std::env::var(k).ok())
    }

    /// From a variable lookup. duplicity's `SWIFT_*` variables win; without them,
    /// python-swiftclient's `ST_*` (v1) and then `OS_*` (Keystone or a token) are used.
    pub fn from_lookup(
        container: &str,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<SwiftConfig, SwiftError> {
        // Empty values count as unset, like an unset shell variable.
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        validate_container(container)?;
        let missing = |var: &str, hint: &str| SwiftError::MissingVar {
            var: var.to_string(),
            hint: hint.to_string(),
        };
        let need = |var: &str| get(var).ok_or_else(|| missing(var, ""));
        let any = |vars: &[&str]| vars.iter().any(|v| get(v).is_some());

        let auth = if any(&["SWIFT_PREAUTHURL", "SWIFT_PREAUTHTOKEN"]) {
            SwiftAuth::Token {
                storage_url: need("SWIFT_PREAUTHURL")?,
                token: Secret::new(need("SWIFT_PREAUTHTOKEN")?),
            }
        } else if any(&["SWIFT_USERNAME", "SWIFT_PASSWORD", "SWIFT_AUTHURL"]) {
            let version = get("SWIFT_AUTHVERSION").unwrap_or_else(|| "1".into());
            let user = need("SWIFT_USERNAME")?;
            let password = Secret::new(need("SWIFT_PASSWORD")?);
            let auth_url = need("SWIFT_AUTHURL")?;
            match parse_version(&version, "SWIFT_AUTHVERSION")? {
                1 => SwiftAuth::V1 {
                    auth_url,
                    user,
                    key: password,
                },
                2 => {
                    let (tenant, user) = split_tenant(get("SWIFT_TENANTNAME"), user);
                    SwiftAuth::V2 {
                        auth_url,
                        tenant: tenant.ok_or_else(|| {
                            missing(
                                "SWIFT_TENANTNAME",
                                " (or give SWIFT_USERNAME as tenant:user)",
                            )
                        })?,
                        user,
                        password,
                        region: get("SWIFT_REGIONNAME"),
                    }
                }
                _ => {
                    let project = get("SWIFT_PROJECT_NAME").or_else(|| get("SWIFT_TENANTNAME"));
                    let (project, user) = split_tenant(project, user);
                    SwiftAuth::V3 {
                        auth_url,
                        user,
                        password,
                        user_domain: get("SWIFT_USER_DOMAIN_NAME")
                            .unwrap_or_else(|| "Default".into()),
                        project: project.ok_or_else(|| {
                            missing("SWIFT_PROJECT_NAME", " (or SWIFT_TENANTNAME)")
                        })?,
                        project_domain: get("SWIFT_PROJECT_DOMAIN_NAME")
                            .unwrap_or_else(|| "Default".into()),
                        region: get("SWIFT_REGIONNAME"),
                        interface: interface(get("SWIFT_ENDPOINT_TYPE")),
                    }
                }
            }
        } else if any(&["ST_AUTH", "ST_USER", "ST_KEY"]) {
            SwiftAuth::V1 {
                auth_url: need("ST_AUTH")?,
                user: need("ST_USER")?,
                key: Secret::new(need("ST_KEY")?),
            }
        } else if any(&["OS_AUTH_URL", "OS_USERNAME", "OS_PASSWORD"]) {
            let auth_url = need("OS_AUTH_URL")?;
            let user = need("OS_USERNAME")?;
            let password = Secret::new(need("OS_PASSWORD")?);
            let version = get("OS_IDENTITY_API_VERSION")
                .or_else(|| get("OS_AUTH_VERSION"))
                .unwrap_or_else(|| {
                    if auth_url.trim_end_matches('/').ends_with("v2.0") {
                        "2".into()
                    } else {
                        "3".into()
                    }
                });
            let project = get("OS_PROJECT_NAME").or_else(|| get("OS_TENANT_NAME"));
            let project_missing = || missing("OS_PROJECT_NAME", " (or OS_TENANT_NAME)");
            match parse_version(&version, "OS_IDENTITY_API_VERSION")? {
                1 => SwiftAuth::V1 {
                    auth_url,
                    user,
                    key: password,
                },
                2 => SwiftAuth::V2 {
                    auth_url,
                    tenant: project.ok_or_else(project_missing)?,
                    user,
                    password,
                    region: get("OS_REGION_NAME"),
                },
                _ => SwiftAuth::V3 {
                    auth_url,
                    user,
                    password,
                    user_domain: get("OS_USER_DOMAIN_NAME").unwrap_or_else(|| "Default".into()),
                    project: project.ok_or_else(project_missing)?,
                    project_domain: get("OS_PROJECT_DOMAIN_NAME")
                        .unwrap_or_else(|| "Default".into()),
                    region: get("OS_REGION_NAME"),
                    interface: interface(get("OS_INTERFACE").or_else(|| get("OS_ENDPOINT_TYPE"))),
                },
            }
        } else if any(&["OS_STORAGE_URL", "OS_AUTH_TOKEN"]) {
            SwiftAuth::Token {
                storage_url: need("OS_STORAGE_URL")?,
                token: Secret::new(need("OS_AUTH_TOKEN")?),
            }
        } else {
            return Err(missing(
                "SWIFT_USERNAME",
                " (set SWIFT_USERNAME, SWIFT_PASSWORD and SWIFT_AUTHURL, or \
                 SWIFT_PREAUTHURL and SWIFT_PREAUTHTOKEN; ST_AUTH/ST_USER/ST_KEY and \
                 OS_AUTH_URL/OS_USERNAME/OS_PASSWORD are also accepted)",
            ));
        };
        Ok(SwiftConfig {
            auth,
            container: container.to_string(),
            // swiftclient's os_options object_storage_url equivalent.
            storage_url_override: None,
            retry: RetryPolicy::default(),
        })
    }
}

pub(crate) fn validate_container(container: &str) -> Result<(), SwiftError> {
    if container.is_empty() || container.contains('/') || container.len() > 256 {
        return Err(SwiftError::Config(format!(
            "invalid container name {container:?} (non-empty, no '/', at most 256 bytes)"
        )));
    }
    Ok(())
}

fn parse_version(v: &str, var: &str) -> Result<u8, SwiftError> {
    match v.trim() {
        "1" | "1.0" => Ok(1),
        "2" | "2.0" => Ok(2),
        "3" | "3.0" => Ok(3),
        other => Err(SwiftError::Config(format!(
            "{var}={other:?} is not supported (use 1, 2 or 3)"
        ))),
    }
}

/// swiftclient accepts `tenant:user` as the user name when no tenant is given.
fn split_tenant(tenant: Option<String>, user: String) -> (Option<String>, String) {
    match tenant {
        Some(t) => (Some(t), user),
        None => match user.split_once(':') {
            Some((t, u)) => (Some(t.to_string()), u.to_string()),
            None => (None, user),
        },
    }
}

/// swiftclient's endpoint types (`publicURL`) to Keystone v3 interfaces (`public`).
fn interface(v: Option<String>) -> String {
    let v = v.unwrap_or_else(|| "public".into());
    v.strip_suffix("URL").unwrap_or(&v).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn duplicity_v1() {
        let c = SwiftConfig::from_lookup(
            "c",
            lookup(&[
                ("SWIFT_USERNAME", "test:tester"),
                ("SWIFT_PASSWORD", "testing"),
                ("SWIFT_AUTHURL", "http://h/auth/v1.0"),
            ]),
        )
        .unwrap();
        match c.auth {
            SwiftAuth::V1 {
                auth_url,
                user,
                key,
            } => {
                assert_eq!(auth_url, "http://h/auth/v1.0");
                assert_eq!(user, "test:tester");
                assert_eq!(key.expose(), "testing");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.container, "c");
    }

    #[test]
    fn duplicity_v2_splits_tenant() {
        let c = SwiftConfig::from_lookup(
            "c",
            lookup(&[
                ("SWIFT_AUTHVERSION", "2"),
                ("SWIFT_USERNAME", "proj:alice"),
                ("SWIFT_PASSWORD", "pw"),
                ("SWIFT_AUTHURL", "http://k/v2.0"),
                ("SWIFT_REGIONNAME", "R1"),
            ]),
        )
        .unwrap();
        match c.auth {
            SwiftAuth::V2 {
                tenant,
                user,
                region,
                ..
            } => {
                assert_eq!((tenant.as_str(), user.as_str()), ("proj", "alice"));
                assert_eq!(region.as_deref(), Some("R1"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn duplicity_v3() {
        let c = SwiftConfig::from_lookup(
            "c",
            lookup(&[
                ("SWIFT_AUTHVERSION", "3"),
                ("SWIFT_USERNAME", "alice"),
                ("SWIFT_PASSWORD", "pw"),
                ("SWIFT_AUTHURL", "http://k/v3"),
                ("SWIFT_TENANTNAME", "proj"),
                ("SWIFT_USER_DOMAIN_NAME", "UD"),
                ("SWIFT_PROJECT_DOMAIN_NAME", "PD"),
                ("SWIFT_ENDPOINT_TYPE", "internalURL"),
            ]),
        )
        .unwrap();
        match c.auth {
            SwiftAuth::V3 {
                user,
                project,
                user_domain,
                project_domain,
                interface,
                region,
                ..
            } => {
                assert_eq!(user, "alice");
                assert_eq!(project, "proj");
                assert_eq!(user_domain, "UD");
                assert_eq!(project_domain, "PD");
                assert_eq!(interface, "internal");
                assert_eq!(region, None);
            }
            other => panic!("{other:?}"),
        }
        // SWIFT_PROJECT_NAME wins over SWIFT_TENANTNAME; domains default to Default.
        let c = SwiftConfig::from_lookup(
            "c",
            lookup(&[
                ("SWIFT_AUTHVERSION", "3"),
                ("SWIFT_USERNAME", "alice"),
                ("SWIFT_PASSWORD", "pw"),
                ("SWIFT_AUTHURL", "http://k/v3"),
                ("SWIFT_TENANTNAME", "t"),
                ("SWIFT_PROJECT_NAME", "p"),
            ]),
        )
        .unwrap();
        assert!(
            matches!(c.auth, SwiftAuth::V3 { ref project, ref user_domain, .. }
            if project == "p" && user_domain == "Default")
        );
    }

    #[test]
    fn preauth_and_fallbacks() {
        let c = SwiftConfig::from_lookup(
            "c",
            lookup(&[
                ("SWIFT_PREAUTHURL", "http://h/v1/AUTH_x"),
                ("SWIFT_PREAUTHTOKEN", "tok"),
                ("SWIFT_USERNAME", "ignored"),
            ]),
        )
        .unwrap();
        assert!(matches!(c.auth, SwiftAuth::Token { ref storage_url, .. }
            if storage_url == "http://h/v1/AUTH_x"));
        let c = SwiftConfig::from_lookup(
            "c",
            lookup(&[("ST_AUTH", "http://a"), ("ST_USER", "u"), ("ST_KEY", "k")]),
        )
        .unwrap();
        assert!(matches!(c.auth, SwiftAuth::V1 { .. }));
        let c = SwiftConfig::from_lookup(
            "c",
            lookup(&[
                ("OS_AUTH_URL", "http://k/v3"),
                ("OS_USERNAME", "u"),
                ("OS_PASSWORD", "p"),
                ("OS_PROJECT_NAME", "proj"),
                ("OS_REGION_NAME", "R"),
            ]),
        )
        .unwrap();
        assert!(
            matches!(c.auth, SwiftAuth::V3 { ref region, ref interface, .. }
            if region.as_deref() == Some("R") && interface == "public")
        );
        let c = SwiftConfig::from_lookup(
            "c",
            lookup(&[("OS_STORAGE_URL", "http://s"), ("OS_AUTH_TOKEN", "t")]),
        )
        .unwrap();
        assert!(matches!(c.auth, SwiftAuth::Token { .. }));
    }

    fn missing_var(r: Result<SwiftConfig, SwiftError>) -> String {
        match r {
            Err(SwiftError::MissingVar { var, .. }) => var,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_variables_are_named() {
        assert_eq!(
            missing_var(SwiftConfig::from_lookup(
                "c",
                lookup(&[("SWIFT_USERNAME", "u"), ("SWIFT_AUTHURL", "http://a")])
            )),
            "SWIFT_PASSWORD"
        );
        assert_eq!(
            missing_var(SwiftConfig::from_lookup(
                "c",
                lookup(&[("SWIFT_USERNAME", "u"), ("SWIFT_PASSWORD", "p")])
            )),
            "SWIFT_AUTHURL"
        );
        assert_eq!(
            missing_var(SwiftConfig::from_lookup(
                "c",
                lookup(&[("SWIFT_PREAUTHURL", "http://s")])
            )),
            "SWIFT_PREAUTHTOKEN"
        );
        assert_eq!(
            missing_var(SwiftConfig::from_lookup(
                "c",
                lookup(&[
                    ("SWIFT_AUTHVERSION", "3"),
                    ("SWIFT_USERNAME", "u"),
                    ("SWIFT_PASSWORD", "p"),
                    ("SWIFT_AUTHURL", "http://a"),
                ])
            )),
            "SWIFT_PROJECT_NAME"
        );
        assert_eq!(
            missing_var(SwiftConfig::from_lookup("c", lookup(&[]))),
            "SWIFT_USERNAME"
        );
        // The password never appears in errors or Debug output.
        let e = SwiftConfig::from_lookup(
            "c",
            lookup(&[("SWIFT_PASSWORD", "hunter2"), ("SWIFT_AUTHURL", "http://a")]),
        )
        .unwrap_err();
        assert!(!format!("{e} {e:?}").contains("hunter2"));
        let c = SwiftConfig::from_lookup(
            "c",
            lookup(&[
                ("SWIFT_USERNAME", "u"),
                ("SWIFT_PASSWORD", "hunter2"),
                ("SWIFT_AUTHURL", "http://a"),
            ]),
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(matches!(
            SwiftConfig::from_lookup(
                "c",
                lookup(&[
                    ("SWIFT_AUTHVERSION", "4"),
                    ("SWIFT_USERNAME", "u"),
                    ("SWIFT_PASSWORD", "p"),
                    ("SWIFT_AUTHURL", "http://a"),
                ])
            ),
            Err(SwiftError::Config(_))
        ));
        assert!(matches!(
            SwiftConfig::from_lookup("a/b", lookup(&[])),
            Err(SwiftError::Config(_))
        ));
    }
}
