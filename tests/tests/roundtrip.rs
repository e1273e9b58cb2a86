//! Full + incrementals with flotilla-agent as a real process, restored at every time:
//! the restored tree equals the source at that time, bytes and metadata.

use flotilla_tests::agent::{AgentEnv, copy_tree};
use flotilla_tests::{
    TreeBuilder, assert_trees_equal, deterministic_bytes, deterministic_text, files_under, is_root,
};
use std::path::Path;

const T1: i64 = 1_700_000_000;
const T2: i64 = 1_700_003_600;
const T3: i64 = 1_700_007_200;

fn build_initial(src: &Path) {
    let t = TreeBuilder::new(src);
    t.file_with("a.txt", b"alpha\n", 0o644, 1_690_000_000)
        .dir("a")
        .file("a/b", b"inside a\n")
        .file("a-b", b"sorts after a/\n")
        .file("name with spaces.txt", b"one\ntwo\n")
        .file("quote'and\\back.txt", b"q\n")
        .file(b"latin1-\xe9.txt", b"latin-1 name\n")
        .file(b"bad-utf8-\xff\xfe.bin", deterministic_bytes(1, 5000))
        .file("big.bin", deterministic_bytes(2, 3_000_000))
        .file("exact64k.bin", deterministic_bytes(3, 65536))
        .file("text-2mb.txt", deterministic_text(4, 2_100_000))
        .file("empty.txt", b"")
        .file_with("secret.txt", b"secret\n", 0o600, 981_173_106)
        .file("hl1", b"hard link\n")
        .hard_link("hl2", "hl1")
        .symlink("link", "a.txt")
        .symlink("dangling", "../nowhere/target")
        .fifo("fifo", 0o640)
        .dir("emptydir")
        .dir_with("sub", 0o750, 1_690_000_000)
        .file("sub/deeper/file.txt", b"deep\n")
        .file("to-become-link", b"regular now\n")
        .symlink("to-become-file", "a.txt")
        .dir("dir-to-file")
        .file("dir-to-file/x", b"x\n")
        .dir("gone")
        .file("gone/e/y", b"y\n")
        .file("gone/x", b"x\n");
    let long = format!("long/{}/{}", "d".repeat(60), "e".repeat(60));
    t.file(format!("{long}/{}.txt", "f".repeat(80)), b"long path\n");
    if is_root() {
        t.chown("secret.txt", 12345, 54321);
    }
    t.set_all_mtimes(1_690_000_000);
    t.set_mtime("secret.txt", 981_173_106);
}

fn change_1(src: &Path) {
    let t = TreeBuilder::new(src);
    // modify in the middle (delta), append, delete, add, chmod, replace by symlink
    let mut big = std::fs::read(src.join("big.bin")).unwrap();
    big[1_000_000..1_200_000].copy_from_slice(&deterministic_bytes(9, 200_000));
    t.file_with("big.bin", &big, 0o644, 1_700_001_000);
    let mut a = std::fs::read(src.join("a.txt")).unwrap();
    a.extend_from_slice(b"appended at T2\n");
    t.file_with("a.txt", &a, 0o644, 1_700_001_000);
    t.remove("name with spaces.txt").remove("gone");
    t.file_with("new.txt", b"new at T2\n", 0o644, 1_700_001_000);
    t.chmod("a-b", 0o640);
    t.remove("to-become-link")
        .symlink("to-become-link", "sub/deeper/file.txt");
    t.remove("to-become-file")
        .file_with("to-become-file", b"was a link\n", 0o644, 1_700_001_000);
    t.remove("dir-to-file")
        .file_with("dir-to-file", b"was a dir\n", 0o644, 1_700_001_000);
    t.remove("link").symlink("link", "sub/deeper/file.txt");
    t.remove("emptydir");
    t.set_mtime(".", 1_700_001_000);
    t.set_mtime("a", 1_700_001_000);
}

