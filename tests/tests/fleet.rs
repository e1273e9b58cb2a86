//! The fleet end to end, as separate processes on loopback: `flotilla serve`, several
//! `flotilla-agent run` daemons with their own state directories, the admin CLI, and
//! the real storage services (Azurite, Swift). Agents have no storage credentials of
//! their own: every job carries one minted by the coordinator.

use flotilla_tests::duplicity::Duplicity;
use flotilla_tests::fleet::{Agent, Coordinator, job_state, wait_for};
use flotilla_tests::stores::unique_container;
use flotilla_tests::{TreeBuilder, assert_trees_equal, deterministic_bytes};
use std::path::Path;
use std::time::Duration;

const PASSPHRASE: &str = "fleet-test-passphrase";

fn env_file(path: &Path, prefixes: &[&str]) {
    let mut text = String::new();
    for (k, v) in std::env::vars() {
        if prefixes.iter().any(|p| k.starts_with(p)) {
            text.push_str(&format!("{k}={v}\n"));
        }
    }
    assert!(
        !text.is_empty(),
        "no {prefixes:?} variables: run the tests with `bash deploy/test.sh` (or source \
         deploy/services/env.sh)"
    );
    std::fs::write(path, text).unwrap();
}

fn small_tree(root: &Path, seed: u64) {
    TreeBuilder::new(root)
        .file("etc/hosts", format!("127.0.0.1 localhost # {seed}\n"))
        .file("etc/app.conf", deterministic_bytes(seed, 40_000))
        .file("var/data.bin", deterministic_bytes(seed + 1, 300_000))
        .dir("var/empty");
}

/// Runs a backup of HOST now and waits for it; returns the finished job.
fn backup_now(c: &Coordinator, host: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["backup", host, "--wait"];
    args.extend_from_slice(extra);
    c.json(&args)
}

