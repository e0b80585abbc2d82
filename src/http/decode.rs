//! The request body decoder: `Content-Length` and `chunked` framing, sans I/O.
//!
//! [`Decoder::decode`] takes whatever bytes arrived and writes the body bytes they carry; it never
//! consumes a byte past the end of the body, so pipelined requests behind it stay in the buffer.

use crate::error::ParseError;
use crate::http::parse::hex_value;

/// Decodes one request body.
#[derive(Debug, Clone)]
pub(crate) struct Decoder {
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Length { remaining: u64 },
    Chunked(Chunked),
    Done,
}

#[derive(Debug, Clone)]
struct Chunked {
    state: State,
    /// Size of the chunk being read (while in `Size`), then what is left of its data.
    size: u64,
    digits: u8,
    ext_len: usize,
    trailer_len: usize,
    body_len: u64,
    max_body: Option<u64>,
    max_ext: usize,
    max_trailer: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    /// Whitespace after the size, which may only lead to an extension (`BWS ";"`).
    SizeWs,
    /// After `;`: optional whitespace, then an extension name (RFC 9112 §7.1.1).
    ExtName,
    /// Inside an extension name.
    ExtNameRest,
    /// After a name: whitespace, `=`, `;` or the end of the line.
    ExtAfterName,
    /// After `=`: optional whitespace, then a token or a quoted string.
    ExtValue,
    ExtToken,
    ExtQuoted,
    /// After a backslash in a quoted string.
    ExtQuotedPair,
    /// After a value: whitespace, `;` or the end of the line.
    ExtAfterValue,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
}

impl Decoder {
    /// A body of exactly `len` bytes.
    pub(crate) fn length(len: u64) -> Decoder {
        Decoder { kind: if len == 0 { Kind::Done } else { Kind::Length { remaining: len } } }
    }

    /// A chunked body, its decoded length bounded by `max_body`, each chunk-size line's extensions
    /// by `max_ext` bytes and its trailer section by `max_trailer` bytes.
    pub(crate) fn chunked(max_body: Option<u64>, max_ext: usize, max_trailer: usize) -> Decoder {
        Decoder {
            kind: Kind::Chunked(Chunked {
                state: State::Size,
                size: 0,
                digits: 0,
                ext_len: 0,
                trailer_len: 0,
                body_len: 0,
                max_body,
                max_ext,
                max_trailer,
            }),
        }
    }

    /// Whether the whole body, and for chunked its trailer section, has been consumed.
    pub(crate) fn is_done(&self) -> bool {
        matches!(self.kind, Kind::Done)
    }

    /// Body bytes still expected for a `Content-Length` body; `None` for chunked.
    pub(crate) fn remaining_length(&self) -> Option<u64> {
        match self.kind {
            Kind::Length { remaining } => Some(remaining),
            Kind::Done => Some(0),
            Kind::Chunked(_) => None,
        }
    }

    /// Consumes bytes of `input` and writes the body bytes they carry into `out`.
    /// Returns `(consumed, produced)`; both are 0 only when the body is done or `out` is empty.
    pub(crate) fn decode(&mut self, input: &[u8], out: &mut [u8]) -> Result<(usize, usize), ParseError> {
        match &mut self.kind {
            Kind::Done => Ok((0, 0)),
            Kind::Length { remaining } => {
                let n = input.len().min(out.len()).min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                out[..n].copy_from_slice(&input[..n]);
                *remaining -= n as u64;
                if *remaining == 0 {
                    self.kind = Kind::Done;
                }
                Ok((n, n))
            }
            Kind::Chunked(c) => {
                let (consumed, produced, done) = c.decode(input, out)?;
                if done {
                    self.kind = Kind::Done;
                }
                Ok((consumed, produced))
            }
        }
    }
}

