//! The node side of the rebuild loop in Ansible, applied for real with `ansible-playbook -c
//! local` into temp roots (`berth_node_root`), no systemd:
//! - `ansible/roles/berth_node` writes byte for byte what `berth k3s-registries` /
//!   `berth containerd-hosts` print for the same settings (K3s, RKE2 and containerd flavours,
//!   plain HTTP and TLS + auth), with the right modes; a second run changes nothing; the
//!   restart handler (a stub command the test provides) runs once per change and names the
//!   right service; the containerd flavour's tree drives a real containerd pull through berth.
//! - `ansible/prewarm.yml`, the gate before a destroy: passes against a warm berth, and fails
//!   naming the image and layer once a cached layer is gone and the upstreams are down.
//!
//! Needs root (the role chowns to root) and ansible, like the berth role's test.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::ansible::{recap, task_output};
use crate::support::fake_upstream::{FakeUpstream, Options};
use crate::support::images::{self, Content, Format};
use crate::support::inprocess::Berth;
use crate::support::prereq::{require_root, require_tools};
use crate::support::real::{Containerd, DockerRegistry, PullPlatform, TestCa, skopeo};
use crate::support::util::{CmdOutput, run};

/// One playbook run on a loaded 2-core CI machine: tens of seconds; this bounds a hang.
const ANSIBLE_TIMEOUT: Duration = Duration::from_secs(300);

fn ansible_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ansible")
}

fn ansible_playbook(dir: &Path, args: &[&str]) -> CmdOutput {
    run(
        Command::new("ansible-playbook")
            .args(["-v", "-i", "localhost,", "-c", "local"])
            .args(args)
            .current_dir(dir)
            .env("ANSIBLE_ROLES_PATH", ansible_dir().join("roles"))
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_LOCAL_TEMP", dir.join("ansible-tmp"))
            .env("ANSIBLE_RETRY_FILES_ENABLED", "false")
            .env_remove("BERTH_MIRROR_URL")
            .env_remove("BERTH_MIRROR_PASSWORD"),
        ANSIBLE_TIMEOUT,
    )
}

/// `berth <args>` as a user would run it by hand; its stdout.
fn berth(args: &[&str], password: Option<&str>) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(args)
        .env_remove("BERTH_MIRROR_URL")
        .env_remove("BERTH_MIRROR_PASSWORD");
    if let Some(password) = password {
        cmd.env("BERTH_MIRROR_PASSWORD", password);
    }
    let out = run(&mut cmd, Duration::from_secs(60));
    out.expect_success();
    out.stdout
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A node as the role sees it: a temp root, and a stub restart command that logs the
/// service name it is asked to restart.
struct Node {
    tmp: tempfile::TempDir,
    root: PathBuf,
    restarts_log: PathBuf,
}

impl Node {
    fn new() -> Node {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let restarts_log = tmp.path().join("restarts");
        let stub = tmp.path().join("restart-stub");
        std::fs::write(
            &stub,
            format!("#!/bin/sh\necho \"$1\" >> '{}'\n", restarts_log.display()),
        )
        .unwrap();
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
        Node {
            tmp,
            root,
            restarts_log,
        }
    }

    /// `<root>/<path>`: where the role writes a node path.
    fn path(&self, node_path: &str) -> PathBuf {
        self.root.join(node_path.trim_start_matches('/'))
    }

    /// Applies the role with `vars` on top of the test's (root, binary, stub restart).
    fn apply(&self, vars: &serde_json::Value) -> CmdOutput {
        let mut all = serde_json::json!({
            "berth_node_root": self.root,
            "berth_node_binary_src": env!("CARGO_BIN_EXE_berth"),
            "berth_node_restart_command": [self.tmp.path().join("restart-stub")],
        });
        all.as_object_mut()
            .unwrap()
            .extend(vars.as_object().unwrap().clone());
        // JSON is YAML: no quoting surprises in paths or secrets.
        let play = serde_json::json!([{
            "name": "Point this node at berth",
            "hosts": "all",
            "gather_facts": false,
            "roles": [{ "role": "berth_node", "vars": all }],
        }]);
        let playbook = self.tmp.path().join("node.yml");
        std::fs::write(&playbook, serde_json::to_string_pretty(&play).unwrap()).unwrap();
        ansible_playbook(self.tmp.path(), &[playbook.to_str().unwrap()])
    }

