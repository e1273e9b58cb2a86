//! Locating the workspace's binaries and running processes.
//!
//! [`agent_bin`] and [`coordinator_bin`] find `flotilla-agent` and `flotilla` in the
//! cargo target directory the running test binary was built into. [`Cmd`] runs any
//! program with captured output, optional stdin bytes and a timeout, and returns a
//! [`CmdOutput`] whose `assert_*` methods print the command line and both streams
//! when they fail.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Default time limit of a [`Cmd`]: generous, but a hung child (for example a gpg
/// waiting for a passphrase) fails the test instead of hanging the suite.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Name of the agent binary (`client/src/bin/flotilla-agent.rs`).
pub const AGENT_BIN: &str = "flotilla-agent";
/// Name of the coordinator / admin CLI binary (`coordinator/src/main.rs`).
pub const COORDINATOR_BIN: &str = "flotilla";

/// The cargo profile directory (`target/<profile>` or `target/<triple>/<profile>`)
/// that holds the running test executable.
///
/// Derived from [`std::env::current_exe`]: test binaries live in
/// `<profile dir>/deps/<name>-<hash>`. If the executable is not inside a `deps`
/// directory, `$CARGO_TARGET_DIR/debug` (or `<workspace>/target/debug`) is used.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    profile_dir_from_exe(&exe).unwrap_or_else(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_dir().join("target"));
        target.join("debug")
    })
}

/// `<profile dir>` for an executable at `<profile dir>/deps/<exe>`, or `None`.
pub(crate) fn profile_dir_from_exe(exe: &Path) -> Option<PathBuf> {
    let parent = exe.parent()?;
    if parent.file_name()? == "deps" {
        Some(parent.parent()?.to_path_buf())
    } else {
        None
    }
}

/// The cargo target directory (parent of [`profile_dir`]), e.g. `/work/main/target`.
pub fn target_dir() -> PathBuf {
    let profile = profile_dir();
    profile.parent().map(Path::to_path_buf).unwrap_or(profile)
}

/// The workspace root (parent of the `tests` crate).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate has a parent directory")
        .to_path_buf()
}

/// Path of a workspace binary: `$CARGO_BIN_EXE_<name>` if set at run time, else
/// `<profile dir>/<name>`. Panics with a build hint if the file does not exist.
#[track_caller]
pub fn workspace_bin(name: &str) -> PathBuf {
    let path = std::env::var_os(format!("CARGO_BIN_EXE_{name}"))
        .map(PathBuf::from)
        .unwrap_or_else(|| profile_dir().join(name));
    if !path.is_file() {
        panic!(
            "binary `{name}` not found at {}: build it first with `cargo build --workspace --bins` \
             (same profile as the tests; set CARGO_BIN_EXE_{name} to override)",
            path.display()
        );
    }
    path
}

/// Path of the `flotilla-agent` binary of the workspace build (see [`workspace_bin`]).
#[track_caller]
pub fn agent_bin() -> PathBuf {
    workspace_bin(AGENT_BIN)
}

/// Path of the `flotilla` (coordinator and admin CLI) binary (see [`workspace_bin`]).
#[track_caller]
pub fn coordinator_bin() -> PathBuf {
    workspace_bin(COORDINATOR_BIN)
}

/// A command to run with captured output. A thin builder over
/// [`std::process::Command`] that adds stdin bytes, a timeout (the whole process
/// group is killed when it expires) and a readable description for failures.
///
/// stdin is `/dev/null` unless [`Cmd::stdin`] gives bytes, so nothing can block on
/// a terminal prompt.
#[derive(Debug)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, Option<OsString>)>,
    cwd: Option<PathBuf>,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
}

