#![no_std]

// This file exists so that profiler-user can name this crate as a build-dependency (cargo then
// rebuilds the agent when the programs change); the programs themselves are in main.rs.
