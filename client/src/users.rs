//! Users and their grants: [`Client::add_user`], [`Client::remove_user`],
//! [`Client::grant`], [`Client::list_users`] (`Admin.AddUser` and friends;
//! docs/security.md). Each needs the admin role; any node serves them (the
//! change goes through the meta shard), and each is safe to repeat, so
//! every failure that is not a refusal is retried on the next node. A user
//! added here takes effect on a node once that node has applied the map
//! version the answer names; the calls wait (bounded) for the node that
//! answered.

use geokv_proto::admin as admin_pb;
use tokio::time::Instant;

use crate::client::{Transport, admin_client, timed_out};
use crate::error::classify;
use crate::{Client, Error};

/// A role on a key prefix (empty: every key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// `read`, `write` or `admin` (each includes the ones before it).
    pub role: String,
    pub prefix: Vec<u8>,
}

impl Grant {
    pub fn new(role: impl Into<String>, prefix: impl Into<Vec<u8>>) -> Grant {
        Grant { role: role.into(), prefix: prefix.into() }
    }

    fn to_pb(&self) -> admin_pb::UserGrant {
        admin_pb::UserGrant { role: self.role.clone(), prefix: self.prefix.clone() }
    }
}

/// A user as [`Client::list_users`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub grants: Vec<Grant>,
    /// Whether it has a bearer token (else: client certificate only).
    pub has_token: bool,
}

type AdminClient = geokv_proto::admin::admin_client::AdminClient<Transport>;

impl Client {
    /// One admin RPC, retried as the shard admin calls are; `call` sends it
    /// on a client for one node.
    async fn user_rpc<Req, Reply, Fut>(
        &self,
        unknown: &str,
        request: Req,
        call: impl Fn(AdminClient, tonic::Request<Req>) -> Fut,
    ) -> Result<(String, Reply), Error>
    where
        Req: Clone,
        Fut: std::future::Future<Output = Result<tonic::Response<Reply>, tonic::Status>>,
    {
        let deadline = Instant::now() + self.config().deadline;
        let (call, request) = (&call, &request);
        self.retry_admin(unknown, deadline, |addr, timeout| async move {
            let admin = admin_client(self.channel(&addr)?);
            let mut request = tonic::Request::new(request.clone());
            request.set_timeout(timeout);
            match tokio::time::timeout(timeout, call(admin, request)).await {
                Ok(Ok(reply)) => Ok(reply.into_inner()),
                Ok(Err(status)) => Err(classify(&status)),
                Err(_) => Err(timed_out(timeout)),
            }
        })
        .await
    }

    /// Adds user `name` with `grants` and returns its bearer token (shown
    /// this once; the cluster keeps only its SHA-256), or `None` with
    /// `certificate_only` (the user then authenticates with a client
    /// certificate whose common name is `name`).
    pub async fn add_user(
        &self,
        name: &str,
        grants: &[Grant],
        certificate_only: bool,
    ) -> Result<Option<String>, Error> {
        // Made here, so that a retry after an unknown outcome is the same
        // request (the cluster recognises it) rather than a second user.
        let token = if certificate_only {
            String::new()
        } else {
            let bytes: [u8; 32] = rand::random();
            format!("gk_{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
        };
        let request = admin_pb::AddUserRequest {
            name: name.into(),
            grants: grants.iter().map(Grant::to_pb).collect(),
            certificate_only,
            token,
        };
        let (addr, reply) =
            self.user_rpc("the user may or may not exist now", request, |mut admin, r| async move {
                admin.add_user(r).await
            })
            .await?;
        self.await_map_version(&addr, reply.map_version, Instant::now() + self.config().deadline).await;
        Ok((!reply.token.is_empty()).then_some(reply.token))
    }

    /// Removes user `name`: its token and certificate stop working.
    pub async fn remove_user(&self, name: &str) -> Result<(), Error> {
        let request = admin_pb::RemoveUserRequest { name: name.into() };
        let (addr, reply) = self
            .user_rpc("the user may or may not be removed now", request, |mut admin, r| async move {
                admin.remove_user(r).await
            })
            .await?;
        self.await_map_version(&addr, reply.map_version, Instant::now() + self.config().deadline).await;
        Ok(())
    }

    /// Gives user `name` `grant` (or, with `revoke`, takes it back); false
    /// when nothing changed.
    pub async fn grant(&self, name: &str, grant: &Grant, revoke: bool) -> Result<bool, Error> {
        let request = admin_pb::GrantUserRequest { name: name.into(), grant: Some(grant.to_pb()), revoke };
        let (addr, reply) = self
            .user_rpc("the grant may or may not be recorded now", request, |mut admin, r| async move {
                admin.grant_user(r).await
            })
            .await?;
        self.await_map_version(&addr, reply.map_version, Instant::now() + self.config().deadline).await;
        Ok(reply.changed)
    }

    /// Every user and its grants.
    pub async fn list_users(&self) -> Result<Vec<User>, Error> {
        let (_, reply) = self
            .user_rpc("", admin_pb::ListUsersRequest {}, |mut admin, r| async move { admin.list_users(r).await })
            .await?;
        Ok(reply
            .users
            .into_iter()
            .map(|u| User {
                name: u.name,
                grants: u.grants.into_iter().map(|g| Grant { role: g.role, prefix: g.prefix }).collect(),
                has_token: u.has_token,
            })
            .collect())
    }
}