fn change_2(src: &Path) {
    let t = TreeBuilder::new(src);
    t.remove("big.bin");
    let mut text = std::fs::read(src.join("text-2mb.txt")).unwrap();
    text.splice(10..10, b"inserted near the start\n".iter().copied());
    text.extend_from_slice(&deterministic_text(5, 300_000));
    t.file_with("text-2mb.txt", &text, 0o644, 1_700_005_000);
    t.file_with(
        "exact64k.bin",
        deterministic_bytes(6, 131_072),
        0o644,
        1_700_005_000,
    );
    t.dir_with("newdir", 0o700, 1_700_005_000);
    t.file_with("newdir/f", b"f\n", 0o444, 1_700_005_000);
    t.set_mtime("newdir", 1_700_005_000);
    t.set_mtime(".", 1_700_005_000);
}

#[test]
fn full_and_incrementals_restore_at_every_time() {
    let env = AgentEnv::new();
    let src = env.path("src");
    std::fs::create_dir(&src).unwrap();
    build_initial(&src);
    let t1 = T1.to_string();
    let t2 = T2.to_string();
    let t3 = T3.to_string();
    let out = env.backup(&src, &["--volsize", "1", "--current-time", &t1]);
    out.assert_success().assert_output_contains("Full backup");
    copy_tree(&src, &env.path("exp1"));
    assert!(
        env.objects_matching("duplicity-full.20231114T221320Z.vol")
            .len()
            >= 4,
        "a 1 MiB volsize spreads ~5 MB over several volumes: {:?}",
        env.objects()
    );

    change_1(&src);
    env.backup(&src, &["--volsize", "1", "--current-time", &t2])
        .assert_success()
        .assert_output_contains("Incremental backup");
    copy_tree(&src, &env.path("exp2"));
    change_2(&src);
    env.backup(&src, &["--volsize", "1", "--current-time", &t3])
        .assert_success();
    copy_tree(&src, &env.path("exp3"));

    for (t, exp) in [(&t1, "exp1"), (&t2, "exp2"), (&t3, "exp3")] {
        let target = env.path(&format!("restore-{t}"));
        env.restore(&target, &["--time", t]).assert_success();
        assert_trees_equal(&env.path(exp), &target);
    }
    // default time = latest
    let latest = env.path("restore-latest");
    env.restore(&latest, &[]).assert_success();
    assert_trees_equal(&env.path("exp3"), &latest);

    // the chain as collection-status shows it
    let st = env.cmd().args(["status", "--json"]).arg(env.url()).run_ok();
    let v: serde_json::Value = serde_json::from_str(&st.stdout_str()).unwrap();
    assert_eq!(v["chains"].as_array().unwrap().len(), 1);
    assert_eq!(v["chains"][0]["sets"].as_array().unwrap().len(), 3);
    assert_eq!(v["chains"][0]["primary"], true);

    // verify: clean tree passes, a changed byte is reported with exit 1
    env.cmd().arg("verify").arg(env.url()).arg(&src).run_ok();
    let mut text = std::fs::read(src.join("a.txt")).unwrap();
    text[0] ^= 1;
    std::fs::write(src.join("a.txt"), text).unwrap();
    let v = env.cmd().arg("verify").arg(env.url()).arg(&src).run();
    v.assert_code(1)
        .assert_output_contains("a.txt: data differs at byte 0");
}

#[test]
fn single_file_and_subtree_at_an_earlier_time() {
    let env = AgentEnv::new();
    let src = env.path("src");
    std::fs::create_dir(&src).unwrap();
    build_initial(&src);
    env.backup(&src, &["--current-time", &T1.to_string()])
        .assert_success();
    copy_tree(&src, &env.path("exp1"));
    change_1(&src);
    env.backup(&src, &["--current-time", &T2.to_string()])
        .assert_success();

    // one file, as it was at T1 (it changed at T2)
    let f = env.path("a-at-t1.txt");
    env.restore(&f, &["--time", &T1.to_string(), "--path", "a.txt"])
        .assert_success();
    assert_eq!(std::fs::read(&f).unwrap(), b"alpha\n");
    let md = std::fs::metadata(&f).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::mtime(&md), 1_690_000_000);

    // a big multi-volume file at T1 and T2
    let b1 = env.path("big-t1");
    env.restore(&b1, &["-t", &T1.to_string(), "--path", "big.bin"])
        .assert_success();
    assert_eq!(
        std::fs::read(&b1).unwrap(),
        std::fs::read(env.path("exp1/big.bin")).unwrap()
    );
    let b2 = env.path("big-t2");
    env.restore(&b2, &["--path", "big.bin"]).assert_success();
    assert_eq!(
        std::fs::read(&b2).unwrap(),
        std::fs::read(src.join("big.bin")).unwrap()
    );

    // a subtree that was deleted at T2, restored as of T1
    let g = env.path("gone-t1");
    env.restore(&g, &["--time", &T1.to_string(), "--path", "gone"])
        .assert_success();
    assert_trees_equal(&env.path("exp1/gone"), &g);

    // into an existing empty directory, a file lands inside it
    let d = env.path("into-dir");
    std::fs::create_dir(&d).unwrap();
    env.restore(&d, &["--path", "new.txt"]).assert_success();
    assert_eq!(std::fs::read(d.join("new.txt")).unwrap(), b"new at T2\n");

    // a path that does not exist at that time is an error, and leaves nothing behind
    let none = env.path("nothing");
    env.restore(&none, &["--time", &T1.to_string(), "--path", "new.txt"])
        .assert_failure()
        .assert_output_contains("not in the backup");
    assert!(!none.exists());
}

