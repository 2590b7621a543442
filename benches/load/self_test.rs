//! Self-check of the wrk and h2load parsers, the statistics and the
//! scenarios' shapes (request head size, response header lines, body
//! sizes), without any process: `cargo bench --bench load -- --self-test`.

use anyhow::{Result, anyhow, ensure};

use crate::UPSTREAM_BODY_LEN;
use crate::h2load::parse_h2load;
use crate::handshake_client::{parse_report, percentile};
use crate::report::throughput_verdict;
use crate::scenarios::{ResponseShape, Scenario, json_body, request_head, wrk_script};
use crate::statistics::stat;
use crate::upstream::{response_bytes, upstream_body};
use crate::wrk::{parse_duration_us, parse_wrk};

pub const WRK_SAMPLE: &str = "Running 2s test @ http://127.0.0.1:1/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   614.21us  100.00us   3.00ms   90.00%
    Req/Sec    80.00k     1.00k   82.00k    70.00%
  Latency Distribution
     50%  600.00us
     75%  700.00us
     90%  800.00us
     99%    1.50ms
  160000 requests in 2.00s, 30.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  80000.00
Transfer/sec:     15.00MB
";

pub fn self_test() -> Result<()> {
    let r = parse_wrk(WRK_SAMPLE)?;
    ensure!(r.requests == 160_000, "requests {}", r.requests);
    ensure!((r.rps - 80_000.0).abs() < 1e-6, "rps {}", r.rps);
    ensure!((r.p50_us - 600.0).abs() < 1e-6, "p50 {}", r.p50_us);
    ensure!((r.p99_us - 1500.0).abs() < 1e-6, "p99 {}", r.p99_us);
    ensure!(r.failures() == 7, "failures {}", r.failures());
    ensure!(parse_wrk("garbage").is_err(), "garbage parsed");
    // A missed throughput target says when no proxy could have met it.
    let (met, bound) = throughput_verdict(70.0, 60.0, Some(72.0), 1.25, "nginx");
    ensure!(
        !met && bound.starts_with("1.17x; out of reach") && bound.contains("did 1.20x nginx"),
        "{met} {bound}"
    );
    let missed = throughput_verdict(70.0, 60.0, Some(80.0), 1.25, "nginx");
    ensure!(missed == (false, "1.17x".to_owned()), "{missed:?}");
    let met = throughput_verdict(80.0, 60.0, Some(74.0), 1.25, "nginx");
    ensure!(met == (true, "1.33x".to_owned()), "{met:?}");
    let exact = throughput_verdict(75.0, 60.0, Some(74.0), 1.25, "nginx");
    ensure!(exact == (true, "1.25x".to_owned()), "{exact:?}");
    ensure!(parse_duration_us("2.5s")? == 2.5e6, "seconds unit");
    ensure!(
        parse_duration_us("12").is_err(),
        "unitless latency accepted"
    );
    ensure!(
        upstream_body("v1").len() == UPSTREAM_BODY_LEN,
        "body length"
    );
    ensure!(upstream_body("v2").starts_with(b"v2 "), "body prefix");
    let s = stat([3.0, 1.0, 2.0]).ok_or_else(|| anyhow!("empty stat"))?;
    ensure!(s.median == 2.0 && s.min == 1.0 && s.max == 3.0, "stat");
    scenario_shapes()?;
    let h = parse_h2load(H2LOAD_SAMPLE)?;
    ensure!(
        h.requests == 250_000 && (h.rps - 49_990.5).abs() < 1e-6,
        "h2load {h:?}"
    );
    ensure!(h.failures() == 3 + 2, "h2load failures {}", h.failures());
    let c = parse_report(
        "requests=9 rps=4356.02 p50_us=10994 p99_us=18698 non_2xx=1 errors=2 \
         tls=TLSv1_3/TLS13_AES_256_GCM_SHA384/X25519",
    )?;
    ensure!(
        c.requests == 9 && c.p99_us == 18_698.0 && c.failures() == 3,
        "handshake client report {c:?}"
    );
    ensure!(c.negotiated.is_some(), "handshake client: TLS not read");
    ensure!(
        parse_report("requests=9 rps=1").is_err(),
        "a cut report was read"
    );
    let sorted: Vec<u32> = (1..=200).collect();
    ensure!(
        percentile(&sorted, 0.5) == 100 && percentile(&sorted, 0.99) == 198,
        "percentiles"
    );
    ensure!(percentile(&[], 0.99) == 0, "percentile of nothing");
    println!("self-test ok");
    Ok(())
}

pub const H2LOAD_SAMPLE: &str = "starting benchmark...
finished in 5.00s, 49990.50 req/s, 55.01MB/s
requests: 250000 total, 250000 started, 250000 done, 249997 succeeded, 3 failed, 0 errored, 0 timeout
status codes: 249995 2xx, 0 3xx, 0 4xx, 2 5xx
traffic: 275.04MB (288397270) total, 4.12MB (4317270) headers (space savings 93.21%), 256.00MB (268435456) data
                     min         max         mean         sd        +/- sd
time for request:      101us     12.07ms      0.98ms       201us    81.20%
";

/// The shapes issue #15 asks for: ALB heads of 600-900 bytes, service
/// responses with 8-12 header lines and Set-Cookie, exact body sizes.
fn scenario_shapes() -> Result<()> {
    for scenario in Scenario::ALL {
        let body = scenario.response().body_len();
        let date = "Tue, 01 Dec 2026 23:00:00 GMT";
        let resp = response_bytes("v2", scenario.response(), date);
        let text = String::from_utf8_lossy(&resp);
        let (head, got_body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow!("scenario {}: no head end", scenario.number()))?;
        ensure!(
            got_body.len() == body,
            "scenario {}: body {}",
            scenario.number(),
            got_body.len()
        );
        let lines = head.lines().count() - 1;
        if let ResponseShape::Service(_) = scenario.response() {
            ensure!(
                (8..=12).contains(&lines),
                "scenario {}: {lines} header lines",
                scenario.number()
            );
            ensure!(head.contains("Set-Cookie: "), "no Set-Cookie");
            ensure!(
                got_body.starts_with("{\"version\":\"v2\""),
                "json names the version"
            );
        }
        if let Some(shape) = scenario.request() {
            let len = request_head(&shape, "127.0.0.1:40000").len();
            ensure!(
                (600..=900).contains(&len),
                "scenario {}: request head {len} B",
                scenario.number()
            );
            let script = wrk_script(&shape)?;
            ensure!(script.contains("X-Amzn-Trace-Id"), "script headers");
            ensure!(
                script.contains("wrk.body") == (shape.body_len > 0),
                "script body"
            );
        }
    }
    for len in [1024, 16 * 1024, 256 * 1024] {
        ensure!(json_body("v1", len).len() == len, "json body of {len}");
    }
    Ok(())
}
