// Starts Deno's Jupyter kernel for codebox (see deno.rs): `deno eval <this> CONNECTION_FILE`.
//
// Deno's kernel listens only on TCP. Where codebox reaches kernels over Unix sockets (inside
// bubblewrap, whose private network namespace TCP cannot leave), this script gives the kernel
// a TCP connection file of its own on the sandbox's loopback and carries each channel's
// bytes between the Unix socket codebox expects and the kernel's port. ZeroMQ's wire
// protocol is the same over either, so the bytes pass unchanged. Over TCP the kernel takes
// codebox's file as it is. The script exits as the kernel does, with its status.
const connectionFile = Deno.args[0];
const connection = JSON.parse(Deno.readTextFileSync(connectionFile));
const channels = ["shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"];

// Ports free on the sandbox's loopback, distinct: every listener stays open until all are
// chosen, or the system could hand out one port twice.
function freePorts(count) {
  const listeners = Array.from({ length: count }, () => Deno.listen({ hostname: "127.0.0.1", port: 0 }));
  const ports = listeners.map((listener) => listener.addr.port);
  for (const listener of listeners) listener.close();
  return ports;
}

// The kernel opens its ports a moment after it starts: retry until it listens.
async function connectKernel(port) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await Deno.connect({ hostname: "127.0.0.1", port });
    } catch (error) {
      if (attempt > 600) throw error;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}

async function carry(client, port) {
  let kernel;
  try {
    kernel = await connectKernel(port);
  } catch {
    client.close();
    return;
  }
  // Either side closing ends both directions.
  await Promise.race([
    client.readable.pipeTo(kernel.writable).catch(() => {}),
    kernel.readable.pipeTo(client.writable).catch(() => {}),
  ]);
  for (const end of [client, kernel]) {
    try {
      end.close();
    } catch {
      // already closed
    }
  }
}

async function serve(path, port) {
  const listener = Deno.listen({ transport: "unix", path });
  for await (const client of listener) {
    carry(client, port);
  }
}

let kernelFile = connectionFile;
if (connection.transport === "ipc") {
  const tcp = { ...connection, transport: "tcp", ip: "127.0.0.1" };
  const ports = freePorts(channels.length);
  channels.forEach((channel, i) => {
    tcp[channel] = ports[i];
    serve(`${connection.ip}-${connection[channel]}`, tcp[channel]);
  });
  kernelFile = `${connectionFile}.tcp.json`;
  Deno.writeTextFileSync(kernelFile, JSON.stringify(tcp));
}

const kernel = new Deno.Command(Deno.execPath(), {
  args: ["jupyter", "--kernel", "--conn", kernelFile],
  stdin: "null",
  stdout: "inherit",
  stderr: "inherit",
}).spawn();
for (const signal of ["SIGTERM", "SIGINT"]) {
  Deno.addSignalListener(signal, () => kernel.kill(signal));
}
const status = await kernel.status;
// A kernel killed by a signal has code 128 + its number, as a shell reports it.
Deno.exit(status.code);
