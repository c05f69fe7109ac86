//! The on-disk record format. A frame is `len: u32 LE | crc32c: u32 LE | body[len]`, the CRC
//! covering `body`; `body` starts with a kind byte. Integers are little-endian, strings and
//! byte strings carry a u32 length. Decoding never panics: anything short or inconsistent is
//! `None`.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cal_relay_sink::Message;

mod frame;
pub use frame::{body_len, frame, read_frame, set_put_seq, FrameError, FRAME_HEADER, MAX_FRAME};

/// Largest delivery body a spool record holds: a frame less room for the rest of the record
/// (id, destination, key, headers, targets: a few kilobytes at most).
pub const MAX_BODY_BYTES: usize = MAX_FRAME - 256 * 1024;

const PUT: u8 = 1;
const DONE: u8 = 2;
/// A dead letter written before messages carried CloudEvents attributes.
const DEAD_V1: u8 = 3;
const START: u8 = 4;
/// A dead letter whose entry carries its CloudEvents attributes after the body.
const DEAD: u8 = 5;

/// Offset of a PUT record's `seq` in its frame (header, kind byte), so the log's writer can
/// number records in the order it writes them.
pub const PUT_SEQ_OFFSET: usize = FRAME_HEADER + 1;

/// A delivery accepted into the spool: the message, the sinks it has to reach, and an opaque
/// label for metrics (the caller's trigger label).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub targets: Vec<String>,
    pub label: String,
    pub message: Message,
}

/// A record of the log.
// Records live one at a time while a log is read or written; boxing the PUT would cost an
// allocation per record for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// An accepted delivery.
    Put(Entry),
    /// Entry `seq` reached `sink` (or was dead-lettered for it): no more work there.
    Done { seq: u64, sink: String },
    /// First record of a segment: the sequence number the next PUT gets, so numbering never
    /// goes back even when every earlier segment was deleted.
    Start { next_seq: u64 },
}

/// A message a sink refused permanently, kept with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub entry: Entry,
    pub sink: String,
    pub reason: String,
    pub detail: String,
    pub attempts: u32,
    pub dead_at: SystemTime,
}

impl Record {
    /// The frame of `Record::Put(entry)`, without cloning the entry.
    pub fn put_frame(entry: &Entry) -> Vec<u8> {
        let mut w = Vec::with_capacity(entry.message.body.len() + 512);
        w.push(PUT);
        put_entry(&mut w, entry);
        frame(&w)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::new();
        match self {
            Record::Put(entry) => return Record::put_frame(entry),
            Record::Done { seq, sink } => {
                w.push(DONE);
                w.extend_from_slice(&seq.to_le_bytes());
                put_str(&mut w, sink);
            }
            Record::Start { next_seq } => {
                w.push(START);
                w.extend_from_slice(&next_seq.to_le_bytes());
            }
        }
        frame(&w)
    }

    pub fn decode(body: &[u8]) -> Option<Record> {
        Record::decode_with(body, true)
    }

    /// Like [`Record::decode`], leaving a PUT's message body empty (checked, not copied): what
    /// opening a log needs to index it.
    pub fn decode_without_body(body: &[u8]) -> Option<Record> {
        Record::decode_with(body, false)
    }

    fn decode_with(body: &[u8], with_body: bool) -> Option<Record> {
        let mut r = Reader(body);
        let record = match r.u8()? {
            PUT => Record::Put(r.entry(with_body, Event::IfAny)?),
            DONE => Record::Done {
                seq: r.u64()?,
                sink: r.string()?,
            },
            START => Record::Start { next_seq: r.u64()? },
            _ => return None,
        };
        r.0.is_empty().then_some(record)
    }
}

impl DeadLetter {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = vec![DEAD];
        put_entry(&mut w, &self.entry);
        put_str(&mut w, &self.sink);
        put_str(&mut w, &self.reason);
        put_str(&mut w, &self.detail);
        w.extend_from_slice(&self.attempts.to_le_bytes());
        w.extend_from_slice(&millis(self.dead_at).to_le_bytes());
        frame(&w)
    }

    /// Decode a whole dead-letter file.
    pub fn decode_file(buf: &[u8]) -> Option<DeadLetter> {
        let (body, used) = read_frame(buf).ok()?;
        if used != buf.len() {
            return None;
        }
        let mut r = Reader(body);
        let event = match r.u8()? {
            DEAD => Event::Follows,
            DEAD_V1 => Event::Absent,
            _ => return None,
        };
        let dead = DeadLetter {
            entry: r.entry(true, event)?,
            sink: r.string()?,
            reason: r.string()?,
            detail: r.string()?,
            attempts: r.u32()?,
            dead_at: from_millis(r.u64()?),
        };
        r.0.is_empty().then_some(dead)
    }
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn put_str(w: &mut Vec<u8>, s: &str) {
    put_bytes(w, s.as_bytes());
}

