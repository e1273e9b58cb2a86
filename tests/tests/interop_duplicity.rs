//! Interoperability with stock duplicity 0.8.22, both directions:
//!
//! - duplicity restores, verifies and lists chains flotilla-agent writes
//!   (symmetric, public-key and unencrypted);
//! - duplicity continues a flotilla chain with its own incremental, and
//!   flotilla continues that mixed chain again;
//! - flotilla restores, lists, verifies the chain stock duplicity wrote (the
//!   fixture);
//! - duplicity's collection-status parses every object name flotilla writes.

use std::fs;
use std::path::Path;

use flotilla_tests::agent::{AgentEnv, TarMember, copy_tree, read_tar};
use flotilla_tests::fixture::{self, expected_dir, expected_list};
use flotilla_tests::{
    Cmd, CmdOutput, Duplicity, GpgHome, KeyAlgo, TreeBuilder, assert_trees_equal,
    deterministic_bytes, deterministic_text, is_root,
};

const T1: i64 = 1_700_000_000;
const T1S: &str = "20231114T221320Z";
const T2: i64 = 1_700_003_600;
const T2S: &str = "20231114T231320Z";
const T3: i64 = 1_700_007_200;
const T3S: &str = "20231115T001320Z";
const T4: i64 = 1_700_010_800;
const T4S: &str = "20231115T011320Z";
const T5: i64 = 1_700_014_400;
const T5S: &str = "20231115T021320Z";

/// mtime of everything in the initial tree.
const BASE_MTIME: i64 = 1_690_000_000;
/// 2001-02-03T04:05:06Z, the "old" mtime of secret.txt.
const OLD_MTIME: i64 = 981_173_106;
const BIG_LEN: usize = 3_000_000;

/// A path longer than 100 bytes (needs a pax `path` record in tar).
fn long_path() -> String {
    format!(
        "long/{}/{}/{}.txt",
        "d".repeat(45),
        "e".repeat(45),
        "f".repeat(60)
    )
}

/// A dangling symlink target longer than 100 bytes (pax `linkpath`).
fn long_target() -> String {
    format!("../nowhere/{}/{}", "t".repeat(70), "u".repeat(60))
}

/// The initial tree: every kind of entry and name duplicity has to carry.
fn build_tree(src: &Path) {
    let t = TreeBuilder::new(src);
    t.file("text.txt", deterministic_text(1, 20_000))
        // > 1 MiB, pseudo-random: spans several 1 MiB volumes
        .file("big.bin", deterministic_bytes(2, BIG_LEN))
        // a multiple of 64 KiB: the last multivol piece is empty
        .file("exact64k.bin", deterministic_bytes(3, 65_536))
        .file("empty.txt", b"")
        .file("name with spaces.txt", b"one\ntwo\n")
        .file("quote'and\\back \"dq\".txt", b"quotes\n")
        .file(b"latin1-\xe9.txt", b"latin-1 name\n")
        .file(b"bad-utf8-\xff\xfe.bin", deterministic_bytes(4, 5_000))
        .file("victim.txt", b"deleted at T2\n")
        // a/b, a-b, a.txt: index order differs from string order
        .file("a/b", b"inside a\n")
        .file("a-b", b"sorts after the directory a\n")
        .file("a.txt", b"alpha\n")
        .file("nested/d1/d2/d3/deep.txt", b"deep\n")
        .file("gone/x", b"x\n")
        .file("gone/sub/y", b"y\n")
        .file(long_path(), b"long path\n")
        .file("hl1", b"hard link\n")
        .hard_link("hl2", "hl1")
        .file("secret.txt", b"secret\n")
        .chmod("secret.txt", 0o600)
        .symlink("link", "text.txt")
        .symlink("dangling", "../nowhere/target with space")
        .symlink("longlink", long_target())
        .fifo("fifo", 0o640)
        .dir("emptydir")
        .dir("nested/empty-inner")
        .chmod("nested/d1", 0o750)
        .file("tab\tand\nnewline.txt", b"control characters in the name\n")
        .file("suid", b"#!/bin/sh\n")
        .chmod("suid", 0o4755)
        .dir("sticky")
        .file("sticky/inside", b"s\n")
        .chmod("sticky", 0o1777)
        // type changes at T2
        .file("file-to-link", b"a file at T1\n")
        .symlink("link-to-file", "text.txt")
        .file("dir-to-file/inner/x", b"x\n")
        .file("file-to-dir", b"a file at T1\n");
    if is_root() {
        // an owner without passwd/group entries: uname/gname empty, numeric ids
        t.chown("secret.txt", 12_345, 54_321);
        // ids >= 8^7 do not fit the ustar fields (pax uid/gid)
        t.chown("a.txt", 3_000_000, 3_000_001);
    }
    t.set_all_mtimes(BASE_MTIME);
    t.set_mtime("secret.txt", OLD_MTIME);
}

/// Changes between T1 and T2: a delta in the middle of the big file, an append,
/// a deleted file and directory, a new file, a chmod-only change, a retargeted
/// symlink, and type changes (file <-> symlink, directory <-> file).
fn change_tree_t2(src: &Path) {
    let t = TreeBuilder::new(src);
    let mut big = fs::read(src.join("big.bin")).unwrap();
    big[1_000_000..1_200_000].copy_from_slice(&deterministic_bytes(9, 200_000));
    t.file_with("big.bin", &big, 0o644, 1_700_001_000);
    let mut text = fs::read(src.join("text.txt")).unwrap();
    text.extend_from_slice(b"appended at T2\n");
    t.file_with("text.txt", &text, 0o644, 1_700_001_000);
    t.remove("victim.txt").remove("gone");
    t.file_with("new.txt", b"new at T2\n", 0o644, 1_700_001_000);
    t.chmod("a-b", 0o640);
    t.remove("link").symlink("link", "nested/d1/d2/d3/deep.txt");
    t.remove("file-to-link").symlink("file-to-link", "a.txt");
    t.remove("link-to-file")
        .file_with("link-to-file", b"a file at T2\n", 0o644, 1_700_001_000);
    t.remove("dir-to-file")
        .file_with("dir-to-file", b"a file at T2\n", 0o644, 1_700_001_000);
    t.remove("file-to-dir")
        .file_with("file-to-dir/y", b"y\n", 0o644, 1_700_001_000)
        .set_mtime("file-to-dir", 1_700_001_000);
    t.set_mtime(".", 1_700_001_000);
}

