//! Giving bytes back: finished segments deleted from the head, the active one rolled when full
//! or idle, and compaction, which copies a stuck head's few live entries forward so one entry a
//! broker keeps refusing does not pin every segment behind it.

use std::time::Duration;

use super::index::Location;
use super::protocol::Dispatch;
use super::scan::read_entry;
use super::writer::Writer;
use crate::record::Record;

/// How long the head segment must make no progress (no entry in it finishing) before it is
/// compacted: during a drain its entries finish by themselves, and copying them would be waste.
pub(super) const COMPACT_AFTER: Duration = Duration::from_secs(1);

impl<D: Dispatch> Writer<D> {
    /// Delete finished segments from the head; start a new segment when the active one is full,
    /// or idle with no work left (so a spool that drained gives its bytes back).
    pub(super) fn collect_garbage(&mut self) {
        let active_size = self.segments.back().map(|s| s.size).unwrap_or(0);
        let roll = active_size >= self.segment_limit
            || (self.live.is_empty() && active_size >= self.idle_roll);
        if roll && !self.roll() && self.live.is_empty() {
            // No room for a new segment (a full disk), but nothing in the active one is needed
            // any more: empty it in place, which gives the space back.
            self.reset_active();
        }
        loop {
            self.delete_finished_head();
            let compactable = self.segments.len() >= 3
                && self.segments.front().is_some_and(|h| {
                    h.live > 0
                        && h.live_bytes.saturating_mul(4) <= h.size
                        && h.progress.elapsed() >= self.compact_after
                });
            if !compactable || self.torn || !self.copy_head_forward() {
                break;
            }
        }
    }

    /// Delete the segments at the head that hold no live entry (never the active one).
    fn delete_finished_head(&mut self) {
        while self.segments.len() > 1 && self.segments.front().is_some_and(|s| s.live == 0) {
            let Some(seg) = self.segments.pop_front() else {
                break;
            };
            match self.disk.remove(seg.id) {
                Ok(()) => self.gauges.capacity.shrank(seg.size),
                Err(e) => {
                    tracing::warn!(error = %e, segment = seg.id, "spool: cannot delete segment");
                    self.segments.push_front(seg);
                    break;
                }
            }
        }
    }

    /// Copy the head segment's live entries to the end of the active one (each with the sinks it
    /// still has to reach), synced, so the head holds nothing live and can be deleted. False
    /// when that failed (nothing changed then: the copies are cut back or superseded by none).
    fn copy_head_forward(&mut self) -> bool {
        let Some(head) = self.segments.front().map(|s| s.id) else {
            return false;
        };
        let size = self.segments.back().map(|s| s.size).unwrap_or(0);
        let active_id = self.segments.back().map(|s| s.id).unwrap_or(0);
        let mut buf = Vec::new();
        let mut moved = Vec::new();
        for slot in self.live.values().filter(|s| s.segment == head) {
            let mut entry = match read_entry(&self.dir, &slot.location()) {
                Ok(entry) => entry,
                Err(e) => {
                    tracing::warn!(error = %e, segment = head, "spool: cannot compact the head segment");
                    return false;
                }
            };
            entry.targets = slot.targets.to_vec();
            let frame = Record::put_frame(&entry);
            moved.push(Location {
                seq: slot.seq,
                segment: active_id,
                offset: size + buf.len() as u64,
                len: frame.len() as u32,
            });
            buf.extend_from_slice(&frame);
        }
        // Synced whatever `fsync` says: the head is deleted next, and the copies are then the
        // only ones.
        if let Err(e) = self
            .active
            .append(&buf)
            .and_then(|()| self.active.sync_data())
        {
            tracing::error!(error = %e, "spool: compaction write failed");
            if let Err(cut) = self.active.set_len(size) {
                tracing::error!(error = %cut, "spool: cannot cut back a failed write; moving to a new segment");
                self.torn = true;
            }
            return false;
        }
        self.gauges.capacity.grew(buf.len() as u64);
        if let Some(active) = self.segments.back_mut() {
            active.size += buf.len() as u64;
        }
        for at in &moved {
            if let Some(slot) = self.live.get_mut(&at.seq) {
                let old = slot.len;
                slot.segment = at.segment;
                slot.offset = at.offset;
                slot.len = at.len;
                if let Some(h) = self.segments.front_mut() {
                    h.remove(old);
                }
                if let Some(a) = self.segments.back_mut() {
                    a.add(at.len);
                }
            }
            self.gauges.relocations.set(*at);
        }
        self.gauges.compacted.inc_by(moved.len() as u64);
        tracing::info!(
            segment = head,
            entries = moved.len(),
            bytes = buf.len(),
            "spool: compacted the head segment (its live entries copied forward)"
        );
        true
    }

