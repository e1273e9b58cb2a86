//! Bad and hostile input: wrong keys, damaged, truncated, missing and forged objects,
//! interrupted and concurrent backups, bad command lines.
//!
//! Every refusal must be a clean one: a message naming what is wrong (and which object,
//! volume or path), a non-zero exit, no panic, and nothing written to the restore target
//! (absent afterwards if it was absent, still empty if it was an empty directory) or
//! anywhere else (the whole scratch directory, store included, is compared before and
//! after).
//!
//! Hostile archives are crafted with the library (`TarWriter`, `EncryptionSpec`,
//! `Manifest`), with a manifest carrying the correct SHA-1 of the stored volume, so that
//! the only thing wrong with them is the hostile entry.

use flotilla_common::archive::tarfmt::{self, TarHeader, TarWriter};
use flotilla_common::archive::{Index, Manifest, ObjectKind, ObjectName, SetTimes, VolumeInfo};
use flotilla_common::crypto::{EncryptionSpec, Passphrase};
use flotilla_tests::agent::{AgentEnv, copy_tree};
use flotilla_tests::tree::sha256_file;
use flotilla_tests::{
    Cmd, CmdOutput, GpgHome, KeyAlgo, TreeBuilder, assert_trees_equal, deterministic_bytes, hex,
};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const PASS: &str = "test-passphrase";
const T1: i64 = 1_700_000_000; // 20231114T221320Z
const T2: i64 = 1_700_003_600;

// ---------------------------------------------------------------------------------------
// Checking failures and side effects

/// What a path under a watched directory looks like (no mtimes: directory mtimes change
/// when a target is created and removed again).
fn describe(path: &Path) -> String {
    let md = match fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) => return format!("unreadable: {e}"),
    };
    let perms = md.mode() & 0o7777;
    let ft = md.file_type();
    if ft.is_symlink() {
        let t = fs::read_link(path).map(|t| t.display().to_string());
        format!("symlink -> {}", t.unwrap_or_default())
    } else if ft.is_dir() {
        format!("dir {perms:o}")
    } else if ft.is_file() {
        let h = sha256_file(path).map(|h| hex(&h)).unwrap_or_default();
        format!(
            "file {perms:o} {} bytes sha256 {h} links {}",
            md.len(),
            md.nlink()
        )
    } else {
        format!("special {:o}", md.mode())
    }
}

