//! Faults between the agent and the store: a proxy that answers 503, drops connections,
//! cuts responses mid-body and delays. Backups complete and restore correctly; a store
//! that goes away mid-run makes the run fail cleanly, leaving no set that looks complete.

use flotilla_common::storage::open_blocking_with;
use flotilla_tests::agent::{AgentEnv, copy_tree};
use flotilla_tests::faults::{FaultProxy, Faults};
use flotilla_tests::stores::{Service, TestStore};
use flotilla_tests::{TreeBuilder, assert_trees_equal, deterministic_bytes, deterministic_text};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const T1: i64 = 1_700_000_000;
const T2: i64 = 1_700_003_600;
const T3: i64 = 1_700_007_200;

/// The service's `host:port`, and the agent environment that reaches it through `proxy`.
fn through_proxy(ts: &TestStore, proxy: &FaultProxy) -> (Vec<(String, String)>, String) {
    match ts.service {
        Service::Azurite => {
            let cs = &ts.env[0].1;
            let endpoint = std::env::var("AZURE_STORAGE_ENDPOINT").expect("AZURE_STORAGE_ENDPOINT");
            let u = url_host(&endpoint);
            let proxied = cs.replace(&format!("http://{u}/"), &format!("{}/", proxy.url()));
            assert_ne!(&proxied, cs, "connection string has no BlobEndpoint on {u}");
            (vec![("AZURE_STORAGE_CONNECTION_STRING".into(), proxied)], u)
        }
        Service::Swift => {
            let auth = std::env::var("SWIFT_AUTHURL").expect("SWIFT_AUTHURL");
            let u = url_host(&auth);
            let env = ts
                .env
                .iter()
                .map(|(k, v)| {
                    // TempAuth builds the storage URL from the Host header: everything
                    // goes through the proxy.
                    (
                        k.clone(),
                        v.replace(&format!("http://{u}/"), &format!("{}/", proxy.url())),
                    )
                })
                .collect();
            (env, u)
        }
        Service::File => unreachable!(),
    }
}

fn url_host(url: &str) -> String {
    url.trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

fn upstream(service: Service) -> String {
    let var = match service {
        Service::Azurite => "AZURE_STORAGE_ENDPOINT",
        _ => "SWIFT_AUTHURL",
    };
    url_host(&std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} unset: run via deploy/test.sh or source deploy/services/env.sh")
    }))
}

fn build_tree(src: &Path) {
    let t = TreeBuilder::new(src);
    for i in 0..4u64 {
        t.file(
            format!("data/blob{i}.bin"),
            deterministic_bytes(10 + i, 3 << 20),
        );
    }
    for i in 0..40u64 {
        t.file(
            format!("etc/conf{i}.txt"),
            deterministic_text(100 + i, 2000),
        );
    }
    t.set_all_mtimes(1_690_000_000);
}

fn change_tree(src: &Path, seed: u64, mtime: i64) {
    let t = TreeBuilder::new(src);
    let mut b = std::fs::read(src.join("data/blob1.bin")).unwrap();
    b[1_000_000..1_300_000].copy_from_slice(&deterministic_bytes(seed, 300_000));
    t.file_with("data/blob1.bin", &b, 0o644, mtime);
    t.file_with(
        format!("data/new{seed}.bin"),
        deterministic_bytes(seed, 2 << 20),
        0o644,
        mtime,
    );
    t.set_mtime(".", mtime).set_mtime("data", mtime);
}

