//! How the open-file limit is shared: every connection holds a descriptor, so the chat's
//! clients, the page server's connections and a reserve must fit under it. Read once, at
//! start, before any port is opened.

use crate::config::{self, Config};

/// Descriptors kept back from the client limit for the listeners, the writers' epoll sets
/// and the odd file (a page the page server reads from `--www`). The page server's
/// connections have a share of their own, `--max-page-connections`.
const RESERVED_DESCRIPTORS: u64 = 64;

/// By default the page server gets at most this fraction of the open-file limit.
const PAGE_DESCRIPTOR_DIVISOR: u64 = 8;

/// The most clients and the most page connections, as given or by default, or why what was
/// given does not fit under `open_files`.
pub fn shares(config: &Config, open_files: u64) -> Result<(usize, usize), String> {
    let max_page_connections = config
        .max_page_connections
        .unwrap_or_else(|| default_max_page_connections(open_files));
    let max_clients = config
        .max_clients
        .unwrap_or_else(|| default_max_clients(open_files, max_page_connections));
    if (max_clients + max_page_connections) as u64 + RESERVED_DESCRIPTORS <= open_files {
        return Ok((max_clients, max_page_connections));
    }
    let given: Vec<&str> = [
        config.max_clients.map(|_| "--max-clients"),
        config
            .max_page_connections
            .map(|_| "--max-page-connections"),
    ]
    .into_iter()
    .flatten()
    .collect();
    let settings = match given.as_slice() {
        [] => "the default limits".to_owned(),
        flags => flags.join(" and "),
    };
    Err(format!(
        "{settings} ({max_clients} clients, {max_page_connections} page connections, \
         {RESERVED_DESCRIPTORS} kept back) need more descriptors than the open-file limit \
         {open_files}"
    ))
}

/// The page server's share of the descriptors: a fixed number, or an eighth of them if less.
fn default_max_page_connections(open_files: u64) -> usize {
    let eighth = usize::try_from(open_files / PAGE_DESCRIPTOR_DIVISOR).unwrap_or(usize::MAX);
    config::DEFAULT_MAX_PAGE_CONNECTIONS.min(eighth).max(1)
}

/// Leaves room under the open-file limit for everything that is not a client.
fn default_max_clients(open_files: u64, max_page_connections: usize) -> usize {
    let for_clients = open_files
        .saturating_sub(RESERVED_DESCRIPTORS)
        .saturating_sub(max_page_connections as u64)
        .max(1);
    usize::try_from(for_clients)
        .unwrap_or(usize::MAX)
        .min(config::MOST_CLIENTS)
}