impl Chunked {
    fn decode(&mut self, input: &[u8], out: &mut [u8]) -> Result<(usize, usize, bool), ParseError> {
        let mut i = 0;
        let mut produced = 0;
        while i < input.len() {
            if self.state == State::Data {
                if produced == out.len() {
                    break;
                }
                let n =
                    (input.len() - i).min(out.len() - produced).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                out[produced..produced + n].copy_from_slice(&input[i..i + n]);
                i += n;
                produced += n;
                self.size -= n as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let b = input[i];
            i += 1;
            match self.state {
                State::Size => match hex_value(b) {
                    Some(v) => {
                        self.digits += 1;
                        // 16 hex digits fill a u64; leading zeros beyond that are still refused.
                        if self.digits > 16 {
                            return Err(ParseError::ChunkSize);
                        }
                        self.size = self.size << 4 | u64::from(v);
                    }
                    None if self.digits == 0 => return Err(ParseError::ChunkSize),
                    None => match b {
                        b'\r' => self.state = State::SizeLf,
                        b';' => self.state = State::ExtName,
                        b' ' | b'\t' => self.state = State::SizeWs,
                        _ => return Err(ParseError::ChunkSize),
                    },
                },
                State::SizeWs => match b {
                    b' ' | b'\t' => self.count_ext()?,
                    b';' => self.state = State::ExtName,
                    _ => return Err(ParseError::ChunkSize),
                },
                State::ExtName
                | State::ExtNameRest
                | State::ExtAfterName
                | State::ExtValue
                | State::ExtToken
                | State::ExtQuoted
                | State::ExtQuotedPair
                | State::ExtAfterValue => {
                    self.count_ext()?;
                    self.state = extension_step(self.state, b)?;
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ParseError::ChunkSize);
                    }
                    if self.size == 0 {
                        self.state = State::TrailerStart;
                    } else {
                        self.body_len = self.body_len.saturating_add(self.size);
                        if self.max_body.is_some_and(|max| self.body_len > max) {
                            return Err(ParseError::BodyTooLarge);
                        }
                        self.state = State::Data;
                    }
                }
                State::Data => unreachable!("handled above"),
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ParseError::ChunkFraming);
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ParseError::ChunkFraming);
                    }
                    self.state = State::Size;
                    self.size = 0;
                    self.digits = 0;
                    self.ext_len = 0;
                }
                State::TrailerStart => {
                    if b == b'\r' {
                        self.state = State::EndLf;
                    } else {
                        self.state = State::TrailerLine;
                        i -= 1;
                    }
                }
                State::TrailerLine => {
                    self.trailer_len += 1;
                    if self.trailer_len > self.max_trailer {
                        return Err(ParseError::TrailerTooLarge);
                    }
                    match b {
                        b'\r' => self.state = State::TrailerLf,
                        b'\t' | b' '..=b'~' | 0x80..=0xff => {}
                        _ => return Err(ParseError::ChunkFraming),
                    }
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ParseError::ChunkFraming);
                    }
                    self.state = State::TrailerStart;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(ParseError::ChunkFraming);
                    }
                    return Ok((i, produced, true));
                }
            }
        }
        Ok((i, produced, false))
    }

    fn count_ext(&mut self) -> Result<(), ParseError> {
        self.ext_len += 1;
        if self.ext_len > self.max_ext {
            return Err(ParseError::ChunkExtension);
        }
        Ok(())
    }
}

