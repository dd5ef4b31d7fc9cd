//! The WebSocket port, from the accept to the last frame read: the listener's loop, the
//! upgrade, and each client's reader thread over the socket it reads and the outbox it
//! writes into.

pub mod client;
pub mod handshake;
pub mod listener;
pub mod socket;
