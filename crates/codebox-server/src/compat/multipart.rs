//! A streaming reader for the one `multipart/form-data` upload both codebox-api clients send:
//! a single file part named `file`. The part's content is handed on as a stream of chunks, so
//! an upload never sits whole in memory.

use bytes::{Buf, Bytes, BytesMut};
use codebox_core::{ByteStream, CodeBoxError, Result};
use futures::{StreamExt, stream};

/// How much of a part's headers is read before the request is refused.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The file part of a form: its field name, the file name the client gave, and its content.
pub(crate) struct FilePart {
    /// The form field name (`file` for both clients).
    pub(crate) field: String,
    /// The file name from `Content-Disposition`, exactly as sent (it may contain `/`).
    pub(crate) file_name: String,
    /// The content, streamed.
    pub(crate) content: ByteStream,
}

impl std::fmt::Debug for FilePart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilePart").field("field", &self.field).field("file_name", &self.file_name).finish()
    }
}

/// The boundary named by a `multipart/form-data` content type.
pub(crate) fn boundary(content_type: &str) -> Result<String> {
    let mut parts = content_type.split(';');
    let mime = parts.next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return Err(CodeBoxError::invalid(format!(
            "expected a multipart/form-data upload with a `file` field, got content type {mime:?}"
        )));
    }
    for param in parts {
        if let Some((name, value)) = param.split_once('=')
            && name.trim().eq_ignore_ascii_case("boundary")
        {
            let value = value.trim().trim_matches('"');
            if value.is_empty() || value.len() > 200 {
                break;
            }
            return Ok(value.to_owned());
        }
    }
    Err(CodeBoxError::invalid("the multipart/form-data content type has no usable boundary"))
}

/// Read the form up to the first part that carries a file (a `filename`), skipping any plain
/// fields before it, and return that part with its content as a stream. The stream ends at the
/// part's closing boundary; a body that ends before it is an error of the stream.
pub(crate) async fn first_file_part(body: ByteStream, boundary: &str) -> Result<FilePart> {
    let mut reader = Reader { body, buf: BytesMut::new(), eof: false };
    let dash_boundary = format!("--{boundary}");
    // The preamble ends with the first boundary line.
    let Some(at) = reader.find(dash_boundary.as_bytes(), usize::MAX).await? else {
        return Err(CodeBoxError::invalid("the multipart body has no boundary line"));
    };
    reader.buf.advance(at + dash_boundary.len());
    let delimiter: Bytes = Bytes::from(format!("\r\n--{boundary}"));
    loop {
        // After a boundary: `--` ends the form, CRLF starts a part.
        reader.fill_to(2).await?;
        if reader.buf.starts_with(b"--") {
            return Err(CodeBoxError::invalid("the multipart body has no file part named `file`"));
        }
        let Some(end) = reader.find(b"\r\n\r\n", MAX_HEADER_BYTES).await? else {
            return Err(CodeBoxError::invalid("a multipart part has no end of headers"));
        };
        let headers = reader.buf.split_to(end + 4);
        let headers = String::from_utf8_lossy(&headers);
        let (field, file_name) = parse_disposition(&headers)?;
        if let Some(file_name) = file_name {
            let content = part_stream(reader, delimiter);
            return Ok(FilePart { field, file_name, content });
        }
        // A plain field: skip its value up to the next boundary.
        loop {
            match reader.find(&delimiter, usize::MAX).await? {
                Some(at) => {
                    reader.buf.advance(at + delimiter.len());
                    break;
                }
                None if reader.eof => return Err(CodeBoxError::invalid("the multipart body ended inside a field")),
                None => {
                    let keep = delimiter.len() - 1;
                    let drop = reader.buf.len().saturating_sub(keep);
                    reader.buf.advance(drop);
                }
            }
        }
    }
}

/// The content of the current part as a stream of chunks, ending at `delimiter`.
fn part_stream(reader: Reader, delimiter: Bytes) -> ByteStream {
    Box::pin(stream::try_unfold(Some(reader), move |state| {
        let delimiter = delimiter.clone();
        async move {
            let Some(mut reader) = state else { return Ok(None) };
            loop {
                if let Some(at) = find_in(&reader.buf, &delimiter) {
                    let chunk = reader.buf.split_to(at).freeze();
                    return Ok(Some((chunk, None)));
                }
                // Everything but a possible start of the delimiter can go out now.
                let safe = reader.buf.len().saturating_sub(delimiter.len() - 1);
                if safe > 0 && reader.buf.len() >= 64 * 1024 {
                    let chunk = reader.buf.split_to(safe).freeze();
                    return Ok(Some((chunk, Some(reader))));
                }
                if reader.eof {
                    return Err(CodeBoxError::invalid(
                        "the multipart body ended before the file part's closing boundary",
                    ));
                }
                if !reader.read_more().await? && safe > 0 {
                    let chunk = reader.buf.split_to(safe).freeze();
                    return Ok(Some((chunk, Some(reader))));
                }
            }
        }
    }))
    .filter(|chunk| std::future::ready(!matches!(chunk, Ok(c) if c.is_empty())))
    .boxed()
}

