//! What one client, or one address, may hold and do: its seat among `--max-clients`, its
//! address's share of each port, and how often it may speak; how many connections an HTTP
//! port holds at once; and how the open-file limit is shared between the ports.

pub mod addresses;
pub mod descriptors;
pub mod places;
pub mod rate;
pub mod seat;
