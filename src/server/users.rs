//! Clients that must log in: an htpasswd file of bcrypt hashes (`htpasswd -B`), checked for
//! HTTP Basic credentials.
//!
//! bcrypt is slow on purpose (tens to hundreds of ms), and containerd sends its credentials on
//! every request, so a credential that verified once is remembered (by its SHA-256, for a
//! while); wrong ones are never remembered. Concurrent requests with the same credentials wait
//! for one check. Guessing, and starving real logins by guessing, are held down, each bound a
//! constant:
//!
//! - at most [`MAX_VERIFYING`] bcrypt checks run at once and at most [`MAX_QUEUED`] wait for
//!   a turn (for at most [`MAX_QUEUE_WAIT`]); beyond that a login is answered at once with
//!   [`Login::Busy`] (429) instead of joining an endless queue;
//! - one client (its address; for IPv6 its /64) has at most [`MAX_CHECKS_PER_CLIENT`] checks
//!   running or waiting, so one address cannot fill the queue;
//! - a client with [`MAX_FAILURES`] wrong logins within [`FAILURE_WINDOW`] is answered
//!   [`Login::Throttled`] (429, no bcrypt run) until that window ends; credentials that
//!   verified before still pass, and other clients are not affected.
//!
//! An unknown user is checked against a stand-in hash of the file's highest cost, so an unknown
//! name costs exactly what a wrong password does and answers as slowly. The file is re-read
//! when it changes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::Engine as _;
use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use sha2::Digest as _;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::client_key;

/// bcrypt checks running at once.
pub const MAX_VERIFYING: usize = 2;
/// Checks waiting for a turn, beyond the running ones.
pub const MAX_QUEUED: usize = 32;
/// How long a check waits for its turn at most.
pub const MAX_QUEUE_WAIT: Duration = Duration::from_secs(10);
/// Checks (of different credentials) one client may have running or waiting.
pub const MAX_CHECKS_PER_CLIENT: usize = 2;
/// Wrong logins one client may have within [`FAILURE_WINDOW`] before it is throttled.
pub const MAX_FAILURES: u32 = 10;
/// From a client's first wrong login; a throttled client waits for its end.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Clients whose failures are tracked; past it, expired windows go, then the oldest.
const MAX_TRACKED_CLIENTS: usize = 4096;
/// What a client told [`Login::Busy`] should wait.
const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Users in one file, and its size.
const MAX_USERS: usize = 10_000;
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// bcrypt costs taken: 4 is bcrypt's least; each step doubles the time, and past 16 one check
/// takes seconds, which would make every login (and every guess) hold a turn that long.
const MIN_COST: u32 = 4;
const MAX_COST: u32 = 16;
/// Below this the file's hashes are quick to guess offline; a warning says so.
pub const RECOMMENDED_COST: u32 = 12;
/// Verified credentials remembered, and for how long.
const VERIFIED_CAPACITY: u64 = 4096;
const VERIFIED_FOR: Duration = Duration::from_secs(600);
/// How often the file is checked for changes.
const RELOAD_INTERVAL: Duration = Duration::from_secs(2);
/// Salt and hash of the stand-in checked when the user is unknown (a bcrypt of nothing anyone
/// sends); its cost is the file's highest, see [`dummy_hash`].
const DUMMY_SALT_AND_HASH: &str = "7EqJtq98hPqEX7fNZaFWoOhi5BWX4Z3ZwQD8JIH1bCRmwQH5W6mKe";

/// What a login attempt comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// Valid credentials of this user.
    User(String),
    /// No credentials, malformed ones, an unknown user or a wrong password.
    Refused,
    /// Too many checks running and waiting (everyone's, or this client's): try again after
    /// this. Nothing was checked.
    Busy(Duration),
    /// This client had too many wrong logins lately: try again after this. Nothing was
    /// checked.
    Throttled(Duration),
}

pub struct Users {
    path: PathBuf,
    table: RwLock<Arc<Table>>,
    verified: moka::sync::Cache<[u8; 32], ()>,
    /// A place per check running or waiting: `MAX_VERIFYING + MAX_QUEUED`.
    places: Arc<Semaphore>,
    /// A turn per bcrypt run.
    turns: Arc<Semaphore>,
    checks: Arc<Mutex<Checks>>,
    failures: Arc<Mutex<Failures>>,
}

