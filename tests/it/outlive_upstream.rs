//! What operators of other mirrors ask for when the upstream goes away: a tag list berth has
//! seen is served (stale, paged) while the upstream is unreachable, a pinned image outlives its
//! deleted tag, and repository rules refuse before any upstream connection.

use http::Method;
use serde_json::Value;

use crate::support::fake_upstream::{FakeUpstream, Fault, Kind, Options, Role};
use crate::support::images::{self, Format, ImageSpec};
use crate::support::inprocess::{Berth, client};

const STALE: &str = "110 berth \"Response is Stale\"";

async fn tags(berth: &Berth, query: &str) -> (u16, Option<String>, Value) {
    let response = berth
        .get(&format!("/v2/library/app/tags/list{query}"))
        .await;
    let status = response.status().as_u16();
    let warning = response
        .headers()
        .get("warning")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = response.json().await.unwrap_or(Value::Null);
    (status, warning, body)
}

#[tokio::test]
async fn a_tag_list_is_served_stale_and_paged_while_the_upstream_is_unreachable() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let image = images::image(&ImageSpec::new(601, Format::Oci));
    for tag in ["1.0.0", "1.1.0", "1.2.0", "2.0.0", "2.1.0"] {
        fake.push("library/app", tag, &image);
    }
    let berth = Berth::builder()
        .upstream(&fake)
        .config("max_attempts = 1")
        .start()
        .await;
    let (status, warning, fresh) = tags(&berth, "").await;
    assert_eq!((status, warning), (200, None));
    assert_eq!(fresh["tags"].as_array().unwrap().len(), 5);

    // The upstream fails every tag list from now on (a 503: down for maintenance).
    fake.inject(Fault::status(503, None).kind(Kind::Tags).times(100));
    let (status, warning, stale) = tags(&berth, "").await;
    assert_eq!(status, 200, "{stale}");
    assert_eq!(warning.as_deref(), Some(STALE), "marked stale");
    assert_eq!(stale["tags"], fresh["tags"]);
    let (_, _, page) = tags(&berth, "?n=2").await;
    assert_eq!(page["tags"], serde_json::json!(["1.0.0", "1.1.0"]));
    let (_, _, page) = tags(&berth, "?n=2&last=1.1.0").await;
    assert_eq!(page["tags"], serde_json::json!(["1.2.0", "2.0.0"]));
    assert!(
        berth
            .metrics_text()
            .await
            .contains("berth_stale_answers_total{upstream=\"docker.io\"} 3"),
        "counted as stale answers"
    );
    // An answer about the repository itself is passed on, not hidden behind the old list.
    fake.reset_stats();
    let unknown = berth.status_of("/v2/library/nothing/tags/list").await;
    assert!(
        unknown >= 500 || unknown == 404,
        "no list was ever kept for it: {unknown}"
    );
}

const ADMIN: &str = "outlive-admin-token-0123456789";

#[tokio::test]
async fn a_pinned_image_outlives_its_deleted_tag_and_an_unpinned_one_follows_the_upstream() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let (kept, dropped) = (
        images::image(&ImageSpec::new(602, Format::Oci)),
        images::image(&ImageSpec::new(603, Format::Oci)),
    );
    fake.push("library/app", "kept", &kept);
    fake.push("library/app", "dropped", &dropped);
    let berth = Berth::builder()
        .top_level(&format!("admin_token = {ADMIN:?}"))
        .upstream(&fake)
        .config("tag_ttl = \"1s\"")
        .start()
        .await;
    for tag in ["kept", "dropped"] {
        assert_eq!(
            berth
                .status_of(&format!("/v2/library/app/manifests/{tag}"))
                .await,
            200
        );
    }
    let pinned = client()
        .put(berth.url("/_berth/pins/rebuild"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"manifests": [kept.manifest.digest]}))
        .send()
        .await
        .unwrap();
    assert_eq!(pinned.status(), 200);

    // The vendor retires both tags; berth asks again once the tag TTL has passed.
    fake.untag("library/app", "kept");
    fake.untag("library/app", "dropped");
    let asked = || fake.count(Role::Registry, Kind::Manifest, Method::HEAD);
    let before = asked();
    crate::support::util::eventually(
        "berth to revalidate the tags upstream",
        std::time::Duration::from_secs(20),
        || async {
            let response = berth.get("/v2/library/app/manifests/kept").await;
            let warning = response.headers().get("warning").cloned();
            (response.status() == 200 && warning.is_some() && asked() > before)
                .then_some(())
                .ok_or(format!("{} {warning:?}", response.status()))
        },
    )
    .await;
    let (status, body) = berth.get_bytes("/v2/library/app/manifests/kept").await;
    assert_eq!(status, 200);
    assert_eq!(
        crate::support::inprocess::sha256(&body),
        kept.manifest.digest
    );
    // The unpinned tag follows the upstream once its TTL has passed (and is never served
    // stale meanwhile).
    crate::support::util::eventually(
        "the unpinned tag to follow the upstream",
        std::time::Duration::from_secs(20),
        || async {
            let response = berth.get("/v2/library/app/manifests/dropped").await;
            assert!(
                response.headers().get("warning").is_none(),
                "an unpinned tag is never served stale"
            );
            (response.status() == 404)
                .then_some(())
                .ok_or(response.status().to_string())
        },
    )
    .await;
}

#[tokio::test]
async fn repository_rules_refuse_before_any_upstream_connection_and_say_why() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let image = images::image(&ImageSpec::new(604, Format::Oci));
    fake.push("library/app", "1", &image);
    fake.push("library/forbidden-tool", "1", &image);
    fake.push("other/app", "1", &image);
    let berth = Berth::builder()
        .upstream(&fake)
        .config(
            "allow_repositories = [\"library/**\"]\ndeny_repositories = [\"library/forbidden-*\"]",
        )
        .start()
        .await;
    assert_eq!(berth.status_of("/v2/library/app/manifests/1").await, 200);
    fake.reset_stats();
    for (path, rule) in [
        (
            "/v2/library/forbidden-tool/manifests/1",
            "deny_repositories",
        ),
        ("/v2/other/app/manifests/1", "allow_repositories"),
    ] {
        let response = berth.get(path).await;
        assert_eq!(response.status(), 403, "{path}");
        let body = response.text().await.unwrap();
        assert!(body.contains("DENIED") && body.contains(rule), "{body}");
    }
    assert!(fake.requests().is_empty(), "nothing reached the upstream");
}
