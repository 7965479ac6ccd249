//! The kernel's ring buffer, emptied on a thread of its own.
//!
//! The session handles events one by one on the agent's main task, and some of that work is
//! slow once: the first symbolization of a big binary, a new process's Python detection,
//! unwind tables. While it ran, nobody read the ring, and a burst (workers recycled under
//! load, each new thread's first 32 KiB stack copies) filled the 4 MiB ring in a few hundred
//! milliseconds: gunicorn's recycled workers lost their forks and exits that way. Here a
//! thread copies records out as soon as the kernel has them, into batches the session takes
//! at its own pace. Bounded: past [`MAX_QUEUED_BYTES`] of records not yet handled the thread
//! stops reading, so the kernel's ring fills and its drops are counted as
//! before (one place counts losses: the kernel's counters and the sequence gaps).

use std::{
    os::fd::{AsRawFd, RawFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use tokio::sync::mpsc;

use crate::units::monotonic_ns;

/// How long the thread waits for the kernel's wake-up before reading anyway: the kernel wakes
/// us per 128 KiB of records only, and a quiet target's events must not wait longer than this.
/// Well inside the reorder window (50 ms), so a record read this late is not a late event.
/// Each read wakes this thread and the session's task: at 10 ms (the old drain timer) the
/// followed switcher's agent took 4.1-4.9 % of a core against 3.7-4.4 % reading on its own
/// task; at 20 ms 3.0-3.7 % (50 ms: 2.9-3.6 %), bench/RESULTS.md section 13.
const POLL_MS: i32 = 20;

/// Records read from the kernel's ring but not handled yet, at most: a few seconds of a busy
/// service's events while the session is busy with something slow (a first symbolization).
const MAX_QUEUED_BYTES: usize = 32 << 20;

/// A batch is closed at this size so the session starts on it while the thread reads on.
const BATCH_BYTES: usize = 1 << 20;

/// Batches in flight at most (besides the byte limit).
const MAX_BATCHES: usize = 1024;

/// Handled batches' buffers kept for the next reads, at most, and the largest kept: a busy
/// target's 20 ms of records is tens of KiB, and a fresh buffer grown to that each read cost
/// its reallocations and page faults (perf on the followed switcher: ~3 % of the agent).
/// Larger ones (a burst) go back to the allocator, so the spares stay under 1 MiB.
const SPARE_BUFFERS: usize = 4;
const SPARE_MAX_BYTES: usize = 256 << 10;

/// What the reader and the batches it made share: the bytes not yet handled, and spare
/// buffers.
#[derive(Default)]
struct Shared {
    queued: AtomicUsize,
    /// The most `queued` has been (it is the agent's memory for records at that moment).
    most_queued: AtomicUsize,
    spare: Mutex<Vec<Vec<u8>>>,
}

/// Records copied out of the ring in the order the kernel wrote them.
pub struct Batch {
    /// Every record stamped before this time was in the ring when this batch's read began, so
    /// it is in this batch or an earlier one (None: the read went on into a next batch).
    pub read_ns: Option<u64>,
    /// Each record as its length (u32, native endian) and its bytes.
    bytes: Vec<u8>,
    shared: Arc<Shared>,
}

impl Batch {
    /// An empty batch, in a spare buffer when there is one.
    fn new(shared: &Arc<Shared>) -> Self {
        let bytes = shared
            .spare
            .lock()
            .ok()
            .and_then(|mut spare| spare.pop())
            .unwrap_or_default();
        Self {
            read_ns: None,
            bytes,
            shared: Arc::clone(shared),
        }
    }

    /// Appends a record, counted against the limit until the batch is dropped. A ring
    /// record is at most the ring's size, which is a u32.
    fn push(&mut self, record: &[u8]) {
        self.bytes
            .extend_from_slice(&(record.len() as u32).to_ne_bytes());
        self.bytes.extend_from_slice(record);
        let queued = self
            .shared
            .queued
            .fetch_add(4 + record.len(), Ordering::Relaxed);
        self.shared
            .most_queued
            .fetch_max(queued + 4 + record.len(), Ordering::Relaxed);
    }

    /// The records, in order.
    pub fn records(&self) -> Records<'_> {
        Records { rest: &self.bytes }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        // Handled (or thrown away): its bytes no longer count against the limit.
        self.shared
            .queued
            .fetch_sub(self.bytes.len(), Ordering::Relaxed);
        let mut bytes = std::mem::take(&mut self.bytes);
        if bytes.capacity() > SPARE_MAX_BYTES {
            return;
        }
        bytes.clear();
        if let Ok(mut spare) = self.shared.spare.lock()
            && spare.len() < SPARE_BUFFERS
        {
            spare.push(bytes);
        }
    }
}

pub struct Records<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Records<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (len, rest) = self.rest.split_first_chunk::<4>()?;
        let len = u32::from_ne_bytes(*len) as usize;
        let record = rest.get(..len)?;
        self.rest = &rest[len..];
        Some(record)
    }
}

