//! Progressive rollouts over real sockets: upstreams on loopback that
//! misbehave on purpose, traffic through the gateway, intervals of 1 s, and
//! readiness polls on `GET /rollout` (no sleeps as synchronisation).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use canary_gateway::config::Config;
use canary_gateway::gateway::{self, Dependencies, Listeners, Running};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// Bound of every wait for the rollout to get somewhere.
const WAIT: Duration = Duration::from_secs(20);

/// Serves HTTP/1.1 on `listener`, each request answered by `answer`, until
/// the task is dropped.
fn serve_http<F, Fut>(listener: TcpListener, answer: F) -> ServerTask
where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    serve_connections(listener, move |stream| {
        let answer = answer.clone();
        async move {
            let service = service_fn(move |req| {
                let answered = answer(req);
                async move { Ok::<_, Infallible>(answered.await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    })
}

/// An upstream answering its name; every `fail_every`-th request (0: none)
/// with a 500, each after `delay_ms`.
struct Behaved {
    addr: SocketAddr,
    _task: ServerTask,
}

impl Behaved {
    async fn start(name: &'static str, fail_every: u64, delay_ms: u64) -> Behaved {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicU64::new(0));
        let task = serve_http(listener, move |req| {
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                let _ = req.into_body().collect().await;
                if delay_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                }
                let mut resp = Response::new(Full::new(Bytes::from(name)));
                if fail_every > 0 && n.is_multiple_of(fail_every) {
                    *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                }
                resp.headers_mut()
                    .insert("x-upstream", http::HeaderValue::from_static(name));
                resp
            }
        });
        Behaved { addr, _task: task }
    }
}

/// Requests through the gateway on a few keep-alive connections until dropped.
struct Traffic {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(addr: SocketAddr, connections: usize, pause: Duration) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..connections)
            .map(|_| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut client = Client::connect(addr).await;
                    while !stop.load(Ordering::Relaxed) {
                        if client.get("/", &[]).await.is_err() {
                            // Closed: reconnect, unless the gateway is gone.
                            if TcpStream::connect(addr).await.is_err() {
                                return;
                            }
                            client = Client::connect(addr).await;
                        }
                        tokio::time::sleep(pause).await;
                    }
                })
            })
            .collect();
        Traffic { stop, tasks }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Two upstreams, stable `v1` (weight 100) and canary `v2` (weight 0),
/// each `(fail_every, delay_ms)` (see [`Behaved`]), a gateway in front, and
/// `(connections, pause_ms)` of traffic through it (0 connections: none).
struct Setup {
    gw: Gateway,
    _traffic: Option<Traffic>,
    _upstreams: (Behaved, Behaved),
}

impl Setup {
    async fn start(stable: (u64, u64), canary: (u64, u64), traffic: (usize, u64)) -> Setup {
        let v1 = Behaved::start("v1", stable.0, stable.1).await;
        let v2 = Behaved::start("v2", canary.0, canary.1).await;
        let gw = Gateway::start(&text(v1.addr, v2.addr)).await;
        let traffic = (traffic.0 > 0)
            .then(|| Traffic::start(gw.addr, traffic.0, Duration::from_millis(traffic.1)));
        Setup {
            gw,
            _traffic: traffic,
            _upstreams: (v1, v2),
        }
    }
}

fn text(stable: SocketAddr, canary: SocketAddr) -> String {
    config(
        "override_header = \"x-canary-version\"",
        &[("v1", 100, stable), ("v2", 0, canary)],
    )
}

