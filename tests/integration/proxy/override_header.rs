//! The override header picks a version; unknown names fall back to the split.

use crate::support::*;

#[tokio::test]
async fn override_header_picks_a_version_and_unknown_names_fall_back() {
    let split = "override_header = \"x-canary-version\"\nresponse_header = \"x-canary-version\"";
    let (_v1, v2, gw) = two_versions(split, 100, 0).await;
    let mut client = Client::connect(gw.addr).await;
    for _ in 0..20 {
        let reply = client
            .get("/", &[("x-canary-version", "v2")])
            .await
            .unwrap();
        assert_eq!(reply.text(), "v2");
        assert_eq!(reply.header("x-canary-version"), Some("v2"));
        assert_eq!(reply.header("x-upstream"), Some("v2"));
    }
    // An unknown name is ignored: the normal split (all v1 at 100/0) applies.
    for name in ["v3", "", "V2"] {
        let reply = client
            .get("/", &[("x-canary-version", name)])
            .await
            .unwrap();
        assert_eq!(reply.text(), "v1", "override {name:?}");
        assert_eq!(reply.header("x-canary-version"), Some("v1"));
    }
    let reply = client.get("/", &[]).await.unwrap();
    assert_eq!(reply.header("x-canary-version"), Some("v1"));
    assert_eq!(v2.hits(), 20);
    gw.shutdown().await;
}
