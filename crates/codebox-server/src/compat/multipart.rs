//! The one `multipart/form-data` upload both codebox-api clients send: a single file part
//! named `file`. `multer` reads the form; the part's content is handed on as a stream of
//! chunks, so an upload never sits whole in memory.
//!
//! multer buffers what comes before the file (preamble, part headers, plain fields) until it
//! has read past it, and reads every chunk the body has ready at once. [`Paced`] keeps both
//! bounded: multer gets one chunk per poll, and what it holds without handing it on as file
//! content is capped at [`MAX_HELD`].

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use codebox_core::{ByteStream, CodeBoxError, Result};
use futures::{Stream, StreamExt};

/// How much of the body multer may hold without handing it on as file content: the form
/// before the file (preamble, part headers, plain fields) and one chunk of the body.
const MAX_HELD: u64 = 1024 * 1024;

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
    FileParts::new(body, boundary)
        .next()
        .await?
        .ok_or_else(|| CodeBoxError::invalid("the multipart body has no file part named `file`"))
}

/// Every part of a form that carries a file, in order (E2B's `write_files` sends several).
/// Plain fields are skipped. Each part's content must be read to its end, or dropped, before
/// the next part is asked for.
pub(crate) struct FileParts {
    form: multer::Multipart<'static>,
    /// Bytes multer holds that it has not handed on as file content (see [`Paced`]).
    held: Arc<AtomicU64>,
}

impl std::fmt::Debug for FileParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileParts").field("held", &self.held).finish_non_exhaustive()
    }
}

impl FileParts {
    /// The file parts of the form `body`, delimited by `boundary`.
    pub(crate) fn new(body: ByteStream, boundary: &str) -> Self {
        let held = Arc::new(AtomicU64::new(0));
        let paced = Paced { body, held: Arc::clone(&held), yielded: false };
        Self { form: multer::Multipart::new(paced, boundary), held }
    }

    /// The next part that carries a file, `None` after the last.
    pub(crate) async fn next(&mut self) -> Result<Option<FilePart>> {
        loop {
            let field = self.form.next_field().await.map_err(|e| form_error(e, Reading::Form))?;
            let Some(field) = field else { return Ok(None) };
            let disposition = field
                .headers()
                .get(http::header::CONTENT_DISPOSITION)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .ok_or_else(|| CodeBoxError::invalid("a multipart part has no Content-Disposition header"))?;
            let (name, file_name) = parse_disposition(&disposition)?;
            // A plain field is skipped: multer reads past it at the next call.
            let Some(file_name) = file_name else { continue };
            let held = Arc::clone(&self.held);
            let content = field
                .map(move |chunk| {
                    let chunk = chunk.map_err(|e| form_error(e, Reading::File))?;
                    held.fetch_sub(chunk.len() as u64, Ordering::Relaxed);
                    Ok(chunk)
                })
                .filter(|chunk| std::future::ready(!matches!(chunk, Ok(c) if c.is_empty())))
                .boxed();
            return Ok(Some(FilePart { field: name, file_name, content }));
        }
    }
}

/// What was being read when multer failed.
#[derive(Debug, Clone, Copy)]
enum Reading {
    /// The form up to the file part.
    Form,
    /// The file part's content.
    File,
}

/// Our error for one of multer's: the body's own error as it was (a limit, a stall, a cut),
/// else a 400 that says what is wrong with the form.
fn form_error(err: multer::Error, reading: Reading) -> CodeBoxError {
    match (err, reading) {
        (multer::Error::StreamReadFailed(cause), _) => match cause.downcast::<CodeBoxError>() {
            Ok(ours) => *ours,
            Err(other) => CodeBoxError::invalid(format!("reading the multipart body: {other}")),
        },
        (multer::Error::IncompleteStream | multer::Error::IncompleteFieldData { .. }, Reading::Form) => {
            CodeBoxError::invalid("the multipart body has no boundary line, or ends inside a part")
        }
        (multer::Error::IncompleteFieldData { .. }, Reading::File) => {
            CodeBoxError::invalid("the multipart body ended before the file part's closing boundary")
        }
        (other, _) => CodeBoxError::invalid(format!("malformed multipart body: {other}")),
    }
}

/// The body as multer reads it: one chunk per poll (multer otherwise reads all the body has
/// ready into its buffer), and refused once multer holds more than [`MAX_HELD`] bytes it has
/// not handed on as file content.
struct Paced {
    body: ByteStream,
    /// Bytes given to multer minus the file content it has handed on.
    held: Arc<AtomicU64>,
    /// A chunk went out on the last poll: this one yields to let multer use it.
    yielded: bool,
}

impl Stream for Paced {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if std::mem::take(&mut self.yielded) {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let chunk = match self.body.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(chunk))) => chunk,
            other => return other,
        };
        let len = chunk.len() as u64;
        if self.held.fetch_add(len, Ordering::Relaxed) + len > MAX_HELD {
            return Poll::Ready(Some(Err(CodeBoxError::invalid(format!(
                "the multipart form before the file is over {MAX_HELD} bytes"
            )))));
        }
        self.yielded = true;
        Poll::Ready(Some(Ok(chunk)))
    }
}

/// The field name and file name of a part, from its `Content-Disposition` header value.
fn parse_disposition(line: &str) -> Result<(String, Option<String>)> {
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
    use futures::{TryStreamExt, stream};

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
    async fn every_file_part_comes_in_order() {
        let raw: &'static [u8] =
            b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"/a/1\"\r\n\r\none\r\n\
--b\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nskipped\r\n\
--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"2\"\r\n\r\n\r\n--b--\r\n";
        for cut in 1..raw.len() {
            let (a, b) = raw.split_at(cut);
            let mut parts = FileParts::new(body(vec![a, b]), "b");
            let first = parts.next().await.unwrap().unwrap();
            assert_eq!(first.file_name, "/a/1");
            assert_eq!(read(first).await.unwrap(), b"one", "cut at {cut}");
            let second = parts.next().await.unwrap().unwrap();
            assert_eq!((second.field.as_str(), second.file_name.as_str()), ("file", "2"));
            assert_eq!(read(second).await.unwrap(), b"", "cut at {cut}");
            assert!(parts.next().await.unwrap().is_none());
        }
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

    #[tokio::test]
    async fn the_file_streams_while_the_form_before_it_is_bounded() {
        let head =
            Bytes::from_static(b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big\"\r\n\r\n");
        let tail = Bytes::from_static(b"\r\n--b--\r\n");
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let chunks = |before: usize, file: usize| -> ByteStream {
            let all = std::iter::repeat_n(chunk.clone(), before)
                .chain([head.clone()])
                .chain(std::iter::repeat_n(chunk.clone(), file))
                .chain([tail.clone()]);
            Box::pin(stream::iter(all.map(Ok)))
        };
        // Eight times what multer may hold, handed on as it comes.
        let part = first_file_part(chunks(0, 128), "b").await.unwrap();
        assert_eq!(read(part).await.unwrap().len(), 128 * chunk.len());
        // A preamble over the bound is refused, not buffered.
        let err = first_file_part(chunks(32, 1), "b").await.unwrap_err();
        assert!(err.to_string().contains("before the file"), "{err}");
        // The body's own error reaches the caller as it was.
        let failing: ByteStream =
            Box::pin(stream::iter([Ok(head.clone()), Err(CodeBoxError::too_large("over the limit"))]));
        let part = first_file_part(failing, "b").await.unwrap();
        assert_eq!(read(part).await.unwrap_err().kind(), codebox_core::ErrorKind::TooLarge);
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
