//! Size limits for everything barn reads from a peer, a guest or a file.
//!
//! Every decoder is handed one of these before it parses a byte; a message over its
//! limit is refused unread.

/// Largest signed envelope carried on gossip (adverts, job announcements, result summaries).
/// gossipsub's `max_transmit_size` is set to this on every node.
pub const MAX_GOSSIP_MESSAGE: usize = 256 * 1024;
/// Largest request on a request-response stream (claims, heartbeats, blob requests).
pub const MAX_REQUEST: usize = 64 * 1024;
/// Largest response or result on a request-response stream (grants, results with manifests).
pub const MAX_RESPONSE: usize = 1024 * 1024;
/// Largest `barn.toml`.
pub const MAX_JOB_FILE: u64 = 64 * 1024;
/// Most tasks in one job.
pub const MAX_TASKS: usize = 64;
/// Longest task script.
pub const MAX_TASK_SCRIPT: usize = 16 * 1024;
/// Most environment variables in one job.
pub const MAX_ENV_VARS: usize = 128;
/// Most artifact globs in one job.
pub const MAX_ARTIFACT_GLOBS: usize = 64;
/// Most entries in one output manifest.
pub const MAX_MANIFEST_ENTRIES: usize = 10_000;
/// Longest path in a manifest or a packed source tree, in bytes.
pub const MAX_PATH: usize = 1024;
/// Longest symbolic-link target kept in a manifest.
pub const MAX_LINK_TARGET: usize = 1024;
/// Most entries in a packed source tree.
pub const MAX_SOURCE_ENTRIES: usize = 200_000;
/// CBOR nesting depth accepted by the decoder; our messages nest fewer than 8 levels.
pub const MAX_CBOR_DEPTH: usize = 32;
