//! CloudMapDiscover and the poller against moto.

#[path = "support/cloudmap_fixture.rs"]
mod cloudmap_fixture;
#[path = "support/moto.rs"]
mod moto;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_servicediscovery::Client;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use canary_gateway::aws::cloudmap::{CloudMapDiscover, PollTiming, poll, servicediscovery_client};
use canary_gateway::discovery::{
    CloudMapSource, Discover, DiscoveryError, EndpointSink, HealthFilter,
};
use cloudmap_fixture::CloudMapFixture;
use moto::MotoServer;

fn source(fx: &CloudMapFixture, port: Option<u16>) -> CloudMapSource {
    CloudMapSource {
        namespace: fx.namespace.clone(),
        service: fx.service.clone(),
        health: HealthFilter::HealthyOrElseAll,
        query: BTreeMap::new(),
        port,
    }
}

fn addrs(list: &[&str]) -> Vec<SocketAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

async fn setup(moto: &MotoServer) -> (CloudMapDiscover, CloudMapFixture) {
    let sdk = moto.sdk_config().await;
    let fx = CloudMapFixture::create(Client::new(&sdk), "canary.local", "app-v2").await;
    (CloudMapDiscover::new(&sdk), fx)
}

#[tokio::test]
async fn discovers_registered_instances_and_follows_changes() {
    let moto = MotoServer::start();
    let (discover, fx) = setup(&moto).await;
    let src = source(&fx, Some(9000));

    // Nothing registered yet: a successful empty answer.
    assert_eq!(discover.instances(&src).await.unwrap().endpoints, vec![]);

    fx.register(
        "i-1",
        &[
            ("AWS_INSTANCE_IPV4", "10.0.0.1"),
            ("AWS_INSTANCE_PORT", "8080"),
        ],
    )
    .await;
    fx.register("i-2", &[("AWS_INSTANCE_IPV4", "10.0.0.2")])
        .await; // source.port
    fx.register(
        "i-3",
        &[
            ("AWS_INSTANCE_IPV6", "2001:db8::3"),
            ("AWS_INSTANCE_PORT", "81"),
        ],
    )
    .await;
    fx.register("i-4", &[("AWS_INSTANCE_PORT", "80")]).await; // no address: skipped
    let first = discover.instances(&src).await.unwrap();
    assert_eq!(
        first.endpoints,
        addrs(&["10.0.0.1:8080", "10.0.0.2:9000", "[2001:db8::3]:81"])
    );
    let rev1 = discover.revision(&src).await.unwrap();
    // The list comes with the revision it belongs to (the poller keeps that one).
    assert_eq!(first.revision, Some(rev1));

    // Without a default port, the instance without AWS_INSTANCE_PORT is skipped.
    let no_default = source(&fx, None);
    assert_eq!(
        discover.instances(&no_default).await.unwrap().endpoints,
        addrs(&["10.0.0.1:8080", "[2001:db8::3]:81"])
    );

    // A new instance appears and moves the revision.
    fx.register(
        "i-5",
        &[
            ("AWS_INSTANCE_IPV4", "10.0.0.5"),
            ("AWS_INSTANCE_PORT", "8080"),
        ],
    )
    .await;
    let rev2 = discover.revision(&src).await.unwrap();
    assert_ne!(rev1, rev2);
    let second = discover.instances(&src).await.unwrap();
    assert!(second.endpoints.contains(&"10.0.0.5:8080".parse().unwrap()));
    assert_eq!(second.revision, Some(rev2));

    // A deregistered one disappears.
    fx.deregister("i-1").await;
    let after = discover.instances(&src).await.unwrap().endpoints;
    assert_eq!(
        after,
        addrs(&["10.0.0.2:9000", "10.0.0.5:8080", "[2001:db8::3]:81"])
    );
    assert_ne!(discover.revision(&src).await.unwrap(), rev2);

    // moto keeps a re-registered id twice: one endpoint all the same.
    fx.register(
        "i-5",
        &[
            ("AWS_INSTANCE_IPV4", "10.0.0.5"),
            ("AWS_INSTANCE_PORT", "8080"),
        ],
    )
    .await;
    assert_eq!(discover.instances(&src).await.unwrap().endpoints, after);
}

