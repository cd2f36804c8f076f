//! The API's JSON shapes: the node's views ([`crate::view`]), served as they are.

pub use crate::view::*;
