//! The emulated WAN on its own, without geokv: a front proxy for "node 2"
//! (region `far`) in front of a tiny echo server, and a sender connecting
//! from node 1's IP (region `near`).
//!
//! Timing assertions check the lower bound the emulation promises and only a
//! generous upper bound, so a loaded 2-core machine does not fail them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use geokv_lab::net::run_front_proxy;
use geokv_lab::{Endpoint, Links, Partition, RegionMatrix};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const SENDER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 2, 1));
/// Long enough to be sure nothing arrives on a cut link.
const QUIET: Duration = Duration::from_millis(400);
/// Longest any expected event may take on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(10);

fn up() -> (Endpoint, Endpoint) {
    (Endpoint::Node(1), Endpoint::Node(2))
}

fn down() -> (Endpoint, Endpoint) {
    (Endpoint::Node(2), Endpoint::Node(1))
}

/// A proxy for node 2 in front of an echo server that reports every chunk it
/// receives (with its arrival time).
struct Setup {
    links: Arc<Links>,
    proxy_addr: SocketAddr,
    received: mpsc::Receiver<(Instant, Vec<u8>)>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

async fn setup(rtt_ms: u64, jitter_ms: u64) -> Setup {
    let matrix = RegionMatrix::parse(&format!("regions = [\"near\", \"far\"]\n[rtt_ms]\n\"near/far\" = {rtt_ms}\n"))
        .expect("test matrix");
    let links = Links::new(matrix, 0, jitter_ms);
    links.add_node(1, "near", SENDER_IP).unwrap();
    links.add_node(2, "far", IpAddr::V4(Ipv4Addr::new(127, 0, 2, 2))).unwrap();

    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_addr = server.local_addr().unwrap();
    let (received_tx, received) = mpsc::channel(1024);
    let echo = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = server.accept().await else { return };
            let received_tx = received_tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let _ = received_tx.send((Instant::now(), buf[..n].to_vec())).await;
                            if stream.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    let proxy_listener = TcpListener::bind("127.0.1.2:0").await.unwrap();
    let proxy_addr = proxy_listener.local_addr().unwrap();
    let proxy = tokio::spawn(run_front_proxy(proxy_listener, server_addr, Endpoint::Node(2), links.clone()));
    Setup { links, proxy_addr, received, tasks: vec![echo, proxy] }
}

/// A connection to the proxy from node 1's IP.
async fn connect(addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(SENDER_IP, 0)).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Reads exactly `want.len()` bytes within `within`; `None` if they do not
/// arrive in time.
async fn read_exact_within(stream: &mut TcpStream, len: usize, within: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len];
    match tokio::time::timeout(within, stream.read_exact(&mut buf)).await {
        Ok(Ok(_)) => Some(buf),
        _ => None,
    }
}

async fn server_receives(setup: &mut Setup, within: Duration) -> Option<(Instant, Vec<u8>)> {
    tokio::time::timeout(within, setup.received.recv()).await.ok().flatten()
}

#[tokio::test]
async fn a_link_adds_half_its_rtt_each_way() {
    let rtt = Duration::from_millis(200);
    let mut setup = setup(200, 0).await;
    let mut stream = connect(setup.proxy_addr).await;
    // Warm up (connection set-up is not what is measured).
    stream.write_all(b"w").await.unwrap();
    read_exact_within(&mut stream, 1, DEADLINE).await.expect("warm-up echo");
    server_receives(&mut setup, DEADLINE).await.expect("warm-up arrives");

    let sent = Instant::now();
    stream.write_all(b"x").await.unwrap();
    let (arrived, bytes) = server_receives(&mut setup, DEADLINE).await.expect("the byte arrives");
    let echo = read_exact_within(&mut stream, 1, DEADLINE).await.expect("the echo returns");
    let one_way = arrived - sent;
    let round_trip = sent.elapsed();
    println!("rtt 200 ms link: one way {one_way:?}, round trip {round_trip:?}");
    assert_eq!((bytes, echo), (b"x".to_vec(), b"x".to_vec()));
    assert!(one_way >= rtt / 2, "one way took {one_way:?}, less than RTT/2");
    assert!(one_way < rtt / 2 + Duration::from_secs(2), "one way took {one_way:?}");
    assert!(round_trip >= rtt, "round trip took {round_trip:?}, less than the RTT");
    assert!(round_trip < rtt + Duration::from_secs(4), "round trip took {round_trip:?}");
}

