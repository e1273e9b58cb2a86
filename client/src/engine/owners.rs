//! User and group names: duplicity stores the backup host's names beside numeric ids and
//! maps them back name-first on the restoring host (duplicity-format.md §3.7, §4.1).

use std::collections::HashMap;
use std::ffi::{CStr, CString};

/// Caches passwd/group lookups (they can be slow with NSS backends).
#[derive(Default)]
pub struct Owners {
    user_names: HashMap<u64, Vec<u8>>,
    group_names: HashMap<u64, Vec<u8>>,
    user_ids: HashMap<Vec<u8>, Option<u64>>,
    group_ids: HashMap<Vec<u8>, Option<u64>>,
}

fn buf_len() -> usize {
    16 * 1024
}

fn lookup_user_name(uid: u64) -> Vec<u8> {
    let Ok(uid) = libc::uid_t::try_from(uid) else {
        return Vec::new();
    };
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; buf_len()];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; buf outlives the use of pwd fields.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
        return Vec::new();
    }
    // SAFETY: pw_name points into buf and is NUL-terminated.
    unsafe { CStr::from_ptr(pwd.pw_name) }.to_bytes().to_vec()
}

fn lookup_group_name(gid: u64) -> Vec<u8> {
    let Ok(gid) = libc::gid_t::try_from(gid) else {
        return Vec::new();
    };
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; buf_len()];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as above.
    let rc = unsafe { libc::getgrgid_r(gid, &mut grp, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() || grp.gr_name.is_null() {
        return Vec::new();
    }
    // SAFETY: gr_name points into buf and is NUL-terminated.
    unsafe { CStr::from_ptr(grp.gr_name) }.to_bytes().to_vec()
}

fn lookup_uid(name: &[u8]) -> Option<u64> {
    let c = CString::new(name).ok()?;
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; buf_len()];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: as above.
    let rc = unsafe {
        libc::getpwnam_r(
            c.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then(|| u64::from(pwd.pw_uid))
}

fn lookup_gid(name: &[u8]) -> Option<u64> {
    let c = CString::new(name).ok()?;
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; buf_len()];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as above.
    let rc = unsafe {
        libc::getgrnam_r(
            c.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then(|| u64::from(grp.gr_gid))
}

impl Owners {
    pub fn user_name(&mut self, uid: u64) -> Vec<u8> {
        self.user_names
            .entry(uid)
            .or_insert_with(|| lookup_user_name(uid))
            .clone()
    }

    pub fn group_name(&mut self, gid: u64) -> Vec<u8> {
        self.group_names
            .entry(gid)
            .or_insert_with(|| lookup_group_name(gid))
            .clone()
    }

    /// The local uid for a stored (name, id): the name if it exists here, else the id.
    pub fn local_uid(&mut self, name: &[u8], uid: u64) -> u64 {
        if name.is_empty() {
            return uid;
        }
        self.user_ids
            .entry(name.to_vec())
            .or_insert_with(|| lookup_uid(name))
            .unwrap_or(uid)
    }

    pub fn local_gid(&mut self, name: &[u8], gid: u64) -> u64 {
        if name.is_empty() {
            return gid;
        }
        self.group_ids
            .entry(name.to_vec())
            .or_insert_with(|| lookup_gid(name))
            .unwrap_or(gid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_resolves_both_ways() {
        let mut o = Owners::default();
        assert_eq!(o.user_name(0), b"root");
        assert_eq!(o.group_name(0), b"root");
        assert_eq!(o.local_uid(b"root", 77), 0);
        assert_eq!(o.local_uid(b"no-such-user-xyz", 77), 77);
        assert_eq!(o.local_uid(b"", 5), 5);
        assert_eq!(o.user_name(4_000_000_000), b"");
    }
}
