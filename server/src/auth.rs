//! Who may call what: authentication of callers and their roles.
//!
//! Every request passes [`AuthLayer`] before it reaches a service. The layer
//! names the caller ([`Caller`]) and refuses what the caller may never do
//! by the RPC alone ([`access_for`]); the `Kv` handlers then check each key
//! against the caller's grants ([`Caller::check_key`],
//! [`Caller::check_range`]).
//!
//! - **Peers** are connections whose TLS client certificate chains to the
//!   cluster CA and has the common name `node` ([`crate::tls`]). Only they
//!   may call `Raft.*`, `Admin.JoinCluster` and `Admin.SplitKey`; with TLS on
//!   this holds even when `auth` is off. A peer may call everything else too
//!   (the meta shard's leader splits and transfers through the admin API).
//! - **Users** authenticate with a client certificate from the cluster CA
//!   (common name = user name; `root` is the built-in administrator, which
//!   bootstraps the others) or a bearer token (`authorization: Bearer T`).
//!   Users and their grants are data in the meta shard
//!   ([`crate::shards::ShardMap::users`]); a token is stored only as its
//!   SHA-256.
//! - **Roles** are ordered: `read` < `write` < `admin`; each grant gives a
//!   role on a key prefix (empty: every key). Admin grants are cluster-wide.
//!   Cluster reads (`GetShardMap`, `NodeStatus`) need only an authenticated
//!   caller: clients route with them.
//!
//! Refusals: no or unknown credentials are `UNAUTHENTICATED`; a known
//! caller without the permission gets `PERMISSION_DENIED` naming the
//! permission, never data. In plaintext every caller is [`Caller::Unchecked`]:
//! anyone who reaches the port may call anything (docs/security.md).
//!
//! The decisions ([`access_for`], [`Grant::covers_key`],
//! [`Caller::check_range`], [`identify`]) are pure and unit-tested; the
//! layer only gathers their inputs from the connection and the map.

use std::sync::Arc;
use std::task::{Context, Poll};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::shards::ShardMap;
use crate::tls::ConnInfo;

/// The built-in administrator: a client certificate with this common name
/// holds `admin` on everything and cannot be removed.
pub const ROOT_USER: &str = "root";

/// The most users the map holds.
pub const MAX_USERS: usize = 1_000;

/// The most grants one user holds.
pub const MAX_GRANTS_PER_USER: usize = 64;

/// The longest prefix a grant may name, in bytes (the default
/// `max_key_bytes`).
pub const MAX_GRANT_PREFIX_BYTES: usize = 4096;

/// The longest user name, in bytes.
pub const MAX_USER_NAME_BYTES: usize = 64;

/// What a grant allows, ordered: each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    Read,
    Write,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Result<Role, String> {
        match s {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?}: the roles are read, write and admin")),
        }
    }
}

/// A role on the keys that start with `prefix` (empty: every key).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Grant {
    pub role: Role,
    pub prefix: Vec<u8>,
}

impl Grant {
    /// Whether this grant allows `role` on `key`.
    pub fn covers_key(&self, role: Role, key: &[u8]) -> bool {
        self.role >= role && key.starts_with(&self.prefix)
    }

    /// Whether this grant allows `role` on every key of `[start, end)`
    /// (`end` empty: to the end of the key space).
    pub fn covers_range(&self, role: Role, start: &[u8], end: &[u8]) -> bool {
        if self.role < role || !start.starts_with(&self.prefix) {
            return false;
        }
        match prefix_end(&self.prefix) {
            None => true,
            Some(limit) => !end.is_empty() && end <= limit.as_slice(),
        }
    }
}

/// The first key above every key with `prefix`; `None` when there is none
/// (empty prefix, or only 0xff bytes).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A user as the meta shard stores it.
///
/// Invariants (checked by [`check_user_name`] and the map's user methods):
/// - `name` is 1..=[`MAX_USER_NAME_BYTES`] of `[A-Za-z0-9._-]`, not `root`
///   or `node`;
/// - at most [`MAX_GRANTS_PER_USER`] grants, no two equal; admin grants
///   have an empty prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserDesc {
    pub name: String,
    /// Hex SHA-256 of the user's bearer token; `None`: certificate only.
    pub token_sha256: Option<String>,
    pub grants: Vec<Grant>,
}