#[test]
fn refuses_non_empty_target_unless_forced() {
    let env = AgentEnv::new();
    let src = env.path("src");
    TreeBuilder::new(&src)
        .file("f", b"backed up\n")
        .file("g", b"g\n");
    env.backup(&src, &[]).assert_success();
    let target = env.path("target");
    TreeBuilder::new(&target)
        .file("f", b"local edit\n")
        .file("keep", b"mine\n");
    env.restore(&target, &[])
        .assert_failure()
        .assert_output_contains("not empty");
    assert_eq!(std::fs::read(target.join("f")).unwrap(), b"local edit\n");
    env.restore(&target, &["--force"]).assert_success();
    assert_eq!(std::fs::read(target.join("f")).unwrap(), b"backed up\n");
    assert_eq!(std::fs::read(target.join("keep")).unwrap(), b"mine\n");
    assert!(!std::fs::read_dir(&target).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".flotilla")
    }));
}

#[test]
fn excludes_and_includes_in_order() {
    let env = AgentEnv::new();
    let src = env.path("src");
    TreeBuilder::new(&src)
        .file("www/html/index.html", b"<p>")
        .file("www/cache/blob", b"cache")
        .file("www/html/x.tmp", b"tmp")
        .file("etc/conf", b"c");
    env.backup(
        &src,
        &[
            "--exclude",
            "www/cache",
            "--exclude",
            "**/*.tmp",
            "--include",
            "www",
            "--exclude",
            "**",
        ],
    )
    .assert_success();
    let ls = env.cmd().args(["ls", "--json"]).arg(env.url()).run_ok();
    let v: serde_json::Value = serde_json::from_str(&ls.stdout_str()).unwrap();
    let paths: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, vec![".", "www", "www/html", "www/html/index.html"]);
}

#[test]
fn no_change_incremental_and_unencrypted_mode() {
    let mut env = AgentEnv::new();
    env.passphrase = None;
    let src = env.path("src");
    TreeBuilder::new(&src)
        .file("x", deterministic_bytes(7, 200_000))
        .file("y", b"y");
    env.backup(&src, &["--no-encryption"]).assert_success();
    let out = env.backup(&src, &["--no-encryption"]);
    out.assert_success()
        .assert_output_contains("DeltaEntries 0");
    assert!(env.objects().iter().all(|n| !n.ends_with(".gpg")));
    assert!(env.objects().iter().any(|n| n.ends_with(".difftar.gz")));
    let t = env.path("r");
    env.restore(&t, &[]).assert_success();
    assert_trees_equal(&src, &t);
    // without a passphrase or key, an encrypted backup is refused up front
    env.backup(&src, &[])
        .assert_failure()
        .assert_output_contains("no encryption configured");
}

#[test]
fn full_if_older_than_starts_a_new_chain() {
    let env = AgentEnv::new();
    let src = env.path("src");
    TreeBuilder::new(&src).file("x", b"x");
    let now = flotilla_tests::agent::now();
    env.backup(&src, &["--current-time", &(now - 10 * 86400).to_string()])
        .assert_success();
    env.backup(&src, &["--full-if-older-than", "30D"])
        .assert_success()
        .assert_output_contains("Incremental backup");
    env.backup(&src, &["--full-if-older-than", "7D"])
        .assert_success()
        .assert_output_contains("older than --full-if-older-than");
    let st = env.cmd().args(["status", "--json"]).arg(env.url()).run_ok();
    let v: serde_json::Value = serde_json::from_str(&st.stdout_str()).unwrap();
    assert_eq!(v["chains"].as_array().unwrap().len(), 2);
}

