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

/// A three-node NATS cluster with JetStream on loopback: `server_name`, `cluster` routes and
/// one store directory per node. Nodes can be killed (SIGKILL) and restarted on the same ports
/// and stores.
pub struct NatsCluster {
    pub nodes: Vec<ClusterNode>,
    pub dir: tempfile::TempDir,
}

pub struct ClusterNode {
    pub name: String,
    pub port: u16,
    pub cluster_port: u16,
    child: Option<Child>,
    config: std::path::PathBuf,
}

impl ClusterNode {
    fn up(&mut self) {
        let log = std::fs::File::create(self.config.with_extension("log")).unwrap();
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server must be installed: run scripts/test.sh");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || std::time::Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(self.config.with_extension("log")).unwrap_or_default();
                panic!(
                    "nats-server {} did not start on port {} ({exited:?}): {log}",
                    self.name, self.port
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl NatsCluster {
    pub fn start() -> NatsCluster {
        let dir = tempfile::tempdir().unwrap();
        // Six distinct ports (client and cluster per node): a repeat would stop a node.
        let free = super::free_ports(6);
        let ports: Vec<(u16, u16)> = free.chunks(2).map(|p| (p[0], p[1])).collect();
        let mut nodes = Vec::new();
        for (i, (port, cluster_port)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let routes: Vec<String> = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, (_, c))| format!("\"nats-route://127.0.0.1:{c}\""))
                .collect();
            let store = dir.path().join(&name);
            let config = dir.path().join(format!("{name}.conf"));
            std::fs::write(
                &config,
                format!(
                    r#"server_name: {name}
listen: 127.0.0.1:{port}
jetstream {{ store_dir: "{store}" }}
cluster {{
  name: cal
  listen: 127.0.0.1:{cluster_port}
  routes: [{routes}]
}}
"#,
                    store = store.display(),
                    routes = routes.join(", ")
                ),
            )
            .unwrap();
            nodes.push(ClusterNode {
                name,
                port: *port,
                cluster_port: *cluster_port,
                child: None,
                config,
            });
        }
        // Owned by the cluster before any starts: if one fails to, dropping the cluster
        // stops those already running.
        let mut cluster = NatsCluster { nodes, dir };
        for n in &mut cluster.nodes {
            n.up();
        }
        cluster
    }

    /// Every node's URL, for a client's server list.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(ClusterNode::url).collect()
    }

    pub fn node(&mut self, name: &str) -> &mut ClusterNode {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .expect("a node of the cluster")
    }

    /// Start a killed node again (same port, same store): it rejoins the cluster.
    pub fn restart(&mut self, name: &str) {
        self.node(name).up();
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
    }
}

/// Every message of JetStream stream `name` at `url`, in stream order.
pub async fn stream_messages(url: &str, name: &str) -> Vec<async_nats::jetstream::Message> {
    let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
    messages_of(&js, name).await
}

/// Every message of stream `name` seen through `js`, in stream order: an ephemeral consumer
/// without acks (one that needs them stops at max_ack_pending), read until a fetch comes back
/// empty. The stream is waited for while a cluster elects its leader.
pub async fn messages_of(
    js: &async_nats::jetstream::Context,
    name: &str,
) -> Vec<async_nats::jetstream::Message> {
    use async_nats::jetstream::consumer;
    use futures_util::StreamExt;
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + Duration::from_secs(60);
    let stream = loop {
        match js.get_stream(name).await {
            Ok(s) => break s,
            Err(e) => {
                assert!(Instant::now() < deadline, "stream {name} unavailable: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = Vec::new();
    loop {
        let mut batch = consumer
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .unwrap();
        let before = out.len();
        while let Some(m) = batch.next().await {
            out.push(m.unwrap());
        }
        if out.len() == before {
            return out;
        }
    }
}
