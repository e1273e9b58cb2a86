//! A throw-away GnuPG home and the stock `gpg` operations the interoperability
//! tests need: generate, import, export keys; encrypt, decrypt, list packets.
//!
//! Everything runs `gpg --homedir <home> --batch --pinentry-mode loopback`, with
//! stdin/stdout for data, so nothing prompts. Symmetric passphrases are never
//! cached by the agent (`--no-symkey-cache`), so a decryption without a
//! passphrase really has none.

use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::bins::{Cmd, CmdOutput};

/// Key types [`GpgHome::generate_key`] can make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgo {
    /// gpg's `future-default`: an ed25519 primary key (certify, sign) with a
    /// cv25519 encryption subkey. Generated in milliseconds: prefer it in tests.
    Ed25519,
    /// A single RSA 3072 primary key usable to sign and to encrypt (no subkey),
    /// as `--quick-gen-key UID rsa3072 sign,encrypt never` makes it. About 0.2-2 s.
    Rsa3072,
}

/// A subkey of a [`KeyInfo`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubkeyInfo {
    /// 40 hex digits, upper case.
    pub fingerprint: String,
    /// Long key id (16 hex digits, upper case).
    pub key_id: String,
    /// OpenPGP public-key algorithm number (1 RSA, 18 ECDH, 22 EdDSA).
    pub algo: u32,
    /// Capabilities as gpg lists them (`e`, `s`, `a`, lower case for the subkey).
    pub capabilities: String,
}

/// A key as `gpg --with-colons --list-keys` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// Primary key fingerprint, 40 hex digits, upper case.
    pub fingerprint: String,
    /// Primary long key id (16 hex digits, upper case).
    pub key_id: String,
    /// OpenPGP algorithm number of the primary key.
    pub algo: u32,
    /// Capabilities of the primary key as listed (e.g. `scESC`; upper case = the
    /// whole key).
    pub capabilities: String,
    /// User ids, e.g. `Name <name@example.test>`.
    pub uids: Vec<String>,
    /// Subkeys in listing order.
    pub subkeys: Vec<SubkeyInfo>,
}

impl KeyInfo {
    /// The first subkey that can encrypt, if any.
    pub fn encryption_subkey(&self) -> Option<&SubkeyInfo> {
        self.subkeys.iter().find(|s| s.capabilities.contains('e'))
    }

    /// Fingerprint of the key that encrypts: the encryption subkey's, or the
    /// primary key's if it has none.
    pub fn encryption_fingerprint(&self) -> &str {
        self.encryption_subkey()
            .map(|s| s.fingerprint.as_str())
            .unwrap_or(&self.fingerprint)
    }

    /// The e-mail address of the first user id, if it has one.
    pub fn email(&self) -> Option<&str> {
        let uid = self.uids.first()?;
        let start = uid.find('<')? + 1;
        let end = uid[start..].find('>')? + start;
        Some(&uid[start..end])
    }
}

/// Result of a successful [`GpgHome::decrypt`].
#[derive(Debug, Clone)]
pub struct Decrypted {
    /// The plaintext.
    pub plaintext: Vec<u8>,
    /// `--status-file` lines without the `[GNUPG:] ` prefix, e.g.
    /// `DECRYPTION_OKAY`, `GOODSIG <keyid> <uid>`, `VALIDSIG <fpr> ...`.
    pub status: Vec<String>,
}

impl Decrypted {
    /// The first status line whose keyword is `keyword`, without the keyword.
    pub fn status_arg(&self, keyword: &str) -> Option<&str> {
        status_arg(&self.status, keyword)
    }

    /// Whether a status line with this keyword was emitted.
    pub fn has_status(&self, keyword: &str) -> bool {
        self.status_arg(keyword).is_some()
    }
}

fn status_arg<'a>(status: &'a [String], keyword: &str) -> Option<&'a str> {
    status.iter().find_map(|l| {
        let rest = l.strip_prefix(keyword)?;
        if rest.is_empty() {
            Some("")
        } else {
            rest.strip_prefix(' ')
        }
    })
}