/// The thread reading the ring, and the batches it made.
pub struct RingReader {
    batches: mpsc::Receiver<Batch>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RingReader {
    /// Starts reading `ring`.
    pub fn spawn(ring: RingBuf<MapData>) -> Result<Self> {
        let (tx, batches) = mpsc::channel(MAX_BATCHES);
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared::default());
        let thread = std::thread::Builder::new()
            .name("stallscope-ring".into())
            .spawn({
                let (stop, shared) = (Arc::clone(&stop), Arc::clone(&shared));
                move || read_until_stopped(ring, &tx, &stop, &shared)
            })
            .context("starting the ring buffer's reader thread")?;
        Ok(Self {
            batches,
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// The next batch (at least one every [`POLL_MS`] while reading); None once the reader
    /// stopped and every batch was taken.
    pub async fn next(&mut self) -> Option<Batch> {
        self.batches.recv().await
    }

    /// Stops reading after one last read of what the kernel has now; the batches up to it are
    /// still to be taken with [`Self::next`] until it says None.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }

    /// The most bytes of records that waited for the session at once so far.
    pub fn most_queued_bytes(&self) -> usize {
        self.shared.most_queued.load(Ordering::Relaxed)
    }
}

impl Drop for RingReader {
    fn drop(&mut self) {
        self.stop();
        // Fails a send waiting for room, so the thread ends.
        self.batches.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn read_until_stopped(
    mut ring: RingBuf<MapData>,
    tx: &mpsc::Sender<Batch>,
    stop: &AtomicBool,
    shared: &Arc<Shared>,
) {
    let fd = ring.as_raw_fd();
    loop {
        let stopping = stop.load(Ordering::Acquire);
        // The last read at stop is made whatever is queued.
        let limit = if stopping {
            usize::MAX
        } else {
            MAX_QUEUED_BYTES
        };
        if read_ring(&mut ring, shared, limit, tx).is_err() || stopping {
            return;
        }
        wait_readable(fd);
    }
}

/// Sends what the ring holds now, in batches of about [`BATCH_BYTES`], each as soon as it is
/// full; the last one says when the read began. At least one batch (so the session's clock
/// moves on a quiet target) unless `limit` bytes wait already: then the records stay in the
/// kernel's ring (which drops and counts past its size) until the session catches up. Err:
/// the session is gone.
fn read_ring(
    ring: &mut RingBuf<MapData>,
    shared: &Arc<Shared>,
    limit: usize,
    tx: &mpsc::Sender<Batch>,
) -> Result<(), ()> {
    let read_ns = monotonic_ns();
    let mut batch = Batch::new(shared);
    let room = || shared.queued.load(Ordering::Relaxed) < limit;
    while room() {
        let Some(item) = ring.next() else {
            batch.read_ns = Some(read_ns);
            break;
        };
        batch.push(&item);
        drop(item);
        if batch.bytes.len() >= BATCH_BYTES {
            let full = std::mem::replace(&mut batch, Batch::new(shared));
            tx.blocking_send(full).map_err(drop)?;
        }
    }
    // Cut short by the limit: no read time, the ring may still hold older records.
    if batch.bytes.is_empty() && batch.read_ns.is_none() {
        return Ok(());
    }
    tx.blocking_send(batch).map_err(drop)
}

/// Until the kernel wakes the ring's readers, or [`POLL_MS`].
fn wait_readable(fd: RawFd) {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; a failure (EINTR) only ends the wait early.
    unsafe { libc::poll(&mut pollfd, 1, POLL_MS) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_gives_back_its_records_in_order_and_releases_their_bytes() {
        let shared = Arc::new(Shared::default());
        let mut batch = Batch::new(&shared);
        for record in [&b"first"[..], b"", b"third record"] {
            batch.push(record);
        }
        let records: Vec<&[u8]> = batch.records().collect();
        assert_eq!(records, vec![&b"first"[..], b"", b"third record"]);
        assert_eq!(shared.queued.load(Ordering::Relaxed), 4 * 3 + 5 + 12);
        drop(batch);
        assert_eq!(
            shared.queued.load(Ordering::Relaxed),
            0,
            "handled bytes leave the limit"
        );
    }

    #[test]
    fn a_truncated_batch_ends_at_its_last_whole_record() {
        let shared = Arc::new(Shared::default());
        let mut batch = Batch::new(&shared);
        batch.push(b"whole");
        batch.bytes.extend_from_slice(&100u32.to_ne_bytes());
        batch.bytes.extend_from_slice(b"short");
        shared.queued.fetch_add(4 + 5, Ordering::Relaxed);
        assert_eq!(batch.records().collect::<Vec<_>>(), vec![&b"whole"[..]]);
    }

    /// A handled batch's buffer serves a next batch, empty; a burst's big buffer is not kept,
    /// nor more than a few.
    #[test]
    fn handled_buffers_are_reused_a_few_and_small_ones_only() {
        let shared = Arc::new(Shared::default());
        let mut batch = Batch::new(&shared);
        batch.push(&[7; 1000]);
        let buffer = batch.bytes.as_ptr();
        drop(batch);
        let next = Batch::new(&shared);
        assert_eq!(next.bytes.as_ptr(), buffer, "the spare buffer is reused");
        assert!(next.bytes.is_empty() && next.records().next().is_none());
        assert_eq!(shared.queued.load(Ordering::Relaxed), 0);
        drop(next);
        let mut burst = Batch::new(&shared);
        burst.push(&vec![1; SPARE_MAX_BYTES + 1]);
        drop(burst);
        let many: Vec<Batch> = (0..SPARE_BUFFERS + 3)
            .map(|_| Batch::new(&shared))
            .collect();
        drop(many);
        let spare = shared.spare.lock().expect("not poisoned");
        assert!(spare.len() <= SPARE_BUFFERS);
        assert!(spare.iter().all(|b| b.capacity() <= SPARE_MAX_BYTES));
    }
}
