//! A real redis-server (Debian's) for the cluster tests, started on a free port with no
//! persistence, and the threadchat instances that share it.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{wait_at_most, Server, PATIENCE};

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
        Redis::start_saving(false)
    }

    /// A fresh redis-server that saves its data in a folder of its own when asked (SAVE),
    /// for [`Redis::restart_from_dump`]; or None, as [`Redis::start`].
    pub fn start_with_dump() -> Option<Redis> {
        Redis::start_saving(true)
    }

    fn start_saving(dump: bool) -> Option<Redis> {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .spawn()
            .map(|mut version| wait_at_most(&mut version, PATIENCE));
        if found.is_err() {
            assert!(
                std::env::var("CI").unwrap_or_default().is_empty(),
                "redis-server is missing; make test installs it"
            );
            eprintln!("WARNING: redis-server not found; the cluster tests are SKIPPED");
            return None;
        }
        // redis-server cannot be given port 0 (that turns TCP off), so it gets a port that was
        // free a moment ago; should another process take it first, this one exits, and
        // another port is tried.
        let mut tried = Vec::new();
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free port");
            let dir = dump.then(|| {
                let dir = std::env::temp_dir()
                    .join(format!("threadchat-redis-{}-{port}", std::process::id()));
                std::fs::create_dir_all(&dir).expect("a folder for the dump");
                dir
            });
            match Redis::try_start_on(port, dir) {
                Ok(redis) => return Some(redis),
                Err(why) => tried.push(why),
            }
        }
        panic!("no redis-server started: {tried:?}");
    }

    /// A redis-server on `port`, empty.
    pub fn start_on(port: u16) -> Redis {
        Redis::try_start_on(port, None).unwrap_or_else(|why| panic!("{why}"))
    }

    /// A redis-server on `port`, once it answers as itself (its process id), so a test
    /// never talks to another process that holds the port; or why not, within PATIENCE.
    fn try_start_on(port: u16, dump_dir: Option<PathBuf>) -> Result<Redis, String> {
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
        let mut redis = Redis {
            child,
            port,
            dump_dir,
        };
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = redis.child.try_wait().expect("redis-server's status") {
                return Err(format!("redis-server on {port} exited at start ({status})"));
            }
            if redis.answers_as_itself() {
                return Ok(redis);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "redis-server on {port} did not answer within {PATIENCE:?}"
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the process answering on the port is this one.
    fn answers_as_itself(&self) -> bool {
        let info = redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
            .and_then(|mut c| {
                c.set_read_timeout(Some(Duration::from_secs(1)))?;
                redis::cmd("INFO").arg("server").query::<String>(&mut c)
            });
        let own = format!("process_id:{}", self.child.id());
        info.is_ok_and(|info| info.lines().any(|line| line.trim_end() == own))
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
        *self = Redis::try_start_on(self.port, dir).unwrap_or_else(|why| panic!("{why}"));
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
