//! Stack ids to frames, cached: live from the kernel's stack map and the symbolizer, replayed
//! from the stacks a recording saved. Python and JavaScript frames are interned next to native
//! addresses so one stack id holds a mixed stack.

use super::*;

/// Stack ids to frames, cached. Live, it reads the kernel's stack map and symbolizes; replaying
/// a saved recording, every key was resolved when it was saved.
#[derive(Default)]
pub struct Resolver {
    pub symbols: Symbols,
    pub(super) stack_cache: foldhash::HashMap<i32, Vec<u64>>,
    pub(super) resolved: foldhash::HashMap<StackKey, Vec<Frame>>,
    /// Every stack seen in the events, resolved at the end so a saved recording can be
    /// re-rendered with a lower threshold.
    pub seen: foldhash::HashSet<StackKey>,
    /// User stacks unwound in userspace; a stack's id is its node's number plus `first_id`
    /// (from INTERNED_BASE, apart from the kernel stack map's ids).
    pub(super) interned: StackTable,
    /// The id of the table's node 0 once the table was rotated (0, the derived default, stands
    /// for INTERNED_BASE: see `first_id`).
    pub(super) first_interned: i32,
    /// `watch`: when the table is full, start it afresh instead of dropping new stacks (a run
    /// of days meets more distinct stacks than any bound); a recording keeps every id it gave
    /// out, because it saves them.
    pub rotate_interned: bool,
    /// Times the table was started afresh.
    pub interned_rotations: u64,
    pub interned_dropped: u64,
    /// Python frames met so far; an unwound stack refers to them by index (see PY_MARK).
    pub(super) python_frames: Vec<Frame>,
    pub(super) python_frame_ids: foldhash::HashMap<Frame, u64>,
    /// JavaScript frames met so far; an unwound stack refers to them by index (see JS_MARK).
    pub(super) js_frames: Vec<Frame>,
    pub(super) js_frame_ids: foldhash::HashMap<Frame, u64>,
    /// `--python-only`: stacks with Python frames show only those.
    pub python_only: bool,
    /// The names of resolved frames, one copy each (kept stalls clone resolved frames).
    pub(super) names: Names,
}

/// Marks an entry of an unwound stack as a Python frame (user addresses never have this bit);
/// the low bits index `python_frames`, PY_ENTRY marks the outermost frame of an interpreter run,
/// PY_PLACED a stack whose Python frames stand where they ran (not after the native ones).
pub(super) const PY_MARK: u64 = 1 << 63;
pub(super) const PY_ENTRY: u64 = 1 << 62;
pub(super) const PY_PLACED: u64 = 1 << 61;
pub(super) const PY_INDEX: u64 = (1 << 61) - 1;
/// Distinct Python frames (function, file, line) kept.
pub(super) const MAX_PYTHON_FRAMES: usize = 200_000;
/// Marks an entry of an unwound stack as a JavaScript frame in place of the native one (user
/// addresses stay below 2^47; PY_MARK is clear); the low bits index `js_frames`.
pub(super) const JS_MARK: u64 = 1 << 61;
pub(super) const JS_INDEX: u64 = JS_MARK - 1;
/// Distinct JavaScript frames kept.
pub(super) const MAX_JS_FRAMES: usize = 200_000;

/// First id given to an unwound user stack; kernel stack-map ids are far below.
pub const INTERNED_BASE: i32 = 1 << 24;
/// Frames of distinct unwound stacks kept, as nodes of the prefix tree (bounded memory: ~50
/// bytes a node); past it new stacks are dropped and counted. A new stack mostly adds a few
/// nodes: the FastAPI service of bench/RESULTS.md met ~12,000 stacks in 10 minutes.
pub(super) const MAX_INTERNED: usize = 1_000_000;

impl Default for StackTable {
    fn default() -> Self {
        StackTable::new(MAX_INTERNED)
    }
}