/// How a test encrypts: flotilla's backup arguments and a matching duplicity.
struct Setup {
    env: AgentEnv,
    dup: Duplicity,
    /// Encryption arguments for `flotilla-agent backup`.
    agent_args: Vec<String>,
    /// Extra arguments for every duplicity restore/verify.
    dup_args: Vec<&'static str>,
    /// Long id of the encryption subkey (public-key mode).
    recipient: Option<String>,
    /// Keeps the key owner's GnuPG home alive.
    _owner: Option<GpgHome>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Crypto {
    Symmetric,
    PublicKey,
    None,
}

impl Setup {
    fn new(crypto: Crypto) -> Setup {
        let mut env = AgentEnv::new();
        match crypto {
            Crypto::Symmetric => {
                let pass = env.passphrase.clone().unwrap();
                Setup {
                    env,
                    dup: Duplicity::new().with_passphrase(&pass),
                    agent_args: Vec::new(),
                    dup_args: Vec::new(),
                    recipient: None,
                    _owner: None,
                }
            }
            Crypto::PublicKey => {
                env.passphrase = None;
                let owner = GpgHome::new();
                let key = owner.generate_key("Interop Owner", KeyAlgo::Ed25519);
                let pub_asc = env.path("pub.asc");
                fs::write(&pub_asc, owner.export_public_armored(&key.fingerprint)).unwrap();
                // the restoring duplicity holds the secret key (no passphrase on it)
                let dup = Duplicity::new().with_passphrase("");
                dup.import_key(&owner.export_secret_armored(&key.fingerprint));
                Setup {
                    env,
                    dup,
                    agent_args: vec!["--encrypt-key".into(), pub_asc.display().to_string()],
                    dup_args: Vec::new(),
                    recipient: Some(key.encryption_subkey().unwrap().key_id.clone()),
                    _owner: Some(owner),
                }
            }
            Crypto::None => {
                env.passphrase = None;
                Setup {
                    env,
                    dup: Duplicity::new(),
                    agent_args: vec!["--no-encryption".into()],
                    dup_args: vec!["--no-encryption"],
                    recipient: None,
                    _owner: None,
                }
            }
        }
    }

    /// `flotilla-agent backup SRC URL --volsize 1 --current-time T <encryption>`.
    fn backup(&self, src: &Path, time: i64, extra: &[&str]) -> CmdOutput {
        let t = time.to_string();
        let mut args: Vec<&str> = vec!["--volsize", "1", "--current-time", &t];
        args.extend(self.agent_args.iter().map(String::as_str));
        args.extend_from_slice(extra);
        self.env.backup(src, &args)
    }

    /// `duplicity restore` with an empty archive dir.
    fn dup_restore_fresh(&self, target: &Path, time: Option<i64>) -> CmdOutput {
        self.dup.clear_cache();
        let t = time.map(|t| t.to_string());
        self.dup
            .restore(&self.env.url(), target, t.as_deref(), &self.dup_args)
    }

    /// `duplicity verify --compare-data` (latest) with an empty archive dir.
    fn dup_verify_fresh(&self, dir: &Path) -> CmdOutput {
        self.dup.clear_cache();
        let mut args = vec!["--compare-data"];
        args.extend_from_slice(&self.dup_args);
        self.dup.verify(&self.env.url(), dir, &args)
    }
}

/// Number of volume objects of a set, by name prefix
/// (`duplicity-full.<T>.vol` / `duplicity-inc.<T0>.to.<T1>.vol`).
fn volumes(env: &AgentEnv, prefix: &str) -> usize {
    env.objects()
        .iter()
        .filter(|n| n.starts_with(prefix) && n.contains(".difftar"))
        .count()
}

/// The rows of duplicity collection-status' set table for one chain section:
/// (type, number of volumes), in listing order.
fn status_rows(section: &str) -> Vec<(String, usize)> {
    section
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("Full ") || l.starts_with("Incremental "))
        .map(|l| {
            let kind = l.split_whitespace().next().unwrap().to_string();
            let n = l
                .split_whitespace()
                .last()
                .unwrap()
                .parse()
                .unwrap_or_else(|e| panic!("volume count in {l:?}: {e}"));
            (kind, n)
        })
        .collect()
}

/// The text of one chain in collection-status output: from its heading
/// (`Secondary chain 1 of 1:`, or the primary chain's) to the dashes closing its
/// set table.
fn chain_section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?} in collection-status:\n{text}"));
    let rest = &text[start..];
    // heading, dashes, chain lines, table, dashes
    let end = rest
        .match_indices("-------------------------")
        .nth(1)
        .map(|(i, _)| i)
        .unwrap_or(rest.len());
    &rest[..end]
}

const PRIMARY: &str = "Found primary backup chain with matching signature chain:";

/// Asserts collection-status output is clean: no orphaned, incomplete or
/// unparsed objects.
#[track_caller]
fn assert_status_clean(out: &CmdOutput) {
    out.assert_success();
    let text = out.combined();
    assert!(
        text.contains("No orphaned or incomplete backup sets found."),
        "{out}"
    );
    // duplicity's complaints: "Also found N backup sets not part of any chain,
    // and M incomplete backup sets", "Warning, found the following orphaned
    // signature files", "Warning, found incomplete backup sets ...", ...
    let rest = text.replace("No orphaned or incomplete backup sets found.", "");
    for bad in [
        "orphaned",
        "incomplete",
        "not part of any chain",
        "Warning",
        "Error",
    ] {
        assert!(
            !rest.contains(bad),
            "collection-status mentions {bad:?}: {out}"
        );
    }
}

