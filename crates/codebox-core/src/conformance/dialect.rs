//! The snippets the conformance suite's language-neutral checks run, per language: Python
//! (the suite's own), and JavaScript and TypeScript for Deno's kernel.

/// The code the language-neutral checks run, in one language. Each snippet says what it must
/// do; [`python`](Self::python), [`javascript`](Self::javascript) and
/// [`typescript`](Self::typescript) are complete, and a backend of another language fills in
/// its own.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Dialect {
    /// The language, as `RunOptions::language` names it (the checks send code unnamed, in
    /// the box's own language; this is for reports).
    pub language: String,
    /// Whether the Python-only checks (matplotlib's figures) run too.
    pub python: bool,
    /// How a string value is shown as a cell's result: `'` in Python, `"` in JavaScript.
    pub string_quote: char,
    /// Sets `conformance_x` to 41.
    pub set_x: String,
    /// An expression whose value is `conformance_x + 1`.
    pub x_plus_one: String,
    /// Prints `one` to stdout, `two` to stderr, then `three` to stdout, each line flushed.
    pub print_one_two_three: String,
    /// Prints `streamed` to stdout.
    pub print_streamed: String,
    /// Defines a function `conformance_boom` that raises, and calls it.
    pub raise_in_function: String,
    /// The error's name that [`raise_in_function`](Self::raise_in_function) raises.
    pub raised_name: String,
    /// A part of that error's message.
    pub raised_value_part: String,
    /// Displays one raw bundle: `text/html` `<b>bold</b>`, `text/plain` `bold` and
    /// `application/json` `{"k": [1, 2]}`, with no result.
    pub display_bundle: String,
    /// Three times: displays `shown {i}` as `text/plain`, prints `printed {i}`; then has the
    /// string `last value` as the cell's result.
    pub display_three_then_value: String,
    /// Prints the content of `conformance/hello.txt` followed by a newline.
    pub print_hello_file: String,
    /// Writes `made by code` to `conformance/made.txt`, making the directory.
    pub write_made_file: String,
    /// Prints whether `../conformance-escape.txt` and `/tmp/conformance-escape.txt` exist, as
    /// `True` or `False` separated by a space.
    pub print_escapes_exist: String,
    /// Makes the symlinks `conformance/etc-link` -> `/etc` and `conformance/passwd-link` ->
    /// `/etc/passwd` unless they exist (making the directory).
    pub make_symlinks: String,
    /// Prints whether `/etc/conformance-escape` exists, as `True` or `False`.
    pub print_etc_escape_exists: String,
    /// Sets `conformance_kept` to the string `still here`.
    pub set_kept: String,
    /// Prints `sleeping` (flushed), then runs for 60 seconds.
    pub print_sleeping_then_wait: String,
    /// Prints `waiting` (flushed), then runs for 60 seconds.
    pub print_waiting_then_wait: String,
    /// Sets `conformance_gone` to 1.
    pub set_gone: String,
    /// The error's name when code reads a name that is not defined.
    pub undefined_name_error: String,
    /// Sets `conformance_ctx` to 7 (the code-context check reads it back as `conformance_ctx`).
    pub set_context_value: String,
    /// Starts, in the background (the cell returns at once), an HTTP server of the working
    /// directory's files on `127.0.0.1:{port}` (`{port}` is replaced by the port), as
    /// `conformance_server`, replacing one that runs already.
    pub serve_files: String,
    /// Stops the server [`serve_files`](Self::serve_files) started.
    pub stop_serving: String,
    /// Writes `first` to `conformance-artifact.txt` and `second` to
    /// `conformance-artifacts/inner.txt`, making the directory.
    pub write_two_artifacts: String,
    /// Appends ` more` to `conformance-artifact.txt`.
    pub append_artifact: String,
}

impl Default for Dialect {
    fn default() -> Self {
        Self::python()
    }
}

impl Dialect {
    /// Python, on an IPython kernel: the suite's own language.
    pub fn python() -> Self {
        Self {
            language: "python".into(),
            python: true,
            string_quote: '\'',
            set_x: "conformance_x = 41".into(),
            x_plus_one: "conformance_x + 1".into(),
            print_one_two_three: "import sys\nprint('one', flush=True)\nprint('two', file=sys.stderr, flush=True)\nprint('three', flush=True)".into(),
            print_streamed: "print('streamed')".into(),
            raise_in_function: "def conformance_boom():\n    return 1 / 0\nconformance_boom()".into(),
            raised_name: "ZeroDivisionError".into(),
            raised_value_part: "division".into(),
            display_bundle: "from IPython.display import display\n\
                display({'text/html': '<b>bold</b>', 'text/plain': 'bold', 'application/json': {'k': [1, 2]}}, raw=True)"
                .into(),
            display_three_then_value: "from IPython.display import display\n\
                for i in range(3):\n    display({'text/plain': f'shown {i}'}, raw=True)\n    print(f'printed {i}', flush=True)\n\
                'last value'"
                .into(),
            print_hello_file: "print(open('conformance/hello.txt').read())".into(),
            write_made_file: "import os\nos.makedirs('conformance', exist_ok=True)\nopen('conformance/made.txt', 'w').write('made by code')".into(),
            print_escapes_exist: "import os\nprint(os.path.exists('../conformance-escape.txt'), os.path.exists('/tmp/conformance-escape.txt'))".into(),
            make_symlinks: "import os\nos.makedirs('conformance', exist_ok=True)\n\
                for name, target in [('conformance/etc-link', '/etc'), ('conformance/passwd-link', '/etc/passwd')]:\n    \
                if not os.path.lexists(name):\n        os.symlink(target, name)"
                .into(),
            print_etc_escape_exists: "import os\nprint(os.path.exists('/etc/conformance-escape'))".into(),
            set_kept: "conformance_kept = 'still here'".into(),
            print_sleeping_then_wait: "import time\nprint('sleeping', flush=True)\ntime.sleep(60)".into(),
            print_waiting_then_wait: "import time\nprint('waiting', flush=True)\ntime.sleep(60)".into(),
            set_gone: "conformance_gone = 1".into(),
            undefined_name_error: "NameError".into(),
            set_context_value: "conformance_ctx = 7".into(),
            serve_files: "import subprocess, sys\n\
                try:\n    conformance_server.kill()\nexcept NameError:\n    pass\n\
                conformance_server = subprocess.Popen([sys.executable, '-m', 'http.server', '{port}', '--bind', '127.0.0.1'], \
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)"
                .into(),
            stop_serving: "conformance_server.kill()\nconformance_server.wait()".into(),
            write_two_artifacts: "import os\nopen('conformance-artifact.txt', 'w').write('first')\n\
                os.makedirs('conformance-artifacts', exist_ok=True)\n\
                open('conformance-artifacts/inner.txt', 'w').write('second')"
                .into(),
            append_artifact: "open('conformance-artifact.txt', 'a').write(' more')".into(),
        }
    }

