//! Compression worker threads start lazily and always stop (finish, drop, drop after error).
//! A separate test binary with a single test, so that other tests' threads do not interfere.

mod crypto_support;

use std::io::Write;

use crypto_support::*;
use flotilla_common::crypto::{Compression, EncryptionSpec};

fn workers() -> usize {
    thread_names()
        .iter()
        .filter(|n| n.starts_with("pgp-deflate"))
        .count()
}

fn encrypters() -> usize {
    thread_names()
        .iter()
        .filter(|n| n.starts_with("pgp-encrypt"))
        .count()
}

/// `count()` once it equals `want`, or its last value after a few seconds: a joined thread
/// leaves `/proc/self/task` a moment after `pthread_join` returns (the kernel wakes the
/// joiner before it has reaped the task), so a count taken right after a join may still
/// include it.
fn settled(count: fn() -> usize, want: usize) -> usize {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let n = count();
        if n == want || std::time::Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn worker_threads_are_bounded_and_always_joined() {
    let data = random_bytes(6 << 20, 1);
    let spec = EncryptionSpec {
        passphrase: Some("pw".into()),
        ..spec(Compression::Zip { level: 1 }, 4)
    };

    // Small message: no threads at all.
    let mut w = spec.writer(Vec::new()).unwrap();
    w.write_all(&data[..1000]).unwrap();
    assert_eq!(settled(workers, 0), 0);
    w.finish().unwrap();

    // Large message: 4 workers and the encryption thread while writing, none after finish.
    let mut w = spec.writer(Vec::new()).unwrap();
    w.write_all(&data).unwrap();
    assert_eq!(workers(), 4);
    assert_eq!(encrypters(), 1);
    let msg = w.finish().unwrap();
    assert_eq!(settled(workers, 0), 0);
    assert_eq!(settled(encrypters, 0), 0);
    assert!(decrypt(&pw_keys("pw"), &msg).unwrap() == data);

    // Dropped without finish.
    let mut w = spec.writer(Vec::new()).unwrap();
    w.write_all(&data).unwrap();
    assert_eq!(workers(), 4);
    drop(w);
    assert_eq!(settled(workers, 0), 0);
    assert_eq!(settled(encrypters, 0), 0);

    // Output fails mid-way: the write errors, the drop does not hang.
    let mut w = spec.writer(FailingAfter(1 << 20, "broken pipe")).unwrap();
    let mut failed = false;
    for _ in 0..20 {
        if w.write_all(&data).is_err() {
            failed = true;
            break;
        }
    }
    assert!(failed);
    assert_eq!(
        settled(workers, 0),
        0,
        "threads stop as soon as the writer fails"
    );
    assert_eq!(settled(encrypters, 0), 0);
    drop(w);
    assert_eq!(settled(workers, 0), 0);

    // compression_threads = 1: everything inline.
    let inline = EncryptionSpec {
        compression_threads: 1,
        ..spec.clone()
    };
    let mut w = inline.writer(Vec::new()).unwrap();
    w.write_all(&data).unwrap();
    assert_eq!(settled(workers, 0), 0);
    assert_eq!(settled(encrypters, 0), 0);
    w.finish().unwrap();
}
