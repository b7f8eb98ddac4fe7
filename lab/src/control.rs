//! The control API: how `geokv-lab partition|heal|...` in another terminal
//! steers a running `geokv-lab up`.
//!
//! Protocol: one TCP connection per request on a loopback port (recorded as
//! `control_addr` in `<data-dir>/lab.json`). The client writes one
//! [`ControlRequest`] as JSON and half-closes; the server answers one
//! [`ControlResponse`] as JSON and closes. Requests are bounded
//! ([`MAX_REQUEST_BYTES`]), as are concurrent connections
//! ([`MAX_CONTROL_CONNECTIONS`]) and the time a request may take to arrive.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::lab::{FaultShape, Lab};
use crate::net::{Endpoint, Partition};
use crate::{Error, Result};

/// Largest request accepted, in bytes.
pub const MAX_REQUEST_BYTES: u64 = 64 * 1024;
/// Largest response a client reads, in bytes.
pub const MAX_RESPONSE_BYTES: u64 = 4 * 1024 * 1024;
/// Control connections served at once; more wait for a slot.
pub const MAX_CONTROL_CONNECTIONS: usize = 8;
/// Time a request may take to arrive.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a `TransferLeader` request waits for the new leader.
pub const TRANSFER_LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a client waits for an answer (leader lookups poll the nodes).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// One operation on a running lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    Status,
    Partition {
        shape: FaultShape,
        mode: Partition,
    },
    /// Heal between `from` and `to` (both ways), or everything when absent.
    Heal {
        from: Option<Vec<Endpoint>>,
        to: Option<Vec<Endpoint>>,
        latency: bool,
    },
    Latency {
        from: Vec<Endpoint>,
        to: Vec<Endpoint>,
        one_way: bool,
        delay_ms: Option<u64>,
        jitter_ms: Option<u64>,
    },
    Kill {
        node: u64,
    },
    Restart {
        node: u64,
    },
    Pause {
        node: u64,
    },
    Resume {
        node: u64,
    },
    /// Move the leadership of a shard to a node, and wait until it holds.
    TransferLeader {
        shard: u64,
        to: u64,
    },
    /// Drain a node (its replicas move to other nodes).
    Drain {
        node: u64,
    },
    /// Remove a node from the cluster for good; `force` drains it first.
    RemoveNode {
        node: u64,
        #[serde(default)]
        force: bool,
    },
    /// SIGKILL every node of a region.
    KillRegion {
        region: String,
    },
    /// Start a new node in a region that joins the cluster.
    AddNode {
        region: String,
    },
    /// Stop the lab; with `wipe`, delete what it wrote to its data directory.
    Down {
        wipe: bool,
    },
}

/// The answer: `ok` with a `result`, or an `error` message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControlResponse {
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub result: Value,
}

/// Serves the control API on `listener` until aborted. A `Down` request
/// is answered, then published on `down` (`Some(wipe)`).
pub async fn serve(lab: Arc<Lab>, listener: TcpListener, down: watch::Sender<Option<bool>>) {
    let slots = Arc::new(Semaphore::new(MAX_CONTROL_CONNECTIONS));
    let down = Arc::new(down);
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (lab, down) = (lab.clone(), down.clone());
        tokio::spawn(async move {
            handle(&lab, stream, &down).await;
            drop(permit);
        });
    }
}

async fn handle(lab: &Lab, mut stream: TcpStream, down: &watch::Sender<Option<bool>>) {
    let mut text = Vec::new();
    let mut limited = (&mut stream).take(MAX_REQUEST_BYTES + 1);
    let read = limited.read_to_end(&mut text);
    let response = match tokio::time::timeout(REQUEST_READ_TIMEOUT, read).await {
        Err(_) => failure("the request did not arrive in time".into()),
        Ok(Err(err)) => failure(format!("reading the request: {err}")),
        Ok(Ok(_)) if text.len() as u64 > MAX_REQUEST_BYTES => {
            failure(format!("request above {MAX_REQUEST_BYTES} bytes"))
        }
        Ok(Ok(_)) => match serde_json::from_slice::<ControlRequest>(&text) {
            Err(err) => failure(format!("bad request: {err}")),
            Ok(request) => {
                tracing::info!(?request, "control request");
                let wipe = match &request {
                    ControlRequest::Down { wipe } => Some(*wipe),
                    _ => None,
                };
                let response = match execute(lab, request).await {
                    Ok(result) => ControlResponse { ok: true, error: None, result },
                    Err(err) => failure(err.to_string()),
                };
                if wipe.is_some() {
                    down.send_replace(wipe);
                }
                response
            }
        },
    };
    let text = serde_json::to_vec(&response).expect("responses serialize");
    let _ = stream.write_all(&text).await;
    let _ = stream.shutdown().await;
}