fn chains(c: &Coordinator, host: &str) -> Vec<Vec<serde_json::Value>> {
    let v = c.json(&["chains", host]);
    v["chains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_array().unwrap().clone())
        .collect()
}

/// A coordinator and three agents: two back up to Azurite, one to Swift, each its own
/// directory into its own container. Policy rollout is acknowledged by every agent
/// within seconds; on-demand and scheduled backups run; `chains` shows the sets; stock
/// duplicity restores one host from its container.
#[test]
fn three_agents_policy_rollout_backups_and_duplicity_restore() {
    let tmp = tempfile::Builder::new()
        .prefix("flotilla-fleet-")
        .tempdir()
        .unwrap();
    let root = tmp.path();
    env_file(
        &root.join("azure.env"),
        &["AZURE_STORAGE_CONNECTION_STRING"],
    );
    env_file(&root.join("swift.env"), &["SWIFT_"]);
    let c = Coordinator::start(
        &root.join("coordinator"),
        &format!(
            "heartbeat_secs = 2\n[account.azurite]\nenv_file = {:?}\n[account.swift]\nenv_file = {:?}\n",
            root.join("azure.env").display().to_string(),
            root.join("swift.env").display().to_string()
        ),
    );
    let prefix = format!("{}-", unique_container("fl"));
    let pass = [("FLOTILLA_PASSPHRASE", PASSPHRASE)];
    let mut agents: Vec<Agent> = ["web-a", "web-b", "db-c"]
        .iter()
        .map(|name| Agent::enroll(&c, root, name, &format!("node={name}"), &pass))
        .collect();
    for (i, a) in agents.iter().enumerate() {
        small_tree(&root.join(format!("src-{}", a.name)), i as u64 * 10);
    }
    for a in &mut agents {
        a.start();
    }
    wait_for(Duration::from_secs(20), "three connected agents", || {
        let hosts = c.hosts();
        (hosts.iter().filter(|h| h["connected"] == true).count() == 3).then_some(())
    });

    let policy = format!(
        r#"
[destination.azure]
kind = "azure"
account = "azurite"
container_prefix = "{prefix}"

[destination.swift]
kind = "swift"
account = "swift"
container_prefix = "{prefix}"

[policy.web-a]
select = {{ node = "web-a" }}
sources = ["{root}/src-web-a"]
schedule = "* * * * *"
destination = "azure"
volsize_mb = 1

[policy.web-b]
select = {{ node = "web-b" }}
sources = ["{root}/src-web-b"]
schedule = "* * * * *"
destination = "azure"

[policy.db-c]
select = {{ node = "db-c" }}
sources = ["{root}/src-db-c"]
schedule = "* * * * *"
destination = "swift"
"#,
        root = root.display()
    );
    let policy_file = root.join("policies.toml");
    std::fs::write(&policy_file, &policy).unwrap();
    let dry = c.json(&[
        "policy",
        "apply",
        policy_file.to_str().unwrap(),
        "--dry-run",
    ]);
    assert_eq!(dry["stored"], false);
    assert_eq!(dry["changes"].as_array().unwrap().len(), 3, "{dry}");
    let applied = c.json(&["policy", "apply", policy_file.to_str().unwrap()]);
    let revision = applied["revision"].as_u64().unwrap();
    let started = std::time::Instant::now();
    wait_for(
        Duration::from_secs(10),
        "every agent to acknowledge the policy revision",
        || {
            c.hosts()
                .iter()
                .all(|h| h["policy_revision_applied"].as_u64() == Some(revision))
                .then_some(())
        },
    );
    eprintln!("rollout to 3 agents: {:?}", started.elapsed());
    let shown = c.run(&["policy", "show"]);
    shown.assert_success();
    assert!(shown.stdout_str().contains("[policy.web-a]"));

    // On demand, one per host.
    for a in &agents {
        let job = backup_now(&c, &a.host_id, &[]);
        assert_eq!(job_state(&job), "succeeded", "{job}");
        assert_eq!(job["set"]["kind"], "full", "{job}");
        assert!(job["set"]["files"].as_u64().unwrap() >= 3, "{job}");
    }
    // web-a's volsize of 1 MiB is respected (its 300 kB file is small; volumes >= 1).
    // Scheduled: every minute, so within ~70 s each host has a scheduled job that ran.
    for a in &agents {
        wait_for(
            Duration::from_secs(130),
            &format!("a scheduled backup of {}", a.host_id),
            || {
                c.jobs(&a.host_id)
                    .iter()
                    .any(|j| j["origin"] == "schedule" && job_state(j) == "succeeded")
                    .then_some(())
            },
        );
    }
    for a in &agents {
        let ch = chains(&c, &a.host_id);
        assert_eq!(ch.len(), 1, "{ch:?}");
        assert!(
            ch[0].len() >= 2,
            "a full and at least one incremental: {ch:?}"
        );
        assert_eq!(ch[0][0]["kind"], "full");
        assert_eq!(ch[0][1]["kind"], "incremental");
    }

    // Each host's objects are in its own container, and only there.
    let host_a = &agents[0].host_id;
    let azure_url = format!("azure://{prefix}{host_a}");
    let chains_json = c.json(&["chains", host_a]);
    assert_eq!(chains_json["destination"], azure_url.as_str());
    let swift_url = format!("swift://{prefix}{}", agents[2].host_id);
    assert_eq!(
        c.json(&["chains", &agents[2].host_id])["destination"],
        swift_url.as_str()
    );

    // Stock duplicity restores web-a straight from Azurite.
    let site = std::env::var("FLOTILLA_DUPLICITY_AZURE_SITE")
        .expect("FLOTILLA_DUPLICITY_AZURE_SITE unset: run via deploy/test.sh");
    let dup = Duplicity::new()
        .with_passphrase(PASSPHRASE)
        .with_env("PYTHONPATH", site)
        .with_env(
            "AZURE_CONNECTION_STRING",
            std::env::var("AZURE_STORAGE_CONNECTION_STRING").unwrap(),
        );
    let target = root.join("dup-restore");
    dup.run([
        "restore".to_string(),
        azure_url.clone(),
        target.display().to_string(),
    ])
    .assert_success();
    // The policy's source is an absolute path: the backup's root is "/" with only that
    // directory included, or the directory itself; accept either layout.
    let src = root.join("src-web-a");
    let inner = target.join(src.strip_prefix("/").unwrap());
    if inner.is_dir() {
        assert_trees_equal(&src, &inner);
    } else {
        assert_trees_equal(&src, &target);
    }
    // And the other hosts' containers hold their own sets.
    let status = dup.run(["collection-status".to_string(), azure_url]);
    status.assert_success();
    assert!(
        status.stdout_str().contains("Full"),
        "{}",
        status.stdout_str()
    );
}

fn file_fleet(root: &Path, extra_config: &str) -> (Coordinator, String) {
    let c = Coordinator::start(
        &root.join("coordinator"),
        &format!("heartbeat_secs = 1\njob_retry_delay_secs = 1\n{extra_config}"),
    );
    apply_file_policy(&c, root, "");
    let url = format!("{}/store/flotilla-", root.display());
    (c, url)
}

/// One policy for every host: `root/src` to the file destination `root/store`, with
/// `extra` policy lines.
fn apply_file_policy(c: &Coordinator, root: &Path, extra: &str) {
    let policy = format!(
        r#"
[destination.local]
kind = "file"
path = "{root}/store"

[policy.all]
sources = ["{root}/src"]
destination = "local"
volsize_mb = 5
{extra}
"#,
        root = root.display()
    );
    let f = root.join("policies.toml");
    std::fs::write(&f, policy).unwrap();
    c.json(&["policy", "apply", f.to_str().unwrap()]);
}

fn big_tree(root: &Path) {
    // Large enough that a backup takes a few seconds on this machine.
    let b = TreeBuilder::new(root);
    for i in 0..12u64 {
        b.file(format!("big/{i}.bin"), deterministic_bytes(i, 12 << 20));
    }
}

fn wait_running(c: &Coordinator, host: &str) -> String {
    wait_for(Duration::from_secs(30), "the job to run", || {
        c.jobs(host)
            .iter()
            .find(|j| job_state(j) == "running")
            .map(|j| j["job_id"].as_str().unwrap().to_string())
    })
}

fn outbox_len(a: &Agent) -> usize {
    std::fs::read_dir(a.state_dir.join("outbox"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// systemd stops the agent (SIGTERM) in the middle of a backup: the agent finishes the
/// set, reports it and exits 0; the catalog has the complete set, and it restores.
#[test]
fn agent_stopped_mid_backup_finishes_the_set_and_exits_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let b = TreeBuilder::new(root.join("src"));
    for i in 0..10_000u64 {
        b.file(format!("d{}/f{i}", i % 50), deterministic_bytes(i, 1024));
    }
    let (c, _) = file_fleet(root, "");
    // About 10 MB at 2 MB/s: the stop arrives mid-backup.
    apply_file_policy(&c, root, "bandwidth_limit_mb = 2");
    let pass = [("FLOTILLA_PASSPHRASE", PASSPHRASE)];
    let mut a = Agent::enroll(&c, root, "stop-a", "role=app", &pass);
    a.start();
    c.json(&["backup", &a.host_id]);
    let id = wait_running(&c, &a.host_id);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        c.jobs(&a.host_id)
            .iter()
            .any(|j| j["job_id"] == id.as_str() && job_state(j) == "running"),
        "the backup ended before the stop: make it slower"
    );
    let status = a.terminate(Duration::from_secs(120));
    assert!(status.success(), "agent exit on SIGTERM: {status}");
    a.start(); // delivers a result that was still in the outbox, if any
    let job = wait_for(
        Duration::from_secs(30),
        "the stopped agent's result",
        || {
            c.jobs(&a.host_id)
                .into_iter()
                .find(|j| j["job_id"] == id.as_str() && job_state(j) == "succeeded")
        },
    );
    assert_eq!(
        job["attempt"], 1,
        "the job was run again instead of finished: {job}"
    );
    let sets = chains(&c, &a.host_id);
    assert_eq!(sets.len(), 1, "{sets:?}");
    assert_eq!(sets[0].len(), 1, "{sets:?}");
    let target = root.join("restored");
    c.admin()
        .args(["restore", &a.host_id, "--target", target.to_str().unwrap()])
        .env("FLOTILLA_PASSPHRASE", PASSPHRASE)
        .run_ok();
    assert_trees_equal(&root.join("src"), &target);
}

/// The coordinator is killed during a backup: the agent finishes it, keeps the result,
/// and delivers it when the coordinator is back; the catalog then has the set, once.
#[test]
fn coordinator_killed_during_backup_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    big_tree(&root.join("src"));
    let (mut c, _) = file_fleet(root, "");
    let mut a = Agent::enroll(
        &c,
        root,
        "app-1",
        "role=app",
        &[("FLOTILLA_PASSPHRASE", PASSPHRASE)],
    );
    a.start();
    wait_for(Duration::from_secs(20), "the agent to connect", || {
        c.hosts()
            .iter()
            .any(|h| h["connected"] == true)
            .then_some(())
    });
    let job = c.json(&["backup", &a.host_id]);
    let job_id = job["job_id"].as_str().unwrap().to_string();
    wait_running(&c, &a.host_id);
    c.kill();
    wait_for(
        Duration::from_secs(120),
        "the agent to finish the job with the coordinator down (result in its outbox)",
        || (outbox_len(&a) > 0).then_some(()),
    );
    c.restart();
    let done = wait_for(
        Duration::from_secs(60),
        "the result to reach the catalog",
        || {
            c.jobs(&a.host_id)
                .into_iter()
                .find(|j| j["job_id"] == job_id.as_str() && job_state(j) == "succeeded")
        },
    );
    assert_eq!(done["set"]["kind"], "full", "{done}");
    wait_for(
        Duration::from_secs(10),
        "the outbox to empty after the ack",
        || (outbox_len(&a) == 0).then_some(()),
    );
    let ch = chains(&c, &a.host_id);
    assert_eq!(ch.len(), 1);
    assert_eq!(ch[0].len(), 1, "the set is counted once: {ch:?}");
    // The catalog rebuilt from the storage listing agrees.
    let rebuilt = c.json(&["catalog", "rebuild"]);
    assert_eq!(rebuilt["sets"], 1, "{rebuilt}");

    // Removing the host keeps its backups; its certificate stops working.
    let store = root.join(format!("store/flotilla-{}", a.host_id));
    let objects = std::fs::read_dir(&store).unwrap().count();
    assert!(objects >= 3, "{objects} objects in {}", store.display());
    c.run(&["host", "remove", &a.host_id]).assert_success();
    assert_eq!(
        std::fs::read_dir(&store).unwrap().count(),
        objects,
        "backups kept"
    );
    assert!(c.hosts().is_empty());
    let out = c.run(&["chains", &a.host_id]);
    assert!(
        !out.status.success() && out.stderr_str().contains("not enrolled"),
        "{}",
        out.stderr_str()
    );
}

/// With the coordinator down, the agent runs its scheduled backup from the cached
/// policy and delivers the result when the coordinator is back; the coordinator does
/// not run that slot again.
#[test]
fn agent_runs_its_schedule_while_the_coordinator_is_down() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    small_tree(&root.join("src"), 3);
    let (mut c, _) = file_fleet(root, "");
    let f = root.join("policies.toml");
    let text = std::fs::read_to_string(&f)
        .unwrap()
        .replace("volsize_mb = 5", "volsize_mb = 5\nschedule = \"* * * * *\"");
    std::fs::write(&f, text).unwrap();
    c.json(&["policy", "apply", f.to_str().unwrap()]);
    let mut a = Agent::enroll(
        &c,
        root,
        "edge-1",
        "role=edge",
        &[("FLOTILLA_PASSPHRASE", PASSPHRASE)],
    );
    a.start();
    wait_for(
        Duration::from_secs(20),
        "the agent to take the policy",
        || {
            c.hosts()
                .iter()
                .any(|h| h["policy_revision_applied"].as_u64() == Some(2))
                .then_some(())
        },
    );
    c.kill();
    wait_for(
        Duration::from_secs(90),
        "a scheduled backup run by the agent alone (result in its outbox)",
        || (outbox_len(&a) > 0).then_some(()),
    );
    c.restart();
    // The agent's reconnection backoff reaches 30 s (x0.5-1.5 jitter) while the
    // coordinator is down: allow for one full pause.
    let job = wait_for(
        Duration::from_secs(90),
        "the offline run in the catalog",
        || {
            c.jobs(&a.host_id)
                .into_iter()
                .find(|j| j["origin"] == "agent" && job_state(j) == "succeeded")
        },
    );
    assert!(job["scheduled_for"].as_i64().unwrap() > 0, "{job}");
    assert_eq!(job["set"]["kind"], "full", "{job}");
    wait_for(Duration::from_secs(10), "the outbox to empty", || {
        (outbox_len(&a) == 0).then_some(())
    });
    // The slot the agent served is not backed up again by the coordinator.
    std::thread::sleep(Duration::from_secs(3));
    let slot = job["scheduled_for"].as_i64().unwrap();
    let again: Vec<_> = c
        .jobs(&a.host_id)
        .into_iter()
        .filter(|j| j["origin"] == "schedule" && j["scheduled_for"].as_i64() == Some(slot))
        .filter(|j| job_state(j) != "cancelled")
        .collect();
    assert!(again.is_empty(), "slot {slot} ran twice: {again:?}");
    assert_eq!(chains(&c, &a.host_id)[0][0]["kind"], "full");
}

