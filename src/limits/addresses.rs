//! One address, a fair share: how many connections each client address holds on a port.
//!
//! The WebSocket listener and the page listener each keep a table and take a slot for every
//! connection they accept (or, behind a trusted proxy, for the address the proxy forwards);
//! the slot is given back when it is dropped, however the connection ends. An address with
//! no slot left is refused with HTTP 429, and that is logged once a minute per address, not
//! once per attempt. A leaf: it imports nothing from the crate.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// A refused address is logged at most this often: a script that retries in a loop
/// would otherwise fill the log.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Past this many remembered log times, the ones older than [`LOG_EVERY`] are forgotten,
/// so that addresses refused long ago cost nothing.
const LOGGED_ADDRESSES_KEPT: usize = 1024;

/// An IPv6 host usually gets a whole /64 to itself, so one address is one /64 prefix:
/// counting single IPv6 addresses would let one host take every slot.
const IPV6_HOST_PREFIX_BITS: u32 = 64;

/// Connections per address on one port.
pub struct AddressTable {
    /// 0: no limit (every connection is still counted, which costs next to nothing).
    limit: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    held: HashMap<IpAddr, usize>,
    logged: HashMap<IpAddr, Instant>,
}

/// One connection's place in its address's share, given back on drop.
pub struct AddressSlot {
    table: Arc<AddressTable>,
    key: IpAddr,
}

/// An address that already holds its share.
#[derive(Debug)]
pub struct Refused {
    /// The address as counted: an IPv4 address, or an IPv6 /64.
    pub address: String,
    pub limit: usize,
    /// True the first time this address is refused in a minute: then, and only then, log it.
    pub log: bool,
}

impl Refused {
    /// The one line the client reads in its 429.
    pub fn reason(&self) -> String {
        format!(
            "too many connections from {}: at most {} per address, try again later",
            self.address, self.limit
        )
    }

    /// Logs the refusal on stderr, once a minute per address.
    pub fn report(&self, port: &str) {
        if self.log {
            eprintln!(
                "threadchat: {} holds {} connections to the {port}, its share; \
                 refusing more with HTTP 429 (logged once a minute)",
                self.address, self.limit
            );
        }
    }
}

impl AddressTable {
    pub fn new(limit: usize) -> Arc<AddressTable> {
        Arc::new(AddressTable {
            limit,
            state: Mutex::new(State::default()),
        })
    }

    /// A slot for one more connection from `ip`, unless it already holds its share.
    pub fn take(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<AddressSlot, Refused> {
        let key = address_key(ip);
        let mut state = self.lock();
        let held = state.held.entry(key).or_insert(0);
        if self.limit > 0 && *held >= self.limit {
            let log = state.should_log(key, now);
            return Err(Refused {
                address: show(key),
                limit: self.limit,
                log,
            });
        }
        *held += 1;
        Ok(AddressSlot {
            table: self.clone(),
            key,
        })
    }

    /// A panic elsewhere while the lock was held leaves the counts as they were, whole:
    /// every change under the lock is a single step.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn should_log(&mut self, key: IpAddr, now: Instant) -> bool {
        if let Some(&last) = self.logged.get(&key) {
            if now.saturating_duration_since(last) < LOG_EVERY {
                return false;
            }
        }
        if self.logged.len() >= LOGGED_ADDRESSES_KEPT {
            self.logged
                .retain(|_, &mut last| now.saturating_duration_since(last) < LOG_EVERY);
        }
        self.logged.insert(key, now);
        true
    }
}

impl std::fmt::Debug for AddressSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AddressSlot({})", show(self.key))
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut state = self.table.lock();
        if let Some(held) = state.held.get_mut(&self.key) {
            *held -= 1;
            if *held == 0 {
                state.held.remove(&self.key);
            }
        }
    }
}

/// What is counted for `ip`: an IPv4 address (also when it arrives IPv4-mapped), or the
/// /64 an IPv6 address belongs to.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let host_bits = 128 - IPV6_HOST_PREFIX_BITS;
            IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() >> host_bits << host_bits))
        }
        v4 => v4,
    }
}

