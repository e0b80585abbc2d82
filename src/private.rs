//! Entry points for the crate's own benchmarks and tests. Not part of the API: hidden from the
//! documentation and free to change in any release.

use crate::config::Config;
use crate::environ::Vars;
use crate::error::ParseError;
use crate::http::parse::{self, ConnInfo};

/// Turns request heads into environ variables exactly as the connection driver does for a head
/// that arrived in one read, into storage reused from one call to the next, as on a keep-alive
/// connection.
#[derive(Default)]
pub struct HeadParser {
    vars: Vars,
    config: Config,
    info: ConnInfo,
}

impl std::fmt::Debug for HeadParser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadParser").finish_non_exhaustive()
    }
}

impl HeadParser {
    /// A parser with the default configuration and a fixed connection (127.0.0.1:8000 from
    /// 127.0.0.1:50000).
    pub fn new() -> HeadParser {
        let info = ConnInfo::new("127.0.0.1".into(), "8000".into(), "127.0.0.1:50000".parse().ok());
        HeadParser { info, ..HeadParser::default() }
    }

    /// Parses the head at the start of `buf`; returns its length and the number of variables.
    ///
    /// # Errors
    /// What the connection driver would answer with; an incomplete head is
    /// [`ParseError::Malformed`] here.
    pub fn parse(&mut self, buf: &[u8]) -> Result<(usize, usize), ParseError> {
        let head = parse::try_parse_head(buf, &self.config, &self.info, &mut self.vars)?;
        Ok((head.ok_or(ParseError::Malformed)?.len, self.vars.len()))
    }

    /// The value of a variable set by the last successful [`HeadParser::parse`].
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.vars.get(key.as_bytes())
    }
}

/// Runs one connection in memory for the fuzz target (`fuzz/`): the first four bytes of `data`
/// choose how reads and writes are cut and what the handler does (ignore the body, read it all,
/// read some, stream a chunked answer, fail, panic); the rest is what the client sends, followed
/// by the end of its stream. Time is a fake clock that jumps to each deadline. Panics when the
/// session breaks a rule: a buffer grows past its bounds, the connection never ends, or the
/// bytes written are not well-framed HTTP/1.1 responses.
pub fn fuzz_connection(data: &[u8]) {
    crate::http::session::fuzz(data);
}
