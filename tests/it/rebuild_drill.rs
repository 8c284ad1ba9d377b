//! The drill: the whole destroy/rebuild loop of issue 20 on one machine, with real
//! containerds as the nodes, berth and the upstream each in their own network namespace.
//!
//! ```text
//!   node cp1 (dr1-<id>) 10.27.27.11 ─┐                                upstream (du-<id>)
//!   node worker1 (dr2-<id>) .21 ─────┴─ br0 10.27.27.10  berth (db-<id>)  10.27.28.1 ── 10.27.28.2  fake registry
//! ```
//!
//! 1. First boot: the `berth_node` role (containerd flavour, the real systemd restart path: no
//!    runtime installed) writes each node's certs.d and config.toml before its containerd first
//!    starts; each node pulls a K3s-like bootstrap set through berth: cp1 as the kubelet does,
//!    CRI `PullImage` with the CRI plugin's `config_path` taken from the role's config.toml;
//!    worker1 with `ctr` and the role's hosts dir.
//! 2. `berth prewarm --check --from-history` says ready.
//! 3. The upstream is cut: packets dropped in berth's namespace, not refused.
//! 4. Destroy (each node's containerd state wiped) and rebuild (role first, then containerd):
//!    every pull succeeds from berth's cache alone (no upstream request), and `report.yml` is
//!    clean and names the nodes.
//! 5. One cached layer removed: the gate fails naming the image and the layer; a fresh node's
//!    CRI pull then fails, and the report fails naming the image, the node and the class, with
//!    the node's MTU, default route and resolvers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::ansible::{
    ANSIBLE_TIMEOUT, ansible_dir, recap_of, report_playbook, task_output,
};
use crate::support::fake_upstream::{FakeUpstream, Options};
use crate::support::images::{self, Format, ImageIndex};
use crate::support::netns::{InNetns, Netns, Proc, in_ns, ip, unique_id};
use crate::support::prereq::{require_root, require_tools};
use crate::support::real::{CRI_NAMESPACE, Containerd, PullPlatform, cri};
use crate::support::util::{CmdOutput, run};

const BERTH_IP: &str = "10.27.27.10";
const BERTH_UP_IP: &str = "10.27.28.1";
const UPSTREAM_IP: &str = "10.27.28.2";
/// berth's port inside its own namespace (private: a fixed port cannot clash).
const BERTH_PORT: u16 = 5000;
const NODES: [(&str, &str); 2] = [("cp1", "10.27.27.11"), ("worker1", "10.27.27.21")];
const PLATFORM: &str = "linux/amd64";

/// The bootstrap images a K3s server pulls first, as (repository, tag) on docker.io.
const BOOTSTRAP: [(&str, &str); 3] = [
    ("rancher/mirrored-pause", "3.6"),
    ("rancher/mirrored-coredns-coredns", "1.12.0"),
    ("rancher/local-path-provisioner", "v0.0.30"),
];

/// The namespaces and their wiring; dropped, the namespaces go and their links with them.
struct DrillNet {
    berth: String,
    upstream: String,
    nodes: Vec<String>,
    _namespaces: Vec<Netns>,
}

