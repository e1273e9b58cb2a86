//! Running `flotilla-agent` against a local store in a scratch directory.

use crate::bins::{Cmd, CmdOutput};
use std::path::{Path, PathBuf};

/// A scratch workspace: a `file://` store, a state directory and room for trees.
pub struct AgentEnv {
    pub dir: tempfile::TempDir,
    pub store: PathBuf,
    pub state: PathBuf,
    pub passphrase: Option<String>,
    /// A remote destination URL instead of the local `store` directory.
    pub remote_url: Option<String>,
    /// Environment for the agent (storage credentials); nothing else from the test
    /// process's storage settings reaches it.
    pub store_env: Vec<(String, String)>,
}

/// Every variable through which account credentials could reach an agent.
pub const STORAGE_ENV_VARS: &[&str] = &[
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT",
    "AZURE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_SHARED_ACCESS_SIGNATURE",
    "AZURE_STORAGE_ENDPOINT",
    "AZURE_ENDPOINT",
    "AZURE_STORAGE_USE_EMULATOR",
    "AZURITE_BLOB_STORAGE_URL",
    "SWIFT_AUTHURL",
    "SWIFT_AUTHVERSION",
    "SWIFT_USERNAME",
    "SWIFT_PASSWORD",
    "SWIFT_TENANTNAME",
    "SWIFT_REGIONNAME",
    "SWIFT_USER_DOMAIN_NAME",
    "SWIFT_PROJECT_NAME",
    "SWIFT_PROJECT_DOMAIN_NAME",
    "SWIFT_PREAUTHURL",
    "SWIFT_PREAUTHTOKEN",
    "ST_AUTH",
    "ST_USER",
    "ST_KEY",
    "OS_AUTH_URL",
    "OS_USERNAME",
    "OS_PASSWORD",
    "OS_PROJECT_NAME",
    "OS_STORAGE_URL",
    "OS_AUTH_TOKEN",
    "FLOTILLA_CREDENTIALS_FILE",
];

