//! Helpers shared by Flotilla's end-to-end tests (`tests/tests/*.rs`).
//!
//! - [`tree`]: capture and compare directory trees ([`TreeSnapshot`], [`compare`],
//!   [`assert_trees_equal`]) and build test trees ([`TreeBuilder`],
//!   [`deterministic_bytes`], [`deterministic_text`]).
//! - [`duplicity`]: run stock duplicity 0.8.22 in isolation ([`Duplicity`]).
//! - [`gpg`]: a throw-away GnuPG home ([`GpgHome`]) for keys, encryption and
//!   decryption with stock gpg.
//! - [`bins`]: find the workspace binaries ([`agent_bin`], [`coordinator_bin`]) and
//!   run processes ([`Cmd`], [`CmdOutput`]).
//! - [`fixture`]: the duplicity-written fixture chain ([`duplicity_fixture`]).
//!
//! External tools (duplicity, gpg, rdiff, GNU time) come from
//! `deploy/install-test-deps.sh`; tests that need them fail with that hint rather
//! than skip.

pub mod agent;
pub mod bins;
pub mod duplicity;
pub mod faults;
pub mod fixture;
pub mod fleet;
pub mod gpg;
pub mod stores;
pub mod tree;

pub use bins::{Cmd, CmdOutput, agent_bin, coordinator_bin};
pub use duplicity::{Duplicity, file_url};
pub use fixture::duplicity_fixture;
pub use gpg::{GpgHome, KeyAlgo, KeyInfo};
pub use tree::{
    CompareOptions, DiffKind, Difference, EntryKind, TreeBuilder, TreeSnapshot, assert_trees_equal,
    assert_trees_equal_with, compare, deterministic_bytes, deterministic_text, files_under,
};

/// Whether the tests run as root (effective uid 0): ownership is restored and
/// compared, devices can be made.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// This machine's host name as the kernel reports it (`gethostname`), which is
/// what duplicity writes as `Hostname` in manifests (Python
/// `socket.gethostname()`).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for buf.len() bytes.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(r, 0, "gethostname: {}", std::io::Error::last_os_error());
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_encodes() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn hostname_matches_uname() {
        let out = Cmd::new("uname").arg("-n").run_ok();
        assert_eq!(hostname(), out.stdout_str().trim());
    }

    #[test]
    fn is_root_matches_id() {
        let out = Cmd::new("id").arg("-u").run_ok();
        assert_eq!(is_root(), out.stdout_str().trim() == "0");
    }
}
