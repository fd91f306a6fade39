//! One execution of the codebox-api 0.2 protocol: its tagged chunks to execution events.
//!
//! The wire carries only labelled text, so what a kernel reports in structure (an exception,
//! how the execution ended) is recognized from the text the servers are known to send:
//!
//! - `codebox serve` (its `/api/v2`) sends an exception as one `<err>` chunk holding the whole
//!   traceback, ending in `Name: value`, and ends an execution that timed out or was
//!   interrupted with `<err>TimeoutError: the execution timed out</err>` or
//!   `<err>KeyboardInterrupt: the execution was interrupted</err>`;
//! - the `codeboxapi` package's server prints the traceback (with terminal colours) as `<txt>`
//!   output, then sends `str(exception)` as the last `<err>` chunk.
//!
//! An `<err>` chunk that reads as either is held back until the next chunk: when it is the
//! last, it is the exception ([`ExecEvent::Error`], outcome [`Outcome::Error`]) or the stated
//! end; when more output follows, it was text on standard error after all, and is passed on
//! as such. Anything else is passed on as it arrives.

use std::time::Duration;

use codebox_core::{ErrorInfo, ExecEvent, MimeBundle, Outcome};

use super::tagged::Chunk;

/// How much of the latest standard output is kept to find a printed traceback in.
const STDOUT_KEPT: usize = 64 << 10;

/// The last chunk `codebox serve` sends for an execution that did not run to its end.
const END_NOTICES: [(&str, Outcome); 2] = [
    ("TimeoutError: the execution timed out", Outcome::TimedOut),
    ("KeyboardInterrupt: the execution was interrupted", Outcome::Interrupted),
];

/// An `<err>` chunk whose meaning depends on whether another chunk follows it.
#[derive(Debug)]
enum Held {
    /// An exception, if nothing follows.
    Exception { text: String, error: ErrorInfo },
    /// How the execution ended, if nothing follows.
    EndNotice { text: String, outcome: Outcome },
}

impl Held {
    fn into_stderr(self) -> ExecEvent {
        match self {
            Held::Exception { text, .. } | Held::EndNotice { text, .. } => ExecEvent::stderr(text),
        }
    }
}

/// Reads the chunks of one execution, in order, into events.
#[derive(Debug, Default)]
pub(crate) struct ExecutionReader {
    /// The latest standard output as it arrived (terminal escapes included, since one may
    /// be split across chunks), since the last exception.
    stdout: String,
    held: Option<Held>,
    /// An exception was reported.
    raised: bool,
}

impl ExecutionReader {
    /// The events one chunk gives, in order (none while it is held back).
    pub(crate) fn read(&mut self, chunk: Chunk) -> Vec<ExecEvent> {
        let mut events = Vec::new();
        if let Some(held) = self.held.take() {
            match held {
                // An exception, then the notice that the execution timed out or was
                // interrupted: the exception stands, the notice waits for the end.
                Held::Exception { error, .. } if matches!(&chunk, Chunk::Error(t) if end_notice(t).is_some()) => {
                    events.push(self.raise(error));
                }
                held => events.push(held.into_stderr()),
            }
        }
        match chunk {
            Chunk::Text(text) => {
                self.keep_stdout(&text);
                events.push(ExecEvent::stdout(text));
            }
            Chunk::Image(base64) => {
                let mut data = MimeBundle::new();
                data.insert(MimeBundle::PNG, serde_json::Value::String(base64));
                events.push(ExecEvent::Display { data, display_id: None });
            }
            Chunk::Error(text) => {
                if let Some(outcome) = end_notice(&text) {
                    self.held = Some(Held::EndNotice { text, outcome });
                } else if let Some(error) =
                    traceback_exception(&text).or_else(|| printed_exception(&self.stdout, &text))
                {
                    self.held = Some(Held::Exception { text, error });
                } else {
                    events.push(ExecEvent::stderr(text));
                }
            }
        }
        events
    }

    /// The last events once the stream has ended: a held exception, and the end event
    /// with the outcome the chunks showed.
    pub(crate) fn finish(&mut self, duration: Duration) -> Vec<ExecEvent> {
        let mut events = Vec::new();
        let mut stated = None;
        match self.held.take() {
            Some(Held::Exception { error, .. }) => events.push(self.raise(error)),
            // The notice is the protocol's form of the end event, not output of the code.
            Some(Held::EndNotice { outcome, .. }) => stated = Some(outcome),
            None => {}
        }
        let outcome = stated.unwrap_or(if self.raised { Outcome::Error } else { Outcome::Ok });
        events.push(ExecEvent::end(None, duration, outcome));
        events
    }

