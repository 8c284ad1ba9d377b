//! Real network paths built from network namespaces (needs root and `ip`, `iptables`).
//!
//! [`Lab`]: the path MTU black-hole lab. Names are suffixed with the caller's id; everything is
//! torn down on drop, even on panic:
//!
//! ```text
//!   berth-<id>                 router-<id>                          up-<id>
//!   vb<id> 10.99.1.2 ──veth── vrb<id> 10.99.1.1 (MTU narrow_mtu)
//!   MTU 1500                   vru<id> 10.99.2.1 (MTU narrow_mtu) ──veth── vu<id> 10.99.2.2
//!                              ip_forward=1, ICMP frag-needed DROPped (OUTPUT + FORWARD)
//! ```
//!
//! With `narrow_mtu` 1400 the client advertises MSS 1460, the upstream's 1500-byte DF segments
//! cannot cross the router toward the client and the "fragmentation needed" ICMP that would fix
//! it is dropped: bulk transfers stall while small ones pass. With 1500 the path is healthy.
//!
//! Every namespace gets `/etc/netns/<ns>/` files (bind-mounted by `ip netns exec`) that send
//! DNS to 127.0.0.1 inside the namespace, where nothing listens: no query ever leaves.
//! [`InNetns`] runs in-process servers (the fake upstream) on threads inside a namespace.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::util::{CmdOutput, kill_child, run, wait_until};

/// A short id unique in this test process (all tests share one pid): pid + a counter. Keep it
/// short: interface names (`vrb<id>`) have 15 characters at most.
pub fn unique_id() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("{}{n}", std::process::id() % 1_000_000)
}

pub const CLIENT_IP: &str = "10.99.1.2";
pub const ROUTER_CLIENT_IP: &str = "10.99.1.1";
pub const ROUTER_UP_IP: &str = "10.99.2.1";
pub const UP_IP: &str = "10.99.2.2";

/// Runs `ip <args>` (≤ 10 s) and panics on failure.
pub fn ip(args: &[&str]) {
    run(Command::new("ip").args(args), Duration::from_secs(10)).expect_success();
}

/// Runs `args` inside namespace `ns` with a timeout; returns the output (caller checks).
pub fn in_ns(ns: &str, args: &[&str], timeout: Duration) -> CmdOutput {
    run(
        Command::new("ip").args(["netns", "exec", ns]).args(args),
        timeout,
    )
}

/// One namespace with `lo` up and DNS pointed at its own loopback. Deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: &str) -> Netns {
        // A leftover from a crashed run with the same pid would make `add` fail.
        let _ = run(
            Command::new("ip").args(["netns", "del", name]),
            Duration::from_secs(10),
        );
        ip(&["netns", "add", name]);
        let ns = Netns { name: name.into() };
        let etc = ns.etc_dir();
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            etc.join("resolv.conf"),
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        )
        .unwrap();
        std::fs::write(etc.join("nsswitch.conf"), "hosts: files dns\n").unwrap();
        std::fs::write(etc.join("hosts"), "127.0.0.1 localhost\n").unwrap();
        ip(&["-n", name, "link", "set", "lo", "up"]);
        ns
    }

    fn etc_dir(&self) -> PathBuf {
        PathBuf::from("/etc/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.etc_dir());
        let out = run(
            Command::new("ip").args(["netns", "del", &self.name]),
            Duration::from_secs(10),
        );
        if !out.success {
            eprintln!(
                "warning: could not delete netns {}: {}",
                self.name, out.stderr
            );
        }
    }
}

/// One namespace wired to the root namespace (where the test process and an in-process
/// berth live) by a veth pair on a /30 of 10.98.0.0/16 picked from `id`: `host_ip` on the root
/// side, `ns_ip` inside. Dropping it deletes the pair, then the namespace.
///
/// ```text
///   root namespace                         spoke-<id>
///   vsh<id> 10.98.N.1/30 ──veth── vsc<id> 10.98.N.2/30
/// ```
pub struct Spoke {
    pub ns: Netns,
    pub host_ip: String,
    pub ns_ip: String,
    host_dev: String,
}

