//! A private containerd (own root, state, socket) driven through `ctr`; CRI disabled unless
//! started with [`Containerd::start_in_netns_with_cri`] (then see `cri`).
//!
//! Needs root. Snapshotter: `overlayfs` by default, `BERTH_TEST_SNAPSHOTTER=native` to switch.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::super::util::{CmdOutput, kill_child, run, wait_until};

pub const NAMESPACE: &str = "berth-test";
/// Where images pulled through the CRI (the kubelet's path) live.
pub const CRI_NAMESPACE: &str = "k8s.io";

pub enum PullPlatform<'a> {
    /// `--platform linux/amd64`
    One(&'a str),
    /// `--all-platforms`
    All,
}

pub struct Containerd {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub snapshotter: String,
    /// The network namespace containerd and `ctr` run in (`ctr images pull` fetches itself).
    netns: Option<String>,
    child: Child,
}

impl Containerd {
    /// Starts containerd and waits (≤ 30 s) until `ctr version` reaches it.
    pub fn start() -> Containerd {
        Containerd::start_in(None, None)
    }

    /// Like [`Containerd::start`], inside network namespace `netns` (a node of a test network),
    /// where every `ctr` command of it runs too.
    pub fn start_in_netns(netns: &str) -> Containerd {
        Containerd::start_in(Some(netns), None)
    }

    /// Like [`Containerd::start_in_netns`], with the CRI plugin on (its socket is `socket`),
    /// reading registry hosts from `hosts_dir` (its `config_path`), as K3s's containerd does.
    pub fn start_in_netns_with_cri(netns: &str, hosts_dir: &Path) -> Containerd {
        Containerd::start_in(Some(netns), Some(hosts_dir))
    }

    fn start_in(netns: Option<&str>, cri_hosts_dir: Option<&Path>) -> Containerd {
        // Short path: the socket must fit in sun_path (108 bytes).
        let dir = tempfile::Builder::new()
            .prefix("ctd")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        let socket = d.join("c.sock");
        let snapshotter =
            std::env::var("BERTH_TEST_SNAPSHOTTER").unwrap_or_else(|_| "overlayfs".into());
        let cri = match cri_hosts_dir {
            None => "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n".to_string(),
            // No CNI: the image service works without pod networking.
            Some(hosts) => format!(
                "[plugins.\"io.containerd.grpc.v1.cri\"]\n  disable_apparmor = true\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"{snapshotter}\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"{cni}\"\n  conf_dir = \"{cni}\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"{hosts}\"\n",
                cni = d.join("cni").display(),
                hosts = hosts.display(),
            ),
        };
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             {cri}\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [debug]\n  address = \"\"\n  level = \"debug\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n",
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = socket.display(),
            opt = d.join("opt").display(),
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "containerd"]);
                c
            }
            None => Command::new("containerd"),
        };
        // `ip netns exec` execs containerd: the child is containerd itself.
        let child = command
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("containerd.log")).unwrap())
            .spawn()
            .expect("spawn containerd");
        let mut c = Containerd {
            dir,
            socket,
            snapshotter,
            netns: netns.map(String::from),
            child,
        };
        wait_until(
            "containerd to answer `ctr version`",
            Duration::from_secs(30),
            || {
                if let Ok(Some(status)) = c.child.try_wait() {
                    panic!("containerd exited ({status}):\n{}", c.log());
                }
                c.ctr(&["version"]).success.then_some(())
            },
        );
        c
    }

    /// `ctr --address <sock> --namespace berth-test <args>` (2 min timeout).
    pub fn ctr(&self, args: &[&str]) -> CmdOutput {
        self.ctr_in(NAMESPACE, args)
    }

    /// `ctr` in containerd namespace `namespace` (e.g. [`CRI_NAMESPACE`]).
    pub fn ctr_in(&self, namespace: &str, args: &[&str]) -> CmdOutput {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "ctr"]);
                c
            }
            None => Command::new("ctr"),
        };
        cmd.arg("--address")
            .arg(&self.socket)
            .args(["--namespace", namespace])
            .args(args);
        run(&mut cmd, Duration::from_secs(120))
    }

    /// `ctr images pull --hosts-dir <hosts_dir> …` (fetch + unpack). Check `success`.
    pub fn pull(&self, reference: &str, hosts_dir: &Path, platform: PullPlatform<'_>) -> CmdOutput {
        let hosts = hosts_dir.display().to_string();
        let mut args = vec![
            "images",
            "pull",
            "--hosts-dir",
            &hosts,
            "--snapshotter",
            &self.snapshotter,
        ];
        match platform {
            PullPlatform::One(p) => args.extend(["--platform", p]),
            PullPlatform::All => args.push("--all-platforms"),
        }
        args.push(reference);
        self.ctr(&args)
    }

    /// Target digest of `reference` from `ctr images ls` (columns: REF TYPE DIGEST …).
    pub fn image_digest(&self, reference: &str) -> Option<String> {
        self.image_digest_in(NAMESPACE, reference)
    }

    /// [`Containerd::image_digest`] in containerd namespace `namespace`.
    pub fn image_digest_in(&self, namespace: &str, reference: &str) -> Option<String> {
        let out = self.ctr_in(namespace, &["images", "ls"]);
        out.expect_success();
        out.stdout.lines().skip(1).find_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.first() == Some(&reference))
                .then(|| cols.get(2).map(|d| d.to_string()))
                .flatten()
        })
    }

    /// Every digest in the content store (`ctr content ls -q`).
    pub fn content_digests(&self) -> Vec<String> {
        self.content_digests_in(NAMESPACE)
    }

    /// [`Containerd::content_digests`] in containerd namespace `namespace`.
    pub fn content_digests_in(&self, namespace: &str) -> Vec<String> {
        let out = self.ctr_in(namespace, &["content", "ls", "-q"]);
        out.expect_success();
        out.stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    /// Removes the image (synchronous GC) and then any content left, so the next pull
    /// fetches every blob again.
    pub fn forget(&self, reference: &str) {
        self.ctr(&["images", "rm", "--sync", reference])
            .expect_success();
        let left = self.content_digests();
        if !left.is_empty() {
            let mut args = vec!["content", "rm"];
            args.extend(left.iter().map(String::as_str));
            self.ctr(&args).expect_success();
        }
        assert!(
            self.content_digests().is_empty(),
            "content store not empty after forget"
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        kill_child(&mut self.child);
        // Snapshot mounts only exist during unpack; unmount anything left so the temp dir can go.
        let root = self.dir.path().display().to_string();
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            for m in mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|m| m.starts_with(&root))
            {
                let _ = Command::new("umount").arg("-l").arg(m).status();
            }
        }
    }
}

/// Writes `<dir>/<registry>/hosts.toml`: try `mirror` (pull + resolve) first, then `server`.
pub fn write_hosts_toml(dir: &Path, registry: &str, server: &str, mirror: &str) {
    let d = dir.join(registry);
    std::fs::create_dir_all(&d).unwrap();
    let toml = format!(
        "server = \"{server}\"\n\n[host.\"{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    );
    std::fs::write(d.join("hosts.toml"), toml).unwrap();
}