/// A failed gpg operation: the process output and its status lines.
#[derive(Debug, Clone)]
pub struct GpgError {
    /// Exit status and both streams.
    pub output: CmdOutput,
    /// `--status-file` lines without the `[GNUPG:] ` prefix.
    pub status: Vec<String>,
}

impl GpgError {
    /// Whether a status line with this keyword was emitted (e.g.
    /// `DECRYPTION_FAILED`, `NO_SECKEY`, `BADSIG`).
    pub fn has_status(&self, keyword: &str) -> bool {
        status_arg(&self.status, keyword).is_some()
    }
}

impl fmt::Display for GpgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "gpg failed: {}", self.output)?;
        write!(f, "status: {:?}", self.status)
    }
}

impl std::error::Error for GpgError {}

/// A temporary GnuPG home under `/tmp` (short, so the agent's socket path stays
/// below the ~100-byte `sun_path` limit whatever `TMPDIR` is), mode 0700.
/// Dropping it stops its agents (`gpgconf --kill all`) and deletes it.
#[derive(Debug)]
pub struct GpgHome {
    dir: tempfile::TempDir,
    counter: AtomicU64,
}

impl Default for GpgHome {
    fn default() -> Self {
        Self::new()
    }
}

impl GpgHome {
    /// Creates an empty home.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("flt-gpg-")
            .tempdir_in("/tmp")
            .expect("create GNUPGHOME under /tmp");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).expect("chmod 700");
        GpgHome {
            dir,
            counter: AtomicU64::new(0),
        }
    }

    /// The directory, to use as `GNUPGHOME`.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `gpg --homedir <home> --batch --no-tty --pinentry-mode loopback` with
    /// `LC_ALL=C` (stable messages); add arguments and run.
    pub fn command(&self) -> Cmd {
        Cmd::new("gpg")
            .env("GNUPGHOME", self.path())
            .env("LC_ALL", "C")
            .arg("--homedir")
            .arg(self.path())
            .args(["--batch", "--no-tty", "--pinentry-mode", "loopback"])
    }

    fn status_path(&self) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.path().join(format!("status-{n}.txt"))
    }

    /// Runs `gpg <args>` with `data` on stdin and a status file; returns the
    /// output and the status lines.
    fn run_status(&self, args: &[&str], data: &[u8]) -> (CmdOutput, Vec<String>) {
        let sp = self.status_path();
        let out = self
            .command()
            .arg("--status-file")
            .arg(&sp)
            .args(args)
            .stdin(data.to_vec())
            .run();
        let status = fs::read(&sp)
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .lines()
                    .map(|l| l.strip_prefix("[GNUPG:] ").unwrap_or(l).to_string())
                    .collect()
            })
            .unwrap_or_default();
        let _ = fs::remove_file(&sp);
        (out, status)
    }

    #[track_caller]
    fn run_ok(&self, args: &[&str], data: &[u8]) -> Vec<u8> {
        let (out, status) = self.run_status(args, data);
        if !out.success() {
            panic!(
                "{}",
                GpgError {
                    output: out,
                    status
                }
            );
        }
        out.stdout
    }

    /// Generates a key without passphrase, never expiring, for user id
    /// `name <slug@example.test>` (or `name` itself if it contains `<`).
    #[track_caller]
    pub fn generate_key(&self, name: &str, algo: KeyAlgo) -> KeyInfo {
        self.generate_key_with_passphrase(name, algo, None)
    }

    /// [`GpgHome::generate_key`] with the secret key protected by `passphrase`.
    #[track_caller]
    pub fn generate_key_with_passphrase(
        &self,
        name: &str,
        algo: KeyAlgo,
        passphrase: Option<&str>,
    ) -> KeyInfo {
        let uid = user_id(name);
        let (a, usage) = match algo {
            KeyAlgo::Ed25519 => ("future-default", "default"),
            KeyAlgo::Rsa3072 => ("rsa3072", "sign,encrypt"),
        };
        let (out, status) = self.run_status(
            &[
                "--passphrase",
                passphrase.unwrap_or(""),
                "--quick-gen-key",
                &uid,
                a,
                usage,
                "never",
            ],
            b"",
        );
        let fpr = status_arg(&status, "KEY_CREATED")
            .and_then(|s| s.split_whitespace().nth(1))
            .map(str::to_string);
        match fpr {
            Some(fpr) if out.success() => self.key_info(&fpr),
            _ => panic!(
                "{}",
                GpgError {
                    output: out,
                    status
                }
            ),
        }
    }

    /// Adds a subkey (`gpg --quick-add-key FPR ALGO USAGE never`), e.g.
    /// `("ed25519", "sign")` or `("cv25519", "encr")`; the primary key must have
    /// no passphrase. Returns the updated key.
    #[track_caller]
    pub fn add_subkey(&self, fingerprint: &str, algo: &str, usage: &str) -> KeyInfo {
        self.run_ok(
            &[
                "--passphrase",
                "",
                "--quick-add-key",
                fingerprint,
                algo,
                usage,
                "never",
            ],
            b"",
        );
        self.key_info(fingerprint)
    }

    /// Describes the public key matching `id` (fingerprint, key id, e-mail).
    #[track_caller]
    pub fn key_info(&self, id: &str) -> KeyInfo {
        let out = self
            .command()
            .args([
                "--with-colons",
                "--fixed-list-mode",
                "--list-keys",
                "--",
                id,
            ])
            .run_ok();
        let keys = parse_colon_listing(&out.stdout_str());
        match <[KeyInfo; 1]>::try_from(keys) {
            Ok([k]) => k,
            Err(keys) => panic!("expected exactly one key for {id:?}, found {keys:?}"),
        }
    }

    /// Every public key in the keyring.
    pub fn list_keys(&self) -> Vec<KeyInfo> {
        let out = self
            .command()
            .args(["--with-colons", "--fixed-list-mode", "--list-keys"])
            .run();
        parse_colon_listing(&out.stdout_str())
    }

    /// Primary fingerprint (40 upper-case hex digits) of the key matching `id`.
    #[track_caller]
    pub fn fingerprint(&self, id: &str) -> String {
        self.key_info(id).fingerprint
    }

    /// Primary long key id (16 upper-case hex digits) of the key matching `id`.
    #[track_caller]
    pub fn key_id(&self, id: &str) -> String {
        self.key_info(id).key_id
    }

    /// Imports keys (armored or binary, public or secret); returns the
    /// fingerprints gpg reports as imported or unchanged.
    #[track_caller]
    pub fn import(&self, key_data: &[u8]) -> Vec<String> {
        let (out, status) = self.run_status(&["--import"], key_data);
        if !out.success() {
            panic!(
                "{}",
                GpgError {
                    output: out,
                    status
                }
            );
        }
        let mut fprs: Vec<String> = status
            .iter()
            .filter_map(|l| l.strip_prefix("IMPORT_OK "))
            .filter_map(|l| l.split_whitespace().nth(1))
            .map(str::to_string)
            .collect();
        fprs.dedup();
        fprs
    }

    /// Marks the key with this fingerprint as ultimately trusted, as its owner
    /// would (so plain `gpg --recipient` and duplicity's `--encrypt-key` accept it).
    #[track_caller]
    pub fn trust_ultimately(&self, fingerprint: &str) {
        self.command()
            .arg("--import-ownertrust")
            .stdin(format!("{fingerprint}:6:\n"))
            .run_ok();
    }

    /// [`GpgHome::import`], then [`GpgHome::trust_ultimately`] every imported key.
    #[track_caller]
    pub fn import_trusted(&self, key_data: &[u8]) -> Vec<String> {
        let fprs = self.import(key_data);
        for f in &fprs {
            self.trust_ultimately(f);
        }
        fprs
    }

    /// `gpg --armor --export ID`.
    #[track_caller]
    pub fn export_public_armored(&self, id: &str) -> Vec<u8> {
        let out = self.run_ok(&["--armor", "--export", "--", id], b"");
        assert!(!out.is_empty(), "no public key exported for {id:?}");
        out
    }

    /// `gpg --armor --export-secret-keys ID` (key without passphrase, or
    /// protected by the passphrase it was generated with).
    #[track_caller]
    pub fn export_secret_armored(&self, id: &str) -> Vec<u8> {
        let out = self.run_ok(
            &[
                "--passphrase",
                "",
                "--armor",
                "--export-secret-keys",
                "--",
                id,
            ],
            b"",
        );
        assert!(!out.is_empty(), "no secret key exported for {id:?}");
        out
    }

    /// Decrypts (and checks any signature of) an OpenPGP message, binary or
    /// armored. `passphrase` is the symmetric passphrase or the secret key's.
    /// A bad signature, a missing key or a wrong passphrase is an `Err`.
    pub fn decrypt(&self, data: &[u8], passphrase: Option<&str>) -> Result<Decrypted, GpgError> {
        let mut args = vec!["--no-symkey-cache"];
        if let Some(p) = passphrase {
            args.extend(["--passphrase", p]);
        }
        args.extend(["--decrypt", "-"]);
        let (out, status) = self.run_status(&args, data);
        if out.success() {
            Ok(Decrypted {
                plaintext: out.stdout,
                status,
            })
        } else {
            Err(GpgError {
                output: out,
                status,
            })
        }
    }

    /// Symmetrically encrypts (binary output, gpg's default cipher and s2k).
    #[track_caller]
    pub fn encrypt_symmetric(&self, data: &[u8], passphrase: &str) -> Vec<u8> {
        self.run_ok(
            &[
                "--no-symkey-cache",
                "--passphrase",
                passphrase,
                "--symmetric",
                "--output",
                "-",
            ],
            data,
        )
    }

    /// Encrypts to the public key `id` (binary output; trust is not required).
    #[track_caller]
    pub fn encrypt_to(&self, data: &[u8], id: &str) -> Vec<u8> {
        self.run_ok(
            &[
                "--trust-model",
                "always",
                "--recipient",
                id,
                "--encrypt",
                "--output",
                "-",
            ],
            data,
        )
    }

    /// Signs with the secret key `signer` (no passphrase) and encrypts to
    /// `recipient` (binary output).
    #[track_caller]
    pub fn sign_and_encrypt_to(&self, data: &[u8], recipient: &str, signer: &str) -> Vec<u8> {
        self.run_ok(
            &[
                "--trust-model",
                "always",
                "--passphrase",
                "",
                "--local-user",
                signer,
                "--recipient",
                recipient,
                "--sign",
                "--encrypt",
                "--output",
                "-",
            ],
            data,
        )
    }

    /// `gpg --list-packets` of a message (without decrypting when no secret key
    /// or passphrase is available; gpg then lists only the outer packets).
    pub fn list_packets(&self, data: &[u8]) -> String {
        // exit status is non-zero when gpg cannot decrypt; the listing is still there
        let out = self
            .command()
            .args(["--no-symkey-cache", "--list-packets"])
            .stdin(data.to_vec())
            .run();
        out.stdout_str()
    }

    /// [`GpgHome::list_packets`] with a passphrase, so that the encrypted content
    /// (compression, literal data, signatures) is listed too.
    pub fn list_packets_with_passphrase(&self, data: &[u8], passphrase: &str) -> String {
        let out = self
            .command()
            .args([
                "--no-symkey-cache",
                "--passphrase",
                passphrase,
                "--list-packets",
            ])
            .stdin(data.to_vec())
            .run();
        out.stdout_str()
    }
}

