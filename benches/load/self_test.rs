//! Self-check of the wrk parser, the statistics and the upstream body,
//! without any process: `cargo bench --bench load -- --self-test`.

use anyhow::{Result, anyhow, ensure};

use crate::UPSTREAM_BODY_LEN;
use crate::statistics::stat;
use crate::upstream::upstream_body;
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
    println!("self-test ok");
    Ok(())
}