/// An agent killed mid-job: the job is failed and retried when the agent is back; the
/// incomplete set it left is never counted.
#[test]
fn agent_killed_mid_job_is_retried_and_no_partial_set_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    big_tree(&root.join("src"));
    let (c, _) = file_fleet(root, "lost_job_grace_secs = 2\n");
    let mut a = Agent::enroll(
        &c,
        root,
        "app-2",
        "role=app",
        &[("FLOTILLA_PASSPHRASE", PASSPHRASE)],
    );
    a.start();
    wait_for(Duration::from_secs(20), "the agent to connect", || {
        c.hosts()
            .iter()
            .any(|h| h["connected"] == true)
            .then_some(())
    });
    let job = c.json(&["backup", &a.host_id]);
    let job_id = job["job_id"].as_str().unwrap().to_string();
    wait_running(&c, &a.host_id);
    // Let it write some volumes, then kill it hard.
    std::thread::sleep(Duration::from_millis(1500));
    a.kill();
    let failed = wait_for(
        Duration::from_secs(30),
        "the lost job to be failed for retry",
        || {
            c.jobs(&a.host_id)
                .into_iter()
                .find(|j| j["job_id"] == job_id.as_str() && job_state(j) == "queued")
        },
    );
    assert!(
        failed["error"].as_str().unwrap().contains("unreachable"),
        "{failed}"
    );
    assert!(chains(&c, &a.host_id).is_empty(), "no set counted yet");
    a.start();
    let done = wait_for(Duration::from_secs(120), "the retry to succeed", || {
        c.jobs(&a.host_id)
            .into_iter()
            .find(|j| j["job_id"] == job_id.as_str() && job_state(j) == "succeeded")
    });
    assert_eq!(done["attempt"], 2, "{done}");
    let ch = chains(&c, &a.host_id);
    assert_eq!(ch.iter().map(Vec::len).sum::<usize>(), 1, "{ch:?}");
    let rebuilt = c.json(&["catalog", "rebuild"]);
    assert_eq!(rebuilt["sets"], 1, "only complete sets: {rebuilt}");

    // Asked explicitly, host removal deletes the host's backups.
    a.kill();
    let out = c.run(&["host", "remove", &a.host_id, "--delete-backups"]);
    out.assert_success();
    assert!(out.stdout_str().contains("deleted"), "{}", out.stdout_str());
    let store = root.join(format!("store/flotilla-{}", a.host_id));
    let left: Vec<_> = flotilla_tests::files_under(&store);
    assert!(left.is_empty(), "objects left: {left:?}");
}