/// Bound on distinct stacks remembered for saving; past it, re-rendering shows fewer frames.
pub(super) const MAX_SEEN_STACKS: usize = 200_000;

impl Resolver {
    pub fn from_saved(saved: Vec<SavedStack>) -> Self {
        let mut names = Names::default();
        let resolved = saved
            .into_iter()
            .map(|mut s| {
                names.share(&mut s.frames);
                (
                    StackKey {
                        pid: s.pid,
                        kernel: s.kernel,
                        user: s.user,
                    },
                    s.frames,
                )
            })
            .collect();
        Resolver {
            resolved,
            names,
            ..Default::default()
        }
    }

    /// The id of an unwound user stack with Python frames (innermost first) to merge in. With
    /// the stack pointer of each native frame (`sps`, lined up with `ips`, or empty), each run
    /// of Python frames is put in place of the native frame that ran it now (see
    /// `python::place_runs`); otherwise the frames go after the native ones and are placed by
    /// name when resolved.
    pub fn intern_mixed(
        &mut self,
        ips: Vec<u64>,
        sps: &[u64],
        python: &[python::DecodedFrame],
    ) -> i32 {
        let mut entries = Vec::with_capacity(python.len());
        for frame in python {
            let index = match self.python_frame_ids.get(&frame.frame) {
                Some(&index) => index,
                None if self.python_frames.len() < MAX_PYTHON_FRAMES => {
                    let index = self.python_frames.len() as u64;
                    self.python_frames.push(frame.frame.clone());
                    self.python_frame_ids.insert(frame.frame.clone(), index);
                    index
                }
                None => {
                    self.interned_dropped += 1;
                    continue;
                }
            };
            entries.push((
                PY_MARK | if frame.entry { PY_ENTRY } else { 0 } | index,
                frame.entry,
            ));
        }
        let places =
            (!python.is_empty() && entries.len() == python.len() && sps.len() == ips.len())
                .then(|| python::place_runs(sps, python))
                .flatten();
        let Some(places) = places else {
            let mut ips = ips;
            ips.extend(entries.iter().map(|(entry, _)| entry));
            return self.intern(ips);
        };
        // Runs in place of the native frames that ran them; a run left over goes to the bottom.
        let mut placed = Vec::with_capacity(ips.len() + entries.len());
        let mut runs = entries.split_inclusive(|(_, entry)| *entry);
        let mut places = places.into_iter().peekable();
        for (index, ip) in ips.into_iter().enumerate() {
            if places.next_if_eq(&index).is_some() {
                placed.extend(
                    runs.next()
                        .into_iter()
                        .flatten()
                        .map(|(e, _)| e | PY_PLACED),
                );
            } else {
                placed.push(ip);
            }
        }
        placed.extend(runs.flatten().map(|(e, _)| e | PY_PLACED));
        self.intern(placed)
    }

    /// The entry standing for a JavaScript frame in an unwound stack (None when the table is
    /// full: the native frame stays).
    pub fn js_entry(&mut self, frame: Frame) -> Option<u64> {
        if let Some(&index) = self.js_frame_ids.get(&frame) {
            return Some(JS_MARK | index);
        }
        if self.js_frames.len() >= MAX_JS_FRAMES {
            self.interned_dropped += 1;
            return None;
        }
        let index = self.js_frames.len() as u64;
        self.js_frames.push(frame.clone());
        self.js_frame_ids.insert(frame, index);
        Some(JS_MARK | index)
    }

