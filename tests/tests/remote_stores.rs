//! `flotilla-agent` backing up to and restoring from the real services (Azurite, Swift):
//! with account credentials, and with only the scoped credentials the coordinator mints.

use flotilla_common::storage::{
    Access, Credentials, Destination, OpenOptions, ScopedCredential, StorageError,
    open_blocking_with,
};
use flotilla_tests::agent::{AgentEnv, copy_tree};
use flotilla_tests::bins::Cmd;
use flotilla_tests::stores::{Service, TestStore};
use flotilla_tests::{TreeBuilder, assert_trees_equal, deterministic_bytes, deterministic_text};
use std::path::Path;

const T1: i64 = 1_700_000_000;
const T2: i64 = 1_700_003_600;

fn build_tree(src: &Path) {
    TreeBuilder::new(src)
        .file_with("etc/app.conf", b"port = 8080\n", 0o640, 1_690_000_000)
        .file("var/log/app.log", deterministic_text(1, 300_000))
        // Incompressible and larger than one upload part (8 MiB): a multipart upload.
        .file("var/lib/db.bin", deterministic_bytes(2, 12 << 20))
        .file("empty", b"")
        .symlink("current", "etc/app.conf")
        .dir("var/cache")
        // Fixed times: like duplicity, change detection compares whole-second mtimes.
        .set_all_mtimes(1_690_000_000);
}

fn change_tree(src: &Path) {
    let t = TreeBuilder::new(src);
    let mut db = std::fs::read(src.join("var/lib/db.bin")).unwrap();
    db[5_000_000..5_100_000].copy_from_slice(&deterministic_bytes(3, 100_000));
    t.file_with("var/lib/db.bin", &db, 0o600, 1_700_001_000);
    let mut log = std::fs::read(src.join("var/log/app.log")).unwrap();
    log.extend_from_slice(&deterministic_text(4, 50_000));
    t.file_with("var/log/app.log", &log, 0o644, 1_700_001_000);
    t.remove("empty");
    t.file_with("etc/new.conf", b"added\n", 0o644, 1_700_001_000);
    t.set_mtime(".", 1_700_001_000)
        .set_mtime("etc", 1_700_001_000);
}

/// Full, incremental, restore at both times; `env` decides the credentials.
fn full_incremental_restore(
    env: &AgentEnv,
    mut before_each: impl FnMut(&AgentEnv, Access) -> Vec<String>,
) {
    let src = env.path("src");
    build_tree(&src);
    let snap1 = env.path("snap1");
    copy_tree(&src, &snap1);
    let args = before_each(env, Access::Backup);
    let mut c = env.cmd().args(&args).arg("backup").arg(&src).arg(env.url());
    c = c.args(["--volsize", "10", "--current-time", &T1.to_string()]);
    let out = c.run();
    out.assert_success();
    assert!(out.combined().contains("Full backup"), "{}", out.combined());

    change_tree(&src);
    let args = before_each(env, Access::Backup);
    let out = env
        .cmd()
        .args(&args)
        .arg("backup")
        .arg(&src)
        .arg(env.url())
        .args(["--volsize", "10", "--current-time", &T2.to_string()])
        .run();
    out.assert_success();
    assert!(
        out.combined().contains("Incremental backup"),
        "{}",
        out.combined()
    );

    for (time, expected) in [(T1, snap1.as_path()), (T2, src.as_path())] {
        let target = env.path(&format!("restore-{time}"));
        let args = before_each(env, Access::Restore);
        env.cmd()
            .args(&args)
            .arg("restore")
            .arg(env.url())
            .arg(&target)
            .args(["--time", &time.to_string()])
            .run()
            .assert_success();
        assert_trees_equal(expected, &target);
    }
    // verify reads every volume back and compares with the source.
    let args = before_each(env, Access::Restore);
    env.cmd()
        .args(&args)
        .arg("verify")
        .arg(env.url())
        .arg(&src)
        .run()
        .assert_success();
}

fn with_account_credentials(service: Service) {
    let ts = TestStore::new(service, "e2e");
    let env = AgentEnv::remote(ts.url(), ts.env.clone());
    full_incremental_restore(&env, |_, _| vec![]);
    // Only complete sets, no stray parts or segments at the top level.
    let out = env.cmd().arg("status").arg(env.url()).arg("--json").run();
    out.assert_success();
    let status: serde_json::Value = serde_json::from_str(&out.stdout_str()).unwrap();
    let text = status.to_string();
    assert!(!text.contains("incomplete\":[{"), "{text}");
}

