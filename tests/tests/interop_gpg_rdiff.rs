//! The objects flotilla-agent writes, opened with the standard tools instead of
//! duplicity: `gpg` decrypts and checks signatures, GNU `tar` lists volumes and
//! signature files, `rdiff` (librsync) applies our deltas and computes the same
//! signatures we store.

use std::fs;
use std::path::{Path, PathBuf};

use flotilla_tests::agent::{AgentEnv, TarMember, copy_tree, read_tar};
use flotilla_tests::gpg::Decrypted;
use flotilla_tests::{
    Cmd, Duplicity, GpgHome, KeyAlgo, TreeBuilder, assert_trees_equal, deterministic_bytes,
    fixture, hostname,
};

const T1: i64 = 1_700_000_000;
const T1S: &str = "20231114T221320Z";
const T2: i64 = 1_700_003_600;
const T2S: &str = "20231114T231320Z";
const BASE_MTIME: i64 = 1_690_000_000;

/// The librsync block length duplicity 0.8.22 uses for a file of `n` bytes
/// (`diffdir.get_block_size`, default `--max-blocksize` 2048).
fn dup_block_len(n: u64) -> u32 {
    if n < 1_024_000 {
        512
    } else {
        ((n / 1_024_000) * 512).min(2048) as u32
    }
}

/// `rdiff -H md4 -R rollsum -b BLOCKLEN -S 8 signature FILE`: the signature
/// format duplicity writes.
fn rdiff_signature(file: &Path, block_len: u32, scratch: &Path) -> Vec<u8> {
    let out = scratch.join(format!(
        "{}.rdiff-sig-{block_len}",
        file.file_name().unwrap().to_string_lossy()
    ));
    Cmd::new("rdiff")
        .args(["-H", "md4", "-R", "rollsum", "-b"])
        .arg(block_len.to_string())
        .args(["-f", "-S", "8", "signature"])
        .arg(file)
        .arg(&out)
        .run_ok();
    fs::read(&out).unwrap()
}

/// Decrypts with stock gpg (batch, loopback, the passphrase), panicking with
/// gpg's output if it cannot.
fn gpg_decrypt(g: &GpgHome, path: &Path, passphrase: &str) -> Decrypted {
    let data = fs::read(path).unwrap();
    g.decrypt(&data, Some(passphrase))
        .unwrap_or_else(|e| panic!("gpg --decrypt {}: {e}", path.display()))
}

/// Entry names of a tar as GNU `tar tvf` lists them, with the size column:
/// (name, size, the whole line).
fn gnu_tar_listing(tar: &Path) -> Vec<(String, u64, String)> {
    let out = Cmd::new("tar")
        .env("LC_ALL", "C")
        .env("TZ", "UTC")
        .arg("tvf")
        .arg(tar)
        .run();
    out.assert_success();
    out.stdout_str()
        .lines()
        .map(|l| {
            // perms owner/group size date time name [-> target]; the names
            // here have no spaces
            let mut fields = l.split_whitespace();
            let _perm = fields.next();
            let _owner = fields.next();
            let size: u64 = fields
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("tar tvf line {l:?}"));
            let _date = fields.next();
            let _time = fields.next();
            let name: Vec<&str> = fields.collect();
            let name = name.join(" ");
            let name = name.split(" -> ").next().unwrap().to_string();
            (name, size, l.to_string())
        })
        .collect()
}