#[tokio::test]
async fn health_filter_and_query_parameters_are_applied() {
    let moto = MotoServer::start();
    let (discover, fx) = setup(&moto).await;
    fx.register(
        "i-1",
        &[
            ("AWS_INSTANCE_IPV4", "10.0.0.1"),
            ("AWS_INSTANCE_PORT", "80"),
            ("track", "canary"),
        ],
    )
    .await;
    fx.register(
        "i-2",
        &[
            ("AWS_INSTANCE_IPV4", "10.0.0.2"),
            ("AWS_INSTANCE_PORT", "80"),
            ("track", "stable"),
        ],
    )
    .await;
    fx.set_healthy("i-2", false).await;

    let mut src = source(&fx, None);
    src.health = HealthFilter::All;
    assert_eq!(
        discover.instances(&src).await.unwrap().endpoints,
        addrs(&["10.0.0.1:80", "10.0.0.2:80"])
    );
    src.health = HealthFilter::Healthy;
    assert_eq!(
        discover.instances(&src).await.unwrap().endpoints,
        addrs(&["10.0.0.1:80"])
    );
    src.health = HealthFilter::HealthyOrElseAll;
    assert_eq!(
        discover.instances(&src).await.unwrap().endpoints,
        addrs(&["10.0.0.1:80"])
    );
    fx.set_healthy("i-1", false).await;
    assert_eq!(
        discover.instances(&src).await.unwrap().endpoints,
        addrs(&["10.0.0.1:80", "10.0.0.2:80"]),
        "no healthy instance: all of them"
    );

    src.health = HealthFilter::All;
    src.query = BTreeMap::from([("track".to_string(), "stable".to_string())]);
    assert_eq!(
        discover.instances(&src).await.unwrap().endpoints,
        addrs(&["10.0.0.2:80"])
    );
}

/// A namespace or service Cloud Map does not have (a typo in the config)
/// is a readable error of its own kind, `not_found`, not an outage.
#[tokio::test]
async fn an_unknown_namespace_or_service_is_a_readable_not_found_error() {
    let moto = MotoServer::start();
    let (discover, fx) = setup(&moto).await;
    let mut src = source(&fx, None);
    src.namespace = "no-such-namespace".into();
    let err = discover.instances(&src).await.unwrap_err();
    assert!(matches!(err, DiscoveryError::NotFound(_)), "{err:?}");
    assert_eq!(err.kind(), "not_found");
    assert!(err.to_string().contains("NamespaceNotFound"), "{err}");
    // Where it failed comes first, as the stores' errors say theirs.
    let at = format!(
        "cloudmap: DiscoverInstances no-such-namespace/{}: ",
        src.service
    );
    assert!(err.to_string().starts_with(&at), "{err}");
    let err = discover.revision(&src).await.unwrap_err();
    assert!(err.to_string().contains("NamespaceNotFound"), "{err}");
    let at = format!(
        "cloudmap: DiscoverInstancesRevision no-such-namespace/{}: ",
        src.service
    );
    assert!(err.to_string().starts_with(&at), "{err}");

    let mut src = source(&fx, None);
    src.service = "no-such-service".into();
    for err in [
        discover.instances(&src).await.unwrap_err(),
        discover.revision(&src).await.map(|_| ()).unwrap_err(),
    ] {
        assert!(matches!(err, DiscoveryError::NotFound(_)), "{err:?}");
        assert!(err.to_string().contains("ServiceNotFound"), "{err}");
    }
}

#[tokio::test]
async fn connection_refused_is_an_error_not_a_hang() {
    let moto = MotoServer::start();
    let sdk = moto.sdk_config().await;
    let fx = CloudMapFixture::create(Client::new(&sdk), "canary.local", "app-v2").await;
    drop(moto);
    let discover = CloudMapDiscover::new(&sdk);
    let started = std::time::Instant::now();
    let err = discover.revision(&source(&fx, None)).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(!err.to_string().is_empty());
}

/// Records the host of each request, then fails it before it is sent.
#[derive(Debug, Default, Clone)]
struct CaptureHost(Arc<Mutex<Vec<String>>>);

