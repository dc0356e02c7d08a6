//! Loom model of the route table's two copies (the `left-right` crate, whose
//! atomics and locks are loom's under `cfg(loom)`): a reader never sees a torn
//! record, sees the old holder demoted once it has seen the new holder promoted, and
//! no change is lost on either copy (each change is applied to the copy readers
//! left after the swap, then replayed on the other).
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p halo-router --release --lib loom_`

use std::collections::HashMap;

use loom::thread;

/// A record as the table holds it: (authoritative, epoch, epoch again). A reader
/// that saw fields of two different records would see the two epochs differ.
type Record = (bool, u64, u64);

/// The map each copy holds, keyed by site (0 = A, 1 = B).
#[derive(Clone, Default)]
struct Map(HashMap<u8, Record>);

enum Op {
    Upsert(u8, Record),
}

impl left_right::Absorb<Op> for Map {
    fn absorb_first(&mut self, op: &mut Op, _: &Self) {
        let Op::Upsert(key, record) = op;
        self.0.insert(*key, *record);
    }

    fn absorb_second(&mut self, op: Op, _: &Self) {
        let Op::Upsert(key, record) = op;
        self.0.insert(key, record);
    }

    fn sync_with(&mut self, first: &Self) {
        self.0.clone_from(&first.0);
    }
}

fn read(handle: &left_right::ReadHandle<Map>, key: u8) -> Option<Record> {
    handle.enter().and_then(|m| m.0.get(&key).copied())
}

#[test]
fn loom_left_right_demotion_first_whole_records_no_lost_change() {
    loom::model(|| {
        let (mut writer, reader) = left_right::new::<Map, Op>();
        // A (key 0) holds authority at epoch 1; B (key 1) is a backup.
        writer.append(Op::Upsert(0, (true, 1, 1)));
        writer.append(Op::Upsert(1, (false, 1, 1)));
        writer.publish();
        let r = reader.clone();
        let writer_thread = thread::spawn(move || {
            // Promote B as the router's writer does: the old holder's demotion is
            // published first, then the promotion.
            writer.append(Op::Upsert(0, (false, 2, 2)));
            writer.publish();
            writer.append(Op::Upsert(1, (true, 2, 2)));
            writer.publish();
            writer
        });
        let b = read(&r, 1).expect("B is always published");
        let a = read(&r, 0).expect("A is always published");
        assert!(matches!(a, (true, 1, 1) | (false, 2, 2)), "torn A: {a:?}");
        assert!(matches!(b, (false, 1, 1) | (true, 2, 2)), "torn B: {b:?}");
        if b == (true, 2, 2) {
            assert_eq!(
                a,
                (false, 2, 2),
                "saw B promoted, then A still authoritative"
            );
        }
        let mut writer = writer_thread.join().expect("writer");
        // No lost change, on either copy: read, swap copies once more, read again.
        for _ in 0..2 {
            assert_eq!(read(&r, 0), Some((false, 2, 2)), "A's demotion lost");
            assert_eq!(read(&r, 1), Some((true, 2, 2)), "B's promotion lost");
            writer.publish();
        }
    });
}
