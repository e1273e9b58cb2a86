//! Our writer -> our reader, and the error cases.

mod crypto_support;

use std::io::{Read, Write};

use crypto_support::*;
use flotilla_common::crypto::{
    Compression, CryptoError, DecryptionKeys, EncryptionSpec, Passphrase, PublicKey, decrypt_reader,
};

const COMPRESSIONS: [Compression; 4] = [
    Compression::None,
    Compression::Zip { level: 1 },
    Compression::Zip { level: 9 },
    Compression::Zlib { level: 6 },
];

const MIB: usize = 1 << 20;

fn sym(compression: Compression, threads: usize) -> EncryptionSpec {
    EncryptionSpec {
        passphrase: Some(Passphrase::from("correct horse")),
        ..spec(compression, threads)
    }
}

#[test]
fn roundtrip_sizes_compressions_threads() {
    // Boundaries of the length encodings (192, 8384), literal parts (64 KiB), deflate chunks
    // and SEIPD parts (1 MiB).
    let sizes = [
        0,
        1,
        191,
        192,
        8383,
        8384,
        65535,
        65536,
        65537,
        MIB - 1,
        MIB,
        MIB + 1,
        3 * MIB,
    ];
    // Public key (cheap to open); the passphrase path is covered below and elsewhere.
    let keys = sec_keys(&["ed"]);
    for compression in COMPRESSIONS {
        for threads in [1, 4] {
            let spec = EncryptionSpec {
                recipients: vec![public("ed")],
                ..spec(compression, threads)
            };
            for (i, &n) in sizes.iter().enumerate() {
                let data = if i % 2 == 0 {
                    compressible_bytes(n, i as u64)
                } else {
                    random_bytes(n, i as u64)
                };
                let msg = encrypt(&spec, &data);
                let got = decrypt(&keys, &msg)
                    .unwrap_or_else(|e| panic!("{compression:?} t{threads} n{n}: {e}"));
                assert!(
                    got == data,
                    "{compression:?} t{threads} n{n}: content differs"
                );
            }
        }
    }
    // Passphrase only, every compression, a few sizes.
    let keys = pw_keys("correct horse");
    for (i, compression) in COMPRESSIONS.into_iter().enumerate() {
        for n in [0, 1, MIB + 1] {
            let data = compressible_bytes(n, i as u64);
            let msg = encrypt(&sym(compression, 1 + i % 2 * 3), &data);
            assert!(
                decrypt(&keys, &msg).unwrap() == data,
                "{compression:?} n{n}"
            );
        }
    }
}

#[test]
fn twenty_mb_random_and_compressible_one_and_four_threads() {
    let keys = pw_keys("correct horse");
    for data in [random_bytes(20 * MIB, 1), compressible_bytes(20 * MIB, 2)] {
        let mut sizes = Vec::new();
        for threads in [1, 4] {
            let msg = encrypt(&sym(Compression::Zip { level: 6 }, threads), &data);
            sizes.push(msg.len());
            assert!(decrypt(&keys, &msg).unwrap() == data);
        }
        // Chunked parallel deflate costs almost nothing in ratio.
        let (one, four) = (sizes[0] as f64, sizes[1] as f64);
        assert!(
            four <= one * 1.01 + 4096.0,
            "1 thread {one}, 4 threads {four}"
        );
    }
    // Compression actually happens.
    let text = compressible_bytes(4 * MIB, 3);
    let z = encrypt(&sym(Compression::Zip { level: 6 }, 2), &text);
    let n = encrypt(&sym(Compression::None, 2), &text);
    assert!(z.len() * 2 < n.len(), "zip {} none {}", z.len(), n.len());
    assert!(n.len() > text.len());
}

#[test]
fn compression_level_changes_output() {
    let text = compressible_bytes(2 * MIB, 9);
    let l1 = encrypt(&sym(Compression::Zip { level: 1 }, 1), &text).len();
    let l9 = encrypt(&sym(Compression::Zip { level: 9 }, 1), &text).len();
    let l0 = encrypt(&sym(Compression::Zip { level: 0 }, 1), &text).len();
    assert!(l9 < l1 && l1 < l0, "l0 {l0} l1 {l1} l9 {l9}");
    let keys = pw_keys("correct horse");
    for level in [0, 9] {
        for comp in [Compression::Zip { level }, Compression::Zlib { level }] {
            let msg = encrypt(&sym(comp, 3), &text);
            assert!(decrypt(&keys, &msg).unwrap() == text);
        }
    }
    let bad = sym(Compression::Zlib { level: 10 }, 1).writer(Vec::new());
    assert!(matches!(bad, Err(CryptoError::InvalidSpec(_))));
}