/// The decrypted (or gunzipped) plaintext of an object of the store.
fn open_object(path: &Path, passphrase: Option<&str>) -> Vec<u8> {
    let data = fs::read(path).unwrap();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    if name.ends_with(".gpg") {
        let g = GpgHome::new();
        match g.decrypt(&data, passphrase) {
            Ok(d) => d.plaintext,
            Err(e) => panic!("gpg cannot decrypt {name}: {e}"),
        }
    } else if name.ends_with(".gz") {
        Cmd::new("gzip").arg("-dc").stdin(data).run_ok().stdout
    } else {
        data
    }
}

/// The tar members of all volumes of one set, in volume order.
fn set_members(env: &AgentEnv, prefix: &str, passphrase: Option<&str>) -> Vec<TarMember> {
    let n = volumes(env, prefix);
    assert!(n > 0, "no volumes {prefix}*: {:?}", env.objects());
    let mut out = Vec::new();
    for k in 1..=n {
        let name = format!("{prefix}{k}.difftar.gpg");
        out.extend(read_tar(&open_object(&env.store.join(name), passphrase)));
    }
    out
}

/// Names of tar members, lossy text.
fn names(members: &[TarMember]) -> Vec<String> {
    members.iter().map(TarMember::name_str).collect()
}

/// Flips one byte of a file in place, keeping its size, mode and mtime.
fn flip_byte(path: &Path, offset: usize) {
    let meta = fs::symlink_metadata(path).unwrap();
    let mut data = fs::read(path).unwrap();
    data[offset] ^= 0x55;
    fs::write(path, data).unwrap();
    let mtime = std::os::unix::fs::MetadataExt::mtime(&meta);
    flotilla_tests::tree::set_mtime_nofollow(path, mtime).unwrap();
}

// ------------------------------------------------------------------ tests

/// Full + incremental by flotilla; stock duplicity restores both times from an
/// empty archive dir, `verify --compare-data` passes (and fails on a modified
/// tree), collection-status shows the primary chain.
fn duplicity_reads_our_chain(crypto: Crypto) {
    let s = Setup::new(crypto);
    let env = &s.env;
    let src = env.path("src");
    build_tree(&src);
    s.backup(&src, T1, &[])
        .assert_success()
        .assert_output_contains("Full backup");
    copy_tree(&src, &env.path("exp1"));
    change_tree_t2(&src);
    s.backup(&src, T2, &[])
        .assert_success()
        .assert_output_contains("Incremental backup");
    copy_tree(&src, &env.path("exp2"));

    let suffix = if crypto == Crypto::None {
        ".gz"
    } else {
        ".gpg"
    };
    let objects = env.objects();
    assert!(
        objects.iter().all(|n| n.starts_with("duplicity-")),
        "{objects:?}"
    );
    assert!(
        objects.contains(&format!("duplicity-full-signatures.{T1S}.sigtar{suffix}")),
        "{objects:?}"
    );
    let full_vols = volumes(env, &format!("duplicity-full.{T1S}.vol"));
    let inc_vols = volumes(env, &format!("duplicity-inc.{T1S}.to.{T2S}.vol"));
    assert!(
        full_vols >= 3,
        "3 MB of random data in 1 MiB volumes: {objects:?}"
    );
    assert!(inc_vols >= 1, "{objects:?}");

    if let Some(kid) = &s.recipient {
        // really public-key encrypted: a PKESK to the subkey, no passphrase packet
        for name in &objects {
            let packets = GpgHome::new().list_packets(&fs::read(env.store.join(name)).unwrap());
            assert!(
                packets.contains(":pubkey enc packet: version 3") && packets.contains(kid.as_str()),
                "{name}: {packets}"
            );
            assert!(!packets.contains("symkey enc packet"), "{name}: {packets}");
        }
    }

    // restores, each from an empty archive dir
    let r1 = env.path("dup-restore-t1");
    s.dup_restore_fresh(&r1, Some(T1)).assert_success();
    assert_trees_equal(&env.path("exp1"), &r1);
    let r2 = env.path("dup-restore-latest");
    s.dup_restore_fresh(&r2, None).assert_success();
    assert_trees_equal(&env.path("exp2"), &r2);

    // single paths: duplicity picks the volumes by our manifests' ranges
    for (time, exp, rel) in [
        (Some(T1), "exp1", "big.bin".to_string()),
        (None, "exp2", "big.bin".to_string()),
        (None, "exp2", "text.txt".to_string()),
        (None, "exp2", long_path()),
    ] {
        let target = env.path(&format!("dup-one-{}-{exp}", rel.len()));
        s.dup.clear_cache();
        let t = time.map(|t| t.to_string());
        let mut args = vec!["--file-to-restore", rel.as_str()];
        args.extend_from_slice(&s.dup_args);
        s.dup
            .restore(&env.url(), &target, t.as_deref(), &args)
            .assert_success();
        assert!(
            fs::read(&target).unwrap() == fs::read(env.path(exp).join(&rel)).unwrap(),
            "duplicity --file-to-restore {rel} ({exp}) differs"
        );
    }

    // verify --compare-data: the source at T2 has no differences ...
    s.dup_verify_fresh(&src)
        .assert_success()
        .assert_output_contains(", 0 differences found.");
    // ... a tree with one changed byte has one (exit 1)
    let modified = env.path("modified");
    copy_tree(&env.path("exp2"), &modified);
    flip_byte(&modified.join("big.bin"), 2_500_000);
    let v = s.dup_verify_fresh(&modified);
    v.assert_code(1)
        .assert_output_contains("1 difference found")
        .assert_output_contains("big.bin");

    // collection-status (from the listing alone, empty archive dir)
    s.dup.clear_cache();
    let st = s.dup.collection_status(&env.url());
    assert_status_clean(&st);
    let text = st.combined();
    assert!(text.contains("Found 0 secondary backup chains."), "{st}");
    let primary = chain_section(&text, PRIMARY);
    assert!(
        primary.contains("Number of contained backup sets: 2"),
        "{st}"
    );
    assert!(
        primary.contains(&format!(
            "Total number of contained volumes: {}",
            full_vols + inc_vols
        )),
        "{st}"
    );
    assert_eq!(
        status_rows(primary),
        vec![
            ("Full".to_string(), full_vols),
            ("Incremental".to_string(), inc_vols)
        ],
        "{st}"
    );
}

