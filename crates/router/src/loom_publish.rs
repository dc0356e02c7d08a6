//! Loom model of the table's publish/read protocol: records are immutable once
//! published, a reader that sees a record sees all of it, and a demotion published
//! before a promotion is seen before it (no reader sees the new holder and then the
//! old holder still authoritative).
//!
//! The model stands in for papaya's insert (a release store of a pointer to a fully
//! built node) and get (an acquire load) with one atomic per key holding the index of
//! an immutable record, whose fields are written before publication.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p halo-router --release --lib loom_`

use loom::sync::Arc;
use loom::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use loom::thread;

/// An immutable record: written before it is published, never after.
struct Record {
    authoritative: AtomicU64,
    epoch: AtomicU64,
}

struct Table {
    records: Vec<Record>,
    /// Per key: index into `records` of the published record (0 = none).
    cells: [AtomicUsize; 2],
}

impl Table {
    fn publish(&self, key: usize, index: usize, authoritative: bool, epoch: u64) {
        let r = &self.records[index];
        r.authoritative
            .store(u64::from(authoritative), Ordering::Relaxed);
        r.epoch.store(epoch, Ordering::Relaxed);
        self.cells[key].store(index, Ordering::Release);
    }

    /// `(authoritative, epoch)` of the published record, if any.
    fn read(&self, key: usize) -> Option<(bool, u64)> {
        let index = self.cells[key].load(Ordering::Acquire);
        (index != 0).then(|| {
            let r = &self.records[index];
            (
                r.authoritative.load(Ordering::Relaxed) == 1,
                r.epoch.load(Ordering::Relaxed),
            )
        })
    }
}

fn table() -> Arc<Table> {
    Arc::new(Table {
        records: (0..5)
            .map(|_| Record {
                authoritative: AtomicU64::new(0),
                epoch: AtomicU64::new(0),
            })
            .collect(),
        cells: [AtomicUsize::new(0), AtomicUsize::new(0)],
    })
}

#[test]
fn loom_promotion_is_seen_after_the_demotion_and_records_are_whole() {
    loom::model(|| {
        let table = table();
        // A (key 0) holds authority at epoch 1; B (key 1) is a backup.
        table.publish(0, 1, true, 1);
        table.publish(1, 2, false, 1);
        let writer = {
            let table = table.clone();
            thread::spawn(move || {
                // Promote B as the router's writer does: fresh records, the old
                // holder's demotion first.
                table.publish(0, 3, false, 2);
                table.publish(1, 4, true, 2);
            })
        };
        let b = table.read(1).expect("B is always published");
        let a = table.read(0).expect("A is always published");
        // Whole records only: never a mix of an old and a new record's fields.
        assert!(matches!(a, (true, 1) | (false, 2)), "torn A: {a:?}");
        assert!(matches!(b, (false, 1) | (true, 2)), "torn B: {b:?}");
        // Publication order: having seen B promoted, A is seen demoted.
        if b == (true, 2) {
            assert_eq!(a, (false, 2), "saw B promoted, then A still authoritative");
        }
        writer.join().expect("writer");
    });
}
