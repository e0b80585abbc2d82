//! The response body: always pulled by the server, chunk by chunk.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};

use bytes::{Bytes, BytesMut};

use crate::handler::BoxError;

/// Size of the buffer a reader or file body is read through.
const READ_CHUNK: usize = 64 * 1024;

type Chunks = Box<dyn Iterator<Item = Result<Bytes, BoxError>> + Send>;

/// A response body: empty, bytes, a stream of chunks, a reader or a file.
///
/// The server pulls it: each chunk is written out before the next is asked for (PEP 3333), so a
/// stream can produce chunks over time. Dropping the body is WSGI's `close()`: it happens on every
/// path, the client disconnecting and panics included.
///
/// A body whose length is known in advance (bytes, a file, a reader given a length) gets a
/// `Content-Length`; any other is sent chunked on HTTP/1.1 and delimited by closing the connection
/// on HTTP/1.0.
///
/// ```
/// use sgi::Body;
/// let fixed: Body = "Hello, World!".into();
/// assert_eq!(fixed.len(), Some(13));
/// let streamed = Body::from_chunks((1..=3).map(|i| format!("line {i}\n")));
/// assert_eq!(streamed.len(), None);
/// ```
pub struct Body {
    kind: Kind,
}

enum Kind {
    Empty,
    Bytes(Bytes),
    Chunks(Chunks),
    Reader { reader: Box<dyn Read + Send>, len: Option<u64>, buf: BytesMut },
    File { file: File, len: u64, buf: BytesMut },
    Done,
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Empty | Kind::Done => "empty",
            Kind::Bytes(_) => "bytes",
            Kind::Chunks(_) => "chunks",
            Kind::Reader { .. } => "reader",
            Kind::File { .. } => "file",
        };
        f.debug_struct("Body").field("kind", &kind).field("len", &self.len()).finish()
    }
}

impl Body {
    /// An empty body.
    pub fn empty() -> Body {
        Body { kind: Kind::Empty }
    }

    /// A body streamed from an iterator of chunks, each sent as soon as it is produced.
    /// Empty chunks are skipped.
    pub fn from_chunks<I>(chunks: I) -> Body
    where
        I: IntoIterator,
        I::Item: Into<Bytes>,
        I::IntoIter: Send + 'static,
    {
        Body { kind: Kind::Chunks(Box::new(chunks.into_iter().map(|c| Ok(c.into())))) }
    }

    /// A body streamed from an iterator of fallible chunks. An error before anything was sent
    /// becomes a `500`; after, the connection is closed so the client sees an incomplete response.
    pub fn from_fallible_chunks<I, T, E>(chunks: I) -> Body
    where
        I: IntoIterator<Item = Result<T, E>>,
        I::IntoIter: Send + 'static,
        T: Into<Bytes>,
        E: Into<BoxError>,
    {
        Body { kind: Kind::Chunks(Box::new(chunks.into_iter().map(|c| c.map(Into::into).map_err(Into::into)))) }
    }

    /// A body read from `reader` until its end. With `len`, it is sent with that
    /// `Content-Length` (a reader that ends early makes the server close the connection).
    pub fn from_reader(reader: impl Read + Send + 'static, len: Option<u64>) -> Body {
        Body { kind: Kind::Reader { reader: Box::new(reader), len, buf: BytesMut::new() } }
    }

    /// A file, sent from its current position to its end, with a `Content-Length`.
    ///
    /// # Errors
    /// The error of reading the file's metadata or position.
    pub fn from_file(mut file: File) -> io::Result<Body> {
        use std::io::Seek;
        let len = file.metadata()?.len().saturating_sub(file.stream_position()?);
        Ok(Body { kind: Kind::File { file, len, buf: BytesMut::new() } })
    }

    /// The length of the body, when it is known before sending.
    pub fn len(&self) -> Option<u64> {
        match &self.kind {
            Kind::Empty | Kind::Done => Some(0),
            Kind::Bytes(b) => Some(b.len() as u64),
            Kind::Chunks(_) => None,
            Kind::Reader { len, .. } => *len,
            Kind::File { len, .. } => Some(*len),
        }
    }

    /// Whether the body is known to be empty.
    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }

    /// The next chunk to send, `Ok(None)` at the end. May return an empty chunk.
    pub(crate) fn next_chunk(&mut self) -> Result<Option<Bytes>, BoxError> {
        match &mut self.kind {
            Kind::Empty | Kind::Done => Ok(None),
            Kind::Bytes(b) => {
                let chunk = std::mem::take(b);
                self.kind = Kind::Done;
                Ok(Some(chunk))
            }
            Kind::Chunks(it) => match it.next() {
                None => {
                    self.kind = Kind::Done;
                    Ok(None)
                }
                Some(chunk) => Ok(Some(chunk?)),
            },
            Kind::Reader { reader, buf, .. } => {
                let chunk = read_some(&mut **reader, buf)?;
                if chunk.is_empty() {
                    self.kind = Kind::Done;
                    return Ok(None);
                }
                Ok(Some(chunk))
            }
            Kind::File { file, buf, .. } => {
                let chunk = read_some(file, buf)?;
                if chunk.is_empty() {
                    self.kind = Kind::Done;
                    return Ok(None);
                }
                Ok(Some(chunk))
            }
        }
    }

    /// The whole body, when it is bytes in one piece (what [`Body::next_chunk`] would give,
    /// then the end); otherwise the body back.
    #[inline]
    pub(crate) fn into_bytes(self) -> Result<Bytes, Body> {
        match self.kind {
            Kind::Bytes(b) => Ok(b),
            kind => Err(Body { kind }),
        }
    }

    /// Whether the body has nothing more to give (known without pulling again).
    pub(crate) fn is_done(&self) -> bool {
        matches!(self.kind, Kind::Done | Kind::Empty)
    }
}

/// Reads one chunk through `buf`, whose allocation comes back once the previous chunk is
/// dropped.
fn read_some(reader: &mut dyn Read, buf: &mut BytesMut) -> io::Result<Bytes> {
    buf.clear();
    buf.resize(READ_CHUNK, 0);
    let n = loop {
        match reader.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other?,
        }
    };
    buf.truncate(n);
    Ok(buf.split().freeze())
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Body {
        Body { kind: Kind::Bytes(b) }
    }
}

impl From<Vec<u8>> for Body {
    fn from(v: Vec<u8>) -> Body {
        Bytes::from(v).into()
    }
}

impl From<String> for Body {
    fn from(s: String) -> Body {
        Bytes::from(s).into()
    }
}

impl From<&'static str> for Body {
    fn from(s: &'static str) -> Body {
        Bytes::from_static(s.as_bytes()).into()
    }
}

impl From<&'static [u8]> for Body {
    fn from(s: &'static [u8]) -> Body {
        Bytes::from_static(s).into()
    }
}

impl From<()> for Body {
    fn from(_: ()) -> Body {
        Body::empty()
    }
}