#[tokio::test]
async fn jitter_never_reorders_bytes() {
    let mut setup = setup(20, 30).await;
    let mut stream = connect(setup.proxy_addr).await;
    let mut sent = Vec::new();
    for i in 0..100u8 {
        stream.write_all(&[i]).await.unwrap();
        sent.push(i);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut arrived = Vec::new();
    while arrived.len() < sent.len() {
        let (_, bytes) = server_receives(&mut setup, DEADLINE).await.expect("all bytes arrive");
        arrived.extend(bytes);
    }
    assert_eq!(arrived, sent);
    let echoed = read_exact_within(&mut stream, sent.len(), DEADLINE).await.expect("all bytes echo");
    assert_eq!(echoed, sent);
}

#[tokio::test]
async fn a_one_way_partition_blocks_exactly_one_direction() {
    let mut setup = setup(2, 0).await;
    let mut stream = connect(setup.proxy_addr).await;

    // node1 -> node2 cut: the server hears nothing, so nothing comes back.
    setup.links.set_partition([up()], Partition::Stall);
    stream.write_all(b"a").await.unwrap();
    assert!(server_receives(&mut setup, QUIET).await.is_none(), "bytes crossed the cut direction");
    setup.links.heal(None, false);
    assert_eq!(server_receives(&mut setup, DEADLINE).await.expect("held bytes arrive after heal").1, b"a");
    assert_eq!(read_exact_within(&mut stream, 1, DEADLINE).await.expect("echo after heal"), b"a");

    // node2 -> node1 cut: the server hears the byte, its echo is held.
    setup.links.set_partition([down()], Partition::Stall);
    stream.write_all(b"b").await.unwrap();
    assert_eq!(server_receives(&mut setup, DEADLINE).await.expect("the open direction still flows").1, b"b");
    assert!(read_exact_within(&mut stream, 1, QUIET).await.is_none(), "bytes crossed the cut direction");
    setup.links.heal(None, false);
    assert_eq!(read_exact_within(&mut stream, 1, DEADLINE).await.expect("held echo after heal"), b"b");
}

#[tokio::test]
async fn heal_restores_existing_and_new_connections() {
    let mut setup = setup(2, 0).await;
    let mut old = connect(setup.proxy_addr).await;
    old.write_all(b"1").await.unwrap();
    assert_eq!(read_exact_within(&mut old, 1, DEADLINE).await.unwrap(), b"1");
    server_receives(&mut setup, DEADLINE).await.unwrap();

    setup.links.set_partition([up(), down()], Partition::Stall);
    old.write_all(b"2").await.unwrap();
    // A connection opened during the stall is accepted, and stalled too.
    let mut during = connect(setup.proxy_addr).await;
    during.write_all(b"3").await.unwrap();
    assert!(server_receives(&mut setup, QUIET).await.is_none(), "bytes crossed a stalled link");

    setup.links.heal(None, false);
    assert_eq!(read_exact_within(&mut old, 1, DEADLINE).await.expect("old connection resumes"), b"2");
    assert_eq!(read_exact_within(&mut during, 1, DEADLINE).await.expect("stalled new connection resumes"), b"3");
    let mut after = connect(setup.proxy_addr).await;
    after.write_all(b"4").await.unwrap();
    assert_eq!(read_exact_within(&mut after, 1, DEADLINE).await.expect("new connection after heal"), b"4");
}

/// True once the peer has closed or reset the connection.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 16];
    matches!(tokio::time::timeout(within, stream.read(&mut buf)).await, Ok(Ok(0)) | Ok(Err(_)))
}

#[tokio::test]
async fn reset_closes_connections_and_refuses_new_ones_until_heal() {
    let setup = setup(2, 0).await;
    let mut old = connect(setup.proxy_addr).await;
    old.write_all(b"1").await.unwrap();
    assert_eq!(read_exact_within(&mut old, 1, DEADLINE).await.unwrap(), b"1");

    // Resetting either direction closes the whole connection.
    setup.links.set_partition([down()], Partition::Reset);
    assert!(closed_within(&mut old, DEADLINE).await, "existing connection survived a reset");
    let mut refused = connect(setup.proxy_addr).await;
    assert!(closed_within(&mut refused, DEADLINE).await, "a new connection was relayed during a reset");

    setup.links.heal(None, false);
    let mut after = connect(setup.proxy_addr).await;
    after.write_all(b"2").await.unwrap();
    assert_eq!(read_exact_within(&mut after, 1, DEADLINE).await.expect("new connection after heal"), b"2");
}

#[tokio::test]
async fn sources_are_told_apart_by_ip() {
    let setup = setup(100, 0).await;
    setup.links.add_client_region("far", IpAddr::V4(Ipv4Addr::new(127, 0, 3, 2))).unwrap();
    assert_eq!(setup.links.identify(SENDER_IP), Endpoint::Node(1));
    assert_eq!(setup.links.identify(IpAddr::V4(Ipv4Addr::new(127, 0, 3, 2))), Endpoint::Client("far".into()));
    assert_eq!(setup.links.identify(IpAddr::V4(Ipv4Addr::LOCALHOST)), Endpoint::External);
    let view = setup.links.view(&Endpoint::Node(1), &Endpoint::Node(2));
    assert_eq!(view.delay, Duration::from_millis(50));
    assert_eq!(setup.links.view(&Endpoint::Client("far".into()), &Endpoint::Node(2)).delay, Duration::ZERO);
    assert_eq!(setup.links.view(&Endpoint::External, &Endpoint::Node(1)).delay, Duration::ZERO);
}
