//! A TCP proxy in front of nats-server that understands just enough of the NATS protocol to cut
//! connections at the worst moments for a publisher:
//!
//! - right after forwarding a publish to a chosen subject (the server stores it; the publisher
//!   never hears back), and
//! - right before forwarding a JetStream publish ack (the server stored it; the ack is lost).
//!
//! After a cut it can refuse connections for a while — an outage of chosen length, for example
//! longer than the stream's duplicate-detection period (`duplicate_window`). It stops cutting after `max_cuts`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// When to cut.
#[derive(Clone, Debug, Default)]
pub struct CutPlan {
    /// Cut after every n-th publish to the subject (0: never).
    pub after_publish_every: usize,
    /// Cut before every n-th JetStream publish ack (0: never).
    pub before_ack_every: usize,
    /// Refuse connections this long after each cut.
    pub refuse_for: Duration,
    /// Stop cutting after this many cuts.
    pub max_cuts: usize,
}

#[derive(Debug)]
struct Shared {
    plan: CutPlan,
    subject: String,
    publishes: AtomicUsize,
    acks: AtomicUsize,
    cuts: AtomicUsize,
    refuse_until: std::sync::Mutex<Option<Instant>>,
}

impl Shared {
    /// Whether this publish/ack is the one to cut at (and counts the cut).
    fn cut_now(&self, counter: &AtomicUsize, every: usize) -> bool {
        if every == 0 || self.cuts.load(Ordering::SeqCst) >= self.plan.max_cuts {
            return false;
        }
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        if !n.is_multiple_of(every) {
            return false;
        }
        self.cuts.fetch_add(1, Ordering::SeqCst);
        *self.refuse_until.lock().expect("not poisoned") = Some(Instant::now() + self.plan.refuse_for);
        true
    }

    fn refusing(&self) -> bool {
        self.refuse_until.lock().expect("not poisoned").is_some_and(|until| Instant::now() < until)
    }
}

/// The running proxy.
#[derive(Debug)]
pub struct NatsProxy {
    /// Where clients connect.
    pub port: u16,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl NatsProxy {
    /// Proxies to `127.0.0.1:<upstream>`, watching publishes to `subject`.
    pub async fn start(upstream: u16, subject: &str, plan: CutPlan) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            plan,
            subject: subject.to_owned(),
            publishes: AtomicUsize::new(0),
            acks: AtomicUsize::new(0),
            cuts: AtomicUsize::new(0),
            refuse_until: std::sync::Mutex::new(None),
        });
        let accepting = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if accepting.refusing() {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else { continue };
                tokio::spawn(relay(client, server, Arc::clone(&accepting)));
            }
        });
        Ok(Self { port, shared, task })
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Cuts made so far.
    pub fn cuts(&self) -> usize {
        self.shared.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for NatsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One protocol operation at the start of `buffer`: its length and, for messages, the subject
/// and the payload range.
struct Op {
    len: usize,
    verb: String,
    subject: String,
    payload: std::ops::Range<usize>,
}

fn next_op(buffer: &[u8]) -> Option<Op> {
    let line_end = buffer.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&buffer[..line_end]).ok()?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let verb = words.first().map(|w| w.to_ascii_uppercase()).unwrap_or_default();
    let sized = |total: Option<&&str>| total.and_then(|t| t.parse::<usize>().ok());
    let (payload_len, header_len) = match verb.as_str() {
        "PUB" | "MSG" => (sized(words.last())?, 0),
        "HPUB" | "HMSG" => (sized(words.last())?, sized(words.get(words.len() - 2))?),
        _ => return Some(Op { len: line_end + 2, verb, subject: String::new(), payload: 0..0 }),
    };
    let start = line_end + 2;
    let len = start + payload_len + 2;
    if buffer.len() < len {
        return None;
    }
    let subject = words.get(1).map(|s| (*s).to_owned()).unwrap_or_default();
    Some(Op { len, verb, subject, payload: start + header_len..start + payload_len })
}

async fn relay(client: TcpStream, server: TcpStream, shared: Arc<Shared>) {
    let cut = Arc::new(Notify::new());
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let upstream = pump(client_read, server_write, Arc::clone(&shared), Arc::clone(&cut), Direction::ToServer);
    let downstream = pump(server_read, client_write, shared, Arc::clone(&cut), Direction::ToClient);
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
        () = cut.notified() => {}
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToServer,
    ToClient,
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    shared: Arc<Shared>,
    cut: Arc<Notify>,
    direction: Direction,
) {
    let mut buffer = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let read = match from.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buffer.extend_from_slice(&chunk[..read]);
        while let Some(op) = next_op(&buffer) {
            let bytes: Vec<u8> = buffer.drain(..op.len).collect();
            let is_ack = direction == Direction::ToClient
                && matches!(op.verb.as_str(), "MSG" | "HMSG")
                && bytes[op.payload.clone()].starts_with(br#"{"stream":"#);
            if is_ack && shared.cut_now(&shared.acks, shared.plan.before_ack_every) {
                cut.notify_one();
                return;
            }
            if to.write_all(&bytes).await.is_err() {
                return;
            }
            let is_publish = direction == Direction::ToServer
                && matches!(op.verb.as_str(), "PUB" | "HPUB")
                && op.subject == shared.subject;
            if is_publish && shared.cut_now(&shared.publishes, shared.plan.after_publish_every) {
                let _ = to.flush().await;
                cut.notify_one();
                return;
            }
        }
    }
}
