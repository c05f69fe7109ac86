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

/// Every dead letter, oldest first, with its file. Unreadable files are reported, not fatal.
pub fn dead_letters(dir: &Path) -> io::Result<Vec<(DeadLetter, PathBuf)>> {
    let mut out = Vec::new();
    for path in files(&dead_dir(dir), "dead")? {
        match std::fs::read(&path)
            .ok()
            .and_then(|b| DeadLetter::decode_file(&b))
        {
            Some(dead) => out.push((dead, path)),
            None => tracing::warn!(path = %path.display(), "spool: unreadable dead letter"),
        }
    }
    out.sort_by_key(|(d, _)| (d.entry.seq, d.sink.clone()));
    Ok(out)
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

/// Inbox files and what they hold.
pub fn inbox(dir: &Path) -> io::Result<Vec<(Option<Entry>, PathBuf)>> {
    let mut out = Vec::new();
    for path in files(&inbox_dir(dir), "put")? {
        let entry = std::fs::read(&path).ok().and_then(|b| decode_inbox(&b));
        out.push((entry, path));
    }
    Ok(out)
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