    /// Native user frames (JavaScript ones in place) with the Python frames of an unwound
    /// stack merged in.
    pub(super) fn user_frames(&mut self, pid: u32, ips: &[u64]) -> Vec<Frame> {
        if ips
            .iter()
            .any(|&ip| ip & PY_MARK != 0 && ip & PY_PLACED != 0)
        {
            // Python runs already in place (see `intern_mixed`).
            let mut frames = Vec::with_capacity(ips.len());
            for (index, &ip) in ips.iter().enumerate() {
                if ip & PY_MARK != 0 {
                    frames.extend(self.python_frames.get((ip & PY_INDEX) as usize).cloned());
                } else {
                    frames.extend(self.native_frame(pid, ip, index == 0));
                }
            }
            return python::merge_placed(frames);
        }
        let (python, native): (Vec<u64>, Vec<u64>) = ips.iter().partition(|&&ip| ip & PY_MARK != 0);
        let mut frames = Vec::with_capacity(native.len());
        for (index, &ip) in native.iter().enumerate() {
            frames.extend(self.native_frame(pid, ip, index == 0));
        }
        let native = frames;
        if python.is_empty() {
            return native;
        }
        let python: Vec<python::DecodedFrame> = python
            .iter()
            .filter_map(|&entry| {
                Some(python::DecodedFrame {
                    frame: self.python_frames.get((entry & PY_INDEX) as usize)?.clone(),
                    entry: entry & PY_ENTRY != 0,
                    coroutine: false,
                    entry_shim_low32: 0,
                })
            })
            .collect();
        python::merge(native, &python)
    }

    /// The frames of one native (or JavaScript) entry of an unwound stack.
    fn native_frame(&mut self, pid: u32, ip: u64, leaf: bool) -> Vec<Frame> {
        if ip & JS_MARK != 0 {
            return self
                .js_frames
                .get((ip & JS_INDEX) as usize)
                .cloned()
                .into_iter()
                .collect();
        }
        self.symbols.user_frame(pid, ip, leaf)
    }

    pub(super) fn saw(&mut self, key: StackKey) {
        if self.seen.len() < MAX_SEEN_STACKS {
            self.seen.insert(key);
        }
    }

    /// The id of an unwound user stack (the same stack always gets the same id, within one
    /// generation of the table).
    pub fn intern(&mut self, ips: Vec<u64>) -> i32 {
        let node = self.interned.find_or_insert(&ips).or_else(|| {
            self.rotate_interned_table()
                .then(|| self.interned.find_or_insert(&ips))
                .flatten()
        });
        match node {
            // In range: `rotate_interned_table` keeps first_id + capacity within i32.
            Some(node) => self.first_id().saturating_add(node as i32),
            None => {
                self.interned_dropped += 1;
                profiler_common::NO_STACK
            }
        }
    }

    fn first_id(&self) -> i32 {
        if self.first_interned == 0 {
            INTERNED_BASE
        } else {
            self.first_interned
        }
    }

    /// Starts the table of unwound stacks afresh (`watch` only). Ids are never reused: the new
    /// generation's ids follow the old ones, so an id still held by an open stall resolves to
    /// no frames rather than to another stack. False when not rotating, or when the id space
    /// is used up (then new stacks are dropped and counted).
    fn rotate_interned_table(&mut self) -> bool {
        if !self.rotate_interned {
            return false;
        }
        let Some(next) = i32::try_from(self.interned.len())
            .ok()
            .and_then(|n| self.first_id().checked_add(n))
            .filter(|next| {
                i32::try_from(self.interned.capacity())
                    .ok()
                    .and_then(|capacity| next.checked_add(capacity))
                    .is_some()
            })
        else {
            return false;
        };
        self.interned.clear();
        let old = self.first_id()..next;
        self.resolved.retain(|key, _| !old.contains(&key.user));
        self.first_interned = next;
        self.interned_rotations += 1;
        true
    }

    /// The addresses of an unwound stack by its id; None for an id of an older generation.
    fn interned_stack(&self, id: i32) -> Option<Vec<u64>> {
        let node = u32::try_from(id.checked_sub(self.first_id())?).ok()?;
        self.interned.stack(node)
    }

