//! Unwinds of stack copies seen before, reused. A thread that blocks or is sampled where it was
//! before (a timer loop, a server parked in the same call) sends the kernel's copy of the same
//! stack again and again; its first 512 bytes often differ (locals, a timestamp), so the kernel
//! cannot send "repeated", yet the unwind reads only a few words (return addresses, saved
//! registers) and those are the same.
//!
//! Exact by construction: an unwind is a function of the process's modules, the registers
//! (ip, sp, bp) and the words it read. An entry keeps the registers, the words read (address and
//! value, or that the read failed) and the result; it is reused only when every one of those
//! words reads the same in the new copy and the modules have not changed since (a generation
//! number the unwinders bump whenever a process gains modules or is forgotten). Unwinds that
//! fell back to scanning the stack (which looks at many words outside the recorded reads) are
//! not kept.
//!
//! Bounded: at most [`MAX_ENTRIES`] entries and [`MAX_WORDS`] words held in all; past either the
//! cache starts afresh (the dropped entries are counted in `evicted`: nothing is lost but time).

use super::unwind::Unwound;

/// Stacks kept: a service parks in a few dozen places; a deep recursive program makes many
/// distinct stacks, which only cost a miss each.
pub const MAX_ENTRIES: usize = 1024;
/// Words held in all (each entry's reads plus its three lists of frames): about 4 MB.
pub const MAX_WORDS: usize = 1 << 19;
/// What the probe unwind flips in rbp (see `Unwinders::unwind_frames`): far outside any stack,
/// so an unwind that used rbp as an address reads other words (or fails) with it.
pub const PROBE_BP: u64 = 0x5a5a_0000_0000_0000;

/// Where an unwind starts (rbp is checked per entry: see [`Fps`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub pid: u32,
    pub ip: u64,
    pub sp: u64,
}

/// How an entry's unwind depends on the initial rbp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fps {
    /// Made with this rbp and reused only with it.
    Exact(u64),
    /// Reused with any rbp: each frame's rbp is the one found (Some) or the initial one carried
    /// through (None), as a second unwind with another rbp showed.
    Template(Vec<Option<u64>>),
}

/// The per-frame rbp template of two unwinds that differed only in their initial rbp (`a`,
/// `b`) and found the same frames: None when some frame's rbp is neither the same in both nor
/// the initial one carried through (the unwind depends on rbp).
pub fn passthrough(fps_a: &[u64], bp_a: u64, fps_b: &[u64], bp_b: u64) -> Option<Vec<Option<u64>>> {
    if fps_a.len() != fps_b.len() {
        return None;
    }
    fps_a
        .iter()
        .zip(fps_b)
        .map(|(&a, &b)| {
            if a == b {
                Some(Some(a))
            } else if a == bp_a && b == bp_b {
                Some(None)
            } else {
                None
            }
        })
        .collect()
}

struct Entry {
    /// The unwinders' generation the result was computed in.
    generation: u64,
    fps: Fps,
    /// Every stack word the unwind read: (address, value; None if the read failed).
    reads: Vec<(u64, Option<u64>)>,
    ips: Vec<u64>,
    /// Used with `Fps::Exact`.
    fp_values: Vec<u64>,
    sps: Vec<u64>,
    /// Whether it reached the end of the stack cleanly.
    complete: bool,
}

impl Entry {
    fn words(&self) -> usize {
        2 * self.reads.len() + 3 * self.ips.len()
    }

    fn unwound(&self, bp: u64) -> Unwound {
        let fps = match &self.fps {
            Fps::Exact(_) => self.fp_values.clone(),
            Fps::Template(template) => template.iter().map(|fp| fp.unwrap_or(bp)).collect(),
        };
        Unwound {
            ips: self.ips.clone(),
            fps,
            sps: self.sps.clone(),
        }
    }
}

/// Counters for the report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Unwinds reused.
    pub hits: u64,
    /// Lookups that found nothing usable (no entry, a word that changed, modules since).
    pub misses: u64,
    /// Entries dropped when the cache started afresh.
    pub evicted: u64,
}

