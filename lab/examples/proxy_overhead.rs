//! What the lab's front proxy costs by itself: small request/response round
//! trips to a TCP echo server, straight and through a front proxy whose
//! link has zero delay, interleaved in blocks so that both see the same
//! machine load. Prints p50/p99 of each and the difference. Then the same
//! with the link set to a one-way delay of [`DELAY_MS`] each way: what the
//! proxy adds beyond the configured round trip (timer granularity).
//!
//! ```text
//! cargo run --example proxy_overhead -p geokv-lab [-- ROUND_TRIPS]
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use geokv_lab::RegionMatrix;
use geokv_lab::net::{Endpoint, Links, run_front_proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes per request and per response: about a small gRPC unary call.
const MESSAGE_BYTES: usize = 200;
const BLOCK: usize = 100;
/// One-way delay of the second measurement, each way.
const DELAY_MS: u64 = 5;

async fn echo_server(listener: TcpListener) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
    }
}

async fn round_trips(stream: &mut TcpStream, count: usize, out: &mut Vec<Duration>) {
    let message = [7u8; MESSAGE_BYTES];
    let mut reply = [0u8; MESSAGE_BYTES];
    for _ in 0..count {
        let start = Instant::now();
        stream.write_all(&message).await.expect("write");
        stream.read_exact(&mut reply).await.expect("read");
        out.push(start.elapsed());
    }
}

/// At least `total` round trips each way, straight and proxied, interleaved
/// in blocks; both sorted.
async fn interleaved(direct: &mut TcpStream, proxied: &mut TcpStream, total: usize) -> (Vec<Duration>, Vec<Duration>) {
    let (mut straight, mut through) = (Vec::with_capacity(total), Vec::with_capacity(total));
    while straight.len() < total {
        round_trips(direct, BLOCK, &mut straight).await;
        round_trips(proxied, BLOCK, &mut through).await;
    }
    straight.sort();
    through.sort();
    (straight, through)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let total: usize = std::env::args().nth(1).map(|a| a.parse().expect("ROUND_TRIPS: a number")).unwrap_or(5_000);
    let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(echo_server(echo));

    // One node in one region, no intra-region delay, no jitter; this
    // program connects from 127.0.0.1, an external source: delay zero.
    let links = Links::new(RegionMatrix::default_matrix(), 0, 0);
    let region = RegionMatrix::default_matrix().regions()[0].clone();
    links.add_node(1, &region, "127.0.2.1".parse().unwrap()).expect("add node");
    let proxy = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let proxy_addr: SocketAddr = proxy.local_addr().unwrap();
    tokio::spawn(run_front_proxy(proxy, echo_addr, Endpoint::Node(1), links.clone()));

    let mut direct = TcpStream::connect(echo_addr).await.expect("connect echo");
    let mut proxied = TcpStream::connect(proxy_addr).await.expect("connect proxy");
    direct.set_nodelay(true).unwrap();
    proxied.set_nodelay(true).unwrap();
    // Warm both paths.
    round_trips(&mut direct, BLOCK, &mut Vec::new()).await;
    round_trips(&mut proxied, BLOCK, &mut Vec::new()).await;

    let (straight, through) = interleaved(&mut direct, &mut proxied, total).await;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("{} round trips of {MESSAGE_BYTES} B each way, zero configured delay", straight.len());
    println!(
        "  direct:        p50 {:.3} ms  p99 {:.3} ms",
        ms(percentile(&straight, 0.5)),
        ms(percentile(&straight, 0.99))
    );
    println!(
        "  through proxy: p50 {:.3} ms  p99 {:.3} ms",
        ms(percentile(&through, 0.5)),
        ms(percentile(&through, 0.99))
    );
    println!(
        "  proxy adds:    p50 {:.3} ms  p99 {:.3} ms (one proxy, both directions)",
        ms(percentile(&through, 0.5)) - ms(percentile(&straight, 0.5)),
        ms(percentile(&through, 0.99)) - ms(percentile(&straight, 0.99)),
    );

    // With a configured delay: the excess over direct + 2 x delay.
    let node = Endpoint::Node(1);
    links.set_latency([(Endpoint::External, node.clone()), (node, Endpoint::External)], Some(DELAY_MS), None);
    let delayed_total = (total / 10).max(BLOCK);
    round_trips(&mut proxied, 10, &mut Vec::new()).await;
    let (straight, through) = interleaved(&mut direct, &mut proxied, delayed_total).await;
    let configured = 2.0 * DELAY_MS as f64;
    println!("{} round trips with {DELAY_MS} ms configured each way ({configured} ms round trip)", through.len());
    println!(
        "  through proxy: p50 {:.3} ms  p99 {:.3} ms",
        ms(percentile(&through, 0.5)),
        ms(percentile(&through, 0.99))
    );
    println!(
        "  proxy adds beyond direct + configured: p50 {:.3} ms  p99 {:.3} ms",
        ms(percentile(&through, 0.5)) - ms(percentile(&straight, 0.5)) - configured,
        ms(percentile(&through, 0.99)) - ms(percentile(&straight, 0.99)) - configured,
    );

    // The floor under that: how late this machine wakes a task from a bare
    // timerfd sleep of the same length (no proxy, no socket).
    let mut late = Vec::with_capacity(200);
    for _ in 0..200 {
        let deadline = std::time::Instant::now() + Duration::from_millis(DELAY_MS);
        tokio_timerfd::Delay::new(deadline).expect("timerfd").await.expect("timerfd sleep");
        late.push(deadline.elapsed());
    }
    late.sort();
    println!(
        "  a bare {DELAY_MS} ms timerfd sleep wakes late by: p50 {:.3} ms  p99 {:.3} ms (twice per round trip)",
        ms(percentile(&late, 0.5)),
        ms(percentile(&late, 0.99))
    );
}
