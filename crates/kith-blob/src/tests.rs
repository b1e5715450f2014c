//! Tests on real files in temporary directories; the protocol ones run over real libp2p streams
//! (TCP, Noise, Yamux on 127.0.0.1) between two or three swarms.

use std::fs;
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol, noise, tcp, yamux};
use proptest::prelude::*;

use crate::crypto::{self, PLAINTEXT_CHUNK};
use crate::wire::{self, Request, Status};
use crate::*;

fn random_bytes(len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    getrandom::fill(&mut out).unwrap();
    out
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap();
    path
}

// ---------------------------------------------------------------- crypto

#[test]
fn seal_open_round_trip_at_chunk_boundaries() {
    for len in [
        0,
        1,
        15,
        16,
        17,
        PLAINTEXT_CHUNK - 1,
        PLAINTEXT_CHUNK,
        PLAINTEXT_CHUNK + 1,
        3 * PLAINTEXT_CHUNK,
    ] {
        let plain = random_bytes(len);
        let (sealed, key) = seal_bytes(&plain).unwrap();
        assert_eq!(sealed.len() as u64, ciphertext_len(len as u64), "len {len}");
        assert_eq!(plaintext_len(sealed.len() as u64), Some(len as u64));
        assert_eq!(open_bytes(&sealed, &key).unwrap(), plain, "len {len}");
    }
}

#[test]
fn open_rejects_tampering_truncation_and_wrong_key() {
    let plain = random_bytes(3 * PLAINTEXT_CHUNK + 100);
    let (sealed, key) = seal_bytes(&plain).unwrap();

    let mut flipped = sealed.clone();
    flipped[PLAINTEXT_CHUNK + 20] ^= 1;
    assert!(matches!(
        open_bytes(&flipped, &key),
        Err(CryptoError::Tampered { chunk: 1 })
    ));

    // Cut exactly after a whole chunk: only the last flag can tell.
    let cut = &sealed[..2 * (PLAINTEXT_CHUNK + crypto::TAG_LEN)];
    assert!(matches!(
        open_bytes(cut, &key),
        Err(CryptoError::Truncated { chunks: 2 })
    ));
    // Cut inside a chunk.
    let cut = &sealed[..sealed.len() - 10];
    assert!(open_bytes(cut, &key).is_err());
    assert!(matches!(
        open_bytes(&[], &key),
        Err(CryptoError::Truncated { chunks: 0 })
    ));

    let other = BlobKey::generate().unwrap();
    assert!(matches!(
        open_bytes(&sealed, &other),
        Err(CryptoError::Tampered { chunk: 0 })
    ));
    assert_eq!(format!("{key:?}"), "BlobKey(..)");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn store_round_trip_any_size(len in prop_oneof![0usize..70_000, 120_000usize..400_000]) {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().join("blobs")).unwrap();
        let plain = random_bytes(len);
        let info = store.import_sealed_reader(&plain[..], len as u64).unwrap();
        prop_assert_eq!(info.size, ciphertext_len(len as u64));
        prop_assert!(store.is_complete(info.hash).unwrap());
        let out = dir.path().join("out");
        let n = store.export_decrypted(info.hash, &info.key, &out).unwrap();
        prop_assert_eq!(n, len as u64);
        prop_assert_eq!(fs::read(&out).unwrap(), plain);
    }

    #[test]
    fn request_decode_never_panics(body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Request::decode(&body);
    }
}

#[test]
fn request_round_trip() {
    let mut ranges = bao_tree::ChunkRanges::from(bao_tree::ChunkNum(0)..bao_tree::ChunkNum(16));
    ranges |= bao_tree::ChunkRanges::from(bao_tree::ChunkNum(48)..bao_tree::ChunkNum(100));
    let request = Request {
        hash: [7; 32],
        size: Some(12345),
        ranges,
    };
    let frame = request.encode();
    assert_eq!(frame[0] as usize, frame.len() - 1);
    assert_eq!(Request::decode(&frame[1..]).unwrap(), request);
}

// ---------------------------------------------------------------- store