struct Table {
    /// user → bcrypt hash
    hashes: HashMap<String, String>,
    /// Checked for unknown users: the highest cost among `hashes`.
    dummy: String,
    text: Vec<u8>,
}

impl Table {
    fn new(hashes: HashMap<String, String>, text: Vec<u8>) -> Table {
        let max = hashes.values().filter_map(|h| cost(h)).max();
        Table {
            dummy: dummy_hash(max.unwrap_or(RECOMMENDED_COST)),
            hashes,
            text,
        }
    }

    fn weakest_cost(&self) -> Option<u32> {
        self.hashes.values().filter_map(|h| cost(h)).min()
    }
}

/// What a check came to, shared by every request waiting for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checked {
    Valid,
    Wrong,
    /// No turn within [`MAX_QUEUE_WAIT`] (or the check task was lost).
    NoTurn,
}

type PendingCheck = Shared<BoxFuture<'static, Checked>>;

/// Checks running or waiting: by credentials (so equal ones wait for one check), and how many
/// each client has. Entries live as long as their check task: bounded by the places.
#[derive(Default)]
struct Checks {
    pending: HashMap<[u8; 32], PendingCheck>,
    per_client: HashMap<IpAddr, usize>,
}

/// Removes a check from [`Checks`] when its task ends, however it ends.
struct CheckEntry {
    checks: Arc<Mutex<Checks>>,
    key: [u8; 32],
    client: Option<IpAddr>,
}

impl Drop for CheckEntry {
    fn drop(&mut self) {
        let mut checks = lock(&self.checks);
        checks.pending.remove(&self.key);
        if let Some(client) = self.client {
            if let Some(n) = checks.per_client.get_mut(&client) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    checks.per_client.remove(&client);
                }
            }
        }
    }
}

/// Wrong logins per client, in fixed windows from the first one.
#[derive(Default)]
struct Failures(HashMap<IpAddr, FailureWindow>);

#[derive(Clone, Copy)]
struct FailureWindow {
    started: Instant,
    count: u32,
}

impl Failures {
    /// How long `client` must still wait, if it is throttled.
    fn throttled(&mut self, client: IpAddr, now: Instant) -> Option<Duration> {
        let window = *self.0.get(&client)?;
        let ends = window.started + FAILURE_WINDOW;
        if now >= ends {
            self.0.remove(&client);
            return None;
        }
        (window.count >= MAX_FAILURES).then(|| ends - now)
    }

