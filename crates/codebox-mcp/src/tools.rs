//! The tools themselves: each parses its arguments, leases its session's box from the host
//! and turns what the box says into an MCP result. A box's refusal (a missing file, a
//! package pip cannot find) is a tool error the model reads; bad arguments are an MCP error.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use codebox_core::{CodeBoxError, CommandSpec, ExecEvent, Execution, FileInfo, RunOptions};
use futures::StreamExt;
use rmcp::model::{CallToolRequestParams, CallToolResult, ContentBlock, ProgressNotificationParam};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer};
use serde_json::{Value, json};

use crate::args::{self, parse};
use crate::host::{CallContext, Lease, NewSession, SessionHost};
use crate::output::{self, MAX_TEXT_CHARS, cap_text, failure, structured};

/// What `read_file` returns of a text file when the call does not say.
pub const DEFAULT_READ_BYTES: u64 = 256 * 1024;
/// The most `read_file` returns of a text file.
pub const MAX_READ_BYTES: u64 = 4 * 1024 * 1024;
/// What `list_files` returns when the call does not say.
pub const DEFAULT_LIST_ENTRIES: u64 = 1000;
/// The most entries `list_files` returns.
pub const MAX_LIST_ENTRIES: u64 = 10_000;
/// The most artifacts listed.
const MAX_ARTIFACTS: usize = 1000;

/// Run the tool `request` names.
pub(crate) async fn call(
    host: &dyn SessionHost,
    call: &CallContext<'_>,
    request: &CallToolRequestParams,
    context: &RequestContext<RoleServer>,
) -> Result<CallToolResult, ErrorData> {
    let name = request.name.as_ref();
    let arguments = request.arguments.clone();
    Ok(match name {
        "execute" => execute(host, call, parse(name, arguments)?, context).await?,
        "shell_execute" => shell_execute(host, call, parse(name, arguments)?).await?,
        "write_file" => write_file(host, call, parse(name, arguments)?).await?,
        "read_file" => read_file(host, call, parse(name, arguments)?).await?,
        "list_files" => list_files(host, call, parse(name, arguments)?).await?,
        "delete_file" => {
            let a: args::DeleteFile = parse(name, arguments)?;
            with_box(host, call, a.session_id.as_deref(), |lease| async move {
                lease.codebox.delete_file(&a.path).await?;
                Ok(structured(&format!("deleted {}", a.path), json!({"path": a.path, "deleted": true}), false))
            })
            .await
        }
        "install_packages" => {
            let a: args::InstallPackages = parse(name, arguments)?;
            if a.packages.is_empty() || a.packages.iter().any(|p| p.trim().is_empty()) {
                return Err(ErrorData::invalid_params(
                    "install_packages: argument `packages`: name at least one package, none empty",
                    None,
                ));
            }
            with_box(host, call, a.session_id.as_deref(), |lease| async move {
                let log = lease.codebox.install(&a.packages).await?;
                let log = cap_text(&log, MAX_TEXT_CHARS);
                Ok(structured(&log, json!({"installed": a.packages, "output": log}), false))
            })
            .await
        }
        "restart" => {
            let a: args::SessionOnly = parse(name, arguments)?;
            with_box(host, call, a.session_id.as_deref(), |lease| async move {
                lease.codebox.restart().await?;
                let text = "the kernel restarted: variables and imports are gone; files stay";
                Ok(structured(text, json!({"session_id": lease.id, "restarted": true}), false))
            })
            .await
        }
        "list_artifacts" => {
            let a: args::SessionOnly = parse(name, arguments)?;
            with_box(host, call, a.session_id.as_deref(), |lease| async move {
                let (files, truncated) = artifacts(&lease).await?;
                let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
                let text = if paths.is_empty() {
                    "no files were created or changed since the session started".to_owned()
                } else {
                    paths.join("\n")
                };
                let entries: Vec<Value> = files.iter().map(entry).collect();
                Ok(structured(&text, json!({"artifacts": entries, "truncated": truncated}), false))
            })
            .await
        }
        "cleanup_artifacts" => {
            let a: args::CleanupArtifacts = parse(name, arguments)?;
            with_box(host, call, a.session_id.as_deref(), |lease| async move {
                let (files, _) = artifacts(&lease).await?;
                let chosen: Vec<String> = match &a.paths {
                    Some(paths) => {
                        if let Some(stranger) = paths.iter().find(|p| !files.iter().any(|f| &f.path == *p)) {
                            return Ok(failure(format!(
                                "{stranger} is not an artifact of this session (see list_artifacts)"
                            )));
                        }
                        paths.clone()
                    }
                    None => files.iter().map(|f| f.path.clone()).collect(),
                };
                for path in &chosen {
                    lease.codebox.delete_file(path).await?;
                }
                let text = format!("deleted {} artifact(s)", chosen.len());
                Ok(structured(&text, json!({"deleted": chosen}), false))
            })
            .await
        }
        "get_execution_info" => {
            let a: args::SessionOnly = parse(name, arguments)?;
            with_box(host, call, a.session_id.as_deref(), |lease| async move { execution_info(&lease).await }).await
        }
        "create_session" => {
            let a: args::CreateSession = parse(name, arguments)?;
            let request =
                NewSession { language: a.language, template: a.template, env: a.env, timeout_secs: a.timeout_secs };
            match host.create(call, request).await {
                Ok(s) => {
                    let value = serde_json::to_value(&s).unwrap_or(Value::Null);
                    structured(&format!("created session {}", s.session_id), value, false)
                }
                Err(e) => failure(e.to_string()),
            }
        }
        "list_sessions" => {
            let _: args::NoArgs = parse(name, arguments)?;
            match host.list(call).await {
                Ok(sessions) => {
                    let text = if sessions.is_empty() {
                        "no sessions".to_owned()
                    } else {
                        sessions
                            .iter()
                            .map(|s| format!("{} ({})", s.session_id, s.state))
                            .collect::<Vec<_>>()
                            .join("\n")
                    };
                    structured(&text, json!({"sessions": sessions}), false)
                }
                Err(e) => failure(e.to_string()),
            }
        }
        "close_session" => {
            let a: args::CloseSession = parse(name, arguments)?;
            match host.close(call, &a.session_id).await {
                Ok(()) => structured(
                    &format!("closed session {}", a.session_id),
                    json!({"session_id": a.session_id, "closed": true}),
                    false,
                ),
                Err(e) => failure(e.to_string()),
            }
        }
        other => return Err(ErrorData::invalid_params(format!("no tool named `{other}`"), None)),
    })
}

