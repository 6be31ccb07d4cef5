//! Result delivery. Attempts that finish together are reported together:
//! whatever results queue up while earlier calls are in flight go in one
//! signed `POST /v1/agent/complete` (up to [`MAX_BATCH`] results or
//! [`MAX_BATCH_BYTES`] of output), so a busy node costs the server one
//! request and one transaction per batch instead of per run. A lone result
//! uses `POST /v1/agent/runs/{id}/complete`. The caller learns for each
//! result whether the server has it (or refused it for good); a result the
//! server could not be reached for comes back to be spooled.

use crate::client::{CallError, Client};
use crate::spool::Entry;
use std::sync::{Arc, Mutex};
use sundial_proto::agent::{CompleteBatch, CompleteItem};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;

/// Most results in one call.
pub const MAX_BATCH: usize = 256;
/// Most output bytes in one call (a result above it goes alone).
pub const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Calls in flight at once; results arriving meanwhile form the next batch.
const IN_FLIGHT: usize = 4;

/// `Err` hands an undelivered result back (to spool).
pub type Delivered = Result<(), Entry>;

struct Pending {
    entry: Entry,
    reply: oneshot::Sender<Delivered>,
}

/// The delivery queue and its sender task.
pub struct Results {
    client: Client,
    tx: mpsc::Sender<Pending>,
    rx: Mutex<Option<mpsc::Receiver<Pending>>>,
}

impl Results {
    pub fn new(client: Client) -> Results {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        Results {
            client,
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }

    /// Starts the sender task (once; later calls return None).
    pub fn spawn(&self) -> Option<JoinHandle<()>> {
        let rx = self.rx.lock().ok()?.take()?;
        Some(tokio::spawn(send_loop(self.client.clone(), rx)))
    }

    /// Delivers one result (batched with others finishing now).
    pub async fn deliver(&self, entry: Entry) -> Delivered {
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(p)) = self.tx.send(Pending { entry, reply }).await {
            // No sender task (not started, or stopped): deliver directly.
            return deliver_one(&self.client, p.entry).await;
        }
        match answer.await {
            Ok(d) => d,
            // The task never drops a reply unanswered while it runs; if it
            // was torn down mid-call the result is unknown to us: say so.
            Err(_) => {
                tracing::error!("result delivery was interrupted; the server may not have it");
                Ok(())
            }
        }
    }
}

async fn send_loop(client: Client, mut rx: mpsc::Receiver<Pending>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut carry: Option<Pending> = None;
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut bytes = first.entry.request.output.len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            let Ok(p) = rx.try_recv() else { break };
            let b = p.entry.request.output.len();
            if bytes + b > MAX_BATCH_BYTES {
                carry = Some(p);
                break;
            }
            bytes += b;
            batch.push(p);
        }
        let client = client.clone();
        tokio::spawn(async move {
            send(&client, batch).await;
            drop(permit);
        });
    }
}

/// Sends a batch and answers each of its callers.
async fn send(client: &Client, batch: Vec<Pending>) {
    let (entries, replies): (Vec<Entry>, Vec<_>) =
        batch.into_iter().map(|p| (p.entry, p.reply)).unzip();
    if entries.len() == 1 {
        for (entry, reply) in entries.into_iter().zip(replies) {
            let _ = reply.send(deliver_one(client, entry).await);
        }
        return;
    }
    let request = CompleteBatch {
        results: entries
            .into_iter()
            .map(|e| CompleteItem {
                run_id: e.run_id,
                result: e.request,
            })
            .collect(),
    };
    let back = |item: CompleteItem| Entry {
        run_id: item.run_id,
        request: item.result,
    };
    match client.complete_many(&request).await {
        Ok(resp) => {
            for s in &resp.results {
                if s.status != "recorded" && s.status != "duplicate" {
                    tracing::info!(run = s.run_id, status = %s.status, message = s.message.as_deref().unwrap_or(""), "result not recorded");
                }
            }
            for reply in replies {
                let _ = reply.send(Ok(()));
            }
        }
        // A server without the batch call (older) or a batch it refuses as
        // a whole: each result goes on its own and meets its own fate.
        Err(CallError::Rejected { status, body }) => {
            tracing::debug!(status, %body, "batch refused; delivering one by one");
            for (item, reply) in request.results.into_iter().zip(replies) {
                let _ = reply.send(deliver_one(client, back(item)).await);
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, results = replies.len(), "delivering a batch failed");
            for (item, reply) in request.results.into_iter().zip(replies) {
                let _ = reply.send(Err(back(item)));
            }
        }
    }
}

/// Delivers one result with `POST /v1/agent/runs/{id}/complete`.
pub async fn deliver_one(client: &Client, e: Entry) -> Delivered {
    match client.complete(e.run_id, &e.request).await {
        Ok(resp) => {
            if resp.status == "stale" {
                tracing::info!(
                    run = e.run_id,
                    attempt = e.request.attempt,
                    "result was stale (run reassigned)"
                );
            }
            Ok(())
        }
        // 404: the run is gone with its job (deleted meanwhile); expected.
        Err(CallError::Rejected { status: 404, body }) => {
            tracing::info!(run = e.run_id, %body, "the run no longer exists (its job was deleted?); result dropped");
            Ok(())
        }
        Err(CallError::Rejected { status, body }) => {
            tracing::error!(run = e.run_id, status, %body, "server rejected a result; dropping it");
            Ok(())
        }
        Err(err) => {
            tracing::debug!(run = e.run_id, error = %err, "delivery failed");
            Err(e)
        }
    }
}
