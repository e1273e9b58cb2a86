//! Running stock duplicity (Debian bookworm's 0.8.22) in isolation.
//!
//! A [`Duplicity`] owns a temporary directory holding its `HOME`, `TMPDIR` and
//! `--archive-dir`, plus a [`GpgHome`] (short path under `/tmp`) used as
//! `GNUPGHOME`, and runs every command with `LC_ALL=C.UTF-8`, `TZ=UTC`, stdin from
//! `/dev/null` and `PASSPHRASE` only when one was given. Nothing of the caller's
//! environment that duplicity or gpg would read (`PASSPHRASE`, `SIGN_PASSPHRASE`,
//! `GNUPGHOME`, `XDG_*`, `PYTHON*`) leaks in.
//!
//! Tests must not skip silently when duplicity is missing: call
//! [`Duplicity::require`] (also done by [`Duplicity::new`]), which panics with the
//! install hint.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use crate::bins::{Cmd, CmdOutput};
use crate::gpg::GpgHome;

/// The duplicity release the project is compatible with (major.minor prefix).
pub const SUPPORTED_VERSION_PREFIX: &str = "0.8.";

/// Environment variables removed from every duplicity command.
const SCRUBBED_ENV: &[&str] = &[
    "PASSPHRASE",
    "SIGN_PASSPHRASE",
    "GNUPGHOME",
    "XDG_CACHE_HOME",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "XDG_RUNTIME_DIR",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONOPTIMIZE",
    "PYTHONSTARTUP",
    "LANG",
    "LANGUAGE",
];

/// `file://` URL of a local directory (made absolute), as duplicity takes it.
pub fn file_url(dir: &Path) -> String {
    let abs = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir().expect("cwd").join(dir)
    };
    format!("file://{}", abs.display())
}

/// An isolated duplicity: see the module documentation.
#[derive(Debug)]
pub struct Duplicity {
    dir: tempfile::TempDir,
    gpg: GpgHome,
    name: String,
    passphrase: Option<String>,
    sign_passphrase: Option<String>,
    env: Vec<(OsString, OsString)>,
    timeout: Duration,
}

impl Default for Duplicity {
    /// Same as [`Duplicity::new`].
    fn default() -> Self {
        Self::new()
    }
}

impl Duplicity {
    /// `duplicity --version` output (first line) if duplicity runs, else `None`.
    /// Cached for the process.
    pub fn version() -> Option<String> {
        static VERSION: OnceLock<Option<String>> = OnceLock::new();
        VERSION
            .get_or_init(|| {
                let out = Cmd::new("duplicity")
                    .arg("--version")
                    .env("LC_ALL", "C.UTF-8")
                    .timeout(Duration::from_secs(60))
                    .run();
                if out.success() {
                    out.stdout_str()
                        .lines()
                        .next()
                        .map(|l| l.trim().to_string())
                } else {
                    None
                }
            })
            .clone()
    }

    /// Whether a duplicity 0.8.x is installed and runs.
    pub fn available() -> bool {
        Self::version().is_some_and(|v| {
            v.strip_prefix("duplicity ")
                .is_some_and(|n| n.starts_with(SUPPORTED_VERSION_PREFIX))
        })
    }

    /// Panics unless [`Duplicity::available`], telling how to install it.
    #[track_caller]
    pub fn require() {
        if !Self::available() {
            panic!(
                "stock duplicity {SUPPORTED_VERSION_PREFIX}x is required for this test \
                 (found: {}); run `bash deploy/install-test-deps.sh` (as root, Debian bookworm)",
                Self::version().unwrap_or_else(|| "no working `duplicity` in PATH".into())
            );
        }
    }

    /// A fresh, isolated duplicity with archive name `test` and no passphrase.
    /// Calls [`Duplicity::require`].
    #[track_caller]
    pub fn new() -> Self {
        Self::require();
        let dir = tempfile::Builder::new()
            .prefix("flt-dup-")
            .tempdir()
            .expect("tempdir");
        for d in ["home", "tmp", "archive"] {
            fs::create_dir(dir.path().join(d)).expect("mkdir");
        }
        Duplicity {
            dir,
            gpg: GpgHome::new(),
            name: "test".into(),
            passphrase: None,
            sign_passphrase: None,
            env: Vec::new(),
            timeout: Duration::from_secs(600),
        }
    }

    /// Sets `PASSPHRASE` (symmetric passphrase, or the secret key's passphrase
    /// for public-key restores; `""` for an unprotected key).
    pub fn with_passphrase(mut self, passphrase: &str) -> Self {
        self.passphrase = Some(passphrase.into());
        self
    }

