//! Interoperability with GnuPG 2.2 (the gpg duplicity 0.8.22 runs), both directions.

mod crypto_support;

use crypto_support::*;
use flotilla_common::crypto::{
    Compression, CryptoError, DecryptionKeys, EncryptionSpec, Passphrase, PublicKey, SecretKey,
};

const MIB: usize = 1 << 20;

fn gpg_decrypt(home: &GpgHome, msg: &[u8], passphrase: Option<&str>) -> (Vec<u8>, String) {
    let mut args = vec!["--status-fd", "2", "--decrypt"];
    if let Some(pw) = passphrase {
        args.splice(0..0, ["--passphrase", pw]);
    }
    let out = home.run(&args, msg);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "gpg --decrypt failed: {stderr}");
    (out.stdout, stderr)
}

fn list_packets(home: &GpgHome, msg: &[u8], passphrase: Option<&str>) -> String {
    let mut args = vec!["--list-packets"];
    if let Some(pw) = passphrase {
        args.splice(0..0, ["--passphrase", pw]);
    }
    let out = home.run(&args, msg);
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

fn assert_gnupg22_layout(listing: &str) {
    assert!(listing.contains("mdc_method: 2"), "{listing}");
    // "aead 0" in the SKESK line means "no AEAD"; anything else AEAD-ish must not appear.
    assert!(!listing.replace("aead 0", "").contains("aead"), "{listing}");
    assert!(
        !listing.contains("version 5") && !listing.contains("version 6"),
        "{listing}"
    );
    assert!(!listing.contains("encrypted data packet: length: unknown, mdc_method: 0"));
    assert!(listing.contains("literal data packet:"), "{listing}");
    assert!(listing.contains("mode b"), "{listing}");
    assert!(listing.contains("name=\"\""), "{listing}");
}

#[test]
fn ours_to_gpg_symmetric_each_compression() {
    let home = GpgHome::new();
    let data = mixed_bytes(3 * MIB + 1234, 1);
    for (compression, algo) in [
        (Compression::None, None),
        (Compression::Zip { level: 1 }, Some("algo=1")),
        (Compression::Zip { level: 9 }, Some("algo=1")),
        (Compression::Zlib { level: 6 }, Some("algo=2")),
    ] {
        let spec = EncryptionSpec {
            passphrase: Some(Passphrase::from("gpg-pw")),
            ..spec(compression, 2)
        };
        let msg = encrypt(&spec, &data);
        let (plain, _) = gpg_decrypt(&home, &msg, Some("gpg-pw"));
        assert!(plain == data, "{compression:?}: gpg output differs");
        let listing = list_packets(&home, &msg, Some("gpg-pw"));
        assert_gnupg22_layout(&listing);
        assert!(
            listing.contains("symkey enc packet: version 4, cipher 9"),
            "{listing}"
        );
        match algo {
            Some(a) => assert!(
                listing.contains(&format!("compressed packet: {a}")),
                "{listing}"
            ),
            None => assert!(!listing.contains("compressed packet"), "{listing}"),
        }
    }
    // Tiny messages use a definite length.
    for data in [&b""[..], b"x"] {
        let spec = EncryptionSpec {
            passphrase: Some(Passphrase::from("gpg-pw")),
            ..spec(Compression::Zip { level: 6 }, 1)
        };
        let msg = encrypt(&spec, data);
        assert_eq!(gpg_decrypt(&home, &msg, Some("gpg-pw")).0, data);
    }
}

#[test]
fn ours_to_gpg_public_key_and_signed() {
    let home = GpgHome::new();
    for name in ["rsa", "ed", "sub"] {
        home.import_trusted(name, true);
    }
    let data = mixed_bytes(2 * MIB + 99, 2);

    // RSA and Cv25519 recipients, each decrypts (gpg holds both secret keys; one message
    // each to be sure each PKESK works).
    for name in ["rsa", "ed", "sub"] {
        let spec = EncryptionSpec {
            recipients: vec![public(name)],
            ..spec(Compression::Zlib { level: 6 }, 2)
        };
        let msg = encrypt(&spec, &data);
        let pw = (name == "sub").then_some("flotilla-test");
        let (plain, _) = gpg_decrypt(&home, &msg, pw);
        assert!(plain == data, "{name}");
        let listing = list_packets(&home, &msg, pw);
        assert_gnupg22_layout(&listing);
        assert!(
            listing.contains("pubkey enc packet: version 3"),
            "{listing}"
        );
        assert!(
            listing.contains(&public(name).encryption_key_id_hex().unwrap()),
            "{listing}"
        );
    }

    // Signed, by a primary key (ed, rsa) and by a signing subkey (sub): GOODSIG with the id
    // of the key that signed, which is what duplicity's --sign-key check reads.
    for signer in ["ed", "rsa", "sub"] {
        let key = secret(signer);
        let spec = EncryptionSpec {
            recipients: vec![public("rsa"), public("ed")],
            passphrase: Some(Passphrase::from("also")),
            signer: Some(key.clone()),
            ..spec(Compression::Zip { level: 6 }, 2)
        };
        let msg = encrypt(&spec, &data);
        let (plain, status) = gpg_decrypt(&home, &msg, None);
        assert!(plain == data, "{signer}");
        let want = format!("[GNUPG:] GOODSIG {} ", key.signing_key_id_hex());
        assert!(status.contains(&want), "{signer}: {status}");
        assert!(!status.contains("BADSIG"), "{status}");
        let listing = list_packets(&home, &msg, None);
        assert_gnupg22_layout(&listing);
        assert!(listing.contains("onepass_sig packet:"), "{listing}");
        assert!(listing.contains("sigclass 0x00"), "{listing}");
        assert!(listing.contains("digest 8"), "{listing}"); // SHA-256
    }
}

#[test]
fn ours_to_gpg_passphrase_alone_opens_key_and_passphrase_message() {
    // Empty keyring: only the SKESK can be used.
    let home = GpgHome::new();
    let data = compressible_bytes(MIB / 2, 3);
    let spec = EncryptionSpec {
        recipients: vec![public("rsa")],
        passphrase: Some(Passphrase::from("both")),
        ..spec(Compression::Zip { level: 6 }, 1)
    };
    let msg = encrypt(&spec, &data);
    assert!(gpg_decrypt(&home, &msg, Some("both")).0 == data);
}

#[test]
fn keys_generated_by_gpg_at_test_time() {
    let home = GpgHome::new();
    home.ok(
        &[
            "--passphrase",
            "",
            "--quick-gen-key",
            "Fresh Ed <fresh-ed@test.invalid>",
            "future-default",
            "default",
            "never",
        ],
        b"",
    );
    home.ok(
        &[
            "--passphrase",
            "",
            "--quick-gen-key",
            "Fresh RSA <fresh-rsa@test.invalid>",
            "rsa3072",
            "sign,cert",
            "never",
        ],
        b"",
    );
    let rsa_fpr = {
        let out = home.ok(
            &["--with-colons", "--list-keys", "fresh-rsa@test.invalid"],
            b"",
        );
        let text = String::from_utf8(out).unwrap();
        text.lines()
            .find(|l| l.starts_with("fpr:"))
            .unwrap()
            .split(':')
            .nth(9)
            .unwrap()
            .to_string()
    };
    home.ok(
        &[
            "--passphrase",
            "",
            "--quick-add-key",
            &rsa_fpr,
            "rsa3072",
            "encr",
            "never",
        ],
        b"",
    );
    let data = mixed_bytes(MIB + 7, 4);
    for uid in ["fresh-ed@test.invalid", "fresh-rsa@test.invalid"] {
        let public_bytes = home.ok(&["--armor", "--export", uid], b"");
        let secret_bytes = home.ok(
            &["--passphrase", "", "--armor", "--export-secret-keys", uid],
            b"",
        );
        let pk = PublicKey::from_bytes(&public_bytes).unwrap();
        let sk = SecretKey::from_bytes(&secret_bytes, None).unwrap();
        // ours -> gpg, signed
        let spec = EncryptionSpec {
            recipients: vec![pk.clone()],
            signer: Some(sk.clone()),
            ..spec(Compression::Zip { level: 6 }, 2)
        };
        let msg = encrypt(&spec, &data);
        let (plain, status) = gpg_decrypt(&home, &msg, None);
        assert!(plain == data, "{uid}");
        assert!(
            status.contains(&format!("GOODSIG {}", sk.signing_key_id_hex())),
            "{uid}: {status}"
        );
        // gpg -> ours, signed
        let msg = home.ok(
            &[
                "--trust-model",
                "always",
                "-s",
                "-e",
                "-r",
                uid,
                "--default-key",
                uid,
            ],
            &data,
        );
        let keys = DecryptionKeys {
            secret_keys: vec![sk],
            expected_signers: vec![pk],
            ..Default::default()
        };
        assert!(decrypt(&keys, &msg).unwrap() == data, "{uid}");
    }
}

#[test]
fn gpg_to_ours_symmetric() {
    let home = GpgHome::new();
    let data = mixed_bytes(2 * MIB + 5, 5);
    let keys = pw_keys("gpg-pw");
    // gpg's defaults (AES-256, iterated+salted SHA-1 S2K with calibrated count, ZIP) and
    // duplicity's exact option set.
    for extra in [
        &[][..],
        &["--no-secmem-warning", "--ignore-mdc-error", "--force-mdc"][..],
    ] {
        let mut args = vec!["--passphrase", "gpg-pw"];
        args.extend_from_slice(extra);
        args.push("--symmetric");
        let msg = home.ok(&args, &data);
        let listing = list_packets(&home, &msg, Some("gpg-pw"));
        assert!(listing.contains("s2k 3"), "{listing}");
        assert!(decrypt(&keys, &msg).unwrap() == data);
        // Wrong passphrase: detected up front by the quick check.
        assert!(matches!(
            flotilla_common::crypto::decrypt_reader(&pw_keys("nope"), &msg[..]).err(),
            Some(CryptoError::WrongPassphraseOrKey)
        ));
    }
    // Compression variants, S2K type 1 (salted) and 3 with other hashes, other ciphers,
    // armor. Low S2K counts keep the test fast.
    let variants: &[&[&str]] = &[
        &["--compress-algo", "zlib"],
        &["--compress-algo", "bzip2"],
        &["--compress-algo", "none"],
        &["--compress-algo", "zip", "--compress-level", "9"],
        &["--s2k-mode", "1", "--s2k-digest-algo", "SHA1"],
        &[
            "--s2k-mode",
            "3",
            "--s2k-digest-algo",
            "SHA512",
            "--s2k-count",
            "65536",
        ],
        &["--cipher-algo", "AES128", "--s2k-count", "65536"],
        &["--cipher-algo", "CAST5", "--s2k-count", "65536"],
        &["--cipher-algo", "TWOFISH", "--s2k-count", "65536"],
        &["--cipher-algo", "3DES", "--s2k-count", "65536"],
        &["--armor", "--s2k-count", "65536"],
    ];
    let small = &data[..300_000];
    for v in variants {
        let mut args = vec!["--passphrase", "gpg-pw"];
        args.extend_from_slice(v);
        args.push("--symmetric");
        let msg = home.ok(&args, small);
        let got = decrypt(&keys, &msg).unwrap_or_else(|e| panic!("{v:?}: {e}"));
        assert!(got == small, "{v:?}");
    }
    // A file rather than a pipe: gpg knows the length and writes the literal data
    // packet with a definite one (the pipes above give partial lengths).
    for compress in ["none", "zlib", "zip"] {
        for len in [0usize, 150, 5000, 300_000] {
            let file = home.dir.path().join(format!("plain-{compress}-{len}"));
            std::fs::write(&file, &small[..len]).unwrap();
            let path = file.to_str().unwrap();
            let args = [
                "--passphrase",
                "gpg-pw",
                "--compress-algo",
                compress,
                "-o",
                "-",
                "--symmetric",
                path,
            ];
            let msg = home.ok(&args, b"");
            let got = decrypt(&keys, &msg).unwrap_or_else(|e| panic!("{compress} {len}: {e}"));
            assert!(got == small[..len], "{compress} {len}");
        }
    }
    // Empty plaintext.
    let msg = home.ok(&["--passphrase", "gpg-pw", "--symmetric"], b"");
    assert_eq!(decrypt(&keys, &msg).unwrap(), b"");

    // Legacy tag-9 data without MDC (--rfc2440): refused by default, readable on request
    // (duplicity runs gpg with --ignore-mdc-error).
    let msg = home.ok(
        &[
            "--passphrase",
            "gpg-pw",
            "--rfc2440",
            "--cipher-algo",
            "CAST5",
            "--s2k-count",
            "65536",
            "--symmetric",
        ],
        small,
    );
    assert!(matches!(
        decrypt(&keys, &msg),
        Err(CryptoError::IntegrityProtectionMissing)
    ));
    let mut r = flotilla_common::crypto::decrypt_reader_with_options(
        &keys,
        flotilla_common::crypto::DecryptOptions {
            allow_unprotected: true,
            ..Default::default()
        },
        &msg[..],
    )
    .unwrap();
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut r, &mut out).unwrap();
    assert!(out == small);
}