#[test]
fn twenty_megabytes_seal_store_export() {
    let dir = tempfile::tempdir().unwrap();
    let plain = random_bytes(20 * 1024 * 1024);
    let src = write_file(dir.path(), "photo.bin", &plain);
    let store = BlobStore::open(dir.path().join("blobs")).unwrap();
    let info = store.import_sealed(&src).unwrap();
    // The address is the BLAKE3 of the ciphertext, never of the plaintext.
    assert_ne!(info.hash.as_bytes(), blake3::hash(&plain).as_bytes());
    let status = store.status(info.hash).unwrap();
    assert!(status.complete);
    assert_eq!(status.verified_bytes, info.size);
    assert!(store.size_on_disk() > info.size && store.size_on_disk() < info.size + info.size / 100);

    // A new instance on the same directory sees the same blob.
    drop(store);
    let store = BlobStore::open(dir.path().join("blobs")).unwrap();
    assert_eq!(store.list().len(), 1);
    let out = dir.path().join("photo.out");
    store.export_decrypted(info.hash, &info.key, &out).unwrap();
    assert!(fs::read(&out).unwrap() == plain);

    // A partial blob cannot be exported; removal forgets everything.
    let other = BlobHash::from_bytes([1; 32]);
    store
        .create_partial(other, ciphertext_len(100_000))
        .unwrap();
    assert_eq!(
        store.missing(other).unwrap(),
        vec![0..ciphertext_len(100_000)]
    );
    assert!(matches!(
        store.export_decrypted(other, &info.key, &out),
        Err(StoreError::Incomplete { .. })
    ));
    assert!(store.remove(other).unwrap());
    assert!(matches!(
        store.missing(other),
        Err(StoreError::UnknownBlob { .. })
    ));
    assert!(matches!(
        store.create_partial(other, 10),
        Err(StoreError::InvalidSize { .. })
    ));
}

#[test]
fn export_of_tampered_blob_fails_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().join("blobs")).unwrap();
    let plain = random_bytes(200_000);
    let info = store
        .import_sealed_reader(&plain[..], plain.len() as u64)
        .unwrap();
    let data = dir.path().join("blobs").join(format!("{}.data", info.hash));
    let f = fs::OpenOptions::new().write(true).open(&data).unwrap();
    f.write_all_at(&[0xff], 70_000).unwrap();
    let out = dir.path().join("out.bin");
    let err = store
        .export_decrypted(info.hash, &info.key, &out)
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Crypto(CryptoError::Tampered { chunk: 1 })),
        "{err}"
    );
    assert!(!out.exists());
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary file left"
    );
}

#[test]
fn import_notices_a_source_of_the_wrong_length() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let plain = random_bytes(1000);
    let short = store.import_sealed_reader(&plain[..], 2000).unwrap_err();
    assert!(
        matches!(short, StoreError::Crypto(CryptoError::SizeChanged { .. })),
        "{short}"
    );
    let long = store.import_sealed_reader(&plain[..], 500).unwrap_err();
    assert!(
        matches!(long, StoreError::Crypto(CryptoError::SizeChanged { .. })),
        "{long}"
    );
    assert!(store.list().is_empty());
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        0,
        "temporary files removed"
    );
}

// ---------------------------------------------------------------- libp2p harness

const PROTOCOL: StreamProtocol = StreamProtocol::new(PROTOCOL_NAME);

type Swarm = libp2p::Swarm<libp2p_stream::Behaviour>;

fn new_swarm() -> Swarm {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

type Handler =
    Arc<dyn Fn(libp2p::Stream) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A swarm on 127.0.0.1 that hands every `/kith/blob/1.0.0` stream to `handler`.
async fn provider(handler: Handler) -> (PeerId, Multiaddr) {
    let mut swarm = new_swarm();
    let mut incoming = swarm.behaviour().new_control().accept(PROTOCOL).unwrap();
    swarm
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            break address;
        }
    };
    let peer = *swarm.local_peer_id();
    tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    tokio::spawn(async move {
        while let Some((_peer, stream)) = incoming.next().await {
            tokio::spawn(handler(stream));
        }
    });
    (peer, addr)
}

fn serving(store: BlobStore) -> Handler {
    Arc::new(move |stream| {
        let store = store.clone();
        Box::pin(async move {
            let _ = serve(stream, &store, &ServeLimits::default()).await;
        })
    })
}

