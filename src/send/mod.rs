//! The send path, from the room's append to the kernel: the log every line is framed into
//! once, each client's outbox for what is its alone, a delivery that sends both in one
//! `sendmsg`, and the writer threads that decide when.

pub mod delivery;
pub mod gather;
pub mod log;
pub mod outbox;
pub mod writer;
