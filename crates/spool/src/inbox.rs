//! What comes back to the log from outside it: messages handed back by `cal-relay spool
//! replay` (the inbox, polled), and entries for sinks no longer configured (dead letters again,
//! since no lane would take them).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use cal_relay_sink::Sink;
use tokio::sync::watch;

use crate::log::{self, Command};
use crate::record::{self, Entry};
use crate::{dead, Spool, SpoolError, SpoolMetrics};

/// How often the inbox (messages handed back by `cal-relay spool replay`) is looked at.
const INBOX_EVERY: Duration = Duration::from_secs(1);

/// The pending entries with targets that are no longer configured, and those targets.
pub(crate) fn orphans(
    scan: &log::Scan,
    sinks: &BTreeMap<String, Arc<dyn Sink>>,
) -> Vec<(log::Slot, Vec<String>)> {
    let mut orphans = Vec::new();
    for slot in scan.pending.values() {
        let unknown: Vec<String> = slot
            .targets
            .iter()
            .filter(|t| !sinks.contains_key(*t))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            orphans.push((slot.clone(), unknown));
        }
    }
    orphans
}

/// Dead-letter each orphan for the sinks it names that are gone, and mark those done.
pub(crate) fn bury_orphans(
    dir: &Path,
    metrics: &SpoolMetrics,
    commands: &Sender<Command>,
    orphans: Vec<(log::Slot, Vec<String>)>,
) -> Result<(), SpoolError> {
    for (slot, unknown) in orphans {
        let entry = log::read_entry(dir, &slot.location())?;
        for sink in unknown {
            bury_unknown(dir, metrics, &entry, &sink)?;
            let _ = commands.send(Command::Done {
                seq: entry.seq,
                sink,
            });
        }
    }
    Ok(())
}

/// Store `entry` as a dead letter for `sink`, a sink no longer configured.
fn bury_unknown(
    dir: &Path,
    metrics: &SpoolMetrics,
    entry: &Entry,
    sink: &str,
) -> std::io::Result<()> {
    let dead = record::DeadLetter {
        entry: Entry {
            targets: vec![sink.to_owned()],
            ..entry.clone()
        },
        sink: sink.to_owned(),
        reason: "unknown_sink".into(),
        detail: format!("sink {sink:?} is no longer configured"),
        attempts: 0,
        dead_at: std::time::SystemTime::now(),
    };
    dead::put_dead(dir, &dead)?;
    metrics
        .dead_letters
        .with_label_values(&[sink, "unknown_sink"])
        .inc();
    Ok(())
}

/// Take messages handed back by `cal-relay spool replay` into the log.
pub(crate) async fn poll(
    spool: std::sync::Weak<Spool>,
    dir: PathBuf,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let Some(spool) = spool.upgrade() else {
            return;
        };
        take_inbox(&spool, &dir).await;
        drop(spool);
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            () = tokio::time::sleep(INBOX_EVERY) => {}
        }
    }
}

/// One file at a time: read, append, delete, so memory holds one replayed message however
/// many were handed back (a dead letter is as large as a delivery).
async fn take_inbox(spool: &Spool, dir: &Path) {
    let files = match dead::inbox_files(dir) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "spool: cannot read the inbox");
            return;
        }
    };
    for path in files {
        let read = path.clone();
        let entry = tokio::task::spawn_blocking(move || dead::read_inbox(&read))
            .await
            .ok()
            .flatten();
        // Targets no longer configured go back to the dead letters (no lane would take them,
        // and the entry would stay pending); the rest is appended.
        let entry = match entry {
            Some(mut entry) => {
                let (known, unknown): (Vec<String>, Vec<String>) = entry
                    .targets
                    .drain(..)
                    .partition(|t| spool.sink_names.contains(t));
                entry.targets = known;
                let mut buried = true;
                for sink in &unknown {
                    if let Err(e) = bury_unknown(dir, &spool.metrics, &entry, sink) {
                        tracing::warn!(error = %e, sink, "spool: cannot store dead letter; inbox waits");
                        buried = false;
                    }
                }
                if !buried {
                    return;
                }
                if entry.targets.is_empty() {
                    tracing::warn!(path = %path.display(), sinks = ?unknown, "spool: replayed for sinks no longer configured: dead letters again");
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                Some(entry)
            }
            None => None,
        };
        match entry {
            Some(entry) => match spool.append(Box::new(entry)).await {
                Ok(seq) => {
                    tracing::info!(seq, path = %path.display(), "spool: replayed from inbox");
                    if let Err(e) = std::fs::remove_file(&path) {
                        tracing::warn!(error = %e, path = %path.display(), "spool: inbox file stays");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "spool: inbox waits");
                    return;
                }
            },
            None => {
                tracing::warn!(path = %path.display(), "spool: unreadable inbox file, moved aside");
                let _ = std::fs::rename(&path, path.with_extension("bad"));
            }
        }
    }
}
