//! Criterion benches of the data path's hot spots:
//! - the per-request decision (snapshot load + version pick), with and without a sticky key;
//! - snapshot swaps while other threads keep reading;
//! - request header rewriting.
//!
//! Run: `cargo bench --bench hot_path`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Request};

use canary_gateway::config::Config;
use canary_gateway::proxy::Proxy;
use canary_gateway::proxy::h1::request::{self, Parsed};
use canary_gateway::proxy::headers::{Forwarding, peer_ip, prepare_request};
use canary_gateway::proxy::upstream::{Endpoint, pick};
use canary_gateway::proxy::upstream_client::head::{encode_fields, encode_forwarded};
use canary_gateway::snapshot::{ProxySettings, Snapshot, SnapshotInput};

const CONFIG: &str = r#"
[listener]
address = "127.0.0.1:9080"
[split]
stable = "v1"
sticky_header = "x-user-id"
override_header = "x-canary-version"
[[versions]]
name = "v1"
weight = 99
endpoints = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
[[versions]]
name = "v2"
weight = 1
endpoints = ["127.0.0.1:9004"]
"#;

fn snapshot(canary: u32, generation: u64) -> Snapshot {
    let config = Config::parse(CONFIG, "bench").expect("bench config");
    let names = config.version_names();
    let weights: BTreeMap<String, u32> =
        [("v1".to_string(), 100 - canary), ("v2".to_string(), canary)].into();
    let endpoints: BTreeMap<String, Vec<Arc<Endpoint>>> = config
        .versions
        .iter()
        .map(|v| {
            let addrs: Vec<SocketAddr> = match &v.source {
                canary_gateway::config::EndpointSource::Static(a) => a.clone(),
                _ => Vec::new(),
            };
            (
                v.name.clone(),
                addrs
                    .into_iter()
                    .map(|a| Arc::new(Endpoint::new(a)))
                    .collect(),
            )
        })
        .collect();
    Snapshot::build(SnapshotInput {
        versions: &names,
        stable: "v1",
        weights: &weights,
        endpoints: &endpoints,
        generation,
        settings: Arc::new(ProxySettings::from_config(&config)),
        windows: &Default::default(),
    })
    .expect("bench snapshot")
}

fn decision(c: &mut Criterion) {
    let cell = ArcSwap::from_pointee(snapshot(1, 1));
    let plain = HeaderMap::new();
    let mut sticky = HeaderMap::new();
    sticky.insert("x-user-id", HeaderValue::from_static("user-12345678"));
    c.bench_function("decision: load + pick version + pick endpoint", |b| {
        b.iter(|| {
            let snap = cell.load();
            let v = Proxy::choose(&snap, std::hint::black_box(&plain));
            std::hint::black_box(pick(&snap.versions[v.index].endpoints).map(|e| e.addr()))
        })
    });
    c.bench_function("decision: load + pick (sticky key)", |b| {
        b.iter(|| {
            let snap = cell.load();
            let v = Proxy::choose(&snap, std::hint::black_box(&sticky));
            std::hint::black_box(pick(&snap.versions[v.index].endpoints).map(|e| e.addr()))
        })
    });
}

fn swap_under_readers(c: &mut Criterion) {
    let cell = Arc::new(ArcSwap::from_pointee(snapshot(1, 1)));
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (cell, stop) = (cell.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let snap = cell.load();
                    n = n.wrapping_add(Proxy::choose(&snap, &HeaderMap::new()).index as u64);
                }
                n
            })
        })
        .collect();
    let prepared: Vec<Arc<Snapshot>> = (0..64)
        .map(|i| Arc::new(snapshot(i % 50 + 1, i as u64)))
        .collect();
    let mut i = 0;
    c.bench_function("snapshot swap with 2 concurrent readers", |b| {
        b.iter(|| {
            i = (i + 1) % prepared.len();
            cell.store(prepared[i].clone());
        })
    });
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        let _ = r.join();
    }
}

fn header_rewrite(c: &mut Criterion) {
    let port = HeaderValue::from_static("9080");
    let peer_ip = peer_ip("10.0.0.7:51234".parse().expect("addr"));
    let fwd = Forwarding {
        peer_ip: &peer_ip,
        proto: "http",
        port: &port,
        trust_forwarded_headers: false,
        drop_underscored: false,
        drop_expect: false,
        chunked: false,
    };
    let template = Request::get("/api/orders?id=42")
        .header("host", "shop.example.com")
        .header("user-agent", "curl/8.5.0")
        .header("accept", "*/*")
        .header("connection", "keep-alive")
        .header("x-forwarded-for", "203.0.113.9")
        .body(())
        .expect("request");
    c.bench_function("request header rewrite (typical ALB request)", |b| {
        b.iter_batched(
            || {
                let mut req = Request::new(());
                *req.uri_mut() = template.uri().clone();
                *req.headers_mut() = template.headers().clone();
                req
            },
            |mut req| {
                prepare_request(&mut req, false, &fwd);
                req
            },
            criterion::BatchSize::SmallInput,
        )
    });
    // The own client does the same rewrite while it writes the upstream's
    // request head, without touching the header map.
    let (parts, ()) = template.into_parts();
    let mut head = Vec::with_capacity(1024);
    c.bench_function(
        "request head written with the rewrite (own client, same request)",
        |b| {
            b.iter(|| {
                encode_forwarded(&mut head, &parts, &fwd);
                head.len()
            })
        },
    );
    // The own server: the same request as bytes, its head parsed in place
    // and the upstream's head written from the parsed fields.
    let raw = b"GET /api/orders?id=42 HTTP/1.1\r\nHost: shop.example.com\r\n\
                User-Agent: curl/8.5.0\r\nAccept: */*\r\nConnection: keep-alive\r\n\
                X-Forwarded-For: 203.0.113.9\r\n\r\n";
    c.bench_function(
        "request head parsed and upstream head written (own server, same request)",
        |b| {
            b.iter(|| {
                let mut slots = request::slots();
                let Parsed::Simple(req) = request::parse(raw, &mut slots) else {
                    return 0;
                };
                let fields = || req.field_bytes();
                let method = req.method.as_str().as_bytes();
                encode_fields(&mut head, method, req.target, None, fields, &fwd);
                head.len()
            })
        },
    );
}

/// What the dashboard's series add to each finished request.
fn series_record(c: &mut Criterion) {
    let recorder = canary_gateway::telemetry::series::Series::default().recorder("v1");
    let elapsed = std::time::Duration::from_micros(850);
    c.bench_function("dashboard series: record one finished request", |b| {
        b.iter(|| recorder.record(std::hint::black_box(http::StatusCode::OK), elapsed))
    });
}

criterion_group!(
    benches,
    decision,
    swap_under_readers,
    header_rewrite,
    series_record
);
criterion_main!(benches);
