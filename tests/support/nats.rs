//! A real `nats-server` with JetStream on a loopback port, one per test.

use std::process::{Child, Command, Stdio};

pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        let mut server = NatsServer {
            child: None,
            port: super::free_port(),
            dir: tempfile::tempdir().unwrap(),
        };
        server.up();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Start (again) on the same port and store directory.
    pub fn up(&mut self) {
        let store = self.dir.path().join("js");
        let child = Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server must be installed: run scripts/test.sh");
        self.child = Some(child);
        super::wait_port(self.port, "nats-server", 10);
    }

    pub fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.down();
    }
}
