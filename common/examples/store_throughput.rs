//! Storage throughput: upload and download MB/s for one large object and for many
//! small ones, through the same `BlockingStore` the engine uses.
//!
//! ```sh
//! . deploy/services/env.sh
//! cargo run --release -p flotilla-common --example store_throughput -- azure://bench-tp
//! cargo run --release -p flotilla-common --example store_throughput -- swift://bench-tp
//! cargo run --release -p flotilla-common --example store_throughput -- file:///tmp/bench-tp
//! ```
//! Options: `--large-mb N` (default 256), `--small N` (default 1000), `--small-kb N`
//! (default 16). Account credentials come from the environment; a missing container
//! is created. The objects are deleted afterwards.

use flotilla_common::storage::{Destination, OpenOptions, open_blocking_with};
use std::io::{Read, Write};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut url = None;
    let (mut large_mb, mut small, mut small_kb) = (256usize, 1000usize, 16usize);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> Result<usize, Box<dyn std::error::Error>> {
            Ok(args
                .next()
                .ok_or(format!("{name} needs a value"))?
                .parse()?)
        };
        match a.as_str() {
            "--large-mb" => large_mb = num("--large-mb")?,
            "--small" => small = num("--small")?,
            "--small-kb" => small_kb = num("--small-kb")?,
            _ if url.is_none() => url = Some(a),
            other => return Err(format!("unexpected argument {other:?}").into()),
        }
    }
    let url = url.ok_or("usage: store_throughput URL [--large-mb N] [--small N] [--small-kb N]")?;
    let rt = tokio::runtime::Runtime::new()?;
    let options = OpenOptions::default();
    let dest = Destination::parse(&url)?;
    rt.block_on(dest.create_container(&options))?;
    let store = open_blocking_with(&url, &options, rt.handle().clone())?;

    // Incompressible data, as encrypted volumes are.
    let mut x = 0x2545F4914F6CDD1Du64;
    let mut block = vec![0u8; 1 << 20];
    for b in block.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
    }
    let mb = |bytes: usize, secs: f64| bytes as f64 / 1e6 / secs;

    let t = Instant::now();
    let mut w = store.put_writer("tp-large");
    for _ in 0..large_mb {
        w.write_all(&block)?;
    }
    w.finish()?;
    let up = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut r = store.get("tp-large")?;
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0usize;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let down = t.elapsed().as_secs_f64();
    assert_eq!(got, large_mb << 20);
    let large = large_mb << 20;
    println!(
        "{url}: large object {large_mb} MiB: upload {:.1} MB/s ({up:.2} s), download {:.1} MB/s ({down:.2} s)",
        mb(large, up),
        mb(large, down)
    );

    let body = &block[..small_kb << 10];
    let t = Instant::now();
    for i in 0..small {
        store.put_bytes(&format!("tp-small-{i:05}"), body.to_vec())?;
    }
    let up = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for i in 0..small {
        let b = store.get_bytes(&format!("tp-small-{i:05}"))?;
        assert_eq!(b.len(), body.len());
    }
    let down = t.elapsed().as_secs_f64();
    let total = small * body.len();
    println!(
        "{url}: {small} small objects of {small_kb} KiB, one at a time: upload {:.1} MB/s ({:.0} objects/s), download {:.1} MB/s ({:.0} objects/s)",
        mb(total, up),
        small as f64 / up,
        mb(total, down),
        small as f64 / down
    );
    store.delete("tp-large")?;
    for i in 0..small {
        store.delete(&format!("tp-small-{i:05}"))?;
    }
    Ok(())
}