impl Spoke {
    pub fn build(id: &str) -> Spoke {
        let ns = Netns::create(&format!("spoke-{id}"));
        let (host_dev, ns_dev) = (format!("vsh{id}"), format!("vsc{id}"));
        // A leftover pair from a crashed run with the same id would make `add` fail.
        let _ = run(
            Command::new("ip").args(["link", "del", &host_dev]),
            Duration::from_secs(10),
        );
        // Distinct subnets for distinct ids, so concurrent test processes do not collide.
        let n: u32 = id
            .bytes()
            .fold(7, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
        let base = (n % 16_384) * 4;
        let (host_ip, ns_ip) = (
            format!("10.98.{}.{}", base / 256, base % 256 + 1),
            format!("10.98.{}.{}", base / 256, base % 256 + 2),
        );
        ip(&[
            "link", "add", &host_dev, "type", "veth", "peer", "name", &ns_dev, "netns", &ns.name,
        ]);
        // From here on, a panic drops the spoke and removes what was built.
        let spoke = Spoke {
            ns,
            host_ip,
            ns_ip,
            host_dev,
        };
        ip(&[
            "addr",
            "add",
            &format!("{}/30", spoke.host_ip),
            "dev",
            &spoke.host_dev,
        ]);
        ip(&["link", "set", &spoke.host_dev, "up"]);
        let ns_name = spoke.ns.name.clone();
        ip(&[
            "-n",
            &ns_name,
            "addr",
            "add",
            &format!("{}/30", spoke.ns_ip),
            "dev",
            &ns_dev,
        ]);
        ip(&["-n", &ns_name, "link", "set", &ns_dev, "up"]);
        spoke
    }
}

impl Drop for Spoke {
    fn drop(&mut self) {
        // Deleting one end deletes the pair; the namespace goes when `ns` drops after this.
        let out = run(
            Command::new("ip").args(["link", "del", &self.host_dev]),
            Duration::from_secs(10),
        );
        if !out.success {
            eprintln!(
                "warning: could not delete veth {}: {}",
                self.host_dev, out.stderr
            );
        }
    }
}

/// The three namespaces of the black-hole lab and their wiring. Dropping it deletes the
/// namespaces, which also destroys the veth pairs and the router's iptables rules.
pub struct Lab {
    /// The client side (where berth runs). Named `berth-<id>`.
    pub berth: String,
    pub router: String,
    pub up: String,
    // Dropped in this order: the client first, the upstream last.
    _namespaces: Vec<Netns>,
}

impl Lab {
    pub fn build(id: &str, narrow_mtu: u32) -> Lab {
        let (berth, router, up) = (
            format!("berth-{id}"),
            format!("router-{id}"),
            format!("up-{id}"),
        );
        let mut namespaces = Vec::new();
        for name in [&berth, &router, &up] {
            namespaces.push(Netns::create(name));
        }
        // From here on, a panic drops `namespaces` and removes whatever was built.
        let lab = Lab {
            berth,
            router,
            up,
            _namespaces: namespaces,
        };
        let (vb, vrb, vu, vru) = (
            format!("vb{id}"),
            format!("vrb{id}"),
            format!("vu{id}"),
            format!("vru{id}"),
        );
        for (a, a_ns, b, b_ns) in [
            (&vb, &lab.berth, &vrb, &lab.router),
            (&vu, &lab.up, &vru, &lab.router),
        ] {
            ip(&[
                "link", "add", a, "netns", a_ns, "type", "veth", "peer", "name", b, "netns", b_ns,
            ]);
        }
        let narrow = narrow_mtu.to_string();
        let addr = |ns: &str, dev: &str, cidr: &str, mtu: Option<&str>| {
            ip(&["-n", ns, "addr", "add", cidr, "dev", dev]);
            let mut link = vec!["-n", ns, "link", "set", dev];
            if let Some(mtu) = mtu {
                link.extend(["mtu", mtu]);
            }
            link.push("up");
            ip(&link);
        };
        addr(&lab.berth, &vb, &format!("{CLIENT_IP}/24"), None);
        addr(
            &lab.router,
            &vrb,
            &format!("{ROUTER_CLIENT_IP}/24"),
            Some(&narrow),
        );
        // Narrow on both router legs, like a real narrow link: packets either way above the
        // MTU are dropped (a veth alone lets 4 bytes more in, for a VLAN tag).
        addr(
            &lab.router,
            &vru,
            &format!("{ROUTER_UP_IP}/24"),
            Some(&narrow),
        );
        addr(&lab.up, &vu, &format!("{UP_IP}/24"), None);
        ip(&[
            "-n",
            &lab.berth,
            "route",
            "add",
            "default",
            "via",
            ROUTER_CLIENT_IP,
        ]);
        ip(&[
            "-n",
            &lab.up,
            "route",
            "add",
            "default",
            "via",
            ROUTER_UP_IP,
        ]);

        let t = Duration::from_secs(10);
        in_ns(
            &lab.router,
            &["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"],
            t,
        )
        .expect_success();
        for chain in ["OUTPUT", "FORWARD"] {
            in_ns(
                &lab.router,
                &[
                    "iptables",
                    "-A",
                    chain,
                    "-p",
                    "icmp",
                    "--icmp-type",
                    "fragmentation-needed",
                    "-j",
                    "DROP",
                ],
                t,
            )
            .expect_success();
        }
        lab
    }