/// `sha1sum FILE` as lowercase hex.
fn sha1sum(path: &Path) -> String {
    let out = Cmd::new("sha1sum").arg(path).run_ok();
    out.stdout_str()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The store's volumes of one set, in order: `<prefix>1.difftar.gpg`, ...
fn set_volumes(env: &AgentEnv, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<(u32, PathBuf)> = env
        .objects()
        .into_iter()
        .filter(|n| n.starts_with(prefix) && n.ends_with(".difftar.gpg"))
        .map(|n| {
            let k: u32 = n[prefix.len()..n.len() - ".difftar.gpg".len()]
                .parse()
                .unwrap_or_else(|e| panic!("volume number of {n}: {e}"));
            (k, env.store.join(n))
        })
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no {prefix}* volumes: {:?}", env.objects());
    for (i, (k, _)) in v.iter().enumerate() {
        assert_eq!(*k as usize, i + 1, "volume numbers: {:?}", env.objects());
    }
    v.into_iter().map(|(_, p)| p).collect()
}

fn find_member<'a>(members: &'a [TarMember], name: &str) -> &'a TarMember {
    members
        .iter()
        .find(|m| m.name == name.as_bytes())
        .unwrap_or_else(|| {
            panic!(
                "no tar member {name:?} in {:?}",
                members.iter().map(TarMember::name_str).collect::<Vec<_>>()
            )
        })
}

/// The content of `diff/<path>` or the concatenated `multivol_diff/<path>/<k>`
/// pieces (numbered 1, 2, ... consecutively) of a set's members.
fn delta_of(members: &[TarMember], path: &str) -> Vec<u8> {
    if let Some(m) = members
        .iter()
        .find(|m| m.name == format!("diff/{path}").as_bytes())
    {
        return m.data.clone();
    }
    let prefix = format!("multivol_diff/{path}/");
    let pieces: Vec<&TarMember> = members
        .iter()
        .filter(|m| m.name.starts_with(prefix.as_bytes()))
        .collect();
    assert!(
        !pieces.is_empty(),
        "no diff for {path} in {:?}",
        members.iter().map(TarMember::name_str).collect::<Vec<_>>()
    );
    let mut out = Vec::new();
    for (i, p) in pieces.iter().enumerate() {
        assert_eq!(p.name_str(), format!("{prefix}{}", i + 1));
        out.extend_from_slice(&p.data);
    }
    out
}

// ------------------------------------------------------------------ tests

