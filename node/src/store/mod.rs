//! Everything the node keeps on disk: the SQLite database ([`db`]: jobs, leases, results,
//! known nodes, remembered message ids) and the content-addressed blob store ([`blobs`]:
//! sources, outputs, logs, images), both synchronous; the node core's writes ([`ops`]) go
//! through one store task.

pub mod blobs;
pub mod db;
pub mod ops;
pub mod round;

pub use blobs::{BlobError, BlobStore, BlobWriter};
pub use db::{Db, DbError};
