//! Throughput measurement (not a pass/fail test). Run in release mode:
//!
//! ```text
//! cargo test --release -p flotilla-common --test crypto_bench -- --ignored --nocapture
//! ```
//!
//! Input: ~200 MB of "mixed" data, the concatenated contents of files under /usr (binaries,
//! libraries, docs), like the data in the crate notes; falls back to generated data.

mod crypto_support;

use std::io::{Read, Write};
use std::time::Instant;

use crypto_support::*;
use flotilla_common::crypto::{Compression, EncryptionSpec, decrypt_reader};

const TOTAL: usize = 200 * 1024 * 1024;

fn collect_usr(total: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(total);
    let mut stack = vec![std::path::PathBuf::from("/usr")];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<_> = rd.filter_map(|e| e.ok()).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file()
                && let Ok(mut f) = std::fs::File::open(e.path())
            {
                let want = total - out.len();
                let _ = (&mut f).take(want as u64).read_to_end(&mut out);
                if out.len() >= total {
                    return out;
                }
            }
        }
    }
    out
}

fn mb_s(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

#[test]
#[ignore]
fn throughput() {
    let mut data = collect_usr(TOTAL);
    if data.len() < TOTAL {
        let mut g = MixedGen::new((TOTAL - data.len()) as u64);
        g.read_to_end(&mut data).unwrap();
    }
    println!("input: {} bytes", data.len());
    let cpu = || {
        let t = std::fs::read_to_string("/proc/self/stat").unwrap();
        let f: Vec<&str> = t.rsplit(')').next().unwrap().split_whitespace().collect();
        let tick = 100.0;
        (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / tick
    };
    let cases = [
        ("none", Compression::None, 1),
        ("zip-1", Compression::Zip { level: 1 }, 1),
        ("zip-1", Compression::Zip { level: 1 }, 2),
        ("zip-6", Compression::Zip { level: 6 }, 1),
        ("zip-6", Compression::Zip { level: 6 }, 2),
        ("zlib-6", Compression::Zlib { level: 6 }, 2),
    ];
    let mut messages = Vec::new();
    for (name, compression, threads) in cases {
        let spec = EncryptionSpec {
            passphrase: Some("bench".into()),
            ..spec(compression, threads)
        };
        let c0 = cpu();
        let t = Instant::now();
        let mut w = spec.writer(Vec::with_capacity(data.len() + 1024)).unwrap();
        for piece in data.chunks(128 * 1024) {
            w.write_all(piece).unwrap();
        }
        let msg = w.finish().unwrap();
        let secs = t.elapsed().as_secs_f64();
        let cpu_s = cpu() - c0;
        println!(
            "write {name:7} threads {threads}: {:7.1} MB/s wall, {:6.1} MB/s per CPU-second, ratio {:.2}",
            mb_s(data.len(), secs),
            mb_s(data.len(), cpu_s),
            data.len() as f64 / msg.len() as f64
        );
        if threads == 1 || name == "zlib-6" {
            messages.push((name, msg));
        }
    }
    let keys = pw_keys("bench");
    for (name, msg) in &messages {
        let c0 = cpu();
        let t = Instant::now();
        let mut r = decrypt_reader(&keys, &msg[..]).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0;
        loop {
            let k = r.read(&mut buf).unwrap();
            if k == 0 {
                break;
            }
            n += k;
        }
        let secs = t.elapsed().as_secs_f64();
        let cpu_s = cpu() - c0;
        assert_eq!(n, data.len());
        println!(
            "read  {name:7}: {:7.1} MB/s of plaintext wall, {:6.1} per CPU-second",
            mb_s(n, secs),
            mb_s(n, cpu_s)
        );
    }
}
