//! Files beside the log: the dead-letter store (`dead/SEQ.SINK.dead`, one message a sink refused
//! permanently, with why) and the inbox (`inbox/*.put`, messages handed back for delivery by
//! `cal-relay spool replay`, taken into the log by the running relay). Every file is written to
//! a temporary name, synced, then renamed, so a reader never sees half of one.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::log::sync_dir;
use crate::record::{self, DeadLetter, Entry, Record};

pub fn dead_dir(dir: &Path) -> PathBuf {
    dir.join("dead")
}

pub fn inbox_dir(dir: &Path) -> PathBuf {
    dir.join("inbox")
}

/// The id a dead letter is shown and addressed by: `SEQ.SINK`.
pub fn dead_id(seq: u64, sink: &str) -> String {
    format!("{seq}.{sink}")
}

/// Write `bytes` to `dir/name` atomically and durably.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    sync_dir(dir)?;
    Ok(path)
}

/// Store a dead letter.
pub fn put_dead(dir: &Path, dead: &DeadLetter) -> io::Result<PathBuf> {
    let name = format!("{}.dead", dead_id(dead.entry.seq, &dead.sink));
    write_atomic(&dead_dir(dir), &name, &dead.encode())
}

/// Every dead letter's file, oldest first (by the `SEQ` its name starts with, then sink), without
/// reading any: a dead letter can be as large as a delivery, so callers read one at a time.
pub fn dead_letter_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = files(&dead_dir(dir), "dead")?;
    out.sort_by_cached_key(|p| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let (seq, rest) = name.split_once('.').unwrap_or((name, ""));
        (seq.parse::<u64>().unwrap_or(u64::MAX), rest.to_owned())
    });
    Ok(out)
}

/// The id (`SEQ.SINK`) a dead letter's file is named by.
pub fn dead_file_id(path: &Path) -> Option<&str> {
    path.file_name()?.to_str()?.strip_suffix(".dead")
}

/// Read one dead letter; `None` (reported) when it cannot be read or decoded.
pub fn read_dead(path: &Path) -> Option<DeadLetter> {
    let dead = std::fs::read(path)
        .ok()
        .and_then(|b| DeadLetter::decode_file(&b));
    if dead.is_none() {
        tracing::warn!(path = %path.display(), "spool: unreadable dead letter");
    }
    dead
}

/// Hand a message back for delivery to `targets`: an inbox file the relay picks up.
pub fn put_inbox(dir: &Path, name: &str, entry: &Entry) -> io::Result<PathBuf> {
    write_atomic(
        &inbox_dir(dir),
        &format!("{name}.put"),
        &Record::Put(entry.clone()).encode(),
    )
}

/// The entry of an inbox file's bytes: exactly one PUT frame, else `None`.
pub fn decode_inbox(bytes: &[u8]) -> Option<Entry> {
    let (body, used) = record::read_frame(bytes).ok()?;
    match (used == bytes.len(), Record::decode(body)?) {
        (true, Record::Put(entry)) => Some(entry),
        _ => None,
    }
}

/// Inbox files, in name order, not read: [`read_inbox`] reads one.
pub fn inbox_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    files(&inbox_dir(dir), "put")
}

/// The entry an inbox file holds, `None` when it is unreadable.
pub fn read_inbox(path: &Path) -> Option<Entry> {
    std::fs::read(path).ok().and_then(|b| decode_inbox(&b))
}

fn files(dir: &Path, ext: &str) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        let visible = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| !n.starts_with('.'));
        if visible && path.extension().and_then(|e| e.to_str()) == Some(ext) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}
