//! Incremental Server-Sent Events framing (the subset OpenAI-compatible servers use).
//!
//! Bytes arrive in arbitrary pieces (one TCP read may hold several events, or a fraction of
//! one); [`SseParser::feed`] buffers the unfinished tail and hands out the `data` payload of
//! every event that the piece completes. The caller stamps the time at which each piece was
//! read, so an event's timestamp is the moment its last byte came off the socket: the earliest
//! moment a client could have used it. One parser per request; nothing is shared between
//! streams.

/// Events are separated by a blank line (`\n\n`, `\r\n\r\n` or `\r\r`). Within an event,
/// `data:` lines are joined with `\n`; comments (`:`) and other fields (`event:`, `id:`,
/// `retry:`) are ignored, as the OpenAI streaming format does not use them.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    /// Bytes of `buf` already scanned for an event boundary (avoids rescanning on every feed).
    scanned: usize,
}

/// Longest event we buffer before declaring the stream malformed (a stream that never sends a
/// blank line would otherwise grow without bound).
pub const MAX_EVENT_BYTES: usize = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("an SSE event exceeded {MAX_EVENT_BYTES} bytes without a blank line")]
    TooLong,
    #[error("SSE data is not valid UTF-8")]
    Utf8,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Append `bytes` and call `on_data` with the data payload of every completed event (events
    /// without a `data` field are skipped). Stops early and returns `Ok(false)` if `on_data`
    /// returns `false`.
    pub fn feed(
        &mut self,
        bytes: &[u8],
        mut on_data: impl FnMut(&str) -> bool,
    ) -> Result<bool, SseError> {
        self.buf.extend_from_slice(bytes);
        let mut consumed = 0;
        let mut i = self.scanned.max(consumed);
        while i < self.buf.len() {
            // Jump to the end of the current line.
            match self.buf[i..].iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(off) => i += off,
                None => {
                    i = self.buf.len();
                    break;
                }
            }
            let b = self.buf[i];
            // A line ended at i; is the next line empty (event boundary)?
            let line_end_len = if b == b'\r' && self.buf.get(i + 1) == Some(&b'\n') {
                2
            } else if b == b'\r' && i + 1 == self.buf.len() {
                // `\r` at the end of the buffer: the `\n` may still come; wait for it.
                break;
            } else {
                1
            };
            let next = i + line_end_len;
            let blank = match self.buf.get(next) {
                None => break, // need more bytes to know
                Some(b'\n') => Some(1),
                Some(b'\r') => match self.buf.get(next + 1) {
                    Some(b'\n') => Some(2),
                    None => break,
                    Some(_) => Some(1),
                },
                Some(_) => None,
            };
            match blank {
                Some(blank_len) => {
                    let event = &self.buf[consumed..i];
                    let keep_going = dispatch(event, &mut on_data)?;
                    consumed = next + blank_len;
                    i = consumed;
                    if !keep_going {
                        self.compact(consumed, consumed);
                        return Ok(false);
                    }
                }
                None => i = next,
            }
        }
        // `i` stopped either at the end or just before an undecidable line ending.
        let scanned = i;
        self.compact(consumed, scanned);
        if self.buf.len() > MAX_EVENT_BYTES {
            return Err(SseError::TooLong);
        }
        Ok(true)
    }

    /// Bytes of an unfinished event still buffered (non-zero at end of stream means the stream
    /// was cut inside an event).
    pub fn pending(&self) -> usize {
        self.buf.iter().filter(|b| !b.is_ascii_whitespace()).count()
    }

    fn compact(&mut self, consumed: usize, scanned: usize) {
        if consumed > 0 {
            self.buf.drain(..consumed);
        }
        self.scanned = scanned.saturating_sub(consumed);
    }
}

/// Extract and deliver the data payload of one event (its lines, without the blank line).
fn dispatch(event: &[u8], on_data: &mut impl FnMut(&str) -> bool) -> Result<bool, SseError> {
    let text = std::str::from_utf8(event).map_err(|_| SseError::Utf8)?;
    let mut data: Option<String> = None;
    let mut single: Option<&str> = None;
    for line in text.split(['\n', '\r']).filter(|l| !l.is_empty()) {
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        if field != "data" {
            continue;
        }
        // The common case is one data line: no allocation.
        match (&mut data, single) {
            (None, None) => single = Some(value),
            (None, Some(first)) => {
                let mut s = String::with_capacity(first.len() + value.len() + 1);
                s.push_str(first);
                s.push('\n');
                s.push_str(value);
                data = Some(s);
            }
            (Some(s), _) => {
                s.push('\n');
                s.push_str(value);
            }
        }
    }
    Ok(match (data, single) {
        (Some(s), _) => on_data(&s),
        (None, Some(v)) => on_data(v),
        (None, None) => true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(pieces: &[&[u8]]) -> Vec<String> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for piece in pieces {
            p.feed(piece, |d| {
                out.push(d.to_string());
                true
            })
            .unwrap();
        }
        out
    }

    #[test]
    fn events_in_one_piece_and_split_anywhere() {
        let stream =
            b"data: {\"a\":1}\n\ndata: {\"b\":2}\n\n: keep-alive\n\nevent: x\ndata: [DONE]\n\n";
        let want = vec!["{\"a\":1}", "{\"b\":2}", "[DONE]"];
        assert_eq!(collect(&[stream]), want);
        // Every split point, byte by byte, gives the same events.
        for cut in 0..stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(collect(&[a, b]), want, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(collect(&bytes), want);
    }

    #[test]
    fn crlf_and_multiline_data() {
        let s = b"data: x\r\ndata:y\r\n\r\ndata: z\r\rdata: w\n\n";
        assert_eq!(collect(&[s]), vec!["x\ny", "z", "w"]);
        for cut in 0..s.len() {
            let (a, b) = s.split_at(cut);
            assert_eq!(collect(&[a, b]), vec!["x\ny", "z", "w"], "cut at {cut}");
        }
    }

    #[test]
    fn unfinished_event_stays_pending() {
        let mut p = SseParser::new();
        let mut n = 0;
        p.feed(b"data: {\"a\":1}\n\ndata: {\"tr", |_| {
            n += 1;
            true
        })
        .unwrap();
        assert_eq!(n, 1);
        assert!(p.pending() > 0);
    }

    #[test]
    fn early_stop_and_bad_utf8() {
        let mut p = SseParser::new();
        let mut seen = Vec::new();
        let r = p.feed(b"data: 1\n\ndata: 2\n\n", |d| {
            seen.push(d.to_string());
            false
        });
        assert_eq!(r, Ok(false));
        assert_eq!(seen, vec!["1"]);
        let mut q = SseParser::new();
        assert_eq!(q.feed(b"data: \xff\n\n", |_| true), Err(SseError::Utf8));
    }
}
