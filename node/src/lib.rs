//! barn-node: the volunteer daemon, its libp2p swarm, scheduler, QEMU runner, store and
//! local API, and the command line that drives them. The `barn` binary (`main.rs`) is a
//! thin shell around [`cli`].
//!
//! One folder per concern, each saying what it owns in its `//!` header.

pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dirs;
pub(crate) mod keys;
pub mod net;
pub mod runner;
pub mod sched;
pub mod store;
pub mod verify;
pub mod view;
