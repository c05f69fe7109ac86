//! Arbitrary bytes as a spool segment, a dead-letter file and an inbox file: decoding never
//! panics or loops, and every record it yields is one whose frame checksum matches and that
//! encodes back to itself: to exactly the bytes it was read from, or, for a record in an older
//! layout (a PUT or dead letter from before CloudEvents attributes were stored), to the current
//! layout of the same record.
#![no_main]

use cal_relay_spool::log::Records;
use cal_relay_spool::record::{read_frame, DeadLetter, Record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut records = Records::new(data);
    let mut at = 0;
    for rec in records.by_ref() {
        let (_, used) = read_frame(&data[at..]).expect("a yielded record has a valid frame");
        let encoded = rec.encode();
        // A PUT decodes with json_checked = false and encodes the same fields back.
        let (body, _) = read_frame(&encoded).expect("an encoded record has a valid frame");
        assert_eq!(
            Record::decode(body).as_ref(),
            Some(&rec),
            "record does not round-trip"
        );
        if encoded.len() == used {
            assert_eq!(encoded, &data[at..at + used], "record does not round-trip");
        }
        at += used;
    }
    assert_eq!(records.good_len(), at);
    assert!(at <= data.len());

    if let Some(dead) = DeadLetter::decode_file(data) {
        assert_eq!(DeadLetter::decode_file(&dead.encode()), Some(dead));
    }
    if let Some(entry) = cal_relay_spool::dead::decode_inbox(data) {
        let encoded = Record::Put(entry.clone()).encode();
        assert_eq!(cal_relay_spool::dead::decode_inbox(&encoded), Some(entry));
    }
});