#[test]
fn gpg_to_ours_public_key_signed_and_hidden() {
    let home = GpgHome::new();
    for name in ["rsa", "ed", "sub"] {
        home.import_trusted(name, true);
    }
    let data = mixed_bytes(MIB + 3, 6);
    let enc = |extra: &[&str]| {
        let mut args = vec!["--trust-model", "always", "--passphrase", "flotilla-test"];
        args.extend_from_slice(extra);
        home.ok(&args, &data)
    };
    // gpg -e -r (ZLIB by key preference), to each key type.
    for name in ["rsa", "ed"] {
        let uid = format!("{name}@test.invalid");
        let msg = enc(&["-e", "-r", &uid]);
        assert!(decrypt(&sec_keys(&[name]), &msg).unwrap() == data, "{name}");
        let msg = enc(&["-e", "-r", &uid, "--compress-algo", "bzip2"]);
        assert!(
            decrypt(&sec_keys(&[name]), &msg).unwrap() == data,
            "{name} bzip2"
        );
        let msg = enc(&["-e", "-r", &uid, "--compress-algo", "none"]);
        assert!(
            decrypt(&sec_keys(&[name]), &msg).unwrap() == data,
            "{name} none"
        );
    }
    // Passphrase-protected key (its encryption subkey).
    let msg = enc(&["-e", "-r", "sub@test.invalid"]);
    assert!(decrypt(&sec_keys(&["sub"]), &msg).unwrap() == data);

    // Hidden recipient (wildcard key id), as --hidden-encrypt-key does.
    let msg = enc(&["-e", "-R", "ed@test.invalid"]);
    assert!(list_packets(&home, &msg, None).contains("keyid 0000000000000000"));
    assert!(decrypt(&sec_keys(&["rsa", "ed"]), &msg).unwrap() == data);
    assert!(matches!(
        decrypt(&sec_keys(&["rsa"]), &msg),
        Err(CryptoError::NoMatchingSecretKey { .. })
    ));

    // Sign + encrypt, like duplicity with --sign-key: by a primary key and by a subkey.
    for (signer, key_name) in [("ed@test.invalid", "ed"), ("sub@test.invalid", "sub")] {
        let msg = enc(&[
            "-s",
            "-e",
            "-r",
            "rsa@test.invalid",
            "--default-key",
            signer,
        ]);
        let mut keys = sec_keys(&["rsa"]);
        keys.expected_signers = vec![public(key_name)];
        assert!(decrypt(&keys, &msg).unwrap() == data, "{signer}");
        // Signed by someone else than expected.
        let other = if key_name == "rsa" { "ed" } else { "rsa" };
        keys.expected_signers = vec![public(other)];
        assert!(
            matches!(
                decrypt(&keys, &msg),
                Err(CryptoError::UnexpectedSigner { .. })
            ),
            "{signer}"
        );
    }
    // Key + passphrase in one gpg message.
    let msg = enc(&["-c", "-e", "-r", "ed@test.invalid", "--s2k-count", "65536"]);
    assert!(decrypt(&pw_keys("flotilla-test"), &msg).unwrap() == data);
    assert!(decrypt(&sec_keys(&["ed"]), &msg).unwrap() == data);

    // Unencrypted gpg output (sign only, and a plain literal via --store).
    let msg = enc(&["-s", "--default-key", "ed@test.invalid"]);
    let keys = DecryptionKeys {
        expected_signers: vec![public("ed")],
        ..Default::default()
    };
    assert!(decrypt(&keys, &msg).unwrap() == data);
    let msg = enc(&["--store"]);
    assert!(decrypt(&DecryptionKeys::default(), &msg).unwrap() == data);
}

/// gpg's own tamper detection agrees with ours on our output.
#[test]
fn gpg_rejects_our_tampered_message() {
    let home = GpgHome::new();
    let data = compressible_bytes(200_000, 8);
    let spec = EncryptionSpec {
        passphrase: Some(Passphrase::from("pw")),
        ..spec(Compression::None, 1)
    };
    let mut msg = encrypt(&spec, &data);
    let n = msg.len();
    msg[n - 10] ^= 1;
    let out = home.run(&["--passphrase", "pw", "--decrypt"], &msg);
    assert!(!out.status.success());
    assert!(matches!(
        decrypt(&pw_keys("pw"), &msg),
        Err(CryptoError::IntegrityCheckFailed)
    ),);
}
