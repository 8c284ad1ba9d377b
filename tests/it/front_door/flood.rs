//! The front door's "done when": the whole attack set of the security review at once — sockets
//! from outside `allow` holding connections, wrong passwords from one client, HTTP/2 streams
//! granting no window, long paths from inside and outside `allow` — while a node pulls for real,
//! through Basic auth. Every pull succeeds, and berth's resident memory stays bounded.

use super::attackers::{Attack, pull};
use super::*;

/// The attackers' addresses: outside `allow`, a guesser, and a node misbehaving with valid
/// credentials (stalled streams, long paths). The real node pulls from 127.0.0.1.
const GUESSER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));
const INSIDER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 4));
/// How long the flood runs: the node pulls (each a manifest, a config and an 8 MiB layer) one
/// after the other this long, at most [`MAX_PULLS`] times. Several idle_timeouts (2 s), so the
/// stalled connections are closed and opened again a few times.
const FLOOD_FOR: Duration = Duration::from_secs(15);
const MAX_PULLS: usize = 500;
/// berth's resident memory must stay below this during the flood.
const MAX_RSS_MIB: u64 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_attack_set_at_once_leaves_pulls_working_and_memory_bounded() {
    let (fake, image) = fake_with_image(7403).await;
    let secrets = tempfile::tempdir().unwrap();
    let users = secrets.path().join("users");
    let hash = bcrypt::hash("pull-s3cret", 10).unwrap();
    std::fs::write(&users, format!("node:{hash}\n")).unwrap();
    let berth = Berth::builder().upstream(&fake).top_level(&format!(
        "[server]\nallow = [\"127.0.0.1/32\", \"127.0.0.3/32\", \"127.0.0.4/32\"]\n\
         users_file = {:?}\nmax_connections = 64\nmax_connections_per_client = 16\n\
         header_timeout = \"2s\"\nidle_timeout = \"2s\"",
        users.display().to_string()
    ));
    let berth = tokio::task::block_in_place(|| berth.spawn_serving());
    let login = basic("node", "pull-s3cret");
    let node = client_from(LOCAL);
    pull(
        &node,
        &berth.url(),
        "library/app",
        "1",
        &image,
        Some(&login),
    )
    .await
    .expect("the first (cold) pull");
    let layer = format!("/v2/library/app/blobs/{}", image.layers[0].digest);
    let rss_before = attackers::vm_rss_kib(berth.pid()).unwrap();

    // The attack set: (name, attacker, rounds). Add new attacks here (and in attackers.rs).
    let attack_set: Vec<(&str, Attack, usize)> = vec![
        (
            "denied holders",
            Attack::DeniedHolders {
                from: OUTSIDER,
                sockets: 64,
                pace: Duration::from_millis(100),
            },
            400,
        ),
        (
            "wrong passwords",
            Attack::WrongPasswords {
                from: GUESSER,
                user: "node".into(),
                per_wave: 50,
                pace: Duration::from_millis(100),
            },
            400,
        ),
        (
            "stalled HTTP/2",
            Attack::StalledH2 {
                from: INSIDER,
                connections: 8,
                streams: 32,
                path: layer.clone(),
                basic: Some(("node".into(), "pull-s3cret".into())),
            },
            40,
        ),
        (
            "long paths, denied",
            Attack::LongPaths {
                from: OUTSIDER,
                len: 60_000,
                fill: 'd',
                pace: Duration::from_millis(5),
            },
            4000,
        ),
        (
            "long paths, allowed",
            Attack::LongPaths {
                from: INSIDER,
                len: 60_000,
                fill: 'i',
                pace: Duration::from_millis(20),
            },
            1000,
        ),
        (
            "long ?ns=, allowed",
            Attack::LongNs {
                from: INSIDER,
                len: 60_000,
                basic: Some(("node".into(), "pull-s3cret".into())),
                pace: Duration::from_millis(20),
            },
            1000,
        ),
    ];
    let stop = CancellationToken::new();
    let mut attacks = tokio::task::JoinSet::new();
    let mut tallies = Vec::new();
    for (name, attack, rounds) in attack_set {
        let tally = Arc::new(Tally::default());
        tallies.push((name, tally.clone()));
        attacks.spawn(attackers::run(
            attack,
            berth.addr,
            rounds,
            stop.clone(),
            tally,
        ));
    }
    // Resident memory, sampled until the flood ends.
    let sampler = {
        let (stop, pid) = (stop.clone(), berth.pid());
        tokio::spawn(async move {
            let mut peak = 0u64;
            let mut every = tokio::time::interval(Duration::from_millis(100));
            while !stop.is_cancelled() {
                every.tick().await;
                peak = peak.max(attackers::vm_rss_kib(pid).unwrap_or(0));
            }
            peak
        })
    };
    // Every attacker at work before the node pulls.
    eventually(
        "every attacker to have made an attempt",
        Duration::from_secs(30),
        || async {
            let idle: Vec<&str> = tallies
                .iter()
                .filter(|(_, t)| Tally::get(&t.attempts) == 0)
                .map(|(name, _)| *name)
                .collect();
            idle.is_empty()
                .then_some(())
                .ok_or(format!("not yet: {idle:?}"))
        },
    )
    .await;

    let base = berth.url();
    let started = Instant::now();
    let mut pulled = 0;
    let mut failures = Vec::new();
    let mut bytes = 0;
    while started.elapsed() < FLOOD_FOR && pulled + failures.len() < MAX_PULLS {
        // A fresh client per pull: new connections, each through the attacked accept loop.
        let node = client_from(LOCAL);
        let pulling = pull(&node, &base, "library/app", "1", &image, Some(&login));
        match tokio::time::timeout(Duration::from_secs(30), pulling).await {
            Ok(Ok(received)) => {
                pulled += 1;
                bytes += received;
            }
            Ok(Err(e)) => failures.push(e),
            Err(_) => failures.push("a pull took over 30 s".into()),
        }
    }
    let pulls_took = started.elapsed();
    stop.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(60), async {
        while attacks.join_next().await.is_some() {}
    })
    .await;
    let peak_kib = sampler.await.unwrap();
    let report: Vec<String> = tallies
        .iter()
        .map(|(name, t)| format!("  {name}: {}", t.summary()))
        .collect();
    eprintln!(
        "flood: {pulled} pulls ({} failed, {} MiB) in {pulls_took:?}; berth RSS {} MiB before, peak {} MiB\n{}",
        failures.len(),
        bytes / (1024 * 1024),
        rss_before / 1024,
        peak_kib / 1024,
        report.join("\n")
    );
    assert!(stopped.is_ok(), "the attackers did not stop within 60 s");
    assert!(pulled >= 3, "only {pulled} pulls in {pulls_took:?}");
    assert!(
        failures.is_empty(),
        "pulls failed during the flood: {failures:?}\n{}",
        report.join("\n")
    );
    assert!(
        peak_kib < MAX_RSS_MIB * 1024,
        "berth's RSS peaked at {} MiB",
        peak_kib / 1024
    );
    // The attacks happened, and berth held each to its bound.
    let tally = |name: &str| {
        tallies
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| t.clone())
            .unwrap()
    };
    let denied = tally("denied holders");
    assert!(Tally::get(&denied.closed) > 64, "{}", denied.summary());
    assert_eq!(
        Tally::get(&denied.ok) + Tally::get(&denied.denied),
        0,
        "{}",
        denied.summary()
    );
    let guesses = tally("wrong passwords");
    assert!(
        Tally::get(&guesses.unauthorized) <= 12,
        "more guesses checked than the throttle lets through: {}",
        guesses.summary()
    );
    let stalled = tally("stalled HTTP/2");
    // Each of the 8 connections closed at least once (after 2 s stalled) in 15 s.
    assert!(
        Tally::get(&stalled.closed) >= 8,
        "stalled connections were not closed: {}",
        stalled.summary()
    );
    // Long ?ns= values are refused before they are recorded (a 400 each, or the login
    // throttle's 429), and the status report stays small.
    let long_ns = tally("long ?ns=, allowed");
    assert_eq!(Tally::get(&long_ns.ok), 0, "{}", long_ns.summary());
    let status = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{}/_berth/status?format=json", berth.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !status.contains(&"n".repeat(1000)),
        "a client's ?ns= reached the status report ({} bytes)",
        status.len()
    );
    // What clients outside allow send never reaches the log. (An allowed client's request
    // line is in debug-level lines, the tests' level; at the default info level it is not.)
    let log = berth.stderr();
    assert!(
        !log.contains(&"d".repeat(1000)),
        "a denied client's path reached the log"
    );
}
