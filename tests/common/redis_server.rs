//! A real redis-server (Debian's) for the cluster tests, started on a free port with no
//! persistence, and the threadchat instances that share it.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{eventually, Server};

pub struct Redis {
    child: Child,
    pub port: u16,
    /// Where it saves its data when asked (SAVE) and loads it from when it starts; None:
    /// nowhere.
    dump_dir: Option<PathBuf>,
}

impl Redis {
    /// A fresh redis-server, or None (with a loud warning) where there is none and this is
    /// not CI.
    pub fn start() -> Option<Redis> {
        let port = Redis::free_port()?;
        Some(Redis::start_on(port))
    }

    /// A fresh redis-server that saves its data in a folder of its own when asked (SAVE),
    /// for [`Redis::restart_from_dump`]; or None, as [`Redis::start`].
    pub fn start_with_dump() -> Option<Redis> {
        let port = Redis::free_port()?;
        let dir =
            std::env::temp_dir().join(format!("threadchat-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a folder for the dump");
        Some(Redis::start_in(port, Some(dir)))
    }

    /// A free port for a redis-server, or None (with a loud warning) where there is no
    /// redis-server and this is not CI.
    fn free_port() -> Option<u16> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            assert!(
                std::env::var("CI").unwrap_or_default().is_empty(),
                "redis-server is missing; make test installs it"
            );
            eprintln!("WARNING: redis-server not found; the cluster tests are SKIPPED");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        Some(port)
    }

    /// A redis-server on `port`, empty.
    pub fn start_on(port: u16) -> Redis {
        Redis::start_in(port, None)
    }

    /// A redis-server on `port`, with what `dump_dir` holds, if anything.
    fn start_in(port: u16, dump_dir: Option<PathBuf>) -> Redis {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"]);
        if let Some(dir) = &dump_dir {
            command
                .arg("--dir")
                .arg(dir)
                .args(["--dbfilename", "dump.rdb"]);
        }
        let child = command
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let redis = Redis {
            child,
            port,
            dump_dir,
        };
        eventually("redis-server to answer", || {
            redis::Client::open(redis.url())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
        });
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// A failover gone wrong: this Redis follows a primary that is not there and refuses
    /// every write with READONLY, until `take_writes`. The listener returned keeps that
    /// address from being anyone else's meanwhile.
    pub fn follow_nobody(&self) -> TcpListener {
        let nobody = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = nobody.local_addr().expect("its address").port();
        let () = redis::cmd("REPLICAOF")
            .arg("127.0.0.1")
            .arg(port)
            .query(&mut self.connection())
            .expect("REPLICAOF");
        nobody
    }

    /// Takes writes again: REPLICAOF NO ONE.
    pub fn take_writes(&self) {
        let () = redis::cmd("REPLICAOF")
            .arg("NO")
            .arg("ONE")
            .query(&mut self.connection())
            .expect("REPLICAOF NO ONE");
    }

    pub fn connection(&self) -> redis::Connection {
        let connection = redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
            .expect("a connection to redis");
        connection
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("a read timeout");
        connection
    }

    /// kill -9, and a new empty redis-server on the same port: Redis restarted without
    /// persistence.
    pub fn restart_empty(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        *self = Redis::start_on(self.port);
    }

    /// Saves the data now (SAVE), as the last dump before a failure.
    pub fn save(&self) {
        assert!(
            self.dump_dir.is_some(),
            "started without a folder to save in"
        );
        let () = redis::cmd("SAVE")
            .query(&mut self.connection())
            .expect("SAVE");
    }

    /// kill -9, and a redis-server on the same port started from the last [`Redis::save`]:
    /// the data as it was then, epoch included, under a new run ID, as after a failover to
    /// a replica that lagged, or a restart from an old dump.
    pub fn restart_from_dump(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = self.dump_dir.take();
        *self = Redis::start_in(self.port, dir);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.dump_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A threadchat instance sharing the room through the Redis at `url`, with no flood limit.
pub fn instance_with(url: &str, args: &[&str]) -> Server {
    let mut all = vec!["--rate-limit", "0", "--redis", url];
    all.extend_from_slice(args);
    let server = Server::start(&all);
    assert!(
        server.startup[0].starts_with("threadchat: room shared through redis://"),
        "{:?}",
        server.startup
    );
    server
}

/// The instance's name in Redis, from its startup line.
pub fn instance_id(server: &Server) -> String {
    let line = &server.startup[0];
    line.rsplit_once(" as instance ")
        .unwrap_or_else(|| panic!("no instance name in {line:?}"))
        .1
        .to_owned()
}