    pub fn all(&self) -> [&String; 3] {
        [&self.berth, &self.router, &self.up]
    }
}

/// A long-running child (inside a namespace) killed by its own handle on drop.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(ns: &str, args: &[&str], envs: &[(&str, &str)], log: PathBuf) -> Proc {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(log.with_extension("stderr")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {args:?} in {ns}: {e}"));
        Proc { child, log }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.log.with_extension("stderr")).unwrap_or_default()
    }

    pub fn assert_running(&mut self, what: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{what} exited early ({status}); stderr:\n{}", self.stderr());
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}

/// `berth serve` inside `ns` listening on `listen`, its data and log under `dir`; ready once
/// `GET /v2/` answers 200 on `127.0.0.1:<port>` there (≤ 30 s).
pub fn berth_in(ns: &str, dir: &Path, config: &Path, listen: &str, port: u16) -> Proc {
    let data = dir.join("data");
    let mut berth = Proc::spawn(
        ns,
        &[
            env!("CARGO_BIN_EXE_berth"),
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            listen,
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[("BERTH_LOG", "info"), ("NO_COLOR", "1")],
        dir.join("berth.log"),
    );
    let url = format!("http://127.0.0.1:{port}/v2/");
    wait_until(
        "berth to answer GET /v2/ in its namespace",
        Duration::from_secs(30),
        || {
            berth.assert_running("berth");
            in_ns(
                ns,
                &["curl", "-sf", "--max-time", "2", &url],
                Duration::from_secs(5),
            )
            .success
            .then_some(())
        },
    );
    berth
}

/// A tokio runtime on a thread that joined a network namespace: every socket its tasks open
/// (listeners, the TLS front's backend connections) lives in that namespace. Stops on drop.
pub struct InNetns {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InNetns {
    /// Enters `ns`, runs `setup` there and returns its first value once it is ready; the
    /// second value (servers) is kept alive on that thread until drop.
    pub fn start<T, K, F, Fut>(ns: &str, setup: F) -> (InNetns, T)
    where
        T: Send + 'static,
        K: 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = (T, K)> + 'static,
    {
        use std::os::fd::AsRawFd as _;
        let path = format!("/run/netns/{ns}");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: a valid namespace fd; affects only this thread (and threads it spawns).
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (value, keep) = setup().await;
                let _ = ready_tx.send(value);
                let _ = stop_rx.await;
                drop(keep);
            });
        });
        let value = ready_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the in-namespace setup to finish within 60 s");
        (
            InNetns {
                stop: Some(stop_tx),
                thread: Some(thread),
            },
            value,
        )
    }
}

impl Drop for InNetns {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