/// Refuses names that are not user names.
pub fn check_user_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_USER_NAME_BYTES {
        return Err(format!("a user name has 1 to {MAX_USER_NAME_BYTES} bytes"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return Err(format!("user name {name:?} may hold only letters, digits, '.', '_' and '-'"));
    }
    if name == ROOT_USER || name == crate::tls::PEER_COMMON_NAME {
        return Err(format!("{name:?} is reserved (the built-in administrator, or cluster members)"));
    }
    Ok(())
}

/// Refuses grants the model does not have.
pub fn check_grant(grant: &Grant, max_prefix_bytes: usize) -> Result<(), String> {
    if grant.role == Role::Admin && !grant.prefix.is_empty() {
        return Err("admin is cluster-wide: an admin grant takes no prefix".into());
    }
    if grant.prefix.len() > max_prefix_bytes {
        return Err(format!("a grant's prefix may be at most {max_prefix_bytes} bytes"));
    }
    Ok(())
}

/// The hex SHA-256 of a bearer token, as stored.
pub fn token_digest(token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A new random bearer token (256 bits, hex, prefixed `gk_` so that it is
/// recognisable in a leaked log).
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("gk_{hex}")
}

/// Who is calling, as a request extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Authentication is off: plaintext, or `auth = false`.
    Unchecked,
    /// A cluster member (node certificate).
    Peer,
    /// An authenticated user and its grants.
    User { name: String, grants: Arc<Vec<Grant>> },
    /// No credentials, on an RPC open to anyone (health, reflection).
    Anonymous,
}

impl Caller {
    /// The caller of `request` (set by [`AuthLayer`]).
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Caller, Error> {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| Error::Internal("request reached a service without passing authentication".into()))
    }

    fn user(&self) -> Option<(&str, &[Grant])> {
        match self {
            Caller::User { name, grants } => Some((name, grants)),
            _ => None,
        }
    }

    /// Allows `role` on `key`, or says which permission is missing.
    pub fn check_key(&self, role: Role, key: &[u8]) -> Result<(), Error> {
        match self {
            Caller::Unchecked | Caller::Peer => Ok(()),
            Caller::Anonymous => Err(unauthenticated()),
            Caller::User { name, grants } => {
                if grants.iter().any(|g| g.covers_key(role, key)) {
                    Ok(())
                } else {
                    Err(Error::PermissionDenied(format!(
                        "permission denied: user {name:?} has no {} grant on a prefix of this key",
                        role.as_str()
                    )))
                }
            }
        }
    }

    /// Allows `role` on every key of `[start, end)`.
    pub fn check_range(&self, role: Role, start: &[u8], end: &[u8]) -> Result<(), Error> {
        let Some((name, grants)) = self.user() else {
            return self.check_key(role, start);
        };
        if grants.iter().any(|g| g.covers_range(role, start, end)) {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "permission denied: user {name:?} has no {} grant on a prefix covering this whole range \
                 (scan within a granted prefix)",
                role.as_str()
            )))
        }
    }

    /// Allows a cluster-wide `role` (an admin RPC, or listing conflicts).
    pub fn check_cluster(&self, role: Role) -> Result<(), Error> {
        match self {
            Caller::Unchecked | Caller::Peer => Ok(()),
            Caller::Anonymous => Err(unauthenticated()),
            Caller::User { name, grants } => {
                if grants.iter().any(|g| g.role >= role && g.prefix.is_empty()) {
                    Ok(())
                } else {
                    Err(Error::PermissionDenied(format!(
                        "permission denied: user {name:?} needs {} on every key (a grant without prefix)",
                        role.as_str()
                    )))
                }
            }
        }
    }
}

fn unauthenticated() -> Error {
    Error::Unauthenticated(
        "no credentials: present a client certificate from the cluster CA or a bearer token \
         (kvctl --cert/--key or --token)"
            .into(),
    )
}

