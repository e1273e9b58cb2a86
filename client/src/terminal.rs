//! Terminal input and output shared by the binaries: a progress bar on stderr (the engine
//! reports through [`Progress`]; a job followed over gRPC updates
//! [`TerminalProgress::show`]), prompts, and stdout through [`emit`] ([`out!`]/[`outln!`]).

use crate::engine::progress::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::atomic::{AtomicU64, Ordering};

/// Phase, elapsed time, bar, bytes, rate, ETA and a file count, redrawn at most 8 times
/// a second.
pub struct TerminalProgress {
    bar: ProgressBar,
    files: AtomicU64,
    total_files: AtomicU64,
}

impl Default for TerminalProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl TerminalProgress {
    pub fn new() -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(8));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>8} {elapsed_precise} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        TerminalProgress {
            bar,
            files: AtomicU64::new(0),
            total_files: AtomicU64::new(0),
        }
    }

    fn files_message(&self, done: u64, total: u64) {
        self.bar.set_message(if total > 0 {
            format!("{done}/{total} files")
        } else {
            format!("{done} files")
        });
    }

    /// A totals estimate can be exceeded (stored sizes are compressed): the bar grows
    /// rather than sitting at 100 %.
    fn keep_within_length(&self) {
        let pos = self.bar.position();
        if self.bar.length().is_some_and(|l| pos > l) {
            self.bar.set_length(pos + pos / 20);
        }
    }

    /// Shows a remote job's progress as reported (absolute figures).
    pub fn show(&self, phase: &str, files: u64, bytes: u64, files_total: u64, bytes_total: u64) {
        self.bar.set_prefix(phase.to_string());
        if bytes_total > 0 {
            self.bar.set_length(bytes_total);
        }
        self.bar.set_position(bytes);
        self.keep_within_length();
        self.files_message(files, files_total);
    }

    /// Runs `f` with the bar hidden (a prompt).
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.bar.suspend(f)
    }

    /// Prints a line above the bar.
    pub fn println(&self, msg: &str) {
        self.bar.println(msg);
    }
}

impl Progress for TerminalProgress {
    fn wants_totals(&self) -> bool {
        true
    }
    fn start(&self, phase: &str, total: Option<u64>) {
        // A new phase (restore, then verify) counts from zero.
        let previous = self.bar.prefix();
        if !previous.is_empty() && previous != phase {
            self.bar.reset();
            self.files.store(0, Ordering::Relaxed);
        }
        self.bar.set_prefix(phase.to_string());
        if let Some(t) = total {
            self.bar.set_length(t);
        }
    }
    fn set_total(&self, bytes: u64, files: u64) {
        self.bar.set_length(bytes);
        self.total_files.store(files, Ordering::Relaxed);
    }
    fn bytes(&self, n: u64) {
        self.bar.inc(n);
        self.keep_within_length();
    }
    fn file(&self) {
        let f = self.files.fetch_add(1, Ordering::Relaxed) + 1;
        if f.is_multiple_of(64) {
            self.files_message(f, self.total_files.load(Ordering::Relaxed));
        }
    }
    fn note(&self, msg: &str) {
        self.bar.println(msg);
    }
    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Asks for a secret on the controlling terminal with echo off (`None` without a
/// terminal, as under cron or in scripts). The trailing newline is removed.
pub fn prompt_secret(prompt: &str) -> std::io::Result<Option<String>> {
    use std::io::{BufRead, Write};
    use std::os::fd::AsRawFd;
    let Ok(tty) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
    else {
        return Ok(None);
    };
    let fd = tty.as_raw_fd();
    // SAFETY: termios is plain data; tcgetattr fills it for a valid descriptor.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
        return Ok(None);
    }
    let mut quiet = saved;
    quiet.c_lflag &= !libc::ECHO;
    quiet.c_lflag |= libc::ECHONL;
    (&tty).write_all(prompt.as_bytes())?;
    (&tty).flush()?;
    // SAFETY: fd is open; `quiet` came from tcgetattr.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    let mut line = String::new();
    let read = std::io::BufReader::new(&tty).read_line(&mut line);
    // SAFETY: as above; echo comes back whatever the read did.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    read?;
    Ok(Some(line.trim_end_matches(['\n', '\r']).to_string()))
}

/// Asks a yes/no question on the controlling terminal; `None` without one.
pub fn ask_yes_no(question: &str) -> Option<bool> {
    use std::io::{BufRead, Write};
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .ok()?;
    (&tty)
        .write_all(format!("{question} [y/N] ").as_bytes())
        .ok()?;
    let mut line = String::new();
    std::io::BufReader::new(&tty).read_line(&mut line).ok()?;
    Some(matches!(line.trim(), "y" | "Y" | "yes" | "Yes"))
}

/// `print!` through [`emit`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::terminal::emit(format_args!($($arg)*)) };
}

/// `println!` through [`emit`].
#[macro_export]
macro_rules! outln {
    () => { $crate::terminal::emit(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::terminal::emit(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Writes to stdout. When its reader has gone (`| head`, `| grep -q`) the command ends
/// as Unix tools do, killed by SIGPIPE, instead of panicking in `println!`. SIGPIPE stays
/// ignored everywhere else: network writes (`writev` on a socket a server reset) must
/// come back as errors, not kill the process.
pub fn emit(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        stdout_failed(e);
    }
}

/// Ends the process after a failed write to stdout: by SIGPIPE when the reader has gone,
/// else with status 1 and a message.
pub fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        // SAFETY: restores the default disposition and raises the signal; no Rust code
        // runs in a handler.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::raise(libc::SIGPIPE);
        }
    }
    let program = std::env::args()
        .next()
        .and_then(|a| a.rsplit('/').next().map(str::to_string))
        .unwrap_or_else(|| "flotilla".into());
    eprintln!("{program}: cannot write to stdout: {e}");
    std::process::exit(1);
}