#[test]
fn duplicity_restores_verifies_and_lists_our_symmetric_chain() {
    duplicity_reads_our_chain(Crypto::Symmetric);
}

#[test]
fn duplicity_restores_verifies_and_lists_our_public_key_chain() {
    duplicity_reads_our_chain(Crypto::PublicKey);
}

#[test]
fn duplicity_restores_verifies_and_lists_our_unencrypted_chain() {
    duplicity_reads_our_chain(Crypto::None);
}

/// flotilla full + inc, then a duplicity incremental on top (it must take our
/// chain as primary and diff against our signatures), then a flotilla
/// incremental on top of duplicity's set (fetching and decrypting duplicity's
/// new-signatures); both tools restore the mixed chain.
#[test]
fn duplicity_and_flotilla_continue_each_others_chain() {
    let s = Setup::new(Crypto::Symmetric);
    let env = &s.env;
    let pass = env.passphrase.clone().unwrap();
    let url = env.url();
    let src = env.path("src");
    build_tree(&src);
    s.backup(&src, T1, &[]).assert_success();
    copy_tree(&src, &env.path("exp1"));
    change_tree_t2(&src);
    s.backup(&src, T2, &[]).assert_success();
    copy_tree(&src, &env.path("exp2"));

    // --- duplicity incremental at T3, empty archive dir, same source path
    let t = TreeBuilder::new(&src);
    let mut big = fs::read(src.join("big.bin")).unwrap();
    big[2_000_000..2_000_016].copy_from_slice(b"duplicity-at-T3!");
    t.file_with("big.bin", &big, 0o644, 1_700_005_000);
    t.file_with(
        "dup-new.txt",
        deterministic_text(11, 30_000),
        0o644,
        1_700_005_000,
    );
    t.remove("empty.txt");
    t.set_mtime(".", 1_700_005_000);
    copy_tree(&src, &env.path("exp3"));
    s.dup.clear_cache();
    let out = s.dup.incremental(
        &src,
        &url,
        &["--volsize", "1", "--current-time", &T3.to_string()],
    );
    out.assert_success();
    let text = out.combined();
    // e.g. "No signatures found, switching to full backup.", "Fatal Error: Backup
    // source host has changed", "Last full backup is too old"
    for bad in [
        "switching to full",
        "too old",
        "has changed",
        "mismatch",
        "Fatal",
    ] {
        assert!(!text.contains(bad), "duplicity incremental: {bad:?}: {out}");
    }
    let objects = env.objects();
    assert!(
        objects.contains(&format!("duplicity-inc.{T2S}.to.{T3S}.manifest.gpg"))
            && objects.contains(&format!(
                "duplicity-new-signatures.{T2S}.to.{T3S}.sigtar.gpg"
            )),
        "duplicity did not append an incremental to our chain: {objects:?}"
    );
    assert_eq!(
        objects
            .iter()
            .filter(|n| n.starts_with("duplicity-full."))
            .filter(|n| !n.contains(T1S))
            .count(),
        0,
        "duplicity started a new full: {objects:?}"
    );
    // exactly the real changes: duplicity found our metadata equal for everything
    // else, and diffed big.bin against our signature (a small delta)
    let dup_members = set_members(
        env,
        &format!("duplicity-inc.{T2S}.to.{T3S}.vol"),
        Some(&pass),
    );
    assert_eq!(
        names(&dup_members),
        vec![
            "snapshot/./",
            "diff/big.bin",
            "snapshot/dup-new.txt",
            "deleted/empty.txt"
        ],
        "duplicity's incremental on top of our chain"
    );
    assert!(
        dup_members[1].data.len() < 8_192,
        "delta of a 16-byte change is {} bytes",
        dup_members[1].data.len()
    );

    // --- flotilla restores the 3-set chain (its cache lacks duplicity's set)
    let r3 = env.path("flt-restore-t3");
    env.restore(&r3, &[]).assert_success();
    assert_trees_equal(&env.path("exp3"), &r3);
    let r2 = env.path("flt-restore-t2");
    env.restore(&r2, &["--time", &T2.to_string()])
        .assert_success();
    assert_trees_equal(&env.path("exp2"), &r2);

    // --- flotilla incremental at T4 on top of duplicity's set
    let t = TreeBuilder::new(&src);
    let mut dn = fs::read(src.join("dup-new.txt")).unwrap();
    dn[100..116].copy_from_slice(b"flotilla-at-T4!!");
    dn.extend_from_slice(b"appended by the T4 change\n");
    t.file_with("dup-new.txt", &dn, 0o644, 1_700_009_000);
    let mut big = fs::read(src.join("big.bin")).unwrap();
    big[500_000..500_016].copy_from_slice(b"flotilla-at-T4!!");
    t.file_with("big.bin", &big, 0o644, 1_700_009_000);
    copy_tree(&src, &env.path("exp4"));
    s.backup(&src, T4, &[])
        .assert_success()
        .assert_output_contains("Incremental backup");
    let objects = env.objects();
    assert!(
        objects.contains(&format!("duplicity-inc.{T3S}.to.{T4S}.manifest.gpg")),
        "flotilla's incremental must start at duplicity's end time: {objects:?}"
    );
    // diffs against duplicity's signatures (dup-new.txt exists only there)
    let flt_members = set_members(
        env,
        &format!("duplicity-inc.{T3S}.to.{T4S}.vol"),
        Some(&pass),
    );
    assert_eq!(
        names(&flt_members),
        vec!["diff/big.bin", "diff/dup-new.txt"],
        "flotilla's incremental on top of duplicity's set"
    );
    for m in &flt_members {
        assert!(
            m.data.len() < 8_192,
            "{}: delta of {} bytes",
            m.name_str(),
            m.data.len()
        );
    }

    // --- both restore the 4-set chain
    let r4 = env.path("flt-restore-t4");
    env.restore(&r4, &[]).assert_success();
    assert_trees_equal(&env.path("exp4"), &r4);
    let d4 = env.path("dup-restore-t4");
    s.dup_restore_fresh(&d4, None).assert_success();
    assert_trees_equal(&env.path("exp4"), &d4);
    let d3 = env.path("dup-restore-t3");
    s.dup_restore_fresh(&d3, Some(T3)).assert_success();
    assert_trees_equal(&env.path("exp3"), &d3);
    s.dup_verify_fresh(&src)
        .assert_success()
        .assert_output_contains(", 0 differences found.");
    let st = s.dup.collection_status(&url);
    assert_status_clean(&st);
    let text = st.combined();
    let primary = chain_section(&text, PRIMARY);
    assert!(
        primary.contains("Number of contained backup sets: 4"),
        "{st}"
    );
    // and flotilla agrees
    let js = env.cmd().args(["status", "--json"]).arg(&url).run_ok();
    let v: serde_json::Value = serde_json::from_str(&js.stdout_str()).unwrap();
    assert_eq!(v["chains"].as_array().unwrap().len(), 1, "{js}");
    assert_eq!(v["chains"][0]["sets"].as_array().unwrap().len(), 4, "{js}");
    assert_eq!(v["chains"][0]["primary"], true, "{js}");
}

