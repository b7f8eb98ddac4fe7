//! Atomic batches: several writes, and optional conditions, on keys of one
//! shard, applied all or nothing in one Raft entry.

use std::future::{Future, IntoFuture};
use std::pin::Pin;

use geokv_proto::kv as pb;

use crate::client::check_key;
use crate::types::KeyState;
use crate::{BatchResult, Client, Error, Expect};

/// A batch under construction; [`Batch::send`] (or `.await`) applies it.
///
/// Every key must belong to the same shard; the client checks this against
/// its cached shard map before sending, and the server checks it again.
#[must_use = "a batch does nothing until it is sent"]
#[derive(Debug)]
pub struct Batch<'a> {
    client: &'a Client,
    conditions: Vec<pb::Condition>,
    ops: Vec<pb::BatchOp>,
}

impl<'a> Batch<'a> {
    pub(crate) fn new(client: &'a Client) -> Batch<'a> {
        Batch { client, conditions: Vec::new(), ops: Vec::new() }
    }

    /// Adds a write of `value` to `key`.
    pub fn put(mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Self {
        self.ops.push(pb::BatchOp {
            op: Some(pb::batch_op::Op::Put(pb::batch_op::Put {
                key: key.as_ref().to_vec(),
                value: value.as_ref().to_vec(),
            })),
        });
        self
    }

    /// Adds a delete of `key`.
    pub fn delete(mut self, key: impl AsRef<[u8]>) -> Self {
        self.ops.push(pb::BatchOp {
            op: Some(pb::batch_op::Op::Delete(pb::batch_op::Delete { key: key.as_ref().to_vec() })),
        });
        self
    }

    /// Adds a condition: the batch applies only if every condition holds.
    pub fn condition(mut self, key: impl AsRef<[u8]>, expect: Expect) -> Self {
        self.conditions.push(pb::Condition { key: key.as_ref().to_vec(), expected: Some(expect.to_proto()) });
        self
    }

    /// How many writes the batch holds.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch holds no writes yet.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Every key the batch names: writes first, then conditions.
    fn keys(&self) -> impl Iterator<Item = &[u8]> {
        let op_keys = self.ops.iter().filter_map(|op| match &op.op {
            Some(pb::batch_op::Op::Put(put)) => Some(put.key.as_slice()),
            Some(pb::batch_op::Op::Delete(delete)) => Some(delete.key.as_slice()),
            None => None,
        });
        op_keys.chain(self.conditions.iter().map(|c| c.key.as_slice()))
    }

    /// Applies the batch atomically, exactly once.
    pub async fn send(self) -> Result<BatchResult, Error> {
        if self.ops.is_empty() {
            return Err(Error::InvalidArgument("batch has no writes: add put() or delete() before send()".into()));
        }
        for key in self.keys() {
            check_key(key)?;
        }
        self.check_single_shard()?;
        let route_key = self.keys().next().expect("a batch with writes has a key").to_vec();
        let ticket = self.client.begin_write();
        let request = pb::BatchRequest {
            header: None,
            session: Some(ticket.session()),
            conditions: self.conditions,
            ops: self.ops,
        };
        let reply = self.client.execute(&route_key, true, request).await?;
        Ok(BatchResult {
            applied: reply.applied,
            version: reply.version,
            current: reply.current.into_iter().map(KeyState::from_proto).collect(),
            shard_id: reply.shard_id,
        })
    }

    /// Refuses a batch whose keys the cached map puts in different shards.
    fn check_single_shard(&self) -> Result<(), Error> {
        let map = self.client.cached_map();
        let mut first: Option<(u64, &[u8])> = None;
        for key in self.keys() {
            let Some(shard) = map.shard_for_key(key) else {
                continue;
            };
            match first {
                None => first = Some((shard.shard_id, key)),
                Some((shard_id, first_key)) if shard_id != shard.shard_id => {
                    return Err(Error::InvalidArgument(format!(
                        "batch keys {first_key:?} (shard {shard_id}) and {key:?} (shard {}) are in different shards: a batch must stay within one shard",
                        shard.shard_id
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

impl<'a> IntoFuture for Batch<'a> {
    type Output = Result<BatchResult, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}
