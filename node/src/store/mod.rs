//! Everything the node keeps on disk: the SQLite database ([`db`]: jobs, leases, results,
//! known nodes, remembered message ids), the content-addressed blob store ([`blobs`]:
//! sources, outputs, logs, images) and the content-addressed image store ([`images`]: the
//! unpacked guest images the runner boots, and building them), all synchronous; the node
//! core's writes ([`ops`]) go through one store task.

pub mod blobs;
pub mod db;
pub mod images;
pub mod ops;
pub mod round;

pub use blobs::{BlobChange, BlobEntry, BlobError, BlobStore, BlobWriter, Collected};
pub use db::{Db, DbError};
pub use images::{Image, ImageStore};