    fn raise(&mut self, error: ErrorInfo) -> ExecEvent {
        self.raised = true;
        self.stdout.clear();
        ExecEvent::Error(error)
    }

    fn keep_stdout(&mut self, text: &str) {
        self.stdout.push_str(text);
        if self.stdout.len() > STDOUT_KEPT {
            let mut cut = self.stdout.len() - STDOUT_KEPT;
            while !self.stdout.is_char_boundary(cut) {
                cut += 1;
            }
            self.stdout.drain(..cut);
        }
    }
}

fn end_notice(text: &str) -> Option<Outcome> {
    END_NOTICES.iter().find(|(notice, _)| text.trim_end() == *notice).map(|(_, outcome)| *outcome)
}

/// An `<err>` chunk that is a whole traceback (the form `codebox serve` sends).
fn traceback_exception(text: &str) -> Option<ErrorInfo> {
    let plain = strip_ansi_escapes::strip_str(text);
    let lines: Vec<&str> = plain.lines().collect();
    let found = find_exception(&lines)?;
    Some(ErrorInfo { name: found.name, value: found.value, traceback: traceback_lines(&lines[found.start..]) })
}

/// An `<err>` chunk that is `str(exception)` of a traceback printed just before on standard
/// output (the form the `codeboxapi` package's server sends). The chunk must agree with the
/// traceback's last line: the same message, or one that begins with it (a `SyntaxError`
/// prints `invalid syntax` and says `invalid syntax (<ipython-input-...>, line 1)`).
fn printed_exception(stdout: &str, said: &str) -> Option<ErrorInfo> {
    let plain = strip_ansi_escapes::strip_str(stdout);
    let lines: Vec<&str> = plain.lines().collect();
    let found = find_exception(&lines)?;
    let said = said.trim_end();
    let agrees = if found.value.is_empty() { said.is_empty() } else { said.starts_with(&found.value) };
    agrees.then(|| ErrorInfo {
        name: found.name,
        value: said.to_owned(),
        traceback: traceback_lines(&lines[found.start..]),
    })
}

/// The exception a traceback ends with.
#[derive(Debug, PartialEq, Eq)]
struct Found {
    name: String,
    value: String,
    /// The line the traceback starts at.
    start: usize,
}

/// The exception of the last traceback in `lines`: after the last line that opens a
/// traceback or one of its frames, the first line of the form `Name: value` (or `Name`
/// alone) gives the exception; the lines after it belong to its message.
fn find_exception(lines: &[&str]) -> Option<Found> {
    let first = lines.iter().position(|l| opens_frame(l))?;
    let last = lines.iter().rposition(|l| opens_frame(l))?;
    let (at, name, first_line) =
        lines.iter().enumerate().skip(last + 1).find_map(|(i, l)| exception_line(l).map(|(n, v)| (i, n, v)))?;
    let mut value = first_line.to_owned();
    for line in &lines[at + 1..] {
        value.push('\n');
        value.push_str(line);
    }
    value.truncate(value.trim_end().len());
    // IPython draws a rule of dashes above its tracebacks.
    let start = if first > 0 && is_rule(lines[first - 1]) { first - 1 } else { first };
    Some(Found { name: name.to_owned(), value, start })
}

/// A line that opens a traceback or one of its frames, in the forms of Python and IPython.
fn opens_frame(line: &str) -> bool {
    let line = line.trim();
    line.contains("Traceback (most recent call last)")
        || line.starts_with("Cell In[")
        || line.starts_with("File \"")
        || line.starts_with("An exception has occurred, use %tb")
}

fn is_rule(line: &str) -> bool {
    let line = line.trim();
    line.len() >= 10 && line.chars().all(|c| c == '-')
}

/// `Name: value`, `Name:` or `Name` with a dotted Python name at the start of the line.
fn exception_line(line: &str) -> Option<(&str, &str)> {
    let (name, value) = match line.split_once(':') {
        Some((name, rest)) => (name, rest.strip_prefix(' ').unwrap_or(rest)),
        None => (line.trim_end(), ""),
    };
    is_dotted_name(name).then_some((name, value))
}