/// A chain written by stock duplicity is adopted from its listing, shows in `chains`,
/// the host's next backup continues it (the agent has the passphrase), and the result
/// restores.
#[test]
fn duplicity_chain_is_adopted_continued_and_restored() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let src = root.join("src");
    small_tree(&src, 7);
    let legacy = root.join("legacy");
    let legacy_url = format!("file://{}", legacy.display());
    let dup = Duplicity::new().with_passphrase(PASSPHRASE);
    dup.full(&src, &legacy_url, &[]).assert_success();
    std::fs::write(src.join("etc/hosts"), b"changed by hand\n").unwrap();
    dup.incremental(&src, &legacy_url, &[]).assert_success();

    let (c, _) = file_fleet(root, "");
    let mut a = Agent::enroll(
        &c,
        root,
        "old-1",
        "role=app",
        &[("FLOTILLA_PASSPHRASE", PASSPHRASE)],
    );
    let adopted = c.json(&["host", "adopt", &a.host_id, "--from", &legacy_url]);
    assert_eq!(adopted["chains"], 1, "{adopted}");
    assert_eq!(adopted["sets"], 2, "{adopted}");
    let ch = chains(&c, &a.host_id);
    assert_eq!(ch.len(), 1);
    assert_eq!(ch[0].len(), 2);
    assert_eq!(
        c.json(&["chains", &a.host_id])["destination"],
        legacy_url.as_str()
    );

    a.start();
    std::fs::write(src.join("etc/new.conf"), b"added after adoption\n").unwrap();
    let job = backup_now(&c, &a.host_id, &[]);
    assert_eq!(job_state(&job), "succeeded", "{job}");
    let ch = chains(&c, &a.host_id);
    assert_eq!(ch.len(), 1, "the duplicity chain continues: {ch:?} ({job})");
    assert_eq!(ch[0].len(), 3);

    // Restored through Flotilla's engine and through duplicity alike.
    let target = root.join("restore");
    flotilla_tests::Cmd::agent()
        .args(["restore", &legacy_url])
        .arg(&target)
        .env("FLOTILLA_PASSPHRASE", PASSPHRASE)
        .arg("--state-dir")
        .arg(root.join("restore-state"))
        .run_ok();
    let restored_root = target.join(src.strip_prefix("/").unwrap());
    let restored = if restored_root.is_dir() {
        restored_root
    } else {
        target.clone()
    };
    assert_trees_equal(&src, &restored);
}

