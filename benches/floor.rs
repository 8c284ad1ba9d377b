//! `cargo bench --bench floor -- BLOB [DIR]`: the least CPU this machine spends on the work of
//! one cold fill of BLOB, part by part with nothing in between (no copies, hand-offs, parsing
//! or TLS records), under the same accounting as berth's in `benches/cold-pull.sh`: the
//! filling process's own CPU time.
//!
//! - `receive`, `send`: one thread plays the mirror: it receives BLOB from an upstream over
//!   loopback into a 256 KiB buffer, hashes it, writes it to a new file in DIR and sends it from
//!   there with `sendfile` to a client over loopback. The upstream and the client are threads
//!   whose CPU does not count, as the upstream's and curl's do not count in berth's; of the
//!   mirror thread's CPU (`CLOCK_THREAD_CPUTIME_ID`) only its receives and sends count here.
//!   They are paced as in a real fill: with hashing and writing between its receives, each one
//!   finds a full buffer waiting (a bare relay pays more per byte: more, smaller receives).
//! - `sha256`: hashing BLOB in memory, 256 KiB at a time, with the `sha2` berth uses.
//! - `write+sync`: writing BLOB to a new file in DIR in 256 KiB pieces, then `fdatasync`.
//! - `aes-128-gcm`: opening BLOB sealed in 16 KiB records, in place, with ring (what rustls
//!   uses; the cheaper of the two AES suites). Only a TLS fill pays it.
//!
//! Hashing, writing and decrypting are measured alone, where they cost least (inside the loop
//! the same hashing measured 0.8 CPU-s/GiB here, alone 0.6), so the sum is a floor, not an
//! estimate. Each part is the median of `FLOOR_ROUNDS` (default 5), in CPU-s per GiB. Prints
//! `name value` per part, then the `plain` and `tls` sums.

use std::fs::File;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use sha2::{Digest, Sha256};

