//! A real Kafka-protocol broker (tansu) on a loopback port, one per test, and a real rdkafka
//! consumer to read records back.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

pub struct Tansu {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    storage: String,
}

impl Tansu {
    /// In memory (lost on restart).
    pub fn start() -> Tansu {
        Self::start_with("memory://tansu/".into())
    }

    /// SQLite storage in a temporary directory: survives a restart.
    pub fn start_durable() -> Tansu {
        // tansu resolves the path against its working directory, which `up` sets to `dir`.
        Self::start_with("sqlite://tansu.db".into())
    }

    fn start_with(storage: String) -> Tansu {
        let mut t = Tansu {
            child: None,
            port: super::free_port(),
            dir: tempfile::tempdir().unwrap(),
            storage,
        };
        t.up();
        t
    }

    /// A reader for a broker at `bootstrap` (usable from a blocking task).
    pub fn reader(bootstrap: &str) -> Reader {
        Reader {
            bootstrap: bootstrap.to_owned(),
        }
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn up(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::create(self.dir.path().join("tansu.log")).unwrap();
        let child = Command::new("tansu")
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", &self.storage])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .current_dir(self.dir.path())
            .spawn()
            .expect("tansu must be installed: run scripts/test.sh");
        self.child = Some(child);
        super::wait_port(self.port, "tansu", 15);
    }

    pub fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Reads records with a real rdkafka consumer.
pub struct Reader {
    bootstrap: String,
}

impl Reader {
    /// Read every record of `topic` (all partitions from the beginning) until `count` arrived
    /// or `patience` passed without a new one.
    pub fn read(&self, topic: &str, count: usize, patience: Duration) -> Vec<OwnedMessage> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", "cal-relay-tests")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .unwrap();
        let mut assignment = TopicPartitionList::new();
        for t in metadata.topics() {
            for p in t.partitions() {
                assignment
                    .add_partition_offset(topic, p.id(), Offset::Beginning)
                    .unwrap();
            }
        }
        consumer.assign(&assignment).unwrap();
        let mut out = Vec::new();
        let mut last = Instant::now();
        while out.len() < count && last.elapsed() < patience {
            if let Some(m) = consumer.poll(Duration::from_millis(200)) {
                out.push(m.unwrap().detach());
                last = Instant::now();
            }
        }
        out
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.down();
    }
}

/// The value of header `name` of a record, as text.
pub fn header(m: &OwnedMessage, name: &str) -> Option<String> {
    use rdkafka::message::Headers;
    let headers = m.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
}