    /// Sets or clears `PASSPHRASE`.
    pub fn set_passphrase(&mut self, passphrase: Option<&str>) -> &mut Self {
        self.passphrase = passphrase.map(str::to_string);
        self
    }

    /// Sets `SIGN_PASSPHRASE` (for `--sign-key` with a protected key).
    pub fn with_sign_passphrase(mut self, passphrase: &str) -> Self {
        self.sign_passphrase = Some(passphrase.into());
        self
    }

    /// Sets the `--name` of the archive-dir cache (default `test`).
    pub fn with_name(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    /// Adds an environment variable to every command (e.g. a storage credential
    /// such as `AZURE_CONNECTION_STRING`).
    pub fn with_env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Time limit of every command (default 600 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The GnuPG home used as `GNUPGHOME` (import keys here).
    pub fn gpg(&self) -> &GpgHome {
        &self.gpg
    }

    /// Imports keys into duplicity's `GNUPGHOME` and trusts them ultimately (as
    /// their owner would), so `--encrypt-key`/`--sign-key` accept them. Returns the
    /// imported fingerprints.
    #[track_caller]
    pub fn import_key(&self, armored: &[u8]) -> Vec<String> {
        self.gpg.import_trusted(armored)
    }

    /// `HOME` of the commands.
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// `TMPDIR` and `--tempdir` of the commands.
    pub fn tempdir(&self) -> PathBuf {
        self.dir.path().join("tmp")
    }

    /// `--archive-dir` of the commands (the cache is in `<archive_dir>/<name>`).
    pub fn archive_dir(&self) -> PathBuf {
        self.dir.path().join("archive")
    }

    /// The `--name` of the commands.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Deletes the local cache (`<archive_dir>/<name>`), so the next command
    /// works from the backend alone, as on a fresh host.
    pub fn clear_cache(&self) {
        let p = self.archive_dir().join(&self.name);
        if p.exists() {
            fs::remove_dir_all(&p).expect("remove archive cache");
        }
    }

    /// The command `duplicity --archive-dir A --name N --tempdir T <args>` with the
    /// isolated environment, not yet run (add env or a timeout, then `.run()`).
    pub fn command<I, S>(&self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Cmd::new("duplicity");
        for k in SCRUBBED_ENV {
            cmd = cmd.env_remove(k);
        }
        cmd = cmd
            .env("HOME", self.home())
            .env("TMPDIR", self.tempdir())
            .env("GNUPGHOME", self.gpg.path())
            .env("LC_ALL", "C.UTF-8")
            .env("TZ", "UTC")
            .timeout(self.timeout);
        if let Some(p) = &self.passphrase {
            cmd = cmd.env("PASSPHRASE", p);
        }
        if let Some(p) = &self.sign_passphrase {
            cmd = cmd.env("SIGN_PASSPHRASE", p);
        }
        for (k, v) in &self.env {
            cmd = cmd.env(k, v);
        }
        cmd.arg("--archive-dir")
            .arg(self.archive_dir())
            .arg("--name")
            .arg(&self.name)
            .arg("--tempdir")
            .arg(self.tempdir())
            .args(args)
    }

    /// Runs `duplicity <common options> <args>`.
    pub fn run<I, S>(&self, args: I) -> CmdOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command(args).run()
    }

    /// `duplicity full [extra] SRC URL`.
    pub fn full(&self, src: &Path, url: &str, extra: &[&str]) -> CmdOutput {
        self.backup("full", src, url, extra)
    }

    /// `duplicity incremental [extra] SRC URL`.
    pub fn incremental(&self, src: &Path, url: &str, extra: &[&str]) -> CmdOutput {
        self.backup("incremental", src, url, extra)
    }

    fn backup(&self, action: &str, src: &Path, url: &str, extra: &[&str]) -> CmdOutput {
        let mut args: Vec<OsString> = vec![action.into()];
        args.extend(extra.iter().map(OsString::from));
        args.push(src.into());
        args.push(url.into());
        self.run(args)
    }

    /// `duplicity restore [-t TIME] [extra] URL TARGET`.
    pub fn restore(
        &self,
        url: &str,
        target: &Path,
        time: Option<&str>,
        extra: &[&str],
    ) -> CmdOutput {
        let mut args: Vec<OsString> = vec!["restore".into()];
        if let Some(t) = time {
            args.push("-t".into());
            args.push(t.into());
        }
        args.extend(extra.iter().map(OsString::from));
        args.push(url.into());
        args.push(target.into());
        self.run(args)
    }

    /// `duplicity verify [extra] URL DIR` (without `--compare-data` this checks
    /// only that the volumes download, hash-check, decrypt and parse).
    pub fn verify(&self, url: &str, dir: &Path, extra: &[&str]) -> CmdOutput {
        let mut args: Vec<OsString> = vec!["verify".into()];
        args.extend(extra.iter().map(OsString::from));
        args.push(url.into());
        args.push(dir.into());
        self.run(args)
    }

    /// `duplicity verify --compare-data URL DIR`: exit status 1 when the backup
    /// differs from DIR.
    pub fn verify_compare_data(&self, url: &str, dir: &Path) -> CmdOutput {
        self.verify(url, dir, &["--compare-data"])
    }

    /// `duplicity collection-status URL`.
    pub fn collection_status(&self, url: &str) -> CmdOutput {
        self.run(["collection-status", url])
    }

    /// `duplicity list-current-files [-t TIME] URL`.
    pub fn list_current_files(&self, url: &str, time: Option<&str>) -> CmdOutput {
        let mut args: Vec<&str> = vec!["list-current-files"];
        if let Some(t) = time {
            args.extend(["-t", t]);
        }
        args.push(url);
        self.run(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpg::KeyAlgo;
    use crate::tree::{TreeBuilder, assert_trees_equal};

    #[test]
    fn file_url_is_absolute() {
        assert_eq!(file_url(Path::new("/a/b")), "file:///a/b");
        assert!(file_url(Path::new("rel")).starts_with("file:///"));
    }

    #[test]
    fn is_available() {
        Duplicity::require();
        assert!(Duplicity::version().unwrap().starts_with("duplicity 0.8."));
    }

    #[test]
    fn environment_is_isolated() {
        let d = Duplicity::new()
            .with_passphrase("p")
            .with_env("EXTRA_VAR", "x");
        let cmd = d.command(["--version"]);
        let desc = cmd.describe();
        assert!(desc.starts_with("duplicity --archive-dir "), "{desc}");
        assert!(desc.contains(" --name test --tempdir "), "{desc}");
        // look at the environment the child really gets
        let c = d.command(Vec::<&str>::new());
        let envs: Vec<(String, Option<String>)> = c
            .to_command()
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.map(|v| v.to_string_lossy().into_owned()),
                )
            })
            .collect();
        let get = |k: &str| {
            envs.iter()
                .rev()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("PASSPHRASE"), Some(Some("p".into())));
        assert_eq!(get("SIGN_PASSPHRASE"), Some(None));
        assert_eq!(get("LC_ALL"), Some(Some("C.UTF-8".into())));
        assert_eq!(get("TZ"), Some(Some("UTC".into())));
        assert_eq!(get("EXTRA_VAR"), Some(Some("x".into())));
        let gnupg = get("GNUPGHOME").unwrap().unwrap();
        assert!(gnupg.len() < 40, "{gnupg}");
        d.run(["--version"]).assert_success();
    }

