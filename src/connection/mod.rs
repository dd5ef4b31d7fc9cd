//! The WebSocket port, from the accept to the last frame read: the listener's loop, the
//! upgrade, and each client's reader thread over the socket it reads and the outbox it
//! writes into. How a reader's connection ends is `ending.rs`; the resume dialect's first
//! message, `first_message.rs`; what the upgrade request says, `request.rs`; the HTTP error
//! a refused upgrade gets, `refusal.rs`; the threads' stacks, `stacks.rs`.

pub mod client;
mod ending;
mod first_message;
pub mod handshake;
pub mod listener;
mod refusal;
mod request;
pub mod socket;
mod stacks;