/// What an RPC asks of its caller, by its gRPC path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Health and reflection: anyone, even without credentials.
    Open,
    /// Node-to-node: cluster members only.
    Peer,
    /// Any authenticated caller (routing reads; `Kv` checks keys itself).
    Authenticated,
    /// A cluster-wide role.
    Cluster(Role),
}

/// The access rule of the RPC at `path` (`/package.Service/Method`).
pub fn access_for(path: &str) -> Access {
    let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or((path, ""));
    match service {
        "grpc.health.v1.Health"
        | "grpc.reflection.v1.ServerReflection"
        | "grpc.reflection.v1alpha.ServerReflection" => Access::Open,
        "geokv.raft.Raft" => Access::Peer,
        "geokv.kv.Kv" => Access::Authenticated,
        "geokv.admin.Admin" => match method {
            "JoinCluster" | "SplitKey" => Access::Peer,
            "GetShardMap" | "NodeStatus" => Access::Authenticated,
            "ListConflicts" => Access::Cluster(Role::Read),
            _ => Access::Cluster(Role::Admin),
        },
        _ => Access::Authenticated,
    }
}

/// The credentials a request carries.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// The verified client certificate's common name.
    pub certificate_name: Option<&'a str>,
    /// The `authorization` header's value.
    pub authorization: Option<&'a str>,
}

/// Names the caller and applies `access`: `tls` is whether the connection
/// is TLS, `auth` whether authentication is on.
pub fn identify(
    access: Access,
    tls: bool,
    auth: bool,
    credentials: Credentials<'_>,
    map: &ShardMap,
) -> Result<Caller, Error> {
    let is_peer = credentials.certificate_name == Some(crate::tls::PEER_COMMON_NAME);
    if access == Access::Peer {
        if !tls || is_peer {
            return Ok(if is_peer { Caller::Peer } else { Caller::Unchecked });
        }
        return Err(Error::PermissionDenied(
            "permission denied: this is a node-to-node RPC; only cluster members (a node certificate from the \
             cluster CA) may call it"
                .into(),
        ));
    }
    if !auth {
        return Ok(Caller::Unchecked);
    }
    if is_peer {
        return Ok(Caller::Peer);
    }
    let caller = if let Some(header) = credentials.authorization {
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| Error::Unauthenticated("the authorization header is not `Bearer TOKEN`".into()))?;
        let digest = token_digest(token.trim());
        let user = map
            .users
            .iter()
            .find(|u| u.token_sha256.as_deref() == Some(digest.as_str()))
            .ok_or_else(|| Error::Unauthenticated("unknown or revoked token".into()))?;
        Caller::User { name: user.name.clone(), grants: Arc::new(user.grants.clone()) }
    } else if let Some(name) = credentials.certificate_name {
        if name == ROOT_USER {
            Caller::User { name: name.into(), grants: Arc::new(vec![Grant { role: Role::Admin, prefix: Vec::new() }]) }
        } else {
            let user = map.users.iter().find(|u| u.name == name).ok_or_else(|| {
                Error::Unauthenticated(format!(
                    "the client certificate names user {name:?}, who is not a user of this cluster (kvctl user add)"
                ))
            })?;
            Caller::User { name: user.name.clone(), grants: Arc::new(user.grants.clone()) }
        }
    } else if access == Access::Open {
        return Ok(Caller::Anonymous);
    } else {
        return Err(unauthenticated());
    };
    match access {
        Access::Cluster(role) => caller.check_cluster(role).map(|()| caller),
        Access::Open | Access::Authenticated | Access::Peer => Ok(caller),
    }
}

/// The node's view the layer needs: whether authentication is on, and the
/// current shard map (users).
pub trait AuthSource: Send + Sync + 'static {
    fn auth_enabled(&self) -> bool;
    fn current_map(&self) -> Arc<ShardMap>;
}

/// The tower layer that runs [`identify`] on every request.
#[derive(Clone)]
pub struct AuthLayer {
    source: Arc<dyn AuthSource>,
}