/// Every object opens with `gpg --decrypt`; volumes and signature files are tars
/// GNU tar lists with duplicity's entry names; the manifest carries the SHA-1 of
/// each stored volume; the packets are SKESK + SEIPD with MDC.
#[test]
fn gpg_and_gnu_tar_open_every_object() {
    let env = AgentEnv::new();
    let pass = env.passphrase.clone().unwrap();
    let src = env.path("src");
    let big_len = 1_500_000usize;
    TreeBuilder::new(&src)
        .file("a/b", b"inside a\n")
        .file("big.bin", deterministic_bytes(1, big_len))
        .file_with("c.txt", b"private\n", 0o600, BASE_MTIME)
        .set_all_mtimes(BASE_MTIME);
    env.backup(&src, &["--volsize", "1", "--current-time", &T1.to_string()])
        .assert_success();

    let g = GpgHome::new();
    let objects = env.objects();
    assert!(objects.len() >= 4, "{objects:?}");
    for name in &objects {
        let path = env.store.join(name);
        assert!(name.ends_with(".gpg"), "{name}");
        let d = gpg_decrypt(&g, &path, &pass);
        assert!(d.has_status("DECRYPTION_OKAY"), "{name}: {:?}", d.status);
        // a wrong passphrase is refused (gpg checks, not just reads)
        let data = fs::read(&path).unwrap();
        assert!(g.decrypt(&data, Some("wrong")).is_err(), "{name}");
        let packets = g.list_packets_with_passphrase(&data, &pass);
        assert!(
            packets.contains(":symkey enc packet: version 4"),
            "{name}: {packets}"
        );
        assert!(
            packets.contains(":encrypted data packet:") && packets.contains("mdc_method: 2"),
            "{name}: SEIPD with MDC expected: {packets}"
        );
        assert!(
            !packets.contains("aead encrypted packet"),
            "{name}: {packets}"
        );
        assert!(
            packets.contains(":literal data packet:"),
            "{name}: {packets}"
        );
        fs::write(env.path(&format!("{name}.plain")), &d.plaintext).unwrap();
    }

    // volumes: plain tars; names across the volumes in duplicity's order
    let vols = set_volumes(&env, &format!("duplicity-full.{T1S}.vol"));
    assert!(vols.len() >= 2, "1.5 MB over 1 MiB volumes: {objects:?}");
    let mut listing = Vec::new();
    let mut per_volume = Vec::new();
    for v in &vols {
        let plain = env.path(&format!(
            "{}.plain",
            v.file_name().unwrap().to_string_lossy()
        ));
        let l = gnu_tar_listing(&plain);
        assert!(!l.is_empty(), "{} lists nothing", v.display());
        per_volume.push(l.clone());
        listing.extend(l);
    }
    let names: Vec<&str> = listing.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(
        names[..3],
        ["snapshot/./", "snapshot/a/", "snapshot/a/b"],
        "{names:?}"
    );
    assert_eq!(names.last(), Some(&"snapshot/c.txt"), "{names:?}");
    let pieces = &listing[3..listing.len() - 1];
    assert!(pieces.len() >= 2, "{names:?}");
    for (i, (n, _, _)) in pieces.iter().enumerate() {
        assert_eq!(
            n,
            &format!("multivol_snapshot/big.bin/{}", i + 1),
            "{names:?}"
        );
    }
    let total: u64 = pieces.iter().map(|(_, s, _)| s).sum();
    assert_eq!(total, big_len as u64, "sum of the pieces' sizes");
    // the file continues from one volume into the next
    assert!(
        per_volume[0]
            .last()
            .unwrap()
            .0
            .starts_with("multivol_snapshot/big.bin/")
            && per_volume[1][0].0.starts_with("multivol_snapshot/big.bin/"),
        "{per_volume:?}"
    );
    assert!(listing[0].2.starts_with('d'), "{}", listing[0].2);
    assert!(
        listing.last().unwrap().2.starts_with("-rw-------"),
        "{}",
        listing.last().unwrap().2
    );

    // the signature file: a tar of snapshot/ entries for dirs, signature/ for files
    let sig_plain = env.path(&format!("duplicity-full-signatures.{T1S}.sigtar.gpg.plain"));
    let sig_names: Vec<String> = gnu_tar_listing(&sig_plain)
        .into_iter()
        .map(|(n, _, _)| n)
        .collect();
    assert_eq!(
        sig_names,
        [
            "snapshot/",
            "snapshot/a/",
            "signature/a/b",
            "signature/big.bin",
            "signature/c.txt"
        ]
    );

    // the manifest: one block per volume with the SHA-1 of the stored object
    let manifest = fs::read(env.path(&format!("duplicity-full.{T1S}.manifest.gpg.plain"))).unwrap();
    let text = String::from_utf8(manifest).expect("manifest of ASCII paths is UTF-8");
    assert!(text.ends_with('\n'), "{text}");
    assert!(
        text.starts_with(&format!("Hostname {}\n", hostname())),
        "{text}"
    );
    for (i, v) in vols.iter().enumerate() {
        let block = format!("Volume {}:\n", i + 1);
        let at = text
            .find(&block)
            .unwrap_or_else(|| panic!("no {block:?}: {text}"));
        let hash_line = format!("    Hash SHA1 {}\n", sha1sum(v));
        let next = text[at + block.len()..]
            .find("Volume ")
            .map_or(text.len(), |j| at + block.len() + j);
        assert!(
            text[at..next].contains(&hash_line),
            "{block:?} lacks {hash_line:?}: {text}"
        );
    }
    assert!(text.contains("    StartingPath   .  \n"), "{text}");
}

/// A key pair made by gpg: secret and public key files, and its info.
struct KeyFiles {
    info: flotilla_tests::KeyInfo,
    sec: PathBuf,
    public: PathBuf,
    public_armored: Vec<u8>,
}

