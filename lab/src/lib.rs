//! geokv-lab: a multi-region geokv cluster on one machine, behind an
//! emulated WAN, with fault injection.
//!
//! # What it emulates
//!
//! A geo-replicated store is shaped by the round trips between its regions:
//! a write commits after the leader hears from a quorum, so in the default
//! three-region matrix (`regions/3-region.toml`: us-east, us-west, eu-west)
//! a write led from us-east costs about 64 ms, its RTT to eu-west. This
//! machine has no kernel traffic shaping, so the lab builds the WAN in user
//! space: every node is a real, separate OS process running the real node
//! code (`geokv-lab node ...` runs [`geokv_server::cli::main_from`], or
//! `--geokv-bin` runs an external `geokv`), and every byte between two
//! nodes, or between a client and a node, crosses a TCP proxy in the lab
//! process that delays it by half the RTT between the two regions, plus
//! optional jitter, in each direction. The same proxies cut links
//! (partitions, one way or both, by stalling or by reset), and the lab sends
//! SIGKILL, SIGSTOP and SIGCONT to the node processes.
//!
//! # How a proxy knows who is talking
//!
//! Linux routes all of 127.0.0.0/8 to the loopback interface, so the lab
//! gives everyone their own address:
//!
//! | who | address |
//! |---|---|
//! | node *i*, advertised (its front proxy; in `--initial-cluster`) | `127.0.1.i:P` |
//! | node *i*, real listener and source of its outgoing connections (`--outgoing-ip`) | `127.0.2.i:P` |
//! | clients in the region with index *r* (1-based) | `127.0.3.r` |
//!
//! Everyone dials advertised addresses only, so every connection to node *j*
//! lands on *j*'s front proxy, which reads the connection's **source IP**: a
//! node's own IP means that node (and its region), a region's client IP a
//! client in that region, anything else (`127.0.0.1`, i.e. a client that did
//! not pick a source) is *external*: no added latency and not cut by the
//! named fault shapes. The proxy then applies the link `source → j` to the
//! bytes going up and `j → source` to the bytes coming back. Nothing in geokv's
//! routing changes: leader hints and redirects name advertised addresses, so
//! they keep going through the proxies. Clients choose their region with
//! [`geokv_client::ClientConfig::local_address`] (`kvctl --source-ip`).
//!
//! # What it cannot emulate
//!
//! - **Bandwidth.** Bytes are delayed, never throttled: a 1 MiB value
//!   crosses "the Atlantic" as fast as loopback allows, plus the RTT/2.
//! - **Packet loss, duplication and reordering at the IP level.** The
//!   proxies sit above TCP: they delay and hold whole chunks in order, so
//!   TCP retransmission, congestion windows and slow start never happen. A
//!   stall is the closest thing to a lossy link, a reset to a broken one.
//! - **Kernel effects:** socket buffers of a real path, NIC queues, SYN
//!   timeouts across a dead path (a stalled link still *accepts* connections
//!   at once; a node the lab killed refuses them, as a dead process's port
//!   does, but a node that exited on its own has its proxy reset what it
//!   accepts), DNS, clock skew between
//!   machines (all processes share one clock), and CPU: every node shares this
//!   machine's cores, so load on one slows all.
//! - **Intra-region distance** is 0 by default (`intra_region_rtt_ms`).
//!
//! # Hygiene
//!
//! Every queue, connection count and wait is bounded (constants in [`net`],
//! [`control`], [`lab`]). Node processes stay in the lab's process group (a
//! terminal Ctrl-C reaches them), die with the lab through
//! `PR_SET_PDEATHSIG` even if the lab is SIGKILLed ([`process`]), and are
//! killed when the [`Lab`] is dropped (also on panic) or by `geokv-lab down`.
//!
//! # Using it
//!
//! From the shell: `geokv-lab up`, then `geokv-lab status|partition|heal|
//! latency|kill|restart|pause|resume|down` from another terminal (see
//! `docs/lab.md`). From Rust:
//!
//! ```no_run
//! use geokv_lab::{Lab, LabConfig, NodeProgram};
//! # async fn example() -> geokv_lab::Result<()> {
//! let program = NodeProgram::Lab("target/debug/geokv-lab".into());
//! let lab = Lab::start(LabConfig::new("/tmp/lab", program)).await?;
//! let client = lab.client_for_region("us-east").await?;
//! client.put("greeting", "hello").await?;
//! lab.isolate_region("eu-west").await?;
//! lab.heal();
//! # Ok(()) }
//! ```

pub mod control;
mod error;
pub mod lab;
pub mod net;
pub mod process;
pub mod regions;

pub use error::{Error, Result};
pub use lab::{ClockFault, FaultShape, Lab, LabConfig, LabStatus, NodeProgram};
pub use net::{Endpoint, Link, LinkFault, Links, Partition};
pub use process::ProcessState;
pub use regions::RegionMatrix;