#[test]
fn public_keys_one_two_and_with_passphrase() {
    let data = mixed_bytes(3 * MIB + 5, 7);
    // One key (RSA).
    let one = EncryptionSpec {
        recipients: vec![public("rsa")],
        ..spec(Compression::Zlib { level: 6 }, 2)
    };
    let msg = encrypt(&one, &data);
    assert!(decrypt(&sec_keys(&["rsa"]), &msg).unwrap() == data);

    // Two keys: each opens it alone.
    let two = EncryptionSpec {
        recipients: vec![public("rsa"), public("ed")],
        ..spec(Compression::Zip { level: 1 }, 2)
    };
    let msg = encrypt(&two, &data);
    assert!(decrypt(&sec_keys(&["rsa"]), &msg).unwrap() == data);
    assert!(decrypt(&sec_keys(&["ed"]), &msg).unwrap() == data);

    // Key + passphrase: either opens it.
    let both = EncryptionSpec {
        recipients: vec![public("ed")],
        passphrase: Some(Passphrase::from("pw")),
        ..spec(Compression::Zip { level: 6 }, 1)
    };
    let msg = encrypt(&both, &data);
    assert!(decrypt(&sec_keys(&["ed"]), &msg).unwrap() == data);
    assert!(decrypt(&pw_keys("pw"), &msg).unwrap() == data);
    assert!(matches!(
        decrypt(&pw_keys("nope"), &msg),
        Err(CryptoError::WrongPassphraseOrKey)
    ));

    // A passphrase-protected secret key (subkey layout), unlocked at load time.
    let sub = EncryptionSpec {
        recipients: vec![public("sub")],
        ..spec(Compression::None, 1)
    };
    let msg = encrypt(&sub, &data[..1000]);
    assert_eq!(decrypt(&sec_keys(&["sub"]), &msg).unwrap(), &data[..1000]);
    // Locked key (no passphrase at load): the DecryptionKeys passphrases unlock it.
    let locked =
        flotilla_common::crypto::SecretKey::from_file(&testdata("sub.sec.asc"), None).unwrap();
    let keys = DecryptionKeys {
        secret_keys: vec![locked.clone()],
        passphrases: vec![Passphrase::from("flotilla-test")],
        ..Default::default()
    };
    assert_eq!(decrypt(&keys, &msg).unwrap(), &data[..1000]);
    let keys = DecryptionKeys {
        secret_keys: vec![locked],
        passphrases: vec![Passphrase::from("wrong")],
        ..Default::default()
    };
    assert!(matches!(
        decrypt(&keys, &msg),
        Err(CryptoError::WrongPassphraseOrKey)
    ));
}

#[test]
fn signed_messages_verify() {
    let data = mixed_bytes(2 * MIB + 3, 11);
    for (signer, compression) in [
        ("ed", Compression::Zip { level: 6 }),
        ("rsa", Compression::None),
        ("sub", Compression::Zlib { level: 1 }),
    ] {
        let key = secret(signer);
        let spec = EncryptionSpec {
            recipients: vec![public("ed")],
            signer: Some(key.clone()),
            ..spec(compression, 2)
        };
        let msg = encrypt(&spec, &data);
        let mut keys = sec_keys(&["ed"]);
        keys.expected_signers = vec![key.public_key()];
        assert!(decrypt(&keys, &msg).unwrap() == data, "{signer}");
        // Also fine with several expected signers, one of which signed.
        keys.expected_signers = vec![public("rsa"), public(signer)];
        assert!(decrypt(&keys, &msg).unwrap() == data, "{signer}");
        // Without expectations the signature is ignored.
        assert!(decrypt(&sec_keys(&["ed"]), &msg).unwrap() == data);
    }
    // The "sub" key signs with its signing subkey, not its primary key.
    let sub = secret("sub");
    assert_ne!(sub.signing_key_id_hex(), sub.key_id_hex());
    assert_eq!(secret("ed").signing_key_id_hex(), secret("ed").key_id_hex());
    assert_eq!(sub.signing_key_id_hex().len(), 16);

    // Empty message, signed.
    let spec = EncryptionSpec {
        passphrase: Some(Passphrase::from("x")),
        signer: Some(secret("ed")),
        ..spec(Compression::Zip { level: 6 }, 1)
    };
    let msg = encrypt(&spec, b"");
    let mut keys = pw_keys("x");
    keys.expected_signers = vec![public("ed")];
    assert_eq!(decrypt(&keys, &msg).unwrap(), b"");
}