/// What berth reads from an upstream socket at once (its blob connections' buffer), and about
/// what its spooler writes at once.
const PIECE: usize = 256 * 1024;
/// A TLS record's plaintext at most.
const RECORD: usize = 16 * 1024;
const GIB: f64 = (1u64 << 30) as f64;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --all-targets` runs this binary without `--bench` to check that it builds
    // and starts; the measurement itself is for `cargo bench`.
    if !args.iter().any(|a| a == "--bench") {
        eprintln!("floor bench: built; run it with `cargo bench --bench floor -- BLOB [DIR]`");
        return;
    }
    let paths: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let Some(blob) = paths.first().map(PathBuf::from) else {
        fail("name the file to fill: cargo bench --bench floor -- BLOB [DIR]");
    };
    let dir = match paths.get(1) {
        Some(dir) => PathBuf::from(dir),
        None => blob.parent().unwrap_or(Path::new(".")).to_path_buf(),
    };
    let rounds: usize = std::env::var("FLOOR_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let bytes = match std::fs::read(&blob) {
        Ok(bytes) if !bytes.is_empty() => bytes,
        Ok(_) => fail(&format!("{} is empty", blob.display())),
        Err(e) => fail(&format!("cannot read {}: {e}", blob.display())),
    };
    let per_gib = |seconds: Vec<f64>| median(seconds) / (bytes.len() as f64 / GIB);

    let fills: Vec<(f64, f64)> = (0..rounds).map(|_| fill(&blob, &dir)).collect();
    let receive = per_gib(fills.iter().map(|f| f.0).collect());
    let send = per_gib(fills.iter().map(|f| f.1).collect());
    let hash = per_gib((0..rounds).map(|_| hash(&bytes)).collect());
    let write = per_gib((0..rounds).map(|_| write_and_sync(&bytes, &dir)).collect());
    let aes = per_gib((0..rounds).map(|_| decrypt(&bytes)).collect());
    let plain = receive + send + hash + write;
    for (name, value) in [
        ("receive", receive),
        ("send", send),
        ("sha256", hash),
        ("write+sync", write),
        ("aes-128-gcm", aes),
        ("plain", plain),
        ("tls", plain + aes),
    ] {
        println!("{name} {value:.2}");
    }
}

fn fail(problem: &str) -> ! {
    eprintln!("floor bench: {problem}");
    std::process::exit(2);
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// This thread's CPU seconds so far.
fn thread_cpu() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

/// `f`'s CPU seconds on this thread.
fn cpu_seconds(f: impl FnOnce()) -> f64 {
    let before = thread_cpu();
    f();
    thread_cpu() - before
}

/// BLOB from an upstream thread through this thread (hash, spool, send) to a client thread:
/// this thread's CPU seconds in its receives and in its sends.
fn fill(blob: &Path, dir: &Path) -> (f64, f64) {
    let bind = || TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let (upstream, client) = (bind(), bind());
    let (up_addr, client_addr) = (upstream.local_addr().unwrap(), client.local_addr().unwrap());
    let source = File::open(blob).expect("open BLOB");
    let len = source.metadata().expect("metadata").len();
    let serving = std::thread::spawn(move || {
        let (socket, _) = upstream.accept().expect("accept");
        send_file(&socket, &source, 0, len);
    });
    let reading = std::thread::spawn(move || {
        let mut socket = TcpStream::connect(client_addr).expect("connect");
        let mut buf = vec![0u8; PIECE];
        let mut total = 0u64;
        while let n @ 1.. = socket.read(&mut buf).expect("client read") {
            total += n as u64;
        }
        total
    });
    let mut from_upstream = TcpStream::connect(up_addr).expect("connect");
    let (to_client, _) = client.accept().expect("accept");
    let spool = tempfile::tempfile_in(dir).expect("a file to write in DIR");
    let mut buf = vec![0u8; PIECE];
    let mut hasher = Sha256::new();
    let (mut receiving, mut sending, mut offset) = (0.0, 0.0, 0u64);
    loop {
        let mut n = 0;
        receiving += cpu_seconds(|| n = from_upstream.read(&mut buf).expect("receive"));
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        spool.write_all_at(&buf[..n], offset).expect("write");
        sending += cpu_seconds(|| send_file(&to_client, &spool, offset, n as u64));
        offset += n as u64;
    }
    std::hint::black_box(hasher.finalize());
    drop(to_client);
    serving.join().expect("upstream");
    assert_eq!(
        reading.join().expect("client"),
        offset,
        "bytes the client got"
    );
    (receiving, sending)
}

/// `sendfile` of `count` bytes from `offset`.
fn send_file(socket: &TcpStream, file: &File, mut offset: u64, count: u64) {
    let end = offset + count;
    while offset < end {
        let want = usize::try_from(end - offset)
            .unwrap_or(usize::MAX)
            .min(4 << 20);
        let sent = rustix::fs::sendfile(socket, file, Some(&mut offset), want).expect("sendfile");
        assert!(sent > 0, "the file ended early");
    }
}

fn hash(bytes: &[u8]) -> f64 {
    cpu_seconds(|| {
        let mut hasher = Sha256::new();
        for piece in bytes.chunks(PIECE) {
            hasher.update(piece);
        }
        std::hint::black_box(hasher.finalize());
    })
}

fn write_and_sync(bytes: &[u8], dir: &Path) -> f64 {
    let file = tempfile::tempfile_in(dir).expect("a file to write in DIR");
    cpu_seconds(|| {
        for (i, piece) in bytes.chunks(PIECE).enumerate() {
            file.write_all_at(piece, (i * PIECE) as u64).expect("write");
        }
        file.sync_data().expect("sync");
    })
}

/// Seals `bytes` in TLS-sized records, then opens them in place: the opening's CPU seconds.
fn decrypt(bytes: &[u8]) -> f64 {
    let key = || LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[7; 16]).expect("key"));
    let nonce = |i: usize| {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&(i as u64).to_be_bytes());
        Nonce::assume_unique_for_key(n)
    };
    let sealing = key();
    let mut records: Vec<Vec<u8>> = bytes
        .chunks(RECORD)
        .enumerate()
        .map(|(i, chunk)| {
            let mut record = chunk.to_vec();
            sealing
                .seal_in_place_append_tag(nonce(i), Aad::empty(), &mut record)
                .expect("seal");
            record
        })
        .collect();
    let opening = key();
    cpu_seconds(|| {
        for (i, record) in records.iter_mut().enumerate() {
            let plain = opening
                .open_in_place(nonce(i), Aad::empty(), record)
                .expect("open");
            std::hint::black_box(plain);
        }
    })
}