/// What a lookup found.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    Hit {
        unwound: Unwound,
        complete: bool,
    },
    /// Nothing usable; `seen_here`: an entry of this process, ip and sp exists, made with
    /// another rbp (worth checking whether the unwind depends on it).
    Miss {
        seen_here: bool,
    },
}

#[derive(Default)]
pub struct UnwindCache {
    entries: foldhash::HashMap<Key, Entry>,
    words: usize,
    pub stats: CacheStats,
}

impl UnwindCache {
    /// The unwind of `key` with `bp`, if every word it read reads the same now (`read`: the new
    /// copy) and it was made in `generation`.
    pub fn get(
        &mut self,
        key: &Key,
        generation: u64,
        bp: u64,
        mut read: impl FnMut(u64) -> Option<u64>,
    ) -> Lookup {
        let Some(entry) = self
            .entries
            .get(key)
            .filter(|entry| entry.generation == generation)
        else {
            self.stats.misses += 1;
            return Lookup::Miss { seen_here: false };
        };
        let bp_fits = match entry.fps {
            Fps::Exact(made_with) => made_with == bp,
            Fps::Template(_) => true,
        };
        if !bp_fits {
            self.stats.misses += 1;
            return Lookup::Miss { seen_here: true };
        }
        if !entry.reads.iter().all(|&(addr, value)| read(addr) == value) {
            self.stats.misses += 1;
            return Lookup::Miss { seen_here: false };
        }
        self.stats.hits += 1;
        Lookup::Hit {
            unwound: entry.unwound(bp),
            complete: entry.complete,
        }
    }

