//! The shared, sans-I/O HTTP/1.1 core: every runner goes through it, and nothing here touches a
//! socket. Bytes in, facts and bytes out.

pub(crate) mod date;
pub(crate) mod decode;
pub(crate) mod encode;
pub(crate) mod forwarded;
pub(crate) mod parse;
#[cfg(test)]
mod props;
pub(crate) mod proxy;
pub(crate) mod session;