fn is_dotted_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|part| {
            let mut chars = part.chars();
            chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
                && chars.all(|c| c.is_alphanumeric() || c == '_')
        })
}

fn traceback_lines(lines: &[&str]) -> Vec<String> {
    let end = lines.iter().rposition(|l| !l.trim().is_empty()).map_or(0, |i| i + 1);
    lines[..end].iter().map(|l| (*l).to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(chunks: Vec<Chunk>) -> Vec<ExecEvent> {
        let mut reader = ExecutionReader::default();
        let mut events: Vec<ExecEvent> = chunks.into_iter().flat_map(|c| reader.read(c)).collect();
        events.extend(reader.finish(Duration::ZERO));
        events
    }

    fn outcome(events: &[ExecEvent]) -> Outcome {
        match events.last() {
            Some(ExecEvent::End { outcome, .. }) => *outcome,
            other => panic!("no end event: {other:?}"),
        }
    }

    fn error(events: &[ExecEvent]) -> &ErrorInfo {
        events.iter().find_map(|e| if let ExecEvent::Error(info) = e { Some(info) } else { None }).unwrap()
    }

    /// What the `codeboxapi` 0.2.6 server sent for `print("before")` then a `KeyError`
    /// raised in a function (colours as it sent them).
    const PRINTED_KEY_ERROR: &str = "\u{1b}[31m---------------------------------------------------------------------------\u{1b}[39m\n\
        \u{1b}[31mKeyError\u{1b}[39m                                  Traceback (most recent call last)\n\
        \u{1b}[36mCell\u{1b}[39m\u{1b}[36m \u{1b}[39m\u{1b}[32mIn[1]\u{1b}[39m\u{1b}[32m, line 6\u{1b}[39m\n\
        \u{1b}[32m      4\u{1b}[39m \u{1b}[38;5;28;01mdef\u{1b}[39;00m g():\n\
        \u{1b}[32m----> \u{1b}[39m\u{1b}[32m6\u{1b}[39m g()\n\
        \n\
        \u{1b}[36mCell\u{1b}[39m\u{1b}[36m \u{1b}[39m\u{1b}[32mIn[1]\u{1b}[39m\u{1b}[32m, line 5\u{1b}[39m, in \u{1b}[36mg\u{1b}[39m\u{1b}[34m()\u{1b}[39m\n\
        \u{1b}[32m----> \u{1b}[39m\u{1b}[32m5\u{1b}[39m     raise KeyError(\"k\")\n\
        \n\
        \u{1b}[31mKeyError\u{1b}[39m: 'k'\n";

    #[test]
    fn a_printed_traceback_and_its_message_are_one_exception() {
        let events = read_all(vec![
            Chunk::Text("before\n".into()),
            Chunk::Text(PRINTED_KEY_ERROR[..100].into()),
            Chunk::Text(PRINTED_KEY_ERROR[100..].into()),
            Chunk::Error("'k'".into()),
        ]);
        let info = error(&events);
        assert_eq!((info.name.as_str(), info.value.as_str()), ("KeyError", "'k'"));
        assert_eq!(info.traceback.first().map(String::as_str), Some("-".repeat(75).as_str()));
        assert_eq!(info.traceback.last().map(String::as_str), Some("KeyError: 'k'"));
        assert!(info.traceback.iter().all(|l| !l.contains('\u{1b}')), "{:?}", info.traceback);
        assert_eq!(outcome(&events), Outcome::Error);
        assert_eq!(events[0], ExecEvent::stdout("before\n"), "standard output is passed on as it came");
    }

    #[test]
    fn a_syntax_error_an_empty_message_and_a_multi_line_message_are_recognized() {
        let syntax = "  Cell In[1], line 1\n    def f(:\n          ^\nSyntaxError: invalid syntax\n\n";
        let events = read_all(vec![
            Chunk::Text(syntax.into()),
            Chunk::Error("invalid syntax (<ipython-input-1-62500c5ef28b>, line 1)".into()),
        ]);
        assert_eq!(error(&events).name, "SyntaxError");
        assert_eq!(error(&events).value, "invalid syntax (<ipython-input-1-62500c5ef28b>, line 1)");
        let empty = "------------\nValueError      Traceback (most recent call last)\nCell In[1], line 1\n----> 1 raise ValueError()\n\nValueError: \n";
        let events = read_all(vec![Chunk::Text(empty.into()), Chunk::Error(String::new())]);
        assert_eq!((error(&events).name.as_str(), error(&events).value.as_str()), ("ValueError", ""));
        let multi =
            "Traceback (most recent call last):\n  File \"<stdin>\", line 1, in <module>\nmod.MyErr: multi\nline\n";
        let events = read_all(vec![Chunk::Text(multi.into()), Chunk::Error("multi\nline".into())]);
        assert_eq!((error(&events).name.as_str(), error(&events).value.as_str()), ("mod.MyErr", "multi\nline"));
    }

    #[test]
    fn a_whole_traceback_in_an_error_chunk_is_an_exception() {
        let text = "---------------------------------------------------------------------------\n\
                    ZeroDivisionError                         Traceback (most recent call last)\n\
                    Cell In[1], line 1\n----> 1 1/0\n\nZeroDivisionError: division by zero";
        let events = read_all(vec![Chunk::Text("a\n".into()), Chunk::Error(text.into())]);
        let info = error(&events);
        assert_eq!((info.name.as_str(), info.value.as_str()), ("ZeroDivisionError", "division by zero"));
        assert_eq!(info.traceback.len(), 6);
        assert_eq!(events.len(), 3);
        assert_eq!(outcome(&events), Outcome::Error);
    }

    #[test]
    fn standard_error_stays_standard_error() {
        let events = read_all(vec![
            Chunk::Text("Note: hello\n".into()),
            Chunk::Error("hello\n".into()),
            Chunk::Error("Traceback (most recent call last):\n".into()),
            Chunk::Error("ValueError: looks like one\n".into()),
        ]);
        assert!(!events.iter().any(|e| matches!(e, ExecEvent::Error(_))), "{events:?}");
        assert_eq!(events.iter().filter(|e| matches!(e, ExecEvent::Stderr { .. })).count(), 3);
        assert_eq!(outcome(&events), Outcome::Ok);
        // A printed traceback that more output follows was only logged.
        let logged = "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\nOSError: gone\n";
        let events = read_all(vec![Chunk::Error(logged.into()), Chunk::Text("carried on\n".into())]);
        assert_eq!(events[0], ExecEvent::stderr(logged));
        assert_eq!(outcome(&events), Outcome::Ok);
        // A message that disagrees with the printed traceback is not its exception.
        let events = read_all(vec![Chunk::Text(PRINTED_KEY_ERROR.into()), Chunk::Error("something else".into())]);
        assert_eq!(outcome(&events), Outcome::Ok);
    }

    #[test]
    fn the_end_notices_give_the_outcome() {
        let events =
            read_all(vec![Chunk::Text("tick\n".into()), Chunk::Error("TimeoutError: the execution timed out".into())]);
        assert_eq!(events.len(), 2, "the notice is the end, not output: {events:?}");
        assert_eq!(outcome(&events), Outcome::TimedOut);
        let interrupted = "Traceback (most recent call last):\n  File \"<cell>\", line 1\nKeyboardInterrupt\n";
        let events = read_all(vec![
            Chunk::Error(interrupted.into()),
            Chunk::Error("KeyboardInterrupt: the execution was interrupted".into()),
        ]);
        assert_eq!(error(&events).name, "KeyboardInterrupt");
        assert_eq!(outcome(&events), Outcome::Interrupted);
        // Followed by more output, a notice was text on standard error.
        let events =
            read_all(vec![Chunk::Error("TimeoutError: the execution timed out".into()), Chunk::Text("more".into())]);
        assert_eq!(events[0], ExecEvent::stderr("TimeoutError: the execution timed out"));
        assert_eq!(outcome(&events), Outcome::Ok);
    }

    #[test]
    fn exception_lines_need_a_python_name() {
        assert_eq!(exception_line("ValueError: x: y"), Some(("ValueError", "x: y")));
        assert_eq!(exception_line("a.b.C"), Some(("a.b.C", "")));
        assert_eq!(exception_line("Cell In[1], line 1"), None);
        assert_eq!(exception_line("----> 1 1/0"), None);
        assert_eq!(exception_line("  File \"x\", line 1"), None);
        assert_eq!(exception_line("1abc: no"), None);
    }
}
