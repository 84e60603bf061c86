//! `EventSubscriber`: receives the events a [`RedisCache`] publishes, one channel per event type.

use fred::clients::SubscriberClient;
use fred::prelude::{ClientLike, EventInterface, PubsubInterface};
use fred::types::Message;
use tokio::sync::broadcast;

use super::{RedisCache, VALUE_LIMIT, unavailable};
use crate::{EventRow, StorageError};

/// A subscription to some event types. Resubscribes by itself after a reconnect; events
/// published while it was disconnected are not replayed (Redis pub/sub keeps nothing).
pub struct EventSubscriber {
    client: SubscriberClient,
    rx: broadcast::Receiver<Message>,
    task: tokio::task::JoinHandle<()>,
    missed: u64,
}

impl std::fmt::Debug for EventSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSubscriber").field("channels", &self.client.tracked_channels()).finish()
    }
}

impl<S> RedisCache<S> {
    /// Subscribes to the events of `event_types` (one channel each, see
    /// [`RedisCache::event_channel`]), on a connection of its own.
    ///
    /// # Errors
    /// [`StorageError::Unavailable`] when Redis can't be reached.
    pub async fn subscribe(&self, event_types: &[&str]) -> Result<EventSubscriber, StorageError> {
        let client = self.builder.build_subscriber_client().map_err(unavailable)?;
        let rx = client.message_rx();
        client.init().await.map_err(unavailable)?;
        let task = client.manage_subscriptions();
        let channels: Vec<String> = event_types.iter().map(|t| self.event_channel(t)).collect();
        client.subscribe(channels).await.map_err(unavailable)?;
        Ok(EventSubscriber { client, rx, task, missed: 0 })
    }
}

impl EventSubscriber {
    /// The next event, waiting for it. `None` once the subscription is closed. An undecodable
    /// message is returned as [`StorageError::Corrupt`]; the subscription goes on.
    pub async fn recv(&mut self) -> Option<Result<EventRow, StorageError>> {
        loop {
            match self.rx.recv().await {
                Ok(message) => {
                    let Some(bytes) = message.value.as_bytes() else {
                        return Some(Err(corrupt(&message)));
                    };
                    return Some(terrarium_codec::decode(bytes, VALUE_LIMIT).map_err(|_| corrupt(&message)));
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    self.missed += n;
                    tracing::warn!(missed = n, "event subscriber fell behind; events were dropped");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Events dropped because this subscriber read too slowly.
    #[must_use]
    pub fn missed(&self) -> u64 {
        self.missed
    }

    /// Unsubscribes and closes the connection (dropping the subscriber closes it too, in the
    /// background).
    pub async fn close(self) {
        self.task.abort();
        let _ = self.client.unsubscribe(Vec::<String>::new()).await;
        let _ = self.client.quit().await;
    }
}

impl Drop for EventSubscriber {
    fn drop(&mut self) {
        self.task.abort();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            runtime.spawn(async move {
                let _ = client.quit().await;
            });
        }
    }
}

fn corrupt(message: &Message) -> StorageError {
    StorageError::Corrupt { what: format!("event on redis channel {}", message.channel) }
}