impl Default for AgentEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentEnv {
    /// A new workspace with symmetric encryption (passphrase `test-passphrase`).
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("flotilla-test-")
            .tempdir()
            .expect("tempdir");
        let store = dir.path().join("store");
        let state = dir.path().join("state");
        AgentEnv {
            dir,
            store,
            state,
            passphrase: Some("test-passphrase".into()),
            remote_url: None,
            store_env: Vec::new(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A workspace whose store is `url`, reached with `store_env`.
    pub fn remote(url: impl Into<String>, store_env: Vec<(String, String)>) -> Self {
        let mut env = Self::new();
        env.remote_url = Some(url.into());
        env.store_env = store_env;
        env
    }

    pub fn url(&self) -> String {
        if let Some(u) = &self.remote_url {
            return u.clone();
        }
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
        for var in STORAGE_ENV_VARS {
            c = c.env_remove(var);
        }
        for (k, v) in &self.store_env {
            c = c.env(k, v);
        }
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

/// One member of a tar stream, as [`read_tar`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarMember {
    /// Entry name as raw bytes (pax `path` / GNU long name / ustar prefix applied).
    pub name: Vec<u8>,
    /// Type flag byte (`b'0'` file, `b'2'` symlink, `b'5'` directory, `b'6'` fifo, ...).
    pub typeflag: u8,
    /// Permission bits from the header.
    pub mode: u32,
    /// Numeric owner.
    pub uid: u64,
    /// Numeric group.
    pub gid: u64,
    /// User name (may be empty).
    pub uname: Vec<u8>,
    /// Group name (may be empty).
    pub gname: Vec<u8>,
    /// Integer mtime.
    pub mtime: i64,
    /// Symlink target (pax `linkpath` / GNU long link applied).
    pub linkname: Vec<u8>,
    /// The member's data.
    pub data: Vec<u8>,
}

impl TarMember {
    /// The name as text (lossy), for assertions and messages.
    pub fn name_str(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

fn tar_field(h: &[u8], start: usize, len: usize) -> &[u8] {
    let f = &h[start..start + len];
    let end = f.iter().position(|&b| b == 0).unwrap_or(len);
    &f[..end]
}

fn tar_number(h: &[u8], start: usize, len: usize) -> u64 {
    let f = &h[start..start + len];
    if f[0] & 0x80 != 0 {
        // base-256 (GNU): big-endian, first byte without the marker bit
        return f[1..]
            .iter()
            .fold(u64::from(f[0] & 0x7f), |acc, &b| (acc << 8) | u64::from(b));
    }
    let s: String = f
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as char)
        .collect();
    let s = s.trim();
    if s.is_empty() {
        0
    } else {
        u64::from_str_radix(s, 8).unwrap_or_else(|e| panic!("bad tar number {s:?}: {e}"))
    }
}

/// Reads the members of a tar stream (ustar with `prefix`, pax `x`/`g` headers
/// with `path`/`linkpath`/`size`/`uid`/`gid`/`uname`/`gname`/`mtime`, GNU `L`/`K`
/// long names) up to the first all-zero header block or the end of the data.
/// Like duplicity's reader it ignores anything after that block (the padding
/// junk of encrypted volumes). Panics on a header with a wrong checksum or a
/// member running past the end of the data.
pub fn read_tar(data: &[u8]) -> Vec<TarMember> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut long_name: Option<Vec<u8>> = None;
    let mut long_link: Option<Vec<u8>> = None;
    while pos + 512 <= data.len() {
        let h = &data[pos..pos + 512];
        if h.iter().all(|&b| b == 0) {
            break;
        }
        let stored = tar_number(h, 148, 8);
        let unsigned: u64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(b)
                }
            })
            .sum();
        let signed: i64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    i64::from(b as i8)
                }
            })
            .sum();
        assert!(
            stored == unsigned || stored as i64 == signed,
            "tar header at offset {pos}: checksum {stored} != {unsigned}"
        );
        let typeflag = h[156];
        let mut size = tar_number(h, 124, 12) as usize;
        if let Some((_, v)) = pax.iter().rev().find(|(k, _)| k == b"size") {
            size = String::from_utf8_lossy(v).parse().expect("pax size");
        }
        let start = pos + 512;
        assert!(
            start + size <= data.len(),
            "tar member at offset {pos} ({size} bytes) runs past the end ({} bytes)",
            data.len()
        );
        let body = &data[start..start + size];
        pos = start + size.div_ceil(512) * 512;
        match typeflag {
            b'x' => {
                pax = parse_pax(body);
                continue;
            }
            b'g' => continue,
            b'L' => {
                long_name = Some(tar_field(body, 0, body.len()).to_vec());
                continue;
            }
            b'K' => {
                long_link = Some(tar_field(body, 0, body.len()).to_vec());
                continue;
            }
            _ => {}
        }
        let pax_get = |key: &[u8]| {
            pax.iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let mut name = tar_field(h, 0, 100).to_vec();
        if &h[257..262] == b"ustar" {
            let prefix = tar_field(h, 345, 155);
            if !prefix.is_empty() {
                name = [prefix, b"/", &name].concat();
            }
        }
        let name = pax_get(b"path").or(long_name.take()).unwrap_or(name);
        let linkname = pax_get(b"linkpath")
            .or(long_link.take())
            .unwrap_or_else(|| tar_field(h, 157, 100).to_vec());
        let num = |key: &[u8], start: usize, len: usize| {
            pax_get(key)
                .map(|v| {
                    let s = String::from_utf8_lossy(&v).into_owned();
                    let int = s.split('.').next().unwrap_or("0").to_string();
                    int.parse::<u64>().expect("pax number")
                })
                .unwrap_or_else(|| tar_number(h, start, len))
        };
        out.push(TarMember {
            name,
            typeflag,
            mode: tar_number(h, 100, 8) as u32,
            uid: num(b"uid", 108, 8),
            gid: num(b"gid", 116, 8),
            uname: pax_get(b"uname").unwrap_or_else(|| tar_field(h, 265, 32).to_vec()),
            gname: pax_get(b"gname").unwrap_or_else(|| tar_field(h, 297, 32).to_vec()),
            mtime: num(b"mtime", 136, 12) as i64,
            linkname,
            data: body.to_vec(),
        });
        pax.clear();
    }
    out
}

/// Parses pax extended header records (`<len> <key>=<value>\n`).
fn parse_pax(mut body: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let sp = body
            .iter()
            .position(|&b| b == b' ')
            .expect("pax record length");
        let len: usize = String::from_utf8_lossy(&body[..sp])
            .parse()
            .expect("pax record length");
        assert!(len > sp + 1 && len <= body.len(), "pax record length {len}");
        let rec = &body[sp + 1..len - 1]; // without the final LF
        let eq = rec.iter().position(|&b| b == b'=').expect("pax key=value");
        out.push((rec[..eq].to_vec(), rec[eq + 1..].to_vec()));
        body = &body[len..];
    }
    out
}
