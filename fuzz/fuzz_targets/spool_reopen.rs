//! A valid spool log built from random deliveries, then truncated or bit-flipped at a random
//! place: opening it (`scan` with repair) keeps every record before the damage, never yields
//! damaged data, reads each kept entry back from where its slot says (with the sinks still to reach), and leaves a log that
//! opens cleanly the next time.
//!
//! Input: `n, damage_mode, damage_at: u16, then per delivery: key byte, body_len, body...`.
#![no_main]

use std::borrow::Cow;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use cal_relay_sink::Message;
use cal_relay_spool::log::{read_entry, scan, segment_path, Scan};
use cal_relay_spool::record::{Entry, Record};
use libfuzzer_sys::fuzz_target;

fn entry(seq: u64, key: u8, body: &[u8]) -> Entry {
    Entry {
        seq,
        targets: vec!["a".into(), "b".into()],
        label: "booking_created".into(),
        message: Message {
            id: format!("{seq:064}"),
            destination: "cal.booking.created".into(),
            key: (!key.is_multiple_of(4)).then(|| format!("key-{}", key % 8)),
            headers: vec![(Cow::Borrowed("cal-trigger"), "BOOKING_CREATED".into())],
            content_type: "application/json".into(),
            body: Bytes::copy_from_slice(body),
            json_checked: false,
            received_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + seq),
            event: vec![(Cow::Borrowed("type"), "com.cal.booking_created".into())],
        },
    }
}

/// What a scan left pending: only slots are kept in memory; each reads back as the entry
/// written, less the sinks done.
fn pending_entries(dir: &std::path::Path, scan: &Scan) -> Vec<Entry> {
    scan.pending
        .values()
        .map(|s| Entry {
            targets: s.targets.to_vec(),
            ..read_entry(dir, &s.location()).expect("read back")
        })
        .collect()
}

fuzz_target!(|input: &[u8]| {
    let [n, mode, a, b, rest @ ..] = input else {
        return;
    };
    let n = (*n % 24) as u64;
    let damage_at = u16::from_le_bytes([*a, *b]) as usize;
    let mut rest = rest;
    // The log: a START, then PUTs, with a DONE for every third entry's first sink.
    let mut log = Record::Start { next_seq: 1 }.encode();
    let mut frames = Vec::new(); // (end offset, record)
    frames.push((log.len(), None));
    for seq in 1..=n {
        let (key, len) = match rest {
            [k, l, ..] => (*k, *l as usize),
            _ => (seq as u8, 0),
        };
        let body_start = 2.min(rest.len());
        let body = &rest[body_start..(body_start + len).min(rest.len())];
        rest = &rest[(body_start + len).min(rest.len())..];
        let e = entry(seq, key, body);
        log.extend_from_slice(&Record::Put(e.clone()).encode());
        frames.push((log.len(), Some(Record::Put(e))));
        if seq.is_multiple_of(3) {
            let done = Record::Done {
                seq,
                sink: "a".into(),
            };
            log.extend_from_slice(&done.encode());
            frames.push((log.len(), Some(done)));
        }
    }
    if log.is_empty() {
        return;
    }
    let at = damage_at % log.len();
    let truncate = mode.is_multiple_of(2);
    let mut damaged = log.clone();
    if truncate {
        damaged.truncate(at);
    } else {
        damaged[at] ^= 1 << (mode / 2 % 8);
    }

    // What must survive: the records whose frames end at or before the damage.
    let mut expected: Vec<Entry> = Vec::new();
    for (end, rec) in &frames {
        if *end > at {
            break;
        }
        match rec {
            Some(Record::Put(e)) => expected.push(e.clone()),
            Some(Record::Done { seq, sink }) => {
                if let Some(e) = expected.iter_mut().find(|e| e.seq == *seq) {
                    e.targets.retain(|t| t != sink);
                }
            }
            _ => {}
        }
    }
    expected.retain(|e| !e.targets.is_empty());

    let dir = tempfile::Builder::new()
        .prefix("spool-reopen-")
        .tempdir_in("/dev/shm")
        .expect("a tmpfs directory");
    std::fs::write(segment_path(dir.path(), 1), &damaged).expect("write segment");
    let opened = scan(dir.path(), true).expect("scan");
    let got = pending_entries(dir.path(), &opened);
    // Everything before the damage is kept; nothing damaged is yielded. (A bit flip that
    // leaves the frame intact is impossible: CRC-32 detects every single-bit error.)
    assert_eq!(got, expected, "pending entries after opening a damaged log");
    assert!(opened.next_seq >= expected.last().map_or(0, |e| e.seq + 1));

    // Repaired: the next open finds nothing to cut and the same entries.
    let again = scan(dir.path(), false).expect("second scan");
    assert!(
        again.damaged.is_empty(),
        "repair left damage: {:?}",
        again.damaged
    );
    assert_eq!(pending_entries(dir.path(), &again), expected);
});
