//! The coordinator's own certificate authority (rcgen): `flotilla init` creates the CA,
//! the server certificate and an admin certificate; enrollment signs agents' CSRs.
//!
//! Identities live in the subject CN: `admin:NAME` for operators, `host:ID` for
//! agents. The CA key never leaves the coordinator's state directory (mode 0600).

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "{0} already exists: the coordinator is initialised (remove the directory to start over)"
    )]
    AlreadyInitialised(PathBuf),
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("certificate signing request refused: {0}")]
    BadCsr(String),
    #[error("certificate refused: {0}")]
    BadCertificate(String),
}

/// Who a client certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Admin(String),
    Host(String),
}

/// File names inside the PKI directory.
pub const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
pub const SERVER_CERT: &str = "server.pem";
pub const SERVER_KEY: &str = "server.key";
pub const ADMIN_CERT: &str = "admin.pem";
pub const ADMIN_KEY: &str = "admin.key";

const DAY: time::Duration = time::Duration::days(1);

fn write(path: &Path, text: &str, secret: bool) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |error| PkiError::Io {
        path: path.to_path_buf(),
        error,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|error| PkiError::Io {
        path: path.to_path_buf(),
        error,
    })
}

fn leaf_params(
    cn: &str,
    days: i64,
    eku: ExtendedKeyUsagePurpose,
) -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - DAY;
    p.not_after = now + time::Duration::days(days);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![eku];
    Ok(p)
}

/// What `init` created.
#[derive(Debug)]
pub struct InitReport {
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
}

/// Creates the CA, a server certificate for `server_names` (DNS names or IP
/// addresses) and an admin certificate named `admin`. Refuses an initialised `dir`.
pub fn init(dir: &Path, server_names: &[String], admin: &str) -> Result<InitReport, PkiError> {
    std::fs::create_dir_all(dir).map_err(|error| PkiError::Io {
        path: dir.to_path_buf(),
        error,
    })?;
    if dir.join(CA_CERT).exists() {
        return Err(PkiError::AlreadyInitialised(dir.join(CA_CERT)));
    }
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Flotilla coordinator CA");
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = time::OffsetDateTime::now_utc();
    ca.not_before = now - DAY;
    ca.not_after = now + time::Duration::days(3650);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, &ca_key);

    let server_key = KeyPair::generate()?;
    let mut server = leaf_params(
        "flotilla-coordinator",
        825,
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    // CertificateParams::new turns IP address strings into IP SANs.
    server.subject_alt_names = CertificateParams::new(server_names.to_vec())?.subject_alt_names;
    let server_cert = server.signed_by(&server_key, &issuer)?;

    let admin_key = KeyPair::generate()?;
    let admin_cert = leaf_params(
        &format!("admin:{admin}"),
        825,
        ExtendedKeyUsagePurpose::ClientAuth,
    )?
    .signed_by(&admin_key, &issuer)?;

    let files = [
        (CA_CERT, ca_cert.pem(), false),
        (CA_KEY, ca_key.serialize_pem(), true),
        (SERVER_CERT, server_cert.pem(), false),
        (SERVER_KEY, server_key.serialize_pem(), true),
        (ADMIN_CERT, admin_cert.pem(), false),
        (ADMIN_KEY, admin_key.serialize_pem(), true),
    ];
    let mut written = Vec::new();
    for (name, text, secret) in files {
        let path = dir.join(name);
        write(&path, &text, secret)?;
        written.push(path);
    }
    Ok(InitReport {
        dir: dir.to_path_buf(),
        files: written,
    })
}

/// The CA, loaded for signing agents' certificates.
pub struct Authority {
    ca_pem: String,
    ca_key: KeyPair,
}

impl Authority {
    pub fn load(dir: &Path) -> Result<Authority, PkiError> {
        let ca_pem = read(&dir.join(CA_CERT))?;
        let ca_key = KeyPair::from_pem(&read(&dir.join(CA_KEY))?)?;
        Ok(Authority { ca_pem, ca_key })
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Signs an agent's CSR (DER) as `host:HOST_ID`, whatever subject it asked for.
    pub fn sign_agent(&self, csr_der: &[u8], host_id: &str) -> Result<Vec<u8>, PkiError> {
        let der = rustls_pki_types::CertificateSigningRequestDer::from(csr_der.to_vec());
        let mut csr = CertificateSigningRequestParams::from_der(&der)
            .map_err(|e| PkiError::BadCsr(e.to_string()))?;
        csr.params = leaf_params(
            &format!("host:{host_id}"),
            365,
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        let issuer = Issuer::from_ca_cert_pem(&self.ca_pem, &self.ca_key)?;
        Ok(csr.signed_by(&issuer)?.der().to_vec())
    }
}

/// A new key and CSR for an agent (the key stays on the host).
pub fn agent_key_and_csr() -> Result<(String, Vec<u8>), PkiError> {
    let key = KeyPair::generate()?;
    let params = leaf_params("host:pending", 365, ExtendedKeyUsagePurpose::ClientAuth)?;
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.der().to_vec()))
}

/// The identity a verified client certificate (DER) names.
pub fn identity_of(cert_der: &[u8]) -> Result<Identity, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| PkiError::BadCertificate(format!("unparsable: {e}")))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .ok_or_else(|| PkiError::BadCertificate("no common name".into()))?;
    match cn.split_once(':') {
        Some(("admin", name)) if !name.is_empty() => Ok(Identity::Admin(name.to_string())),
        Some(("host", id)) if !id.is_empty() => Ok(Identity::Host(id.to_string())),
        _ => Err(PkiError::BadCertificate(format!(
            "common name {cn:?} names no Flotilla identity"
        ))),
    }
}

/// SHA-256 of a certificate (DER), hex: what the catalog records per host.
pub fn fingerprint(cert_der: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(cert_der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_sign_and_identify() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        let r = init(&pki, &["localhost".into(), "127.0.0.1".into()], "ops").unwrap();
        assert_eq!(r.files.len(), 6);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(pki.join(CA_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            init(&pki, &["localhost".into()], "ops"),
            Err(PkiError::AlreadyInitialised(_))
        ));
        let admin_pem = std::fs::read_to_string(pki.join(ADMIN_CERT)).unwrap();
        let admin_der = pem_to_der(&admin_pem);
        assert_eq!(
            identity_of(&admin_der).unwrap(),
            Identity::Admin("ops".into())
        );

        let ca = Authority::load(&pki).unwrap();
        let (_key, csr) = agent_key_and_csr().unwrap();
        let cert = ca.sign_agent(&csr, "web-01").unwrap();
        assert_eq!(identity_of(&cert).unwrap(), Identity::Host("web-01".into()));
        assert_eq!(fingerprint(&cert).len(), 64);
        // Malformed input is an error, not a panic.
        assert!(matches!(
            ca.sign_agent(b"not a csr", "x"),
            Err(PkiError::BadCsr(_))
        ));
        assert!(identity_of(b"\x30\x03garbage").is_err());
    }

    fn pem_to_der(pem: &str) -> Vec<u8> {
        use base64::Engine;
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    }
}
