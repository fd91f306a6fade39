# Runs silently inside a Python kernel when its box pauses: writes the kernel's namespace to
# `<d>/<ctx>.pkl` (one pickle per variable, so that one that fails to load costs only itself)
# and what was kept, re-importable or left behind to `<ctx>.json`. Names are dunder-prefixed
# so that they are never themselves saved.
def __codebox_save_namespace(d, ctx):
    import io, json, os, pickle, socket, threading, types

    try:
        import dill as pickler

        pickler_name = "dill"
    except ImportError:
        pickler, pickler_name = pickle, "pickle"
    shell = get_ipython()  # noqa: F821 (the kernel's own)
    ns = shell.user_ns
    hidden = getattr(shell, "user_ns_hidden", {})
    skip = {"In", "Out", "exit", "quit", "get_ipython"}
    # What no pickle can carry to another process, named for what it is.
    kinds = (
        (io.IOBase, "an open file"),
        (socket.socket, "a socket"),
        (threading.Thread, "a thread"),
        ((types.GeneratorType, types.AsyncGeneratorType, types.CoroutineType), "a generator"),
    )
    blobs, imports, variables, type_names, unrestored = {}, {}, [], {}, []
    for name, value in list(ns.items()):
        if name.startswith("_") or name in skip or (name in hidden and hidden[name] is value):
            continue
        if isinstance(value, types.ModuleType):
            imports[name] = value.__name__
            continue
        reason = next((why for kind, why in kinds if isinstance(value, kind)), None)
        if reason is None:
            try:
                blobs[name] = pickler.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as e:  # anything a pickler raises is a reason to name
                reason = "does not pickle: %s: %s" % (type(e).__name__, str(e)[:200])
        type_names[name] = type(value).__qualname__
        if reason is None:
            variables.append(name)
        else:
            unrestored.append({"name": name, "type": type(value).__qualname__, "reason": reason})
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, ctx + ".pkl.tmp")
    with open(tmp, "wb") as f:
        pickle.dump(blobs, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, os.path.join(d, ctx + ".pkl"))
    meta = {
        "pickler": pickler_name,
        "variables": variables,
        "types": type_names,
        "imports": imports,
        "unrestored": unrestored,
    }
    with open(os.path.join(d, ctx + ".json"), "w") as f:
        json.dump(meta, f)
