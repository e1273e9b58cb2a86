//! TempURL signatures (Swift's `tempurl` middleware) and prefix-scoped grants.

use crate::storage::Secret;
use hmac::{Hmac, Mac};
use std::collections::BTreeMap;

/// A prefix-scoped TempURL credential for one container: what a
/// [`super::SwiftStore::from_temp_url_grant`] needs. Serializable so it can be handed to
/// another process; the signatures are [`Secret`]s.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TempUrlGrant {
    /// The account URL, `.../v1/AUTH_x`.
    pub storage_url: String,
    pub container: String,
    /// Object-name prefix the signatures cover (Swift compares it as a plain string).
    pub prefix: String,
    /// Expiry, unix seconds.
    pub expires: u64,
    /// `sha1`, `sha256` or `sha512`.
    pub digest: String,
    /// The `temp_url_sig` value per HTTP method.
    pub signatures: BTreeMap<String, Secret>,
    /// Objects under `prefix` when the grant was minted (TempURLs cannot list).
    pub listing: Option<Vec<GrantedObject>>,
}

/// One object of a grant's listing snapshot.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct GrantedObject {
    pub name: String,
    pub size: u64,
    pub last_modified: chrono::DateTime<chrono::Utc>,
    pub e_tag: Option<String>,
}

/// The digests the tempurl middleware accepts, best first.
pub(crate) const PREFERRED_DIGESTS: [&str; 3] = ["sha256", "sha512", "sha1"];

/// The string the middleware signs for a prefix-based TempURL:
/// `METHOD\nEXPIRES\nprefix:/v1/AUTH_x/CONTAINER/PREFIX` (account path unencoded).
pub fn prefix_hmac_body(
    method: &str,
    expires: u64,
    account_path: &str,
    container: &str,
    prefix: &str,
) -> String {
    format!(
        "{method}\n{expires}\nprefix:{}/{container}/{prefix}",
        account_path.trim_end_matches('/')
    )
}

/// HMAC over `body` as lowercase hex, which the middleware accepts for sha1, sha256
/// and sha512 alike (it tells them apart by length).
pub fn sign(digest: &str, key: &[u8], body: &str) -> Option<String> {
    macro_rules! hex_hmac {
        ($d:ty) => {{
            let mut mac =
                <Hmac<$d> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
            mac.update(body.as_bytes());
            hex(&mac.finalize().into_bytes())
        }};
    }
    match digest {
        "sha1" => Some(hex_hmac!(sha1::Sha1)),
        "sha256" => Some(hex_hmac!(sha2::Sha256)),
        "sha512" => Some(hex_hmac!(sha2::Sha512)),
        _ => None,
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_format_matches_the_middleware() {
        assert_eq!(
            prefix_hmac_body("GET", 1700000000, "/v1/AUTH_test", "c", "p/"),
            "GET\n1700000000\nprefix:/v1/AUTH_test/c/p/"
        );
    }

    // Expected values from Python:
    // hmac.new(b'key', b'GET\n1700000000\nprefix:/v1/AUTH_test/c/p/', hashlib.X).hexdigest()
    #[test]
    fn signatures_match_python() {
        let body = prefix_hmac_body("GET", 1700000000, "/v1/AUTH_test", "c", "p/");
        assert_eq!(
            sign("sha256", b"key", &body).unwrap(),
            "077012624e640e45e9c133de934229d712f23a89ec6cf67196c7912ddc291993"
        );
        assert_eq!(
            sign("sha1", b"key", &body).unwrap(),
            "e1f5460f55ae548489ce3898d69aba01ff42d095"
        );
        assert_eq!(
            sign("sha512", b"key", &body).unwrap(),
            "2c37153ecc43dde7b33736a4b287dfaa74cb3c10af316f4c219f793c6ab410cc\
             c40d10ec4fa163c4bd1eef3989f5cd19a9aa4f8400acb3648fe746668ef4f618"
        );
        // Non-ASCII container names are signed as UTF-8, unencoded.
        let body = prefix_hmac_body("PUT", 1800000000, "/v1/AUTH_test/", "c ü", "backups/h1/");
        assert_eq!(
            sign("sha256", b"secret-key-123", &body).unwrap(),
            "b94983b281cf48c9807d8190a68154833a3800e2a56d95d509d3ba46de4e896b"
        );
        assert_eq!(sign("md5", b"key", &body), None);
    }
}