fn backup_and_restore_through_faults(service: Service) {
    let ts = TestStore::new(service, "faults");
    let proxy = FaultProxy::start(
        &upstream(service),
        Faults {
            error: 0.12,
            drop: 0.08,
            cut: 0.08,
            slow: 0.08,
            delay: Duration::from_millis(300),
            seed: 20261122,
        },
    );
    let (env_vars, _) = through_proxy(&ts, &proxy);
    let env = AgentEnv::remote(ts.url(), env_vars);
    let src = env.path("src");
    build_tree(&src);
    let snap1 = env.path("snap1");
    copy_tree(&src, &snap1);
    let small_volumes = ["--volsize", "1"];
    env.backup(
        &src,
        &[&small_volumes[..], &["--current-time", &T1.to_string()]].concat(),
    )
    .assert_success();
    change_tree(&src, 7, 1_700_001_000);
    env.backup(
        &src,
        &[&small_volumes[..], &["--current-time", &T2.to_string()]].concat(),
    )
    .assert_success();
    for (time, expected) in [(T1, snap1.as_path()), (T2, src.as_path())] {
        let target = env.path(&format!("restore-{time}"));
        env.restore(&target, &["--time", &time.to_string()])
            .assert_success();
        assert_trees_equal(expected, &target);
    }
    let c = proxy.counters();
    let seen = format!("{:?}", c.snapshot());
    assert!(
        c.errors.load(Ordering::Relaxed) > 0,
        "no 503 injected: {seen}"
    );
    assert!(
        c.drops.load(Ordering::Relaxed) > 0,
        "no dropped connection: {seen}"
    );
    assert!(
        c.cuts.load(Ordering::Relaxed) > 0,
        "no cut response: {seen}"
    );
    assert!(c.delays.load(Ordering::Relaxed) > 0, "no delay: {seen}");
    eprintln!("proxy [passed, 503s, drops, cuts, delays, refused] = {seen}");
}

fn store_down_fails_cleanly(service: Service) {
    let ts = TestStore::new(service, "down");
    let proxy = FaultProxy::start(&upstream(service), Faults::none());
    let (env_vars, _) = through_proxy(&ts, &proxy);
    let env = AgentEnv::remote(ts.url(), env_vars);
    let src = env.path("src");
    build_tree(&src);
    env.backup(&src, &["--volsize", "1", "--current-time", &T1.to_string()])
        .assert_success();

    // The store dies a few requests into the incremental.
    change_tree(&src, 8, 1_700_001_000);
    proxy.go_down_after(4);
    let started = Instant::now();
    let out = env
        .cmd()
        .args(["--storage-retries", "3", "--storage-retry-time", "3"])
        .arg("backup")
        .arg(&src)
        .arg(env.url())
        .args(["--volsize", "1", "--current-time", &T2.to_string()])
        .run();
    out.assert_failure();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(60), "failing took {took:?}");
    assert!(out.stderr_str().contains(&ts.url()), "{}", out.combined());

    // Nothing of the failed run looks complete: no manifest of it was stored.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let direct = open_blocking_with(&ts.url(), &ts.account_options(), rt.handle().clone()).unwrap();
    let names: Vec<String> = direct.list().unwrap().into_iter().map(|o| o.name).collect();
    let t2 = "20231114T231320Z";
    assert!(
        !names
            .iter()
            .any(|n| n.contains(t2) && n.contains("manifest")),
        "a manifest of the failed set exists: {names:?}"
    );
    // The service is back: the next incremental succeeds and restores correctly.
    proxy.set_down(false);
    // The failed set shows as incomplete at most, never as a backup to restore.
    let status = env.cmd().arg("status").arg(env.url()).arg("--json").run();
    status.assert_success();
    let status: serde_json::Value = serde_json::from_str(&status.stdout_str()).unwrap();
    let complete: Vec<&serde_json::Value> = status["chains"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["sets"].as_array().into_iter().flatten())
        .collect();
    assert_eq!(
        complete.len(),
        1,
        "only the first full is complete: {status}"
    );
    eprintln!("store down: {}", out.stderr_str().trim());
    change_tree(&src, 9, 1_700_005_000);
    env.backup(&src, &["--volsize", "1", "--current-time", &T3.to_string()])
        .assert_success();
    let target = env.path("restore");
    env.restore(&target, &[]).assert_success();
    assert_trees_equal(&src, &target);
}

#[test]
fn azurite_backup_and_restore_through_faults() {
    backup_and_restore_through_faults(Service::Azurite);
}

#[test]
fn azurite_store_down_fails_cleanly() {
    store_down_fails_cleanly(Service::Azurite);
}

#[test]
fn swift_backup_and_restore_through_faults() {
    backup_and_restore_through_faults(Service::Swift);
}

#[test]
fn swift_store_down_fails_cleanly() {
    store_down_fails_cleanly(Service::Swift);
}