#[test]
fn unencrypted_signed_message_and_bad_signature() {
    let data = compressible_bytes(100_000, 5);
    let spec = EncryptionSpec {
        signer: Some(secret("rsa")),
        ..spec(Compression::None, 1)
    };
    assert!(!spec.is_encrypting());
    let msg = encrypt(&spec, &data);
    let keys = DecryptionKeys {
        expected_signers: vec![public("rsa")],
        ..Default::default()
    };
    assert_eq!(decrypt(&keys, &msg).unwrap(), data);
    // Flip one byte of the literal data: the signature no longer matches.
    let mut bad = msg.clone();
    let pos = bad.len() / 2;
    bad[pos] ^= 0x01;
    match decrypt(&keys, &bad) {
        Err(CryptoError::BadSignature { key_id, .. }) => {
            assert_eq!(key_id, secret("rsa").signing_key_id_hex())
        }
        other => panic!("expected BadSignature, got {other:?}"),
    }
    // Refused when encryption is required.
    let r = flotilla_common::crypto::decrypt_reader_with_options(
        &DecryptionKeys::default(),
        flotilla_common::crypto::DecryptOptions {
            require_encryption: true,
            ..Default::default()
        },
        &msg[..],
    );
    assert!(matches!(r, Err(CryptoError::NotEncrypted)));
}

#[test]
fn wrong_passphrase_and_missing_keys_fail_up_front() {
    let data = random_bytes(5000, 3);
    let msg = encrypt(&sym(Compression::Zip { level: 6 }, 1), &data);
    assert!(matches!(
        decrypt_reader(&pw_keys("wrong"), &msg[..]).err(),
        Some(CryptoError::WrongPassphraseOrKey)
    ));
    assert!(matches!(
        decrypt_reader(&DecryptionKeys::default(), &msg[..]).err(),
        Some(CryptoError::PassphraseRequired)
    ));
    // Several passphrases: the right one is found even if not first.
    let keys = DecryptionKeys {
        passphrases: vec!["a".into(), "b".into(), "correct horse".into()],
        ..Default::default()
    };
    assert_eq!(decrypt(&keys, &msg).unwrap(), data);

    // Encrypted to rsa, we only have ed.
    let spec = EncryptionSpec {
        recipients: vec![public("rsa")],
        ..spec(Compression::None, 1)
    };
    let msg = encrypt(&spec, &data);
    match decrypt_reader(&sec_keys(&["ed"]), &msg[..]).err() {
        Some(CryptoError::NoMatchingSecretKey { key_ids }) => {
            assert_eq!(
                key_ids,
                vec![public("rsa").encryption_key_id_hex().unwrap()]
            );
        }
        other => panic!("expected NoMatchingSecretKey, got {other:?}"),
    }
    // A passphrase does not help either.
    let mut keys = sec_keys(&["ed"]);
    keys.passphrases.push("pw".into());
    assert!(matches!(
        decrypt_reader(&keys, &msg[..]).err(),
        Some(CryptoError::NoMatchingSecretKey { .. })
    ));
}

#[test]
fn tampered_ciphertext_fails_integrity_check() {
    let data = mixed_bytes(3 * MIB, 21);
    for compression in [
        Compression::None,
        Compression::Zip { level: 6 },
        Compression::Zlib { level: 6 },
    ] {
        let spec = EncryptionSpec {
            recipients: vec![public("ed")],
            ..spec(compression, 2)
        };
        let msg = encrypt(&spec, &data);
        let keys = sec_keys(&["ed"]);
        for pos in [msg.len() / 3, msg.len() / 2, msg.len() - 30, msg.len() - 1] {
            let mut bad = msg.clone();
            bad[pos] ^= 0x40;
            let mut r = decrypt_reader(&keys, &bad[..]).unwrap_or_else(|e| {
                panic!("{compression:?} pos {pos}: failed up front: {e}");
            });
            let mut out = Vec::new();
            let err = r
                .read_to_end(&mut out)
                .expect_err("tampering must be detected");
            assert!(
                matches!(into_crypto(err), CryptoError::IntegrityCheckFailed),
                "{compression:?} pos {pos}"
            );
        }
    }
}

