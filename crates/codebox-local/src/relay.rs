//! A byte relay between a kernel's ZeroMQ socket and ours that bounds the size of one message.
//!
//! The `zeromq` crate has no `ZMQ_MAXMSGSIZE`: its decoder reserves a frame's whole declared
//! length as soon as the header arrives and keeps every frame of a multi-part message until
//! the last one, so one `print('x' * 200 MB)` would be held whole in this process before the
//! output cap could cut it. The relay sits in front of each of our sockets toward a kernel:
//! it passes bytes through unchanged, reads the ZMTP framing of what the kernel sends (the
//! 64-byte greeting, then frames of one flags byte and a 1- or 8-byte length), and the moment
//! a frame header announces a message larger than the limit it forwards nothing more, closes
//! both sides and reports the size. The kernel is then recycled by its owner. Memory per
//! relay is one fixed buffer per direction, whatever the kernel sends.
//!
//! Our side of the relay listens on a Unix socket in a private 0700 directory of this
//! process (or, where the kernel speaks TCP, on 127.0.0.1), accepts exactly one connection
//! (our own ZeroMQ socket's) and then closes the listener.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::task::JoinHandle;

/// Bytes of one ZMTP 3 greeting.
const GREETING: u64 = 64;

/// Bytes read at once, in each direction.
const CHUNK: usize = 64 * 1024;

/// Where the kernel's socket is.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// A Unix socket (the kernel's `ipc://` endpoint).
    Ipc(PathBuf),
    /// A TCP port on 127.0.0.1.
    Tcp(u16),
}

/// The size of the first message over the limit, shared by the relays of one kernel.
#[derive(Debug, Default)]
pub(crate) struct Oversize(AtomicU64);

impl Oversize {
    /// The size of the message that tripped the limit, if one did.
    pub(crate) fn get(&self) -> Option<u64> {
        Some(self.0.load(Ordering::Acquire)).filter(|n| *n > 0)
    }

    fn set(&self, size: u64) {
        let _ = self.0.compare_exchange(0, size.max(1), Ordering::AcqRel, Ordering::Acquire);
    }
}

/// What the kernel has sent so far, as far as framing goes.
#[derive(Debug)]
struct Meter {
    limit: u64,
    state: State,
    /// Bytes of the message being received (its frames so far).
    message: u64,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Greeting { left: u64 },
    Flags,
    Length { long: bool, more: bool, command: bool, have: u8, value: u64 },
    Body { left: u64 },
}

impl Meter {
    fn new(limit: u64) -> Self {
        Self { limit, state: State::Greeting { left: GREETING }, message: 0 }
    }

    /// Account for `bytes`; the size of a message over the limit, as soon as a frame header
    /// announces it.
    fn feed(&mut self, mut bytes: &[u8]) -> Result<(), u64> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Greeting { left } | State::Body { left } => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    bytes = &bytes[n as usize..];
                    if *left == 0 {
                        self.state = State::Flags;
                    }
                }
                State::Flags => {
                    let flags = bytes[0];
                    bytes = &bytes[1..];
                    self.state = State::Length {
                        long: flags & 0b10 != 0,
                        more: flags & 0b1 != 0,
                        command: flags & 0b100 != 0,
                        have: 0,
                        value: 0,
                    };
                }
                State::Length { long, more, command, have, value } => {
                    *value = (*value << 8) | u64::from(bytes[0]);
                    *have += 1;
                    bytes = &bytes[1..];
                    if *have == if *long { 8 } else { 1 } {
                        let (len, more, command) = (*value, *more, *command);
                        // A command stands alone; a message is all its frames together.
                        let total = if command { len } else { self.message.saturating_add(len) };
                        if total > self.limit {
                            return Err(total);
                        }
                        if !command {
                            self.message = if more { total } else { 0 };
                        }
                        self.state = if len == 0 { State::Flags } else { State::Body { left: len } };
                    }
                }
            }
        }
        Ok(())
    }
}

