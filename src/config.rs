//! Command-line settings: where to listen and every limit, each with a default that suits
//! a small public server. Parsed by hand to keep the dependency list short.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_BIND: &str = "127.0.0.1";
pub const DEFAULT_HTTP_PORT: u16 = 8080;
pub const DEFAULT_WS_PORT: u16 = 12345;
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_PONG_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_RATE_LIMIT_PER_SEC: u32 = 20;
pub const DEFAULT_FLOOD_CLOSE: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_LAG_BYTES: u64 = 4 * 1024 * 1024;
pub const DEFAULT_REDIS_MAX_ENTRIES: u64 = 100_000;
/// Two minutes, as Socket.IO's connection state recovery: a phone changing networks or a
/// laptop waking comes back well within it, and a page closed for good is announced as left
/// before anyone wonders where it went.
pub const DEFAULT_RESUME_WINDOW: Duration = Duration::from_secs(120);

/// One address's share of each port. A school or an office behind one NAT address fits,
/// while a single script from one address takes at most a fortieth of a room of 20,000.
pub const DEFAULT_MAX_CLIENTS_PER_ADDRESS: usize = 500;

/// Page connections held at once, unless an eighth of the open-file limit is less. A visit
/// needs one or two for a moment, and each costs a descriptor and a thread that the chat's
/// clients then cannot have, so the page gets a small, fixed share.
pub const DEFAULT_MAX_PAGE_CONNECTIONS: usize = 512;

/// More clients than this and a join could wait a long time for a free `user-N`: the
/// room draws nicknames at random from 100,000.
pub const MOST_CLIENTS: usize = crate::wire::NICKNAME_SPACE as usize / 2;

/// Everything the server needs to know before it binds a socket.
#[derive(Clone, Debug)]
pub struct Config {
    pub bind: IpAddr,
    pub http_port: u16,
    pub ws_port: u16,
    /// Serve the page from this folder instead of the copy built into the binary.
    pub www: Option<PathBuf>,
    pub max_message_bytes: usize,
    /// `None`: derived from the open-file limit at start.
    pub max_clients: Option<usize>,
    /// Connections one address may hold on each port; 0 for no limit.
    pub max_clients_per_address: usize,
    /// `None`: derived from the open-file limit at start.
    pub max_page_connections: Option<usize>,
    pub handshake_timeout: Duration,
    pub write_timeout: Duration,
    /// A client this many bytes behind the room is too slow; the log keeps this much.
    pub max_lag_bytes: u64,
    /// `None`: never ping.
    pub ping_interval: Option<Duration>,
    pub pong_timeout: Duration,
    /// Messages per second per client; the burst is twice that. 0 turns it off.
    pub rate_limit: u32,
    pub flood_close: Duration,
    /// How long a resumable client that dropped without a close keeps its session.
    pub resume_window: Duration,
    /// Origins allowed besides the server's own host; `*` allows any.
    pub allow_origins: Vec<String>,
    /// The exact WebSocket URL the page should use (behind a proxy).
    pub ws_url: Option<String>,
    /// Take clients' addresses from X-Forwarded-For, and the Origin check's host from
    /// X-Forwarded-Host: only behind a proxy that sets them.
    pub trust_proxy: bool,
    /// Share the room with other instances through this Redis.
    pub redis: Option<String>,
    /// The cluster's stream is trimmed to about this many lines.
    pub redis_max_entries: u64,
    /// The admin port (metrics, health, readiness); `None`: off.
    pub admin_port: Option<u16>,
    pub admin_bind: IpAddr,
    pub trace: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            bind: IpAddr::from([127, 0, 0, 1]),
            http_port: DEFAULT_HTTP_PORT,
            ws_port: DEFAULT_WS_PORT,
            www: None,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_clients: None,
            max_clients_per_address: DEFAULT_MAX_CLIENTS_PER_ADDRESS,
            max_page_connections: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            max_lag_bytes: DEFAULT_MAX_LAG_BYTES,
            ping_interval: Some(DEFAULT_PING_INTERVAL),
            pong_timeout: DEFAULT_PONG_TIMEOUT,
            rate_limit: DEFAULT_RATE_LIMIT_PER_SEC,
            flood_close: DEFAULT_FLOOD_CLOSE,
            resume_window: DEFAULT_RESUME_WINDOW,
            allow_origins: Vec::new(),
            ws_url: None,
            trust_proxy: false,
            redis: None,
            redis_max_entries: DEFAULT_REDIS_MAX_ENTRIES,
            admin_port: None,
            admin_bind: IpAddr::from([127, 0, 0, 1]),
            trace: false,
        }
    }
}