    fn record(&mut self, client: IpAddr, now: Instant) {
        if self.0.len() >= MAX_TRACKED_CLIENTS && !self.0.contains_key(&client) {
            self.0.retain(|_, w| now < w.started + FAILURE_WINDOW);
            if self.0.len() >= MAX_TRACKED_CLIENTS {
                let oldest = self
                    .0
                    .iter()
                    .min_by_key(|(_, w)| w.started)
                    .map(|(c, _)| *c);
                if let Some(oldest) = oldest {
                    self.0.remove(&oldest);
                }
            }
        }
        let window = self.0.entry(client).or_insert(FailureWindow {
            started: now,
            count: 0,
        });
        if now >= window.started + FAILURE_WINDOW {
            *window = FailureWindow {
                started: now,
                count: 0,
            };
        }
        window.count = window.count.saturating_add(1);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Users {
    /// Reads and checks the file; the error names the line.
    pub fn load(path: &Path) -> Result<Users, String> {
        let table = read_table(path)?;
        warn_if_weak(&table);
        Ok(Users {
            path: path.to_owned(),
            table: RwLock::new(Arc::new(table)),
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_CAPACITY)
                .time_to_live(VERIFIED_FOR)
                .build(),
            places: Arc::new(Semaphore::new(MAX_VERIFYING + MAX_QUEUED)),
            turns: Arc::new(Semaphore::new(MAX_VERIFYING)),
            checks: Arc::default(),
            failures: Arc::default(),
        })
    }

    pub fn len(&self) -> usize {
        self.table().hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Checks `Authorization: Basic …` credentials sent from `client` (`None`: an in-process
    /// caller, held to no per-client limit).
    pub async fn authenticate(&self, authorization: Option<&str>, client: Option<IpAddr>) -> Login {
        let Some((user, password)) = authorization.and_then(basic_credentials) else {
            return Login::Refused;
        };
        let key: [u8; 32] = sha2::Sha256::new()
            .chain_update(user.as_bytes())
            .chain_update([0])
            .chain_update(password.as_bytes())
            .finalize()
            .into();
        if self.verified.contains_key(&key) {
            return Login::User(user);
        }
        let client = client.map(client_key);
        if let Some(client) = client {
            if let Some(wait) = lock(&self.failures).throttled(client, Instant::now()) {
                return Login::Throttled(wait);
            }
        }
        let check = match self.join_or_start(key, &user, password, client) {
            Ok(check) => check,
            Err(busy) => return busy,
        };
        match check.await {
            Checked::Valid => Login::User(user),
            Checked::Wrong => Login::Refused,
            Checked::NoTurn => Login::Busy(BUSY_RETRY_AFTER),
        }
    }

    /// The check of these credentials already running, or a new one if the client and the
    /// queue have room. The check runs in its own task: a request dropped meanwhile (a client
    /// hanging up) neither cancels it nor frees its place before bcrypt is done.
    fn join_or_start(
        &self,
        key: [u8; 32],
        user: &str,
        password: String,
        client: Option<IpAddr>,
    ) -> Result<PendingCheck, Login> {
        let mut checks = lock(&self.checks);
        if let Some(running) = checks.pending.get(&key) {
            return Ok(running.clone());
        }
        if let Some(client) = client {
            if checks.per_client.get(&client).copied().unwrap_or(0) >= MAX_CHECKS_PER_CLIENT {
                return Err(Login::Busy(BUSY_RETRY_AFTER));
            }
        }
        let Ok(place) = self.places.clone().try_acquire_owned() else {
            return Err(Login::Busy(BUSY_RETRY_AFTER));
        };
        if let Some(client) = client {
            *checks.per_client.entry(client).or_insert(0) += 1;
        }
        let entry = CheckEntry {
            checks: self.checks.clone(),
            key,
            client,
        };
        let table = self.table();
        let hash = table
            .hashes
            .get(user)
            .cloned()
            .ok_or_else(|| table.dummy.clone());
        let (turns, failures, verified) = (
            self.turns.clone(),
            self.failures.clone(),
            self.verified.clone(),
        );
        let task = tokio::spawn(async move {
            let _entry = entry;
            let _place = place;
            let Ok(Ok(turn)) = tokio::time::timeout(MAX_QUEUE_WAIT, turns.acquire_owned()).await
            else {
                return Checked::NoTurn;
            };
            let attempted = Instant::now();
            let (known, hash) = match hash {
                Ok(hash) => (true, hash),
                Err(dummy) => (false, dummy),
            };
            let ok = tokio::task::spawn_blocking(move || {
                let _turn = turn;
                bcrypt::verify(password, &hash).unwrap_or(false)
            })
            .await
            .unwrap_or(false);
            if ok && known {
                verified.insert(key, ());
                return Checked::Valid;
            }
            if let Some(client) = client {
                lock(&failures).record(client, attempted);
            }
            Checked::Wrong
        });
        let shared = task
            .map(|done| done.unwrap_or(Checked::NoTurn))
            .boxed()
            .shared();
        checks.pending.insert(key, shared.clone());
        Ok(shared)
    }

    /// Re-reads the file every few seconds until `stop`; a changed, valid file replaces the
    /// users (and forgets remembered credentials, so a removed user is out at once). A file
    /// that cannot be read is logged once, and once more when it can be again.
    pub fn spawn_reloader(
        self: &Arc<Self>,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let users = self.clone();
        tokio::spawn(async move {
            let mut unreadable: Option<String> = None;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(RELOAD_INTERVAL) => {}
                }
                let path = users.path.clone();
                let Ok(text) = tokio::task::spawn_blocking(move || read_bounded(&path)).await
                else {
                    continue;
                };
                let text = match text {
                    Ok(t) => t,
                    Err(e) => {
                        if unreadable.as_ref() != Some(&e) {
                            tracing::warn!(error = %e, "cannot re-read server.users_file; keeping the users loaded before (logged again only when this changes)");
                            unreadable = Some(e);
                        }
                        continue;
                    }
                };
                if unreadable.take().is_some() {
                    tracing::info!("server.users_file can be read again");
                }
                if text == users.table().text {
                    continue;
                }
                match parse(&text) {
                    Ok(hashes) => {
                        let count = hashes.len();
                        let table = Table::new(hashes, text);
                        warn_if_weak(&table);
                        *users.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
                        users.verified.invalidate_all();
                        tracing::info!(users = count, "server.users_file reloaded");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "server.users_file changed but does not parse; keeping the users loaded before");
                        // Remember the bad text so the warning is not repeated every tick.
                        let hashes = users.table().hashes.clone();
                        *users.table.write().unwrap_or_else(|p| p.into_inner()) =
                            Arc::new(Table::new(hashes, text));
                    }
                }
            }
        })
    }
}