/// Our end of a relay: the endpoint our socket connects to, and the task that serves it.
#[derive(Debug)]
pub(crate) struct Relay {
    pub(crate) endpoint: String,
    pub(crate) task: JoinHandle<()>,
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

/// Listen for our own socket in `private` (a 0700 directory of this process; TCP when
/// `target` is), relay it to `target`, and trip `oversize` (then call `trip`) when the kernel
/// sends a message over `limit` bytes.
pub(crate) async fn start(
    target: Target,
    private: &Path,
    name: &str,
    limit: u64,
    oversize: Arc<Oversize>,
    trip: impl Fn() + Send + 'static,
) -> std::io::Result<Relay> {
    let (listener, endpoint) = match &target {
        Target::Ipc(_) => {
            let path = private.join(name);
            (Listener::Unix(UnixListener::bind(&path)?), format!("ipc://{}", path.display()))
        }
        Target::Tcp(_) => {
            let l = TcpListener::bind("127.0.0.1:0").await?;
            let port = l.local_addr()?.port();
            (Listener::Tcp(l), format!("tcp://127.0.0.1:{port}"))
        }
    };
    let task = tokio::spawn(async move {
        // Exactly one connection: ours. The listener closes when this returns.
        let ours: (Box<dyn AsyncRead + Send + Unpin>, Box<dyn AsyncWrite + Send + Unpin>) = match listener {
            Listener::Unix(l) => match l.accept().await {
                Ok((s, _)) => split(s),
                Err(_) => return,
            },
            Listener::Tcp(l) => match l.accept().await {
                Ok((s, _)) => {
                    let _ = s.set_nodelay(true);
                    split(s)
                }
                Err(_) => return,
            },
        };
        let Some(theirs) = connect(&target).await else { return };
        let (our_read, our_write) = ours;
        let (their_read, their_write) = theirs;
        let up = copy(our_read, their_write);
        let down = metered(their_read, our_write, Meter::new(limit));
        // Either direction ending ends both: dropping the halves closes the sockets.
        tokio::select! {
            _ = up => {}
            r = down => {
                if let Err(size) = r {
                    tracing::warn!(size, limit, "a kernel sent a message over the size limit; recycling it");
                    oversize.set(size);
                    trip();
                }
            }
        }
    });
    Ok(Relay { endpoint, task })
}

/// How long to keep trying the kernel's socket: it may not listen yet (a socket file exists
/// between bind and listen; a TCP port is bound whenever the kernel gets there). The kernel's
/// start deadline and death watch end the wait sooner by aborting the relay.
const CONNECT_FOR: std::time::Duration = std::time::Duration::from_secs(120);

async fn connect(target: &Target) -> Option<Halves> {
    let deadline = tokio::time::Instant::now() + CONNECT_FOR;
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        let attempt = match target {
            Target::Ipc(p) => UnixStream::connect(p).await.map(split),
            Target::Tcp(port) => TcpStream::connect(("127.0.0.1", *port)).await.map(|s| {
                let _ = s.set_nodelay(true);
                split(s)
            }),
        };
        match attempt {
            Ok(halves) => return Some(halves),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                tracing::debug!("the kernel's socket never accepted: {e}");
                return None;
            }
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_millis(20));
            }
        }
    }
}

/// Relay tasks that are aborted when dropped, unless handed over with [`Relays::into_tasks`].
#[derive(Debug, Default)]
pub(crate) struct Relays(Vec<JoinHandle<()>>);

impl Relays {
    pub(crate) fn push(&mut self, relay: JoinHandle<()>) {
        self.0.push(relay);
    }

    /// The tasks, to be aborted by their new owner.
    pub(crate) fn into_tasks(mut self) -> Vec<JoinHandle<()>> {
        std::mem::take(&mut self.0)
    }
}

impl Drop for Relays {
    fn drop(&mut self) {
        self.0.iter().for_each(JoinHandle::abort);
    }
}

type Halves = (Box<dyn AsyncRead + Send + Unpin>, Box<dyn AsyncWrite + Send + Unpin>);

fn split<S: AsyncRead + AsyncWrite + Send + 'static>(s: S) -> Halves {
    let (r, w) = tokio::io::split(s);
    (Box::new(r), Box::new(w))
}

