# Fetches and unpacks Deno for codebox (see deno.rs). Runs under `python -I -S`, standard
# library only: `fetch URL DEST` downloads (https:// with the system's CA certificates, or
# file://), printing progress lines; `unpack TGZ DEST` writes the tarball's package/deno to DEST.
import sys
import tarfile
import urllib.request


def fetch(url, dest):
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0)
        done, next_tenth = 0, 1
        while True:
            chunk = response.read(1 << 20)
            if not chunk:
                break
            out.write(chunk)
            done += len(chunk)
            # One line per tenth: enough to show that it moves, few enough for a log.
            if total and done * 10 >= next_tenth * total:
                print(f"{done * 100 // total}% of {total} bytes", flush=True)
                next_tenth = done * 10 // total + 1
    print(f"downloaded {done} bytes", flush=True)


def unpack(tgz, dest):
    with tarfile.open(tgz, "r:gz") as archive:
        member = archive.getmember("package/deno")
        source = archive.extractfile(member)
        if source is None:
            sys.exit("package/deno in the tarball is not a file")
        with open(dest, "wb") as out:
            while True:
                chunk = source.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
    print(f"unpacked package/deno ({member.size} bytes)", flush=True)


if __name__ == "__main__":
    command, source, dest = sys.argv[1:4]
    if command == "fetch":
        fetch(source, dest)
    elif command == "unpack":
        unpack(source, dest)
    else:
        sys.exit(f"unknown command {command!r}")