/// A swarm connected to every provider; its control opens streams.
async fn client(providers: &[(PeerId, Multiaddr)]) -> libp2p_stream::Control {
    let mut swarm = new_swarm();
    let control = swarm.behaviour().new_control();
    for (_, addr) in providers {
        swarm.dial(addr.clone()).unwrap();
    }
    let mut connected = 0;
    while connected < providers.len() {
        if let SwarmEvent::ConnectionEstablished { .. } = swarm.select_next_some().await {
            connected += 1;
        }
    }
    tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    control
}

/// The sending side of most protocol tests: a store under `dir/sender` holding `len` random bytes
/// sealed, with the plaintext to compare against.
fn sealed_sender(dir: &Path, len: usize) -> (BlobStore, Vec<u8>, BlobInfo) {
    let sender = BlobStore::open(dir.join("sender")).unwrap();
    let plain = random_bytes(len);
    let info = sender
        .import_sealed(&write_file(dir, "in", &plain))
        .unwrap();
    (sender, plain, info)
}

/// A provider serving `store` and a client swarm connected to it.
async fn served(store: BlobStore) -> (PeerId, libp2p_stream::Control) {
    let (peer, addr) = provider(serving(store)).await;
    (peer, client(&[(peer, addr)]).await)
}

// ---------------------------------------------------------------- protocol

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_megabytes_over_libp2p() {
    let dir = tempfile::tempdir().unwrap();
    let (sender, plain, info) = sealed_sender(dir.path(), 20 * 1024 * 1024);
    let (peer, mut control) = served(sender.clone()).await;

    let receiver = BlobStore::open(dir.path().join("receiver")).unwrap();
    let started = Instant::now();
    let stream = control.open_stream(peer, PROTOCOL).await.unwrap();
    let mut last = None;
    let outcome = fetch_missing(stream, &receiver, info.hash, info.size, |p| last = Some(p))
        .await
        .unwrap();
    eprintln!("20 MiB over libp2p in {:?}", started.elapsed());
    assert!(outcome.complete);
    assert_eq!(outcome.bytes_written, info.size);
    assert_eq!(
        last,
        Some(Progress {
            written: info.size,
            wanted: info.size
        })
    );
    // The hash pairs cost ~0.4% at 16 KiB chunk groups.
    assert!(outcome.bytes_received < info.size + info.size / 100);
    assert_eq!(
        receiver.metrics().bytes_received.load(Ordering::Relaxed),
        outcome.bytes_received
    );
    assert_eq!(
        receiver.metrics().active_downloads.load(Ordering::Relaxed),
        0
    );

    let out = dir.path().join("out");
    receiver
        .export_decrypted(info.hash, &info.key, &out)
        .unwrap();
    assert!(fs::read(&out).unwrap() == plain);
    // A second fetch has nothing to do.
    let stream = control.open_stream(peer, PROTOCOL).await.unwrap();
    let again = fetch_missing(stream, &receiver, info.hash, info.size, |_| {})
        .await
        .unwrap();
    assert_eq!(again.bytes_received, 0);
    assert!(sender.metrics().bytes_sent.load(Ordering::Relaxed) >= info.size);
}

/// A stream that reads as closed after `remaining` bytes, like a connection cut mid-transfer.
struct CutAfter<S> {
    inner: S,
    remaining: usize,
}

