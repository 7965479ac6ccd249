//! Addresses and interpreter memory turned into frames: native unwinding, Python and V8
//! frames, JIT perf maps, and symbolization.
pub mod perf_map;
pub mod python;
pub mod symbolize;
pub mod unwind;
pub mod unwind_cache;
pub mod v8;
