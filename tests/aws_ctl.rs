//! `canary-gateway ctl` against a fleet: two gateway processes (the config in
//! `CANARY_GATEWAY_CONFIG`, the table from `CANARY_STORE_TABLE`) sharing one
//! DynamoDB store on moto; `status --wait-converged` returns only once both
//! run the change made on one of them.

#[path = "support/dynamodb_fixture.rs"]
mod dynamodb_fixture;
#[path = "support/gateway_proc.rs"]
mod gateway_proc;
#[path = "support/moto.rs"]
mod moto;

use std::time::Duration;

use gateway_proc::{
    BIN, GatewayProc, TOKEN, TOKEN_ENV, TaggedUpstream, endpoints_line, gateway_config, weights_of,
};
use moto::MotoServer;

const TABLE: &str = "canary-gateway-weights";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_wait_converged_returns_once_every_task_runs_the_change() {
    let moto = MotoServer::start();
    let client = aws_sdk_dynamodb::Client::new(&moto.sdk_config().await);
    dynamodb_fixture::create_table(&client, TABLE).await;
    let (v1, v2) = (
        TaggedUpstream::start("v1").await,
        TaggedUpstream::start("v2").await,
    );
    let mut text = gateway_config(
        &format!("token_env = \"{TOKEN_ENV}\"\n"),
        &format!(
            "\n[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"",
            moto.endpoint_url()
        ),
        &[
            ("v1", 100, endpoints_line(&[v1.addr])),
            ("v2", 0, endpoints_line(&[v2.addr])),
        ],
    );
    // No table in the text: it comes from the environment, as on ECS. A
    // slow poll, so that the second task learns of the change seconds later.
    text.push_str("\n[store]\nkind = \"dynamodb\"\nkey = \"svc1\"\npoll_interval = \"3s\"\n");
    let env = [("CANARY_STORE_TABLE", TABLE)];
    let a = GatewayProc::spawn_from_env(&text, &env).await;
    let b = GatewayProc::spawn_from_env(&text, &env).await;
    a.wait_ready(Duration::from_secs(20)).await;
    b.wait_ready(Duration::from_secs(20)).await;

    let urls = format!("http://{},http://{}", a.admin, b.admin);
    let ctl_at = |urls: String, args: &'static [&'static str]| async move {
        let out = tokio::process::Command::new(BIN)
            .arg("ctl")
            .args(args)
            .env("CANARY_ADMIN_URL", &urls)
            .env("CANARY_ADMIN_TOKEN", TOKEN)
            .output()
            .await
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let ctl = |args| ctl_at(urls.clone(), args);
    // The change goes to the first URL (task a).
    let (code, out) = ctl(&["weights", "set", "v2=30", "v1=70"]).await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = ctl(&["status", "--wait-converged", "--timeout", "30s"]).await;
    assert_eq!(code, 0, "{out}");
    // Converged means both tasks run it now, not eventually.
    let (wa, wb) = (a.weights().await, b.weights().await);
    assert_eq!(weights_of(&wb)["v2"], 30, "{wb}");
    assert_eq!(wa["generation"], wb["generation"]);

    // One URL, not the writer's (behind a load balancer): task b, which
    // has not polled since a's change, must not take its old view for the
    // fleet's (it said "converged" on the generation before).
    let (a_url, b_url) = (format!("http://{}", a.admin), format!("http://{}", b.admin));
    let (code, out) = ctl_at(a_url, &["weights", "set", "v2=40", "v1=60"]).await;
    assert_eq!(code, 0, "{out}");
    let args = &["status", "--wait-converged", "--timeout", "30s"];
    let (code, out) = ctl_at(b_url, args).await;
    assert_eq!(code, 0, "{out}");
    let (wa, wb) = (a.weights().await, b.weights().await);
    assert_eq!(weights_of(&wb)["v2"], 40, "{wb}");
    assert_eq!(wa["generation"], wb["generation"]);
}
