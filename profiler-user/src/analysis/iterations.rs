//! A loop thread's iterations for the timeline view, in bounded memory: each iteration is its
//! own mark while there are few; past [`MAX_BUCKETS`] neighbours are merged into buckets (count,
//! busy time, longest) of a width that doubles as the recording grows, so an hour of a busy
//! loop costs the same as a minute of it.
//!
//! Invariant: at most `MAX_BUCKETS` buckets per thread, in time order, never overlapping in
//! their starts (a bucket's iterations all start within `width_ns` of its first one).

/// Buckets kept per loop thread: a timeline row is ~1,000 px wide, so more would not be seen,
/// and 40 rows of them stay ~1 MB of page data.
pub const MAX_BUCKETS: usize = 1024;

/// Iterations that started close together: one mark on the timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IterationBucket {
    /// Start of the first iteration, end of the last.
    pub start_ns: u64,
    pub end_ns: u64,
    pub count: u64,
    /// Sum of the iterations' durations (the loop's busy time in the bucket).
    pub busy_ns: u64,
    pub longest_ns: u64,
}

/// One thread's iteration marks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IterationMarks {
    buckets: Vec<IterationBucket>,
    /// 0 while every iteration is its own bucket.
    width_ns: u64,
}

impl IterationMarks {
    pub fn buckets(&self) -> &[IterationBucket] {
        &self.buckets
    }

    /// 0 while each bucket is one iteration; else the width buckets were merged at.
    pub fn width_ns(&self) -> u64 {
        self.width_ns
    }

    /// An iteration from `start_ns` to `end_ns` (they come in time order per thread).
    pub fn push(&mut self, start_ns: u64, end_ns: u64) {
        let end_ns = end_ns.max(start_ns);
        let one = IterationBucket {
            start_ns,
            end_ns,
            count: 1,
            busy_ns: end_ns - start_ns,
            longest_ns: end_ns - start_ns,
        };
        match self.buckets.last_mut() {
            Some(last) if self.width_ns > 0 && start_ns < last.start_ns + self.width_ns => {
                merge(last, &one)
            }
            _ => self.buckets.push(one),
        }
        if self.buckets.len() > MAX_BUCKETS {
            self.coarsen();
        }
    }

    /// Doubles the width (at least to what fits the span in half the buckets) and merges.
    fn coarsen(&mut self) {
        let (Some(first), Some(last)) = (self.buckets.first(), self.buckets.last()) else {
            return;
        };
        let span = last.start_ns.saturating_sub(first.start_ns);
        let fit = span / (MAX_BUCKETS as u64 / 2) + 1;
        self.width_ns = self.width_ns.saturating_mul(2).max(fit);
        let mut merged: Vec<IterationBucket> = Vec::with_capacity(MAX_BUCKETS / 2 + 1);
        for bucket in self.buckets.drain(..) {
            match merged.last_mut() {
                Some(group) if bucket.start_ns < group.start_ns + self.width_ns => {
                    merge(group, &bucket)
                }
                _ => merged.push(bucket),
            }
        }
        self.buckets = merged;
    }
}

fn merge(into: &mut IterationBucket, other: &IterationBucket) {
    into.end_ns = into.end_ns.max(other.end_ns);
    into.count += other.count;
    into.busy_ns = into.busy_ns.saturating_add(other.busy_ns);
    into.longest_ns = into.longest_ns.max(other.longest_ns);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_iterations_are_each_their_own_mark() {
        let mut marks = IterationMarks::default();
        for i in 0..10u64 {
            marks.push(i * 1000, i * 1000 + 300);
        }
        assert_eq!(marks.buckets().len(), 10);
        assert_eq!(marks.width_ns(), 0);
        assert_eq!(marks.buckets()[3].start_ns, 3000);
        assert_eq!(marks.buckets()[3].longest_ns, 300);
    }

    #[test]
    fn many_iterations_are_bucketed_within_the_bound_and_nothing_is_lost() {
        let mut marks = IterationMarks::default();
        let n = 1_000_000u64;
        // A 1 ms iteration every 2 ms, and one 250 ms stall in the middle.
        let mut t = 0;
        for i in 0..n {
            let len = if i == n / 2 { 250_000_000 } else { 1_000_000 };
            marks.push(t, t + len);
            t += len + 1_000_000;
        }
        let buckets = marks.buckets();
        assert!(buckets.len() <= MAX_BUCKETS, "{}", buckets.len());
        assert!(buckets.len() >= MAX_BUCKETS / 4, "{}", buckets.len());
        assert_eq!(buckets.iter().map(|b| b.count).sum::<u64>(), n);
        assert_eq!(
            buckets.iter().map(|b| b.busy_ns).sum::<u64>(),
            (n - 1) * 1_000_000 + 250_000_000
        );
        assert_eq!(
            buckets.iter().map(|b| b.longest_ns).max(),
            Some(250_000_000)
        );
        assert!(buckets.windows(2).all(|w| w[0].start_ns < w[1].start_ns));
        assert_eq!(buckets[0].start_ns, 0);
        assert_eq!(buckets[buckets.len() - 1].end_ns, t - 1_000_000);
    }
}