#[test]
fn retention_deletes_whole_old_chains_only_when_forced() {
    let env = AgentEnv::new();
    let src = env.path("src");
    // explicit mtimes: like duplicity, a change within the same second with the same
    // mode and owner is not seen (size is not compared)
    TreeBuilder::new(&src).file_with("x", b"one", 0o644, 1_600_000_000);
    // chain 1: full + incremental; chain 2: full; chain 3: full + incremental
    env.backup(&src, &["--current-time", "1700000000"])
        .assert_success();
    TreeBuilder::new(&src).file_with("x", b"two", 0o644, 1_600_000_001);
    env.backup(&src, &["--current-time", "1700000100"])
        .assert_success();
    env.backup(&src, &["--full", "--current-time", "1700001000"])
        .assert_success();
    env.backup(&src, &["--full", "--current-time", "1700002000"])
        .assert_success();
    TreeBuilder::new(&src).file_with("x", b"three", 0o644, 1_600_000_002);
    env.backup(&src, &["--current-time", "1700002100"])
        .assert_success();
    let before = env.objects();
    let chains = |env: &AgentEnv| {
        let st = env.cmd().args(["status", "--json"]).arg(env.url()).run_ok();
        let v: serde_json::Value = serde_json::from_str(&st.stdout_str()).unwrap();
        v["chains"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["start"].as_i64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        chains(&env),
        vec![1_700_000_000, 1_700_001_000, 1_700_002_000]
    );

    // dry run: lists the oldest chain (both of its sets), deletes nothing
    let dry = env
        .cmd()
        .args(["remove-all-but-n-full", "2"])
        .arg(env.url())
        .run_ok();
    dry.assert_output_contains("20231114T221320Z")
        .assert_output_contains("Dry run");
    assert_eq!(env.objects(), before);
    env.cmd()
        .args(["remove-all-but-n-full", "2", "--force"])
        .arg(env.url())
        .run_ok();
    assert_eq!(chains(&env), vec![1_700_001_000, 1_700_002_000]);
    assert!(
        env.objects()
            .iter()
            .all(|n| !n.contains("20231114T221320Z")),
        "{:?}",
        env.objects()
    );

    // remove-older-than a time after every chain: the latest chain is never deleted
    env.cmd()
        .args(["remove-older-than", "1800000000", "--force"])
        .arg(env.url())
        .run_ok();
    assert_eq!(chains(&env), vec![1_700_002_000]);
    let t = env.path("r");
    env.restore(&t, &[]).assert_success();
    assert_eq!(std::fs::read(t.join("x")).unwrap(), b"three");
    let t1 = env.path("r1");
    env.restore(&t1, &["--time", "1700002000"]).assert_success();
    assert_eq!(std::fs::read(t1.join("x")).unwrap(), b"two");
    env.cmd()
        .args(["remove-all-but-n-full", "0"])
        .arg(env.url())
        .run()
        .assert_failure();
}

/// `flotilla-agent ls --json URL | head -c 100`: the agent ends quietly when its reader goes away,
/// like other Unix tools, and does not panic about a broken pipe.
#[test]
fn output_into_a_pipe_closed_early_ends_quietly() {
    let env = AgentEnv::new();
    let src = env.path("src");
    let t = TreeBuilder::new(&src);
    // A listing far larger than a pipe's buffer, so the agent still writes after `head`
    // is gone.
    for i in 0..3000 {
        t.file(
            format!("a-directory-with-a-long-name/file-number-{i:05}-with-a-long-name.txt"),
            b"x",
        );
    }
    env.backup(&src, &[]).assert_success();
    let out = env
        .cmd()
        .args(["ls", "--json"])
        .arg(env.url())
        .piped_into("head -c 100 >/dev/null")
        .run();
    assert!(!out.stderr_str().contains("panicked"), "{}", out.combined());
    // Done, or ended by SIGPIPE (bash reports 128 + 13), as `seq 1000000 | head -n1` is.
    assert!(
        matches!(out.code(), Some(0) | Some(141)),
        "expected success or SIGPIPE: {out}"
    );
}

/// The data offset of member `name` in a plain (ustar) tar.
fn tar_member_offset(tar: &[u8], name: &str) -> Option<usize> {
    let mut pos = 0;
    while pos + 512 <= tar.len() && tar[pos] != 0 {
        let h = &tar[pos..pos + 512];
        let end = h[..100].iter().position(|&b| b == 0).unwrap_or(100);
        let size_field: String = h[124..136]
            .iter()
            .take_while(|&&b| b != 0 && b != b' ')
            .map(|&b| b as char)
            .collect();
        let size = usize::from_str_radix(size_field.trim(), 8).unwrap_or(0);
        if &h[..end] == name.as_bytes() {
            return Some(pos + 512);
        }
        pos += 512 + size.div_ceil(512) * 512;
    }
    None
}

/// The restore checks the data it writes against the backup's signature files (stored
/// apart from the volumes): a clean restore says "Verified" with every file hashed; when
/// a signature disagrees with the data (here: the cached signature files, which the check
/// reads first, altered) the files are named and the restore exits 1. Covers a small file,
/// a large file written in pieces and a file rebuilt from a delta (larger than the ranges
/// the writers check such files in, altered in its last block).
#[test]
fn restore_checks_the_data_it_writes_against_the_signatures() {
    let env = AgentEnv::new();
    let src = env.path("src");
    let t = TreeBuilder::new(&src);
    t.file("small.txt", deterministic_text(1, 5000));
    t.file("big.bin", deterministic_bytes(2, 3_000_000));
    t.file("grows.log", deterministic_text(3, 9_000_000));
    t.file("sub/empty", b"");
    let t1 = T1.to_string();
    let t2 = T2.to_string();
    env.backup(&src, &["--current-time", &t1]).assert_success();
    let mut log = std::fs::read(src.join("grows.log")).unwrap();
    log.extend_from_slice(&deterministic_text(4, 300_000));
    std::fs::write(src.join("grows.log"), &log).unwrap();
    env.backup(&src, &["--current-time", &t2])
        .assert_success()
        .assert_output_contains("Incremental backup");

    let clean = env.path("clean");
    let out = env
        .cmd()
        .arg("--json")
        .arg("restore")
        .arg(env.url())
        .arg(&clean)
        .run_ok();
    assert_trees_equal(&src, &clean);
    let report: serde_json::Value = serde_json::from_str(&out.stdout_str()).unwrap();
    let check = &report["check"];
    assert_eq!(check["mismatches"], 0, "{check}");
    assert_eq!(check["files_hashed"], 4, "{check}");
    assert_eq!(
        check["bytes_hashed"],
        5000 + 3_000_000 + log.len() as u64,
        "{check}"
    );

    // Alter one weak sum in the cached signatures of three files: small.txt's first and
    // big.bin's last block in the full set's, grows.log's (a delta) last in the
    // incremental's.
    let mut altered = 0;
    for entry in files_under(&env.state) {
        let name = entry.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".sigtar") {
            continue;
        }
        let mut tar = std::fs::read(&entry).unwrap();
        let full = name.contains("full-signatures");
        // (member, Some(file size): its last block, None: its first)
        let targets: &[(&str, Option<usize>)] = if full {
            &[
                ("signature/small.txt", None),
                ("signature/big.bin", Some(3_000_000)),
            ]
        } else {
            &[("signature/grows.log", Some(log.len()))]
        };
        for &(member, size) in targets {
            let at =
                tar_member_offset(&tar, member).unwrap_or_else(|| panic!("{member} in {name}"));
            // librsync signature: magic, block length, strong sum length; then per block
            // a 4-byte weak sum and an 8-byte strong sum.
            let block_len = u32::from_be_bytes(tar[at + 4..at + 8].try_into().unwrap()) as usize;
            let block = size.map_or(0, |size| size.div_ceil(block_len) - 1);
            tar[at + 12 + block * 12] ^= 0x55;
            altered += 1;
        }
        std::fs::write(&entry, &tar).unwrap();
    }
    assert_eq!(altered, 3, "signature files in the cache");

    let flagged = env.path("flagged");
    let out = env.restore(&flagged, &[]);
    out.assert_code(1)
        .assert_output_contains("differs: big.bin: data differs from the backup's signature")
        .assert_output_contains("differs: grows.log: data differs from the backup's signature")
        .assert_output_contains("differs: small.txt: data differs from the backup's signature")
        .assert_output_contains("NOT verified: 3 difference(s)");
    // The data itself is what the volumes hold; only the check flags it.
    assert_trees_equal(&src, &flagged);

    // --no-verify skips the check.
    let unchecked = env.path("unchecked");
    let out = env.restore(&unchecked, &["--no-verify"]);
    out.assert_success();
    assert!(!out.stderr_str().contains("erified"), "{out}");
}