impl DrillNet {
    fn build(id: &str) -> DrillNet {
        let (berth, upstream) = (format!("db-{id}"), format!("du-{id}"));
        let nodes: Vec<String> = (1..=NODES.len()).map(|n| format!("dr{n}-{id}")).collect();
        let mut namespaces = Vec::new();
        for name in [&berth, &upstream].into_iter().chain(&nodes) {
            namespaces.push(Netns::create(name));
        }
        let net = DrillNet {
            berth,
            upstream,
            nodes,
            _namespaces: namespaces,
        };
        let bridge = "br0";
        ip(&["-n", &net.berth, "link", "add", bridge, "type", "bridge"]);
        ip(&[
            "-n",
            &net.berth,
            "addr",
            "add",
            &format!("{BERTH_IP}/24"),
            "dev",
            bridge,
        ]);
        ip(&["-n", &net.berth, "link", "set", bridge, "up"]);
        for (n, (node_ns, (_, node_ip))) in net.nodes.iter().zip(NODES).enumerate() {
            let (node_dev, port_dev) = (format!("dn{n}{id}"), format!("dp{n}{id}"));
            ip(&[
                "link", "add", &node_dev, "netns", node_ns, "type", "veth", "peer", "name",
                &port_dev, "netns", &net.berth,
            ]);
            ip(&[
                "-n", &net.berth, "link", "set", &port_dev, "master", bridge, "up",
            ]);
            ip(&[
                "-n",
                node_ns,
                "addr",
                "add",
                &format!("{node_ip}/24"),
                "dev",
                &node_dev,
            ]);
            ip(&["-n", node_ns, "link", "set", &node_dev, "up"]);
            ip(&["-n", node_ns, "route", "add", "default", "via", BERTH_IP]);
        }
        let (up_dev, berth_dev) = (format!("du{id}"), format!("dbu{id}"));
        ip(&[
            "link",
            "add",
            &up_dev,
            "netns",
            &net.upstream,
            "type",
            "veth",
            "peer",
            "name",
            &berth_dev,
            "netns",
            &net.berth,
        ]);
        for (ns, dev, addr) in [
            (&net.upstream, &up_dev, UPSTREAM_IP),
            (&net.berth, &berth_dev, BERTH_UP_IP),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        net
    }
}

/// The fake registry, served from a runtime inside the upstream namespace.
fn start_upstream(ns: &str) -> (InNetns, FakeUpstream) {
    InNetns::start(ns, || async {
        let fake = FakeUpstream::start_on(Options::plain(), UPSTREAM_IP.parse().unwrap()).await;
        (fake, ())
    })
}

/// berth inside its namespace on 0.0.0.0:5000, ready once `GET /v2/` answers there.
fn start_berth(ns: &str, dir: &Path, config: &Path) -> Proc {
    crate::support::netns::berth_in(
        ns,
        dir,
        config,
        &format!("0.0.0.0:{BERTH_PORT}"),
        BERTH_PORT,
    )
}

/// `berth <args>` inside berth's namespace, against it over loopback.
fn berth_cli(ns: &str, args: &[&str]) -> CmdOutput {
    let mirror = format!("http://127.0.0.1:{BERTH_PORT}");
    let mut all = vec![env!("CARGO_BIN_EXE_berth")];
    all.extend_from_slice(args);
    all.extend(["--mirror", &mirror]);
    let out = run(
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(&all)
            .env("BERTH_LOG", "warn")
            .env_remove("BERTH_MIRROR_URL")
            .env_remove("BERTH_ADMIN_TOKEN"),
        Duration::from_secs(120),
    );
    assert!(!out.timed_out, "{args:?} timed out: {out:?}");
    out
}

/// A Python that runs inside `ns`: Ansible's modules for a host then run in that node's
/// network (its routes, its resolv.conf, its loopback).
fn python_in_netns(dir: &Path, ns: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(format!("python-{ns}"));
    std::fs::write(
        &path,
        format!("#!/bin/sh\nexec ip netns exec {ns} /usr/bin/python3 \"$@\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The drill's inventory: the mirror and the nodes, each host's modules in its namespace.
fn write_inventory(dir: &Path, net: &DrillNet) -> PathBuf {
    let host = |name: &str, address: &str, ns: &str| {
        format!(
            "{name} ansible_host={address} ansible_connection=local ansible_python_interpreter={}\n",
            python_in_netns(dir, ns).display()
        )
    };
    let mut text = format!("[berth_mirrors]\n{}", host("mirror", BERTH_IP, &net.berth));
    text.push_str("\n[k3s_servers]\n");
    text.push_str(&host(NODES[0].0, NODES[0].1, &net.nodes[0]));
    text.push_str("\n[k3s_agents]\n");
    text.push_str(&host(NODES[1].0, NODES[1].1, &net.nodes[1]));
    let path = dir.join("hosts.ini");
    std::fs::write(&path, text).unwrap();
    path
}

/// Where node `n` keeps the files the role writes (its `/`).
fn node_root(dir: &Path, n: usize) -> PathBuf {
    dir.join(format!("node{n}-root"))
}

/// The `berth_node` role on every node, as the rebuild runs it before the runtime starts: the
/// containerd flavour, systemd's restart path (nothing installed, so nothing restarts).
fn apply_node_role(dir: &Path, berth_config: &Path) {
    let hosts: Vec<serde_json::Value> = (0..NODES.len())
        .map(|n| serde_json::json!({ "name": NODES[n].0, "root": node_root(dir, n) }))
        .collect();
    let inventory = dir.join("nodes.json");
    // Each node a local host with its own root (an Ansible YAML/JSON inventory).
    let mut node_hosts = serde_json::Map::new();
    for h in &hosts {
        node_hosts.insert(
            h["name"].as_str().unwrap().to_string(),
            serde_json::json!({ "ansible_connection": "local", "berth_node_root": h["root"] }),
        );
    }
    std::fs::write(
        &inventory,
        serde_json::json!({ "all": { "hosts": node_hosts } }).to_string(),
    )
    .unwrap();
    let play = serde_json::json!([{
        "name": "Point the fresh nodes at berth before their runtime first starts",
        "hosts": "all",
        "gather_facts": false,
        "roles": [{ "role": "berth_node", "vars": {
            "berth_node_flavor": "containerd",
            "berth_node_mirror_url": format!("http://{BERTH_IP}:{BERTH_PORT}"),
            "berth_node_config_src": berth_config,
            "berth_node_binary_src": env!("CARGO_BIN_EXE_berth"),
        }}],
    }]);
    let playbook = dir.join("nodes.yml");
    std::fs::write(&playbook, play.to_string()).unwrap();
    let out = run(
        Command::new("ansible-playbook")
            .arg("-i")
            .arg(&inventory)
            .arg(&playbook)
            .current_dir(dir)
            .env("ANSIBLE_ROLES_PATH", ansible_dir().join("roles"))
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_LOCAL_TEMP", dir.join("ansible-tmp"))
            .env("ANSIBLE_RETRY_FILES_ENABLED", "false"),
        ANSIBLE_TIMEOUT,
    );
    out.expect_success();
    for (n, (name, _)) in NODES.iter().enumerate() {
        assert_eq!(recap_of(&out, name)["failed"], 0, "{}", out.stdout);
        assert!(
            hosts_dir(dir, n).join("docker.io/hosts.toml").is_file(),
            "{name}: no certs.d"
        );
    }
}

fn hosts_dir(dir: &Path, n: usize) -> PathBuf {
    node_root(dir, n).join("etc/containerd/certs.d")
}

/// The node that pulls as the kubelet does (CRI); the others pull with `ctr`.
const CRI_NODE: usize = 0;

/// Starts node `n`'s containerd in its namespace, after the role wrote its files. The CRI
/// node's registry hosts come from the `config_path` the role wrote into config.toml.
fn start_node(net: &DrillNet, dir: &Path, n: usize) -> Containerd {
    if n != CRI_NODE {
        return Containerd::start_in_netns(&net.nodes[n]);
    }
    let config = node_root(dir, n).join("etc/containerd/config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let parsed: toml::Value = toml::from_str(&text).unwrap();
    let config_path = parsed["plugins"]["io.containerd.grpc.v1.cri"]["registry"]["config_path"]
        .as_str()
        .unwrap_or_else(|| panic!("no CRI config_path in {}:\n{text}", config.display()));
    assert_eq!(Path::new(config_path), hosts_dir(dir, n));
    Containerd::start_in_netns_with_cri(&net.nodes[n], Path::new(config_path))
}

/// Pulls `reference` on node `n`: CRI `PullImage` on the CRI node (`Ok(image id)`), else `ctr`
/// through the role's hosts dir (`Ok("")`).
fn pull(node: &Containerd, dir: &Path, n: usize, reference: &str) -> Result<String, String> {
    if n == CRI_NODE {
        return cri::pull_image(&node.socket, reference);
    }
    let out = node.pull(reference, &hosts_dir(dir, n), PullPlatform::One(PLATFORM));
    if out.success {
        Ok(String::new())
    } else {
        Err(format!("{}\n{}", out.stdout, out.stderr))
    }
}

/// Every bootstrap image pulled on `node`: each succeeds, with the pushed digests.
fn pull_bootstrap_set(node: &Containerd, dir: &Path, n: usize, images: &[ImageIndex]) {
    for ((repository, tag), index) in BOOTSTRAP.iter().zip(images) {
        let reference = format!("docker.io/{repository}:{tag}");
        let image_id = pull(node, dir, n, &reference)
            .unwrap_or_else(|e| panic!("{}: {reference}: {e}", NODES[n].0));
        let image = index.image_for("amd64");
        let namespace = if n == CRI_NODE {
            // The kubelet's answer: the image id is the platform's config digest.
            assert_eq!(image_id, image.config.digest, "{reference}");
            CRI_NAMESPACE
        } else {
            crate::support::real::containerd::NAMESPACE
        };
        assert_eq!(
            node.image_digest_in(namespace, &reference).as_deref(),
            Some(index.index.digest.as_str())
        );
        let have = node.content_digests_in(namespace);
        for blob in std::iter::once(&image.manifest)
            .chain(std::iter::once(&image.config))
            .chain(&image.layers)
        {
            assert!(
                have.contains(&blob.digest),
                "{reference}: {} missing",
                blob.digest
            );
        }
    }
}

fn epoch_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
#[ignore = "needs root, network namespaces, iptables, containerd, ansible: run by scripts/test"]
fn rebuild_drill_first_boot_gate_cut_rebuild_from_cache_and_report() {
    if !require_root("network namespaces, containerd")
        || !require_tools(&[
            "ip",
            "iptables",
            "curl",
            "containerd",
            "ctr",
            "ansible-playbook",
        ])
    {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let net = DrillNet::build(&unique_id());
    let (_upstream_runtime, upstream) = start_upstream(&net.upstream);
    let images: Vec<ImageIndex> = (0..BOOTSTRAP.len())
        .map(|i| images::multi_arch(740 + i as u64, Format::Docker))
        .collect();
    for ((repository, tag), index) in BOOTSTRAP.iter().zip(&images) {
        upstream.push(repository, tag, index);
    }

    // berth names the nodes; a cut upstream fails fast (one attempt, 2 s to connect, 3 s for
    // an answer on a pooled connection); tags are trusted for the drill's length, so the
    // rebuild asks the upstream nothing.
    let mut nodes_table = String::new();
    for (name, address) in NODES {
        nodes_table.push_str(&format!("{address:?} = {name:?}\n"));
    }
    let berth_config = dir.join("berth.toml");
    std::fs::write(
        &berth_config,
        format!(
            "default_upstream = \"docker.io\"\n\n[nodes]\n{nodes_table}\n\
             [upstream_defaults]\nconnect_timeout = \"2s\"\nheader_timeout = \"3s\"\nmax_attempts = 1\ntag_ttl = \"1h\"\n\n\
             [upstreams.\"docker.io\"]\nurl = \"http://{}\"\n",
            upstream.registry_addr
        ),
    )
    .unwrap();
    let mut berth = start_berth(&net.berth, dir, &berth_config);
    let inventory = write_inventory(dir, &net);

    // (1) First boot: the role, then containerd, then the bootstrap pulls through berth.
    apply_node_role(dir, &berth_config);
    let mut nodes: Vec<Containerd> = (0..NODES.len()).map(|n| start_node(&net, dir, n)).collect();
    for (n, node) in nodes.iter().enumerate() {
        pull_bootstrap_set(node, dir, n, &images);
    }
    let first_boot_requests = upstream.requests().len();
    assert!(
        first_boot_requests > 0,
        "the first boot went through berth to the upstream"
    );

    // (2) The gate: everything the cluster pulled can be served from the cache alone.
    let ready = berth_cli(&net.berth, &["prewarm", "--check", "--from-history"]);
    eprintln!(
        "--- the gate after the first boot:\n{}{}",
        ready.stdout, ready.stderr
    );
    assert_eq!(ready.code, Some(0), "{ready:?}");
    assert!(
        ready.stdout.contains("ready: all 3 images"),
        "{}",
        ready.stdout
    );

    // (3) The upstream cut: dropped, so a connect times out instead of being refused.
    in_ns(
        &net.berth,
        &["iptables", "-A", "OUTPUT", "-d", UPSTREAM_IP, "-j", "DROP"],
        Duration::from_secs(10),
    )
    .expect_success();
    let probe = in_ns(
        &net.berth,
        &[
            "curl",
            "-s",
            "--max-time",
            "2",
            &format!("http://{}/v2/", upstream.registry_addr),
        ],
        Duration::from_secs(10),
    );
    assert!(
        !probe.success && probe.stderr.is_empty() && probe.code == Some(28),
        "the upstream answers or refuses instead of being silent: {probe:?}"
    );

    // (4) Destroy and rebuild: state wiped, role first, then containerd, from the cache alone.
    let rebuild_start = epoch_now();
    nodes.clear();
    for n in 0..NODES.len() {
        std::fs::remove_dir_all(node_root(dir, n)).unwrap();
    }
    apply_node_role(dir, &berth_config);
    nodes = (0..NODES.len()).map(|n| start_node(&net, dir, n)).collect();
    for (n, node) in nodes.iter().enumerate() {
        pull_bootstrap_set(node, dir, n, &images);
    }
    assert_eq!(
        upstream.requests().len(),
        first_boot_requests,
        "the rebuild asked the upstream"
    );
    berth.assert_running("berth");
    let vars = serde_json::json!({
        "berth_report_binary": env!("CARGO_BIN_EXE_berth"),
        "berth_report_mirror": format!("http://127.0.0.1:{BERTH_PORT}"),
        "berth_report_rebuild_start": rebuild_start,
    });
    let clean = report_playbook(dir, &inventory, &vars);
    eprintln!("--- the report after the rebuild:\n{}", clean.stdout);
    clean.expect_success();
    assert_eq!(recap_of(&clean, "mirror")["failed"], 0);
    let pulled = task_output(&clean, "Show what the nodes pulled through berth");
    for ((repository, tag), index) in BOOTSTRAP.iter().zip(&images) {
        let line = format!(
            "pulled docker.io/{repository}:{tag} {} by cp1, worker1",
            index.index.digest
        );
        assert!(pulled.contains(&line), "{line}\n{pulled}");
    }

    // (5) One cached layer lost: the gate fails naming the image and the layer.
    let coredns = format!("docker.io/{}:{}", BOOTSTRAP[1].0, BOOTSTRAP[1].1);
    let lost = images[1].image_for("amd64").layers[0].digest.clone();
    let blob = dir
        .join("data/blobs/sha256")
        .join(lost.trim_start_matches("sha256:"));
    std::fs::remove_file(&blob).unwrap_or_else(|e| panic!("{}: {e}", blob.display()));
    let not_ready = berth_cli(&net.berth, &["prewarm", "--check", "--from-history"]);
    eprintln!(
        "--- the gate with a layer lost:\n{}{}",
        not_ready.stdout, not_ready.stderr
    );
    assert_eq!(not_ready.code, Some(1), "{not_ready:?}");
    let missing = not_ready
        .stdout
        .lines()
        .find(|l| l.starts_with("MISSING"))
        .unwrap_or_else(|| panic!("no MISSING line:\n{}", not_ready.stdout));
    assert!(
        missing.contains(&coredns) && missing.contains(&lost),
        "{missing}"
    );

    // cp1 rebuilt once more: its pull of that image fails, and the report says so.
    let failed_start = epoch_now();
    nodes.remove(0);
    std::fs::remove_dir_all(node_root(dir, 0)).unwrap();
    apply_node_role(dir, &berth_config);
    let cp1 = start_node(&net, dir, CRI_NODE);
    let out = pull(&cp1, dir, CRI_NODE, &coredns);
    assert!(out.is_err(), "pulled without the layer: {out:?}");
    let vars = serde_json::json!({
        "berth_report_binary": env!("CARGO_BIN_EXE_berth"),
        "berth_report_mirror": format!("http://127.0.0.1:{BERTH_PORT}"),
        "berth_report_rebuild_start": failed_start,
    });
    let failed = report_playbook(dir, &inventory, &vars);
    eprintln!("--- the report after a failed pull:\n{}", failed.stdout);
    assert!(!failed.success && !failed.timed_out, "{}", failed.stdout);
    assert_eq!(recap_of(&failed, "mirror")["failed"], 1);
    // A new connection times out connecting; one berth kept from the first boot times out
    // waiting for the answer: both say the upstream is silent.
    let verdict = task_output(&failed, "Fail naming each image, node and failure class");
    let image = coredns.rsplit_once(':').unwrap().0;
    assert!(
        verdict.contains(&format!("FAILED {image}: 1 failed on cp1, class "))
            && (verdict.contains("class connect") || verdict.contains("class header_timeout")),
        "{verdict}"
    );
    let network = task_output(&failed, "Show the node's network");
    assert!(
        network.contains("cp1 (10.27.27.11) failed pulls through berth")
            && network.contains(&format!("default via {BERTH_IP}"))
            && network.contains("1500")
            && network.contains("resolvers: 127.0.0.1"),
        "{network}"
    );
    assert!(
        !network.contains("ok: [worker1]") && !network.contains("worker1 (10.27.27.21)"),
        "a node without failures is not reported:\n{network}"
    );
    assert_eq!(
        upstream.requests().len(),
        first_boot_requests,
        "nothing reached the cut upstream"
    );
    drop(cp1);
    drop(nodes);
    drop(berth);
}
