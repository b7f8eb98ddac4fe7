//! etcd behind the lab's emulated WAN, one network namespace per member.
//!
//! The lab's proxies apply the latency of the link `source → destination`
//! and learn the source from a connection's source IP. geokv nodes bind
//! their outgoing connections to their own IP (`--outgoing-ip`); etcd (Go)
//! cannot, and on Linux every loopback connection to `127.x` leaves from
//! `127.0.0.1`. So each etcd member runs in its own network namespace,
//! joined to the host by a veth pair: whatever it dials leaves with its own
//! address, and the same proxy code as the lab's ([`geokv_lab::net`])
//! tells the members apart.
//!
//! Addresses, with `N` a per-run subnet byte (from the pid, so two benches
//! do not collide):
//!
//! | who | address |
//! |---|---|
//! | the host's proxy address (added to `lo`), every member's advertised peer and client URL | `10.N.0.1:port` |
//! | member *i* in its namespace (listens on 2379/2380), host side of its veth | `10.N.i.2`, `10.N.i.1` |
//! | the bench's clients in region *r* (added to `lo`) | `10.N.(100+r).1` |
//!
//! A member dials `10.N.0.1`, which its namespace routes to the host; the
//! host owns it, so no forwarding is needed, and replies go back over the
//! member's veth. Dropping an [`EtcdWan`] kills the members, stops the
//! proxies and deletes the namespaces (which deletes the veths) and the
//! addresses. Needs root (`ip netns`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use geokv_lab::RegionMatrix;
use geokv_lab::net::{Endpoint, Links, run_front_proxy};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::cluster::{LocalCluster, Member, START_TIMEOUT, System};

/// Port etcd listens on for clients inside each namespace.
const CLIENT_PORT: u16 = 2379;
/// Port etcd listens on for peers inside each namespace.
const PEER_PORT: u16 = 2380;

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("run `ip` (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Namespaces, veths and host addresses of one run; removed on drop.
struct Network {
    subnet: u8,
    namespaces: Vec<String>,
    host_addrs: Vec<String>,
}

impl Network {
    fn create(members: usize, regions: usize) -> Result<Network> {
        let subnet = 100 + (std::process::id() % 100) as u8;
        let tag = std::process::id() % 100_000;
        let mut net = Network { subnet, namespaces: Vec::new(), host_addrs: Vec::new() };
        let mut add_host = |addr: String| -> Result<()> {
            ip(&["addr", "add", &addr, "dev", "lo"])?;
            net.host_addrs.push(addr);
            Ok(())
        };
        add_host(format!("10.{subnet}.0.1/32"))?;
        for r in 0..regions {
            add_host(format!("10.{subnet}.{}.1/32", 101 + r))?;
        }
        for i in 1..=members {
            let ns = format!("gkb{tag}-{i}");
            let (host, inner) = (format!("gkb{tag}h{i}"), format!("gkb{tag}n{i}"));
            ip(&["netns", "add", &ns])?;
            net.namespaces.push(ns.clone());
            ip(&["link", "add", &host, "type", "veth", "peer", "name", &inner])?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            ip(&["addr", "add", &format!("10.{subnet}.{i}.1/24"), "dev", &host])?;
            ip(&["link", "set", &host, "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("10.{subnet}.{i}.2/24"), "dev", &inner])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "route", "add", "default", "via", &format!("10.{subnet}.{i}.1")])?;
        }
        Ok(net)
    }

    fn host(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet, 0, 1)
    }

    fn member_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet, i as u8, 2)
    }

    fn client_ip(&self, region: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet, 101 + region as u8, 1)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
        for addr in &self.host_addrs {
            let _ = ip(&["addr", "del", addr, "dev", "lo"]);
        }
    }
}

/// A 3-region etcd cluster behind emulated WAN links, one member per
/// region, member *i* in region *i* of the matrix.
pub struct EtcdWan {
    // Field order is drop order: members first, then proxies, then the network.
    pub cluster: LocalCluster,
    proxies: Vec<JoinHandle<()>>,
    /// The per-link table (the same type the lab uses).
    pub links: Arc<Links>,
    network: Network,
}

impl EtcdWan {
    /// Starts one member per region of `matrix` and waits for a leader.
    pub async fn start(bin: &Path, matrix: &RegionMatrix) -> Result<EtcdWan> {
        if !bin.exists() {
            bail!("no etcd at {} (apt-get install etcd-server)", bin.display());
        }
        let regions = matrix.regions().to_vec();
        let network =
            Network::create(regions.len(), regions.len()).context("create network namespaces (needs root)")?;
        let links = Links::new(matrix.clone(), 0, 0);
        for (r, region) in regions.iter().enumerate() {
            links
                .add_node(r as u64 + 1, region, IpAddr::V4(network.member_ip(r + 1)))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            links.add_client_region(region, IpAddr::V4(network.client_ip(r))).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let mut proxies = Vec::new();
        let mut fronts = Vec::new();
        for i in 1..=regions.len() {
            let mut pair = Vec::new();
            for port in [CLIENT_PORT, PEER_PORT] {
                let listener = TcpListener::bind((network.host(), 0)).await?;
                let front = listener.local_addr()?;
                let target = SocketAddr::new(IpAddr::V4(network.member_ip(i)), port);
                proxies.push(tokio::spawn(run_front_proxy(listener, target, Endpoint::Node(i as u64), links.clone())));
                pair.push(front);
            }
            fronts.push((pair[0], pair[1]));
        }
        let dir = tempfile::Builder::new().prefix("geokv-bench-etcd-wan-").tempdir()?;
        let initial = fronts
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{}=http://{peer}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("geokv-bench-wan-{}", std::process::id());
        let mut members = Vec::new();
        for (index, (client_front, peer_front)) in fronts.iter().enumerate() {
            let id = index as u64 + 1;
            let me = network.member_ip(index + 1);
            let mut command: Vec<String> =
                ["ip", "netns", "exec", &network.namespaces[index]].iter().map(|s| s.to_string()).collect();
            command.extend(crate::cluster::etcd_command(
                bin,
                id,
                &dir.path().join(format!("m{id}")),
                &format!("http://{me}:{CLIENT_PORT}"),
                &format!("http://{client_front}"),
                &format!("http://{me}:{PEER_PORT}"),
                &format!("http://{peer_front}"),
                &initial,
                &token,
            ));
            members.push(Member::new(id, *client_front, command, dir.path().join(format!("m{id}.log"))));
        }
        let cluster = LocalCluster::from_members(System::Etcd, members, dir)?;
        let wan = EtcdWan { cluster, proxies, links, network };
        wan.cluster.wait_ready(START_TIMEOUT).await?;
        Ok(wan)
    }

    /// The source IP of the bench's clients in region `r` (0-based).
    pub fn client_ip(&self, region: usize) -> IpAddr {
        IpAddr::V4(self.network.client_ip(region))
    }
}

impl Drop for EtcdWan {
    fn drop(&mut self) {
        for m in &mut self.cluster.members {
            m.kill();
        }
        for p in &self.proxies {
            p.abort();
        }
    }
}