/// An AgentEnv whose store is a copy of the fixture's (read-only) store.
fn fixture_env() -> AgentEnv {
    let mut env = AgentEnv::new();
    env.passphrase = Some(fixture::PASSPHRASE.into());
    copy_tree(&fixture::store_dir(), &env.store);
    env
}

/// flotilla restores (all, one file), lists, shows and verifies the chain stock
/// duplicity wrote.
#[test]
fn flotilla_reads_the_duplicity_fixture() {
    let env = fixture_env();
    let t1 = fixture::T1.to_string();
    let t2 = fixture::T2.to_string();

    let r1 = env.path("restore-t1");
    env.restore(&r1, &["--time", &t1]).assert_success();
    assert_trees_equal(&expected_dir(1), &r1);
    let r2 = env.path("restore-t2");
    env.restore(&r2, &["--time", &t2]).assert_success();
    assert_trees_equal(&expected_dir(2), &r2);
    let latest = env.path("restore-latest");
    env.restore(&latest, &[]).assert_success();
    assert_trees_equal(&expected_dir(2), &latest);

    // one multi-volume file as of T1 (it changed at T2)
    let big = env.path("big-t1.bin");
    env.restore(&big, &["--time", &t1, "--path", "big.bin"])
        .assert_success();
    let want = expected_dir(1).join("big.bin");
    assert_eq!(fs::read(&big).unwrap(), fs::read(&want).unwrap());
    let (m1, m2) = (fs::metadata(&big).unwrap(), fs::metadata(&want).unwrap());
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (m1.mtime(), m1.mode() & 0o7777),
        (m2.mtime(), m2.mode() & 0o7777)
    );

    // ls at the latest time lists exactly the paths of expected-T2.list
    let ls = env.cmd().args(["ls", "--json"]).arg(env.url()).run_ok();
    let v: serde_json::Value = serde_json::from_str(&ls.stdout_str()).unwrap();
    let mut got: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    let mut want: Vec<String> = expected_list(2)
        .iter()
        .map(|e| String::from_utf8_lossy(&e.path).into_owned())
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "flotilla ls of the fixture at T2");
    // and at T1 those of expected-T1.list
    let ls1 = env
        .cmd()
        .args(["ls", "--json", "--time", &t1])
        .arg(env.url())
        .run_ok();
    let v1: serde_json::Value = serde_json::from_str(&ls1.stdout_str()).unwrap();
    assert_eq!(
        v1.as_array().unwrap().len(),
        expected_list(1).len(),
        "{ls1}"
    );

    // status: one chain, 2 sets, 4 + 1 volumes
    let st = env.cmd().args(["status", "--json"]).arg(env.url()).run_ok();
    let v: serde_json::Value = serde_json::from_str(&st.stdout_str()).unwrap();
    let chains = v["chains"].as_array().unwrap();
    assert_eq!(chains.len(), 1, "{st}");
    let sets = chains[0]["sets"].as_array().unwrap();
    assert_eq!(sets.len(), 2, "{st}");
    assert_eq!(chains[0]["primary"], true, "{st}");
    assert_eq!(
        (sets[0]["kind"].as_str(), sets[0]["volumes"].as_u64()),
        (Some("full"), Some(4))
    );
    assert_eq!(
        (sets[1]["kind"].as_str(), sets[1]["volumes"].as_u64()),
        (Some("incremental"), Some(1))
    );
    assert_eq!(sets[0]["time"], fixture::T1, "{st}");
    assert_eq!(sets[1]["time"], fixture::T2, "{st}");
    assert!(v["orphaned"].as_array().unwrap().is_empty(), "{st}");
    assert!(v["incomplete"].as_array().unwrap().is_empty(), "{st}");

    // verify: expected-T2 matches the latest backup; expected-T1 does not
    env.cmd()
        .arg("verify")
        .arg(env.url())
        .arg(expected_dir(2))
        .run_ok();
    env.cmd()
        .args(["verify", "--time", &t1])
        .arg(env.url())
        .arg(expected_dir(1))
        .run_ok();
    env.cmd()
        .arg("verify")
        .arg(env.url())
        .arg(expected_dir(1))
        .run()
        .assert_code(1);

    // reading never modified the store
    let mut a: Vec<String> = env.objects();
    a.sort();
    assert_eq!(a, fixture::OBJECT_NAMES.to_vec());
    for n in fixture::OBJECT_NAMES {
        assert_eq!(
            fs::read(env.store.join(n)).unwrap(),
            fs::read(fixture::store_dir().join(n)).unwrap(),
            "{n} changed"
        );
    }
}