/// A gateway whose config (and state file) live in `dir`, so that a second
/// one can start where the first stopped.
async fn start_in(dir: &std::path::Path, text: &str) -> Running {
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let listeners = Listeners {
        proxy: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        admin: TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    gateway::start(
        Config::load(&path).unwrap(),
        listeners,
        Dependencies::default(),
    )
    .await
    .unwrap()
}

async fn call(admin_addr: SocketAddr, method: &str, path: &str, body: &str) -> (StatusCode, Value) {
    let reply = admin(admin_addr, method, path, None, body).await;
    let value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    (reply.status, value)
}

async fn rollout(admin_addr: SocketAddr) -> Value {
    call(admin_addr, "GET", "/rollout", "").await.1
}

/// Polls `GET /rollout` until `done` holds; the last view either way.
async fn wait_rollout(admin_addr: SocketAddr, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let ok = eventually(WAIT, async || {
        last = rollout(admin_addr).await;
        done(&last)
    })
    .await;
    assert!(ok, "the rollout never got there: {last:#}");
    last
}

async fn weights(admin_addr: SocketAddr) -> Value {
    call(admin_addr, "GET", "/weights", "").await.1
}

async fn start_rollout(admin_addr: SocketAddr, body: &str) -> Value {
    let (status, view) = call(admin_addr, "POST", "/rollout", body).await;
    assert_eq!(status, StatusCode::CREATED, "{view:#}");
    view
}

/// The tests' plan: 1 s steps, little evidence needed, a latency ratio
/// generous enough for a loaded test machine.
const PLAN: &str = r#"{"canary": "v2", "steps": [10, 50, 100], "interval_s": 1, "min_requests": 20, "max_error_rate": 0.05, "max_p99_ms": 1000, "max_p99_ratio": 3}"#;

/// Whether an abort reason is the canary's error rate: above
/// `max_error_rate`, or (on a window below `min_requests`, as on a loaded
/// machine's first one) above stable's beyond chance.
fn aborted_on_errors(reason: &str) -> bool {
    reason.contains("max_error_rate") || reason.contains("higher than stable's")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_walks_every_step_and_is_promoted() {
    let s = Setup::start((0, 0), (0, 0), (2, 4)).await;
    let gw = &s.gw;
    // A webhook that never answers: the rollout does not wait for it.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}/events", silent.local_addr().unwrap());
    let view = start_rollout(gw.admin, &plan_with("webhook", &silent_url)).await;
    assert_eq!(
        (view["phase"].as_str(), view["share"].as_f64()),
        (Some("progressing"), Some(10.0))
    );
    assert_eq!(weights(gw.admin).await["weights"]["v2"], 10);
    let done = wait_rollout(gw.admin, |v| v["phase"] == "succeeded").await;
    let shares: Vec<f64> = done["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["share"].as_f64().unwrap())
        .collect();
    assert_eq!(shares, vec![10.0, 50.0, 100.0], "{done:#}");
    let a = &done["last_analysis"];
    assert_eq!(a["verdict"], "pass", "{done:#}");
    assert!(a["canary"]["requests"].as_u64().unwrap() >= 20, "{done:#}");
    let w = weights(gw.admin).await;
    assert_eq!(
        (w["stable"].as_str(), w["weights"]["v2"].as_u64()),
        (Some("v2"), Some(100)),
        "{w}"
    );
    let counts = split_counts(gw.addr, 20, &[]).await;
    assert_eq!(counts.get("v2"), Some(&20), "{counts:?}");
    // The metrics are there (their values are the process's: the other
    // tests' gateways share the recorder).
    let metrics = get(gw.admin, "/metrics", &[]).await.text();
    for name in [
        "canary_rollout_phase{phase=\"succeeded\"}",
        "canary_rollout_steps_total",
        "canary_rollout_analysis{",
    ] {
        assert!(metrics.contains(name), "{name}: {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_failing_a_fifth_of_its_requests_is_aborted_within_two_intervals() {
    let s = Setup::start((0, 0), (5, 0), (2, 4)).await;
    let gw = &s.gw;
    // A webhook that fails its first answer: the event is sent again.
    let hook = Hook::start(200, 1).await;
    let url = format!("http://{}/events", hook.addr);
    start_rollout(gw.admin, &plan_with("webhook", &url)).await;
    let view = wait_rollout(gw.admin, |v| v["phase"] == "aborted").await;
    let took = view["ended_at_ms"].as_u64().unwrap() - view["started_at_ms"].as_u64().unwrap();
    // Analyses run at whole intervals (1 s), never early, maybe late on a
    // busy machine: before 3 s means the first or the second one aborted.
    assert!(took < 3_000, "aborted after {took} ms: {view:#}");
    assert!(
        aborted_on_errors(view["abort_reason"].as_str().unwrap()),
        "{view:#}"
    );
    let a = &view["last_analysis"];
    assert_eq!(a["verdict"], "abort");
    // One in five, over a window that may be small (below min_requests).
    assert!(
        a["canary"]["error_rate"].as_f64().unwrap() > 0.1,
        "{view:#}"
    );
    assert_eq!(a["stable"]["errors"], 0, "{view:#}");
    let w = weights(gw.admin).await;
    assert_eq!(
        (w["weights"]["v1"].as_u64(), w["weights"]["v2"].as_u64()),
        (Some(100), Some(0))
    );
    let counts = split_counts(gw.addr, 30, &[]).await;
    assert_eq!(counts.get("v1"), Some(&30), "{counts:?}");
    let reason = a["reason"].as_str().unwrap();
    assert!(
        ["max_error_rate", "error_rate_vs_stable"].contains(&reason),
        "{view:#}"
    );
    // The rollback applies (and GET /rollout says aborted) before the
    // store's write is known; the abort is counted once the write says it
    // was this abort that ended the rollout.
    abort_counted_and_sent(gw.admin, &hook, reason).await;
    let events = hook.events();
    assert_eq!(&events[..2], ["started", "started"], "{events:?}");
    let aborted = hook
        .received()
        .into_iter()
        .find(|e| e["event"] == "aborted")
        .unwrap();
    assert!(
        aborted_on_errors(aborted["reason"].as_str().unwrap()),
        "{aborted}"
    );
    assert!(
        aborted["analysis"]["canary"]["errors"].as_u64().unwrap() > 0,
        "{aborted}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_failing_every_request_is_aborted_long_before_min_requests() {
    // min_requests far above what a window gets: a canary answering 500 to
    // every request is still rolled back at its first analysis, on the
    // evidence of a window (the errors are beyond chance), not served on
    // until it has failed min_requests requests.
    let s = Setup::start((0, 0), (1, 0), (2, 4)).await;
    let gw = &s.gw;
    let plan = PLAN.replace("\"min_requests\": 20", "\"min_requests\": 100000");
    start_rollout(gw.admin, &plan).await;
    let view = wait_rollout(gw.admin, |v| {
        v["phase"] == "aborted" || v["last_analysis"]["verdict"] == "hold"
    })
    .await;
    assert_eq!(view["phase"], "aborted", "{view:#}");
    let took = view["ended_at_ms"].as_u64().unwrap() - view["started_at_ms"].as_u64().unwrap();
    assert!(took < 3_000, "aborted after {took} ms: {view:#}");
    let reason = view["abort_reason"].as_str().unwrap();
    assert!(
        reason.contains("max_error_rate") && reason.contains("beyond chance"),
        "{view:#}"
    );
    let a = &view["last_analysis"];
    let requests = a["canary"]["requests"].as_u64().unwrap();
    assert!(requests > 0 && requests < 100_000, "{view:#}");
    assert_eq!(a["canary"]["errors"].as_u64(), Some(requests), "{view:#}");
    assert_eq!(weights(gw.admin).await["weights"]["v2"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_only_slower_than_stable_is_aborted() {
    // 60 ms against about 1: at about half the traffic (p99s from enough
    // samples, with three windows to get them on a loaded machine), many
    // connections (most of them waiting on the canary).
    let s = Setup::start((0, 0), (0, 60), (24, 4)).await;
    let gw = &s.gw;
    start_rollout(
        gw.admin,
        &PLAN.replace("[10, 50, 100]", "[50, 55, 60, 100]"),
    )
    .await;
    let view = wait_rollout(gw.admin, |v| v["phase"] == "aborted").await;
    assert!(
        view["abort_reason"]
            .as_str()
            .unwrap()
            .contains("max_p99_ratio"),
        "{view:#}"
    );
    let a = &view["last_analysis"];
    assert_eq!(a["canary"]["errors"], 0, "{view:#}");
    assert!(a["p99_ratio"].as_f64().unwrap() > 3.0, "{view:#}");
    assert_eq!(weights(gw.admin).await["weights"]["v2"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_slightly_noisier_than_stable_within_chance_is_not_aborted() {
    // Stable fails 1 in 50 requests (2%), the canary 1 in 40 (2.5%).
    let s = Setup::start((50, 0), (40, 0), (2, 4)).await;
    let gw = &s.gw;
    start_rollout(gw.admin, PLAN).await;
    let view = wait_rollout(gw.admin, |v| {
        !v["phase"]
            .as_str()
            .is_some_and(|p| p == "progressing" || p == "holding")
    })
    .await;
    assert_eq!(view["phase"], "succeeded", "{view:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_little_traffic_holds_the_step() {
    let s = Setup::start((0, 0), (0, 0), (1, 20)).await;
    let gw = &s.gw;
    let plan = PLAN.replace("\"min_requests\": 20", "\"min_requests\": 100000");
    start_rollout(gw.admin, &plan).await;
    let view = wait_rollout(gw.admin, |v| v["phase"] == "holding").await;
    assert!(
        view["why"]
            .as_str()
            .unwrap()
            .contains("not enough evidence"),
        "{view:#}"
    );
    assert_eq!(
        (view["step"].as_u64(), view["share"].as_f64()),
        (Some(0), Some(10.0))
    );
    assert_eq!(view["last_analysis"]["verdict"], "hold");
    assert_eq!(weights(gw.admin).await["weights"]["v2"], 10);
    let metrics = get(gw.admin, "/metrics", &[]).await.text();
    assert!(
        metrics.contains("canary_rollout_holds_total{reason=\"not_enough_evidence\"}"),
        "{metrics}"
    );
}

/// A gate or webhook on loopback: answers `status` (a 500 to the first
/// `fail_first` requests) and keeps every JSON body it was sent.
struct Hook {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    received: Arc<std::sync::Mutex<Vec<Value>>>,
    _task: ServerTask,
}

impl Hook {
    async fn start(status: u16, fail_first: usize) -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(status));
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (answer, kept) = (status.clone(), received.clone());
        let task = serve_http(listener, move |req| {
            let (answer, kept) = (answer.clone(), kept.clone());
            async move {
                let body = req.into_body().collect().await.map(|c| c.to_bytes());
                let body: Value =
                    serde_json::from_slice(&body.unwrap_or_default()).unwrap_or_default();
                let seen = {
                    let mut kept = kept.lock().unwrap();
                    kept.push(body);
                    kept.len()
                };
                let code = if seen <= fail_first {
                    500
                } else {
                    answer.load(Ordering::SeqCst)
                };
                let mut resp = Response::new(Full::new(Bytes::new()));
                *resp.status_mut() = StatusCode::from_u16(code).unwrap();
                resp
            }
        });
        Hook {
            addr,
            status,
            received,
            _task: task,
        }
    }

    fn received(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }

    /// The `event` fields received, in order.
    fn events(&self) -> Vec<String> {
        self.received()
            .iter()
            .filter_map(|e| e["event"].as_str().map(str::to_string))
            .collect()
    }
}

/// Waits until the abort with `reason` is counted in `/metrics` of
/// `admin` and its `aborted` event reached `hook`.
async fn abort_counted_and_sent(admin: SocketAddr, hook: &Hook, reason: &str) {
    let counter = format!("canary_rollout_aborts_total{{reason=\"{reason}\"}}");
    let counted = eventually(WAIT, async || {
        get(admin, "/metrics", &[]).await.text().contains(&counter)
    })
    .await;
    assert!(counted, "{}", get(admin, "/metrics", &[]).await.text());
    let sent = eventually(WAIT, async || hook.events().iter().any(|e| e == "aborted")).await;
    assert!(sent, "{:?}", hook.received());
}

/// [`PLAN`] with `"key": "url"` added.
fn plan_with(key: &str, url: &str) -> String {
    PLAN.replacen('{', &format!("{{\"{key}\": \"{url}\", "), 1)
}

/// The canary's share of `GET /weights`, and whether `GET /rollout` shows no
/// step taken yet.
async fn canary_weight_and_no_step(admin_addr: SocketAddr) -> (Option<u64>, bool) {
    let view = rollout(admin_addr).await;
    let w = weights(admin_addr).await;
    (
        w["weights"]["v2"].as_u64(),
        view["history"].as_array().is_some_and(|h| h.is_empty()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_answering_403_holds_until_it_approves() {
    let s = Setup::start((0, 0), (0, 0), (2, 4)).await;
    let gw = &s.gw;
    let gate = Hook::start(403, 0).await;
    let url = format!("http://{}/approve", gate.addr);
    // The gate is asked before the first step too: until it approves, the
    // canary has no traffic.
    let view = start_rollout(gw.admin, &plan_with("gate", &url)).await;
    assert_eq!(
        (view["phase"].as_str(), view["share"].as_f64()),
        (Some("waiting_gate"), Some(0.0)),
        "{view:#}"
    );
    let view = wait_rollout(gw.admin, |v| {
        v["why"].as_str().is_some_and(|w| w.contains("403"))
    })
    .await;
    assert_eq!(
        (view["phase"].as_str(), view["step"].as_u64()),
        (Some("waiting_gate"), Some(0)),
        "{view:#}"
    );
    assert_eq!(canary_weight_and_no_step(gw.admin).await, (Some(0), true));
    let counts = split_counts(gw.addr, 30, &[]).await;
    assert_eq!(counts.get("v1"), Some(&30), "{counts:?}");
    // Asked before step 0: the plan, no step in force, no analysis yet.
    let asked = gate.received();
    let first = &asked[0];
    assert_eq!(first["plan"]["canary"], "v2", "{asked:?}");
    assert!(
        first["step"].is_null() && first["analysis"].is_null(),
        "{first}"
    );
    assert_eq!(
        (
            first["share"].as_f64(),
            first["next_step"].as_u64(),
            first["next_share"].as_f64()
        ),
        (Some(0.0), Some(0), Some(10.0)),
        "{first}"
    );
    // Still refusing an interval later: asked again, still no traffic.
    let asked_again = eventually(WAIT, async || gate.received().len() >= 2).await;
    assert!(asked_again, "{:?}", gate.received());
    assert_eq!(rollout(gw.admin).await["phase"], "waiting_gate");
    assert_eq!(canary_weight_and_no_step(gw.admin).await, (Some(0), true));

    // Approved: step 0, then (its analysis passed, the gate asked again
    // with it) step 1.
    gate.status.store(200, Ordering::SeqCst);
    let view = wait_rollout(gw.admin, |v| v["step"] == 1).await;
    let history = view["history"].as_array().unwrap();
    assert_eq!(history[0]["share"].as_f64(), Some(10.0), "{view:#}");
    assert!(
        history[0]["at_ms"].as_u64() > view["started_at_ms"].as_u64(),
        "{view:#}"
    );
    let asked = gate.received();
    let later = asked
        .iter()
        .find(|a| !a["analysis"].is_null())
        .unwrap_or_else(|| panic!("{asked:?}"));
    assert_eq!(later["analysis"]["verdict"], "pass", "{later}");
    assert_eq!(
        (
            later["step"].as_u64(),
            later["next_step"].as_u64(),
            later["next_share"].as_f64()
        ),
        (Some(0), Some(1), Some(50.0)),
        "{later}"
    );
}

/// A gate that approved step 0 while the step cannot be written (the
/// state file unwritable) is not asked again at every retry: an approval
/// may have side effects (consumed, paging someone). Once the store takes
/// writes again, step 0 is taken on that approval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gates_approval_is_not_asked_again_while_its_step_cannot_be_written() {
    let s = Setup::start((0, 0), (0, 0), (0, 0)).await;
    let gw = &s.gw;
    let gate = Hook::start(403, 0).await;
    let url = format!("http://{}/approve", gate.addr);
    let view = start_rollout(gw.admin, &plan_with("gate", &url)).await;
    assert_eq!(view["phase"], "waiting_gate", "{view:#}");
    let refused = eventually(WAIT, async || !gate.received().is_empty()).await;
    assert!(refused);
    // The state file becomes a directory: every write of a decision fails.
    let state = gw.config_path().with_file_name("gateway.state.json");
    std::fs::remove_file(&state).unwrap();
    std::fs::create_dir(&state).unwrap();
    let before = gate.received().len();
    gate.status.store(200, Ordering::SeqCst);
    // Five seconds of failing writes (retried every second) after the
    // approval: one call approves (two if a refusal was in flight).
    let approved = eventually(WAIT, async || gate.received().len() > before).await;
    assert!(approved);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let asked = gate.received().len() - before;
    assert!(
        asked <= 2,
        "the gate was asked {asked} times while step 0 could not be written"
    );
    assert_eq!(canary_weight_and_no_step(gw.admin).await, (Some(0), true));
    // Writable again: step 0 is taken on that approval.
    std::fs::remove_dir(&state).unwrap();
    let view = wait_rollout(gw.admin, |v| {
        v["history"].as_array().is_some_and(|h| !h.is_empty())
    })
    .await;
    assert_eq!(view["step"], 0, "{view:#}");
    assert_eq!(
        gate.received().len() - before,
        asked,
        "asked again for step 0"
    );
}

/// A rollout started while the canary has no healthy endpoint (its only
/// endpoint refuses connections and is ejected, as when discovery has not
/// seen the new tasks yet) is accepted, and holds before its first step:
/// the canary at weight 0, no request sent to it (nor a 503 for it). Once
/// the canary has a healthy endpoint, step 0 is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_onto_a_canary_without_healthy_endpoints_holds_at_weight_0_until_it_has_one() {
    use canary_gateway::discovery::EndpointSink;
    let v1 = Behaved::start("v1", 0, 0).await;
    let v2 = Behaved::start("v2", 0, 0).await;
    let dead = dead_addr().await;
    let text = config_endpoints(
        "override_header = \"x-canary-version\"\n[upstream]\neject_base = \"60s\"\neject_max = \"120s\"",
        &[("v1", 100, vec![v1.addr]), ("v2", 0, vec![dead])],
    );
    let gw = Gateway::start(&text).await;
    let control = gw.running.as_ref().unwrap().control.clone();
    for _ in 0..3 {
        let reply = get(gw.addr, "/", &[("x-canary-version", "v2")]).await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    }
    assert!(!control.has_healthy_endpoints("v2"));
    // The three forced 502s are no evidence for the analysis (the override
    // header sent them, not the split): the canary's window stays empty
    // until the split gives it requests.
    let canary_requests = || control.rollout_windows().read("v2").requests;
    let before = 0;
    let traffic = Traffic::start(gw.addr, 2, Duration::from_millis(4));

    let view = start_rollout(gw.admin, PLAN).await;
    assert_eq!(
        (
            view["phase"].as_str(),
            view["step"].as_u64(),
            view["share"].as_f64()
        ),
        (Some("holding"), Some(0), Some(0.0)),
        "{view:#}"
    );
    assert!(
        view["why"]
            .as_str()
            .is_some_and(|w| w.contains("`v2` has no healthy endpoints")),
        "{view:#}"
    );
    assert_eq!(canary_weight_and_no_step(gw.admin).await, (Some(0), true));
    // Two intervals go by with traffic: the rollout holds, every request
    // goes to stable.
    let started_at = view["started_at_ms"].as_u64().unwrap();
    let waited = eventually(Duration::from_secs(6), async || {
        started_at + 2_500 < canary_gateway::store::unix_ms()
    })
    .await;
    assert!(waited);
    let counts = split_counts(gw.addr, 30, &[]).await;
    assert_eq!(counts.get("v1"), Some(&30), "{counts:?}");
    let view = rollout(gw.admin).await;
    assert_eq!(view["phase"], "holding", "{view:#}");
    assert_eq!(canary_weight_and_no_step(gw.admin).await, (Some(0), true));
    assert_eq!(
        canary_requests(),
        before,
        "a request was split to the canary"
    );
    let metrics = get(gw.admin, "/metrics", &[]).await.text();
    assert!(
        metrics.contains("canary_rollout_holds_total{reason=\"no_healthy_endpoints\"}"),
        "{metrics}"
    );

    // Discovery sees the canary's new task: step 0 is taken, and the
    // rollout walks on.
    control.endpoints_discovered("v2", vec![v2.addr]);
    let view = wait_rollout(gw.admin, |v| {
        v["history"].as_array().is_some_and(|h| !h.is_empty())
    })
    .await;
    assert_eq!(
        (view["step"].as_u64(), view["share"].as_f64()),
        (Some(0), Some(10.0)),
        "{view:#}"
    );
    assert_eq!(weights(gw.admin).await["weights"]["v2"], 10);
    wait_rollout(gw.admin, |v| v["step"] == 1).await;
    assert!(canary_requests() > before);
    drop(traffic);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_and_manual_changes_meanwhile() {
    let s = Setup::start((0, 0), (0, 0), (2, 4)).await;
    let gw = &s.gw;
    start_rollout(gw.admin, PLAN).await;
    // A running rollout refuses manual weights, naming itself.
    let (status, body) = call(gw.admin, "PUT", "/weights", r#"{"weights": {"v2": 50}}"#).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("rollout of `v2`"),
        "{body}"
    );
    let (status, again) = call(gw.admin, "POST", "/rollout", PLAN).await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");

    let (status, view) = call(gw.admin, "POST", "/rollout/pause", "").await;
    assert_eq!(
        (status, view["phase"].as_str()),
        (StatusCode::OK, Some("paused")),
        "{view}"
    );
    let paused_at = rollout(gw.admin).await["step_started_at_ms"]
        .as_u64()
        .unwrap();
    // Paused: three intervals go by with traffic flowing, and the step stays.
    let paused_ms = weights(gw.admin).await["updated_at_ms"].as_u64().unwrap();
    let waited = eventually(Duration::from_secs(6), async || {
        paused_ms + 3_000 < canary_gateway::store::unix_ms()
    })
    .await;
    assert!(waited);
    let view = rollout(gw.admin).await;
    assert_eq!(
        (view["phase"].as_str(), view["step"].as_u64()),
        (Some("paused"), Some(0)),
        "{view:#}"
    );
    assert_eq!(view["step_started_at_ms"].as_u64(), Some(paused_at));
    // Paused: a manual change is allowed; resume puts the step's weights back.
    let (status, body) = call(
        gw.admin,
        "PUT",
        "/weights",
        r#"{"weights": {"v1": 100, "v2": 0}}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, view) = call(gw.admin, "POST", "/rollout/resume", "").await;
    assert_eq!(
        (status, view["phase"].as_str()),
        (StatusCode::OK, Some("progressing")),
        "{view}"
    );
    assert_eq!(weights(gw.admin).await["weights"]["v2"], 10);
    wait_rollout(gw.admin, |v| v["step"] == 1).await;
    // Promote skips to the end.
    let (status, view) = call(gw.admin, "POST", "/rollout/promote", "").await;
    assert_eq!(
        (status, view["phase"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "{view}"
    );
    assert_eq!(weights(gw.admin).await["stable"], "v2");
}

/// An upstream answering its name with the status in `status` (200 until
/// a test switches it), so that a canary can go bad mid-rollout.
struct Switchable {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    _task: ServerTask,
}

impl Switchable {
    async fn start(name: &'static str) -> Switchable {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(200));
        let answer = status.clone();
        let task = serve_http(listener, move |req| {
            let code = answer.load(Ordering::SeqCst);
            async move {
                let _ = req.into_body().collect().await;
                let mut resp = Response::new(Full::new(Bytes::from(name)));
                *resp.status_mut() = StatusCode::from_u16(code).unwrap();
                resp
            }
        });
        Switchable {
            addr,
            status,
            _task: task,
        }
    }
}

/// A gateway in front of a healthy stable `v1` and a switchable canary
/// `v2`, traffic flowing, a rollout of [`PLAN`] (with a webhook on `hook`)
/// started and paused at its first step: the paused view.
async fn paused_rollout(hook: &Hook) -> (Gateway, Switchable, Behaved, Traffic, Value) {
    let v1 = Behaved::start("v1", 0, 0).await;
    let v2 = Switchable::start("v2").await;
    let gw = Gateway::start(&text(v1.addr, v2.addr)).await;
    let traffic = Traffic::start(gw.addr, 2, Duration::from_millis(4));
    let url = format!("http://{}/events", hook.addr);
    start_rollout(gw.admin, &plan_with("webhook", &url)).await;
    let (status, view) = call(gw.admin, "POST", "/rollout/pause", "").await;
    assert_eq!(
        (status, view["phase"].as_str()),
        (StatusCode::OK, Some("paused")),
        "{view:#}"
    );
    (gw, v2, v1, traffic, view)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_fails_while_paused_is_aborted() {
    let hook = Hook::start(200, 0).await;
    let (gw, canary, _stable, _traffic, paused) = paused_rollout(&hook).await;
    let step = paused["step"].as_u64();
    let paused_ms = weights(gw.admin).await["updated_at_ms"].as_u64().unwrap();
    // The canary breaks while the operator investigates.
    canary.status.store(503, Ordering::SeqCst);
    let view = wait_rollout(gw.admin, |v| v["phase"] != "paused").await;
    assert_eq!(view["phase"], "aborted", "{view:#}");
    assert!(
        aborted_on_errors(view["abort_reason"].as_str().unwrap()),
        "{view:#}"
    );
    // No step was taken meanwhile; the analysis that aborted read the
    // window since the pause.
    assert_eq!(view["step"].as_u64(), step, "{view:#}");
    let a = &view["last_analysis"];
    assert_eq!(a["verdict"], "abort", "{view:#}");
    assert!(
        a["since_ms"].as_u64().unwrap() + 50 >= paused_ms,
        "{view:#}"
    );
    assert!(a["canary"]["errors"].as_u64().unwrap() > 0, "{view:#}");
    let w = weights(gw.admin).await;
    assert_eq!(
        (w["weights"]["v1"].as_u64(), w["weights"]["v2"].as_u64()),
        (Some(100), Some(0))
    );
    // Counted and sent as an abort while progressing is.
    let reason = a["reason"].as_str().unwrap().to_string();
    abort_counted_and_sent(gw.admin, &hook, &reason).await;
    // Each event is sent from a task of its own: in any order.
    let mut events = hook.events();
    events.sort();
    assert_eq!(events, ["aborted", "paused", "started"], "{events:?}");
    let aborted = hook
        .received()
        .into_iter()
        .find(|e| e["event"] == "aborted")
        .unwrap();
    assert_eq!(aborted["analysis"]["verdict"], "abort", "{aborted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_paused_canary_is_judged_but_stays_paused_at_its_step() {
    let hook = Hook::start(200, 0).await;
    let (gw, _canary, _stable, _traffic, paused) = paused_rollout(&hook).await;
    let step = paused["step"].as_u64();
    let paused_ms = weights(gw.admin).await["updated_at_ms"].as_u64().unwrap();
    // Two passing analyses of the paused rollout (1 s intervals).
    let view = wait_rollout(gw.admin, |v| {
        v["phase"] != "paused"
            || (v["last_analysis"]["verdict"] == "pass"
                && v["last_analysis"]["since_ms"].as_u64() > Some(paused_ms + 500))
    })
    .await;
    assert_eq!(
        (view["phase"].as_str(), view["step"].as_u64()),
        (Some("paused"), step),
        "{view:#}"
    );
    assert!(
        view["why"]
            .as_str()
            .is_some_and(|w| w.contains("abort checks still run")),
        "{view:#}"
    );
    assert_eq!(weights(gw.admin).await["weights"]["v2"], 10);
    // No step, no hold: a paused rollout's passing window does nothing.
    let mut events = hook.events();
    events.sort();
    assert_eq!(events, ["paused", "started"], "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_and_rollback_send_all_traffic_to_stable_at_once() {
    let s = Setup::start((0, 0), (0, 0), (0, 0)).await;
    let gw = &s.gw;
    start_rollout(gw.admin, PLAN).await;
    let (status, view) = call(gw.admin, "POST", "/rollout/abort", "").await;
    assert_eq!(
        (status, view["phase"].as_str()),
        (StatusCode::OK, Some("aborted")),
        "{view}"
    );
    assert!(view["abort_reason"].as_str().unwrap().contains("operator"));
    assert_eq!(weights(gw.admin).await["weights"]["v2"], 0);
    // Over: another abort is a conflict, a new rollout may start.
    let (status, _) = call(gw.admin, "POST", "/rollout/abort", "").await;
    assert_eq!(status, StatusCode::CONFLICT);
    start_rollout(gw.admin, PLAN).await;
    let (status, _) = call(gw.admin, "POST", "/rollback", "").await;
    assert_eq!(status, StatusCode::OK);
    let view = rollout(gw.admin).await;
    assert_eq!(view["phase"], "aborted", "{view:#}");
    assert!(
        view["abort_reason"]
            .as_str()
            .unwrap()
            .contains("POST /rollback"),
        "{view:#}"
    );
    let counts = split_counts(gw.addr, 20, &[]).await;
    assert_eq!(counts.get("v1"), Some(&20), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_plans_are_refused_naming_the_problem() {
    let s = Setup::start((0, 0), (0, 0), (0, 0)).await;
    let gw = &s.gw;
    for (body, status, names) in [
        (r#"{"canary": "v9"}"#, 400, "unknown version `v9`"),
        (r#"{"canary": "v1"}"#, 400, "stable version"),
        (r#"{"canary": "v2", "steps": [10, 5]}"#, 400, "steps[1]"),
        (
            r#"{"canary": "v2", "steps": [0, 5]}"#,
            400,
            "outside (0, 100]",
        ),
        (r#"{"canary": "v2", "steps": [50, 150]}"#, 400, "steps[1]"),
        (r#"{"canary": "v2", "interval_s": 0.5}"#, 400, "interval_s"),
        (
            r#"{"canary": "v2", "interval_s": 9223372036854775807}"#,
            400,
            "interval_s",
        ),
        (
            r#"{"canary": "v2", "interval_s": 1e300}"#,
            400,
            "interval_s",
        ),
        (
            r#"{"canary": "v2", "on_success": "maybe"}"#,
            400,
            "on_success",
        ),
        ("not json", 400, "JSON"),
    ] {
        let (got, reply) = call(gw.admin, "POST", "/rollout", body).await;
        assert_eq!(got.as_u16(), status, "{body}: {reply}");
        assert!(
            reply["error"].as_str().unwrap().contains(names),
            "{body}: {reply}"
        );
    }
    let (status, _) = call(gw.admin, "GET", "/rollout", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(weights(gw.admin).await["generation"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_rollout_resumes_where_it_was() {
    let (v1, v2) = (
        Behaved::start("v1", 0, 0).await,
        Behaved::start("v2", 0, 0).await,
    );
    let dir = tempfile::tempdir().unwrap();
    let config_text = text(v1.addr, v2.addr);
    let first = start_in(dir.path(), &config_text).await;
    let traffic = Traffic::start(first.proxy_addr, 2, Duration::from_millis(4));
    let plan = PLAN.replace("[10, 50, 100]", "[10, 20, 50, 100]");
    start_rollout(first.admin_addr, &plan).await;
    let before = wait_rollout(first.admin_addr, |v| v["step"] == 1).await;
    drop(traffic);
    first.shutdown().await;

    let second = start_in(dir.path(), &config_text).await;
    let view = rollout(second.admin_addr).await;
    assert_eq!(view["started_at_ms"], before["started_at_ms"], "{view:#}");
    assert!(view["step"].as_u64().unwrap() >= 1, "{view:#}");
    assert_eq!(view["phase"], "progressing", "{view:#}");
    assert_eq!(
        weights(second.admin_addr).await["weights"]["v2"],
        view["share"].as_f64().unwrap() as u64
    );
    let _traffic = Traffic::start(second.proxy_addr, 2, Duration::from_millis(4));
    wait_rollout(second.admin_addr, |v| v["phase"] == "succeeded").await;
    second.shutdown().await;
}

/// A restart whose config no longer has the running rollout's canary (v2
/// replaced by v3 while stopped), on the file store: no other task can
/// judge the rollout, so it ends aborted as on a reload that removes the
/// canary (before, it held for good, and `PUT /weights` answered 409 until
/// an abort by hand).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_without_the_rollouts_canary_aborts_it_on_the_file_store() {
    let (v1, v2, v3) = three_upstreams().await;
    let dir = tempfile::tempdir().unwrap();
    let first = start_in(dir.path(), &text(v1.addr, v2.addr)).await;
    let plan = PLAN.replace(r#""interval_s": 1"#, r#""interval_s": 60"#);
    start_rollout(first.admin_addr, &plan).await;
    wait_rollout(first.admin_addr, |v| v["share"] == 10.0).await;
    first.shutdown().await;

    let replaced = config("", &[("v1", 100, v1.addr), ("v3", 0, v3.addr)]);
    let second = start_in(dir.path(), &replaced).await;
    let view = wait_rollout(second.admin_addr, |v| v["phase"] != "progressing").await;
    assert_eq!(view["phase"], "aborted", "{view:#}");
    assert!(
        view["abort_reason"]
            .as_str()
            .is_some_and(|r| r.contains("`v2` is no longer in the config")),
        "{view:#}"
    );
    let w = weights(second.admin_addr).await;
    assert_eq!(w["weights"], serde_json::json!({"v1": 90, "v3": 0}), "{w}");
    let (status, body) = call(
        second.admin_addr,
        "PUT",
        "/weights",
        r#"{"weights":{"v3":10}}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    second.shutdown().await;
}

/// Healthy upstreams v1, v2 and v3.
async fn three_upstreams() -> (Behaved, Behaved, Behaved) {
    (
        Behaved::start("v1", 0, 0).await,
        Behaved::start("v2", 0, 0).await,
        Behaved::start("v3", 0, 0).await,
    )
}

/// A gateway started in `dir` on `text` serves `expected` weights; stopped.
async fn starts_with_weights(dir: &std::path::Path, text: &str, expected: Value) {
    let gw = start_in(dir, text).await;
    let w = weights(gw.admin_addr).await;
    assert_eq!(w["weights"], expected, "{w}");
    gw.shutdown().await;
}

/// A gateway in `dir` on `original` starts a rollout (60 s steps); `edited`
/// written to its file and reloaded is refused while the rollout
/// progresses; the rollout is aborted and the gateway stopped. The plan.
async fn refused_then_aborted(dir: &std::path::Path, original: &str, edited: &str) -> String {
    let first = start_in(dir, original).await;
    let plan = PLAN.replace(r#""interval_s": 1"#, r#""interval_s": 60"#);
    start_rollout(first.admin_addr, &plan).await;
    std::fs::write(dir.join("gateway.toml"), edited).unwrap();
    let (status, body) = call(first.admin_addr, "POST", "/reload", "").await;
    assert!(!status.is_success(), "{body}");
    assert!(body.to_string().contains("while a rollout"), "{body}");
    let (status, view) = call(first.admin_addr, "POST", "/rollout/abort", "").await;
    assert_eq!(status, StatusCode::OK, "{view}");
    first.shutdown().await;
    plan
}

/// A config file's weight edit refused while a rollout ran is not applied
/// by the next start (before, the start took it for an edit made while the
/// gateway was stopped, and the aborted canary got its 30% again): the
/// abort's rollback stays, `/status` says what the file holds, and an
/// explicit reload then applies the edit, for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_edit_refused_during_a_rollout_is_not_applied_by_a_restart() {
    let (v1, v2) = (
        Behaved::start("v1", 0, 0).await,
        Behaved::start("v2", 0, 0).await,
    );
    let dir = tempfile::tempdir().unwrap();
    let edited = config(
        "override_header = \"x-canary-version\"",
        &[("v1", 70, v1.addr), ("v2", 30, v2.addr)],
    );
    refused_then_aborted(dir.path(), &text(v1.addr, v2.addr), &edited).await;

    let refused = |status: &Value| {
        status["warnings"]
            .to_string()
            .contains("refused by a reload while a rollout ran")
    };
    let second = start_in(dir.path(), &edited).await;
    let w = weights(second.admin_addr).await;
    assert_eq!(w["weights"], serde_json::json!({"v1": 100, "v2": 0}), "{w}");
    assert_eq!(rollout(second.admin_addr).await["phase"], "aborted");
    let status = call(second.admin_addr, "GET", "/status", "").await.1;
    assert!(refused(&status), "{status:#}");
    let (status, body) = call(second.admin_addr, "POST", "/reload", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let w = weights(second.admin_addr).await;
    assert_eq!(w["weights"], serde_json::json!({"v1": 70, "v2": 30}), "{w}");
    let status = call(second.admin_addr, "GET", "/status", "").await.1;
    assert!(!refused(&status), "{status:#}");
    second.shutdown().await;

    starts_with_weights(dir.path(), &edited, serde_json::json!({"v1": 70, "v2": 30})).await;
}

/// The refused text adds a version: after a restart that version serves
/// nothing (the text is not applied) until a reload applies it. And a
/// refusal ends when the file goes back to the text in force: no warning,
/// and the state file no longer notes it, so that a later start that finds
/// the file edited to it on purpose (while stopped) applies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_edit_adding_a_version_serves_it_nothing_and_a_reverted_one_ends_the_refusal() {
    let (v1, v2, v3) = three_upstreams().await;
    let dir = tempfile::tempdir().unwrap();
    let adds_v3 = config(
        "override_header = \"x-canary-version\"",
        &[("v1", 60, v1.addr), ("v2", 0, v2.addr), ("v3", 40, v3.addr)],
    );
    let plan = refused_then_aborted(dir.path(), &text(v1.addr, v2.addr), &adds_v3).await;
    let config_path = dir.path().join("gateway.toml");

    let second = start_in(dir.path(), &adds_v3).await;
    let w = weights(second.admin_addr).await;
    assert_eq!(
        w["weights"],
        serde_json::json!({"v1": 100, "v2": 0, "v3": 0}),
        "{w}"
    );
    let (status, body) = call(second.admin_addr, "POST", "/reload", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let w = weights(second.admin_addr).await;
    assert_eq!(
        w["weights"],
        serde_json::json!({"v1": 60, "v2": 0, "v3": 40}),
        "{w}"
    );
    start_rollout(second.admin_addr, &plan.replace("v2", "v3")).await;
    // Refused again, then the file put back: the reload applies the text
    // in force ("weights unchanged") and the refusal is over.
    let edited = adds_v3.replace("weight = 60", "weight = 50");
    std::fs::write(&config_path, &edited).unwrap();
    let (status, _) = call(second.admin_addr, "POST", "/reload", "").await;
    assert!(!status.is_success());
    std::fs::write(&config_path, &adds_v3).unwrap();
    let (status, body) = call(second.admin_addr, "POST", "/reload", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let status = call(second.admin_addr, "GET", "/status", "").await.1;
    assert!(
        !status["warnings"].to_string().contains("were refused"),
        "{status:#}"
    );
    let state_file = std::fs::read_to_string(dir.path().join("gateway.state.json")).unwrap();
    assert!(!state_file.contains("refused_config"), "{state_file}");
    second.shutdown().await;
}

/// A refused text that the file no longer has at the next start (put back
/// while the gateway was stopped): the start writes the state file without
/// the note, so that the text written on purpose later, while stopped
/// again, is an edit like any other (it wins at that start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_text_gone_from_the_file_at_a_start_is_forgotten() {
    let (v1, v2) = (
        Behaved::start("v1", 0, 0).await,
        Behaved::start("v2", 0, 0).await,
    );
    let dir = tempfile::tempdir().unwrap();
    let original = text(v1.addr, v2.addr);
    let edited = config(
        "override_header = \"x-canary-version\"",
        &[("v1", 70, v1.addr), ("v2", 30, v2.addr)],
    );
    refused_then_aborted(dir.path(), &original, &edited).await;
    let state_path = dir.path().join("gateway.state.json");
    assert!(
        std::fs::read_to_string(&state_path)
            .unwrap()
            .contains("refused_config")
    );

    let second = start_in(dir.path(), &original).await;
    second.shutdown().await;
    let state_file = std::fs::read_to_string(&state_path).unwrap();
    assert!(!state_file.contains("refused_config"), "{state_file}");
    starts_with_weights(dir.path(), &edited, serde_json::json!({"v1": 70, "v2": 30})).await;
}

/// While a rollout progresses, a reload that adds a version with weight
/// is refused like a weights edit (the new version would take its file
/// weight's share at once, beside a rollout that judges only its canary);
/// added at weight 0 it applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_added_with_weight_during_a_rollout_is_refused() {
    let (v1, v2, v3) = three_upstreams().await;
    let dir = tempfile::tempdir().unwrap();
    let first = start_in(dir.path(), &text(v1.addr, v2.addr)).await;
    let plan = PLAN.replace(r#""interval_s": 1"#, r#""interval_s": 60"#);
    start_rollout(first.admin_addr, &plan).await;
    let with_v3 = |weight: u32| {
        config(
            "override_header = \"x-canary-version\"",
            &[
                ("v1", 100, v1.addr),
                ("v2", 0, v2.addr),
                ("v3", weight, v3.addr),
            ],
        )
    };
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, with_v3(40)).unwrap();
    let (status, body) = call(first.admin_addr, "POST", "/reload", "").await;
    assert!(!status.is_success(), "{body}");
    assert!(
        body.to_string().contains("a version with weight was added"),
        "{body}"
    );
    let w = weights(first.admin_addr).await;
    assert!(w["weights"].get("v3").is_none(), "{w}");
    // Nor does a restart apply it: v3 serves nothing.
    first.shutdown().await;
    let second = start_in(dir.path(), &with_v3(40)).await;
    let w = weights(second.admin_addr).await;
    assert_eq!(w["weights"]["v3"], 0, "{w}");
    assert_eq!(rollout(second.admin_addr).await["phase"], "progressing");
    std::fs::write(&path, with_v3(0)).unwrap();
    let (status, body) = call(second.admin_addr, "POST", "/reload", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let w = weights(second.admin_addr).await;
    assert_eq!(w["weights"]["v3"], 0, "{w}");
    assert_eq!(rollout(second.admin_addr).await["phase"], "progressing");
    second.shutdown().await;
}

/// A version added with weight while the gateway was stopped, a rollout
/// progressing: an edit of the split made while stopped, so the file wins
/// and the rollout ends aborted, as for an edit of the weights (it gave v3
/// its share beside the rollout, with no word).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_added_with_weight_while_stopped_wins_over_a_progressing_rollout() {
    let (v1, v2, v3) = three_upstreams().await;
    let dir = tempfile::tempdir().unwrap();
    let first = start_in(dir.path(), &text(v1.addr, v2.addr)).await;
    let plan = PLAN.replace(r#""interval_s": 1"#, r#""interval_s": 60"#);
    start_rollout(first.admin_addr, &plan).await;
    first.shutdown().await;
    let with_v3 = config(
        "override_header = \"x-canary-version\"",
        &[
            ("v1", 100, v1.addr),
            ("v2", 0, v2.addr),
            ("v3", 40, v3.addr),
        ],
    );
    let second = start_in(dir.path(), &with_v3).await;
    let view = rollout(second.admin_addr).await;
    assert_eq!(view["phase"], "aborted", "{view:#}");
    let w = weights(second.admin_addr).await;
    assert_eq!(
        w["weights"],
        serde_json::json!({"v1": 100, "v2": 0, "v3": 40}),
        "{w}"
    );
    second.shutdown().await;
}

/// Requests that are the client's fault, split as any (not forced: a
/// forced request is no evidence anyway), so that the canary gets its
/// share: a chunked body with a bad chunk size, and a body shorter than its
/// Content-Length.
async fn malformed_to_canary(addr: SocketAddr) {
    let heads = [
        "POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nonly ten b",
    ];
    for head in heads {
        if let Ok(mut stream) = TcpStream::connect(addr).await {
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.shutdown().await;
            let _ = read_to_close(&mut stream, Duration::from_secs(2)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_malformed_bodies_to_the_canary_does_not_abort_it() {
    let s = Setup::start((0, 0), (0, 0), (2, 4)).await;
    let gw = &s.gw;
    start_rollout(gw.admin, PLAN).await;
    let bad = {
        let addr = gw.addr;
        tokio::spawn(async move {
            loop {
                malformed_to_canary(addr).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let view = wait_rollout(gw.admin, |v| {
        v["phase"] == "succeeded" || v["phase"] == "aborted"
    })
    .await;
    bad.abort();
    assert_eq!(view["phase"], "succeeded", "{view:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_gateways_on_one_store_an_abort_decided_on_one_reaches_the_other() {
    use crate::cloudmap_fixture::CloudMapFixture;
    use crate::moto::MotoServer;

    let moto = tokio::task::spawn_blocking(MotoServer::start)
        .await
        .unwrap();
    let sdk = moto.sdk_config().await;
    let client = aws_sdk_servicediscovery::Client::new(&sdk);
    let state = CloudMapFixture::create(client, "canary.local", "canary-state").await;
    let (v1, v2) = (
        Behaved::start("v1", 0, 0).await,
        Behaved::start("v2", 5, 0).await,
    );
    let fleet_text = format!(
        "{}\n[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n\n[store]\nkind = \"cloudmap\"\nservice_id = \"{}\"\npoll_interval = \"300ms\"\n",
        text(v1.addr, v2.addr),
        moto.endpoint_url(),
        state.service_id
    );
    let deps = || Dependencies {
        store: Some(Arc::new(
            canary_gateway::aws::cloudmap_store::CloudMapStore::new(&sdk, state.service_id.clone()),
        )),
        ..Dependencies::default()
    };
    let (a, b) = (
        Gateway::start_with(&fleet_text, deps()).await,
        Gateway::start_with(&fleet_text, deps()).await,
    );
    // A plan whose stored state could outgrow Cloud Map's 1,024-character
    // attribute is refused up front, naming the steps, and changes nothing.
    let steps: Vec<String> = (1..=60)
        .map(|i| format!("{:.1}", f64::from(i) * 1.5))
        .collect();
    let long = format!(r#"{{"canary": "v2", "steps": [{}]}}"#, steps.join(", "));
    let (status, reply) = call(a.admin, "POST", "/rollout", &long).await;
    assert_eq!(status.as_u16(), 400, "{reply:#}");
    let error = reply["error"].as_str().unwrap();
    assert!(error.contains("steps") && error.contains("1024"), "{error}");
    assert_eq!(weights(a.admin).await["weights"]["v2"], 0);
    start_rollout(a.admin, PLAN).await;
    // The start reaches the other gateway through the store.
    let seen = wait_rollout(b.admin, |v| {
        v["phase"] == "progressing" || v["phase"] == "holding"
    })
    .await;
    assert_eq!(seen["canary"], "v2", "{seen:#}");
    assert_eq!(weights(b.admin).await["weights"]["v2"], 10);
    // Only A sees traffic, and A finds the canary bad.
    let traffic = Traffic::start(a.addr, 2, Duration::from_millis(4));
    let on_b = wait_rollout(b.admin, |v| v["phase"] == "aborted").await;
    drop(traffic);
    assert!(
        aborted_on_errors(on_b["abort_reason"].as_str().unwrap()),
        "{on_b:#}"
    );
    // B never judged the canary bad itself: it had no canary traffic.
    assert!(
        on_b["last_analysis"].is_null() || on_b["last_analysis"]["verdict"] != "abort",
        "{on_b:#}"
    );
    let w = weights(b.admin).await;
    assert_eq!(
        (w["weights"]["v1"].as_u64(), w["weights"]["v2"].as_u64()),
        (Some(100), Some(0)),
        "{w}"
    );
    let counts = split_counts(b.addr, 20, &[]).await;
    assert_eq!(counts.get("v1"), Some(&20), "{counts:?}");
    a.shutdown().await;
    b.shutdown().await;
}

/// A connection served by hyper's HTTP/1 server from its second request on:
/// the first (to stable) is one the own server leaves to hyper's.
async fn hyper_served(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let first = "GET /hand-off HTTP/1.1\r\nhost: x\r\nx-canary-version: v1\r\nte: trailers\r\n\r\n";
    stream.write_all(first.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let handed = crate::recorder::read_response(&mut stream, &mut buf, false).await;
    assert_eq!(handed.map(|r| r.status), Some(200));
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_client_broke_are_left_out_of_the_canary_analysis() {
    use crate::recorder::read_response;
    // Uploads that stall (408), a client gone mid-body and a broken chunk
    // (400), on the own server, hyper's HTTP/1 and HTTP/2: none is a canary
    // request. The canary's one step is 100%: every request goes to it by
    // the split (a request the override header forced there would be no
    // evidence at all). Clients that stop reading a download (the gateway ends each
    // after body_stall): the canary answered, so each is a request, timed to
    // the canary's response head, not to the end of the client's stall.
    const GOOD: u64 = 20;
    let (v1, v2) = (Upstream::start("v1").await, Upstream::start("v2").await);
    // Long enough that a stall counted as latency stands out from the
    // canary's answers on a loaded machine.
    let stall = "\n[timeouts]\nbody_stall = \"1s\"\n";
    let gw = Gateway::start(&(text(v1.addr, v2.addr) + stall)).await;
    let plan = PLAN
        .replace("\"min_requests\": 20", "\"min_requests\": 100000")
        .replace("[10, 50, 100]", "[100]");
    start_rollout(gw.admin, &plan).await;
    // The step's window is open (its counters read) once it was judged: the
    // requests below are all in it.
    wait_rollout(gw.admin, |v| v["last_analysis"]["verdict"] == "hold").await;
    let mut client = Client::connect(gw.addr).await;
    for _ in 0..GOOD {
        let reply = client.get("/", &[]).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
    }

    let stalled = b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc";
    for on_hyper in [false, true] {
        let mut stream = match on_hyper {
            true => hyper_served(gw.addr).await,
            false => TcpStream::connect(gw.addr).await.unwrap(),
        };
        stream.write_all(stalled).await.unwrap();
        let mut buf = Vec::new();
        let answer = read_response(&mut stream, &mut buf, false).await;
        assert_eq!(answer.map(|r| r.status), Some(408), "hyper: {on_hyper}");
    }
    let mut h2 = h2c_client_for::<ChannelBody>(gw.addr).await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let upload = http::Request::post(format!("http://{}/upload", gw.addr))
        .body(ChannelBody(rx))
        .unwrap();
    let piece = http_body::Frame::data(Bytes::from_static(b"abc"));
    tx.send(Ok(piece)).await.unwrap();
    let answer = h2.send_request(upload).await.unwrap();
    assert_eq!(answer.status(), StatusCode::REQUEST_TIMEOUT);
    drop(tx);
    // The client gone mid-body; a broken chunk size (hyper's server).
    let broken = [
        "POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nonly ten b",
        "POST /upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    ];
    for request in broken {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        stream.shutdown().await.unwrap();
        let answer = read_to_close(&mut stream, Duration::from_secs(5)).await;
        let status = answer.as_deref().and_then(raw_status);
        assert!(matches!(status, None | Some(400)), "{request}: {status:?}");
    }

    // Downloads the client stops reading, on the three servers: each is
    // ended after body_stall; the streams stay open, unread, until then.
    let download = "GET /download?bytes=268435456 HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut unread = Vec::new();
    for on_hyper in [false, true] {
        let mut stream = match on_hyper {
            true => hyper_served(gw.addr).await,
            false => TcpStream::connect(gw.addr).await.unwrap(),
        };
        stream.write_all(download.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let head = read_head(&mut stream, &mut buf).await;
        assert!(head.is_some_and(|h| h.starts_with("HTTP/1.1 200")));
        unread.push(stream);
    }
    let h2 = h2c_client(gw.addr).await;
    let get = http::Request::get(format!("http://{}/download?bytes=268435456", gw.addr))
        .body(http_body_util::Empty::new())
        .unwrap();
    let unread_h2 = h2.clone().send_request(get).await.unwrap();
    assert_eq!(unread_h2.status(), StatusCode::OK);

    // Every stalled download ended (counted in the window), then one more
    // analysis, made after all of it.
    let downloads = 3;
    let mut seen = Value::Null;
    let counted = eventually(WAIT, async || {
        seen = rollout(gw.admin).await;
        seen["last_analysis"]["canary"]["requests"].as_u64() >= Some(GOOD + downloads)
    })
    .await;
    if !counted {
        // Which stalled download did the gateway not end?
        let mut open = Vec::new();
        for (i, stream) in unread.iter_mut().enumerate() {
            if read_to_close(stream, Duration::from_secs(5))
                .await
                .is_none()
            {
                open.push(["own server", "hyper's HTTP/1"][i]);
            }
        }
        let h2_read = tokio::time::timeout(Duration::from_secs(5), unread_h2.into_body().collect());
        if h2_read.await.is_err() {
            open.push("HTTP/2");
        }
        panic!(
            "the window never held {} canary requests (stalled downloads the gateway did not end: {open:?})\n{seen:#}",
            GOOD + downloads
        );
    }
    let judged_at = seen["last_analysis"]["at_ms"].as_u64();
    let view = wait_rollout(gw.admin, |v| {
        v["last_analysis"]["at_ms"].as_u64() > judged_at
    })
    .await;
    let a = &view["last_analysis"]["canary"];
    assert_eq!(a["requests"].as_u64(), Some(GOOD + downloads), "{view:#}");
    assert_eq!(a["errors"].as_u64(), Some(0), "{view:#}");
    // The stalls took 1 s each; the canary's answers took a few ms.
    let p99 = a["p99_ms"].as_f64().unwrap();
    assert!(
        p99 < 800.0,
        "a client's stall counted as canary latency: {view:#}"
    );
    assert_eq!(view["phase"], "holding", "{view:#}");
    drop((unread, h2));
    gw.shutdown().await;
}

/// QA traffic the override header forces to the canary, every request of
/// it failing (a path of the canary that answers 500), on the own server
/// and HTTP/2: served, but no evidence for the analysis, which judges the
/// canary on the traffic the split sent it. A healthy canary is promoted
/// however many forced requests fail (it was aborted on them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_requests_to_a_failing_canary_path_do_not_abort_a_healthy_rollout() {
    let (v1, v2) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let gw = Gateway::start(&text(v1.addr, v2.addr)).await;
    let _traffic = Traffic::start(gw.addr, 2, Duration::from_millis(4));
    let failed = Arc::new(AtomicU64::new(0));
    let qa = {
        let (addr, failed) = (gw.addr, failed.clone());
        tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            let h2 = h2c_client(addr).await;
            let forced = [("x-canary-version", "v2")];
            loop {
                let own = client.get("/status/500", &forced).await;
                let req = http::Request::get(format!("http://{addr}/status/500"))
                    .header("x-canary-version", "v2")
                    .body(http_body_util::Empty::new())
                    .unwrap();
                let over_h2 = h2.clone().send_request(req).await;
                for status in [own.map(|r| r.status), over_h2.map(|r| r.status())] {
                    if status.is_ok_and(|s| s == StatusCode::INTERNAL_SERVER_ERROR) {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    start_rollout(gw.admin, PLAN).await;
    let view = wait_rollout(gw.admin, |v| {
        v["phase"] == "succeeded" || v["phase"] == "aborted"
    })
    .await;
    qa.abort();
    assert_eq!(view["phase"], "succeeded", "{view:#}");
    assert_eq!(view["last_analysis"]["canary"]["errors"], 0, "{view:#}");
    // The forced requests did reach the canary and fail, all along.
    assert!(failed.load(Ordering::Relaxed) >= 20, "{view:#}");
    gw.shutdown().await;
}

/// Forced requests on each server (the own HTTP/1.1 server, hyper's HTTP/1
/// and HTTP/2), answered or abandoned: counted in the version's metrics
/// (`canary_requests_total`, the duration histogram) but not in its
/// analysis window (neither a request, an error nor a latency sample).
/// Requests a sticky key sent are in it: it follows the weights.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_requests_are_counted_as_served_but_left_out_of_the_analysis_window() {
    use crate::recorder::read_response;
    // Names of their own: the metrics are the process's.
    let (a, b) = (
        Upstream::start("forced-a").await,
        Upstream::start("forced-b").await,
    );
    let split = "override_header = \"x-canary-version\"\nsticky_header = \"x-user\"";
    let versions = [("forced-a", 100, a.addr), ("forced-b", 0, b.addr)];
    let gw = Gateway::start(&config(split, &versions)).await;
    let control = gw.running.as_ref().unwrap().control.clone();
    let to_b = [("x-canary-version", "forced-b")];

    // Answered with the canary's 500: the own server, hyper's HTTP/1 (a
    // request the own server leaves to it), HTTP/2.
    assert_eq!(
        get(gw.addr, "/status/500", &to_b).await.status.as_u16(),
        500
    );
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let head =
        "GET /status/500 HTTP/1.1\r\nhost: x\r\nx-canary-version: forced-b\r\nte: trailers\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let answer = read_response(&mut stream, &mut buf, false).await;
    assert_eq!(answer.map(|r| r.status), Some(500));
    let req = http::Request::get(format!("http://{}/status/500", gw.addr))
        .header("x-canary-version", "forced-b")
        .body(http_body_util::Empty::new())
        .unwrap();
    let answer = h2c_client(gw.addr).await.send_request(req).await.unwrap();
    assert_eq!(answer.status().as_u16(), 500);
    // Abandoned: the client goes while the canary thinks.
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let head = "GET /sleep?ms=5000 HTTP/1.1\r\nhost: x\r\nx-canary-version: forced-b\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    assert!(
        eventually(WAIT, async || b.hits() == 4).await,
        "{}",
        b.hits()
    );
    drop(stream);
    // Split by a sticky key (all to forced-a, at weight 100), and one
    // request forced to forced-a.
    for i in 0..5 {
        let user = format!("user-{i}");
        assert_eq!(
            get(gw.addr, "/", &[("x-user", &user)]).await.text(),
            "forced-a"
        );
    }
    let to_a = [("x-canary-version", "forced-a")];
    assert_eq!(get(gw.addr, "/", &to_a).await.text(), "forced-a");

    let of = |version| [("version", version)];
    let counted = async || {
        let text = admin(gw.admin, "GET", "/metrics", None, "").await.text();
        let requests = |v| metric_value(&text, "canary_requests_total", &of(v));
        let timed = metric_value(
            &text,
            "canary_request_duration_seconds_count",
            &of("forced-b"),
        );
        let sticky = control.rollout_windows().read("forced-a").requests;
        (requests("forced-a"), requests("forced-b"), timed, sticky)
    };
    assert!(
        eventually(WAIT, async || counted().await == (6.0, 3.0, 4.0, 5)).await,
        "{:?}",
        counted().await
    );
    let window = control.rollout_windows().read("forced-b");
    let samples: u64 = window.latency.iter().sum();
    assert_eq!(
        (window.requests, window.errors, samples),
        (0, 0, 0),
        "forced requests in the analysis window"
    );
    gw.shutdown().await;
}

/// The rollout gauges follow the rollout: a later rollout with another
/// canary sets the earlier canary's `canary_rollout_canary_share_percent`
/// to 0 (it kept its last value, 100 after its promotion, forever). The
/// versions are this test's own: the recorder is the process's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_rollout_zeroes_the_earlier_canarys_share_gauge() {
    let a = Behaved::start("gauge-a", 0, 0).await;
    let b = Behaved::start("gauge-b", 0, 0).await;
    let c = Behaved::start("gauge-c", 0, 0).await;
    let gw = Gateway::start(&config(
        "",
        &[
            ("gauge-a", 100, a.addr),
            ("gauge-b", 0, b.addr),
            ("gauge-c", 0, c.addr),
        ],
    ))
    .await;
    let share = async |version: &str| {
        let text = get(gw.admin, "/metrics", &[]).await.text();
        metric_value(
            &text,
            "canary_rollout_canary_share_percent",
            &[("version", version)],
        )
    };
    let plan =
        |canary: &str| format!(r#"{{"canary": "{canary}", "steps": [10, 100], "interval_s": 60}}"#);
    start_rollout(gw.admin, &plan("gauge-b")).await;
    let (status, view) = call(gw.admin, "POST", "/rollout/promote", "").await;
    assert_eq!(
        (status, view["phase"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "{view}"
    );
    assert!(
        eventually(WAIT, async || share("gauge-b").await == 100.0).await,
        "{}",
        get(gw.admin, "/metrics", &[]).await.text()
    );
    start_rollout(gw.admin, &plan("gauge-c")).await;
    let moved = eventually(WAIT, async || {
        share("gauge-c").await == 10.0 && share("gauge-b").await == 0.0
    })
    .await;
    assert!(moved, "{}", get(gw.admin, "/metrics", &[]).await.text());
}

/// A version a reload removes leaves no rollout gauge behind: the last
/// rollout's canary, promoted (share 100), then replaced as stable and
/// removed, reads 0 (it kept 100 before, as the rollout's view still names
/// it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_removed_by_a_reload_keeps_no_rollout_share() {
    let a = Behaved::start("removed-a", 0, 0).await;
    let b = Behaved::start("removed-b", 0, 0).await;
    let gw = Gateway::start(&config(
        "",
        &[("removed-a", 100, a.addr), ("removed-b", 0, b.addr)],
    ))
    .await;
    let share = async |version: &str| {
        let text = get(gw.admin, "/metrics", &[]).await.text();
        metric_value(
            &text,
            "canary_rollout_canary_share_percent",
            &[("version", version)],
        )
    };
    start_rollout(
        gw.admin,
        r#"{"canary": "removed-b", "steps": [10, 100], "interval_s": 60}"#,
    )
    .await;
    let (status, view) = call(gw.admin, "POST", "/rollout/promote", "").await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert!(
        eventually(WAIT, async || share("removed-b").await == 100.0).await,
        "{}",
        get(gw.admin, "/metrics", &[]).await.text()
    );
    let (status, body) = call(gw.admin, "POST", "/promote", r#"{"version": "removed-a"}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    std::fs::write(gw.config_path(), config("", &[("removed-a", 100, a.addr)])).unwrap();
    let (status, body) = call(gw.admin, "POST", "/reload", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let w = weights(gw.admin).await;
    assert!(w["weights"].get("removed-b").is_none(), "{w}");
    let zeroed = eventually(WAIT, async || share("removed-b").await == 0.0).await;
    // And it stays 0 (the rollout driver publishes again on every change).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        zeroed && share("removed-b").await == 0.0,
        "{}",
        get(gw.admin, "/metrics", &[]).await.text()
    );
}
