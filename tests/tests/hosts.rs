//! Nodes on separate hosts, as docs/deploy.md deploys them: one network
//! namespace per node, the namespaces joined by a bridge (one LAN, no IP
//! forwarding), each node listening on 0.0.0.0:7001 of its own host and
//! advertising its host's address. Needs root and iproute2, as the
//! benchmark's etcd WAN does.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use geokv_tests::{DEFAULT_DEADLINE, wait_for};

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("iproute2's `ip` (root needed)");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// A bridge on this machine and a namespace per host, each with a veth on
/// the bridge; removed when dropped (with the node processes).
struct Lan {
    bridge: String,
    namespaces: Vec<String>,
    nodes: Vec<Option<Child>>,
}

impl Drop for Lan {
    fn drop(&mut self) {
        for child in self.nodes.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).status();
    }
}

impl Lan {
    /// `hosts` namespaces on 10.77.`subnet`.0/24 (host i at .i, this
    /// machine at .254).
    fn create(hosts: usize, subnet: u8, tag: u32) -> Lan {
        let mut lan = Lan { bridge: format!("gkt{tag}br"), namespaces: Vec::new(), nodes: Vec::new() };
        ip(&["link", "add", "name", &lan.bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("10.77.{subnet}.254/24"), "dev", &lan.bridge]);
        ip(&["link", "set", &lan.bridge, "up"]);
        for i in 1..=hosts {
            let ns = format!("gkt{tag}-{i}");
            let (outer, inner) = (format!("gkt{tag}h{i}"), format!("gkt{tag}n{i}"));
            ip(&["netns", "add", &ns]);
            lan.namespaces.push(ns.clone());
            ip(&["link", "add", &outer, "type", "veth", "peer", "name", &inner]);
            ip(&["link", "set", &inner, "netns", &ns]);
            ip(&["link", "set", &outer, "master", &lan.bridge]);
            ip(&["link", "set", &outer, "up"]);
            ip(&["-n", &ns, "addr", "add", &format!("10.77.{subnet}.{i}/24"), "dev", &inner]);
            ip(&["-n", &ns, "link", "set", &inner, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        lan
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_on_separate_hosts_bind_any_address_and_advertise_their_own() {
    let tag = std::process::id() % 100_000;
    let subnet = (std::process::id() % 250) as u8;
    let mut lan = Lan::create(3, subnet, tag);
    let dir = tempfile::tempdir().unwrap();
    let addr = |i: usize| format!("10.77.{subnet}.{i}:7001");
    let regions = ["us-east", "us-west", "eu-west"];
    let initial: Vec<String> = (1..=3).map(|i| format!("{i}={}@{}", addr(i), regions[i - 1])).collect();
    for i in 1..=3 {
        let log = std::fs::File::create(dir.path().join(format!("node-{i}.log"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &lan.namespaces[i - 1]])
            .arg(env!("CARGO_BIN_EXE_geokv-node"))
            .args(["--node-id", &i.to_string(), "--listen", "0.0.0.0:7001", "--advertise-addr", &addr(i)])
            .arg(format!("--initial-cluster={}", initial.join(",")))
            .arg(format!("--data-dir={}", dir.path().join(format!("node-{i}")).display()))
            .args(["--plaintext", "--request-timeout-ms=5000"])
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start a node in its namespace");
        lan.nodes.push(Some(child));
    }
    let endpoints: Vec<String> = (1..=3).map(addr).collect();
    let logs = || {
        (1..=3)
            .map(|i| std::fs::read_to_string(dir.path().join(format!("node-{i}.log"))).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    let client = wait_for("the cluster of three hosts to take a write", Duration::from_secs(60), || {
        let endpoints = endpoints.clone();
        async move {
            let mut config = geokv_client::ClientConfig::new(endpoints);
            config.deadline = Duration::from_secs(5);
            let client = config.connect().await.ok()?;
            client.put("h/hosts", "three").await.ok()?;
            Some(client)
        }
    })
    .await;
    // The map holds the advertised addresses, never the bind address.
    let map = client.refresh_shard_map().await.unwrap();
    let addrs: Vec<&str> = map.nodes.iter().map(|n| n.addr.as_str()).collect();
    assert_eq!(addrs, endpoints.iter().map(String::as_str).collect::<Vec<_>>(), "{}", logs());
    // Each host's node serves; every shard goes on with one host gone.
    let keys = ["a/1", "h/2", "p/3", "w/4"];
    for key in keys {
        client.put(key, "v").await.unwrap_or_else(|e| panic!("put {key}: {e}\n{}", logs()));
    }
    let mut gone = lan.nodes[2].take().unwrap();
    gone.kill().unwrap();
    gone.wait().unwrap();
    for key in keys {
        wait_for("a write with one host gone", DEFAULT_DEADLINE, || async {
            client.put(key, "after").await.ok().map(|_| ())
        })
        .await;
        let got = client.get(key).await.unwrap().map(|v| v.value);
        assert_eq!(got.as_deref(), Some(&b"after"[..]));
    }
    assert!(Path::new(&dir.path().join("node-1")).exists());
}