    /// Applies and expects success; returns the recap's `changed`.
    fn apply_ok(&self, vars: &serde_json::Value) -> (u32, CmdOutput) {
        let out = self.apply(vars);
        out.expect_success();
        let counts = recap(&out);
        assert_eq!(counts["failed"], 0, "{}", out.stdout);
        (counts["changed"], out)
    }

    fn restarts(&self) -> Vec<String> {
        std::fs::read_to_string(&self.restarts_log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }
}

#[test]
#[ignore = "needs root, ansible: run by scripts/test"]
fn k3s_and_rke2_nodes_get_what_berth_k3s_registries_prints_and_restart_only_on_change() {
    if !require_tools(&["ansible-playbook"]) || !require_root("the role chowns files to root") {
        return;
    }

    // A K3s server, plain HTTP mirror, no credentials.
    let server = Node::new();
    let mirror = "http://10.27.27.10:5000";
    let mut vars = serde_json::json!({
        "berth_node_flavor": "k3s",
        "berth_node_k3s_role": "server",
        "berth_node_mirror_url": mirror,
    });
    let (changed, _) = server.apply_ok(&vars);
    assert!(changed >= 2, "first run changed {changed}");
    let registries = server.path("/etc/rancher/k3s/registries.yaml");
    assert_eq!(
        read(&registries),
        berth(&["k3s-registries", "--mirror-url", mirror], None)
    );
    assert_eq!(mode(&registries), 0o644, "no credentials: world-readable");
    assert!(
        !server
            .path("/etc/rancher/k3s/config.yaml.d/50-berth.yaml")
            .exists(),
        "the registries' own endpoints stay as fallback unless opted out"
    );
    assert_eq!(server.restarts(), ["k3s"]);

    let (changed, second) = server.apply_ok(&vars);
    assert_eq!(changed, 0, "second run not idempotent:\n{}", second.stdout);
    assert_eq!(server.restarts(), ["k3s"], "no change, no restart");

    // A changed setting rewrites the file and restarts once more.
    vars["berth_node_catch_all"] = true.into();
    vars["berth_node_registries"] = serde_json::json!(["docker.io", "ghcr.io"]);
    server.apply_ok(&vars);
    assert_eq!(
        read(&registries),
        berth(
            &[
                "k3s-registries",
                "--mirror-url",
                mirror,
                "--registry",
                "docker.io",
                "--registry",
                "ghcr.io",
                "--catch-all"
            ],
            None
        )
    );
    assert_eq!(server.restarts(), ["k3s", "k3s"]);

    // A K3s agent behind an https mirror with a CA, a client certificate and credentials,
    // opting out of the fallback to the registries' own endpoints.
    let agent = Node::new();
    let ca = TestCa::new();
    let secret = format!("node-secret-{}", std::process::id());
    let mut vars = serde_json::json!({
        "berth_node_flavor": "k3s",
        "berth_node_k3s_role": "agent",
        "berth_node_mirror_url": "https://mirror.example:8443",
        "berth_node_ca_src": ca.ca_pem,
        "berth_node_cert_src": ca.cert_pem,
        "berth_node_key_src": ca.key_pem,
        "berth_node_username": "node",
        "berth_node_password": secret,
        "berth_node_disable_default_registry_endpoint": true,
    });
    let (_, first) = agent.apply_ok(&vars);
    let tls_dir = agent.path("/etc/berth-mirror");
    let (ca_file, cert_file, key_file) = (
        tls_dir.join("ca.pem"),
        tls_dir.join("client.pem"),
        tls_dir.join("client-key.pem"),
    );
    let registries = agent.path("/etc/rancher/k3s/registries.yaml");
    let expected = berth(
        &[
            "k3s-registries",
            "--mirror-url",
            "https://mirror.example:8443",
            "--ca-file",
            ca_file.to_str().unwrap(),
            "--cert-file",
            cert_file.to_str().unwrap(),
            "--key-file",
            key_file.to_str().unwrap(),
            "--username",
            "node",
        ],
        Some(&secret),
    );
    assert!(expected.contains(&secret) && expected.contains("ca_file"));
    assert_eq!(read(&registries), expected);
    assert_eq!(mode(&registries), 0o600, "credentials: root only");
    assert_eq!(read(&ca_file), read(&ca.ca_pem));
    assert_eq!((mode(&ca_file), mode(&key_file)), (0o644, 0o600));
    let dropin = agent.path("/etc/rancher/k3s/config.yaml.d/50-berth.yaml");
    assert!(
        read(&dropin)
            .lines()
            .any(|l| l == "disable-default-registry-endpoint: true"),
        "{}",
        read(&dropin)
    );
    assert_eq!(
        agent.restarts(),
        ["k3s-agent"],
        "one restart for all changes"
    );
    assert!(
        !first.stdout.contains(&secret) && !first.stderr.contains(&secret),
        "the password leaked into Ansible's output"
    );

    let (changed, second) = agent.apply_ok(&vars);
    assert_eq!(changed, 0, "second run not idempotent:\n{}", second.stdout);
    assert!(!second.stdout.contains(&secret));
    assert_eq!(agent.restarts(), ["k3s-agent"]);

    // Opting back in to the fallback removes the drop-in and restarts.
    vars["berth_node_disable_default_registry_endpoint"] = false.into();
    agent.apply_ok(&vars);
    assert!(!dropin.exists());
    assert_eq!(agent.restarts(), ["k3s-agent", "k3s-agent"]);

    // RKE2: its own path and service.
    let rke2 = Node::new();
    rke2.apply_ok(&serde_json::json!({
        "berth_node_flavor": "rke2",
        "berth_node_k3s_role": "server",
        "berth_node_mirror_url": mirror,
    }));
    assert_eq!(
        read(&rke2.path("/etc/rancher/rke2/registries.yaml")),
        berth(&["k3s-registries", "--mirror-url", mirror], None)
    );
    assert_eq!(rke2.restarts(), ["rke2-server"]);
}

#[test]
#[ignore = "needs root, ansible: run by scripts/test"]
fn fresh_node_without_a_runtime_gets_the_files_and_restarts_nothing() {
    if !require_tools(&["ansible-playbook"]) || !require_root("the role chowns files to root") {
        return;
    }
    let mirror = "http://10.27.27.10:5000";
    // The real restart path (systemd, service_facts), on a host where neither k3s nor
    // containerd is installed: the node before the K3s install role runs.
    for (flavor, file) in [
        ("k3s", "/etc/rancher/k3s/registries.yaml"),
        ("containerd", "/etc/containerd/certs.d/docker.io/hosts.toml"),
    ] {
        let node = Node::new();
        assert!(!node.root.exists(), "a fresh root: no directories yet");
        let vars = serde_json::json!({
            "berth_node_flavor": flavor,
            "berth_node_mirror_url": mirror,
            "berth_node_restart_command": [],
        });
        let (changed, out) = node.apply_ok(&vars);
        assert!(changed >= 2, "{flavor}: changed {changed}:\n{}", out.stdout);
        assert!(node.path(file).is_file(), "{flavor}: no {file}");
        let restart = task_output(
            &out,
            "berth_node : Restart the container runtime when it runs",
        );
        assert!(
            restart.contains("skipping"),
            "{flavor}: restarted a runtime that is not there:\n{restart}"
        );
        assert!(node.restarts().is_empty());
        if flavor == "containerd" {
            let config = node.path("/etc/containerd/config.toml");
            assert_eq!(
                config_path(&config, "io.containerd.grpc.v1.cri").as_deref(),
                Some(node.path("/etc/containerd/certs.d").to_str().unwrap()),
                "containerd's first start reads the hosts dir"
            );
        }
        let (changed, second) = node.apply_ok(&vars);
        assert_eq!(changed, 0, "second run not idempotent:\n{}", second.stdout);
    }

    // A restart command with a running check: a stopped runtime is left alone (it reads the
    // files when it starts), a running one restarts.
    for (running, restarts) in [("false", 0), ("true", 1)] {
        let node = Node::new();
        node.apply_ok(&serde_json::json!({
            "berth_node_flavor": "k3s",
            "berth_node_k3s_role": "agent",
            "berth_node_mirror_url": mirror,
            "berth_node_running_command": [running],
        }));
        assert!(node.path("/etc/rancher/k3s/registries.yaml").is_file());
        assert_eq!(node.restarts().len(), restarts, "running check `{running}`");
    }
}

#[test]
#[ignore = "needs ansible: run by scripts/test"]
fn site_yml_takes_the_group_names_of_common_k3s_inventories() {
    if !require_tools(&["ansible-playbook"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // k3s-io/k3s-ansible's group names, a host listed in both groups.
    let inventory = dir.path().join("hosts.ini");
    std::fs::write(
        &inventory,
        "[berth_mirrors]\nmirror ansible_host=10.27.27.10\n\n\
         [server]\ncp1 ansible_host=10.27.27.11\ncp2 ansible_host=10.27.27.12\n\n\
         [agent]\nworker1 ansible_host=10.27.27.21\ncp2\n\n\
         [k3s_cluster:children]\nserver\nagent\n",
    )
    .unwrap();
    let out = run(
        Command::new("ansible-playbook")
            .args(["--list-hosts", "-i"])
            .arg(&inventory)
            .arg(ansible_dir().join("site.yml"))
            .env("ANSIBLE_NOCOLOR", "1"),
        ANSIBLE_TIMEOUT,
    );
    out.expect_success();
    let plays: Vec<&str> = out.stdout.split("play #").skip(1).collect();
    assert_eq!(plays.len(), 3, "{}", out.stdout);
    let hosts = |play: &str| -> Vec<String> {
        let mut hosts: Vec<String> = play
            .split_once("hosts (")
            .map(|(_, rest)| rest.lines().skip(1).map(|l| l.trim().to_string()))
            .into_iter()
            .flatten()
            .filter(|l| !l.is_empty() && !l.starts_with('['))
            .collect();
        hosts.sort();
        hosts
    };
    assert_eq!(hosts(plays[0]), ["mirror"]);
    assert_eq!(hosts(plays[1]), ["cp1", "cp2"], "{}", plays[1]);
    assert!(plays[1].contains("one at a time"));
    assert_eq!(hosts(plays[2]), ["worker1"], "a server is not an agent too");
}

/// Every file under `dir`, relative, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(
                    path.strip_prefix(dir)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    found.sort();
    found
}

/// `berth containerd-hosts <args> --output <tree>` run over the role's tree must find every
/// file already right ("unchanged") and write nothing: the role wrote berth's exact bytes.
fn assert_tree_is_berths(tree: &Path, args: &[&str]) {
    let before = files_under(tree);
    let mut full = vec!["containerd-hosts"];
    full.extend_from_slice(args);
    full.extend(["--output", tree.to_str().unwrap()]);
    let report = berth(&full, None);
    assert!(!report.trim().is_empty());
    for line in report.lines() {
        assert!(
            line.starts_with("unchanged"),
            "berth would rewrite a file the role wrote: {line}\n{report}"
        );
    }
    assert_eq!(report.lines().count(), before.len(), "{report}\n{before:?}");
    assert_eq!(files_under(tree), before);
}

/// The `config_path` value under the CRI registry table of a containerd config.
fn config_path(config: &Path, plugin: &str) -> Option<String> {
    let parsed: toml::Value =
        toml::from_str(&read(config)).unwrap_or_else(|e| panic!("{}: {e}", config.display()));
    parsed
        .get("plugins")?
        .get(plugin)?
        .get("registry")?
        .get("config_path")?
        .as_str()
        .map(String::from)
}

#[test]
#[ignore = "needs root, ansible, containerd, docker-registry, skopeo: run by scripts/test"]
fn containerd_node_gets_berths_tree_and_pulls_through_it() {
    if !(require_tools(&[
        "ansible-playbook",
        "docker-registry",
        "skopeo",
        "containerd",
        "ctr",
    ]) && require_root("containerd mounts snapshots"))
    {
        return;
    }
    let registry = DockerRegistry::start(None);
    let index = images::multi_arch(710, Format::Oci);
    let (repo, tag) = ("prometheus/node-exporter", "v1.8.2");
    skopeo::push(&index, &format!("{}/{repo}:{tag}", registry.host()), None);
    let berth_process = Berth::builder()
        .default_upstream("quay.io")
        .upstream_named("quay.io", &registry.url())
        .spawn();
    let config_src = berth_process.dir.path().join("berth.toml");
    let mirror = berth_process.url();

    // containerd's own default config, with its empty `config_path = ""` line.
    let node = Node::new();
    let config = node.path("/etc/containerd/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    let default = run(
        Command::new("containerd").args(["config", "default"]),
        Duration::from_secs(30),
    );
    default.expect_success();
    std::fs::write(&config, &default.stdout).unwrap();
    let vars = serde_json::json!({
        "berth_node_flavor": "containerd",
        "berth_node_mirror_url": mirror,
        "berth_node_config_src": config_src,
    });
    node.apply_ok(&vars);
    let tree = node.path("/etc/containerd/certs.d");
    assert_tree_is_berths(
        &tree,
        &[
            "--mirror-url",
            &mirror,
            "--config",
            config_src.to_str().unwrap(),
        ],
    );
    assert_eq!(files_under(&tree), ["quay.io/hosts.toml"]);
    assert_eq!(mode(&tree.join("quay.io/hosts.toml")), 0o644);
    let plugin = "io.containerd.grpc.v1.cri";
    assert_eq!(
        config_path(&config, plugin).as_deref(),
        Some(tree.to_str().unwrap()),
        "the existing config_path line is set:\n{}",
        read(&config)
    );
    assert_eq!(
        read(&config)
            .lines()
            .filter(|l| l.contains("config_path"))
            .count(),
        default
            .stdout
            .lines()
            .filter(|l| l.contains("config_path"))
            .count(),
        "rewritten in place, not added"
    );
    assert_eq!(node.restarts(), ["containerd"]);
    let (changed, second) = node.apply_ok(&vars);
    assert_eq!(changed, 0, "second run not idempotent:\n{}", second.stdout);
    assert_eq!(node.restarts(), ["containerd"]);

    // The tree drives a real containerd: the image comes through berth, digests checked.
    let containerd = Containerd::start();
    let reference = format!("quay.io/{repo}:{tag}");
    let pull = || {
        let out = containerd.pull(&reference, &tree, PullPlatform::All);
        assert!(out.success, "{}\n{}", out.stdout, out.stderr);
        assert_eq!(
            containerd.image_digest(&reference).as_deref(),
            Some(index.index.digest.as_str())
        );
        let have = containerd.content_digests();
        for blob in index.manifests().into_iter().chain(index.blobs()) {
            assert!(have.contains(&blob.digest), "{} missing", blob.digest);
        }
    };
    pull();
    let through_berth = berth_process.metric(
        "berth_upstream_requests_total",
        &[("upstream", "quay.io"), ("kind", "blob")],
    );
    assert!(through_berth > 0.0, "the pull did not go through berth");
    let upstream_before = berth_process.metric("berth_upstream_requests_total", &[]);
    let registry_before = registry.access_log().len();
    containerd.forget(&reference);
    pull();
    assert_eq!(
        berth_process.metric("berth_upstream_requests_total", &[]),
        upstream_before,
        "the re-pull was served from berth's cache"
    );
    assert_eq!(registry.access_log().len(), registry_before);

    // TLS flavour, no config.toml yet, catch-all: berth's bytes again, and a new config
    // file containerd 1.x reads as version 2.
    let tls_node = Node::new();
    let ca = TestCa::new();
    let vars = serde_json::json!({
        "berth_node_flavor": "containerd",
        "berth_node_mirror_url": "https://mirror.example:8443",
        "berth_node_catch_all": true,
        "berth_node_ca_src": ca.ca_pem,
        "berth_node_cert_src": ca.cert_pem,
        "berth_node_key_src": ca.key_pem,
    });
    tls_node.apply_ok(&vars);
    let tree = tls_node.path("/etc/containerd/certs.d");
    let tls_dir = tls_node.path("/etc/berth-mirror");
    assert_tree_is_berths(
        &tree,
        &[
            "--mirror-url",
            "https://mirror.example:8443",
            "--catch-all",
            "--ca-file",
            tls_dir.join("ca.pem").to_str().unwrap(),
            "--cert-file",
            tls_dir.join("client.pem").to_str().unwrap(),
            "--key-file",
            tls_dir.join("client-key.pem").to_str().unwrap(),
        ],
    );
    assert!(files_under(&tree).contains(&"_default/hosts.toml".to_string()));
    assert!(read(&tree.join("docker.io/hosts.toml")).contains("client = [["));
    let config = tls_node.path("/etc/containerd/config.toml");
    assert_eq!(
        config_path(&config, plugin).as_deref(),
        Some(tree.to_str().unwrap())
    );
    assert!(read(&config).contains("version = 2"), "{}", read(&config));
    let (changed, second) = tls_node.apply_ok(&vars);
    assert_eq!(changed, 0, "second run not idempotent:\n{}", second.stdout);
    assert_eq!(tls_node.restarts(), ["containerd"]);

    // Without the catch-all, the `_default` file berth wrote goes; a file it did not write
    // stays. hosts.toml is read on every pull: no restart.
    let foreign = tree.join("registry.local:5000/hosts.toml");
    std::fs::create_dir_all(foreign.parent().unwrap()).unwrap();
    std::fs::write(&foreign, "server = \"https://registry.local:5000\"\n").unwrap();
    let mut vars = vars;
    vars["berth_node_catch_all"] = false.into();
    tls_node.apply_ok(&vars);
    assert!(!tree.join("_default/hosts.toml").exists());
    assert!(tree.join("docker.io/hosts.toml").exists() && foreign.exists());
    assert_eq!(tls_node.restarts(), ["containerd"]);
}

/// One image of the gate's group file, on the fake registry that serves it.
struct GroupImage {
    reference: &'static str,
    repo: &'static str,
    tag: &'static str,
    content: images::ImageIndex,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ansible: run by scripts/test"]
async fn prewarm_gate_passes_when_warm_and_fails_naming_the_missing_layer() {
    if !require_tools(&["ansible-playbook"]) {
        return;
    }
    let hub = FakeUpstream::start(Options::default()).await;
    let ghcr = FakeUpstream::start(Options::default()).await;
    let flux = GroupImage {
        reference: "ghcr.io/fluxcd/helm-controller:v1.5.1",
        repo: "fluxcd/helm-controller",
        tag: "v1.5.1",
        content: images::multi_arch(720, Format::Oci),
    };
    let pause = GroupImage {
        reference: "docker.io/rancher/mirrored-pause:3.6",
        repo: "rancher/mirrored-pause",
        tag: "3.6",
        content: images::multi_arch(721, Format::Docker),
    };
    ghcr.push(flux.repo, flux.tag, &flux.content);
    hub.push(pause.repo, pause.tag, &pause.content);

    let work = tempfile::tempdir().unwrap();
    let groups_file = work.path().join("groups.toml");
    std::fs::write(
        &groups_file,
        format!(
            "[groups.flux]\ndescription = \"flux\"\nimages = [{:?}]\n\n\
             [groups.k3s]\ndescription = \"k3s\"\nimages = [{:?}]\n",
            flux.reference, pause.reference
        ),
    )
    .unwrap();
    // One attempt per upstream request: the failing run below should not sit in backoff.
    let berth = Berth::builder()
        .default_upstream("docker.io")
        .top_level("[upstream_defaults]\nmax_attempts = 1")
        .upstream(&hub)
        .upstream_named("ghcr.io", &ghcr.url());
    let berth = tokio::task::block_in_place(|| berth.spawn());
    let vars = work.path().join("gate-vars.json");
    std::fs::write(
        &vars,
        serde_json::json!({
            "berth_prewarm_binary": env!("CARGO_BIN_EXE_berth"),
            "berth_prewarm_mirror": berth.url(),
            "berth_prewarm_groups_file": groups_file,
            "berth_prewarm_groups": ["flux", "k3s"],
            "berth_prewarm_platforms": ["linux/amd64", "linux/arm64"],
        })
        .to_string(),
    )
    .unwrap();
    let playbook = ansible_dir().join("prewarm.yml");
    let vars_arg = format!("@{}", vars.display());
    let gate = || {
        tokio::task::block_in_place(|| {
            ansible_playbook(work.path(), &[playbook.to_str().unwrap(), "-e", &vars_arg])
        })
    };

    // Cold cache, upstreams up: the gate warms, then the check passes.
    let passed = gate();
    eprintln!("--- the gate passing:\n{}", passed.stdout);
    passed.expect_success();
    assert!(
        passed.stdout.contains("ready: all 2 images"),
        "{}",
        passed.stdout
    );
    assert_eq!(recap(&passed)["failed"], 0);
    assert!(
        !passed.stdout.contains('\u{1b}') && !passed.stderr.contains('\u{1b}'),
        "terminal escapes (progress bars) in a CI log"
    );

    // The groups taken from the cluster's rendered manifests instead (Flux kustomizations
    // rendered to YAML): the same gate, the images the cluster really runs.
    let rendered = work.path().join("rendered");
    std::fs::create_dir_all(&rendered).unwrap();
    std::fs::write(
        rendered.join("flux-system.yaml"),
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nspec:\n  template:\n    spec:\n      \
             containers:\n        - name: helm-controller\n          image: {}\n",
            flux.reference
        ),
    )
    .unwrap();
    let from_manifests = tokio::task::block_in_place(|| {
        ansible_playbook(
            work.path(),
            &[
                playbook.to_str().unwrap(),
                "-e",
                &vars_arg,
                "-e",
                &serde_json::json!({
                    "berth_prewarm_groups": [],
                    "berth_prewarm_from_manifests": rendered,
                })
                .to_string(),
            ],
        )
    });
    from_manifests.expect_success();
    assert!(
        from_manifests.stdout.contains("ready: all 1 images"),
        "{}",
        from_manifests.stdout
    );

    // A cached layer lost and the egress down: a rebuild would fail, so the gate does, and
    // says which image and which layer.
    let lost = flux.content.blobs().last().unwrap().digest.clone();
    let hex = lost.strip_prefix("sha256:").unwrap();
    std::fs::remove_file(berth.dir.path().join("data/blobs/sha256").join(hex)).unwrap();
    drop(hub);
    drop(ghcr);
    let failed = gate();
    eprintln!("--- the gate failing:\n{}", failed.stdout);
    assert!(
        !failed.success && !failed.timed_out,
        "the gate passed without a cached layer:\n{}",
        failed.stdout
    );
    let fail_task = failed
        .stdout
        .split("TASK [")
        .find(|t| t.starts_with("Fail the gate with what is missing"))
        .unwrap_or_else(|| panic!("the gate failed elsewhere:\n{}", failed.stdout));
    assert!(
        fail_task.contains("MISSING flux ghcr.io/fluxcd/helm-controller:v1.5.1: layer")
            && fail_task.contains(&lost),
        "the failure does not name the image and layer:\n{fail_task}"
    );
    assert!(
        fail_task.contains("NOT READY: 1 of 2 images"),
        "{fail_task}"
    );
    assert!(
        !fail_task.contains("mirrored-pause"),
        "a complete image is not listed as missing:\n{fail_task}"
    );
}

#[test]
#[ignore = "needs ansible: run by scripts/test"]
fn playbooks_pass_syntax_check() {
    if !require_tools(&["ansible-playbook"]) {
        return;
    }
    for playbook in ["site.yml", "prewarm.yml", "report.yml"] {
        let out = run(
            Command::new("ansible-playbook")
                .args(["--syntax-check", "-i", "inventory.example.ini", playbook])
                .current_dir(ansible_dir())
                .env("ANSIBLE_NOCOLOR", "1"),
            ANSIBLE_TIMEOUT,
        );
        out.expect_success();
        assert!(
            out.stdout.contains(&format!("playbook: {playbook}")),
            "{}",
            out.stdout
        );
    }
}