impl Drop for GpgHome {
    fn drop(&mut self) {
        let _ = Cmd::new("gpgconf")
            .env("GNUPGHOME", self.path())
            .arg("--homedir")
            .arg(self.path())
            .args(["--kill", "all"])
            .timeout(std::time::Duration::from_secs(30))
            .run();
    }
}

/// `name <slug@example.test>`, or `name` unchanged if it already has an address.
pub fn user_id(name: &str) -> String {
    if name.contains('<') {
        return name.to_string();
    }
    let mut slug = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('.') && !slug.is_empty() {
            slug.push('.');
        }
    }
    let slug = slug.trim_end_matches('.');
    let slug = if slug.is_empty() { "key" } else { slug };
    format!("{name} <{slug}@example.test>")
}

/// Parses `gpg --with-colons --fixed-list-mode --list-keys` output.
pub fn parse_colon_listing(text: &str) -> Vec<KeyInfo> {
    let mut keys: Vec<KeyInfo> = Vec::new();
    // which record the next `fpr` line belongs to: None, primary, or subkey
    let mut last: Option<bool> = None;
    for line in text.lines() {
        let f: Vec<&str> = line.split(':').collect();
        let field = |i: usize| f.get(i).copied().unwrap_or("");
        match field(0) {
            "pub" | "sec" => {
                keys.push(KeyInfo {
                    fingerprint: String::new(),
                    key_id: field(4).to_string(),
                    algo: field(3).parse().unwrap_or(0),
                    capabilities: field(11).to_string(),
                    uids: Vec::new(),
                    subkeys: Vec::new(),
                });
                last = Some(true);
            }
            "sub" | "ssb" => {
                if let Some(k) = keys.last_mut() {
                    k.subkeys.push(SubkeyInfo {
                        fingerprint: String::new(),
                        key_id: field(4).to_string(),
                        algo: field(3).parse().unwrap_or(0),
                        capabilities: field(11).to_string(),
                    });
                    last = Some(false);
                }
            }
            "uid" => {
                if let Some(k) = keys.last_mut() {
                    k.uids.push(unescape_colon_field(field(9)));
                }
                last = None;
            }
            "fpr" => {
                let fpr = field(9).to_string();
                match (last.take(), keys.last_mut()) {
                    (Some(true), Some(k)) => k.fingerprint = fpr,
                    (Some(false), Some(k)) => {
                        if let Some(s) = k.subkeys.last_mut() {
                            s.fingerprint = fpr;
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    keys
}

/// Undoes gpg's `\xNN` escaping in colon listings.
fn unescape_colon_field(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1] == b'x' {
            let hex = std::str::from_utf8(&b[i + 2..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_id_from_name() {
        assert_eq!(
            user_id("Fleet 2026"),
            "Fleet 2026 <fleet.2026@example.test>"
        );
        assert_eq!(user_id("a <b@c>"), "a <b@c>");
        assert_eq!(user_id("!!"), "!! <key@example.test>");
    }

    #[test]
    fn parses_colon_listing() {
        let text = "tru:o:1:1795326259:1:3:1:5\n\
pub:u:255:22:42BDEF70DEA3D627:1795326259:::u:::scESC:::::ed25519:::0:\n\
fpr:::::::::BC38899D35191AE1EC3BD1D042BDEF70DEA3D627:\n\
uid:u::::1795326259::DE2E::Test One <test.one@example.test>::::::::::0:\n\
sub:u:255:18:62414DEC5170E60B:1795326259::::::e:::::cv25519::\n\
fpr:::::::::9132309C096629EAF899998362414DEC5170E60B:\n\
pub:u:3072:1:93FF8D69BE8D0DA5:1795326259:::u:::escESC::::::23::0:\n\
fpr:::::::::29A4D77719F5DEBD776B3E0D93FF8D69BE8D0DA5:\n\
uid:u::::1795326259::04F0::R \\x3a x <r@example.test>::::::::::0:\n";
        let keys = parse_colon_listing(text);
        assert_eq!(keys.len(), 2);
        let k = &keys[0];
        assert_eq!(k.fingerprint, "BC38899D35191AE1EC3BD1D042BDEF70DEA3D627");
        assert_eq!(k.key_id, "42BDEF70DEA3D627");
        assert_eq!(k.algo, 22);
        assert_eq!(k.email(), Some("test.one@example.test"));
        let s = k.encryption_subkey().unwrap();
        assert_eq!(s.fingerprint, "9132309C096629EAF899998362414DEC5170E60B");
        assert_eq!((s.algo, s.capabilities.as_str()), (18, "e"));
        assert_eq!(keys[1].uids, vec!["R : x <r@example.test>"]);
        assert!(keys[1].encryption_subkey().is_none());
        assert_eq!(keys[1].encryption_fingerprint(), keys[1].fingerprint);
    }

    #[test]
    fn home_path_is_short_and_private() {
        let h = GpgHome::new();
        assert!(h.path().as_os_str().len() < 40, "{}", h.path().display());
        let mode = fs::metadata(h.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn symmetric_wrong_and_missing_passphrase_fail() {
        let h = GpgHome::new();
        let msg = h.encrypt_symmetric(b"secret data", "right");
        let err = h.decrypt(&msg, Some("wrong")).unwrap_err();
        assert!(err.has_status("DECRYPTION_FAILED"), "{err}");
        // not served from an agent cache
        assert!(h.decrypt(&msg, None).is_err());
        let ok = h.decrypt(&msg, Some("right")).unwrap();
        assert_eq!(ok.plaintext, b"secret data");
        assert!(ok.has_status("DECRYPTION_OKAY"));
        let packets = h.list_packets(&msg);
        assert!(packets.contains("symkey enc packet"), "{packets}");
    }

    #[test]
    fn public_key_round_trip_across_homes() {
        let owner = GpgHome::new();
        let key = owner.generate_key("Fleet Key", KeyAlgo::Ed25519);
        assert_eq!(key.uids, vec!["Fleet Key <fleet.key@example.test>"]);
        assert_eq!(key.algo, 22);
        let sub = key.encryption_subkey().expect("cv25519 subkey");
        assert_eq!(sub.algo, 18);
        assert_eq!(owner.fingerprint("fleet.key@example.test"), key.fingerprint);
        assert_eq!(owner.key_id(&key.fingerprint), key.key_id);

        // an agent-like home that holds only the public key
        let agent = GpgHome::new();
        let public = owner.export_public_armored(&key.fingerprint);
        assert!(public.starts_with(b"-----BEGIN PGP PUBLIC KEY BLOCK-----"));
        assert_eq!(agent.import(&public), vec![key.fingerprint.clone()]);
        let msg = agent.encrypt_to(b"payload", &key.fingerprint);
        let packets = agent.list_packets(&msg);
        assert!(packets.contains(&sub.key_id), "{packets}");
        // the agent cannot read it
        let err = agent.decrypt(&msg, None).unwrap_err();
        assert!(err.has_status("NO_SECKEY"), "{err}");
        // the owner can, and so can a home the secret key is exported to
        assert_eq!(owner.decrypt(&msg, None).unwrap().plaintext, b"payload");
        let third = GpgHome::new();
        third.import(&owner.export_secret_armored(&key.fingerprint));
        assert_eq!(third.decrypt(&msg, None).unwrap().plaintext, b"payload");
    }

    #[test]
    fn signed_message_reports_signer() {
        let h = GpgHome::new();
        let signer = h.generate_key("Host Signer", KeyAlgo::Ed25519);
        let recipient = h.generate_key("Recipient", KeyAlgo::Ed25519);
        let msg = h.sign_and_encrypt_to(b"x", &recipient.fingerprint, &signer.fingerprint);
        let d = h.decrypt(&msg, None).unwrap();
        let validsig = d.status_arg("VALIDSIG").expect("VALIDSIG");
        assert!(validsig.starts_with(&signer.fingerprint), "{validsig}");
    }

    #[test]
    fn rsa_key_and_subkey() {
        let h = GpgHome::new();
        let k = h.generate_key("Rsa Key", KeyAlgo::Rsa3072);
        assert_eq!(k.algo, 1);
        assert!(k.subkeys.is_empty());
        assert!(k.capabilities.contains('e') && k.capabilities.contains('s'));
        let k = h.add_subkey(&k.fingerprint, "ed25519", "sign");
        assert_eq!(k.subkeys.len(), 1);
        assert!(k.subkeys[0].capabilities.contains('s'));
        let msg = h.encrypt_to(b"rsa", &k.fingerprint);
        assert_eq!(h.decrypt(&msg, None).unwrap().plaintext, b"rsa");
    }

    #[test]
    fn trust_makes_recipient_usable_without_trust_model() {
        let owner = GpgHome::new();
        let key = owner.generate_key("Trusted", KeyAlgo::Ed25519);
        let other = GpgHome::new();
        other.import_trusted(&owner.export_public_armored(&key.fingerprint));
        let out = other
            .command()
            .args([
                "--recipient",
                &key.fingerprint,
                "--encrypt",
                "--output",
                "-",
            ])
            .stdin(&b"t"[..])
            .run_ok();
        assert_eq!(owner.decrypt(&out.stdout, None).unwrap().plaintext, b"t");
    }
}