    #[test]
    fn missing_passphrase_fails_instead_of_prompting() {
        let src = tempfile::tempdir().unwrap();
        TreeBuilder::new(src.path()).file("f", "x");
        let store = tempfile::tempdir().unwrap();
        let d = Duplicity::new().with_timeout(Duration::from_secs(120));
        let out = d.full(src.path(), &file_url(store.path()), &[]);
        assert!(!out.timed_out, "{out}");
        out.assert_failure();
    }

    #[test]
    fn public_key_backup_and_restore() {
        let src = tempfile::tempdir().unwrap();
        TreeBuilder::new(src.path())
            .file_with("a.txt", "alpha\n", 0o640, 1_600_000_000)
            .symlink("l", "a.txt")
            .set_mtime(".", 1_600_000_001);
        let store = tempfile::tempdir().unwrap();
        let url = file_url(store.path());

        let owner = GpgHome::new();
        let key = owner.generate_key("Dup Test", KeyAlgo::Ed25519);
        // backup host: public key only
        let backup = Duplicity::new();
        backup.import_key(&owner.export_public_armored(&key.fingerprint));
        backup
            .full(src.path(), &url, &["--encrypt-key", &key.fingerprint])
            .assert_success();
        // the volumes are encrypted to the cv25519 subkey
        let vol = fs::read_dir(store.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().ends_with(".vol1.difftar.gpg"))
            .expect("volume 1");
        let packets = owner.list_packets(&fs::read(vol).unwrap());
        let sub = key.encryption_subkey().unwrap();
        assert!(packets.contains(&sub.key_id), "{packets}");

        // restoring host: secret key, no passphrase on it
        let restore = Duplicity::new().with_passphrase("");
        restore.import_key(&owner.export_secret_armored(&key.fingerprint));
        let target = tempfile::tempdir().unwrap();
        let out_dir = target.path().join("r");
        restore
            .restore(&url, &out_dir, None, &["--encrypt-key", &key.fingerprint])
            .assert_success();
        assert_trees_equal(src.path(), &out_dir);
        restore.collection_status(&url).assert_success();
    }
}