fn put_bytes(w: &mut Vec<u8>, b: &[u8]) {
    w.extend_from_slice(&(b.len() as u32).to_le_bytes());
    w.extend_from_slice(b);
}

fn put_entry(w: &mut Vec<u8>, e: &Entry) {
    let m = &e.message;
    w.reserve(m.body.len() + 256);
    w.extend_from_slice(&e.seq.to_le_bytes());
    w.extend_from_slice(&(e.targets.len() as u32).to_le_bytes());
    for t in &e.targets {
        put_str(w, t);
    }
    put_str(w, &e.label);
    put_str(w, &m.id);
    put_str(w, &m.destination);
    match &m.key {
        Some(k) => {
            w.push(1);
            put_str(w, k);
        }
        None => w.push(0),
    }
    w.extend_from_slice(&(m.headers.len() as u32).to_le_bytes());
    for (name, value) in &m.headers {
        put_str(w, name);
        put_str(w, value);
    }
    put_str(w, &m.content_type);
    w.extend_from_slice(&millis(m.received_at).to_le_bytes());
    put_bytes(w, &m.body);
    // After the body: a PUT written before this section existed simply ends here.
    put_pairs(w, &m.event);
}

fn put_pairs(w: &mut Vec<u8>, pairs: &[cal_relay_sink::Header]) {
    w.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (name, value) in pairs {
        put_str(w, name);
        put_str(w, value);
    }
}