impl Config {
    /// Refuses a flag this build was compiled without, naming the feature that has it.
    pub fn check_build(&self) -> Result<(), String> {
        if self.trace && !cfg!(feature = "trace") {
            return Err("this build has no --trace (built without the trace feature)".into());
        }
        if self.redis.is_some() && !cfg!(feature = "redis") {
            return Err(
                "this build has no --redis: build it with the redis feature \
                        (cargo build --release --features redis)"
                    .into(),
            );
        }
        Ok(())
    }
}

/// What the command line asks for.
pub enum Command {
    Run(Box<Config>),
    Help,
}

pub fn usage() -> String {
    format!(
        "threadchat: the Common Lisp Cookbook's WebSocket chat room, as threads

Usage: threadchat [OPTIONS]

Listening:
  --bind ADDR                address for both listeners [default: {DEFAULT_BIND}]
  --http-port N              port of the chat page, 0 picks one [default: {DEFAULT_HTTP_PORT}]
  --ws-port N                port of the WebSocket server, 0 picks one [default: {DEFAULT_WS_PORT}]
  --www DIR                  serve the page from DIR instead of the built-in copy

Behind a proxy (see docs/DEPLOY.md):
  --ws-url URL               the page connects to exactly this, e.g. wss://chat.example.org/ws
  --trust-proxy              log and count the address the proxy puts last in X-Forwarded-For,
                             and check Origin against X-Forwarded-Host; only behind a proxy that
                             sets them

Limits (times in seconds, fractions allowed):
  --max-message-bytes N      longest text message; longer closes with 1009 [default: {DEFAULT_MAX_MESSAGE_BYTES}]
  --max-clients N            clients at once, counting sessions that wait for theirs; more get
                             HTTP 503 [default: from the open-file limit]
  --max-clients-per-address N
                             connections one address may hold on each port, 0 for no limit;
                             more get HTTP 429 [default: {DEFAULT_MAX_CLIENTS_PER_ADDRESS}]
  --max-page-connections N   page connections at once; when full, the one waiting longest
                             makes room, and HTTP 503 only if all are being answered
                             [default: {DEFAULT_MAX_PAGE_CONNECTIONS}, or an eighth of the open-file limit if less]
  --handshake-timeout S      time to send a whole request head, on both ports [default: {}]
  --write-timeout S          drop a client whose socket takes nothing for this long [default: {}]
  --max-lag-bytes N          close (1008) a client this far behind the room [default: {DEFAULT_MAX_LAG_BYTES}]
  --ping-interval S          ping every client this often; 0: never, and never drop a silent
                             client [default: {}, or half of --pong-timeout if less]
  --pong-timeout S           drop a client silent for this long [default: {}, or twice
                             --ping-interval if more]
  --rate-limit N             messages per second per client, burst 2N, 0 for no limit [default: {DEFAULT_RATE_LIMIT_PER_SEC}]
  --flood-close S            close a client that floods this long with 1008 [default: {}]
  --allow-origin ORIGIN      also accept pages from ORIGIN (repeatable, * for any)

Resumable sessions (clients that ask for the threadchat-resume subprotocol):
  --resume-window S          a client dropped without a close keeps its name and its place
                             this long [default: {}]

More than one machine (a build with the `redis` feature):
  --redis URL                share one room with every instance using this Redis, e.g. redis://127.0.0.1:6379/
  --redis-max-entries N      trim the shared stream to about N lines [default: {DEFAULT_REDIS_MAX_ENTRIES}]

Operating (see docs/DEPLOY.md):
  --admin-port N             serve /metrics (Prometheus), /healthz, /readyz and a live page on
                             this port, 0 picks one [default: off]
  --admin-bind ADDR          address of the admin port, never the page's [default: 127.0.0.1]

Learning:
  --trace                    print the handshake, every frame and every decision on stderr
  -h, --help                 print this help
",
        DEFAULT_HANDSHAKE_TIMEOUT.as_secs(),
        DEFAULT_WRITE_TIMEOUT.as_secs(),
        DEFAULT_PING_INTERVAL.as_secs(),
        DEFAULT_PONG_TIMEOUT.as_secs(),
        DEFAULT_FLOOD_CLOSE.as_secs(),
        DEFAULT_RESUME_WINDOW.as_secs(),
    )
}

