//! The unwound user stacks met so far, each stored once as a path in a prefix tree.
//!
//! Stacks of one service share almost all of their outer frames (the event loop, the
//! interpreter's recursion, the framework) and differ in a few inner ones, so storing each
//! stack whole cost ~800 bytes a stack and grew the agent's heap by megabytes a minute on a
//! FastAPI service (bench/RESULTS.md, section 10). In the tree a new stack costs only the
//! frames it does not share with one met before (a node each, ~50 bytes).

use std::hash::BuildHasher;

/// The root node: the empty stack. Every other node is one frame below its parent.
const ROOT: u32 = 0;

/// Unwound stacks as nodes of a prefix tree from the outermost frame in; a stack is named by
/// the node of its innermost frame (a node stands for exactly one path, so for one stack).
pub(super) struct StackTable {
    /// Node i's parent and address (node 0, the root, holds neither).
    nodes: Vec<(u32, u64)>,
    /// (parent, address) to the child node: the tree's edges, for inserting.
    children: foldhash::HashMap<(u32, u64), u32>,
    /// A whole stack's hash to its node, so a stack met again costs one hash and one walk up
    /// the tree to compare, not a lookup per frame. A collision only overwrites: the stack
    /// it displaced is still found through `children`.
    by_hash: foldhash::HashMap<u64, u32>,
    hasher: foldhash::fast::RandomState,
    /// Most nodes kept (bounded memory, root included).
    capacity: usize,
}

impl StackTable {
    pub(super) fn new(capacity: usize) -> Self {
        StackTable {
            nodes: vec![(ROOT, 0)],
            children: Default::default(),
            by_hash: Default::default(),
            hasher: Default::default(),
            capacity: capacity.max(1),
        }
    }

    /// Nodes in use, the root included: the node numbers handed out so far are below it.
    pub(super) fn len(&self) -> usize {
        self.nodes.len()
    }

    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    /// The node naming `ips` (innermost first), added if new; None when it does not fit (the
    /// table is left as it was).
    pub(super) fn find_or_insert(&mut self, ips: &[u64]) -> Option<u32> {
        let hash = self.hasher.hash_one(ips);
        if let Some(&node) = self.by_hash.get(&hash)
            && self.path_is(node, ips)
        {
            return Some(node);
        }
        let node = self.insert_path(ips)?;
        self.by_hash.insert(hash, node);
        Some(node)
    }

    /// The stack a node names, innermost first; None for a number never handed out.
    pub(super) fn stack(&self, node: u32) -> Option<Vec<u64>> {
        let mut ips = Vec::new();
        let mut at = node;
        while at != ROOT {
            let &(parent, ip) = self.nodes.get(at as usize)?;
            ips.push(ip);
            at = parent;
        }
        Some(ips)
    }

    /// Forgets every stack (the numbers start from 1 again: the caller keeps ids apart).
    pub(super) fn clear(&mut self) {
        self.nodes.truncate(1);
        self.nodes.shrink_to(self.capacity / 16);
        self.children = Default::default();
        self.by_hash = Default::default();
    }

    /// Whether `node` names exactly `ips`: its frames, walking up, are `ips` in order and the
    /// walk ends at the root.
    fn path_is(&self, node: u32, ips: &[u64]) -> bool {
        let mut at = node;
        for &ip in ips {
            match self.nodes.get(at as usize) {
                Some(&(parent, frame)) if at != ROOT && frame == ip => at = parent,
                _ => return false,
            }
        }
        at == ROOT
    }

    /// Walks the tree from the outermost frame in, adding the nodes that are missing.
    fn insert_path(&mut self, ips: &[u64]) -> Option<u32> {
        // Checked first so that a stack that does not fit leaves no half-path behind.
        if self.nodes.len().saturating_add(ips.len()) > self.capacity {
            let missing = self.missing_frames(ips);
            if self.nodes.len().saturating_add(missing) > self.capacity {
                return None;
            }
        }
        let mut at = ROOT;
        for &ip in ips.iter().rev() {
            at = match self.children.get(&(at, ip)) {
                Some(&child) => child,
                None => {
                    let child = u32::try_from(self.nodes.len()).ok()?;
                    self.nodes.push((at, ip));
                    self.children.insert((at, ip), child);
                    child
                }
            };
        }
        Some(at)
    }

    /// How many of a stack's frames the tree lacks (the frames below its longest known
    /// outer part).
    fn missing_frames(&self, ips: &[u64]) -> usize {
        let mut at = ROOT;
        for (known, &ip) in ips.iter().rev().enumerate() {
            match self.children.get(&(at, ip)) {
                Some(&child) => at = child,
                None => return ips.len() - known,
            }
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stack_met_again_gets_its_node_back_and_reads_back_innermost_first() {
        let mut table = StackTable::new(100);
        let a = table.find_or_insert(&[3, 2, 1]).expect("fits");
        let b = table.find_or_insert(&[4, 2, 1]).expect("fits");
        assert_ne!(a, b);
        assert_eq!(table.find_or_insert(&[3, 2, 1]), Some(a));
        assert_eq!(table.stack(a), Some(vec![3, 2, 1]));
        assert_eq!(table.stack(b), Some(vec![4, 2, 1]));
        // The shared outer frames are stored once: root, 1, 2, 3, 4.
        assert_eq!(table.len(), 5);
    }

    #[test]
    fn a_prefix_and_the_empty_stack_are_stacks_of_their_own() {
        let mut table = StackTable::new(100);
        let long = table.find_or_insert(&[3, 2, 1]).expect("fits");
        // [2, 1] is an outer part of [3, 2, 1]: its node exists, and names only [2, 1].
        let outer = table.find_or_insert(&[2, 1]).expect("fits");
        assert_ne!(long, outer);
        assert_eq!(table.stack(outer), Some(vec![2, 1]));
        let empty = table.find_or_insert(&[]).expect("fits");
        assert_eq!(table.stack(empty), Some(vec![]));
        // A stack that ends where another one's walk stops short is not that one.
        assert_ne!(table.find_or_insert(&[3, 2]), Some(long));
    }

    #[test]
    fn a_stack_that_does_not_fit_is_refused_and_leaves_nothing_behind() {
        let mut table = StackTable::new(4);
        let first = table.find_or_insert(&[2, 1]).expect("fits");
        assert_eq!(table.find_or_insert(&[9, 8, 7]), None);
        assert_eq!(table.len(), 3);
        // One new frame below a known stack still fits.
        let below = table.find_or_insert(&[3, 2, 1]).expect("fits");
        assert_eq!(table.stack(below), Some(vec![3, 2, 1]));
        assert_eq!(table.find_or_insert(&[2, 1]), Some(first));
        assert_eq!(table.stack(99), None);
    }

    #[test]
    fn cleared_it_forgets_every_stack() {
        let mut table = StackTable::new(10);
        let node = table.find_or_insert(&[5, 6]).expect("fits");
        table.clear();
        assert_eq!(table.len(), 1);
        assert_eq!(table.stack(node), None);
        assert_eq!(
            table.find_or_insert(&[7]).and_then(|n| table.stack(n)),
            Some(vec![7])
        );
    }
}