/// One byte of a chunk extension: `*( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )`,
/// ending at the CR of the chunk-size line. An empty name, a bare `=`, an unterminated quoted
/// string or a control character is refused, as llhttp, gunicorn and waitress refuse them.
fn extension_step(state: State, b: u8) -> Result<State, ParseError> {
    use crate::http::parse::is_tchar;
    let ws = b == b' ' || b == b'\t';
    let next = match state {
        State::ExtName if ws => State::ExtName,
        State::ExtName if is_tchar(b) => State::ExtNameRest,
        State::ExtNameRest if is_tchar(b) => State::ExtNameRest,
        State::ExtNameRest | State::ExtAfterName if ws => State::ExtAfterName,
        State::ExtNameRest | State::ExtAfterName if b == b'=' => State::ExtValue,
        State::ExtValue if ws => State::ExtValue,
        State::ExtValue if b == b'"' => State::ExtQuoted,
        State::ExtValue | State::ExtToken if is_tchar(b) => State::ExtToken,
        State::ExtQuoted if b == b'"' => State::ExtAfterValue,
        State::ExtQuoted if b == b'\\' => State::ExtQuotedPair,
        State::ExtQuoted if b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80 => State::ExtQuoted,
        State::ExtQuotedPair if b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80 => State::ExtQuoted,
        State::ExtToken | State::ExtAfterValue if ws => State::ExtAfterValue,
        State::ExtNameRest | State::ExtAfterName | State::ExtToken | State::ExtAfterValue if b == b';' => {
            State::ExtName
        }
        State::ExtNameRest | State::ExtAfterName | State::ExtToken | State::ExtAfterValue if b == b'\r' => {
            State::SizeLf
        }
        _ => return Err(ParseError::ChunkExtension),
    };
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` to a fresh chunked decoder in pieces cut at `cuts`, with an output buffer of
    /// `out_len` bytes; returns the body and the bytes left after it.
    fn decode_split(input: &[u8], cuts: &[usize], out_len: usize) -> Result<(Vec<u8>, usize), ParseError> {
        let mut d = Decoder::chunked(Some(1 << 20), 64, 256);
        let mut body = Vec::new();
        let mut out = vec![0; out_len];
        let mut pos = 0;
        let mut bounds: Vec<usize> = cuts.to_vec();
        bounds.push(input.len());
        for end in bounds {
            while pos < end && !d.is_done() {
                let (c, p) = d.decode(&input[pos..end], &mut out)?;
                body.extend_from_slice(&out[..p]);
                pos += c;
                if c == 0 && p == 0 {
                    break;
                }
            }
        }
        if !d.is_done() {
            return Err(ParseError::IncompleteBody);
        }
        Ok((body, input.len() - pos))
    }

    #[test]
    fn chunked_at_every_split_and_output_size() {
        let input = b"5;name=\"v\"\r\nhello\r\n0006\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\nGET /next";
        for cut in 0..=input.len() {
            for out_len in [1, 3, 64] {
                let (body, left) = decode_split(input, &[cut], out_len).unwrap();
                assert_eq!(body, b"hello world", "cut {cut} out {out_len}");
                assert_eq!(left, b"GET /next".len());
            }
        }
    }

    #[test]
    fn chunked_rejects_what_smugglers_send() {
        let cases: &[(&[u8], ParseError)] = &[
            (b"+5\r\nhello\r\n0\r\n\r\n", ParseError::ChunkSize),
            (b"0x5\r\nhello\r\n0\r\n\r\n", ParseError::ChunkSize),
            (b"\r\n", ParseError::ChunkSize),
            (b"5\nhello\r\n0\r\n\r\n", ParseError::ChunkSize),
            (b"5\r\nhelloX\r\n0\r\n\r\n", ParseError::ChunkFraming),
            (b"5\r\nhello\n0\r\n\r\n", ParseError::ChunkFraming),
            (b"1ffffffffffffffff\r\n", ParseError::ChunkSize),
            (b"5 x\r\n", ParseError::ChunkSize),
            (b"5;a\rb\r\n", ParseError::ChunkSize),
            (b"2;\r\nhi\r\n0\r\n\r\n", ParseError::ChunkExtension),
            (b"2; \r\nhi\r\n0\r\n\r\n", ParseError::ChunkExtension),
            (b"2;a=\r\nhi\r\n0\r\n\r\n", ParseError::ChunkExtension),
            (b"2;=v\r\nhi\r\n0\r\n\r\n", ParseError::ChunkExtension),
            (b"2;a=\"v\r\nhi\r\n0\r\n\r\n", ParseError::ChunkExtension),
            (b"2;a=\"v\\\"\r\nhi\r\n0\r\n\r\n", ParseError::ChunkExtension),
            (b"2;a=\"v\"x\r\nhi\r\n0\r\n\r\n", ParseError::ChunkExtension),
            (b"2;a b\r\nhi\r\n0\r\n\r\n", ParseError::ChunkExtension),
            (b"5;a\x00\r\n", ParseError::ChunkExtension),
            (b"0\r\nX: y\n\r\n", ParseError::ChunkFraming),
            (b"0\r\n\r\r", ParseError::ChunkFraming),
        ];
        for (input, want) in cases {
            assert_eq!(decode_split(input, &[], 64).unwrap_err(), *want, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn chunked_limits() {
        let long_ext = [b"1;".as_slice(), &[b'a'; 70], b"\r\nx\r\n0\r\n\r\n"].concat();
        assert_eq!(decode_split(&long_ext, &[], 8).unwrap_err(), ParseError::ChunkExtension);
        let long_trailer = [b"0\r\nX: ".as_slice(), &[b'a'; 300], b"\r\n\r\n"].concat();
        assert_eq!(decode_split(&long_trailer, &[], 8).unwrap_err(), ParseError::TrailerTooLarge);
        let mut d = Decoder::chunked(Some(4), 64, 64);
        assert_eq!(d.decode(b"5\r\nhello\r\n", &mut [0; 8]).unwrap_err(), ParseError::BodyTooLarge);
        assert_eq!(decode_split(b"5\r\nhel", &[], 8).unwrap_err(), ParseError::IncompleteBody);
    }

    #[test]
    fn length_never_reads_past_the_body() {
        let mut d = Decoder::length(5);
        let mut out = [0; 16];
        assert_eq!(d.decode(b"helloGET", &mut out).unwrap(), (5, 5));
        assert!(d.is_done());
        assert_eq!(d.decode(b"GET", &mut out).unwrap(), (0, 0));
    }
}