    pub(super) fn stack_ips(&mut self, system: &dyn SystemAccess, id: i32) -> Vec<u64> {
        if id < 0 {
            return Vec::new();
        }
        if id >= INTERNED_BASE {
            return self.interned_stack(id).unwrap_or_default();
        }
        if let Some(ips) = self.stack_cache.get(&id) {
            return ips.clone();
        }
        let ips = system.kernel_stack(id).unwrap_or_default();
        self.stack_cache.insert(id, ips.clone());
        ips
    }

    /// Kernel frames (innermost) then user frames, as DESIGN.md orders them.
    pub fn frames(&mut self, system: &dyn SystemAccess, key: StackKey) -> Vec<Frame> {
        if let Some(frames) = self.resolved.get(&key) {
            return frames.clone();
        }
        let frames = self.resolve(system, key);
        self.resolved.insert(key, frames.clone());
        frames
    }

    /// The frames of a stack, one shared copy per key in `shared` (the end of a recording: the
    /// off-CPU profile names thousands of stacks, each by several records). What is not
    /// cached yet is resolved without caching it: the one copy is the shared one.
    pub fn shared_frames(
        &mut self,
        system: &dyn SystemAccess,
        key: StackKey,
        shared: &mut foldhash::HashMap<StackKey, std::sync::Arc<[Frame]>>,
    ) -> std::sync::Arc<[Frame]> {
        shared
            .entry(key)
            .or_insert_with(|| self.uncached_frames(system, key).into())
            .clone()
    }

    /// The frames of a stack, from the cache if there, else resolved without caching them.
    pub fn uncached_frames(&mut self, system: &dyn SystemAccess, key: StackKey) -> Vec<Frame> {
        match self.resolved.get(&key) {
            Some(frames) => frames.clone(),
            None => self.resolve(system, key),
        }
    }

    /// Resolves one stack, not cached.
    fn resolve(&mut self, system: &dyn SystemAccess, key: StackKey) -> Vec<Frame> {
        // Replaying, every stack was resolved when it was saved: one that was not has no frames.
        if !system.live() {
            return Vec::new();
        }
        let kernel_ips = self.stack_ips(system, key.kernel);
        let user_ips = self.stack_ips(system, key.user);
        let mut frames = self.symbols.kernel_frames(&kernel_ips);
        frames.extend(self.user_frames(key.pid, &user_ips));
        if self.python_only && frames.iter().any(|f| f.kind == FrameKind::Python) {
            frames.retain(|f| f.kind == FrameKind::Python);
        }
        self.names.share(&mut frames);
        frames
    }

    /// Forgets processes that are gone: their symbols and the stacks resolved for it (`watch`).
    pub fn forget_pids(&mut self, pids: &HashSet<u32>) {
        for &pid in pids {
            self.symbols.forget(pid);
        }
        self.resolved.retain(|key, _| !pids.contains(&key.pid));
        self.seen.retain(|key| !pids.contains(&key.pid));
    }

    /// Resolves now every stack seen of one process (it is exiting: its PID may be reused).
    pub fn resolve_pid(&mut self, system: &dyn SystemAccess, pid: u32) {
        let keys: Vec<StackKey> = self.seen.iter().filter(|k| k.pid == pid).copied().collect();
        for key in keys {
            self.frames(system, key);
        }
    }

    /// Resolves every stack seen, for saving next to the recording, and hands each to `save`
    /// in key order. Stacks no stall needed are resolved here for the first time and not
    /// cached, nor collected: a recording's events name far more stacks than its stalls (12,000
    /// in 3 minutes of a loaded FastAPI service), and holding them all resolved at once made
    /// the end of a recording the agent's peak (issue #16: 118 MiB at minute 9 of a 10-minute
    /// run, 167 MiB as it wrote its outputs, ~180 MB of it those frames).
    pub fn save_all(&mut self, system: &dyn SystemAccess, mut save: impl FnMut(&SavedStack)) {
        let mut keys: Vec<StackKey> = self.seen.iter().copied().collect();
        keys.sort();
        for key in keys {
            let frames = match self.resolved.get(&key) {
                Some(frames) => frames.clone(),
                None => self.resolve(system, key),
            };
            save(&SavedStack {
                pid: key.pid,
                kernel: key.kernel,
                user: key.user,
                frames,
            });
        }
    }
}