impl<S: AsyncRead + Unpin> AsyncRead for CutAfter<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.remaining == 0 {
            return Poll::Ready(Ok(0));
        }
        let max = buf.len().min(self.remaining);
        let this = &mut *self;
        let n = futures::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf[..max]))?;
        this.remaining -= n;
        Poll::Ready(Ok(n))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CutAfter<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_transfer_resumes_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (sender, plain, info) = sealed_sender(dir.path(), 20 * 1024 * 1024);
    let (peer, mut control) = served(sender).await;

    let receiver_dir = dir.path().join("receiver");
    let receiver = BlobStore::open(&receiver_dir).unwrap();
    let stream = control.open_stream(peer, PROTOCOL).await.unwrap();
    let cut = CutAfter {
        inner: stream,
        remaining: info.size as usize / 2,
    };
    let err = fetch_missing(cut, &receiver, info.hash, info.size, |_| {})
        .await
        .unwrap_err();
    let FetchError::Truncated { written, .. } = err else {
        panic!("expected Truncated, got {err}")
    };
    let first = receiver.metrics().bytes_received.load(Ordering::Relaxed);
    let kept: u64 = receiver
        .have(info.hash)
        .unwrap()
        .iter()
        .map(|r| r.end - r.start)
        .sum();
    assert_eq!(kept, written, "every verified group was recorded");
    assert!(kept > info.size * 2 / 5, "about half arrived: {kept}");
    drop(receiver);

    // A new instance on the same directory resumes with only the missing half.
    let receiver = BlobStore::open(&receiver_dir).unwrap();
    assert!(!receiver.is_complete(info.hash).unwrap());
    let stream = control.open_stream(peer, PROTOCOL).await.unwrap();
    let outcome = fetch_missing(stream, &receiver, info.hash, info.size, |_| {})
        .await
        .unwrap();
    assert!(outcome.complete);
    let total = first + outcome.bytes_received;
    assert!(
        total as f64 <= 1.1 * info.size as f64,
        "{total} bytes for a {}-byte blob",
        info.size
    );
    let out = dir.path().join("out");
    receiver
        .export_decrypted(info.hash, &info.key, &out)
        .unwrap();
    assert!(fs::read(&out).unwrap() == plain);
}

