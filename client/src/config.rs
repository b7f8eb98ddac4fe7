//! Client configuration: where to find the cluster, and the limits on every
//! retry loop.

use std::net::IpAddr;
use std::time::Duration;

use crate::{Client, Error};

/// The nodes of the local development cluster (`geokv dev`).
pub const DEV_ENDPOINTS: [&str; 3] = ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"];

/// How a [`Client`] finds the cluster and how hard it tries.
///
/// Build one with [`ClientConfig::new`] and the chained setters, then
/// [`ClientConfig::connect`]. [`ClientConfig::validate`] (run by `connect`)
/// rejects zero limits and inconsistent timeouts.
///
/// Invariants after validation:
/// - at least one endpoint, each a `host:port` (or a `http://` URI);
/// - `max_attempts >= 1`; every timeout is non-zero;
/// - `backoff_initial <= backoff_max`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Seed nodes, `host:port`. Any one reachable node is enough: the rest of
    /// the cluster is learned from its shard map.
    pub endpoints: Vec<String>,
    /// Most RPCs one operation may send, retries included (default 40: with
    /// the default backoff this outlasts a WAN election, so the deadline is
    /// the bound that normally ends a retry loop).
    pub max_attempts: u32,
    /// Total time one operation may take, retries and backoff included
    /// (default 10 s).
    pub deadline: Duration,
    /// Time one RPC may take before it is abandoned (default 5 s). A write
    /// whose RPC times out has an unknown outcome and is retried with the same
    /// session.
    pub rpc_timeout: Duration,
    /// Time to establish a TCP connection to a node (default 2 s). A failed
    /// connection means the request was not sent.
    pub connect_timeout: Duration,
    /// The first backoff delay (default 20 ms); it doubles per retry.
    pub backoff_initial: Duration,
    /// The largest backoff delay (default 250 ms), before ±50% jitter: small
    /// enough that a client finds a new leader soon after an election ends.
    pub backoff_max: Duration,
    /// Pairs per scan page asked of the server; 0 lets the server choose
    /// (default 0).
    pub scan_page_limit: u32,
    /// Local IP every connection is made from (default: none, the OS
    /// chooses). The lab tells client regions apart by this source address.
    pub local_address: Option<IpAddr>,
    /// The region this client runs in (default: none). Reads that need not
    /// go to the leader (follower, bounded, stale) go to a replica in this
    /// region first, then to the leader, then to the other replicas.
    pub region: Option<String>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig::new(DEV_ENDPOINTS)
    }
}

impl ClientConfig {
    /// A configuration with default limits for these seed endpoints.
    pub fn new<I, S>(endpoints: I) -> ClientConfig
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            max_attempts: 40,
            deadline: Duration::from_secs(10),
            rpc_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(250),
            scan_page_limit: 0,
            local_address: None,
            region: None,
        }
    }

    /// Sets [`ClientConfig::max_attempts`].
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// Sets [`ClientConfig::deadline`].
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Sets [`ClientConfig::rpc_timeout`].
    pub fn rpc_timeout(mut self, rpc_timeout: Duration) -> Self {
        self.rpc_timeout = rpc_timeout;
        self
    }

    /// Sets [`ClientConfig::connect_timeout`].
    pub fn connect_timeout(mut self, connect_timeout: Duration) -> Self {
        self.connect_timeout = connect_timeout;
        self
    }

    /// Sets [`ClientConfig::backoff_initial`] and [`ClientConfig::backoff_max`].
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max;
        self
    }

    /// Sets [`ClientConfig::scan_page_limit`].
    pub fn scan_page_limit(mut self, scan_page_limit: u32) -> Self {
        self.scan_page_limit = scan_page_limit;
        self
    }

    /// Sets [`ClientConfig::region`].
    pub fn region(mut self, region: Option<String>) -> Self {
        self.region = region;
        self
    }

    /// Sets [`ClientConfig::local_address`].
    pub fn local_address(mut self, local_address: Option<IpAddr>) -> Self {
        self.local_address = local_address;
        self
    }

    /// Checks the invariants listed on the type.
    pub fn validate(&self) -> Result<(), Error> {
        let fail = |message: String| Err(Error::Config(message));
        if self.endpoints.is_empty() {
            return fail("no endpoints: give at least one node as host:port".into());
        }
        for endpoint in &self.endpoints {
            if endpoint.trim().is_empty() {
                return fail("empty endpoint: give nodes as host:port".into());
            }
            tonic::transport::Endpoint::from_shared(endpoint_uri(endpoint))
                .map_err(|err| Error::Config(format!("endpoint {endpoint:?} is not host:port: {err}")))?;
        }
        if self.max_attempts == 0 {
            return fail("max_attempts must be at least 1".into());
        }
        let timeouts = [
            ("deadline", self.deadline),
            ("rpc_timeout", self.rpc_timeout),
            ("connect_timeout", self.connect_timeout),
            ("backoff_initial", self.backoff_initial),
            ("backoff_max", self.backoff_max),
        ];
        if let Some((name, _)) = timeouts.iter().find(|(_, value)| value.is_zero()) {
            return fail(format!("{name} must be above zero"));
        }
        if self.backoff_initial > self.backoff_max {
            return fail(format!(
                "backoff_initial {:?} is above backoff_max {:?}",
                self.backoff_initial, self.backoff_max
            ));
        }
        Ok(())
    }

    /// Validates the configuration and connects (see [`Client::connect`]).
    pub async fn connect(self) -> Result<Client, Error> {
        Client::with_config(self).await
    }
}

/// The URI tonic needs for a `host:port` address.
pub(crate) fn endpoint_uri(addr: &str) -> String {
    let addr = addr.trim();
    if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        ClientConfig::default().validate().unwrap();
        assert_eq!(ClientConfig::default().endpoints, DEV_ENDPOINTS);
    }

    #[test]
    fn nonsense_is_refused() {
        let base = ClientConfig::new(["127.0.0.1:7001"]);
        assert!(ClientConfig::new(Vec::<String>::new()).validate().is_err());
        assert!(ClientConfig::new([""]).validate().is_err());
        assert!(base.clone().max_attempts(0).validate().is_err());
        assert!(base.clone().deadline(Duration::ZERO).validate().is_err());
        let inverted = base.backoff(Duration::from_secs(2), Duration::from_secs(1));
        assert!(inverted.validate().is_err());
    }

    #[test]
    fn endpoint_uris() {
        assert_eq!(endpoint_uri("127.0.0.1:7001"), "http://127.0.0.1:7001");
        assert_eq!(endpoint_uri(" node1:7001 "), "http://node1:7001");
        assert_eq!(endpoint_uri("https://node1:7001"), "https://node1:7001");
    }
}
