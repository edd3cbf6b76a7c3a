//! The lab's BPF layer: a small loader of its own, so that the build needs only Rust (aya's
//! kernel-side programs need nightly and bpf-linker, libbpf-rs needs clang).
//!
//! - `sys`: bpf(2), each command's attributes a `#[repr(C)]` type;
//! - `btf`: the running kernel's BTF, where the fields a program reads lie;
//! - `asm`: the instructions, assembled with jumps by label;
//! - `task_file`: the holders' program, on the task-file iterator;
//! - `set_state`: the stream's program, on the tracepoint `sock:inet_sock_set_state`;
//! - `ring`: the consumer's side of the ring buffer the stream's program writes to.

pub(crate) mod asm;
pub(crate) mod btf;
pub(crate) mod ring;
pub(crate) mod set_state;
pub(crate) mod sys;
pub(crate) mod task_file;

pub use set_state::Event;
pub use task_file::{open, Descriptor, Files};