/// Mints with the real `flotilla mint-credential`, from account credentials the agent
/// never sees.
fn mint(ts: &TestStore, env: &AgentEnv, access: Access) -> Vec<String> {
    let file = env.path(&format!("cred-{}.json", access.as_str()));
    Cmd::coordinator()
        .args([
            "mint-credential",
            "--access",
            access.as_str(),
            "--ttl",
            "1h",
            "-o",
        ])
        .arg(&file)
        .arg(ts.url())
        .envs(ts.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .run()
        .assert_success();
    let text = std::fs::read_to_string(&file).unwrap();
    let cred = ScopedCredential::from_json(&text).expect("minted credential parses");
    assert_eq!(cred.access(), access);
    vec!["--credentials".into(), file.display().to_string()]
}

fn with_scoped_credentials(service: Service) {
    let ts = TestStore::new(service, "scoped");
    // The agent gets no storage environment at all.
    let env = AgentEnv::remote(ts.url(), vec![]);
    full_incremental_restore(&env, |env, access| mint(&ts, env, access));
}

/// A backup credential cannot delete or reach another host's container:
/// the store itself refuses (our local scope check is bypassed) and the error says so.
fn scoped_backup_credential_refusals(service: Service) {
    let ts = TestStore::new(service, "host-a");
    let other = TestStore::new(service, "host-b");
    let rt = &ts.rt;
    // Objects in both containers, written with the account credentials.
    let a = open_blocking_with(&ts.url(), &ts.account_options(), rt.handle().clone()).unwrap();
    a.put_bytes(
        "duplicity-full.20231114T221320Z.manifest.gpg",
        b"old".to_vec(),
    )
    .unwrap();
    let b =
        open_blocking_with(&other.url(), &other.account_options(), rt.handle().clone()).unwrap();
    b.put_bytes("secret-of-b", b"b's data".to_vec()).unwrap();

    let cred = rt
        .block_on(flotilla_common::storage::scoped::mint(
            &ts.destination,
            &ts.account_options().credentials,
            Access::Backup,
            std::time::Duration::from_secs(600),
        ))
        .unwrap();
    let scoped = OpenOptions {
        credentials: Credentials::Scoped(cred.clone()),
        ..OpenOptions::default()
    };
    let s = open_blocking_with(&ts.url(), &scoped, rt.handle().clone()).unwrap();
    // What a backup needs works.
    s.put_bytes("new-object", b"new".to_vec()).unwrap();
    assert_eq!(s.get_bytes("new-object").unwrap(), b"new");
    let names: Vec<String> = s.list().unwrap().into_iter().map(|o| o.name).collect();
    assert!(
        names.contains(&"duplicity-full.20231114T221320Z.manifest.gpg".to_string()),
        "{names:?}"
    );

    // Delete: refused by the store, reported as a credentials problem.
    let e = s
        .delete("duplicity-full.20231114T221320Z.manifest.gpg")
        .unwrap_err();
    assert!(matches!(e, StorageError::Denied { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains(&ts.url()) && msg.contains("credentials"),
        "{msg}"
    );
    assert_eq!(
        a.get_bytes("duplicity-full.20231114T221320Z.manifest.gpg")
            .unwrap(),
        b"old",
        "the object survived"
    );

    // Another host's container: our scope check refuses first...
    let e = open_blocking_with(&other.url(), &scoped, rt.handle().clone())
        .err()
        .expect("scope check");
    assert!(e.to_string().contains("scoped credential is for"), "{e}");
    // ...and the store refuses too, when the same secret is aimed at it directly.
    let foreign = other_container_with_same_secret(&cred, &other.destination);
    let f = open_blocking_with(&other.url(), &foreign, rt.handle().clone()).unwrap();
    let e = f.get_bytes("secret-of-b").unwrap_err();
    assert!(
        matches!(e, StorageError::Denied { .. }),
        "read other: {e:?}"
    );
    assert!(e.to_string().contains("credentials"), "{e}");
    let e = f.list().unwrap_err();
    assert!(
        matches!(e, StorageError::Denied { .. }),
        "list other: {e:?}"
    );
    if service == Service::Swift {
        // TempURLs never list: the server refuses a container GET with the signature.
        let json: serde_json::Value = serde_json::from_str(&cred.to_json()).unwrap();
        let g = &json["grant"];
        for container in [
            ts.destination.container().unwrap(),
            other.destination.container().unwrap(),
        ] {
            let url = format!(
                "{}/{container}?temp_url_sig={}&temp_url_expires={}&temp_url_prefix=",
                g["storage_url"].as_str().unwrap(),
                g["signatures"]["GET"].as_str().unwrap(),
                g["expires"]
            );
            let code = std::process::Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &url])
                .output()
                .expect("curl");
            assert_eq!(
                String::from_utf8_lossy(&code.stdout),
                "401",
                "listing {container}"
            );
        }
    }
}

/// The scoped credential's secret re-labelled for another container (what a
/// compromised agent could try).
fn other_container_with_same_secret(cred: &ScopedCredential, other: &Destination) -> OpenOptions {
    let mut json: serde_json::Value = serde_json::from_str(&cred.to_json()).unwrap();
    if json.get("grant").is_none() {
        json["container"] = serde_json::Value::String(other.container().unwrap().to_string());
    } else {
        json["grant"]["container"] = serde_json::Value::String(other.container().unwrap().into());
        json["grant"]["listing"] = serde_json::Value::Null;
    }
    let forged = ScopedCredential::from_json(&json.to_string()).unwrap();
    OpenOptions {
        credentials: Credentials::Scoped(forged),
        ..OpenOptions::default()
    }
}

#[test]
fn azurite_backup_incremental_restore() {
    with_account_credentials(Service::Azurite);
}

#[test]
fn azurite_scoped_credentials_only() {
    with_scoped_credentials(Service::Azurite);
}

#[test]
fn azurite_scoped_backup_credential_refusals() {
    scoped_backup_credential_refusals(Service::Azurite);
}

/// Stock duplicity restores what flotilla-agent wrote, straight from the service, the
/// way a user would in a disaster without Flotilla.
fn duplicity_restores_from(service: Service) {
    use flotilla_tests::duplicity::Duplicity;
    let ts = TestStore::new(service, "dup");
    let env = AgentEnv::remote(ts.url(), ts.env.clone());
    let src = env.path("src");
    build_tree(&src);
    let snap1 = env.path("snap1");
    copy_tree(&src, &snap1);
    env.backup(
        &src,
        &["--volsize", "10", "--current-time", &T1.to_string()],
    )
    .assert_success();
    change_tree(&src);
    env.backup(
        &src,
        &["--volsize", "10", "--current-time", &T2.to_string()],
    )
    .assert_success();

    let mut dup = Duplicity::new().with_passphrase("test-passphrase");
    match service {
        Service::Azurite => {
            let site = std::env::var("FLOTILLA_DUPLICITY_AZURE_SITE").expect(
                "FLOTILLA_DUPLICITY_AZURE_SITE unset: run via deploy/test.sh (installs the \
                 Azure SDK for duplicity with deploy/services/install-duplicity.sh)",
            );
            let cs = ts
                .env
                .iter()
                .find(|(k, _)| k == "AZURE_STORAGE_CONNECTION_STRING");
            dup = dup
                .with_env("PYTHONPATH", site)
                .with_env("AZURE_CONNECTION_STRING", &cs.expect("connection string").1);
        }
        Service::Swift => {
            for (k, v) in &ts.env {
                dup = dup.with_env(k, v);
            }
        }
        Service::File => unreachable!("duplicity's file:// interop is in interop_duplicity.rs"),
    }
    for (time, expected) in [(T1, snap1.as_path()), (T2, src.as_path())] {
        let target = env.path(&format!("dup-restore-{time}"));
        dup.run([
            "restore".to_string(),
            "--time".into(),
            time.to_string(),
            ts.url(),
            target.display().to_string(),
        ])
        .assert_success();
        assert_trees_equal(expected, &target);
    }
    // duplicity's own view of the chain: one full, one incremental.
    let out = dup.run(["collection-status".to_string(), ts.url()]);
    out.assert_success();
    let text = out.stdout_str();
    assert!(
        text.contains("Full") && text.contains("Incremental"),
        "{text}"
    );
}

#[test]
fn duplicity_restores_from_azurite() {
    duplicity_restores_from(Service::Azurite);
}

#[test]
fn swift_backup_incremental_restore() {
    with_account_credentials(Service::Swift);
}

#[test]
fn swift_scoped_credentials_only() {
    with_scoped_credentials(Service::Swift);
}

#[test]
fn swift_scoped_backup_credential_refusals() {
    scoped_backup_credential_refusals(Service::Swift);
}

#[test]
fn duplicity_restores_from_swift() {
    duplicity_restores_from(Service::Swift);
}
