//! `geokv dev`, README's first command: a three-node cluster in one process
//! that serves and stops cleanly on SIGTERM/Ctrl-C, even after load (its
//! nodes hold connections to each other).

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use geokv_tests::wait_for;

/// A base port with the two following ports free too.
fn three_free_ports() -> u16 {
    for _ in 0..50 {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = first.local_addr().unwrap().port();
        if base > u16::MAX - 3 {
            continue;
        }
        let rest: Vec<_> = (1..3).map(|i| TcpListener::bind(("127.0.0.1", base + i))).collect();
        if rest.iter().all(Result::is_ok) {
            return base;
        }
    }
    panic!("no three consecutive free ports");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_cluster_serves_and_stops_cleanly_after_load() {
    let dir = tempfile::tempdir().unwrap();
    let port = three_free_ports();
    let mut child = Command::new(env!("CARGO_BIN_EXE_geokv-node"))
        .args(["dev", "--metrics-port", "0", "--port", &port.to_string(), "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn geokv dev");
    let endpoints: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", port + i)).collect();
    let client = wait_for("the dev cluster to answer", Duration::from_secs(60), || {
        let endpoints = endpoints.clone();
        async move { geokv_client::Client::connect(endpoints).await.ok() }
    })
    .await;
    let mut writers = Vec::new();
    for w in 0..8 {
        let client = client.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..25 {
                let key = format!("{}-{w}-{i}", ["a", "h", "p", "x"][i % 4]);
                client.put(key.as_bytes(), b"v").await.expect("put");
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(client.get(b"h-0-1").await.unwrap().unwrap().value, b"v");

    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("geokv dev did not stop within 20 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "clean exit, got {status:?}");
}