/// A file that grows within the same second as the previous backup read it keeps its
/// integer mtime; the incremental still sees the change (its size is outside what the
/// stored signature describes, which duplicity does not look at) and the restore has the
/// new data.
#[test]
fn a_file_grown_within_the_second_is_backed_up() {
    let env = AgentEnv::new();
    let src = env.path("src");
    let t = TreeBuilder::new(&src);
    t.file("app.log", deterministic_text(5, 100_000));
    let mtime = std::fs::metadata(src.join("app.log"))
        .unwrap()
        .modified()
        .unwrap();
    env.backup(&src, &["--current-time", &T1.to_string()])
        .assert_success();
    let mut log = std::fs::read(src.join("app.log")).unwrap();
    // Two blocks of the signature (512 bytes each) more: appends shorter than the last
    // block's slack go unseen, as with duplicity.
    log.extend_from_slice(&deterministic_text(6, 1024));
    std::fs::write(src.join("app.log"), &log).unwrap();
    std::fs::File::options()
        .write(true)
        .open(src.join("app.log"))
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    env.backup(&src, &["--current-time", &T2.to_string()])
        .assert_success()
        .assert_output_contains("ChangedFiles 1");
    let target = env.path("restored");
    env.restore(&target, &[]).assert_success();
    assert_eq!(std::fs::read(target.join("app.log")).unwrap(), log);
}