    /// JavaScript, on Deno's Jupyter kernel (`Deno.jupyter.display` for rich output, Deno's
    /// file API for files).
    pub fn javascript() -> Self {
        // A path's existence as Python prints it.
        fn exists(path: &str) -> String {
            format!("(() => {{ try {{ Deno.statSync('{path}'); return 'True'; }} catch {{ return 'False'; }} }})()")
        }
        let busy = |word: &str| {
            format!(
                "console.log('{word}');\n\
                 {{ const conformance_end = Date.now() + 60000; while (Date.now() < conformance_end) {{}} }}"
            )
        };
        Self {
            language: "javascript".into(),
            python: false,
            string_quote: '"',
            set_x: "var conformance_x = 41".into(),
            x_plus_one: "conformance_x + 1".into(),
            print_one_two_three: "console.log('one');\nconsole.error('two');\nconsole.log('three')".into(),
            print_streamed: "console.log('streamed')".into(),
            raise_in_function: "function conformance_boom() {\n  throw new RangeError('out of range');\n}\nconformance_boom()".into(),
            raised_name: "RangeError".into(),
            raised_value_part: "out of range".into(),
            display_bundle: "await Deno.jupyter.display(\
                {'text/html': '<b>bold</b>', 'text/plain': 'bold', 'application/json': {k: [1, 2]}}, {raw: true})"
                .into(),
            display_three_then_value: "for (let i = 0; i < 3; i++) {\n\
                  await Deno.jupyter.display({'text/plain': `shown ${i}`}, {raw: true});\n\
                  console.log(`printed ${i}`);\n\
                }\n\
                'last value'"
                .into(),
            print_hello_file: "console.log(Deno.readTextFileSync('conformance/hello.txt'))".into(),
            write_made_file: "Deno.mkdirSync('conformance', {recursive: true});\n\
                Deno.writeTextFileSync('conformance/made.txt', 'made by code')"
                .into(),
            print_escapes_exist: format!(
                "console.log({}, {})",
                exists("../conformance-escape.txt"),
                exists("/tmp/conformance-escape.txt")
            ),
            make_symlinks: "Deno.mkdirSync('conformance', {recursive: true});\n\
                for (const [name, target] of [['conformance/etc-link', '/etc'], ['conformance/passwd-link', '/etc/passwd']]) {\n\
                  try { Deno.lstatSync(name); } catch { Deno.symlinkSync(target, name); }\n\
                }"
            .into(),
            print_etc_escape_exists: format!("console.log({})", exists("/etc/conformance-escape")),
            set_kept: "var conformance_kept = 'still here'".into(),
            print_sleeping_then_wait: busy("sleeping"),
            print_waiting_then_wait: busy("waiting"),
            set_gone: "var conformance_gone = 1".into(),
            undefined_name_error: "ReferenceError".into(),
            set_context_value: "var conformance_ctx = 7".into(),
            serve_files: "try { await conformance_server.shutdown(); } catch {}\n\
                var conformance_server = Deno.serve({port: {port}, hostname: '127.0.0.1', onListen() {}}, \
                async (req) => new Response(await Deno.readFile('.' + decodeURIComponent(new URL(req.url).pathname))))"
                .into(),
            stop_serving: "await conformance_server.shutdown()".into(),
            write_two_artifacts: "Deno.writeTextFileSync('conformance-artifact.txt', 'first');\n\
                Deno.mkdirSync('conformance-artifacts', {recursive: true});\n\
                Deno.writeTextFileSync('conformance-artifacts/inner.txt', 'second')"
                .into(),
            append_artifact: "Deno.writeTextFileSync('conformance-artifact.txt', ' more', {append: true})".into(),
        }
    }

    /// TypeScript, on Deno's Jupyter kernel: the JavaScript snippets, with typed declarations
    /// and a typed function.
    pub fn typescript() -> Self {
        Self {
            language: "typescript".into(),
            set_x: "var conformance_x: number = 41".into(),
            raise_in_function:
                "function conformance_boom(): never {\n  throw new RangeError('out of range');\n}\nconformance_boom()"
                    .into(),
            set_kept: "var conformance_kept: string = 'still here'".into(),
            set_gone: "var conformance_gone: number = 1".into(),
            set_context_value: "var conformance_ctx: number = 7".into(),
            ..Self::javascript()
        }
    }

    /// `text` as the result of a cell shows it.
    pub(super) fn quoted(&self, text: &str) -> String {
        format!("{q}{text}{q}", q = self.string_quote)
    }
}