/// Reads the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut config = Config::default();
    // Each of these two defaults from the other, so they are resolved after the loop.
    let (mut ping_interval, mut pong_timeout) = (None, None);
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(Command::Help);
        }
        if flag == "--trace" {
            config.trace = true;
            continue;
        }
        if flag == "--trust-proxy" {
            config.trust_proxy = true;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--bind" => config.bind = parse_value(&flag, &value)?,
            "--http-port" => config.http_port = parse_value(&flag, &value)?,
            "--ws-port" => config.ws_port = parse_value(&flag, &value)?,
            "--www" => config.www = Some(PathBuf::from(value)),
            "--max-message-bytes" => config.max_message_bytes = positive(&flag, &value)?,
            "--max-clients" => match positive(&flag, &value)? {
                n if n > MOST_CLIENTS => {
                    return Err(format!("--max-clients can be at most {MOST_CLIENTS}"))
                }
                n => config.max_clients = Some(n),
            },
            "--max-clients-per-address" => {
                config.max_clients_per_address = parse_value(&flag, &value)?
            }
            "--max-page-connections" => {
                config.max_page_connections = Some(positive(&flag, &value)?)
            }
            "--handshake-timeout" => config.handshake_timeout = seconds(&flag, &value)?,
            "--write-timeout" => config.write_timeout = seconds(&flag, &value)?,
            "--max-lag-bytes" => config.max_lag_bytes = parse_value(&flag, &value)?,
            "--ping-interval" => ping_interval = Some(seconds_or_zero(&flag, &value)?),
            "--pong-timeout" => pong_timeout = Some(seconds(&flag, &value)?),
            "--rate-limit" => config.rate_limit = parse_value(&flag, &value)?,
            "--flood-close" => config.flood_close = seconds(&flag, &value)?,
            "--resume-window" => config.resume_window = seconds(&flag, &value)?,
            "--allow-origin" => config.allow_origins.push(value),
            "--ws-url" => config.ws_url = Some(websocket_url(&value)?),
            "--redis" => config.redis = Some(value),
            "--admin-port" => config.admin_port = Some(parse_value(&flag, &value)?),
            "--admin-bind" => config.admin_bind = parse_value(&flag, &value)?,
            "--redis-max-entries" => config.redis_max_entries = positive(&flag, &value)? as u64,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    (config.ping_interval, config.pong_timeout) = pings(ping_interval, pong_timeout)?;
    // A client must be able to fall behind by a whole message or two without being evicted.
    let least_lag = 2 * config.max_message_bytes as u64;
    if config.max_lag_bytes < least_lag {
        return Err(format!(
            "--max-lag-bytes must be at least twice --max-message-bytes ({least_lag})"
        ));
    }
    Ok(Command::Run(Box::new(config)))
}