fn key_files(g: &GpgHome, info: flotilla_tests::KeyInfo, dir: &Path, stem: &str) -> KeyFiles {
    let sec = dir.join(format!("{stem}-sec.asc"));
    let public = dir.join(format!("{stem}-pub.asc"));
    let public_armored = g.export_public_armored(&info.fingerprint);
    fs::write(&sec, g.export_secret_armored(&info.fingerprint)).unwrap();
    fs::write(&public, &public_armored).unwrap();
    KeyFiles {
        info,
        sec,
        public,
        public_armored,
    }
}

/// Signs with `signer` (via `--sign-key`), then checks: gpg reports GOODSIG for
/// every object, duplicity restores with `--sign-key <last 8 hex>` (and refuses
/// another key's id), flotilla restores with `--require-signature` and refuses
/// another key's public key without leaving a target.
fn check_signed_chain(env: &AgentEnv, signer: &KeyFiles, other: &KeyFiles) {
    let pass = env.passphrase.clone().unwrap();
    let src = env.path("src");
    let t = TreeBuilder::new(&src);
    t.file("big.bin", deterministic_bytes(5, 1_300_000))
        .file("f.txt", b"signed\n")
        .set_all_mtimes(BASE_MTIME);
    let sign = signer.sec.display().to_string();
    env.backup(
        &src,
        &[
            "--volsize",
            "1",
            "--current-time",
            &T1.to_string(),
            "--sign-key",
            &sign,
        ],
    )
    .assert_success();
    t.file_with("f.txt", b"signed again\n", 0o644, BASE_MTIME + 10);
    env.backup(
        &src,
        &["--current-time", &T2.to_string(), "--sign-key", &sign],
    )
    .assert_success();

    // gpg: every object (volumes, manifests, signature files) carries a good
    // signature by the signing key; remember the id gpg reports
    let reader = GpgHome::new();
    reader.import(&signer.public_armored);
    let mut signing_ids = Vec::new();
    for name in env.objects() {
        let d = gpg_decrypt(&reader, &env.store.join(&name), &pass);
        let good = d
            .status_arg("GOODSIG")
            .unwrap_or_else(|| panic!("{name}: no GOODSIG: {:?}", d.status));
        let id = good.split_whitespace().next().unwrap().to_string();
        // VALIDSIG <signing key fpr> ... <primary key fpr>
        let valid = d.status_arg("VALIDSIG").expect("VALIDSIG");
        assert!(
            valid.ends_with(&signer.info.fingerprint),
            "{name}: VALIDSIG {valid}, want primary {}",
            signer.info.fingerprint
        );
        signing_ids.push((name, id));
    }
    let id = signing_ids[0].1.clone();
    assert!(
        signing_ids.iter().all(|(_, i)| *i == id),
        "one signing key for all objects: {signing_ids:?}"
    );
    let own_ids: Vec<&str> = std::iter::once(signer.info.key_id.as_str())
        .chain(signer.info.subkeys.iter().map(|s| s.key_id.as_str()))
        .collect();
    assert!(own_ids.contains(&id.as_str()), "{id} not in {own_ids:?}");

    // duplicity checks the signature of every volume it restores
    let dup = Duplicity::new().with_passphrase(&pass);
    dup.import_key(&signer.public_armored);
    dup.import_key(&other.public_armored);
    let short = &id[id.len() - 8..];
    let target = env.path("dup-restore");
    dup.restore(&env.url(), &target, None, &["--sign-key", short])
        .assert_success();
    assert_trees_equal(&src, &target);
    let other_short = &other.info.key_id[other.info.key_id.len() - 8..];
    dup.clear_cache();
    dup.restore(
        &env.url(),
        &env.path("dup-restore-other"),
        None,
        &["--sign-key", other_short],
    )
    .assert_failure()
    .assert_output_contains("Volume was signed by key");

    // flotilla: the right public key passes, another one fails cleanly
    let target = env.path("flt-restore");
    env.restore(
        &target,
        &["--require-signature", &signer.public.display().to_string()],
    )
    .assert_success();
    assert_trees_equal(&src, &target);
    let refused = env.path("flt-restore-other");
    let out = env.restore(
        &refused,
        &["--require-signature", &other.public.display().to_string()],
    );
    out.assert_failure();
    let msg = out.combined().to_lowercase();
    assert!(
        msg.contains("signature") || msg.contains("signed"),
        "the error should say the signature is wrong: {out}"
    );
    assert!(!msg.contains("panicked"), "{out}");
    assert!(
        !refused.exists(),
        "a refused restore must leave no target: {out}"
    );
}