    /// Cut the active segment back to a lone START record (only when no entry is live).
    fn reset_active(&mut self) {
        let start = Record::Start {
            next_seq: self.next_seq,
        }
        .encode();
        let result = self
            .active
            .set_len(0)
            .and_then(|()| self.active.append(&start))
            .and_then(|()| self.active.sync_all());
        match result {
            Ok(()) => {
                let freed = self.segments.back().map(|s| s.size).unwrap_or(0);
                if let Some(active) = self.segments.back_mut() {
                    active.size = start.len() as u64;
                }
                self.torn = false;
                self.gauges.capacity.shrank(freed);
                self.gauges.capacity.grew(start.len() as u64);
                tracing::info!(
                    "spool: emptied the active segment in place (no room for a new one)"
                );
            }
            Err(e) => {
                self.torn = true;
                tracing::error!(error = %e, "spool: cannot empty the active segment");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::writer::Writer;
    use super::super::*;
    use crate::record::tests::entry;
    use crate::record::{Entry, Record};
    use std::sync::Arc;
    use std::time::Duration;

    struct Nowhere;
    impl Dispatch for Nowhere {
        fn dispatch(&mut self, _: &Slot, _: Option<Arc<Entry>>) {}
    }

    fn gauges() -> Gauges {
        let gauge = |n: &str| prometheus::IntGauge::new(n, "x").unwrap();
        Gauges {
            capacity: Arc::new(Capacity::new(1024 * 1024, gauge("f"))),
            entries: gauge("e"),
            bytes_gauge: gauge("b"),
            oldest_age: prometheus::Gauge::new("o", "x").unwrap(),
            pending_keys: Arc::default(),
            compacted: prometheus::IntCounter::new("c", "x").unwrap(),
            relocations: Arc::default(),
        }
    }

    fn put(commands: &std::sync::mpsc::Sender<Command>, entry: Entry) -> u64 {
        let (reply, done) = tokio::sync::oneshot::channel();
        let frame = Record::put_frame(&entry);
        commands
            .send(Command::Put {
                entry: Box::new(entry),
                frame,
                reply,
            })
            .unwrap();
        done.blocking_recv().unwrap().unwrap()
    }

    #[test]
    fn a_stuck_entry_is_copied_forward_and_pins_no_segment() {
        let dir = tempfile::tempdir().unwrap();
        let g = gauges();
        let (compacted, relocations) = (g.compacted.clone(), g.relocations.clone());
        let mut writer = Writer::new(
            Files::boxed(dir.path()),
            Scan::default(),
            false,
            1024 * 1024,
            Nowhere,
            g,
        )
        .unwrap();
        writer.compact_after = Duration::ZERO;
        let (commands, receiver) = std::sync::mpsc::channel();
        let dones = Arc::new(Dones::new(commands.clone()));
        let thread = std::thread::spawn(move || writer.run(receiver, dones));
        // The stuck entry reached sink "a", never "b".
        let stuck = put(&commands, entry(0, "stuck"));
        let sink = |s: &str| s.to_string();
        commands
            .send(Command::Done {
                seq: stuck,
                sink: sink("a"),
            })
            .unwrap();
        // 64 KiB segments (1 MiB / 16): 4,000 entries that finish make many of them.
        for n in 0..4000 {
            let mut e = entry(0, &format!("k{n}"));
            e.message.body = vec![b'x'; 200].into();
            let seq = put(&commands, e);
            for s in ["a", "b"] {
                commands.send(Command::Done { seq, sink: sink(s) }).unwrap();
            }
        }
        commands.send(Command::Stop).unwrap();
        thread.join().unwrap();
        assert!(compacted.get() >= 1, "never compacted");
        let files = segments(dir.path()).unwrap().len();
        assert!(files <= 3, "{files} segments left behind a stuck entry");
        // The stuck entry survives, with only the sink it still has to reach, readable where
        // the lanes are told it is now.
        let scan = scan(dir.path(), false).unwrap();
        let pending: Vec<_> = scan.pending.values().collect();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].seq, stuck);
        assert_eq!(&*pending[0].targets, ["b".to_string()]);
        let first = Location {
            seq: stuck,
            segment: 1,
            offset: 0,
            len: 0,
        };
        let back = read_entry(dir.path(), &relocations.resolve(&first)).unwrap();
        assert_eq!(back.message.key.as_deref(), Some("stuck"));
        assert_eq!(back.targets, ["b".to_string()]);
    }

    /// Review finding 19 (a deterministic reproduction, the active segment torn and no new
    /// one can be made, as on a full disk after a failed cut-back): the DONEs still free the
    /// finished segments at the head, so the disk gets its space back.
    #[test]
    fn a_torn_writer_that_cannot_roll_still_deletes_finished_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::new(
            Files::boxed(dir.path()),
            Scan::default(),
            false,
            1024 * 1024,
            Nowhere,
            gauges(),
        )
        .unwrap();
        let mut seqs = Vec::new();
        for n in 0..600 {
            let mut e = entry(0, &format!("k{n}"));
            e.message.body = vec![b'x'; 200].into();
            let (reply, answer) = tokio::sync::oneshot::channel();
            let frame = Record::put_frame(&e);
            w.write_batch(vec![Command::Put {
                entry: Box::new(e),
                frame,
                reply,
            }]);
            seqs.push(answer.blocking_recv().unwrap().unwrap());
        }
        assert!(w.segments.len() >= 2, "{} segments", w.segments.len());
        let head = w.segments.front().unwrap().id;
        // Torn, and the next segment cannot be created (a directory is in its place).
        w.torn = true;
        let next = w.segments.back().unwrap().id + 1;
        std::fs::create_dir(segment_path(dir.path(), next)).unwrap();
        let dones = seqs
            .iter()
            .flat_map(|&seq| {
                ["a", "b"].map(|sink| Command::Done {
                    seq,
                    sink: sink.into(),
                })
            })
            .collect();
        w.write_batch(dones);
        assert!(w.live.is_empty());
        assert!(
            !segment_path(dir.path(), head).exists(),
            "a finished segment was kept while torn"
        );
    }
}