/// The ping interval and the silence after which a client is taken for dead, from the flags
/// given. A live client's pong must be able to arrive before the deadline, so the interval
/// must be shorter than the timeout; each defaults to what keeps the other's ratio (one
/// half). An interval of 0 turns pings off, and with them the deadline: an idle browser
/// sends nothing by itself, so silence alone then proves nothing.
fn pings(
    interval: Option<Duration>,
    timeout: Option<Duration>,
) -> Result<(Option<Duration>, Duration), String> {
    if interval == Some(Duration::ZERO) {
        return Ok((None, timeout.unwrap_or(DEFAULT_PONG_TIMEOUT)));
    }
    let (interval, timeout) = match (interval, timeout) {
        (None, None) => (DEFAULT_PING_INTERVAL, DEFAULT_PONG_TIMEOUT),
        (Some(interval), None) => (
            interval,
            interval.saturating_mul(2).max(DEFAULT_PONG_TIMEOUT),
        ),
        (None, Some(timeout)) => ((timeout / 2).min(DEFAULT_PING_INTERVAL), timeout),
        (Some(interval), Some(timeout)) => (interval, timeout),
    };
    if interval < MOST_FREQUENT_PING {
        return Err(format!(
            "--ping-interval must be at least {} s, or 0 for none; --pong-timeout at least \
             twice that",
            MOST_FREQUENT_PING.as_secs_f64()
        ));
    }
    if interval >= timeout {
        return Err(format!(
            "--ping-interval ({} s) must be shorter than --pong-timeout ({} s), or every \
             healthy client would be closed as silent",
            interval.as_secs_f64(),
            timeout.as_secs_f64()
        ));
    }
    Ok((Some(interval), timeout))
}

/// Pings more often than this would keep the room busy pinging.
const MOST_FREQUENT_PING: Duration = Duration::from_millis(10);

/// A `ws://` or `wss://` URL made only of characters that need no escaping in the page.
fn websocket_url(value: &str) -> Result<String, String> {
    let scheme_ok = value.starts_with("ws://") || value.starts_with("wss://");
    let plain = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-._~:/?#[]@!$&()*+,;=%".contains(c));
    if scheme_ok && plain {
        Ok(value.to_owned())
    } else {
        Err(format!("--ws-url: {value:?} is not a ws:// or wss:// URL"))
    }
}

fn parse_value<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{flag}: cannot read {value:?}"))
}

fn positive(flag: &str, value: &str) -> Result<usize, String> {
    match parse_value(flag, value)? {
        0 => Err(format!("{flag} must be at least 1")),
        n => Ok(n),
    }
}

fn seconds_or_zero(flag: &str, value: &str) -> Result<Duration, String> {
    let secs: f64 = parse_value(flag, value)?;
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("{flag}: {value:?} is not a time in seconds"))
}

