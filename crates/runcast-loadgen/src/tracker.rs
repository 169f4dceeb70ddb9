//! Gaps and duplicates of one connection: by the publisher's sequence (every event, in order,
//! once) and, for the gateway, by the stream offset of its frames (strictly increasing, no holes).

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tracker {
    /// The sequence expected next.
    next_seq: u64,
    last_offset: Option<u64>,
    /// Events delivered once (duplicates not counted).
    pub delivered: u64,
    /// Sequences skipped over.
    pub gaps: u64,
    /// Sequences delivered again, or out of order.
    pub duplicates: u64,
    pub offset_gaps: u64,
    pub offset_duplicates: u64,
}

impl Tracker {
    /// A connection that expects every sequence from `first_seq` on.
    pub fn new(first_seq: u64) -> Self {
        Self { next_seq: first_seq, ..Self::default() }
    }

    /// Records a delivered sequence; false for a duplicate.
    pub fn seq(&mut self, seq: u64) -> bool {
        if seq < self.next_seq {
            self.duplicates += 1;
            return false;
        }
        self.gaps += seq - self.next_seq;
        self.next_seq = seq + 1;
        self.delivered += 1;
        true
    }

    /// Records a gateway frame's stream offset.
    pub fn offset(&mut self, offset: u64) {
        match self.last_offset {
            Some(last) if offset <= last => self.offset_duplicates += 1,
            Some(last) => {
                self.offset_gaps += offset - last - 1;
                self.last_offset = Some(offset);
            }
            None => self.last_offset = Some(offset),
        }
    }

    pub fn last_offset(&self) -> Option<u64> {
        self.last_offset
    }

    /// The last sequence delivered (0: none).
    pub fn last_seq(&self) -> u64 {
        self.next_seq.saturating_sub(1)
    }

    /// Once the publisher has stopped at `last_published`: the sequences after the last one
    /// delivered (still on their way, or never coming).
    pub fn behind(&self, last_published: u64) -> u64 {
        last_published.saturating_sub(self.last_seq())
    }

    /// Gaps once the publisher has stopped at `last_published`: the skipped sequences plus the
    /// ones that never arrived.
    pub fn gaps_at_end(&self, last_published: u64) -> u64 {
        self.gaps + self.behind(last_published)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_once_is_clean() {
        let mut tracker = Tracker::new(1);
        for seq in 1..=100 {
            assert!(tracker.seq(seq));
            tracker.offset(seq + 10);
        }
        assert_eq!((tracker.delivered, tracker.gaps, tracker.duplicates), (100, 0, 0));
        assert_eq!((tracker.offset_gaps, tracker.offset_duplicates, tracker.last_offset()), (0, 0, Some(110)));
        assert_eq!(tracker.gaps_at_end(100), 0);
    }

    #[test]
    fn counts_skipped_and_repeated_sequences() {
        let mut tracker = Tracker::new(1);
        for seq in [1, 2, 5, 5, 3, 6, 9] {
            tracker.seq(seq);
        }
        // 3, 4 skipped before 5; 7, 8 before 9; the second 5 and the late 3 are duplicates.
        assert_eq!((tracker.delivered, tracker.gaps, tracker.duplicates), (5, 4, 2));
        assert_eq!(tracker.last_seq(), 9);
        assert_eq!(tracker.gaps_at_end(12), 4 + 3);
        assert_eq!((tracker.gaps, tracker.behind(12), tracker.behind(9)), (4, 3, 0));
    }

    #[test]
    fn a_late_start_is_a_gap_and_nothing_delivered_is_all_gaps() {
        let mut tracker = Tracker::new(1);
        tracker.seq(4);
        assert_eq!(tracker.gaps, 3);
        assert_eq!(Tracker::new(1).gaps_at_end(50), 50);
    }

    #[test]
    fn offsets_must_strictly_increase_without_holes() {
        let mut tracker = Tracker::new(1);
        for offset in [7, 8, 8, 11, 10, 12] {
            tracker.offset(offset);
        }
        assert_eq!((tracker.offset_gaps, tracker.offset_duplicates, tracker.last_offset()), (2, 2, Some(12)));
    }
}
