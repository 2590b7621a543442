//! Unit tests of the poller against a fake [`Discover`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{PollTiming, poll};
use crate::discovery::{
    CloudMapSource, Discover, DiscoveryError, EndpointSink, HealthFilter, InstanceList,
};
use crate::future::BoxFuture;
use crate::metrics::DISCOVERY_ERRORS_TOTAL;

use crate::test_recorder as recorder;

/// Which `InstancesRevision` the fake's instance list comes with.
#[derive(Debug, Clone, Copy)]
enum ListRevision {
    /// The revision DiscoverInstancesRevision answers (no race).
    Current,
    /// A fixed one, or none, whatever the revision call says.
    Fixed(Option<i64>),
}

/// What the fake returns, and how often it was called.
struct FakeState {
    revision: Result<i64, DiscoveryError>,
    instances: Result<Vec<SocketAddr>, DiscoveryError>,
    list_revision: ListRevision,
    /// A change (revision, instances) that lands just before the next
    /// DiscoverInstances call is answered.
    change_before_list: Option<(i64, Vec<SocketAddr>)>,
    revision_calls: usize,
    instance_calls: usize,
}

/// A scripted [`Discover`].
struct FakeDiscover(Mutex<FakeState>);

impl FakeDiscover {
    fn new(revision: i64, instances: Vec<SocketAddr>) -> Arc<Self> {
        Arc::new(FakeDiscover(Mutex::new(FakeState {
            revision: Ok(revision),
            instances: Ok(instances),
            list_revision: ListRevision::Current,
            change_before_list: None,
            revision_calls: 0,
            instance_calls: 0,
        })))
    }
    fn set_revision(&self, r: Result<i64, DiscoveryError>) {
        self.0.lock().unwrap().revision = r;
    }
    fn set_instances(&self, i: Result<Vec<SocketAddr>, DiscoveryError>) {
        self.0.lock().unwrap().instances = i;
    }
    fn set_list_revision(&self, r: ListRevision) {
        self.0.lock().unwrap().list_revision = r;
    }
    fn change_before_list(&self, revision: i64, instances: Vec<SocketAddr>) {
        self.0.lock().unwrap().change_before_list = Some((revision, instances));
    }
    fn revision_calls(&self) -> usize {
        self.0.lock().unwrap().revision_calls
    }
    fn instance_calls(&self) -> usize {
        self.0.lock().unwrap().instance_calls
    }
}

impl Discover for FakeDiscover {
    fn revision<'a>(&'a self, _: &'a CloudMapSource) -> BoxFuture<'a, Result<i64, DiscoveryError>> {
        let mut s = self.0.lock().unwrap();
        s.revision_calls += 1;
        let r = s.revision.clone();
        Box::pin(async move { r })
    }
    fn instances<'a>(
        &'a self,
        _: &'a CloudMapSource,
    ) -> BoxFuture<'a, Result<InstanceList, DiscoveryError>> {
        let mut s = self.0.lock().unwrap();
        s.instance_calls += 1;
        if let Some((revision, instances)) = s.change_before_list.take() {
            s.revision = Ok(revision);
            s.instances = Ok(instances);
        }
        let revision = match s.list_revision {
            ListRevision::Current => s.revision.as_ref().ok().copied(),
            ListRevision::Fixed(r) => r,
        };
        let r = s.instances.clone().map(|endpoints| InstanceList {
            endpoints,
            revision,
        });
        Box::pin(async move { r })
    }
}

/// What the sink was told, in order.
#[derive(Debug, Clone, PartialEq)]
enum Event {
    Discovered(Vec<SocketAddr>),
    Failed(&'static str),
}

#[derive(Default)]
struct RecordingSink(Mutex<Vec<Event>>);

impl RecordingSink {
    fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }
    fn discovered(&self) -> Vec<Vec<SocketAddr>> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Discovered(v) => Some(v),
                Event::Failed(_) => None,
            })
            .collect()
    }
    fn failures(&self) -> usize {
        self.events()
            .iter()
            .filter(|e| matches!(e, Event::Failed(_)))
            .count()
    }
}

impl EndpointSink for RecordingSink {
    fn endpoints_discovered(&self, version: &str, endpoints: Vec<SocketAddr>) {
        assert_eq!(version, "canary");
        self.0.lock().unwrap().push(Event::Discovered(endpoints));
    }
    fn discovery_failed(&self, version: &str, error: &DiscoveryError) {
        assert_eq!(version, "canary");
        self.0.lock().unwrap().push(Event::Failed(error.kind()));
    }
}

fn source() -> CloudMapSource {
    CloudMapSource {
        namespace: "ns".into(),
        service: "svc".into(),
        health: HealthFilter::HealthyOrElseAll,
        query: Default::default(),
        port: None,
    }
}