fn seconds(flag: &str, value: &str) -> Result<Duration, String> {
    match seconds_or_zero(flag, value)? {
        d if d.is_zero() => Err(format!("{flag} must be more than 0")),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Config, String> {
        match parse(args.iter().map(|s| s.to_string()))? {
            Command::Run(config) => Ok(*config),
            Command::Help => Err("help".into()),
        }
    }

    #[test]
    fn defaults_match_the_cookbook_ports() {
        let config = run(&[]).unwrap();
        assert_eq!((config.http_port, config.ws_port), (8080, 12345));
        assert_eq!(config.bind.to_string(), DEFAULT_BIND);
    }

    #[test]
    fn fractional_seconds_and_repeated_origins() {
        let config = run(&[
            "--write-timeout",
            "0.25",
            "--allow-origin",
            "http://a.example",
            "--allow-origin",
            "*",
            "--ping-interval",
            "0",
        ])
        .unwrap();
        assert_eq!(config.write_timeout, Duration::from_millis(250));
        assert_eq!(config.allow_origins, ["http://a.example", "*"]);
        assert_eq!(config.ping_interval, None);
    }

    #[test]
    fn shares_and_the_page_limit() {
        let config = run(&[]).unwrap();
        assert_eq!(
            config.max_clients_per_address,
            DEFAULT_MAX_CLIENTS_PER_ADDRESS
        );
        assert_eq!(config.max_page_connections, None);
        let config = run(&[
            "--max-clients-per-address",
            "0",
            "--max-page-connections",
            "64",
        ])
        .unwrap();
        assert_eq!(config.max_clients_per_address, 0);
        assert_eq!(config.max_page_connections, Some(64));
        assert!(run(&["--max-page-connections", "0"])
            .unwrap_err()
            .contains("at least 1"));
        assert!(run(&["--max-clients-per-address", "-1"])
            .unwrap_err()
            .contains("--max-clients-per-address"));
    }

    #[test]
    fn bad_values_are_named_in_the_error() {
        assert!(run(&["--ws-port", "huge"])
            .unwrap_err()
            .contains("--ws-port"));
        assert!(run(&["--max-clients", "0"])
            .unwrap_err()
            .contains("at least 1"));
        assert!(run(&["--nope", "1"])
            .unwrap_err()
            .contains("unknown option"));
        assert!(run(&["--bind"]).unwrap_err().contains("needs a value"));
        assert!(run(&["--ws-url", "http://x/"])
            .unwrap_err()
            .contains("--ws-url"));
        assert!(run(&["--ws-url", "wss://x/\"+alert(1)+\""])
            .unwrap_err()
            .contains("--ws-url"));
        assert_eq!(
            run(&["--ws-url", "wss://chat.example.org/ws"])
                .unwrap()
                .ws_url
                .as_deref(),
            Some("wss://chat.example.org/ws")
        );
        assert!(run(&["--max-lag-bytes", "1000"])
            .unwrap_err()
            .contains("--max-lag-bytes"));
    }

    #[test]
    fn a_ping_interval_not_shorter_than_the_pong_timeout_is_refused() {
        for (ping, pong) in [("5", "5"), ("6", "5")] {
            let err = run(&["--ping-interval", ping, "--pong-timeout", pong]).unwrap_err();
            assert!(err.contains("--ping-interval") && err.contains("--pong-timeout"));
        }
        let config = run(&["--ping-interval", "4", "--pong-timeout", "5"]).unwrap();
        assert_eq!(config.ping_interval, Some(Duration::from_secs(4)));
    }

    #[test]
    fn ping_interval_and_pong_timeout_default_from_each_other() {
        let config = run(&["--pong-timeout", "2"]).unwrap();
        assert_eq!(config.ping_interval, Some(Duration::from_secs(1)));
        let config = run(&["--ping-interval", "90"]).unwrap();
        assert_eq!(config.pong_timeout, Duration::from_secs(180));
        let config = run(&["--ping-interval", "10"]).unwrap();
        assert_eq!(config.pong_timeout, DEFAULT_PONG_TIMEOUT);
        let config = run(&[]).unwrap();
        assert_eq!(
            (config.ping_interval, config.pong_timeout),
            (Some(DEFAULT_PING_INTERVAL), DEFAULT_PONG_TIMEOUT)
        );
        let config = run(&["--ping-interval", "0", "--pong-timeout", "0.1"]).unwrap();
        assert_eq!(
            config.ping_interval, None,
            "0 is never, whatever the timeout"
        );
        // No pinging the room to death, nor a silent "never" from a tiny timeout.
        assert!(run(&["--pong-timeout", "0.000000001"]).is_err());
        assert!(run(&["--ping-interval", "0.001", "--pong-timeout", "1"]).is_err());
        assert!(run(&["--ping-interval", "1e19"]).is_ok(), "no overflow");
    }

    #[test]
    fn default_limits_are_the_ones_the_readme_lists() {
        let config = run(&[]).unwrap();
        assert_eq!(config.max_message_bytes, 65536);
        assert_eq!(config.max_clients, None, "derived from the open-file limit");
        assert_eq!(config.handshake_timeout, Duration::from_secs(10));
        assert_eq!(config.max_lag_bytes, 4_194_304);
        assert_eq!(config.write_timeout, Duration::from_secs(10));
        assert_eq!(config.ping_interval, Some(Duration::from_secs(30)));
        assert_eq!(config.pong_timeout, Duration::from_secs(60));
        assert_eq!(config.rate_limit, 20);
        assert_eq!(config.flood_close, Duration::from_secs(10));
        assert!(config.allow_origins.is_empty());
        assert_eq!(config.redis_max_entries, 100_000);
    }
}