fn show(key: IpAddr) -> String {
    match key {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("{v6}/{IPV6_HOST_PREFIX_BITS}"),
    }
}

/// The client's address a trusted proxy forwards: the last entry of the last
/// `X-Forwarded-For` header, the one the proxy itself added. Entries before it came from
/// the client and prove nothing. `headers` are that header's values, in order.
pub fn last_forwarded<'a>(mut headers: impl DoubleEndedIterator<Item = &'a str>) -> Option<IpAddr> {
    let entry = headers.next_back()?.rsplit(',').next()?.trim();
    // Some balancers add the client's port: "203.0.113.7:5123", "[2001:db8::1]:443".
    entry
        .parse()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_forwarded_entry_with_a_port_counts_by_its_address() {
        assert_eq!(
            last_forwarded(["10.0.0.1, 203.0.113.7:5123"].into_iter()),
            Some(ip("203.0.113.7"))
        );
        assert_eq!(
            last_forwarded(["[2001:db8::1]:443"].into_iter()),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(last_forwarded(["not an address"].into_iter()), None);
    }

    #[test]
    fn an_address_gets_its_share_and_gets_it_back() {
        let table = AddressTable::new(2);
        let now = Instant::now();
        let a = table.take(ip("192.0.2.1"), now).unwrap();
        let _b = table.take(ip("192.0.2.1"), now).unwrap();
        let refused = table.take(ip("192.0.2.1"), now).unwrap_err();
        assert_eq!(refused.address, "192.0.2.1");
        assert!(refused.reason().contains("at most 2 per address"));
        assert!(table.take(ip("192.0.2.2"), now).is_ok());
        drop(a);
        assert!(table.take(ip("192.0.2.1"), now).is_ok());
    }

    #[test]
    fn no_limit_refuses_nobody() {
        let table = AddressTable::new(0);
        let now = Instant::now();
        let held: Vec<_> = (0..100)
            .map(|_| table.take(ip("192.0.2.1"), now).unwrap())
            .collect();
        assert_eq!(held.len(), 100);
    }

    #[test]
    fn a_refused_address_is_logged_once_a_minute() {
        let table = AddressTable::new(1);
        let start = Instant::now();
        let _held = table.take(ip("192.0.2.1"), start).unwrap();
        let logs = |at: Instant| table.take(ip("192.0.2.1"), at).unwrap_err().log;
        assert!(logs(start));
        assert!(!logs(start + Duration::from_secs(1)));
        assert!(!logs(start + Duration::from_secs(59)));
        assert!(logs(start + Duration::from_secs(61)));
    }

    #[test]
    fn ipv6_is_counted_by_its_64_and_mapped_ipv4_as_ipv4() {
        let table = AddressTable::new(1);
        let now = Instant::now();
        let _held = table.take(ip("2001:db8:1:2::1"), now).unwrap();
        let refused = table.take(ip("2001:db8:1:2:ffff::9"), now).unwrap_err();
        assert_eq!(refused.address, "2001:db8:1:2::/64");
        assert!(table.take(ip("2001:db8:1:3::1"), now).is_ok());
        let _v4 = table.take(ip("192.0.2.7"), now).unwrap();
        assert!(table.take(ip("::ffff:192.0.2.7"), now).is_err());
    }

    #[test]
    fn the_last_forwarded_entry_is_the_one_the_proxy_added() {
        assert_eq!(
            last_forwarded(["10.9.9.9, 198.51.100.7"].into_iter()),
            Some(ip("198.51.100.7"))
        );
        assert_eq!(
            last_forwarded(["203.0.113.1", "198.51.100.8"].into_iter()),
            Some(ip("198.51.100.8"))
        );
        assert_eq!(last_forwarded(["not an address"].into_iter()), None);
        assert_eq!(last_forwarded(std::iter::empty()), None);
    }
}