/// An adopted chain whose signatures the agent cannot read (it only has the fleet's
/// public key, no passphrase): the next backup starts a new full chain and says why;
/// the adopted chain stays registered.
#[test]
fn adopted_chain_without_the_passphrase_starts_a_new_full_chain_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let src = root.join("src");
    small_tree(&src, 11);
    let legacy_url = format!("file://{}", root.join("legacy").display());
    Duplicity::new()
        .with_passphrase(PASSPHRASE)
        .full(&src, &legacy_url, &[])
        .assert_success();

    let gpg = flotilla_tests::GpgHome::new();
    let key = gpg.generate_key("Fleet 2026", flotilla_tests::KeyAlgo::Ed25519);
    std::fs::write(
        root.join("fleet.asc"),
        gpg.export_public_armored(&key.fingerprint),
    )
    .unwrap();
    let c = Coordinator::start(&root.join("coordinator"), "heartbeat_secs = 1\n");
    let policy = root.join("policies.toml");
    std::fs::write(
        &policy,
        format!(
            "[destination.local]\nkind = \"file\"\npath = \"{root}/store\"\n\n\
             [key.fleet]\npublic_key_file = \"fleet.asc\"\n\n\
             [policy.all]\nsources = [\"{root}/src\"]\ndestination = \"local\"\n\
             encrypt_to = [\"fleet\"]\n",
            root = root.display()
        ),
    )
    .unwrap();
    c.json(&["policy", "apply", policy.to_str().unwrap()]);
    // No passphrase: the agent holds only the fleet's public key.
    let mut a = Agent::enroll(&c, root, "old-2", "role=app", &[]);
    c.json(&["host", "adopt", &a.host_id, "--from", &legacy_url]);
    a.start();
    let job = backup_now(&c, &a.host_id, &[]);
    assert_eq!(job_state(&job), "succeeded", "{job}");
    assert_eq!(job["set"]["kind"], "full", "{job}");
    let note = job["note"].as_str().unwrap();
    assert!(
        note.contains("new full chain"),
        "the job says why: {note:?}"
    );
    let ch = chains(&c, &a.host_id);
    assert_eq!(ch.len(), 2, "adopted chain kept, new chain started: {ch:?}");
    // The new chain restores with the fleet's secret key (held by operators, not agents).
    let secret = root.join("fleet-secret.asc");
    std::fs::write(&secret, gpg.export_secret_armored(&key.fingerprint)).unwrap();
    let target = root.join("restore");
    flotilla_tests::Cmd::agent()
        .arg("--state-dir")
        .arg(root.join("restore-state"))
        .args(["restore", &legacy_url])
        .arg(&target)
        .arg("--decrypt-key")
        .arg(&secret)
        .env_remove("FLOTILLA_PASSPHRASE")
        .env_remove("PASSPHRASE")
        .run_ok();
    let restored_root = target.join(src.strip_prefix("/").unwrap());
    let restored = if restored_root.is_dir() {
        restored_root
    } else {
        target.clone()
    };
    assert_trees_equal(&src, &restored);
}

/// Host A and host B on one coordinator, both agents running; A has a full backup of
/// `src` (snapshot in `snaps[0]`) and then `incrementals` more, each after a change
/// (snapshots in `snaps[1..]`). Returns the set end times, oldest first.
struct RestoreFleet {
    c: Coordinator,
    a: Agent,
    b: Agent,
    root: std::path::PathBuf,
    times: Vec<i64>,
    snaps: Vec<std::path::PathBuf>,
}

impl RestoreFleet {
    fn new(root: &Path, incrementals: usize) -> RestoreFleet {
        let src = root.join("src");
        small_tree(&src, 21);
        std::os::unix::fs::symlink("etc/hosts", src.join("hosts-link")).unwrap();
        let (c, _) = file_fleet(root, "");
        let pass = [("FLOTILLA_PASSPHRASE", PASSPHRASE)];
        let mut a = Agent::enroll(&c, root, "src-a", "role=app", &pass);
        let mut b = Agent::enroll(&c, root, "dst-b", "role=app", &pass);
        a.start();
        b.start();
        let mut times = Vec::new();
        let mut snaps = Vec::new();
        for i in 0..=incrementals {
            if i > 0 {
                // whole-second mtimes: a change must land in a later second
                std::thread::sleep(Duration::from_millis(1100));
                std::fs::write(src.join("etc/hosts"), format!("changed {i}\n")).unwrap();
                std::fs::write(src.join(format!("etc/new{i}.conf")), format!("new {i}\n")).unwrap();
                std::fs::set_permissions(
                    src.join("etc/app.conf"),
                    std::os::unix::fs::PermissionsExt::from_mode(0o600 + i as u32 * 0o40),
                )
                .unwrap();
                if i == 2 {
                    std::fs::remove_dir_all(src.join("var")).unwrap();
                }
            }
            let job = backup_now(&c, &a.host_id, &[]);
            assert_eq!(job_state(&job), "succeeded", "{job}");
            let kind = if i == 0 { "full" } else { "incremental" };
            assert_eq!(job["set"]["kind"], kind, "{job}");
            times.push(job["set"]["end_time"].as_i64().unwrap());
            let snap = root.join(format!("snap{i}"));
            flotilla_tests::agent::copy_tree(&src, &snap);
            snaps.push(snap);
        }
        RestoreFleet {
            c,
            a,
            b,
            root: root.to_path_buf(),
            times,
            snaps,
        }
    }

