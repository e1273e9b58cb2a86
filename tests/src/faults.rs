//! A fault-injecting HTTP/1.1 proxy to put between a client and a storage service.
//!
//! One request per connection (the proxy rewrites `Connection` to `close`), and for
//! each, chosen by a seeded RNG: answer 503 itself, close without answering, cut the
//! response after some bytes, delay, or pass through. Counters say what it did, so a
//! test can check that the faults really happened. `set_down(true)` makes it refuse
//! every connection, like a store that is gone.

use rand::{Rng, SeedableRng, rngs::StdRng};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Shares (0..1) of requests that get each fault.
#[derive(Clone, Debug)]
pub struct Faults {
    /// Answered `503 Service Unavailable` by the proxy.
    pub error: f64,
    /// Connection closed before any answer.
    pub drop: f64,
    /// Response cut after a random number of bytes (mid-body for large responses).
    pub cut: f64,
    /// Forwarded after `delay`.
    pub slow: f64,
    pub delay: Duration,
    pub seed: u64,
}

impl Faults {
    pub fn none() -> Faults {
        Faults {
            error: 0.0,
            drop: 0.0,
            cut: 0.0,
            slow: 0.0,
            delay: Duration::ZERO,
            seed: 1,
        }
    }
}

/// What the proxy did so far.
#[derive(Debug, Default)]
pub struct Counters {
    pub passed: AtomicU64,
    pub errors: AtomicU64,
    pub drops: AtomicU64,
    pub cuts: AtomicU64,
    pub delays: AtomicU64,
    pub refused: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> [u64; 6] {
        [
            self.passed.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
            self.drops.load(Ordering::Relaxed),
            self.cuts.load(Ordering::Relaxed),
            self.delays.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        ]
    }
}

struct State {
    upstream: SocketAddr,
    faults: Mutex<Faults>,
    rng: Mutex<StdRng>,
    down: AtomicBool,
    /// Requests to serve before going down by itself (u64::MAX: never).
    down_after: AtomicU64,
    seen: AtomicU64,
    counters: Counters,
}

#[derive(Clone, Copy)]
enum Action {
    Pass,
    Error,
    Drop,
    Cut(usize),
    Slow(Duration),
}

/// The running proxy; stops when dropped.
pub struct FaultProxy {
    pub addr: SocketAddr,
    state: Arc<State>,
    rt: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// A proxy on 127.0.0.1 (random port) in front of `upstream` (`host:port`).
    pub fn start(upstream: &str, faults: Faults) -> FaultProxy {
        let upstream: SocketAddr = upstream.parse().expect("upstream host:port");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("proxy runtime");
        let listener = rt
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            upstream,
            rng: Mutex::new(StdRng::seed_from_u64(faults.seed)),
            faults: Mutex::new(faults),
            down: AtomicBool::new(false),
            down_after: AtomicU64::new(u64::MAX),
            seen: AtomicU64::new(0),
            counters: Counters::default(),
        });
        let st = state.clone();
        rt.spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let _ = handle(st, client).await;
                });
            }
        });
        FaultProxy {
            addr,
            state,
            rt: Some(rt),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn counters(&self) -> &Counters {
        &self.state.counters
    }

    pub fn set_faults(&self, faults: Faults) {
        *self.state.faults.lock().unwrap() = faults;
    }

    /// Refuse every connection (true) or serve again (false).
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
        self.state.down_after.store(u64::MAX, Ordering::SeqCst);
    }

    /// Serve `n` more connections, then refuse everything (a store that dies mid-run).
    pub fn go_down_after(&self, n: u64) {
        let seen = self.state.seen.load(Ordering::SeqCst);
        self.state.down_after.store(seen + n, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn choose(st: &State) -> Action {
    let f = st.faults.lock().unwrap().clone();
    let mut rng = st.rng.lock().unwrap();
    let x: f64 = rng.r#gen();
    let mut edge = f.error;
    if x < edge {
        return Action::Error;
    }
    edge += f.drop;
    if x < edge {
        return Action::Drop;
    }
    edge += f.cut;
    if x < edge {
        return Action::Cut(rng.gen_range(1..256 * 1024));
    }
    edge += f.slow;
    if x < edge {
        return Action::Slow(f.delay);
    }
    Action::Pass
}

/// The request head with `Connection: close` instead of any `Connection` header.
fn rewrite_head(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut out = String::with_capacity(text.len() + 20);
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        if line.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

async fn handle(st: Arc<State>, mut client: TcpStream) -> std::io::Result<()> {
    let c = &st.counters;
    if st.seen.fetch_add(1, Ordering::SeqCst) >= st.down_after.load(Ordering::SeqCst) {
        st.down.store(true, Ordering::SeqCst);
    }
    if st.down.load(Ordering::SeqCst) {
        c.refused.fetch_add(1, Ordering::Relaxed);
        return Ok(()); // closed at once
    }
    // Read the request head.
    let mut buf = Vec::with_capacity(4096);
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 1 << 20 {
            return Ok(());
        }
    };
    let action = choose(&st);
    match action {
        Action::Error => {
            c.errors.fetch_add(1, Ordering::Relaxed);
            client
                .write_all(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await?;
            let _ = client.shutdown().await;
            return Ok(());
        }
        Action::Drop => {
            c.drops.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        Action::Slow(d) => {
            c.delays.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(d).await;
        }
        Action::Cut(_) => {
            c.cuts.fetch_add(1, Ordering::Relaxed);
        }
        Action::Pass => {
            c.passed.fetch_add(1, Ordering::Relaxed);
        }
    }
    let mut upstream = TcpStream::connect(st.upstream).await?;
    upstream.write_all(&rewrite_head(&buf[..head_end])).await?;
    upstream.write_all(&buf[head_end..]).await?;
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let to_upstream = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut cr, &mut uw).await;
        let _ = uw.shutdown().await;
    });
    let limit = match action {
        Action::Cut(n) => n,
        _ => usize::MAX,
    };
    let mut sent = 0usize;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = ur.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        let n_out = n.min(limit - sent);
        cw.write_all(&chunk[..n_out]).await?;
        sent += n_out;
        if sent >= limit {
            break; // cut: close mid-response
        }
    }
    let _ = cw.shutdown().await;
    to_upstream.abort();
    Ok(())
}