fn failure(error: String) -> ControlResponse {
    ControlResponse { ok: false, error: Some(error), result: Value::Null }
}

/// Runs one request against the lab.
pub async fn execute(lab: &Lab, request: ControlRequest) -> Result<Value> {
    let links_json =
        |links: Vec<(Endpoint, Endpoint)>| json!(links.iter().map(|(a, b)| format!("{a}->{b}")).collect::<Vec<_>>());
    Ok(match request {
        ControlRequest::Status => serde_json::to_value(lab.status().await).expect("status serializes"),
        ControlRequest::Partition { shape, mode } => links_json(lab.partition(&shape, mode).await?),
        ControlRequest::Heal { from: None, to: None, latency } => {
            lab.links().heal(None, latency);
            Value::Null
        }
        ControlRequest::Heal { from, to, latency } => {
            let (Some(from), Some(to)) = (from, to) else {
                return Err(Error::Config("heal needs both --from and --to, or neither".into()));
            };
            lab.heal_between(&from, &to, latency)?;
            Value::Null
        }
        ControlRequest::Latency { from, to, one_way, delay_ms, jitter_ms } => {
            links_json(lab.set_latency(&from, &to, one_way, delay_ms, jitter_ms)?)
        }
        ControlRequest::Kill { node } => json!(lab.kill(node)?),
        ControlRequest::Restart { node } => json!(lab.restart(node)?),
        ControlRequest::Pause { node } => json!(lab.pause(node)?),
        ControlRequest::Resume { node } => json!(lab.resume(node)?),
        ControlRequest::TransferLeader { shard, to } => {
            json!(lab.transfer_leader(shard, to, TRANSFER_LEADER_TIMEOUT).await?)
        }
        ControlRequest::Drain { node } => json!({ "map_version": lab.drain(node).await? }),
        ControlRequest::RemoveNode { node, force } => json!({ "state": lab.remove_node(node, force).await? }),
        ControlRequest::KillRegion { region } => json!({ "killed": lab.kill_region(&region)? }),
        ControlRequest::AddNode { region } => json!({ "node": lab.add_node(&region).await? }),
        ControlRequest::Down { .. } => Value::Null,
    })
}

/// Sends one request to the lab whose control API is at `addr`.
pub async fn call(addr: SocketAddr, request: &ControlRequest) -> Result<Value> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.map_err(Error::io(format!(
            "connect to the lab's control port {addr} (is `geokv-lab up` still running?)"
        )))?;
        let text = serde_json::to_vec(request).expect("requests serialize");
        stream.write_all(&text).await.map_err(Error::io("send the request"))?;
        stream.shutdown().await.map_err(Error::io("send the request"))?;
        let mut answer = Vec::new();
        stream.take(MAX_RESPONSE_BYTES).read_to_end(&mut answer).await.map_err(Error::io("read the answer"))?;
        serde_json::from_slice::<ControlResponse>(&answer)
            .map_err(|e| Error::State(format!("the lab's answer is not understood: {e}")))
    };
    let response = tokio::time::timeout(RESPONSE_TIMEOUT, exchange)
        .await
        .map_err(|_| Error::Timeout(format!("no answer from the lab within {RESPONSE_TIMEOUT:?}")))??;
    if response.ok {
        Ok(response.result)
    } else {
        Err(Error::State(response.error.unwrap_or_else(|| "the lab refused the request".into())))
    }
}