/// The stand-in for unknown users: a valid bcrypt string of `cost` no password matches.
fn dummy_hash(cost: u32) -> String {
    format!("$2b${cost:02}${DUMMY_SALT_AND_HASH}")
}

/// The cost of a bcrypt hash (`$2b$12$…` → 12).
fn cost(hash: &str) -> Option<u32> {
    let rest = hash.get(4..)?;
    let (digits, _) = rest.split_once('$')?;
    if digits.len() != 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn warn_if_weak(table: &Table) {
    if let Some(weakest) = table.weakest_cost().filter(|c| *c < RECOMMENDED_COST) {
        tracing::warn!(
            cost = weakest,
            recommended = RECOMMENDED_COST,
            "server.users_file has bcrypt hashes of a low cost, quick to guess from a copy of the file; \
             make them with `htpasswd -B -C 12`"
        );
    }
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    let size = std::fs::metadata(path)
        .map_err(|e| format!("server.users_file {}: {e}", path.display()))?
        .len();
    if size > MAX_FILE_BYTES {
        return Err(format!(
            "server.users_file {}: {size} bytes, more than an htpasswd file should be",
            path.display()
        ));
    }
    std::fs::read(path).map_err(|e| format!("server.users_file {}: {e}", path.display()))
}

fn read_table(path: &Path) -> Result<Table, String> {
    let text = read_bounded(path)?;
    let hashes = parse(&text).map_err(|e| format!("server.users_file {}: {e}", path.display()))?;
    Ok(Table::new(hashes, text))
}

/// `user:$2y$…` lines; blank lines and `#` comments are skipped. Only bcrypt hashes are taken:
/// the other htpasswd formats (MD5-crypt, SHA-1, plain) are too weak to guard upstream credentials.
fn parse(text: &[u8]) -> Result<HashMap<String, String>, String> {
    let text = std::str::from_utf8(text).map_err(|_| "not UTF-8 text".to_string())?;
    let mut hashes = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (user, hash) = line
            .split_once(':')
            .ok_or_else(|| format!("line {}: not `user:hash`", n + 1))?;
        if user.is_empty() {
            return Err(format!("line {}: empty user name", n + 1));
        }
        if !["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) {
            return Err(format!(
                "line {}: the hash of `{user}` is not bcrypt; create it with `htpasswd -B -C 12`",
                n + 1
            ));
        }
        match cost(hash) {
            Some(c) if (MIN_COST..=MAX_COST).contains(&c) => {}
            Some(c) => {
                return Err(format!(
                    "line {}: the hash of `{user}` has bcrypt cost {c}; use {MIN_COST} to {MAX_COST} \
                     (`htpasswd -B -C 12`)",
                    n + 1
                ));
            }
            None => {
                return Err(format!(
                    "line {}: the hash of `{user}` is not a bcrypt hash (`$2y$<cost>$…`)",
                    n + 1
                ));
            }
        }
        if hashes.insert(user.to_string(), hash.to_string()).is_some() {
            return Err(format!("line {}: `{user}` is listed twice", n + 1));
        }
        if hashes.len() > MAX_USERS {
            return Err(format!("more than {MAX_USERS} users"));
        }
    }
    if hashes.is_empty() {
        return Err("no users (lines `user:bcrypt-hash`, made with `htpasswd -B -C 12`)".into());
    }
    Ok(hashes)
}