/// With `message_authenticated_by_source` (the restore, whose volumes' hashes an
/// authenticated manifest lists) the MDC packet must still be there and framed right, but
/// its hash over the plaintext is not computed.
#[test]
fn message_authenticated_by_source_checks_only_the_mdc_framing() {
    let data = mixed_bytes(MIB + 77, 23);
    let msg = encrypt(&sym(Compression::None, 1), &data);
    let keys = pw_keys("correct horse");
    let opts = flotilla_common::crypto::DecryptOptions {
        message_authenticated_by_source: true,
        ..Default::default()
    };
    let read = |m: &[u8]| -> Result<Vec<u8>, CryptoError> {
        let mut r = flotilla_common::crypto::decrypt_reader_with_options(&keys, opts, m)?;
        let mut out = Vec::new();
        r.read_to_end(&mut out).map_err(into_crypto)?;
        Ok(out)
    };
    assert_eq!(read(&msg).unwrap(), data);
    // A wrong MDC hash (its last byte) is the source's to catch now: the data is intact.
    let mut hash_flipped = msg.clone();
    *hash_flipped.last_mut().unwrap() ^= 0x01;
    assert_eq!(read(&hash_flipped).unwrap(), data);
    assert!(matches!(
        decrypt(&keys, &hash_flipped),
        Err(CryptoError::IntegrityCheckFailed)
    ));
    // The MDC packet's tag and length are still checked, and truncation still seen.
    for pos in [msg.len() - 22, msg.len() - 21] {
        let mut bad = msg.clone();
        bad[pos] ^= 0x01;
        assert!(
            matches!(read(&bad), Err(CryptoError::IntegrityCheckFailed)),
            "MDC framing byte {pos} flipped"
        );
    }
    for cut in [msg.len() - 1, msg.len() - 22, msg.len() / 2] {
        assert!(
            matches!(
                read(&msg[..cut]),
                Err(CryptoError::Truncated | CryptoError::IntegrityCheckFailed)
            ),
            "cut at {cut}"
        );
    }
}

/// A message opened again with the same keys takes its session key from the cache: the
/// restore opens some volumes and the signature files several times.
#[test]
fn session_keys_are_found_once_per_message() {
    let data = mixed_bytes(100_000, 24);
    let a = encrypt(&sym(Compression::Zip { level: 6 }, 1), &data);
    let b = encrypt(&sym(Compression::Zip { level: 6 }, 1), &data);
    let keys = pw_keys("correct horse");
    let lane = keys.clone();
    assert_eq!(decrypt(&keys, &a).unwrap(), data);
    assert_eq!(keys.session_keys.len(), 1);
    assert_eq!(decrypt(&lane, &a).unwrap(), data, "again, through a clone");
    assert_eq!(keys.session_keys.len(), 1, "clones share the cache");
    assert_eq!(decrypt(&lane, &b).unwrap(), data);
    assert_eq!(keys.session_keys.len(), 2, "another message, another key");
    // A cached key does not open a tampered message or leak in Debug output.
    let mut bad = a.clone();
    let pos = bad.len() / 2;
    bad[pos] ^= 0x01;
    assert!(decrypt(&keys, &bad).is_err());
    assert_eq!(
        format!("{:?}", keys.session_keys),
        "SessionKeyCache(2 keys)"
    );
    // Other keys (with their own cache) still need the right passphrase.
    assert!(matches!(
        decrypt(&pw_keys("wrong"), &a),
        Err(CryptoError::WrongPassphraseOrKey)
    ));
}

#[test]
fn truncated_message_fails() {
    let data = mixed_bytes(3 * MIB, 22);
    let spec = EncryptionSpec {
        recipients: vec![public("ed")],
        ..spec(Compression::Zip { level: 6 }, 2)
    };
    let msg = encrypt(&spec, &data);
    let keys = sec_keys(&["ed"]);
    for cut in [
        msg.len() - 1,
        msg.len() - 22,
        msg.len() / 2,
        1 << 20,
        300,
        5,
    ] {
        match decrypt(&keys, &msg[..cut]) {
            Err(CryptoError::Truncated) | Err(CryptoError::IntegrityCheckFailed) => {}
            other => panic!("cut {cut}: expected Truncated, got {other:?}"),
        }
    }
    // Partial-length SEIPD cut inside a part: reported as truncation.
    assert!(matches!(
        decrypt(&keys, &msg[..msg.len() / 2]),
        Err(CryptoError::Truncated)
    ));
    assert!(matches!(decrypt(&keys, b""), Err(CryptoError::Truncated)));
    // Trailing garbage is refused too.
    let mut long = msg.clone();
    long.extend_from_slice(b"garbage");
    assert!(decrypt(&keys, &long).is_err());
}