#[test]
fn signed_volumes_verify_with_gpg_duplicity_and_flotilla() {
    let env = AgentEnv::new();
    let keys = GpgHome::new();
    let signer = keys.generate_key("Flotilla Signer", KeyAlgo::Ed25519);
    let other = keys.generate_key("Other Signer", KeyAlgo::Ed25519);
    let signer = key_files(&keys, signer, env.dir.path(), "signer");
    let other = key_files(&keys, other, env.dir.path(), "other");
    check_signed_chain(&env, &signer, &other);
}

/// A key whose signatures come from a signing subkey: gpg's GOODSIG names the
/// subkey, and that is the id duplicity's `--sign-key` must be given.
#[test]
fn signing_subkey_verifies_with_gpg_duplicity_and_flotilla() {
    let env = AgentEnv::new();
    let keys = GpgHome::new();
    let signer = keys.generate_key("Subkey Signer", KeyAlgo::Rsa3072);
    let signer = keys.add_subkey(&signer.fingerprint, "ed25519", "sign");
    assert_eq!(signer.subkeys.len(), 1);
    let other = keys.generate_key("Other Signer", KeyAlgo::Ed25519);
    let signer = key_files(&keys, signer, env.dir.path(), "signer");
    let other = key_files(&keys, other, env.dir.path(), "other");
    check_signed_chain(&env, &signer, &other);
}

