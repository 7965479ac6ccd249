//! What the machine and the targets look like (tracefs, /proc, BTF, privileges, kernel
//! features), and the eBPF programs and maps.
pub mod access;
pub mod attach;
pub mod btf;
pub mod cgroup;
pub mod features;
pub mod kallsyms;
pub mod privileges;
pub mod procfs;
pub mod ring_reader;
pub mod tracefs;