impl Intercept for CaptureHost {
    fn name(&self) -> &'static str {
        "CaptureHost"
    }
    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let uri = context.request().uri().to_string();
        self.0.lock().unwrap().push(uri);
        Err("captured; not sent".into())
    }
}

#[tokio::test]
async fn data_prefix_is_removed_only_by_our_client() {
    let moto = MotoServer::start();
    let sdk = moto.sdk_config().await;

    // The plain SDK client would send DiscoverInstances to data-127.0.0.1.
    let plain = CaptureHost::default();
    let client = Client::from_conf(
        aws_sdk_servicediscovery::config::Builder::from(&sdk)
            .interceptor(plain.clone())
            .build(),
    );
    let _ = client
        .discover_instances()
        .namespace_name("n")
        .service_name("s")
        .send()
        .await;
    let uris = plain.0.lock().unwrap().clone();
    assert_eq!(uris.len(), 1);
    assert!(uris[0].starts_with("http://data-127.0.0.1:"), "{uris:?}");

    // Ours sends it to the endpoint URL as is.
    let ours = CaptureHost::default();
    let client = Client::from_conf(
        servicediscovery_client(&sdk)
            .config()
            .to_builder()
            .interceptor(ours.clone())
            .build(),
    );
    let _ = client
        .discover_instances()
        .namespace_name("n")
        .service_name("s")
        .send()
        .await;
    let _ = client
        .discover_instances_revision()
        .namespace_name("n")
        .service_name("s")
        .send()
        .await;
    let uris = ours.0.lock().unwrap().clone();
    assert_eq!(uris.len(), 2);
    for uri in &uris {
        assert!(
            uri.starts_with(&format!("{}/", moto.endpoint_url())),
            "{uris:?}"
        );
    }
}

/// Sink that records what the poller tells it.
#[derive(Default)]
struct Recorded {
    discovered: Mutex<Vec<Vec<SocketAddr>>>,
    failed: Mutex<Vec<String>>,
}

impl EndpointSink for Recorded {
    fn endpoints_discovered(&self, _: &str, endpoints: Vec<SocketAddr>) {
        self.discovered.lock().unwrap().push(endpoints);
    }
    fn discovery_failed(&self, _: &str, error: &DiscoveryError) {
        self.failed.lock().unwrap().push(error.to_string());
    }
}

async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn poller_follows_registrations_in_moto() {
    let moto = MotoServer::start();
    let (discover, fx) = setup(&moto).await;
    fx.register(
        "i-1",
        &[
            ("AWS_INSTANCE_IPV4", "10.0.0.1"),
            ("AWS_INSTANCE_PORT", "80"),
        ],
    )
    .await;
    let sink = Arc::new(Recorded::default());
    let timing = PollTiming {
        revision_interval: Duration::from_millis(50),
        full_interval: Duration::from_secs(3600),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        jitter: 0.2,
    };
    let task = tokio::spawn(poll(
        "v2".into(),
        source(&fx, None),
        Arc::new(discover),
        sink.clone(),
        timing,
    ));
    let last = |sink: &Recorded| sink.discovered.lock().unwrap().last().cloned();
    wait_for("first endpoints", || {
        last(&sink) == Some(addrs(&["10.0.0.1:80"]))
    })
    .await;

    fx.register(
        "i-2",
        &[
            ("AWS_INSTANCE_IPV4", "10.0.0.2"),
            ("AWS_INSTANCE_PORT", "80"),
        ],
    )
    .await;
    wait_for("new instance", || {
        last(&sink) == Some(addrs(&["10.0.0.1:80", "10.0.0.2:80"]))
    })
    .await;

    fx.deregister("i-1").await;
    wait_for("deregistered instance", || {
        last(&sink) == Some(addrs(&["10.0.0.2:80"]))
    })
    .await;

    // moto forgets everything: the namespace is gone, calls fail, and the
    // last endpoints are never replaced by an empty list.
    moto.reset();
    wait_for("failures", || sink.failed.lock().unwrap().len() >= 2).await;
    assert_eq!(last(&sink), Some(addrs(&["10.0.0.2:80"])));
    assert!(sink.failed.lock().unwrap()[0].contains("NamespaceNotFound"));
    task.abort();
}
