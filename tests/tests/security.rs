//! TLS, mTLS between members, authentication and roles, on real `geokv`
//! processes (docs/security.md).
//!
//! - A TLS cluster replicates (every write commits over mTLS between the
//!   nodes) and serves a client with root's certificate.
//! - A client with no credentials, a wrong token or a certificate for a user
//!   that does not exist is refused UNAUTHENTICATED; a `read` token cannot
//!   write; a token limited to `app/` cannot read `other/` nor scan past its
//!   prefix; a removed user's token stops working; none of these refusals
//!   leak data.
//! - Raft.Propose, Raft.InstallSnapshotStream, Raft.SnapshotProgress and Admin.JoinCluster refuse a
//!   client, even root, with PERMISSION_DENIED.
//! - A node whose certificate comes from another CA, or has expired, cannot
//!   join; a member restarted with one cannot replicate.
//! - Certificates rotate (a new CA, new node certificates) without a
//!   restart.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use geokv_client::{Client, ClientConfig, ClientTls, Error, Grant};
use geokv_server::certs::{self, Validity};
use geokv_tests::{ClusterOptions, DEFAULT_DEADLINE, TestCluster, wait_for};
use tonic::Code;

fn tls_cluster() -> TestCluster {
    TestCluster::start(env!("CARGO_BIN_EXE_geokv-node"), ClusterOptions { tls: true, ..Default::default() })
}

async fn client_with(c: &TestCluster, tls: Option<ClientTls>, token: Option<String>) -> Result<Client, Error> {
    ClientConfig::new(c.endpoints()).deadline(Duration::from_secs(20)).tls(tls).token(token).connect().await
}

