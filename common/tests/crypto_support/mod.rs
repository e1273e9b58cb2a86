//! Shared helpers for the `crypto_*` integration tests.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use flotilla_common::crypto::{
    Compression, CryptoError, DecryptionKeys, EncryptionSpec, Passphrase, PublicKey, SecretKey,
    crypto_error_of, decrypt_reader,
};

pub fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/crypto")
        .join(name)
}

pub fn public(name: &str) -> PublicKey {
    PublicKey::from_file(&testdata(&format!("{name}.pub.asc"))).unwrap()
}

/// Test keys: `rsa` and `ed` are unprotected, `sub` uses the passphrase "flotilla-test".
pub fn secret(name: &str) -> SecretKey {
    let pw = (name == "sub").then(|| Passphrase::from("flotilla-test"));
    SecretKey::from_file(&testdata(&format!("{name}.sec.asc")), pw).unwrap()
}

/// Deterministic pseudo-random bytes (xorshift).
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

/// Text-like, compressible bytes.
pub fn compressible_bytes(n: usize, seed: u64) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "backup",
        "volume",
        "duplicity",
        "signature",
        "manifest",
        "the",
        "of",
        "and",
        "tar",
        "/usr/lib/x86_64-linux-gnu/",
        "libc.so.6",
        "0000644",
        "root",
        "\n",
        "  ",
        "{",
        "}",
    ];
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(n + 64);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(WORDS[(x % WORDS.len() as u64) as usize].as_bytes());
        if x.is_multiple_of(5) {
            v.extend_from_slice(&(x as u32).to_le_bytes());
        }
    }
    v.truncate(n);
    v
}

/// Mixed data: alternating compressible and random blocks of 256 KiB.
pub fn mixed_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(n);
    let mut i = 0u64;
    while v.len() < n {
        let take = (n - v.len()).min(256 * 1024);
        if i % 3 == 2 {
            v.extend_from_slice(&random_bytes(take, seed + i));
        } else {
            v.extend_from_slice(&compressible_bytes(take, seed + i));
        }
        i += 1;
    }
    v
}

pub fn spec(compression: Compression, threads: usize) -> EncryptionSpec {
    EncryptionSpec {
        recipients: Vec::new(),
        passphrase: None,
        signer: None,
        compression,
        compression_threads: threads,
    }
}

/// An output that accepts `0` more bytes and then fails every write with `1`.
pub struct FailingAfter(pub usize, pub &'static str);

impl Write for FailingAfter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        if self.0 < b.len() {
            return Err(io::Error::other(self.1));
        }
        self.0 -= b.len();
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Encrypts `data` in pieces of varying size (to exercise the buffering).
pub fn encrypt(spec: &EncryptionSpec, data: &[u8]) -> Vec<u8> {
    let mut w = spec.writer(Vec::new()).unwrap();
    let mut rest = data;
    let mut step = 1usize;
    while !rest.is_empty() {
        let n = step.min(rest.len());
        w.write_all(&rest[..n]).unwrap();
        rest = &rest[n..];
        step = (step * 7 + 13) % 300_000 + 1;
    }
    w.finish().unwrap()
}

/// Decrypts a whole message; any error (up front or while reading) as CryptoError.
pub fn decrypt(keys: &DecryptionKeys, msg: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut r = decrypt_reader(keys, msg)?;
    let mut out = Vec::new();
    match r.read_to_end(&mut out) {
        Ok(_) => Ok(out),
        Err(e) => Err(into_crypto(e)),
    }
}

pub fn into_crypto(e: io::Error) -> CryptoError {
    if crypto_error_of(&e).is_some() {
        let inner = e.into_inner().unwrap();
        match inner.downcast::<CryptoError>() {
            Ok(c) => *c,
            Err(other) => CryptoError::Io(io::Error::other(other)),
        }
    } else {
        CryptoError::Io(e)
    }
}

pub fn pw_keys(pw: &str) -> DecryptionKeys {
    DecryptionKeys {
        passphrases: vec![Passphrase::from(pw)],
        ..Default::default()
    }
}

pub fn sec_keys(names: &[&str]) -> DecryptionKeys {
    DecryptionKeys {
        secret_keys: names.iter().map(|n| secret(n)).collect(),
        ..Default::default()
    }
}

/// A temporary GNUPGHOME; kills its gpg-agent when dropped.
pub struct GpgHome {
    pub dir: tempfile::TempDir,
}

impl GpgHome {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("flotilla-gpg")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::write(
            dir.path().join("gpg-agent.conf"),
            "allow-loopback-pinentry\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        GpgHome { dir }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new("gpg");
        c.env("GNUPGHOME", self.dir.path()).args([
            "--batch",
            "--no-tty",
            "--pinentry-mode",
            "loopback",
        ]);
        c
    }

    /// Runs gpg with `args`, feeding `stdin`; panics on failure unless `allow_fail`.
    pub fn run(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = self
            .cmd()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("gpg runs");
        let mut input = child.stdin.take().unwrap();
        let data = stdin.to_vec();
        let feeder = std::thread::spawn(move || {
            let _ = input.write_all(&data);
        });
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap();
        out
    }

    pub fn ok(&self, args: &[&str], stdin: &[u8]) -> Vec<u8> {
        let out = self.run(args, stdin);
        assert!(
            out.status.success(),
            "gpg {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    pub fn import(&self, file: &Path) {
        self.ok(&["--import", file.to_str().unwrap()], b"");
    }

    /// Imports a test key and marks it ultimately trusted (so gpg encrypts to it quietly).
    pub fn import_trusted(&self, name: &str, secret: bool) {
        let f = if secret {
            testdata(&format!("{name}.sec.asc"))
        } else {
            testdata(&format!("{name}.pub.asc"))
        };
        if secret && name == "sub" {
            self.ok(
                &[
                    "--passphrase",
                    "flotilla-test",
                    "--import",
                    f.to_str().unwrap(),
                ],
                b"",
            );
        } else {
            self.import(&f);
        }
        let fpr = public(name).fingerprint_hex();
        self.ok(&["--import-ownertrust"], format!("{fpr}:6:\n").as_bytes());
    }
}

impl Drop for GpgHome {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.dir.path())
            .args(["--kill", "all"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// An endless-ish deterministic reader of mixed data (compressible text and random blocks),
/// generated on the fly so that nothing large is ever held in memory.
pub struct MixedGen {
    remaining: u64,
    block: Vec<u8>,
    pos: usize,
    n: u64,
}

impl MixedGen {
    pub fn new(len: u64) -> Self {
        MixedGen {
            remaining: len,
            block: Vec::new(),
            pos: 0,
            n: 0,
        }
    }
}

impl Read for MixedGen {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        if self.pos == self.block.len() {
            self.n += 1;
            self.block = if self.n.is_multiple_of(3) {
                random_bytes(256 * 1024, self.n)
            } else {
                compressible_bytes(256 * 1024, self.n)
            };
            self.pos = 0;
        }
        let n = buf
            .len()
            .min(self.block.len() - self.pos)
            .min(self.remaining as usize);
        buf[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
        self.pos += n;
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Peak resident set size of this process (VmHWM), in bytes.
pub fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// Names of this process's threads.
pub fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_string())
        .collect()
}
