//! Transport security: TLS (rustls, ring) on the node's listener and on
//! every connection it makes to a peer, with certificates that rotate
//! without a restart.
//!
//! - **Material.** The cluster CA, this node's certificate and its key,
//!   read from the files `[tls]` names. Both directions use them: the
//!   listener presents the node's certificate and accepts client
//!   certificates that chain to the CA (optional: clients may use a bearer
//!   token instead); a peer connection verifies the peer's server
//!   certificate against the CA and the dialled address, and presents the
//!   node's certificate as its client certificate (mTLS).
//! - **Who is calling.** The accept loop completes the handshake before
//!   tonic sees the connection and records the verified client
//!   certificate's common name in [`ConnInfo`] (a request extension): `node`
//!   is a cluster member (see [`PEER_COMMON_NAME`]), anything else a user.
//!   [`crate::auth`] decides what each may call.
//! - **Rotation.** [`Tls::watch`] polls the files' modification times every
//!   [`RELOAD_POLL`] and reloads at once on SIGHUP. New handshakes, in and
//!   out, use the new material; established connections keep theirs. A
//!   reload that fails (half-written file, key that does not match) is
//!   logged and the old material stays.
//!
//! What this module does not do: decide permissions ([`crate::auth`]),
//! check revocation (there is no CRL or OCSP: rotate the CA to revoke), or
//! encrypt data at rest.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_stream::wrappers::ReceiverStream;

use crate::config::TlsConfig;

/// The common name of every node certificate: a client certificate with
/// this name is a cluster member (CockroachDB's convention). User
/// certificates carry the user's name.
pub const PEER_COMMON_NAME: &str = "node";

/// How often the certificate files are checked for changes.
pub const RELOAD_POLL: Duration = Duration::from_secs(1);

/// The longest a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once; further connections wait in the
/// kernel's accept queue.
pub const MAX_PENDING_HANDSHAKES: usize = 256;

/// Accepted connections handed to the gRPC server but not yet taken.
const ACCEPTED_QUEUE: usize = 64;

/// The three files of `[tls]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// The files of a validated config; `None` in plaintext.
    pub fn from_config(c: &TlsConfig) -> Option<TlsFiles> {
        match (&c.ca_file, &c.cert_file, &c.key_file) {
            (Some(ca), Some(cert), Some(key)) if !c.plaintext => {
                Some(TlsFiles { ca: ca.clone(), cert: cert.clone(), key: key.clone() })
            }
            _ => None,
        }
    }

    fn stamps(&self) -> [Option<SystemTime>; 3] {
        [&self.ca, &self.cert, &self.key].map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    }
}

/// One loaded set of files, as rustls configurations for both directions.
struct Material {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    /// When this node's certificate stops being valid (seconds since the
    /// Unix epoch), for the start and reload log lines.
    not_after_unix_s: i64,
}

/// The node's TLS material, reloadable.
pub struct Tls {
    files: TlsFiles,
    current: RwLock<Arc<Material>>,
    stamps: Mutex<[Option<SystemTime>; 3]>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads and checks the files. Fails, naming the file, when one is
    /// missing or unreadable, holds no certificate or key, the key does not
    /// match the certificate, or the certificate is not a node certificate.
    pub fn load(files: TlsFiles) -> anyhow::Result<Arc<Tls>> {
        let stamps = files.stamps();
        let material = load_material(&files)?;
        Ok(Arc::new(Tls { files, current: RwLock::new(Arc::new(material)), stamps: Mutex::new(stamps) }))
    }

    fn material(&self) -> Arc<Material> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The listener's configuration as of now.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.material().server.clone()
    }

    /// The configuration for dialling peers as of now.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.material().client.clone()
    }

    /// When this node's certificate expires, in seconds since the Unix epoch.
    pub fn not_after_unix_s(&self) -> i64 {
        self.material().not_after_unix_s
    }

    /// Reads the files again. `false` when they failed to load (the old
    /// material stays; the cause is logged), `true` when the new material is
    /// in use.
    pub fn reload(&self) -> bool {
        let stamps = self.files.stamps();
        *self.stamps.lock().unwrap_or_else(|p| p.into_inner()) = stamps;
        match load_material(&self.files) {
            Ok(material) => {
                let not_after = material.not_after_unix_s;
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(material);
                tracing::info!(cert = %self.files.cert.display(), not_after_unix_s = not_after, "TLS certificates reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(
                    cause = format!("{e:#}"),
                    "TLS certificates not reloaded; the previous ones stay in use"
                );
                false
            }
        }
    }

    /// Reloads whenever a file's modification time changes (polled every
    /// [`RELOAD_POLL`]) or SIGHUP arrives; ends when `self` is the last
    /// reference left.
    pub fn watch(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                #[cfg(unix)]
                let sighup = async {
                    match hangup.as_mut() {
                        Some(h) => h.recv().await.is_some(),
                        None => std::future::pending().await,
                    }
                };
                #[cfg(not(unix))]
                let sighup = std::future::pending::<bool>();
                let by_signal = tokio::select! {
                    _ = tokio::time::sleep(RELOAD_POLL) => false,
                    got = sighup => got,
                };
                let Some(tls) = weak.upgrade() else { return };
                let changed = *tls.stamps.lock().unwrap_or_else(|p| p.into_inner()) != tls.files.stamps();
                if by_signal || changed {
                    tls.reload();
                }
            }
        });
    }
}