impl Cmd {
    /// A command running `program` (looked up in `PATH` if it has no `/`).
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Cmd {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            cwd: None,
            stdin: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// `flotilla-agent` of the workspace build.
    #[track_caller]
    pub fn agent() -> Self {
        Cmd::new(agent_bin())
    }

    /// `flotilla` (coordinator / admin CLI) of the workspace build.
    #[track_caller]
    pub fn coordinator() -> Self {
        Cmd::new(coordinator_bin())
    }

    /// This command with its stdout going into a shell pipeline `tail` (e.g. `head -n1`),
    /// run by bash; the exit status (and stderr) are this command's, not the pipeline's.
    pub fn piped_into(self, tail: &str) -> Self {
        let mut args = vec![
            OsString::from("-c"),
            OsString::from(format!("\"$@\" | {tail}; exit \"${{PIPESTATUS[0]}}\"")),
            OsString::from("bash"),
            self.program,
        ];
        args.extend(self.args);
        Cmd {
            program: OsString::from("bash"),
            args,
            ..self
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable for the child.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    /// Sets several environment variables.
    pub fn envs<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (k, v) in vars {
            self = self.env(k, v);
        }
        self
    }

    /// Removes an environment variable from the child's environment.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.envs.push((key.as_ref().to_owned(), None));
        self
    }

    /// Working directory of the child.
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.cwd = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Bytes written to the child's stdin (then closed).
    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(data.into());
        self
    }

    /// Time limit (default [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The program and arguments, shell-quoted, for messages.
    pub fn describe(&self) -> String {
        let mut s = shell_quote(&self.program);
        for a in &self.args {
            s.push(' ');
            s.push_str(&shell_quote(a));
        }
        s
    }

    /// The equivalent [`std::process::Command`] (stdio not configured), for callers
    /// that need to manage the child themselves (daemons, kill tests).
    pub fn to_command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args);
        for (k, v) in &self.envs {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        if let Some(d) = &self.cwd {
            c.current_dir(d);
        }
        c
    }

    /// Runs to completion (or timeout) and captures stdout and stderr.
    ///
    /// Panics only if the program cannot be started at all; a non-zero exit, a
    /// signal or a timeout is reported in the [`CmdOutput`].
    #[track_caller]
    pub fn run(&self) -> CmdOutput {
        let description = self.describe();
        let mut cmd = self.to_command();
        cmd.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // own process group, so that a timeout can kill grandchildren (gpg) too
        .process_group(0);
        let started = Instant::now();
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => panic!("cannot start `{description}`: {e}"),
        };
        let pid = child.id() as libc::pid_t;

        let (done_tx, done_rx) = mpsc::channel::<()>();
        let stdout_buf = Arc::new(Mutex::new(Vec::new()));
        let stderr_buf = Arc::new(Mutex::new(Vec::new()));
        spawn_reader(child.stdout.take(), stdout_buf.clone(), done_tx.clone());
        spawn_reader(child.stderr.take(), stderr_buf.clone(), done_tx);
        if let (Some(mut w), Some(data)) = (child.stdin.take(), self.stdin.clone()) {
            thread::spawn(move || {
                // a child that exits without reading gives EPIPE: not our failure
                let _ = w.write_all(&data);
            });
        }

        let mut timed_out = false;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => {}
                Err(e) => panic!("waiting for `{description}`: {e}"),
            }
            if started.elapsed() >= self.timeout {
                timed_out = true;
                // SAFETY: plain syscall; negative pid = the child's process group.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
                break child.wait().expect("wait after kill");
            }
            thread::sleep(Duration::from_millis(5));
        };
        // Readers end at EOF; a daemon that inherited the pipes (a stray gpg-agent)
        // could keep them open, so wait a bounded time and take what was read.
        let grace = Instant::now() + Duration::from_secs(10);
        for _ in 0..2 {
            let left = grace.saturating_duration_since(Instant::now());
            if done_rx.recv_timeout(left).is_err() {
                break;
            }
        }
        let take = |b: &Arc<Mutex<Vec<u8>>>| std::mem::take(&mut *b.lock().unwrap());
        CmdOutput {
            description,
            status,
            stdout: take(&stdout_buf),
            stderr: take(&stderr_buf),
            timed_out,
            elapsed: started.elapsed(),
        }
    }

    /// [`Cmd::run`] and [`CmdOutput::assert_success`].
    #[track_caller]
    pub fn run_ok(&self) -> CmdOutput {
        let out = self.run();
        out.assert_success();
        out
    }
}