/// Lease the session's box and run `f` on it; a box's error becomes a tool error.
async fn with_box<F, Fut>(host: &dyn SessionHost, call: &CallContext<'_>, session: Option<&str>, f: F) -> CallToolResult
where
    F: FnOnce(Lease) -> Fut,
    Fut: Future<Output = Result<CallToolResult, CodeBoxError>>,
{
    match host.get(call, session).await {
        Ok(lease) => f(lease).await.unwrap_or_else(|e| failure(e.to_string())),
        Err(e) => failure(e.to_string()),
    }
}

async fn execute(
    host: &dyn SessionHost,
    call: &CallContext<'_>,
    a: args::Execute,
    context: &RequestContext<RoleServer>,
) -> Result<CallToolResult, ErrorData> {
    let timeout = args::timeout("execute", a.timeout)?;
    let lease = match host.get(call, a.session_id.as_deref()).await {
        Ok(lease) => lease,
        Err(e) => return Ok(failure(e.to_string())),
    };
    let mut options = RunOptions::new().with_timeout(timeout);
    if let Some(language) = &a.language {
        options = options.with_language(language.clone());
    }
    if let Some(ctx) = &a.context {
        options = options.with_context(ctx.clone());
    }
    let stream = match lease.codebox.run_stream(&a.code, options).await {
        Ok(s) => s,
        Err(e) => return Ok(failure(e.to_string())),
    };
    let progress = context.meta.get_progress_token();
    let mut events = Vec::new();
    let mut end = None;
    let mut stream = stream;
    let mut step = 0u32;
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            () = context.ct.cancelled() => {
                // The client gave up on the call: the code must not run on unseen.
                let interrupted = match &a.context {
                    Some(ctx) => lease.codebox.interrupt_context(ctx).await,
                    None => lease.codebox.interrupt().await,
                };
                if let Err(e) = interrupted {
                    tracing::warn!(session = %lease.id, error = %e, "interrupting a cancelled execution failed");
                }
                return Ok(failure("the execution was cancelled and interrupted"));
            }
        };
        match next {
            None => break,
            Some(Err(e)) => return Ok(failure(e.to_string())),
            Some(Ok(event)) => {
                if let (Some(token), ExecEvent::Stdout { text } | ExecEvent::Stderr { text }) = (&progress, &event) {
                    step += 1;
                    let note =
                        ProgressNotificationParam::new(token.clone(), f64::from(step)).with_message(text.clone());
                    // A client that stopped listening for progress does not stop the execution.
                    let _ = context.peer.notify_progress(note).await;
                }
                if event.is_end() {
                    end = Some(event);
                    break;
                }
                events.push(event);
            }
        }
    }
    let Some(ex) = end.and_then(|end| Execution::finished(events, end)) else {
        return Ok(failure("the box ended the execution's stream without saying how it ended"));
    };
    Ok(output::execution_result(&lease.id, &ex))
}

