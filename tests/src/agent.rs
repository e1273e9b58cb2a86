//! Running `flotilla-agent` against a local store in a scratch directory.

use crate::bins::{Cmd, CmdOutput};
use std::path::{Path, PathBuf};

/// A scratch workspace: a `file://` store, a state directory and room for trees.
pub struct AgentEnv {
    pub dir: tempfile::TempDir,
    pub store: PathBuf,
    pub state: PathBuf,
    pub passphrase: Option<String>,
}

impl Default for AgentEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentEnv {
    /// A new workspace with symmetric encryption (passphrase `test-passphrase`).
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("flotilla-test-").tempdir().expect("tempdir");
        let store = dir.path().join("store");
        let state = dir.path().join("state");
        AgentEnv {
            dir,
            store,
            state,
            passphrase: Some("test-passphrase".into()),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.store.display())
    }

    /// `flotilla-agent` with the state dir and passphrase of this workspace.
    pub fn cmd(&self) -> Cmd {
        let mut c = Cmd::agent()
            .arg("--state-dir")
            .arg(&self.state)
            .env_remove("PASSPHRASE")
            .env_remove("FLOTILLA_PASSPHRASE")
            .env_remove("SIGN_PASSPHRASE")
            .env_remove("FLOTILLA_SIGN_PASSPHRASE");
        if let Some(p) = &self.passphrase {
            c = c.env("FLOTILLA_PASSPHRASE", p);
        }
        c
    }

    pub fn backup(&self, src: &Path, extra: &[&str]) -> CmdOutput {
        self.cmd()
            .arg("backup")
            .arg(src)
            .arg(self.url())
            .args(extra)
            .run()
    }

    pub fn restore(&self, target: &Path, extra: &[&str]) -> CmdOutput {
        self.cmd()
            .arg("restore")
            .arg(self.url())
            .arg(target)
            .args(extra)
            .run()
    }

    /// Object names in the store, sorted.
    pub fn objects(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.store)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Object names containing `pat`.
    pub fn objects_matching(&self, pat: &str) -> Vec<PathBuf> {
        self.objects()
            .into_iter()
            .filter(|n| n.contains(pat))
            .map(|n| self.store.join(n))
            .collect()
    }
}

/// Copies a tree with `cp -a` (a snapshot of the source at some time).
pub fn copy_tree(src: &Path, dest: &Path) {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dest)
        .status()
        .expect("cp");
    assert!(st.success(), "cp -a {} {}", src.display(), dest.display());
}

/// Epoch seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