/// Every object name flotilla writes (full, incrementals, an empty incremental,
/// a second chain; encrypted and unencrypted) parses in duplicity's
/// collection-status: no orphaned or incomplete sets, the chains and volume
/// counts flotilla's own status reports.
#[test]
fn duplicity_parses_our_object_names() {
    for crypto in [Crypto::Symmetric, Crypto::None] {
        let s = Setup::new(crypto);
        let env = &s.env;
        let src = env.path("src");
        let t = TreeBuilder::new(&src);
        t.file("big.bin", deterministic_bytes(21, 2_500_000))
            .file("f.txt", b"one\n")
            .dir("d")
            .set_all_mtimes(BASE_MTIME);
        s.backup(&src, T1, &[]).assert_success();
        // same size: only the mtime tells the change (as for duplicity)
        t.file_with("f.txt", b"two\n", 0o644, BASE_MTIME + 100);
        s.backup(&src, T2, &[]).assert_success();
        // nothing changed: an incremental with an empty volume
        s.backup(&src, T3, &[]).assert_success();
        s.backup(&src, T4, &["--full"])
            .assert_success()
            .assert_output_contains("Full backup");
        t.file_with("g.txt", b"new\n", 0o644, BASE_MTIME + 200);
        s.backup(&src, T5, &[]).assert_success();

        let objects = env.objects();
        let (vs, ms) = if crypto == Crypto::None {
            (".gz", "")
        } else {
            (".gpg", ".gpg")
        };
        for want in [
            format!("duplicity-full.{T1S}.manifest{ms}"),
            format!("duplicity-full.{T1S}.vol1.difftar{vs}"),
            format!("duplicity-full-signatures.{T1S}.sigtar{vs}"),
            format!("duplicity-inc.{T1S}.to.{T2S}.manifest{ms}"),
            format!("duplicity-inc.{T1S}.to.{T2S}.vol1.difftar{vs}"),
            format!("duplicity-new-signatures.{T1S}.to.{T2S}.sigtar{vs}"),
            format!("duplicity-inc.{T2S}.to.{T3S}.manifest{ms}"),
            format!("duplicity-inc.{T2S}.to.{T3S}.vol1.difftar{vs}"),
            format!("duplicity-new-signatures.{T2S}.to.{T3S}.sigtar{vs}"),
            format!("duplicity-full.{T4S}.manifest{ms}"),
            format!("duplicity-full-signatures.{T4S}.sigtar{vs}"),
            format!("duplicity-inc.{T4S}.to.{T5S}.manifest{ms}"),
            format!("duplicity-new-signatures.{T4S}.to.{T5S}.sigtar{vs}"),
        ] {
            assert!(
                objects.contains(&want),
                "{crypto:?}: no {want}: {objects:?}"
            );
        }
        assert!(objects.iter().all(|n| !n.contains(".part")), "{objects:?}");

        s.dup.clear_cache();
        let st = s.dup.collection_status(&env.url());
        assert_status_clean(&st);
        let text = st.combined();
        assert!(text.contains("Found 1 secondary backup chain."), "{st}");
        let primary = chain_section(&text, PRIMARY);
        let v1 = volumes(env, &format!("duplicity-full.{T4S}.vol"));
        let v2 = volumes(env, &format!("duplicity-inc.{T4S}.to.{T5S}.vol"));
        assert_eq!(
            status_rows(primary),
            vec![("Full".to_string(), v1), ("Incremental".to_string(), v2)],
            "{crypto:?}: {st}"
        );
        let rows = status_rows(chain_section(&text, "Secondary chain 1 of 1:"));
        let full1 = volumes(env, &format!("duplicity-full.{T1S}.vol"));
        assert!(full1 >= 2, "2.5 MB in 1 MiB volumes: {objects:?}");
        assert_eq!(
            rows,
            vec![
                ("Full".to_string(), full1),
                ("Incremental".to_string(), 1),
                ("Incremental".to_string(), 1)
            ],
            "{crypto:?}: {st}"
        );

        // flotilla's view of the same listing
        let js = env.cmd().args(["status", "--json"]).arg(env.url()).run_ok();
        let v: serde_json::Value = serde_json::from_str(&js.stdout_str()).unwrap();
        let chains = v["chains"].as_array().unwrap();
        let counts: Vec<Vec<u64>> = chains
            .iter()
            .map(|c| {
                c["sets"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s["volumes"].as_u64().unwrap())
                    .collect()
            })
            .collect();
        assert_eq!(
            counts,
            vec![vec![full1 as u64, 1, 1], vec![v1 as u64, v2 as u64]],
            "{js}"
        );

        // and duplicity restores the older chain too
        let r = env.path("r-t3");
        s.dup_restore_fresh(&r, Some(T3)).assert_success();
        assert_eq!(fs::read(r.join("f.txt")).unwrap(), b"two\n");
        assert!(!r.join("g.txt").exists());
    }
}

/// A chain stock duplicity writes from [`build_tree`] + [`change_tree_t2`] with
/// `extra` options; returns the source snapshots (exp1, exp2) in `env`.
fn duplicity_chain(env: &AgentEnv, dup: &Duplicity, extra: &[&str]) {
    let src = env.path("src");
    build_tree(&src);
    let url = env.url();
    let t1 = T1.to_string();
    let t2 = T2.to_string();
    let mut args = vec!["--volsize", "1", "--current-time", &t1];
    args.extend_from_slice(extra);
    dup.full(&src, &url, &args).assert_success();
    copy_tree(&src, &env.path("exp1"));
    change_tree_t2(&src);
    let mut args = vec!["--volsize", "1", "--current-time", &t2];
    args.extend_from_slice(extra);
    dup.incremental(&src, &url, &args).assert_success();
    copy_tree(&src, &env.path("exp2"));
}