    /// Keeps an unwind just made (replacing what `key` had).
    #[expect(
        clippy::too_many_arguments,
        reason = "the parts of one unwind, kept apart"
    )]
    pub fn insert(
        &mut self,
        key: Key,
        generation: u64,
        fps: Fps,
        reads: Vec<(u64, Option<u64>)>,
        ips: &[u64],
        fp_values: &[u64],
        sps: &[u64],
        complete: bool,
    ) {
        let entry = Entry {
            generation,
            fp_values: match fps {
                Fps::Exact(_) => fp_values.to_vec(),
                Fps::Template(_) => Vec::new(),
            },
            fps,
            reads,
            ips: ips.to_vec(),
            sps: sps.to_vec(),
            complete,
        };
        let words = entry.words();
        if words > MAX_WORDS {
            return;
        }
        if let Some(old) = self.entries.remove(&key) {
            self.words -= old.words();
        }
        if self.entries.len() >= MAX_ENTRIES || self.words + words > MAX_WORDS {
            self.stats.evicted += self.entries.len() as u64;
            self.entries.clear();
            self.words = 0;
        }
        self.words += words;
        self.entries.insert(key, entry);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sp: u64) -> Key {
        Key {
            pid: 7,
            ip: 0x1000,
            sp,
        }
    }

    fn unwound(ips: &[u64], fps: &[u64]) -> Unwound {
        Unwound {
            ips: ips.to_vec(),
            fps: fps.to_vec(),
            sps: vec![0; ips.len()],
        }
    }

    fn insert(
        cache: &mut UnwindCache,
        key: Key,
        fps: Fps,
        reads: Vec<(u64, Option<u64>)>,
        ips: &[u64],
    ) {
        let fp_values = vec![0x42; ips.len()];
        let sps = vec![0; ips.len()];
        cache.insert(key, 1, fps, reads, ips, &fp_values, &sps, true);
    }

    fn hit(unwound: Unwound) -> Lookup {
        Lookup::Hit {
            unwound,
            complete: true,
        }
    }

    /// Reused only while every word the unwind read is the same, failed reads included, and
    /// only in the generation it was made in and with the rbp it was made with.
    #[test]
    fn reused_only_when_the_words_read_rbp_and_the_modules_are_the_same() {
        let mut cache = UnwindCache::default();
        let reads = vec![(0x7000, Some(0x1234)), (0x7008, None)];
        insert(
            &mut cache,
            key(0x7000),
            Fps::Exact(0x42),
            reads,
            &[0x1000, 0x1234],
        );
        let same = |addr: u64| (addr == 0x7000).then_some(0x1234);
        assert_eq!(
            cache.get(&key(0x7000), 1, 0x42, same),
            hit(unwound(&[0x1000, 0x1234], &[0x42, 0x42]))
        );
        // The return address slot changed: another caller.
        let other = |addr: u64| (addr == 0x7000).then_some(0x5678);
        let miss = Lookup::Miss { seen_here: false };
        assert_eq!(cache.get(&key(0x7000), 1, 0x42, other), miss);
        // A read that failed before succeeds now (a longer copy): not the same unwind.
        let longer = |addr: u64| Some(if addr == 0x7000 { 0x1234 } else { 0 });
        assert_eq!(cache.get(&key(0x7000), 1, 0x42, longer), miss);
        // Modules changed since.
        assert_eq!(cache.get(&key(0x7000), 2, 0x42, same), miss);
        // Other registers: sp, or rbp (said: the caller may check whether rbp matters).
        assert_eq!(cache.get(&key(0x7010), 1, 0x42, same), miss);
        assert_eq!(
            cache.get(&key(0x7000), 1, 0x43, same),
            Lookup::Miss { seen_here: true }
        );
        assert_eq!((cache.stats.hits, cache.stats.misses), (1, 5));
    }

    /// An unwind found not to depend on rbp is reused with any rbp, each frame's rbp rebuilt:
    /// the initial one where it was carried through, the found one elsewhere.
    #[test]
    fn an_rbp_independent_unwind_carries_the_new_rbp_through() {
        // Frame 0 and 1 ran with the initial rbp; frame 2's was restored from the stack.
        let template = passthrough(&[1, 1, 0x99], 1, &[2, 2, 0x99], 2).expect("independent");
        assert_eq!(template, vec![None, None, Some(0x99)]);
        let mut cache = UnwindCache::default();
        insert(
            &mut cache,
            key(0x7000),
            Fps::Template(template),
            Vec::new(),
            &[0xa, 0xb, 0xc],
        );
        assert_eq!(
            cache.get(&key(0x7000), 1, 0x555, |_| None),
            hit(unwound(&[0xa, 0xb, 0xc], &[0x555, 0x555, 0x99]))
        );
        // A frame whose rbp differs otherwise: it depends on rbp.
        assert_eq!(passthrough(&[1, 5], 1, &[2, 6], 2), None);
        assert_eq!(passthrough(&[1], 1, &[2, 2], 2), None);
    }

    /// Bounded in entries and in words; past either it starts afresh and counts what it
    /// dropped; an entry replaced is not counted twice.
    #[test]
    fn bounded_and_evictions_counted() {
        let mut cache = UnwindCache::default();
        for sp in 0..MAX_ENTRIES as u64 {
            insert(
                &mut cache,
                key(sp),
                Fps::Exact(0),
                vec![(sp, Some(1))],
                &[1],
            );
        }
        assert_eq!(cache.len(), MAX_ENTRIES);
        insert(&mut cache, key(0), Fps::Exact(0), vec![(0, Some(2))], &[1]);
        assert_eq!(cache.len(), MAX_ENTRIES, "replaced in place");
        assert_eq!(cache.stats.evicted, 0);
        insert(&mut cache, key(u64::MAX), Fps::Exact(0), Vec::new(), &[1]);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.stats.evicted, MAX_ENTRIES as u64);
        // Words: big entries fill the budget before the entry count.
        let mut cache = UnwindCache::default();
        let frames = vec![1u64; MAX_WORDS / 3 / 4];
        for sp in 0..6 {
            insert(&mut cache, key(sp), Fps::Exact(0), Vec::new(), &frames);
            assert!(cache.words <= MAX_WORDS);
        }
        assert!(cache.stats.evicted > 0);
        // One entry larger than the whole budget is not kept at all.
        let huge = vec![1u64; MAX_WORDS];
        insert(&mut cache, key(99), Fps::Exact(0), Vec::new(), &huge);
        assert_eq!(
            cache.get(&key(99), 1, 0, |_| None),
            Lookup::Miss { seen_here: false }
        );
        assert!(cache.words <= MAX_WORDS);
    }
}