/// `rdiff patch` applies the deltas in our incremental volumes, and our stored
/// signatures are byte-identical to `rdiff signature` with duplicity's block
/// length rule (checked against a signature stock duplicity wrote, too).
#[test]
fn rdiff_applies_our_deltas_and_matches_our_signatures() {
    let env = AgentEnv::new();
    let pass = env.passphrase.clone().unwrap();
    let src = env.path("src");
    let scratch = env.path("scratch");
    fs::create_dir_all(&scratch).unwrap();
    // sizes on both sides of duplicity's block-length steps
    let files: [(&str, usize); 7] = [
        ("empty.bin", 0),
        ("f.bin", 200_000),
        ("below-1024000.bin", 1_023_999),
        ("mid-1500000.bin", 1_500_000),
        ("big-3000000.bin", 3_000_000),
        ("big-3100000.bin", 3_100_000),
        ("big-5000000.bin", 5_000_000),
    ];
    let t = TreeBuilder::new(&src);
    for (i, (name, len)) in files.iter().enumerate() {
        t.file(name, deterministic_bytes(40 + i as u64, *len));
    }
    t.set_all_mtimes(BASE_MTIME);
    env.backup(&src, &["--current-time", &T1.to_string()])
        .assert_success();
    copy_tree(&src, &env.path("old"));

    // signatures in the full signature file = rdiff's
    let g = GpgHome::new();
    let sig_path = env
        .store
        .join(format!("duplicity-full-signatures.{T1S}.sigtar.gpg"));
    let sigs = read_tar(&gpg_decrypt(&g, &sig_path, &pass).plaintext);
    for (name, len) in files {
        let bl = dup_block_len(len as u64);
        let ours = &find_member(&sigs, &format!("signature/{name}")).data;
        assert_eq!(
            ours[..12],
            [
                &[0x72, 0x73, 0x01, 0x36][..],
                &bl.to_be_bytes(),
                &8u32.to_be_bytes()
            ]
            .concat(),
            "{name} ({len} bytes): signature header (magic, block length {bl}, strong sum 8)"
        );
        let want = rdiff_signature(&src.join(name), bl, &scratch);
        assert!(
            *ours == want,
            "{name} ({len} bytes): our signature ({} bytes) differs from rdiff's with -b {bl} ({} bytes)",
            ours.len(),
            want.len()
        );
    }
    assert_eq!(dup_block_len(3_000_000), 1024);
    assert_eq!(dup_block_len(3_100_000), 1536);
    assert_eq!(dup_block_len(5_000_000), 2048);

    // changes: 16 bytes rewritten + an append (small delta: diff/), 200 kB
    // rewritten in a big file (delta > 64 KiB: multivol_diff/)
    let mut f = fs::read(src.join("f.bin")).unwrap();
    f[100_000..100_016].copy_from_slice(b"sixteen bytes!!!");
    f.extend_from_slice(&deterministic_bytes(99, 5_000));
    t.file_with("f.bin", &f, 0o644, BASE_MTIME + 100);
    let mut big = fs::read(src.join("big-3000000.bin")).unwrap();
    big[1_000_000..1_200_000].copy_from_slice(&deterministic_bytes(98, 200_000));
    t.file_with("big-3000000.bin", &big, 0o644, BASE_MTIME + 100);
    env.backup(&src, &["--current-time", &T2.to_string()])
        .assert_success();

    let mut members = Vec::new();
    for v in set_volumes(&env, &format!("duplicity-inc.{T1S}.to.{T2S}.vol")) {
        members.extend(read_tar(&gpg_decrypt(&g, &v, &pass).plaintext));
    }
    assert!(
        members.iter().any(|m| m.name == b"diff/f.bin"),
        "a 16-byte change + 5000-byte append is one diff/ entry: {:?}",
        members.iter().map(TarMember::name_str).collect::<Vec<_>>()
    );
    assert!(
        members
            .iter()
            .any(|m| m.name == b"multivol_diff/big-3000000.bin/1"),
        "a 200 kB rewrite gives a delta over 64 KiB: {:?}",
        members.iter().map(TarMember::name_str).collect::<Vec<_>>()
    );
    for name in ["f.bin", "big-3000000.bin"] {
        let delta = delta_of(&members, name);
        assert_eq!(delta[..4], [0x72, 0x73, 0x02, 0x36], "{name}: delta magic");
        let dpath = scratch.join(format!("{name}.delta"));
        fs::write(&dpath, &delta).unwrap();
        let out = scratch.join(format!("{name}.patched"));
        Cmd::new("rdiff")
            .arg("patch")
            .arg(env.path("old").join(name))
            .arg(&dpath)
            .arg(&out)
            .run_ok();
        assert!(
            fs::read(&out).unwrap() == fs::read(src.join(name)).unwrap(),
            "rdiff patch old {name} + our delta != new {name}"
        );
        // the new-signatures file holds rdiff's signature of the new content
        let ns = env.store.join(format!(
            "duplicity-new-signatures.{T1S}.to.{T2S}.sigtar.gpg"
        ));
        let nsigs = read_tar(&gpg_decrypt(&g, &ns, &pass).plaintext);
        let new_len = fs::metadata(src.join(name)).unwrap().len();
        let want = rdiff_signature(&src.join(name), dup_block_len(new_len), &scratch);
        assert!(
            find_member(&nsigs, &format!("signature/{name}")).data == want,
            "{name}: new signature differs from rdiff's"
        );
    }

    // the rule is duplicity's: its own signature of the fixture's 3,000,000-byte
    // big.bin is rdiff's with -b 1024
    let fx = fixture::store_dir().join(format!(
        "duplicity-full-signatures.{}.sigtar.gpg",
        fixture::T1_STR
    ));
    let fsigs = read_tar(&gpg_decrypt(&g, &fx, fixture::PASSPHRASE).plaintext);
    let big = fixture::expected_dir(1).join("big.bin");
    assert_eq!(fs::metadata(&big).unwrap().len(), 3_000_000);
    assert!(
        find_member(&fsigs, "signature/big.bin").data == rdiff_signature(&big, 1024, &scratch),
        "duplicity's signature of a 3,000,000-byte file is rdiff -b 1024"
    );
}