/// Buffers the body just enough to find boundaries.
struct Reader {
    body: ByteStream,
    buf: BytesMut,
    eof: bool,
}

impl Reader {
    /// Append the next chunk of the body; `false` at the end of the body.
    async fn read_more(&mut self) -> Result<bool> {
        match self.body.next().await {
            Some(Ok(chunk)) => {
                self.buf.extend_from_slice(&chunk);
                Ok(true)
            }
            Some(Err(e)) => Err(e),
            None => {
                self.eof = true;
                Ok(false)
            }
        }
    }

    /// Read until at least `n` bytes are buffered or the body ends.
    async fn fill_to(&mut self, n: usize) -> Result<()> {
        while self.buf.len() < n && self.read_more().await? {}
        Ok(())
    }

    /// The position of `needle`, reading more of the body as needed, giving up (with `None`)
    /// when `limit` bytes are buffered without it or when the body ends.
    async fn find(&mut self, needle: &[u8], limit: usize) -> Result<Option<usize>> {
        loop {
            if let Some(at) = find_in(&self.buf, needle) {
                return Ok(Some(at));
            }
            if self.buf.len() >= limit || self.eof {
                return Ok(None);
            }
            if limit == usize::MAX && self.buf.len() >= 64 * 1024 {
                // A caller scanning for a boundary drops what it cannot match; let it.
                return Ok(None);
            }
            self.read_more().await?;
        }
    }
}