    /// `flotilla ARGS` with the backups' passphrase (or `pass`) in the environment.
    fn admin(&self, args: &[String], pass: &str) -> flotilla_tests::bins::CmdOutput {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.c
            .admin()
            .args(&refs)
            .env("FLOTILLA_PASSPHRASE", pass)
            .run()
    }

    /// Restores A's backup onto B into `target` (`extra`: --time, --path, ...).
    fn restore_on_b(&self, target: &Path, extra: &[&str]) -> flotilla_tests::bins::CmdOutput {
        self.restore_on_b_with(target, extra, PASSPHRASE)
    }

    fn restore_on_b_with(
        &self,
        target: &Path,
        extra: &[&str],
        pass: &str,
    ) -> flotilla_tests::bins::CmdOutput {
        let mut args: Vec<String> = ["restore", &self.a.host_id, "--to", &self.b.host_id]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["--target".into(), target.display().to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        self.admin(&args, pass)
    }

    fn evidence(&self) -> Vec<serde_json::Value> {
        let args: Vec<String> = ["restores", &self.a.host_id, "--limit", "0", "--json"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let out = self.admin(&args, "");
        out.assert_success();
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }
}

/// Host A backs up (full + two incrementals); its tree at each of the three times is
/// restored onto host B through the coordinator and equals A's tree at that time (bytes
/// and metadata); a single file and a subtree at an earlier time; `ls` at a time;
/// `restore --local`; a restore test on B that cleans up; evidence for each.
#[test]
fn restores_through_the_coordinator_at_every_point_in_time() {
    let tmp = tempfile::tempdir().unwrap();
    let f = RestoreFleet::new(tmp.path(), 2);
    for (i, (t, snap)) in f.times.iter().zip(&f.snaps).enumerate() {
        let target = f.root.join(format!("restore-{i}"));
        let out = f.restore_on_b(&target, &["--time", &t.to_string()]);
        out.assert_success();
        assert!(
            out.stdout_str().contains("Verified:"),
            "{}",
            out.stdout_str()
        );
        assert_trees_equal(snap, &target);
    }
    // One file and one subtree as of the full backup.
    let one = f.root.join("restore-one");
    f.restore_on_b(
        &one,
        &["--time", &f.times[0].to_string(), "--path", "etc/hosts"],
    )
    .assert_success();
    let restored = if one.is_dir() {
        one.join("hosts")
    } else {
        one.clone()
    };
    assert_eq!(
        std::fs::read(&restored).unwrap(),
        std::fs::read(f.snaps[0].join("etc/hosts")).unwrap()
    );
    let sub = f.root.join("restore-sub");
    f.restore_on_b(&sub, &["--time", &f.times[0].to_string(), "--path", "var"])
        .assert_success();
    assert_trees_equal(&f.snaps[0].join("var"), &sub);

    // ls at the full backup's time: var is there (deleted later), with sizes.
    let ls = |extra: &[&str]| {
        let mut args: Vec<String> = vec!["ls".into(), f.a.host_id.clone(), "--json".into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = f.admin(&args, PASSPHRASE);
        out.assert_success();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let listed = ls(&["--time", &f.times[0].to_string(), "var"]);
    let paths: Vec<&str> = listed["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["var", "var/data.bin", "var/empty"], "{listed}");
    let data = &listed["paths"][1];
    let (lo, hi) = (
        data["size_min"].as_u64().unwrap(),
        data["size_max"].as_u64().unwrap(),
    );
    assert!(lo <= 300_000 && 300_000 <= hi, "{data}");
    assert_eq!(data["mode"], "0644", "{data}");
    let latest = ls(&[]);
    assert!(
        !latest.to_string().contains("var/data.bin"),
        "var was deleted before the last backup: {latest}"
    );
    let table = f.admin(
        &["ls".into(), f.a.host_id.clone(), "etc".into()],
        PASSPHRASE,
    );
    table.assert_success();
    assert!(
        table.stdout_str().contains("-rw-r--r--") && table.stdout_str().contains("etc/hosts"),
        "{}",
        table.stdout_str()
    );

    // On the operator's machine, with a read-only credential.
    let local = f.root.join("restore-local");
    let out = f.admin(
        &[
            "restore".into(),
            f.a.host_id.clone(),
            "--time".into(),
            f.times[1].to_string(),
            "--local".into(),
            local.display().to_string(),
        ],
        PASSPHRASE,
    );
    out.assert_success();
    assert_trees_equal(&f.snaps[1], &local);

    // A restore test on B: verified, recorded, nothing left behind.
    let out = f.admin(
        &[
            "restore-test".into(),
            f.a.host_id.clone(),
            "--to".into(),
            f.b.host_id.clone(),
            "--json".into(),
        ],
        PASSPHRASE,
    );
    out.assert_success();
    let drill: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(drill["drill"], true, "{drill}");
    assert_eq!(drill["restore"]["verified"], true, "{drill}");
    let left: Vec<_> = std::fs::read_dir(&f.b.state_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("restore-test"))
        .collect();
    assert!(left.is_empty(), "the drill left {left:?}");

    let evidence = f.evidence();
    // 3 point-in-time restores, one file, one subtree, the drill (local restores run
    // no job)
    assert_eq!(evidence.len(), 6, "{evidence:?}");
    assert_eq!(evidence[0]["drill"], true, "newest first: {evidence:?}");
    for e in &evidence {
        assert_eq!(e["state"], "succeeded", "{e}");
        assert_eq!(e["restore"]["verified"], true, "{e}");
        assert_eq!(e["target_host_id"], f.b.host_id.as_str(), "{e}");
    }
    let table = f.admin(&["restores".into()], "");
    table.assert_success();
    assert!(
        table.stdout_str().contains("drill"),
        "{}",
        table.stdout_str()
    );
}

/// Each failure gives a clear error and leaves the target as it was: a wrong key, a
/// non-empty target, a target host that stays offline (and one that comes back), a
/// missing volume, a tampered volume.
#[test]
fn failed_restores_say_why_and_leave_the_target_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let mut f = RestoreFleet::new(tmp.path(), 1);
    let absent = f.root.join("never");
    let unchanged = |out: &flotilla_tests::bins::CmdOutput, words: &[&str]| {
        assert!(!out.status.success(), "accepted: {out}");
        let text = out.combined().to_lowercase();
        assert!(
            words.iter().any(|w| text.contains(w)),
            "the error mentions none of {words:?}: {out}"
        );
        assert!(!absent.exists(), "{} was created: {out}", absent.display());
    };

    let out = f.restore_on_b_with(&absent, &[], "not the passphrase");
    unchanged(&out, &["passphrase", "decrypt"]);

    let full = f.root.join("full");
    flotilla_tests::agent::copy_tree(&f.snaps[0], &full);
    let before = flotilla_tests::TreeSnapshot::capture(&full).unwrap();
    let out = f.restore_on_b(&full, &[]);
    unchanged(&out, &["not empty", "empty"]);
    flotilla_tests::tree::assert_snapshots_equal(
        &before,
        &flotilla_tests::TreeSnapshot::capture(&full).unwrap(),
        &Default::default(),
        "a refused restore changed the target",
    );

    // B offline: the restore waits, then gives up with a clear message.
    f.b.kill();
    let out = f.restore_on_b(&absent, &["--start-within", "3s"]);
    unchanged(&out, &["not started"]);
    assert!(out.combined().contains(&f.b.host_id), "{out}");
    // ... or runs once B is back.
    let late = f.root.join("late");
    let cmd = {
        let mut args: Vec<String> = ["restore", &f.a.host_id, "--to", &f.b.host_id]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["--target".into(), late.display().to_string()]);
        let refs: Vec<String> = args;
        let c = f.c.admin().env("FLOTILLA_PASSPHRASE", PASSPHRASE);
        let refs2: Vec<&str> = refs.iter().map(String::as_str).collect();
        c.args(&refs2)
    };
    let waiting = std::thread::spawn(move || cmd.run());
    std::thread::sleep(Duration::from_secs(3));
    assert!(!late.exists());
    f.b.start();
    let out = waiting.join().unwrap();
    out.assert_success();
    assert_trees_equal(&f.snaps[1], &late);

    // Storage damage: the newest set's first volume tampered with, then missing.
    let container = f.root.join(format!("store/flotilla-{}", f.a.host_id));
    let vol = std::fs::read_dir(&container)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("duplicity-inc.") && n.contains(".vol1."))
        .max()
        .unwrap_or_else(|| panic!("no incremental volume in {}", container.display()));
    let path = container.join(&vol);
    let good = std::fs::read(&path).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    std::fs::write(&path, &bad).unwrap();
    let out = f.restore_on_b(&absent, &[]);
    unchanged(&out, &[&vol.to_lowercase()]);
    std::fs::remove_file(&path).unwrap();
    let out = f.restore_on_b(&absent, &[]);
    unchanged(&out, &["missing"]);
    assert!(out.combined().contains("volume 1"), "{out}");
    // The earlier time does not need that volume.
    let ok = f.root.join("before-damage");
    f.restore_on_b(&ok, &["--time", &f.times[0].to_string()])
        .assert_success();
    assert_trees_equal(&f.snaps[0], &ok);

    let evidence = f.evidence();
    let failed = evidence.iter().filter(|e| e["state"] == "failed").count();
    assert!(
        failed >= 3,
        "failed restores are evidence too: {evidence:?}"
    );
}

/// Jobs stop on request: a running backup (slowed by the policy's bandwidth limit) is
/// cancelled with `flotilla cancel` and leaves no set; a restore the CLI follows is
/// cancelled by SIGINT (from a script: no question asked) and removes the target it
/// created.
#[test]
fn running_jobs_are_cancelled_on_request() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let b = TreeBuilder::new(root.join("src"));
    for i in 0..20_000u64 {
        b.file(format!("d{}/f{i}", i % 100), deterministic_bytes(i, 1024));
    }
    let (c, _) = file_fleet(root, "");
    apply_file_policy(&c, root, "bandwidth_limit_mb = 1");
    let pass = [("FLOTILLA_PASSPHRASE", PASSPHRASE)];
    let mut a = Agent::enroll(&c, root, "cancel-a", "role=app", &pass);
    a.start();

    // 20 MB at 1 MB/s: time enough to cancel.
    c.json(&["backup", &a.host_id]);
    let id = wait_running(&c, &a.host_id);
    let started = std::time::Instant::now();
    c.run(&["cancel", &id]).assert_success();
    let job = wait_for(Duration::from_secs(20), "the backup to stop", || {
        c.jobs(&a.host_id)
            .into_iter()
            .find(|j| j["job_id"] == id.as_str() && job_state(j) != "running")
    });
    assert_eq!(job_state(&job), "cancelled", "{job}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the bandwidth limit would have taken 20 s: the cancel was not prompt"
    );
    assert!(
        chains(&c, &a.host_id).is_empty(),
        "a cancelled backup counted"
    );
    let container = root.join(format!("store/flotilla-{}", a.host_id));
    let manifests: Vec<_> = flotilla_tests::files_under(&container)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("manifest"))
        .collect();
    assert!(manifests.is_empty(), "{manifests:?}");

