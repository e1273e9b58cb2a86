//! Smoke tests of the test harness itself: tree comparison, gpg, and the
//! duplicity fixture.

use std::collections::BTreeMap;
use std::path::Path;

use flotilla_tests::fixture::{self, ListEntry};
use flotilla_tests::tree::escape_path;
use flotilla_tests::{
    CompareOptions, DiffKind, Difference, EntryKind, GpgHome, TreeBuilder, TreeSnapshot, compare,
    deterministic_bytes,
};

fn make_tree(root: &Path) -> TreeBuilder {
    let b = TreeBuilder::new(root);
    b.file_with(
        "data.bin",
        deterministic_bytes(42, 10_000),
        0o644,
        1_650_000_000,
    )
    .file_with("docs/readme.txt", "read me\n", 0o600, 1_650_000_001)
    .file_with("victim", "to be removed\n", 0o644, 1_650_000_002)
    .file_with("shape", "becomes a directory\n", 0o644, 1_650_000_003)
    .symlink("link", "data.bin")
    .fifo("pipe", 0o600)
    .set_all_mtimes(1_650_000_000);
    b
}

fn snap(p: &Path) -> TreeSnapshot {
    TreeSnapshot::capture(p).unwrap()
}

#[test]
fn compare_detects_each_kind_of_change() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    make_tree(a.path());
    let tb = make_tree(b.path());
    let opts = CompareOptions::default();
    assert_eq!(compare(&snap(a.path()), &snap(b.path()), &opts), vec![]);

    // one changed byte, same size and mtime
    let mut data = deterministic_bytes(42, 10_000);
    data[5_000] ^= 1;
    tb.file("data.bin", &data)
        .set_mtime("data.bin", 1_650_000_000);
    // mode only
    tb.chmod("docs/readme.txt", 0o640);
    // mtime only
    tb.set_mtime("pipe", 1_650_000_099);
    // missing file
    tb.remove("victim");
    // type change: file -> directory
    tb.remove("shape").dir("shape/inner");
    tb.set_mtime("shape/inner", 1_650_000_000)
        .set_mtime("shape", 1_650_000_000)
        .set_mtime("docs", 1_650_000_000)
        .set_mtime(".", 1_650_000_000);

    let diffs = compare(&snap(a.path()), &snap(b.path()), &opts);
    let expected = vec![
        Difference {
            path: b"data.bin".to_vec(),
            kind: DiffKind::Content,
        },
        Difference {
            path: b"docs/readme.txt".to_vec(),
            kind: DiffKind::Mode {
                expected: 0o600,
                actual: 0o640,
            },
        },
        Difference {
            path: b"pipe".to_vec(),
            kind: DiffKind::Mtime {
                expected: 1_650_000_000,
                actual: 1_650_000_099,
            },
        },
        Difference {
            path: b"shape".to_vec(),
            kind: DiffKind::Kind {
                expected: EntryKind::File,
                actual: EntryKind::Dir,
            },
        },
        Difference {
            path: b"victim".to_vec(),
            kind: DiffKind::Missing { below: 0 },
        },
    ];
    assert_eq!(diffs, expected);
    let text: Vec<String> = diffs.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            "\"data.bin\": content differs (same size, different SHA-256)",
            "\"docs/readme.txt\": mode differs: expected 0600, actual 0640",
            "\"pipe\": mtime differs: expected 1650000000, actual 1650000099 (+99 s)",
            "\"shape\": kind differs: expected regular file, actual directory",
            "\"victim\": missing",
        ]
    );

    // and assert_trees_equal reports them all
    let err = std::panic::catch_unwind(|| {
        flotilla_tests::assert_trees_equal(a.path(), b.path());
    })
    .unwrap_err();
    let msg = err.downcast_ref::<String>().unwrap();
    assert!(msg.contains("5 difference(s)"), "{msg}");
    for line in &text {
        assert!(msg.contains(line.as_str()), "{msg}");
    }
}

#[test]
fn gpg_symmetric_round_trip() {
    let gpg = GpgHome::new();
    let plain = deterministic_bytes(7, 200_000);
    let msg = gpg.encrypt_symmetric(&plain, "correct horse");
    assert_ne!(msg, plain);
    let out = gpg.decrypt(&msg, Some("correct horse")).unwrap();
    assert_eq!(out.plaintext, plain);
    assert!(out.has_status("DECRYPTION_OKAY"), "{:?}", out.status);
    assert!(gpg.decrypt(&msg, Some("wrong")).is_err());
}

/// Checks a captured tree against a fixture listing: same paths, kinds, modes,
/// sizes, mtimes (not for symlinks), file hashes and link targets.
fn check_against_list(snapshot: &TreeSnapshot, list: &[ListEntry]) {
    let listed: BTreeMap<&[u8], &ListEntry> = list.iter().map(|e| (e.path.as_slice(), e)).collect();
    let captured: Vec<&[u8]> = snapshot.paths().collect();
    let listed_paths: Vec<&[u8]> = listed.keys().copied().collect();
    assert_eq!(
        captured.iter().map(|p| escape_path(p)).collect::<Vec<_>>(),
        listed_paths
            .iter()
            .map(|p| escape_path(p))
            .collect::<Vec<_>>()
    );
    for (path, l) in listed {
        let e = snapshot.get(path).unwrap();
        let name = escape_path(path);
        assert_eq!(e.kind.as_str(), l.kind, "{name}");
        assert_eq!(e.mode, l.mode, "{name}");
        assert_eq!(e.size, l.size, "{name}");
        if e.kind != EntryKind::Symlink {
            assert_eq!(Some(e.mtime), l.mtime, "{name}");
        }
        assert_eq!(e.sha256_hex(), l.sha256, "{name}");
        assert_eq!(e.link_target, l.link_target, "{name}");
    }
}

#[test]
fn duplicity_fixture_matches_its_listings() {
    let dir = fixture::duplicity_fixture();
    let mut names: Vec<String> = std::fs::read_dir(dir.join("store"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, fixture::OBJECT_NAMES);
    assert!(dir.join("fixture-info.txt").is_file());

    let t1 = fixture::expected_list(1);
    assert!(t1.len() > 20, "{t1:?}");
    // the listing has the awkward names
    assert!(t1.iter().any(|e| e.path == b"latin1-\xe9.txt"));
    assert!(t1.iter().any(|e| e.path == b"name with spaces.txt"));
    let big = t1.iter().find(|e| e.path == b"big.bin").unwrap();
    assert_eq!((big.size, big.mtime), (3_000_000, Some(1_600_000_000)));
    check_against_list(&snap(&fixture::expected_dir(1)), &t1);
    check_against_list(&snap(&fixture::expected_dir(2)), &fixture::expected_list(2));

    // a second call returns the same, already built directory
    assert_eq!(fixture::duplicity_fixture(), dir);
}
