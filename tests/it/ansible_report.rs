//! `ansible/report.yml`, the report after a rebuild, run for real against a berth with a
//! local connection: clean after good pulls (naming what each node pulled), failing after a
//! failed pull and naming the image, the node and the failure class, with the node's
//! network (MTU, default route, resolvers) gathered from the node.

use crate::support::ansible::{recap_of, report_playbook, task_output};
use crate::support::fake_upstream::{FakeUpstream, Options};
use crate::support::images::{self, Format};
use crate::support::inprocess::{Berth, client};
use crate::support::prereq::require_tools;

/// An inventory where the mirror and node `cp1` are this host (127.0.0.1, local connection).
fn inventory(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("hosts.ini");
    std::fs::write(
        &path,
        "[berth_mirrors]\nmirror ansible_host=127.0.0.1 ansible_connection=local\n\n\
         [k3s_servers]\ncp1 ansible_host=127.0.0.1 ansible_connection=local\n",
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ansible: run by scripts/test"]
async fn report_is_clean_after_good_pulls_and_fails_naming_image_node_and_class() {
    if !require_tools(&["ansible-playbook", "ip"]) {
        return;
    }
    let fake = FakeUpstream::start(Options::plain()).await;
    let app = images::multi_arch(730, Format::Oci);
    fake.push("rancher/mirrored-pause", "3.6", &app);
    let berth = Berth::builder()
        .top_level("[nodes]\n\"127.0.0.1\" = \"cp1\"")
        .upstream(&fake)
        .start()
        .await;
    // cp1 pulls the manifest as containerd does: the history names it.
    let pulled = client()
        .get(berth.url("/v2/rancher/mirrored-pause/manifests/3.6?ns=docker.io"))
        .header("accept", "application/vnd.oci.image.index.v1+json")
        .header("user-agent", "containerd/v2.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(pulled.status(), 200);

    let dir = tempfile::tempdir().unwrap();
    let inventory = inventory(dir.path());
    let vars = serde_json::json!({
        "berth_report_binary": env!("CARGO_BIN_EXE_berth"),
        "berth_report_mirror": format!("http://{}", berth.addr),
        "berth_report_since": "1h",
    });
    let report = || tokio::task::block_in_place(|| report_playbook(dir.path(), &inventory, &vars));

    let clean = report();
    eprintln!("--- the clean report:\n{}", clean.stdout);
    clean.expect_success();
    assert_eq!(recap_of(&clean, "mirror")["failed"], 0);
    let pulled = task_output(&clean, "Show what the nodes pulled through berth");
    assert!(
        pulled.contains(&format!(
            "pulled docker.io/rancher/mirrored-pause:3.6 {} by cp1",
            app.index.digest
        )),
        "{pulled}"
    );
    assert!(
        task_output(&clean, "Read the default route").contains("skipping"),
        "no failure, no network gathered"
    );

    // A pull that fails (the image does not exist upstream): the report fails naming it.
    assert_eq!(
        berth
            .status_of("/v2/rancher/mirrored-coredns-coredns/manifests/1.12.0?ns=docker.io")
            .await,
        404
    );
    let failed = report();
    eprintln!("--- the failing report:\n{}", failed.stdout);
    assert!(!failed.success && !failed.timed_out, "{}", failed.stdout);
    assert_eq!(recap_of(&failed, "mirror")["failed"], 1);
    let verdict = task_output(&failed, "Fail naming each image, node and failure class");
    assert!(
        verdict.contains("FAILED docker.io/rancher/mirrored-coredns-coredns")
            && verdict.contains("on cp1")
            && verdict.contains("class not_found"),
        "{verdict}"
    );
    assert!(
        !verdict.contains("mirrored-pause"),
        "a served image is not a failure:\n{verdict}"
    );
    let by_node = task_output(&failed, "Show the failed pulls by node");
    assert!(by_node.contains("FAILED on cp1 (127.0.0.1)"), "{by_node}");
    let network = task_output(&failed, "Show the node's network");
    assert!(
        network.contains("cp1 (127.0.0.1) failed pulls through berth")
            && network.contains("MTU: lo 65536")
            && network.contains("default route:")
            && network.contains("resolvers:"),
        "{network}"
    );
}