    // Without the limit, a complete backup; then a restore cancelled by Ctrl-C.
    apply_file_policy(&c, root, "");
    let done = backup_now(&c, &a.host_id, &[]);
    assert_eq!(job_state(&done), "succeeded", "{done}");
    let target = root.join("cancelled-restore");
    let mut follower = std::process::Command::new(flotilla_tests::coordinator_bin())
        .args(["restore", &a.host_id, "--target"])
        .arg(&target)
        .args(["--coordinator", &c.url, "--dir"])
        .arg(&c.dir)
        .env("FLOTILLA_PASSPHRASE", PASSPHRASE)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let restore_id = wait_for(Duration::from_secs(30), "the restore to run", || {
        c.jobs(&a.host_id)
            .into_iter()
            .find(|j| j["kind"] == "restore" && job_state(j) == "running")
            .map(|j| j["job_id"].as_str().unwrap().to_string())
    });
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(follower.id() as i32, libc::SIGINT) };
    let status = follower.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(follower.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("Cancel requested"), "{stderr}");
    let job = c
        .jobs(&a.host_id)
        .into_iter()
        .find(|j| j["job_id"] == restore_id.as_str())
        .unwrap();
    assert_eq!(job_state(&job), "cancelled", "{job}\n{stderr}");
    assert!(
        !target.exists(),
        "the cancelled restore left {}",
        target.display()
    );
}