/// A set whose signature file is gone (from the store and the cache) still restores;
/// the restore says it could not be checked, and that is not a failure.
#[test]
fn restore_without_signature_files_says_it_is_not_verified() {
    let env = AgentEnv::new();
    let src = env.path("src");
    TreeBuilder::new(&src).file("a", b"hi\n");
    env.backup(&src, &[]).assert_success();
    for sig in env.objects_matching("signatures") {
        std::fs::remove_file(sig).unwrap();
    }
    std::fs::remove_dir_all(&env.state).unwrap();
    let target = env.path("restored");
    env.restore(&target, &[])
        .assert_success()
        .assert_output_contains("Not verified: the full ")
        .assert_output_contains("set has no signature file to check the restored tree against");
    assert_trees_equal(&src, &target);
}

/// Segments (and lanes) of a restore, from its debug log.
fn restore_segments(out: &flotilla_tests::bins::CmdOutput) -> (usize, usize) {
    let log = out.stderr_str();
    let line = log
        .lines()
        .find(|l| l.contains("restore in segments"))
        .unwrap_or_else(|| panic!("no segments in the log: {log}"));
    let field = |name: &str| -> usize {
        let at = line.find(&format!("{name}=")).expect(name) + name.len() + 1;
        line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    (field("segments"), field("lanes"))
}

/// A restore of many volumes is cut into segments at volume boundaries (files continuing
/// across them) that two lanes restore side by side: the tree equals the source at both
/// times (directories whose files span segments get their modes and mtimes after all of
/// them, incremental volumes spanning segments merge), a subtree too; each lane checks
/// the data it writes; and a damaged volume in a late segment fails the whole restore,
/// leaving nothing behind.
#[test]
fn a_restore_in_segments_side_by_side_equals_the_source() {
    let env = AgentEnv::new();
    let src = env.path("src");
    let t = TreeBuilder::new(&src);
    for d in 0..4u64 {
        for f in 0..8u64 {
            t.file(
                format!("data/d{d}/f{f}.bin"),
                deterministic_bytes(100 + d * 8 + f, 150_000),
            );
        }
        t.file(
            format!("data/d{d}/deep/x/notes.txt"),
            deterministic_text(d, 20_000),
        );
    }
    t.file("data/d1/big.bin", deterministic_bytes(7, 2_500_000));
    t.set_all_mtimes(1_690_000_000);
    t.set_mtime("data/d2", 1_680_000_000);
    t.chmod("data/d2", 0o555);
    let t1 = T1.to_string();
    let t2 = T2.to_string();
    env.backup(&src, &["--volsize", "1", "--current-time", &t1])
        .assert_success();
    copy_tree(&src, &env.path("exp1"));
    let full_volumes = env.objects_matching("duplicity-full.20231114T221320Z.vol");
    assert!(full_volumes.len() >= 6, "{:?}", env.objects());

    // Changes on both sides of the segment boundaries.
    let mut f3 = std::fs::read(src.join("data/d0/f3.bin")).unwrap();
    f3[70_000..80_000].copy_from_slice(&deterministic_bytes(9, 10_000));
    t.file_with("data/d0/f3.bin", &f3, 0o644, 1_700_001_000);
    let mut big = std::fs::read(src.join("data/d1/big.bin")).unwrap();
    big.extend_from_slice(&deterministic_bytes(10, 600_000));
    t.file_with("data/d1/big.bin", &big, 0o600, 1_700_001_000);
    t.chmod("data/d2", 0o755);
    t.remove("data/d2/f0.bin");
    t.file_with("data/d2/new.txt", b"new\n", 0o644, 1_700_001_000);
    t.set_mtime("data/d2", 1_700_001_000);
    t.chmod("data/d2", 0o555);
    t.file_with(
        "data/d3/f5.bin",
        deterministic_bytes(11, 150_000),
        0o644,
        1_700_001_000,
    );
    env.backup(&src, &["--volsize", "1", "--current-time", &t2])
        .assert_success()
        .assert_output_contains("Incremental backup");

    let at_t1 = env.path("at-t1");
    env.restore(&at_t1, &["--time", &t1]).assert_success();
    assert_trees_equal(&env.path("exp1"), &at_t1);

    let latest = env.path("latest");
    let out = env
        .cmd()
        .env("RUST_LOG", "flotilla_client::engine::restore=debug")
        .arg("restore")
        .arg(env.url())
        .arg(&latest)
        .run_ok();
    assert_trees_equal(&src, &latest);
    let (segments, lanes) = restore_segments(&out);
    assert!(segments >= 4, "{segments} segments: {out}");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(lanes, cores.min(2), "{out}");

    let d1 = env.path("d1-only");
    env.restore(&d1, &["--path", "data/d1"]).assert_success();
    assert_trees_equal(&src.join("data/d1"), &d1);

    // A damaged byte in the last full volume: the restore fails, names it, and leaves
    // no target behind.
    let last = full_volumes
        .iter()
        .max_by_key(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let n = name
                .split(".vol")
                .nth(1)
                .unwrap()
                .split('.')
                .next()
                .unwrap();
            n.parse::<u32>().unwrap()
        })
        .unwrap();
    let good = std::fs::read(last).unwrap();
    let mut bad = good.clone();
    let middle = bad.len() / 2;
    bad[middle] ^= 0x01;
    std::fs::write(last, &bad).unwrap();
    let failed = env.path("failed");
    env.restore(&failed, &[])
        .assert_failure()
        .assert_output_contains(&last.file_name().unwrap().to_string_lossy());
    assert!(!failed.exists(), "a failed restore leaves no target");
    std::fs::write(last, &good).unwrap();

    // Each lane checks what it writes: a signature altered in a late segment is found.
    let sigtar = files_under(&env.state)
        .into_iter()
        .find(|p| {
            p.to_string_lossy().ends_with(".sigtar")
                && p.to_string_lossy().contains("full-signatures")
        })
        .expect("full signatures in the cache");
    let mut tar = std::fs::read(&sigtar).unwrap();
    let at = tar_member_offset(&tar, "signature/data/d3/f7.bin").expect("d3/f7.bin's signature");
    tar[at + 12] ^= 0x55;
    std::fs::write(&sigtar, &tar).unwrap();
    let flagged = env.path("flagged");
    env.restore(&flagged, &[])
        .assert_code(1)
        .assert_output_contains(
            "differs: data/d3/f7.bin: data differs from the backup's signature",
        );
}
