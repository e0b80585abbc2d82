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
    Reader {
        reader: Box<dyn Read + Send>,
        len: Option<u64>,
        buf: BytesMut,
    },
    /// `len` bytes of `file` from `offset`, where its position was put; `remaining` of them are
    /// still to be read. The file itself (not a reader over it), so that it can be sent with
    /// `sendfile(2)`.
    File {
        file: File,
        offset: u64,
        len: u64,
        remaining: u64,
        buf: BytesMut,
    },
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
        let mut f = f.debug_struct("Body");
        f.field("kind", &kind).field("len", &self.len());
        if let Kind::File { offset, remaining, .. } = &self.kind {
            f.field("offset", offset).field("remaining", remaining);
        }
        f.finish()
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

    /// A file, sent from its current position to its end (as long as it was when the body was
    /// made), with a `Content-Length`.
    ///
    /// ```
    /// # fn main() -> std::io::Result<()> {
    /// # let path = std::env::temp_dir().join(format!("sgi-doc-from-file-{}", std::process::id()));
    /// # std::fs::write(&path, b"Hello, World!")?;
    /// let body = sgi::Body::from_file(std::fs::File::open(&path)?)?;
    /// assert_eq!(body.len(), Some(13));
    /// # std::fs::remove_file(&path)?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// The error of reading the file's metadata or position.
    pub fn from_file(mut file: File) -> io::Result<Body> {
        use std::io::Seek;
        let offset = file.stream_position()?;
        let len = file.metadata()?.len().saturating_sub(offset);
        Ok(Body::file_part(file, offset, len))
    }

    /// `len` bytes of a file from byte `offset`, with that `Content-Length`: the body of a
    /// `206 Partial Content` response. The file's position is moved to `offset`.
    ///
    /// ```
    /// # fn main() -> std::io::Result<()> {
    /// # let path = std::env::temp_dir().join(format!("sgi-doc-from-file-range-{}", std::process::id()));
    /// # std::fs::write(&path, b"Hello, World!")?;
    /// // "World": bytes 7 to 11.
    /// let body = sgi::Body::from_file_range(std::fs::File::open(&path)?, 7, 5)?;
    /// assert_eq!(body.len(), Some(5));
    /// # std::fs::remove_file(&path)?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`io::ErrorKind::InvalidInput`] when the range goes past the end of the file; the error
    /// of reading the file's metadata or of seeking.
    pub fn from_file_range(mut file: File, offset: u64, len: u64) -> io::Result<Body> {
        use std::io::{Seek, SeekFrom};
        let size = file.metadata()?.len();
        if offset.checked_add(len).map_or(true, |end| end > size) {
            let message = format!("bytes {offset} to {offset}+{len} of a file of {size} bytes");
            return Err(io::Error::new(io::ErrorKind::InvalidInput, message));
        }
        file.seek(SeekFrom::Start(offset))?;
        Ok(Body::file_part(file, offset, len))
    }

    /// `len` bytes of `file` from `offset`, where its position already is.
    fn file_part(file: File, offset: u64, len: u64) -> Body {
        Body { kind: Kind::File { file, offset, len, remaining: len, buf: BytesMut::new() } }
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
                let chunk = read_some(&mut **reader, buf, READ_CHUNK)?;
                if chunk.is_empty() {
                    self.kind = Kind::Done;
                    return Ok(None);
                }
                Ok(Some(chunk))
            }
            Kind::File { file, offset, len, remaining, buf } => {
                // Never past the length announced, even if the file grew since.
                let limit = usize::try_from(*remaining).unwrap_or(usize::MAX).min(READ_CHUNK);
                // At an explicit position: part of the file may have gone out with `sendfile`,
                // which leaves the file's own position alone.
                let at = *offset + (*len - *remaining);
                let mut reader = ReadAt { file, at };
                let chunk = if limit == 0 { Bytes::new() } else { read_some(&mut reader, buf, limit)? };
                if chunk.is_empty() {
                    self.kind = Kind::Done;
                    return Ok(None);
                }
                *remaining -= chunk.len() as u64;
                Ok(Some(chunk))
            }
        }
    }

    /// The file of a file body, where its unsent part starts and how long that is: for sending
    /// it without reading it (`sendfile(2)`).
    pub(crate) fn unsent_file(&self) -> Option<(&File, u64, u64)> {
        match &self.kind {
            Kind::File { file, offset, len, remaining, .. } => Some((file, offset + (len - remaining), *remaining)),
            _ => None,
        }
    }

    /// `n` bytes of a file body went out without being read ([`Body::unsent_file`]).
    pub(crate) fn sent_from_file(&mut self, n: u64) {
        if let Kind::File { remaining, .. } = &mut self.kind {
            *remaining = remaining.saturating_sub(n);
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

/// Reads one chunk of at most `limit` bytes through `buf`, whose allocation comes back once the
/// previous chunk is dropped.
/// A file read at a position of its own (`pread`), leaving the file's position alone.
struct ReadAt<'f> {
    file: &'f File,
    at: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

fn read_some(reader: &mut dyn Read, buf: &mut BytesMut, limit: usize) -> io::Result<Bytes> {
    buf.clear();
    buf.resize(limit, 0);
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

#[cfg(test)]
mod tests {
    use super::*;

    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(name: &str, contents: &[u8]) -> TempFile {
            let path = std::env::temp_dir().join(format!("sgi-body-{}-{name}", std::process::id()));
            std::fs::write(&path, contents).unwrap();
            TempFile(path)
        }

        fn open(&self) -> File {
            File::open(&self.0).unwrap()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn pull(mut body: Body) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(chunk) = body.next_chunk().unwrap() {
            out.extend_from_slice(&chunk);
        }
        assert!(body.is_done());
        out
    }

    #[test]
    fn a_file_range_is_exactly_its_bytes() {
        let contents: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let file = TempFile::new("range", &contents);
        for (offset, len) in [(0, 0), (0, 1), (3, 4), (0, 200_000), (70_000, 65_536 + 7), (199_999, 1), (200_000, 0)] {
            let body = Body::from_file_range(file.open(), offset, len).unwrap();
            assert_eq!(body.len(), Some(len));
            let (from, to) = (offset as usize, (offset + len) as usize);
            assert_eq!(pull(body), &contents[from..to], "{offset}+{len}");
        }
        for (offset, len) in [(0, 200_001), (200_000, 1), (1, u64::MAX), (u64::MAX, 0)] {
            let error = Body::from_file_range(file.open(), offset, len).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{offset}+{len}");
        }
    }

    #[test]
    fn a_file_is_sent_from_its_position_and_no_further_than_its_length_then() {
        use std::io::{Seek, SeekFrom, Write};
        let file = TempFile::new("whole", b"0123456789");
        let mut f = file.open();
        f.seek(SeekFrom::Start(4)).unwrap();
        let body = Body::from_file(f).unwrap();
        assert_eq!(body.len(), Some(6));
        // The file grows after the body was made: the body keeps the length it announced.
        std::fs::OpenOptions::new().append(true).open(&file.0).unwrap().write_all(b"more").unwrap();
        assert_eq!(pull(body), b"456789");
    }
}
