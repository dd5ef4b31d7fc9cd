//! The stacks a connection's two threads run on in turn: the upgrade thread's, deep for a
//! moment, then the reader's, shallow for the connection's whole life. Off the path a
//! message takes, which only sees the threads start.
//!
//! Why two threads in turn: the handshake needs a deep stack for a moment (tungstenite's
//! request parser alone keeps 4 KB of header slots on it), and stack pages a thread has
//! touched stay in memory for as long as the thread lives. An exiting thread gives its
//! stack back, so the connection's long life runs on a fresh stack that only the shallow
//! read path ever touches.

/// Stack reserved for the upgrade thread, which runs the handshake and exits. glibc
/// keeps exited threads' stacks for reuse, with the 16 KiB under their first frame still
/// in memory, and hands one to a new thread asking for at least a quarter of its size
/// (guard page included). At eight times the reader's size, a reader never inherits one.
/// Only address space is reserved; the handshake touches a few pages of it.
pub const UPGRADE_STACK_BYTES: usize = 8 * READER_STACK_BYTES;

/// Stack reserved for the reader thread (Rust's default is 2 MiB). Only the pages it
/// touches count against memory, a few KiB. glibc keeps up to 40 MiB of exited threads'
/// stacks for reuse, each with a couple of pages still in memory, so the size also decides
/// how many it keeps after a storm has left: 40 at this size.
pub const READER_STACK_BYTES: usize = 1024 * 1024;