/// `Basic base64(user:password)` → (user, password).
fn basic_credentials(header: &str) -> Option<(String, String)> {
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") || encoded.len() > 4096 {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> String {
        let raw = format!("{user}:{password}");
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }

    fn users_file(dir: &Path, lines: &str) -> PathBuf {
        let path = dir.join("users");
        std::fs::write(&path, lines).unwrap();
        path
    }

    const A: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)));
    const B: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)));

    fn users_with(dir: &Path, cost: u32) -> Users {
        let hash = bcrypt::hash("s3cret", cost).unwrap();
        Users::load(&users_file(dir, &format!("# nodes\nnode:{hash}\n"))).unwrap()
    }

    #[tokio::test]
    async fn right_password_in_wrong_ones_out() {
        let dir = tempfile::tempdir().unwrap();
        let users = users_with(dir.path(), 4);
        let node = Login::User("node".into());
        assert_eq!(
            users.authenticate(Some(&basic("node", "s3cret")), A).await,
            node
        );
        // Remembered: the second check answers the same without bcrypt.
        assert_eq!(
            users
                .authenticate(Some(&basic("node", "s3cret")), None)
                .await,
            node
        );
        for refused in [
            Some(basic("node", "wrong")),
            Some(basic("nobody", "s3cret")),
            Some("Bearer abc".to_string()),
            Some("Basic !!!".to_string()),
            None,
        ] {
            assert_eq!(
                users.authenticate(refused.as_deref(), A).await,
                Login::Refused,
                "{refused:?}"
            );
        }
    }

    /// An unknown name runs a bcrypt of the cost a listed user's does: else it answers faster,
    /// and who is listed can be told from the timing.
    #[test]
    fn the_stand_in_for_unknown_users_has_the_files_highest_cost() {
        let (cheap, dear) = (bcrypt::hash("a", 4).unwrap(), bcrypt::hash("b", 6).unwrap());
        for (text, expected) in [
            (format!("a:{cheap}\n"), 4),
            (format!("a:{cheap}\nb:{dear}\n"), 6),
            (format!("b:{dear}\n"), 6),
        ] {
            let table = Table::new(parse(text.as_bytes()).unwrap(), text.into_bytes());
            assert_eq!(cost(&table.dummy), Some(expected));
            for hash in table.hashes.values() {
                assert!(cost(hash) <= Some(expected));
            }
            // A real bcrypt hash that matches nothing: verify runs its full cost, then says no.
            assert_eq!(bcrypt::verify("", &table.dummy).ok(), Some(false));
            assert_eq!(bcrypt::verify("s3cret", &table.dummy).ok(), Some(false));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_with_too_many_wrong_logins_waits_and_others_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let users = users_with(dir.path(), 4);
        let right = basic("node", "s3cret");
        for n in 0..MAX_FAILURES {
            let guess = basic("node", &format!("guess-{n}"));
            assert_eq!(users.authenticate(Some(&guess), A).await, Login::Refused);
        }
        // Throttled: even the right password is not checked now (it would be a guess too).
        let Login::Throttled(wait) = users.authenticate(Some(&right), A).await else {
            panic!("not throttled after {MAX_FAILURES} failures");
        };
        assert!(wait <= FAILURE_WINDOW && wait > Duration::ZERO, "{wait:?}");
        // Another client logs in meanwhile; after that its credentials pass for A too.
        assert_eq!(
            users.authenticate(Some(&right), B).await,
            Login::User("node".into())
        );
        assert_eq!(
            users.authenticate(Some(&right), A).await,
            Login::User("node".into()),
            "credentials that verified pass a throttled client"
        );
        assert!(matches!(
            users.authenticate(Some(&basic("node", "more")), A).await,
            Login::Throttled(_)
        ));
        tokio::time::advance(wait).await;
        assert_eq!(
            users.authenticate(Some(&basic("node", "more")), A).await,
            Login::Refused,
            "checked again once the window is over"
        );
    }

    /// 50 guesses at once from one client: two are checked, the others are answered busy at
    /// once, not queued in front of other clients' logins.
    #[tokio::test]
    async fn a_burst_of_guesses_from_one_client_takes_two_places_only() {
        let dir = tempfile::tempdir().unwrap();
        let users = users_with(dir.path(), 4);
        let guesses: Vec<String> = (0..50).map(|n| basic("node", &format!("g{n}"))).collect();
        let right = basic("node", "s3cret");
        let outcomes = futures::future::join_all(
            guesses
                .iter()
                .map(|g| users.authenticate(Some(g), A))
                .chain([users.authenticate(Some(&right), B)]),
        )
        .await;
        let (last, guessed) = outcomes.split_last().unwrap();
        assert_eq!(*last, Login::User("node".into()));
        let refused = guessed.iter().filter(|o| **o == Login::Refused).count();
        let busy = guessed
            .iter()
            .filter(|o| matches!(o, Login::Busy(_)))
            .count();
        assert_eq!(
            (refused, busy),
            (MAX_CHECKS_PER_CLIENT, 50 - MAX_CHECKS_PER_CLIENT)
        );
    }

    /// One check for many requests with the same credentials (containerd's parallel layer
    /// downloads all send them), however many arrive at once.
    #[tokio::test]
    async fn equal_credentials_at_once_wait_for_one_check() {
        let dir = tempfile::tempdir().unwrap();
        let users = users_with(dir.path(), 4);
        let right = basic("node", "s3cret");
        let outcomes =
            futures::future::join_all((0..40).map(|_| users.authenticate(Some(&right), A))).await;
        assert!(
            outcomes.iter().all(|o| *o == Login::User("node".into())),
            "{outcomes:?}"
        );
    }

    /// Guesses from many clients at once: the queue holds MAX_VERIFYING + MAX_QUEUED checks,
    /// the rest are answered busy at once.
    #[tokio::test]
    async fn the_queue_of_checks_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let users = users_with(dir.path(), 4);
        let guesses: Vec<(String, Option<IpAddr>)> = (0..100u8)
            .map(|n| {
                let client = IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 0, n));
                (basic("node", &format!("g{n}")), Some(client))
            })
            .collect();
        let outcomes =
            futures::future::join_all(guesses.iter().map(|(g, c)| users.authenticate(Some(g), *c)))
                .await;
        let refused = outcomes.iter().filter(|o| **o == Login::Refused).count();
        assert_eq!(refused, MAX_VERIFYING + MAX_QUEUED, "{outcomes:?}");
        assert!(lock(&users.checks).pending.is_empty());
        assert!(lock(&users.checks).per_client.is_empty());
    }

    /// A request dropped mid-check (the client hung up) keeps its places until bcrypt is done,
    /// then gives them back: hanging up frees no turn for a check still running, and leaks none.
    #[tokio::test]
    async fn a_login_dropped_mid_check_holds_its_places_until_bcrypt_is_done() {
        let dir = tempfile::tempdir().unwrap();
        // Slow enough to be mid-check when dropped.
        let users = users_with(dir.path(), 10);
        let guess = basic("node", "guess");
        {
            let login = users.authenticate(Some(&guess), A);
            tokio::pin!(login);
            assert!(futures::poll!(login.as_mut()).is_pending());
        }
        assert_eq!(
            users.places.available_permits(),
            MAX_VERIFYING + MAX_QUEUED - 1
        );
        assert_eq!(lock(&users.checks).per_client.get(&A.unwrap()), Some(&1));
        let freed = tokio::time::timeout(Duration::from_secs(30), async {
            while users.places.available_permits() < MAX_VERIFYING + MAX_QUEUED {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(freed.is_ok(), "the place never came back");
        assert!(lock(&users.checks).per_client.is_empty());
        assert!(lock(&users.checks).pending.is_empty());
        assert_eq!(users.turns.available_permits(), MAX_VERIFYING);
    }

    #[test]
    fn weak_or_broken_files_are_refused_with_the_line() {
        for (text, needle) in [
            (
                "node:{SHA}abc\n",
                "line 1: the hash of `node` is not bcrypt",
            ),
            ("\nnode\n", "line 2: not `user:hash`"),
            ("# only a comment\n", "no users"),
            ("a:$2y$05$x\na:$2y$05$y\n", "line 2: `a` is listed twice"),
            (
                "a:$2y$31$x\n",
                "line 1: the hash of `a` has bcrypt cost 31; use 4 to 16",
            ),
            ("a:$2y$x\n", "line 1: the hash of `a` is not a bcrypt hash"),
        ] {
            let e = parse(text.as_bytes()).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }
}