async fn copy(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Copy what the kernel sends, stopping before a message over the limit: `Err(size)`.
async fn metered(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut meter: Meter,
) -> Result<(), u64> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(n) => {
                meter.feed(&buf[..n])?;
                if to.write_all(&buf[..n]).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greeting() -> Vec<u8> {
        let mut g = vec![0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 3, 1];
        g.resize(64, 0);
        g
    }

    fn frame(flags: u8, body: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        if body.len() > 255 {
            f.push(flags | 0b10);
            f.extend((body.len() as u64).to_be_bytes());
        } else {
            f.extend([flags, body.len() as u8]);
        }
        f.extend(body);
        f
    }

    #[test]
    fn messages_within_the_limit_pass_byte_by_byte_or_whole() {
        let mut stream = greeting();
        stream.extend(frame(0b100, b"\x05READY"));
        stream.extend(frame(0b1, &[7u8; 300]));
        stream.extend(frame(0, &[7u8; 700]));
        stream.extend(frame(0, &[]));
        let mut whole = Meter::new(1000);
        assert_eq!(whole.feed(&stream), Ok(()));
        let mut bytewise = Meter::new(1000);
        for b in &stream {
            assert_eq!(bytewise.feed(std::slice::from_ref(b)), Ok(()));
        }
        assert!(matches!(bytewise.state, State::Flags));
    }

    #[test]
    fn a_frame_over_the_limit_trips_at_its_header() {
        let mut m = Meter::new(1000);
        let mut stream = greeting();
        // Only the header of a 200 MB frame: it trips before any of the body arrives.
        stream.extend([0b10]);
        stream.extend((200u64 << 20).to_be_bytes());
        assert_eq!(m.feed(&stream), Err(200 << 20));
    }

    #[test]
    fn a_message_counts_all_its_frames() {
        let mut m = Meter::new(1000);
        let mut stream = greeting();
        stream.extend(frame(0b1, &[1u8; 600]));
        stream.extend(frame(0b1, &[1u8; 600]));
        assert_eq!(m.feed(&stream), Err(1200));
        // ...while separate messages of the same sizes are fine.
        let mut m = Meter::new(1000);
        let mut stream = greeting();
        stream.extend(frame(0, &[1u8; 600]));
        stream.extend(frame(0, &[1u8; 600]));
        assert_eq!(m.feed(&stream), Ok(()));
    }

    /// Feed `stream` in the pieces `cuts` makes of it; the first size over the limit.
    fn feed_in_pieces(limit: u64, stream: &[u8], cuts: &[usize]) -> Result<(), u64> {
        let mut m = Meter::new(limit);
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.sort_unstable();
        let mut at = 0;
        for cut in cuts.into_iter().chain([stream.len()]) {
            m.feed(&stream[at..cut])?;
            at = cut;
        }
        Ok(())
    }

    /// One frame of a generated stream: its flags (more, command) and body length.
    fn frames() -> impl proptest::strategy::Strategy<Value = Vec<(bool, bool, usize)>> {
        use proptest::prelude::*;
        prop::collection::vec((any::<bool>(), prop::bool::weighted(0.1), 0usize..1200), 0..12)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]

        // What the relay reads is the kernel's (the tenant's) to choose: any bytes, cut
        // anywhere, are accounted for without a panic, and the verdict does not depend on
        // how the bytes were cut.
        #[test]
        fn any_bytes_cut_anywhere_get_one_verdict(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            cuts in proptest::collection::vec(proptest::prelude::any::<usize>(), 0..8),
            limit in 0u64..2000,
        ) {
            let mut stream = greeting();
            stream.extend(bytes);
            let whole = feed_in_pieces(limit, &stream, &[]);
            proptest::prop_assert_eq!(feed_in_pieces(limit, &stream, &cuts), whole);
        }

        // Well-formed streams: the verdict is exactly "some message (all its frames) or
        // some command is over the limit", with that size.
        #[test]
        fn a_message_over_the_limit_is_caught_with_its_size(
            frames in frames(),
            cuts in proptest::collection::vec(proptest::prelude::any::<usize>(), 0..8),
            limit in 0u64..3000,
        ) {
            let mut stream = greeting();
            let mut expected = Ok(());
            let mut message = 0u64;
            for (more, command, len) in frames {
                let flags = u8::from(more && !command) | if command { 0b100 } else { 0 };
                stream.extend(frame(flags, &vec![0x5a; len]));
                let total = if command { len as u64 } else { message + len as u64 };
                if expected.is_ok() && total > limit {
                    expected = Err(total);
                }
                if !command {
                    message = if more { total } else { 0 };
                }
            }
            proptest::prop_assert_eq!(feed_in_pieces(limit, &stream, &cuts), expected);
        }
    }

    #[tokio::test]
    async fn the_relay_passes_bytes_and_cuts_an_oversized_message() {
        let dir = tempfile::tempdir().unwrap();
        let kernel_path = dir.path().join("kernel");
        let kernel = UnixListener::bind(&kernel_path).unwrap();
        let oversize = Arc::new(Oversize::default());
        let tripped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let t = tripped.clone();
        let relay = start(Target::Ipc(kernel_path), dir.path(), "ours", 1000, oversize.clone(), move || {
            t.store(true, Ordering::Release)
        })
        .await
        .unwrap();
        let path = relay.endpoint.strip_prefix("ipc://").unwrap();
        let mut ours = UnixStream::connect(path).await.unwrap();
        let (mut theirs, _) = kernel.accept().await.unwrap();
        ours.write_all(b"hello kernel").await.unwrap();
        let mut buf = [0u8; 12];
        theirs.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello kernel");
        let mut ok = greeting();
        ok.extend(frame(0, b"small"));
        theirs.write_all(&ok).await.unwrap();
        let mut got = vec![0u8; ok.len()];
        ours.read_exact(&mut got).await.unwrap();
        assert_eq!(got, ok);
        let mut big = vec![0b10];
        big.extend((1u64 << 30).to_be_bytes());
        big.extend([0u8; 4096]);
        theirs.write_all(&big).await.unwrap();
        let mut rest = Vec::new();
        ours.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "nothing of the oversized message passed");
        relay.task.await.unwrap();
        assert_eq!(oversize.get(), Some(1 << 30));
        assert!(tripped.load(Ordering::Acquire));
    }
}
