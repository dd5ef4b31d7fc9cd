//! What every connection shares: the settings, the room's inbox, the writers, the log, and
//! the count of clients held. Built once in `main`, handed to the listener, and from it
//! to every connection's threads.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use crossbeam_channel::Sender;

use crate::config::Config;
use crate::event::Event;
use crate::figures::Figures;
use crate::limits::addresses::AddressTable;
use crate::send::log::LogReader;
use crate::send::writer::Writer;
use crate::trace::Trace;

/// What every connection thread needs from the server.
pub struct Shared {
    pub config: Config,
    pub events: Sender<Event>,
    /// Clients held: open connections, joined or still in their handshake, and sessions
    /// waiting for their client. At most `max_clients`.
    pub connections: Arc<AtomicUsize>,
    pub max_clients: usize,
    /// Connections per client address on the WebSocket port.
    pub addresses: Arc<AddressTable>,
    /// Where the chat page lives, for the answer to a plain HTTP request.
    pub page_url: String,
    pub trace: Trace,
    /// The writer threads; a client belongs to one of them for its whole life.
    pub writers: Vec<Arc<Writer>>,
    /// Where private frames learn their place among the room's lines: the log of each
    /// dialect, by `Dialect as usize`.
    pub logs: [LogReader; 2],
    /// What the admin port reads.
    pub figures: Arc<Figures>,
}
