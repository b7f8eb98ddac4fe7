//! Joining a running cluster (`geokv --join`): before the node opens its
//! storage, it asks a member to admit it and stores the id the meta shard
//! gave it, so that every later start (with the same flags) is that
//! same member. Only the first start asks.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use geokv_proto::admin::JoinClusterRequest;
use geokv_proto::admin::admin_client::AdminClient;
use tonic::Code;

use crate::config::Config;
use crate::tls::{Tls, TlsFiles};

/// How long a first start keeps asking the seeds before it gives up.
const JOIN_DEADLINE: Duration = Duration::from_secs(120);
/// Pause between rounds over the seeds.
const JOIN_RETRY: Duration = Duration::from_millis(500);
/// Bound on one seed's answer.
const JOIN_RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// The file in the data directory that holds a joined node's id.
pub fn id_file(data_dir: &Path) -> PathBuf {
    data_dir.join("node_id")
}

/// Sets `config.node_id` for a joining node: the stored id if it joined
/// before, otherwise the one a seed's meta shard assigns (stored durably
/// before this returns). A node that is not joining is left alone.
pub async fn resolve_node_id(config: &mut Config) -> anyhow::Result<()> {
    if !config.joins() {
        return Ok(());
    }
    let path = id_file(&config.data_dir);
    if let Some(id) = stored_id(&path)? {
        tracing::info!(node = id, "joined the cluster earlier: starting as that member");
        config.node_id = id;
        return Ok(());
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    if config.data_dir.join("db").exists() {
        anyhow::bail!(
            "{} holds a database but no node id: it is not a joined node's; start it as it was started \
             before, or join with an empty data directory",
            config.data_dir.display()
        );
    }
    let me = config.me();
    let request = JoinClusterRequest { addr: me.addr.clone(), region: me.region.clone(), zone: me.zone.clone() };
    let tls = TlsFiles::from_config(&config.tls).map(Tls::load).transpose()?;
    let id = ask_seeds(&config.join, request, tls.as_ref()).await?;
    store_id(&path, id)?;
    tracing::info!(node = id, addr = %me.addr, region = %me.region, "joined the cluster");
    config.node_id = id;
    Ok(())
}

fn stored_id(path: &Path) -> anyhow::Result<Option<u64>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let id = text
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|id| *id != 0)
                .with_context(|| format!("{} does not hold a node id: {text:?}", path.display()))?;
            Ok(Some(id))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes the id durably: a temporary file, fsynced, renamed over, and the
/// directory fsynced (a crash leaves the old state or the new, never half).
fn store_id(path: &Path, id: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    writeln!(f, "{id}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Asks each seed in turn until one admits this node; a refusal (the
/// cluster said no, for a reason that asking again does not change) ends
/// it at once, an unreachable or not-ready seed is tried again until
/// [`JOIN_DEADLINE`].
async fn ask_seeds(seeds: &[String], request: JoinClusterRequest, tls: Option<&Arc<Tls>>) -> anyhow::Result<u64> {
    let started = Instant::now();
    let mut last = String::from("no seed was tried");
    while started.elapsed() < JOIN_DEADLINE {
        let mut refused_certificates = 0;
        for seed in seeds {
            match ask(seed, request.clone(), tls).await {
                Ok(id) => return Ok(id),
                Err(status)
                    if matches!(
                        status.code(),
                        Code::FailedPrecondition
                            | Code::InvalidArgument
                            | Code::PermissionDenied
                            | Code::Unauthenticated
                    ) =>
                {
                    anyhow::bail!("the cluster refused to admit this node (asked {seed}): {}", status.message())
                }
                Err(status) => {
                    let cause = crate::error::status_chain(&status);
                    if crate::error::is_certificate_failure(&cause) {
                        refused_certificates += 1;
                    }
                    tracing::info!(%seed, %cause, "seed did not admit this node yet");
                    last = format!("{seed}: {cause}");
                }
            }
        }
        if refused_certificates == seeds.len() {
            anyhow::bail!(
                "every seed refused the TLS handshake (last: {last}): this node's certificate must come from \
                 the cluster's CA, and the seeds' from the CA in tls.ca_file"
            );
        }
        tokio::time::sleep(JOIN_RETRY).await;
    }
    anyhow::bail!("no seed admitted this node within {JOIN_DEADLINE:?} (last: {last})")
}

async fn ask(seed: &str, request: JoinClusterRequest, tls: Option<&Arc<Tls>>) -> Result<u64, tonic::Status> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{seed}"))
        .map_err(|e| tonic::Status::invalid_argument(format!("seed {seed:?}: {e}")))?
        .connect_timeout(JOIN_RPC_TIMEOUT)
        .timeout(JOIN_RPC_TIMEOUT);
    let channel = crate::raft::network::dial_lazy(endpoint, tls, None);
    let reply = AdminClient::new(channel).join_cluster(request).await?;
    Ok(reply.into_inner().node_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_stored_durably_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = id_file(dir.path());
        assert_eq!(stored_id(&path).unwrap(), None);
        store_id(&path, 7).unwrap();
        assert_eq!(stored_id(&path).unwrap(), Some(7));
        std::fs::write(&path, "seven\n").unwrap();
        let err = stored_id(&path).unwrap_err().to_string();
        assert!(err.contains("does not hold a node id"), "{err}");
    }
}