async fn shell_execute(
    host: &dyn SessionHost,
    call: &CallContext<'_>,
    a: args::ShellExecute,
) -> Result<CallToolResult, ErrorData> {
    let timeout = args::timeout("shell_execute", a.timeout)?;
    Ok(with_box(host, call, a.session_id.as_deref(), |lease| async move {
        let mut spec = CommandSpec::new("bash").args(["-c", a.command.as_str()]).with_timeout(timeout);
        if let Some(cwd) = &a.cwd {
            spec = spec.with_cwd(cwd.clone());
        }
        let out = lease.codebox.run_command(spec).await?;
        let mut text = out.stdout.clone();
        if !out.stderr.is_empty() {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&out.stderr);
        }
        if out.timed_out {
            text.push_str("[the command timed out and was killed]\n");
        } else if let Some(code) = out.exit_code.filter(|c| *c != 0) {
            text.push_str(&format!("[exit code {code}]\n"));
        }
        let value = json!({
            "session_id": lease.id,
            "exit_code": out.exit_code,
            "stdout": cap_text(&out.stdout, MAX_TEXT_CHARS),
            "stderr": cap_text(&out.stderr, MAX_TEXT_CHARS),
            "timed_out": out.timed_out,
        });
        Ok(structured(&text, value, !out.success()))
    })
    .await)
}

async fn write_file(
    host: &dyn SessionHost,
    call: &CallContext<'_>,
    a: args::WriteFile,
) -> Result<CallToolResult, ErrorData> {
    let bytes = match a.encoding {
        args::Encoding::Utf8 => Bytes::from(a.content.into_bytes()),
        args::Encoding::Base64 => match base64::engine::general_purpose::STANDARD.decode(a.content.trim()) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                return Err(ErrorData::invalid_params(
                    format!("write_file: argument `content`: not base64 ({e})"),
                    None,
                ));
            }
        },
    };
    Ok(with_box(host, call, a.session_id.as_deref(), |lease| async move {
        let stream: codebox_core::ByteStream = Box::pin(futures::stream::once(async move { Ok(bytes) }));
        let info = lease.codebox.upload(&a.path, stream).await?;
        Ok(structured(
            &format!("wrote {} ({} bytes)", info.path, info.size),
            json!({"path": info.path, "size": info.size}),
            false,
        ))
    })
    .await)
}