/// flotilla restores public-key encrypted, signed chains stock duplicity wrote
/// (cv25519 and RSA recipients; gpg picks compression from the key
/// preferences), checking the signatures with `--require-signature`.
#[test]
fn flotilla_restores_duplicity_public_key_signed_chains() {
    for algo in [KeyAlgo::Ed25519, KeyAlgo::Rsa3072] {
        let mut env = AgentEnv::new();
        env.passphrase = None;
        let owner = GpgHome::new();
        let key = owner.generate_key("Duplicity Owner", algo);
        let sec = env.path("sec.asc");
        let public = env.path("pub.asc");
        fs::write(&sec, owner.export_secret_armored(&key.fingerprint)).unwrap();
        fs::write(&public, owner.export_public_armored(&key.fingerprint)).unwrap();
        let dup = Duplicity::new().with_passphrase("");
        dup.import_key(&owner.export_secret_armored(&key.fingerprint));
        duplicity_chain(
            &env,
            &dup,
            &[
                "--encrypt-key",
                &key.fingerprint,
                "--sign-key",
                &key.fingerprint,
            ],
        );
        let vol = env
            .store
            .join(format!("duplicity-full.{T1S}.vol1.difftar.gpg"));
        let packets = owner.list_packets(&fs::read(&vol).unwrap());
        assert!(
            packets.contains(":pubkey enc packet:"),
            "{algo:?}: {packets}"
        );

        let (sec, public) = (sec.display().to_string(), public.display().to_string());
        let keys = ["--decrypt-key", &sec, "--require-signature", &public];
        let r1 = env.path("r1");
        let mut args = vec!["--time", "1700000000"];
        args.extend_from_slice(&keys);
        env.restore(&r1, &args).assert_success();
        assert_trees_equal(&env.path("exp1"), &r1);
        let r2 = env.path("r2");
        env.restore(&r2, &keys).assert_success();
        assert_trees_equal(&env.path("exp2"), &r2);
        env.cmd()
            .arg("verify")
            .args(keys)
            .arg(env.url())
            .arg(env.path("exp2"))
            .run_ok();
        // without the secret key it cannot decrypt, and says so
        let r3 = env.path("r3");
        env.restore(&r3, &[]).assert_failure();
        assert!(!r3.exists(), "a failed restore must leave no target");
    }
}

/// flotilla restores unencrypted chains stock duplicity wrote: gzip'd
/// (`--no-encryption`) and raw (`--no-encryption --no-compression`) objects.
#[test]
fn flotilla_restores_duplicity_unencrypted_chains() {
    for extra in [
        &["--no-encryption"][..],
        &["--no-encryption", "--no-compression"][..],
    ] {
        let mut env = AgentEnv::new();
        env.passphrase = None;
        let dup = Duplicity::new();
        duplicity_chain(&env, &dup, extra);
        let objects = env.objects();
        let compressed = extra.len() == 1;
        assert_eq!(
            objects.iter().any(|n| n.ends_with(".difftar.gz")),
            compressed,
            "{objects:?}"
        );
        let r1 = env.path("r1");
        env.restore(&r1, &["--time", "1700000000"]).assert_success();
        assert_trees_equal(&env.path("exp1"), &r1);
        let r2 = env.path("r2");
        env.restore(&r2, &[]).assert_success();
        assert_trees_equal(&env.path("exp2"), &r2);
        env.cmd()
            .arg("verify")
            .arg(env.url())
            .arg(env.path("exp2"))
            .run_ok();
    }
}

/// flotilla, with an empty state dir, continues a chain stock duplicity wrote
/// (migration): it fetches and decrypts duplicity's signature files, writes
/// only the real changes as deltas, and both tools restore the result.
#[test]
fn flotilla_continues_a_duplicity_chain() {
    let env = AgentEnv::new();
    let pass = env.passphrase.clone().unwrap();
    let dup = Duplicity::new().with_passphrase(&pass);
    duplicity_chain(&env, &dup, &[]);
    assert!(!env.state.exists() || fs::read_dir(&env.state).unwrap().next().is_none());

    let src = env.path("src");
    let t = TreeBuilder::new(&src);
    let mut big = fs::read(src.join("big.bin")).unwrap();
    big[2_500_000..2_500_016].copy_from_slice(b"flotilla-at-T3!!");
    t.file_with("big.bin", &big, 0o644, 1_700_005_000);
    let mut text = fs::read(src.join("text.txt")).unwrap();
    text.extend_from_slice(b"appended by flotilla\n");
    t.file_with("text.txt", &text, 0o644, 1_700_005_000);
    t.remove("a/b").set_mtime("a", 1_700_005_000);
    copy_tree(&src, &env.path("exp3"));
    env.backup(&src, &["--volsize", "1", "--current-time", &T3.to_string()])
        .assert_success()
        .assert_output_contains("Incremental backup");
    let objects = env.objects();
    assert!(
        objects.contains(&format!("duplicity-inc.{T2S}.to.{T3S}.manifest.gpg")),
        "{objects:?}"
    );
    let members = set_members(
        &env,
        &format!("duplicity-inc.{T2S}.to.{T3S}.vol"),
        Some(&pass),
    );
    assert_eq!(
        names(&members),
        vec![
            "snapshot/a/",
            "deleted/a/b",
            "diff/big.bin",
            "diff/text.txt"
        ],
        "flotilla's incremental on top of duplicity's chain"
    );
    for m in &members {
        assert!(
            m.data.len() < 8_192,
            "{}: {} bytes",
            m.name_str(),
            m.data.len()
        );
    }

    let r = env.path("flt-restore");
    env.restore(&r, &[]).assert_success();
    assert_trees_equal(&env.path("exp3"), &r);
    let d = env.path("dup-restore");
    dup.clear_cache();
    dup.restore(&env.url(), &d, None, &[]).assert_success();
    assert_trees_equal(&env.path("exp3"), &d);
    dup.clear_cache();
    let st = dup.collection_status(&env.url());
    assert_status_clean(&st);
    let text = st.combined();
    assert!(
        chain_section(&text, PRIMARY).contains("Number of contained backup sets: 3"),
        "{st}"
    );
}