fn spawn_reader<R: Read + Send + 'static>(
    src: Option<R>,
    buf: Arc<Mutex<Vec<u8>>>,
    done: mpsc::Sender<()>,
) {
    thread::spawn(move || {
        if let Some(mut r) = src {
            let mut chunk = [0u8; 65536];
            loop {
                match r.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => buf.lock().unwrap().extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
        let _ = done.send(());
    });
}

/// Quotes a word for display in a POSIX shell (lossy for non-UTF-8 bytes).
pub fn shell_quote(word: &OsStr) -> String {
    let s = word.to_string_lossy();
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// What a finished [`Cmd`] produced.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    /// The command line, shell-quoted.
    pub description: String,
    /// Exit status (a killed process has a signal and no code).
    pub status: ExitStatus,
    /// Everything written to stdout.
    pub stdout: Vec<u8>,
    /// Everything written to stderr.
    pub stderr: Vec<u8>,
    /// Whether the process group was killed because the timeout expired.
    pub timed_out: bool,
    /// Wall-clock time from start to exit.
    pub elapsed: Duration,
}

impl CmdOutput {
    /// Exited with status 0 (and did not time out).
    pub fn success(&self) -> bool {
        self.status.success() && !self.timed_out
    }

    /// The exit code, `None` if killed by a signal.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// stdout as text (lossy).
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as text (lossy).
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// stdout followed by stderr, as text.
    pub fn combined(&self) -> String {
        format!("{}{}", self.stdout_str(), self.stderr_str())
    }

    /// Panics (showing command, status and both streams) unless it succeeded.
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        if !self.success() {
            panic!("command failed: {self}");
        }
        self
    }

    /// Panics unless it exited with a non-zero code (a timeout or a signal is
    /// also a panic: that is a hang or a crash, not a clean failure).
    #[track_caller]
    pub fn assert_failure(&self) -> &Self {
        if self.timed_out || self.code().is_none_or(|c| c == 0) {
            panic!("expected a clean failure (non-zero exit code): {self}");
        }
        self
    }

    /// Panics unless it exited with exactly `code`.
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        if self.timed_out || self.code() != Some(code) {
            panic!("expected exit code {code}: {self}");
        }
        self
    }

    /// Panics unless stdout or stderr contains `needle`.
    #[track_caller]
    pub fn assert_output_contains(&self, needle: &str) -> &Self {
        if !self.combined().contains(needle) {
            panic!("expected output to contain {needle:?}: {self}");
        }
        self
    }
}

impl fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "`{}`", self.description)?;
        if self.timed_out {
            writeln!(
                f,
                "  TIMED OUT after {:.1?} (process group killed)",
                self.elapsed
            )?;
        }
        match (self.status.code(), self.status.signal()) {
            (Some(c), _) => writeln!(f, "  exit code {c} after {:.1?}", self.elapsed)?,
            (None, Some(s)) => writeln!(f, "  killed by signal {s} after {:.1?}", self.elapsed)?,
            _ => writeln!(f, "  status {:?}", self.status)?,
        }
        writeln!(f, "--- stdout ({} bytes) ---", self.stdout.len())?;
        write_stream(f, &self.stdout)?;
        writeln!(f, "--- stderr ({} bytes) ---", self.stderr.len())?;
        write_stream(f, &self.stderr)?;
        write!(f, "--- end ---")
    }
}