/// One resolved stack in `symbols.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedStack {
    pub pid: u32,
    pub kernel: i32,
    pub user: i32,
    pub frames: Vec<Frame>,
}

#[cfg(test)]
mod rotation_tests {
    use super::*;

    /// A table of 7 nodes (root, the shared frame 1, then one node a stack) filled up.
    const SMALL: usize = 7;

    fn fill(resolver: &mut Resolver) -> Vec<i32> {
        resolver.interned = StackTable::new(SMALL);
        (0..SMALL as u64 - 2)
            .map(|n| resolver.intern(vec![n + 10, 1]))
            .collect()
    }

    #[test]
    fn a_recording_drops_stacks_past_the_bound_and_counts_them() {
        let mut resolver = Resolver::default();
        let ids = fill(&mut resolver);
        assert_eq!(
            ids[0],
            INTERNED_BASE + 2,
            "node 0 the empty stack, 1 the frame 1"
        );
        assert_eq!(resolver.intern(vec![u64::MAX]), profiler_common::NO_STACK);
        assert_eq!(resolver.interned_dropped, 1);
        assert_eq!(resolver.interned_stack(ids[3]), Some(vec![13, 1]));
        // A stack known already still has its id.
        assert_eq!(resolver.intern(vec![12, 1]), ids[2]);
    }

    #[test]
    fn watch_starts_the_table_afresh_without_reusing_an_id() {
        let mut resolver = Resolver {
            rotate_interned: true,
            ..Default::default()
        };
        let ids = fill(&mut resolver);
        let old = StackKey {
            pid: 1,
            kernel: -1,
            user: ids[3],
        };
        resolver.resolved.insert(old, Vec::new());
        let kernel_only = StackKey {
            pid: 1,
            kernel: 5,
            user: -1,
        };
        resolver.resolved.insert(kernel_only, Vec::new());
        let next = resolver.intern(vec![u64::MAX]);
        assert_eq!(
            next,
            INTERNED_BASE + SMALL as i32 + 1,
            "ids go on, not from the start"
        );
        assert_eq!(
            (resolver.interned_rotations, resolver.interned_dropped),
            (1, 0)
        );
        assert_eq!(resolver.interned_stack(next), Some(vec![u64::MAX]));
        // An id of the old generation no longer names a stack (never another one's).
        assert_eq!(resolver.interned_stack(ids[3]), None);
        assert!(!resolver.resolved.contains_key(&old));
        assert!(resolver.resolved.contains_key(&kernel_only));
        // The same stack again is a new id of the new generation.
        assert_ne!(resolver.intern(vec![13, 1]), ids[3]);
    }

    #[test]
    fn saving_hands_every_stack_in_order_and_caches_none_it_resolved() {
        let mut resolver = Resolver::default();
        let key = |user| StackKey {
            pid: 7,
            kernel: -1,
            user,
        };
        let cached = vec![Frame {
            function: "handler".into(),
            file: Some("app.py".into()),
            line: Some(3),
            column: None,
            module: None,
            kind: crate::model::FrameKind::Python,
        }];
        resolver.resolved.insert(key(2), cached.clone());
        for user in [3, 2, 1] {
            resolver.saw(key(user));
        }
        let mut saved = Vec::new();
        resolver.save_all(&crate::system::access::Replay, |stack| {
            saved.push((stack.user, stack.frames.clone()))
        });
        assert_eq!(saved, vec![(1, vec![]), (2, cached), (3, vec![])]);
        // Only what a stall resolved stays cached: the end of a recording holds no copy of
        // every stack its events named.
        assert_eq!(resolver.resolved.len(), 1);
    }
}