/// duplicity's `list-current-files` lines without its preamble.
fn dup_listing(out: &CmdOutput) -> Vec<Vec<u8>> {
    out.stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .filter(|l| {
            ![
                &b"Local and Remote metadata"[..],
                b"Last full backup date",
                b"Synchronizing remote metadata",
                b"Copying ",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        })
        .map(<[u8]>::to_vec)
        .collect()
}

/// `flotilla-agent ls` prints what duplicity's `list-current-files` prints for
/// the same chain, line for line and byte for byte (paths as raw bytes: a
/// non-UTF-8 name must come out unchanged, so it can be given to `--path`).
#[test]
fn ls_matches_duplicity_list_current_files() {
    let env = fixture_env();
    let dup = Duplicity::new().with_passphrase(fixture::PASSPHRASE);
    for time in [fixture::T1, fixture::T2] {
        let t = time.to_string();
        dup.clear_cache();
        let d = dup.run(["list-current-files", "-t", &t, &env.url()]);
        d.assert_success();
        let want = dup_listing(&d);
        assert!(want.len() > 20, "{d}");
        let ours = env
            .cmd()
            .env("TZ", "UTC")
            .env("LC_ALL", "C.UTF-8")
            .args(["ls", "--time", &t])
            .arg(env.url())
            .run_ok();
        let got: Vec<Vec<u8>> = ours
            .stdout
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        let show = |v: &[Vec<u8>]| {
            v.iter()
                .map(|l| format!("{:?}", flotilla_tests::tree::escape_path(l)))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert!(
            got == want,
            "ls at {t} differs from duplicity list-current-files\n--- duplicity:\n{}\n--- flotilla:\n{}",
            show(&want),
            show(&got)
        );
    }
}

/// A single file whose name is not UTF-8 can be restored with `--path`, as
/// duplicity restores it with `--file-to-restore` (names are bytes).
#[test]
fn restore_single_non_utf8_path_like_duplicity() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let env = fixture_env();
    let name = OsStr::from_bytes(b"latin1-\xe9.txt");
    let want = fs::read(expected_dir(2).join(name)).unwrap();

    let dup = Duplicity::new().with_passphrase(fixture::PASSPHRASE);
    let d = env.path("dup-one");
    dup.command(["restore", "--file-to-restore"])
        .arg(name)
        .arg(env.url())
        .arg(&d)
        .run()
        .assert_success();
    assert_eq!(fs::read(&d).unwrap(), want, "duplicity");

    let f = env.path("flt-one");
    env.cmd()
        .arg("restore")
        .arg("--path")
        .arg(name)
        .arg(env.url())
        .arg(&f)
        .run()
        .assert_success();
    assert_eq!(fs::read(&f).unwrap(), want, "flotilla");
}

/// The restore summary names the time of the backup it restored (the last set
/// used), not the requested time: restoring "now" from a chain that ended at
/// T2 restored the backup of T2.
#[test]
fn restore_summary_reports_the_restored_backup_time() {
    let env = fixture_env();
    let r = env.path("r");
    let out = env.restore(&r, &[]);
    out.assert_success();
    let text = out.combined();
    let line = text
        .lines()
        .find(|l| l.starts_with("Restored "))
        .unwrap_or_else(|| panic!("no summary line: {out}"));
    assert!(
        line.contains(&format!("(backup time {})", fixture::T2_STR)),
        "the summary should name the restored backup {}: {line:?}",
        fixture::T2_STR
    );
}

/// A large file changed in place and appended to (a database file, a log) is diffed in
/// parallel chunks (files over 8 MiB): the incremental holds a delta, not a copy, and
/// both stock duplicity and flotilla restore it to the exact bytes, at both times.
#[test]
fn large_file_deltas_made_in_parallel_restore_with_duplicity() {
    const LEN: usize = 24 << 20;
    let s = Setup::new(Crypto::Symmetric);
    let env = &s.env;
    let src = env.path("src");
    let t = TreeBuilder::new(&src);
    let original = deterministic_bytes(21, LEN);
    t.file_with("db.bin", &original, 0o640, 1_700_000_000);
    s.backup(&src, T1, &[]).assert_success();
    copy_tree(&src, &env.path("exp1"));

    // Pages rewritten in place, one of them across a 1 MiB chunk boundary, and an append.
    let mut changed = original.clone();
    for (at, seed) in [(100_000, 31), ((4 << 20) - 3_000, 32), (17 << 20, 33)] {
        changed[at..at + 8_192].copy_from_slice(&deterministic_bytes(seed, 8_192));
    }
    changed.extend_from_slice(&deterministic_bytes(34, 1 << 20));
    t.file_with("db.bin", &changed, 0o640, 1_700_001_000);
    s.backup(&src, T2, &[]).assert_success();
    copy_tree(&src, &env.path("exp2"));

    let inc_bytes: u64 = env
        .objects()
        .iter()
        .filter(|n| n.starts_with(&format!("duplicity-inc.{T1S}.to.{T2S}.vol")))
        .map(|n| fs::metadata(env.store.join(n)).unwrap().len())
        .sum();
    assert!(
        inc_bytes > 1 << 20 && inc_bytes < 3 << 20,
        "the incremental should hold a delta (~1.1 MB of new data), not a 25 MB copy: {inc_bytes}"
    );

    for (time, exp) in [(Some(T1), "exp1"), (None, "exp2")] {
        let dup_target = env.path(&format!("dup-{exp}"));
        s.dup_restore_fresh(&dup_target, time).assert_success();
        assert_trees_equal(&env.path(exp), &dup_target);
        let flt_target = env.path(&format!("flt-{exp}"));
        let t = time.map(|t| t.to_string());
        let mut args: Vec<&str> = Vec::new();
        if let Some(t) = &t {
            args.extend(["--time", t.as_str()]);
        }
        env.restore(&flt_target, &args).assert_success();
        assert_trees_equal(&env.path(exp), &flt_target);
    }
}