/// A policy schedules restore tests (`restore_test`, `restore_test_on`): after host A's
/// first backup, drill host B restores it into a temporary directory with its own key,
/// verifies it and the evidence is recorded; no second drill within the interval. A
/// drill host that is not enrolled is refused at apply time, naming the line.
#[test]
fn policy_schedules_restore_tests_on_a_drill_host() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    small_tree(&root.join("src"), 5);
    let (c, _) = file_fleet(root, "drill_check_secs = 1");
    let pass = [("FLOTILLA_PASSPHRASE", PASSPHRASE)];
    let mut a = Agent::enroll(&c, root, "drilled-a", "role=app", &pass);
    let mut b = Agent::enroll(&c, root, "drill-b", "role=app", &pass);
    a.start();
    b.start();

    let refused = c.run(&[
        "policy",
        "apply",
        root.join("policies.toml").to_str().unwrap(),
    ]);
    refused.assert_success(); // the plain policy is fine
    let bad = root.join("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(root.join("policies.toml"))
            .unwrap()
            .replace(
                "volsize_mb = 5",
                "volsize_mb = 5\nrestore_test = \"1h\"\nrestore_test_on = \"nohost\"",
            ),
    )
    .unwrap();
    let out = c.run(&["policy", "apply", bad.to_str().unwrap()]);
    assert!(!out.status.success(), "{out}");
    assert!(
        out.stderr_str().contains("nohost") && out.stderr_str().contains("bad.toml:"),
        "{out}"
    );

    apply_file_policy(
        &c,
        root,
        &format!("restore_test = \"1h\"\nrestore_test_on = \"{}\"", b.host_id),
    );
    let job = backup_now(&c, &a.host_id, &[]);
    assert_eq!(job_state(&job), "succeeded", "{job}");
    let evidence = || -> Vec<serde_json::Value> {
        c.json(&["restores", &a.host_id, "--limit", "0"])
            .as_array()
            .unwrap()
            .clone()
    };
    let drill = wait_for(Duration::from_secs(30), "a scheduled drill", || {
        evidence().into_iter().find(|e| e["drill"] == true)
    });
    assert_eq!(drill["state"], "succeeded", "{drill}");
    assert_eq!(drill["origin"], "schedule", "{drill}");
    assert_eq!(drill["target_host_id"], b.host_id.as_str(), "{drill}");
    assert_eq!(drill["restore"]["verified"], true, "{drill}");
    assert_eq!(drill["restore"]["files"], 7, "{drill}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(evidence().len(), 1, "one drill per interval");
    let left: Vec<_> = std::fs::read_dir(&b.state_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("restore-test"))
        .collect();
    assert!(left.is_empty(), "the drill left {left:?}");
}
