//! HTTP/1.x: its framing, request/response pairing, and the configured `http.route`
//! patterns.
pub mod framing;
pub mod routes;
pub mod session;

pub use framing::RequestHead;
pub use session::HttpSession;
