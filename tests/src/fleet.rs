//! A fleet on loopback for the tests: a real `flotilla serve` process and real
//! `flotilla-agent run` processes, each with its own state directory. The admin CLI is
//! run as a process too (`--json`). Logs of every process are kept and printed when a
//! test fails.

use crate::bins::{Cmd, CmdOutput, agent_bin, coordinator_bin};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Polls `check` until it returns `Some`, or panics naming `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn print_log(name: &str, path: &Path) {
    if let Ok(text) = std::fs::read_to_string(path) {
        let tail: Vec<&str> = text.lines().rev().take(80).collect();
        eprintln!("----- {name} log ({}) -----", path.display());
        for l in tail.into_iter().rev() {
            eprintln!("{l}");
        }
    }
}

/// A coordinator process with its state directory.
pub struct Coordinator {
    pub dir: PathBuf,
    pub port: u16,
    pub url: String,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    restarts: u32,
}

impl Coordinator {
    /// `flotilla init` in `dir`, then `flotilla serve` with `config` (TOML) added to
    /// the listen address and state directory.
    pub fn start(dir: &Path, config: &str) -> Coordinator {
        std::fs::create_dir_all(dir).expect("coordinator dir");
        Cmd::coordinator().args(["init", "--dir"]).arg(dir).run_ok();
        let port = free_port();
        let config_path = dir.join("coordinator.toml");
        std::fs::write(
            &config_path,
            format!(
                "listen = \"127.0.0.1:{port}\"\nstate_dir = {:?}\n{config}",
                dir.display().to_string()
            ),
        )
        .expect("write config");
        let mut c = Coordinator {
            dir: dir.to_path_buf(),
            port,
            url: format!("https://127.0.0.1:{port}"),
            config: config_path,
            log: dir.join("coordinator.log"),
            child: None,
            restarts: 0,
        };
        c.spawn();
        c
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let child = Command::new(coordinator_bin())
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info,flotilla_coordinator=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start flotilla serve");
        self.child = Some(child);
        wait_for(Duration::from_secs(20), "the coordinator to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", self.port))
                .ok()
                .map(|_| ())
        });
    }

    /// SIGKILL: no shutdown, no flush beyond what the catalog made durable.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.restarts += 1;
        self.spawn();
    }

    /// The admin CLI, pointed at this coordinator.
    pub fn admin(&self) -> Cmd {
        Cmd::coordinator()
            .env("FLOTILLA_COORDINATOR", &self.url)
            .env("FLOTILLA_COORDINATOR_DIR", &self.dir)
    }

    /// Runs an admin command with `--json` and parses its output.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.admin().args(args).arg("--json").run_ok();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "flotilla {args:?} --json printed no JSON ({e}): {}",
                out.stdout_str()
            )
        })
    }

    pub fn run(&self, args: &[&str]) -> CmdOutput {
        self.admin().args(args).run()
    }

    /// A one-time enrollment token with these labels.
    pub fn token(&self, labels: &str) -> String {
        let v = self.json(&["token", "create", "--labels", labels, "--ttl", "10m"]);
        v["token"].as_str().expect("token").to_string()
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("pki/ca.pem")
    }

    /// `hosts --json`, by host id.
    pub fn hosts(&self) -> Vec<serde_json::Value> {
        self.json(&["hosts"]).as_array().expect("host list").clone()
    }

    /// `jobs --json` of one host, oldest first.
    pub fn jobs(&self, host: &str) -> Vec<serde_json::Value> {
        self.json(&["jobs", "--host", host, "--limit", "0"])
            .as_array()
            .expect("job list")
            .clone()
    }

    pub fn print_log(&self) {
        print_log("coordinator", &self.log);
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_log();
        }
        self.kill();
    }
}

/// An enrolled agent and, while running, its `flotilla-agent run` process.
pub struct Agent {
    pub name: String,
    pub host_id: String,
    pub state_dir: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Agent {
    /// Enrolls a host named `name` with a fresh token for `labels`; `env` is the agent's
    /// environment (e.g. FLOTILLA_PASSPHRASE) for `run`.
    pub fn enroll(
        coordinator: &Coordinator,
        root: &Path,
        name: &str,
        labels: &str,
        env: &[(&str, &str)],
    ) -> Agent {
        let state_dir = root.join(format!("agent-{name}"));
        std::fs::create_dir_all(&state_dir).expect("agent dir");
        let token = coordinator.token(labels);
        let out = Cmd::agent()
            .arg("--state-dir")
            .arg(&state_dir)
            .args([
                "enroll",
                "--coordinator",
                &coordinator.url,
                "--token",
                &token,
            ])
            .arg("--ca-cert")
            .arg(coordinator.ca_cert())
            .args(["--hostname", name, "--json"])
            .run_ok();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("enroll --json: {e}: {}", out.stdout_str()));
        let host_id = v["host_id"].as_str().expect("host_id").to_string();
        Agent {
            name: name.to_string(),
            host_id,
            log: state_dir.join("agent.log"),
            state_dir,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
        }
    }

    /// Starts `flotilla-agent run`.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let mut cmd = Command::new(agent_bin());
        cmd.arg("--state-dir")
            .arg(&self.state_dir)
            .arg("run")
            .env("RUST_LOG", "info,flotilla_client=debug")
            .stdout(Stdio::null())
            .stderr(log);
        // No storage account credentials: agents get scoped ones from the coordinator.
        for var in crate::agent::STORAGE_ENV_VARS {
            cmd.env_remove(var);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("start flotilla-agent run"));
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, as systemd stops the unit; waits up to `timeout` for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("the agent is not running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = c.try_wait().expect("waiting for the agent") {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = c.kill();
                panic!(
                    "agent {} did not exit within {timeout:?} of SIGTERM",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn print_log(&self) {
        print_log(&format!("agent {}", self.name), &self.log);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_log();
        }
        self.kill();
    }
}

/// The job's state ("queued", "running", "succeeded", ...).
pub fn job_state(job: &serde_json::Value) -> &str {
    job["state"].as_str().unwrap_or("?")
}