/// Whether an entry's CloudEvents attributes follow its body.
#[derive(Clone, Copy)]
enum Event {
    /// Always (current records).
    Follows,
    /// When anything follows (a PUT: older ones end at the body).
    IfAny,
    /// Never (an old dead letter).
    Absent,
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)?.try_into().ok().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)?.try_into().ok().map(u64::from_le_bytes)
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
    fn pairs(&mut self) -> Option<Vec<cal_relay_sink::Header>> {
        let n = self.u32()? as usize;
        let mut pairs = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            pairs.push((Cow::Owned(self.string()?), self.string()?));
        }
        Some(pairs)
    }

    fn entry(&mut self, with_body: bool, event: Event) -> Option<Entry> {
        let seq = self.u64()?;
        let n = self.u32()? as usize;
        let mut targets = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            targets.push(self.string()?);
        }
        let label = self.string()?;
        let id = self.string()?;
        let destination = self.string()?;
        let key = match self.u8()? {
            0 => None,
            1 => Some(self.string()?),
            _ => return None,
        };
        let headers = self.pairs()?;
        let content_type = self.string()?;
        let received_at = from_millis(self.u64()?);
        let body = self.bytes()?;
        let body = if with_body {
            Bytes::copy_from_slice(body)
        } else {
            Bytes::new()
        };
        let event = match event {
            Event::Follows => self.pairs()?,
            Event::IfAny if !self.0.is_empty() => self.pairs()?,
            _ => Vec::new(),
        };
        Some(Entry {
            seq,
            targets,
            label,
            message: Message {
                id,
                destination,
                key,
                headers,
                content_type,
                body,
                // Not stored: a sink that cares checks the body again.
                json_checked: false,
                received_at,
                event,
            },
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn entry(seq: u64, key: &str) -> Entry {
        Entry {
            seq,
            targets: vec!["a".into(), "b".into()],
            label: "BOOKING_CREATED".into(),
            message: Message {
                id: format!("id-{seq}"),
                destination: "cal.booking.created".into(),
                key: Some(key.into()),
                headers: vec![(Cow::Borrowed("cal-trigger"), "BOOKING_CREATED".into())],
                content_type: "application/json".into(),
                body: Bytes::from(format!(r#"{{"n":{seq}}}"#)),
                json_checked: false,
                received_at: from_millis(1_700_000_000_123),
                event: vec![(Cow::Borrowed("type"), "com.cal.booking_created".into())],
            },
        }
    }

    #[test]
    fn a_put_written_before_cloudevents_attributes_still_reads() {
        let mut old = entry(3, "k");
        old.message.event.clear();
        // The current encoding less the (empty) attribute section: what older relays wrote.
        let frame = Record::Put(old.clone()).encode();
        let (body, _) = read_frame(&frame).unwrap();
        let legacy = super::frame(&body[..body.len() - 4]);
        let (body, _) = read_frame(&legacy).unwrap();
        assert_eq!(Record::decode(body), Some(Record::Put(old)));
    }

    #[test]
    fn records_round_trip() {
        for record in [
            Record::Put(entry(7, "uid-1")),
            Record::Done {
                seq: 7,
                sink: "kafka".into(),
            },
            Record::Start { next_seq: 99 },
        ] {
            let bytes = record.encode();
            let (body, used) = read_frame(&bytes).unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(Record::decode(body), Some(record));
        }
        let mut put = Record::Put(entry(0, "k")).encode();
        set_put_seq(&mut put, 42);
        let (body, _) = read_frame(&put).unwrap();
        let want = Entry {
            seq: 42,
            ..entry(0, "k")
        };
        assert_eq!(Record::decode(body), Some(Record::Put(want.clone())));
        // Indexing a log: everything but the body.
        let mut headless = want;
        headless.message.body = Bytes::new();
        assert_eq!(
            Record::decode_without_body(body),
            Some(Record::Put(headless))
        );
        let dead = DeadLetter {
            entry: entry(9, "k"),
            sink: "rabbit".into(),
            reason: "unroutable".into(),
            detail: "no queue".into(),
            attempts: 3,
            dead_at: from_millis(1_700_000_001_000),
        };
        assert_eq!(DeadLetter::decode_file(&dead.encode()), Some(dead));
    }

    #[test]
    fn torn_and_corrupt_frames_are_refused_not_panicked_on() {
        let bytes = Record::Put(entry(1, "k")).encode();
        for cut in 0..bytes.len() {
            assert_eq!(read_frame(&bytes[..cut]).unwrap_err(), FrameError::Short);
        }
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        assert_eq!(read_frame(&flipped).unwrap_err(), FrameError::Corrupt);
        assert_eq!(read_frame(&[0xff; 16]).unwrap_err(), FrameError::Corrupt);
        // A body whose checksum matches but whose content is nonsense decodes to None.
        assert_eq!(Record::decode(&[PUT, 1, 2, 3]), None);
        assert_eq!(Record::decode(&[]), None);
    }

    mod properties {
        use super::*;
        use crate::log::Records;
        use proptest::prelude::*;

        fn arb_entry() -> impl Strategy<Value = Entry> {
            (
                any::<u64>(),
                proptest::collection::vec("[a-z]{1,8}", 0..4),
                proptest::option::of("\\PC{0,40}"),
                proptest::collection::vec(any::<u8>(), 0..512),
                0u64..4_000_000_000_000,
            )
                .prop_map(|(seq, targets, key, body, ms)| Entry {
                    seq,
                    targets,
                    label: "l".into(),
                    message: Message {
                        id: format!("{seq:064}"),
                        destination: "d".into(),
                        key,
                        headers: vec![(Cow::Borrowed("h"), "v".into())],
                        content_type: "application/json".into(),
                        body: Bytes::from(body),
                        json_checked: false,
                        received_at: from_millis(ms),
                        event: vec![(Cow::Borrowed("source"), "https://cal.com".into())],
                    },
                })
        }

        proptest! {
            /// Any entry survives encode and decode; every strict prefix of a log of them
            /// yields exactly the whole records it holds, and any byte flipped stops decoding
            /// at or before the damaged record (never a damaged record).
            #[test]
            fn logs_decode_to_what_was_written(
                entries in proptest::collection::vec(arb_entry(), 1..6),
                cut in any::<prop::sample::Index>(),
                flip in any::<prop::sample::Index>(),
                bit in 0u8..8,
            ) {
                let mut log = Vec::new();
                let mut ends = Vec::new();
                for e in &entries {
                    log.extend_from_slice(&Record::Put(e.clone()).encode());
                    ends.push(log.len());
                }
                let all: Vec<Record> = Records::new(&log).collect();
                prop_assert_eq!(all, entries.iter().cloned().map(Record::Put).collect::<Vec<_>>());

                let at = cut.index(log.len());
                let whole = ends.iter().filter(|&&e| e <= at).count();
                let mut r = Records::new(&log[..at]);
                let got: Vec<Record> = r.by_ref().collect();
                prop_assert_eq!(got.len(), whole);
                prop_assert_eq!(r.good_len(), if whole == 0 { 0 } else { ends[whole - 1] });

                let at = flip.index(log.len());
                let mut damaged = log.clone();
                damaged[at] ^= 1 << bit;
                let before = ends.iter().filter(|&&e| e <= at).count();
                let got: Vec<Record> = Records::new(&damaged).collect();
                prop_assert_eq!(got.len(), before);
                for (g, e) in got.iter().zip(&entries) {
                    prop_assert_eq!(g, &Record::Put(e.clone()));
                }
            }
        }
    }
}