#[test]
fn signer_mismatches() {
    let data = random_bytes(70_000, 5);
    let signed = EncryptionSpec {
        passphrase: Some(Passphrase::from("pw")),
        signer: Some(secret("ed")),
        ..spec(Compression::Zip { level: 6 }, 1)
    };
    let msg = encrypt(&signed, &data);
    let mut keys = pw_keys("pw");
    keys.expected_signers = vec![public("rsa")];
    match decrypt(&keys, &msg) {
        Err(CryptoError::UnexpectedSigner { found, expected }) => {
            assert_eq!(found, secret("ed").signing_key_id_hex());
            assert_eq!(expected, public("rsa").key_id_hex());
        }
        other => panic!("expected UnexpectedSigner, got {other:?}"),
    }

    let unsigned = encrypt(&sym(Compression::Zip { level: 6 }, 1), &data);
    let mut keys = pw_keys("correct horse");
    keys.expected_signers = vec![public("ed")];
    assert!(matches!(
        decrypt(&keys, &unsigned),
        Err(CryptoError::MissingSignature { .. })
    ));
}

#[test]
fn unusable_recipient_keys_are_refused() {
    for name in ["expired", "revoked"] {
        let key = public(name);
        let fpr = key.fingerprint_hex();
        let spec = EncryptionSpec {
            recipients: vec![key],
            ..spec(Compression::None, 1)
        };
        match spec.writer(Vec::new()).err() {
            Some(CryptoError::NoEncryptionSubkey {
                fingerprint,
                reason,
            }) => {
                assert_eq!(fingerprint, fpr);
                let want = if name == "expired" {
                    "expired"
                } else {
                    "revoked"
                };
                assert!(reason.contains(want), "{name}: {reason}");
            }
            other => panic!("{name}: expected NoEncryptionSubkey, got {other:?}"),
        }
    }
    // Usable keys validate.
    let ok = EncryptionSpec {
        recipients: vec![public("rsa"), public("ed"), public("sub")],
        signer: Some(secret("sub")),
        ..Default::default()
    };
    ok.validate().unwrap();
    // A locked signer is refused.
    let locked =
        flotilla_common::crypto::SecretKey::from_file(&testdata("sub.sec.asc"), None).unwrap();
    let spec = EncryptionSpec {
        passphrase: Some("x".into()),
        signer: Some(locked),
        ..Default::default()
    };
    assert!(matches!(
        spec.writer(Vec::new()).err(),
        Some(CryptoError::SecretKeyLocked { .. })
    ));
    // Wrong passphrase for a protected key.
    assert!(matches!(
        flotilla_common::crypto::SecretKey::from_file(
            &testdata("sub.sec.asc"),
            Some("nope".into())
        )
        .err(),
        Some(CryptoError::SecretKeyLocked { .. })
    ));
}

#[test]
fn public_types_are_send_and_sync() {
    fn send<T: Send>() {}
    fn sync<T: Sync>() {}
    send::<flotilla_common::crypto::MessageWriter<Vec<u8>>>();
    send::<EncryptionSpec>();
    sync::<EncryptionSpec>();
    send::<DecryptionKeys>();
    sync::<DecryptionKeys>();
    send::<CryptoError>();
    sync::<CryptoError>();
}