/// The type of a file from its first bytes, else its name.
fn sniff(path: &str, head: &[u8]) -> &'static str {
    const MAGIC: &[(&[u8], &str)] = &[
        (b"\x89PNG\r\n\x1a\n", "image/png"),
        (b"\xff\xd8\xff", "image/jpeg"),
        (b"GIF87a", "image/gif"),
        (b"GIF89a", "image/gif"),
        (b"%PDF-", "application/pdf"),
        (b"PK\x03\x04", "application/zip"),
        (b"\x1f\x8b", "application/gzip"),
        (b"\x7fELF", "application/x-executable"),
    ];
    if let Some((_, mime)) = MAGIC.iter().find(|(magic, _)| head.starts_with(magic)) {
        return mime;
    }
    if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        return "image/webp";
    }
    let lower = path.to_ascii_lowercase();
    match lower.rsplit_once('.').map(|(_, ext)| ext) {
        Some("parquet") => "application/vnd.apache.parquet",
        Some("npy") => "application/x-npy",
        Some("pkl" | "pickle") => "application/x-pickle",
        Some("xlsx") => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        _ => "application/octet-stream",
    }
}

async fn read_file(
    host: &dyn SessionHost,
    call: &CallContext<'_>,
    a: args::ReadFile,
) -> Result<CallToolResult, ErrorData> {
    let max = a.max_bytes.unwrap_or(DEFAULT_READ_BYTES);
    if max == 0 || max > MAX_READ_BYTES {
        return Err(ErrorData::invalid_params(
            format!("read_file: argument `max_bytes`: {max} is not between 1 and {MAX_READ_BYTES}"),
            None,
        ));
    }
    Ok(with_box(host, call, a.session_id.as_deref(), |lease| async move {
        let info = lease.codebox.stat(&a.path).await?;
        if info.is_dir {
            return Ok(failure(format!("{} is a directory; use list_files", a.path)));
        }
        // An image is returned whole (within the image cap); text within `max`.
        let limit = (max as usize).max(output::MAX_IMAGE_BYTES) + 1;
        let mut stream = lease.codebox.download(&a.path).await?;
        let mut data = Vec::new();
        while let Some(chunk) = stream.next().await {
            data.extend_from_slice(&chunk?);
            if data.len() >= limit {
                break;
            }
        }
        drop(stream);
        let mime = sniff(&a.path, &data);
        if mime.starts_with("image/") {
            if info.size as usize > output::MAX_IMAGE_BYTES {
                return Ok(failure(format!(
                    "{} is an image ({mime}) of {} bytes, over the {} bytes an image may have here",
                    a.path,
                    info.size,
                    output::MAX_IMAGE_BYTES
                )));
            }
            let mut result = CallToolResult::success(vec![ContentBlock::image(
                base64::engine::general_purpose::STANDARD.encode(&data),
                mime,
            )]);
            result.structured_content = Some(json!({"path": a.path, "size": info.size, "mime_type": mime}));
            return Ok(result);
        }
        let cut = data.len().min(max as usize);
        let text = match std::str::from_utf8(&data[..cut]) {
            Ok(t) => t,
            // A cut in the middle of a character: the valid part before it.
            Err(e) if e.error_len().is_none() => std::str::from_utf8(&data[..e.valid_up_to()]).unwrap_or_default(),
            Err(_) => "\0",
        };
        if text.contains('\0') || mime != "application/octet-stream" {
            let mime = if mime == "application/octet-stream" { "binary data" } else { mime };
            return Ok(failure(format!(
                "{} is a binary file ({mime}, {} bytes); read_file returns text and images only \
                 (use shell_execute to inspect it)",
                a.path, info.size
            )));
        }
        let truncated = (info.size as usize) > text.len();
        let mut shown = text.to_owned();
        if truncated {
            shown.push_str(&format!(
                "\n[... cut: {} of {} bytes shown; raise max_bytes to see more]",
                text.len(),
                info.size
            ));
        }
        Ok(structured(
            &shown,
            json!({"path": a.path, "size": info.size, "content": text, "truncated": truncated}),
            false,
        ))
    })
    .await)
}

fn unix_secs(t: Option<SystemTime>) -> Option<f64> {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs_f64())
}

