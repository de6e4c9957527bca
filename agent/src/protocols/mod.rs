//! Wire-protocol parsers. Each is fed a connection's bytes in arbitrary splits and never panics.
pub mod http1;
pub mod pgwire;
pub mod resp;
