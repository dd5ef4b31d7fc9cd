//! What one client, or one address, may hold and do: its seat among `--max-clients`, its
//! address's share of each port, and how often it may speak.

pub mod addresses;
pub mod rate;
pub mod seat;