fn write_stream(f: &mut fmt::Formatter<'_>, data: &[u8]) -> fmt::Result {
    // keep panics readable: show at most the first and last 32 KiB
    const LIMIT: usize = 32 * 1024;
    if data.len() <= 2 * LIMIT {
        write_text(f, data)
    } else {
        write_text(f, &data[..LIMIT])?;
        writeln!(f, "\n[... {} bytes omitted ...]", data.len() - 2 * LIMIT)?;
        write_text(f, &data[data.len() - LIMIT..])
    }
}

fn write_text(f: &mut fmt::Formatter<'_>, data: &[u8]) -> fmt::Result {
    let s = String::from_utf8_lossy(data);
    f.write_str(&s)?;
    if !s.is_empty() && !s.ends_with('\n') {
        f.write_str("\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_dir_is_parent_of_deps() {
        let p = Path::new("/w/target/debug/deps/harness-0123abcd");
        assert_eq!(
            profile_dir_from_exe(p).unwrap(),
            Path::new("/w/target/debug")
        );
        let p = Path::new("/w/target/x86_64-unknown-linux-gnu/release/deps/t-1");
        assert_eq!(
            profile_dir_from_exe(p).unwrap(),
            Path::new("/w/target/x86_64-unknown-linux-gnu/release")
        );
        assert_eq!(profile_dir_from_exe(Path::new("/usr/bin/true")), None);
    }

    #[test]
    fn profile_dir_of_this_test_binary_exists() {
        let dir = profile_dir();
        assert!(dir.is_dir(), "{}", dir.display());
        assert!(target_dir().is_dir());
    }

    #[test]
    fn captures_both_streams_stdin_and_code() {
        let out = Cmd::new("sh")
            .args(["-c", "cat; echo err >&2; exit 3"])
            .stdin(&b"hello\n"[..])
            .run();
        assert_eq!(out.stdout, b"hello\n");
        assert_eq!(out.stderr, b"err\n");
        assert_eq!(out.code(), Some(3));
        assert!(!out.success());
        out.assert_failure().assert_code(3);
        out.assert_output_contains("err");
    }

    #[test]
    fn env_and_cwd_are_applied() {
        let dir = tempfile::tempdir().unwrap();
        let out = Cmd::new("sh")
            .args(["-c", "echo \"$FOO:${HOME-unset}:$(pwd)\""])
            .env("FOO", "bar")
            .env_remove("HOME")
            .current_dir(dir.path())
            .run_ok();
        let expected = format!(
            "bar:unset:{}\n",
            dir.path().canonicalize().unwrap().display()
        );
        assert_eq!(out.stdout_str(), expected);
    }

    #[test]
    fn large_output_does_not_deadlock() {
        let input = vec![b'x'; 3 << 20];
        let out = Cmd::new("cat").stdin(input.clone()).run_ok();
        assert_eq!(out.stdout.len(), input.len());
    }

    #[test]
    fn timeout_kills_the_process_group() {
        let out = Cmd::new("sh")
            .args(["-c", "sleep 30 & sleep 30; echo never"])
            .timeout(Duration::from_millis(300))
            .run();
        assert!(out.timed_out);
        assert!(!out.success());
        assert!(out.elapsed < Duration::from_secs(20), "{out}");
        assert!(out.to_string().contains("TIMED OUT"));
    }

    #[test]
    #[should_panic(expected = "command failed")]
    fn assert_success_panics_with_streams() {
        Cmd::new("false").run().assert_success();
    }

    #[test]
    #[should_panic(expected = "cargo build --workspace --bins")]
    fn missing_binary_gives_build_hint() {
        workspace_bin("no-such-flotilla-binary");
    }

    #[test]
    fn shell_quote_quotes_only_when_needed() {
        assert_eq!(shell_quote(OsStr::new("a/b-c.txt")), "a/b-c.txt");
        assert_eq!(shell_quote(OsStr::new("a b")), "'a b'");
        assert_eq!(shell_quote(OsStr::new("it's")), r"'it'\''s'");
        assert_eq!(shell_quote(OsStr::new("")), "''");
    }
}
