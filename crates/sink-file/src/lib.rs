//! The embedded default sink: writes each message as one JSON line
//! `{"destination":..,"key":..|null,"headers":{..},"body":..}` to a file (or stdout with `-`),
//! where `body` is the JSON value when the body is JSON, a string when it is other text, and
//! base64 with `"bodyEncoding":"base64"` when it is not UTF-8. A publish
//! resolves once its line is written to the OS (and fsync'd with `fsync = true`). A file without
//! fsync is written by the publishing task itself, one `write` per line under a lock: a page-cache
//! write costs less than waking another thread. Stdout and fsync'd files go through a writer
//! thread, where concurrent publishes share one write and one fsync. It needs no broker and must
//! not know about HTTP or Cal.com.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{mpsc, Mutex};
use std::thread;

use cal_relay_sink::{Message, Sink, SinkError};
use serde::Deserialize;
use tokio::sync::oneshot;

/// `[sinks.NAME] type = "file"`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// File to append to; `-` for stdout.
    pub path: String,
    /// fsync after each batch of lines (default false: flushed to the OS only).
    #[serde(default)]
    pub fsync: bool,
}

/// Errors building the sink.
#[derive(Debug, thiserror::Error)]
pub enum FileSinkError {
    #[error("cannot open {path}: {source}")]
    Open { path: String, source: io::Error },
    #[error("cannot start the writer thread: {0}")]
    Thread(io::Error),
}

type Reply = oneshot::Sender<Result<(), String>>;

enum Command {
    Write(Vec<u8>, Reply),
    Flush(Reply),
}

/// A running file sink.
pub struct FileSink {
    output: Output,
}

enum Output {
    /// Written by the publishing task.
    Direct(Mutex<std::fs::File>),
    /// Written by the writer thread.
    Thread(mpsc::Sender<Command>),
}

impl FileSinkConfig {
    /// Open the output and start the writer thread.
    pub fn build(&self) -> Result<FileSink, FileSinkError> {
        let out: Box<dyn Write + Send> = if self.path == "-" {
            Box::new(io::stdout())
        } else {
            let path = PathBuf::from(&self.path);
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|source| FileSinkError::Open {
                    path: self.path.clone(),
                    source,
                })?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|source| FileSinkError::Open {
                    path: self.path.clone(),
                    source,
                })?;
            if !self.fsync {
                return Ok(FileSink {
                    output: Output::Direct(Mutex::new(file)),
                });
            }
            Box::new(SyncingFile(file))
        };
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name("sink-file".into())
            .spawn(move || writer(out, rx))
            .map_err(FileSinkError::Thread)?;
        Ok(FileSink {
            output: Output::Thread(tx),
        })
    }
}

/// A file whose `flush` is an fsync.
struct SyncingFile(std::fs::File);

impl Write for SyncingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
}

/// Write every queued line, flush once, then answer every waiting publish.
fn writer(mut out: Box<dyn Write + Send>, rx: mpsc::Receiver<Command>) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut replies = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Write(line, reply) => {
                    buf.extend_from_slice(&line);
                    replies.push(reply);
                }
                Command::Flush(reply) => replies.push(reply),
            }
            if buf.len() < 1 << 20 {
                next = rx.try_recv().ok();
            }
        }
        let result = out
            .write_all(&buf)
            .and_then(|()| out.flush())
            .map_err(|e| e.to_string());
        if let Err(e) = &result {
            tracing::error!(error = %e, "file sink write failed");
        }
        buf.clear();
        for reply in replies.drain(..) {
            let _ = reply.send(result.clone());
        }
    }
}

/// The JSON line for `message`, newline-terminated.
pub fn encode_line(message: &Message) -> Vec<u8> {
    let mut line = Vec::with_capacity(message.body.len() + 512);
    line.extend_from_slice(b"{\"destination\":");
    write_json(&mut line, &message.destination);
    line.extend_from_slice(b",\"key\":");
    write_json(&mut line, &message.key);
    line.extend_from_slice(b",\"headers\":{");
    for (i, (name, value)) in message.headers.iter().enumerate() {
        if i > 0 {
            line.push(b',');
        }
        write_json(&mut line, name);
        line.push(b':');
        write_json(&mut line, value);
    }
    line.extend_from_slice(b"},\"body\":");
    let body = &message.body;
    if message.json_checked || cal_relay_sink::json::is_json(body) {
        // Valid JSON holds raw CR/LF only as whitespace between tokens: blank them to stay on
        // one line without re-serializing.
        line.extend(body.iter().map(|&b| match b {
            b'\n' | b'\r' => b' ',
            b => b,
        }));
    } else if let Ok(text) = std::str::from_utf8(body) {
        write_json(&mut line, text);
    } else {
        // Not text: base64, so the line stays JSON and the bytes survive exactly.
        use base64::Engine as _;
        write_json(
            &mut line,
            &base64::engine::general_purpose::STANDARD.encode(body),
        );
        line.extend_from_slice(b",\"bodyEncoding\":\"base64\"");
    }
    line.extend_from_slice(b"}\n");
    line
}

fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Serializing strings and options of strings into a Vec cannot fail.
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.extend_from_slice(b"null");
    }
}

impl FileSink {
    async fn send(
        tx: &mpsc::Sender<Command>,
        make: impl FnOnce(Reply) -> Command,
    ) -> Result<(), SinkError> {
        let (reply, done) = oneshot::channel();
        tx.send(make(reply))
            .map_err(|_| SinkError::transient("writer_stopped", "the file writer has stopped"))?;
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SinkError::transient("io", e)),
            Err(_) => Err(SinkError::transient(
                "writer_stopped",
                "the file writer has stopped",
            )),
        }
    }
}

#[async_trait::async_trait]
impl Sink for FileSink {
    fn kind(&self) -> &'static str {
        "file"
    }

    async fn publish(&self, message: &Message) -> Result<(), SinkError> {
        let line = encode_line(message);
        match &self.output {
            Output::Direct(file) => {
                // A poisoned lock only means another publish panicked mid-write; the file is
                // still usable.
                let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
                file.write_all(&line).map_err(|e| {
                    tracing::error!(error = %e, "file sink write failed");
                    SinkError::transient("io", e)
                })
            }
            Output::Thread(tx) => Self::send(tx, |reply| Command::Write(line, reply)).await,
        }
    }

    async fn shutdown(&self) {
        if let Output::Thread(tx) = &self.output {
            let _ = Self::send(tx, Command::Flush).await;
        }
    }
}

#[async_trait::async_trait]
impl cal_relay_sink::SinkSettings for FileSinkConfig {
    fn kind(&self) -> &'static str {
        "file"
    }

    async fn build(&self) -> Result<std::sync::Arc<dyn Sink>, cal_relay_sink::BoxError> {
        Ok(std::sync::Arc::new(FileSinkConfig::build(self)?))
    }

    fn summary(&self) -> String {
        format!("path={}", self.path)
    }

    fn described(&self) -> cal_relay_sink::Described {
        cal_relay_sink::Described {
            protocol: cal_relay_sink::Protocol::File,
            host: self.path.clone(),
            key_header: None,
            cloudevents_prefix: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::borrow::Cow;
    use std::time::SystemTime;

    fn message(body: &'static [u8], key: Option<&str>) -> Message {
        Message {
            id: "id".into(),
            destination: "cal.ping".into(),
            key: key.map(str::to_owned),
            headers: vec![(Cow::Borrowed("cal-trigger"), "PING".into())],
            content_type: "application/json".into(),
            body: Bytes::from_static(body),
            json_checked: false,
            received_at: SystemTime::now(),
            event: Vec::new(),
        }
    }

    #[test]
    fn lines_are_one_json_object() {
        let line = encode_line(&message(b"{\"a\":\n 1}", Some("k")));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["destination"], "cal.ping");
        assert_eq!(v["key"], "k");
        assert_eq!(v["headers"]["cal-trigger"], "PING");
        assert_eq!(v["body"]["a"], 1);

        let v: serde_json::Value =
            serde_json::from_slice(&encode_line(&message(b"a=1&b=\"x\"", None))).unwrap();
        assert_eq!(v["key"], serde_json::Value::Null);
        assert_eq!(v["body"], "a=1&b=\"x\"");

        // Not UTF-8: base64, lossless.
        let v: serde_json::Value =
            serde_json::from_slice(&encode_line(&message(b"\xff\x00{", None))).unwrap();
        assert_eq!(v["body"], "/wB7");
        assert_eq!(v["bodyEncoding"], "base64");
        // Looks like JSON but has a lone surrogate: a string, not embedded.
        let v: serde_json::Value =
            serde_json::from_slice(&encode_line(&message(br#"{"a":"\ud800"}"#, None))).unwrap();
        assert_eq!(v["body"], r#"{"a":"\ud800"}"#);
    }

    #[tokio::test]
    async fn concurrent_publishes_all_land() {
        for fsync in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("sub/out.jsonl");
            let sink = std::sync::Arc::new(
                FileSinkConfig {
                    path: path.to_string_lossy().into_owned(),
                    fsync,
                }
                .build()
                .unwrap(),
            );
            let tasks: Vec<_> = (0..50)
                .map(|_| {
                    let sink = sink.clone();
                    tokio::spawn(async move { sink.publish(&message(b"{}", None)).await })
                })
                .collect();
            for t in tasks {
                t.await.unwrap().unwrap();
            }
            sink.shutdown().await;
            let text = std::fs::read_to_string(&path).unwrap();
            assert_eq!(text.lines().count(), 50, "fsync = {fsync}");
        }
    }
}