impl AuthLayer {
    pub fn new(source: Arc<dyn AuthSource>) -> Self {
        Self { source }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService { inner, source: self.source.clone() }
    }
}

/// See [`AuthLayer`].
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    source: Arc<dyn AuthSource>,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let access = access_for(request.uri().path());
        let conn = request.extensions().get::<ConnInfo>();
        let tls = conn.is_some_and(|c| c.tls);
        let credentials = Credentials {
            certificate_name: conn.and_then(|c| c.peer_name.as_deref()),
            authorization: request.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()),
        };
        let auth = self.source.auth_enabled();
        let decided = if !tls && !auth && access != Access::Peer {
            Ok(Caller::Unchecked)
        } else {
            identify(access, tls, auth, credentials, &self.source.current_map())
        };
        match decided {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                // The clone is ready only after poll_ready; take the ready one.
                let clone = self.inner.clone();
                let mut ready = std::mem::replace(&mut self.inner, clone);
                Box::pin(ready.call(request))
            }
            Err(e) => {
                let path = request.uri().path().to_string();
                let remote = conn.and_then(|c| c.remote);
                tracing::debug!(%path, ?remote, cause = %e, "request refused");
                let status: tonic::Status = e.into();
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(role: Role, prefix: &str) -> Grant {
        Grant { role, prefix: prefix.as_bytes().to_vec() }
    }

    fn user(name: &str, token: &str, grants: Vec<Grant>) -> UserDesc {
        UserDesc { name: name.into(), token_sha256: Some(token_digest(token)), grants }
    }

    fn map() -> ShardMap {
        ShardMap {
            users: vec![
                user("reader", "t-read", vec![grant(Role::Read, "")]),
                user("app", "t-app", vec![grant(Role::Write, "app/")]),
                user("ops", "t-ops", vec![grant(Role::Admin, "")]),
            ],
            ..ShardMap::default()
        }
    }

    fn token(t: &str) -> String {
        format!("Bearer {t}")
    }

    fn as_token(access: Access, t: &str) -> Result<Caller, Error> {
        let header = token(t);
        identify(access, true, true, Credentials { certificate_name: None, authorization: Some(&header) }, &map())
    }

    #[test]
    fn roles_include_the_ones_below_and_prefixes_bound_keys() {
        let g = grant(Role::Write, "app/");
        assert!(g.covers_key(Role::Read, b"app/x") && g.covers_key(Role::Write, b"app/x"));
        assert!(!g.covers_key(Role::Admin, b"app/x"));
        assert!(!g.covers_key(Role::Read, b"other/x") && !g.covers_key(Role::Read, b"app"));
        assert!(g.covers_range(Role::Read, b"app/", b"app0"));
        assert!(g.covers_range(Role::Read, b"app/a", b"app/b"));
        assert!(!g.covers_range(Role::Read, b"app/", b""), "to the end of the key space leaves the prefix");
        assert!(!g.covers_range(Role::Read, b"app/", b"app1"));
        assert!(!g.covers_range(Role::Read, b"ap", b"app/z"));
        assert!(grant(Role::Read, "").covers_range(Role::Read, b"", b""));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }

    #[test]
    fn internal_rpcs_are_for_members_only_even_with_auth_off() {
        let member = Credentials { certificate_name: Some("node"), authorization: None };
        let root = Credentials { certificate_name: Some("root"), authorization: None };
        let m = map();
        for path in
            ["/geokv.raft.Raft/Propose", "/geokv.raft.Raft/InstallSnapshotStream", "/geokv.admin.Admin/JoinCluster"]
        {
            let access = access_for(path);
            assert_eq!(access, Access::Peer, "{path}");
            assert_eq!(identify(access, true, true, member, &m).unwrap(), Caller::Peer);
            for auth in [true, false] {
                let err = identify(access, true, auth, root, &m).unwrap_err();
                assert!(matches!(err, Error::PermissionDenied(_)), "{path}: {err}");
                let err = identify(access, true, auth, Credentials::default(), &m).unwrap_err();
                assert!(matches!(err, Error::PermissionDenied(_)), "{path}: {err}");
            }
            // Plaintext cannot tell members apart: the documented hole.
            assert_eq!(identify(access, false, false, Credentials::default(), &m).unwrap(), Caller::Unchecked);
        }
    }

    #[test]
    fn credentials_are_checked_and_roles_held() {
        let m = map();
        let none = identify(Access::Authenticated, true, true, Credentials::default(), &m).unwrap_err();
        assert!(matches!(none, Error::Unauthenticated(_)));
        assert!(matches!(as_token(Access::Authenticated, "wrong"), Err(Error::Unauthenticated(_))));
        let bad_header = Credentials { certificate_name: None, authorization: Some("Basic x") };
        assert!(matches!(identify(Access::Authenticated, true, true, bad_header, &m), Err(Error::Unauthenticated(_))));
        let stranger = Credentials { certificate_name: Some("mallory"), authorization: None };
        assert!(matches!(identify(Access::Authenticated, true, true, stranger, &m), Err(Error::Unauthenticated(_))));
        let open = identify(access_for("/grpc.health.v1.Health/Check"), true, true, Credentials::default(), &m);
        assert_eq!(open.unwrap(), Caller::Anonymous);

        let reader = as_token(Access::Authenticated, "t-read").unwrap();
        reader.check_key(Role::Read, b"anything").unwrap();
        let denied = reader.check_key(Role::Write, b"secret-key").unwrap_err();
        assert!(matches!(denied, Error::PermissionDenied(_)));
        assert!(denied.to_string().contains("write") && !denied.to_string().contains("secret-key"), "{denied}");
        let app = as_token(Access::Authenticated, "t-app").unwrap();
        app.check_key(Role::Write, b"app/1").unwrap();
        assert!(app.check_key(Role::Read, b"other/1").is_err());
        assert!(app.check_range(Role::Read, b"app/", b"").is_err());
        app.check_range(Role::Read, b"app/", b"app0").unwrap();

        let admin_rpc = access_for("/geokv.admin.Admin/SplitShard");
        assert!(matches!(as_token(admin_rpc, "t-app"), Err(Error::PermissionDenied(_))));
        assert!(matches!(as_token(admin_rpc, "t-read"), Err(Error::PermissionDenied(_))));
        as_token(admin_rpc, "t-ops").unwrap();
        let root = Credentials { certificate_name: Some("root"), authorization: None };
        identify(admin_rpc, true, true, root, &m).unwrap();
        as_token(access_for("/geokv.admin.Admin/ListConflicts"), "t-read").unwrap();
        assert!(as_token(access_for("/geokv.admin.Admin/ListConflicts"), "t-app").is_err());
        as_token(access_for("/geokv.admin.Admin/GetShardMap"), "t-app").unwrap();
        // A backup export holds whole shards: admins only.
        let export = access_for("/geokv.admin.Admin/ExportShard");
        assert!(matches!(as_token(export, "t-read"), Err(Error::PermissionDenied(_))));
        assert!(matches!(as_token(export, "t-app"), Err(Error::PermissionDenied(_))));
        as_token(export, "t-ops").unwrap();
        // Auth off: everything but the members' RPCs is unchecked.
        assert_eq!(identify(admin_rpc, true, false, Credentials::default(), &m).unwrap(), Caller::Unchecked);
    }

    #[test]
    fn names_and_grants_outside_the_model_are_refused() {
        check_user_name("alice.b-2_c").unwrap();
        for bad in ["", "root", "node", "a b", "é", &"x".repeat(65)] {
            assert!(check_user_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_grant(&grant(Role::Admin, "app/"), 10).is_err());
        assert!(check_grant(&grant(Role::Read, "0123456789a"), 10).is_err());
        check_grant(&grant(Role::Read, "app/"), 10).unwrap();
        let t = new_token();
        assert!(t.starts_with("gk_") && t.len() == 67);
        assert_eq!(token_digest(&t).len(), 64);
        assert_ne!(new_token(), t);
    }
}