fn entry(f: &FileInfo) -> Value {
    json!({"path": f.path, "name": f.name, "size": f.size, "is_dir": f.is_dir, "modified": unix_secs(f.modified)})
}

async fn list_files(
    host: &dyn SessionHost,
    call: &CallContext<'_>,
    a: args::ListFiles,
) -> Result<CallToolResult, ErrorData> {
    let max = a.max_entries.unwrap_or(DEFAULT_LIST_ENTRIES);
    if max == 0 || max > MAX_LIST_ENTRIES {
        return Err(ErrorData::invalid_params(
            format!("list_files: argument `max_entries`: {max} is not between 1 and {MAX_LIST_ENTRIES}"),
            None,
        ));
    }
    let dir = a.path.clone().unwrap_or_else(|| ".".to_owned());
    Ok(with_box(host, call, a.session_id.as_deref(), |lease| async move {
        let mut files = lease.codebox.list_files(&dir, a.recursive).await?;
        files.sort_by(|x, y| x.path.cmp(&y.path));
        let total = files.len();
        let truncated = total as u64 > max;
        files.truncate(max as usize);
        let mut text: String = files
            .iter()
            .map(|f| if f.is_dir { format!("{}/", f.path) } else { format!("{} ({} bytes)", f.path, f.size) })
            .collect::<Vec<_>>()
            .join("\n");
        if truncated {
            text.push_str(&format!(
                "\n[{} of {total} entries shown; raise max_entries or list a subdirectory]",
                files.len()
            ));
        }
        let entries: Vec<Value> = files.iter().map(entry).collect();
        Ok(structured(&text, json!({"entries": entries, "total_entries": total, "truncated": truncated}), false))
    })
    .await)
}

/// The files of the box created or changed since its session started, and whether there
/// were more than [`MAX_ARTIFACTS`].
async fn artifacts(lease: &Lease) -> Result<(Vec<FileInfo>, bool), CodeBoxError> {
    let mut files: Vec<FileInfo> = lease
        .codebox
        .list_files(".", true)
        .await?
        .into_iter()
        .filter(|f| !f.is_dir && f.modified.is_some_and(|m| m >= lease.started_at))
        .collect();
    files.sort_by(|x, y| x.path.cmp(&y.path));
    let truncated = files.len() > MAX_ARTIFACTS;
    files.truncate(MAX_ARTIFACTS);
    Ok((files, truncated))
}

/// The most packages `get_execution_info` lists.
const MAX_PACKAGES: usize = 500;

async fn execution_info(lease: &Lease) -> Result<CallToolResult, CodeBoxError> {
    let b = &lease.codebox;
    let status = b.status().await?;
    let capabilities = b.capabilities();
    let mut packages = Vec::new();
    if capabilities.packages
        && let Ok(list) = b.packages().await
    {
        packages = list.into_iter().take(MAX_PACKAGES).map(|p| json!({"name": p.name, "version": p.version})).collect();
    }
    let mut versions = serde_json::Map::new();
    if capabilities.commands {
        for (language, program, arg) in [("python", "python3", "--version"), ("bash", "bash", "--version")] {
            if let Ok(out) = b.run_command(CommandSpec::new(program).arg(arg)).await
                && out.success()
            {
                let first = format!("{}{}", out.stdout, out.stderr);
                versions
                    .insert(language.to_owned(), Value::String(first.lines().next().unwrap_or("").trim().to_owned()));
            }
        }
    }
    let value = json!({
        "session_id": lease.id,
        "status": status,
        "capabilities": capabilities,
        "language_versions": versions,
        "packages": packages,
        "session": lease.details,
    });
    let mut text = format!(
        "session {}: {:?}, kernel {}, isolation {}",
        lease.id,
        status.state,
        status.kernel.as_deref().unwrap_or("unknown"),
        status.isolation.as_deref().unwrap_or("unknown"),
    );
    for (language, version) in &versions {
        text.push_str(&format!("\n{language}: {}", version.as_str().unwrap_or("")));
    }
    text.push_str(&format!("\n{} packages installed", packages.len()));
    Ok(structured(&text, value, false))
}
