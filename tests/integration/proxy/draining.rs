//! Draining: a shutdown finishes in-flight requests and refuses new connections.

use std::time::Duration;

use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_refuses_new_connections() {
    let v1 = Upstream::start("v1").await;
    let gw = Gateway::start(&config("", &[("v1", 1, v1.addr)])).await;
    let addr = gw.addr;
    let in_flight = tokio::spawn(async move { get(addr, "/sleep?ms=1500", &[]).await });
    assert!(eventually(Duration::from_secs(5), async || v1.hits() == 1).await);
    gw.shutdown().await;
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "v1");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}