/// Secret keys gpg protected with a passphrase: flotilla unlocks a signing key
/// with `SIGN_PASSPHRASE` (duplicity's variable) and a decryption key with
/// `PASSPHRASE`; without them it fails up front, clearly, writing nothing.
#[test]
fn passphrase_protected_gpg_keys() {
    let mut env = AgentEnv::new();
    env.passphrase = None;
    let keys = GpgHome::new();
    let key = keys.generate_key_with_passphrase("Protected Key", KeyAlgo::Ed25519, Some("key-pw"));
    let sec = env.path("sec.asc");
    let public = env.path("pub.asc");
    let sec_armored = keys
        .command()
        .args(["--passphrase", "key-pw", "--armor", "--export-secret-keys"])
        .arg(&key.fingerprint)
        .run_ok()
        .stdout;
    fs::write(&sec, &sec_armored).unwrap();
    fs::write(&public, keys.export_public_armored(&key.fingerprint)).unwrap();
    let src = env.path("src");
    TreeBuilder::new(&src)
        .file("f.txt", b"protected\n")
        .file("g.bin", deterministic_bytes(7, 100_000))
        .set_all_mtimes(BASE_MTIME);
    let (sec_s, pub_s) = (sec.display().to_string(), public.display().to_string());
    let backup = |sign_pass: Option<&str>| {
        let mut c = env.cmd().arg("backup").arg(&src).arg(env.url()).args([
            "--encrypt-key",
            &pub_s,
            "--sign-key",
            &sec_s,
        ]);
        if let Some(p) = sign_pass {
            c = c.env("SIGN_PASSPHRASE", p);
        }
        c.run()
    };
    for bad in [None, Some("wrong")] {
        let out = backup(bad);
        out.assert_failure();
        assert!(
            out.combined().to_lowercase().contains("passphrase"),
            "the error should name the missing/wrong passphrase: {out}"
        );
        assert!(env.objects().is_empty(), "{bad:?}: {:?}", env.objects());
    }
    backup(Some("key-pw")).assert_success();

    // gpg: a PKESK to our key, signed by it
    let vol = env.objects_matching(".vol1.difftar.gpg").remove(0);
    let data = fs::read(&vol).unwrap();
    let d = keys
        .decrypt(&data, Some("key-pw"))
        .unwrap_or_else(|e| panic!("{e}"));
    let good = d.status_arg("GOODSIG").expect("GOODSIG");
    assert!(good.starts_with(&key.key_id), "{good}");

    // flotilla restores with the key's passphrase in PASSPHRASE
    let restore = |target: &Path, pass: Option<&str>| {
        let mut c = env.cmd().arg("restore").arg(env.url()).arg(target).args([
            "--decrypt-key",
            &sec_s,
            "--require-signature",
            &pub_s,
        ]);
        if let Some(p) = pass {
            c = c.env("PASSPHRASE", p);
        }
        c.run()
    };
    let bad = env.path("r-bad");
    let out = restore(&bad, Some("wrong"));
    out.assert_failure();
    assert!(
        out.combined().to_lowercase().contains("passphrase"),
        "{out}"
    );
    assert!(!bad.exists(), "{out}");
    let r = env.path("r");
    restore(&r, Some("key-pw")).assert_success();
    assert_trees_equal(&src, &r);

    // duplicity too (the key imported with its protection)
    let dup = Duplicity::new().with_passphrase("key-pw");
    dup.import_key(&sec_armored);
    let dr = env.path("dup-r");
    dup.restore(
        &env.url(),
        &dr,
        None,
        &["--sign-key", &key.key_id[key.key_id.len() - 8..]],
    )
    .assert_success();
    assert_trees_equal(&src, &dr);
}
