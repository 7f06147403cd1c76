//! A real `redis-server` for tests: started on a free loopback port with nothing persisted,
//! killed when dropped.
//!
//! Tests that need one call [`RedisServer::start`]; where `redis-server` is not installed it
//! returns `None` (the test says it skipped), unless `IMAGEGEN_TEST_REDIS=1` (as CI sets), when
//! a missing server fails the test instead of hiding it.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A running `redis-server`, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
}

/// The binary: `IMAGEGEN_TEST_REDIS_SERVER`, else `redis-server` on the `PATH` (Debian's
/// package puts it in /usr/bin).
fn binary() -> String {
    std::env::var("IMAGEGEN_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

impl RedisServer {
    /// A new server on a free port, ready for commands; `None` (with a message) when
    /// `redis-server` is missing and `IMAGEGEN_TEST_REDIS` is not `1`.
    pub fn start() -> Option<Self> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        let mut server = Self { child: None, port };
        if !server.spawn() {
            let required = std::env::var("IMAGEGEN_TEST_REDIS").as_deref() == Ok("1");
            assert!(
                !required,
                "IMAGEGEN_TEST_REDIS=1 but `{}` could not be started",
                binary()
            );
            eprintln!(
                "skipped: `{}` is not installed (set IMAGEGEN_TEST_REDIS=1 to require it)",
                binary()
            );
            return None;
        }
        Some(server)
    }

    /// Starts the process on `self.port` and waits until it accepts connections.
    fn spawn(&mut self) -> bool {
        let child = Command::new(binary())
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "yes", "--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = child else {
            return false;
        };
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server did not listen on port {} within 10 s",
            self.port
        );
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (a crash, for fail-closed tests); [`RedisServer::restart`] brings it
    /// back on the same port, empty.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port after [`RedisServer::kill`].
    pub fn restart(&mut self) {
        self.kill();
        assert!(self.spawn(), "redis-server could not be restarted");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
