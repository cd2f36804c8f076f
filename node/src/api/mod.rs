//! The local control API: HTTP on loopback, protected by a bearer token kept in the data
//! dir (`api.token`, mode 0600); the CLI finds the address in `api.addr`.

pub mod client;
pub mod server;
pub mod types;
