//! The MCP service as a client sees it: JSON-RPC over an in-process pipe to `McpService`
//! serving a real local box (a real kernel). Bad arguments, the caps on what comes back,
//! binary files, and cancellation interrupting the kernel.

use std::sync::Arc;

use codebox_core::CodeBox;
use codebox_local::LocalBox;
use codebox_mcp::{MAX_IMAGES, MAX_TEXT_CHARS, McpService, OneBox};
use rmcp::ServiceExt as _;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, Lines, ReadHalf, WriteHalf};

/// A client of one MCP connection, speaking newline-delimited JSON-RPC.
struct Conn {
    write: WriteHalf<DuplexStream>,
    lines: Lines<BufReader<ReadHalf<DuplexStream>>>,
    next_id: u64,
    /// Notifications seen while waiting for answers.
    notifications: Vec<Value>,
    host: Arc<OneBox>,
}

impl Conn {
    /// A connection to a service over a local box, initialized (protocol 2025-11-25).
    async fn open() -> Self {
        let host = Arc::new(OneBox::new(|| {
            let b = LocalBox::builder().build()?;
            Ok(Arc::new(b) as Arc<dyn CodeBox>)
        }));
        let (client, server) = tokio::io::duplex(1 << 20);
        let service = McpService::new(host.clone());
        tokio::spawn(async move {
            if let Ok(running) = service.serve(server).await {
                let _ = running.waiting().await;
            }
        });
        let (read, write) = tokio::io::split(client);
        let mut conn = Self { write, lines: BufReader::new(read).lines(), next_id: 0, notifications: Vec::new(), host };
        let init = conn
            .request(
                "initialize",
                json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "it", "version": "1"}}),
            )
            .await;
        assert!(init.get("result").is_some(), "{init}");
        conn.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
        conn
    }

    async fn send(&mut self, message: Value) {
        let mut line = message.to_string();
        line.push('\n');
        self.write.write_all(line.as_bytes()).await.unwrap();
    }

    /// Send a request; its id.
    async fn start(&mut self, method: &str, params: Value) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})).await;
        id
    }

    /// The answer to request `id`, keeping notifications and skipping other answers.
    async fn answer(&mut self, id: u64) -> Value {
        loop {
            let line = self.lines.next_line().await.unwrap().expect("the server closed the connection");
            let message: Value = serde_json::from_str(&line).unwrap();
            if message["id"] == json!(id) {
                return message;
            }
            if message.get("id").is_none() {
                self.notifications.push(message);
            }
        }
    }

    async fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.start(method, params).await;
        self.answer(id).await
    }

    async fn call(&mut self, tool: &str, arguments: Value) -> Value {
        self.request("tools/call", json!({"name": tool, "arguments": arguments})).await
    }

    /// The JSON-RPC error of a call that must fail with one.
    async fn call_error(&mut self, tool: &str, arguments: Value) -> (i64, String) {
        let answer = self.call(tool, arguments.clone()).await;
        let error = answer.get("error").unwrap_or_else(|| panic!("{tool} {arguments}: no error: {answer}"));
        (error["code"].as_i64().unwrap(), error["message"].as_str().unwrap().to_owned())
    }

    async fn close(self) {
        self.host.shutdown().await.unwrap();
    }
}

