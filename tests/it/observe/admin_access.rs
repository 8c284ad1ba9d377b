//! Who may read the admin pages: loopback clients without an admin token, the token when one
//! is set, `admin_listen` only when configured; a client in another network namespace gets 403.

use super::*;
use crate::support::inprocess::{get_json, status_of};

#[tokio::test]
async fn the_status_page_is_for_loopback_clients_without_an_admin_token() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let berth = Berth::builder().upstream(&fake).start().await;
    // 127.0.0.2 is loopback too; a non-loopback client needs a non-loopback listener, so
    // the rule is checked the other way: with a token configured, loopback is not enough.
    assert_eq!(pull(&node(NODE_A), &berth.url("/_berth/status")).await, 200);

    let (guarded, _token_dir) = token_guarded(&fake).await;
    assert_eq!(guarded.status_of("/_berth/status").await, 401);
    let allowed = reqwest::Client::new()
        .get(guarded.url("/_berth/status"))
        .bearer_auth("s3cret-admin-token")
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);

    // With admin_listen (and no token), the page lives there only.
    let admin_port = crate::support::util::free_port();
    let split = Berth::builder()
        .top_level(&format!(
            "[server]\nadmin_listen = \"127.0.0.1:{admin_port}\""
        ))
        .upstream(&fake)
        .start()
        .await;
    assert_eq!(
        split.status_of("/_berth/status").await,
        404,
        "not on the public listener"
    );
    let admin = status_of(&format!("http://127.0.0.1:{admin_port}/_berth/status")).await;
    assert_eq!(admin, 200);
}

/// With no admin configuration, `/_berth/status` is for loopback clients only: from a network
/// namespace wired to ours by a veth pair, the same berth (listening on every address)
/// answers 403 `DENIED` for the page while serving `/v2/` normally, and 200 to 127.0.0.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and ip: run by scripts/test"]
async fn a_non_loopback_client_gets_403_for_the_status_page_but_the_registry_api() {
    if !(crate::support::prereq::require_root("network namespaces")
        && crate::support::prereq::require_tools(&["ip", "curl"]))
    {
        return;
    }
    use crate::support::netns::{Spoke, in_ns, unique_id};
    let fake = FakeUpstream::start(Options::plain()).await;
    fake.push(
        "library/app",
        "1",
        &images::image(&ImageSpec::new(14, Format::Oci)),
    );
    let berth = Berth::builder()
        .listen("0.0.0.0:0".parse().unwrap())
        .upstream(&fake)
        .start()
        .await;
    let port = berth.addr.port();
    let spoke = Spoke::build(&unique_id());
    // GET from inside the namespace: (status, body).
    let from_ns = |path: &str, accept: &str| {
        let url = format!("http://{}:{port}{path}", spoke.host_ip);
        let (ns, accept) = (spoke.ns.name.clone(), format!("Accept: {accept}"));
        async move {
            let out = tokio::task::spawn_blocking(move || {
                in_ns(
                    &ns,
                    &[
                        "curl",
                        "-sS",
                        "--noproxy",
                        "*",
                        "--max-time",
                        "10",
                        "-H",
                        &accept,
                        "-w",
                        "\n%{http_code}",
                        &url,
                    ],
                    Duration::from_secs(20),
                )
            })
            .await
            .unwrap();
            out.expect_success();
            let (body, code) = out.stdout.rsplit_once('\n').unwrap();
            (code.parse::<u16>().unwrap(), body.to_string())
        }
    };

    for accept in ["application/json", "text/html"] {
        let (code, body) = from_ns("/_berth/status", accept).await;
        assert_eq!(code, 403, "{accept}: {body}");
        let error: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error["errors"][0]["code"], "DENIED", "{body}");
        let message = error["errors"][0]["message"].as_str().unwrap();
        assert!(
            message.contains("loopback clients only") && message.contains("admin_token_file"),
            "{message}"
        );
    }
    // The rule is for the admin pages only: the registry API answers the same client.
    let (code, body) = from_ns("/v2/", "application/json").await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = from_ns(
        "/v2/library/app/manifests/1",
        "application/vnd.oci.image.manifest.v1+json",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = from_ns("/v2/library/missing/manifests/1", "application/json").await;
    assert_eq!(code, 404, "{body}");
    // The pin endpoints are off without an admin token, for every client alike.
    let (code, body) = from_ns("/_berth/pins", "application/json").await;
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("admin endpoints are off"), "{body}");

    // The same berth, from loopback: the page, which saw the namespace client as a node.
    let local = format!("http://127.0.0.1:{port}");
    let (code, status) = get_json(&format!("{local}/_berth/status")).await;
    assert_eq!(code, 200, "{status:#}");
    assert_eq!(
        strings(&node_entry(&status, &spoke.ns_ip)["images"]),
        ["docker.io/library/missing"]
    );
    assert_eq!(
        status_of(&format!("{local}/_berth/pins")).await,
        404,
        "pins need the token, loopback or not"
    );
    drop(spoke);
}