fn load_material(files: &TlsFiles) -> anyhow::Result<Material> {
    let read_certs = |path: &Path| -> anyhow::Result<Vec<CertificateDer<'static>>> {
        let certs = CertificateDer::pem_file_iter(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{} is not PEM", path.display()))?;
        anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", path.display());
        Ok(certs)
    };
    let ca = read_certs(&files.ca)?;
    let chain = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("cannot read a private key from {}", files.key.display()))?;
    let mut roots = RootCertStore::empty();
    for cert in ca {
        roots
            .add(cert)
            .with_context(|| format!("{} holds a certificate rustls cannot use as a CA", files.ca.display()))?;
    }
    let roots = Arc::new(roots);
    let (name, not_after_unix_s) = describe(&chain[0])
        .with_context(|| format!("{} holds a certificate that does not parse", files.cert.display()))?;
    anyhow::ensure!(
        name.as_deref() == Some(PEER_COMMON_NAME),
        "{} has common name {:?}, not {PEER_COMMON_NAME:?}: peers would take this node for a client \
         (make node certificates with `geokv certs node`)",
        files.cert.display(),
        name.unwrap_or_default()
    );
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .allow_unauthenticated()
        .build()
        .context("cannot build the client certificate verifier")?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .with_context(|| format!("{} does not match {}", files.key.display(), files.cert.display()))?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .with_context(|| format!("{} does not match {}", files.key.display(), files.cert.display()))?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Material { server: Arc::new(server), client: Arc::new(client), not_after_unix_s })
}

/// A certificate's subject common name and its expiry (Unix seconds).
pub fn describe(cert: &[u8]) -> anyhow::Result<(Option<String>, i64)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|e| anyhow::anyhow!("{e}"))?;
    let name = parsed.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_string);
    Ok((name, parsed.validity().not_after.timestamp()))
}

/// What the node knows of a connection, in every request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The common name of the client certificate the handshake verified
    /// against the cluster CA; `None` without one.
    pub peer_name: Option<String>,
}

enum ConnIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// An accepted connection, plaintext or after its TLS handshake.
pub struct Conn {
    io: ConnIo,
    info: ConnInfo,
    _open: Open,
}

/// Counts a connection in the node's `geokv_connections` gauge while it
/// lives.
struct Open(prometheus_client::metrics::gauge::Gauge);

impl Open {
    fn new(metrics: &crate::metrics::Metrics) -> Open {
        metrics.connections_accepted.inc();
        metrics.connections.inc();
        Open(metrics.connections.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

macro_rules! delegate {
    ($self:ident, $io:ident => $call:expr) => {
        match &mut $self.get_mut().io {
            ConnIo::Plain($io) => {
                let $io = Pin::new($io);
                $call
            }
            ConnIo::Tls($io) => {
                let $io = Pin::new($io.as_mut());
                $call
            }
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            ConnIo::Plain(io) => io.is_write_vectored(),
            ConnIo::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_shutdown(cx))
    }
}

/// Accepts connections on `listener` (TCP_NODELAY set: Nagle plus delayed
/// ACKs would add ~40 ms to small replies) and, with `tls`, completes each
/// handshake in its own task, bounded by [`HANDSHAKE_TIMEOUT`] and
/// [`MAX_PENDING_HANDSHAKES`]. A failed handshake (no or a foreign
/// certificate chain, expired certificate, plaintext client) is logged with
/// the remote address and dropped. Ends, closing the listener, when the
/// stream is dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    metrics: Arc<crate::metrics::Metrics>,
) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(ACCEPTED_QUEUE);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = tx.closed() => return,
            };
            let (socket, remote) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::warn!(cause = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if let Err(e) = socket.set_nodelay(true) {
                tracing::warn!(cause = %e, "cannot set TCP_NODELAY on an accepted connection");
            }
            let Some(tls) = &tls else {
                let info = ConnInfo { remote: Some(remote), tls: false, peer_name: None };
                let conn = Conn { io: ConnIo::Plain(socket), info, _open: Open::new(&metrics) };
                if tx.send(Ok(conn)).await.is_err() {
                    return;
                }
                continue;
            };
            let Ok(permit) = handshakes.clone().acquire_owned().await else { return };
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
            let tx = tx.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::info!(%remote, cause = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(%remote, "TLS handshake timed out");
                        return;
                    }
                };
                let peer_name = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|cert| describe(cert).ok())
                    .and_then(|(name, _)| name);
                let info = ConnInfo { remote: Some(remote), tls: true, peer_name };
                let conn = Conn { io: ConnIo::Tls(Box::new(stream)), info, _open: Open::new(&metrics) };
                let _ = tx.send(Ok(conn)).await;
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Dials peers over TLS with the node's current material (a tower
/// connector for tonic's `Endpoint`): the peer's server certificate must
/// chain to the cluster CA and name the dialled host.
#[derive(Clone)]
pub struct PeerConnector {
    pub tls: Arc<Tls>,
    pub local_ip: Option<IpAddr>,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl tower::Service<http::Uri> for PeerConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = BoxFuture<io::Result<Self::Response>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.tls.client_config());
        let local_ip = self.local_ip;
        Box::pin(async move {
            let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{what} in {uri}"));
            let host = uri.host().ok_or_else(|| bad("no host"))?.trim_start_matches('[').trim_end_matches(']');
            let port = uri.port_u16().ok_or_else(|| bad("no port"))?;
            let name = ServerName::try_from(host.to_string()).map_err(|_| bad("not a host name"))?;
            let addr = tokio::net::lookup_host((host, port))
                .await?
                .next()
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address")))?;
            let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
            if let Some(ip) = local_ip {
                socket.bind(SocketAddr::new(ip, 0))?;
            }
            let stream = socket.connect(addr).await?;
            stream.set_nodelay(true)?;
            let tls = connector.connect(name, stream).await?;
            Ok(TokioIo::new(tls))
        })
    }
}
