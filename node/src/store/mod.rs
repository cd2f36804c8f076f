//! Everything the node keeps on disk: the SQLite database ([`db`]: jobs, leases, results,
//! known nodes, remembered message ids) and the content-addressed blob store ([`blobs`]:
//! sources, outputs, logs, images), both synchronous.

pub mod blobs;
pub mod db;

pub use blobs::{BlobError, BlobStore, BlobWriter};
pub use db::{Db, DbError};