/// The gRPC code of a refusal, failing the test on anything else.
fn denied(result: Result<impl std::fmt::Debug, Error>) -> (Code, String) {
    match result {
        Err(Error::Denied { code, message }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Waits until root can write through `client`: the cluster elected its
/// leaders over mTLS.
async fn wait_writable(client: &Client) {
    wait_for("a write over TLS", DEFAULT_DEADLINE, || async { client.put("ready", "yes").await.ok() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_authenticated_clients_and_holds_them_to_their_roles() {
    let c = tls_cluster();
    let root = c.client().await;
    wait_writable(&root).await;
    for i in 0..20 {
        root.put(format!("app/{i}"), format!("v{i}")).await.unwrap();
        root.put(format!("other/{i}"), format!("secret{i}")).await.unwrap();
    }
    assert_eq!(root.get("other/3").await.unwrap().unwrap().value, b"secret3");

    // A plaintext client gets nowhere (the TLS listener drops it).
    let plain = ClientConfig::new(c.endpoints()).deadline(Duration::from_secs(2)).connect().await;
    if let Ok(plain) = plain {
        assert!(plain.get("app/1").await.is_err(), "a plaintext client was served by a TLS node");
    }

    // No credentials: UNAUTHENTICATED at once (the shard map is refused too).
    let (code, message) = denied(client_with(&c, Some(c.client_tls(None)), None).await);
    assert_eq!(code, Code::Unauthenticated, "{message}");
    assert!(message.contains("no credentials"), "{message}");

    // Root adds users; each gets a token shown once.
    let reader = root.add_user("reader", &[Grant::new("read", "")], false).await.unwrap().expect("a token");
    let app = root.add_user("app", &[Grant::new("write", "app/")], false).await.unwrap().expect("a token");
    assert!(reader.starts_with("gk_") && reader != app);
    let users = root.list_users().await.unwrap();
    assert_eq!(users.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(), ["reader", "app"]);
    let err = root.add_user("app", &[], false).await.unwrap_err();
    assert!(err.to_string().contains("exists"), "{err}");
    let err = root.add_user("root", &[], false).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");

    // A read token reads everything and writes nothing.
    let as_reader = client_with(&c, Some(c.client_tls(None)), Some(reader.clone())).await.unwrap();
    assert_eq!(as_reader.get("other/1").await.unwrap().unwrap().value, b"secret1");
    let (code, message) = denied(as_reader.put("app/1", "overwritten").await);
    assert_eq!(code, Code::PermissionDenied);
    assert!(message.contains("write") && !message.contains("app/1"), "names the permission, not the key: {message}");
    assert_eq!(denied(as_reader.split_shard(1, "c").await).0, Code::PermissionDenied);

    // A token limited to app/ stays there.
    let as_app = client_with(&c, Some(c.client_tls(None)), Some(app.clone())).await.unwrap();
    as_app.put("app/new", "mine").await.unwrap();
    assert_eq!(as_app.get("app/new").await.unwrap().unwrap().value, b"mine");
    let (code, message) = denied(as_app.get("other/1").await);
    assert_eq!(code, Code::PermissionDenied);
    assert!(!message.contains("secret"), "{message}");
    assert_eq!(denied(as_app.put("other/1", "x").await).0, Code::PermissionDenied);
    let within = as_app.scan("app/".."app0").collect().await.unwrap();
    assert_eq!(within.len(), 21);
    assert_eq!(denied(as_app.scan(..).collect().await).0, Code::PermissionDenied);
    assert_eq!(root.get("other/1").await.unwrap().unwrap().value, b"secret1", "nothing was overwritten");
    assert_eq!(root.get("app/1").await.unwrap().unwrap().value, b"v1");

    // A wrong token, and a certificate for someone who is not a user.
    let wrong = client_with(&c, Some(c.client_tls(None)), Some(format!("{reader}x"))).await;
    assert_eq!(denied(wrong).0, Code::Unauthenticated);
    let (code, message) = denied(client_with(&c, Some(c.client_tls(Some("carol"))), None).await);
    assert_eq!(code, Code::Unauthenticated);
    assert!(message.contains("carol"), "{message}");
    // Once added (certificate only) with a grant, her certificate is enough.
    assert_eq!(root.add_user("carol", &[Grant::new("read", "app/")], true).await.unwrap(), None);
    let carol = client_with(&c, Some(c.client_tls(Some("carol"))), None).await.unwrap();
    assert_eq!(carol.get("app/2").await.unwrap().unwrap().value, b"v2");
    assert_eq!(denied(carol.get("other/2").await).0, Code::PermissionDenied);
    assert!(root.grant("carol", &Grant::new("read", "other/"), false).await.unwrap());
    assert_eq!(carol.get("other/2").await.unwrap().unwrap().value, b"secret2");

    // A removed user's token stops working at once.
    root.remove_user("reader").await.unwrap();
    let (code, _) = denied(as_reader.get("app/1").await);
    assert_eq!(code, Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_rpcs_refuse_clients_even_root() {
    let c = tls_cluster();
    let root = c.client().await;
    wait_writable(&root).await;
    for user in [Some("root"), None] {
        let channel = c.tls_channel(1, user).await;
        let mut raft = geokv_proto::raft::raft_client::RaftClient::new(channel.clone());
        let message = geokv_proto::raft::RaftMessage { shard_id: 1, payload: vec![0; 16], ..Default::default() };
        let status = raft.propose(message.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{user:?}: {status:?}");
        assert!(status.message().contains("node-to-node"), "{}", status.message());
        let chunk = geokv_proto::raft::SnapshotChunk { shard_id: 1, header: vec![0; 16], ..Default::default() };
        let mut stream = tonic::Request::new(tokio_stream::iter([chunk]));
        stream.metadata_mut().insert("geokv-shard", 1.into());
        let status = raft.install_snapshot_stream(stream).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{user:?}: {status:?}");
        let progress = geokv_proto::raft::SnapshotProgressRequest { shard_id: 1, transfer: 1 };
        let status = raft.snapshot_progress(progress).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{user:?}: {status:?}");
        let mut admin = geokv_proto::admin::admin_client::AdminClient::new(channel.clone());
        let join = geokv_proto::admin::JoinClusterRequest {
            addr: "127.0.0.1:1".into(),
            region: "mars".into(),
            zone: String::new(),
        };
        assert_eq!(admin.join_cluster(join).await.unwrap_err().code(), Code::PermissionDenied);
        // The health service answers anyone: load balancers have no credentials.
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let check = tonic_health::pb::HealthCheckRequest { service: String::new() };
        health.check(check).await.expect("health answers without credentials");
    }
    let map = root.refresh_shard_map().await.unwrap();
    assert_eq!(map.nodes.len(), 3, "no node was admitted by the refused join");
}

/// Starts a node that joins `c` with the given TLS files and returns its
/// exit status and log once it exits (bounded).
fn join_with(c: &TestCluster, dir: &Path, ca: &Path, cert: &Path, key: &Path) -> (std::process::ExitStatus, String) {
    let seeds: Vec<String> = c.endpoints();
    let log_path = dir.join("joiner.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let listen = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_geokv-node"))
        .arg(format!("--join={}", seeds.join(",")))
        .arg("--region=ap-northeast")
        .arg(format!("--listen={listen}"))
        .arg(format!("--data-dir={}", dir.join("data").display()))
        .arg(format!("--tls-ca={}", ca.display()))
        .arg(format!("--tls-cert={}", cert.display()))
        .arg(format!("--tls-key={}", key.display()))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            panic!("the joining node neither joined nor gave up: {}", std::fs::read_to_string(&log_path).unwrap());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (status, std::fs::read_to_string(&log_path).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_foreign_or_expired_certificate_cannot_join() {
    let c = tls_cluster();
    let root = c.client().await;
    wait_writable(&root).await;
    let cluster_ca = c.certs_dir().join("ca.pem");

    // A node certificate from another CA, trusting the cluster's CA.
    let foreign = tempfile::tempdir().unwrap();
    certs::create_ca(foreign.path(), Validity::days(1)).unwrap();
    let node = certs::create_node(foreign.path(), "node", &["127.0.0.1".into()], Validity::days(1)).unwrap();
    let (status, log) = join_with(&c, foreign.path(), &cluster_ca, &node.cert, &node.key);
    assert!(!status.success(), "{log}");
    assert!(log.contains("refused the TLS handshake"), "{log}");

    // A node certificate from the cluster's CA that has expired.
    let expired = tempfile::tempdir().unwrap();
    for f in ["ca.pem", "ca-key.pem"] {
        std::fs::copy(c.certs_dir().join(f), expired.path().join(f)).unwrap();
    }
    let now = Validity::days(0).not_after_unix_s;
    let past = Validity { not_before_unix_s: now - 3 * 86_400, not_after_unix_s: now - 86_400 };
    let node = certs::create_node(expired.path(), "node", &["127.0.0.1".into()], past).unwrap();
    let (status, log) = join_with(&c, expired.path(), &cluster_ca, &node.cert, &node.key);
    assert!(!status.success(), "{log}");
    assert!(log.contains("refused the TLS handshake"), "{log}");

    let map = root.refresh_shard_map().await.unwrap();
    assert_eq!(map.nodes.len(), 3, "a refused node was admitted: {:?}", map.nodes);
    root.put("still", "writable").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_restarted_with_a_foreign_certificate_cannot_replicate() {
    let mut c = tls_cluster();
    let root = c.client().await;
    wait_writable(&root).await;
    // Node 3 comes back with a node certificate from another CA (it still
    // trusts the cluster's CA, so it can verify the others).
    let foreign = tempfile::tempdir().unwrap();
    certs::create_ca(foreign.path(), Validity::days(1)).unwrap();
    let node = certs::create_node(foreign.path(), "node", &["127.0.0.1".into()], Validity::days(1)).unwrap();
    c.kill(3);
    c.set_node_certificate(3, node.cert.clone(), node.key.clone());
    c.restart(3);
    let mut last = 0;
    for i in 0..30 {
        last = root.put(format!("while-foreign/{i}"), "v").await.unwrap().version;
    }
    // Ask node 3 itself: a client that trusts the foreign CA (node 3's
    // server certificate) and presents the cluster's root certificate
    // (node 3 trusts the cluster CA for clients).
    let root_files = c.client_tls(Some("root"));
    let (cert, key) = root_files.identity.clone().unwrap();
    let to_node_3 = ClientTls::new(std::fs::read(foreign.path().join("ca.pem")).unwrap()).identity(cert, key);
    let view = ClientConfig::new([c.node(3).addr.clone()]).deadline(Duration::from_secs(20)).tls(Some(to_node_3));
    let view = wait_for("node 3 to answer", DEFAULT_DEADLINE, || async { view.clone().connect().await.ok() }).await;
    let shard = root.refresh_shard_map().await.unwrap().shard_for_key(b"while-foreign/0").unwrap().shard_id;
    // Give it every chance: several heartbeats' worth of time.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(5) {
        let status = view.node_status(&c.node(3).addr).await.unwrap();
        let group = status.groups.iter().find(|g| g.shard_id == shard).expect("node 3 hosts the shard");
        assert!(group.applied_index < last, "node 3 applied index {} >= {last}: it replicated", group.applied_index);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for id in [1, 2] {
        let log = c.log(id);
        assert!(log.contains("invalid peer certificate") || log.contains("TLS handshake refused"), "node {id}: {log}");
    }
    root.put("still", "writable on two").await.unwrap();
}

/// Copies `from` over `to` atomically (a poller never sees half a file).
fn replace(from: &Path, to: &Path) {
    let tmp = to.with_extension("rotating");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_without_a_restart() {
    let c = tls_cluster();
    let root = c.client().await;
    wait_writable(&root).await;
    let certs_dir = c.certs_dir();

    // A new CA with a node certificate and a root certificate of its own.
    let next = tempfile::tempdir().unwrap();
    certs::create_ca(next.path(), Validity::days(1)).unwrap();
    let node = certs::create_node(next.path(), "node", &["127.0.0.1".into()], Validity::days(1)).unwrap();
    let next_root = certs::create_client(next.path(), "root", Validity::days(1)).unwrap();
    let next_tls = || {
        ClientTls::new(std::fs::read(next.path().join("ca.pem")).unwrap())
            .identity(std::fs::read(&next_root.cert).unwrap(), std::fs::read(&next_root.key).unwrap())
    };
    let short = |tls| ClientConfig::new(c.endpoints()).deadline(Duration::from_secs(3)).tls(Some(tls));
    let before = short(next_tls()).connect().await;
    assert!(
        before.is_err() || before.unwrap().get("ready").await.is_err(),
        "a client trusting only the new CA was served before the rotation"
    );

    // Step 1: trust both CAs, serve the new certificate. Every node polls
    // its files; none restarts.
    let both = format!(
        "{}{}",
        std::fs::read_to_string(certs_dir.join("ca.pem")).unwrap(),
        std::fs::read_to_string(next.path().join("ca.pem")).unwrap()
    );
    std::fs::write(next.path().join("both.pem"), both).unwrap();
    replace(&next.path().join("both.pem"), &certs_dir.join("ca.pem"));
    replace(&node.key, &certs_dir.join("node-key.pem"));
    replace(&node.cert, &certs_dir.join("node.pem"));
    let rotated = Instant::now();
    let as_next = wait_for("the new certificate to be served", DEFAULT_DEADLINE, || async {
        let client = short(next_tls()).connect().await.ok()?;
        client.put("rotated", "yes").await.ok().map(|_| client)
    })
    .await;
    let took = rotated.elapsed();
    // Writes commit: the nodes replicate with the rotated material too.
    for i in 0..20 {
        as_next.put(format!("after/{i}"), "v").await.unwrap();
    }
    // During the transition a client with the old root certificate (and
    // both CAs trusted) is still served, on new connections too.
    let both_pem = std::fs::read(next.path().join("both.pem")).unwrap();
    let old_identity = (
        std::fs::read(certs_dir.join("client.root.pem")).unwrap(),
        std::fs::read(certs_dir.join("client.root-key.pem")).unwrap(),
    );
    let old_root = ClientTls::new(both_pem).identity(old_identity.0, old_identity.1);
    let during = short(old_root.clone()).connect().await.expect("the old root certificate during the transition");
    assert_eq!(during.get("rotated").await.unwrap().unwrap().value, b"yes");
    assert_eq!(root.get("rotated").await.unwrap().unwrap().value, b"yes", "established connections go on");

    // Step 2: trust only the new CA. The old root certificate stops working
    // for new connections; the new one goes on.
    replace(&next.path().join("ca.pem"), &certs_dir.join("ca.pem"));
    wait_for("the old CA to be distrusted", DEFAULT_DEADLINE, || async {
        let client = short(old_root.clone()).connect().await;
        match client {
            Err(_) => Some(()),
            Ok(client) => client.get("rotated").await.is_err().then_some(()),
        }
    })
    .await;
    as_next.put("after/last", "v").await.unwrap();
    for node in &c.nodes {
        assert!(node.is_running(), "node {} restarted or died", node.id);
        assert!(c.log(node.id).contains("TLS certificates reloaded"), "node {} did not reload", node.id);
    }
    eprintln!("rotation: the new certificate was served {took:?} after the files changed");
}
