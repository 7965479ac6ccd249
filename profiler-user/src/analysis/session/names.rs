//! One shared copy of each name in resolved frames (function, file, module). The same names
//! repeat across the stacks of a recording (every stack of a Python service goes through the
//! same interpreter functions and files), and the kept stalls hold a copy of every frame of
//! their stacks: owned strings made that the bulk of the agent's heap on a busy service
//! (issue #16: ~170 MiB after 10 minutes of loaded FastAPI, ~550 bytes per kept frame).

use std::sync::Arc;

use crate::model::Frame;

/// Distinct names shared; past it a new name keeps its own copy (still correct, just not
/// shared), so a target that makes up names without end cannot grow this table.
pub(super) const MAX_NAMES: usize = 100_000;

#[derive(Default)]
pub struct Names {
    names: foldhash::HashSet<Arc<str>>,
}

impl Names {
    /// The frames with their names replaced by the shared copies.
    pub(super) fn share(&mut self, frames: &mut [Frame]) {
        for frame in frames {
            frame.function = self.name(&frame.function);
            if let Some(file) = frame.file.as_mut() {
                *file = self.name(file);
            }
            if let Some(module) = frame.module.as_mut() {
                *module = self.name(module);
            }
        }
    }

    fn name(&mut self, name: &Arc<str>) -> Arc<str> {
        if let Some(shared) = self.names.get(&**name) {
            return shared.clone();
        }
        if self.names.len() < MAX_NAMES {
            self.names.insert(name.clone());
        }
        name.clone()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.names.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::FrameKind;

    fn frame(function: &str, module: &str) -> Frame {
        Frame {
            function: function.into(),
            file: None,
            line: None,
            column: None,
            module: Some(module.into()),
            kind: FrameKind::Native,
        }
    }

    #[test]
    fn the_same_name_in_two_stacks_is_one_copy() {
        let mut names = Names::default();
        let mut first = vec![frame("read", "/lib/libc.so.6")];
        let mut second = vec![frame("read", "/lib/libc.so.6"), frame("main", "/bin/app")];
        names.share(&mut first);
        names.share(&mut second);
        assert!(Arc::ptr_eq(&first[0].function, &second[0].function));
        match (&first[0].module, &second[0].module) {
            (Some(a), Some(b)) => assert!(Arc::ptr_eq(a, b)),
            other => panic!("modules lost: {other:?}"),
        }
        assert_eq!(&*second[1].function, "main");
        assert_eq!(names.len(), 4);
    }

    #[test]
    fn past_the_bound_names_are_kept_but_not_shared() {
        let mut names = Names::default();
        for i in 0..MAX_NAMES + 10 {
            names.share(&mut [frame(&format!("f{i}"), "m")]);
        }
        assert_eq!(names.len(), MAX_NAMES);
        let mut late = vec![frame("late", "m")];
        names.share(&mut late);
        assert_eq!(&*late[0].function, "late");
        assert_eq!(names.len(), MAX_NAMES);
    }
}