/// The first position of `needle` in `hay`.
fn find_in(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut from = 0;
    while let Some(pos) = hay[from..].iter().position(|&b| b == first) {
        let at = from + pos;
        if hay.len() - at < needle.len() {
            return None;
        }
        if &hay[at + 1..at + needle.len()] == rest {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// The field name and file name of a part, from its `Content-Disposition` header.
fn parse_disposition(headers: &str) -> Result<(String, Option<String>)> {
    let line = headers
        .split("\r\n")
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case("content-disposition")))
        .map(|(_, v)| v.trim())
        .ok_or_else(|| CodeBoxError::invalid("a multipart part has no Content-Disposition header"))?;
    let mut name = None;
    let mut file_name = None;
    let mut file_name_ext = None;
    for param in split_params(line).into_iter().skip(1) {
        let Some((key, value)) = param.split_once('=') else { continue };
        let key = key.trim().to_ascii_lowercase();
        let value = value.trim();
        match key.as_str() {
            "name" => name = Some(unquote(value)),
            "filename" => file_name = Some(unquote(value)),
            "filename*" => file_name_ext = decode_ext_value(value),
            _ => {}
        }
    }
    let name = name.ok_or_else(|| CodeBoxError::invalid("a multipart part has no field name"))?;
    Ok((name, file_name_ext.or(file_name)))
}

/// Split header parameters on `;` outside quotes.
fn split_params(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => {
                out.push(&line[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&line[start..]);
    out
}

/// A quoted-string value. Browsers and urllib3 escape `"` as `%22` (HTML5 form encoding),
/// others with a backslash; both are undone.
fn unquote(value: &str) -> String {
    let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return value.to_owned();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out.replace("%22", "\"").replace("%0D", "\r").replace("%0A", "\n")
}

/// An RFC 5987 value such as `utf-8''na%C3%AFve.txt`.
fn decode_ext_value(value: &str) -> Option<String> {
    let (charset, rest) = value.split_once('\'')?;
    let (_lang, encoded) = rest.split_once('\'')?;
    if !charset.eq_ignore_ascii_case("utf-8") {
        return None;
    }
    super::percent_decode(encoded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    fn body(chunks: Vec<&'static [u8]>) -> ByteStream {
        Box::pin(stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from_static(c)))))
    }

    async fn read(part: FilePart) -> Result<Vec<u8>> {
        let chunks: Vec<Bytes> = part.content.try_collect().await?;
        Ok(chunks.concat())
    }

    #[test]
    fn the_boundary_comes_from_the_content_type() {
        assert_eq!(boundary("multipart/form-data; boundary=abc").unwrap(), "abc");
        assert_eq!(boundary("Multipart/Form-Data; charset=x; boundary=\"a b\"").unwrap(), "a b");
        assert!(boundary("application/json").is_err());
        assert!(boundary("multipart/form-data").is_err());
    }

    #[tokio::test]
    async fn a_file_part_streams_its_exact_bytes_across_chunk_edges() {
        let raw: &'static [u8] = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"dir/a.bin\"\r\n\
Content-Type: application/octet-stream\r\n\r\nhello\r\n--Xy\r\nworld\r\n--XyZ--\r\n";
        // Every split point must give the same content.
        for cut in 1..raw.len() {
            let (a, b) = raw.split_at(cut);
            let part = first_file_part(body(vec![a, b]), "XyZ").await.unwrap();
            assert_eq!(part.field, "file");
            assert_eq!(part.file_name, "dir/a.bin");
            assert_eq!(read(part).await.unwrap(), b"hello\r\n--Xy\r\nworld", "cut at {cut}");
        }
    }

    #[tokio::test]
    async fn plain_fields_before_the_file_are_skipped() {
        let raw: &'static [u8] = b"--b\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n--b\r\n\
Content-Disposition: form-data; name=\"file\"; filename=\"x.txt\"; filename*=utf-8''na%C3%AFve.txt\r\n\r\n\r\n--b--";
        let part = first_file_part(body(vec![raw]), "b").await.unwrap();
        assert_eq!(part.file_name, "naïve.txt");
        assert_eq!(read(part).await.unwrap(), b"");
    }

    #[tokio::test]
    async fn malformed_forms_are_clear_errors() {
        let no_file: &'static [u8] = b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nv\r\n--b--\r\n";
        let err = first_file_part(body(vec![no_file]), "b").await.unwrap_err();
        assert!(err.to_string().contains("no file part"), "{err}");
        let err = first_file_part(body(vec![b"garbage"]), "b").await.unwrap_err();
        assert!(err.to_string().contains("no boundary"), "{err}");
        let cut: &'static [u8] = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\npartial";
        let part = first_file_part(body(vec![cut]), "b").await.unwrap();
        let err = read(part).await.unwrap_err();
        assert!(err.to_string().contains("closing boundary"), "{err}");
    }

    /// `raw` as a body cut at `cuts`.
    fn pieces(raw: &[u8], cuts: &[usize]) -> ByteStream {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (raw.len() + 1)).collect();
        cuts.sort_unstable();
        let mut at = 0;
        let mut chunks = Vec::new();
        for cut in cuts.into_iter().chain([raw.len()]) {
            chunks.push(Ok(Bytes::copy_from_slice(&raw[at..cut])));
            at = cut;
        }
        Box::pin(stream::iter(chunks))
    }

    /// The form a client sends: one file part holding `content`.
    fn form(boundary: &str, name: &str, content: &[u8]) -> Vec<u8> {
        let mut raw =
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\r\n")
                .into_bytes();
        raw.extend(content);
        raw.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
        raw
    }

    /// File content made of the bytes that matter to the parser (CR, LF, dashes, pieces of
    /// the boundary) and any others.
    fn content() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let piece = prop_oneof![
            Just(b"\r\n".to_vec()),
            Just(b"--".to_vec()),
            Just(b"\r\n--b".to_vec()),
            Just(b"\r\n--bo".to_vec()),
            Just(b"--bound".to_vec()),
            prop::collection::vec(any::<u8>(), 0..16),
        ];
        prop::collection::vec(piece, 0..24).prop_map(|v| v.concat())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

        // A tenant's upload body is any bytes, cut anywhere by the network: the reader
        // answers a part or an error, and reading the part ends, never a panic.
        #[test]
        fn any_body_cut_anywhere_is_a_part_or_an_error(
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            prefix in proptest::prelude::any::<bool>(),
            cuts in proptest::collection::vec(proptest::prelude::any::<usize>(), 0..6),
        ) {
            let raw = if prefix { [b"--bnd\r\nContent-Disposition: form-data; name=file; filename=f\r\n\r\n".as_slice(), &raw].concat() } else { raw };
            futures::executor::block_on(async {
                if let Ok(part) = first_file_part(pieces(&raw, &cuts), "bnd").await {
                    let _ = read(part).await;
                }
            });
        }

        // A well-formed upload gives back exactly its bytes, however it was cut.
        #[test]
        fn a_file_part_comes_back_byte_for_byte(
            data in content(),
            cuts in proptest::collection::vec(proptest::prelude::any::<usize>(), 0..6),
        ) {
            let raw = form("boundary", "f.bin", &data);
            let got = futures::executor::block_on(async {
                let part = first_file_part(pieces(&raw, &cuts), "boundary").await?;
                read(part).await
            });
            proptest::prop_assert_eq!(got.unwrap(), data);
        }
    }

    #[tokio::test]
    async fn quoted_names_are_unescaped() {
        let raw: &'static [u8] =
            b"--b\r\ncontent-disposition: form-data; name=\"file\"; filename=\"a%22;b.txt\"\r\n\r\nx\r\n--b--";
        let part = first_file_part(body(vec![raw]), "b").await.unwrap();
        assert_eq!(part.file_name, "a\";b.txt");
    }
}