/// A provider that sends its (corrupted) data without checking it, as a malicious one would.
fn lying(store: BlobStore) -> Handler {
    Arc::new(move |mut stream| {
        let store = store.clone();
        Box::pin(async move {
            let mut len = [0u8; 2];
            stream.read_exact(&mut len[..1]).await.unwrap();
            let len = if len[0] & 0x80 != 0 {
                stream.read_exact(&mut len[1..]).await.unwrap();
                (len[0] & 0x7f) as usize | (len[1] as usize) << 7
            } else {
                len[0] as usize
            };
            let mut body = vec![0u8; len];
            stream.read_exact(&mut body).await.unwrap();
            let request = Request::decode(&body).unwrap();
            let reader = store.reader(BlobHash::from_bytes(request.hash)).unwrap();
            let mut head = vec![0u8];
            head.extend_from_slice(&reader.size.to_le_bytes());
            stream.write_all(&head).await.unwrap();
            let counter = std::sync::atomic::AtomicU64::new(0);
            let writer = crate::io::StreamWriter {
                inner: &mut stream,
                counter: &counter,
                progress: None,
                written: 0,
                also: None,
            };
            let _ = bao_tree::io::fsm::encode_ranges(
                reader.data,
                reader.outboard,
                &request.ranges,
                writer,
            )
            .await;
            let _ = stream.close().await;
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_is_rejected_and_an_honest_holder_completes() {
    let dir = tempfile::tempdir().unwrap();
    let (sender, plain, info) = sealed_sender(dir.path(), 3 * 1024 * 1024);

    // A copy of the sender's store whose data file has one byte flipped at 2 MiB + 100.
    let liar_dir = dir.path().join("liar");
    fs::create_dir(&liar_dir).unwrap();
    for item in fs::read_dir(dir.path().join("sender")).unwrap() {
        let item = item.unwrap();
        fs::copy(item.path(), liar_dir.join(item.file_name())).unwrap();
    }
    let bad_offset = 2 * 1024 * 1024 + 100;
    let data = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(liar_dir.join(format!("{}.data", info.hash)))
        .unwrap();
    let mut byte = [0u8];
    data.read_exact_at(&mut byte, bad_offset).unwrap();
    data.write_all_at(&[byte[0] ^ 0x01], bad_offset).unwrap();
    let liar = BlobStore::open(&liar_dir).unwrap();

    let (liar_peer, liar_addr) = provider(lying(liar)).await;
    let (honest_peer, honest_addr) = provider(serving(sender)).await;
    let mut control = client(&[(liar_peer, liar_addr), (honest_peer, honest_addr)]).await;

    let receiver_dir = dir.path().join("receiver");
    let receiver = BlobStore::open(&receiver_dir).unwrap();
    let stream = control.open_stream(liar_peer, PROTOCOL).await.unwrap();
    let err = fetch_missing(stream, &receiver, info.hash, info.size, |_| {})
        .await
        .unwrap_err();
    let FetchError::Rejected { offset, .. } = err else {
        panic!("expected Rejected, got {err}")
    };
    assert_eq!(offset, bad_offset / GROUP_BYTES * GROUP_BYTES);
    assert_eq!(
        receiver.metrics().ranges_rejected.load(Ordering::Relaxed),
        1
    );
    // Everything before the bad group is kept; the bad group was never written.
    assert_eq!(receiver.have(info.hash).unwrap(), vec![0..offset]);
    let mut group = vec![0u8; GROUP_BYTES as usize];
    let received = fs::File::open(receiver_dir.join(format!("{}.data", info.hash))).unwrap();
    received.read_exact_at(&mut group, offset).unwrap();
    assert!(
        group.iter().all(|b| *b == 0),
        "unverified bytes were written"
    );

    let stream = control.open_stream(honest_peer, PROTOCOL).await.unwrap();
    let outcome = fetch_missing(stream, &receiver, info.hash, info.size, |_| {})
        .await
        .unwrap();
    assert!(outcome.complete);
    assert_eq!(outcome.bytes_written, info.size - offset);
    let out = dir.path().join("out");
    receiver
        .export_decrypted(info.hash, &info.key, &out)
        .unwrap();
    assert!(fs::read(&out).unwrap() == plain);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_server_with_a_corrupt_disk_stops_and_forgets_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let sender_dir = dir.path().join("sender");
    let sender = BlobStore::open(&sender_dir).unwrap();
    let plain = random_bytes(1024 * 1024);
    let info = sender
        .import_sealed_reader(&plain[..], plain.len() as u64)
        .unwrap();
    let data = fs::OpenOptions::new()
        .write(true)
        .open(sender_dir.join(format!("{}.data", info.hash)))
        .unwrap();
    data.write_all_at(&[0xaa, 0xbb], 500_000).unwrap();
    let (peer, mut control) = served(sender.clone()).await;

    let receiver = BlobStore::open(dir.path().join("receiver")).unwrap();
    let stream = control.open_stream(peer, PROTOCOL).await.unwrap();
    let err = fetch_missing(stream, &receiver, info.hash, info.size, |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Truncated { .. }), "{err}");
    assert_eq!(sender.metrics().local_corruption.load(Ordering::Relaxed), 1);
    let bad_group = 500_000 / GROUP_BYTES * GROUP_BYTES;
    assert_eq!(
        sender.missing(info.hash).unwrap(),
        vec![bad_group..bad_group + GROUP_BYTES]
    );
    assert_eq!(receiver.have(info.hash).unwrap(), vec![0..bad_group]);
}

async fn status_of(stream: &mut libp2p::Stream, frame: &[u8]) -> u8 {
    stream.write_all(frame).await.unwrap();
    stream.flush().await.unwrap();
    let mut status = [0u8];
    stream.read_exact(&mut status).await.unwrap();
    status[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let server = BlobStore::open(dir.path().join("server")).unwrap();
    let plain = random_bytes(100_000);
    let info = server
        .import_sealed_reader(&plain[..], plain.len() as u64)
        .unwrap();
    let partial = BlobHash::from_bytes([9; 32]);
    server
        .create_partial(partial, ciphertext_len(50_000))
        .unwrap();
    let (peer, mut control) = served(server.clone()).await;
    let chunks =
        |a: u64, b: u64| bao_tree::ChunkRanges::from(bao_tree::ChunkNum(a)..bao_tree::ChunkNum(b));
    let request = |hash: BlobHash, ranges| {
        Request {
            hash: *hash.as_bytes(),
            size: None,
            ranges,
        }
        .encode()
    };

    let mut stream = control.open_stream(peer, PROTOCOL).await.unwrap();
    // Garbage inside a well-formed frame.
    assert_eq!(
        status_of(&mut stream, &[5, 9, 9, 9, 9, 9]).await,
        Status::BadRequest as u8
    );
    // An unknown hash.
    let unknown = request(BlobHash::from_bytes([3; 32]), chunks(0, 16));
    assert_eq!(
        status_of(&mut stream, &unknown).await,
        Status::UnknownBlob as u8
    );
    // Ranges past the end (100 KB is 98 chunks).
    let past = request(info.hash, chunks(0, 200));
    assert_eq!(
        status_of(&mut stream, &past).await,
        Status::OutOfRange as u8
    );
    // Ranges of a blob the server has not received.
    let not_held = request(partial, chunks(0, 16));
    assert_eq!(
        status_of(&mut stream, &not_held).await,
        Status::NotHeld as u8
    );
    // The same stream then serves a good request.
    let receiver = BlobStore::open(dir.path().join("receiver")).unwrap();
    let outcome = fetch_missing(&mut stream, &receiver, info.hash, info.size, |_| {})
        .await
        .unwrap();
    assert!(outcome.complete);

    // An oversized frame is refused and ends its stream; a new stream is served.
    let mut stream = control.open_stream(peer, PROTOCOL).await.unwrap();
    let mut huge = Vec::new();
    wire::put_varint(&mut huge, 1 << 20);
    assert_eq!(status_of(&mut stream, &huge).await, Status::TooLarge as u8);
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest).await;
    assert!(rest.is_empty(), "stream closed after TooLarge");

    let other = BlobStore::open(dir.path().join("other")).unwrap();
    let stream = control.open_stream(peer, PROTOCOL).await.unwrap();
    let outcome = fetch_missing(stream, &other, info.hash, info.size, |_| {})
        .await
        .unwrap();
    assert!(outcome.complete);

    let m = server.metrics();
    assert_eq!(m.refused_bad_request.load(Ordering::Relaxed), 1);
    assert_eq!(m.refused_unknown_blob.load(Ordering::Relaxed), 1);
    assert_eq!(m.refused_out_of_range.load(Ordering::Relaxed), 1);
    assert_eq!(m.refused_not_held.load(Ordering::Relaxed), 1);
    assert_eq!(m.refused_too_large.load(Ordering::Relaxed), 1);
    assert_eq!(m.refused_total(), 5);

    // A client refused by a holder gets the status as a typed error.
    let stream = control.open_stream(peer, PROTOCOL).await.unwrap();
    let third = BlobStore::open(dir.path().join("third")).unwrap();
    let err = fetch_missing(stream, &third, partial, ciphertext_len(50_000), |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            FetchError::Refused {
                status: Status::NotHeld
            }
        ),
        "{err}"
    );
}

// ---------------------------------------------------------------- hold (relays)

/// A relay's policy in miniature: one known tag, a byte quota over everything held.
struct TestHold {
    store: BlobStore,
    tag: Vec<u8>,
    quota: u64,
}

impl HoldPolicy for TestHold {
    fn admit(&self, offer: &HoldOffer) -> Result<BlobStore, HoldRefusal> {
        if offer.tag != self.tag {
            return Err(HoldRefusal {
                status: Status::NotAccepted,
                reason: "not a user of this relay".into(),
            });
        }
        let held: u64 = self
            .store
            .list()
            .iter()
            .filter(|s| s.hash != offer.hash)
            .map(|s| s.size)
            .sum();
        if held + offer.size > self.quota {
            return Err(HoldRefusal {
                status: Status::Full,
                reason: format!("quota of {} bytes full ({held} held)", self.quota),
            });
        }
        Ok(self.store.clone())
    }
}

fn holding(policy: Arc<TestHold>, own: BlobStore) -> Handler {
    Arc::new(move |stream| {
        let policy = policy.clone();
        let own = own.clone();
        Box::pin(async move {
            let stores = [own, policy.store.clone()];
            let _ = serve_with(
                stream,
                &stores,
                Some(policy.as_ref()),
                &ServeLimits::default(),
            )
            .await;
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_blob_is_verified_held_and_served_to_the_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let (sender, plain, info) = sealed_sender(dir.path(), 3 * 1024 * 1024 + 77);
    let held = BlobStore::open(dir.path().join("relay-held")).unwrap();
    let own = BlobStore::open(dir.path().join("relay-own")).unwrap();
    let policy = Arc::new(TestHold {
        store: held.clone(),
        tag: b"bob".to_vec(),
        quota: 8 * 1024 * 1024,
    });
    let (relay, addr) = provider(holding(policy, own)).await;
    let mut control = client(&[(relay, addr)]).await;

    // Not a user here: refused with the relay's reason, nothing kept.
    let stream = control.open_stream(relay, PROTOCOL).await.unwrap();
    match push(stream, &sender, info.hash, b"eve", |_| {}).await {
        Err(PushError::Refused { status, reason }) => {
            assert_eq!(status, Status::NotAccepted);
            assert_eq!(reason, "not a user of this relay");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(held.list().is_empty());

    let stream = control.open_stream(relay, PROTOCOL).await.unwrap();
    let mut last = None;
    let pushed = push(stream, &sender, info.hash, b"bob", |p| last = Some(p))
        .await
        .unwrap();
    assert!(pushed.complete);
    assert_eq!(pushed.bytes_sent, info.size);
    assert_eq!(last.map(|p| p.wanted), Some(info.size));
    assert!(held.is_complete(info.hash).unwrap());
    // Pushing again sends nothing: the relay already holds every range.
    let stream = control.open_stream(relay, PROTOCOL).await.unwrap();
    let again = push(stream, &sender, info.hash, b"bob", |_| {})
        .await
        .unwrap();
    assert_eq!(again.bytes_sent, 0);
    assert!(again.complete);

    // The recipient fetches it from the relay (which serves from its held store).
    let receiver = BlobStore::open(dir.path().join("receiver")).unwrap();
    let stream = control.open_stream(relay, PROTOCOL).await.unwrap();
    let got = fetch_missing(stream, &receiver, info.hash, info.size, |_| {})
        .await
        .unwrap();
    assert!(got.complete);
    let out = dir.path().join("out");
    receiver
        .export_decrypted(info.hash, &info.key, &out)
        .unwrap();
    assert!(fs::read(&out).unwrap() == plain);

    // A second blob over the quota is refused with the reason.
    let big = sender
        .import_sealed(&write_file(
            dir.path(),
            "big",
            &random_bytes(6 * 1024 * 1024),
        ))
        .unwrap();
    let stream = control.open_stream(relay, PROTOCOL).await.unwrap();
    match push(stream, &sender, big.hash, b"bob", |_| {}).await {
        Err(PushError::Refused { status, reason }) => {
            assert_eq!(status, Status::Full);
            assert!(reason.contains("quota"), "{reason}");
        }
        other => panic!("expected a full quota, got {other:?}"),
    }
    assert!(held.status(big.hash).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_request_to_a_plain_node_is_refused_and_the_stream_still_serves() {
    let dir = tempfile::tempdir().unwrap();
    let (sender, _, info) = sealed_sender(dir.path(), 100_000);
    let (peer, mut control) = served(sender.clone()).await;
    let stream = control.open_stream(peer, PROTOCOL).await.unwrap();
    match push(stream, &sender, info.hash, b"bob", |_| {}).await {
        Err(PushError::Refused { status, .. }) => assert_eq!(status, Status::NotAccepted),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        sender
            .metrics()
            .refused_not_accepted
            .load(Ordering::Relaxed),
        1
    );
    let receiver = BlobStore::open(dir.path().join("receiver")).unwrap();
    let stream = control.open_stream(peer, PROTOCOL).await.unwrap();
    assert!(
        fetch_missing(stream, &receiver, info.hash, info.size, |_| {})
            .await
            .unwrap()
            .complete
    );
}

#[test]
fn hold_request_round_trip_and_limits() {
    let h = wire::HoldRequest {
        hash: [7; 32],
        size: 123_456,
        tag: b"peer".to_vec(),
    };
    let frame = h.encode();
    let body = &frame[1..];
    assert_eq!(wire::Frame::decode(body).unwrap(), wire::Frame::Hold(h));
    let mut long = vec![2u8];
    long.extend_from_slice(&[0; 32]);
    wire::put_varint(&mut long, 10);
    wire::put_varint(&mut long, 129);
    long.extend_from_slice(&[1; 129]);
    assert!(wire::Frame::decode(&long).is_err());
}