#[test]
fn key_loading() {
    let k = public("rsa");
    assert_eq!(k.fingerprint_hex().len(), 40);
    assert_eq!(k.key_id_hex(), k.fingerprint_hex()[24..]);
    // Secret key files yield the same public key.
    let from_secret = PublicKey::from_file(&testdata("rsa.sec.asc")).unwrap();
    assert_eq!(from_secret.fingerprint_hex(), k.fingerprint_hex());
    assert_eq!(
        secret("rsa").public_key().fingerprint_hex(),
        k.fingerprint_hex()
    );
    // Binary form.
    let armored = std::fs::read(testdata("ed.pub.asc")).unwrap();
    let binary = pgp_dearmor(&armored);
    assert_eq!(
        PublicKey::from_bytes(&binary).unwrap().fingerprint_hex(),
        public("ed").fingerprint_hex()
    );
    // Errors name the file.
    match PublicKey::from_file(&testdata("make-keys.sh")).err() {
        Some(CryptoError::KeyFile { path, .. }) => assert!(path.ends_with("make-keys.sh")),
        other => panic!("expected KeyFile, got {other:?}"),
    }
    assert!(matches!(
        PublicKey::from_file(&testdata("does-not-exist")).err(),
        Some(CryptoError::KeyFile { .. })
    ));
    assert_eq!(format!("{:?}", Passphrase::from("secret")), "<redacted>");
}

fn pgp_dearmor(armored: &[u8]) -> Vec<u8> {
    let mut d = pgp::armor::Dearmor::new(armored);
    let mut out = Vec::new();
    d.read_to_end(&mut out).unwrap();
    out
}

#[test]
fn writer_is_usable_as_io_write_and_reports_errors() {
    // io::copy into the writer, several flushes.
    let data = compressible_bytes(3 * MIB + 77, 8);
    let mut w = sym(Compression::Zlib { level: 6 }, 3)
        .writer(Vec::new())
        .unwrap();
    std::io::copy(&mut &data[..], &mut w).unwrap();
    w.flush().unwrap();
    let msg = w.finish().unwrap();
    assert!(decrypt(&pw_keys("correct horse"), &msg).unwrap() == data);

    // An output error poisons the writer.
    let mut w = sym(Compression::None, 1)
        .writer(FailingAfter(1 << 21, "disk full"))
        .unwrap();
    let mut failed = false;
    for _ in 0..10 {
        if w.write_all(&data[..MIB]).is_err() {
            failed = true;
            break;
        }
    }
    assert!(failed);
    assert!(w.write_all(b"x").is_err());
    assert!(matches!(w.finish(), Err(CryptoError::WriterFailed)));
}

/// A message written with its output on a thread of its own (parts handed over whole)
/// decrypts to the same bytes and has the same length as one written in place, also
/// where the last part is full or the MDC's hash starts a part of its own; a failing
/// output fails the writer.
#[test]
fn writer_behind_hands_over_whole_parts() {
    let keys = sec_keys(&["ed"]);
    let spec = EncryptionSpec {
        recipients: vec![public("ed")],
        ..spec(Compression::None, 1)
    };
    // Uncompressed, the encrypted data is the data and about 70 bytes of packet headers,
    // prefix and MDC: these sizes put the end of the message on either side of 1 and 2
    // MiB parts.
    let sizes = (MIB - 100..MIB - 30).chain(2 * MIB - 100..2 * MIB - 30);
    for n in sizes.chain([0, 1, 5 * MIB + 3]) {
        let data = random_bytes(n, n as u64);
        let mut w = spec.writer_behind(Vec::new(), "test-upload").unwrap();
        w.write_all(&data).unwrap();
        let behind = w.finish().unwrap();
        let here = encrypt(&spec, &data);
        assert_eq!(behind.len(), here.len(), "n {n}: length");
        assert!(decrypt(&keys, &behind).unwrap() == data, "n {n}: content");
    }
    for threads in [1, 3] {
        let data = compressible_bytes(3 * MIB + 5, 3);
        let mut w = sym(Compression::Zlib { level: 6 }, threads)
            .writer_behind(Vec::new(), "test-upload")
            .unwrap();
        std::io::copy(&mut &data[..], &mut w).unwrap();
        let msg = w.finish().unwrap();
        assert!(decrypt(&pw_keys("correct horse"), &msg).unwrap() == data);
    }

    let data = random_bytes(8 * MIB, 9);
    let mut w = spec
        .writer_behind(FailingAfter(3 * MIB, "disk full"), "test-upload")
        .unwrap();
    let written = w.write_all(&data);
    let err = match written {
        Err(e) => e.to_string(),
        Ok(()) => match w.finish() {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a failing output must fail the writer"),
        },
    };
    assert!(err.contains("disk full"), "{err}");
}

