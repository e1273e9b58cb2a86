//! ~200 MB through the writer and the reader (and gpg), streaming, in bounded memory.

mod crypto_support;

use std::io::{Read, Write};
use std::process::Stdio;

use crypto_support::*;
use flotilla_common::crypto::{Compression, DecryptionKeys, EncryptionSpec, decrypt_reader};
use sha2::{Digest, Sha256};

const TOTAL: u64 = 200 * 1024 * 1024;

fn hash_copy(mut r: impl Read, mut w: impl Write) -> (Vec<u8>, u64) {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        w.write_all(&buf[..k]).unwrap();
        n += k as u64;
    }
    (h.finalize().to_vec(), n)
}

#[test]
fn two_hundred_mb_through_writer_reader_and_gpg() {
    let rss_before = peak_rss();

    // 1. ours -> ours through a pipe: writer thread, reader here.
    let (pipe_r, pipe_w) = std::io::pipe().unwrap();
    let spec = EncryptionSpec {
        recipients: vec![public("ed")],
        signer: Some(secret("ed")),
        ..spec(Compression::Zip { level: 1 }, 2)
    };
    let writer = std::thread::spawn(move || {
        let w = spec.writer(pipe_w).unwrap();
        let mut w = w;
        let (hash, n) = hash_copy(MixedGen::new(TOTAL), &mut w);
        w.finish().unwrap();
        (hash, n)
    });
    let keys = DecryptionKeys {
        secret_keys: vec![secret("ed")],
        expected_signers: vec![public("ed")],
        ..Default::default()
    };
    let reader = decrypt_reader(&keys, pipe_r).unwrap();
    let (got_hash, got_n) = hash_copy(reader, std::io::sink());
    let (want_hash, want_n) = writer.join().unwrap();
    assert_eq!(want_n, TOTAL);
    assert_eq!(got_n, TOTAL);
    assert_eq!(got_hash, want_hash);

    // 2. ours -> gpg --decrypt, streaming.
    let home = GpgHome::new();
    let mut child = home
        .cmd()
        .args(["--passphrase", "big", "--decrypt"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let spec = EncryptionSpec {
        passphrase: Some("big".into()),
        ..crypto_support::spec(Compression::Zlib { level: 1 }, 2)
    };
    let writer = std::thread::spawn(move || {
        let mut w = spec.writer(stdin).unwrap();
        let r = hash_copy(MixedGen::new(TOTAL), &mut w);
        drop(w.finish().unwrap()); // closes gpg's stdin
        r
    });
    let (gpg_hash, gpg_n) = hash_copy(stdout, std::io::sink());
    assert!(child.wait().unwrap().success());
    let (want_hash, _) = writer.join().unwrap();
    assert_eq!(gpg_n, TOTAL);
    assert_eq!(gpg_hash, want_hash);

    // Nothing grew with the message size: 200 MB went through twice.
    let rss_after = peak_rss();
    eprintln!("peak RSS before {rss_before} after {rss_after}");
    assert!(
        rss_after < rss_before + 48 * 1024 * 1024,
        "peak RSS grew from {rss_before} to {rss_after}"
    );
}
