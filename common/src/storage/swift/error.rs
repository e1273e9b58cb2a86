//! Swift errors and their mapping onto `object_store::Error`.
//!
//! Messages carry the method, the object path (never a query string), the status and a
//! short body excerpt; tokens, keys and TempURL signatures never reach them.

/// What went wrong talking to Swift.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SwiftError {
    /// A configuration variable is missing (names exactly which one).
    #[error("Swift configuration: {var} is not set{hint}")]
    MissingVar { var: String, hint: String },
    /// The configuration is unusable.
    #[error("Swift configuration: {0}")]
    Config(String),
    /// The auth service or the store refused the credentials.
    #[error(
        "{destination}: {method} {path}: HTTP {status}: the credentials were refused \
         ({what}){excerpt}"
    )]
    Credentials {
        destination: String,
        method: String,
        path: String,
        status: u16,
        what: String,
        excerpt: String,
    },
    /// A request outside what a TempURL grant covers, refused locally or by the server.
    #[error("{destination}: {method} {path}: {reason}")]
    OutOfScope {
        destination: String,
        method: String,
        path: String,
        reason: String,
    },
    /// The server answered with an unexpected status.
    #[error(
        "{destination}: {method} {path}: HTTP {status}{excerpt}{}",
        if *retryable { " (temporary; retrying may help)" } else { "" }
    )]
    Http {
        destination: String,
        method: String,
        path: String,
        status: u16,
        excerpt: String,
        retryable: bool,
    },
    /// No answer: connection refused/reset, TLS trouble, timeout.
    #[error("{destination}: {method} {path}: {message} (retrying may help)")]
    Transport {
        destination: String,
        method: String,
        path: String,
        message: String,
    },
    /// The answer did not make sense (bad JSON, missing header).
    #[error("{destination}: {method} {path}: malformed response: {reason}")]
    BadResponse {
        destination: String,
        method: String,
        path: String,
        reason: String,
    },
    /// An operation this backend cannot do in the current mode.
    #[error("{destination}: {operation} is not supported: {reason}")]
    Unsupported {
        destination: String,
        operation: String,
        reason: String,
    },
}

impl SwiftError {
    /// True when the same request may succeed later (network trouble, server errors).
    pub fn is_retryable(&self) -> bool {
        match self {
            SwiftError::Http { retryable, .. } => *retryable,
            SwiftError::Transport { .. } => true,
            _ => false,
        }
    }

    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            SwiftError::Http { status, .. } | SwiftError::Credentials { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }
}

/// Statuses worth retrying as such (the body can be resent).
pub(crate) fn retryable_status(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}

/// A short, single-line excerpt of an error body, without markup or anything that
/// looks like a URL query (which could carry a signature).
pub(crate) fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(2048)]);
    let mut plain = String::new();
    let mut in_tag = false;
    for c in text.chars() {
        match c {
            '<' => {
                in_tag = true;
                plain.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => plain.push(if c.is_control() { ' ' } else { c }),
            _ => {}
        }
    }
    let mut words: Vec<&str> = plain.split_whitespace().collect();
    if let Some(i) = words
        .iter()
        .position(|w| w.contains("temp_url_") || w.contains('?') || w.contains("token"))
    {
        words.truncate(i);
    }
    let mut s = words.join(" ");
    if s.len() > 200 {
        let mut cut = 200;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    if s.is_empty() { s } else { format!(": {s}") }
}

/// How a failed request maps onto object_store's error kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ctx {
    Plain,
    /// A create-only write: 412 means the object exists.
    CreateOnly,
}

pub(crate) fn to_os(err: SwiftError, path: &str, ctx: Ctx) -> object_store::Error {
    let path = path.to_string();
    match &err {
        SwiftError::Credentials { status: 401, .. } => object_store::Error::Unauthenticated {
            path,
            source: Box::new(err),
        },
        SwiftError::Credentials { .. } | SwiftError::OutOfScope { .. } => {
            object_store::Error::PermissionDenied {
                path,
                source: Box::new(err),
            }
        }
        SwiftError::Http { status, .. } => match *status {
            404 => object_store::Error::NotFound {
                path,
                source: Box::new(err),
            },
            412 if ctx == Ctx::CreateOnly => object_store::Error::AlreadyExists {
                path,
                source: Box::new(err),
            },
            412 => object_store::Error::Precondition {
                path,
                source: Box::new(err),
            },
            304 => object_store::Error::NotModified {
                path,
                source: Box::new(err),
            },
            _ => object_store::Error::Generic {
                store: "Swift",
                source: Box::new(err),
            },
        },
        SwiftError::Unsupported { .. } => object_store::Error::NotSupported {
            source: Box::new(err),
        },
        _ => object_store::Error::Generic {
            store: "Swift",
            source: Box::new(err),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_strips_markup_and_queries() {
        assert_eq!(
            excerpt(b"<html><h1>Not Found</h1><p>The resource could not be found.</p></html>"),
            ": Not Found The resource could not be found."
        );
        assert_eq!(excerpt(b""), "");
        let e = excerpt(b"bad url /v1/a/c/o?temp_url_sig=abc&x=1 more");
        assert!(!e.contains("abc"), "{e}");
        let long = vec![b'x'; 5000];
        assert!(excerpt(&long).len() < 210);
    }

    #[test]
    fn statuses_map_to_object_store_kinds() {
        let http = |status| SwiftError::Http {
            destination: "swift://c".into(),
            method: "GET".into(),
            path: "a".into(),
            status,
            excerpt: String::new(),
            retryable: retryable_status(status),
        };
        assert!(matches!(
            to_os(http(404), "a", Ctx::Plain),
            object_store::Error::NotFound { .. }
        ));
        assert!(matches!(
            to_os(http(412), "a", Ctx::CreateOnly),
            object_store::Error::AlreadyExists { .. }
        ));
        assert!(matches!(
            to_os(http(412), "a", Ctx::Plain),
            object_store::Error::Precondition { .. }
        ));
        assert!(matches!(
            to_os(http(304), "a", Ctx::Plain),
            object_store::Error::NotModified { .. }
        ));
        assert!(http(503).is_retryable());
        assert!(!http(400).is_retryable());
        assert!(matches!(
            to_os(http(500), "a", Ctx::Plain),
            object_store::Error::Generic { store: "Swift", .. }
        ));
    }
}