/// Flip and truncate bytes of real messages: never a panic, never wrong plaintext.
#[test]
fn fuzz_flips_and_truncations() {
    let data = compressible_bytes(40_000, 99);
    let keys = {
        let mut k = sec_keys(&["ed"]);
        k.expected_signers = vec![public("ed")];
        k
    };
    let mut msgs = Vec::new();
    for compression in [Compression::None, Compression::Zip { level: 6 }] {
        let spec = EncryptionSpec {
            recipients: vec![public("ed")],
            signer: Some(secret("ed")),
            ..spec(compression, 1)
        };
        msgs.push(encrypt(&spec, &data));
    }
    // Unencrypted, signed and compressed.
    let plain = EncryptionSpec {
        signer: Some(secret("ed")),
        ..spec(Compression::Zlib { level: 6 }, 1)
    };
    msgs.push(encrypt(&plain, &data));

    let check = |m: &[u8]| {
        if let Ok(out) = decrypt(&keys, m) {
            assert!(out == data, "corrupted message decrypted to wrong data");
        }
    };
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for msg in &msgs {
        check(msg);
        for cut in (0..msg.len())
            .step_by(97)
            .chain(msg.len().saturating_sub(40)..msg.len())
        {
            check(&msg[..cut]);
        }
        for _ in 0..1500 {
            let mut m = msg.clone();
            let flips = 1 + next() % 3;
            for _ in 0..flips {
                // Bias towards the headers, where the parser lives.
                let pos = if next() % 2 == 0 {
                    (next() % 200.min(m.len() as u64)) as usize
                } else {
                    (next() % m.len() as u64) as usize
                };
                m[pos] ^= 1 << (next() % 8);
            }
            check(&m);
        }
    }
    // Random garbage.
    for n in [1usize, 2, 10, 100, 5000] {
        for _ in 0..20 {
            let g: Vec<u8> = (0..n).map(|_| next() as u8).collect();
            check(&g);
        }
    }
}

/// Messages another OpenPGP writer (rpgp's builder) frames in other ways than ours: the
/// literal data packet with a one-, two- or five-octet length or in partial parts, directly
/// in the encrypted container or compressed in a new-format packet; each decrypts to the
/// data, and a flipped byte is an integrity failure.
#[test]
fn literal_data_in_every_framing_decrypts() {
    use pgp::composed::MessageBuilder;
    use pgp::crypto::hash::HashAlgorithm;
    use pgp::crypto::sym::SymmetricKeyAlgorithm;
    use pgp::types::{CompressionAlgorithm, Password, StringToKey};
    let keys = pw_keys("pw");
    // Compressed (or not) and encrypted to the passphrase "pw".
    fn seal<R: Read>(
        mut b: MessageBuilder<'_, R>,
        compression: Option<CompressionAlgorithm>,
    ) -> Vec<u8> {
        let mut rng = rand::thread_rng();
        if let Some(c) = compression {
            b.compression(c);
        }
        let s2k = StringToKey::new_iterated(&mut rng, HashAlgorithm::Sha256, 1);
        let mut b = b.seipd_v1(&mut rng, SymmetricKeyAlgorithm::AES256);
        b.encrypt_with_password(s2k, &Password::from("pw")).unwrap();
        b.to_vec(&mut rng).unwrap()
    }
    for (i, len) in [0usize, 100, 191, 192, 8383, 8384, 70_000, 3 * MIB]
        .into_iter()
        .enumerate()
    {
        let data = mixed_bytes(len, 40 + i as u64);
        for compression in [None, Some(CompressionAlgorithm::ZLIB)] {
            for partial in [false, true] {
                let what = format!("{len} bytes, {compression:?}, partial {partial}");
                let msg = if partial {
                    let mut b = MessageBuilder::from_reader("", &data[..]);
                    b.partial_chunk_size(512).unwrap();
                    seal(b, compression)
                } else {
                    seal(
                        MessageBuilder::from_bytes("name.bin", data.clone()),
                        compression,
                    )
                };
                let got = decrypt(&keys, &msg).unwrap_or_else(|e| panic!("{what}: {e}"));
                assert!(got == data, "{what}: content differs");
                let mut bad = msg.clone();
                let at = bad.len() - 25;
                bad[at] ^= 0x08;
                assert!(
                    matches!(decrypt(&keys, &bad), Err(CryptoError::IntegrityCheckFailed)),
                    "{what}: a flipped byte"
                );
            }
        }
    }
}
