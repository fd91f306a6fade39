//! The per-execution output cap: the head streams live, a bounded tail is kept, and what
//! falls in between is counted and reported with one [`ExecEvent::Truncated`] marker.

use std::collections::VecDeque;

use codebox_core::ExecEvent;

/// Keeps at most `limit` bytes of one execution's output: the first half as it arrives,
/// and the last half, released when the execution ends.
#[derive(Debug)]
pub(crate) struct OutputCap {
    head_left: usize,
    tail_budget: usize,
    tail: VecDeque<ExecEvent>,
    tail_bytes: usize,
    dropped: u64,
    overflowing: bool,
}

impl OutputCap {
    pub(crate) fn new(limit: usize) -> Self {
        let head = limit / 2;
        Self {
            head_left: head,
            tail_budget: limit - head,
            tail: VecDeque::new(),
            tail_bytes: 0,
            dropped: 0,
            overflowing: false,
        }
    }

    /// Take one event; returns what may be emitted now.
    pub(crate) fn push(&mut self, event: ExecEvent) -> Vec<ExecEvent> {
        let n = event.payload_len();
        if !self.overflowing {
            if n <= self.head_left {
                self.head_left -= n;
                return vec![event];
            }
            self.overflowing = true;
            let mut now = Vec::new();
            let rest = match split_text(event, self.head_left) {
                (Some(head), rest) => {
                    now.push(head);
                    rest
                }
                (None, rest) => rest,
            };
            self.head_left = 0;
            if let Some(rest) = rest {
                self.push_tail(rest);
            }
            return now;
        }
        self.push_tail(event);
        Vec::new()
    }

    fn push_tail(&mut self, event: ExecEvent) {
        self.tail_bytes += event.payload_len();
        self.tail.push_back(event);
        while self.tail_bytes > self.tail_budget {
            let Some(front) = self.tail.pop_front() else { break };
            let len = front.payload_len();
            let excess = self.tail_bytes - self.tail_budget;
            if excess < len
                && let Some(kept) = cut_front(front, excess)
            {
                let cut = len - kept.payload_len();
                self.dropped += cut as u64;
                self.tail_bytes -= cut;
                self.tail.push_front(kept);
                break;
            }
            self.dropped += len as u64;
            self.tail_bytes -= len;
        }
    }

    /// Everything held back, preceded by the truncation marker when output was cut.
    pub(crate) fn finish(&mut self) -> Vec<ExecEvent> {
        let mut out = Vec::with_capacity(self.tail.len() + 1);
        if self.dropped > 0 {
            out.push(ExecEvent::Truncated { dropped_bytes: self.dropped });
        }
        out.extend(self.tail.drain(..));
        self.tail_bytes = 0;
        out
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Split a text event after `at` bytes; other events cannot be split.
fn split_text(event: ExecEvent, at: usize) -> (Option<ExecEvent>, Option<ExecEvent>) {
    let make =
        |is_out: bool, t: String| if is_out { ExecEvent::Stdout { text: t } } else { ExecEvent::Stderr { text: t } };
    if at == 0 {
        return (None, Some(event));
    }
    match event {
        ExecEvent::Stdout { mut text } => {
            let cut = floor_char_boundary(&text, at);
            let rest = text.split_off(cut);
            (Some(make(true, text)).filter(|e| e.payload_len() > 0), Some(make(true, rest)))
        }
        ExecEvent::Stderr { mut text } => {
            let cut = floor_char_boundary(&text, at);
            let rest = text.split_off(cut);
            (Some(make(false, text)).filter(|e| e.payload_len() > 0), Some(make(false, rest)))
        }
        other => (None, Some(other)),
    }
}

/// Drop the first `n` bytes of a text event.
fn cut_front(event: ExecEvent, n: usize) -> Option<ExecEvent> {
    let cut = |text: String| {
        let mut at = n.min(text.len());
        while !text.is_char_boundary(at) {
            at += 1;
        }
        text[at..].to_owned()
    };
    match event {
        ExecEvent::Stdout { text } => Some(ExecEvent::Stdout { text: cut(text) }),
        ExecEvent::Stderr { text } => Some(ExecEvent::Stderr { text: cut(text) }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(events: &[ExecEvent]) -> String {
        events.iter().map(|e| if let ExecEvent::Stdout { text } = e { text.as_str() } else { "" }).collect()
    }

    #[test]
    fn small_output_passes_untouched() {
        let mut cap = OutputCap::new(100);
        assert_eq!(cap.push(ExecEvent::stdout("hello")), vec![ExecEvent::stdout("hello")]);
        assert!(cap.finish().is_empty());
    }

    #[test]
    fn head_and_tail_are_kept_and_the_middle_is_counted() {
        let mut cap = OutputCap::new(20);
        let mut out = Vec::new();
        for i in 0..100 {
            out.extend(cap.push(ExecEvent::stdout(format!("{:04}\n", i))));
        }
        out.extend(cap.finish());
        let dropped = out.iter().find_map(|e| match e {
            ExecEvent::Truncated { dropped_bytes } => Some(*dropped_bytes),
            _ => None,
        });
        assert_eq!(dropped, Some(500 - 20));
        let all = text(&out);
        assert!(all.starts_with("0000\n0001\n"), "{all}");
        assert!(all.ends_with("0098\n0099\n"), "{all}");
        assert_eq!(all.len(), 20);
    }

    #[test]
    fn one_huge_message_is_cut_on_char_boundaries() {
        let mut cap = OutputCap::new(11);
        let mut out = cap.push(ExecEvent::stdout("é".repeat(1000)));
        out.extend(cap.finish());
        let all = text(&out);
        assert!(all.len() <= 11);
        assert!(all.chars().all(|c| c == 'é'));
    }

    #[test]
    fn stderr_stays_stderr_when_cut_at_zero() {
        let mut cap = OutputCap::new(4);
        cap.push(ExecEvent::stdout("ab"));
        cap.push(ExecEvent::stderr("cdef"));
        let end = cap.finish();
        assert!(end.iter().any(|e| matches!(e, ExecEvent::Stderr { .. })), "{end:?}");
    }
}
