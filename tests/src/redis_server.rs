//! A real `redis-server` for the fleet tests: its own process on an ephemeral loopback port,
//! persistence off, stopped (killed) when dropped. `.ci/run` installs the Debian package.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One Redis server process.
pub struct RedisServer {
    child: Option<Child>,
    addr: SocketAddr,
    dir: std::path::PathBuf,
    password: Option<String>,
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port and waits until it answers `PING`
    /// (at most 10 s).
    ///
    /// # Panics
    /// When `redis-server` is not installed or does not come up.
    pub fn start() -> RedisServer {
        Self::start_with_password(None)
    }

    /// [`RedisServer::start`] requiring `password` (`requirepass`) when one is given.
    ///
    /// # Panics
    /// As [`RedisServer::start`].
    pub fn start_with_password(password: Option<&str>) -> RedisServer {
        let port =
            TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("an ephemeral port for Redis").port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let dir = std::env::temp_dir().join(format!("portcullis-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory for Redis");
        let mut server = RedisServer { child: None, addr, dir, password: password.map(str::to_owned) };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let child = command
            .args(["--bind", "127.0.0.1", "--port", &self.addr.port().to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "yes"])
            .args(["--enable-debug-command", "local"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server; .ci/run does it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not answer on {} within 10 s", self.addr);
    }

    fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.client_url()) else { return false };
        let Ok(mut connection) = client.get_connection_with_timeout(Duration::from_millis(200)) else { return false };
        redis::cmd("PING").query::<String>(&mut connection).is_ok_and(|p| p == "PONG")
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// The URL with the password, for the test's own client.
    fn client_url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@{}/0", self.addr),
            None => self.url(),
        }
    }

    /// A `[kv]` table for this server, with `extra` TOML lines.
    pub fn kv_table(&self, extra: &str) -> String {
        format!("\n[kv]\nbackend = \"redis\"\nurl = \"{}\"\n{extra}\n", self.url())
    }

    /// Runs one command and returns its reply.
    ///
    /// # Panics
    /// When the server cannot be reached or refuses the command.
    pub fn command<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let client = redis::Client::open(self.client_url()).expect("the Redis URL");
        let mut connection = client.get_connection().expect("a connection to the test Redis");
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query(&mut connection).expect("a Redis reply")
    }

    /// Kills the server (as a crash would: no shutdown handshake).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    ///
    /// # Panics
    /// As [`RedisServer::start`].
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