/// Everything under `root` (symlinks not followed), except the paths in `skip`.
fn fs_state(root: &Path, skip: &[PathBuf]) -> BTreeMap<PathBuf, String> {
    fn walk(dir: &Path, skip: &[PathBuf], out: &mut BTreeMap<PathBuf, String>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if skip.contains(&p) {
                continue;
            }
            out.insert(p.clone(), describe(&p));
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&p, skip, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    out.insert(root.to_path_buf(), describe(root));
    walk(root, skip, &mut out);
    out
}

/// The differences between two [`fs_state`]s, one line each.
fn state_diff(
    before: &BTreeMap<PathBuf, String>,
    after: &BTreeMap<PathBuf, String>,
) -> Vec<String> {
    let mut v = Vec::new();
    for (p, d) in before {
        match after.get(p) {
            None => v.push(format!("removed: {} ({d})", p.display())),
            Some(a) if a != d => v.push(format!("changed: {} ({d} -> {a})", p.display())),
            _ => {}
        }
    }
    for (p, a) in after {
        if !before.contains_key(p) {
            v.push(format!("written: {} ({a})", p.display()));
        }
    }
    v
}

/// Problems with a command that should have failed cleanly: exit status, panics, and
/// `expect` (each group: the output must contain one of its strings, case-insensitive).
fn failure_problems(out: &CmdOutput, expect: &[&[&str]]) -> Vec<String> {
    let mut p = Vec::new();
    if out.timed_out {
        p.push("timed out".to_string());
    }
    match out.code() {
        None => p.push(format!("killed by a signal: {:?}", out.status)),
        Some(0) => p.push("exited with status 0 (success)".into()),
        Some(_) => {}
    }
    let text = out.combined();
    if text.contains("panicked") {
        p.push("panicked".into());
    }
    let lower = text.to_lowercase();
    for alts in expect {
        if !alts.iter().any(|a| lower.contains(&a.to_lowercase())) {
            p.push(format!("the message mentions none of {alts:?}"));
        }
    }
    p
}

/// Asserts a clean failure (see [`failure_problems`]).
#[track_caller]
fn assert_refused(out: &CmdOutput, expect: &[&[&str]]) {
    let p = failure_problems(out, expect);
    if !p.is_empty() {
        panic!("{}\n{out}", p.join("\n"));
    }
}

/// A directory outside every restore target, with one file in it: hostile archives aim
/// here (symlinks, absolute names, hard links).
fn outside(env: &AgentEnv) -> PathBuf {
    let o = env.path("outside");
    if !o.exists() {
        fs::create_dir(&o).unwrap();
        fs::write(o.join("victim"), b"must stay as it is\n").unwrap();
    }
    o
}

/// Runs `restore URL TARGET extra` where it must be refused, twice: into an absent
/// target (`sandbox/target`) and into an existing empty directory. Each run must fail
/// cleanly with a message matching `expect`, leave the target as it was, and change
/// nothing under the scratch directory (store included; the state dir and `skip` are not
/// compared). Returns the output of the first run.
#[track_caller]
fn restore_refused_skipping(
    env: &AgentEnv,
    extra: &[&str],
    expect: &[&[&str]],
    skip: &[PathBuf],
) -> CmdOutput {
    let sandbox = env.path("sandbox");
    fs::create_dir_all(&sandbox).unwrap();
    outside(env);
    let mut skip = skip.to_vec();
    skip.push(env.state.clone());

    let mut first = None;
    for existing in [false, true] {
        let target = sandbox.join(if existing { "empty-target" } else { "target" });
        if existing {
            fs::create_dir(&target).unwrap();
        }
        let before = fs_state(env.dir.path(), &skip);
        let out = env.restore(&target, extra);
        let after = fs_state(env.dir.path(), &skip);
        let mut problems = failure_problems(&out, expect);
        if existing {
            match fs::read_dir(&target) {
                Ok(rd) => {
                    let left: Vec<_> = rd.flatten().map(|e| e.file_name()).collect();
                    if !left.is_empty() {
                        problems.push(format!("the empty target now holds {left:?}"));
                    }
                }
                Err(e) => problems.push(format!("the existing target is gone: {e}")),
            }
        } else if fs::symlink_metadata(&target).is_ok() {
            problems.push(format!(
                "the absent target {} exists afterwards",
                target.display()
            ));
        }
        problems.extend(state_diff(&before, &after));
        if !problems.is_empty() {
            panic!(
                "restore into {} target: {}\n{out}",
                if existing { "an empty" } else { "an absent" },
                problems.join("\n")
            );
        }
        if existing {
            fs::remove_dir(&target).unwrap();
        }
        eprintln!("refused as expected: {}", out.stderr_str().trim());
        first.get_or_insert(out);
    }
    first.expect("ran")
}

#[track_caller]
fn restore_refused(env: &AgentEnv, extra: &[&str], expect: &[&[&str]]) -> CmdOutput {
    restore_refused_skipping(env, extra, expect, &[])
}

/// Restores into a new directory and compares it with `expected`.
#[track_caller]
fn restore_equals(env: &AgentEnv, expected: &Path, name: &str, extra: &[&str]) {
    let target = env.path(name);
    let out = env.restore(&target, extra);
    out.assert_success();
    assert!(!out.stderr_str().contains("panicked"), "{out}");
    assert_trees_equal(expected, &target);
}

// ---------------------------------------------------------------------------------------
// Stores made by flotilla-agent

/// The one object whose name contains `pat`.
#[track_caller]
fn object(env: &AgentEnv, pat: &str) -> String {
    let v: Vec<String> = env
        .objects()
        .into_iter()
        .filter(|n| n.contains(pat))
        .collect();
    assert_eq!(v.len(), 1, "objects matching {pat:?}: {:?}", env.objects());
    v.into_iter().next().unwrap()
}

fn small_tree(src: &Path) {
    TreeBuilder::new(src)
        .file("a.txt", b"alpha\n")
        .file("d/b.txt", b"bravo\n")
        .file("c.bin", deterministic_bytes(5, 100_000))
        .symlink("link", "a.txt");
}

/// A small full backup at T1 (passphrase encryption).
fn small_backup(extra: &[&str]) -> AgentEnv {
    let env = AgentEnv::new();
    let src = env.path("src");
    small_tree(&src);
    let mut args = vec!["--current-time".to_string(), T1.to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    env.backup(&src, &args).assert_success();
    env
}

/// A full backup at T1 spread over several volumes (`--volsize 1`).
fn multi_volume_backup() -> AgentEnv {
    let env = AgentEnv::new();
    let src = env.path("src");
    TreeBuilder::new(&src)
        .file("a.txt", b"alpha\n")
        .file("big.bin", deterministic_bytes(11, 3_500_000))
        .file("z.txt", b"zulu\n");
    env.backup(&src, &["--volsize", "1", "--current-time", &T1.to_string()])
        .assert_success();
    let vols = env.objects_matching(".difftar.gpg").len();
    assert!(vols >= 3, "expected several volumes: {:?}", env.objects());
    env
}

// ---------------------------------------------------------------------------------------
// Crafting sets with the library

type Entry = (TarHeader, Vec<u8>);

fn header(name: &[u8], typeflag: u8, mode: u32) -> TarHeader {
    TarHeader {
        name: name.to_vec(),
        typeflag,
        mode,
        mtime: T1,
        ..TarHeader::default()
    }
}

fn root_entry() -> Entry {
    (header(b"snapshot/./", tarfmt::TYPE_DIR, 0o755), Vec::new())
}

fn dir_entry(name: &[u8]) -> Entry {
    (header(name, tarfmt::TYPE_DIR, 0o755), Vec::new())
}

fn file_entry(name: &[u8], data: &[u8]) -> Entry {
    (header(name, tarfmt::TYPE_REGULAR, 0o644), data.to_vec())
}

fn symlink_entry(name: &[u8], target: &[u8]) -> Entry {
    let mut h = header(name, tarfmt::TYPE_SYMLINK, 0o777);
    h.linkname = target.to_vec();
    (h, Vec::new())
}

fn hardlink_entry(name: &[u8], target: &[u8]) -> Entry {
    let mut h = header(name, tarfmt::TYPE_HARDLINK, 0o644);
    h.linkname = target.to_vec();
    (h, Vec::new())
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let base = key.len() + value.len() + 3;
    let mut len = base;
    loop {
        let n = base + len.to_string().len();
        if n == len {
            break;
        }
        len = n;
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// A pax extended header that renames the entry after it to `path`.
fn pax_path_entry(path: &[u8]) -> Entry {
    let h = TarHeader {
        name: b"././@PaxHeader".to_vec(),
        typeflag: tarfmt::TYPE_PAX,
        ..TarHeader::default()
    };
    (h, pax_record("path", path))
}

/// A GNU long-name record that renames the entry after it to `path`.
fn gnu_longname_entry(path: &[u8]) -> Entry {
    let h = TarHeader {
        name: b"././@LongLink".to_vec(),
        typeflag: tarfmt::TYPE_GNU_LONGNAME,
        ..TarHeader::default()
    };
    let mut d = path.to_vec();
    d.push(0);
    (h, d)
}

/// Recomputes the checksum of a ustar header block (after editing it).
fn fix_checksum(block: &mut [u8]) {
    block[148..156].copy_from_slice(b"        ");
    let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
    block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// An OpenPGP message encrypted with [`PASS`], as flotilla-agent writes them.
fn encrypt(plain: &[u8]) -> Vec<u8> {
    let spec = EncryptionSpec {
        compression_threads: 1,
        ..EncryptionSpec::symmetric(Passphrase::new(PASS))
    };
    let mut w = spec.writer(Vec::new()).expect("message writer");
    w.write_all(plain).unwrap();
    w.finish().expect("finish message")
}

fn sha1_hex(data: &[u8]) -> String {
    let out = Cmd::new("sha1sum").stdin(data.to_vec()).run_ok();
    out.stdout_str()[..40].to_string()
}

fn name_of(set: SetTimes, kind: ObjectKind) -> String {
    ObjectName::new(set, kind, true).format()
}

/// Writes a set (one passphrase-encrypted volume holding `entries`, and a manifest with
/// the volume's correct SHA-1) into `store`. Returns the volume's object name.
fn write_set(store: &Path, set: SetTimes, entries: &[Entry]) -> String {
    write_set_plain(store, set, &tar_of(entries))
}

/// A difftar volume's plaintext holding `entries`.
fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut tw = TarWriter::new(Vec::new());
    for (h, d) in entries {
        tw.append(h, d).unwrap();
    }
    tw.finish_volume().unwrap()
}

/// [`write_set`] with the volume's plaintext given as bytes.
fn write_set_plain(store: &Path, set: SetTimes, plain: &[u8]) -> String {
    fs::create_dir_all(store).unwrap();
    let vol = encrypt(plain);
    let vol_name = name_of(set, ObjectKind::Volume(1));
    fs::write(store.join(&vol_name), &vol).unwrap();
    let mut m = Manifest {
        hostname: Some(b"hostile".to_vec()),
        localdir: Some(b"/srv/hostile".to_vec()),
        volumes: BTreeMap::new(),
    };
    m.volumes.insert(
        1,
        VolumeInfo {
            number: 1,
            start: Index::root(),
            start_block: None,
            end: Index::root(),
            end_block: None,
            sha1: Some(sha1_hex(&vol)),
        },
    );
    fs::write(
        store.join(name_of(set, ObjectKind::Manifest)),
        encrypt(&m.to_bytes_without_filelist()),
    )
    .unwrap();
    vol_name
}

fn full_set() -> SetTimes {
    SetTimes::Full { time: T1 }
}

/// A store holding one crafted full set with `entries`; returns the env and the volume name.
fn crafted(entries: &[Entry]) -> (AgentEnv, String) {
    let env = AgentEnv::new();
    outside(&env);
    let vol = write_set(&env.store, full_set(), entries);
    (env, vol)
}

fn abs_bytes(p: &Path) -> Vec<u8> {
    p.as_os_str().as_bytes().to_vec()
}

// ---------------------------------------------------------------------------------------
// 1. Keys and passphrases

#[test]
fn wrong_passphrase_is_refused() {
    let mut env = small_backup(&[]);
    let manifest = object(&env, ".manifest.gpg");
    env.passphrase = Some("not-the-passphrase".into());
    restore_refused(&env, &[], &[&[&manifest], &["passphrase"]]);
    env.passphrase = Some(PASS.into());
    restore_equals(&env, &env.path("src"), "control", &[]);
}

#[test]
fn missing_passphrase_is_refused() {
    let mut env = small_backup(&[]);
    let manifest = object(&env, ".manifest.gpg");
    env.passphrase = None;
    restore_refused(&env, &[], &[&[&manifest], &["no passphrase"]]);
}

/// Two gpg-generated keys, exported to files in the scratch dir:
/// `{name}.pub` and `{name}.sec` for "alice" and "mallory".
fn key_files(env: &AgentEnv) -> GpgHome {
    let gpg = GpgHome::new();
    for name in ["alice", "mallory"] {
        let k = gpg.generate_key(name, KeyAlgo::Ed25519);
        fs::write(
            env.path(&format!("{name}.pub")),
            gpg.export_public_armored(&k.fingerprint),
        )
        .unwrap();
        fs::write(
            env.path(&format!("{name}.sec")),
            gpg.export_secret_armored(&k.fingerprint),
        )
        .unwrap();
    }
    gpg
}

fn path_str(p: PathBuf) -> String {
    p.to_str().expect("utf-8 scratch path").to_string()
}

#[test]
fn wrong_secret_key_is_refused() {
    let env = AgentEnv::new();
    let _gpg = key_files(&env);
    let src = env.path("src");
    small_tree(&src);
    let alice_pub = path_str(env.path("alice.pub"));
    let alice_sec = path_str(env.path("alice.sec"));
    let mallory_sec = path_str(env.path("mallory.sec"));
    env.backup(&src, &["--encrypt-key", &alice_pub])
        .assert_success();
    let manifest = object(&env, ".manifest.gpg");
    // another key
    restore_refused(
        &env,
        &["--decrypt-key", &mallory_sec],
        &[&[&manifest], &["secret key"]],
    );
    // no key at all (a passphrase does not open a public-key message)
    restore_refused(&env, &[], &[&[&manifest], &["secret key"]]);
    restore_equals(&env, &src, "control", &["--decrypt-key", &alice_sec]);
}

// ---------------------------------------------------------------------------------------
// 2-4. Damaged, truncated and missing objects

#[test]
fn modified_volume_is_refused_naming_it() {
    let env = multi_volume_backup();
    let vol2 = object(&env, ".vol2.difftar.gpg");
    let p = env.store.join(&vol2);
    let mut data = fs::read(&p).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x01;
    fs::write(&p, &data).unwrap();
    restore_refused(
        &env,
        &[],
        &[&[&vol2], &["sha-1", "sha1", "hash"], &["manifest"]],
    );
}

#[test]
fn replaced_volume_is_refused_by_its_hash() {
    // vol2 replaced by a valid message with the same plaintext: only the manifest's SHA-1
    // can tell.
    let env = multi_volume_backup();
    let vol2 = object(&env, ".vol2.difftar.gpg");
    let p = env.store.join(&vol2);
    let gpg = GpgHome::new();
    let plain = gpg
        .decrypt(&fs::read(&p).unwrap(), Some(PASS))
        .expect("gpg decrypts the volume")
        .plaintext;
    fs::write(&p, encrypt(&plain)).unwrap();
    restore_refused(
        &env,
        &[],
        &[&[&vol2], &["sha-1", "sha1", "hash"], &["manifest"]],
    );
}

#[test]
fn truncated_volume_is_refused_naming_it() {
    let env = multi_volume_backup();
    let vol2 = object(&env, ".vol2.difftar.gpg");
    let p = env.store.join(&vol2);
    let data = fs::read(&p).unwrap();
    fs::write(&p, &data[..data.len() / 2]).unwrap();
    restore_refused(
        &env,
        &[],
        &[
            &[&vol2],
            &["truncated", "sha-1", "hash", "integrity", "corrupt"],
        ],
    );
}

#[test]
fn truncated_or_garbage_manifest_is_refused_naming_it() {
    let env = small_backup(&[]);
    let manifest = object(&env, ".manifest.gpg");
    let p = env.store.join(&manifest);
    let good = fs::read(&p).unwrap();
    // cut in half, cut to nothing, not OpenPGP at all
    for bad in [
        good[..good.len() / 2].to_vec(),
        Vec::new(),
        deterministic_bytes(3, 700),
    ] {
        fs::write(&p, &bad).unwrap();
        restore_refused(&env, &[], &[&[&manifest]]);
    }
    // decrypts fine, but is not a manifest
    for plain in [
        &b"this is not a manifest\n"[..],
        &deterministic_bytes(4, 3000)[..],
        b"Hostname x\nVolume one:\n    StartingPath   .  \n",
        b"Volume 1:\n    Hash SHA1 0000000000000000000000000000000000000000\n",
    ] {
        fs::write(&p, encrypt(plain)).unwrap();
        restore_refused(&env, &[], &[&[&manifest], &["manifest"]]);
    }
    fs::write(&p, &good).unwrap();
    restore_equals(&env, &env.path("src"), "control", &[]);
}

#[test]
fn missing_volume_is_refused_naming_it() {
    let env = multi_volume_backup();
    let vol2 = object(&env, ".vol2.difftar.gpg");
    fs::remove_file(env.store.join(&vol2)).unwrap();
    let out = restore_refused(&env, &[], &[&["volume 2", &vol2], &["missing"]]);
    // found before anything was downloaded or written: nothing is said about vol1
    assert!(
        !out.combined().contains(".vol1."),
        "the error should be about the missing volume only: {out}"
    );
}

// ---------------------------------------------------------------------------------------
// 5. Hostile archives

#[test]
fn crafted_benign_set_restores() {
    // control: the crafting itself is sound
    let (env, _) = crafted(&[
        root_entry(),
        dir_entry(b"snapshot/d/"),
        file_entry(b"snapshot/d/f", b"inside\n"),
        symlink_entry(b"snapshot/l", b"d/f"),
        file_entry(b"snapshot/top", b"top\n"),
    ]);
    let target = env.path("r");
    env.restore(&target, &[]).assert_success();
    assert_eq!(fs::read(target.join("d/f")).unwrap(), b"inside\n");
    assert_eq!(fs::read(target.join("top")).unwrap(), b"top\n");
    assert_eq!(fs::read_link(target.join("l")).unwrap(), Path::new("d/f"));
}

#[test]
fn parent_components_are_refused() {
    for name in [
        &b"snapshot/../evil"[..],
        b"snapshot/../../evil",
        b"snapshot/../../../evil",
        b"snapshot/sub/../../../evil",
        b"multivol_snapshot/../../evil/1",
        b"diff/../../evil",
        b"deleted/../../sandbox",
    ] {
        let (env, vol) = crafted(&[
            root_entry(),
            file_entry(b"snapshot/fine", b"fine\n"),
            file_entry(name, b"evil\n"),
        ]);
        restore_refused(&env, &[], &[&[&vol], &["..", "parent"]]);
    }
}

#[test]
fn absolute_names_are_refused() {
    for prefix in [&b"snapshot/"[..], b"multivol_snapshot/"] {
        let env = AgentEnv::new();
        let evil = outside(&env).join("evil-abs");
        let mut name = prefix.to_vec();
        name.extend(abs_bytes(&evil));
        if prefix.starts_with(b"multivol") {
            name.extend(b"/1");
        }
        let vol = write_set(
            &env.store,
            full_set(),
            &[root_entry(), file_entry(&name, b"evil\n")],
        );
        restore_refused(&env, &[], &[&[&vol], &["absolute"]]);
    }
}

#[test]
fn extended_header_names_are_checked_too() {
    for rename in [pax_path_entry, gnu_longname_entry] {
        for evil in [&b"snapshot/../evil"[..], b"snapshot/../../../evil"] {
            let (env, vol) = crafted(&[
                root_entry(),
                rename(evil),
                file_entry(b"snapshot/benign", b"evil\n"),
            ]);
            restore_refused(&env, &[], &[&[&vol], &["..", "parent"]]);
        }
        // an absolute name through the extended header
        let env = AgentEnv::new();
        let mut name = b"snapshot/".to_vec();
        name.extend(abs_bytes(&outside(&env).join("evil-ext")));
        let vol = write_set(
            &env.store,
            full_set(),
            &[
                root_entry(),
                rename(&name),
                file_entry(b"snapshot/benign", b"evil\n"),
            ],
        );
        restore_refused(&env, &[], &[&[&vol], &["absolute"]]);
    }
}

#[test]
fn symlink_escape_is_refused() {
    // link -> /abs/outside, then link/evil
    let env = AgentEnv::new();
    let out_dir = abs_bytes(&outside(&env));
    write_set(
        &env.store,
        full_set(),
        &[
            root_entry(),
            symlink_entry(b"snapshot/link", &out_dir),
            file_entry(b"snapshot/link/evil", b"evil\n"),
        ],
    );
    restore_refused(&env, &[], &[&["link/evil"]]);

    // the same with a relative target climbing out of the target
    let env = AgentEnv::new();
    outside(&env);
    write_set(
        &env.store,
        full_set(),
        &[
            root_entry(),
            symlink_entry(b"snapshot/up", b"../../../../../../../../../../../.."),
            symlink_entry(b"snapshot/up2", b"../../outside"),
            file_entry(b"snapshot/up2/evil", b"evil\n"),
        ],
    );
    restore_refused(&env, &[], &[&["up2/evil"]]);

    // multivol pieces through the link
    let env = AgentEnv::new();
    let out_dir = abs_bytes(&outside(&env));
    write_set(
        &env.store,
        full_set(),
        &[
            root_entry(),
            symlink_entry(b"snapshot/link", &out_dir),
            file_entry(b"multivol_snapshot/link/evil/1", b"evil\n"),
            file_entry(b"multivol_snapshot/link/evil/2", b"more\n"),
        ],
    );
    restore_refused(&env, &[], &[&["link/evil"]]);
}

#[test]
fn symlink_then_directory_of_the_same_name_is_refused() {
    // `link` twice in one set, first as a symlink out of the target, then as a
    // directory; then a file below it.
    let env = AgentEnv::new();
    let out_dir = abs_bytes(&outside(&env));
    let vol = write_set(
        &env.store,
        full_set(),
        &[
            root_entry(),
            symlink_entry(b"snapshot/link", &out_dir),
            (
                header(b"snapshot/link/", tarfmt::TYPE_DIR, 0o777),
                Vec::new(),
            ),
            file_entry(b"snapshot/link/evil", b"evil\n"),
        ],
    );
    restore_refused(&env, &[], &[&[&vol], &["link"]]);
}

#[test]
fn symlink_then_file_of_the_same_name_is_refused() {
    // `victim` twice: a symlink to a file outside, then a regular file writing through it
    let env = AgentEnv::new();
    let victim = abs_bytes(&outside(&env).join("victim"));
    let vol = write_set(
        &env.store,
        full_set(),
        &[
            root_entry(),
            symlink_entry(b"snapshot/victim", &victim),
            file_entry(b"snapshot/victim", b"overwritten\n"),
        ],
    );
    restore_refused(&env, &[], &[&[&vol], &["victim"]]);
}

#[test]
fn hard_link_entries_are_refused() {
    let env = AgentEnv::new();
    let victim = abs_bytes(&outside(&env).join("victim"));
    let vol = write_set(
        &env.store,
        full_set(),
        &[
            root_entry(),
            file_entry(b"snapshot/a", b"a\n"),
            hardlink_entry(b"snapshot/hl", &victim),
        ],
    );
    restore_refused(&env, &[], &[&[&vol], &["hard link"]]);
    // a hard link to a file of the archive itself
    let env = AgentEnv::new();
    let vol = write_set(
        &env.store,
        full_set(),
        &[
            root_entry(),
            file_entry(b"snapshot/a", b"a\n"),
            hardlink_entry(b"snapshot/b", b"snapshot/a"),
        ],
    );
    restore_refused(&env, &[], &[&[&vol], &["hard link"]]);
}

const DELTA_MAGIC: [u8; 4] = [0x72, 0x73, 0x02, 0x36];

fn delta(cmds: &[u8]) -> Vec<u8> {
    let mut d = DELTA_MAGIC.to_vec();
    d.extend_from_slice(cmds);
    d
}

#[test]
fn bad_deltas_are_refused() {
    let mut offset_overflow = vec![0x54];
    offset_overflow.extend(u64::MAX.to_be_bytes());
    offset_overflow.extend(16u64.to_be_bytes());
    offset_overflow.push(0);
    let mut huge_literal = vec![0x44];
    huge_literal.extend((1u64 << 62).to_be_bytes());
    huge_literal.extend(b"abc");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // copy 200 bytes at 0 from a 10-byte basis
        ("copy beyond the basis", delta(&[0x45, 0, 200, 0])),
        ("copy ending beyond the basis", delta(&[0x45, 8, 5, 0])),
        ("offset + length overflow", delta(&offset_overflow)),
        ("literal longer than the entry", delta(&huge_literal)),
        ("unknown command", delta(&[0x55, 0])),
        ("no END command", delta(&[0x03, b'a', b'b', b'c'])),
        ("signature magic", vec![0x72, 0x73, 0x01, 0x36, 0]),
        ("empty", Vec::new()),
    ];
    for (what, d) in cases {
        let env = AgentEnv::new();
        let src = env.path("src");
        TreeBuilder::new(&src).file("x", b"0123456789");
        env.backup(&src, &["--current-time", &T1.to_string()])
            .assert_success();
        let inc = SetTimes::Incremental { start: T1, end: T2 };
        let vol = write_set(&env.store, inc, &[file_entry(b"diff/x", &d)]);
        let out = env.restore(&env.path("probe"), &[]);
        if out.success() {
            panic!("{what}: restore accepted the delta\n{out}");
        }
        restore_refused(&env, &[], &[&[&vol], &["delta"]]);
    }
}

#[test]
fn malformed_volume_contents_are_refused() {
    let good = tar_of(&[root_entry(), file_entry(b"snapshot/a", b"alpha\n")]);
    let mut bad_checksum = good.clone();
    bad_checksum[512 + 10] ^= 0x20; // name of the second header
    let mut short_data = tar_of(&[root_entry()]);
    short_data.truncate(512);
    let mut h = header(b"snapshot/big", tarfmt::TYPE_REGULAR, 0o644);
    h.size = 1 << 30;
    short_data.extend(tarfmt::encode_header(&h));
    short_data.extend([b'x'; 512]);
    let mut bad_size = good.clone();
    bad_size[512 + 124..512 + 135].copy_from_slice(b"9z9z9z9z9z9");
    fix_checksum(&mut bad_size[512..1024]);
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("random bytes", deterministic_bytes(8, 5000), &[]),
        ("bad header checksum", bad_checksum, &[]),
        ("entry data shorter than its size", short_data, &["big"]),
        ("size field not octal", bad_size, &[]),
        (
            "unknown entry prefix",
            tar_of(&[root_entry(), file_entry(b"evil/x", b"x")]),
            &["evil/x"],
        ),
        (
            "signature entry in a volume",
            tar_of(&[root_entry(), file_entry(b"signature/x", b"x")]),
            &["signature"],
        ),
        (
            "garbage pax records",
            tar_of(&[
                root_entry(),
                (
                    TarHeader {
                        name: b"././@PaxHeader".to_vec(),
                        typeflag: tarfmt::TYPE_PAX,
                        ..TarHeader::default()
                    },
                    b"not a pax record at all\n".to_vec(),
                ),
                file_entry(b"snapshot/a", b"a"),
            ]),
            &[],
        ),
        (
            "multivol piece number missing",
            tar_of(&[root_entry(), file_entry(b"multivol_snapshot/a/", b"a")]),
            &[],
        ),
    ];
    for (what, plain, also_named) in cases {
        let env = AgentEnv::new();
        let vol = write_set_plain(&env.store, full_set(), &plain);
        let out = env.restore(&env.path("probe"), &[]);
        assert!(!out.success(), "{what}: accepted\n{out}");
        // the volume, or the path the bad entry is about
        let mut named = vec![vol.as_str()];
        named.extend_from_slice(also_named);
        restore_refused(&env, &[], &[&named]);
    }
}

#[test]
fn full_set_without_root_entry_is_handled() {
    // duplicity crashes on this (IndexError); flotilla must restore it or refuse it
    // cleanly, naming the volume.
    let (env, vol) = crafted(&[
        file_entry(b"snapshot/a", b"alpha\n"),
        file_entry(b"snapshot/b", b"bravo\n"),
    ]);
    let target = env.path("r");
    let out = env.restore(&target, &[]);
    if out.success() {
        assert_eq!(fs::read(target.join("a")).unwrap(), b"alpha\n", "{out}");
        assert_eq!(fs::read(target.join("b")).unwrap(), b"bravo\n", "{out}");
    } else {
        restore_refused(&env, &[], &[&[&vol]]);
    }
}

#[test]
fn delta_without_basis_is_refused() {
    // a full set whose entry for `x` is a delta: there is nothing to apply it to
    // (duplicity aborts: "First patch in sequence ... was a diff")
    let (env, vol) = crafted(&[
        root_entry(),
        file_entry(b"diff/x", &delta(&[0x45, 0, 10, 0])),
        file_entry(b"snapshot/y", b"y\n"),
    ]);
    restore_refused(&env, &[], &[&[&vol, "x"], &["delta", "basis", "diff"]]);
}

#[test]
fn garbage_object_names_are_ignored() {
    let env = small_backup(&[]);
    let src = env.path("src");
    let junk: Vec<Vec<u8>> = vec![
        b"README.txt".to_vec(),
        b".hidden".to_vec(),
        b"vol1.difftar.gpg".to_vec(),
        b"duplicity-full.NOTATIME.vol1.difftar.gpg".to_vec(),
        b"duplicity-full.20231114T221320Z.volX.difftar.gpg".to_vec(),
        b"duplicity-full.20231114T221320Z.vol.difftar.gpg".to_vec(),
        b"duplicity-full.20231114T221320Z.manifestX".to_vec(),
        b"duplicity-full.20231114T221320Z.manifest.part".to_vec(),
        b"duplicity-full-signatures.20231114T221320Z.sigtar.part".to_vec(),
        b"duplicity-full.00000000T000000Z.manifest.gpg".to_vec(),
        b"duplicity-full.99999999T999999Z.vol1.difftar.gpg".to_vec(),
        b"duplicity-inc.garbage.to.garbage.vol1.difftar.gpg".to_vec(),
        b"duplicity-full-signatures.garbage.sigtar.gpg".to_vec(),
        // (`<object>#<digits>` is an upload staging leftover: cleanup removes those, see
        // check_cleanup; `#x` is not one)
        b"duplicity-full.20231114T221320Z.vol1.difftar.gpg#x".to_vec(),
        b"duplicity full 20231114T221320Z vol2".to_vec(),
        b"back\\slash{brace}%41~\"quote".to_vec(),
    ];
    for n in &junk {
        fs::write(
            env.store.join(std::ffi::OsStr::from_bytes(n)),
            deterministic_bytes(9, 1000),
        )
        .unwrap();
    }
    // a directory with an object-like name, holding an object-like name
    let d = env
        .store
        .join("duplicity-full.20231114T221320Z.vol7.difftar.gpg");
    fs::create_dir(&d).unwrap();
    fs::write(
        d.join("duplicity-full.20231114T221320Z.vol8.difftar.gpg"),
        b"x",
    )
    .unwrap();

    let st = env.cmd().args(["status", "--json"]).arg(env.url()).run_ok();
    let v: serde_json::Value = serde_json::from_str(&st.stdout_str()).unwrap();
    assert_eq!(v["chains"].as_array().unwrap().len(), 1, "{st}");
    assert_eq!(v["chains"][0]["sets"].as_array().unwrap().len(), 1, "{st}");
    assert_eq!(v["chains"][0]["sets"][0]["volumes"], 1, "{st}");
    assert_eq!(v["incomplete"].as_array().unwrap().len(), 0, "{st}");
    assert_eq!(v["orphaned"].as_array().unwrap().len(), 0, "{st}");
    restore_equals(&env, &src, "r", &[]);
    // cleanup leaves foreign objects alone
    let c = env
        .cmd()
        .arg("cleanup")
        .arg("--force")
        .arg(env.url())
        .run_ok();
    for n in &junk {
        let p = env.store.join(std::ffi::OsStr::from_bytes(n));
        assert!(p.exists(), "cleanup deleted {}: {c}", p.display());
    }
    assert!(d.is_dir());
}

#[test]
fn foreign_files_with_odd_names_are_ignored() {
    // Other programs may leave files with any name in a destination directory; duplicity
    // ignores names it does not recognise. Non-UTF-8 and control characters included.
    let env = small_backup(&[]);
    let src = env.path("src");
    let junk: [&[u8]; 4] = [
        b"latin1-\xe9.txt",
        b"bad-utf8-\xff\xfe",
        b"duplicity-full.20231114T221320Z.vol2.difftar.gpg\nx",
        b"control-\x01-char",
    ];
    for n in junk {
        let p = env.store.join(std::ffi::OsStr::from_bytes(n));
        fs::write(&p, b"foreign\n").unwrap();
        let st = env.cmd().args(["status", "--json"]).arg(env.url()).run();
        let r = env.restore(&env.path("r"), &[]);
        let b = env.backup(&src, &[]);
        for out in [&st, &r, &b] {
            assert!(
                out.success(),
                "a foreign file named {:?} in the store breaks flotilla-agent: {out}",
                String::from_utf8_lossy(n)
            );
        }
        fs::remove_dir_all(env.path("r")).unwrap();
        fs::remove_file(&p).unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// 6. Signatures

#[test]
fn signature_by_another_key_is_refused() {
    let env = AgentEnv::new();
    let _gpg = key_files(&env);
    let src = env.path("src");
    small_tree(&src);
    let alice_sec = path_str(env.path("alice.sec"));
    let alice_pub = path_str(env.path("alice.pub"));
    let mallory_pub = path_str(env.path("mallory.pub"));
    env.backup(&src, &["--sign-key", &alice_sec])
        .assert_success();
    let set_objects = [
        object(&env, ".manifest.gpg"),
        object(&env, ".vol1.difftar.gpg"),
    ];
    let names: Vec<&str> = set_objects.iter().map(String::as_str).collect();
    restore_refused(
        &env,
        &["--require-signature", &mallory_pub],
        &[&names, &["signed by", "signature"]],
    );
    restore_equals(&env, &src, "control", &["--require-signature", &alice_pub]);
}

#[test]
fn unsigned_backup_is_refused_when_a_signature_is_required() {
    let env = AgentEnv::new();
    let _gpg = key_files(&env);
    let src = env.path("src");
    small_tree(&src);
    let alice_pub = path_str(env.path("alice.pub"));
    env.backup(&src, &[]).assert_success();
    let set_objects = [
        object(&env, ".manifest.gpg"),
        object(&env, ".vol1.difftar.gpg"),
    ];
    let names: Vec<&str> = set_objects.iter().map(String::as_str).collect();
    restore_refused(
        &env,
        &["--require-signature", &alice_pub],
        &[&names, &["not signed"]],
    );
}

// ---------------------------------------------------------------------------------------
// 7-8. Interrupted and concurrent backups

const BIG_FILES: usize = 20;
const BIG_FILE_SIZE: usize = 10_000_000;

/// Adds ~200 MB of incompressible files under `big/`.
fn add_big_files(src: &Path, seed: u64) {
    let t = TreeBuilder::new(src);
    for i in 0..BIG_FILES {
        t.file(
            format!("big/f{i:02}.bin"),
            deterministic_bytes(seed + i as u64, BIG_FILE_SIZE),
        );
    }
}

/// Complete (not staging) volume objects in the store.
fn stored_volumes(env: &AgentEnv) -> Vec<String> {
    env.objects()
        .into_iter()
        .filter(|n| n.contains(".difftar") && !n.contains('#'))
        .collect()
}

/// Starts `flotilla-agent backup` as a child (output to `log`).
fn spawn_backup(env: &AgentEnv, src: &Path, extra: &[&str], log: &str) -> Child {
    let log = fs::File::create(env.path(log)).unwrap();
    env.cmd()
        .arg("backup")
        .arg(src)
        .arg(env.url())
        .args(extra)
        .to_command()
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start flotilla-agent")
}

/// Waits until a new volume object (not in `known`) is in the store.
fn wait_for_new_volume(env: &AgentEnv, child: &mut Child, known: &[String], log: &str) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if stored_volumes(env).iter().any(|v| !known.contains(v)) {
            return;
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "backup ended ({st}) before its first volume was seen:\n{}",
                fs::read_to_string(env.path(log)).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "no volume after 300 s");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Runs a backup and kills it with SIGKILL once its first volume is stored.
fn interrupted_backup(env: &AgentEnv, src: &Path, extra: &[&str]) {
    let known = stored_volumes(env);
    let mut child = spawn_backup(env, src, extra, "interrupted.log");
    wait_for_new_volume(env, &mut child, &known, "interrupted.log");
    // SAFETY: kill(2) of the child we started, by its pid.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGKILL);
    }
    let st = child.wait().unwrap();
    assert_eq!(
        st.signal(),
        Some(libc::SIGKILL),
        "the backup ended before it could be killed: {st}"
    );
}

fn status_json(env: &AgentEnv) -> serde_json::Value {
    let st = env.cmd().args(["status", "--json"]).arg(env.url()).run_ok();
    serde_json::from_str(&st.stdout_str()).unwrap()
}

/// Staging leftovers (`name#N`) of killed uploads in the store directory.
fn staging_junk(env: &AgentEnv) -> Vec<String> {
    env.objects()
        .into_iter()
        .filter(|n| n.contains('#'))
        .collect()
}

/// After an interrupted run: `cleanup` lists, then deletes, exactly the volumes of the
/// incomplete set; complete sets and their objects stay.
fn check_cleanup(env: &AgentEnv, incomplete_volumes: &[String]) {
    let before = env.objects();
    let dry = env.cmd().arg("cleanup").arg(env.url()).run_ok();
    assert!(!dry.combined().contains("panicked"), "{dry}");
    for v in incomplete_volumes {
        assert!(
            dry.stdout_str().contains(v.as_str()),
            "dry run does not list {v}: {dry}"
        );
    }
    assert!(
        !dry.stdout_str().contains(".part"),
        "a foreign .part file listed for deletion: {dry}"
    );
    assert_eq!(env.objects(), before, "a dry run deleted objects: {dry}");
    let forced = env
        .cmd()
        .arg("cleanup")
        .arg("--force")
        .arg(env.url())
        .run_ok();
    let after = env.objects();
    for v in incomplete_volumes {
        assert!(!after.contains(v), "{v} survived cleanup --force: {forced}");
    }
    let st = status_json(env);
    assert_eq!(st["incomplete"].as_array().unwrap().len(), 0, "{st}");
    // upload staging leftovers (`<object>#<n>`) of the killed run are removed too
    let junk = staging_junk(env);
    assert!(
        junk.is_empty(),
        "staging leftovers survived cleanup --force: {junk:?}"
    );
}

#[test]
fn interrupted_first_backup_leaves_an_incomplete_set() {
    let env = AgentEnv::new();
    let src = env.path("src");
    TreeBuilder::new(&src).file("small.txt", b"small\n");
    add_big_files(&src, 100);
    interrupted_backup(&env, &src, &["--volsize", "5"]);

    let vols = stored_volumes(&env);
    assert!(!vols.is_empty());
    // what a killed upload and a duplicity-style local marker would leave behind
    let set_prefix = vols[0].split(".vol").next().unwrap().to_string();
    let staged = format!("{set_prefix}.vol{}.difftar.gpg#1", vols.len() + 1);
    let part = format!("{set_prefix}.manifest.part");
    fs::write(env.store.join(&staged), deterministic_bytes(1, 4096)).unwrap();
    fs::write(env.store.join(&part), b"Volume 1:\n").unwrap();
    let st = status_json(&env);
    assert_eq!(
        st["chains"].as_array().unwrap().len(),
        0,
        "not a chain: {st}"
    );
    let inc = st["incomplete"].as_array().unwrap();
    assert_eq!(inc.len(), 1, "{st}");
    assert_eq!(
        inc[0]["volumes"].as_u64(),
        Some(vols.len() as u64),
        "volume count (staging files must not count): {st}, store {:?}",
        env.objects()
    );
    let text = env.cmd().arg("status").arg(env.url()).run_ok();
    assert!(
        text.stdout_str().to_lowercase().contains("incomplete"),
        "{text}"
    );

    restore_refused_skipping(
        &env,
        &[],
        &[&["no complete backup"]],
        std::slice::from_ref(&src),
    );

    // a new run makes a complete set, which restores
    let out = env.backup(&src, &["--volsize", "5"]);
    out.assert_success();
    let st = status_json(&env);
    assert_eq!(st["chains"].as_array().unwrap().len(), 1, "{st}");
    assert_eq!(st["incomplete"].as_array().unwrap().len(), 1, "{st}");
    restore_equals(&env, &src, "restored", &[]);

    check_cleanup(&env, &vols);
    assert_eq!(status_json(&env)["chains"].as_array().unwrap().len(), 1);
    for junk in [&staged, &part] {
        if env.store.join(junk).exists() {
            eprintln!("note: {junk} is still in the store after cleanup --force");
        }
    }
    fs::remove_dir_all(env.path("restored")).unwrap();
    restore_equals(&env, &src, "restored", &[]);
}

#[test]
fn interrupted_backup_keeps_the_previous_chain_restorable() {
    let env = AgentEnv::new();
    let src = env.path("src");
    small_tree(&src);
    env.backup(&src, &["--volsize", "5"]).assert_success();
    copy_tree(&src, &env.path("exp1"));
    let complete = env.objects();

    add_big_files(&src, 300);
    interrupted_backup(&env, &src, &["--volsize", "5"]);
    let incomplete_vols: Vec<String> = stored_volumes(&env)
        .into_iter()
        .filter(|v| !complete.contains(v))
        .collect();
    assert!(!incomplete_vols.is_empty());
    let st = status_json(&env);
    assert_eq!(st["chains"].as_array().unwrap().len(), 1, "{st}");
    assert_eq!(st["chains"][0]["sets"].as_array().unwrap().len(), 1, "{st}");
    assert_eq!(st["incomplete"].as_array().unwrap().len(), 1, "{st}");
    assert_eq!(
        st["incomplete"][0]["volumes"].as_u64(),
        Some(incomplete_vols.len() as u64),
        "{st}"
    );

    // the previous chain restores as it was
    restore_equals(&env, &env.path("exp1"), "restored-old", &[]);

    // a new run continues the chain and restores
    env.backup(&src, &["--volsize", "5"]).assert_success();
    let st = status_json(&env);
    assert_eq!(st["chains"].as_array().unwrap().len(), 1, "{st}");
    assert_eq!(st["chains"][0]["sets"].as_array().unwrap().len(), 2, "{st}");
    restore_equals(&env, &src, "restored-new", &[]);

    check_cleanup(&env, &incomplete_vols);
    for o in &complete {
        assert!(env.objects().contains(o), "cleanup deleted {o}");
    }
    let full_time = status_json(&env)["chains"][0]["sets"][0]["time"]
        .as_i64()
        .unwrap()
        .to_string();
    restore_equals(
        &env,
        &env.path("exp1"),
        "restored-old-again",
        &["--time", &full_time],
    );
}

#[test]
fn concurrent_backup_fails_fast() {
    let env = AgentEnv::new();
    let src = env.path("src");
    TreeBuilder::new(&src).file("small.txt", b"small\n");
    add_big_files(&src, 500);
    let mut first = spawn_backup(&env, &src, &["--volsize", "5"], "first.log");
    wait_for_new_volume(&env, &mut first, &[], "first.log");

    let second = env.backup(&src, &["--volsize", "5"]);
    let still_running = first.try_wait().unwrap().is_none();
    assert_refused(&second, &[&["another flotilla-agent is working"]]);
    assert!(
        second.elapsed < Duration::from_secs(10),
        "took {:?} to give up",
        second.elapsed
    );
    assert!(
        still_running,
        "the first backup finished before the second was refused; the test proves nothing"
    );

    let st = first.wait().unwrap();
    assert!(
        st.success(),
        "the first backup failed ({st}):\n{}",
        fs::read_to_string(env.path("first.log")).unwrap_or_default()
    );
    let v = status_json(&env);
    assert_eq!(v["chains"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["chains"][0]["sets"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["incomplete"].as_array().unwrap().len(), 0, "{v}");
    // and the lock is released afterwards
    env.backup(&src, &["--volsize", "5"]).assert_success();
}

// ---------------------------------------------------------------------------------------
// 9. Bad command lines

#[test]
fn bad_command_line_values_are_named() {
    let env = AgentEnv::new();
    let src = env.path("src");
    small_tree(&src);
    let missing = env.path("no-such-source-dir");
    let out = env.backup(&missing, &[]);
    assert_refused(&out, &[&["no-such-source-dir"]]);

    for args in [
        vec!["backup", src.to_str().unwrap(), "s3://x"],
        vec!["restore", "s3://x", env.path("t").to_str().unwrap()],
        vec!["status", "s3://x"],
        vec!["cleanup", "s3://x"],
    ] {
        let out = env.cmd().args(&args).run();
        assert_refused(&out, &[&["s3://x"]]);
    }
    assert!(!env.path("t").exists());

    env.backup(&src, &[]).assert_success();
    let target = env.path("target");
    for bad in ["not-a-time", "2026-13-45", "3X", "20261301T000000Z"] {
        let out = env.restore(&target, &["--time", bad]);
        assert_refused(&out, &[&[bad]]);
        assert!(!target.exists(), "--time {bad}: target created");
    }
    let out = env
        .cmd()
        .args(["remove-older-than", "yesterday-ish"])
        .arg(env.url())
        .run();
    assert_refused(&out, &[&["yesterday-ish"]]);
    let out = env.backup(&src, &["--full-if-older-than", "soon"]);
    assert_refused(&out, &[&["soon"]]);
    let out = env.backup(&src, &["--current-time", "whenever"]);
    assert_refused(&out, &[&["whenever"]]);

    for v in ["0", "-1", "big", "65537"] {
        let arg = format!("--volsize={v}");
        let out = env.backup(&src, &[&arg]);
        assert_refused(&out, &[&[&format!("'{v}'")], &["--volsize"]]);
    }
    // nothing of that reached the store
    let st = status_json(&env);
    assert_eq!(st["chains"][0]["sets"].as_array().unwrap().len(), 1, "{st}");
}

#[test]
fn unreadable_key_files_are_named() {
    let env = small_backup(&[]);
    let target = env.path("target");
    let missing = path_str(env.path("no-such-key.asc"));
    let garbage = env.path("garbage.asc");
    fs::write(&garbage, deterministic_bytes(1, 500)).unwrap();
    fs::set_permissions(&garbage, fs::Permissions::from_mode(0o600)).unwrap();
    let garbage = path_str(garbage);
    for opt in ["--decrypt-key", "--require-signature"] {
        for f in [&missing, &garbage] {
            let out = env.restore(&target, &[opt, f]);
            assert_refused(&out, &[&[f.as_str()]]);
            assert!(!target.exists());
        }
    }
    for opt in ["--encrypt-key", "--sign-key"] {
        for f in [&missing, &garbage] {
            let out = env.backup(&env.path("src"), &[opt, f]);
            assert_refused(&out, &[&[f.as_str()]]);
        }
    }
}
