//! A three-node RabbitMQ cluster on loopback, started by the test: distinct node names, AMQP
//! and distribution ports and data directories, one epmd and one Erlang cookie, nodes 2 and 3
//! joined to node 1 with `rabbitmqctl join_cluster`. Nodes can be killed (SIGKILL) and started
//! again; a restarted node rejoins by itself.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct RabbitCluster {
    pub nodes: Vec<RabbitNode>,
    epmd: Child,
    epmd_port: u16,
    dir: tempfile::TempDir,
}

pub struct RabbitNode {
    pub name: String,
    pub amqp_port: u16,
    dist_port: u16,
    child: Option<Child>,
}

/// A free loopback port below 30000: RabbitMQ's CLI derives its own distribution ports from
/// the node's (+10000 and up), which must stay valid ports.
fn low_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    loop {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 21000 + (std::process::id() as u16 % 200) * 40 + offset % 40;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl RabbitCluster {
    fn env(&self, cmd: &mut Command, node: &RabbitNode) {
        let d = self.dir.path().join(&node.name);
        cmd.env("HOME", self.dir.path().join("home"))
            .env("RABBITMQ_NODENAME", format!("{}@localhost", node.name))
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", node.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", node.dist_port.to_string())
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_CONF_ENV_FILE", d.join("rabbitmq-env.conf"))
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .env(
                "PATH",
                format!(
                    "/usr/lib/rabbitmq/bin:{}",
                    std::env::var("PATH").unwrap_or_default()
                ),
            );
    }

    fn ctl(&self, node: usize, args: &[&str]) {
        let n = &self.nodes[node];
        let mut cmd = Command::new("/usr/lib/rabbitmq/bin/rabbitmqctl");
        self.env(&mut cmd, n);
        let out = cmd
            .arg("-q")
            .arg("-n")
            .arg(format!("{}@localhost", n.name))
            .args(args)
            .output()
            .expect("rabbitmqctl (scripts/test.sh installs rabbitmq-server)");
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?} on {}: {}{}",
            n.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn pid_file(&self, node: usize) -> PathBuf {
        self.dir.path().join(&self.nodes[node].name).join("pid")
    }

    /// Start node `i` (again) and wait until it runs.
    pub fn up(&mut self, i: usize) {
        let d = self.dir.path().join(&self.nodes[i].name);
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        write_if_missing(&d.join("rabbitmq.conf"), "");
        write_if_missing(&d.join("rabbitmq-env.conf"), "");
        write_if_missing(&d.join("enabled_plugins"), "[].");
        let mut cmd = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server");
        self.env(&mut cmd, &self.nodes[i]);
        let log = std::fs::File::create(d.join("server.out")).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("rabbitmq-server (scripts/test.sh installs it)");
        self.nodes[i].child = Some(child);
        let pid = self.pid_file(i).display().to_string();
        self.ctl(i, &["wait", "--timeout", "120", &pid]);
    }

    pub fn start() -> RabbitCluster {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        // One cookie for every node and the CLI.
        let cookie = dir.path().join("home/.erlang.cookie");
        std::fs::write(&cookie, "CALRELAYTESTCLUSTERCOOKIE").unwrap();
        std::fs::set_permissions(&cookie, std::os::unix::fs::PermissionsExt::from_mode(0o400))
            .unwrap();
        let epmd_port = low_port();
        let epmd = Command::new("epmd")
            .args(["-port", &epmd_port.to_string(), "-address", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("epmd (from erlang, installed with rabbitmq-server)");
        super::wait_port(epmd_port, "epmd", 10);
        let nodes = (1..=3)
            .map(|i| RabbitNode {
                name: format!("r{i}"),
                amqp_port: low_port(),
                dist_port: low_port(),
                child: None,
            })
            .collect();
        let mut cluster = RabbitCluster {
            nodes,
            epmd,
            epmd_port,
            dir,
        };
        for i in 0..3 {
            cluster.up(i);
        }
        for i in 1..3 {
            cluster.ctl(i, &["stop_app"]);
            cluster.ctl(i, &["join_cluster", "r1@localhost"]);
            cluster.ctl(i, &["start_app"]);
        }
        cluster
    }

    pub fn url(&self, i: usize) -> String {
        format!(
            "amqp://guest:guest@127.0.0.1:{}/%2f",
            self.nodes[i].amqp_port
        )
    }

    pub fn urls(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.url(i)).collect()
    }

    /// SIGKILL node `i` (the Erlang VM).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            // rabbitmq-server is a shell script around the VM: kill the VM by its pid file.
            if let Ok(pid) = std::fs::read_to_string(self.pid_file(i)) {
                let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
            }
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(self.pid_file(i));
        }
    }
}

fn write_if_missing(path: &Path, text: &str) {
    if !path.exists() {
        std::fs::write(path, text).unwrap();
    }
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        let _ = self.epmd.kill();
        let _ = self.epmd.wait();
    }
}
