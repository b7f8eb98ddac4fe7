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
    /// (default 10 s). Writes are resent for at most
    /// [`MAX_WRITE_RETRY_WINDOW`](crate::MAX_WRITE_RETRY_WINDOW) (30 s, half
    /// the shortest session TTL a node accepts) even when this is longer.
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
    /// TLS to every node (default: none, plaintext). With it, `host:port`
    /// endpoints and the addresses learned from the shard map are dialled
    /// over TLS.
    pub tls: Option<ClientTls>,
    /// A bearer token sent with every request (default: none); see
    /// `kvctl user add`.
    pub token: Option<Token>,
}

/// How a client speaks TLS to the nodes.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientTls {
    /// PEM of the CA the nodes' certificates chain to.
    pub ca_certificate_pem: Vec<u8>,
    /// PEM of a client certificate and its key, to authenticate as the
    /// certificate's user (common name); `None`: no client certificate.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl ClientTls {
    /// Trust nodes whose certificates chain to this CA.
    pub fn new(ca_certificate_pem: impl Into<Vec<u8>>) -> ClientTls {
        ClientTls { ca_certificate_pem: ca_certificate_pem.into(), identity: None }
    }

    /// Reads the CA (and, if given, a client certificate and key) from PEM
    /// files, naming the file that cannot be read.
    pub fn from_files(
        ca: &std::path::Path,
        identity: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Result<ClientTls, Error> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))
        };
        let mut tls = ClientTls::new(read(ca)?);
        if let Some((cert, key)) = identity {
            tls.identity = Some((read(cert)?, read(key)?));
        }
        Ok(tls)
    }

    /// Presents this client certificate (PEM) and key (PEM).
    pub fn identity(mut self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> ClientTls {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    pub(crate) fn tonic(&self) -> tonic::transport::ClientTlsConfig {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_certificate_pem));
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        config
    }
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").field("identity", &self.identity.is_some()).finish_non_exhaustive()
    }
}

/// A bearer token; its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(pub String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
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
            tls: None,
            token: None,
        }
    }

    /// Sets [`ClientConfig::tls`].
    pub fn tls(mut self, tls: Option<ClientTls>) -> Self {
        self.tls = tls;
        self
    }

    /// Sets [`ClientConfig::token`].
    pub fn token(mut self, token: Option<String>) -> Self {
        self.token = token.map(Token);
        self
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
            tonic::transport::Endpoint::from_shared(endpoint_uri(endpoint, self.tls.is_some()))
                .map_err(|err| Error::Config(format!("endpoint {endpoint:?} is not host:port: {err}")))?;
            if endpoint.trim().starts_with("https://") && self.tls.is_none() {
                return fail(format!(
                    "endpoint {endpoint:?} is https but no CA is given: set the CA the nodes' certificates \
                     chain to (kvctl --cacert, ClientConfig::tls)"
                ));
            }
            if endpoint.trim().starts_with("http://") && self.tls.is_some() {
                return fail(format!(
                    "endpoint {endpoint:?} is http:// but TLS is configured: use https:// or host:port"
                ));
            }
        }
        if self.token.is_some() && self.tls.is_none() {
            return fail(
                "a token needs TLS (a CA: kvctl --cacert, ClientConfig::tls): without it the token would travel \
                 in the clear, and a plaintext node checks no credentials"
                    .into(),
            );
        }
        if let Some(token) = &self.token
            && (token.0.is_empty()
                || tonic::metadata::MetadataValue::<tonic::metadata::Ascii>::try_from(format!("Bearer {}", token.0))
                    .is_err())
        {
            return fail("the token is empty or not printable ASCII".into());
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

/// The URI tonic needs for a `host:port` address (`https` with TLS).
pub(crate) fn endpoint_uri(addr: &str, tls: bool) -> String {
    let addr = addr.trim();
    if addr.contains("://") {
        addr.to_string()
    } else if tls {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    }
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
        assert_eq!(endpoint_uri("127.0.0.1:7001", false), "http://127.0.0.1:7001");
        assert_eq!(endpoint_uri(" node1:7001 ", false), "http://node1:7001");
        assert_eq!(endpoint_uri("https://node1:7001", false), "https://node1:7001");
        assert_eq!(endpoint_uri("node1:7001", true), "https://node1:7001");
    }

    #[test]
    fn https_needs_a_ca_and_tokens_stay_out_of_debug() {
        let https = ClientConfig::new(["https://127.0.0.1:7001"]);
        assert!(https.clone().validate().unwrap_err().to_string().contains("no CA"));
        https.clone().tls(Some(ClientTls::new(b"pem".to_vec()))).validate().unwrap();
        let plain_with_tls = ClientConfig::new(["http://127.0.0.1:7001"]).tls(Some(ClientTls::new(b"pem".to_vec())));
        assert!(plain_with_tls.validate().is_err());
        let with_token = ClientConfig::new(["127.0.0.1:7001"]).token(Some("gk_secret".into()));
        assert!(with_token.clone().validate().unwrap_err().to_string().contains("needs TLS"));
        let with_token = with_token.tls(Some(ClientTls::new(b"pem".to_vec())));
        with_token.validate().unwrap();
        assert!(!format!("{with_token:?}").contains("gk_secret"));
        let tls = ClientConfig::new(["127.0.0.1:7001"]).tls(Some(ClientTls::new(b"pem".to_vec())));
        assert!(tls.token(Some("bad\ntoken".into())).validate().is_err());
    }
}
