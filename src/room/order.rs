//! Where a line gets its place in the order every client sees.
//!
//! On one instance the room's own log decides: a line is placed the moment the room asks.
//! With `--redis`, instances share one order, a Redis stream: the room hands each item to
//! the cluster's publisher and hears later, through events, that the line came back through
//! the stream or that it was refused. The room asks both the same way and handles the
//! answers the same way, so it never needs to know which it has.

use crate::cluster::Publisher;
use crate::event::{ClientId, Item, Placement};

/// The order lines are placed in.
pub enum Order {
    /// This instance's own log.
    Local,
    /// A stream shared with other instances.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Shared(Publisher),
}

impl Order {
    pub fn place(&mut self, item: Item) -> Placement {
        match self {
            Order::Local => Placement::Now(item.into_entry()),
            Order::Shared(publisher) => publisher.submit(item),
        }
    }

    /// Whether other instances share the order (and the sessions).
    pub fn is_shared(&self) -> bool {
        matches!(self, Order::Shared(_))
    }

    /// A resumed session moved a name to this instance's client `Some(id)`, or away from
    /// this instance (`None`): the names it claims again if Redis loses them follow.
    pub fn holds(&mut self, nickname: &str, client: Option<ClientId>) {
        if let Order::Shared(publisher) = self {
            publisher.holds(nickname, client);
        }
    }

    /// The room has closed every client after this instance was fenced.
    pub fn restarted(&mut self) {
        if let Order::Shared(publisher) = self {
            publisher.restarted();
        }
    }

    /// The server is stopping: give what is waiting a moment to reach the others.
    pub fn flush(&mut self) {
        if let Order::Shared(publisher) = self {
            publisher.flush();
        }
    }
}