fn text(answer: &Value) -> String {
    answer["result"]["content"]
        .as_array()
        .unwrap_or_else(|| panic!("no content: {answer}"))
        .iter()
        .filter_map(|b| b["text"].as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_are_mcp_errors_naming_the_argument() {
    let mut conn = Conn::open().await;
    const INVALID_PARAMS: i64 = -32602;
    let cases = [
        ("execute", json!({}), "missing field `code`"),
        ("execute", json!({"code": 5}), "argument `code`: invalid type: integer `5`, expected a string"),
        ("execute", json!({"code": "1", "timeout": "soon"}), "argument `timeout`"),
        ("execute", json!({"code": "1", "timeout": 100000}), "argument `timeout`: 100000 is not"),
        ("execute", json!({"code": "1", "timeout": -1}), "argument `timeout`"),
        ("execute", json!({"code": "1", "colour": "red"}), "unknown field `colour`"),
        ("shell_execute", json!({"command": ["ls"]}), "argument `command`"),
        ("write_file", json!({"path": "a", "content": "%%%", "encoding": "base64"}), "argument `content`: not base64"),
        ("write_file", json!({"path": "a", "content": "x", "encoding": "utf16"}), "argument `encoding`"),
        ("read_file", json!({"path": "a", "max_bytes": 0}), "argument `max_bytes`"),
        ("list_files", json!({"max_entries": 1_000_000}), "argument `max_entries`"),
        ("list_files", json!({"recursive": "yes"}), "argument `recursive`"),
        ("install_packages", json!({"packages": []}), "argument `packages`"),
        ("install_packages", json!({"packages": "numpy"}), "argument `packages`"),
        ("cleanup_artifacts", json!({"paths": [1]}), "argument `paths[0]`"),
    ];
    for (tool, arguments, expected) in cases {
        let (code, message) = conn.call_error(tool, arguments.clone()).await;
        assert_eq!(code, INVALID_PARAMS, "{tool} {arguments}: {message}");
        assert!(message.contains(expected), "{tool} {arguments}: {message:?} lacks {expected:?}");
        assert!(message.starts_with(tool), "{message}");
    }
    let (_, message) = conn.call_error("no_such_tool", json!({})).await;
    assert!(message.contains("no_such_tool"), "{message}");
    // A server over one box offers no session tools.
    let (_, message) = conn.call_error("create_session", json!({})).await;
    assert!(message.contains("create_session"), "{message}");
    // After all that the server still answers.
    let ok = conn.call("execute", json!({"code": "print(2 + 2)"})).await;
    assert_eq!(ok["result"]["structuredContent"]["stdout"], "4\n", "{ok}");
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_listings_and_images_are_capped_with_a_note() {
    let mut conn = Conn::open().await;
    let big = conn.call("execute", json!({"code": "print('a' * 50000 + 'b' * 50000)"})).await;
    let shown = text(&big);
    assert!(shown.chars().count() < MAX_TEXT_CHARS + 200, "{} characters", shown.chars().count());
    assert!(shown.starts_with("aaaa") && shown.trim_end().ends_with("bbbb"), "head and tail are kept");
    assert!(shown.contains("characters cut of 100001"), "the note says what was cut");
    let stdout = big["result"]["structuredContent"]["stdout"].as_str().unwrap();
    assert!(stdout.chars().count() < MAX_TEXT_CHARS + 200, "the structured stdout is capped too");

    let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";
    let code = format!(
        "from IPython.display import display, Image\nimport base64\n\
         for _ in range(6): display(Image(data=base64.b64decode('{png}'), format='png'))"
    );
    let images = conn.call("execute", json!({"code": code})).await;
    let blocks = images["result"]["content"].as_array().unwrap();
    assert_eq!(blocks.iter().filter(|b| b["type"] == "image").count(), MAX_IMAGES, "{images}");
    assert!(text(&images).contains("2 image(s) not returned"), "{}", text(&images));

    let made = conn
        .call(
            "execute",
            json!({"code": "import os\nos.makedirs('many')\nfor i in range(1500): open(f'many/{i:04}', 'w')"}),
        )
        .await;
    assert_eq!(made["result"]["isError"], false, "{made}");
    let listed = conn.call("list_files", json!({"path": "many"})).await;
    let s = &listed["result"]["structuredContent"];
    assert_eq!(s["entries"].as_array().unwrap().len(), 1000);
    assert_eq!((s["total_entries"].as_u64(), s["truncated"].as_bool()), (Some(1500), Some(true)));
    assert!(text(&listed).contains("1000 of 1500 entries shown"));
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_file_asked_as_text_is_refused_with_its_size_and_type() {
    let mut conn = Conn::open().await;
    let wrote = conn
        .call("write_file", json!({"path": "doc.pdf", "content": "JVBERi0xLjQKAAECAw==", "encoding": "base64"}))
        .await;
    assert_eq!(wrote["result"]["structuredContent"]["size"], 13, "{wrote}");
    let read = conn.call("read_file", json!({"path": "doc.pdf"})).await;
    assert_eq!(read["result"]["isError"], true);
    let message = text(&read);
    assert!(message.contains("binary file (application/pdf, 13 bytes)"), "{message}");
    // Text past max_bytes is cut with a note, never split inside a character.
    conn.call("write_file", json!({"path": "t.txt", "content": "ééééé"})).await;
    let cut = conn.call("read_file", json!({"path": "t.txt", "max_bytes": 5})).await;
    assert_eq!(cut["result"]["structuredContent"]["content"], "éé", "{cut}");
    assert_eq!(cut["result"]["structuredContent"]["truncated"], true);
    let missing = conn.call("read_file", json!({"path": "nope.txt"})).await;
    assert_eq!(missing["result"]["isError"], true, "a missing file is the tool's error, for the model to read");
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_call_interrupts_the_kernel() {
    let mut conn = Conn::open().await;
    let code = "import time\nprint('started', flush=True)\ntime.sleep(120)\nfinished = True";
    let id = conn
        .start("tools/call", json!({"name": "execute", "arguments": {"code": code}, "_meta": {"progressToken": "p1"}}))
        .await;
    // Wait for the code's first output, sent as progress, before cancelling.
    while !conn.notifications.iter().any(|n| n["params"]["message"].as_str().is_some_and(|m| m.contains("started"))) {
        let line = conn.lines.next_line().await.unwrap().expect("open");
        let message: Value = serde_json::from_str(&line).unwrap();
        assert!(message["id"] != json!(id), "the call ended before it was cancelled: {message}");
        conn.notifications.push(message);
    }
    conn.send(json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": id}})).await;
    // The kernel is free again at once (else this waits for the sleep) and never ran the rest.
    let after = conn.call("execute", json!({"code": "print('finished' in dir())"})).await;
    assert_eq!(after["result"]["structuredContent"]["stdout"], "False\n", "{after}");
    conn.close().await;
}