fn timing(full: Duration) -> PollTiming {
    PollTiming {
        revision_interval: Duration::from_millis(5),
        full_interval: full,
        backoff_initial: Duration::from_millis(5),
        backoff_max: Duration::from_millis(20),
        jitter: 0.2,
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Waits up to 5 s for `cond`.
async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn start(
    discover: &Arc<FakeDiscover>,
    sink: &Arc<RecordingSink>,
    timing: PollTiming,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(poll(
        "canary".into(),
        source(),
        discover.clone(),
        sink.clone(),
        timing,
    ))
}

#[tokio::test]
async fn revision_change_triggers_a_full_fetch() {
    let a = addr("10.0.0.1:80");
    let b = addr("10.0.0.2:80");
    let discover = FakeDiscover::new(5, vec![a]);
    let sink = Arc::new(RecordingSink::default());
    let task = start(&discover, &sink, timing(Duration::from_secs(3600)));

    wait_until("first fetch", || sink.discovered().len() == 1).await;
    assert_eq!(sink.discovered()[0], vec![a]);
    // Revision unchanged: only revision calls.
    let before = discover.revision_calls();
    wait_until("more revision calls", || {
        discover.revision_calls() >= before + 5
    })
    .await;
    assert_eq!(discover.instance_calls(), 1);

    discover.set_instances(Ok(vec![a, b]));
    discover.set_revision(Ok(6));
    wait_until("fetch after revision change", || {
        sink.discovered().len() == 2
    })
    .await;
    assert_eq!(sink.discovered()[1], vec![a, b]);

    // moto's revision can go backwards: any difference counts.
    discover.set_instances(Ok(vec![b]));
    discover.set_revision(Ok(2));
    wait_until("fetch after revision went back", || {
        sink.discovered().len() == 3
    })
    .await;
    assert_eq!(sink.discovered()[2], vec![b]);
    assert_eq!(discover.instance_calls(), 3);
    assert_eq!(sink.failures(), 0);
    task.abort();
}

/// DiscoverInstancesRevision already says N+1 while DiscoverInstances still
/// answers N's list (the instances changed between the two calls, or a
/// replica lags). The poller must not take N+1 for the list's revision, or it
/// never fetches N+1's list: the revision does not move again.
#[tokio::test]
async fn list_older_than_the_revision_is_fetched_again() {
    let a = addr("10.0.0.1:80");
    let b = addr("10.0.0.2:80");
    let discover = FakeDiscover::new(5, vec![a]);
    let sink = Arc::new(RecordingSink::default());
    let task = start(&discover, &sink, timing(Duration::from_secs(3600)));
    wait_until("first fetch", || sink.discovered().len() == 1).await;

    // The race: the revision moves to 6, the list fetched is still 5's.
    discover.set_list_revision(ListRevision::Fixed(Some(5)));
    discover.set_revision(Ok(6));
    wait_until("fetch of the stale list", || sink.discovered().len() >= 2).await;
    assert_eq!(sink.discovered()[1], vec![a]);

    // DiscoverInstances catches up with 6; the revision stays 6 from now on.
    discover.set_instances(Ok(vec![a, b]));
    discover.set_list_revision(ListRevision::Current);
    wait_until("6's list", || sink.discovered().last() == Some(&vec![a, b])).await;

    // Now the list's revision is the current one: revision checks only.
    let calls = discover.instance_calls();
    let before = discover.revision_calls();
    wait_until("more revision calls", || {
        discover.revision_calls() >= before + 5
    })
    .await;
    assert_eq!(discover.instance_calls(), calls);
    assert_eq!(sink.failures(), 0);
    task.abort();
}

/// The instances change between the revision call (5) and DiscoverInstances
/// (6's list): the list's revision is kept, so the revision call's 6 after it
/// is no news and the list is not fetched again.
#[tokio::test]
async fn list_newer_than_the_revision_is_kept() {
    let a = addr("10.0.0.1:80");
    let b = addr("10.0.0.2:80");
    let discover = FakeDiscover::new(5, vec![a]);
    discover.change_before_list(6, vec![a, b]);
    let sink = Arc::new(RecordingSink::default());
    let task = start(&discover, &sink, timing(Duration::from_secs(3600)));
    wait_until("first fetch", || sink.discovered().len() == 1).await;
    assert_eq!(sink.discovered()[0], vec![a, b]);
    let before = discover.revision_calls();
    wait_until("more revision calls", || {
        discover.revision_calls() >= before + 5
    })
    .await;
    assert_eq!(discover.instance_calls(), 1);
    assert_eq!(sink.discovered(), vec![vec![a, b]]);
    task.abort();
}

/// An answer without `InstancesRevision` proves no revision: every round
/// fetches the instances until one comes with it.
#[tokio::test]
async fn list_without_revision_is_fetched_every_round() {
    let a = addr("10.0.0.1:80");
    let discover = FakeDiscover::new(5, vec![a]);
    discover.set_list_revision(ListRevision::Fixed(None));
    let sink = Arc::new(RecordingSink::default());
    let task = start(&discover, &sink, timing(Duration::from_secs(3600)));
    wait_until("three fetches", || discover.instance_calls() >= 3).await;
    assert_eq!(discover.instance_calls(), discover.revision_calls());

    discover.set_list_revision(ListRevision::Current);
    wait_until("a fetch with the revision", || {
        discover.instance_calls() < discover.revision_calls()
    })
    .await;
    let calls = discover.instance_calls();
    let before = discover.revision_calls();
    wait_until("more revision calls", || {
        discover.revision_calls() >= before + 5
    })
    .await;
    assert_eq!(discover.instance_calls(), calls);
    assert_eq!(sink.failures(), 0);
    task.abort();
}

#[tokio::test]
async fn full_fetch_happens_periodically_without_revision_change() {
    let discover = FakeDiscover::new(1, vec![addr("10.0.0.1:80")]);
    let sink = Arc::new(RecordingSink::default());
    let task = start(&discover, &sink, timing(Duration::from_millis(40)));
    wait_until("three fetches", || discover.instance_calls() >= 3).await;
    // Many more revision checks than full fetches.
    assert!(discover.revision_calls() > discover.instance_calls());
    assert!(sink.discovered().len() >= 3);
    task.abort();
}

#[tokio::test]
async fn empty_answer_is_passed_on() {
    let discover = FakeDiscover::new(1, vec![addr("10.0.0.1:80")]);
    let sink = Arc::new(RecordingSink::default());
    let task = start(&discover, &sink, timing(Duration::from_secs(3600)));
    wait_until("first fetch", || sink.discovered().len() == 1).await;
    discover.set_instances(Ok(vec![]));
    discover.set_revision(Ok(2));
    wait_until("empty fetch", || sink.discovered().len() == 2).await;
    assert_eq!(sink.discovered()[1], Vec::<SocketAddr>::new());
    task.abort();
}

#[test]
fn errors_are_reported_counted_and_never_become_an_empty_list() {
    let recorder = recorder::CountingRecorder::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let a = addr("10.0.0.1:80");
            let discover = FakeDiscover::new(1, vec![a]);
            let sink = Arc::new(RecordingSink::default());
            let task = start(&discover, &sink, timing(Duration::from_secs(3600)));
            wait_until("first fetch", || sink.discovered().len() == 1).await;

            // The revision call fails.
            discover.set_revision(Err(DiscoveryError::Throttled("slow down".into())));
            wait_until("revision failures", || sink.failures() >= 3).await;
            // The instances call fails, the revision works (and has not moved).
            discover.set_revision(Ok(1));
            discover.set_instances(Err(DiscoveryError::Timeout("late".into())));
            let failures = sink.failures();
            wait_until("instances failures", || sink.failures() >= failures + 3).await;
            assert_eq!(
                sink.discovered(),
                vec![vec![a]],
                "no endpoints sent while failing"
            );

            // Recovery: the instances are fetched although the revision is unchanged.
            discover.set_instances(Ok(vec![a]));
            wait_until("recovery", || sink.discovered().len() == 2).await;
            task.abort();

            let events = sink.events();
            let throttled = events
                .iter()
                .filter(|e| **e == Event::Failed("throttled"))
                .count();
            let timeouts = events
                .iter()
                .filter(|e| **e == Event::Failed("timeout"))
                .count();
            assert!(throttled >= 3 && timeouts >= 3, "{events:?}");
            assert_eq!(
                recorder.counter(
                    DISCOVERY_ERRORS_TOTAL,
                    &[("version", "canary"), ("kind", "throttled")]
                ),
                throttled as u64
            );
            assert_eq!(
                recorder.counter(
                    DISCOVERY_ERRORS_TOTAL,
                    &[("version", "canary"), ("kind", "timeout")]
                ),
                timeouts as u64
            );
        })
    });
}

#[tokio::test]
async fn failures_back_off_exponentially() {
    let discover = FakeDiscover::new(1, vec![]);
    discover.set_revision(Err(DiscoveryError::Aws("boom".into())));
    let sink = Arc::new(RecordingSink::default());
    let timing = PollTiming {
        revision_interval: Duration::from_millis(1),
        full_interval: Duration::from_secs(3600),
        backoff_initial: Duration::from_millis(40),
        backoff_max: Duration::from_secs(10),
        jitter: 0.2,
    };
    let task = start(&discover, &sink, timing);
    tokio::time::sleep(Duration::from_millis(400)).await;
    task.abort();
    // Delays of ~40, 80, 160, 320 ms: at most 4 calls in 400 ms (a 1 ms
    // interval would make hundreds), and at least 2.
    let calls = discover.revision_calls();
    assert!((2..=4).contains(&calls), "{calls} calls");
    assert!(sink.discovered().is_empty());
    assert_eq!(sink.failures(), calls);
}
